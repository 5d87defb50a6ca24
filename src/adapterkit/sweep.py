"""Model selection as in the paper: a grid of ``train`` runs, the best chosen on validation.

Each grid point trains into ``<output>/runs/<name>``; a finished run (its ``metrics.json`` exists) is read
back instead of retrained and an interrupted one resumes from its last epoch checkpoint, so rerunning an
interrupted sweep continues where it stopped. The results go to ``sweep.json`` and ``sweep.md``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from . import metrics as M
from .train import TrainConfig, train

#: The paper's grid (Houlsby et al. 2019, section 3.1); epochs {3, 20} there.
PAPER_LRS = (3e-5, 3e-4, 3e-3)
PAPER_SIZES = (8, 64, 256)


def run_name(lr: float, size: int | None, epochs: int) -> str:
    return f"lr{lr:g}-e{epochs}" if size is None else f"lr{lr:g}-m{size}-e{epochs}"


def sweep(base: TrainConfig, output: str | Path, lrs: Sequence[float], sizes: Sequence[int], epochs: Sequence[int],
          on_run: Callable[[str, dict, bool], None] | None = None) -> dict:
    """Train every (lr, size, epochs) point of the grid on top of ``base``; returns the sweep summary.

    Only the adapter method has a size to vary: every other method (full, top-k, ln, head) is trained once
    per (lr, epochs), its runs named ``lr{lr}-e{epochs}`` and its sizes recorded as None."""
    output = Path(output)
    runs = []
    sizes = list(sizes) if base.method == "adapter" else [None]
    for lr, size, n_epochs in itertools.product(lrs, sizes, epochs):
        name = run_name(lr, size, n_epochs)
        run_dir = output / "runs" / name
        sized = {} if size is None else {"adapter_size": size}
        config = dataclasses.replace(base, output=str(run_dir), lr=lr, epochs=n_epochs, resume=True, overwrite=True,
                                     **sized)
        metrics = finished_run(run_dir, config)
        cached = metrics is not None
        if not cached:  # new, interrupted (resumed), or made with other settings (retrained)
            metrics = train(config)
        if on_run:
            on_run(name, metrics, cached)
        runs.append({"name": name, "lr": lr, "adapter_size": size, "epochs": n_epochs, "best": metrics["best"],
                     "trainable_pct": metrics["trainable_pct"], "train_seconds": metrics["train_seconds"],
                     "path": str(run_dir)})
    metric = json.loads((Path(runs[0]["path"]) / "metrics.json").read_text())["metric"]
    higher = M.higher_is_better(metric)
    best = (max if higher else min)(runs, key=lambda r: r["best"]["main"])
    summary = {"task": base.task, "model": base.model, "method": base.method, "metric": metric,
               "grid": {"lr": list(lrs), "adapter_size": sizes, "epochs": list(epochs)},
               "runs": runs, "best": best}
    output.mkdir(parents=True, exist_ok=True)
    _atomic_write(output / "sweep.json", json.dumps(summary, indent=2) + "\n")
    _atomic_write(output / "sweep.md", markdown(summary))
    return summary


def finished_run(run_dir: Path, config: TrainConfig) -> dict | None:
    """The metrics of a finished run in ``run_dir`` made with exactly ``config``'s settings, else None."""
    path = run_dir / "metrics.json"
    if path.is_file():
        metrics = json.loads(path.read_text())
        if metrics.get("config") == json.loads(json.dumps(config.recorded())):
            return metrics
    return None


def markdown(summary: dict) -> str:
    lines = [f"# Sweep: {summary['method']} on {summary['task']} ({summary['model']})", "",
             f"Best on validation ({summary['metric']}): **{summary['best']['name']}**", "",
             "| run | lr | size | epochs | trained % | best epoch | validation main | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary["runs"]:
        mark = " **(best)**" if r["name"] == summary["best"]["name"] else ""
        lines.append(f"| {r['name']}{mark} | {r['lr']:g} | {'-' if r['adapter_size'] is None else r['adapter_size']} | {r['epochs']} | "
                     f"{r['trainable_pct']:.2f} | {r['best']['epoch']} | {r['best']['main']:.4f} | {r['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


__all__ = ["PAPER_LRS", "PAPER_SIZES", "finished_run", "markdown", "run_name", "sweep"]

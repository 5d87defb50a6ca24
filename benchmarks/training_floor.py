"""The measured floor of a frozen-backbone training step (issue 6), side by side with adapters.

    python benchmarks/training_floor.py            # MiniLM, 32x128 and 8x64, about 3 minutes on 2 cores

A step that trains nothing inside the backbone but its layer norms still has to pass dX down through every
layer: every frozen linear's dX matmul, the attention matmuls' gradients, and all the element-wise backward
(GELU, softmax, dropout, norms). That step ("frozen backbone") is what full-depth adapters cannot go below,
whatever their implementation; ``flops.py`` gives the same floor in MACs, which leave the element-wise work
out. Configurations are timed interleaved (A B C ... A B C ..., rotated each round) in worker processes by
``run.timed_group``, CPU time, ratios per round against full fine-tuning in the same round, medians and
quartiles. Writes ``benchmarks/results/training_floor.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import RESULTS, Worker, machine_info, model_and_log, timed_group  # noqa: E402


def configs(hidden: int) -> list[tuple[str, str, dict]]:
    m = round(hidden / 16)
    return [("full fine-tuning", "main", {"method": "full"}),
            (f"adapterkit m={m}", "main", {"method": "adapterkit", "size": m}),
            ("adapterkit m=64", "main", {"method": "adapterkit", "size": 64}),
            ("frozen backbone (norms + head train)", "main", {"method": "frozen"}),
            ("head only", "main", {"method": "head"})]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)

    model_dir, cfg, log = model_and_log(args.model)

    worker = Worker("main", sys.executable, Path(tempfile.mkdtemp(prefix="ak-floor-")))
    results = {"suite": "training_floor", "model": args.model, "threads": args.threads, "machine": machine_info(),
               "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "groups": []}
    try:
        results["versions"] = worker.call(cmd="hello")["versions"]
        for batch, seq, calls in ((32, 128, 1), (8, 64, 2)):
            log(f"training step {batch}x{seq}: {args.rounds} rounds x {calls} step(s)")
            results["groups"].append(timed_group({"main": worker}, model_dir, cfg["num_hidden_layers"], "train",
                                                 batch, seq, configs(cfg["hidden_size"]), args.rounds, calls,
                                                 args.threads, log))
    finally:
        worker.close()
    results["machine"]["loadavg_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"training_floor{'' if args.model == 'minilm' else '-' + args.model}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out)
    print(render(results))
    print(f"wrote {out.relative_to(HERE.parent)}")
    return results


def per_round_ratio(row: dict, ref: dict) -> float:
    """Median over rounds of row / ref, both measured in the same round."""
    ratios = sorted(a / b for a, b in zip(row["per_round_s"], ref["per_round_s"]))
    return statistics.median(ratios)


def render(results: dict) -> str:
    lines = []
    for g in results["groups"]:
        rows = {r["label"]: r for r in g["rows"]}
        floor = rows["frozen backbone (norms + head train)"]
        lines += [f"\ntraining step, {results['model']} {g['batch']}x{g['seq']} ({g['rounds']} interleaved rounds, "
                  "CPU time)", "",
                  "| configuration | trainable params | median ms | ratio vs full FT [p25, p75] | vs frozen backbone |",
                  "|---|---|---|---|---|"]
        for r in g["rows"]:
            lines.append(f"| {r['label']} | {r['params_trainable']:,} | {1000 * r['median_s']:.0f} | "
                         f"{r['ratio']:.3f} [{r['ratio_p25']:.3f}, {r['ratio_p75']:.3f}] | "
                         f"{per_round_ratio(r, floor):.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

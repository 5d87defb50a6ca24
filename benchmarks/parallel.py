"""Parallel over 8 tasks vs 8 separate passes, on the bundled MiniLM (BERT 6 x 384), CPU, fp32, inference mode.

Every task's output for the same batch, two ways:
  parallel   set_active(model, Parallel(t0, ..., t7)); one forward: B rows in, 8 x B rows out
  separate   for each task: set_active(model, t_i); one forward of the B rows (8 forwards)
  single     one forward with one adapter (reference: what one task costs)

in two settings of the same 8 adapters (Houlsby, size 64, heads of 2 / 3 / 1 outputs cycling):
  all        adapters on all 6 layers: the batch is replicated at layer 0, nothing is shared
  skip-k     adapters on layers k..5 (AdapterDrop, Rücklé et al. 2021, arXiv 2010.11918): layers 0..k-1 run once
             on B rows for all 8 tasks, the batch is replicated at layer k

Timing: one warm-up call per variant, then ``--reps`` rounds in which the variants run interleaved (parallel,
separate, single, parallel, ...); per variant the median of process CPU time and of wall time; the speedup is
the median over rounds of separate / parallel measured in the same round (CPU time: the steadier clock on a
shared machine). Agreement: the max abs difference between each task's Parallel block and its separate pass,
and whether every predicted class is the same.

    python benchmarks/parallel.py                               # 8 tasks, 8x64 and 16x64, skip 3, 5 rounds
    python benchmarks/parallel.py --shapes 4x32 --reps 2 --skip 2 --out /tmp/p.json
Writes benchmarks/results/parallel.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers

import adapterkit as ak
from adapterkit.mixed import split_parallel
from adapterkit.models import load_model

HERE = Path(__file__).resolve().parent


def build(num_tasks: int, layers: tuple[int, ...] | None, seed: int = 0):
    torch.manual_seed(seed)
    model, _ = load_model("minilm")
    model.eval()
    names = [f"t{i}" for i in range(num_tasks)]
    for i, name in enumerate(names):
        ak.add_adapter(model, name, ak.AdapterConfig(size=64, layers=layers), head=[2, 3, "regression"][i % 3])
        with torch.no_grad():  # trained adapters are far from identity: perturb so the work is real
            for p in ak.adapter_parameters(model, name):
                p.add_(torch.randn_like(p) * 0.02)
    return model, names


def bench(model, names, batch: int, length: int, reps: int) -> dict:
    g = torch.Generator().manual_seed(batch * 1000 + length)
    vocab = model.config.vocab_size
    ids = torch.randint(min(1000, vocab // 2), min(20000, vocab), (batch, length), generator=g)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    block = ak.Parallel(*names)

    def run(active):
        ak.set_active(model, active)
        with torch.inference_mode():
            return model(**inputs).logits

    variants = {"parallel": lambda: run(block), "separate": lambda: [run(n) for n in names],
                "single": lambda: run(names[0])}
    together, apart = split_parallel(model, block, run(block)), variants["separate"]()
    diffs = [(together[n] - apart[i]).abs().max().item() for i, n in enumerate(names)]
    same_class = all(torch.equal(together[n].argmax(-1), apart[i].argmax(-1)) for i, n in enumerate(names)
                     if apart[i].shape[-1] > 1)
    for fn in variants.values():  # warm-up
        fn()
    cpu = {k: [] for k in variants}
    wall = {k: [] for k in variants}
    for _ in range(reps):
        for k, fn in variants.items():
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            cpu[k].append(time.process_time() - c0)
            wall[k].append(time.perf_counter() - w0)
    ak.set_active(model, None)
    out = {k: {"cpu_ms": 1000 * statistics.median(cpu[k]), "wall_ms": 1000 * statistics.median(wall[k]),
               "cpu_ms_all": [round(1000 * x, 2) for x in cpu[k]]} for k in variants}
    out["speedup_cpu"] = statistics.median(s / p for s, p in zip(cpu["separate"], cpu["parallel"]))
    out["speedup_wall"] = statistics.median(s / p for s, p in zip(wall["separate"], wall["parallel"]))
    out["parallel_vs_single_cpu"] = statistics.median(p / s for p, s in zip(cpu["parallel"], cpu["single"]))
    out["max_abs_diff"] = max(diffs)
    out["same_predicted_class"] = same_class
    return out


def table(report: dict) -> str:
    lines = ["| setting | batch × length | parallel CPU ms | 8 separate CPU ms | one adapter CPU ms | speedup (CPU) "
             "| speedup (wall) | parallel / one adapter | max abs diff | same class |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for setting, shapes in report["results"].items():
        for shape, r in shapes.items():
            lines.append(f"| {setting} | {shape} | {r['parallel']['cpu_ms']:.0f} | {r['separate']['cpu_ms']:.0f} | "
                         f"{r['single']['cpu_ms']:.0f} | {r['speedup_cpu']:.2f}× | {r['speedup_wall']:.2f}× | "
                         f"{r['parallel_vs_single_cpu']:.2f}× | {r['max_abs_diff']:.1e} | "
                         f"{'yes' if r['same_predicted_class'] else 'NO'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="8x64,16x64", help="comma-separated BATCHxLENGTH")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--skip", type=int, default=3, help="k: the shared setting's adapters leave out layers 0..k-1")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--out", default=str(HERE / "results" / "parallel.json"))
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    settings = {"all layers": None, f"skip {args.skip}": tuple(range(args.skip, 6))}
    results = {}
    for setting, layers in settings.items():
        model, names = build(args.tasks, layers)
        results[setting] = {}
        for shape in args.shapes.split(","):
            batch, length = (int(v) for v in shape.lower().split("x"))
            results[setting][shape] = bench(model, names, batch, length, args.reps)
        del model
    report = {
        "benchmark": "parallel",
        "model": "minilm (all-MiniLM-L6-v2, BERT 6x384), fp32, inference_mode",
        "tasks": args.tasks,
        "adapter_config": {"size": 64, "placement": "houlsby", "heads": "2-class / 3-class / regression, cycling",
                           "layers": {k: (list(v) if v else "all") for k, v in settings.items()}},
        "reps": args.reps,
        "clock": "process CPU time (medians); wall beside it; speedup = median per-round separate / parallel",
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "platform": platform.platform(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "results": results,
    }
    from report import write_json  # benchmarks/ is the script's directory

    write_json(Path(args.out), report)
    print(f"MiniLM, {args.tasks} tasks, {torch.get_num_threads()} thread(s), medians of {args.reps} interleaved rounds "
          f"(load avg {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f})")
    print(table(report))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Mixed-task batches on one backbone: throughput of a batch spread over 8 adapters vs the same batch on one
adapter vs one forward per task, on the bundled MiniLM (BERT 6 x 384), CPU, fp32, inference mode.

Variants (each timed on the same token ids; rows are assigned to tasks round-robin t0 t1 .. t7 t0 t1 ..):
  base             set_active(None): the backbone alone (reference, no adapter work)
  single           the whole batch on adapter t0
  mixed            predict_mixed(model, batch, tasks): 8 adapters, rows sorted by task inside (grouped, views)
  mixed_unsorted   set_active(model, tasks) on the interleaved batch: grouped with index_select / index_add_
  mixed_gathered   alternative kept for the record: per-row weights gathered for one batched matmul (bmm)
  loop             one forward per task on that task's rows (8 forwards of B/8 rows)

Timing: one warm-up call per variant, then ``--reps`` rounds in which the variants run interleaved
(base single mixed ... base single mixed ...); medians of wall time and of process CPU time are reported
(CPU time is the steadier number on a shared machine; the load average is recorded with the results).

Threads: on a small shared machine (2 cores, other jobs running) two intra-op threads made every variant
about 3x slower in CPU time than one (OpenMP threads wait on each other at every small op), and they hurt
the many-small-ops mixed variants most; results/mixed_batch.json is the --threads 1 run,
results/mixed_batch_2threads.json the default-threads run on the same machine.

    python benchmarks/mixed_batch.py --threads 1           # 32x128 and 16x64, 7 rounds
    python benchmarks/mixed_batch.py --shapes 8x32 --reps 3 --adapters 4
Writes benchmarks/results/mixed_batch.json and prints a table.
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
from adapterkit.layers import BottleneckLayer
from adapterkit.mixed import predict_mixed
from adapterkit.models import load_model

HERE = Path(__file__).resolve().parent


def gathered_apply_mixed(self: BottleneckLayer, h: torch.Tensor, x: torch.Tensor | None, *_) -> torch.Tensor:
    """Gathered variant: stack every adapter's weights (plus a zero adapter for rows without one), gather
    one weight matrix per row, and run the bottleneck as two batched matmuls over all rows at once."""
    if any(kind.name != "houlsby" for kind, _ in self.kinds.values()):
        raise NotImplementedError("the gathered benchmark variant covers houlsby adapters only")
    names = list(self.adapters)
    pos = {n: i for i, n in enumerate(names)}
    idx = torch.tensor([pos.get(n, len(names)) for n in self.routing.active], device=h.device)
    mods = [self.adapters[n] for n in names]
    d, m = mods[0].down.in_features, mods[0].down.out_features
    w_down = torch.cat([torch.stack([a.down.weight.t() for a in mods]), h.new_zeros(1, d, m)])  # (A+1, d, m)
    b_down = torch.cat([torch.stack([a.down.bias for a in mods]), h.new_zeros(1, m)])  # (A+1, m)
    w_up = torch.cat([torch.stack([a.up.weight.t() for a in mods]), h.new_zeros(1, m, d)])  # (A+1, m, d)
    b_up = torch.cat([torch.stack([a.up.bias for a in mods]), h.new_zeros(1, d)])  # (A+1, d)
    z = mods[0].act(torch.baddbmm(b_down[idx].unsqueeze(1), h, w_down[idx]))  # (B, T, m)
    return torch.baddbmm(h + b_up[idx].unsqueeze(1), z, w_up[idx])  # (B, T, d)


def build(num_adapters: int, seed: int = 0):
    torch.manual_seed(seed)
    model, _ = load_model("minilm")
    model.eval()
    names = [f"t{i}" for i in range(num_adapters)]
    for i, name in enumerate(names):
        head = [2, 3, "regression"][i % 3]  # heads of different widths, as a real multi-task server has
        ak.add_adapter(model, name, ak.AdapterConfig(size=64), head=head)
        with torch.no_grad():  # trained adapters are far from identity: perturb so the work is real
            for p in ak.adapter_parameters(model, name):
                p.add_(torch.randn_like(p) * 0.02)
    return model, names


def bench_shape(model, names, batch: int, length: int, reps: int) -> dict:
    g = torch.Generator().manual_seed(batch * 1000 + length)
    ids = torch.randint(1000, 20000, (batch, length), generator=g)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    tasks = [names[i % len(names)] for i in range(batch)]

    def forward(active):
        ak.set_active(model, active)
        with torch.inference_mode():
            return model(**inputs).logits

    def gathered():
        original = BottleneckLayer._apply_mixed
        BottleneckLayer._apply_mixed = gathered_apply_mixed
        try:
            return forward(tasks)
        finally:
            BottleneckLayer._apply_mixed = original

    def loop():
        with torch.inference_mode():
            for j, name in enumerate(names):
                ak.set_active(model, name)
                model(**{k: v[j :: len(names)] for k, v in inputs.items()})

    variants = {
        "base": lambda: forward(None),
        "single": lambda: forward(names[0]),
        "mixed": lambda: predict_mixed(model, inputs, tasks),
        "mixed_unsorted": lambda: forward(tasks),
        "mixed_gathered": gathered,
        "loop": loop,
    }
    # Sanity: the three mixed implementations agree.
    a = torch.stack([r[:1] for r in predict_mixed(model, inputs, tasks)])
    b, c = forward(tasks), gathered()
    assert torch.allclose(a[:, 0], b[:, 0], atol=1e-5) and torch.allclose(b, c, atol=1e-5)

    for fn in variants.values():  # warm-up
        fn()
    wall = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    for _ in range(reps):
        for k, fn in variants.items():
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            wall[k].append(time.perf_counter() - w0)
            cpu[k].append(time.process_time() - c0)
    ak.set_active(model, None)
    out = {}
    for k in variants:
        w, c = statistics.median(wall[k]), statistics.median(cpu[k])
        out[k] = {"wall_ms": 1000 * w, "cpu_ms": 1000 * c, "rows_per_s": batch / w, "rows_per_cpu_s": batch / c,
                  "wall_ms_all": [round(1000 * x, 2) for x in wall[k]]}
    for k in variants:
        out[k]["vs_single_wall"] = out["single"]["wall_ms"] / out[k]["wall_ms"]
        out[k]["vs_single_cpu"] = out["single"]["cpu_ms"] / out[k]["cpu_ms"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="32x128,16x64", help="comma-separated BATCHxLENGTH")
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=str(HERE / "results" / "mixed_batch.json"))
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, names = build(args.adapters)
    load_before = os.getloadavg()
    results = {}
    for shape in args.shapes.split(","):
        batch, length = (int(v) for v in shape.lower().split("x"))
        results[shape] = bench_shape(model, names, batch, length, args.reps)
    report = {
        "benchmark": "mixed_batch",
        "model": "minilm (all-MiniLM-L6-v2, BERT 6x384), fp32, inference_mode",
        "adapters": args.adapters,
        "adapter_config": {"size": 64, "placement": "houlsby", "heads": "2-class / 3-class / regression, cycling"},
        "reps": args.reps,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "goal": "mixed >= 0.95 x single-adapter throughput",
        "results": results,
    }
    from report import write_json  # benchmarks/ is the script's directory

    out = Path(args.out)
    write_json(out, report)

    print(f"MiniLM, {args.adapters} adapters, CPU x{torch.get_num_threads()} threads, medians of {args.reps} "
          f"interleaved rounds (load avg {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f})")
    print(f"{'shape':>8} {'variant':>15} {'wall ms':>9} {'rows/s':>8} {'cpu ms':>9} {'x single (wall)':>16} {'x single (cpu)':>15}")
    for shape, res in results.items():
        for k, r in res.items():
            print(f"{shape:>8} {k:>15} {r['wall_ms']:9.1f} {r['rows_per_s']:8.1f} {r['cpu_ms']:9.1f} "
                  f"{r['vs_single_wall']:16.3f} {r['vs_single_cpu']:15.3f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

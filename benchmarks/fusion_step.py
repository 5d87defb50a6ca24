"""What an AdapterFusion step costs against one adapter's (issue 14), side by side.

    python benchmarks/fusion_step.py               # MiniLM, 32x128 and 8x64: wants an idle machine (over an hour shared)
    python benchmarks/fusion_step.py --quick       # 8x64 only, 2 rounds: about 4 minutes on 2 busy cores

A fusion over N frozen adapters runs all N bottlenecks at every site, then its attention over their outputs
(query, key and value, each d x d), and in training passes dX back through all of them, while a single adapter
runs one bottleneck. The training step (forward with labels, backward, AdamW over the trained parameters) and
the inference forward are timed for the plain model or full fine-tuning (the reference of every ratio), one
adapter (m = 64) and fusions of 2, 4 and 5 such adapters, in worker processes by ``run.timed_group``:
interleaved rounds (order rotated), process CPU time, one torch thread. Reported: each row's median time, its
ratio against the reference and against the single adapter in the same round (median over rounds). Writes
``benchmarks/results/fusion_step[-quick].json`` and prints a table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

ADAPTER = "adapterkit m=64"
FUSED = (2, 4, 5)  # 5: the fusion of all five GLUE adapters docs/results.md trains


def configs(kind: str) -> list[tuple[str, str, dict]]:
    reference = ("full fine-tuning", "main", {"method": "full"}) if kind == "train" else ("plain", "main", {"method": "plain"})
    return [reference, (ADAPTER, "main", {"method": "adapterkit", "size": 64})] + [
        (f"fusion of {n} (m=64)", "main", {"method": "fusion", "size": 64, "fuse": n}) for n in FUSED]


def vs_adapter(row: dict, adapter: dict) -> float:
    """Median over rounds of row / the single adapter, both measured in the same round."""
    return statistics.median(a / b for a, b in zip(row["per_round_s"], adapter["per_round_s"]))


def render(results: dict) -> str:
    lines = []
    for g in results["groups"]:
        rows = {r["label"]: r for r in g["rows"]}
        what = "training step" if g["kind"] == "train" else "inference forward"
        lines += [f"\n{what}, {results['model']} {g['batch']}x{g['seq']} ({g['rounds']} interleaved rounds, CPU time)", "",
                  f"| configuration | trainable params | median ms | vs {g['rows'][0]['label']} | vs one adapter |",
                  "|---|---|---|---|---|"]
        for r in g["rows"]:
            ratio = "1" if r["ratio"] is None else f"{r['ratio']:.2f}"
            lines.append(f"| {r['label']} | {r['params_trainable']:,} | {1000 * r['median_s']:.0f} | {ratio} | "
                         f"{vs_adapter(r, rows[ADAPTER]):.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="8x64 only, 2 rounds: checks the plumbing")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))  # here, not at import: the tests load render() beside experiments/' own run.py
    from report import write_json
    from run import RESULTS, Worker, machine_info, model_and_log, timed_group

    model_dir, cfg, log = model_and_log(args.model)

    shapes = ((8, 64, 2),) if args.quick else ((32, 128, 1), (8, 64, 2))
    rounds = 2 if args.quick else args.rounds
    worker = Worker("main", sys.executable, Path(tempfile.mkdtemp(prefix="ak-fusion-")))
    results = {"suite": "fusion_step", "model": args.model, "threads": args.threads, "quick": args.quick,
               "machine": machine_info(), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               "groups": []}
    try:
        results["versions"] = worker.call(cmd="hello")["versions"]
        for kind in ("train", "infer"):
            for batch, seq, calls in shapes:
                log(f"{kind} {batch}x{seq}: {rounds} rounds x {calls} call(s)")
                results["groups"].append(timed_group({"main": worker}, model_dir, cfg["num_hidden_layers"], kind,
                                                     batch, seq, configs(kind), rounds, calls, args.threads, log))
    finally:
        worker.close()
    results["machine"]["loadavg_end"] = os.getloadavg()
    out = RESULTS / f"fusion_step{'' if args.model == 'minilm' else '-' + args.model}{'-quick' if args.quick else ''}.json"
    write_json(out, results)
    print(render(results))
    print(f"wrote {out.relative_to(HERE.parent)}")
    return results


if __name__ == "__main__":
    main()

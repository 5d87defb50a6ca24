"""``adapterkit serve --ray``: 1 vs 2 engine replicas on one machine, over HTTP through Ray Serve's proxy
(issue 16, part 2).

1. Saves ``--adapters`` MiniLM adapters (size 64, 2/3/regression heads; ``benchmarks/adapter_store.py``'s
   ``prepare``) in a store directory, and starts a local Ray instance (``ray.init(num_cpus=os.cpu_count())``).
2. Deploys :mod:`adapterkit.serve.ray_app` in each ``--layouts`` ``RxT`` (R replicas of T CPUs and T torch
   threads each): by default ``1x2`` (one replica, the whole 2-core machine), ``2x1`` (two replicas, the
   whole machine between them) and ``1x1`` (one replica of one core: what one more replica adds), ``--rounds``
   times, interleaved (1x2, 2x1, 1x1, 1x2, ...), so a change in the machine's load hits all alike.
3. In each deployment, ``--clients`` concurrent asyncio + httpx clients send the same ``--requests``
   ``POST /v1/predict`` each (after ``--warmup`` untimed ones): a task drawn from Zipf(``--zipf``), 1..4
   sentences. Every answer must equal the first deployment's answer to the same request (1e-4) and none may
   fail.

Reports, per deployment, requests/s, inputs/s, p50/p99 latency; and the throughput ratios 2x1 / 1x2 (two
replicas vs one, same cores) and 2x1 / 1x1 (two replicas vs one, one core each), medians over rounds. The clients run in this process, on the same cores as the server. Writes
benchmarks/results/ray_replicas.json and prints a table.

    python benchmarks/ray_replicas.py                         # 16 adapters, 8 clients x 20 requests, 2 rounds
    python benchmarks/ray_replicas.py --rounds 1 --requests 10 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import ray
import torch
from ray import serve

from adapterkit.serve import ServeSettings
from adapterkit.serve.ray_app import APP_NAME, REPLICA_HEADER, ReplicaSpec, run

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from adapter_store import WORDS, prepare, zipf_sampler  # noqa: E402
from report import write_json  # noqa: E402


def workload(names: list[str], args) -> list[list[tuple[str, list[str]]]]:
    """Per client: warm-up + timed requests (task, inputs), the same in every deployment."""
    draw = zipf_sampler(names, args.zipf, seed=0)
    out = []
    for c in range(args.clients):
        rng = random.Random(1000 + c)
        out.append([(draw(rng), [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30)))
                                 for _ in range(rng.randint(1, 4))]) for _ in range(args.warmup + args.requests)])
    return out


async def drive(url: str, work) -> dict:
    """Every client sends its requests one after another; all clients at once."""
    latencies, answers, replicas = [], {}, {}
    failed = 0

    async def client(c: int, http: httpx.AsyncClient) -> None:
        nonlocal failed
        for i, (task, inputs) in enumerate(work[c]):
            started = time.perf_counter()
            try:
                r = await http.post("/v1/predict", json={"task": task, "inputs": inputs})
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            if not ok:
                failed += 1
                continue
            latencies.append(time.perf_counter() - started)
            answers[(c, i)] = r.json()["predictions"]
            replicas[r.headers[REPLICA_HEADER]] = replicas.get(r.headers[REPLICA_HEADER], 0) + 1

    limits = httpx.Limits(max_connections=len(work) * 2)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(c, http) for c in range(len(work))))
    return {"latencies": latencies, "answers": answers, "failed": failed, "per_replica": replicas}


async def timed(url: str, work, warmup: int) -> tuple[dict, float]:
    warm = [w[:warmup] for w in work]
    await drive(url, warm)  # untimed: every adapter a client asks for early is loaded somewhere
    started = time.perf_counter()
    result = await drive(url, [w[warmup:] for w in work])
    return result, time.perf_counter() - started


def scores(prediction: dict) -> list[float]:
    return list(prediction["scores"].values()) if "scores" in prediction else [prediction["score"]]


def compare(answers: dict, reference: dict) -> int:
    wrong = 0
    for key, preds in answers.items():
        want = reference.get(key)
        if want is None:
            continue
        for g, w in zip(preds, want):
            if g.get("label") != w.get("label") or any(abs(a - b) > 1e-4 for a, b in zip(scores(g), scores(w))):
                wrong += 1
                break
    return wrong


def deployment(spec: ReplicaSpec, replicas: int, cpus: int, port: int, work, args) -> dict:
    started = time.perf_counter()
    run(ReplicaSpec(**{**spec.__dict__, "threads": cpus}), replicas, port=port, replica_cpus=cpus, blocking=False)
    deploy_s = time.perf_counter() - started
    try:
        result, wall = asyncio.run(timed(f"http://127.0.0.1:{port}", work, args.warmup))
    finally:
        serve.delete(APP_NAME)
    lat = sorted(result["latencies"])
    inputs = sum(len(inp) for w in work for _, inp in w[args.warmup:])
    n = len(lat)
    return {"layout": f"{replicas}x{cpus}", "replicas": replicas, "cpus_per_replica": cpus,
            "deploy_seconds": deploy_s, "seconds": wall, "requests": n, "failed": result["failed"],
            "requests_per_s": n / wall, "inputs_per_s": inputs / wall,
            "p50_ms": 1000 * lat[n // 2], "p99_ms": 1000 * lat[min(n - 1, int(0.99 * n))],
            "per_replica": result["per_replica"], "_answers": result["answers"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapters", type=int, default=16)
    p.add_argument("--zipf", type=float, default=1.1)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=20, help="timed requests per client")
    p.add_argument("--warmup", type=int, default=5, help="untimed requests per client first")
    p.add_argument("--rounds", type=int, default=2, help="every layout once per round, interleaved")
    p.add_argument("--layouts", nargs="+", default=["1x2", "2x1", "1x1"],
                   help="REPLICASxCPUS deployments (CPUs = torch threads per replica)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--batch-window-ms", type=float, default=5.0)
    p.add_argument("--store", type=Path, default=None, help="keep the adapters here (reused by later runs)")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile (recorded in the JSON)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "ray_replicas.json")
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tmp = None
    if args.store is None:
        tmp = tempfile.TemporaryDirectory(prefix="ray-store-")
        args.store = Path(tmp.name)
    args.store.mkdir(parents=True, exist_ok=True)
    prepare(args.store, args.adapters)
    names = [f"task{i:04d}" for i in range(args.adapters)]
    work = workload(names, args)
    spec = ReplicaSpec(model="minilm", settings=ServeSettings(batch_window_ms=args.batch_window_ms),
                       store=str(args.store.resolve()))
    src = str(Path(__file__).resolve().parents[1] / "src")  # the replicas import this checkout's adapterkit
    path = os.pathsep.join([src] + [x for x in os.environ.get("PYTHONPATH", "").split(os.pathsep) if x])
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}})
    runs, reference = [], None
    try:
        for r in range(args.rounds):
            for layout in args.layouts:
                replicas, cpus = (int(x) for x in layout.split("x"))
                d = deployment(spec, replicas, cpus, args.port, work, args)
                reference = reference or d["_answers"]
                d["wrong"] = compare(d.pop("_answers"), reference)
                d["round"] = r
                runs.append(d)
                print(f"round {r} {layout}: {d['requests_per_s']:.1f} req/s, {d['inputs_per_s']:.1f} "
                      f"inputs/s, p50 {d['p50_ms']:.0f} ms, p99 {d['p99_ms']:.0f} ms, wrong {d['wrong']}, failed "
                      f"{d['failed']}, per replica {d['per_replica']} (deployed in {d['deploy_seconds']:.0f} s)",
                      flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    ratios = {}
    for a, b in (("2x1", "1x2"), ("2x1", "1x1")):
        by_round = [ra["requests_per_s"] / rb["requests_per_s"] for ra in runs for rb in runs
                    if ra["layout"] == a and rb["layout"] == b and ra["round"] == rb["round"]]
        if by_round:
            ratios[f"{a}/{b}"] = {"median": statistics.median(by_round), "by_round": by_round}
    report = {
        "benchmark": "ray_replicas", "adapters": args.adapters, "zipf_s": args.zipf, "clients": args.clients,
        "requests_per_client": args.requests, "rounds": args.rounds, "batch_window_ms": args.batch_window_ms,
        "throughput_ratios": ratios,
        "cpus": os.cpu_count(), "note": args.note, "ray": ray.__version__, "python": platform.python_version(),
        "torch": torch.__version__, "machine": platform.machine(), "runs": runs,
    }
    write_json(args.out, report)
    print(render(report))
    if tmp is not None:
        tmp.cleanup()


def render(report: dict) -> str:
    lines = ["| round | replicas x CPUs (torch threads) | req/s | inputs/s | p50 ms | p99 ms | requests per replica "
             "| wrong | failed |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        split = " / ".join(str(v) for v in sorted(r["per_replica"].values(), reverse=True))
        lines.append(f"| {r['round']} | {r['layout']} | {r['requests_per_s']:.1f} | {r['inputs_per_s']:.1f} | "
                     f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {split} | {r['wrong']} | {r['failed']} |")
    lines.append("")
    for name, ratio in report["throughput_ratios"].items():
        lines.append(f"Throughput {name}: {ratio['median']:.2f}x (median of "
                     f"{', '.join(f'{x:.2f}' for x in ratio['by_round'])}), on {report['cpus']} CPUs.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

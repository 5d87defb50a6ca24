"""Load test of ``adapterkit serve`` on loopback, bounded in time, against calling the model directly.

1. Saves ``--adapters`` adapters (2-class, 3-class, regression, ... heads; perturbed so they differ) for the
   bundled MiniLM in a temporary directory and starts ``python -m adapterkit.serve`` on 127.0.0.1 (free port).
2. ``--clients`` concurrent clients (asyncio + httpx, one process) send ``POST /v1/predict`` for ``--seconds``
   (after a short warm-up): each request names a random task and carries 1..``--max-inputs-per-request``
   sentences of 4..40 words. Every response is checked (status 200, one prediction per input).
3. Stops the server and, in this process, runs the same kind of inputs through ``predict_mixed`` directly in
   batches of ``--batch-size`` rows (tokenisation included) for a few seconds: the ceiling the server's batching
   is compared with.

Reports requests/s, inputs/s, p50/p90/p99 latency, failed requests (must be 0), the server's batch sizes and
tasks per batch (from /metrics). Writes benchmarks/results/serve_load.json and prints a table.

    python benchmarks/serve_load.py                        # 16 clients, 20 s
    python benchmarks/serve_load.py --clients 4 --seconds 5 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

import adapterkit as ak
from adapterkit.mixed import predict_mixed
from adapterkit.models import load_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HEADS = [(2, ["negative", "positive"]), (3, ["world", "sports", "tech"]), ("regression", None), (3, ["yes", "no", "maybe"]),
         (4, ["a", "b", "c", "d"]), (2, ["ham", "spam"]), (6, ["abbr", "desc", "ent", "hum", "loc", "num"]), (2, None)]
WORDS = ("the a film movie was is really not very good bad great dull long short story actor plot scene music "
         "stock market fell rose sharply on tuesday report company shares team won lost game season player "
         "question answer why how what where who city country river mountain people money time year day").split()


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40)))


def prepare(root: Path, n: int) -> dict[str, Path]:
    torch.manual_seed(0)
    model, _ = load_model("minilm")
    dirs = {}
    for i in range(n):
        head, labels = HEADS[i % len(HEADS)]
        name = f"task{i}"
        ak.add_adapter(model, name, ak.AdapterConfig(size=64), head=head)
        with torch.no_grad():
            for p in ak.adapter_parameters(model, name):
                p.add_(torch.randn_like(p) * 0.02)
        dirs[name] = ak.save_adapter(model, name, root / name, extra={"label_names": labels} if labels else {})
    return dirs


def start_server(dirs: dict[str, Path], args, log_path: Path, model: str = "minilm"):
    import httpx

    cmd = [sys.executable, "-m", "adapterkit.serve", "--model", model, "--host", "127.0.0.1", "--port", "0",
           *(["--threads", str(args.threads)] if args.threads else []),
           "--max-batch-size", str(args.batch_size), "--batch-window-ms", str(args.batch_window_ms),
           "--max-queue", "4096", "--log-level", "warning"]
    for name, d in dirs.items():
        cmd += ["--adapter", f"{name}={d}"]
    log = open(log_path, "w")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{log_path.read_text()}")
        m = re.search(r"listening on (http://\S+:\d+)", log_path.read_text())
        if m:
            try:
                if httpx.get(m.group(1) + "/healthz", timeout=2).status_code == 200:
                    return proc, log, m.group(1)
            except httpx.TransportError:
                pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server did not start:\n{log_path.read_text()}")


def stop_server(proc: subprocess.Popen, log) -> bool:
    """Terminate the server started by :func:`start_server`; True when it exited cleanly (not crashed)."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()
    return proc.returncode in (0, -15)  # terminated by us


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), to compare work done on a shared, busy machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


async def load(url: str, tasks: list[str], args, pid: int) -> dict:
    import httpx

    latencies: list[float] = []
    failures: list[str] = []
    inputs_done = 0
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def one(rng, record: bool):
            nonlocal inputs_done
            task = rng.choice(tasks)
            inputs = [sentence(rng) for _ in range(rng.randint(1, args.max_inputs_per_request))]
            if rng.random() < 0.2:
                inputs[0] = [inputs[0], sentence(rng)]  # some text pairs
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/predict", json={"task": task, "inputs": inputs})
                ok = r.status_code == 200 and len(r.json()["predictions"]) == len(inputs)
                error = None if ok else f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as e:
                error = f"{type(e).__name__}: {e}"
            if record:
                if error:
                    failures.append(error)
                else:
                    latencies.append(time.perf_counter() - t0)
                    inputs_done += len(inputs)

        async def client_loop(i: int, until: float, record: bool):
            rng = random.Random(i + (1000 if record else 0))
            while time.perf_counter() < until:
                await one(rng, record)

        warm_until = time.perf_counter() + args.warmup
        await asyncio.gather(*(client_loop(i, warm_until, False) for i in range(args.clients)))
        before = (await client.get("/metrics")).text
        cpu0, started = cpu_seconds(pid), time.perf_counter()
        await asyncio.gather(*(client_loop(i, started + args.seconds, True) for i in range(args.clients)))
        elapsed, cpu1 = time.perf_counter() - started, cpu_seconds(pid)
        after = (await client.get("/metrics")).text
    lat = sorted(latencies)

    def pct(p):
        return 1000 * lat[min(len(lat) - 1, int(p / 100 * len(lat)))] if lat else float("nan")

    def metric(text, name):
        m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    batches = metric(after, "adapterkit_batches_total") - metric(before, "adapterkit_batches_total")
    rows = metric(after, "adapterkit_batch_rows_sum") - metric(before, "adapterkit_batch_rows_sum")
    tasks_per = metric(after, "adapterkit_batch_tasks_sum") - metric(before, "adapterkit_batch_tasks_sum")
    return {
        "seconds": elapsed, "requests": len(latencies), "failed": len(failures), "failures": failures[:5],
        "inputs": inputs_done, "requests_per_s": len(latencies) / elapsed, "inputs_per_s": inputs_done / elapsed,
        "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": 1000 * lat[-1] if lat else None,
                       "mean": 1000 * statistics.fmean(lat) if lat else None},
        "server_cpu_s": None if cpu0 is None else cpu1 - cpu0,
        "inputs_per_server_cpu_s": None if cpu0 is None else inputs_done / max(cpu1 - cpu0, 1e-9),
        "server_batches": batches, "mean_batch_rows": rows / batches if batches else None,
        "mean_tasks_per_batch": tasks_per / batches if batches else None,
    }


def direct(dirs: dict[str, Path], args) -> dict:
    """The same kind of inputs through predict_mixed in full batches, in this process (no HTTP)."""
    model, tok = load_model("minilm")
    model.eval()
    for name, d in dirs.items():
        ak.load_adapter(model, d, name=name)
    names = list(dirs)
    rng = random.Random(7)

    def batch():  # the clients' request stream (same distribution), flattened into full batches
        items: list = []
        tasks: list[str] = []
        while len(items) < args.batch_size:
            task = rng.choice(names)
            inputs: list = [sentence(rng) for _ in range(rng.randint(1, args.max_inputs_per_request))]
            if rng.random() < 0.2:
                inputs[0] = (inputs[0], sentence(rng))
            items += inputs
            tasks += [task] * len(inputs)
        return items[: args.batch_size], tasks[: args.batch_size]

    items, tasks = batch()
    predict_mixed(model, items, tasks, tokenizer=tok, max_length=256)  # warm-up
    rows, started, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < args.direct_seconds:
        items, tasks = batch()
        predict_mixed(model, items, tasks, tokenizer=tok, max_length=256)
        rows += len(items)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
    return {"seconds": elapsed, "inputs": rows, "inputs_per_s": rows / elapsed, "cpu_s": cpu,
            "inputs_per_cpu_s": rows / cpu, "batch_size": args.batch_size}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--adapters", type=int, default=4)
    p.add_argument("--max-inputs-per-request", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batch-window-ms", type=float, default=5.0)
    p.add_argument("--direct-seconds", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=None, help="torch threads, server and direct alike")
    p.add_argument("--out", default=str(HERE / "results" / "serve_load.json"))
    args = p.parse_args()
    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        dirs = prepare(Path(tmp), args.adapters)
        proc, log, url = start_server(dirs, args, Path(tmp) / "server.log")
        try:
            served = asyncio.run(load(url, list(dirs), args, proc.pid))
        finally:
            alive = stop_server(proc, log)
        baseline = direct(dirs, args)
    report = {
        "benchmark": "serve_load",
        "model": "minilm (all-MiniLM-L6-v2, BERT 6x384), fp32, CPU",
        "settings": vars(args),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "platform": platform.platform(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "server": served, "server_exit_ok": alive, "direct": baseline,
        "server_vs_direct_inputs_per_s": served["inputs_per_s"] / baseline["inputs_per_s"],
        "server_vs_direct_inputs_per_cpu_s": (served["inputs_per_server_cpu_s"] or 0) / baseline["inputs_per_cpu_s"],
    }
    from report import write_json  # benchmarks/ is the script's directory

    out = Path(args.out)
    write_json(out, report)
    s, d = served, baseline
    print(f"adapterkit serve load test: MiniLM, {args.adapters} tasks, {args.clients} clients, {s['seconds']:.0f} s, "
          f"1-{args.max_inputs_per_request} inputs/request, batch <= {args.batch_size}, window {args.batch_window_ms} ms, "
          f"{os.cpu_count()} CPUs (load avg {load_before[0]:.1f})")
    print(f"{'':>22} {'req/s':>7} {'inputs/s':>9} {'inputs/cpu-s':>13} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'failed':>7}")
    print(f"{'server (HTTP)':>22} {s['requests_per_s']:7.1f} {s['inputs_per_s']:9.1f} {s['inputs_per_server_cpu_s'] or 0:13.1f} "
          f"{s['latency_ms']['p50']:8.1f} {s['latency_ms']['p90']:8.1f} {s['latency_ms']['p99']:8.1f} {s['failed']:7d}")
    print(f"{'direct predict_mixed':>22} {'':>7} {d['inputs_per_s']:9.1f} {d['inputs_per_cpu_s']:13.1f}")
    print(f"server / direct: inputs/s {report['server_vs_direct_inputs_per_s']:.2f}, inputs per CPU-s "
          f"{report['server_vs_direct_inputs_per_cpu_s']:.2f}; server batches: "
          f"{s['server_batches']:.0f}, mean rows {s['mean_batch_rows'] or 0:.1f}, mean tasks {s['mean_tasks_per_batch'] or 0:.2f}")
    print(f"wrote {out}")
    if s["failed"] or not alive:
        raise SystemExit(f"{s['failed']} failed requests (e.g. {s['failures'][:2]}); server exit ok: {alive}")


if __name__ == "__main__":
    main()

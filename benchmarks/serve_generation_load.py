"""Load test of ``adapterkit serve`` generating on loopback (issue 15): ``POST /v1/completions`` with mixed
adapters under a bounded concurrent load, on the bundled SmolLM2-135M-Instruct (fp32, CPU).

1. Saves ``--adapters`` LM adapters (size 64, perturbed so each generates differently) for SmolLM2 in a
   temporary directory and starts ``python -m adapterkit.serve --model smollm2`` on 127.0.0.1 (free port),
   continuous batching, at most ``--max-running`` rows decoding at once.
2. ``--clients`` closed-loop clients (asyncio + httpx, one process; each sends its next request when the last
   one is answered, so at most ``--clients`` requests are in flight: a bounded load) send completions for
   ``--seconds`` after a warm-up: each request names a random adapter or, one time in ``len(adapters)+1``, the
   base model, a short prompt, ``max_tokens`` drawn from 4..``--max-tokens``, greedy or sampled (temperature
   0.8, top_p 0.95, a seed), and half of them ``stream: true`` (server-sent events, usage in the last chunk).
   Every answer is checked: status 200, a text, ``finish_reason`` "length" or "stop", 1..max_tokens completion
   tokens; anything else is a failure (must be 0).

Reports requests/s, completion tokens/s (wall, and per CPU-second of the server process), latency p50/p90/p99
(send -> last byte), time to first token p50/p99 for the streamed requests (send -> first text event), failures.
Writes benchmarks/results/serve_generation_load.json (report.write_json) and prints a table.

    python benchmarks/serve_generation_load.py                          # 6 clients, 60 s
    python benchmarks/serve_generation_load.py --clients 2 --seconds 10 --adapters 2 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

import adapterkit as ak
from adapterkit.models import load_model

HERE = Path(__file__).resolve().parent
SUBJECTS = ["the weather", "a cat", "rivers", "bread", "the moon", "trains", "music", "chess", "tea", "snow",
            "the sea", "bees", "clocks", "maps", "rain", "books"]
FORMS = ["Write one sentence about {}.", "A short poem about {}:", "Three facts about {}:", "Q: What is {}?\nA:"]


def prepare(root: Path, n: int) -> dict[str, Path]:
    """``n`` LM adapters for SmolLM2, saved under ``root``."""
    model, _ = load_model("smollm2", kind="lm")
    dirs = {}
    for i in range(n):
        name = f"lm{i}"
        ak.add_adapter(model, name, ak.AdapterConfig(size=64))
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in ak.adapter_parameters(model, name):
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
        dirs[name] = ak.save_adapter(model, name, root / name, extra={"kind": "lm"})
    return dirs


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def load(url: str, models: list[str], args, pid: int) -> dict:
    import httpx

    from serve_load import cpu_seconds  # benchmarks/ is the script's directory

    latencies: list[float] = []
    firsts: list[float] = []
    failures: list[str] = []
    tokens = [0]
    per_model: dict[str, int] = {}
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        async def one(rng: random.Random, record: bool) -> None:
            model = rng.choice(models)
            max_tokens = rng.randint(4, args.max_tokens)
            body = {"model": model, "prompt": rng.choice(FORMS).format(rng.choice(SUBJECTS)), "max_tokens": max_tokens}
            if rng.random() < 0.5:
                body.update(temperature=0.8, top_p=0.95, seed=rng.randint(0, 2**31))
            else:
                body["temperature"] = 0
            stream = rng.random() < 0.5
            t0, first, error, used = time.perf_counter(), None, None, None
            try:
                if stream:
                    body.update(stream=True, stream_options={"include_usage": True})
                    finish, text = None, ""
                    async with client.stream("POST", "/v1/completions", json=body) as r:
                        if r.status_code != 200:
                            error = f"{r.status_code} {(await r.aread())[:200]!r}"
                        else:
                            async for line in r.aiter_lines():
                                if not line.startswith("data: ") or line == "data: [DONE]":
                                    continue
                                chunk = json.loads(line[6:])
                                if chunk.get("usage"):
                                    used = chunk["usage"]["completion_tokens"]
                                for choice in chunk.get("choices", []):
                                    if choice.get("text") and first is None:
                                        first = time.perf_counter() - t0
                                    text += choice.get("text") or ""
                                    finish = choice.get("finish_reason") or finish
                            if finish not in ("length", "stop"):
                                error = f"stream ended without a finish_reason ({finish!r})"
                else:
                    r = await client.post("/v1/completions", json=body)
                    if r.status_code != 200:
                        error = f"{r.status_code} {r.text[:200]}"
                    else:
                        answer = r.json()
                        choice = answer["choices"][0]
                        used = answer["usage"]["completion_tokens"]
                        if not isinstance(choice["text"], str) or choice["finish_reason"] not in ("length", "stop"):
                            error = f"bad answer {str(answer)[:200]}"
            except (httpx.HTTPError, ValueError, KeyError) as e:
                error = f"{type(e).__name__}: {e}"
            if error is None and not (isinstance(used, int) and 1 <= used <= max_tokens):
                error = f"completion_tokens {used!r} not in 1..{max_tokens}"
            if not record:
                return
            if error:
                failures.append(error)
                return
            latencies.append(time.perf_counter() - t0)
            if first is not None:
                firsts.append(first)
            tokens[0] += used
            per_model[model] = per_model.get(model, 0) + 1

        async def client_loop(i: int, until: float, record: bool) -> None:
            rng = random.Random(i + (1000 if record else 0))
            while time.perf_counter() < until:
                await one(rng, record)

        warm_until = time.perf_counter() + args.warmup
        await asyncio.gather(*(client_loop(i, warm_until, False) for i in range(args.clients)))
        cpu0, started = cpu_seconds(pid), time.perf_counter()
        await asyncio.gather(*(client_loop(i, started + args.seconds, True) for i in range(args.clients)))
        elapsed, cpu1 = time.perf_counter() - started, cpu_seconds(pid)
    ms = lambda v: None if v is None else 1000 * v  # noqa: E731
    server_cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return {
        "seconds": elapsed, "requests": len(latencies), "failed": len(failures), "failures": failures[:5],
        "completion_tokens": tokens[0], "requests_per_s": len(latencies) / elapsed, "tokens_per_s": tokens[0] / elapsed,
        "latency_ms": {"p50": ms(percentile(latencies, 50)), "p90": ms(percentile(latencies, 90)),
                       "p99": ms(percentile(latencies, 99)), "max": ms(max(latencies, default=None)),
                       "mean": ms(statistics.fmean(latencies)) if latencies else None},
        "ttft_ms": {"streamed": len(firsts), "p50": ms(percentile(firsts, 50)), "p99": ms(percentile(firsts, 99))},
        "server_cpu_s": server_cpu, "tokens_per_server_cpu_s": None if not server_cpu else tokens[0] / server_cpu,
        "requests_per_model": per_model,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=6, help="concurrent closed-loop clients (the bound on the load)")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=8.0)
    p.add_argument("--adapters", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=24, help="each request's max_tokens is drawn from 4..this")
    p.add_argument("--max-running", type=int, default=8, help="the server's --max-batch-size: rows decoding at once")
    p.add_argument("--threads", type=int, default=None, help="the server's torch threads")
    p.add_argument("--out", default=str(HERE / "results" / "serve_generation_load.json"))
    args = p.parse_args()
    transformers.logging.set_verbosity_error()
    from serve_load import start_server, stop_server  # benchmarks/ is the script's directory

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="serve-gen-load-") as tmp:
        dirs = prepare(Path(tmp), args.adapters)
        server_args = argparse.Namespace(threads=args.threads, batch_size=args.max_running, batch_window_ms=5.0)
        proc, log, url = start_server(dirs, server_args, Path(tmp) / "server.log", model="smollm2")
        try:
            served = asyncio.run(load(url, ["smollm2", *dirs], args, proc.pid))
        finally:
            alive = stop_server(proc, log)
    report = {
        "benchmark": "serve_generation_load",
        "model": "smollm2 (SmolLM2-135M-Instruct, Llama 30 x 576), fp32, CPU",
        "settings": vars(args),
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                    "platform": platform.platform(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "server": served, "server_exit_ok": alive,
    }
    from report import write_json

    out = Path(args.out)
    write_json(out, report)
    s = served
    print(render(report))
    print(f"wrote {out}")
    if s["failed"] or not alive:
        raise SystemExit(f"{s['failed']} failed requests (e.g. {s['failures'][:2]}); server exit ok: {alive}")


def render(report: dict) -> str:
    """The markdown table of a results JSON."""
    a, s, m = report["settings"], report["server"], report["machine"]
    lat, ttft = s["latency_ms"], s["ttft_ms"]
    return "\n".join([
        f"SmolLM2-135M-Instruct, fp32, {a['adapters']} LM adapters + the base model, {a['clients']} closed-loop clients, "
        f"{s['seconds']:.0f} s, max_tokens 4..{a['max_tokens']}, at most {a['max_running']} rows decoding, "
        f"{m['cpus']} CPUs (load average {m['loadavg_before'][0]:.1f} at start, shared).", "",
        "| requests | req/s | completion tokens/s | tokens per server CPU-s | p50 latency (s) | p90 (s) | p99 (s) | "
        "TTFT p50 (s), streamed | TTFT p99 (s) | failed |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {s['requests']} | {s['requests_per_s']:.2f} | {s['tokens_per_s']:.1f} | {s['tokens_per_server_cpu_s'] or 0:.1f} | "
        f"{lat['p50'] / 1000:.2f} | {lat['p90'] / 1000:.2f} | {lat['p99'] / 1000:.2f} | "
        f"{(ttft['p50'] or 0) / 1000:.2f} | {(ttft['p99'] or 0) / 1000:.2f} | {s['failed']} |"])


if __name__ == "__main__":
    main()

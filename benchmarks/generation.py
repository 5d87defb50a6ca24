"""Generation with many adapters on SmolLM2-135M-Instruct (Llama 30 x 576), CPU, fp32, greedy (issue 15).

Part 1, throughput: the same B prompts, N new tokens each (EOS ignored so every variant does the same work):
  mixed     ``adapterkit.generation``: one batch, 8 adapters (row i uses adapter i % 8), KV cache
  single    the same batch, every row on adapter 0
  hf_loop   a loop over the requests, each ``model.generate(min_new_tokens=N, max_new_tokens=N)`` alone with
            its adapter active (what a server without mixed batching does)
Reported: generated tokens/s (wall and process CPU time), the mixed / single ratio overall and split into the
prefill and the decode steps (CPU time), and time to first token (TTFT): for the batched
variants the prefill of the whole batch; for the loop, the mean over requests of the time from the start of
the loop to that request's first token (a request waits for those before it). Variants run interleaved
round by round (mixed single hf_loop, mixed single hf_loop ...), medians reported.

Part 2, continuous vs static batching (``adapterkit.serve.decode_loop.DecodeLoop``, no HTTP): a mixed-length
load, LONG requests of 48 tokens and SHORT requests of 4 (by default), arriving together in a burst, on 8 adapters, at
most 8 rows running. Static batching runs a batch to its end before anyone joins; continuous lets rows join
and leave between steps. Reported: p50 / p90 latency (submit -> last token) of the short and the long ones.

    python benchmarks/generation.py --threads 2 --reps 3
    python benchmarks/generation.py --threads 1 --reps 1 --new-tokens 8 --long-tokens 24 --longs 2 --shorts 6
Writes benchmarks/results/generation.json and prints the tables (the machine is shared: read the ratios).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import torch

import adapterkit as ak
from adapterkit.generation import Row, SamplingParams, decode_step, prefill
from adapterkit.models import load_model
from adapterkit.serve.decode_loop import DecodeLoop

HERE = Path(__file__).resolve().parent
TOPICS = ["the weather", "a cat", "rivers", "bread", "the moon", "trains", "music", "chess", "tea", "snow",
          "the sea", "bees", "clocks", "maps", "rain", "books"]


def setup(adapters: int):
    model, tok = load_model("smollm2", kind="lm")
    model.eval()
    for i in range(adapters):
        ak.add_adapter(model, f"t{i}", ak.AdapterConfig(size=64))
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in ak.adapter_parameters(model, f"t{i}"):
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model, tok


def prompts(tok, n: int) -> list[list[int]]:
    return [tok.apply_chat_template([{"role": "user", "content": f"Write two sentences about {TOPICS[i % 16]}."}],
                                    add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            for i in range(n)]


@torch.inference_mode()
def batched(model, tok, ids, adapters, new: int) -> dict:
    rows = [Row(list(p), a, SamplingParams(max_new_tokens=new)) for p, a in zip(ids, adapters)]
    w0, c0 = time.perf_counter(), time.process_time()
    batch = prefill(model, rows, tok.pad_token_id, tok, eos=frozenset())
    ttft, prefill_cpu = time.perf_counter() - w0, time.process_time() - c0
    while not all(r.done for r in rows):
        decode_step(model, batch, tok, eos=frozenset())
    return {"wall": time.perf_counter() - w0, "cpu": time.process_time() - c0, "ttft": ttft,
            "prefill_cpu": prefill_cpu, "tokens": sum(len(r.generated) for r in rows)}


class _FirstToken:
    """A transformers streamer that records when the first generated token arrives (the 2nd put call)."""

    def __init__(self):
        self.calls, self.at = 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2:
            self.at = time.perf_counter()

    def end(self):
        pass


@torch.inference_mode()
def hf_loop(model, tok, ids, adapters, new: int) -> dict:
    w0, c0 = time.perf_counter(), time.process_time()
    firsts, tokens = [], 0
    for p, a in zip(ids, adapters):
        x = torch.tensor([p])
        streamer = _FirstToken()
        with ak.use_adapter(model, a):
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), min_new_tokens=new,
                                 max_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id, streamer=streamer)
        firsts.append(streamer.at - w0)
        tokens += out.shape[1] - x.shape[1]
    return {"wall": time.perf_counter() - w0, "cpu": time.process_time() - c0, "ttft": statistics.mean(firsts),
            "tokens": tokens}


def throughput(model, tok, batch: int, new: int, reps: int, adapters: int) -> dict:
    ids = prompts(tok, batch)
    variants = {"mixed": [f"t{i % adapters}" for i in range(batch)], "single": ["t0"] * batch,
                "hf_loop": [f"t{i % adapters}" for i in range(batch)]}
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    for name, ads in variants.items():  # warm-up
        (hf_loop if name == "hf_loop" else batched)(model, tok, ids[:2], ads[:2], 2)
    for _ in range(reps):
        for name, ads in variants.items():
            runs[name].append((hf_loop if name == "hf_loop" else batched)(model, tok, ids, ads, new))
    out = {}
    for name, rs in runs.items():
        out[name] = {"tokens": rs[0]["tokens"], "tok_s_wall": statistics.median(r["tokens"] / r["wall"] for r in rs),
                     "tok_s_cpu": statistics.median(r["tokens"] / r["cpu"] for r in rs),
                     "ttft_s": statistics.median(r["ttft"] for r in rs), "runs": rs}
    ratios = [m["cpu"] and s["cpu"] / m["cpu"] for m, s in zip(runs["mixed"], runs["single"])]
    out["mixed_vs_single_cpu"] = statistics.median(ratios)  # tokens/s ratio = inverse time ratio
    out["mixed_vs_single_wall"] = statistics.median(s["wall"] / m["wall"] for m, s in zip(runs["mixed"], runs["single"]))
    decode = lambda r: r["cpu"] - r["prefill_cpu"]  # noqa: E731 - the decode steps alone (CPU time)
    out["mixed_vs_single_decode_cpu"] = statistics.median(decode(s) / decode(m) for m, s in zip(runs["mixed"], runs["single"]))
    out["mixed_vs_single_prefill_cpu"] = statistics.median(s["prefill_cpu"] / m["prefill_cpu"]
                                                           for m, s in zip(runs["mixed"], runs["single"]))
    return out


class _Engine:
    """What DecodeLoop needs of the server's Engine: the model lock and the loaded tasks."""

    def __init__(self, names):
        self.model_lock = threading.RLock()
        self.tasks = {n: None for n in names}


def continuous_vs_static(model, tok, adapters: int, long_n: int, short_n: int, longs: int, shorts: int) -> dict:
    ids = prompts(tok, longs + shorts)
    plan = ["long"] * longs + ["short"] * shorts
    plan = [plan[i] for i in sorted(range(len(plan)), key=lambda i: (i % 4 != 0, i))]  # longs spread in the burst
    out = {}
    for mode in ("static", "continuous"):
        loop = DecodeLoop(model, tok, _Engine([f"t{i}" for i in range(adapters)]), max_running=8,
                          request_timeout_s=600, continuous=mode == "continuous")
        loop.eos = frozenset()  # every request generates exactly its max_tokens
        loop.start()
        done = threading.Event()
        latency: dict[str, list[float]] = {"long": [], "short": []}
        left = [len(plan)]
        lock = threading.Lock()
        t0 = time.perf_counter()
        for i, kind in enumerate(plan):
            row = Row(list(ids[i]), f"t{i % adapters}", SamplingParams(max_new_tokens=long_n if kind == "long" else short_n))

            def listener(row, delta, finished, kind=kind, start=time.perf_counter()):
                if finished:
                    with lock:
                        latency[kind].append(time.perf_counter() - start)
                        left[0] -= 1
                        if not left[0]:
                            done.set()

            loop.submit([row], listener)
        done.wait(1800)
        total = time.perf_counter() - t0
        loop.stop()
        q = lambda xs, p: statistics.quantiles(xs, n=10)[int(p * 10) - 1] if len(xs) > 1 else xs[0]  # noqa: E731
        out[mode] = {"short_p50_s": statistics.median(latency["short"]), "short_p90_s": q(latency["short"], 0.9),
                     "long_p50_s": statistics.median(latency["long"]), "long_p90_s": q(latency["long"], 0.9),
                     "total_s": total, "steps": loop.steps}
    return out


def render(res: dict) -> str:
    """The two markdown tables of a results JSON (``python benchmarks/generation.py --render``)."""
    t, b = res["throughput"], res["batching"]
    lines = [f"SmolLM2-135M-Instruct, fp32, {res['threads']} torch thread(s), batch {res['batch']}, {res['new_tokens']} new "
             f"tokens per row, {res['adapters']} adapters; run {res['started']}, load average "
             f"{res['machine']['loadavg_start'][0]:.1f} at start (a shared 2-core machine).", "",
             "| variant | tokens/s (CPU time) | tokens/s (wall) | time to first token (s) |", "|---|---|---|---|"]
    names = {"mixed": "8 adapters mixed in one batch", "single": "1 adapter, same batch",
             "hf_loop": "loop of `generate`, one request at a time"}
    for k, label in names.items():
        v = t[k]
        lines.append(f"| {label} | {v['tok_s_cpu']:.1f} | {v['tok_s_wall']:.1f} | {v['ttft_s']:.2f} |")
    split = (f" Decode steps alone: {t['mixed_vs_single_decode_cpu']:.2f}x, prefill alone: "
             f"{t['mixed_vs_single_prefill_cpu']:.2f}x (CPU time)." if "mixed_vs_single_decode_cpu" in t else "")
    lines += ["", f"Mixed / single throughput: {t['mixed_vs_single_cpu']:.2f}x (CPU time), "
              f"{t['mixed_vs_single_wall']:.2f}x (wall); medians of per-round ratios.{split}", "",
              f"Continuous vs static batching: {res.get('longs')} long requests ({res.get('long_tokens')} tokens) and "
              f"{res.get('shorts')} short ones ({res.get('short_tokens')} tokens) submitted together, 8 adapters, at most "
              "8 rows running; latency = submit to last token.", "",
              "| batching | short p50 (s) | short p90 (s) | long p50 (s) | all done (s) | decode steps |",
              "|---|---|---|---|---|---|"]
    for mode in ("static", "continuous"):
        v = b[mode]
        lines.append(f"| {mode} | {v['short_p50_s']:.1f} | {v['short_p90_s']:.1f} | {v['long_p50_s']:.1f} | "
                     f"{v['total_s']:.1f} | {v['steps']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--adapters", type=int, default=8)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--longs", type=int, default=4)
    p.add_argument("--shorts", type=int, default=12)
    p.add_argument("--long-tokens", type=int, default=48)
    p.add_argument("--short-tokens", type=int, default=4)
    p.add_argument("--out", default=str(HERE / "results" / "generation.json"))
    p.add_argument("--only-batching", action="store_true", help="rerun part 2 only, keeping part 1 of --out")
    p.add_argument("--render", action="store_true", help="print the tables of --out and exit")
    a = p.parse_args()
    if a.render:
        import json

        print(render(json.loads(Path(a.out).read_text())))
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    from report import write_json

    model, tok = setup(a.adapters)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    res = {"started": started, "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                           "loadavg_start": os.getloadavg()},
           "threads": torch.get_num_threads(), "torch": torch.__version__, "batch": a.batch, "new_tokens": a.new_tokens,
           "adapters": a.adapters}
    if a.only_batching:  # keep the throughput part of an earlier run
        import json

        earlier = json.loads(Path(a.out).read_text())
        res.update({k: earlier[k] for k in ("started", "batch", "new_tokens", "throughput")})
        res["machine"]["loadavg_start"] = earlier["machine"]["loadavg_start"]
    else:
        res["throughput"] = throughput(model, tok, a.batch, a.new_tokens, a.reps, a.adapters)
    print({k: (v if not isinstance(v, dict) else {x: y for x, y in v.items() if x != "runs"})
           for k, v in res["throughput"].items()}, flush=True)
    res["batching"] = continuous_vs_static(model, tok, a.adapters, a.long_tokens, a.short_tokens, a.longs, a.shorts)
    res.update(long_tokens=a.long_tokens, short_tokens=a.short_tokens, longs=a.longs, shorts=a.shorts)
    print(res["batching"], flush=True)
    res["machine"]["loadavg_end"] = os.getloadavg()
    write_json(Path(a.out), res)
    print(render(res))


if __name__ == "__main__":
    main()

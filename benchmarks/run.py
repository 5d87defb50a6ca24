"""adapterkit side-by-side benchmarks (issue 6): one command, prints a table, writes JSON, regenerates the doc.

    python benchmarks/run.py            # full suite on MiniLM (16 min on 2 cores at load 8; longer if busier)
    python benchmarks/run.py --quick    # small shapes, few repeats (70-100 s): a smoke test
    python benchmarks/run.py --model mpnet   # MPNet-base, main comparisons at 8x128 (about 18 min)

Method. Every configuration lives in a worker process (``worker.py``): adapterkit, the plain model, full
fine-tuning and head-only in adapterkit's venv; AdapterHub ``adapters`` and PEFT LoRA in a side venv (made by
``_adapterhub_env.py``, since ``adapters`` pins an older transformers). All models of a group are built and
warmed up first; then round after round each configuration is timed in turn (A B C ... A B C ...; the order is
rotated every round), only one worker computing at a time. Reported: median and quartiles of the per-call
times, and the median of the per-round ratios against the reference measured in the same round and the same
venv (plain model for inference, full fine-tuning for training), with their quartiles. Peak training memory
runs each configuration in a fresh process (see worker.py, ``memory``).

Results: ``benchmarks/results/<model>[-quick].json``; ``docs/benchmarks.md`` is rendered from every non-quick
results file (``report.py``), so a ``--quick`` run prints its table without replacing the doc's numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402
from flops import analyse  # noqa: E402

RESULTS = HERE / "results"
CLOCK = {"name": "cpu"}  # "cpu" (process CPU time, default) or "wall" (--clock)
DOC = ROOT / "docs" / "benchmarks.md"


class Worker:
    """A worker process speaking JSON lines."""

    def __init__(self, name: str, python: str, log_dir: Path, env: dict | None = None):
        self.name = name
        self.log = open(log_dir / f"worker-{name}.log", "w")  # noqa: SIM115
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen([python, str(HERE / "worker.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1, env=env, cwd=str(ROOT))

    def call(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} died (see {self.log.name})")
        resp = json.loads(line)
        if not resp.get("ok"):
            raise RuntimeError(f"worker {self.name}: {resp.get('error')}\n{resp.get('trace', '')}")
        return resp

    def close(self) -> None:
        try:
            self.call(cmd="quit")
        except Exception:  # noqa: BLE001
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# ------------------------------------------------------------------------------------------ configurations
# (label, venv, spec). venv "main" = adapterkit's, "side" = AdapterHub + PEFT. Sizes in the label are the
# bottleneck m; ``red`` tells the reduction factor d/m for the doc.

def configs(kind: str, hidden: int, quick: bool, side: bool) -> list[tuple[str, str, dict]]:
    m16 = round(hidden / 16)
    big = 64
    if kind == "infer":
        out = [
            ("plain", "main", {"method": "plain"}),
            (f"adapterkit m={m16}", "main", {"method": "adapterkit", "size": m16}),
        ]
        if not quick:
            out += [
                (f"adapterkit m={big}", "main", {"method": "adapterkit", "size": big}),
                (f"adapterkit m={m16} no LN copies", "main", {"method": "adapterkit", "size": m16, "train_layer_norms": False}),
                (f"adapterkit m={m16} bf16 autocast", "main", {"method": "adapterkit", "size": m16, "bf16": True}),
                ("plain bf16 autocast", "main", {"method": "plain", "bf16": True}),
            ]
        if side:
            out += [("plain [side venv]", "side", {"method": "plain"}),
                    (f"AdapterHub m={m16}", "side", {"method": "adapterhub", "size": m16})]
            if not quick:
                out.append((f"AdapterHub m={big}", "side", {"method": "adapterhub", "size": big}))
            out.append(("PEFT LoRA r=16", "side", {"method": "lora"}))
        return out
    out = [
        ("full fine-tuning", "main", {"method": "full"}),
        (f"adapterkit m={m16}", "main", {"method": "adapterkit", "size": m16}),
        ("head only", "main", {"method": "head"}),
    ]
    if not quick:
        out += [
            (f"adapterkit m={big}", "main", {"method": "adapterkit", "size": big}),
            (f"adapterkit m={m16} upper half of layers", "main", {"method": "adapterkit", "size": m16, "layers": "upper"}),
            (f"adapterkit m={m16} + gradient checkpointing", "main", {"method": "adapterkit", "size": m16, "grad_ckpt": True}),
            (f"adapterkit m={m16} bf16 autocast", "main", {"method": "adapterkit", "size": m16, "bf16": True}),
        ]
    if side:
        out += [("full fine-tuning [side venv]", "side", {"method": "full"}),
                (f"AdapterHub m={m16}", "side", {"method": "adapterhub", "size": m16})]
        if not quick:
            out.append((f"AdapterHub m={big}", "side", {"method": "adapterhub", "size": big}))
        out.append(("PEFT LoRA r=16", "side", {"method": "lora"}))
    return out


def _ref_label(label: str, venv: str, kind: str) -> str:
    base = "plain" if kind == "infer" else "full fine-tuning"
    return base + (" [side venv]" if venv == "side" else "")


def _q(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def timed_group(workers: dict, model_dir: str, n_layers: int, kind: str, batch: int, seq: int, cfgs: list,
                rounds: int, calls: int, threads: int, log) -> dict:
    """Build every configuration, then time them interleaved for ``rounds`` rounds of ``calls`` calls."""
    built = []
    for i, (label, venv, spec) in enumerate(cfgs):
        spec = dict(spec)
        if spec.get("layers") == "upper":
            spec["layers"] = list(range(n_layers // 2, n_layers))
        key = f"{kind}-{batch}x{seq}-{i}"
        try:
            r = workers[venv].call(cmd="build", key=key, model_dir=model_dir, mode="train" if kind == "train" else "infer",
                                   batch=batch, seq=seq, threads=threads, warmup=2, **spec)
        except RuntimeError as e:  # e.g. a model without gradient-checkpointing support: skip the row
            log(f"  {label}: FAILED to build: {str(e).splitlines()[0]}")
            continue
        built.append({"label": label, "venv": venv, "key": key, "spec": spec, "params_trainable": r["params_trainable"],
                      "params_total": r["params_total"], "per_round": [], "calls": [], "wall": [], "cpu": []})
        log(f"  built {label:42s} ({venv}) in {r['build_s']:.1f}s, warm-up {r['warmup_s'][-1]:.3f}s")
    for rnd in range(rounds):
        order = built[rnd % len(built):] + built[: rnd % len(built)]
        for b in order:
            r = workers[b["venv"]].call(cmd="time", key=b["key"], n=calls)
            b["wall"] += r["times"]
            b["cpu"] += r["cpu"]
            times = r[CLOCK["name"]]
            b["calls"] += times
            b["per_round"].append(statistics.fmean(times))
        log(f"  round {rnd + 1}/{rounds}: " + ", ".join(f"{b['label'].split(' [')[0][:18]}={b['per_round'][-1]:.3f}" for b in built))
    by_label = {b["label"]: b for b in built}
    rows = []
    for b in built:
        ref = by_label.get(_ref_label(b["label"], b["venv"], kind))
        ratios = [x / y for x, y in zip(b["per_round"], ref["per_round"])] if ref else []
        med = statistics.median(b["calls"])
        rows.append({
            "label": b["label"], "venv": b["venv"], "spec": b["spec"], "params_trainable": b["params_trainable"],
            "params_total": b["params_total"], "median_s": med, "p25_s": _q(b["calls"], 0.25), "p75_s": _q(b["calls"], 0.75),
            "min_s": min(b["calls"]), "n": len(b["calls"]), "examples_per_s": batch / med,
            "reference": ref["label"] if ref else None,
            "ratio": statistics.median(ratios) if ratios else None,
            "ratio_p25": _q(ratios, 0.25) if ratios else None, "ratio_p75": _q(ratios, 0.75) if ratios else None,
            "per_round_s": b["per_round"], "clock": CLOCK["name"],
            "wall_median_s": statistics.median(b["wall"]), "cpu_median_s": statistics.median(b["cpu"]),
            "wall_p25_s": _q(b["wall"], 0.25), "wall_p75_s": _q(b["wall"], 0.75),
        })
        workers[b["venv"]].call(cmd="drop", key=b["key"])
    return {"kind": kind, "batch": batch, "seq": seq, "rounds": rounds, "calls_per_round": calls, "rows": rows}


# glibc's dynamic mmap threshold keeps freed blocks of up to 32 MiB in the heap, so RSS keeps the holes left by
# the forward's temporaries; with a fixed threshold every block >= 64 KiB is mmapped and returned on free, so
# RSS follows the live tensors. The main measurement uses it; a few rows repeat with the default allocator.
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def memory_runs(pythons: dict, model_dir: str, n_layers: int, batch: int, seq: int, cfgs: list, steps: int,
                threads: int, log_dir: Path, log, default_malloc: tuple[str, ...] = ()) -> dict:
    rows = []
    runs = [(c, TUNED_MALLOC) for c in cfgs] + [((c[0] + " [default malloc]", *c[1:]), {}) for c in cfgs if c[0] in default_malloc]
    for (label, venv, spec), env in runs:
        spec = dict(spec)
        if spec.get("layers") == "upper":
            spec["layers"] = list(range(n_layers // 2, n_layers))
        w = Worker(f"mem-{len(rows)}", pythons[venv], log_dir, env=env)
        try:
            r = w.call(cmd="memory", model_dir=model_dir, mode="train", batch=batch, seq=seq, steps=steps,
                       threads=threads, **spec)
        except RuntimeError as e:  # one configuration failing must not cost the run
            log(f"  memory {label}: FAILED {str(e).splitlines()[0]}")
            continue
        finally:
            w.close()
        rows.append({"label": label, "venv": venv, "spec": spec, "malloc": "default" if not env else "mmap threshold 64 KiB",
                     "saved_bytes": r["saved_bytes"], "saved_by_node": r["saved_by_node"],
                     "rss_before": r["rss_before"], "rss_peak": r["rss_peak"],
                     "delta": r["delta"], "step_s": r["times"], "step_cpu_s": r["cpu"], "params_trainable": r["params_trainable"]})
        log(f"  memory {label:42s} peak-above-start {r['delta'] / 2**20:7.0f} MiB, saved activations "
            f"{r['saved_bytes'] / 2**20:6.0f} MiB (steps {', '.join(f'{t:.2f}' for t in r['times'])} s)")
    by = {r["label"]: r for r in rows}
    for r in rows:
        suffix = " [default malloc]" if r["malloc"] == "default" else ""
        ref = by.get(_ref_label(r["label"].replace(suffix, ""), r["venv"], "train") + suffix)
        r["reference"] = ref["label"] if ref else None
        r["delta_ratio"] = r["delta"] / ref["delta"] if ref else None
        r["peak_ratio"] = r["rss_peak"] / ref["rss_peak"] if ref else None
        r["saved_ratio"] = r["saved_bytes"] / ref["saved_bytes"] if ref and ref["saved_bytes"] and r["saved_bytes"] else None
    return {"batch": batch, "seq": seq, "steps": steps, "rows": rows,
            "method": "VmHWM reset via /proc/self/clear_refs after model, batch and optimizer exist; delta = peak RSS "
                      "during the training steps minus RSS just before them (gradients, AdamW state, activations); "
                      "MALLOC_MMAP_THRESHOLD_=65536 unless marked [default malloc]. Saved activations: bytes autograd "
                      "holds for backward after one forward (unique storages, parameters excluded)."}


def checkpoints(workers: dict, model_dir: str, cfgs: list, log) -> list[dict]:
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="ak-bench-ckpt-"))
    try:
        for i, (label, venv, spec) in enumerate(cfgs):
            key = f"ckpt-{i}"
            workers[venv].call(cmd="build", key=key, model_dir=model_dir, mode="train", batch=1, seq=8, warmup=0, **spec)
            r = workers[venv].call(cmd="save", key=key, dir=str(tmp / key))
            workers[venv].call(cmd="drop", key=key)
            rows.append({"label": label, "venv": venv, "bytes": r["bytes"], "files": r["files"]})
            log(f"  checkpoint {label:38s} {r['bytes']:>12,d} bytes  {r['files']}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    full = next((r["bytes"] for r in rows if r["label"].startswith("full")), None)
    for r in rows:
        r["share_of_full"] = r["bytes"] / full if full else None
    return rows


def compile_check(worker: Worker, model_dir: str, m: int, batch: int, seq: int, rounds: int, threads: int, log) -> dict:
    """torch.compile on the adapted model: compile time, equality with eager, and eager vs compiled timing."""
    out = {"batch": batch, "seq": seq}
    try:
        t0 = time.perf_counter()
        worker.call(cmd="build", key="cmp", model_dir=model_dir, method="adapterkit", size=m, mode="infer",
                    batch=batch, seq=seq, compile=True, warmup=2, threads=threads)
        out["compile_and_warmup_s"] = time.perf_counter() - t0
        worker.call(cmd="build", key="eag", model_dir=model_dir, method="adapterkit", size=m, mode="infer",
                    batch=batch, seq=seq, warmup=2, threads=threads)
        ce, ee = [], []
        for _ in range(rounds):
            ce += worker.call(cmd="time", key="cmp", n=2)[CLOCK["name"]]
            ee += worker.call(cmd="time", key="eag", n=2)[CLOCK["name"]]
        out.update(ok=True, compiled_median_s=statistics.median(ce), eager_median_s=statistics.median(ee),
                   ratio=statistics.median(ce) / statistics.median(ee))
        log(f"  torch.compile: works; compiled {out['compiled_median_s']:.4f}s vs eager {out['eager_median_s']:.4f}s")
    except RuntimeError as e:
        out.update(ok=False, error=str(e).splitlines()[0][:500])
        log(f"  torch.compile failed: {out['error']}")
    finally:
        for k in ("cmp", "eag"):
            try:
                worker.call(cmd="drop", key=k)
            except RuntimeError:
                pass
    return out


def model_and_log(model: str):
    """(local model directory, its config.json as a dict, a log function printing seconds since this call)."""
    from adapterkit.models import resolve_model

    started = time.perf_counter()
    model_dir = resolve_model(model)
    cfg = json.loads((Path(model_dir) / "config.json").read_text())

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:5.0f}s] {msg}", flush=True)

    return model_dir, cfg, log


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = open("/proc/cpuinfo").read()
    except OSError:
        flags = ""
    mem = None
    try:
        mem = int(next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1]) * 1024
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_bytes": mem, "platform": platform.platform(),
            "avx512_bf16": "avx512_bf16" in flags, "amx": "amx_bf16" in flags, "loadavg_start": os.getloadavg()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes and few repeats (about 2 minutes)")
    ap.add_argument("--model", default="minilm", help="minilm (default) or mpnet, or a model directory")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1: the machine is shared)")
    ap.add_argument("--no-side", action="store_true", help="skip AdapterHub and PEFT (no side venv)")
    ap.add_argument("--no-doc", action="store_true", help="do not regenerate docs/benchmarks.md")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="which time the medians and ratios use (default cpu: process CPU time, robust to preemption "
                         "on a shared machine; wall-clock is recorded too)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the number of rounds")
    args = ap.parse_args(argv)

    from adapterkit.models import resolve_model

    CLOCK["name"] = args.clock

    t_start = time.perf_counter()
    model_dir = resolve_model(args.model)
    cfg = json.load(open(Path(model_dir) / "config.json"))
    d, f, n_layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    name = args.model if args.model in ("minilm", "mpnet") else Path(model_dir).name
    log_dir = Path(tempfile.mkdtemp(prefix="ak-bench-logs-"))

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    pythons = {"main": sys.executable}
    side = not args.no_side
    if side:
        try:
            import _adapterhub_env

            pythons["side"] = str(_adapterhub_env.ensure())
        except Exception as e:  # noqa: BLE001 - no registry, say so and go on without
            log(f"side venv unavailable ({e}); AdapterHub and PEFT skipped")
            side = False
    workers = {k: Worker(k, p, log_dir) for k, p in pythons.items()}
    results: dict = {"model": name, "model_dir_name": Path(model_dir).name, "quick": args.quick, "threads": args.threads,
                     "clock": args.clock,
                     "config": {"hidden": d, "ffn": f, "layers": n_layers}, "machine": machine_info(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    try:
        results["versions"] = {k: w.call(cmd="hello")["versions"] for k, w in workers.items()}
        # Rounds are chosen per shape so the whole run stays bounded (see the module docstring).
        big = name == "mpnet"
        if args.quick:
            plan_inf = [(8, 64, 3, 2)]
            plan_train = [(8, 64, 2, 1)]
            mem_shape, mem_steps = (8, 64), 1
        elif big:  # MPNet: about 5x MiniLM per token; the main comparisons only
            plan_inf = [(8, 128, 4, 1)]
            plan_train = [(8, 128, 3, 1)]
            mem_shape, mem_steps = (8, 128), 2
        else:
            plan_inf = [(32, 128, 5, 1), (8, 64, 6, 4), (1, 16, 6, 10)]
            plan_train = [(32, 128, 3, 1), (8, 64, 5, 2)]
            mem_shape, mem_steps = (32, 128), 1
        sc = lambda r: max(2, round(r * args.scale))  # noqa: E731

        out_path = RESULTS / f"{name}{'-quick' if args.quick else ''}.json"

        def checkpoint_results() -> None:  # partial results survive a later failure (as <name>.partial.json)
            RESULTS.mkdir(parents=True, exist_ok=True)
            out_path.with_suffix(".partial.json").write_text(json.dumps(results, indent=1))

        def cfgs_for(kind: str) -> list:
            out = configs(kind, d, args.quick, side)
            if big:
                out = [c for c in out if not any(w in c[0] for w in ("upper", "bf16", "checkpointing", "no LN", "m=64"))]
            return out

        results["inference"] = []
        for b, t, rounds, calls in plan_inf:
            log(f"inference {name} {b}x{t}: {rounds} rounds x {calls} calls")
            results["inference"].append(timed_group(workers, model_dir, n_layers, "infer", b, t,
                                                    cfgs_for("infer"), sc(rounds), calls, args.threads, log))
        checkpoint_results()
        results["training"] = []
        for b, t, rounds, calls in plan_train:
            log(f"training step {name} {b}x{t}: {rounds} rounds x {calls} steps")
            results["training"].append(timed_group(workers, model_dir, n_layers, "train", b, t,
                                                   cfgs_for("train"), sc(rounds), calls, args.threads, log))

        checkpoint_results()
        m16 = round(d / 16)
        log(f"peak training memory {mem_shape[0]}x{mem_shape[1]}, one fresh process per configuration")
        mem_cfgs = cfgs_for("train")
        if args.quick:  # the smoke test: one adapter configuration against its reference
            mem_cfgs = [c for c in mem_cfgs if c[0] in ("full fine-tuning", f"adapterkit m={m16}")]
        if big:  # MPNet: the main comparisons only, to keep the run bounded
            mem_cfgs = [c for c in mem_cfgs if not any(w in c[0] for w in ("m=64", "upper", "bf16"))]
        if not args.quick and not big:
            mem_cfgs += [("full fine-tuning + gradient checkpointing", "main", {"method": "full", "grad_ckpt": True})]
        results["memory"] = memory_runs(pythons, model_dir, n_layers, *mem_shape, mem_cfgs, mem_steps, args.threads, log_dir, log,
                                        default_malloc=("full fine-tuning", f"adapterkit m={m16}"))

        checkpoint_results()
        log("checkpoint bytes per task")
        ck = [("full fine-tuning (save_pretrained)", "main", {"method": "full"}),
              (f"adapterkit m={m16}", "main", {"method": "adapterkit", "size": m16}),
              ("adapterkit m=64", "main", {"method": "adapterkit", "size": 64})]
        if side and not args.quick:
            ck += [(f"AdapterHub m={m16}", "side", {"method": "adapterhub", "size": m16}),
                   ("AdapterHub m=64", "side", {"method": "adapterhub", "size": 64}),
                   ("PEFT LoRA r=16", "side", {"method": "lora"})]
        results["checkpoint"] = checkpoints(workers, model_dir, ck, log)

        seqs = sorted({t for _, t, _, _ in plan_inf + plan_train})
        results["flops"] = []
        for t in seqs:
            for label, kw in [(f"adapters m={m16}", {"m": m16}), ("adapters m=64", {"m": 64}),
                              (f"adapters m={m16} layers {n_layers // 2}-{n_layers - 1}", {"m": m16, "layers": list(range(n_layers // 2, n_layers))}),
                              ("LoRA r=16 (q, v)", {"lora_r": 16}), ("frozen backbone, no adapters", {"m": 0})]:
                results["flops"].append({"label": label, "seq": t, **analyse(d, f, n_layers, t, **kw)})

        if not args.quick and not big:
            log("torch.compile on the adapted model")
            results["compile"] = compile_check(workers["main"], model_dir, m16, 8, 64, 5, args.threads, log)
    finally:
        for w in workers.values():
            w.close()
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["wall_s"] = time.perf_counter() - t_start

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}{'-quick' if args.quick else ''}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out)
    out.with_suffix(".partial.json").unlink(missing_ok=True)
    print()
    print(report.render_tables(results))
    print(f"\nwrote {out.relative_to(ROOT)} in {results['wall_s']:.0f}s")
    if not args.no_doc:
        report.write_doc(RESULTS, DOC)
        print(f"regenerated {DOC.relative_to(ROOT)}")
    return results


if __name__ == "__main__":
    main()

"""ONNX Runtime vs PyTorch eager on CPU: the bundled MiniLM (BERT 6 x 384) with one Houlsby adapter, exported
by ``adapterkit.export`` (issue 17), latency and throughput at 1x16, 8x64 and 32x128 tokens (batch x sequence).

Variants, all on the same token ids (random ids 1000..20000, full attention mask), fp32 unless said:
  pytorch        eager PyTorch, ``model.eval()`` + ``torch.inference_mode()``, the adapter active (hooks)
  onnxruntime    the exported graph (model.onnx), ONNX Runtime's CPU provider, default graph optimisations
  ort int8       ONNX Runtime's dynamic int8 quantisation of it (model.int8.onnx), when built (``--no-int8``: not)

Timing: every variant is warmed up (2 calls), then ``--rounds`` rounds in which the variants run interleaved,
the order rotated each round (A B C, B C A, ...); per round each variant makes ``calls`` calls (more for the
small shapes). Reported per variant: median and quartiles of the per-call times (process CPU time, and wall
time beside it), examples/s = batch / median, and the median (quartiles) of the per-round ratios to PyTorch
measured in the same round -- the number that stays comparable on a machine shared with other work.
Threads: torch and ONNX Runtime both get ``--threads`` intra-op threads (default 1; ORT's inter-op 1).
With ``--adapter`` (a trained run's adapter/), also the validation accuracy of that run through PyTorch, ONNX
Runtime fp32 and int8 (what int8 quantisation costs), on the run's own validation set and max length.

    python benchmarks/onnx_runtime.py                       # builds the export in a temporary directory
    python benchmarks/onnx_runtime.py --adapter runs/rt/adapter --rounds 3   # a trained adapter: + accuracy
Writes benchmarks/results/onnx_runtime.json and prints a table; ``python benchmarks/report.py`` puts it in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

import adapterkit as ak
from adapterkit.export import export_model_onnx
from adapterkit.export.onnx import INT8_FILE, MODEL_FILE, TOLERANCE, require_onnx

HERE = Path(__file__).resolve().parent
SHAPES = ((1, 16, 10), (8, 64, 4), (32, 128, 1))  # batch, sequence, calls per round


def build_model(adapter_dir: str | None, size: int):
    """(model with its adapter active, tokenizer, description): a saved adapter, or a randomised Houlsby one
    (untrained adapters are near identity; trained ones are not, and the work is the same)."""
    from adapterkit.evaluation import load_trained
    from adapterkit.methods import ADAPTER_NAME
    from adapterkit.models import load_model

    if adapter_dir:
        trained = load_trained(adapter_dir)
        config = ak.read_adapter_config(adapter_dir)
        c, run = config["config"], config["extra"]
        size = c["size"] or f"d/{c['reduction_factor']}"
        best = (run.get("best") or {}).get("main")
        return trained.model, trained.tokenizer, ADAPTER_NAME, (
            f"{c['placement']} m={size} trained by `adapterkit train` on {run.get('task')} "
            f"({run.get('method', 'adapter')}, validation {best:.4f})" if best is not None else f"saved adapter {adapter_dir}")
    torch.manual_seed(0)
    model, tok = load_model("minilm")
    ak.add_adapter(model, "bench", ak.AdapterConfig(size=size), head=2)
    with torch.no_grad():
        for p in ak.adapter_parameters(model, "bench"):
            p.add_(torch.randn_like(p) * 0.02)
    ak.set_active(model, "bench")
    return model.eval(), tok, "bench", f"Houlsby m={size}, layer-norm copies, 2-label head, randomised weights"


def session(path: Path, threads: int):
    ort = require_onnx()["onnxruntime"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bench_shape(model, sessions: dict, batch: int, length: int, calls: int, rounds: int) -> dict:
    g = torch.Generator().manual_seed(batch * 1000 + length)
    ids = torch.randint(1000, 20000, (batch, length), generator=g)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    feeds = {k: {i.name: inputs[i.name].numpy() for i in s.get_inputs()} for k, s in sessions.items()}

    def torch_call():
        with torch.inference_mode():
            return model(**inputs).logits

    variants = {"pytorch": torch_call, **{k: (lambda s=s, f=feeds[k]: s.run(None, f)[0]) for k, s in sessions.items()}}
    reference = torch_call().numpy()
    agreement = {k: float(np.abs(sessions[k].run(None, feeds[k])[0] - reference).max()) for k in sessions}
    if agreement.get("onnxruntime", 0.0) > TOLERANCE * max(1.0, float(np.abs(reference).max())):
        raise SystemExit(f"ONNX Runtime disagrees with PyTorch by {agreement['onnxruntime']:.3g} at {batch}x{length}")
    for fn in variants.values():  # warm-up
        fn(), fn()
    names = list(variants)
    cpu = {k: [] for k in names}
    wall = {k: [] for k in names}
    per_round = {k: [] for k in names}  # the round's median CPU time per call
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for k in order:
            times = []
            for _ in range(calls):
                c0, w0 = time.process_time(), time.perf_counter()
                variants[k]()
                wall[k].append(time.perf_counter() - w0)
                times.append(time.process_time() - c0)
            cpu[k] += times
            per_round[k].append(statistics.median(times))
    rows = {}
    for k in names:
        q = statistics.quantiles(cpu[k], n=4) if len(cpu[k]) > 1 else [cpu[k][0]] * 3
        ratios = [a / b for a, b in zip(per_round[k], per_round["pytorch"])]
        rq = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        rows[k] = {"median_ms": 1000 * q[1], "p25_ms": 1000 * q[0], "p75_ms": 1000 * q[2],
                   "wall_median_ms": 1000 * statistics.median(wall[k]), "examples_per_s": batch / q[1],
                   "ratio_vs_pytorch": statistics.median(ratios), "ratio_p25": rq[0], "ratio_p75": rq[2],
                   "max_abs_diff_vs_pytorch": agreement.get(k, 0.0)}
    return {"batch": batch, "seq": length, "calls_per_round": calls, "rounds": rounds, "rows": rows}


def accuracy(model, tok, out: Path, sessions: dict, batch_size: int = 64) -> dict:
    """A trained adapter's validation accuracy through PyTorch, ONNX Runtime and (if built) int8, on the
    run's own validation set with its recorded max length, batches of similar lengths (padding inside)."""
    from adapterkit.data import load_task
    from adapterkit.evaluation import build_features
    from adapterkit.features import collate, model_inputs
    from adapterkit.metrics import compute_metrics

    meta = json.loads((out / "adapterkit_onnx.json").read_text())
    info = meta["info"]
    run = ak.read_adapter_config(info["adapter_dir"])["extra"]
    task = load_task(run["task"], seed=run.get("seed", 0), max_validation=run.get("max_validation"), **run.get("data", {}))
    features = build_features(task.validation, "classification", tok, run.get("max_length") or 128, 128)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    predictions = {k: [None] * len(features) for k in ("pytorch", *sessions)}
    logits = {k: [] for k in sessions}
    reference = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = model_inputs(collate([features[i] for i in rows], "classification", tok.pad_token_id))
        with torch.inference_mode():
            want = model(**batch).logits.numpy()
        reference.append(want)
        for k, s in sessions.items():
            got = s.run(None, {i.name: batch[i.name].numpy() for i in s.get_inputs()})[0]
            logits[k].append(got)
            for j, i in enumerate(rows):
                predictions[k][i] = int(got[j].argmax())
        for j, i in enumerate(rows):
            predictions["pytorch"][i] = int(want[j].argmax())
    labels = [e["label"] for e in task.validation]
    result = {"task": run["task"], "examples": len(labels), "max_length": run.get("max_length") or 128,
              "recorded_accuracy": (run.get("best") or {}).get("accuracy")}
    for k, p in predictions.items():
        result[k] = {"accuracy": compute_metrics(task.metric, p, labels)["accuracy"],
                     "predictions_differing_from_pytorch": sum(a != b for a, b in zip(p, predictions["pytorch"]))}
        if k in logits:
            result[k]["max_abs_logit_diff"] = float(max(np.abs(a - b).max() for a, b in zip(logits[k], reference)))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", help="a saved adapter (adapter/ of a run); default: a randomised Houlsby one")
    parser.add_argument("--size", type=int, default=64, help="bottleneck size of the randomised adapter")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and ONNX Runtime")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 quantised model")
    parser.add_argument("--trained-with", help="the command that trained --adapter, recorded with the results")
    parser.add_argument("--out", default=str(HERE / "results" / "onnx_runtime.json"))
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    t0 = time.perf_counter()
    model, tok, name, described = build_model(args.adapter, args.size)
    with tempfile.TemporaryDirectory(prefix="onnx-bench-") as tmp:
        e0 = time.perf_counter()
        out = export_model_onnx(model, tok, Path(tmp) / "export", name, quantize=None if args.no_int8 else "int8",
                                info={"adapter_dir": args.adapter} if args.adapter else None)
        export_s = time.perf_counter() - e0
        meta = json.loads((out / "adapterkit_onnx.json").read_text())
        sessions = {"onnxruntime": session(out / MODEL_FILE, args.threads)}
        if not args.no_int8:
            sessions["ort int8"] = session(out / INT8_FILE, args.threads)
        sizes = {k: (out / f).stat().st_size for k, f in (("onnxruntime", MODEL_FILE), ("ort int8", INT8_FILE))
                 if (out / f).exists()}
        load_before = os.getloadavg()
        groups = [bench_shape(model, sessions, b, t, calls, args.rounds) for b, t, calls in SHAPES]
        scores = accuracy(model, tok, out, sessions) if args.adapter else None
    report = {
        "benchmark": "onnx_runtime",
        "model": "minilm (all-MiniLM-L6-v2, BERT 6x384), CPU, fp32 unless int8",
        "adapter": described,
        "adapter_trained_with": args.trained_with,
        "started": started,
        "wall_s": time.perf_counter() - t0,
        "export_s": export_s,
        "file_bytes": sizes,
        "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "processor": _cpu_name(), "int8_flags": _int8_flags(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "versions": meta["versions"],
        "groups": groups,
        "accuracy": scores,
    }
    from report import render_onnx, write_json  # noqa: E402 (benchmarks/ is the script's directory)

    path = Path(args.out)
    write_json(path, report)

    print(render_onnx(report))
    print(f"wrote {path}")


def _cpuinfo(field: str) -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _cpu_name() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def _int8_flags() -> list[str]:
    """The CPU features int8 GEMMs gain from (without VNNI/AMX, ONNX Runtime's int8 kernels gain little)."""
    flags = set(_cpuinfo("flags").split())
    return sorted(flags & {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"})


if __name__ == "__main__":
    main()

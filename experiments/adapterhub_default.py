"""AdapterHub's default bottleneck adapter trained at the same budget as adapterkit's runs (issue 12's acceptance:
adapterkit's default at or above AdapterHub's default on every Table-2 task, measured side by side).

AdapterHub's ``adapters`` pins transformers 4.x, so the training runs in the side venv that
benchmarks/_adapterhub_env.py builds, by tests/adapterhub_train_side.py (beside the other AdapterHub parity
scripts). This side prepares everything that decides the comparison, with adapterkit's own code, so both
libraries see the same thing:

* the data: ``load_task`` with the spec's seed and train/validation sizes, tokenised by ``build_features`` at
  the spec's max length (the same token ids adapterkit trains on);
* the batches: adapterkit's seeded, length-grouped order of every epoch (``train._epoch_order``);
* the optimiser: AdamW, no weight decay, 10% linear warm-up then linear decay, gradient clipping 1.0 (adapterkit's
  defaults; AdapterHub's examples use transformers' Trainer, whose defaults are the same without the warm-up);
* the evaluation: the side returns each epoch's validation predictions; the metric is adapterkit's
  ``compute_metrics`` and the best epoch is kept, as ``adapterkit train`` does.

What differs is what AdapterHub's default is: ``add_adapter(name, config="seq_bn")`` (SeqBnConfig(): one
adapter per layer after the FFN, reduction factor 16, ReLU, its init), ``add_classification_head`` (two layers,
tanh, on the [CLS] vector) and ``train_adapter`` (the base frozen; adapter and head trained at the spec's lr).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from runner import ROOT, data_options

SIDE_SCRIPT = ROOT / "tests" / "adapterhub_train_side.py"
WARMUP, GRAD_CLIP = 0.1, 1.0  # adapterkit's TrainConfig defaults


def side_python() -> Path:
    """The side venv's python (created on first use by benchmarks/_adapterhub_env.py: a few minutes, PyPI)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import _adapterhub_env
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return _adapterhub_env.ensure()


def job_of(spec: dict) -> tuple[dict, object]:
    """The side script's input for ``spec`` (model directory, features, batch orders, optimiser settings) and
    the task it was made from."""
    import torch

    from adapterkit.data import load_task
    from adapterkit.evaluation import build_features
    from adapterkit.models import resolve_model
    from adapterkit.train import _epoch_order
    from transformers import AutoTokenizer

    task = load_task(spec["task"], seed=spec["seed"], max_train=spec["max_train"],
                     max_validation=spec["max_validation"], **data_options(spec["task"]))
    if task.kind != "classification":
        raise ValueError(f"the AdapterHub comparison covers classification tasks; {spec['task']!r} is {task.kind}")
    model_dir = str(resolve_model(spec["model"]))
    tok = AutoTokenizer.from_pretrained(model_dir)
    keep = ("input_ids", "token_type_ids")
    train = [{**{k: f[k] for k in keep if k in f}, "label": f["labels"]}
             for f in build_features(task.train, task.kind, tok, spec["max_length"], 128, training=True)]
    validation = [{**{k: f[k] for k in keep if k in f}, "label": f["labels"]}
                  for f in build_features(task.validation, task.kind, tok, spec["max_length"], 128)]
    lengths = [len(f["input_ids"]) for f in train]
    orders = [_epoch_order(lengths, spec["batch_size"], spec["seed"], e) for e in range(spec["epochs"])]
    job = {"model_dir": model_dir, "config": spec["adapterhub_config"], "num_labels": len(task.label_names),
           "lr": spec["lr"], "epochs": spec["epochs"], "batch_size": spec["batch_size"], "seed": spec["seed"],
           "warmup": WARMUP, "grad_clip": GRAD_CLIP, "pad_token_id": tok.pad_token_id,
           "threads": torch.get_num_threads(), "train": train, "validation": validation, "orders": orders}
    return job, task


def train_adapterhub(spec: dict, out: Path) -> dict:
    """Train ``spec`` (method "adapterhub") in the side venv; write ``out``/metrics.json (the fields
    runner.summarise reads, as adapterkit's metrics.json has them) through a temporary directory."""
    from adapterkit import metrics as M

    job, task = job_of(spec)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # the runner's own scratch (experiments/runs), never a user's
    partial.mkdir(parents=True)
    try:
        (partial / "job.json").write_text(json.dumps(job))
        started = time.time()
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(job["threads"])}
        done = subprocess.run([str(side_python()), str(SIDE_SCRIPT), str(partial / "job.json"), str(partial / "side.json")],
                              capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"the side venv's training failed: {done.stderr.strip()[-2000:]}")
        side = json.loads((partial / "side.json").read_text())
        labels = [e["label"] for e in task.validation]
        history, best = [], None
        for epoch in side["epochs"]:
            record = {"epoch": epoch["epoch"], "train_loss": epoch["train_loss"],
                      **M.compute_metrics(task.metric, epoch["predictions"], labels), "loss": epoch["validation_loss"]}
            history.append(record)
            if best is None or (record["main"] > best["main"] if M.higher_is_better(task.metric) else record["main"] < best["main"]):
                best = record
        train_seconds = sum(e["train_seconds"] for e in side["epochs"])
        metrics = {"task": task.name, "kind": task.kind, "metric": task.metric, "model": spec["model"],
                   "method": "adapterhub", "adapterhub_config": spec["adapterhub_config"], "adapter_size": side["adapter_size"],
                   "trainable_params": side["trainable_params"], "total_params": side["total_params"],
                   "trainable_pct": 100.0 * side["trainable_params"] / side["total_params"],
                   "epochs": history, "best": best, "train_seconds": round(train_seconds, 3),
                   "examples_per_second": round(len(job["train"]) * len(history) / max(train_seconds, 1e-9), 2),
                   "lr": spec["lr"], "batch_size": spec["batch_size"], "max_length": spec["max_length"],
                   "seed": spec["seed"], "warmup": WARMUP, "grad_clip": GRAD_CLIP, "split": task.split,
                   "wall_seconds_side": round(time.time() - started, 1), "versions": side["versions"]}
        (partial / "job.json").unlink()
        (partial / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return metrics

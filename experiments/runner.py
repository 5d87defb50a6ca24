"""The runner's machinery: a training run described by a *spec* (a plain dict), its result cached as JSON
under a hash of the spec, and a Runner that trains the missing specs (several processes at once).

    spec -> label_of(spec)-spec_key(spec).json under experiments/results/train/   (the cached summary)
         -> experiments/runs/<spec_key>/                                          (the training directory)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from budgets import BUDGETS, LONG_TASKS, PAIR_TASKS, SEED, SST2_FULL_MAX_TRAIN

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
RUNS = HERE / "runs"
DATA = Path(os.environ.get("ADAPTERKIT_DATA", ROOT.parent / "shared" / "data"))


# ----------------------------------------------------------------------------------------------- specs
def spec_key(spec: dict) -> str:
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def label_of(spec: dict) -> str:
    parts = [spec["task"].replace("/", "-"), spec["method"]]
    if spec.get("model", "minilm") != "minilm":
        parts.insert(0, spec["model"])
    if spec["method"] == "adapter":
        parts.append(f"m{spec['adapter_size']}")
    if spec["method"] == "top-k":
        parts.append(f"k{spec['top_layers']}")
    if spec["method"] == "adapterhub":  # AdapterHub's own adapter, trained in the side venv (adapterhub_default.py)
        parts.append(spec["adapterhub_config"].replace("_", "-"))
    parts.append(f"lr{spec['lr']:g}")
    if "init_std" in spec:
        parts.append(f"std{spec['init_std']:g}")
    if "adapter_layers" in spec:
        parts.append("layers" + "".join(str(i) for i in spec["adapter_layers"]))
    if spec.get("bf16"):
        parts.append("bf16")
    if spec.get("train_pooler"):
        parts.append("pooler")
    if "head_lr" in spec:
        parts.append(f"hlr{spec['head_lr']:g}")
    if spec.get("train_embedding_norm"):
        parts.append("embln")
    if "site" in spec:
        parts.append(spec["site"].replace("_", "-"))
    if spec.get("probe_epochs"):
        parts.append(f"lp{spec['probe_epochs']}")
    if spec.get("lr_reference_size"):  # the adapters at lr x reference / size
        parts.append(f"lrref{spec['lr_reference_size']}")
    if "recipe" in spec:  # trained by adapterkit's recipe N (2: adapter after the dropout, tanh GELU)
        parts.append(f"r{spec['recipe']}")
    if spec.get("seed", SEED) != SEED:
        parts.append(f"seed{spec['seed']}")
    if spec.get("epochs", 3) > 3:
        parts.append(f"e{spec['epochs']}")
    if "init_from" in spec:
        parts.append("seq")
    if "fuse_from" in spec:  # AdapterFusion over these runs' adapters
        parts.append("fuse-" + "+".join(s["task"].split("/")[-1] for s in spec["fuse_from"]))
    return "-".join(parts)


def train_spec(B: dict, task: str, method: str, lr: float, size: int = 64, top_layers: int = 2, **extra) -> dict:
    """A training run's spec under budget B (everything train() needs, and nothing else)."""
    max_train = B["max_train"] if task.startswith("glue/") else B.get("max_train_other", B["max_train"])
    if task in LONG_TASKS and "max_train_long" in B:  # every example fills max_length: 3-4x the cost
        max_train = B["max_train_long"]
    if task == "glue/sst2" and max_train is None:
        max_train = B.get("sst2_max_train", SST2_FULL_MAX_TRAIN)
    spec = {"model": "minilm", "task": task, "method": method, "lr": lr, "epochs": B["epochs"],
            "batch_size": B["batch_size"], "max_train": max_train, "max_validation": B["max_validation"],
            "max_length": B["len_pair"] if (task in PAIR_TASKS or task in LONG_TASKS) else B["len_single"],
            "seed": B["seed"]}
    if method == "adapter":
        spec["adapter_size"] = size
    if method == "top-k":
        spec["top_layers"] = top_layers
    spec.update(extra)
    return spec


def result_path(kind: str, spec: dict, label: str) -> Path:
    return RESULTS / kind / f"{label}-{spec_key(spec)}.json"


def load_cached(kind: str, spec: dict, label: str) -> dict | None:
    path = result_path(kind, spec, label)
    return json.loads(path.read_text()) if path.is_file() else None


def store(kind: str, spec: dict, label: str, result: dict) -> dict:
    path = result_path(kind, spec, label)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"label": label, "key": spec_key(spec), "spec": spec, "result": result}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # two runner processes may write at once
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    return record


# ------------------------------------------------------------------------------------------- training
def run_dir(spec: dict) -> Path:
    return RUNS / spec_key(spec)


def data_options(task: str) -> dict:
    if task.startswith("glue/"):
        return {"data_dir": str(DATA / "glue")}
    if task in ("squad", "squad-gen"):
        return {"data_dir": str(DATA / "squad")}
    return {}


def _encoder_dir(spec: dict) -> Path:
    """The body (no task head) of a finished full fine-tuning run, as a model directory: the start of the
    next task in sequential full fine-tuning."""
    out = run_dir(spec) / "encoder"
    if (out / "config.json").is_file():
        return out
    from adapterkit.models import load_model

    kind = "regression" if spec["task"] == "glue/stsb" else "classification"
    model, tok = load_model(str(ensure_trained(spec) / "adapter"), kind=kind)
    tmp = out.with_name("encoder.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.base_model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def _train_now(spec: dict) -> dict:
    """Train one spec into run_dir(spec) (resuming an interrupted run); returns its metrics.json."""
    import fcntl

    out = run_dir(spec)
    RUNS.mkdir(parents=True, exist_ok=True)
    with open(RUNS / f"{spec_key(spec)}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runner processes never train one spec at once: the second waits
        if (out / "metrics.json").is_file():
            return json.loads((out / "metrics.json").read_text())
        return _train_locked(spec, out)


def _train_locked(spec: dict, out: Path) -> dict:
    import torch

    if spec["method"] == "adapterhub":
        from adapterhub_default import train_adapterhub

        return train_adapterhub(spec, out)

    from adapterkit.train import TrainConfig, train

    model = spec["model"]
    if "init_from" in spec:  # sequential full fine-tuning: start from the previous task's body
        model = str(_encoder_dir(spec["init_from"]))
    config = TrainConfig(output=str(out), model=model, task=spec["task"], method=spec["method"],
                         adapter_size=spec.get("adapter_size", 64), top_layers=spec.get("top_layers", 2),
                         init_std=spec.get("init_std", 1e-3), adapter_layers=spec.get("adapter_layers"),
                         bf16=spec.get("bf16", False), train_pooler=spec.get("train_pooler", False),
                         head_lr=spec.get("head_lr", spec["lr"]),  # unset: the head at the run's lr (the default before issue 12)
                          train_embedding_norm=spec.get("train_embedding_norm", False),
                         # recipe 2 reads the dropout's output unless its spec says otherwise; earlier runs the projection
                         site=spec.get("site", "after_dropout" if spec.get("recipe", 1) >= 2 else "before_dropout"),
                         probe_epochs=spec.get("probe_epochs", 0), lr_reference_size=spec.get("lr_reference_size"),
                         fuse=tuple(str(ensure_trained(s) / "adapter") for s in spec.get("fuse_from", ())),
                         doc_stride=spec.get("doc_stride", 128),
                         lr=spec["lr"], epochs=spec["epochs"], eval_batch_size=spec.get("eval_batch_size", 64),
                         batch_size=spec["batch_size"], max_length=spec["max_length"], max_train=spec["max_train"],
                         max_validation=spec["max_validation"], seed=spec["seed"], data=data_options(spec["task"]),
                         resume=True, progress=False)
    torch.manual_seed(spec["seed"])
    return train(config)


def ensure_trained(spec: dict) -> Path:
    """run_dir(spec), training it first when the directory is missing (e.g. on a fresh checkout)."""
    if not (run_dir(spec) / "metrics.json").is_file():
        _train_now(spec)
    return run_dir(spec)


def summarise(metrics: dict) -> dict:
    keep = ("task", "method", "metric", "adapter_size", "top_layers", "trainable_params", "total_params",
            "trainable_pct", "epochs", "best", "train_seconds", "examples_per_second", "lr", "batch_size",
            "max_length", "seed", "versions", "device")
    out = {k: metrics.get(k) for k in keep}
    split = metrics.get("split", {})
    out["split"] = {k: split.get(k) for k in ("sizes", "subsample") if k in split}
    return out


def _worker(spec: dict, threads: int) -> dict:
    """Process-pool entry: train one spec and return its summary (or the error)."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    started = time.time()
    try:
        metrics = _train_now(spec)
    except Exception as e:  # recorded, so a diverging grid point (e.g. full FT at 3e-3) is a result too
        return {"error": f"{type(e).__name__}: {e}", "wall_seconds": round(time.time() - started, 1)}
    summary = summarise(metrics)
    summary["wall_seconds"] = round(time.time() - started, 1)
    return summary


class Runner:
    def __init__(self, budget: str, jobs: int = 1, threads: int = 1, keep_models: bool = True, log=print,
                 dry: bool = False, retry_failed: bool = False):
        self.budget_name, self.B = budget, BUDGETS[budget]
        self.jobs, self.threads, self.keep_models, self.log = jobs, threads, keep_models, log
        self.dry = dry  # dry: never train or compute; missing results come back as None (the doc builder)
        # A failed run is a result (a diverging grid point fails the same way again), so it is not retrained,
        # unless asked: a failure of the machine or of a since-fixed bug is worth another try.
        self.retry_failed = retry_failed and not dry
        self.trained = 0  # runs actually trained by this invocation (a cached re-run trains none)

    def need(self, specs: list[dict]) -> list[dict]:
        """Results (the cached JSON records) of every spec, training the missing ones (up to --jobs at once)."""
        records: dict[int, dict] = {}
        missing = []
        for i, spec in enumerate(specs):
            cached = load_cached("train", spec, label_of(spec))
            if cached is not None and not (self.retry_failed and "error" in cached["result"]):
                records[i] = cached
            elif not any(spec == s for _, s in missing):
                missing.append((i, spec))
        if missing and self.dry:
            return [records.get(i) for i in range(len(specs))]
        if missing:
            self._rebuild_inputs([s for _, s in missing])
            self.log(f"  training {len(missing)} run(s): " + ", ".join(label_of(s) for _, s in missing))
            for (i, s), summary in self._train_all(missing):  # cached as soon as each run ends
                records[i] = self._finish(s, summary)
        for i, spec in enumerate(specs):  # duplicates within this call
            if i not in records:
                records[i] = load_cached("train", spec, label_of(spec))
        return [records[i] for i in range(len(specs))]

    def _train_all(self, items: list[tuple]):
        """Train ``(tag, spec)`` items, up to --jobs at once; yields ``((tag, spec), summary)`` as each ends."""
        if self.jobs > 1 and len(items) > 1:
            import multiprocessing as mp

            with ProcessPoolExecutor(self.jobs, mp_context=mp.get_context("spawn")) as pool:
                futures = {pool.submit(_worker, s, self.threads): (tag, s) for tag, s in items}
                for f in as_completed(futures):
                    yield futures[f], f.result()
        else:
            for tag, s in items:
                yield (tag, s), _worker(s, self.threads)

    def _rebuild_inputs(self, specs: list[dict]) -> None:
        """Train again, --jobs at once, the runs whose weights these specs read (a fusion's adapters) when
        their directories are missing, as on a fresh checkout: the JSON is committed, the weights are scratch.
        Left to each run, every worker would wait on the same one in turn (one core busy)."""
        inputs = []
        for spec in specs:
            for dep in spec.get("fuse_from", ()):
                if not (run_dir(dep) / "metrics.json").is_file() and dep not in inputs:
                    inputs.append(dep)
        if inputs:
            self.log(f"  rebuilding the weights of {len(inputs)} run(s) these runs read: "
                     + ", ".join(label_of(d) for d in inputs))
            for (_, dep), summary in self._train_all([(None, d) for d in inputs]):
                if "error" in summary:
                    self.log(f"    {label_of(dep)}: FAILED {summary['error'][:200]}")

    def _finish(self, spec: dict, summary: dict) -> dict:
        cached = load_cached("train", spec, label_of(spec))
        if cached is not None and "error" not in cached["result"]:  # another runner process trained it meanwhile
            return cached
        self.trained += 1
        record = store("train", spec, label_of(spec), summary)
        if "error" in summary:
            self.log(f"    {label_of(spec)}: FAILED {summary['error'][:200]}")
        else:
            self.log(f"    {label_of(spec)}: {summary['metric']} main={summary['best']['main']:.4f} "
                     f"({summary['trainable_pct']:.2f}% trained, {summary['wall_seconds']:.0f}s, "
                     f"{summary['examples_per_second']:.1f} ex/s)")
        if not self.keep_models and spec["method"] in ("full", "top-k"):
            shutil.rmtree(run_dir(spec) / "adapter", ignore_errors=True)
        return record

    def derived(self, name: str, spec: dict, compute) -> dict:
        cached = load_cached("derived", spec, name)
        if cached is not None or self.dry:
            return cached
        self.log(f"  computing {name}")
        import torch

        torch.set_num_threads(self.threads)
        started = time.time()
        result = compute()
        result["wall_seconds"] = round(time.time() - started, 1)
        self.trained += 1
        return store("derived", spec, name, result)


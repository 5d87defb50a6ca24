"""Reproduce Houlsby et al. 2019 (arXiv 1902.00751) at MiniLM-L6 scale: one command, resumable, cached.

    python experiments/run.py --jobs 2              # every experiment, --budget standard (docs/results.md)
    python experiments/run.py --only table1 --jobs 2
    python experiments/run.py --budget quick        # the first, smaller protocol (docs/results-quick.md)
    python experiments/run.py --budget full         # the larger protocol (days on CPU)
    python experiments/run.py --doc-only            # rebuild docs/results*.md + plots from the JSON

Every training run is described by a *spec* (a plain dict: model, task, method, size, lr, epochs, data
subset, seed...). Its result is cached as ``experiments/results/train/<label>-<key>.json`` where ``key`` is
a hash of the spec, so a run that exists is never trained again, and identical runs shared by several
experiments (e.g. the Table-1 adapters reused by the sequential-learning experiment) train once.
Derived results (ablations, sequential evaluation) are cached the same way under ``results/derived``.
Training directories go to ``experiments/runs/<key>`` (gitignored scratch); an interrupted run resumes from
its last epoch checkpoint. After every experiment the doc is rebuilt (experiments/report.py).

Runs use ONE torch thread per process (``--threads``): on this shared 2-core machine a 1-thread process
trains ~3x faster than torch's default 2 threads (measured 12-16 vs 3-5 examples/s). ``--jobs N`` trains N
independent runs of a stage at once.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
RUNS = HERE / "runs"
DATA = Path(os.environ.get("ADAPTERKIT_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(HERE))

PAPER_LRS = (3e-5, 3e-4, 3e-3)
SEED = 42  # every budget's seed; the seeds experiment adds others
GLUE_TASKS = ("glue/rte", "glue/mrpc", "glue/stsb", "glue/cola", "glue/sst2")
PAIR_TASKS = {"glue/rte", "glue/mrpc", "glue/stsb", "boolq"}
LONG_TASKS = {"20newsgroups", "r8", "boolq"}
TABLE2_TASKS = ("20newsgroups", "r8", "sms_spam", "trec", "rotten_tomatoes", "boolq")

#: Budgets. quick = what one session on ~2 shared CPU cores can afford (about an hour of training);
#: full = closer to the paper's protocol (full train sets, the lr grid on every task; many hours on CPU).
BUDGETS = {
    "quick": {
        "max_train": 800, "max_validation": 400, "epochs": 2, "batch_size": 16, "seed": SEED,
        "len_single": 64, "len_pair": 128,
        # Table 1: the paper's full lr grid on MRPC; on the other tasks the two grid points that MRPC
        # showed can work (full FT 3e-5/3e-4, adapters 3e-4/3e-3); sizes 8/256 at the task's best adapter lr.
        "grid_tasks": ("glue/mrpc",), "task_grid": {"full": (3e-5, 3e-4), "adapter": (3e-4, 3e-3)}, "table1_tasks": ("glue/mrpc", "glue/rte", "glue/stsb", "glue/cola"),
        "table1_late": ("glue/sst2",), "sizes": (8, 64, 256), "grid_all_sizes": False,
        "seq_tasks": ("glue/stsb", "glue/cola", "glue/mrpc"),
        "fig3_tasks": ("rotten_tomatoes",), "fig3_sizes": (1, 2, 8, 64, 256), "fig3_topk": (1, 2, 3),
        "table2_tasks": ("rotten_tomatoes", "trec", "sms_spam", "r8"), "table2_topk": 2,
        "ablation_task": "rotten_tomatoes", "init_stds": (1e-7, 1e-5, 1e-3, 1e-2),
        "larger_max_train": 2000,
        "lr_note": "adapters, LN-only and head-only 3e-3 (the grid point MRPC chose for adapters); full FT and "
                   "top-k 1e-4 (3e-5 did not leave the majority class in ~100 steps on MRPC, 3e-4 collapsed on "
                   "STS-B) (sequential full FT too)",
        "machine": "one torch thread per process (3x faster than two on this oversubscribed machine)",
        "squad": {"max_train": 600, "max_validation": 300, "epochs": 1, "max_length": 256,
                  "sizes": (2, 8, 64, 256)},
    },
    # standard = what one session on an idle 2-core machine affords (a few hours): the four small GLUE tasks
    # with their full train sets and dev sets, 3 epochs; other tasks (and SST-2) capped at 4000 train examples
    # (2000 for the long-text ones and SQuAD's questions). The lr grid has three points per method: for full
    # FT the paper's 3e-5 and 3e-4 with 1e-4 between them (its 3e-3 diverges for full FT), for adapters the
    # paper's 3e-4 and 3e-3 with 1e-3 between them (3e-5 barely moves adapters in a few hundred steps).
    "standard": {
        "max_train": None, "max_train_other": 4000, "max_train_long": 2000, "sst2_max_train": 4000,
        "max_validation": None, "epochs": 3, "batch_size": 32,
        "seed": SEED, "len_single": 128, "len_pair": 128,
        "grid_tasks": (), "task_grid": {"full": (3e-5, 1e-4, 3e-4), "adapter": (3e-4, 1e-3, 3e-3)},
        "table1_tasks": GLUE_TASKS[:4], "table1_late": ("glue/sst2",), "sizes": (8, 64, 256), "grid_all_sizes": False,
        "other_lrs": {"adapter": 1e-3, "ln": 3e-3, "head": 3e-2, "full": 1e-4, "top-k": 1e-4},
        "seq_tasks": ("glue/stsb", "glue/cola", "glue/mrpc"),
        "fig3_tasks": ("trec", "rotten_tomatoes"), "fig3_sizes": (1, 4, 16, 64, 256), "fig3_topk": (1, 2, 3),
        "table2_tasks": ("rotten_tomatoes", "trec", "sms_spam", "r8", "20newsgroups", "boolq"), "table2_topk": 2,
        "ablation_task": "rotten_tomatoes", "init_stds": (1e-7, 1e-5, 1e-3, 1e-2, 1e-1, 1.0),
        "larger_max_train": 4000, "skip": ("larger", "probe"),  # the quick budget's diagnostics
        "levers_task": "rotten_tomatoes", "levers_layers": ((3, 4, 5), (5,)),
        "longer_task": "glue/cola", "longer_epochs": 10, "pooler": True,
        "seeds_task": "glue/cola", "extra_seeds": (43, 44),
        "lr_note": "adapters 1e-3 (adapterkit's default), LN-only 3e-3, head-only 3e-2 (a new head alone needs "
                   "a large lr), full FT and top-k 1e-4 (sequential full FT too)",
        "machine": "two runs at a time (`--jobs 2`), one torch thread each, on an otherwise idle 2-core machine",
        "squad": {"max_train": 2000, "max_validation": 1000, "epochs": 2, "max_length": 256,
                  "sizes": (2, 8, 64, 256)},
    },
    "full": {
        "max_train": None, "max_validation": None, "epochs": 3, "batch_size": 32, "seed": SEED,
        "len_single": 128, "len_pair": 128,
        "grid_tasks": GLUE_TASKS, "task_grid": {"full": PAPER_LRS, "adapter": PAPER_LRS}, "table1_tasks": GLUE_TASKS[:4], "table1_late": ("glue/sst2",),
        "sizes": (8, 64, 256), "grid_all_sizes": True,
        "seq_tasks": ("glue/stsb", "glue/cola", "glue/mrpc", "glue/rte"),
        "fig3_tasks": ("rotten_tomatoes", "glue/cola"), "fig3_sizes": (1, 2, 4, 8, 16, 32, 64, 128, 256),
        "fig3_topk": (1, 2, 3, 4, 5, 6),
        "table2_tasks": TABLE2_TASKS, "table2_topk": 2,
        "ablation_task": "rotten_tomatoes", "init_stds": (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2),
        "larger_max_train": None,
        "squad": {"max_train": 4000, "max_validation": 1500, "epochs": 2, "max_length": 384,
                  "sizes": (2, 8, 64, 256)},
    },
}
#: SST-2's train set has 67k rows: even the full budget uses a seeded subset.
SST2_FULL_MAX_TRAIN = 10000


# ----------------------------------------------------------------------------------------------- specs
def spec_key(spec: dict) -> str:
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def label_of(spec: dict) -> str:
    parts = [spec["task"].replace("/", "-"), spec["method"]]
    if spec["method"] == "adapter":
        parts.append(f"m{spec['adapter_size']}")
    if spec["method"] == "top-k":
        parts.append(f"k{spec['top_layers']}")
    parts.append(f"lr{spec['lr']:g}")
    if "init_std" in spec:
        parts.append(f"std{spec['init_std']:g}")
    if "adapter_layers" in spec:
        parts.append("layers" + "".join(str(i) for i in spec["adapter_layers"]))
    if spec.get("bf16"):
        parts.append("bf16")
    if spec.get("train_pooler"):
        parts.append("pooler")
    if spec.get("seed", SEED) != SEED:
        parts.append(f"seed{spec['seed']}")
    if spec.get("epochs", 3) > 3:
        parts.append(f"e{spec['epochs']}")
    if "init_from" in spec:
        parts.append("seq")
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
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    return record


# ------------------------------------------------------------------------------------------- training
def run_dir(spec: dict) -> Path:
    return RUNS / spec_key(spec)


def _data_options(task: str) -> dict:
    if task.startswith("glue/"):
        return {"data_dir": str(DATA / "glue")}
    if task == "squad":
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

    from adapterkit.train import TrainConfig, train

    model = spec["model"]
    if "init_from" in spec:  # sequential full fine-tuning: start from the previous task's body
        model = str(_encoder_dir(spec["init_from"]))
    config = TrainConfig(output=str(out), model=model, task=spec["task"], method=spec["method"],
                         adapter_size=spec.get("adapter_size", 64), top_layers=spec.get("top_layers", 2),
                         init_std=spec.get("init_std", 1e-3), adapter_layers=spec.get("adapter_layers"),
                         bf16=spec.get("bf16", False), train_pooler=spec.get("train_pooler", False),
                         lr=spec["lr"], epochs=spec["epochs"],
                         batch_size=spec["batch_size"], max_length=spec["max_length"], max_train=spec["max_train"],
                         max_validation=spec["max_validation"], seed=spec["seed"], data=_data_options(spec["task"]),
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
            "max_length", "seed", "versions")
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
                 dry: bool = False):
        self.budget_name, self.B = budget, BUDGETS[budget]
        self.jobs, self.threads, self.keep_models, self.log = jobs, threads, keep_models, log
        self.dry = dry  # dry: never train or compute; missing results come back as None (the doc builder)
        self.trained = 0  # runs actually trained by this invocation (a cached re-run trains none)

    def need(self, specs: list[dict]) -> list[dict]:
        """Results (the cached JSON records) of every spec, training the missing ones (up to --jobs at once)."""
        records: dict[int, dict] = {}
        missing = []
        for i, spec in enumerate(specs):
            cached = load_cached("train", spec, label_of(spec))
            if cached is not None:
                records[i] = cached
            elif not any(spec == s for _, s in missing):
                missing.append((i, spec))
        if missing and self.dry:
            return [records.get(i) for i in range(len(specs))]
        if missing:
            self.log(f"  training {len(missing)} run(s): " + ", ".join(label_of(s) for _, s in missing))
            if self.jobs > 1 and len(missing) > 1:
                import multiprocessing as mp

                with ProcessPoolExecutor(self.jobs, mp_context=mp.get_context("spawn")) as pool:
                    futures = {pool.submit(_worker, s, self.threads): (i, s) for i, s in missing}
                    for f in as_completed(futures):  # cached as soon as each run ends
                        i, s = futures[f]
                        records[i] = self._finish(s, f.result())
            else:
                for i, s in missing:
                    records[i] = self._finish(s, _worker(s, self.threads))
        for i, spec in enumerate(specs):  # duplicates within this call
            if i not in records:
                records[i] = load_cached("train", spec, label_of(spec))
        return [records[i] for i in range(len(specs))]

    def _finish(self, spec: dict, summary: dict) -> dict:
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


# ----------------------------------------------------------------------------------------- experiments
def best_of(records: list[dict], higher: bool = True) -> dict | None:
    ok = [r for r in records if r is not None and "error" not in r["result"]]
    if not ok:
        return None
    return (max if higher else min)(ok, key=lambda r: r["result"]["best"]["main"])


#: The lr of the experiments outside Table 1 (Figure 3, Table 2, ablation, SQuAD). Adapters, LN-only and
#: head-only: 3e-3, the paper-grid point MRPC chose for adapters. Full FT and top-k: 1e-4, between the grid's
#: 3e-5 (did not move from the majority class in this budget's ~100 steps on MRPC) and 3e-4 (best on MRPC, but
#: collapsed to a constant on STS-B). adapterkit's own defaults (adapter 1e-3, full 5e-5) left small adapters
#: at the majority class on Rotten Tomatoes in 100 steps.
OTHER_LRS = {"adapter": 3e-3, "ln": 3e-3, "head": 3e-3, "full": 1e-4, "top-k": 1e-4}


def default_lr(R: "Runner", method: str) -> float:
    """The budget's lr for ``method`` outside Table 1 (its ``other_lrs``, else OTHER_LRS)."""
    return R.B.get("other_lrs", OTHER_LRS)[method]


def lrs_for(R: Runner, task: str, method: str, size: int = 64, **extra) -> tuple[float, ...]:
    """The lr grid of one Table-1 cell. Full FT and size-64 adapters: the paper's grid on the grid tasks,
    else the budget's per-task grid. Other sizes: the full grid where the budget says so, else the lr that
    was best for size 64 on the same task (so they wait for those runs). ``extra``: spec fields of the
    adapter runs (the pooler experiment's ``train_pooler``)."""
    if method == "full" or size == 64:
        return PAPER_LRS if task in R.B["grid_tasks"] else tuple(R.B["task_grid"][method])
    if R.B["grid_all_sizes"]:
        return PAPER_LRS
    best = best_of(R.need([train_spec(R.B, task, "adapter", lr, size=64, **extra) for lr in lrs_for(R, task, "adapter")]))
    return (best["spec"]["lr"],) if best else ()


def adapter_grid(R: Runner, task: str, **extra) -> list[dict]:
    """Table 1's adapter runs of a task: every size, each over its lr grid."""
    return [train_spec(R.B, task, "adapter", lr, size=s, **extra) for s in R.B["sizes"]
            for lr in lrs_for(R, task, "adapter", s, **extra)]


def table1_specs(R: Runner, task: str) -> list[dict]:
    return [train_spec(R.B, task, "full", lr) for lr in lrs_for(R, task, "full")] + adapter_grid(R, task)


def baseline_key(R: Runner, task: str) -> dict:
    return {"task": task, "max_validation": R.B["max_validation"], "what": "majority class of train"}


def baseline(R: Runner, task: str) -> dict | None:
    """The score of always predicting train's majority class (regression: train's mean score; its Pearson
    correlation is undefined and counted as 0): what a model that learned nothing gets."""
    def compute() -> dict:
        from collections import Counter

        from adapterkit import metrics as M

        data = _task_data({"task": task, "seed": R.B["seed"], "max_train": None,
                           "max_validation": R.B["max_validation"]})
        labels = [e["label"] for e in data.validation]
        if data.kind == "regression":
            return {"task": task, "metric": data.metric, "main": 0.0, "note": "constant prediction: Pearson undefined, 0"}
        majority = Counter(e["label"] for e in data.train).most_common(1)[0][0]
        scores = M.compute_metrics(data.metric, [majority] * len(labels), labels)
        return {"task": task, "metric": data.metric, "main": scores["main"], "majority": data.label_names[majority]}

    return R.derived(f"baseline-{task.replace('/', '-')}", baseline_key(R, task), compute)


def exp_table1(R: Runner) -> None:
    for task in list(R.B["table1_tasks"]) + list(R.B["table1_late"]):
        baseline(R, task)
    for task in R.B["table1_tasks"]:
        R.log(f"table1: {task}")
        R.need([train_spec(R.B, task, m, lr) for m in ("full", "adapter") for lr in lrs_for(R, task, m)])
    for task in R.B["table1_tasks"]:
        R.log(f"table1: {task}, adapter sizes")
        R.need(table1_specs(R, task))


def exp_table1_late(R: Runner) -> None:
    for task in R.B["table1_late"]:
        R.log(f"table1: {task}")
        R.need(table1_specs(R, task))


def table1_choice(R: Runner, task: str, method: str, size: int | None = None, **extra) -> dict | None:
    """The run Table 1 reports for (task, method[, size]): best on validation over its grid."""
    sizes = R.B["sizes"] if (method == "adapter" and size is None) else (size or 64,)
    specs = [train_spec(R.B, task, method, lr, size=s, **extra) for s in sizes
             for lr in lrs_for(R, task, method, s, **extra)]
    return best_of(R.need(specs))


POOLER_STATS_SPEC = {"model": "minilm", "what": "BertPooler dense weight and bias statistics"}


def pooler_stats(R: Runner) -> dict | None:
    """Is MiniLM's pooler trained? Its weight std, bias and top singular value, against the top singular value
    a random Gaussian matrix of that std has (2 std sqrt(d), the Marchenko-Pastur edge)."""
    def compute() -> dict:
        import torch

        from adapterkit.models import load_model

        model, _ = load_model("minilm", kind="base")
        w, b = model.pooler.dense.weight.detach(), model.pooler.dense.bias.detach()
        return {"d": w.shape[0], "weight_std": float(w.std()), "bias_max_abs": float(b.abs().max()),
                "top_singular": float(torch.linalg.svdvals(w)[0]), "random_top_singular": float(2 * w.std() * w.shape[0] ** 0.5),
                "query_weight_std": float(model.encoder.layer[0].attention.self.query.weight.std())}

    return R.derived("pooler-minilm", POOLER_STATS_SPEC, compute)


def exp_pooler(R: Runner) -> None:
    """Table 1's adapters again, each head with its own trained copy of MiniLM's pooler (``train_pooler``;
    Table 1 keeps the pooler frozen, as adapter-bert and adapterkit's default do). all-MiniLM-L6-v2 ships
    that pooler untrained (random weights, zero bias): the frozen one is a random tanh projection of [CLS]."""
    pooler_stats(R)
    for task in R.B["table1_tasks"]:
        R.log(f"pooler: {task}")
        R.need([train_spec(R.B, task, "adapter", lr, size=64, train_pooler=True) for lr in lrs_for(R, task, "adapter")])
    for task in R.B["table1_tasks"]:
        R.need(adapter_grid(R, task, train_pooler=True))


def _task_data(spec: dict):
    from adapterkit.data import load_task

    return load_task(spec["task"], seed=spec["seed"], max_train=spec["max_train"],
                     max_validation=spec["max_validation"], **_data_options(spec["task"]))


def _evaluate(model, tokenizer, spec: dict, task=None) -> dict:
    from adapterkit.evaluation import build_features, evaluate

    task = task or _task_data(spec)
    features = build_features(task.validation, task.kind, tokenizer, spec["max_length"], 128)
    return evaluate(model, tokenizer, task.kind, task.metric, task.validation, features, 64, "cpu")


def sequential_full_specs(R: Runner) -> list[dict]:
    """Sequential full fine-tuning: task k starts from the body left by task k-1, all at OTHER_LRS["full"]."""
    tasks = R.B["seq_tasks"]
    specs = [train_spec(R.B, tasks[0], "full", default_lr(R, "full"))]
    for t in tasks[1:]:
        specs.append(train_spec(R.B, t, "full", default_lr(R, "full"), init_from=specs[-1]))
    return specs


def sequential_adapter_specs(R: Runner) -> list[dict] | None:
    """Each task's adapter: Table 1's size-64 run at the lr Table 1 chose for that task."""
    chosen = [table1_choice(R, t, "adapter", 64) for t in R.B["seq_tasks"]]
    return None if any(r is None for r in chosen) else [r["spec"] for r in chosen]


def exp_sequential(R: Runner) -> None:
    """Adapters: one frozen MiniLM gets the tasks' adapters one after another; after each, every earlier
    task is re-scored and must be bit-identical. Full FT: each task starts from the previous task's body."""
    tasks = R.B["seq_tasks"]
    full_specs = sequential_full_specs(R)
    R.log("sequential: full fine-tuning chain")
    for k in range(len(full_specs)):
        R.need(full_specs[k:k + 1])  # one after another: each starts from the previous one's body
    full_records = R.need(full_specs)

    def adapters_compute() -> dict:
        import torch

        import adapterkit as ak
        from adapterkit.models import load_model

        model, tok = load_model("minilm", kind="classification")

        def base_hash() -> str:  # SHA-256 over every base (non-adapter) parameter, in name order
            digest = hashlib.sha256()
            for n, p in sorted(ak.base_parameters(model), key=lambda x: x[0]):
                digest.update(n.encode())
                digest.update(p.detach().contiguous().numpy().tobytes())
            return digest.hexdigest()

        base_before = base_hash()
        stages = []
        for k, spec in enumerate(adapter_specs):
            ak.load_adapter(model, ensure_trained(spec) / "adapter", name=f"t{k}")
            scores = {}
            for j in range(k + 1):
                ak.set_active(model, f"t{j}")
                scores[tasks[j]] = _evaluate(model, tok, adapter_specs[j])["main"]
            stages.append({"added": tasks[k], "scores": scores})
        recorded = {t: r["result"]["best"]["main"] for t, r in zip(tasks, adapter_records)}
        exact = all(s["scores"][t] == recorded[t] for s in stages for t in s["scores"])
        return {"tasks": list(tasks), "stages": stages, "recorded": recorded, "exactly_unchanged": exact,
                "base_fingerprint_unchanged": base_before == base_hash(), "base_sha256": base_before}

    def full_compute() -> dict:
        import torch

        from adapterkit.models import load_model

        stages = []
        bodies = []
        for k, spec in enumerate(full_specs):
            kind = "regression" if tasks[k] == "glue/stsb" else "classification"
            m, _ = load_model(str(ensure_trained(spec) / "adapter"), kind=kind)
            bodies.append({n: p.detach().clone() for n, p in m.base_model.state_dict().items()})
        for k in range(len(tasks)):
            scores = {}
            for j in range(k + 1):  # task j's own head on the body after task k
                kind = "regression" if tasks[j] == "glue/stsb" else "classification"
                model, tok = load_model(str(run_dir(full_specs[j]) / "adapter"), kind=kind)
                model.base_model.load_state_dict(bodies[k])
                scores[tasks[j]] = _evaluate(model, tok, full_specs[j])["main"]
            stages.append({"added": tasks[k], "scores": scores})
        recorded = {t: r["result"]["best"]["main"] for t, r in zip(tasks, full_records)}
        return {"tasks": list(tasks), "stages": stages, "recorded": recorded}

    R.derived("sequential-full", {"full": [spec_key(s) for s in full_specs], "tasks": list(tasks)}, full_compute)
    R.log("sequential: adapters (the Table-1 runs)")
    adapter_specs = sequential_adapter_specs(R)  # trains them if Table 1 has not yet
    adapter_records = R.need(adapter_specs)
    key = {"adapters": [spec_key(s) for s in adapter_specs], "tasks": list(tasks)}
    R.derived("sequential-adapters", key, adapters_compute)


def fig3_specs(R: Runner, task: str) -> list[dict]:
    lr = functools.partial(default_lr, R)
    specs = [train_spec(R.B, task, "adapter", lr("adapter"), size=s) for s in R.B["fig3_sizes"]]
    specs += [train_spec(R.B, task, "top-k", lr("top-k"), top_layers=k) for k in R.B["fig3_topk"]]
    specs += [train_spec(R.B, task, "full", lr("full"))]
    specs += [train_spec(R.B, task, "ln", lr("ln")), train_spec(R.B, task, "head", lr("head"))]
    # most informative first, so that an interrupted session still has a usable plot
    rank = {("adapter", 64): 0, ("full", None): 1, ("head", None): 2, ("adapter", 8): 3, ("top-k", 2): 4,
            ("ln", None): 5, ("adapter", 1): 6, ("top-k", 1): 7}
    return sorted(specs, key=lambda s: rank.get((s["method"], s.get("adapter_size", s.get("top_layers"))), 9))


def exp_fig3(R: Runner) -> None:
    for task in R.B["fig3_tasks"]:
        R.log(f"figure3: {task}")
        R.need(fig3_specs(R, task))


def table2_specs(R: Runner, task: str) -> list[dict]:
    lr = functools.partial(default_lr, R)
    return [train_spec(R.B, task, "full", lr("full")),
            train_spec(R.B, task, "top-k", lr("top-k"), top_layers=R.B["table2_topk"]),
            train_spec(R.B, task, "adapter", lr("adapter"), size=64),
            train_spec(R.B, task, "head", lr("head"))]


def exp_table2(R: Runner) -> None:
    for task in R.B["table2_tasks"]:
        baseline(R, task)
        R.log(f"table2: {task}")
        R.need(table2_specs(R, task))


def ablation_spec(R: Runner) -> dict:
    """The adapter the ablations start from: the larger Rotten Tomatoes run's size-64 adapter (at the quick
    budget's 800 examples the adapter has not learned the task, so removing parts of it shows nothing)."""
    return larger_specs(R)[0]


def init_std_specs(R: Runner) -> list[dict]:
    base = ablation_spec(R)
    return [base if std == 1e-3 else {**base, "init_std": std} for std in R.B["init_stds"]]


def exp_ablation(R: Runner) -> None:
    spec = ablation_spec(R)
    R.log("ablation: trained adapter")
    record = R.need([spec])[0]

    def compute() -> dict:
        import torch

        import adapterkit as ak
        from adapterkit.evaluation import load_trained

        trained = load_trained(ensure_trained(spec) / "adapter")
        model, tok = trained.model, trained.tokenizer
        task = _task_data(spec)
        ups = [(n, p) for n, p in model.named_parameters() if ".adapters." in n and ".up." in n]
        original = {n: p.detach().clone() for n, p in ups}
        n_layers = model.config.num_hidden_layers

        def layer_of(name: str) -> int:
            return int(name.split("encoder.layer.")[1].split(".")[0])

        full = _evaluate(model, tok, spec, task)["main"]
        spans = {}
        for i in range(n_layers):
            for j in range(i, n_layers):
                with torch.no_grad():
                    for n, p in ups:
                        if i <= layer_of(n) <= j:
                            p.zero_()  # the adapter's output is 0: it becomes the identity
                spans[f"{i}-{j}"] = _evaluate(model, tok, spec, task)["main"]
                with torch.no_grad():
                    for n, p in ups:
                        p.copy_(original[n])
        ak.set_active(model, None)
        return {"task": spec["task"], "metric": task.metric, "layers": n_layers, "trained": full,
                "recorded": record["result"]["best"]["main"], "spans": spans,
                "method": "up-projection weight and bias set to 0 in layers i..j (adapter = identity there; "
                          "its layer-norm copies and the head stay trained)"}

    R.derived("ablation-spans", {"adapter": spec_key(spec)}, compute)
    R.log("ablation: init_std")
    R.need(init_std_specs(R))


def squad_specs(R: Runner) -> list[dict]:
    S = R.B["squad"]
    lrs = {m: default_lr(R, m) for m in ("adapter", "full")}
    base = {"model": "minilm", "task": "squad", "epochs": S["epochs"], "batch_size": R.B["batch_size"],
            "max_train": S["max_train"], "max_validation": S["max_validation"], "max_length": S["max_length"],
            "seed": R.B["seed"]}
    specs = [{**base, "method": "adapter", "adapter_size": s, "lr": lrs["adapter"]} for s in S["sizes"]]
    return specs + [{**base, "method": "full", "lr": lrs["full"]}]


def levers_specs(R: Runner) -> list[dict]:
    """Issue 6's speed levers, on a real task: the Table-2 size-64 adapter, then AdapterDrop-style adapters in
    the upper layers only (backprop stops below the lowest one), bf16 autocast, and both."""
    base = train_spec(R.B, R.B["levers_task"], "adapter", default_lr(R, "adapter"), size=64)
    specs = [base] + [{**base, "adapter_layers": list(layers)} for layers in R.B["levers_layers"]]
    specs += [{**base, "bf16": True}, {**base, "adapter_layers": list(R.B["levers_layers"][0]), "bf16": True}]
    return specs


def exp_levers(R: Runner) -> None:
    R.log("levers: upper-layer adapters and bf16 autocast")
    R.need(levers_specs(R))


def longer_specs(R: Runner) -> list[dict]:
    """Table 1's weakest adapter task trained longer (the paper's grid has 3 and 20 epochs): is the gap to full
    FT a matter of steps? Adapters of size 8 and 64 at 1e-3, ``longer_epochs`` epochs; full FT as in Table 1."""
    task, epochs = R.B["longer_task"], R.B["longer_epochs"]
    return [train_spec(R.B, task, "adapter", 1e-3, size=m, epochs=epochs) for m in (8, 64)]


def exp_longer(R: Runner) -> None:
    R.log(f"longer: {R.B['longer_task']} for {R.B['longer_epochs']} epochs")
    R.need(longer_specs(R))


def exp_squad(R: Runner) -> None:
    R.log("squad")
    R.need(squad_specs(R))


def exp_probe(R: Runner) -> None:
    """Diagnostic: how much does each frozen MiniLM feature carry? A logistic-regression probe (L-BFGS, L2
    1e-2, standardised features) on the CLS vector, the pooler output (what BertForSequenceClassification's
    head reads) and the mean of the token vectors (what sentence-transformers trained MiniLM for)."""
    spec = {"task": "rotten_tomatoes", "max_train": R.B["max_train"], "max_validation": R.B["max_validation"],
            "max_length": R.B["len_single"], "seed": R.B["seed"], "probe": "logreg-lbfgs-l2=1e-2"}

    def compute() -> dict:
        import numpy as np
        import torch

        from adapterkit.models import load_model

        task = _task_data({**spec, "model": "minilm"})
        model, tok = load_model("minilm", kind="base")
        model.eval()

        def feats(rows):
            out = {"cls": [], "pooler": [], "mean": []}
            for i in range(0, len(rows), 50):
                enc = tok([r["text"] for r in rows[i:i + 50]], truncation=True, max_length=spec["max_length"],
                          padding=True, return_tensors="pt")
                with torch.no_grad():
                    o = model(**enc)
                h, mask = o.last_hidden_state, enc["attention_mask"].unsqueeze(-1)
                out["cls"].append(h[:, 0])
                out["pooler"].append(o.pooler_output)
                out["mean"].append((h * mask).sum(1) / mask.sum(1))
            return {k: torch.cat(v) for k, v in out.items()}

        torch.manual_seed(0)
        ftr, fva = feats(task.train), feats(task.validation)
        ytr = torch.tensor([r["label"] for r in task.train])
        yva = np.array([r["label"] for r in task.validation])
        result = {"task": spec["task"], "train": len(task.train), "validation": len(task.validation)}
        for k in ftr:
            mu, sd = ftr[k].mean(0), ftr[k].std(0) + 1e-6
            x, xv = (ftr[k] - mu) / sd, (fva[k] - mu) / sd
            w = torch.zeros(x.shape[1], len(task.label_names), requires_grad=True)
            b = torch.zeros(len(task.label_names), requires_grad=True)
            opt = torch.optim.LBFGS([w, b], max_iter=200)

            def closure():
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(x @ w + b, ytr) + 1e-2 * (w ** 2).sum()
                loss.backward()
                return loss
            opt.step(closure)
            with torch.no_grad():
                acc = float(((xv @ w + b).argmax(1).numpy() == yva).mean())
            result[k] = {"accuracy": acc, "feature_std": float(ftr[k].std())}
        return result

    R.derived("probe-rotten_tomatoes", spec, compute)


def larger_specs(R: Runner) -> list[dict]:
    """Rotten Tomatoes with more train examples (quick: 2000, 2.5x; issue 3's acceptance setting uses 4000),
    2 epochs, adapterkit's default lrs: does the method ranking appear once the model has more steps?"""
    B = {**R.B, "max_train": R.B["larger_max_train"]}
    from adapterkit.train import DEFAULT_LR

    return [train_spec(B, "rotten_tomatoes", m, DEFAULT_LR[m]) for m in ("adapter", "full", "head")]


def exp_larger(R: Runner) -> None:
    R.log("larger: rotten_tomatoes")
    R.need(larger_specs(R))


def seeds_specs(R: Runner) -> list[dict]:
    """The seed-42 choices of full FT and adapters (Table 1) and own-pooler adapters (pooler experiment) on
    ``seeds_task``, again with ``extra_seeds``: how much of the gaps is the seed? (Empty until those ran.)"""
    task = R.B["seeds_task"]
    chosen = [table1_choice(R, task, "full"), table1_choice(R, task, "adapter"),
              table1_choice(R, task, "adapter", train_pooler=True)]
    if any(c is None for c in chosen):
        return []
    return [{**c["spec"], "seed": seed} for c in chosen for seed in R.B["extra_seeds"]]


def exp_seeds(R: Runner) -> None:
    R.log(f"seeds: {R.B['seeds_task']}")
    R.need(seeds_specs(R))


#: Priority order (the brief's): what runs first when time is short.
EXPERIMENTS = {
    "table1": exp_table1,
    "sequential": exp_sequential,
    "figure3": exp_fig3,
    "larger": exp_larger,
    "probe": exp_probe,
    "table2": exp_table2,
    "ablation": exp_ablation,
    "table1-sst2": exp_table1_late,
    "squad": exp_squad,
    "levers": exp_levers,
    "longer": exp_longer,
    "pooler": exp_pooler,
    "seeds": exp_seeds,
}


def experiments_of(budget: str) -> list[str]:
    """The experiments a budget runs (its ``skip`` leaves some out), in priority order."""
    skip = BUDGETS[budget].get("skip", ())
    defined_by = {"levers": "levers_task", "longer": "longer_task", "pooler": "pooler", "seeds": "seeds_task"}  # only some budgets have these
    return [e for e in EXPERIMENTS
            if e not in skip and (e not in defined_by or defined_by[e] in BUDGETS[budget])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=list(EXPERIMENTS),
                        help="run only this experiment (repeatable); the doc is rebuilt from every cached result")
    parser.add_argument("--budget", choices=list(BUDGETS), default="standard")
    parser.add_argument("--jobs", type=int, default=1, help="independent runs trained at once (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--doc-only", action="store_true", help="only rebuild the docs (every budget's) and plots")
    args = parser.parse_args(argv)

    import report

    R = Runner(args.budget, jobs=args.jobs, threads=args.threads)
    started = time.time()
    if not args.doc_only:
        import torch
        import transformers

        torch.set_num_threads(args.threads)
        transformers.logging.set_verbosity_error()
        for name in args.only or experiments_of(args.budget):
            R.log(f"== {name} ({args.budget})")
            EXPERIMENTS[name](R)
            try:  # the doc is a by-product here: a broken report never stops the training
                importlib.reload(report).write_doc(args.budget)
            except Exception as e:
                R.log(f"  (doc not rebuilt: {type(e).__name__}: {e})")
    for budget in (report.DOC_BUDGETS if args.doc_only else (args.budget,)):
        importlib.reload(report).write_doc(budget)
    R.log(f"done in {time.time() - started:.1f}s; {R.trained} run(s) trained or computed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reproduce Houlsby et al. 2019 (arXiv 1902.00751) at MiniLM-L6 scale: one command, resumable, cached.

    python experiments/run.py                       # every experiment, --budget quick
    python experiments/run.py --only table1 --jobs 2
    python experiments/run.py --budget full         # the larger protocol (hours on CPU)
    python experiments/run.py --doc-only            # rebuild docs/results.md + plots from the JSON

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
import hashlib
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
RUNS = HERE / "runs"
DATA = Path(os.environ.get("ADAPTERKIT_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(HERE))

PAPER_LRS = (3e-5, 3e-4, 3e-3)
GLUE_TASKS = ("glue/rte", "glue/mrpc", "glue/stsb", "glue/cola", "glue/sst2")
PAIR_TASKS = {"glue/rte", "glue/mrpc", "glue/stsb", "boolq"}
LONG_TASKS = {"20newsgroups", "r8", "boolq"}
TABLE2_TASKS = ("20newsgroups", "r8", "sms_spam", "trec", "rotten_tomatoes", "boolq")

#: Budgets. quick = what one session on ~2 shared CPU cores can afford (about an hour of training);
#: full = closer to the paper's protocol (full train sets, the lr grid on every task; many hours on CPU).
BUDGETS = {
    "quick": {
        "max_train": 800, "max_validation": 400, "epochs": 2, "batch_size": 16, "seed": 42,
        "len_single": 64, "len_pair": 128,
        # Table 1: the paper's lr grid is run on MRPC only; every other task uses the lr MRPC chose.
        "grid_tasks": ("glue/mrpc",), "table1_tasks": ("glue/mrpc", "glue/rte", "glue/stsb", "glue/cola"),
        "table1_late": ("glue/sst2",), "sizes": (8, 64, 256), "grid_all_sizes": False,
        "seq_tasks": ("glue/mrpc", "glue/stsb", "glue/cola"),
        "fig3_tasks": ("glue/mrpc",), "fig3_sizes": (1, 2, 8, 64, 256), "fig3_topk": (1, 2, 3),
        "table2_tasks": ("trec", "sms_spam", "rotten_tomatoes", "r8"), "table2_topk": 2,
        "ablation_task": "glue/mrpc", "init_stds": (1e-7, 1e-5, 1e-3, 1e-2),
        "squad": {"max_train": 600, "max_validation": 300, "epochs": 1, "max_length": 256,
                  "sizes": (2, 8, 64, 256)},
    },
    "full": {
        "max_train": None, "max_validation": None, "epochs": 3, "batch_size": 32, "seed": 42,
        "len_single": 128, "len_pair": 128,
        "grid_tasks": GLUE_TASKS, "table1_tasks": GLUE_TASKS[:4], "table1_late": ("glue/sst2",),
        "sizes": (8, 64, 256), "grid_all_sizes": True,
        "seq_tasks": ("glue/mrpc", "glue/stsb", "glue/cola", "glue/rte"),
        "fig3_tasks": ("glue/mrpc", "glue/cola"), "fig3_sizes": (1, 2, 4, 8, 16, 32, 64, 128, 256),
        "fig3_topk": (1, 2, 3, 4, 5, 6),
        "table2_tasks": TABLE2_TASKS, "table2_topk": 2,
        "ablation_task": "glue/mrpc", "init_stds": (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2),
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
    if "init_from" in spec:
        parts.append("seq")
    return "-".join(parts)


def train_spec(B: dict, task: str, method: str, lr: float, size: int = 64, top_layers: int = 2, **extra) -> dict:
    """A training run's spec under budget B (everything train() needs, and nothing else)."""
    max_train = B["max_train"]
    if task == "glue/sst2" and max_train is None:
        max_train = SST2_FULL_MAX_TRAIN
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
    import torch

    import adapterkit as ak
    import adapterkit.methods as methods
    from adapterkit.train import TrainConfig, train

    out = run_dir(spec)
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    model = spec["model"]
    if "init_from" in spec:  # sequential full fine-tuning: start from the previous task's body
        model = str(_encoder_dir(spec["init_from"]))
    if "init_std" in spec:
        # TrainConfig has no init_std option: swap the method's adapter config for this run (same process).
        original = methods.adapter_config_for

        def with_std(method, m, _std=spec["init_std"]):
            return ak.AdapterConfig(size=method.adapter_size, placement=method.placement, init_std=_std)
        methods.adapter_config_for = with_std
    try:
        config = TrainConfig(output=str(out), model=model, task=spec["task"], method=spec["method"],
                             adapter_size=spec.get("adapter_size", 64), top_layers=spec.get("top_layers", 2),
                             lr=spec["lr"], epochs=spec["epochs"], batch_size=spec["batch_size"],
                             max_length=spec["max_length"], max_train=spec["max_train"],
                             max_validation=spec["max_validation"], seed=spec["seed"],
                             data=_data_options(spec["task"]), resume=True, progress=False)
        torch.manual_seed(spec["seed"])
        return train(config)
    finally:
        if "init_std" in spec:
            methods.adapter_config_for = original


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
                    futures = [(i, s, pool.submit(_worker, s, self.threads)) for i, s in missing]
                    for i, s, f in futures:
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


def chosen_lrs(R: Runner) -> dict[str, float | None]:
    """The lr per method chosen on the grid task (quick budget: the paper's grid is run there only, with
    adapters of size 64, and every other run uses the lr it chose)."""
    task = R.B["grid_tasks"][0]
    out = {}
    for method in ("full", "adapter"):
        best = best_of(R.need([train_spec(R.B, task, method, lr) for lr in PAPER_LRS]))
        out[method] = best["spec"]["lr"] if best else None
    return out


def lrs_for(R: Runner, task: str, method: str, size: int = 64) -> tuple[float, ...]:
    """The lr grid of one Table-1 cell: the paper's grid on grid tasks (full budget: every task; quick:
    MRPC, full FT and size-64 adapters only), else the lr chosen on the grid task."""
    if task in R.B["grid_tasks"] and (R.B["grid_all_sizes"] or method == "full" or size == 64):
        return PAPER_LRS
    lr = chosen_lrs(R)[method]
    return (lr,) if lr is not None else ()


def table1_specs(R: Runner, task: str) -> list[dict]:
    specs = [train_spec(R.B, task, "full", lr) for lr in lrs_for(R, task, "full")]
    return specs + [train_spec(R.B, task, "adapter", lr, size=s) for s in R.B["sizes"]
                    for lr in lrs_for(R, task, "adapter", s)]


def exp_table1(R: Runner) -> None:
    for task in R.B["grid_tasks"]:
        if task in R.B["table1_tasks"]:
            R.log(f"table1: lr grid on {task}")
            R.need([train_spec(R.B, task, m, lr) for m in ("full", "adapter") for lr in PAPER_LRS])
    for task in R.B["table1_tasks"]:
        R.log(f"table1: {task}")
        R.need(table1_specs(R, task))


def exp_table1_late(R: Runner) -> None:
    for task in R.B["table1_late"]:
        R.log(f"table1: {task}")
        R.need(table1_specs(R, task))


def table1_choice(R: Runner, task: str, method: str, size: int | None = None) -> dict | None:
    """The run Table 1 reports for (task, method[, size]): best on validation over its grid."""
    sizes = R.B["sizes"] if (method == "adapter" and size is None) else (size or 64,)
    specs = [train_spec(R.B, task, method, lr, size=s) for s in sizes for lr in lrs_for(R, task, method, s)]
    return best_of(R.need(specs))


def _task_data(spec: dict):
    from adapterkit.data import load_task

    return load_task(spec["task"], seed=spec["seed"], max_train=spec["max_train"],
                     max_validation=spec["max_validation"], **_data_options(spec["task"]))


def _evaluate(model, tokenizer, spec: dict, task=None) -> dict:
    from adapterkit.evaluation import build_features, evaluate

    task = task or _task_data(spec)
    features = build_features(task.validation, task.kind, tokenizer, spec["max_length"], 128)
    return evaluate(model, tokenizer, task.kind, task.metric, task.validation, features, 64, "cpu")


def exp_sequential(R: Runner) -> None:
    """Adapters: one frozen MiniLM gets the tasks' adapters one after another; after each, every earlier
    task is re-scored and must be bit-identical. Full FT: each task starts from the previous task's body."""
    tasks = R.B["seq_tasks"]
    lrs = chosen_lrs(R)
    adapter_specs = [train_spec(R.B, t, "adapter", lrs["adapter"], size=64) for t in tasks]
    R.log("sequential: adapters (reused from Table 1)")
    adapter_records = R.need(adapter_specs)
    full_specs = [train_spec(R.B, tasks[0], "full", lrs["full"])]
    R.log("sequential: full fine-tuning chain")
    for t in tasks[1:]:
        full_specs.append(train_spec(R.B, t, "full", lrs["full"], init_from=full_specs[-1]))
        R.need(full_specs[-1:])
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

    key = {"adapters": [spec_key(s) for s in adapter_specs], "tasks": list(tasks)}
    R.derived("sequential-adapters", key, adapters_compute)
    R.derived("sequential-full", {"full": [spec_key(s) for s in full_specs], "tasks": list(tasks)}, full_compute)


def fig3_specs(R: Runner, task: str) -> list[dict]:
    lrs = chosen_lrs(R)
    specs = [train_spec(R.B, task, "adapter", lrs["adapter"], size=s) for s in R.B["fig3_sizes"]]
    specs += [train_spec(R.B, task, "top-k", lrs["full"], top_layers=k) for k in R.B["fig3_topk"]]
    specs += [train_spec(R.B, task, "full", lrs["full"])]
    specs += [train_spec(R.B, task, "ln", lrs["adapter"]), train_spec(R.B, task, "head", 3e-3)]
    return specs


def exp_fig3(R: Runner) -> None:
    for task in R.B["fig3_tasks"]:
        R.log(f"figure3: {task}")
        R.need(fig3_specs(R, task))


def table2_specs(R: Runner, task: str) -> list[dict]:
    lrs = chosen_lrs(R)
    return [train_spec(R.B, task, "full", lrs["full"]),
            train_spec(R.B, task, "top-k", lrs["full"], top_layers=R.B["table2_topk"]),
            train_spec(R.B, task, "adapter", lrs["adapter"], size=64),
            train_spec(R.B, task, "head", 3e-3)]


def exp_table2(R: Runner) -> None:
    for task in R.B["table2_tasks"]:
        R.log(f"table2: {task}")
        R.need(table2_specs(R, task))


def ablation_spec(R: Runner) -> dict:
    return train_spec(R.B, R.B["ablation_task"], "adapter", chosen_lrs(R)["adapter"], size=64)


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
    lrs = chosen_lrs(R)
    base = {"model": "minilm", "task": "squad", "epochs": S["epochs"], "batch_size": R.B["batch_size"],
            "max_train": S["max_train"], "max_validation": S["max_validation"], "max_length": S["max_length"],
            "seed": R.B["seed"]}
    specs = [{**base, "method": "adapter", "adapter_size": s, "lr": lrs["adapter"]} for s in S["sizes"]]
    return specs + [{**base, "method": "full", "lr": lrs["full"]}]


def exp_squad(R: Runner) -> None:
    R.log("squad")
    for spec in squad_specs(R):  # one at a time: the longest runs
        R.need([spec])


#: Priority order (the brief's): what runs first when time is short.
EXPERIMENTS = {
    "table1": exp_table1,
    "sequential": exp_sequential,
    "figure3": exp_fig3,
    "table2": exp_table2,
    "ablation": exp_ablation,
    "table1-sst2": exp_table1_late,
    "squad": exp_squad,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=list(EXPERIMENTS),
                        help="run only this experiment (repeatable); the doc is rebuilt from every cached result")
    parser.add_argument("--budget", choices=list(BUDGETS), default="quick")
    parser.add_argument("--jobs", type=int, default=1, help="independent runs trained at once (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--doc-only", action="store_true", help="only rebuild docs/results.md and the plots")
    args = parser.parse_args(argv)

    import report

    R = Runner(args.budget, jobs=args.jobs, threads=args.threads)
    started = time.time()
    if not args.doc_only:
        import torch
        import transformers

        torch.set_num_threads(args.threads)
        transformers.logging.set_verbosity_error()
        for name in args.only or list(EXPERIMENTS):
            R.log(f"== {name} ({args.budget})")
            EXPERIMENTS[name](R)
            report.write_doc(args.budget)
    report.write_doc(args.budget)
    R.log(f"done in {time.time() - started:.1f}s; {R.trained} run(s) trained or computed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reproduce Houlsby et al. 2019 (arXiv 1902.00751) at MiniLM-L6 scale: one command, resumable, cached.

    python experiments/run.py --jobs 2              # every experiment, --budget standard (docs/results.md)
    python experiments/run.py --only table1 --jobs 2
    python experiments/run.py --budget quick        # the first, smaller protocol (docs/results-quick.md)
    python experiments/run.py --budget full         # the larger protocol (days on CPU)
    python experiments/run.py --doc-only            # rebuild docs/results*.md + plots from the JSON
    python experiments/run.py --only squad --retry-failed   # train again runs cached as failures (kept otherwise)
    python experiments/run.py --only generation     # issue 15: adapters vs full FT vs LoRA on SmolLM2 (generation.py)
    python experiments/run.py --only table2-r2 --only adapterhub --only table1-r2 --jobs 2
                                                    # issue 12: the default recipe's rerun, AdapterHub beside it (rerun.py)

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
import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # budgets, runner, analyses, report live beside this file

import analyses  # noqa: E402
import generation  # noqa: E402
import rerun  # noqa: E402
from budgets import BUDGETS, PAPER_LRS  # noqa: E402
from runner import Runner, spec_key, train_spec  # noqa: E402,F401  (spec_key: the report reads it here)


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
    """The majority-class score of a task's validation rows (analyses.majority_baseline)."""
    compute = functools.partial(analyses.majority_baseline, task, R.B["seed"], R.B["max_validation"])
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
    return R.derived("pooler-minilm", POOLER_STATS_SPEC, analyses.pooler_stats)


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
    full_scores = {t: r["result"]["best"]["main"] for t, r in zip(tasks, full_records)}
    R.derived("sequential-full", {"full": [spec_key(s) for s in full_specs], "tasks": list(tasks)},
              functools.partial(analyses.sequential_full, tasks, full_specs, full_scores))
    R.log("sequential: adapters (the Table-1 runs)")
    adapter_specs = sequential_adapter_specs(R)  # trains them if Table 1 has not yet
    adapter_records = R.need(adapter_specs)
    key = {"adapters": [spec_key(s) for s in adapter_specs], "tasks": list(tasks)}
    adapter_scores = {t: r["result"]["best"]["main"] for t, r in zip(tasks, adapter_records)}
    R.derived("sequential-adapters", key,
              functools.partial(analyses.sequential_adapters, tasks, adapter_specs, adapter_scores))


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
    compute = functools.partial(analyses.ablation_spans, spec, record["result"]["best"]["main"])
    R.derived("ablation-spans", {"adapter": spec_key(spec)}, compute)
    R.log("ablation: init_std")
    R.need(init_std_specs(R))


def squad_specs(R: Runner) -> list[dict]:
    S = R.B["squad"]
    lrs = {m: default_lr(R, m) for m in ("adapter", "full")}
    base = {"model": "minilm", "task": "squad", "epochs": S["epochs"], "batch_size": R.B["batch_size"],
            "max_train": S["max_train"], "max_validation": S["max_validation"], "max_length": S["max_length"],
            "doc_stride": S["doc_stride"],
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
    """Table 1's weakest adapter task trained longer (the paper's epoch grid is 3 and 20): is the gap to full
    FT a matter of steps? ``longer_epochs`` epochs for adapters of size 8 and 64 at 1e-3 with the frozen pooler,
    the same with the head's own pooler, and full FT at the lr Table 1 chose for it."""
    task, epochs = R.B["longer_task"], R.B["longer_epochs"]
    specs = [train_spec(R.B, task, "adapter", 1e-3, size=m, epochs=epochs) for m in (8, 64)]
    specs += [train_spec(R.B, task, "adapter", 1e-3, size=m, epochs=epochs, train_pooler=True) for m in (8, 64)]
    full = table1_choice(R, task, "full")
    return specs + ([{**full["spec"], "epochs": epochs}] if full else [])


def longer_choices(R: Runner) -> dict[str, dict] | None:
    """Per method (full FT, adapters with the frozen pooler, with their own pooler), the best on validation of
    its 3-epoch choice (Table 1, the pooler grid) and its ``longer_epochs`` runs: epochs chosen like lr and size.
    None until all of those have run."""
    task, specs = R.B["longer_task"], longer_specs(R)
    records = R.need(specs)
    if any(r is None for r in records):
        return None
    groups = {"full FT": (table1_choice(R, task, "full"), lambda s: s["method"] == "full"),
              "adapters, frozen pooler": (table1_choice(R, task, "adapter"),
                                          lambda s: s["method"] == "adapter" and not s.get("train_pooler")),
              "adapters, own pooler": (table1_choice(R, task, "adapter", train_pooler=True),
                                       lambda s: bool(s.get("train_pooler")))}
    if any(short is None for short, _ in groups.values()):
        return None
    return {m: best_of([short, *(r for s, r in zip(specs, records) if belongs(s))])
            for m, (short, belongs) in groups.items()}


def longer_seed_specs(R: Runner, choices: dict[str, dict] | None) -> list[dict]:
    """Each method's chosen configuration (``longer_choices``) again at the budget's ``extra_seeds``: does the
    comparison hold over three seeds? (Full FT's 3-epoch choice at those seeds is the seeds experiment's.)"""
    return [] if choices is None else [{**c["spec"], "seed": s} for c in choices.values() for s in R.B["extra_seeds"]]


def exp_longer(R: Runner) -> None:
    R.log(f"longer: {R.B['longer_task']} for {R.B['longer_epochs']} epochs")
    R.need(longer_specs(R))
    R.log("longer: the chosen configurations at more seeds")
    R.need(longer_seed_specs(R, longer_choices(R)))


def exp_squad(R: Runner) -> None:
    R.log("squad")
    R.need(squad_specs(R))


def exp_probe(R: Runner) -> None:
    """Diagnostic (quick budget): linear probes on frozen MiniLM features (analyses.probe)."""
    spec = {"task": "rotten_tomatoes", "max_train": R.B["max_train"], "max_validation": R.B["max_validation"],
            "max_length": R.B["len_single"], "seed": R.B["seed"], "probe": "logreg-lbfgs-l2=1e-2"}
    R.derived("probe-rotten_tomatoes", spec, functools.partial(analyses.probe, spec))


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


def mpnet_specs(R: Runner) -> list[dict]:
    """The larger encoder, all-mpnet-base-v2 (12 x 768, 110 M), on ``mpnet_task``: full FT and size-64
    adapters at the lrs Table 1 chose for MiniLM on that task (no grid: a run costs ~8x MiniLM's here).
    Empty until those Table-1 runs exist."""
    task = R.B["mpnet_task"]
    chosen = [table1_choice(R, task, "full"), table1_choice(R, task, "adapter", 64)]
    return [] if None in chosen else [{**c["spec"], "model": "mpnet"} for c in chosen]


def exp_mpnet(R: Runner) -> None:
    from adapterkit.models import resolve_model

    R.log(f"mpnet: {R.B['mpnet_task']}")
    resolve_model("mpnet")  # fetched once here, not by each worker at once
    R.need(mpnet_specs(R))


RECIPE = 2  # adapterkit's recipe since issue 12: the adapter reads the sublayer's dropout output, tanh GELU


def recipe_spec(R: Runner, task: str, variant: dict) -> dict:
    """A size-64 adapter at the budget's adapter lr, trained by recipe 2 with ``variant``'s options."""
    return train_spec(R.B, task, "adapter", default_lr(R, "adapter"), 64, recipe=RECIPE, **variant)


def recipe_specs(R: Runner) -> list[dict]:
    """Issue 12's recipe search on the tasks where the old default fell below head-only (R8, 20 Newsgroups):
    recipe 2 with each of the budget's ``recipe_variants`` (the head at its own lr, the adapter before the
    dropout, LP-FT, the embedding norm, a larger init); and the ``recipe_check_variants`` on the other tasks
    (``recipe_check``), since a default must win across tasks. Ordered by what is most likely to matter, so a short session gets the
    informative runs first."""
    first, *rest = R.B["recipe_variants"]
    check = sorted(R.B["recipe_check"], key=lambda t: CHEAP_FIRST.index(t) if t in CHEAP_FIRST else len(CHEAP_FIRST))
    return ([recipe_spec(R, task, first) for task in R.B["recipe_tasks"]]
            + [recipe_spec(R, task, v) for v in R.B["recipe_check_variants"][:2] for task in check]
            + recipe_squad_specs(R)
            + [recipe_spec(R, task, v) for v in R.B["recipe_check_variants"][2:] for task in check]
            + [recipe_spec(R, task, v) for v in rest for task in R.B["recipe_tasks"]])


def variant_label(variant: dict) -> str:
    """``{"head_lr": 0.03}`` -> "head lr 0.03": how the pages name a recipe variant."""
    return ", ".join(f"{k.replace('_', ' ')} {v:g}" if isinstance(v, float) else f"{k.replace('_', ' ')} {v}"
                     for k, v in variant.items())


def recipe_squad_specs(R: Runner) -> list[dict]:
    """SQuAD's size-64 adapter (squad_specs' budget) trained by recipe 2 with each ``recipe_squad_variants``."""
    adapter64 = next(s for s in squad_specs(R) if s["method"] == "adapter" and s["adapter_size"] == 64)
    return [{**adapter64, "recipe": RECIPE, **v} for v in R.B.get("recipe_squad_variants", ())]


#: Tasks by their cost at the standard budget (short texts first), so that one variant reaches every
#: cheap task before the next variant starts.
CHEAP_FIRST = ("trec", "sms_spam", "glue/stsb", "glue/mrpc", "rotten_tomatoes", "glue/cola", "glue/rte")


def exp_recipe(R: Runner) -> None:
    R.log(f"recipe: {', '.join(R.B['recipe_tasks'])}")
    R.need(recipe_specs(R))


def fusion_sources(R: Runner, target: str, own: bool) -> list[dict] | None:
    """The adapters a fusion on ``target`` fuses: Table 1's adapter (m = 64, best lr on validation) of every
    other GLUE task of the budget, with ``own`` the target's own last (its layer norms are then the fusion's;
    the paper fuses all tasks' adapters, the target's included). None until they are all trained."""
    tasks = [t for t in R.B["fusion_sources"] if t != target] + ([target] if own else [])
    chosen = [table1_choice(R, t, "adapter", 64) for t in tasks]
    return None if any(c is None or "error" in c["result"] for c in chosen) else [c["spec"] for c in chosen]


def fusion_specs(R: Runner, target: str) -> list[dict]:
    """AdapterFusion runs on ``target``: over the other tasks' adapters, and over those plus its own."""
    specs = []
    for own in (False, True):
        sources = fusion_sources(R, target, own)
        if sources:
            specs += [train_spec(R.B, target, "fusion", lr, fuse_from=sources, head_lr=R.B["fusion_head_lr"])
                      for lr in R.B["fusion_lrs"]]
    return specs


def exp_fusion(R: Runner) -> None:
    for task in R.B["fusion_tasks"]:
        R.log(f"fusion: {task}")
        R.need(fusion_specs(R, task))


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
    "mpnet": exp_mpnet,
    "recipe": exp_recipe,
    "fusion": exp_fusion,
    "generation": generation.exp_generation,
    **rerun.EXPERIMENTS,  # issue 12: the evidence with the default recipe, AdapterHub's default beside it
}


def experiments_of(budget: str) -> list[str]:
    """The experiments a budget runs (its ``skip`` leaves some out), in priority order."""
    skip = BUDGETS[budget].get("skip", ())
    defined_by = {"levers": "levers_task", "longer": "longer_task", "pooler": "pooler", "seeds": "seeds_task",
                  "mpnet": "mpnet_task", "recipe": "recipe_tasks", "fusion": "fusion_tasks",
                  "generation": "generation", **rerun.NEEDS}  # only some budgets have these
    return [e for e in EXPERIMENTS
            if e not in skip and (e not in defined_by or defined_by[e] in BUDGETS[budget])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=list(EXPERIMENTS),
                        help="run only this experiment (repeatable); the doc is rebuilt from every cached result")
    parser.add_argument("--budget", choices=list(BUDGETS), default="standard")
    parser.add_argument("--jobs", type=int, default=1, help="independent runs trained at once (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--retry-failed", action="store_true",
                        help="train again the runs whose cached result is a failure (they are kept otherwise)")
    parser.add_argument("--doc-only", action="store_true", help="only rebuild the docs (every budget's) and plots")
    args = parser.parse_args(argv)

    import report

    R = Runner(args.budget, jobs=args.jobs, threads=args.threads, retry_failed=args.retry_failed)
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

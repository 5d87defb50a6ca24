"""Issue 12, item 3: the evidence again with adapterkit's default recipe (recipe 2), and AdapterHub's default beside it.

Recipe 2 (the default since issue 12): adapters read the sublayer's dropout output (``site="after_dropout"``,
adapter-bert's order) and an adapter's new head (classification, regression, and since the SQuAD runs, QA's
span head) trains at ``head_lr`` (3e-2). Every
spec here is an earlier experiment's spec with ``recipe: 2`` and ``head_lr`` added to its adapter runs
(``r2``); full FT, top-k, LN-only and head-only specs are left as they are, so their cached runs are reused,
and every method keeps the same lr and epoch choices. Identical specs share one cache file: the Table-2 adapters
on R8, 20 Newsgroups, TREC, SMS spam and Rotten Tomatoes are the ``recipe`` experiment's runs.

    table2-r2   Table 2's size-64 adapters (only BoolQ is new)
    adapterhub  AdapterHub's default (seq_bn at 1e-4 and 1e-3) and Houlsby's double_seq_bn (1e-3) on every Table-2
                task at the same budget (adapterhub_default.py)
    table1-r2   Table 1: the adapter lr grid at size 64, sizes 8 and 256 at its best lr, then epochs chosen from
                {epochs, long_epochs} for every method: each method's 3-epoch choice trained again for long_epochs
    mpnet-r2    all-mpnet-base-v2 on RTE, MRPC, STS-B, CoLA: full FT and size-64 adapters at MiniLM's choices
    figure3-r2  Figure 3's adapter sizes
    squad-r2    SQuAD's adapter sizes (the span head at head_lr, QA's default since these runs), and the
                recipe experiment's size-64 SQuAD variants (head lr 3e-2, now the default; lr 3e-3)
    size-lr     Table 1's sizes 8 and 256 with a size-dependent lr: size 64's best lr x 64 / size
                (``--lr-reference-size 64``), beside table1-r2's sizes at size 64's lr; and the sizes below 64 at
                size 64's lr (what lr x min(1, 64 / size) gives them) trained for long_epochs, so that their
                epochs are chosen from {epochs, long_epochs} as Table 1's are; and Figure 3's and SQuAD's sizes
                above 64 at lr x 64 / size, the other evidence a default of lr x min(1, 64 / size) needs
    table1-joint  Table 1 with the adapters' size and epochs chosen together: every size's 3-epoch run (at size
                64's best lr) trained for long_epochs too, the best of the six kept
    size-grid   Table 1's sizes 8 and 256 over size 64's whole lr grid (3 epochs), as the paper sweeps lr and size
                jointly (and the full budget's ``grid_all_sizes``): each size's own best lr
    mpnet-grid  MPNet's own lr choice (mpnet-r2's runs at every lr of their method's grid), then each choice
                trained for long_epochs, so MPNet's lr and epochs are chosen as Table 1's are. 29 of its 32 runs
                ran on a GPU (2026-12-04, one H200, 8 at once: about 11 minutes in all); of the other three
                (10 epochs: STS-B full FT, CoLA both) CoLA's adapters ran on this 2-core CPU machine (84 min)

Cost at the standard budget, estimated from the cached runs (``python experiments/rerun.py`` prints it; each
missing run at the per-epoch wall time of the fastest cached run of its task and method family, one torch
thread, i.e. an unloaded machine; the recipe-2 runs cached so far took 5-15x longer, sharing the CPU with other
work): table2-r2 1 run (BoolQ) ~0.1 CPU-hours, adapterhub 18 runs ~1.9, table1-r2 30 runs ~3.6 (21 at 3 epochs
~1.2, 9 at 10 epochs ~2.4; 20 epochs would be ~5.3 instead of 2.4, hence 10), mpnet-r2 8 runs ~5.7 (assuming
8x MiniLM's time), figure3-r2 8 runs ~0.2, squad-r2 4 runs ~0.9 (+2 variants ~0.45). About 12 CPU-hours: ~6 hours with --jobs 2.
Measured since (2026-12-03): runs two at a time took 1.6-2.6x their estimate (Table 1's 10-epoch RTE runs: 46
and 41 minutes); AdapterHub's first runs (three at a time, side-venv start-up included) took about 5x the
fastest cached adapterkit run of their task, so the estimate now times AdapterHub by its own cached runs: its 15
remaining runs ~9 CPU-hours, likely pessimistic (the fastest adapterkit runs were made on an idle machine).
"""

from __future__ import annotations

import functools

RECIPE = 2


def r2(B: dict, spec: dict) -> dict:
    """``spec`` trained by recipe 2: an adapter run gets ``recipe`` and (classification/regression) ``head_lr``;
    other methods' specs are returned unchanged (their runs do not depend on the recipe)."""
    if spec["method"] != "adapter":
        return spec
    return {**spec, "recipe": RECIPE, "head_lr": B["rerun"]["head_lr"]}


def r2_span_head_at_lr(spec: dict) -> dict:
    """A SQuAD adapter ``spec`` trained by recipe 2 with the span head at the adapters' lr: QA's default until
    these runs showed the head needs its own (train.DEFAULT_HEAD_LR["adapter"]["qa"])."""
    return {**spec, "recipe": RECIPE}


# ------------------------------------------------------------------------------------------------ Table 2
#: Table 2's tasks by their cost at the standard budget (cheapest first).
TABLE2_CHEAP_FIRST = ("trec", "sms_spam", "rotten_tomatoes", "boolq", "r8", "20newsgroups")


def table2_tasks(B: dict) -> list[str]:
    order = {t: i for i, t in enumerate(TABLE2_CHEAP_FIRST)}
    return sorted(B["table2_tasks"], key=lambda t: order.get(t, len(order)))


def table2_r2_specs(R, task: str) -> list[dict]:
    """Table 2's runs of ``task`` (full, top-k, adapter, head) with the adapter trained by recipe 2."""
    import run

    return [r2(R.B, s) for s in run.table2_specs(R, task)]


def exp_table2_r2(R) -> None:
    import run

    for task in table2_tasks(R.B):
        run.baseline(R, task)
    R.log("table2-r2: " + ", ".join(table2_tasks(R.B)))
    R.need([s for task in table2_tasks(R.B) for s in table2_r2_specs(R, task)])


# ------------------------------------------------------------------------------------------------ Table 1
def table1_tasks(B: dict) -> list[str]:
    return list(B["table1_tasks"]) + list(B["table1_late"])


def adapter_lrs(R, task: str, size: int) -> tuple[float, ...]:
    """Table 1's adapter lr grid for ``size`` under recipe 2: the grid at size 64; other sizes at the lr that
    was best for recipe-2 size 64 (empty until those ran)."""
    import run

    if size == 64 or R.B["grid_all_sizes"]:
        return run.lrs_for(R, task, "adapter", 64)
    best = run.best_of(R.need(adapter_specs(R, task, 64)))
    return (best["spec"]["lr"],) if best else ()


def adapter_specs(R, task: str, size: int) -> list[dict]:
    import run

    return [r2(R.B, run.train_spec(R.B, task, "adapter", lr, size=size)) for lr in adapter_lrs(R, task, size)]


def table1_r2_specs(R, task: str) -> list[dict]:
    """Table 1's 3-epoch grid of ``task``: full FT as before, recipe-2 adapters of every size."""
    import run

    full = [run.train_spec(R.B, task, "full", lr) for lr in run.lrs_for(R, task, "full")]
    return full + [s for size in R.B["sizes"] for s in adapter_specs(R, task, size)]


def short_choice(R, task: str, method: str, size: int | None = None) -> dict | None:
    """The 3-epoch run Table 1 reports for (task, method[, size]): best on validation over its grid. Full FT
    is Table 1's own choice (recipe 1 and 2 train it alike)."""
    import run

    if method == "full":
        return run.table1_choice(R, task, "full")
    sizes = R.B["sizes"] if size is None else (size,)
    return run.best_of(R.need([s for m in sizes for s in adapter_specs(R, task, m)]))


def long_spec(R, choice: dict | None) -> dict | None:
    """A 3-epoch choice trained for ``long_epochs`` (same lr and size; warm-up and decay stretched)."""
    return None if choice is None else {**choice["spec"], "epochs": R.B["rerun"]["long_epochs"]}


def long_specs(R, task: str) -> list[dict]:
    """The ``long_epochs`` runs of ``task``: full FT's and the adapters' (8-256) 3-epoch choices."""
    specs = [long_spec(R, short_choice(R, task, m)) for m in ("full", "adapter")]
    return [s for s in specs if s is not None]


def epoch_choice(R, task: str, method: str) -> dict | None:
    """Best on validation of the method's 3-epoch choice and that choice at ``long_epochs`` (the paper chooses
    epochs on validation like the lr). None until both ran."""
    return better_of_long(R, short_choice(R, task, method))


def better_of_long(R, short: dict | None) -> dict | None:
    """A 3-epoch choice or that choice at ``long_epochs``, the better on validation; None until both ran."""
    import run

    if short is None:
        return None
    (long,) = R.need([long_spec(R, short)])
    return None if long is None else run.best_of([short, long])


def exp_table1_r2(R) -> None:
    import run

    tasks = table1_tasks(R.B)
    for task in tasks:
        run.baseline(R, task)
    # one stage at a time over every task (so --jobs N keeps N runs going): the size-64 grids first, since
    # the other sizes wait for their best lr, and the long runs for the 3-epoch choices
    R.log("table1-r2: size-64 adapters")
    R.need([s for t in tasks for s in adapter_specs(R, t, 64)
            + [run.train_spec(R.B, t, "full", lr) for lr in run.lrs_for(R, t, "full")]])
    R.log("table1-r2: adapter sizes")
    R.need([s for t in tasks for s in table1_r2_specs(R, t)])
    R.log(f"table1-r2: {R.B['rerun']['long_epochs']} epochs")
    R.need([s for t in tasks for s in long_specs(R, t)])


def size_lr_specs(R, task: str) -> list[dict]:
    """Issue 12's size-dependent lr: the sizes other than 64 at size 64's best recipe-2 lr times 64 / size
    (``lr_reference_size``: the adapters at lr x 64/m, the head at its own lr). Empty until size 64's grid ran."""
    return [{**s, "lr_reference_size": 64} for size in R.B["sizes"] if size != 64 for s in adapter_specs(R, task, size)]


def size_long_specs(R, task: str, sizes=None) -> list[dict]:
    """Each adapter size's 3-epoch run at size 64's best lr (table1-r2's) trained for ``long_epochs``, for every
    size or ``sizes``. Missing until the 3-epoch runs ran."""
    sizes = R.B["sizes"] if sizes is None else sizes
    specs = [long_spec(R, short_choice(R, task, "adapter", size)) for size in sizes]
    return [s for s in specs if s is not None]


def small_long_specs(R, task: str) -> list[dict]:
    """The sizes below 64 at size 64's best lr trained for ``long_epochs``: with their 3-epoch runs, each such
    size gets its epochs chosen on validation as Table 1's choices do."""
    return size_long_specs(R, task, [size for size in R.B["sizes"] if size < 64])


def joint_choice(R, task: str, sizes=None) -> dict | None:
    """Adapters with size and epochs chosen together, as the paper chooses them: the best on validation of every
    size's (or of ``sizes``') 3-epoch run (lr: size 64's best, as in Table 1) and its ``long_epochs`` run. None
    until all ran."""
    import run

    shorts = [short_choice(R, task, "adapter", size) for size in (R.B["sizes"] if sizes is None else sizes)]
    longs = R.need([long_spec(R, s) for s in shorts]) if None not in shorts else [None]
    return None if None in longs else run.best_of(shorts + longs)


def exp_table1_joint(R) -> None:
    R.log(f"table1-joint: every adapter size for {R.B['rerun']['long_epochs']} epochs")
    R.need([s for t in table1_tasks(R.B) for s in size_long_specs(R, t)])


def large_elsewhere_specs(R) -> list[dict]:
    """Figure 3's and SQuAD's adapters above size 64 (recipe 2, at their experiment's lr) at lr x 64 / size: where
    they trained at the full lr without collapsing, what slowing them costs."""
    specs = [s for t in R.B["fig3_tasks"] for s in fig3_r2_specs(R, t)] + squad_r2_specs(R)
    return [{**s, "lr_reference_size": 64} for s in specs if s["method"] == "adapter" and s["adapter_size"] > 64]


def size_grid_specs(R, task: str) -> list[dict]:
    """Sizes other than 64 at every lr of size 64's grid (recipe 2, 3 epochs); the best-lr ones are table1-r2's."""
    import run

    return [r2(R.B, run.train_spec(R.B, task, "adapter", lr, size=size)) for size in R.B["sizes"] if size != 64
            for lr in run.lrs_for(R, task, "adapter", 64)]


def exp_size_grid(R) -> None:
    R.log("size-grid: sizes " + ", ".join(str(m) for m in R.B["sizes"] if m != 64) + " over the whole lr grid")
    R.need([s for t in table1_tasks(R.B) for s in size_grid_specs(R, t)])


def exp_size_lr(R) -> None:
    tasks = table1_tasks(R.B)
    R.log("size-lr: size-64 adapters (table1-r2's grid)")
    R.need([s for t in tasks for s in adapter_specs(R, t, 64)])
    R.log("size-lr: sizes " + ", ".join(str(m) for m in R.B["sizes"] if m != 64) + " at lr x 64 / size")
    R.need([s for t in tasks for s in size_lr_specs(R, t)])
    R.log(f"size-lr: sizes below 64 at size 64's lr for {R.B['rerun']['long_epochs']} epochs; Figure 3's and "
          "SQuAD's sizes above 64 at lr x 64 / size")
    R.need([s for t in tasks for s in small_long_specs(R, t)] + large_elsewhere_specs(R))


# ------------------------------------------------------------------------------------ MPNet, Figure 3, SQuAD
def mpnet_r2_specs(R) -> list[dict]:
    """all-mpnet-base-v2 on ``mpnet_tasks``: full FT at Table 1's lr, size-64 recipe-2 adapters at the lr
    Table 1 (recipe 2) chose; 3 epochs (one run costs ~8 MiniLM runs). A task waits for its Table-1 choices."""
    specs = []
    for task in R.B["rerun"]["mpnet_tasks"]:
        chosen = [short_choice(R, task, "full"), short_choice(R, task, "adapter", 64)]
        specs += [{**c["spec"], "model": "mpnet"} for c in chosen if c is not None]
    return specs


def mpnet_grid_specs(R) -> list[dict]:
    """MPNet's own lr choice: each mpnet-r2 run at every lr of its method's grid (Table 1's protocol, which
    chooses the lr on validation per task and method; MiniLM's choice diverges on MPNet's STS-B)."""
    grid = R.B["task_grid"]
    return [{**s, "lr": lr} for s in mpnet_r2_specs(R) for lr in grid[s["method"]]]


def mpnet_choice(R, task: str, method: str) -> dict | None:
    """MPNet's 3-epoch run of (task, method) with the lr chosen on validation over its grid; None until the
    whole grid has run (a choice over part of it would start the long run from the wrong lr)."""
    import run

    records = R.need([s for s in mpnet_grid_specs(R) if s["task"] == task and s["method"] == method])
    return None if None in records else run.best_of(records)


def mpnet_long_specs(R) -> list[dict]:
    """MPNet's lr choices trained for ``long_epochs``: the epochs chosen as Table 1's joint choice does."""
    specs = [long_spec(R, mpnet_choice(R, t, m)) for t in R.B["rerun"]["mpnet_tasks"] for m in ("full", "adapter")]
    return [s for s in specs if s is not None]


def mpnet_epoch_choice(R, task: str, method: str) -> dict | None:
    """MPNet's lr choice or that choice at ``long_epochs``, the better on validation; None until both ran."""
    return better_of_long(R, mpnet_choice(R, task, method))


def exp_mpnet_r2(R) -> None:
    from adapterkit.models import resolve_model

    R.log("mpnet-r2: " + ", ".join(R.B["rerun"]["mpnet_tasks"]))
    resolve_model("mpnet")  # fetched once here, not by each worker at once
    R.need(mpnet_r2_specs(R))


def exp_mpnet_grid(R) -> None:
    from adapterkit.models import resolve_model

    R.log("mpnet-grid: " + ", ".join(R.B["rerun"]["mpnet_tasks"]) + ", every lr of the grid, then the choices "
          f"for {R.B['rerun']['long_epochs']} epochs")
    resolve_model("mpnet")
    R.need(mpnet_grid_specs(R))
    R.need(mpnet_long_specs(R))


def fig3_r2_specs(R, task: str) -> list[dict]:
    import run

    return [r2(R.B, s) for s in run.fig3_specs(R, task)]


def exp_fig3_r2(R) -> None:
    R.log("figure3-r2: " + ", ".join(R.B["fig3_tasks"]))
    R.need([s for task in R.B["fig3_tasks"] for s in fig3_r2_specs(R, task)])


def squad_r2_specs(R) -> list[dict]:
    import run

    return [r2(R.B, s) for s in run.squad_specs(R)]


def exp_squad_r2(R) -> None:
    import run

    R.log("squad-r2")
    R.need(squad_r2_specs(R) + run.recipe_squad_specs(R))  # the recipe experiment's SQuAD variants beside them


# ------------------------------------------------------------------------------------------- AdapterHub
def adapterhub_specs(R, task: str) -> list[dict]:
    """AdapterHub's adapters on ``task`` at Table 2's budget (data, epochs, batch size, length, seed): one run per
    (config, lr) of the budget's ``adapterhub["runs"]``, the first being AdapterHub's default."""
    import run

    return [run.train_spec(R.B, task, "adapterhub", lr, adapterhub_config=config)
            for config, lr in R.B["adapterhub"]["runs"]]


def exp_adapterhub(R) -> None:
    tasks = table2_tasks(R.B)
    for i, (config, lr) in enumerate(R.B["adapterhub"]["runs"]):  # the default on every task first
        R.log(f"adapterhub: {config}, lr {lr:g}: " + ", ".join(tasks))
        R.need([adapterhub_specs(R, task)[i] for task in tasks])


EXPERIMENTS = {"table2-r2": exp_table2_r2, "adapterhub": exp_adapterhub, "table1-r2": exp_table1_r2,
               "mpnet-r2": exp_mpnet_r2, "figure3-r2": exp_fig3_r2, "squad-r2": exp_squad_r2, "size-lr": exp_size_lr,
               "size-grid": exp_size_grid, "table1-joint": exp_table1_joint, "mpnet-grid": exp_mpnet_grid}
#: The budget key each experiment needs (a budget without it skips the experiment).
NEEDS = {name: ("adapterhub" if name == "adapterhub" else "rerun") for name in EXPERIMENTS}
#: Every run of each experiment (what the results page counts as expected).
SPECS = {
    "table2-r2": lambda R: [s for t in table2_tasks(R.B) for s in table2_r2_specs(R, t)],
    "adapterhub": lambda R: [s for t in table2_tasks(R.B) for s in adapterhub_specs(R, t)],
    "table1-r2": lambda R: [s for t in table1_tasks(R.B) for s in table1_r2_specs(R, t) + long_specs(R, t)],
    "mpnet-r2": mpnet_r2_specs,
    "figure3-r2": lambda R: [s for t in R.B["fig3_tasks"] for s in fig3_r2_specs(R, t)],
    "squad-r2": squad_r2_specs,
    "size-lr": lambda R: ([s for t in table1_tasks(R.B) for s in size_lr_specs(R, t) + small_long_specs(R, t)]
                          + large_elsewhere_specs(R)),
    "size-grid": lambda R: [s for t in table1_tasks(R.B) for s in size_grid_specs(R, t)],
    "table1-joint": lambda R: [s for t in table1_tasks(R.B) for s in size_long_specs(R, t)],
    "mpnet-grid": lambda R: mpnet_grid_specs(R) + mpnet_long_specs(R),
}
#: CPU cost of all-mpnet-base-v2 against MiniLM-L6 per example (12 x 768 against 6 x 384; run.mpnet_specs).
MPNET_COST = 8.0


@functools.lru_cache(maxsize=None)
def bert_large_pct(size: int) -> float:
    """The % of BERT-large (the paper's model) adapterkit trains with a size-``size`` adapter and a 2-class head:
    adapterkit's own count (methods.count_parameters) on a meta-device model, so no weights and no memory."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig

    from adapterkit.methods import MethodConfig, count_parameters, prepare

    config = BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
    with torch.device("meta"):  # the adapters too: prepare builds them under the same default device
        model = AutoModelForSequenceClassification.from_config(config)
        prepare(model, MethodConfig("adapter", adapter_size=size), "classification", ["0", "1"])
    return count_parameters(model)["trainable_pct"]


def estimate(budget: str = "standard") -> dict[str, tuple[int, float]]:
    """Per experiment: (runs not cached yet, CPU seconds they would take). A run that waits on another's result
    (sizes 8/256 on the best size-64 lr, the long-epoch runs, MPNet) is counted as if the first grid point had
    won. Each missing run costs what the fastest cached run of its task, method family (full FT, AdapterHub, the rest)
    and train size took per epoch (one thread, the least loaded), times its epochs (times MPNET_COST on MPNet);
    with no such run, the median of the others (AdapterHub: adapterkit's time times AdapterHub's measured ratio).
    Runs two at a time on the 2-core machine took 1.6-2.6x these times (2026-12-03)."""
    import json

    from runner import RESULTS, Runner, spec_key

    def family(s: dict) -> str:  # AdapterHub's runs train in the side venv, at their own speed
        return s["method"] if s["method"] in ("full", "adapterhub") else "rest"

    per_epoch: dict[tuple, float] = {}
    for path in (RESULTS / "train").glob("*.json"):
        r = json.loads(path.read_text())
        s, res = r["spec"], r["result"]
        if "error" in res or not res.get("wall_seconds") or s.get("model", "minilm") != "minilm":
            continue
        key = (s["task"], family(s), s.get("max_train"))
        per_epoch[key] = min(per_epoch.get(key, float("inf")), res["wall_seconds"] / s["epochs"])
    median = sorted(per_epoch.values())[len(per_epoch) // 2]
    # AdapterHub on a task it has not run yet: adapterkit's time there times the median ratio where both ran
    ratios = sorted(t / per_epoch[(k[0], "rest", k[2])] for k, t in per_epoch.items()
                    if k[1] == "adapterhub" and (k[0], "rest", k[2]) in per_epoch)
    ah_ratio = ratios[len(ratios) // 2] if ratios else 1.0

    def seconds_per_epoch(s: dict) -> float:
        key = (s["task"], family(s), s.get("max_train"))
        if key in per_epoch:
            return per_epoch[key]
        if key[1] == "adapterhub":
            return per_epoch.get((key[0], "rest", key[2]), median) * ah_ratio
        return median

    class Counting(Runner):  # cached records, or a placeholder that loses every comparison
        def need(self, specs):
            return [r or {"spec": s, "key": spec_key(s), "result": {"best": {"main": float("-inf")}}}
                    for s, r in zip(specs, super().need(specs))]

    R = Counting(budget, dry=True, log=lambda *a: None)
    out = {}
    for name, specs_of in SPECS.items():
        if NEEDS[name] not in R.B:
            continue
        missing = {spec_key(s): s for s in specs_of(R) if Runner.need(R, [s])[0] is None}
        seconds = sum(seconds_per_epoch(s) * s["epochs"] * (MPNET_COST if s.get("model") == "mpnet" else 1.0)
                      for s in missing.values())
        out[name] = (len(missing), seconds)
    return out


if __name__ == "__main__":
    for name, (n, seconds) in estimate().items():
        print(f"{name:12s} {n:3d} run(s) not cached, ~{seconds / 3600:.1f} CPU-hours (one thread each)")

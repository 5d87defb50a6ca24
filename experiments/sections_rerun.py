"""Results-page section of issue 12's rerun (experiments/rerun.py): Table 2, AdapterHub's default, Table 1, size
robustness, MPNet, Figure 3 and SQuAD with adapterkit's default recipe (recipe 2), beside recipe 1 and full
fine-tuning, each with the issue's acceptance target and whether it is met (or not yet measured)."""

from __future__ import annotations

import run
import rerun
from doc import NOT_RUN, Doc, cell, chosen, fmt, gap, mean, name, on_gpu, plot_name, score, signed, verdict

#: A run "collapses" when it scores no more than this many points above the majority class.
COLLAPSE_MARGIN = 1.0
# A regression "majority class" is a constant prediction (correlation 0); a correlation this low (x 100) is one
# too: STS-B's size-256 adapters reached 4.0 at lr 3e-3, a collapse the 1-point margin would not call one.
COLLAPSE_CORRELATION = 10.0


def majority_score(d: Doc, task: str) -> float | None:
    rec = d.derived("baselines", f"baseline-{task.replace('/', '-')}", run.baseline_key(d.R, task))
    return None if rec is None else 100 * rec["result"]["main"]


def section(d: Doc) -> None:
    B = d.B
    d.add("## The evidence with the default recipe (issue 12)", "",
          "Recipe 2, adapterkit's default since issue 12: the adapter reads the sublayer's dropout output (adapter-bert's "
          f"order) and an adapter's new head (classification, regression, and QA's span head) trains at "
          f"{B['rerun']['head_lr']:g}. Every adapter run of the tables above trained again "
          "with it, everything else unchanged: full FT, top-k, LN-only and head-only are the same runs as above, and "
          "every method gets the same lr and epoch choices. Scores x 100 as in the tables above; "
          f"\"{NOT_RUN}\" marks runs the runner has not reached (`python experiments/run.py --only table2-r2 --only "
          "adapterhub --only table1-r2 --only mpnet-r2 --only figure3-r2 --only squad-r2 --only size-lr --only size-grid --only table1-joint --only mpnet-grid --jobs 2` continues them).", "")
    table2(d)
    adapterhub(d)
    table1(d)
    mpnet(d)
    figure3(d)
    squad(d)


def table2(d: Doc) -> None:
    d.add("### Table 2", "",
          "| task | full FT | top-2 | head-only | adapters (64), recipe 1 | adapters (64), recipe 2 | recipe 2 - full FT | "
          "recipe 2 - head-only |", "|---|---|---|---|---|---|---|---|")
    cols = {k: [] for k in ("full", "top", "head", "r1", "r2")}
    below_head, missing, long_gaps = [], 0, {}
    for task in rerun.table2_tasks(d.B):
        full, top, r2, head = d.need("table2-r2", rerun.table2_r2_specs(d.R, task))
        (r1,) = d.need("table2", [run.table2_specs(d.R, task)[2]])
        for k, r in zip(cols, (full, top, head, r1, r2)):
            cols[k].append(score(r))
        missing += r2 is None
        if task in ("r8", "20newsgroups"):  # the long-text tasks the first recipe left below head-only
            long_gaps[task] = gap(r2, full)
        if gap(r2, head) is not None and gap(r2, head) < 0:
            below_head.append(f"{name(task)} ({gap(r2, head):+.1f})")
        d.add(f"| {name(task)} | {cell(full)} | {cell(top)} | {cell(head)} | {cell(r1)} | {cell(r2)} | "
              f"{fmt(gap(r2, full))} | {fmt(gap(r2, head))} |")
    means = {k: mean(v) for k, v in cols.items()}
    diff = None if None in (means["r2"], means["full"]) else means["r2"] - means["full"]
    d.add(f"| **mean** | **{fmt(means['full'])}** | **{fmt(means['top'])}** | **{fmt(means['head'])}** | "
          f"**{fmt(means['r1'])}** | **{fmt(means['r2'])}** | **{fmt(diff)}** | |", "")
    d.add("Acceptance:", "",
          f"- adapters at or above head-only on every task: {verdict(None if missing else not below_head)}"
          + (f" (below: {', '.join(below_head)})" if below_head else "")
          + (f"; {missing} task(s) {NOT_RUN}, the others {'not all' if below_head else 'all'} at or above" if missing else ""),
          f"- the six-task mean within 1.5 points of full FT: {verdict(None if diff is None else diff >= -1.5)}"
          + ("" if diff is None else f" ({fmt(means['r2'])} vs {fmt(means['full'])}, {diff:+.1f})"),
          "- R8 and 20 Newsgroups each within 3 points of full FT: "
          + verdict(None if None in long_gaps.values() else all(g >= -3 for g in long_gaps.values()))
          + " (" + ", ".join(f"{name(t)} {signed(g)}" for t, g in long_gaps.items()) + ")", "")


def adapterhub(d: Doc) -> None:
    runs = d.B["adapterhub"]["runs"]
    columns = [f"AdapterHub {config}, lr {lr:g}" + (" (its default)" if k == 0 else "") for k, (config, lr) in enumerate(runs)]
    d.add("### AdapterHub's default beside adapterkit's (Table 2 tasks)", "",
          "AdapterHub (`adapters` 1.3, transformers 4.x, in the side venv of benchmarks/_adapterhub_env.py) with its "
          "default bottleneck adapter, `add_adapter(name, config=\"seq_bn\")` (SeqBnConfig(): one adapter per layer "
          "after the FFN, reduction factor 16, i.e. 24 on MiniLM's 384, ReLU), its default head "
          "(`add_classification_head`: two layers, tanh, on [CLS]) and `train_adapter` (base frozen), at AdapterHub's "
          "documented adapter lr, 1e-4 (docs.adapterhub.ml, \"Adapter Training\": \"a default adapter learning rate of "
          "1e-4 works well for most settings\"; its run_glue example trains 10 epochs, its AdapterTrainer example 6), "
          f"and at adapterkit's {run.default_lr(d.R, 'adapter'):g}; and Houlsby's `double_seq_bn` (DoubleSeqBnConfig(): "
          "after attention and FFN, reduction factor 16, swish), the configuration issue 12 compared on a held-out task. "
          "Same budget as the adapterkit column: the same train and validation rows, token ids, batches in the same "
          "order, epochs, batch size, optimiser (AdamW, 10% warm-up, linear decay, clipping 1.0; AdapterHub's Trainer "
          "has no warm-up) and evaluation (best epoch on validation, adapterkit's metrics) "
          "(experiments/adapterhub_default.py).", "",
          "| task | adapterkit default (recipe 2, m=64) | " + " | ".join(columns) + " | adapterkit - AdapterHub's default "
          "| adapterkit - best AdapterHub |", "|---|---|" + "---|" * len(runs) + "---|---|")
    behind_default, behind_any, pct = [], [], [[] for _ in range(len(runs) + 1)]
    missing_default = missing = 0  # tasks where adapterkit's or AdapterHub's default / any column has not run
    for task in rerun.table2_tasks(d.B):
        (mine,) = d.need("table2-r2", [rerun.table2_r2_specs(d.R, task)[2]])
        theirs = d.need("adapterhub", rerun.adapterhub_specs(d.R, task))
        for column, r in zip(pct, [mine, *theirs]):
            if r is not None and "error" not in r["result"]:
                column.append(r["result"]["trainable_pct"])
        vs_default, vs_best = gap(mine, theirs[0]), gap(mine, run.best_of(theirs))
        missing_default += mine is None or theirs[0] is None
        missing += mine is None or any(r is None for r in theirs)
        for g, behind in ((vs_default, behind_default), (vs_best, behind_any)):
            if g is not None and g < 0:
                behind.append(f"{name(task)} ({g:+.1f})")
        d.add(f"| {name(task)} | {cell(mine)} | " + " | ".join(cell(r) for r in theirs)
              + f" | {fmt(vs_default)} | {fmt(vs_best)} |")
    d.add("| trained params per task (mean %) | " + " | ".join("—" if not c else f"{mean(c):.2f}%" for c in pct) + " | | |",
          "", "Acceptance: adapterkit's default at or above AdapterHub's default on every Table-2 task at the same budget: "
          + verdict(None if missing_default else not behind_default)
          + (f" (behind on {', '.join(behind_default)})" if behind_default else "")
          + (f", {missing_default} task(s) not yet run" if missing_default else "")
          + "; at or above every AdapterHub column (any lr, Houlsby's configuration too): "
          + verdict(None if missing else not behind_any)
          + (f" (behind on {', '.join(behind_any)})" if behind_any else "")
          + (f"; {missing} task(s) not yet run by all" if missing else "") + ".", "")


def table1(d: Doc) -> None:
    B, E = d.B, d.B["rerun"]["long_epochs"]
    d.add("### Table 1", "",
          f"GLUE dev, Table 1's protocol with recipe-2 adapters: at {B['epochs']} epochs the adapter lr grid "
          f"({' / '.join(f'{x:g}' for x in B['task_grid']['adapter'])}) at size 64, sizes 8 and 256 at its best lr, full FT "
          f"over its grid ({' / '.join(f'{x:g}' for x in B['task_grid']['full'])}); then epochs chosen on validation from "
          f"{{{B['epochs']}, {E}}} for both methods: each method's {B['epochs']}-epoch choice trained again for {E} epochs "
          f"(warm-up and decay stretched), the better kept. The paper chooses from {{3, 20}}; {E} is the largest "
          "affordable here: estimated before they ran from the cached runs' times (rerun.estimate), the 10-epoch runs cost about 2.4 "
          "CPU-hours, twice the recipe-2 3-epoch grid, and 20 epochs would cost about 5.3 (the budget's `long_epochs`).", "",
          f"| task | full FT, {B['epochs']} ep. | adapters recipe 1 (Table 1) | adapters recipe 2, {B['epochs']} ep. (8-256) | "
          f"full FT, epochs chosen | adapters recipe 2, epochs chosen | adapters - full (epochs chosen) | majority class |",
          "|---|---|---|---|---|---|---|---|")
    cols = {k: [] for k in ("full3", "r1", "r23", "full", "r2")}
    pcts = []
    for task in rerun.table1_tasks(B):
        d.need("table1-r2", rerun.table1_r2_specs(d.R, task))
        d.need("table1-r2", rerun.long_specs(d.R, task))
        full3, r23 = rerun.short_choice(d.R, task, "full"), rerun.short_choice(d.R, task, "adapter")
        r1 = run.table1_choice(d.R, task, "adapter")
        full, r2 = rerun.epoch_choice(d.R, task, "full"), rerun.epoch_choice(d.R, task, "adapter")
        for k, r in zip(cols, (full3, r1, r23, full, r2)):
            cols[k].append(score(r))
        if r2 is not None:
            pcts.append(r2["result"]["trainable_pct"])

        base = majority_score(d, task)
        d.add(f"| {name(task)} | {cell(full3)} | {cell(r1)} | {chosen(r23)} | {chosen(full)} | {chosen(r2)} | "
              f"{fmt(gap(r2, full))} | {fmt(base)} |")
    means = {k: mean(v) for k, v in cols.items()}
    diff = None if None in (means["r2"], means["full"]) else means["r2"] - means["full"]
    diff3 = None if None in (means["r23"], means["full3"]) else means["r23"] - means["full3"]
    pct = mean(pcts) if len(pcts) == len(cols["r2"]) else None
    d.add(f"| **mean** | **{fmt(means['full3'])}** | **{fmt(means['r1'])}** | **{fmt(means['r23'])}** | "
          f"**{fmt(means['full'])}** | **{fmt(means['r2'])}** | **{fmt(diff)}** | |", "",
          f"Acceptance: the {len(cols['r2'])}-task mean of adapters within 0.5 points of full FT at no more than 3.6% "
          "trained per task, same protocol for both: "
          + verdict(None if diff is None or pct is None else diff >= -0.5 and pct <= 3.6)
          + ("" if diff is None else f" (epochs chosen: {fmt(means['r2'])} vs {fmt(means['full'])}, {diff:+.1f}, "
             + (f"{pct:.2f}% trained per task" if pct is not None else "") + ")")
          + ("" if diff3 is None else f"; at {B['epochs']} epochs alone {diff3:+.1f}") + ".", "")
    done, want = d.status.get("table1-r2", (0, 0))
    if done < want:
        d.add(f"Provisional: {done} of the {want} runs known so far have run; a choice shown is the best among them "
              "(the sizes 8 and 256 and the long runs follow the size-64 grid's choices).", "")
    joint(d)
    sizes(d)


def joint(d: Doc) -> None:
    """Table 1 with the adapters' size and epochs chosen together (table1-joint), and size 64 alone with its epochs
    chosen (the paper's "Adapters (64)" row); full FT as above."""
    B, E = d.B, d.B["rerun"]["long_epochs"]
    d.add(f"Size and epochs chosen together, as the paper chooses them: every adapter size at size 64's best lr, "
          f"at {B['epochs']} and at {E} epochs, the best of the {2 * len(B['sizes'])} on validation (table1-joint); "
          f"above, the size was chosen at {B['epochs']} epochs and only that size trained for {E}. Beside it size 64 "
          "alone, its epochs chosen (the paper's \"Adapters (64)\" row). Full FT as above (its lr, then its epochs).", "",
          "| task | full FT, epochs chosen | adapters, size and epochs chosen | adapters - full | adapters (64), epochs "
          "chosen | adapters (64) - full |", "|---|---|---|---|---|---|")
    choices = {"joint": (None, []), "64": ((64,), [])}  # name: (sizes, that choice's run per task)
    full = []
    for task in rerun.table1_tasks(B):
        d.need("table1-joint", rerun.size_long_specs(d.R, task))
        f = rerun.epoch_choice(d.R, task, "full")
        full.append(f)
        row = [name(task), cell(f)]
        for sizes, runs in choices.values():
            a = rerun.joint_choice(d.R, task, sizes)
            runs.append(a)
            row += [chosen(a), fmt(gap(a, f))]
        d.add("| " + " | ".join(row) + " |")
    full_mean = mean([score(f) for f in full])
    means = {key: mean([score(a) for a in runs]) for key, (_, runs) in choices.items()}
    diffs = {key: None if None in (m, full_mean) else m - full_mean for key, m in means.items()}
    d.add("| " + " | ".join(["**mean**", f"**{fmt(full_mean)}**"]
                            + [f"**{fmt(x)}**" for key in choices for x in (means[key], diffs[key])]) + " |", "")

    def judged(key: str) -> str:
        runs, diff = choices[key][1], diffs[key]
        if diff is None:
            return verdict(None)
        pct = mean([a["result"]["trainable_pct"] for a in runs])
        paper_pct = mean([rerun.bert_large_pct(a["spec"]["adapter_size"]) for a in runs])
        return (verdict(diff >= -0.5 and pct <= 3.6) + f" ({diff:+.1f}, {'within' if diff >= -0.5 else 'outside'} 0.5; "
                f"{pct:.2f}% of MiniLM trained per task, {'within' if pct <= 3.6 else 'over'} 3.6%; the same sizes "
                f"would train {paper_pct:.2f}% of BERT-large)")

    d.add("Acceptance with size and epochs chosen together: within 0.5 points of full FT at no more than 3.6% trained "
          f"per task: {judged('joint')}; with size 64 alone: {judged('64')}. The paper's 3.6% is a share of BERT-large "
          "(24 layers x 1024), on which an adapter of size m is a smaller share than on MiniLM (6 x 384): adapterkit's "
          "own count on a BERT-large configuration (meta device, no weights), size 8 / 64 / 256: "
          + " / ".join(f"{rerun.bert_large_pct(m):.2f}%" for m in B["sizes"]) + ".", "")


def sizes(d: Doc) -> None:
    B = d.B
    d.add(f"Size robustness: recipe-2 adapters of each size at the lr the recipe picks (size 64's best, {B['epochs']} "
          f"epochs); \"collapsed\" = no more than {COLLAPSE_MARGIN:g} point above the majority class (STS-B: a "
          f"correlation below {COLLAPSE_CORRELATION:g}, a near-constant prediction).", "",
          "| task | " + " | ".join(f"m={s}" for s in B["sizes"]) + " | majority class |", "|---|" + "---|" * (len(B["sizes"]) + 1))
    at_64s_lr, missing = size_rows(d, B["sizes"],
                                   lambda task: {s: rerun.short_choice(d.R, task, "adapter", s) for s in B["sizes"]},
                                   lambda r, s: r["spec"]["lr"], majority_column=True)
    collapsed = [label(k) for k, down in at_64s_lr.items() if down]
    d.add("", "Acceptance: no adapter size in {" + ", ".join(map(str, B["sizes"])) + "} collapses to the majority class: "
          + verdict(False if collapsed else None if missing else True)
          + (f" (collapsed: {', '.join(collapsed)})" if collapsed else "")
          + (f"; {missing} cell(s) {NOT_RUN}" if missing else "") + ".", "")
    others = [s for s in B["sizes"] if s != 64]
    d.add("With a size-dependent lr (`--lr-reference-size 64`): the adapters of size m at size 64's best lr x 64 / m "
          "(the head at its own lr), beside the same sizes at size 64's lr (above).", "",
          "| task | " + " | ".join(f"m={s}, lr x {64 / s:g}" for s in others) + " |", "|---|" + "---|" * len(others))

    def scaled_runs(task):
        specs = rerun.size_lr_specs(d.R, task)
        return {s["adapter_size"]: r for s, r in zip(specs, d.need("size-lr", specs))}

    scaled, missing = size_rows(d, others, scaled_runs, lambda r, s: r["spec"]["lr"] * 64 / s)
    down = [k for k, v in scaled.items() if v]
    # the recipe as a two-point lr grid per size, chosen on validation: size 64's lr or lr x 64 / m
    both = [k for k in down if at_64s_lr.get(k)]
    # lr x min(1, 64 / m): larger adapters slowed down, smaller ones at size 64's lr
    down_only = [k for k in at_64s_lr if k[1] < 64 and at_64s_lr[k]] + [k for k in down if k[1] > 64]
    d.add("", "Acceptance with the size-dependent lr: no size collapses at lr x 64 / m: "
          + verdict(False if down else None if missing else True)
          + (f" (collapsed: {', '.join(map(label, down))})" if down else "")
          + "; none collapses at both lrs, i.e. with each size's lr chosen on validation from these two: "
          + verdict(False if both else None if missing else True)
          + (f" (collapsed at both: {', '.join(map(label, both))})" if both else "")
          + "; none collapses at lr x min(1, 64 / m), only the larger sizes slowed: "
          + verdict(False if down_only else None if missing else True)
          + (f" (collapsed: {', '.join(map(label, down_only))})" if down_only else "")
          + (f"; {missing} cell(s) {NOT_RUN}" if missing else "") + ".", "")
    small_epochs(d, at_64s_lr, [k for k in down if k[1] > 64], missing)
    large_elsewhere(d)
    own_grid(d)


def own_grid(d: Doc) -> None:
    """Each size at its own best lr over size 64's grid (size-grid; the paper sweeps lr and size jointly). A size
    whose best so far holds needs no more runs to hold: more lrs can only raise the best."""
    B = d.B
    d.add("Each size with its own lr: sizes 8 and 256 over size 64's whole lr grid "
          f"({' / '.join(f'{x:g}' for x in B['task_grid']['adapter'])}; {B['epochs']} epochs), as the paper sweeps lr "
          "and size jointly (size-grid): the best on validation, and at how many of the grid's lrs the size collapsed.", "",
          "| task | " + " | ".join(f"m={s}" for s in B["sizes"]) + " |", "|---|" + "---|" * len(B["sizes"]))
    down, waiting = [], 0
    for task in rerun.table1_tasks(B):
        base, cells = majority_score(d, task), []
        specs = rerun.size_grid_specs(d.R, task)
        by_size = {64: d.R.need(rerun.adapter_specs(d.R, task, 64))}
        for spec, record in zip(specs, d.need("size-grid", specs)):
            by_size.setdefault(spec["adapter_size"], []).append(record)
        for size in B["sizes"]:
            runs = by_size[size]
            ran = [r for r in runs if r is not None]
            best = run.best_of(ran)
            if best is None:
                waiting += 1
                cells.append(NOT_RUN)
                continue
            collapsed = sum(is_collapse(r, base) for r in ran)
            if is_collapse(best, base):
                if len(ran) < len(runs):
                    waiting += 1
                else:
                    down.append((task, size))
            left = len(runs) - len(ran)
            cells.append(f"{cell(best)} (lr {best['spec']['lr']:g}; collapsed at {collapsed} of {len(ran)} lrs"
                         + (f", {left} not yet run)" if left else ")"))
        d.add(f"| {name(task)} | " + " | ".join(cells) + " |")
    d.add("", "Acceptance with each size's lr chosen on the grid: no size collapses at the lr chosen for it: "
          + verdict(False if down else None if waiting else True)
          + (f" (collapsed: {', '.join(map(label, down))})" if down else "")
          + (f"; {waiting} cell(s) wait for runs" if waiting else "") + ".", "")


def large_elsewhere(d: Doc) -> None:
    """Figure 3's and SQuAD's sizes above 64 at their lr and at lr x 64 / m (the rest of a min(1, 64 / m) rule)."""
    d.add("Outside Table 1, the sizes above 64 at their experiment's lr (Figure 3, SQuAD; recipe 2) and at lr x 64 / m "
          "(size-lr), what lr x min(1, 64 / m) would change there:", "",
          "| task | size | at lr | at lr x 64 / m | change |", "|---|---|---|---|---|")
    for scaled in rerun.large_elsewhere_specs(d.R):
        plain = {k: v for k, v in scaled.items() if k != "lr_reference_size"}
        (at_lr,) = d.R.need([plain])
        (slowed,) = d.need("size-lr", [scaled])
        m = scaled["adapter_size"]
        d.add(f"| {name(scaled['task'])} | {m} | {cell(at_lr)} (lr {scaled['lr']:g}) | "
              f"{cell(slowed)} (lr {scaled['lr'] * 64 / m:g}) | {signed(gap(slowed, at_lr))} |")
    d.add("")


def small_epochs(d: Doc, at_64s_lr: dict, down_large: list, missing: int) -> None:
    """The sizes below 64 (size 64's lr under lr x min(1, 64 / m)) with epochs chosen from {3, long} as Table 1's,
    and the min rule's verdict with that choice: best of two runs, so a size that holds at 3 epochs holds too."""
    B, E = d.B, d.B["rerun"]["long_epochs"]
    small = [s for s in B["sizes"] if s < 64]
    d.add(f"The sizes below 64 at size 64's lr (what lr x min(1, 64 / m) gives them), trained again for {E} epochs, "
          f"epochs then chosen on validation from {{{B['epochs']}, {E}}} as in Table 1 (size-lr's last stage).", "",
          "| task | " + " | ".join(f"m={s}, {B['epochs']} ep. | m={s}, {E} ep. | m={s}, epochs chosen" for s in small) + " |",
          "|---|" + "---|" * (3 * len(small)))
    still, waiting = [], 0
    for task in rerun.table1_tasks(B):
        base, cells = majority_score(d, task), []
        for s in small:  # rerun.small_long_specs, one size at a time
            short = rerun.short_choice(d.R, task, "adapter", s)
            (long,) = d.need("size-lr", [rerun.long_spec(d.R, short)]) if short is not None else (None,)
            chosen = None if long is None else run.best_of([short, long])
            if at_64s_lr.get((task, s)):  # collapsed at 3 epochs: the epoch choice decides
                if chosen is None:
                    waiting += 1
                elif is_collapse(chosen, base):
                    still.append((task, s))
            cells += [cell(short), cell(long),
                      cell(chosen) + (" (collapsed)" if chosen is not None and is_collapse(chosen, base) else "")]
        d.add(f"| {name(task)} | " + " | ".join(cells) + " |")
    down = still + down_large
    d.add("", f"Acceptance with lr x min(1, 64 / m) and epochs chosen from {{{B['epochs']}, {E}}}: no size collapses: "
          + verdict(False if down else None if missing or waiting else True)
          + (f" (collapsed: {', '.join(map(label, down))})" if down else "")
          + (f"; {waiting} collapsed {B['epochs']}-epoch cell(s) wait for their {E}-epoch run" if waiting else "") + ".", "")


def label(key: tuple[str, int]) -> str:
    return f"{name(key[0])} m={key[1]}"


def size_rows(d: Doc, sizes: list[int], records_of, lr_of, majority_column: bool = False) -> tuple[dict, int]:
    """A table row per Table-1 task: each size's score (``records_of(task)``: {size: record or None}) at its lr
    (``lr_of(record, size)``), marked when it collapsed. Returns {(task, size): collapsed} for the runs that ran,
    and how many have not."""
    out, missing = {}, 0
    for task in rerun.table1_tasks(d.B):
        base, records = majority_score(d, task), records_of(task)
        cells = []
        for s in sizes:
            r = records.get(s)
            if r is None:
                missing += 1
                cells.append(NOT_RUN)
                continue
            down = out[task, s] = is_collapse(r, base)
            cells.append(f"{cell(r)} (lr {lr_of(r, s):g}{', collapsed' if down else ''})")
        d.add(f"| {name(task)} | " + " | ".join(cells) + (f" | {fmt(base)} |" if majority_column else " |"))
    return out, missing


def is_collapse(r: dict | None, base: float | None) -> bool:
    """A run no better than predicting the majority class (STS-B: a near-constant prediction)."""
    if r is None or base is None or score(r) is None:
        return False
    margin = COLLAPSE_CORRELATION if r["result"].get("metric") == "pearson_spearman" else COLLAPSE_MARGIN
    return score(r) <= base + margin


def mpnet(d: Doc) -> None:
    B, tasks, E = d.B, d.B["rerun"]["mpnet_tasks"], d.B["rerun"]["long_epochs"]
    d.add("### MPNet-base", "",
          "all-mpnet-base-v2 (12 layers x 768, 110 M parameters): full FT and size-64 recipe-2 adapters. First at the "
          "lr Table 1 chose for MiniLM, 3 epochs (mpnet-r2):", "",
          "| task | MiniLM full FT | MiniLM adapters (64), recipe 2 | MPNet full FT | MPNet adapters (64), recipe 2 | "
          "MPNet adapters - full |", "|---|---|---|---|---|---|")
    specs = rerun.mpnet_r2_specs(d.R)
    recs = {(s["task"], s["method"]): r for s, r in zip(specs, d.need("mpnet-r2", specs))}
    for task in tasks:
        full, ada = recs.get((task, "full")), recs.get((task, "adapter"))
        d.add(f"| {name(task)} | {cell(rerun.short_choice(d.R, task, 'full'))} | "
              f"{cell(rerun.short_choice(d.R, task, 'adapter', 64))} | {cell(full)} | {cell(ada)} | {fmt(gap(ada, full))} |")
    runs = [r for r in d.need("mpnet-grid", rerun.mpnet_grid_specs(d.R) + rerun.mpnet_long_specs(d.R)) if r is not None]
    grid = B["task_grid"]
    d.add("", "MiniLM's lr need not suit MPNet, so MPNet also gets Table 1's own protocol (mpnet-grid): the lr chosen "
          "on validation per task and method over the same grid (full FT " + ", ".join(f"{x:g}" for x in grid["full"])
          + "; adapters " + ", ".join(f"{x:g}" for x in grid["adapter"]) + f"), {B['epochs']} epochs, then that lr's epochs chosen "
          f"from {{{B['epochs']}, {E}}}.", "",
          f"| task | full FT, lr chosen | adapters (64), lr chosen | adapters - full | full FT, lr and epochs chosen | "
          "adapters (64), lr and epochs chosen | adapters - full |", "|---|---|---|---|---|---|---|")
    cols: dict[str, list] = {k: [] for k in ("full", "adapter", "full_e", "adapter_e")}
    for task in tasks:
        row = [name(task)]
        for suffix, choose in (("", rerun.mpnet_choice), ("_e", rerun.mpnet_epoch_choice)):
            f, a = choose(d.R, task, "full"), choose(d.R, task, "adapter")
            cols["full" + suffix].append(f)
            cols["adapter" + suffix].append(a)
            row += [chosen(f), chosen(a), fmt(gap(a, f))]
        d.add("| " + " | ".join(row) + " |")
    means = {k: mean([score(r) for r in rs]) for k, rs in cols.items()}
    diff = {s: None if None in (means["adapter" + s], means["full" + s]) else means["adapter" + s] - means["full" + s]
            for s in ("", "_e")}
    d.add("| " + " | ".join(["**mean**"] + [f"**{fmt(x)}**" for x in (means["full"], means["adapter"], diff[""],
                                                                      means["full_e"], means["adapter_e"], diff["_e"])])
          + " |", "")
    gpu_runs = sum(on_gpu(r) for r in runs)
    pct = next((r["result"]["trainable_pct"] for r in cols["adapter"] if score(r) is not None), None)
    d.add(f"The adapters train {fmt(pct, 2)}% of MPNet per task. Where the runs ran: {gpu_runs} of the {len(runs)} "
          "MPNet runs cached so far on a GPU (CUDA, fp32; each result records its device, torch and transformers), "
          "the rest on this 2-core CPU machine. A GPU rounds differently from a CPU and training amplifies "
          "such differences, so a rerun on a CPU would not give these numbers to the digit (by how much is not "
          "measured).", "")
    filled = sum(f is not None and a is not None for f, a in zip(cols["full"], cols["adapter"]))
    d.add(f"Acceptance: MPNet rows filled for both methods: {verdict(filled == len(tasks))} ({filled} of {len(tasks)} "
          f"tasks, lr chosen per task and method; adapters - full FT {signed(diff[''])} on the mean at {B['epochs']} "
          f"epochs, {signed(diff['_e'])} with the epochs chosen too).", "")


def figure3(d: Doc) -> None:
    d.add("### Figure 3", "",
          "The Figure-3 runs with recipe-2 adapters; the other methods are the same runs in both columns. The "
          "Figure-3 plots above draw both recipes' adapters (recipe 2 dashed).", "")
    for task in d.B["fig3_tasks"]:
        old = run.fig3_specs(d.R, task)
        new = rerun.fig3_r2_specs(d.R, task)
        pairs = list(zip(old, d.R.need(old), d.need("figure3-r2", new)))
        d.add(f"{name(task)}:", "", "| method | trained % | recipe 1 | recipe 2 |", "|---|---|---|---|")
        for spec, r1, r2 in sorted(pairs, key=lambda p: (p[0]["method"] != "adapter", p[0].get("adapter_size", 0))):
            label = {"adapter": f"adapters m={spec.get('adapter_size')}", "top-k": f"top-{spec.get('top_layers')}",
                     "full": "full FT", "ln": "LN-only", "head": "head-only"}[spec["method"]]
            r = r2 or r1
            pct = f"{r['result']['trainable_pct']:.3f}%" if r and "error" not in r["result"] else ""
            d.add(f"| {label} | {pct} | {cell(r1)} | {cell(r2)} |")
            if spec["method"] == "adapter" and r2 is not None and "error" not in r2["result"]:  # its own plot line
                plot = d.plots.get(plot_name(d.budget, f"figure3-{task.replace('/', '-')}"))
                if plot:
                    plot[1][1].append(("adapter-r2", label, r2["result"]["trainable_params"],
                                       r2["result"]["trainable_pct"], score(r2)))
        d.add("")


def squad(d: Doc) -> None:
    specs = run.squad_specs(d.R)
    old, new = d.R.need(specs), d.need("squad-r2", rerun.squad_r2_specs(d.R))
    # recipe 2 before QA's span head had the head lr: only the sizes that ran then (no experiment trains more)
    adapters = [rerun.r2_span_head_at_lr(s) for s in specs if s["method"] == "adapter"]
    ran = [s for s, r in zip(adapters, d.R.need(adapters)) if r is not None]
    at_lr = {r["spec"]["adapter_size"]: r for r in d.need("squad-r2, span head at the adapters' lr", ran)}
    variants = run.recipe_squad_specs(d.R)
    d.add("### SQuAD", "", f"Recipe 2 trains QA's span head at {d.B['rerun']['head_lr']:g} like the other heads "
          "(QA's default since these runs); the column before it is recipe 2 with the span head at the adapters' lr, "
          "QA's default until then (only the sizes it reached). The last rows are the recipe experiment's size-64 "
          "variants (the head at its own lr; the adapters at a larger lr). F1 x 100.", "",
          "| method | trained % | F1, recipe 1 | F1, recipe 2, span head at the adapters' lr | F1, recipe 2 |",
          "|---|---|---|---|---|")
    full = next(r for s, r in zip(specs, old) if s["method"] == "full")
    default64 = None
    for spec, r1, r2 in zip(specs, old, new):
        label = f"adapters m={spec['adapter_size']}" if spec["method"] == "adapter" else "full FT"
        r = r2 or r1
        pct = f"{r['result']['trainable_pct']:.2f}%" if r and "error" not in r["result"] else ""
        if spec.get("adapter_size") == 64:
            default64 = r2
        adapter = spec["method"] == "adapter"
        r_lr = at_lr.get(spec.get("adapter_size"))
        before = (cell(r_lr) if r_lr else "—") if adapter else cell(r1)
        d.add(f"| {label} | {pct} | {cell(r1)} | {before} | {cell(r2 if adapter else r1)} |")
    others = []
    for v, r in zip(d.B.get("recipe_squad_variants", ()), d.need("recipe", variants)):
        others.append(f"{run.variant_label(v)} {signed(gap(r, full))}")
        d.add(f"| adapters m=64, {run.variant_label(v)} | | | | {cell(r)} |")
    g = gap(default64, full)
    d.add("", "Acceptance: size-64 adapters within 3 F1 of full FT: " + verdict(None if g is None else g >= -3)
          + ("" if g is None else f" ({fmt(score(default64))} vs {fmt(score(full))}, {g:+.1f})")
          + (f"; variants against full FT: {'; '.join(others)}" if others else "") + ".", "")

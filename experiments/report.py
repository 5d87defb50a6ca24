"""docs/results*.md (one page per budget) and docs/*.png from the cached JSON results (experiments/results), nothing else.

``build_doc(budget)`` is a pure function of the JSON files (no clock, no training): the test rebuilds the
doc from the committed JSON and checks it equals docs/results.md, so every number in the doc is one the
runner wrote. ``write_doc`` also redraws the plots.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import run

DOCS = run.ROOT / "docs"
#: Budgets with a results page, the main one first: docs/results.md, then docs/results-<budget>.md.
DOC_BUDGETS = ("standard", "quick")


def doc_path(budget: str) -> Path:
    return DOCS / ("results.md" if budget == DOC_BUDGETS[0] else f"results-{budget}.md")


def plot_name(budget: str, stem: str) -> str:
    return f"{stem}.png" if budget == DOC_BUDGETS[0] else f"{budget}-{stem}.png"


def notes_path(budget: str) -> Path:
    """Hand-written reading of a budget's results, appended to its page."""
    return run.HERE / f"notes-{budget}.md"

TASK_NAMES = {"glue/rte": "RTE", "glue/mrpc": "MRPC", "glue/stsb": "STS-B", "glue/cola": "CoLA",
              "glue/sst2": "SST-2", "20newsgroups": "20 Newsgroups", "r8": "Reuters R8", "sms_spam": "SMS spam",
              "trec": "TREC (6)", "rotten_tomatoes": "Rotten Tomatoes", "boolq": "BoolQ", "squad": "SQuAD v1.1"}
METRIC_NAMES = {"accuracy": "accuracy", "f1_accuracy": "F1", "mcc": "Matthews corr.",
                "pearson_spearman": "Pearson", "squad": "F1"}
PAPER_GLUE = {"full": 80.4, "adapter": 80.0, "adapter_pct": 3.6}
PAPER_17 = {"full": 73.7, "adapter": 73.3, "adapter_pct": 1.14}
PAPER_SQUAD = {"full": 90.7, "adapter": 90.4}


def score(record: dict | None) -> float | None:
    """A run's best validation main metric x 100 (None when missing or failed)."""
    if record is None or "error" in record["result"]:
        return None
    return 100.0 * record["result"]["best"]["main"]


def fmt(x: float | None, digits: int = 1) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def mean(xs: list[float | None]) -> float | None:
    return None if not xs or any(x is None for x in xs) else sum(xs) / len(xs)


def name(task: str) -> str:
    return TASK_NAMES.get(task, task)


class Doc:
    def __init__(self, budget: str):
        self.R = run.Runner(budget, dry=True, log=lambda *a: None)
        self.B = self.R.B
        self.budget = budget
        self.lines: list[str] = []
        self.status: dict[str, tuple[int, int]] = {}  # experiment -> (cached, expected)
        self.keys: dict[str, tuple[set, set]] = {}
        self.plots: dict[str, object] = {}
        self.seconds = 0.0
        self.counted: set[str] = set()
        self.speed: dict[str, list[float]] = {}  # method -> training examples/s of each run

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def need(self, exp: str, specs: list[dict]) -> list[dict | None]:
        records = self.R.need(specs)
        have, want = self.keys.setdefault(exp, (set(), set()))
        want.update(run.spec_key(s) for s in specs)
        have.update(r["key"] for r in records if r is not None)
        self.status[exp] = (len(have), len(want))
        for r in records:
            if r is not None and r["key"] not in self.counted:
                self.counted.add(r["key"])
                self.seconds += r["result"].get("wall_seconds", 0.0)
                if "error" not in r["result"]:
                    self.speed.setdefault(r["spec"]["method"], []).append(r["result"]["examples_per_second"])
        return records

    def derived(self, exp: str, label: str, spec: dict) -> dict | None:
        record = run.load_cached("derived", spec, label)
        have, want = self.keys.setdefault(exp, (set(), set()))
        want.add(label + run.spec_key(spec))
        if record is not None:
            have.add(label + run.spec_key(spec))
        self.status[exp] = (len(have), len(want))
        if record is not None and record["key"] + label not in self.counted:
            self.counted.add(record["key"] + label)
            self.seconds += record["result"].get("wall_seconds", 0.0)
        return record


# -------------------------------------------------------------------------------------------- sections
def header(d: Doc) -> None:
    B = d.B
    mt = "all" if B["max_train"] is None else f"{B['max_train']} (seeded subset)"
    if "max_train_other" in B:
        mt = (f"GLUE: {mt} (SST-2: a seeded {B.get('sst2_max_train', run.SST2_FULL_MAX_TRAIN)}); other tasks: a seeded "
              f"{B['max_train_other']} ({B.get('max_train_long', B['max_train_other'])} for the long texts of "
              f"{', '.join(name(t) for t in sorted(run.LONG_TASKS))})")
    mv = "all" if B["max_validation"] is None else f"at most {B['max_validation']} (seeded subset, fixed split seed)"
    d.add("# Reproducing Houlsby et al. 2019 with adapterkit (MiniLM-L6, CPU)", "",
          "Generated by `python experiments/run.py` from the JSON results in `experiments/results/` "
          "(do not edit by hand: `python experiments/run.py --doc-only` rebuilds it; a test checks the two agree).",
          "",
          "Paper: *Parameter-Efficient Transfer Learning for NLP* (arXiv 1902.00751), BERT-Large (24 layers, "
          "330 M parameters) on TPUs. Here: the bundled **all-MiniLM-L6-v2** (6 layers x 384, 22.7 M parameters), "
          "trained on a 2-core CPU. All scores are on the **dev/validation** set "
          "(GLUE test labels are hidden), and model selection (learning rate, adapter size) is done on the same "
          "dev set, for every method alike, so absolute numbers are optimistic; comparisons between methods are "
          "what matters.", "",
          f"## Budget: `{d.budget}`", "",
          "| setting | value |", "|---|---|",
          f"| train examples per task | {mt} |",
          f"| validation examples per task | {mv} |",
          f"| epochs | {B['epochs']} (best epoch kept, chosen on validation) |",
          f"| batch size | {B['batch_size']} |",
          f"| max sequence length | {B['len_single']} single sentences, {B['len_pair']} pairs and long texts |",
          "| learning rates, Table 1 | "
          + (f"the paper's grid {', '.join(f'{x:g}' for x in run.PAPER_LRS)} on "
             f"{', '.join(name(t) for t in B['grid_tasks'])} (full FT and size-64 adapters); on the other tasks "
             if B["grid_tasks"] else "")
          + f"full FT {' / '.join(f'{x:g}' for x in B['task_grid']['full'])} and adapters "
          f"{' / '.join(f'{x:g}' for x in B['task_grid']['adapter'])}"
          + ("" if B["grid_all_sizes"] else "; sizes 8 and 256 at the task's best size-64 lr")
          + "; best on validation |",
          f"| learning rates, other experiments | {B['lr_note']} |",
          f"| seed | {B['seed']} (one seed per configuration) |",
          "| optimiser | AdamW, 10% linear warm-up then linear decay, gradient clipping 1.0, no weight decay |",
          "| adapters | Houlsby placement (after attention and FFN in every layer), GELU, init std 1e-3, "
          "layer norms trained, new task head on MiniLM's frozen pooler (as adapter-bert"
          + ("; the section \"The head's own pooler\" trains a copy of it) |"
             if "pooler" in run.experiments_of(d.budget) else ") |"),
          f"| threads | {B['machine']} |", "")
    others = [b for b in DOC_BUDGETS if b != d.budget]
    d.add("Results at the other budget(s): " + ", ".join(f"[`{b}`]({doc_path(b).name})" for b in others) + ".", "")


def table1(d: Doc) -> None:
    B = d.B
    tasks = list(B["table1_tasks"]) + list(B["table1_late"])
    d.add("## Table 1 analog: GLUE dev", "",
          "Full fine-tuning vs adapters (size chosen from {8, 64, 256} on validation) vs adapters of size 64. "
          "Scores x 100: accuracy (RTE, SST-2), F1 (MRPC), Matthews correlation (CoLA), Pearson (STS-B).", "")
    rows, full_s, best_s, a64_s, pct_best, pct_64, extra_best, extra_64 = [], [], [], [], [], [], [], []
    gaps = []  # (task, adapters - full FT) where both ran
    flat = []  # tasks where neither method is 2 points above the majority class
    partial = set()  # tasks with a cell whose grid has not fully run
    base_params = None
    for task in tasks:
        specs = run.table1_specs(d.R, task)
        d.need("table1-sst2" if task in B["table1_late"] else "table1", specs)
        full = run.table1_choice(d.R, task, "full")
        best = run.table1_choice(d.R, task, "adapter")
        a64 = run.table1_choice(d.R, task, "adapter", 64)
        base = majority(d, task)
        if full is None and best is None:
            rows.append(f"| {name(task)} | not run | | | | {base} |")
            continue
        full_s.append(score(full)), best_s.append(score(best)), a64_s.append(score(a64))
        if score(full) is not None and score(best) is not None:
            gaps.append((name(task), score(best) - score(full)))
        brec = d.derived("baselines", f"baseline-{task.replace('/', '-')}", run.baseline_key(d.R, task))
        top = max((x for x in (score(full), score(best)) if x is not None), default=None)
        if brec is not None and top is not None and top < 100 * brec["result"]["main"] + 2:
            flat.append(name(task))
        for rec, pcts, extra in ((best, pct_best, extra_best), (a64, pct_64, extra_64)):
            if rec is not None:
                pcts.append(rec["result"]["trainable_pct"])
                extra.append(rec["result"]["trainable_params"])
                base_params = rec["result"]["total_params"]
        size = f" (m={best['spec']['adapter_size']}, lr {best['spec']['lr']:g})" if best else ""
        mark = {"full": "", "best": "", "a64": ""}
        for cell, method, sizes in (("full", "full", (64,)), ("best", "adapter", B["sizes"]), ("a64", "adapter", (64,))):
            grid = []
            for s_ in sizes:
                lrs = run.lrs_for(d.R, task, method, s_)
                if not lrs:
                    grid.append(None)
                grid += [run.train_spec(B, task, method, lr, size=s_) for lr in lrs]
            if any(g is None for g in grid) or any(r is None for r in d.R.need([g for g in grid if g])):
                mark[cell] = " †"
                partial.add(name(task))
        rows.append(f"| {name(task)} | {fmt(score(full))}{mark['full']} (lr {full['spec']['lr']:g}) | "
                    f"{fmt(score(best))}{mark['best']}{size} | "
                    f"{fmt(score(a64))}{mark['a64']} (lr {a64['spec']['lr']:g}) | "
                    f"{fmt(score(best) - score(full) if score(best) is not None and score(full) is not None else None)} | {base} |"
                    if full and a64 else f"| {name(task)} | {fmt(score(full))} | {fmt(score(best))} | {fmt(score(a64))} | | {base} |")
    d.add("| task | full FT | adapters (8-256) | adapters (64) | adapters - full | majority class |",
          "|---|---|---|---|---|---|", *rows)
    n = len(full_s)
    m_full, m_best, m_64 = mean(full_s), mean(best_s), mean(a64_s)
    if n:
        d.add(f"| **mean ({n} tasks)** | **{fmt(m_full)}** | **{fmt(m_best)}** | **{fmt(m_64)}** | "
              f"**{fmt(m_best - m_full if m_best is not None and m_full is not None else None)}** | |")
        if base_params:
            d.add(f"| total params for these {n} tasks (x base) | {n:.1f}x | "
                  f"{1 + sum(extra_best) / base_params:.2f}x | {1 + sum(extra_64) / base_params:.2f}x | | |",
                  f"| trained params per task (mean %) | 100% | {fmt(mean(pct_best), 2)}% | {fmt(mean(pct_64), 2)}% | | |")
    d.add(f"| *paper (BERT-Large, GLUE test, 9 tasks)* | *{PAPER_GLUE['full']}* | *{PAPER_GLUE['adapter']} "
          f"at {PAPER_GLUE['adapter_pct']}% trained/task* | | *-0.4* | |", "")
    if partial:
        d.add("† best among the grid points that have run so far; the rest of that cell's grid (learning rates "
              f"or adapter sizes) has not run yet (`python experiments/run.py --budget {d.budget} --only table1` "
              "runs it).", "")
    d.add(
          "*majority class*: the score of always predicting the train set's most frequent class (STS-B: a "
          "constant, Pearson counted as 0), i.e. what a model that learned nothing gets; MRPC's F1 of the "
          "positive class is high even then.", "")
    d.add("Trained parameters include the task head and the adapters' layer-norm copies; the base is MiniLM's "
          "22.7 M parameters (embeddings included). Adapters of size m add 2 x 6 x (2 x 384 m + 384 + m) "
          "parameters (two per layer, six layers): m = 8 is 0.35% of the base, m = 64 2.6%, m = 256 10.4%.", "")
    if n and m_full is not None and m_best is not None:
        gap = m_best - m_full
        within = abs(gap) <= 1.0 or gap > 0
        d.add(f"**Verdict (acceptance: adapters within 1 point of full FT with at most 4% trained):** adapters "
              f"{fmt(m_best)} vs full FT {fmt(m_full)} (difference {gap:+.1f}) with {fmt(mean(pct_best), 2)}% of the "
              f"parameters trained per task: " + ("**holds numerically**" if within and mean(pct_best) <= 4
                                                    else "**does not hold**")
              + (" (provisional: some grids are incomplete, †)" if partial else "")
              + (f", but {len(flat)} of the {n} tasks sit at the majority-class level for both methods, so at "
                 "this budget the means are not evidence for or against the paper's claim." if len(flat) * 2 >= n
                 else "."), "")
        if gaps:
            close = [t for t, g in gaps if g >= -2.0]
            d.add("Per task, adapters (8-256) minus full FT: " + ", ".join(f"{t} {g:+.1f}" for t, g in gaps)
                  + f": within 2 points (or above) on {len(close)} of {len(gaps)} tasks.", "")
        if flat:
            d.add(f"Caveat: on {', '.join(flat)} neither method scores 2 points above the majority class, so "
                  "those rows say little about adapters vs full fine-tuning at this budget (too few training "
                  "steps for the model to learn the task at all).", "")
    # the lr grids
    grid_rows = []
    columns = sorted(set(run.PAPER_LRS) | {lr for t in tasks for m in ("full", "adapter") for lr in run.lrs_for(d.R, t, m)})
    for task in tasks:
        for m in ("full", "adapter"):
            lrs = run.lrs_for(d.R, task, m)
            recs = dict(zip(lrs, d.R.need([run.train_spec(B, task, m, lr) for lr in lrs])))
            if not any(recs.values()):
                continue
            cells = []
            for lr in columns:
                r = recs.get(lr)
                cells.append("(not in grid)" if lr not in recs else "not run" if r is None
                             else "failed" if "error" in r["result"] else fmt(score(r)))
            grid_rows.append(f"| {name(task)} | {'full FT' if m == 'full' else 'adapters (64)'} | " + " | ".join(cells) + " |")
    if grid_rows:
        d.add("Learning-rate grids (size-64 adapters; the paper's grid is 3e-5 / 3e-4 / 3e-3):", "",
              "| task | method | " + " | ".join(f"lr {lr:g}" for lr in columns) + " |",
              "|---|---|" + "---|" * len(columns), *grid_rows, "")
    # per-size detail
    detail = []
    for task in tasks:
        cells = []
        for s in B["sizes"]:
            lrs = run.lrs_for(d.R, task, "adapter", s)
            best = run.best_of(d.R.need([run.train_spec(B, task, "adapter", lr, size=s) for lr in lrs]))
            cells.append(fmt(score(best)) + (f" ({best['result']['trainable_pct']:.2f}%)" if best else ""))
        if any(c != "—" for c in cells):
            detail.append(f"| {name(task)} | " + " | ".join(cells) + " |")
    if detail:
        d.add("Adapters by size (best lr; % of parameters trained):", "",
              "| task | " + " | ".join(f"m={s}" for s in B["sizes"]) + " |", "|---|" + "---|" * len(B["sizes"]),
              *detail, "")


def majority(d: Doc, task: str) -> str:
    rec = d.derived("baselines", f"baseline-{task.replace('/', '-')}", run.baseline_key(d.R, task))
    return fmt(100 * rec["result"]["main"]) if rec else "—"


def sequential(d: Doc) -> None:
    B = d.B
    tasks = B["seq_tasks"]
    d.add("## Sequential learning", "",
          f"Tasks in order: {' -> '.join(name(t) for t in tasks)}. Adapters: one frozen MiniLM receives the tasks' "
          "adapters (the Table-1 size-64 runs, best lr) one after another (each trained on the frozen base, then "
          "loaded into the same model); after each new adapter every earlier task is re-scored on its own "
          f"adapter. Full fine-tuning (lr {run.default_lr(d.R, 'full'):g} for every task): task k starts from the body "
          "left by task k-1 (new head), and every earlier task is re-scored with its own head on the new body.", "")
    full_specs = run.sequential_full_specs(d.R)
    adapter_specs = run.sequential_adapter_specs(d.R)
    d.need("sequential", full_specs + (adapter_specs or []))
    if adapter_specs is None:
        d.keys["sequential"][1].add("table1 runs")
        ad = None
    else:
        ad = d.derived("sequential", "sequential-adapters",
                       {"adapters": [run.spec_key(s) for s in adapter_specs], "tasks": list(tasks)})
    fu = d.derived("sequential", "sequential-full", {"full": [run.spec_key(s) for s in full_specs], "tasks": list(tasks)})
    if ad is None and fu is None:
        d.add("*Not run yet.*", "")
        return
    header_ = "| after training | " + " | ".join(name(t) for t in tasks) + " |"
    sep = "|---|" + "---|" * len(tasks)
    for title, rec in (("Adapters (one frozen model)", ad), ("Sequential full fine-tuning", fu)):
        if rec is None:
            d.add(f"{title}: not run yet.", "")
            continue
        res = rec["result"]
        d.add(f"{title} (scores x 100; the diagonal is the score right after training the task):", "", header_, sep)
        for stage in res["stages"]:
            cells = []
            for t in tasks:
                v = stage["scores"].get(t)
                cells.append("" if v is None else fmt(100 * v, 2))
            d.add(f"| {name(stage['added'])} | " + " | ".join(cells) + " |")
        d.add("")
        if "exactly_unchanged" in res:
            d.add(f"Every earlier task's score bit-for-bit unchanged after each new adapter: "
                  f"**{'yes' if res['exactly_unchanged'] else 'NO'}** (compared as floats with `==` against the "
                  f"score recorded at training time); base weights unchanged (SHA-256 of all base parameters): "
                  f"**{'yes' if res['base_fingerprint_unchanged'] else 'NO'}**.", "")
        else:
            drops = []
            for j, t in enumerate(tasks[:-1]):
                first = res["stages"][j]["scores"][t]
                last = res["stages"][-1]["scores"][t]
                drops.append(f"{name(t)} {100 * first:.1f} -> {100 * last:.1f} ({100 * (last - first):+.1f})")
            d.add("Forgetting under sequential full fine-tuning (right after training -> after the last task): "
                  + "; ".join(drops) + ".", "")


def figure3(d: Doc, plots: bool) -> None:
    B = d.B
    d.add("## Figure 3 analog: parameters vs performance", "",
          "Adapters of several sizes vs fine-tuning only the top k layers (the paper's \"variable fine-tuning\"), "
          "LN-only (layer norms + head), head-only, and full fine-tuning. x = trained parameters (log scale).", "")
    for task in B["fig3_tasks"]:
        specs = run.fig3_specs(d.R, task)
        records = d.need("figure3", specs)
        points = []
        for spec, rec in zip(specs, records):
            if rec is None or "error" in rec["result"]:
                continue
            m = spec["method"]
            label = {"adapter": f"adapter m={spec.get('adapter_size')}", "top-k": f"top-{spec.get('top_layers')}",
                     "full": "full FT", "ln": "LN-only", "head": "head-only"}[m]
            points.append((m, label, rec["result"]["trainable_params"], rec["result"]["trainable_pct"], score(rec)))
        if not points:
            d.add(f"{name(task)}: not run yet.", "")
            continue
        slug = task.replace("/", "-")
        png = plot_name(d.budget, f"figure3-{slug}")
        d.add(f"![parameters vs score on {name(task)}]({png})", "",
              f"{name(task)} ({METRIC_NAMES.get(records[0]['result']['metric'] if records[0] else '', '')} x 100, "
              f"dev):", "", "| method | trained params | % of base | score |", "|---|---|---|---|")
        for m, label, n, pct, s in sorted(points, key=lambda p: p[2]):
            d.add(f"| {label} | {n:,} | {pct:.3f}% | {fmt(s)} |")
        missing = len(specs) - len(points)
        d.add("" if not missing else f"\n({missing} configuration(s) not run yet.)", "")
        adapters = [(n, s) for m, _, n, _, s in points if m == "adapter"]
        topk = [(n, s) for m, _, n, _, s in points if m == "top-k"]
        if adapters and topk:
            verdict = []
            for n, s in topk:
                below = [sa for na, sa in adapters if na <= n]
                if below:
                    verdict.append(f"top-k with {n:,} params: {fmt(s)} vs best adapter with no more params: "
                                   f"{fmt(max(below))}")
            d.add("Adapters vs top-k at equal or smaller trained-parameter count: " + "; ".join(verdict) + ".", "")
        d.plots[png] = ("figure3", (name(task), points))


def larger(d: Doc) -> None:
    specs = run.larger_specs(d.R)
    recs = d.need("larger", specs)
    mt = specs[0]["max_train"]
    d.add(f"## A larger run: Rotten Tomatoes with {mt if mt else 'all'} training examples", "",
          "The quick budget's ~100 optimiser steps leave many runs at or near the majority class, so "
          f"one task was also trained with more data ({mt or 'all'} examples, 2 epochs, batch {specs[0]['batch_size']}; "
          "issue 3's acceptance setting uses 4000) at adapterkit's default learning rates, on the same validation "
          "rows.", "",
          "| method | lr | trained % | accuracy x 100 | train time |", "|---|---|---|---|---|")
    for spec, r in zip(specs, recs):
        label = {"adapter": "adapters (64)", "full": "full FT", "head": "head-only"}[spec["method"]]
        if r is None or "error" in r["result"]:
            d.add(f"| {label} | {spec['lr']:g} | | {'not run' if r is None else 'failed'} | |")
        else:
            res = r["result"]
            d.add(f"| {label} | {spec['lr']:g} | {res['trainable_pct']:.2f}% | {fmt(score(r))} | "
                  f"{res['train_seconds'] / 60:.0f} min |")
    d.add(f"| majority class | | | {majority(d, 'rotten_tomatoes')} | |", "")
    spec = {"task": "rotten_tomatoes", "max_train": d.B["max_train"], "max_validation": d.B["max_validation"],
            "max_length": d.B["len_single"], "seed": d.B["seed"], "probe": "logreg-lbfgs-l2=1e-2"}
    rec = d.derived("probe", "probe-rotten_tomatoes", spec)
    if rec is not None:
        p = rec["result"]
        d.add(f"Diagnostic: logistic-regression probes (L-BFGS, to convergence) on frozen MiniLM features of the "
              f"quick budget's {p['train']} Rotten Tomatoes train examples reach "
              f"{100 * p['pooler']['accuracy']:.1f}% on the {p['validation']} validation rows from the pooler output "
              f"(what the classification head reads), {100 * p['cls']['accuracy']:.1f}% from the CLS vector and "
              f"{100 * p['mean']['accuracy']:.1f}% from mean pooling (majority {majority(d, 'rotten_tomatoes')}%): "
              "the frozen features carry the signal, but the pooler output is small (std "
              f"{p['pooler']['feature_std']:.3f}, CLS {p['cls']['feature_std']:.2f}), which may be why a new head "
              "alone learns slowly in few steps.", "")


def table2(d: Doc) -> None:
    B = d.B
    d.add("## Table 2 analog: more text classification tasks", "",
          f"Full FT, variable FT (top-{B['table2_topk']} layers), adapters (size 64), head-only. Accuracy x 100 "
          "(SMS spam: spam-class F1 x 100).", "")
    cols = ("full", "top-k", "adapter", "head")
    rows, per = [], {c: [] for c in cols}
    pct = {c: [] for c in cols}
    for task in B["table2_tasks"]:
        records = d.need("table2", run.table2_specs(d.R, task))
        if all(r is None for r in records):
            rows.append(f"| {name(task)} | not run | | | | {majority(d, task)} |")
            continue
        for c, r in zip(cols, records):
            per[c].append(score(r))
            if r is not None and "error" not in r["result"]:
                pct[c].append(r["result"]["trainable_pct"])
        rows.append(f"| {name(task)} | " + " | ".join(fmt(score(r)) for r in records) + f" | {majority(d, task)} |")
    d.add(f"| task | full FT | top-{B['table2_topk']} | adapters (64) | head-only | majority class |",
          "|---|---|---|---|---|---|", *rows)
    if per["full"]:
        d.add(f"| **mean** | " + " | ".join(f"**{fmt(mean(per[c]))}**" for c in cols) + " | |",
              "| trained params per task (mean %) | " + " | ".join(
                  "—" if mean(pct[c]) is None else f"{fmt(mean(pct[c]), 3)}%" for c in cols) + " | |")
    d.add(f"| *paper (BERT-Base, 17 tasks)* | *{PAPER_17['full']}* | | *{PAPER_17['adapter']} at "
          f"{PAPER_17['adapter_pct']}%* | | |", "")


def ablation(d: Doc, plots: bool) -> None:
    B = d.B
    d.add("## Section 3.6 analog: ablation and robustness", "")
    spec = run.ablation_spec(d.R)
    d.need("ablation", [spec])
    rec = d.derived("ablation", "ablation-spans", {"adapter": run.spec_key(spec)})
    if rec is None:
        d.add("Span ablation: not run yet.", "")
    else:
        res = rec["result"]
        L = res["layers"]
        d.add(f"**Removing trained adapters** ({name(res['task'])}, size 64; {res['method']}). Cell (i, j) = "
              f"score x 100 with the adapters of layers i..j removed (trained model: "
              f"{100 * res['trained']:.1f}; recorded at training time: {100 * res['recorded']:.1f}).", "",
              f"![ablation heatmap]({plot_name(d.budget, 'ablation-spans')})", "",
              "| first \\ last layer | " + " | ".join(str(j) for j in range(L)) + " |", "|---|" + "---|" * L)
        for i in range(L):
            cells = [fmt(100 * res["spans"][f"{i}-{j}"]) if j >= i else "" for j in range(L)]
            d.add(f"| {i} | " + " | ".join(cells) + " |")
        singles = {i: res["spans"][f"{i}-{i}"] for i in range(L)}
        worst = min(singles, key=singles.get)
        d.add("", f"Removing one layer's adapters costs at most {100 * (res['trained'] - singles[worst]):.1f} points "
              f"(layer {worst}); removing all of them: {100 * res['spans'][f'0-{L - 1}']:.1f} "
              f"({100 * (res['spans'][f'0-{L - 1}'] - res['trained']):+.1f}).", "")
        d.plots[plot_name(d.budget, "ablation-spans")] = ("ablation", res)
    specs = run.init_std_specs(d.R)
    recs = d.need("ablation", specs)
    d.add(f"**Initialisation scale.** Adapters (size 64, {name(spec['task'])}, {spec['max_train']} examples) with the "
          "init std of both projections varied (`--init-std`). The paper sweeps 1e-7 .. 1 and finds stds up to "
          "about 1e-2 equally good." + (" This budget's sweep stops at 1e-2." if max(B["init_stds"]) <= 1e-2 else ""),
          "", "| init std | " + " | ".join(f"{s:g}" for s in B["init_stds"]) + " |",
          "|---|" + "---|" * len(specs), "| score | " + " | ".join(fmt(score(r)) for r in recs) + " |", "")
    # size robustness: the figure-3 adapter sizes
    task = B["fig3_tasks"][0]
    sizes = B["fig3_sizes"]
    lr = run.default_lr(d.R, "adapter")
    recs = d.R.need([run.train_spec(B, task, "adapter", lr, size=s) for s in sizes])
    d.add(f"**Adapter size robustness** ({name(task)}, lr {lr:g}; the Figure-3 runs):", "",
          "| size | " + " | ".join(str(s) for s in sizes) + " |", "|---|" + "---|" * len(sizes),
          "| score | " + " | ".join(fmt(score(r)) for r in recs) + " |", "")


def squad(d: Doc) -> None:
    d.add("## SQuAD analog", "",
          "The SQuAD v1.1 train set is not available offline, so the 48 dev articles are split 80/20 by article "
          "(seeded; no paragraph on both sides): train on questions of the first part, evaluate on held-out "
          "articles. F1 x 100.", "")
    S = d.B["squad"]
    specs = run.squad_specs(d.R)
    recs = d.need("squad", specs)
    d.add(f"Budget: {S['max_train']} training questions, {S['max_validation']} evaluation questions, "
          f"{S['epochs']} epoch(s), max length {S['max_length']} (stride 128).", "",
          "| method | trained % | F1 | EM |", "|---|---|---|---|")
    for spec, r in zip(specs, recs):
        label = f"adapters m={spec['adapter_size']}" if spec["method"] == "adapter" else "full FT"
        if r is None:
            d.add(f"| {label} | | not run | |")
        elif "error" in r["result"]:
            d.add(f"| {label} | | failed | |")
        else:
            b = r["result"]["best"]
            d.add(f"| {label} | {r['result']['trainable_pct']:.2f}% | {fmt(100 * b['f1'])} | {fmt(100 * b['exact_match'])} |")
    d.add(f"| *paper (BERT-Large, full train set)* | | *adapters {PAPER_SQUAD['adapter']} vs full {PAPER_SQUAD['full']}* | |", "")


def levers(d: Doc) -> None:
    """Issue 6's speed levers measured for accuracy: upper-layer (AdapterDrop-style) adapters and bf16."""
    specs = run.levers_specs(d.R)
    recs = d.need("levers", specs)
    task = specs[0]["task"]
    d.add("## Speed levers: upper-layer adapters and bf16 autocast", "",
          f"{name(task)}, size-64 adapters, lr {specs[0]['lr']:g}, {specs[0]['max_train']} train examples x "
          f"{specs[0]['epochs']} epochs (the Table-2 run is the first row). *Upper layers*: adapters (and their "
          "layer-norm copies) only in the listed layers, so backpropagation stops below the lowest one "
          "(AdapterDrop, Rücklé et al. 2021, drops the lower ones). *bf16*: `torch.autocast` in training only; "
          "weights, optimiser and evaluation stay fp32. Per-step speed ratios, measured side by side, are in "
          "[benchmarks.md](benchmarks.md); the examples/s here come from runs made two at a time and are "
          "indicative only.", "",
          "| adapters in layers | bf16 | trained % | accuracy x 100 | vs all layers, fp32 | train examples/s |",
          "|---|---|---|---|---|---|")
    reference = score(recs[0])
    for spec, r in zip(specs, recs):
        layers = ", ".join(str(i) for i in spec.get("adapter_layers", [])) or "all (0-5)"
        bf16 = "yes" if spec.get("bf16") else "no"
        if r is None or "error" in r["result"]:
            d.add(f"| {layers} | {bf16} | | {'not run' if r is None else 'failed'} | | |")
            continue
        res = r["result"]
        delta = fmt(score(r) - reference) if reference is not None else "—"
        d.add(f"| {layers} | {bf16} | {res['trainable_pct']:.2f}% | {fmt(score(r))} | {delta} | "
              f"{res['examples_per_second']:.1f} |")
    d.add("")


def pooler(d: Doc) -> None:
    """Table 1's adapters with the head's own trained pooler copy (``train_pooler``) vs frozen (Table 1)."""
    stats = d.derived("pooler", "pooler-minilm", run.POOLER_STATS_SPEC)
    d.add("## The head's own pooler", "",
          "BERT's classification head reads the pooler: a dense layer and tanh on the [CLS] vector, pretrained on "
          "next-sentence prediction in BERT and kept frozen by adapter-bert. all-MiniLM-L6-v2 was trained by "
          "sentence-transformers with mean pooling, so its pooler never trained"
          + (f": bias all zero (max |b| = {stats['result']['bias_max_abs']:g}), weight std "
             f"{stats['result']['weight_std']:.4f} (the layers' weights: {stats['result']['query_weight_std']:.3f}), "
             f"top singular value {stats['result']['top_singular']:.3f} where a random Gaussian matrix of that std "
             f"has {stats['result']['random_top_singular']:.3f}" if stats else "")
          + ". With it frozen (Table 1, adapterkit's default), every adapter's head reads a fixed random "
          "projection of [CLS]. `HeadConfig(train_pooler=True)` (`--train-pooler`) gives each head its own "
          "trainable copy instead, for d² + d = 0.65% more of MiniLM's parameters. The same protocol as Table 1 "
          "(lr grid at size 64, sizes 8 and 256 at the best lr), with that option:", "",
          "| task | full FT | adapters, frozen pooler (Table 1) | adapters, own pooler (8-256) | own pooler (64) | "
          "own pooler - full |", "|---|---|---|---|---|---|")
    cols = {"full": [], "frozen": [], "own": [], "own64": [], "pct": []}
    close = []
    for task in d.B["table1_tasks"]:
        d.need("pooler", run.adapter_grid(d.R, task, train_pooler=True))
        full, frozen = run.table1_choice(d.R, task, "full"), run.table1_choice(d.R, task, "adapter")
        own = run.table1_choice(d.R, task, "adapter", train_pooler=True)
        own64 = run.table1_choice(d.R, task, "adapter", 64, train_pooler=True)
        gap = score(own) - score(full) if score(own) is not None and score(full) is not None else None
        for k, r in (("full", full), ("frozen", frozen), ("own", own), ("own64", own64)):
            cols[k].append(score(r))
        if own is not None:
            cols["pct"].append(own["result"]["trainable_pct"])
        if gap is not None and gap >= -2.0:
            close.append(name(task))
        chosen = f" (m={own['spec']['adapter_size']}, lr {own['spec']['lr']:g})" if own else ""
        d.add(f"| {name(task)} | {fmt(score(full))} | {fmt(score(frozen))} | {fmt(score(own))}{chosen} | "
              f"{fmt(score(own64))} | {fmt(gap)} |")
    means = {k: mean(v) for k, v in cols.items()}
    n = len(cols["full"])
    d.add(f"| **mean ({n} tasks)** | **{fmt(means['full'])}** | **{fmt(means['frozen'])}** | **{fmt(means['own'])}** | "
          f"**{fmt(means['own64'])}** | **{fmt(means['own'] - means['full'] if None not in (means['own'], means['full']) else None)}** |",
          f"| trained params per task (mean %) | 100% | | {fmt(means['pct'], 2)}% | | |", "")
    done, want = d.status.get("pooler", (0, 0))
    if done < want:
        d.add(f"Provisional: {done} of {want} runs of this grid have run; cells show the best so far "
              f"(`python experiments/run.py --budget {d.budget} --only pooler` continues it).", "")
    if means["own"] is not None:
        d.add(f"With its own pooler, adapters are within 2 points of full fine-tuning (or above) on {len(close)} of "
              f"{n} tasks ({', '.join(close) or 'none'}).", "")


def seeds(d: Doc) -> None:
    """The weakest task's two chosen configurations at more seeds."""
    task = d.B["seeds_task"]
    chosen = {"full FT": run.table1_choice(d.R, task, "full"),
              "adapters (Table 1)": run.table1_choice(d.R, task, "adapter"),
              "adapters, own pooler": run.table1_choice(d.R, task, "adapter", train_pooler=True)}
    specs = run.seeds_specs(d.R)
    recs = dict(zip((run.spec_key(s) for s in specs), d.need("seeds", specs)))
    seeds = [d.B["seed"], *d.B["extra_seeds"]]
    d.add(f"### Seeds: {name(task)}", "",
          f"The configurations chosen above (seed {d.B['seed']}) trained again with other seeds (the seed sets the "
          "new head's init, the data order and dropout): how much of the gap is the seed?", "",
          "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | spread (max - min) |",
          "|---|" + "---|" * (len(seeds) + 2))
    means = {}
    for label, rec in chosen.items():
        if rec is None:
            continue
        runs = [rec] + [recs.get(run.spec_key({**rec["spec"], "seed": s})) for s in d.B["extra_seeds"]]
        xs = [score(r) for r in runs]
        done = [x for x in xs if x is not None]
        means[label] = mean(done) if len(done) == len(xs) else None
        size = f"m={rec['spec']['adapter_size']}, " if "adapter_size" in rec["spec"] else ""
        d.add(f"| {label}, {size}lr {rec['spec']['lr']:g} | "
              + " | ".join(fmt(x) if x is not None else "not run" for x in xs)
              + f" | {fmt(means[label])} | {fmt(max(done) - min(done)) if len(done) > 1 else '—'} |")
    if None not in means.values() and len(means) == len(chosen):
        d.add("", f"Mean over {len(seeds)} seeds, minus full FT: adapters {means['adapters (Table 1)'] - means['full FT']:+.1f}, "
              f"adapters with their own pooler {means['adapters, own pooler'] - means['full FT']:+.1f}.")
    d.add("")


def longer(d: Doc) -> None:
    """Table 1's weakest adapter task with more epochs."""
    specs = run.longer_specs(d.R)
    recs = d.need("longer", specs)
    task = specs[0]["task"]
    full = run.table1_choice(d.R, task, "full")
    d.add(f"## Longer training: {name(task)} for {specs[0]['epochs']} epochs", "",
          f"Table 1 trains {d.B['epochs']} epochs. The paper's grid has 3 and 20; here the adapters of Table 1's "
          f"weakest task are trained for {specs[0]['epochs']} epochs (lr {specs[0]['lr']:g}, warm-up and decay "
          "stretched over the longer run), to see whether their gap to full fine-tuning closes with more steps. Scores x 100 "
          "after each epoch:", "",
          "| adapters | trained % | per epoch | best |", "|---|---|---|---|")
    for spec, r in zip(specs, recs):
        label = f"m={spec['adapter_size']}, lr {spec['lr']:g}"
        if r is None or "error" in r["result"]:
            d.add(f"| {label} | | {'not run' if r is None else 'failed'} | |")
            continue
        res = r["result"]
        curve = " ".join(fmt(100 * e["main"]) for e in res["epochs"])
        d.add(f"| {label} | {res['trainable_pct']:.2f}% | {curve} | **{fmt(score(r))}** (epoch {res['best']['epoch']}) |")
    if full is not None:
        d.add(f"| full FT, Table 1 ({full['spec']['epochs']} epochs, lr {full['spec']['lr']:g}) | 100% | "
              + " ".join(fmt(100 * e["main"]) for e in full["result"]["epochs"]) + f" | **{fmt(score(full))}** |")
    d.add("")


def status(d: Doc) -> None:
    d.add("## What ran", "", "| experiment | results cached / expected |", "|---|---|")
    for exp in run.experiments_of(d.budget):
        done, total = d.status.get(exp, (0, 0))
        if not total:
            state = "not started (its runs depend on the Table-1 lr grid)"
        elif done == total:
            state = f"{done} / {total}, complete"
        else:
            state = (f"{done} / {total}, incomplete: `python experiments/run.py --budget {d.budget} --only {exp}` "
                     "continues it")
        d.add(f"| {exp} | {state} |")
    d.add("", f"Compute recorded in these results: {d.seconds / 60:.0f} min of wall time (sum over runs; runs "
          "shared between experiments counted once).", "")
    if d.speed:
        cells = []
        for m, xs in sorted(d.speed.items()):
            xs = sorted(xs)
            cells.append(f"{m} {xs[len(xs) // 2]:.1f}")
        d.add(f"Training speed, median examples/s per run ({d.B['machine']}): " + ", ".join(cells) + ".", "")


def build(budget: str = DOC_BUDGETS[0]) -> Doc:
    """Every section of a budget's page, from the cached JSON (the Doc also knows which results it used)."""
    d = Doc(budget)
    header(d)
    table1(d)
    sequential(d)
    if "larger" in run.experiments_of(budget):
        larger(d)
    figure3(d, True)
    table2(d)
    ablation(d, True)
    squad(d)
    if "pooler" in run.experiments_of(budget):
        pooler(d)
    if "seeds" in run.experiments_of(budget):
        seeds(d)
    if "longer" in run.experiments_of(budget):
        longer(d)
    if "levers" in run.experiments_of(budget):
        levers(d)
    status(d)
    if notes_path(budget).is_file():
        d.add(notes_path(budget).read_text().rstrip(), "")
    return d


def build_doc(budget: str = DOC_BUDGETS[0]) -> tuple[str, dict]:
    d = build(budget)
    return "\n".join(d.lines).rstrip() + "\n", d.plots


# ------------------------------------------------------------------------------------------------ plots
def draw(plots: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for png, (kind, data) in plots.items():
        if kind == "figure3":
            title, points = data
            fig, ax = plt.subplots(figsize=(6, 4))
            styles = {"adapter": ("o-", "adapters (m = 1..256)"), "top-k": ("s-", "top-k fine-tuning"),
                      "full": ("*", "full FT"), "ln": ("^", "LN-only"), "head": ("v", "head-only")}
            for m, (style, label) in styles.items():
                pts = sorted((n, s) for mm, _, n, _, s in points if mm == m and s is not None)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label, markersize=8)
            for m, lab, n, _, s in points:
                if m == "adapter":
                    ax.annotate(lab.split("=")[1], (n, s), textcoords="offset points", xytext=(4, -10), fontsize=7)
            ax.set_xscale("log")
            ax.set_xlabel("trained parameters (log scale)")
            ax.set_ylabel("dev score x 100")
            ax.set_title(f"{title}: parameters vs performance (MiniLM-L6)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        else:
            res = data
            L = res["layers"]
            import numpy as np

            grid = np.full((L, L), np.nan)
            for i in range(L):
                for j in range(i, L):
                    grid[i, j] = 100 * (res["spans"][f"{i}-{j}"] - res["trained"])
            fig, ax = plt.subplots(figsize=(5, 4))
            im = ax.imshow(grid, cmap="viridis")
            for i in range(L):
                for j in range(i, L):
                    ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=7, color="w")
            ax.set_xlabel("last layer with adapters removed")
            ax.set_ylabel("first layer with adapters removed")
            ax.set_title(f"{name(res['task'])}: change in score (x100)\nwhen adapters of layers i..j are removed")
            fig.colorbar(im)
        fig.tight_layout()
        fig.savefig(DOCS / png, dpi=110)
        plt.close(fig)


def write_doc(budget: str = DOC_BUDGETS[0], plots: bool = True) -> str:
    text, figures = build_doc(budget)
    DOCS.mkdir(exist_ok=True)
    doc = doc_path(budget)
    tmp = doc.with_name(f".{doc.name}.tmp")
    tmp.write_text(text)
    tmp.replace(doc)
    if plots:
        draw(figures)
    return text

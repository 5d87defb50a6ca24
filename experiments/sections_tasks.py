"""Results-page sections beyond GLUE: Figure 3 (parameters vs score), the larger run, Table 2, the
ablations, SQuAD, the speed levers, and what ran."""

from __future__ import annotations

import run
from doc import METRIC_NAMES, PAPER_17, PAPER_SQUAD, Doc, fmt, majority, mean, name, plot_name, score
from runner import spec_key


def figure3(d: Doc) -> None:
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
        d.add("| **mean** | " + " | ".join(f"**{fmt(mean(per[c]))}**" for c in cols) + " | |",
              "| trained params per task (mean %) | " + " | ".join(
                  "—" if mean(pct[c]) is None else f"{fmt(mean(pct[c]), 3)}%" for c in cols) + " | |")
    d.add(f"| *paper (BERT-Base, 17 tasks)* | *{PAPER_17['full']}* | | *{PAPER_17['adapter']} at "
          f"{PAPER_17['adapter_pct']}%* | | |", "")


def ablation(d: Doc) -> None:
    B = d.B
    d.add("## Section 3.6 analog: ablation and robustness", "")
    spec = run.ablation_spec(d.R)
    d.need("ablation", [spec])
    rec = d.derived("ablation", "ablation-spans", {"adapter": spec_key(spec)})
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
    recipe2 = run.recipe_squad_specs(d.R)  # issue 12's recipe (listed with the recipe experiment)
    specs, recs = specs + recipe2, recs + d.need("recipe", recipe2)
    d.add(f"Budget: {S['max_train']} training questions, {S['max_validation']} evaluation questions, "
          f"{S['epochs']} epoch(s), max length {S['max_length']} (windows overlapping by {S['doc_stride']} tokens).", "",
          "| method | trained % | F1 | EM |", "|---|---|---|---|")
    variants = [None] * (len(specs) - len(recipe2)) + list(d.B.get("recipe_squad_variants", ()))
    for spec, r, variant in zip(specs, recs, variants):
        label = f"adapters m={spec['adapter_size']}" if spec["method"] == "adapter" else "full FT"
        if variant is not None:
            label += f", recipe {spec['recipe']}, {run.variant_label(variant)}"
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
    gpu = f", and {d.gpu_seconds / 60:.0f} min on a GPU, not in the speeds below" if d.gpu_seconds else ""
    d.add("", "Compute recorded in these results (sum over runs; runs shared between experiments counted once): "
          f"{d.seconds / 60:.0f} min of wall time on this budget's machine{gpu}.", "")
    if d.speed:
        cells = []
        for m, xs in sorted(d.speed.items()):
            xs = sorted(xs)
            cells.append(f"{m} {xs[len(xs) // 2]:.1f}")
        d.add(f"Training speed, median examples/s per run ({d.B['machine']}): " + ", ".join(cells) + ".", "")

"""Results-page section of issue 12's recipe search: the adapters' default recipe against head-only and full
fine-tuning on the tasks where it fell behind a linear probe, and the candidate default across tasks."""

from __future__ import annotations

import run
from doc import Doc, fmt, mean, name, score


def _variant(v: dict) -> str:
    words = {"head_lr": "head lr {:g}", "probe_epochs": "LP-FT ({} probe epoch)", "train_embedding_norm": "embedding norm",
             "init_std": "init std {:g}", "site": "adapter {}"}
    return "".join(", " + words[k].format(str(x).replace("_", " ") if k == "site" else x) for k, x in v.items())


def recipe(d: Doc) -> None:
    B = d.B
    records = dict(zip((run.spec_key(s) for s in run.recipe_specs(d.R)), d.need("recipe", run.recipe_specs(d.R))))
    ours = lambda task, variant: records[run.spec_key(run.recipe_spec(d.R, task, variant))]
    d.add("## The default recipe (issue 12)", "",
          "Where the first recipe left size-64 adapters below head-only (R8, 20 Newsgroups at Table 2's budget: "
          f"{B['max_train_long']} long texts, 3 epochs, 190 steps). Recipe 1: the adapter on the output projection, "
          "before the sublayer's dropout, exact GELU, one lr (1e-3) for adapters and the new head. Recipe 2: the "
          "adapter after the dropout (`--site after_dropout`, adapter-bert's and AdapterHub's order), the tanh GELU; "
          "each variant then changes one or two things (the head at its own lr, `--head-lr`; ...). Full FT, head-only and recipe 1 are Table 2's runs. "
          "Accuracy x 100.", "")
    variants = B["recipe_variants"]
    cols = ["full FT", "head-only", "recipe 1"] + ["recipe 2" + _variant(v) for v in variants]
    d.add("| task | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|")
    for task in B["recipe_tasks"]:
        full, _, adapter, head = d.need("table2", run.table2_specs(d.R, task))
        cells = [full, head, adapter] + [ours(task, v) for v in variants]
        d.add(f"| {name(task)} | " + " | ".join(fmt(score(r)) for r in cells) + " |")
    check = B["recipe_check_variants"]
    lr = run.default_lr(d.R, "adapter")
    d.add("", f"Across tasks (a default must win everywhere, not on two tasks): size 64. Full FT and \"recipe 1, best "
          "lr\" are Table 1's choices on GLUE (best over their lr grids) and Table 2's runs elsewhere; \"recipe 1, "
          f"lr {lr:g}\" and every recipe-2 column train at lr {lr:g}, so those compare like for like. GLUE metrics as in "
          "Table 1; accuracy x 100 elsewhere (SMS spam: spam-class F1).", "",
          f"| task | full FT | recipe 1, best lr | recipe 1, lr {lr:g} | "
          + " | ".join("recipe 2" + _variant(v) for v in check) + " |",
          "|---" * (4 + len(check)) + "|")
    columns: list[list[float | None]] = [[] for _ in range(3 + len(check))]
    for task in B["recipe_check"]:
        if task.startswith("glue/"):
            full, adapter = run.table1_choice(d.R, task, "full"), run.table1_choice(d.R, task, "adapter", 64)
            (same_lr,) = d.need("table1", [run.train_spec(B, task, "adapter", lr, 64)])
        else:
            full, _, adapter, _ = d.need("table2", run.table2_specs(d.R, task))
            same_lr = adapter
        cells = (full, adapter, same_lr, *(ours(task, v) for v in check))
        for column, r in zip(columns, cells):
            column.append(score(r))
        d.add(f"| {name(task)} | " + " | ".join(fmt(score(r)) for r in cells) + " |")
    d.add("| **mean** | " + " | ".join(fmt(mean(c)) for c in columns) + " |")
    d.add("")

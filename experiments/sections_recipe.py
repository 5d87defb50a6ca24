"""Results-page section of issue 12's recipe search: the adapters' default recipe against head-only and full
fine-tuning on the tasks where it fell behind a linear probe."""

from __future__ import annotations

import run
from doc import Doc, fmt, name, score


def recipe(d: Doc) -> None:
    B = d.B
    d.add("## The default recipe (issue 12)", "",
          "Where the first recipe left size-64 adapters below head-only (R8, 20 Newsgroups at Table 2's budget: "
          f"{B['max_train_long']} long texts, 3 epochs, 190 steps). Recipe 1: the adapter on the output projection, "
          "before the sublayer's dropout, exact GELU, one lr (1e-3) for adapters and the new head. Recipe 2: the "
          "adapter after the dropout (adapter-bert's and AdapterHub's order), the tanh GELU; then the head at its "
          "own lr (`--head-lr`). Full FT, head-only and recipe 1 are Table 2's runs. Accuracy x 100.", "")
    cols = ["full FT", "head-only", "recipe 1"] + ["recipe 2" + _variant(v) for v in B["recipe_variants"]]
    rows = []
    specs = run.recipe_specs(d.R)
    records = dict(zip((run.spec_key(s) for s in specs), d.need("recipe", specs)))
    for task in B["recipe_tasks"]:
        full, _, adapter, head = d.need("table2", run.table2_specs(d.R, task))
        ours = [records[run.spec_key(s)] for s in specs if s["task"] == task]
        rows.append(f"| {name(task)} | " + " | ".join(fmt(score(r)) for r in [full, head, adapter, *ours]) + " |")
    d.add("| task | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|", *rows, "")


def _variant(v: dict) -> str:
    words = {"head_lr": "head lr {:g}", "probe_epochs": "LP-FT ({} probe epoch)", "train_embedding_norm": "embedding norm",
             "init_std": "init std {:g}"}
    parts = [words[k].format(x) for k, x in v.items()]
    return ", " + ", ".join(parts) if parts else ""

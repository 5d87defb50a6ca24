"""docs/results*.md (one page per budget) and docs/*.png from the cached JSON results (experiments/results), nothing else.

``build_doc(budget)`` is a pure function of the JSON files (no clock, no training): the test rebuilds the
doc from the committed JSON and checks it equals docs/results.md, so every number in the doc is one the
runner wrote. ``write_doc`` also redraws the plots. The sections are in sections_glue.py and sections_tasks.py.
"""

from __future__ import annotations

import os

import generation
import run
import sections_glue as glue
import sections_recipe
import sections_rerun
import sections_tasks as tasks
from doc import DOC_BUDGETS, DOCS, Doc, doc_path, name, notes_path  # noqa: F401  (the tests read these here)


def build(budget: str = DOC_BUDGETS[0]) -> Doc:
    """Every section of a budget's page, from the cached JSON (the Doc also knows which results it used)."""
    d = Doc(budget)
    runs = run.experiments_of(budget)
    glue.header(d)
    glue.table1(d)
    glue.sequential(d)
    if "larger" in runs:
        tasks.larger(d)
    tasks.figure3(d)
    tasks.table2(d)
    tasks.ablation(d)
    tasks.squad(d)
    for section, exp in ((glue.pooler, "pooler"), (glue.seeds, "seeds"), (glue.longer, "longer"), (tasks.levers, "levers"),
                         (glue.mpnet, "mpnet"), (sections_recipe.recipe, "recipe"), (sections_rerun.section, "table2-r2"), (glue.fusion, "fusion"),
                         (generation.section, "generation")):
        if exp in runs:  # only some budgets have these
            section(d)
    tasks.status(d)
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
            styles = {"adapter": ("o-", "adapters (m = 1..256), recipe 1"),
                      "adapter-r2": ("o--", "adapters (m = 1..256), default recipe (2)"), "top-k": ("s-", "top-k fine-tuning"),
                      "full": ("*", "full FT"), "ln": ("^", "LN-only"), "head": ("v", "head-only")}
            for i, (m, (style, label)) in enumerate(styles.items()):  # a method keeps its colour on every page
                pts = sorted((n, s) for mm, _, n, _, s in points if mm == m and s is not None)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label, markersize=8, color=f"C{i}")
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
    tmp = doc.with_name(f".{doc.name}.{os.getpid()}.tmp")  # two runner processes may write at once
    tmp.write_text(text)
    tmp.replace(doc)
    if plots:
        draw(figures)
    return text

"""The results page's building blocks: a Doc (the lines of one budget's page, and which cached results it
used), the paper's numbers, and score formatting. The sections live in sections_glue.py and sections_tasks.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import run
from runner import HERE, ROOT, Runner, load_cached, spec_key

DOCS = ROOT / "docs"
#: Budgets with a results page, the main one first: docs/results.md, then docs/results-<budget>.md.
DOC_BUDGETS = ("standard", "quick")


def doc_path(budget: str) -> Path:
    return DOCS / ("results.md" if budget == DOC_BUDGETS[0] else f"results-{budget}.md")


def plot_name(budget: str, stem: str) -> str:
    return f"{stem}.png" if budget == DOC_BUDGETS[0] else f"{budget}-{stem}.png"


def notes_path(budget: str) -> Path:
    """Hand-written reading of a budget's results, appended to its page."""
    return HERE / f"notes-{budget}.md"


TASK_NAMES = {"glue/rte": "RTE", "glue/mrpc": "MRPC", "glue/stsb": "STS-B", "glue/cola": "CoLA",
              "glue/sst2": "SST-2", "20newsgroups": "20 Newsgroups", "r8": "Reuters R8", "sms_spam": "SMS spam",
              "trec": "TREC (6)", "rotten_tomatoes": "Rotten Tomatoes", "boolq": "BoolQ", "squad": "SQuAD v1.1",
              "squad-gen": "squad-gen", "trec-gen": "trec-gen"}
METRIC_NAMES = {"accuracy": "accuracy", "f1_accuracy": "F1", "mcc": "Matthews corr.",
                "pearson_spearman": "Pearson", "squad": "F1", "label_accuracy": "accuracy"}
PAPER_GLUE = {"full": 80.4, "adapter": 80.0, "adapter_pct": 3.6}
PAPER_17 = {"full": 73.7, "adapter": 73.3, "adapter_pct": 1.14}
PAPER_SQUAD = {"full": 90.7, "adapter": 90.4}


def score(record: dict | None) -> float | None:
    """A run's best validation main metric x 100 (None when missing or failed)."""
    if record is None or "error" in record["result"]:
        return None
    return 100.0 * record["result"]["best"]["main"]


def on_gpu(record: dict) -> bool:
    """Trained on a GPU (the runner records the device since the MPNet runs; earlier runs are all CPU runs)."""
    return (record["result"].get("device") or "cpu").startswith("cuda")  # None: AdapterHub's side-venv runs


def fmt(x: float | None, digits: int = 1) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


#: A results-page cell for a run the runner has not reached.
NOT_RUN = "not yet run"


def verdict(ok: bool | None) -> str:
    return "**not yet measured**" if ok is None else "**met**" if ok else "**not met**"


def cell(r: dict | None) -> str:
    return NOT_RUN if r is None else "failed" if "error" in r["result"] else fmt(score(r))


def chosen(r: dict | None) -> str:
    """A chosen run's score with what was chosen: size (adapters), lr and epochs."""
    if r is None:
        return cell(r)
    size = f"m={r['spec']['adapter_size']}, " if "adapter_size" in r["spec"] else ""
    return f"{cell(r)} ({size}lr {r['spec']['lr']:g}, {r['spec']['epochs']} ep.)"


def signed(x: float | None) -> str:
    return NOT_RUN if x is None else f"{round(x, 1) + 0.0:+.1f}"  # + 0.0: no "-0.0"


def gap(a: dict | None, b: dict | None) -> float | None:
    return None if score(a) is None or score(b) is None else score(a) - score(b)


def mean(xs: list[float | None]) -> float | None:
    return None if not xs or any(x is None for x in xs) else sum(xs) / len(xs)


def name(task: str) -> str:
    return TASK_NAMES.get(task, task)


def within_two(gaps: list[tuple[str, float]]) -> list[str]:
    """The tasks whose adapters - full FT difference is -2 points or better (issue 3's per-task bar)."""
    return [task for task, gap in gaps if gap >= -2.0]



class Doc:
    def __init__(self, budget: str):
        self.R = Runner(budget, dry=True, log=lambda *a: None)
        self.B = self.R.B
        self.budget = budget
        self.lines: list[str] = []
        self.status: dict[str, tuple[int, int]] = {}  # experiment -> (cached, expected)
        self.keys: dict[str, tuple[set, set]] = {}
        self.plots: dict[str, object] = {}
        self.seconds = 0.0  # this budget's machine (the CPU); runs trained on a GPU are counted apart
        self.gpu_seconds = 0.0
        self.counted: set[str] = set()
        self.speed: dict[str, list[float]] = {}  # method -> training examples/s of each run

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def need(self, exp: str, specs: list[dict]) -> list[dict | None]:
        records = self.R.need(specs)
        have, want = self.keys.setdefault(exp, (set(), set()))
        want.update(spec_key(s) for s in specs)
        have.update(r["key"] for r in records if r is not None)
        self.status[exp] = (len(have), len(want))
        for r in records:
            if r is not None and r["key"] not in self.counted:
                self.counted.add(r["key"])
                if on_gpu(r):
                    self.gpu_seconds += r["result"].get("wall_seconds", 0.0)
                    continue
                self.seconds += r["result"].get("wall_seconds", 0.0)
                if "error" not in r["result"]:
                    self.speed.setdefault(r["spec"]["method"], []).append(r["result"]["examples_per_second"])
        return records

    def derived(self, exp: str, label: str, spec: dict) -> dict | None:
        record = load_cached("derived", spec, label)
        have, want = self.keys.setdefault(exp, (set(), set()))
        want.add(label + spec_key(spec))
        if record is not None:
            have.add(label + spec_key(spec))
        self.status[exp] = (len(have), len(want))
        if record is not None and record["key"] + label not in self.counted:
            self.counted.add(record["key"] + label)
            self.seconds += record["result"].get("wall_seconds", 0.0)
        return record


def majority(d: Doc, task: str) -> str:
    rec = d.derived("baselines", f"baseline-{task.replace('/', '-')}", run.baseline_key(d.R, task))
    return fmt(100 * rec["result"]["main"]) if rec else "—"

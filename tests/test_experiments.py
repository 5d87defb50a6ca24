"""The experiment runner's doc generator on the committed JSON results (fast: no training).

* each docs/results*.md (one page per budget) is exactly what experiments/report.py builds from
  experiments/results/*.json, so every number in the docs is one the runner wrote;
* spot checks: Table 1's cells equal the JSON's best main metric x 100;
* re-running the runner with everything cached trains nothing (training is patched to fail).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"

pytestmark = pytest.mark.skipif(not (EXPERIMENTS / "results").is_dir(), reason="no committed experiment results")


@pytest.fixture(scope="module")
def modules():
    sys.path.insert(0, str(EXPERIMENTS))
    import report
    import run

    yield run, report
    sys.path.remove(str(EXPERIMENTS))


def budgets(report) -> list[str]:
    """The budgets that have a committed results page."""
    found = [b for b in report.DOC_BUDGETS if report.doc_path(b).is_file()]
    assert found, "no docs/results*.md"
    return found


def test_doc_is_built_from_the_json(modules):
    run, report = modules
    for budget in budgets(report):
        text, _ = report.build_doc(budget)
        path = report.doc_path(budget)
        assert text == path.read_text(), f"{path.name} is stale: run `python experiments/run.py --doc-only`"
        assert f"## Budget: `{budget}`" in text


def test_every_result_json_is_well_formed(modules):
    run, _ = modules
    files = sorted((EXPERIMENTS / "results").rglob("*.json"))
    assert files
    for path in files:
        record = json.loads(path.read_text())
        assert record["key"] == run.spec_key(record["spec"]), path
        assert path.name == f"{record['label']}-{record['key']}.json", path
        if path.parent.name == "train" and "error" not in record["result"]:
            best = record["result"]["best"]
            assert best["main"] == best[{"accuracy": "accuracy", "f1_accuracy": "f1", "mcc": "mcc",
                                         "pearson_spearman": "pearson", "squad": "f1", "label_accuracy": "accuracy"}[record["result"]["metric"]]]


def test_table1_cells_match_the_json(modules):
    run, report = modules
    checked = 0
    for budget in budgets(report):
        R = run.Runner(budget, dry=True, log=lambda *a: None)
        text = report.doc_path(budget).read_text()
        for task in list(R.B["table1_tasks"]) + list(R.B["table1_late"]):
            full = run.table1_choice(R, task, "full")
            best = run.table1_choice(R, task, "adapter")
            if full is None or best is None:
                continue
            row = next(line for line in text.splitlines() if line.startswith(f"| {report.name(task)} |"))
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert cells[1].split()[0] == f"{100 * full['result']['best']['main']:.1f}"
            assert cells[2].split()[0] == f"{100 * best['result']['best']['main']:.1f}"
            checked += 1
    assert checked, "no Table 1 row to check"


def test_rerun_with_everything_cached_trains_nothing(modules, monkeypatch):
    run, report = modules

    def fail(*a, **k):
        raise AssertionError("a cached re-run must not train")

    import runner

    monkeypatch.setattr(runner, "_worker", fail)
    monkeypatch.setattr(runner, "_train_now", fail)
    monkeypatch.setattr(report, "write_doc", lambda *a, **k: "")
    ran = 0
    for budget in budgets(report):
        done = report.build(budget)
        complete = [exp for exp, (have, total) in done.status.items()
                    if have == total and total and exp in run.experiments_of(budget)]
        logs = []
        R = run.Runner(budget, log=logs.append)
        for exp in complete:
            run.EXPERIMENTS[exp](R)
            ran += 1
        assert R.trained == 0, logs
    assert ran, "no experiment is complete in the committed results"


def test_every_result_is_used_by_a_doc(modules):
    """No stray result files: each cached JSON is one that some budget's page asks for."""
    run, report = modules
    wanted = set()
    for budget in budgets(report):
        wanted |= set().union(*(want for _, want in report.build(budget).keys.values()))
    for path in sorted((EXPERIMENTS / "results").rglob("*.json")):
        record = json.loads(path.read_text())
        key = record["key"] if path.parent.name == "train" else record["label"] + record["key"]
        assert key in wanted, f"{path.relative_to(ROOT)} is not used by any docs/results*.md (remove it)"


def test_a_failed_run_is_kept_unless_retry_failed_asks_for_another_try(modules, tmp_path, monkeypatch):
    import runner

    monkeypatch.setattr(runner, "RESULTS", tmp_path / "results")
    spec = runner.train_spec(runner.BUDGETS["standard"], "rte", "adapter", 1e-3)
    runner.store("train", spec, runner.label_of(spec), {"error": "ModelError: the cache was half written"})
    trained = []

    def worker(s, threads):
        trained.append(s)
        return {"metric": "accuracy", "best": {"main": 0.6, "accuracy": 0.6}, "trainable_pct": 3.0,
                "wall_seconds": 1.0, "examples_per_second": 1.0}

    monkeypatch.setattr(runner, "_worker", worker)
    kept = runner.Runner("standard", log=lambda *a: None).need([spec])
    assert trained == [] and "error" in kept[0]["result"]  # a diverging grid point would fail again: a result
    assert runner.Runner("standard", log=lambda *a: None, retry_failed=True, dry=True).need([spec])[0] == kept[0]
    again = runner.Runner("standard", log=lambda *a: None, retry_failed=True).need([spec])
    assert trained == [spec] and again[0]["result"]["best"]["main"] == 0.6
    assert runner.load_cached("train", spec, runner.label_of(spec)) == again[0]  # the failure is replaced


def test_the_runs_a_fusion_reads_are_rebuilt_first_when_their_weights_are_missing(modules, tmp_path, monkeypatch):
    """On a fresh checkout the JSON of a fusion's adapters is there but their weights are not: they train
    again before the fusion (all at once under --jobs), instead of each fusion worker waiting on them in turn."""
    import runner

    monkeypatch.setattr(runner, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(runner, "RUNS", tmp_path / "runs")
    B = runner.BUDGETS["standard"]
    sources = [runner.train_spec(B, t, "adapter", 1e-3) for t in ("glue/rte", "glue/stsb")]
    runner.RUNS.mkdir()
    (runner.run_dir(sources[1])).mkdir()
    (runner.run_dir(sources[1]) / "metrics.json").write_text("{}")  # this one's weights are here
    fusions = [runner.train_spec(B, "glue/mrpc", "fusion", lr, fuse_from=sources) for lr in (1e-4, 1e-3)]
    order = []

    def worker(s, threads):
        order.append(runner.label_of(s))
        return {"metric": "accuracy", "best": {"main": 0.8, "accuracy": 0.8}, "trainable_pct": 20.0,
                "wall_seconds": 1.0, "examples_per_second": 1.0}

    monkeypatch.setattr(runner, "_worker", worker)
    runner.Runner("standard", log=lambda *a: None).need(fusions)
    assert order == [runner.label_of(sources[0])] + [runner.label_of(f) for f in fusions]
    assert runner.load_cached("train", sources[0], runner.label_of(sources[0])) is None  # weights only, no result


def test_a_collapse_is_a_score_at_the_majority_class_or_a_near_zero_correlation(modules):
    import sections_rerun as s

    def rec(main, metric="accuracy"):
        return {"result": {"metric": metric, "best": {"main": main}}}

    assert s.is_collapse(rec(0.527), 52.7) and s.is_collapse(rec(0.5369), 52.7)   # at, or within 1 point of, majority
    assert not s.is_collapse(rec(0.545), 52.7)
    assert s.is_collapse(rec(0.04, "pearson_spearman"), 0.0)                       # STS-B's near-constant prediction
    assert not s.is_collapse(rec(0.12, "pearson_spearman"), 0.0)
    assert not s.is_collapse(None, 52.7) and not s.is_collapse(rec(0.5), None)     # nothing to judge
    assert not s.is_collapse({"result": {"error": "diverged"}}, 52.7)

"""Issue 12's rerun experiments (experiments/rerun.py): recipe-2 specs are the earlier ones with only the adapter
runs changed, identical specs reuse the cached runs, the runner trains a recipe-2 spec with the new defaults and
a recipe-1 spec with the old ones, and AdapterHub's default trains through the runner in the side venv (slow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"


@pytest.fixture(scope="module")
def mods():
    sys.path.insert(0, str(EXPERIMENTS))
    import budgets
    import rerun
    import run
    import runner

    yield run, rerun, runner, budgets
    sys.path.remove(str(EXPERIMENTS))


def test_recipe_2_changes_only_the_adapter_runs(mods):
    run, rerun, runner, budgets = mods
    B = budgets.BUDGETS["standard"]
    full = runner.train_spec(B, "r8", "full", 1e-4)
    adapter = runner.train_spec(B, "r8", "adapter", 1e-3, size=64)
    assert rerun.r2(B, full) is full
    assert rerun.r2(B, adapter) == {**adapter, "recipe": 2, "head_lr": 3e-2}
    squad = next(s for s in run.squad_specs(run.Runner("standard", dry=True, log=lambda *a: None))
                 if s["method"] == "adapter")
    assert rerun.r2(B, squad) == {**squad, "recipe": 2, "head_lr": 3e-2}  # QA's span head too, since the SQuAD runs
    assert rerun.r2_span_head_at_lr(squad) == {**squad, "recipe": 2}  # QA's default before them
    assert runner.label_of(rerun.r2(B, adapter)) == "r8-adapter-m64-lr0.001-hlr0.03-r2"


@pytest.mark.parametrize("spec_extra, site, head_lr", [({}, "before_dropout", 1e-3),
                                                       ({"recipe": 2, "head_lr": 3e-2}, "after_dropout", 3e-2),
                                                       ({"recipe": 2}, "after_dropout", 1e-3)])
def test_the_runner_trains_each_recipe_with_its_own_settings(mods, monkeypatch, tmp_path, spec_extra, site, head_lr):
    """Specs without ``recipe`` keep recipe 1 (their cache stays valid); recipe 2 reads the dropout's output."""
    run, rerun, runner, budgets = mods
    import adapterkit.train

    seen = {}
    monkeypatch.setattr(adapterkit.train, "train", lambda config: seen.setdefault("config", config))
    spec = {**runner.train_spec(budgets.BUDGETS["standard"], "trec", "adapter", 1e-3, size=64), **spec_extra}
    runner._train_locked(spec, tmp_path / "out")
    config = seen["config"]
    assert (config.site, config.head_lr, config.lr, config.adapter_size) == (site, head_lr, 1e-3, 64)


needs_results = pytest.mark.skipif(not (EXPERIMENTS / "results" / "train").is_dir(), reason="no committed results")


@needs_results
def test_identical_specs_hit_the_recipe_experiments_cache(mods):
    """Table 2's recipe-2 adapters are the recipe experiment's runs (same spec, same file); the other methods'
    runs are Table 2's own; Table 1's size-64 lr-1e-3 adapters are the recipe check runs."""
    run, rerun, runner, _ = mods
    R = run.Runner("standard", dry=True, log=lambda *a: None)
    variant = R.B["recipe_variants"][0]
    assert variant == {"head_lr": R.B["rerun"]["head_lr"]}
    for task in ("r8", "20newsgroups", "trec", "sms_spam", "rotten_tomatoes"):
        new, old = rerun.table2_r2_specs(R, task), run.table2_specs(R, task)
        assert [s for i, s in enumerate(new) if i != 2] == [s for i, s in enumerate(old) if i != 2]
        assert runner.spec_key(new[2]) == runner.spec_key(run.recipe_spec(R, task, variant))
        assert all(r is not None for r in R.need(new)), task
    for task in ("glue/rte", "glue/mrpc", "glue/stsb", "glue/cola"):
        grid = rerun.adapter_specs(R, task, 64)
        assert run.recipe_spec(R, task, variant) in grid
    # the CoLA full-FT run Table 1 chose, at 10 epochs, is the "longer" experiment's run
    assert R.need([rerun.long_spec(R, rerun.short_choice(R, "glue/cola", "full"))])[0] is not None


@needs_results
def test_epochs_are_chosen_like_the_lr(mods):
    """A method's choice is the better of its 3-epoch choice and that configuration at long_epochs."""
    run, rerun, runner, _ = mods
    R = run.Runner("standard", dry=True, log=lambda *a: None)
    short = rerun.short_choice(R, "glue/cola", "full")
    (long,) = R.need([rerun.long_spec(R, short)])
    assert long["spec"] == {**short["spec"], "epochs": R.B["rerun"]["long_epochs"]}
    chosen = rerun.epoch_choice(R, "glue/cola", "full")
    assert chosen["result"]["best"]["main"] == max(short["result"]["best"]["main"], long["result"]["best"]["main"])


@needs_results
def test_size_lr_runs_are_table1s_sizes_at_size_64s_best_lr_scaled_by_size(mods, monkeypatch, tmp_path):
    """Issue 12's size-dependent lr: sizes 8 and 256 at size 64's best recipe-2 lr with lr_reference_size 64, their
    own cache entries (not table1-r2's), and the runner hands the option to TrainConfig."""
    run, rerun, runner, _ = mods
    import adapterkit.train

    R = run.Runner("standard", dry=True, log=lambda *a: None)
    best = run.best_of(R.need(rerun.adapter_specs(R, "glue/rte", 64)))
    specs = rerun.size_lr_specs(R, "glue/rte")
    plain = [s for m in (8, 256) for s in rerun.adapter_specs(R, "glue/rte", m)]
    assert specs == [{**s, "lr_reference_size": 64} for s in plain]
    assert [(s["adapter_size"], s["lr"]) for s in specs] == [(8, best["spec"]["lr"]), (256, best["spec"]["lr"])]
    assert runner.label_of(specs[1]) == f"glue-rte-adapter-m256-lr{best['spec']['lr']:g}-hlr0.03-lrref64-r2"
    assert {runner.spec_key(s) for s in specs}.isdisjoint(runner.spec_key(s) for s in plain)
    seen = {}
    monkeypatch.setattr(adapterkit.train, "train", lambda config: seen.setdefault("config", config))
    runner._train_locked(specs[1], tmp_path / "out")
    assert (seen["config"].lr_reference_size, seen["config"].body_lr(384)) == (64, best["spec"]["lr"] / 4)


@needs_results
def test_small_sizes_long_runs_are_their_3_epoch_runs_at_long_epochs(mods):
    """size-lr's last stage: each size below 64, at size 64's lr (its table1-r2 run), trained for long_epochs;
    CoLA's is the run Table 1's epoch choice already made (one cache entry)."""
    run, rerun, runner, _ = mods
    R = run.Runner("standard", dry=True, log=lambda *a: None)
    (short,) = R.need(rerun.adapter_specs(R, "glue/rte", 8))
    assert rerun.small_long_specs(R, "glue/rte") == [{**short["spec"], "epochs": R.B["rerun"]["long_epochs"]}]
    assert rerun.small_long_specs(R, "glue/cola") == rerun.long_specs(R, "glue/cola")[1:]  # CoLA's pick is m=8
    assert rerun.small_long_specs(R, "glue/cola")[0] in rerun.SPECS["size-lr"](R)
    # and Figure 3's and SQuAD's size-256 adapters, their recipe-2 runs at lr x 64 / 256
    large = rerun.large_elsewhere_specs(R)
    plain = [s for t in R.B["fig3_tasks"] for s in rerun.fig3_r2_specs(R, t)] + rerun.squad_r2_specs(R)
    assert large == [{**s, "lr_reference_size": 64} for s in plain if s.get("adapter_size") == 256]
    assert [s["task"] for s in large] == [*R.B["fig3_tasks"], "squad"]


@needs_results
def test_size_grid_is_every_size_at_every_lr_of_size_64s_grid(mods):
    """size-grid: sizes 8 and 256 at each lr of size 64's grid; the best-lr ones are table1-r2's own runs."""
    run, rerun, runner, _ = mods
    R = run.Runner("standard", dry=True, log=lambda *a: None)
    specs = rerun.size_grid_specs(R, "glue/cola")
    grid = run.lrs_for(R, "glue/cola", "adapter", 64)
    assert [(s["adapter_size"], s["lr"]) for s in specs] == [(m, lr) for m in (8, 256) for lr in grid]
    assert all(s["recipe"] == 2 and s["epochs"] == R.B["epochs"] for s in specs)
    assert [s for m in (8, 256) for s in rerun.adapter_specs(R, "glue/cola", m)] == [
        s for s in specs if s["lr"] == run.best_of(R.need(rerun.adapter_specs(R, "glue/cola", 64)))["spec"]["lr"]]


def test_joint_choice_is_the_best_of_every_size_at_both_epoch_counts(mods, monkeypatch):
    """table1-joint: the best on validation of the six runs (3 sizes x {3, long} epochs); None while one is missing."""
    run, rerun, _, _ = mods
    R = run.Runner("standard", dry=True, log=lambda *a: None)

    def record(size, epochs, main):
        return {"spec": {"adapter_size": size, "epochs": epochs, "lr": 1e-3}, "result": {"best": {"main": main}}}

    scores = {(8, 3): 0.50, (64, 3): 0.60, (256, 3): 0.58, (8, 10): 0.62, (64, 10): 0.59, (256, 10): None}
    monkeypatch.setattr(rerun, "short_choice", lambda R, task, method, size: record(size, 3, scores[size, 3]))

    def need(specs):
        ran = [(s["adapter_size"], s["epochs"]) for s in specs]
        return [None if scores[k] is None else record(*k, scores[k]) for k in ran]

    monkeypatch.setattr(R, "need", need)
    assert rerun.joint_choice(R, "glue/rte") is None
    scores[256, 10] = 0.55
    assert rerun.joint_choice(R, "glue/rte")["spec"] == {"adapter_size": 8, "epochs": 10, "lr": 1e-3}
    # size 64 alone (the paper's "Adapters (64)" row): its 3-epoch run beats its 10-epoch one here
    assert rerun.joint_choice(R, "glue/rte", (64,))["spec"] == {"adapter_size": 64, "epochs": 3, "lr": 1e-3}


def test_mpnet_grid_is_each_mpnet_r2_run_at_every_lr_of_its_methods_grid(mods):
    """mpnet-grid: MPNet's own lr choice over Table 1's grids; at the lr MiniLM chose it is mpnet-r2's own run."""
    run, rerun, _, _ = mods
    R = run.Runner("standard", dry=True, log=lambda *a: None)
    base, grid = rerun.mpnet_r2_specs(R), R.B["task_grid"]
    specs = rerun.mpnet_grid_specs(R)
    assert len(base) == 2 * len(R.B["rerun"]["mpnet_tasks"])
    assert [(s["task"], s["method"], s["lr"]) for s in specs] == [
        (b["task"], b["method"], lr) for b in base for lr in grid[b["method"]]]
    assert all(s == {**b, "lr": s["lr"]} for b in base for s in specs
               if (s["task"], s["method"]) == (b["task"], b["method"]))
    assert all(b in specs for b in base) and all(s["model"] == "mpnet" for s in specs)


def test_mpnet_lr_then_epochs_are_chosen_on_validation_once_the_whole_grid_ran(mods, monkeypatch):
    """MPNet's lr is the best of its method's grid (None while one grid point is missing), its long run that lr at
    long_epochs, and the epoch choice the better of the two (None until the long run ran)."""
    run, rerun, _, _ = mods
    R = run.Runner("standard", dry=True, log=lambda *a: None)
    E = R.B["rerun"]["long_epochs"]
    scores = {(3e-5, 3): 0.60, (1e-4, 3): 0.62, (3e-4, 3): None, (1e-4, E): None}

    def need(specs):
        return [None if scores.get((s["lr"], s["epochs"])) is None else
                {"spec": s, "result": {"best": {"main": scores[s["lr"], s["epochs"]]}}} for s in specs]

    monkeypatch.setattr(R, "need", need)
    assert rerun.mpnet_choice(R, "glue/rte", "full") is None
    assert rerun.mpnet_long_specs(R) == []
    scores[3e-4, 3] = 0.527  # diverged to the majority class: not chosen
    choice = rerun.mpnet_choice(R, "glue/rte", "full")
    assert (choice["spec"]["lr"], choice["spec"]["model"], choice["spec"]["task"]) == (1e-4, "mpnet", "glue/rte")
    full_long = [s for s in rerun.mpnet_long_specs(R) if s["method"] == "full" and s["task"] == "glue/rte"]
    assert full_long == [{**choice["spec"], "epochs": E}]
    assert rerun.mpnet_epoch_choice(R, "glue/rte", "full") is None
    scores[1e-4, E] = 0.70
    assert rerun.mpnet_epoch_choice(R, "glue/rte", "full")["spec"] == full_long[0]
    scores[1e-4, E] = 0.55
    assert rerun.mpnet_epoch_choice(R, "glue/rte", "full")["spec"] == choice["spec"]


def test_the_page_keeps_gpu_runs_out_of_this_machines_time_and_speeds(mods, monkeypatch):
    """Runs recorded on a GPU count as GPU minutes, not in the CPU machine's wall time or examples/s."""
    run, _, _, _ = mods
    import doc

    d = doc.Doc("standard")
    cpu = {"key": "a", "spec": {"method": "adapter"}, "result": {"wall_seconds": 60.0, "examples_per_second": 30.0}}
    old = {"key": "b", "spec": {"method": "adapter"}, "result": {"wall_seconds": 120.0, "examples_per_second": 20.0,
                                                                  "device": "cpu"}}
    gpu = {"key": "c", "spec": {"method": "adapter"}, "result": {"wall_seconds": 45.0, "examples_per_second": 600.0,
                                                                  "device": "cuda:0"}}
    side = {"key": "d", "spec": {"method": "adapterhub"}, "result": {"wall_seconds": 30.0, "examples_per_second": 25.0,
                                                                      "device": None}}  # summarise's None
    monkeypatch.setattr(d.R, "need", lambda specs: [cpu, old, gpu, side])
    d.need("x", [{}, {}, {}, {}])
    assert (d.seconds, d.gpu_seconds, d.speed) == (210.0, 45.0, {"adapter": [30.0, 20.0], "adapterhub": [25.0]})
    assert [doc.on_gpu(r) for r in (cpu, old, gpu, side)] == [False, False, True, False]


@pytest.mark.parametrize("size", [8, 64, 256])
def test_bert_large_pct_counts_the_adapters_their_layer_norms_and_the_head(mods, size):
    """The page's BERT-large shares: two adapters per layer (2md + d + m each) with a layer-norm copy each (2d),
    and the 2-class head (d x 2 + 2), over BERT-large's 335,141,888 parameters plus that head."""
    from adapterkit.bottleneck import bottleneck_parameter_count

    _, rerun, _, _ = mods
    d, layers = 1024, 24
    trained = layers * 2 * (bottleneck_parameter_count(d, size) + 2 * d) + (2 * d + 2)
    assert rerun.bert_large_pct(size) == pytest.approx(100 * trained / (335_141_888 + 2 * d + 2), rel=1e-12)


def test_the_rerun_experiments_are_registered_for_the_standard_budget_only(mods):
    run, rerun, _, _ = mods
    for name in rerun.EXPERIMENTS:
        assert run.EXPERIMENTS[name] is rerun.EXPERIMENTS[name]
        assert name in run.experiments_of("standard")
        assert name not in run.experiments_of("quick")


@pytest.mark.slow
def test_adapterhub_default_trains_through_the_runner_and_is_cached(mods, monkeypatch, tmp_path):
    """A tiny slice of the quick budget (24 TREC rows, 2 epochs) through the side venv, AdapterHub's default and
    Houlsby's configuration: the record has
    adapterkit's metric on the validation rows, the best epoch, AdapterHub's versions; a second runner trains
    nothing; no partial directory is left."""
    run, rerun, runner, budgets = mods
    side = ROOT / "benchmarks" / ".venvs" / "adapterhub" / "bin" / "python"
    if not side.exists():
        pytest.skip("no side venv: run python benchmarks/_adapterhub_env.py")
    monkeypatch.setattr(runner, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(runner, "RUNS", tmp_path / "runs")
    monkeypatch.setitem(budgets.BUDGETS, "tiny", {**budgets.BUDGETS["quick"], "max_train": 24, "max_validation": 24,
                                                  "epochs": 2, "batch_size": 8, "table2_tasks": ("trec",),
                                                  "adapterhub": {"runs": (("seq_bn", 1e-3), ("double_seq_bn", 1e-3))}})
    R = runner.Runner("tiny", log=lambda *a: None)
    rerun.exp_adapterhub(R)
    assert R.trained == 2
    records = {r["label"]: r for r in (json.loads(p.read_text()) for p in (tmp_path / "results" / "train").glob("*.json"))}
    assert sorted(records) == ["trec-adapterhub-double-seq-bn-lr0.001", "trec-adapterhub-seq-bn-lr0.001"]
    single, double = (records[f"trec-adapterhub-{c}-lr0.001"]["result"] for c in ("seq-bn", "double-seq-bn"))
    assert double["trainable_params"] > single["trainable_params"]  # two adapters per layer, one head alike
    res = single
    assert "error" not in res, res
    assert res["split"]["sizes"] == {"train": 24, "validation": 24}
    assert res["adapter_size"] == 24  # 384 / reduction factor 16
    assert [e["epoch"] for e in res["epochs"]] == [1, 2]
    assert res["best"] == max(res["epochs"], key=lambda e: e["main"])
    assert res["best"]["main"] in {k / 24 for k in range(25)}  # accuracy over the 24 validation rows
    assert res["versions"]["adapters"] == "1.3.0"
    assert [p.name for p in (tmp_path / "runs").iterdir() if p.name.startswith(".")] == []
    again = runner.Runner("tiny", log=lambda *a: None)
    rerun.exp_adapterhub(again)
    assert again.trained == 0

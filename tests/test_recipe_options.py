"""The recipe's training options: the head's own learning rate (``head_lr`` / ``--head-lr``,
``ak.parameter_groups``) and the embedding layer-norm copy (``train_embedding_norm``), end to end."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_inputs, tiny_model

import adapterkit as ak
import adapterkit.train as T
from adapterkit.train import TrainConfig, train

from train_helpers import save_tiny_bert, write_sentiment, write_squad


def test_parameter_groups_split_the_adapter_into_body_and_head():
    model = tiny_model("bert")
    ak.add_adapter(model, "a", ak.AdapterConfig(size=4), head=3)
    ak.add_adapter(model, "b", ak.AdapterConfig(size=4), head=2)
    body, head = ak.parameter_groups(model, "a", 1e-3, head_lr=3e-2)
    assert (body["lr"], head["lr"]) == (1e-3, 3e-2)
    ids = lambda ps: {id(p) for p in ps}
    assert ids(body["params"]) | ids(head["params"]) == ids(ak.adapter_parameters(model, "a"))
    assert not ids(body["params"]) & ids(head["params"])
    assert {p.shape for p in head["params"]} == {torch.Size([3, 32]), torch.Size([3])}  # the new classifier
    assert ak.parameter_groups(model, "a", 1e-3)[1]["lr"] == 1e-3
    with pytest.raises(KeyError, match="no adapter named 'c'"):
        ak.parameter_groups(model, "c", 1e-3)


def test_parameter_groups_step_the_head_at_its_own_lr():
    """One AdamW step moves each parameter by about its group's lr: the head 30x more than the adapter."""
    model, inputs = tiny_model("bert"), tiny_inputs("bert")
    ak.add_adapter(model, "a", ak.AdapterConfig(size=4, init_std=1e-2), head=2)
    ak.train_adapter(model, "a")
    groups = ak.parameter_groups(model, "a", 1e-4, head_lr=3e-3)
    before = [[p.detach().clone() for p in g["params"]] for g in groups]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    model(**inputs).logits.square().sum().backward()
    opt.step()
    moved = [max(float((p.detach() - b).abs().max()) for p, b in zip(g["params"], bs)) for g, bs in zip(groups, before)]
    assert moved[0] == pytest.approx(1e-4, rel=0.05) and moved[1] == pytest.approx(3e-3, rel=0.05)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    return {"bert": str(save_tiny_bert(root / "bert")), "data": write_sentiment(root / "data")}


def _config(tiny, out, **kw):
    return TrainConfig(**{**dict(output=str(out), model=tiny["bert"], task="local", data=tiny["data"], epochs=1,
                                 batch_size=8, eval_batch_size=8, lr=1e-3, progress=False), **kw})


@pytest.mark.parametrize("method", ["adapter", "full"])
def test_train_puts_the_head_in_its_own_optimiser_group(tiny, tmp_path, monkeypatch, method):
    seen = {}
    real = torch.optim.AdamW

    def spy(groups, **kw):
        seen["groups"] = groups
        return real(groups, **kw)

    monkeypatch.setattr(T.torch.optim, "AdamW", spy)
    metrics = train(_config(tiny, tmp_path / method, method=method, head_lr=2e-2))
    body, head = seen["groups"]
    assert (body["lr"], head["lr"]) == (1e-3, 2e-2)
    assert sum(p.numel() for p in head["params"]) == 32 * 2 + 2  # the 2-label classifier
    assert sum(p.numel() for g in seen["groups"] for p in g["params"]) == metrics["trainable_params"]
    assert json.loads((tmp_path / method / "metrics.json").read_text())["head_lr"] == 2e-2


def _groups_of(tiny, out, monkeypatch, **kw):
    """The optimiser's parameter groups of a train() run of _config(tiny, out, **kw), and its metrics."""
    seen = {}
    real = torch.optim.AdamW
    monkeypatch.setattr(T.torch.optim, "AdamW", lambda groups, **k: seen.setdefault("g", groups) and real(groups, **k))
    metrics = train(_config(tiny, out, **kw))
    return seen["g"], metrics


def _lrs_of(tiny, out, monkeypatch, **kw):
    groups, metrics = _groups_of(tiny, out, monkeypatch, **kw)
    return [g["lr"] for g in groups], metrics


def test_an_adapters_new_head_learns_at_the_default_head_lr(tiny, tmp_path, monkeypatch):
    """Issue 12's recipe: without --head-lr an adapter's classification head trains at 3e-2, the rest at lr."""
    lrs, metrics = _lrs_of(tiny, tmp_path / "default", monkeypatch)
    assert lrs == [1e-3, T.DEFAULT_HEAD_LR["adapter"]["classification"]] == [1e-3, 3e-2]
    assert metrics["head_lr"] == 3e-2 and metrics["config"]["head_lr"] is None  # the effective lr, and the option
    # a run recorded before this default (no default_head_lr) is not taken for one made with it
    assert metrics["config"]["default_head_lr"] == {"classification": 3e-2, "regression": 3e-2, "qa": 3e-2}
    assert "default_head_lr" not in _config(tiny, tmp_path / "x", head_lr=1e-3).recorded()


def test_an_adapters_span_head_learns_at_the_default_head_lr(tiny, tmp_path, monkeypatch):
    """QA too (issue 12, SQuAD): the span head (the model's qa_outputs, copied per adapter) trains at 3e-2."""
    model = save_tiny_bert(tmp_path / "qa-bert", qa=True)
    squad = write_squad(tmp_path / "squad.json", n_articles=2)
    groups, metrics = _groups_of(tiny, tmp_path / "qa", monkeypatch, model=str(model), task="squad",
                                 data={"train_file": str(squad)}, max_length=64, doc_stride=16)
    body, head = groups
    assert (body["lr"], head["lr"]) == (1e-3, T.DEFAULT_HEAD_LR["adapter"]["qa"]) == (1e-3, 3e-2)
    assert sum(p.numel() for p in head["params"]) == 32 * 2 + 2  # qa_outputs: hidden 32 -> (start, end)
    assert metrics["head_lr"] == 3e-2 and metrics["config"]["default_head_lr"]["qa"] == 3e-2


@pytest.mark.parametrize("method, kw", [("adapter", {"head_lr": 1e-3}), ("head", {}), ("full", {"lr": 1e-4})])
def test_a_head_at_the_runs_lr_is_one_group(tiny, tmp_path, monkeypatch, method, kw):
    """--head-lr equal to --lr (the recipe before issue 12), and methods without a head default: one group."""
    lrs, metrics = _lrs_of(tiny, tmp_path / method, monkeypatch, method=method, **kw)
    assert len(lrs) == 1 and metrics["head_lr"] == lrs[0]


def test_bad_head_lr_is_refused(tiny, tmp_path):
    for bad in (0.0, -1.0, float("nan"), float("inf"), 1e300):
        with pytest.raises(ValueError, match=r"--head-lr must be a number in \(0, 10.0\]"):
            _config(tiny, tmp_path / "x", head_lr=bad)


def test_train_embedding_norm_trains_a_copy_and_saves_it(tiny, tmp_path):
    metrics = train(_config(tiny, tmp_path / "emb", train_embedding_norm=True))
    plain = train(_config(tiny, tmp_path / "plain"))
    assert metrics["trainable_params"] - plain["trainable_params"] == 2 * 32  # the embedding norm's weight + bias
    saved = json.loads((tmp_path / "emb" / "adapter" / "adapter_config.json").read_text())
    assert saved["config"]["train_embedding_norm"] is True


def test_probe_epochs_train_only_the_head_first(tiny, tmp_path, monkeypatch):
    """LP-FT: during the probe epoch the adapters and layer-norm copies stay exactly at their init while the
    head moves; afterwards everything trains."""
    snapshots = []
    real = T._train_epoch

    def spy(model, *args, **kwargs):
        out = real(model, *args, **kwargs)
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        return out

    start = {}
    real_prepare = T.prepare

    def spy_prepare(model, *args, **kwargs):
        trainable = real_prepare(model, *args, **kwargs)
        start.update({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        return trainable

    monkeypatch.setattr(T, "_train_epoch", spy)
    monkeypatch.setattr(T, "prepare", spy_prepare)
    metrics = train(_config(tiny, tmp_path / "lp", epochs=2, probe_epochs=1, head_lr=1e-2))
    assert metrics["probe_epochs"] == 1
    head = {n for n in start if "classifier" in n}
    body = set(start) - head
    assert head and body
    assert all(torch.equal(snapshots[0][n], start[n]) for n in body)  # the probe epoch: body untouched
    assert all(not torch.equal(snapshots[0][n], start[n]) for n in head if n.endswith("weight"))
    assert any(not torch.equal(snapshots[1][n], start[n]) for n in body)  # then it trains


def test_probe_epochs_must_leave_epochs_to_train(tiny, tmp_path):
    with pytest.raises(ValueError, match="--probe-epochs must lie in"):
        _config(tiny, tmp_path / "x", epochs=2, probe_epochs=2)


def test_schedule_without_probe_is_the_old_one():
    """The same warm-up and decay as before the groups existed (runs cached before it stay comparable)."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = T._linear_schedule(opt, 0.1, 50)
    lrs = []
    for _ in range(50):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    warm, total = 5, 50
    expected = [(s + 1) / (warm + 1) if s < warm else max(0.0, (total - s) / (total - warm)) for s in range(50)]
    assert lrs == pytest.approx(expected)


def test_site_flows_from_train_into_the_saved_adapter(tiny, tmp_path):
    metrics = train(_config(tiny, tmp_path / "site", site="after_dropout"))
    assert metrics["site"] == "after_dropout"
    saved = json.loads((tmp_path / "site" / "adapter" / "adapter_config.json").read_text())
    assert saved["config"]["site"] == "after_dropout"
    assert TrainConfig(output="x").site == "after_dropout" == ak.AdapterConfig().site  # the paper's order (issue 12)
    with pytest.raises(ValueError, match="--site must be after_dropout or before_dropout"):
        _config(tiny, tmp_path / "x", site="middle")


@pytest.mark.parametrize("size, reference, expected", [(16, 4, 2.5e-4), (2, 4, 2e-3), (4, 4, 1e-3)])
def test_lr_reference_size_scales_the_adapters_lr_by_their_size(tiny, tmp_path, monkeypatch, size, reference, expected):
    """Issue 12's size-dependent lr: the adapters and layer-norm copies at lr x reference / size, the head at its own."""
    lrs, metrics = _lrs_of(tiny, tmp_path / f"m{size}", monkeypatch, adapter_size=size, lr_reference_size=reference)
    assert lrs == [pytest.approx(expected, rel=1e-12), 3e-2]
    assert metrics["body_lr"] == pytest.approx(expected, rel=1e-12) and metrics["lr"] == 1e-3
    assert metrics["config"]["lr_reference_size"] == reference


def test_lr_reference_size_off_is_recorded_as_before(tiny, tmp_path):
    """Unset, the option is not recorded: runs made before it existed are still reused by sweep and --resume."""
    assert "lr_reference_size" not in _config(tiny, tmp_path / "x").recorded()


@pytest.mark.parametrize("kw, message", [({"lr_reference_size": 0}, "--lr-reference-size must be a positive integer"),
                                         ({"lr_reference_size": 2.5}, "--lr-reference-size must be a positive integer"),
                                         ({"lr_reference_size": 64, "method": "full"}, "use it with --method adapter")])
def test_bad_lr_reference_size_is_refused(tiny, tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        _config(tiny, tmp_path / "x", **kw)


def test_a_scaled_lr_above_the_limit_is_refused_before_the_run_starts(tiny, tmp_path):
    with pytest.raises(ValueError, match="above 10.0; lower --lr or --lr-reference-size"):
        train(_config(tiny, tmp_path / "big", lr=1.0, adapter_size=1, lr_reference_size=64))
    assert not (tmp_path / "big").exists()

"""Adapters of both sites in one model (``AdapterConfig.site``): a ``before_dropout`` adapter (on the output
projection: LN(x + drop(h + f(h)))) next to an ``after_dropout`` one (on the dropout after it, adapter-bert's
and AdapterHub's order: LN(x + drop(h) + f(drop(h)))). Each must compute exactly what it computes in a model
that holds only it: alone, per row of a mixed batch, in a Stack, after saving and loading, and while the other
trains. Training mode is what matters (in eval mode dropout is the identity and the sites agree), so dropout
masks are fixed: ``torch.manual_seed`` before each forward, or a dropout whose mask depends on nothing random.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_minilm, tiny_inputs, tiny_model
from torch import nn

import adapterkit as ak
from adapterkit.checks import config_digest
from adapterkit.info import describe
from adapterkit.layers import BottleneckLayer
from adapterkit.model import adapter_modules, adapter_tensors
from adapterkit.train import TrainConfig

BEFORE = ak.AdapterConfig(size=4, init_std=0.1, site="before_dropout")
AFTER = ak.AdapterConfig(size=4, init_std=0.1, site="after_dropout")


def _bert(seed: int = 0) -> nn.Module:
    # attention-prob dropout off: it is functional (not an nn.Dropout) and tests 3-4 fix the modules' masks
    return tiny_model("bert", seed=seed, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.0)


def _perturb(model, name, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ak.adapter_parameters(model, name):
            p.add_(torch.randn(p.shape, generator=g) * 0.2)


def _both(make=_bert):
    """A model holding A (before_dropout, 3 labels) and B (after_dropout, the model's own head width)."""
    model = make()
    ak.add_adapter(model, "A", BEFORE, head=3)
    ak.add_adapter(model, "B", AFTER)
    _perturb(model, "A", 1)
    _perturb(model, "B", 2)
    return model


def _alone(model, name, make=_bert, config=None):
    """A fresh model holding only ``name``, with its weights (``config``: its config, or another site)."""
    state = model.adapterkit
    other = make()
    ak.add_adapter(other, name, config or state.configs[name], head=state.heads[name])
    source = adapter_tensors(model, name)
    with torch.no_grad():
        for key, t in adapter_tensors(other, name).items():
            t.copy_(source[key])
    return other


def _run(model, active, inputs, seed=5):
    ak.set_active(model, active)
    torch.manual_seed(seed)  # the same dropout masks in every model (adapters draw nothing)
    with torch.no_grad():
        return model(**inputs).logits


def _fix_dropout_masks(model):
    """Every nn.Dropout multiplies by a mask fixed by its position in the model and the input's shape, not by
    the global generator: row i of a batch gets the same mask whichever adapter the other rows use."""
    for k, m in enumerate(mod for mod in model.modules() if isinstance(mod, nn.Dropout) and mod.p > 0):
        def forward(x, m=m, k=k):
            if not m.training:
                return x
            keep = torch.rand(x.shape, generator=torch.Generator().manual_seed(k)) >= m.p
            return x * keep / (1 - m.p)
        m.forward = forward


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_each_adapter_runs_at_its_own_site_as_in_a_model_holding_only_it(mode):
    model, inputs = _both(), tiny_inputs("bert")
    alone = {n: _alone(model, n) for n in "AB"}
    for m in (model, *alone.values()):
        m.train(mode == "train")
    for name in "AB":
        assert torch.equal(_run(model, name, inputs), _run(alone[name], name, inputs)), name
    assert torch.equal(_run(model, None, inputs), _run(tiny_model("bert", hidden_dropout_prob=0.3,
                       attention_probs_dropout_prob=0.0).train(mode == "train"), None, inputs))
    # The sites really differ in training (and only there): B on the projection is another function.
    b_before = _alone(model, "B", config=BEFORE).train(mode == "train")
    same = torch.equal(_run(b_before, "B", inputs), _run(model, "B", inputs))
    assert same == (mode == "eval")


def test_minilm_holds_adapters_of_both_sites_in_training(minilm_dir, minilm_batch):
    make = lambda: load_minilm(minilm_dir)  # noqa: E731  (its hidden dropout is 0.1)
    model = _both(make).train()
    for name in "AB":
        alone = _alone(model, name, make).train()
        assert torch.equal(_run(model, name, minilm_batch), _run(alone, name, minilm_batch)), name


@pytest.mark.parametrize("routing", ["sorted", "sorted-no-grad", "interleaved"])
def test_mixed_batch_rows_equal_single_runs_in_training(routing):
    """before_dropout rows are rewritten at the projection's hook, after_dropout rows at the dropout's."""
    model = _both()
    _fix_dropout_masks(model)
    model.train()
    inputs = tiny_inputs("bert", batch=5)
    tasks = {"sorted": ["A", "A", "B", "B", None], "sorted-no-grad": ["A", "B", "B", None, None],
             "interleaved": ["B", "A", None, "B", "A"]}[routing]
    ak.set_active(model, tasks)
    with torch.set_grad_enabled(routing != "sorted-no-grad"):
        mixed = model(**inputs).logits.detach()  # (5, 3): B's 2-wide head padded with a zero
    single = {t: _run(model, t, inputs) for t in ("A", "B", None)}
    for i, task in enumerate(tasks):
        width = single[task].shape[-1]
        torch.testing.assert_close(mixed[i, :width], single[task][i], atol=1e-6, rtol=0, msg=f"row {i} ({task})")
    # and the single runs are those of a model holding one adapter
    b_alone = _alone(model, "B")
    _fix_dropout_masks(b_alone)
    assert torch.equal(single["B"], _run(b_alone.train(), "B", inputs))


def test_stack_applies_each_adapter_at_its_own_site_in_order():
    """Stack(A, B) on one sublayer: h1 = h + f_A(h) at the projection, then d = drop(h1), out = d + f_B(d).
    A before_dropout adapter cannot follow an after_dropout one (the projection runs first): refused."""
    model = _both()
    _fix_dropout_masks(model)
    model.train()
    out = model.bert.encoder.layer[1].output  # BertOutput: dense -> dropout -> LayerNorm(. + x)
    f_a, f_b = out.dense.adapters.adapters["A"], out.dense.adapters.adapters["B"]
    inter, x = torch.randn(2, 4, 64), torch.randn(2, 4, 32)
    ak.set_active(model, ak.Stack("A", "B"))
    with torch.no_grad():
        got = out(inter, x)
    ak.set_active(model, None)  # no adapter on the modules below: their plain outputs
    with torch.no_grad():
        h = out.dense(inter)
        d = out.dropout(h + f_a(h))  # the module's fixed mask
        assert not torch.equal(d, h + f_a(h))
        expected = out.LayerNorm.adapters.adapters["B"](d + f_b(d) + x)  # the stack's last adapter's norm
    assert torch.equal(got, expected)
    with pytest.raises(ValueError, match="'A' \\(site before_dropout\\) cannot follow 'B'.*put the before_dropout"):
        ak.set_active(model, ak.Stack("B", "A"))
    assert ak.active_adapter(model) is None  # the refused stack left the routing as it was


def test_training_b_leaves_a_bit_identical():
    model, inputs = _both(), tiny_inputs("bert")
    a_before = {k: t.clone() for k, t in adapter_tensors(model, "A").items()}
    b_before = {k: t.clone() for k, t in adapter_tensors(model, "B").items()}
    a_logits = _run(model.eval(), "A", inputs)
    ak.train_adapter(model, "B")
    opt = torch.optim.AdamW(ak.parameter_groups(model, "B", 1e-2))
    for step in range(3):
        torch.manual_seed(step)
        model(**inputs, labels=torch.tensor([0, 1, 1])).loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(t, a_before[k]) for k, t in adapter_tensors(model, "A").items())
    assert any(not torch.equal(t, b_before[k]) for k, t in adapter_tensors(model, "B").items())
    assert torch.equal(_run(model.eval(), "A", inputs), a_logits)


def test_save_and_load_keep_each_adapter_s_site(tmp_path):
    model, inputs = _both(), tiny_inputs("bert")
    model.train()
    for name in "AB":
        ak.save_adapter(model, name, tmp_path / name)
    assert json.loads((tmp_path / "A" / "adapter_config.json").read_text())["config"]["site"] == "before_dropout"
    assert json.loads((tmp_path / "B" / "adapter_config.json").read_text())["config"]["site"] == "after_dropout"
    loaded = _bert().train()
    ak.load_adapter(loaded, tmp_path / "B")  # the other order than they were added
    ak.load_adapter(loaded, tmp_path / "A")
    assert {n: c.site for n, c in loaded.adapterkit.configs.items()} == {"A": "before_dropout", "B": "after_dropout"}
    for name in "AB":
        assert torch.equal(_run(loaded, name, inputs), _run(model, name, inputs)), name


def test_a_file_saved_before_site_existed_loads_as_before_dropout(tmp_path):
    """adapterkit 0.1 wrote no ``site`` and hooked the projection: such a file stays before_dropout, whatever
    the default (and so do --resume records of runs from before --site: TrainConfig.recorded_defaults)."""
    model, inputs = _both(), tiny_inputs("bert")
    ak.save_adapter(model, "A", tmp_path / "old")
    path = tmp_path / "old" / "adapter_config.json"
    meta = json.loads(path.read_text())
    del meta["config"]["site"]
    meta["config_sha256"] = config_digest(meta)
    path.write_text(json.dumps(meta))
    loaded = _bert()
    ak.load_adapter(loaded, tmp_path / "old", name="old")
    assert loaded.adapterkit.configs["old"].site == "before_dropout"
    assert ak.AdapterConfig.from_saved({}).site == "before_dropout"
    assert TrainConfig.recorded_defaults()["site"] == "before_dropout" != ak.AdapterConfig().site
    assert "site before_dropout" in describe(tmp_path / "old")


def _dropout_hooks(model) -> int:
    return sum(len(m._forward_hooks) for m in model.modules() if isinstance(m, nn.Dropout))


def test_the_dropout_is_hooked_only_while_an_after_dropout_adapter_is_there():
    model, inputs = _bert(), tiny_inputs("bert")
    base = _run(model.eval(), None, inputs)
    ak.add_adapter(model, "A", BEFORE)
    assert _dropout_hooks(model) == 0
    ak.add_adapter(model, "B", AFTER)
    assert _dropout_hooks(model) == 4  # 2 layers x (attention, FFN)
    holder = model.bert.encoder.layer[0].output.dense.adapters
    assert holder.sites == {"A": "before_dropout", "B": "after_dropout"}
    with pytest.raises(ValueError):  # a failed add (name taken) leaves the hooks as they were
        ak.add_adapter(model, "B", AFTER)
    ak.remove_adapter(model, "B")
    assert _dropout_hooks(model) == 0
    ak.add_adapter(model, "C", AFTER)
    ak.remove_adapter(model, "A")
    ak.remove_adapter(model, "C")
    assert _dropout_hooks(model) == 0 and not list(adapter_modules(model))
    assert torch.equal(_run(model, None, inputs), base)


@pytest.mark.parametrize("arch", ["llama", "distilbert"])
def test_presets_without_a_dropout_after_the_projection(arch):
    """llama has no dropout module after its projections; distilbert none after attention (only after the
    FFN): there every adapter sits on the projection, whatever its site."""
    make = lambda: tiny_model(arch)  # noqa: E731
    model, inputs = _both(make), tiny_inputs(arch)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.3
    holders = [h for _, h in adapter_modules(model) if isinstance(h, BottleneckLayer)]
    with_dropout = [h for h in holders if h.dropout is not None]
    assert len(with_dropout) == {"llama": 0, "distilbert": 2}[arch]
    assert all(h.sites["B"] == ("after_dropout" if h.dropout is not None else "before_dropout") for h in holders)
    model.train()
    for name in "AB":
        alone = _alone(model, name, make).train()
        for m in alone.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.3
        assert torch.equal(_run(model, name, inputs), _run(alone, name, inputs)), name


def test_parallel_adapters_of_both_sites_read_the_sublayer_input_in_training():
    """Parallel kinds read the sublayer's input (captured once per sublayer): it must reach the dropout's
    hook too, and each adapter must still compute what it computes alone, alone and in a mixed batch."""
    model, inputs = _bert(), tiny_inputs("bert")
    ak.add_adapter(model, "P", ak.AdapterConfig(size=4, placement="parallel", scaling=2.0, site="before_dropout"))
    ak.add_adapter(model, "Q", ak.AdapterConfig(size=4, placement="parallel", scaling=2.0, site="after_dropout"), head=3)
    _perturb(model, "P", 3)
    _perturb(model, "Q", 4)
    _fix_dropout_masks(model)
    model.train()
    single = {}
    for name in "PQ":
        alone = _alone(model, name)
        _fix_dropout_masks(alone)
        single[name] = _run(model, name, inputs)
        assert torch.equal(single[name], _run(alone.train(), name, inputs)), name
    ak.set_active(model, ["Q", "P", "Q"])
    with torch.no_grad():
        mixed = model(**inputs).logits
    for i, task in enumerate(["Q", "P", "Q"]):
        width = single[task].shape[-1]
        torch.testing.assert_close(mixed[i, :width], single[task][i], atol=1e-6, rtol=0)


@pytest.mark.slow  # about 45 s on 2 busy cores
def test_onnx_export_of_each_adapter_of_a_mixed_site_model(tmp_path, minilm_dir):
    """Export traces the hooks in eval mode: each adapter's graph equals a model holding only it."""
    pytest.importorskip("onnxruntime")
    from transformers import AutoTokenizer

    from adapterkit.export import export_model_onnx
    from adapterkit.export.onnx import MODEL_FILE, run_onnx

    make = lambda: tiny_model("bert", vocab_size=30522)  # noqa: E731  (MiniLM's tokenizer gives the ids)
    model, tok = _both(make), AutoTokenizer.from_pretrained(minilm_dir)
    batch = dict(tok(["hello there my friend, how are you", "x", "a b c"], padding=True, return_tensors="pt"))
    out = export_model_onnx(model, tok, tmp_path / "B", "B")
    alone = _alone(model, "B", make)
    expected = _run(alone.eval(), "B", batch).numpy()
    assert abs(run_onnx(out / MODEL_FILE, batch)[0] - expected).max() <= 1e-4


def test_a_deep_copy_of_a_two_site_model_computes_with_its_own_adapters():
    """The hooks are bound methods, so a copied model's hooks run the copy's adapters, not the original's."""
    import copy

    model, inputs = _both(), tiny_inputs("bert")
    _fix_dropout_masks(model)
    model.train()
    clone = copy.deepcopy(model)
    expected = {n: _run(model, n, inputs) for n in "AB"}
    with torch.no_grad():  # move the original's adapters: the copy must not notice
        for name in "AB":
            for p in ak.adapter_parameters(model, name):
                p.mul_(3)
    for name in "AB":
        assert torch.equal(_run(clone, name, inputs), expected[name]), name
        assert not torch.equal(_run(model, name, inputs), expected[name]), name

"""Composition blocks (composition.py): Stack (b reads a's output at each site) and Average (a new adapter
from weighted parameters), on tiny models and the real MiniLM."""

from __future__ import annotations

import pytest
import torch

import adapterkit as ak
from adapterkit.model import adapter_modules, adapter_tensors, get_state

from conftest import logits, reloaded_logits, tiny_inputs, tiny_model


def _perturbed(model, name, config, seed, head=None):
    ak.add_adapter(model, name, config, head=head)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ak.adapter_parameters(model, name):
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("kind_b", ["houlsby", "pfeiffer"])  # parallel kinds: tests/test_stack_parity.py
def test_stack_applies_b_to_a_s_output_at_each_site(kind_b):
    """Checked against the formula on one sublayer: h -> h1 + f_b(h1), h1 = h + f_a(h) (AdapterHub's
    compose_stack; parity on MiniLM: tests/test_stack_parity.py); layer norms and head: b's."""
    model, inputs = tiny_model("bert"), tiny_inputs("bert")
    _perturbed(model, "a", ak.AdapterConfig(size=4), 0)
    _perturbed(model, "b", ak.AdapterConfig(size=4, placement=kind_b, layers=(1,)), 1)
    ak.set_active(model, ak.Stack("a", "b"))
    stacked = logits(model, inputs)
    holder = model.bert.encoder.layer[1].output.dense.adapters
    seen = {}
    hooked = holder.dropout if holder.sites["a"] == "after_dropout" else holder.projection  # the default site's
    hooked.register_forward_hook(lambda m, args, out: seen.setdefault("h", out), prepend=True)  # before ours
    hooked.register_forward_hook(lambda m, args, out: seen.setdefault("out", out))  # after ours
    with torch.no_grad():
        model(**inputs)
        h = seen["h"]  # the sublayer's own output, in the stacked pass
        f_a, f_b = holder.adapters["a"], holder.adapters["b"]
        after_a = h + f_a(h)
        expected = after_a + f_b(after_a)
    assert torch.equal(seen["out"], expected)
    assert not torch.equal(stacked, logits_of(model, "b", inputs))
    ak.set_active(model, ak.Stack("a"))  # a one-adapter stack is that adapter
    assert torch.equal(logits(model, inputs), logits_of(model, "a", inputs))
    # layer norms and head are the last adapter's
    ak.set_active(model, ak.Stack("b", "a"))
    assert ak.active_adapter(model) == ak.Stack("b", "a")
    before = logits(model, inputs)
    heads = next(h for _, h in adapter_modules(model) if h.role == "head").adapters
    norms = model.bert.encoder.layer[1].output.LayerNorm.adapters.adapters  # b has layer 1 only
    with torch.no_grad():
        heads["b"].weight.add_(1.0)
        norms["b"].weight.add_(1.0)
        assert torch.equal(logits(model, inputs), before)
        norms["a"].weight.add_(1.0)
        after_norm = logits(model, inputs)
        heads["a"].weight.add_(1.0)
        assert not torch.equal(after_norm, before) and not torch.equal(logits(model, inputs), after_norm)


def logits_of(model, name, inputs):
    with ak.use_adapter(model, name):
        return logits(model, inputs)


def test_stack_checks_names_and_is_cleared_with_its_adapter():
    model = tiny_model("bert")
    ak.add_adapter(model, "a", ak.AdapterConfig(size=4))
    with pytest.raises(KeyError, match="no adapter named 'nope'"):
        ak.set_active(model, ak.Stack("a", "nope"))
    with pytest.raises(ValueError, match="adapter names"):
        ak.Stack()
    ak.set_active(model, ak.Stack("a"))
    ak.remove_adapter(model, "a")
    assert ak.active_adapter(model) is None


def test_the_layer_stack_spec_is_layer_stack_and_the_old_call_still_builds_it():
    with pytest.warns(DeprecationWarning, match="LayerStack"):
        old = ak.Stack("blocks", "proj", "out", "mix", "fc", ("norm1", "norm2"))
    assert old == ak.LayerStack("blocks", "proj", "out", "mix", "fc", ("norm1", "norm2"))
    assert ak.architectures.Stack is ak.LayerStack


@pytest.mark.parametrize("weights,normalize", [(None, True), ([1.0, 3.0], True), ([0.2, -0.5], False)])
def test_average_is_the_weighted_sum_of_every_tensor(weights, normalize, tmp_path):
    model, inputs = tiny_model("bert"), tiny_inputs("bert")
    config = ak.AdapterConfig(size=4, placement="parallel", scaling=2.0)
    _perturbed(model, "a", config, 0, head=3)
    _perturbed(model, "b", ak.AdapterConfig(size=4, placement="parallel", scaling=2.0, init_std=0.0), 1, head=3)
    block = ak.Average("a", "b", weights=weights, normalize=normalize)
    w = {None: (0.5, 0.5), (1.0, 3.0): (0.25, 0.75), (0.2, -0.5): (0.2, -0.5)}[None if weights is None else tuple(weights)]
    assert block.weights == w
    ak.add_adapter(model, "avg", block)
    a, b, avg = (adapter_tensors(model, n) for n in ("a", "b", "avg"))
    assert set(avg) == set(a) and len(avg) > 8  # bottlenecks, layer-norm copies and the head
    for key in avg:
        assert torch.equal(avg[key], w[0] * a[key] + w[1] * b[key]), key
    assert get_state(model).configs["avg"] == config
    # an ordinary adapter: trains alone, saves and loads
    ak.set_active(model, "avg")
    assert torch.equal(reloaded_logits(model, "avg", tmp_path / "avg", inputs), logits(model, inputs))
    ak.remove_adapter(model, "a")
    assert torch.equal(adapter_tensors(model, "avg")[key], avg[key])  # owns its tensors


def test_average_refuses_adapters_of_different_shapes():
    model = tiny_model("bert")
    ak.add_adapter(model, "a", ak.AdapterConfig(size=4), head=2)
    ak.add_adapter(model, "b", ak.AdapterConfig(size=8), head=2)
    ak.add_adapter(model, "c", ak.AdapterConfig(size=4), head=3)
    for other in ("b", "c"):
        with pytest.raises(ValueError, match=f"'a' and '{other}' differ"):
            ak.add_adapter(model, "avg", ak.Average("a", other))
    with pytest.raises(ValueError, match="one finite weight per adapter"):
        ak.Average("a", "b", weights=[1.0])
    with pytest.raises(ValueError, match="sum to 0"):
        ak.Average("a", "b", weights=[1.0, -1.0])
    assert ak.list_adapters(model) == ["a", "b", "c"]


def test_average_on_minilm():
    from adapterkit.models import load_model

    model, tok = load_model("minilm", kind="classification", labels=["neg", "pos"])
    model.eval()
    for i, name in enumerate(("x", "y")):
        _perturbed(model, name, ak.AdapterConfig(size=8), i, head=2)
    ak.add_adapter(model, "xy", ak.Average("x", "y", weights=[0.3, 0.7]))
    x, y, xy = (adapter_tensors(model, n) for n in ("x", "y", "xy"))
    w = ak.Average("x", "y", weights=[0.3, 0.7]).weights
    assert w == pytest.approx((0.3, 0.7), abs=1e-15)
    assert all(torch.equal(xy[k], w[0] * x[k] + w[1] * y[k]) for k in xy)

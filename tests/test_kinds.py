"""The seam for adapter kinds (kinds.py): every registered kind works end to end, and a new kind needs no
change in the core. A new kind = one module + one ``AdapterKind`` registered + one row in ``KINDS`` below.

The toy kind here is defined in this file only: a gated bottleneck reading the FFN's input,
h + tanh(g) * f(x), g a learned scalar starting at 0 (so it starts as an exact identity)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import adapterkit as ak
from adapterkit import kinds
from adapterkit.model import adapter_modules, adapter_tensors, planned_tensors

from conftest import logits, reloaded_logits, tiny_inputs, tiny_model


class GatedBottleneck(nn.Module):
    """The toy kind's module: a bottleneck and a scalar gate."""

    def __init__(self, hidden_size: int, bottleneck_size: int, activation: str, init_std: float):
        super().__init__()
        self.bottleneck = ak.Bottleneck(hidden_size, bottleneck_size, activation, init_std)
        self.gate = nn.Parameter(torch.zeros(1))


class GatedKind(kinds.AdapterKind):
    name = "toy_gated"
    sublayers = ("ffn",)
    reads_input = True

    def build(self, config, hidden_size):
        return GatedBottleneck(hidden_size, config.bottleneck_size(hidden_size), config.activation, config.init_std)

    def combine(self, module, h, x, config):  # h, x: (..., d)
        return h + torch.tanh(module.gate) * module.bottleneck(x)


@pytest.fixture(autouse=True, scope="module")
def toy_kind():
    kind = kinds.register(GatedKind())
    yield kind
    kinds.unregister(kind.name)


# kind -> (modules per layer, tensors per module): one row per kind.
KINDS = {
    "houlsby": (2, 4),
    "pfeiffer": (1, 4),
    "parallel": (2, 4),
    "parallel_ffn": (1, 4),
    "toy_gated": (1, 5),
}


def test_every_registered_kind_has_a_row():
    assert set(kinds.names()) == set(KINDS)


def _perturb(model, name, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, holder in adapter_modules(model):
            if holder.role == "adapter":
                for p in holder.adapter_parameters(name):
                    p.add_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize("kind", KINDS)
def test_a_kind_end_to_end(kind, tmp_path):
    """add (an exact identity at init_std=0), forward, train, mixed batches, save/load, remove."""
    per_layer, tensors = KINDS[kind]
    model, inputs = tiny_model("bert"), tiny_inputs("bert")
    base = logits(model, inputs)
    config = ak.AdapterConfig(size=8, placement=kind, init_std=0.0)
    ak.add_adapter(model, "a", config)
    ak.set_active(model, "a")
    assert torch.equal(logits(model, inputs), base)  # the own head's copy and a zero branch: the base model
    holders = [h for _, h in adapter_modules(model) if h.role == "adapter" and "a" in h.adapters]
    assert len(holders) == 2 * per_layer  # 2 layers
    assert all(len(h.adapters["a"].state_dict()) == tensors for h in holders)
    assert planned_tensors(tiny_model("bert"), config) == {k: tuple(v.shape) for k, v in adapter_tensors(model, "a").items()}

    # training reaches every parameter of the kind's modules
    ak.train_adapter(model, "a")
    _perturb(model, "a")  # (a zero bottleneck would block the gradient of the toy's gate)
    model(**inputs).logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for h in holders for p in h.adapters["a"].parameters())
    model.eval()
    adapted = logits(model, inputs)
    assert not torch.allclose(adapted, base)

    # one name per row: each row as in its own pass
    ak.set_active(model, ["a", None, "a"])
    mixed = logits(model, inputs)
    torch.testing.assert_close(mixed[[0, 2]], adapted[[0, 2]], atol=1e-6, rtol=0)
    torch.testing.assert_close(mixed[1], base[1], atol=1e-6, rtol=0)

    # save / load into a fresh model: the same tensors, the same outputs
    assert torch.equal(reloaded_logits(model, "a", tmp_path / "a", inputs), adapted)
    assert ak.read_adapter_config(tmp_path / "a")["config"]["placement"] == kind

    ak.remove_adapter(model, "a")
    assert torch.equal(logits(model, inputs), base)
    assert not list(adapter_modules(model))


def test_kinds_mix_on_one_model():
    """Adapters of different kinds share holders (and the input hook) on one model."""
    model, inputs = tiny_model("bert"), tiny_inputs("bert")
    outputs = {}
    for i, kind in enumerate(KINDS):
        ak.add_adapter(model, kind, ak.AdapterConfig(size=4, placement=kind))
        _perturb(model, kind, seed=i)
        ak.set_active(model, kind)
        outputs[kind] = logits(model, inputs)
    for kind in KINDS:  # each unchanged by the others
        ak.set_active(model, kind)
        assert torch.equal(logits(model, inputs), outputs[kind])
    ak.remove_adapter(model, "toy_gated")
    for kind in ("parallel", "parallel_ffn"):  # then no kind reading the input remains: its hook is gone
        ak.remove_adapter(model, kind)
    assert all(h._capture_handle is None for _, h in adapter_modules(model) if h.role == "adapter")
    ak.set_active(model, "houlsby")
    assert torch.equal(logits(model, inputs), outputs["houlsby"])


def test_the_registry_refuses_what_it_cannot_use():
    with pytest.raises(ValueError, match="already registered"):
        kinds.register(GatedKind())
    bad = GatedKind()
    bad.name, bad.sublayers = "bad", ("cross_attention",)
    with pytest.raises(ValueError, match="sublayers"):
        kinds.register(bad)
    with pytest.raises(ak.AdapterConfigError, match="unknown placement 'nope'; choose one of houlsby, .*toy_gated"):
        ak.AdapterConfig(placement="nope")
    with pytest.raises(ak.AdapterConfigError, match="scaling applies to placement='parallel' or 'parallel_ffn' only"):
        ak.AdapterConfig(placement="toy_gated", scaling=2.0)


def test_an_adapter_of_an_unregistered_kind_does_not_load(tmp_path):
    model = tiny_model("bert")
    ak.add_adapter(model, "a", ak.AdapterConfig(size=4, placement="toy_gated"))
    ak.save_adapter(model, "a", tmp_path / "a")
    kinds.unregister("toy_gated")
    try:
        fresh = tiny_model("bert")
        with pytest.raises(ak.AdapterLoadError, match="unknown placement 'toy_gated'"):
            ak.load_adapter(fresh, tmp_path / "a")
        assert not list(adapter_modules(fresh))
        ak.set_active(model, "a")  # a model holding such an adapter keeps working
        logits(model, tiny_inputs("bert"))
    finally:
        kinds.register(GatedKind())


class ScaledBottleneck(nn.Module):
    """A module with a non-persistent buffer: not in its state dict, so a load cannot fill it."""

    def __init__(self, hidden_size: int, bottleneck_size: int):
        super().__init__()
        self.bottleneck = ak.Bottleneck(hidden_size, bottleneck_size, "relu", 1e-3)
        self.register_buffer("scale", torch.full((1,), 0.5), persistent=False)


class ScaledKind(kinds.AdapterKind):
    name = "toy_scaled"
    sublayers = ("ffn",)

    def build(self, config, hidden_size):
        return ScaledBottleneck(hidden_size, config.bottleneck_size(hidden_size))

    def combine(self, module, h, x, config):
        return h + module.scale * module.bottleneck(h)


def test_build_module_for_a_load_skips_the_random_init_but_never_leaves_a_tensor_unfilled():
    """A load builds from a meta-device prototype (no random init; the file fills every tensor), on the
    reference's device and dtype; a kind whose module holds a tensor outside its state dict is built as usual."""
    config = ak.AdapterConfig(size=8)
    like = torch.zeros(1, dtype=torch.float64)
    built = kinds.build_module(config.kind, config, 16, like=like)
    for_load = kinds.build_module(config.kind, config, 16, like=like, initialise=False)
    assert type(for_load) is type(built)
    assert {k: (v.shape, v.dtype, v.device) for k, v in for_load.state_dict().items()} == \
           {k: (v.shape, v.dtype, v.device) for k, v in built.state_dict().items()}
    assert all(v.dtype == torch.float64 for v in for_load.state_dict().values())
    for_load.load_state_dict(built.state_dict())
    h = torch.randn(2, 3, 16, dtype=torch.float64)
    assert torch.equal(config.kind.combine(for_load, h, None, config), config.kind.combine(built, h, None, config))
    assert kinds.build_module(config.kind, config, 16, like=like, initialise=False) is not for_load  # a copy each time

    scaled = ScaledKind()
    module = kinds.build_module(scaled, config, 16, like=like, initialise=False)
    assert torch.equal(module.scale, torch.full((1,), 0.5, dtype=torch.float64))  # built, not left empty

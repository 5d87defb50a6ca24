"""Every preset, on a tiny random model of the installed transformers release: modules found, identity at
init_std=0, exact parameter count, frozen base, no interference between adapters."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, logits, tiny_inputs, tiny_model
from torch import nn

import adapterkit as ak
from adapterkit.architectures import resolve
from adapterkit.bottleneck import bottleneck_parameter_count

ARCHS = sorted(TINY)


def test_every_preset_has_a_tiny_model_row():
    assert set(ak.PRESETS) == set(TINY)


@pytest.mark.parametrize("arch", ARCHS)
def test_preset_finds_its_modules(arch):
    model = tiny_model(arch)
    layers = resolve(model, ak.PRESETS[arch])
    expected = 4 if arch == "t5" else 2  # T5: 2 encoder + 2 decoder blocks
    assert len(layers) == expected
    for layer in layers:
        assert layer.attention_output is not layer.ffn_output
        assert all(isinstance(n, nn.Module) for n in layer.layer_norms)


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_init_is_bit_identical_and_default_init_is_close(arch):
    model, inputs = tiny_model(arch), tiny_inputs(arch)
    base = logits(model, inputs)
    ak.add_adapter(model, "zero", ak.AdapterConfig(size=8, init_std=0))
    ak.set_active(model, "zero")
    assert torch.equal(logits(model, inputs), base)
    ak.add_adapter(model, "near", ak.AdapterConfig(size=8))  # init_std 1e-3
    ak.set_active(model, "near")
    near = logits(model, inputs)
    # The head is a copy of the model's own, so any change comes from the near-identity adapters:
    # each adds |up(act(down(h)))| <~ d*m*std^2*|h|, i.e. ~1e-4 of h here. Bound: 1e-3 of the logits' scale.
    assert not torch.equal(near, base)
    assert (near - base).abs().max() <= 1e-3 * base.abs().max().clamp(min=1.0)
    ak.set_active(model, None)
    assert torch.equal(logits(model, inputs), base)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("placement,per_layer", [("houlsby", 2), ("pfeiffer", 1), ("parallel", 2), ("parallel_ffn", 1)])
def test_adapter_parameter_count_is_the_formula(arch, placement, per_layer):
    model = tiny_model(arch)
    ak.add_adapter(model, "a", ak.AdapterConfig(size=8, placement=placement))
    n_layers = 4 if arch == "t5" else 2
    counts = ak.adapter_summary(model)["a"]
    assert counts["adapter_params"] == n_layers * per_layer * bottleneck_parameter_count(32, 8)
    assert counts["base_params"] == sum(p.numel() for p in tiny_model(arch).parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_training_one_adapter_leaves_base_and_other_adapter_exact(arch):
    model, inputs = tiny_model(arch), tiny_inputs(arch)
    base_logits = logits(model, inputs)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    ak.add_adapter(model, "a", ak.AdapterConfig(size=8))
    ak.add_adapter(model, "b", ak.AdapterConfig(size=8, placement="parallel"))
    for name in ("a", "b"):
        _train_steps(model, name, inputs)
        if name == "a":
            ak.set_active(model, "a")
            model.eval()
            a_logits = logits(model, inputs)
    model.eval()
    ak.set_active(model, "a")
    assert torch.equal(logits(model, inputs), a_logits)  # B's training did not touch A
    ak.set_active(model, None)
    assert torch.equal(logits(model, inputs), base_logits)  # nor the base model
    for k, v in base_state.items():
        assert torch.equal(model.state_dict()[k], v), k


def _train_steps(model, name, inputs, steps=3):
    ak.train_adapter(model, name)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in ak.adapter_parameters(model, name)}
    before = [p.detach().clone() for p in trainable]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    for _ in range(steps):
        out = model(**inputs).logits
        loss = out.float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert any(not torch.equal(b, p) for b, p in zip(before, trainable)), "the adapter did not change"


def test_layers_subset_only_adapts_those_layers():
    model = tiny_model("bert", num_hidden_layers=4)
    ak.add_adapter(model, "top", ak.AdapterConfig(size=8, layers=(2, 3)))
    assert ak.adapter_summary(model)["top"]["adapter_params"] == 2 * 2 * bottleneck_parameter_count(32, 8)
    with pytest.raises(ak.AdapterConfigError, match="out of range"):
        ak.add_adapter(model, "bad", ak.AdapterConfig(layers=(4,)))
    assert ak.list_adapters(model) == ["top"]


def test_remove_adapter_restores_the_model_exactly():
    model, inputs = tiny_model("bert"), tiny_inputs("bert")
    keys, base = set(model.state_dict()), logits(model, inputs)
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    ak.add_adapter(model, "a", ak.AdapterConfig(size=8, init_std=1e-2, placement="parallel"))
    ak.set_active(model, "a")
    assert not torch.equal(logits(model, inputs), base)
    ak.remove_adapter(model, "a")
    assert set(model.state_dict()) == keys
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks
    assert ak.active_adapter(model) is None
    assert torch.equal(logits(model, inputs), base)


def test_unknown_architecture_lists_candidates_and_explicit_spec_works():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix, self.proj, self.fc, self.out = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 32), nn.Linear(32, 16)
            self.norm1, self.norm2 = nn.LayerNorm(16), nn.LayerNorm(16)

        def forward(self, x):
            x = self.norm1(x + self.proj(self.mix(x)))
            return self.norm2(x + self.out(torch.relu(self.fc(x))))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Block(), Block()])
            self.classifier = nn.Linear(16, 3)

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return self.classifier(x[:, 0])

    with pytest.raises(ak.ArchitectureError, match=r"blocks \(ModuleList of 2\).*blocks\.0\.proj"):
        ak.add_adapter(Net(), "a")
    spec = ak.ArchitectureSpec((ak.Stack("blocks", "proj", "out", "mix", "fc", ("norm1", "norm2")),))
    torch.manual_seed(0)
    net, x = Net(), torch.randn(2, 5, 16)
    base = net(x)
    ak.add_adapter(net, "a", ak.AdapterConfig(size=4, init_std=0), head=5, spec=spec)
    ak.set_active(net, "a")
    assert net(x).shape == (2, 5)
    assert ak.adapter_summary(net)["a"]["adapter_params"] == 2 * 2 * bottleneck_parameter_count(16, 4)
    ak.set_active(net, None)
    assert torch.equal(net(x), base)


def test_bad_names_and_duplicates_are_refused():
    model = tiny_model("bert")
    ak.add_adapter(model, "a")
    with pytest.raises(ValueError, match="already exists"):
        ak.add_adapter(model, "a")
    with pytest.raises(ValueError, match="adapter name"):
        ak.add_adapter(model, "a.b")
    with pytest.raises(KeyError, match="no adapter named 'x'"):
        ak.set_active(model, "x")
    with pytest.raises(ValueError, match="no task head"):
        ak.add_adapter(tiny_model("bert").base_model, "a", head=3)


def test_model_to_moves_adapters_and_copies_with_it():
    model, inputs = tiny_model("bert"), tiny_inputs("bert")
    ak.add_adapter(model, "a", ak.AdapterConfig(size=8, init_std=1e-2), head=3)
    ak.set_active(model, "a")
    expected = logits(model, inputs)
    model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in ak.adapter_parameters(model, "a"))
    assert torch.allclose(logits(model, inputs), expected.double(), atol=1e-6)


def test_active_head_sets_the_label_count_transformers_uses_for_its_loss():
    model, inputs = tiny_model("bert"), tiny_inputs("bert")
    ak.add_adapter(model, "three", head=ak.HeadConfig("classification", 3, labels=("a", "b", "c")))
    ak.add_adapter(model, "score", head="regression")
    ak.set_active(model, "three")
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"} and model.num_labels == 3
    assert model(**inputs, labels=torch.tensor([0, 1, 2])).loss.isfinite()
    ak.set_active(model, "score")
    assert model.config.problem_type == "regression"
    assert model(**inputs, labels=torch.tensor([0.5, 1.0, 2.0])).loss.isfinite()
    ak.set_active(model, None)
    assert model.num_labels == 2 and model.config.problem_type is None


def test_layer_norm_copies_swap_in_for_one_forward_and_always_swap_back():
    model, inputs = tiny_model("bert"), tiny_inputs("bert")
    norm = model.bert.encoder.layer[0].output.LayerNorm
    base_weight = norm.weight
    ak.add_adapter(model, "a", ak.AdapterConfig(size=8))
    with torch.no_grad():
        norm.adapters.adapters["a"].weight.mul_(2)
    ak.set_active(model, "a")
    swapped = logits(model, inputs)
    assert norm.weight is base_weight  # restored after the forward

    def fail(module, args):
        raise RuntimeError("boom")

    handle = norm.register_forward_pre_hook(fail)  # runs after the swap: the forward dies half-way
    with pytest.raises(RuntimeError, match="boom"):
        logits(model, inputs)
    handle.remove()
    assert norm.weight is not base_weight
    ak.set_active(model, None)
    assert torch.equal(logits(model, inputs), logits(tiny_model("bert"), inputs))  # next forward put base back
    assert norm.weight is base_weight
    ak.set_active(model, ["a", "a", "a"])  # the mixed path re-runs the copies: same numbers
    assert torch.allclose(logits(model, inputs), swapped, atol=1e-6)

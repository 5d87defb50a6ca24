"""AdapterFusion (fusion.py, fusion_io.py) on tiny random models: the formula at one site, identity-value
behaviour, frozen training, save/load, and the refusals. Parity with AdapterHub: tests/test_fusion_parity.py."""

from __future__ import annotations

import json

import pytest
import torch

import adapterkit as ak
from adapterkit.fusion import FusionLayer, fusion_parameters, fusion_tensors
from adapterkit.fusion_io import FUSION_CONFIG_FILE, FUSION_WEIGHTS_FILE, adapter_sha256

from conftest import logits, tiny_inputs, tiny_model
from test_composition import _perturbed

FUSE = ak.Fuse("a", "b", "c")


def _model(placement="houlsby", seed=0):
    model = tiny_model("bert", seed=seed)
    for i, n in enumerate(FUSE.names):
        _perturbed(model, n, ak.AdapterConfig(size=4, placement=placement), i)
    return model


def _site_io(model, inputs, holder):
    """The sublayer output h (before our hook) and the hooked output (after it) at ``holder``'s site."""
    seen = {}
    hooked = holder.dropout if "after_dropout" in holder.sites.values() else holder.projection
    handles = [hooked.register_forward_hook(lambda m, a, out: seen.setdefault("h", out), prepend=True),
               hooked.register_forward_hook(lambda m, a, out: seen.setdefault("out", out))]
    with torch.no_grad():
        model(**inputs)
    for handle in handles:
        handle.remove()
    return seen["h"], seen["out"]


def test_fusion_computes_adapterhubs_attention_at_each_site():
    model, inputs = _model(), tiny_inputs("bert")
    ak.add_fusion(model, FUSE)
    fusion_layers = [(p, h) for p, h in ak.model.adapter_modules(model) if getattr(h, "fusions", None)]
    assert len(fusion_layers) == 4  # houlsby: attention and FFN of 2 layers
    holder = model.bert.encoder.layer[1].output.dense.adapters
    layer = holder.fusions["a,b,c"]
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn(p.shape) * 0.3)
    ak.set_active(model, FUSE)
    h, out = _site_io(model, inputs, holder)
    with torch.no_grad():
        u = torch.stack([holder.adapters[n](h) for n in FUSE.names], dim=2)  # (B, T, 3, d)
        q = layer.query(h)  # (B, T, d)
        k, v = layer.key(u), layer.value(u)  # (B, T, 3, d)
        p = torch.softmax(torch.einsum("btd,btnd->btn", q, k), dim=-1)
        expected = h + torch.einsum("btn,btnd->btd", p, v)
    assert (out - expected).abs().max() < 1e-5
    assert ak.active_adapter(model) == FUSE


def test_identity_value_gives_h_plus_a_convex_combination_and_one_adapter_fuses_to_itself():
    model, inputs = _model(), tiny_inputs("bert")
    solo = ak.Fuse("a", name="solo")  # the default name "a" is the adapter's: refused
    ak.add_fusion(model, solo)
    holder = model.bert.encoder.layer[0].output.dense.adapters
    w = holder.fusions["solo"].value.weight  # AdapterHub's init: I, and 1e-6 off the diagonal
    assert torch.equal(w, torch.full((32, 32), 1e-6).fill_diagonal_(1.0))
    ak.add_fusion(model, FUSE)
    with torch.no_grad():  # exact identity: the fused output is h + sum_i p_i f_i(h) with p on the simplex
        for _, hold in ak.model.adapter_modules(model):
            for layer in getattr(hold, "fusions", {}).values():
                layer.value.weight.copy_(torch.eye(32))
    ak.set_active(model, FUSE)
    h, out = _site_io(model, inputs, holder)
    with torch.no_grad():
        u = torch.stack([holder.adapters[n](h) for n in FUSE.names], dim=2)
        delta = out - h  # (B, T, d) = u^T p
        # p per token by least squares from the d = 32 features: it is a probability vector
        p = torch.linalg.lstsq(u.transpose(-1, -2), delta.unsqueeze(-1)).solution.squeeze(-1)  # (B, T, 3)
    assert (p.sum(-1) - 1).abs().max() < 1e-4 and p.min() > -1e-4
    # a fusion of one adapter with W_v = I is that adapter (its layer norms, the fusion's head aside)
    ak.set_active(model, solo)
    h1, out1 = _site_io(model, inputs, holder)
    with torch.no_grad():
        single = h1 + holder.adapters["a"](h1)
    assert torch.equal(out1, single)  # softmax over one adapter is exactly 1, W_v exactly I
    ak.set_active(model, "a")
    h2, out2 = _site_io(model, inputs, holder)
    assert torch.equal(h1, h2) and (out1 - out2).abs().max() < 1e-4


def test_training_a_fusion_leaves_adapters_and_base_bit_identical():
    model, inputs = _model(), tiny_inputs("bert")
    ak.add_fusion(model, FUSE, head=3)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    trained = {id(p) for p in fusion_parameters(model, FUSE)}
    ak.train_fusion(model, FUSE)
    assert {id(p) for p in model.parameters() if p.requires_grad} == trained
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.tensor([0, 1, 2])
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(**inputs).logits, labels)
        loss = loss + ak.fusion_regularization_loss(model, FUSE)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, frozen[n])}
    names = {n for n, p in model.named_parameters() if id(p) in trained}
    assert changed and changed <= names
    assert any(".fusions.a,b,c.value" in n for n in changed) and any("classifier" in n for n in changed)
    assert logits(model, inputs).shape == (3, 3)
    with ak.use_adapter(model, "a"):  # each adapter's own head is untouched (2 labels)
        assert logits(model, inputs).shape == (3, 2)


def test_regularization_is_adapterhubs_value_penalty():
    model = _model()
    ak.add_fusion(model, FUSE)
    ak.train_fusion(model, FUSE)
    reg = ak.fusion_regularization_loss(model, FUSE)
    assert reg.item() == pytest.approx(4 * 0.01 * (32 * 32 - 32) * 1e-12, rel=1e-3)
    ak.add_fusion(model, ak.Fuse("a", "b", name="static"), config="static")
    assert ak.fusion_regularization_loss(model, "static") is None
    assert not hasattr(model.bert.encoder.layer[0].output.dense.adapters.fusions["static"], "value")


def test_fusion_saves_and_loads_to_identical_logits(tmp_path):
    model, inputs = _model(), tiny_inputs("bert")
    ak.add_fusion(model, FUSE, head=3)
    with torch.no_grad():
        for p in fusion_parameters(model, FUSE):
            p.add_(torch.randn(p.shape) * 0.1)
    ak.set_active(model, FUSE)
    expected = logits(model, inputs)
    for n in FUSE.names:
        ak.save_adapter(model, n, tmp_path / n)
    ak.save_fusion(model, FUSE, tmp_path / "fusion")
    meta = json.loads((tmp_path / "fusion" / FUSION_CONFIG_FILE).read_text())
    assert meta["adapters"] == ["a", "b", "c"]
    for n in FUSE.names:  # the recorded hash is the fused adapter file's
        assert meta["adapter_sha256"][n] == json.loads((tmp_path / n / "adapter_config.json").read_text())["files"]["adapter_model.safetensors"]
    assert sorted(p.name for p in (tmp_path / "fusion").iterdir()) == [FUSION_CONFIG_FILE, FUSION_WEIGHTS_FILE]
    fresh = tiny_model("bert")
    for n in FUSE.names:
        ak.load_adapter(fresh, tmp_path / n)
    block = ak.load_fusion(fresh, tmp_path / "fusion")
    assert block == FUSE
    ak.set_active(fresh, block)
    assert torch.equal(logits(fresh, inputs), expected)
    assert set(fusion_tensors(fresh, FUSE)) == set(fusion_tensors(model, FUSE))
    ak.save_fusion(model, FUSE, tmp_path / "fusion")  # a fusion directory may be re-saved in place


def test_load_refuses_missing_or_changed_adapters_and_damaged_files(tmp_path):
    model = _model()
    ak.add_fusion(model, FUSE)
    for n in FUSE.names:
        ak.save_adapter(model, n, tmp_path / n)
    ak.save_fusion(model, FUSE, tmp_path / "fusion")
    fresh = tiny_model("bert")
    ak.load_adapter(fresh, tmp_path / "a")
    with pytest.raises(ak.AdapterLoadError, match=r"fuses adapters \['a', 'b', 'c'\], and this model lacks \['b', 'c'\]; load them first"):
        ak.load_fusion(fresh, tmp_path / "fusion")
    ak.load_adapter(fresh, tmp_path / "b")
    ak.load_adapter(fresh, tmp_path / "a", name="c")  # the wrong adapter under the right name
    with pytest.raises(ak.AdapterLoadError, match=r"adapter\(s\) \['c'\] differ from those the fusion was trained over"):
        ak.load_fusion(fresh, tmp_path / "fusion")
    assert ak.list_fusions(fresh) == []
    ak.remove_adapter(fresh, "c")
    ak.load_adapter(fresh, tmp_path / "c")
    weights = tmp_path / "fusion" / FUSION_WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ak.AdapterLoadError, match="corrupted"):
        ak.load_fusion(fresh, tmp_path / "fusion")
    assert ak.list_fusions(fresh) == [] and not any(getattr(h, "fusions", None) for _, h in ak.model.adapter_modules(fresh))
    other = tiny_model("bert", seed=5)
    for n in FUSE.names:
        ak.load_adapter(other, tmp_path / n, check_base=False)
    ak.save_fusion(model, FUSE, tmp_path / "fusion")
    with pytest.raises(ak.AdapterLoadError, match="different base model"):
        ak.load_fusion(other, tmp_path / "fusion")
    with pytest.raises(FileExistsError, match="not a fusion directory"):
        ak.save_fusion(model, FUSE, tmp_path / "a")
    assert adapter_sha256(model, "a") == adapter_sha256(fresh, "a")


def test_bad_fusions_are_refused_and_leave_the_model_as_it_was():
    model = _model()
    _perturbed(model, "p", ak.AdapterConfig(size=4, placement="parallel"), 7)
    _perturbed(model, "f", ak.AdapterConfig(size=4, placement="pfeiffer"), 8)
    _perturbed(model, "l", ak.AdapterConfig(size=4, layers=(1,)), 9)
    before = {n for n, _ in model.named_parameters()}
    with pytest.raises(ValueError, match="'p' is a parallel adapter; AdapterFusion fuses serial"):
        ak.add_fusion(model, ak.Fuse("a", "p"))
    with pytest.raises(ValueError, match="'a' and 'f' sit at different sites"):
        ak.add_fusion(model, ak.Fuse("a", "f"))
    with pytest.raises(ValueError, match="'a' and 'l' sit at different sites"):
        ak.add_fusion(model, ak.Fuse("a", "l"))
    with pytest.raises(KeyError, match="no adapter named 'nope'"):
        ak.add_fusion(model, ak.Fuse("a", "nope"))
    with pytest.raises(ValueError, match="names an adapter"):
        ak.add_fusion(model, ak.Fuse("a", "b", name="c"))
    with pytest.raises(ValueError, match="unknown field"):
        ak.add_fusion(model, FUSE, config={"temperature": True})
    with pytest.raises(ValueError, match="an adapter may appear once"):
        ak.Fuse("a", "a")
    with pytest.raises(KeyError, match="no fusion Fuse\\('a', 'b', 'c'\\) on this model"):
        ak.set_active(model, FUSE)
    assert {n for n, _ in model.named_parameters()} == before and ak.list_fusions(model) == []
    ak.add_fusion(model, FUSE)
    with pytest.raises(ValueError, match="exists"):
        ak.add_fusion(model, FUSE)
    with pytest.raises(ValueError, match="adapter 'b' is fused by 'a,b,c'; remove_fusion"):
        ak.remove_adapter(model, "b")
    ak.set_active(model, FUSE)
    ak.remove_fusion(model, FUSE)
    assert ak.active_adapter(model) is None and {n for n, _ in model.named_parameters()} == before
    ak.remove_adapter(model, "b")


def test_fusion_layer_options_follow_adapterhub():
    """residual_before adds h to keys and values (not the output); value after the softmax is the same maths."""
    torch.manual_seed(0)
    h, u = torch.randn(2, 5, 8), torch.randn(2, 5, 3, 8)
    before = FusionLayer(ak.FusionConfig(residual_before=True), 8, 0.0)
    after = FusionLayer(ak.FusionConfig(), 8, 0.0)
    late = FusionLayer(ak.FusionConfig(value_before_softmax=False), 8, 0.0)
    late.load_state_dict(after.state_dict())
    before.load_state_dict(after.state_dict())
    with torch.no_grad():
        assert torch.allclose(before(h, u, h), after(h, u + h[:, :, None], torch.zeros_like(h)), atol=1e-6)
        assert torch.allclose(late(h, u, h), after(h, u, h), atol=1e-6)

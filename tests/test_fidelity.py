"""Training-mode fidelity to adapter-bert / AdapterHub: where the sublayer has a dropout after its output
projection, the adapter reads the dropped-out tensor, ``LN(x + drop(h) + f(drop(h)))`` (adapter-bert's
``modeling.py``: dense -> dropout -> adapter -> layer_norm(out + input)); the tanh GELU; the embedding norm."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, logits, tiny_inputs, tiny_model
from torch import nn

import adapterkit as ak
from adapterkit.architectures import resolve

# Presets whose spec names a dropout after each output projection (the others: see architectures.py).
WITH_DROPOUT = {"bert", "roberta", "xlm-roberta", "electra", "deberta-v2", "mpnet", "gpt2", "t5"}


def _bert(placement, scaling=1.0):
    # attention-prob dropout off: the output dropout is the only draw from the generator in a sublayer
    model = tiny_model("bert", hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.0)
    ak.add_adapter(model, "a", ak.AdapterConfig(size=4, init_std=0.1, placement=placement, scaling=scaling, site="after_dropout"))
    ak.train_adapter(model, "a")
    return model, model.bert.encoder.layer[0]


def _out(result):
    return result[0] if isinstance(result, tuple) else result


@pytest.mark.parametrize("placement,scaling", [("houlsby", 1.0), ("parallel", 2.0)])
def test_attention_sublayer_in_training_is_the_reference_formula_with_fixed_dropout_masks(placement, scaling):
    model, layer = _bert(placement, scaling)
    out = layer.attention.output  # BertSelfOutput: dense -> dropout -> LayerNorm(. + input)
    f, norm = out.dense.adapters.adapters["a"], out.LayerNorm.adapters.adapters["a"]
    x = torch.randn(3, 5, 32)
    torch.manual_seed(7)
    got = _out(layer.attention(x))
    with torch.no_grad():
        h = out.dense(_out(layer.attention.self(x)))  # adapters inactive below the output: same h
        torch.manual_seed(7)
        dropped = nn.functional.dropout(h, p=0.3, training=True)  # the same mask
        branch = f(dropped) if placement == "houlsby" else scaling * f(x)
        expected = norm(dropped + branch + x)  # adapter-bert / AdapterHub
        torch.manual_seed(7)
        old = norm(nn.functional.dropout(h + (f(h) if placement == "houlsby" else scaling * f(x)), p=0.3, training=True) + x)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(got, old, atol=1e-3)


def test_ffn_sublayer_in_training_is_the_reference_formula_with_fixed_dropout_masks():
    model, layer = _bert("houlsby")
    out = layer.output  # BertOutput: dense -> dropout -> LayerNorm(. + input)
    f, norm = out.dense.adapters.adapters["a"], out.LayerNorm.adapters.adapters["a"]
    inter, x = torch.randn(2, 4, 64), torch.randn(2, 4, 32)
    torch.manual_seed(11)
    got = out(inter, x)
    with torch.no_grad():
        torch.manual_seed(11)
        dropped = nn.functional.dropout(out.dense(inter), p=0.3, training=True)
        expected = norm(dropped + f(dropped) + x)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("arch", sorted(TINY))
def test_serial_adapter_reads_the_dropped_out_tensor_in_training(arch):
    model = tiny_model(arch)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.5
    ak.add_adapter(model, "a", ak.AdapterConfig(size=4, site="after_dropout"))
    ak.train_adapter(model, "a")
    seen = []
    hooks = [b.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
             for _, h in ak.model.adapter_modules(model) if h.role == "adapter" for b in h.adapters.values()]
    inputs = tiny_inputs(arch)
    torch.manual_seed(0)
    model(**inputs)
    for h in hooks:
        h.remove()
    assert seen
    zero_share = min(float((t == 0).float().mean()) for t in seen)
    if arch in WITH_DROPOUT:  # about half of every adapter input was dropped (exact zeros)
        assert 0.3 < zero_share < 0.7, zero_share
    else:
        assert zero_share < 0.05, zero_share
    # and in eval mode both orders are the same: the site is invisible
    model.eval()
    layers = resolve(model, ak.PRESETS[arch])
    assert all((lay.attention_site is lay.attention_output) == (arch not in WITH_DROPOUT) for lay in layers
               if arch != "distilbert")


def test_before_dropout_site_is_the_first_recipe_in_training():
    """site="before_dropout": LN(x + drop(h + f(h))), with the same fixed dropout mask."""
    model = tiny_model("bert", hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.0)
    ak.add_adapter(model, "a", ak.AdapterConfig(size=4, init_std=0.1, site="before_dropout"))
    ak.train_adapter(model, "a")
    out = model.bert.encoder.layer[0].output
    f, norm = out.dense.adapters.adapters["a"], out.LayerNorm.adapters.adapters["a"]
    inter, x = torch.randn(2, 4, 64), torch.randn(2, 4, 32)
    torch.manual_seed(11)
    got = out(inter, x)
    with torch.no_grad():
        h = nn.functional.linear(inter, out.dense.weight, out.dense.bias)  # the projection alone (its hook adds f)
        torch.manual_seed(11)
        expected = norm(nn.functional.dropout(h + f(h), p=0.3, training=True) + x)
    assert torch.equal(got, expected)


def test_spec_without_dropout_keeps_the_adapter_on_the_projection():
    spec = ak.PRESETS["bert"]
    plain = ak.ArchitectureSpec(tuple(ak.Stack(s.layers, s.attention_output, s.ffn_output, s.attention_input,
                                                s.ffn_input, s.layer_norms) for s in spec.stacks))
    model = tiny_model("bert", hidden_dropout_prob=0.5)
    ak.add_adapter(model, "a", ak.AdapterConfig(size=4, site="after_dropout"), spec=plain)
    ak.train_adapter(model, "a")
    seen = []
    b = model.bert.encoder.layer[0].attention.output.dense.adapters.adapters["a"]
    b.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    model(**tiny_inputs("bert"))
    assert float((seen[0] == 0).float().mean()) < 0.05


def test_eval_outputs_do_not_depend_on_the_site():
    """Eval mode: the dropout is the identity, so hooking it or the projection gives the same logits."""
    spec = ak.PRESETS["bert"]
    plain = ak.ArchitectureSpec(tuple(ak.Stack(s.layers, s.attention_output, s.ffn_output, s.attention_input,
                                                s.ffn_input, s.layer_norms) for s in spec.stacks), pooler=spec.pooler)
    a, b = tiny_model("bert"), tiny_model("bert")
    inputs = tiny_inputs("bert")
    for model, sp in ((a, spec), (b, plain)):
        torch.manual_seed(1)
        ak.add_adapter(model, "t", ak.AdapterConfig(size=8, init_std=0.05, site="after_dropout"), spec=sp)
        ak.set_active(model, "t")
    assert torch.equal(logits(a, inputs), logits(b, inputs))


def test_gelu_new_is_the_tanh_approximation_and_the_default():
    assert ak.AdapterConfig().activation == "gelu_new"
    x = torch.linspace(-4, 4, 101)
    for name in ("gelu_new", "gelu_pytorch_tanh"):
        b = ak.Bottleneck(1, 1, name, 0.0)
        expected = 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x ** 3)))  # adapter-bert's gelu
        assert torch.allclose(b.act(x), expected, atol=1e-6)
    assert not torch.allclose(ak.Bottleneck(1, 1, "gelu", 0.0).act(x), expected, atol=1e-6)


def test_embedding_norm_copy_is_trained_and_the_base_norm_is_not():
    model, inputs = tiny_model("bert"), tiny_inputs("bert")
    base = logits(model, inputs)
    ak.add_adapter(model, "a", ak.AdapterConfig(size=4, train_embedding_norm=True))
    counts = ak.adapter_summary(model)["a"]
    assert counts["layer_norm_params"] == (2 * 2 + 1) * 2 * 32  # 2 layers x 2 norms + the embedding norm
    norm = model.bert.embeddings.LayerNorm
    before = norm.weight.detach().clone()
    ak.train_adapter(model, "a")
    opt = torch.optim.SGD(list(ak.adapter_parameters(model, "a")), lr=0.1)
    model(**inputs).logits.sum().backward()
    opt.step()
    copy = norm.adapters.adapters["a"]
    assert not torch.equal(copy.weight, before)
    assert torch.equal(norm.weight, before)
    model.eval()
    ak.set_active(model, None)
    assert torch.equal(logits(model, inputs), base)


def test_embedding_norm_on_a_model_without_one_is_a_clear_error():
    with pytest.raises(ValueError, match="no embedding layer norm"):
        ak.add_adapter(tiny_model("gpt2"), "a", ak.AdapterConfig(train_embedding_norm=True))


def test_embedding_norm_round_trips_through_save_and_load(tmp_path):
    model, inputs = tiny_model("bert"), tiny_inputs("bert")
    ak.add_adapter(model, "a", ak.AdapterConfig(size=4, train_embedding_norm=True))
    with torch.no_grad():
        model.bert.embeddings.LayerNorm.adapters.adapters["a"].weight.mul_(1.5)
    ak.set_active(model, "a")
    expected = logits(model, inputs)
    ak.save_adapter(model, "a", tmp_path / "a")
    other = tiny_model("bert")
    ak.load_adapter(other, tmp_path / "a")
    ak.set_active(other, "a")
    assert torch.equal(logits(other, inputs), expected)

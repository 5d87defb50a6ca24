"""Which parameters each method trains (and that nothing else gets optimiser state)."""

from __future__ import annotations

import pytest
import torch

import adapterkit as ak
from adapterkit.methods import MethodConfig, MethodError, count_parameters, prepare
from adapterkit.model import adapter_modules

from train_helpers import bert_config


def tiny_model():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(bert_config(vocab_size=100, num_labels=2))


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_adapter_trains_adapter_layer_norms_and_head_only():
    model = tiny_model()
    params = prepare(model, MethodConfig("adapter", adapter_size=8), "classification", ["a", "b"])
    names = trainable_names(model)
    assert names and all(".adapters.task." in n for n in names)
    assert {id(p) for p in params} == {id(p) for p in ak.adapter_parameters(model, "task")}
    summary = ak.adapter_summary(model)["task"]
    assert count_parameters(model)["trainable_params"] == summary["trainable_params"]
    assert summary["adapter_params"] == 2 * 2 * (2 * 8 * 32 + 32 + 8)


def test_train_pooler_gives_the_head_its_own_pooler_copy_else_it_shares_the_frozen_one():
    """BERT's classifier reads the pooler (dense + tanh on [CLS]): train_pooler=True gives the adapter's head
    its own trainable copy of it; by default it uses the model's pooler, frozen. The base pooler never trains."""
    d = 32
    for train_pooler, extra in ((True, d * d + d), (False, 0)):
        model = tiny_model()
        base_pooler = {k: v.clone() for k, v in model.bert.pooler.state_dict().items()}
        prepare(model, MethodConfig("adapter", adapter_size=8, train_pooler=train_pooler), "classification", ["a", "b"])
        assert ak.adapter_summary(model)["task"]["head_params"] == extra + d * 2 + 2
        assert any(n.startswith("bert.pooler.adapters.") for n in trainable_names(model)) == train_pooler
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
        model(torch.randint(0, 100, (2, 7))).logits.sum().backward()
        opt.step()
        assert all(torch.equal(v, base_pooler[k]) for k, v in model.bert.pooler.state_dict().items()
                   if ".adapters." not in k)


@pytest.mark.parametrize("method", ["ln", "head"])
def test_ln_and_head_keep_an_exact_identity_bottleneck(method):
    model = tiny_model()
    x = torch.randint(0, 100, (2, 7))
    prepare(model, MethodConfig(method), "classification", ["a", "b"])
    roles = {}
    for _, holder in adapter_modules(model):
        for p in holder.adapter_parameters("task"):
            roles.setdefault(holder.role, []).append(p)
    assert not any(p.requires_grad for p in roles["adapter"])
    assert all(torch.count_nonzero(p) == 0 for p in roles["adapter"])  # h + 0 == h exactly
    assert all(p.requires_grad for p in roles["head"])
    if method == "ln":
        assert roles["layer_norm"] and all(p.requires_grad for p in roles["layer_norm"])
    else:
        assert "layer_norm" not in roles
    # With the new output layer replaced by the base one (the pooler copy starts as the base pooler), the
    # model equals the base model bit for bit.
    with torch.no_grad():
        model.eval()
        for _, holder in adapter_modules(model):
            if holder.role == "head" and isinstance(holder.adapters["task"], torch.nn.Linear):
                holder.adapters["task"].weight.copy_(model.classifier.weight)
                holder.adapters["task"].bias.copy_(model.classifier.bias)
        adapted = model(x).logits
        ak.set_active(model, None)
        assert torch.equal(adapted, model(x).logits)


def test_top_k_trains_top_layers_and_above():
    model = tiny_model()
    prepare(model, MethodConfig("top-k", top_layers=1), "classification", ["a", "b"])
    names = trainable_names(model)
    assert any(n.startswith("bert.encoder.layer.1.") for n in names)
    assert not any(n.startswith("bert.encoder.layer.0.") or "embeddings" in n for n in names)
    assert {"classifier.weight", "bert.pooler.dense.weight"} <= names
    with pytest.raises(MethodError, match="between 1 and 2"):
        prepare(tiny_model(), MethodConfig("top-k", top_layers=3), "classification", ["a", "b"])


def test_full_trains_everything():
    model = tiny_model()
    params = prepare(model, MethodConfig("full"), "classification", ["a", "b"])
    assert len(params) == len(list(model.parameters()))
    assert count_parameters(model)["trainable_pct"] == 100.0


def test_optimizer_state_only_for_trainable():
    model = tiny_model()
    params = prepare(model, MethodConfig("adapter", adapter_size=4), "classification", ["a", "b"])
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    model(torch.randint(0, 100, (2, 5))).logits.sum().backward()
    optimizer.step()
    assert len(optimizer.state) == len(params) < len(list(model.parameters())) / 2


def test_unknown_method():
    with pytest.raises(MethodError, match="prefix"):
        MethodConfig("prefix")


@pytest.mark.parametrize("method", ["adapter", "full"])
def test_regression_output_starts_at_the_mean_label(method):
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(bert_config(vocab_size=100, num_labels=1))
    prepare(model, MethodConfig(method), "regression", None, label_mean=2.7)
    model.eval()
    out = model(torch.randint(0, 100, (4, 6))).logits
    assert torch.allclose(out.mean(), torch.tensor(2.7), atol=0.3)

"""Mixed batches through RMS norm copies (Llama-style): one normalisation, per-row weights (issue 15).

LlamaRMSNorm computes ``weight * normalise(x).to(dtype)``; the fast path runs the module's own forward with a
weight of ones (an exact multiply by 1) and multiplies by each row's weight, the same operations in the same
order, so a norm's output on mixed rows equals each adapter's copy alone bit for bit."""

from __future__ import annotations

import torch
from torch import nn

import adapterkit as ak
from adapterkit.copies import ModuleCopies
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from conftest import assert_rows_match_alone, spy_taken, tiny_model

NAMES = ["a", "a", "b", "b", "b", None, "c"]  # sorted by adapter: contiguous groups (slices)


def llama_with_adapters(dtype=torch.float32):
    model = tiny_model("llama").to(dtype)
    for i, name in enumerate("abc"):
        ak.add_adapter(model, name, ak.AdapterConfig(size=4, train_layer_norms=True))
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in ak.adapter_parameters(model, name):  # norm copies start as the base's: make them differ
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
    return model


def norm_copies(model) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(getattr(m, "adapters", None), ModuleCopies)
            and m.adapters.role == "layer_norm"]


def spy(monkeypatch) -> list[bool]:
    return spy_taken(monkeypatch, ModuleCopies, "_mixed_rms_norm")


def test_rms_norm_rows_equal_each_adapter_alone(monkeypatch):
    model = llama_with_adapters()
    norms = norm_copies(model)
    assert norms and all(type(n).__name__ == "LlamaRMSNorm" for n in norms)
    taken = spy(monkeypatch)
    x = torch.randn(len(NAMES), 5, model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    for norm in norms:
        with torch.inference_mode():
            with ak.use_adapter(model, NAMES):
                mixed = norm(x)
            for name in dict.fromkeys(NAMES):
                rows = [i for i, n in enumerate(NAMES) if n == name]
                with ak.use_adapter(model, name):
                    alone = norm(x[rows])
                assert torch.equal(mixed[rows], alone), name
    assert taken == [True] * len(norms)


def test_mixed_logits_match_alone_through_the_fast_path(monkeypatch):
    """End to end (float64): rows of a mixed batch match each adapter's run alone; every norm took the fast
    path. Tolerance, not equality: attention and matmuls run on different batch sizes."""
    model = llama_with_adapters(torch.float64)
    taken = spy(monkeypatch)
    assert_rows_match_alone(model, NAMES, seed=4, atol=1e-10)
    assert taken and all(taken)


class OnePlusWeightRMSNorm(LlamaRMSNorm):
    """Gemma-style: output = normalise(x) * (1 + weight); not ``weight * f(x)``, so no fast path."""

    def forward(self, x):
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return (normed * (1.0 + self.weight.float())).to(x.dtype)


def test_norm_not_scaling_with_its_weight_falls_back(monkeypatch):
    model = tiny_model("llama")
    for layer in model.model.layers:  # Gemma-style norms, in place before the adapters are added
        layer.input_layernorm.__class__ = OnePlusWeightRMSNorm
    for name in "ab":
        ak.add_adapter(model, name, ak.AdapterConfig(size=4, train_layer_norms=True))
        with torch.no_grad():
            for p in ak.adapter_parameters(model, name):
                p.add_(0.1 if name == "a" else -0.1)
    taken = spy(monkeypatch)
    names = ["a", "a", "b"]
    assert_rows_match_alone(model, names, seed=5, atol=1e-5)
    refused = [layer.input_layernorm.adapters._rms_scales for layer in model.model.layers]
    accepted = [layer.post_attention_layernorm.adapters._rms_scales for layer in model.model.layers]
    assert refused == [False, False] and accepted == [True, True]
    assert taken.count(False) == 2 and taken.count(True) == 2

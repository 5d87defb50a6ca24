"""The stacked path for mixed batches (adapterkit/stacked.py): one batched matmul per bottleneck site over the
stacked weights of the batch's adapters, at inference, for rows of few tokens (decode steps).

It must give what each row gives alone (tolerances where the batch sizes differ; greedy tokens identical), fall
back to the grouped path for what it does not cover, and never serve stale weights: a cache built before an
in-place update, a training step, a reload or a remove/add is rebuilt."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from conftest import assert_rows_match_alone, spy_taken
from gen_helpers import add_lm_adapters, reference, tiny_llama, tiny_tokenizer

import adapterkit as ak
from adapterkit.composition import Stack
from adapterkit.copies import ModuleCopies
from adapterkit.layers import BottleneckLayer
from adapterkit.stacked import StackedSites, worth_stacking

NAMES = ["a", "a", "b", None, "c", "c", "c"]  # sorted by adapter; "c" has another size, None the base model


def spy(monkeypatch) -> list[bool]:
    """Whether each stacked-path attempt ran (True) or handed the site back to the grouped path (False)."""
    return spy_taken(monkeypatch, StackedSites, "apply")


def model_with(dtype=torch.float32, configs=None):
    tok = tiny_tokenizer()
    model = tiny_llama(tok, dtype=dtype)
    configs = configs or {"a": ak.AdapterConfig(size=8), "b": ak.AdapterConfig(size=8), "c": ak.AdapterConfig(size=4)}
    for i, (name, config) in enumerate(configs.items()):
        ak.add_adapter(model, name, config)
        perturb(model, name, seed=i)
    return model, tok


def perturb(model, name: str, seed: int, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ak.adapter_parameters(model, name):
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def rows_vs_alone(model, names, tokens: int = 1, seed: int = 0, atol: float = 1e-5) -> None:
    """A mixed forward of ``tokens`` tokens per row against each row alone with its adapter."""
    assert_rows_match_alone(model, names, seed, atol, tokens=tokens, vocab=250)


def test_decode_shaped_rows_take_the_stacked_path_and_match_alone(monkeypatch):
    model, _ = model_with(torch.float64)
    taken = spy(monkeypatch)
    rows_vs_alone(model, NAMES, tokens=1, atol=1e-12)
    rows_vs_alone(model, NAMES, tokens=5, seed=1, atol=1e-12)  # a short prefill stacks too
    assert taken and all(taken)  # every site, padded sizes (8 and 4) and a base row included


def test_same_sizes_without_base_rows_are_one_view_and_bit_exact(monkeypatch):
    """Every row has an adapter and the groups are equal: the batch is the (G, R*T, d) layout as it is; in fp64
    the stacked matmuls give the grouped path's values bit for bit."""
    model, _ = model_with(torch.float64)
    names = ["a", "a", "b", "b"]
    ids = torch.randint(3, 250, (4, 1), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        with ak.use_adapter(model, names):
            stacked = model(input_ids=ids).logits
        monkeypatch.setattr(StackedSites, "apply", lambda self, *a: None)
        with ak.use_adapter(model, names):
            grouped = model(input_ids=ids).logits
    assert torch.equal(stacked, grouped)


def test_greedy_generation_fp32_matches_each_prompt_alone(monkeypatch):
    """The acceptance (issue 15) in fp32, where the stacked matmuls may round differently from the grouped
    ones in the last bit: greedy tokens stay those of each prompt alone with transformers' ``generate``."""
    tok = tiny_tokenizer()
    model = tiny_llama(tok, dtype=torch.float32)
    add_lm_adapters(model, ["a", "b", "c", "d"])
    taken = spy(monkeypatch)
    prompts = ["hello there, how are", "the cat", "once upon a time there was a dog and", "count",
               "write a haiku about", "the rain in spring", "one two", "the mat"]
    adapters = ["a", "b", None, "c", "d", "a", "b", "c"]
    out = ak.generate_mixed(model, tok, prompts, adapters, max_new_tokens=8, return_ids=True)
    refs = [reference(model, tok, tok(p)["input_ids"], a, 8) for p, a in zip(prompts, adapters)]
    assert out == refs
    assert taken and all(taken)


def test_parallel_kind_with_scaling_stacks():
    model, _ = model_with(configs={"p": ak.AdapterConfig(size=8, placement="parallel", scaling=2.0),
                                   "q": ak.AdapterConfig(size=8, placement="parallel", scaling=0.5)})
    rows_vs_alone(model, ["p", "q", None, "q"], atol=1e-5)


def test_what_the_stacked_path_does_not_cover_falls_back(monkeypatch):
    # serial and parallel kinds at one site read different inputs; "g" has another activation
    model, _ = model_with(configs={"a": ak.AdapterConfig(size=8), "p": ak.AdapterConfig(size=8, placement="parallel"),
                                   "g": ak.AdapterConfig(size=8, activation="relu")})
    taken = spy(monkeypatch)
    rows_vs_alone(model, ["a", "p"])
    rows_vs_alone(model, ["a", "g"])
    assert taken and not any(taken)
    taken.clear()
    with torch.inference_mode():  # a Stack row
        ids = torch.randint(3, 250, (2, 1), generator=torch.Generator().manual_seed(0))
        with ak.use_adapter(model, [Stack("a", "g"), "a"]):
            model(input_ids=ids)
    assert taken and not any(taken)
    taken.clear()
    rows_vs_alone(model, ["a", "g"], tokens=100)  # long rows: grouped measured as fast
    assert not worth_stacking(2, 100, 2) and worth_stacking(8, 1, 8) and not worth_stacking(8, 1, 1)


def test_training_with_gradients_uses_the_grouped_path(monkeypatch):
    model, _ = model_with()
    taken = spy(monkeypatch)
    ids = torch.randint(3, 250, (3, 1), generator=torch.Generator().manual_seed(0))
    with ak.use_adapter(model, ["a", "b", "c"]):
        model(input_ids=ids).logits.sum().backward()
    assert not taken
    assert all(p.grad is not None for n in "abc" for p in ak.adapter_parameters(model, n) if p.requires_grad)


def test_weights_changed_after_stacking_are_restacked():
    """In-place updates (what an optimiser step or load_state_dict does), a training step, and a remove/add
    of the same name: the next mixed batch sees the new weights."""
    model, _ = model_with(configs={"a": ak.AdapterConfig(size=8), "b": ak.AdapterConfig(size=8)})
    names = ["a", "b", "b"]
    rows_vs_alone(model, names)  # builds the caches
    perturb(model, "a", seed=10)
    rows_vs_alone(model, names)
    ak.set_active(model, "b")  # one optimiser step on "b", grouped
    params = [p for p in ak.adapter_parameters(model, "b") if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5)
    ids = torch.randint(3, 250, (2, 3), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids).logits.square().mean().backward()
    optimizer.step()
    ak.set_active(model, None)
    rows_vs_alone(model, names)
    ak.remove_adapter(model, "b")
    ak.add_adapter(model, "b", ak.AdapterConfig(size=8))
    perturb(model, "b", seed=11)
    rows_vs_alone(model, names)
    state = {k: v * 0.5 for k, v in model.state_dict().items() if ".adapters.adapters.a." in k}
    assert state
    model.load_state_dict(state, strict=False)
    rows_vs_alone(model, names)


def test_adapters_made_under_inference_mode_are_never_served_stale():
    """Inference tensors have no version counter: their stack is rebuilt on every call."""
    tok = tiny_tokenizer()
    model = tiny_llama(tok, dtype=torch.float32)
    with torch.inference_mode():
        for i, name in enumerate("ab"):
            ak.add_adapter(model, name, ak.AdapterConfig(size=8))
            perturb(model, name, seed=i)
    rows_vs_alone(model, ["a", "b"])
    with torch.inference_mode():
        perturb(model, "a", seed=5)
    rows_vs_alone(model, ["a", "b"])


def test_rms_norm_row_weights_cache_follows_the_weights():
    """The one-pass RMS path caches each row's norm weight per routing: after an in-place change of a norm
    copy the next batch uses the new weight; the second call (the pre-hook's weight of ones) equals the first."""
    model, _ = model_with(configs={"a": ak.AdapterConfig(size=8, train_layer_norms=True),
                                   "b": ak.AdapterConfig(size=8, train_layer_norms=True)})
    names = ["a", "b", None]
    ids = torch.randint(3, 250, (3, 1), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), ak.use_adapter(model, names):
        first, second = model(input_ids=ids).logits, model(input_ids=ids).logits
    assert torch.equal(first, second)
    copies = [m for m in model.modules() if isinstance(m, ModuleCopies) and m.role == "layer_norm"]
    assert copies and all(c._rms_scales for c in copies)
    with torch.no_grad():
        for c in copies:
            c.adapters["a"].weight.mul_(1.5)
    rows_vs_alone(model, names)
    base = [c._base.weight for c in copies]
    assert all(type(w) is torch.nn.Parameter for w in base)  # the base weights are back after every call


def test_caches_are_not_copied_with_the_model():
    model, _ = model_with()
    rows_vs_alone(model, NAMES)
    sites = [m for m in model.modules() if isinstance(m, BottleneckLayer)]
    assert any(s._stacked._weights for s in sites)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert not any(m._stacked._weights for m in clone.modules() if isinstance(m, BottleneckLayer))
        rows_vs_alone(clone, NAMES)


@pytest.mark.parametrize("names", [["a", "b", "c", "a"], ["a", None, None, "b"]])
def test_unsorted_rows_stay_correct(names):
    """Rows not sorted by adapter (index groups, not slices) take the grouped path."""
    model, _ = model_with()
    rows_vs_alone(model, names)

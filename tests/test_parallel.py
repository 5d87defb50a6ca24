"""Parallel (parallel.py): one input, every task's output in one pass; and Stacks as rows of mixed batches.

The claim: each task's block of a Parallel pass is what running that adapter (or stack) alone on the same
batch gives, whether the adapters span all layers (the batch is replicated at layer 0) or leave out the lower
layers (those run once, on B rows). Every task block goes through the same operations as the task alone:
per-block bottlenecks, per-block layer norms (not the mixed batch's one-pass affine), per-block heads. The one
difference is the number of rows the *shared* base modules above the replication point see (N x B instead of
B), and MKL picks its matmul kernel by the row count: for a few rows (BERT's pooler on B=3 vs 6 rows) the
last bit differs (measured max 3e-8 on tiny BERT); with more rows (the layers: B x T rows) the results are
bit-equal. So: logits within 1e-6 (fp32, values of order 1) and the same predicted class, exactly.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import load_minilm, tiny_inputs, tiny_model

import adapterkit as ak
from adapterkit.mixed import predict_mixed, predict_parallel, split_parallel


def perturb(model, name, seed, scale=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ak.adapter_parameters(model, name):
            p.add_(torch.randn(p.shape, generator=g) * scale)


def with_adapters(model, configs: dict, heads: dict | None = None):
    for i, (name, config) in enumerate(configs.items()):
        ak.add_adapter(model, name, config, head=(heads or {}).get(name))
        perturb(model, name, seed=10 + i)
    return model.eval()


def same(parallel_logits: torch.Tensor, alone_logits: torch.Tensor, what) -> None:
    torch.testing.assert_close(parallel_logits, alone_logits, atol=1e-6, rtol=0, msg=f"{what}")
    if alone_logits.shape[-1] > 1:
        assert torch.equal(parallel_logits.argmax(-1), alone_logits.argmax(-1)), what


def alone(model, active, inputs) -> torch.Tensor:
    ak.set_active(model, active)
    try:
        with torch.no_grad():
            return model(**inputs).logits
    finally:
        ak.set_active(model, None)


def rows_seen(model, layers) -> list:
    """Record the batch rows each layer's hidden-state input has in the next forward pass."""
    seen = []
    handles = [layer.register_forward_pre_hook(lambda m, args, kw, i=i: seen.append((i, (args[0] if args else kw["hidden_states"]).shape[0])),
                                               with_kwargs=True) for i, layer in enumerate(layers)]
    return seen, handles


TINY_CONFIGS = {
    "a": ak.AdapterConfig(size=8),
    "b": ak.AdapterConfig(size=4, placement="pfeiffer"),
    "c": ak.AdapterConfig(size=8, placement="parallel", scaling=2.0),
}
TINY_HEADS = {"a": {"kind": "classification", "num_labels": 2, "train_pooler": True}, "b": 3, "c": "regression"}


@pytest.mark.parametrize("layers", [None, (1,)], ids=["all-layers", "top-layer-only"])
def test_each_task_block_equals_the_adapter_alone_tiny_bert(layers):
    configs = {n: ak.AdapterConfig(**{**c.to_dict(), "layers": layers}) for n, c in TINY_CONFIGS.items()}
    model = with_adapters(tiny_model("bert"), configs, TINY_HEADS)
    inputs = tiny_inputs("bert", batch=4)  # row 0 is padded
    block = ak.Parallel("a", "b", "c", ak.Stack("a", "b"))
    seen, handles = rows_seen(model, model.bert.encoder.layer)
    ak.set_active(model, block)
    with torch.no_grad():
        raw = model(**inputs).logits
    for h in handles:
        h.remove()
    # N x B rows, heads padded to the widest (3), in the block's order
    assert raw.shape == (4 * 4, 3)
    assert torch.equal(raw[8:12, 1:], torch.zeros(4, 2))  # c's regression head: 1 output, zeros after
    # shared below the lowest adapted layer: layer 0 runs once on B rows when no adapter is there
    assert seen == ([(0, 16), (1, 16)] if layers is None else [(0, 4), (1, 16)])
    outputs = split_parallel(model, block, raw)
    assert list(outputs) == list(block.members)
    for member, logits in outputs.items():
        same(logits, alone(model, member, inputs), member)
    ak.set_active(model, None)
    assert torch.equal(model(**inputs).logits, alone(model, None, inputs))  # hooks gone: B rows, the base model


def test_replicates_at_the_lowest_adapter_of_the_block():
    """Adapters starting at different layers: the batch is repeated at the lowest (layer 1 of 3)."""
    model = tiny_model("bert", num_hidden_layers=3)
    with_adapters(model, {"low": ak.AdapterConfig(size=4, layers=(1, 2)), "high": ak.AdapterConfig(size=4, layers=(2,))})
    inputs = tiny_inputs("bert", batch=3)
    seen, handles = rows_seen(model, model.bert.encoder.layer)
    out = predict_parallel(model, inputs, ["high", "low"])
    assert seen == [(0, 3), (1, 6), (2, 6)]
    for h in handles:
        h.remove()
    seen, handles = rows_seen(model, model.bert.encoder.layer)
    predict_parallel(model, inputs, ["high"])
    assert seen == [(0, 3), (1, 3), (2, 3)]
    for name, logits in out.items():
        same(logits, alone(model, name, inputs), name)
    assert ak.active_adapter(model) is None  # predict_parallel restores what was active


def test_embedding_norm_copy_replicates_the_inputs():
    model = with_adapters(tiny_model("bert"), {"e": ak.AdapterConfig(size=4, layers=(1,), train_embedding_norm=True),
                                               "f": ak.AdapterConfig(size=4, layers=(1,))})
    inputs = tiny_inputs("bert")
    seen, handles = rows_seen(model, model.bert.encoder.layer)
    out = predict_parallel(model, inputs, ["e", "f"])
    assert seen == [(0, 6), (1, 6)]
    for h in handles:
        h.remove()
    for name, logits in out.items():
        same(logits, alone(model, name, inputs), name)


def test_rotary_decoder_base_model_llama():
    """Llama: rotary position embeddings and a causal mask are passed to every layer; they follow the batch."""
    config = transformers.AutoConfig.for_model("llama", hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                                intermediate_size=64, vocab_size=100, num_key_value_heads=1)
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config).eval()
    with_adapters(model, {"p": ak.AdapterConfig(size=4, layers=(1, 2)), "q": ak.AdapterConfig(size=4, layers=(2,))},
                  {"p": "shared", "q": "shared"})
    inputs = {"input_ids": torch.randint(1, 100, (3, 7), generator=torch.Generator().manual_seed(1))}
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    inputs["attention_mask"][0, :2] = 0  # left padding
    ak.set_active(model, ak.Parallel("p", "q"))
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state  # (2 x 3, 7, 32)
    for i, name in enumerate(["p", "q"]):
        ak.set_active(model, name)
        with torch.no_grad():
            same(hidden[3 * i : 3 * (i + 1)], model(**inputs).last_hidden_state, name)


def test_a_head_that_reads_the_inputs_is_refused():
    """GPT-2's classifier picks each row's last token from input_ids (B rows): it cannot answer per task."""
    model = with_adapters(tiny_model("gpt2"), {"a": ak.AdapterConfig(size=4), "b": ak.AdapterConfig(size=4)})
    ak.set_active(model, ak.Parallel("a", "b"))
    with pytest.raises(ValueError, match="returned 3 rows, not 2 x 3"):
        with torch.no_grad():
            model(**tiny_inputs("gpt2"))


def test_refusals_and_bookkeeping():
    with pytest.raises(ValueError, match="adapter names or Stack blocks"):
        ak.Parallel()
    with pytest.raises(ValueError, match="appear once"):
        ak.Parallel("a", "a")
    model = with_adapters(tiny_model("bert"), {"a": ak.AdapterConfig(size=4), "b": ak.AdapterConfig(size=4)})
    with pytest.raises(KeyError, match="no adapter named 'zz'"):
        ak.set_active(model, ak.Parallel("a", "zz"))
    with pytest.raises(ValueError, match="not Parallel"):
        ak.set_active(model, [ak.Parallel("a", "b"), "a", None])
    assert ak.active_adapter(model) is None
    t5 = with_adapters(tiny_model("t5"), {"a": ak.AdapterConfig(size=4), "b": ak.AdapterConfig(size=4)})
    with pytest.raises(ValueError, match="one layer stack"):
        ak.set_active(t5, ak.Parallel("a", "b"))
    ak.set_active(model, ak.Parallel("a", "b"))
    ak.remove_adapter(model, "b")  # a member goes: the base model, hooks gone
    assert ak.active_adapter(model) is None
    inputs = tiny_inputs("bert")
    assert model(**inputs).logits.shape[0] == 3


def test_minilm_parallel_equals_each_adapter_alone(minilm_dir, minilm_batch):
    """The bundled MiniLM (6 layers): three adapters on all layers, three leaving out the lower 4 layers."""
    model = load_minilm(minilm_dir)
    configs = {f"all{i}": ak.AdapterConfig(size=16) for i in range(3)}
    configs.update({f"top{i}": ak.AdapterConfig(size=16, layers=(4, 5)) for i in range(3)})
    with_adapters(model, configs, {"all1": 3, "top2": "regression"}, )
    for names in (["all0", "all1", "all2"], ["top0", "top1", "top2"], list(configs)):
        out = predict_parallel(model, minilm_batch, names)
        for name in names:
            same(out[name], alone(model, name, minilm_batch), name)


# Compositions per row in mixed batches
def test_mixed_rows_may_name_a_stack_tiny_bert():
    model = with_adapters(tiny_model("bert"), {"lang": ak.AdapterConfig(size=8),
                                               "task": ak.AdapterConfig(size=4, layers=(1,)),
                                               "other": ak.AdapterConfig(size=4, placement="pfeiffer")},
                          {"task": 3})
    inputs = tiny_inputs("bert", batch=3)
    stack = ak.Stack("lang", "task")
    rows = predict_mixed(model, {k: torch.cat([v, v]) for k, v in inputs.items()}, [stack, "other", stack, None, "other", stack])
    expected_stack, expected_other = alone(model, stack, inputs), alone(model, "other", inputs)
    assert [r.shape[-1] for r in rows] == [3, 2, 3, 2, 2, 3]
    for i, want in [(0, expected_stack[0]), (1, expected_other[1]), (2, expected_stack[2]), (4, expected_other[1]), (5, expected_stack[2])]:
        torch.testing.assert_close(rows[i], want, atol=1e-5, rtol=0)
    torch.testing.assert_close(rows[3], alone(model, None, inputs)[0], atol=1e-5, rtol=0)
    with pytest.raises(KeyError, match="'nope'"):
        predict_mixed(model, inputs, [ak.Stack("lang", "nope"), None, None])


def test_mixed_rows_may_name_a_stack_minilm(minilm_dir, minilm_batch):
    model = with_adapters(load_minilm(minilm_dir), {"lang": ak.AdapterConfig(size=16), "task": ak.AdapterConfig(size=16)},
                          {"task": 3})
    stack = ak.Stack("lang", "task")
    rows = predict_mixed(model, minilm_batch, [stack, "lang", stack])
    want_stack, want_lang = alone(model, stack, minilm_batch), alone(model, "lang", minilm_batch)
    torch.testing.assert_close(rows[0], want_stack[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(rows[1], want_lang[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(rows[2], want_stack[2], atol=1e-5, rtol=0)


def test_benchmark_script_measures_and_renders(tmp_path):
    """benchmarks/parallel.py's measurement on a tiny BERT (1 round): timings, agreement, table row."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "parallel.py"
    spec = importlib.util.spec_from_file_location("_adapterkit_bench_parallel", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model = with_adapters(tiny_model("bert"), {f"t{i}": ak.AdapterConfig(size=4, layers=(1,)) for i in range(3)},
                          {"t1": 3, "t2": "regression"})
    result = bench.bench(model, ["t0", "t1", "t2"], batch=2, length=8, reps=1)
    assert result["max_abs_diff"] <= 1e-6 and result["same_predicted_class"] is True
    assert set(result) >= {"parallel", "separate", "single", "speedup_cpu", "speedup_wall"}
    row = bench.table({"results": {"skip 1": {"2x8": result}}}).splitlines()[-1]
    assert row.startswith("| skip 1 | 2x8 | ") and row.endswith("| yes |")
    assert ak.active_adapter(model) is None

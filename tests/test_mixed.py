"""Mixed-task batches: each row of one batch through its own adapter (or the base model) in one pass.

Every test compares a row of a mixed batch with that row run alone (no padding) with its adapter active,
at 1e-5 (fp32). Adapters are perturbed far from their near-identity init so that tasks really differ.
"""

from __future__ import annotations

import pytest
import torch
from conftest import load_minilm, tiny_model

import adapterkit as ak
from adapterkit.mixed import encode, head_width, predict_mixed

ATOL = 1e-5


def perturb(model, name, scale, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ak.adapter_parameters(model, name):
            p.add_(torch.randn(p.shape, generator=g) * scale)


def tiny_multitask(seed=0):
    """Tiny random BERT with four adapters of different shapes, placements and heads."""
    model = tiny_model("bert", seed=seed)  # own head: 2 labels
    ak.add_adapter(model, "a", ak.AdapterConfig(size=8), head={"kind": "classification", "num_labels": 2, "train_pooler": True})
    ak.add_adapter(model, "b", ak.AdapterConfig(size=4, placement="pfeiffer"), head=3)
    ak.add_adapter(model, "c", ak.AdapterConfig(size=8, placement="parallel", scaling=2.0), head="regression")
    ak.add_adapter(model, "d", ak.AdapterConfig(size=4, layers=(1,), train_layer_norms=False))  # the model's own head
    for i, name in enumerate("abcd"):
        perturb(model, name, 0.2, seed=10 + i)
    return model.eval()


def ragged_batch(lengths, seed=3, vocab=100):
    """Right-padded ids for rows of the given lengths, and each row's unpadded ids."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, vocab, (n,), generator=g)
        mask[i, :n] = 1
    alone = [{"input_ids": ids[i : i + 1, :n], "attention_mask": mask[i : i + 1, :n]} for i, n in enumerate(lengths)]
    return {"input_ids": ids, "attention_mask": mask}, alone


def run_alone(model, task, inputs):
    ak.set_active(model, task)
    try:
        with torch.no_grad():
            return model(**inputs).logits[0]
    finally:
        ak.set_active(model, None)


TASKS = ["a", None, "b", "c", "a", "d", None, "c", "b", "d"]
LENGTHS = [9, 4, 7, 9, 2, 5, 9, 6, 3, 8]


def test_each_row_equals_running_it_alone_tiny_bert():
    model = tiny_multitask()
    batch, alone = ragged_batch(LENGTHS)
    rows = predict_mixed(model, batch, TASKS)
    assert [r.shape[-1] for r in rows] == [2, 2, 3, 1, 2, 2, 2, 1, 3, 2]
    for i, (task, row) in enumerate(zip(TASKS, rows)):
        expected = run_alone(model, task, alone[i])
        torch.testing.assert_close(row, expected, atol=ATOL, rtol=0, msg=f"row {i} ({task})")
    # The tasks really differ: the same input through each adapter gives clearly different logits.
    outs = {t: run_alone(model, t, alone[0])[:2] for t in (None, "a", "d")}
    assert (outs[None] - outs["a"]).abs().max() > 1e-2 and (outs[None] - outs["d"]).abs().max() > 1e-2


def test_interleaved_routing_pads_heads_with_zeros_and_matches_sorted():
    """set_active with an unsorted list (gather/scatter path) gives the same rows as predict_mixed (sorted,
    views) and pads narrower heads with zeros up to the widest head."""
    model = tiny_multitask()
    batch, _ = ragged_batch(LENGTHS)
    rows = predict_mixed(model, batch, TASKS)
    ak.set_active(model, TASKS)
    with torch.no_grad():
        padded = model(**batch).logits
    ak.set_active(model, None)
    assert padded.shape == (len(TASKS), 3)
    for i, row in enumerate(rows):
        w = row.shape[-1]
        torch.testing.assert_close(padded[i, :w], row, atol=ATOL, rtol=0)
        assert torch.all(padded[i, w:] == 0)


def test_sorted_batch_same_with_and_without_autograd():
    """A batch already sorted by task takes the view-based path: in-place writes under inference, torch.cat
    when autograd records; LayerNorm copies as one normalisation + per-row affine. Both agree with the
    gather/scatter path of the same rows in another order."""
    model = tiny_multitask()
    order = sorted(range(len(TASKS)), key=lambda i: str(TASKS[i]))
    batch, _ = ragged_batch(LENGTHS)
    batch = {k: v[order] for k, v in batch.items()}
    tasks = [TASKS[i] for i in order]
    ak.set_active(model, tasks)
    assert isinstance(ak.model.get_state(model).routing.groups(torch.device("cpu"))[0][1], slice)
    with torch.inference_mode():
        fast = model(**batch).logits
    with torch.enable_grad():
        recorded = model(**batch).logits
    ak.set_active(model, None)
    torch.testing.assert_close(fast, recorded.detach(), atol=ATOL, rtol=0)
    back = torch.empty_like(fast)
    back[torch.tensor(order)] = fast
    rows = predict_mixed(model, ragged_batch(LENGTHS)[0], TASKS)
    for i, row in enumerate(rows):
        torch.testing.assert_close(back[i, : row.shape[-1]], row, atol=ATOL, rtol=0)


def test_single_task_list_and_all_base_rows():
    model = tiny_multitask()
    batch, alone = ragged_batch([5, 3, 7])
    for task in ("b", None):
        rows = predict_mixed(model, batch, [task] * 3)
        for i, row in enumerate(rows):
            torch.testing.assert_close(row, run_alone(model, task, alone[i]), atol=ATOL, rtol=0)


def test_no_state_leaks_after_mixed_routing():
    model = tiny_multitask()
    batch, _ = ragged_batch(LENGTHS)
    base = tiny_model("bert", seed=0)

    def logits(active):
        ak.set_active(model, active)
        with torch.no_grad():
            return model(**batch).logits

    before_a, before_c = logits("a"), logits("c")
    predict_mixed(model, batch, TASKS)
    ak.set_active(model, TASKS)  # leave a mixed routing active, then switch away from it
    with torch.no_grad():
        model(**batch)
    assert torch.equal(logits("a"), before_a) and torch.equal(logits("c"), before_c)
    with torch.no_grad():
        assert torch.equal(logits(None), base(**batch).logits)
    # predict_mixed restores whatever was active before it
    ak.set_active(model, "b")
    predict_mixed(model, batch, TASKS)
    assert ak.active_adapter(model) == "b"


def test_mixed_batch_trains_each_rows_adapter():
    model = tiny_multitask()
    batch, _ = ragged_batch([4, 4, 4])
    for p in model.parameters():
        p.requires_grad_(False)
    for name in ("a", "b"):
        for p in ak.adapter_parameters(model, name):
            p.requires_grad_(True)
    ak.set_active(model, ["a", "b", None])
    model(**batch).logits.sum().backward()
    ak.set_active(model, None)
    for name in ("a", "b"):
        grads = [p.grad for p in ak.adapter_parameters(model, name)]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_head_width():
    model = tiny_multitask()
    assert [head_width(model, t) for t in (None, "a", "b", "c", "d")] == [2, 2, 3, 1, 2]


def test_errors():
    model = tiny_multitask()
    batch, _ = ragged_batch([4, 4])
    with pytest.raises(ValueError, match="2 rows"):
        predict_mixed(model, batch, ["a"])
    with pytest.raises(KeyError, match="nope"):
        predict_mixed(model, batch, ["a", "nope"])
    with pytest.raises(ValueError, match="tokenizer"):
        predict_mixed(model, ["some text"], ["a"])
    assert ak.active_adapter(model) is None
    with pytest.raises(ValueError, match="no adapters"):
        predict_mixed(tiny_model("bert"), batch, [None, None])


def test_real_minilm_mixed_texts_and_pairs(minilm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    model = load_minilm(minilm_dir)
    ak.add_adapter(model, "sentiment", ak.AdapterConfig(size=32), head=ak.HeadConfig("classification", 2, ("neg", "pos")))
    ak.add_adapter(model, "topic", ak.AdapterConfig(size=16, placement="pfeiffer"), head=3)
    ak.add_adapter(model, "sts", ak.AdapterConfig(size=32), head="regression")
    for i, name in enumerate(("sentiment", "topic", "sts")):
        perturb(model, name, 0.02, seed=i)
    inputs = [
        "a gripping, beautifully acted film",
        ("a man is playing a guitar", "someone plays an instrument"),
        "stocks fell sharply on tuesday after the report",
        "dull",
        ("the cat sat", "a dog ran across a very long and winding road in the rain"),
        "it is a movie",
    ]
    tasks = ["sentiment", "sts", "topic", None, "sts", "sentiment"]
    rows = predict_mixed(model, inputs, tasks, tokenizer=tok)
    assert [r.shape[-1] for r in rows] == [2, 1, 3, 2, 1, 2]
    for i, (x, task) in enumerate(zip(inputs, tasks)):
        alone = run_alone(model, task, encode(tok, [x]))
        torch.testing.assert_close(rows[i], alone, atol=ATOL, rtol=0, msg=f"row {i} ({task})")
    # tasks really differ on the real model
    same = encode(tok, [inputs[0]])
    assert (run_alone(model, "sentiment", same) - run_alone(model, None, same)).abs().max() > 1e-3

"""A fusion (``Fuse``, added with ``add_fusion``) as a row of a mixed-task batch: its rows get the fusion's
attention at each site, its last adapter's layer-norm copies and the fusion's own head; every row equals
that row run alone with its entry active (1e-5, fp32, as tests/test_mixed.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import load_minilm, tiny_model
from test_mixed import ATOL, perturb, ragged_batch, run_alone

import adapterkit as ak
from adapterkit.fusion import fusion_parameters
from adapterkit.mixed import encode, head_width, predict_mixed

FUSE = ak.Fuse("a", "b", "c")


def fused_model(seed=0):
    """Tiny random BERT: Houlsby adapters a, b, c (heads 2, 4 and the model's own), a fusion over them with
    a 3-way head, and a Pfeiffer adapter d; everything perturbed so that each entry computes something else."""
    model = tiny_model("bert", seed=seed)
    ak.add_adapter(model, "a", ak.AdapterConfig(size=8), head=2)
    ak.add_adapter(model, "b", ak.AdapterConfig(size=4), head=4)
    ak.add_adapter(model, "c", ak.AdapterConfig(size=8))
    ak.add_adapter(model, "d", ak.AdapterConfig(size=4, placement="pfeiffer"), head=3)
    for i, name in enumerate("abcd"):
        perturb(model, name, 0.2, seed=20 + i)
    ak.add_fusion(model, FUSE, head=3)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in fusion_parameters(model, FUSE):
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


TASKS = [FUSE, "a", None, FUSE, ak.Stack("a", "b"), "d", "c", FUSE]


def test_fuse_rows_of_a_mixed_batch_equal_the_fusion_alone():
    model = fused_model()
    batch, alone = ragged_batch([7, 5, 9, 4, 6, 8, 3, 9])
    rows = predict_mixed(model, batch, TASKS)
    assert [r.shape[-1] for r in rows] == [3, 2, 2, 3, 4, 3, 2, 3]
    assert head_width(model, FUSE) == 3
    for i, task in enumerate(TASKS):
        torch.testing.assert_close(rows[i], run_alone(model, task, alone[i]), atol=ATOL, rtol=0, msg=f"row {i} ({task})")
    # the fusion really differs from its last adapter (layer norms are c's, but attention and head are its own)
    assert (run_alone(model, FUSE, alone[0])[:2] - run_alone(model, "c", alone[0])).abs().max() > 1e-3
    assert ak.active_adapter(model) is None  # predict_mixed restores what was active


@pytest.mark.parametrize("grad", [False, True])
def test_unsorted_rows_and_training_mode_paths(grad):
    """Rows not grouped by entry (index_select / index_copy) and, with grad on, the torch.cat path."""
    model = fused_model(seed=1)
    batch, alone = ragged_batch([6, 6, 6, 6, 6], seed=5)
    tasks = [FUSE, "a", FUSE, None, "b"] if not grad else [FUSE, FUSE, "a", "a", None]
    ak.set_active(model, tasks)
    with torch.set_grad_enabled(grad):
        out = model(**batch).logits.detach()
    ak.set_active(model, None)
    for i, task in enumerate(tasks):
        want = run_alone(model, task, alone[i])
        torch.testing.assert_close(out[i, : want.shape[-1]], want, atol=ATOL, rtol=0, msg=f"row {i} ({task})")


def test_mixed_rows_refuse_unknown_fusions_and_parallel():
    model = fused_model()
    with pytest.raises(KeyError, match=r"no fusion Fuse\('a', 'b'\) on this model"):
        ak.set_active(model, [ak.Fuse("a", "b"), "a"])
    with pytest.raises(ValueError, match="activate a Parallel for the whole batch"):
        ak.set_active(model, [ak.Parallel("a", "b"), "a"])
    assert ak.active_adapter(model) is None


def test_real_minilm_fusion_rows(minilm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    model = load_minilm(minilm_dir)
    for i, name in enumerate(("sst", "nli")):
        ak.add_adapter(model, name, ak.AdapterConfig(size=16), head=2 + i)
        perturb(model, name, 0.02, seed=i)
    fuse = ak.Fuse("sst", "nli", name="both")
    ak.add_fusion(model, fuse, head=2)
    with torch.no_grad():
        for p in fusion_parameters(model, fuse):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.02)
    inputs = ["a gripping film", ("a man plays", "someone plays an instrument"), "dull", "stocks fell sharply today"]
    tasks = [fuse, "nli", None, fuse]
    rows = predict_mixed(model, inputs, tasks, tokenizer=tok)
    assert [r.shape[-1] for r in rows] == [2, 3, 2, 2]
    for i, (x, task) in enumerate(zip(inputs, tasks)):
        torch.testing.assert_close(rows[i], run_alone(model, task, encode(tok, [x])), atol=ATOL, rtol=0, msg=f"row {i}")

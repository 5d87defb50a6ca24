"""ak.Stack against AdapterHub's Stack (adapters 1.3.0) on MiniLM with the same weights (issue 14's acceptance).

The slow tests run tests/adapterhub_stack_side.py in the side venv (benchmarks/_adapterhub_env.py): it builds
MiniLM with two perturbed AdapterHub adapters, saves them and writes the last hidden state in eval mode on a
padded batch of real sentences for None, "a", "b", Stack("a", "b") and Stack("b", "a"); adapterkit loads the
two directories and computes the same five. The fast tests pin the formula and the refusal on a tiny model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from conftest import logits, tiny_inputs, tiny_model
from safetensors.torch import load_file, save_file

import adapterkit as ak

ROOT = Path(__file__).resolve().parents[1]
SIDE_PYTHON = ROOT / "benchmarks" / ".venvs" / "adapterhub" / "bin" / "python"
SETUPS = {"base": None, "a": "a", "b": "b", "a,b": ak.Stack("a", "b"), "b,a": ak.Stack("b", "a")}


@pytest.fixture(scope="module")
def real_batch(minilm_dir, tmp_path_factory):
    """A padded MiniLM batch of 16 real rotten_tomatoes validation sentences (10 to 47 tokens)."""
    from adapterkit.data import load_task

    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    texts = [e["text"] for e in load_task("rotten_tomatoes").validation[:16]]
    batch = dict(tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt"))
    batch = {k: batch[k].contiguous() for k in ("input_ids", "attention_mask")}
    path = tmp_path_factory.mktemp("stack") / "batch.safetensors"
    save_file(batch, path)
    return path, batch


def _adapterhub_stack(case, minilm_dir, real_batch, tmp_path):
    """Run the side script for ``case``; returns (directory with a/ and b/, their outputs)."""
    if not SIDE_PYTHON.exists():
        pytest.skip("no side venv: run python benchmarks/_adapterhub_env.py")
    r = subprocess.run([str(SIDE_PYTHON), str(Path(__file__).parent / "adapterhub_stack_side.py"), minilm_dir,
                        str(real_batch[0]), str(tmp_path), case], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp_path, load_file(tmp_path / "outputs.safetensors")


def _adapterkit_model(minilm_dir, directory):
    model = transformers.AutoModelForSequenceClassification.from_pretrained(minilm_dir).eval()
    for name in ("a", "b"):
        assert ak.load_adapter(model, directory / name) == name
    return model


@torch.no_grad()
def _hidden(model, batch):
    return model.bert(**batch).last_hidden_state  # (16, T, 384), padded positions included


@pytest.mark.slow
@pytest.mark.parametrize("case", ["houlsby", "pfeiffer", "mixed"])
def test_stack_gives_adapterhubs_last_hidden_state(case, minilm_dir, real_batch, tmp_path):
    directory, theirs = _adapterhub_stack(case, minilm_dir, real_batch, tmp_path)
    model = _adapterkit_model(minilm_dir, directory)
    for key, setup in SETUPS.items():
        ak.set_active(model, setup)
        difference = (_hidden(model, real_batch[1]) - theirs[key]).abs().max().item()
        print(f"{case} {key}: max abs difference of the last hidden state {difference:.3g}", file=sys.stderr)
        assert difference <= 1e-5  # measured: 0.0 for every case and setup (CPU, fp32)
    # the comparison can fail: the stack is neither adapter alone, and its order matters
    for one, other in [("a,b", "a"), ("a,b", "b"), ("a,b", "b,a"), ("a", "base")]:
        assert (theirs[one] - theirs[other]).abs().max() > 0.1


@pytest.mark.slow
@pytest.mark.parametrize("case", ["parallel", "serial_parallel"])
def test_stacks_with_a_parallel_adapter_are_refused_where_adapterhub_drops_branches(case, minilm_dir, real_batch, tmp_path):
    directory, theirs = _adapterhub_stack(case, minilm_dir, real_batch, tmp_path)
    if case == "parallel":  # AdapterHub's Stack of two parallel adapters is the last one alone
        assert torch.equal(theirs["a,b"], theirs["b"]) and torch.equal(theirs["b,a"], theirs["a"])
    model = _adapterkit_model(minilm_dir, directory)
    for key in ("base", "a", "b"):  # each adapter alone is the same in both
        ak.set_active(model, SETUPS[key])
        assert (_hidden(model, real_batch[1]) - theirs[key]).abs().max() <= 1e-5
    for key in ("a,b", "b,a"):
        with pytest.raises(ValueError, match="AdapterHub's Stack keeps only the last"):
            ak.set_active(model, SETUPS[key])
        assert ak.active_adapter(model) == "b"  # what was active stays active


def _perturbed(model, name, config, seed):
    ak.add_adapter(model, name, config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ak.adapter_parameters(model, name):
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def test_a_parallel_adapter_is_stacked_only_where_it_is_alone():
    model, inputs = tiny_model("bert"), tiny_inputs("bert")
    _perturbed(model, "a", ak.AdapterConfig(size=4, placement="pfeiffer", layers=(0,)), 0)
    _perturbed(model, "p", ak.AdapterConfig(size=4, placement="parallel", layers=(1,)), 1)
    _perturbed(model, "q", ak.AdapterConfig(size=4, placement="parallel_ffn"), 2)
    ak.set_active(model, ak.Stack("a", "p"))  # no shared site: each site is one adapter alone, as in AdapterHub
    stacked = logits(model, inputs)
    for name in ("a", "p"):  # both adapters act (each on its own layer)
        with ak.use_adapter(model, name):
            assert (logits(model, inputs) - stacked).abs().max() > 1e-3
    for stack, reader, other in [(ak.Stack("a", "q"), "q", "a"), (ak.Stack("q", "p"), "q", "p")]:
        with pytest.raises(ValueError, match=f"'{reader}' is a parallel(_ffn)? adapter and shares the site "
                                             rf"bert\.encoder\.layer\.[01]\.output\.dense with \['{other}'\]"):
            ak.set_active(model, stack)
        assert ak.active_adapter(model) == ak.Stack("a", "p")

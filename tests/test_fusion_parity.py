"""ak.Fuse against AdapterHub's Fuse (adapters 1.3.0) on MiniLM with the same weights (issue 14's acceptance).

The slow test runs tests/adapterhub_fusion_side.py in the side venv (benchmarks/_adapterhub_env.py): it builds
MiniLM with three perturbed AdapterHub adapters and a perturbed AdapterFusion over them, saves the adapters and
the fusion weights, and writes the last hidden state in eval mode on a padded batch of real sentences for
None, each adapter and Fuse("a", "b", "c"); adapterkit loads the three adapter directories, adds a fusion with
the same config, copies the fusion weights in (AdapterHub's ``<layer>.adapter_fusion_layer.<name>.*`` ->
adapterkit's ``<output projection>.adapters.fusion.*``) and computes the same outputs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import adapterkit as ak
from adapterkit.fusion import fusion_tensors

from test_stack_parity import SIDE_PYTHON, _hidden, real_batch  # noqa: F401  (real_batch: a fixture)

CONFIGS = {"houlsby": "dynamic", "pfeiffer": "dynamic", "static": "static",
           "residual_before": ak.FusionConfig(residual_before=True)}
FUSE = ak.Fuse("a", "b", "c")


def adapterkit_key(theirs: str) -> str:
    """``encoder.layer.3.attention.output.adapter_fusion_layer.a,b,c.query.weight`` ->
    ``bert.encoder.layer.3.attention.output.dense.adapters.fusion.query.weight`` (the same for ``output``)."""
    layer, tensor = re.fullmatch(r"(encoder\.layer\.\d+\.(?:attention\.)?output)\.adapter_fusion_layer\.[^.]+\.(.+)", theirs).groups()
    return f"bert.{layer}.dense.adapters.fusion.{tensor}"


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CONFIGS))
def test_fuse_gives_adapterhubs_last_hidden_state(case, minilm_dir, real_batch, tmp_path):  # noqa: F811
    if not SIDE_PYTHON.exists():
        pytest.skip("no side venv: run python benchmarks/_adapterhub_env.py")
    r = subprocess.run([str(SIDE_PYTHON), str(Path(__file__).parent / "adapterhub_fusion_side.py"), minilm_dir,
                        str(real_batch[0]), str(tmp_path), case], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    theirs = load_file(tmp_path / "outputs.safetensors")
    weights = {adapterkit_key(k): v for k, v in load_file(tmp_path / "fusion.safetensors").items()}
    model = transformers.AutoModelForSequenceClassification.from_pretrained(minilm_dir).eval()
    for name in FUSE.names:
        assert ak.load_adapter(model, tmp_path / name) == name
    ak.add_fusion(model, FUSE, config=CONFIGS[case])
    ours = {k: t for k, t in fusion_tensors(model, FUSE).items() if ".fusion." in k}
    assert set(ours) == set(weights)
    with torch.no_grad():
        for key, target in ours.items():
            target.copy_(weights[key])
    for key, setup in {"base": None, "a": "a", "b": "b", "c": "c", "fuse": FUSE}.items():
        ak.set_active(model, setup)
        difference = (_hidden(model, real_batch[1]) - theirs[key]).abs().max().item()
        print(f"{case} {key}: max abs difference of the last hidden state {difference:.3g}", file=sys.stderr)
        assert difference <= 1e-5
    # the comparison can fail: the fusion is none of its adapters, and moves the output
    for other in ("a", "b", "c", "base"):
        assert (theirs["fuse"] - theirs[other]).abs().max() > 0.05

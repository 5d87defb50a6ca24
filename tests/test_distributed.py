"""Two CPU processes (torchrun, gloo) with the same global batch give the result of one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import save_tiny_bert, write_sentiment

SCRIPT = """
import json, sys
from adapterkit.train import TrainConfig, train
output, model, data = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
train(TrainConfig(output=output, model=model, task="local", data=data, epochs=2, batch_size=8, eval_batch_size=8,
                  lr=5e-3, progress=False))
"""


def run(nproc: int, output: Path, model: Path, data: dict, script: Path) -> dict:
    torchrun = Path(sys.executable).with_name("torchrun")
    if nproc == 1:
        command = [sys.executable, str(script)]
    else:
        command = [str(torchrun), "--standalone", f"--nproc_per_node={nproc}", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command + [str(output), str(model), json.dumps(data)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((output / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not installed")
def test_two_processes_match_one(tmp_path):
    model = save_tiny_bert(tmp_path / "bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    data = write_sentiment(tmp_path / "data")
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    one = run(1, tmp_path / "one", model, data, script)
    two = run(2, tmp_path / "two", model, data, script)
    assert two["num_processes"] == 2 and one["num_processes"] == 1
    for a, b in zip(one["epochs"], two["epochs"]):
        assert a["accuracy"] == b["accuracy"]
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5 and abs(a["loss"] - b["loss"]) < 1e-5
    wa = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-6)

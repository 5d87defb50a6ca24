"""Checkpoints cannot trap --resume: the process is SIGKILLed right after each step of writing / replacing an
epoch checkpoint (adapterkit.checkpoint's test hook), then ``--resume`` must finish and end bit-identical to an
uninterrupted run. Checkpoints left by earlier versions (checkpoint/, checkpoint.tmp/) resume too, and an
unreadable one is one clear error."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import adapterkit
import adapterkit.train as T
from adapterkit.checkpoint import CRASH_ENV, STEPS, CheckpointError
from adapterkit.train import TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared helpers
from train_helpers import save_tiny_bert, write_sentiment  # noqa: E402

EPOCHS = 2
#: (epoch, step) crash points: epoch 2's save replaces epoch 1's checkpoint, so all of STEPS happen there.
ALL = [(2, k) for k in range(1, len(STEPS) + 1)] + [(1, 1), (1, 6), (1, 7)]
#: tmp complete, not renamed; renamed with the old kept; run complete but not renamed (the rest: slow)
FAST = {(2, 6), (2, 7), (2, 11)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    return {"bert": str(save_tiny_bert(root / "bert")), "data": write_sentiment(root / "data", 16, 8),
            "root": root}


def config(tiny, output, **kw) -> TrainConfig:
    base = dict(output=str(output), model=tiny["bert"], task="local", data=tiny["data"], epochs=EPOCHS,
                batch_size=8, eval_batch_size=8, lr=5e-3, adapter_size=4, progress=False)
    return TrainConfig(**{**base, **kw})


def one_thread_train(cfg: TrainConfig) -> dict:
    """Same thread count as the crashing subprocess: identical float sums."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(cfg)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tiny):
    out = tiny["root"] / "reference"
    return {"metrics": one_thread_train(config(tiny, out)), "out": out}


def assert_same_as_reference(reference, metrics, out: Path) -> None:
    assert metrics["epochs"] == reference["metrics"]["epochs"] and metrics["best"] == reference["metrics"]["best"]
    a = load_file(reference["out"] / "adapter" / "adapter_model.safetensors")
    b = load_file(out / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(out.parent.glob(f".{out.name}.*")), list(out.parent.iterdir())
    assert not [p for p in out.iterdir() if "checkpoint" in p.name]


_CHILD = """
import json, sys, torch
from adapterkit.train import TrainConfig, train
torch.set_num_threads(1)
train(TrainConfig(**json.loads(sys.argv[1])))
"""


@pytest.mark.parametrize("epoch, step", [pytest.param(e, k, id=f"epoch{e}-after-{STEPS[k - 1].replace(' ', '-')}",
                                                      marks=() if (e, k) in FAST else pytest.mark.slow)
                                         for e, k in ALL])
def test_killed_while_checkpointing_then_resume_is_bit_identical(tiny, reference, tmp_path, monkeypatch, epoch,
                                                                  step):
    out = tmp_path / "run"
    env = {**os.environ, CRASH_ENV: f"{epoch}:{step}",
           "PYTHONPATH": os.pathsep.join([str(Path(adapterkit.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(asdict(config(tiny, out)))], env=env,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    partial = tmp_path / ".run.partial"
    assert partial.is_dir() and not out.exists()
    if step == len(STEPS):  # the finished run is renamed into place, not retrained
        monkeypatch.setattr(T, "_train_epoch", lambda *a, **k: pytest.fail("a finished run must not retrain"))
    metrics = one_thread_train(config(tiny, out, resume=True))
    assert_same_as_reference(reference, metrics, out)


@pytest.fixture()
def one_epoch_partial(tiny, tmp_path, monkeypatch):
    """A run interrupted after its first epoch (its checkpoint-1/ in .run.partial)."""
    real_epoch = T._train_epoch

    def interrupted(*args, **kwargs):
        if args[6] == 1:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(T, "_train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        one_thread_train(config(tiny, tmp_path / "run"))
    monkeypatch.setattr(T, "_train_epoch", real_epoch)
    partial = tmp_path / ".run.partial"
    assert (partial / "checkpoint-1" / "state.json").is_file()
    return partial


@pytest.mark.parametrize("layout", ["checkpoint", "checkpoint.tmp-beside-a-stripped-checkpoint", "checkpoint.tmp-only"])
def test_checkpoints_of_earlier_versions_resume(tiny, reference, one_epoch_partial, layout):
    """The layouts the previous version left: its checkpoint/, and the trap (a checkpoint/ with state.json but
    no weights beside a complete checkpoint.tmp/, or only checkpoint.tmp/), which made --resume fail or
    silently restart."""
    partial = one_epoch_partial
    (partial / "adapterkit-run.json").unlink()  # earlier versions wrote no marker
    if layout == "checkpoint":
        (partial / "checkpoint-1").rename(partial / "checkpoint")
    else:
        (partial / "checkpoint-1").rename(partial / "checkpoint.tmp")
        if layout.endswith("stripped-checkpoint"):
            (partial / "checkpoint").mkdir()
            shutil.copy(partial / "checkpoint.tmp" / "state.json", partial / "checkpoint" / "state.json")
    out = partial.parent / "run"
    metrics = one_thread_train(config(tiny, out, resume=True))
    assert_same_as_reference(reference, metrics, out)
    assert (out / "adapterkit-run.json").is_file()


def test_an_unreadable_checkpoint_is_one_clear_error(tiny, one_epoch_partial):
    weights = one_epoch_partial / "checkpoint-1" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(CheckpointError, match=r"checkpoint-1 cannot be read .*rerun with --overwrite instead of --resume"):
        one_thread_train(config(tiny, one_epoch_partial.parent / "run", resume=True))
    assert weights.is_file()  # left for the user to inspect; nothing else written
    assert not (one_epoch_partial.parent / "run").exists()
    with pytest.raises(FileExistsError, match="--overwrite"):  # without --resume: the epochs are not dropped silently
        one_thread_train(config(tiny, one_epoch_partial.parent / "run"))
    one_thread_train(config(tiny, one_epoch_partial.parent / "run", overwrite=True))  # the fix the error names
    assert (one_epoch_partial.parent / "run" / "metrics.json").is_file()

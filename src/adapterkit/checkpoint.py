"""Epoch checkpoints that a crash cannot trap: every moment of a replacement leaves a loadable one.

Epoch N's checkpoint is written to ``<run>/checkpoint-N.tmp/`` (trainable and best weights as safetensors,
optimiser and scheduler state as ``torch.save`` of plain tensors/numbers read back with ``weights_only=True``,
and ``state.json`` last), every file and the directory are fsynced, and the directory is renamed to
``checkpoint-N/`` in one step. Only then are older checkpoints renamed aside (``.checkpoint-M.old``) and
deleted. A ``checkpoint-N/`` directory is therefore always complete, and ``--resume`` takes the newest one.
Checkpoints of earlier versions (``checkpoint/``, and a complete ``checkpoint.tmp/`` left by a crash while it
replaced ``checkpoint/``) are still found.

Test hook: with ``ADAPTERKIT_TEST_CRASH_AFTER=E:K`` in the environment the process kills itself (SIGKILL)
right after step K of saving epoch E's checkpoint (steps listed in :data:`STEPS`; the last one is train's, once the
finished run is written and its checkpoints removed, before the run is renamed to ``--output``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .methods import trainable_state
from .runs import CHECKPOINT_ENTRY, fsync_dir, share

FILES = ("trainable.safetensors", "best.safetensors", "optimizer.pt", "scheduler.pt", "state.json")
STEPS = ("tmp dir made", "trainable weights", "best weights", "optimiser", "scheduler", "state.json",
         "renamed into place", "old moved aside", "old partly deleted", "old deleted",
         "run written and checkpoints removed")  # the last: in train, before the final rename
CRASH_ENV = "ADAPTERKIT_TEST_CRASH_AFTER"
_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be resumed from."""


def crash_point(epoch: int, step: int) -> None:
    if os.environ.get(CRASH_ENV) == f"{epoch}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _state(directory: Path) -> dict | None:
    """The saved state of a complete checkpoint directory, else None."""
    if directory.is_symlink() or not all((directory / f).is_file() for f in FILES):
        return None
    try:
        state = json.loads((directory / "state.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None
    ok = isinstance(state, dict) and isinstance(state.get("epoch"), int) and isinstance(state.get("config"), dict)
    return state if ok else None


class Checkpoint:
    """The epoch checkpoints of one run directory (see the module docstring)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def _entries(self) -> list[Path]:
        if not self.run_dir.is_dir():
            return []
        return [p for p in self.run_dir.iterdir() if CHECKPOINT_ENTRY.match(p.name)]

    def latest(self) -> tuple[Path, dict] | None:
        """(directory, state) of the newest complete checkpoint, or None."""
        found = []
        for path in self._entries():
            m = _NAME.match(path.name)
            if m or path.name in ("checkpoint", "checkpoint.tmp"):  # the last two: earlier versions' layout
                state = _state(path)
                if state is not None and (not m or state["epoch"] == int(m.group(1))):
                    found.append((state["epoch"], bool(m), path, state))
        if not found:
            return None
        _, _, path, state = max(found, key=lambda t: t[:2])
        return path, state

    def exists(self) -> bool:
        return self.latest() is not None

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self._entries())

    def save(self, model, optimizer, scheduler, best_state: dict, state: dict) -> None:
        epoch = state["epoch"]
        final, tmp = self.run_dir / f"checkpoint-{epoch}", self.run_dir / f"checkpoint-{epoch}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        crash_point(epoch, 1)
        save_file({k: v.contiguous() for k, v in trainable_state(model).items()}, tmp / FILES[0])
        crash_point(epoch, 2)
        save_file({k: v.contiguous() for k, v in best_state.items()}, tmp / FILES[1])
        crash_point(epoch, 3)
        torch.save(optimizer.state_dict(), tmp / FILES[2])
        crash_point(epoch, 4)
        torch.save(scheduler.state_dict(), tmp / FILES[3])
        crash_point(epoch, 5)
        (tmp / FILES[4]).write_text(json.dumps(state, indent=1))
        crash_point(epoch, 6)
        for name in FILES:
            _fsync(tmp / name)
        share(tmp)
        fsync_dir(tmp)
        if final.exists():  # the same epoch saved before (not in normal runs): aside, then replaced
            self._discard(final, epoch, crash=False)
        os.replace(tmp, final)
        fsync_dir(self.run_dir)
        crash_point(epoch, 7)
        for path in self._entries():  # older checkpoints, earlier versions' ones, stale tmp / old dirs
            if path.name != final.name:
                self._discard(path, epoch, crash=True)

    def _discard(self, path: Path, epoch: int, crash: bool) -> None:
        if not path.name.startswith(".") and not path.is_symlink():  # aside first: never a half-deleted candidate
            aside = self.run_dir / f".{path.name.replace('.tmp', '-tmp')}.old-{os.getpid()}"
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(path, aside)
            path = aside
            if crash:
                crash_point(epoch, 8)
        if path.is_dir() and not path.is_symlink():
            files = sorted(p for p in path.iterdir() if p.is_file())
            if files:
                files[0].unlink()
                if crash:
                    crash_point(epoch, 9)
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if crash:
            crash_point(epoch, 10)

    def load(self, model, optimizer, scheduler) -> tuple[dict, dict]:
        """(best weights, state) of the newest complete checkpoint, with the model, optimiser and scheduler
        restored from it."""
        latest = self.latest()
        if latest is None:
            raise CheckpointError(f"--resume: no complete checkpoint in {self.run_dir}; rerun without --resume")
        path, state = latest
        try:
            _load_trainable(model, load_file(path / FILES[0]))
            optimizer.load_state_dict(torch.load(path / FILES[2], weights_only=True))
            scheduler.load_state_dict(torch.load(path / FILES[3], weights_only=True))
            best = load_file(path / FILES[1])
        except (SafetensorError, OSError, RuntimeError, KeyError, ValueError, TypeError, EOFError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"--resume: the checkpoint {path} cannot be read ({first}); rerun with "
                                  "--overwrite instead of --resume to start over") from None
        return best, state

    def remove(self) -> None:
        for path in self._entries():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _load_trainable(model, tensors: dict) -> None:
    params = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise KeyError(f"it holds {unknown[0]!r}, which this model does not have")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)


__all__ = ["CRASH_ENV", "Checkpoint", "CheckpointError", "STEPS", "crash_point"]

"""Run directories: the marker that says adapterkit wrote one, the checks before anything is replaced, and
file modes that follow the umask.

``train`` writes ``adapterkit-run.json`` into every run directory (the hidden ``.NAME.partial/`` it builds the
run in, so the finished ``NAME/`` has it too). ``--overwrite`` (and ``sweep``/``demo``, which retrain stale
runs in place) replaces a directory only when it is an adapterkit run -- the marker, or for runs written
before the marker existed ``metrics.json`` beside ``adapter/`` holding an adapterkit result -- and holds
nothing adapterkit did not write. Anything else is refused with one line and left untouched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

MARKER = "adapterkit-run.json"
RUN_META_FILE = "adapterkit_run.json"  # methods.RUN_META_FILE: a full / top-k result's metadata
#: Entries of a finished run, and in its ``.partial`` twin the epoch checkpoints (legacy names included).
RUN_ENTRIES = frozenset({MARKER, "metrics.json", "adapter", "curves.png"})
#: checkpoint-N, checkpoint-N.tmp, .checkpoint-N.old-PID (being deleted); checkpoint, checkpoint.tmp (earlier versions)
CHECKPOINT_ENTRY = re.compile(r"^\.?checkpoint(-\d+)?(\.tmp|-tmp)?(\.old-\d+)?$")


class RunDirError(ValueError):
    """A directory adapterkit was asked to replace is not one it wrote; nothing was touched."""


def write_marker(run_dir: Path) -> None:
    from . import __version__

    (run_dir / MARKER).write_text(json.dumps({"adapterkit_run": 1, "adapterkit": __version__}) + "\n")


def _has_marker(directory: Path) -> bool:
    path = directory / MARKER
    if path.is_symlink() or not path.is_file() or path.stat().st_size > 4096:
        return False
    try:
        return isinstance(json.loads(path.read_text()), dict)
    except (ValueError, RecursionError):
        return False


def _legacy_run(directory: Path) -> bool:
    """A finished run written before the marker: metrics.json beside an adapterkit adapter/ or saved model."""
    adapter = directory / "adapter"
    if not (directory / "metrics.json").is_file() or adapter.is_symlink() or not adapter.is_dir():
        return False
    if (adapter / RUN_META_FILE).is_file():
        return True
    config = adapter / "adapter_config.json"
    try:
        return config.stat().st_size < (1 << 20) and "adapterkit_format" in json.loads(config.read_text())
    except (OSError, ValueError, RecursionError, TypeError):
        return False


def _foreign(directory: Path, partial: bool) -> list[str]:
    """Entries adapterkit does not write into a run (or, ``partial``, into a run being built)."""
    names = sorted(p.name for p in directory.iterdir())
    return [n for n in names if n not in RUN_ENTRIES and not (partial and CHECKPOINT_ENTRY.match(n))]


def check_replaceable(directory: Path, option: str = "--output") -> None:
    """Raise RunDirError unless ``directory`` is a finished adapterkit run holding only what adapterkit wrote."""
    fix = f"remove it yourself or choose another {option}"
    if directory.is_symlink() or not directory.is_dir():
        raise RunDirError(f"{option} {directory} exists and is not a run directory adapterkit wrote "
                          f"({'a symlink' if directory.is_symlink() else 'a file'}); nothing was replaced: {fix}")
    if not any(directory.iterdir()):
        return  # an empty directory (e.g. made by a job script): nothing to lose
    if not (_has_marker(directory) or _legacy_run(directory)):
        raise RunDirError(f"{option} {directory} is not an adapterkit run directory (no {MARKER}, nor metrics.json "
                          f"with adapter/); nothing was replaced: {fix}")
    foreign = _foreign(directory, partial=False)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise RunDirError(f"{option} {directory} holds files adapterkit did not write ({shown}); nothing was "
                          f"replaced: move them away, {fix}")


def check_partial(run_dir: Path) -> None:
    """Raise RunDirError unless ``run_dir`` (a ``.NAME.partial``) can be cleared: built by adapterkit (marker,
    or an older version's checkpoints only) and holding nothing else."""
    if run_dir.is_symlink() or not run_dir.is_dir():
        raise RunDirError(f"{run_dir} (where adapterkit builds the run) exists and is not a directory it wrote; "
                          "remove it yourself or choose another --output")
    foreign = _foreign(run_dir, partial=True)
    if foreign:
        raise RunDirError(f"{run_dir} (where adapterkit builds the run) holds files adapterkit did not write "
                          f"({', '.join(foreign[:3])}); remove it yourself or choose another --output")


def replace_dir(new: Path, target: Path) -> None:
    """Put ``new`` at ``target`` by renames: the previous ``target`` (checked replaceable) is moved aside
    first and deleted last, so a crash leaves one of the two complete."""
    old = None
    if target.exists() or target.is_symlink():
        check_replaceable(target)
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: The run metadata ``eval`` / ``predict`` / ``info`` read (adapter_config.json's "extra", or
#: adapterkit_run.json for full / top-k), with the types train writes; None is allowed for each.
_META_TYPES = {"task": str, "kind": str, "metric": str, "model": str, "method": str, "label_names": list,
               "max_length": int, "doc_stride": int, "eval_batch_size": int, "seed": int, "max_validation": int,
               "data": dict, "best": dict}
_META_LIMITS = {"max_length": (8, 1 << 20), "doc_stride": (0, 1 << 20), "eval_batch_size": (1, 1 << 20),
                "max_validation": (1, 1 << 40), "seed": (-(1 << 63), 1 << 63)}


def check_run_meta(meta, where: str) -> dict:
    """``meta`` if it is run metadata train could have written, else ValueError naming the field."""
    def bad(field: str, why: str) -> ValueError:
        return ValueError(f"{where}: the run metadata's {field} {why}; re-save the adapter (or retrain the run)")

    if not isinstance(meta, dict):
        raise bad("root", f"is {type(meta).__name__}, not an object")
    for key, kind in _META_TYPES.items():
        value = meta.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is int):
            raise bad(key, f"is {type(value).__name__}, not {kind.__name__}")
        if key in _META_LIMITS and value is not None and not _META_LIMITS[key][0] <= value <= _META_LIMITS[key][1]:
            raise bad(key, f"{value} is out of range")
    if meta.get("label_names") is not None and not all(isinstance(n, str) for n in meta["label_names"]):
        raise bad("label_names", "holds non-strings")
    if meta.get("data") is not None and not all(isinstance(v, str) for v in meta["data"].values()):
        raise bad("data", "holds non-strings")
    return meta


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share(root: Path) -> None:
    """Give ``root`` and everything under it the modes the umask allows (0755 / 0644 under umask 022):
    temporary-file helpers (mkdtemp, safetensors) create 0700 / 0600 ones, which a group cannot read."""
    mask = _umask()
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


__all__ = ["CHECKPOINT_ENTRY", "MARKER", "RunDirError", "check_partial", "check_run_meta", "check_replaceable", "replace_dir", "share", "write_marker"]

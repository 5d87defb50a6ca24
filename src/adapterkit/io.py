"""Saving and loading adapters: safetensors only, checked against the base model, written atomically.

An adapter directory holds
  adapter_config.json         {"adapterkit_format": 2, "name", "config", "head", "base_model" (fingerprint),
                               "parameters" (counts), "files" (sha256 of the weights), "extra",
                               "config_sha256" (sha256 of the canonical JSON of all the other fields)}
  adapter_model.safetensors   the adapter's bottlenecks, layer-norm copies and head -- nothing else
Tensor keys are the model's state-dict keys without the adapter's name (``...dense.adapters.down.weight``),
so an adapter can be loaded under another name. No pickle is ever read.

Format 2 (written since issue 13) adds config_sha256; format 1 (no config checksum) is still read, but the
weights checksum in "files" is required for both. What a load checks, and how it reads files, is in
``checks.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import reprlib
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from .architectures import detect, resolve
from .checks import (CONFIG_FILE, FORMAT_VERSION, MAX_CONFIG_BYTES, MAX_HEADER_BYTES, WEIGHTS_FILE, AdapterLoadError,
                     check_header, check_meta, config_digest, existing_entries, parse_json, read_file, resolve_directory)
from .config import AdapterConfig
from .heads import HeadConfig
from .model import _insert, _output_dim, _require, adapter_summary, adapter_tensors, planned_tensors


def fingerprint(model: nn.Module) -> dict[str, Any]:
    """What identifies the base model: architecture, sizes, and a hash of a few pretrained weights
    (the input embeddings, the first and the last adapted layer), rounded to bf16 so fp32/fp16/bf16
    copies of one checkpoint agree."""
    config = getattr(model, "config", None)
    state = model.__dict__.get("adapterkit")
    layers = resolve(model, state.spec if state else detect(model))
    probes = [model.get_input_embeddings().weight] if hasattr(model, "get_input_embeddings") else []
    probes += [next(layers[0].attention_output.parameters()), next(layers[-1].ffn_output.parameters())]
    digest = hashlib.sha256()
    for t in probes:
        digest.update(t.detach().flatten()[:8192].to("cpu", torch.bfloat16).view(torch.int16).numpy().tobytes())
    return {
        "architecture": type(model).__name__ if config is None else getattr(config, "model_type", type(model).__name__),
        "hidden_size": _output_dim(layers[0].ffn_output),
        "num_layers": len(layers),
        "vocab_size": getattr(config, "vocab_size", None),
        "weights_sha256": digest.hexdigest()[:16],
    }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_adapter(model: nn.Module, name: str, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write adapter ``name`` to ``directory`` atomically: everything goes to a temporary sibling directory
    first, which then replaces ``directory`` in one rename. ``extra`` (a JSON-able dict) is stored alongside.

    ``directory`` must be new, empty, or an adapter directory written before (only its two files): a
    regular file, a symlink or a directory holding anything else raises FileExistsError and is left alone.
    Equal tensors give byte-identical files; files are created with the usual permissions (0o644 and 0o755
    under a 022 umask)."""
    state = _require(model, name)
    if extra is not None and not isinstance(extra, dict):
        raise ValueError(f"extra must be a JSON-able dict or None, got {type(extra).__name__}")
    directory = Path(directory)
    _check_target(directory)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in sorted(adapter_tensors(model, name).items())}
    weights = save_safetensors(tensors, metadata={"format": "pt"})  # one metadata key: its order cannot vary
    meta = {
        "adapterkit_format": FORMAT_VERSION,
        "name": name,
        "config": state.configs[name].to_dict(),
        "head": state.heads[name].to_dict(),
        "base_model": fingerprint(model),
        "parameters": {k: v for k, v in adapter_summary(model)[name].items() if k != "percent"},
        "files": {WEIGHTS_FILE: _sha256(weights)},
        "extra": extra or {},
    }
    meta = json.loads(json.dumps(meta))  # as a reader will see it (tuples -> lists, int keys -> strings)
    meta["config_sha256"] = config_digest(meta)
    text = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode("ascii")
    shown = str(directory / CONFIG_FILE)
    if len(text) > MAX_CONFIG_BYTES:
        raise ValueError(f"{shown} would be {len(text)} bytes, over the {MAX_CONFIG_BYTES} a load accepts; store less in extra")
    try:
        check_meta(parse_json(text), shown)  # what is written can be read back
    except ValueError as e:
        raise ValueError(f"extra cannot be saved so that it loads again ({e}); pass plain JSON data") from None
    write_directory(directory, {WEIGHTS_FILE: weights, CONFIG_FILE: text}, _check_target)
    return directory


def write_directory(directory: Path, files: dict[str, bytes], check_target) -> None:
    """Write ``files`` (name -> bytes) into a temporary sibling of ``directory``, fsync them, call
    ``check_target(directory)`` again (nothing may have appeared there meanwhile), and rename it into place."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_directory(directory.parent, f".{directory.name}.tmp-")
    try:
        for filename, data in files.items():
            _write(tmp / filename, data)
        _fsync(tmp)
        check_target(directory)
        replace_directory(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_directory(tmp: Path, directory: Path) -> None:
    """Move the finished directory ``tmp`` to ``directory`` in one rename; what was there (checked by the
    caller as its own) is set aside first and removed after, or put back if the rename fails."""
    old = None
    if os.path.lexists(directory):
        old = directory.with_name(f".{directory.name}.old-{secrets.token_hex(6)}")
        os.replace(directory, old)
    try:
        os.replace(tmp, directory)
    except BaseException:
        if old is not None:
            os.replace(old, directory)
        raise
    _fsync(directory.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_target(directory: Path) -> None:
    """save_adapter replaces only what it wrote itself: a new path, an empty directory, or an adapter directory."""
    entries = existing_entries(directory, "adapter")
    if not entries:
        return
    foreign = sorted(entries - {CONFIG_FILE, WEIGHTS_FILE})
    try:
        meta = parse_json(read_file(str(directory), CONFIG_FILE, None, MAX_CONFIG_BYTES, str(directory / CONFIG_FILE)))
        ours = isinstance(meta, dict) and "adapterkit_format" in meta
    except ValueError:  # AdapterLoadError too
        ours = False
    if not ours or foreign:
        what = f"holds {foreign[0]!r}, which adapterkit did not write" if ours else "is not an adapterkit adapter directory"
        raise FileExistsError(f"{directory} {what}; save_adapter replaces the whole directory, so pick a new or empty path")


def _new_directory(parent: Path, prefix: str) -> Path:
    """A fresh directory with the umask's permissions (mkdtemp's are 0o700)."""
    while True:
        path = parent / f"{prefix}{secrets.token_hex(6)}"
        try:
            os.mkdir(path, 0o777)
            return path
        except FileExistsError:
            continue


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible everywhere (Windows): durability then rests on the files' own fsync
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_adapter_config(directory: str | os.PathLike, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The parsed, checked adapter_config.json of ``directory``, or AdapterLoadError saying what is wrong.
    With ``root``, the directory and the file must resolve inside ``root`` (links included)."""
    real_dir, real_root = resolve_directory(directory, root)
    return _read_config(directory, real_dir, real_root)


def read_config_json(directory, real_dir: str, real_root: str | None) -> Any:
    """The parsed (not yet checked) adapter_config.json of a resolved directory: read once, bounded."""
    shown = os.path.join(os.fspath(directory), CONFIG_FILE)
    data = read_file(real_dir, CONFIG_FILE, real_root, MAX_CONFIG_BYTES, shown)
    try:
        return parse_json(data)
    except ValueError as e:  # not UTF-8, not JSON, duplicate keys, too deep, lone surrogates
        raise AdapterLoadError(f"{shown} is not valid JSON ({e}); re-save the adapter") from None


def _read_config(directory, real_dir: str, real_root: str | None) -> dict[str, Any]:
    return check_meta(read_config_json(directory, real_dir, real_root), os.path.join(os.fspath(directory), CONFIG_FILE))


def load_adapter(model: nn.Module, directory: str | os.PathLike, name: str | None = None, check_base: bool = True,
                 root: str | os.PathLike | None = None) -> str:
    """Load an adapter saved by :func:`save_adapter` into ``model`` under ``name`` (default: its saved name).

    Everything is checked before the model is touched: the config (types, limits from the model, its
    checksum), the base-model fingerprint, the weights' checksum, and the safetensors header against the
    tensors this config gives in this model, then that every value is finite. Each file is read once and
    what was checked is what is loaded. With ``root``, the directory and each file must resolve inside
    ``root`` (symlinks included). On any error the model is left exactly as it was. Returns the name."""
    real_dir, real_root = resolve_directory(directory, root)
    return load_checked(model, directory, real_dir, real_root, _read_config(directory, real_dir, real_root), name,
                        check_base)


def load_checked(model: nn.Module, directory, real_dir: str, real_root: str | None, meta: dict[str, Any],
                 name: str | None = None, check_base: bool = True) -> str:
    """:func:`load_adapter` once the directory is resolved and its config read and checked (``check_meta``)."""
    name = meta["name"] if name is None else name
    config, head = adapter_shape(meta)
    if check_base:
        check_fingerprint(directory, meta["base_model"], fingerprint(model))
    try:
        expected = planned_tensors(model, config, head)
    except ValueError as e:  # over the model's limits, layers it lacks, no head to copy
        raise AdapterLoadError(f"{directory}: the adapter does not fit this model ({e})") from None
    tensors = read_checked_weights(directory, real_dir, real_root, meta, expected)
    insert_tensors(model, name, config, head, tensors, os.path.join(os.fspath(directory), WEIGHTS_FILE))
    return name


def adapter_shape(meta: dict[str, Any]) -> tuple[AdapterConfig, HeadConfig]:
    """The AdapterConfig and HeadConfig of a checked adapter config (``check_meta``)."""
    return AdapterConfig.from_saved(meta["config"]), HeadConfig.coerce(meta["head"], model_has_head=True)


def read_checked_weights(directory, real_dir: str, real_root: str | None, meta: dict[str, Any],
                         expected: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The adapter's tensors, read once from its weights file and checked against ``meta``'s checksum and the
    ``expected`` shapes (:func:`adapterkit.model.planned_tensors`) before they are allocated. Touches no model,
    so it may run on any thread (the server's adapter store reads cold adapters this way, off its worker)."""
    return read_checked_safetensors(directory, real_dir, real_root, WEIGHTS_FILE, meta, expected, "adapter")


def read_checked_safetensors(directory, real_dir: str, real_root: str | None, filename: str, meta: dict[str, Any],
                             expected: dict[str, tuple[int, ...]], what: str) -> dict[str, torch.Tensor]:
    """``filename``'s tensors (an adapter's or a fusion's: ``what``), read once with a size bound from the
    ``expected`` shapes, checked against ``meta["files"]``'s sha256 and the header's shapes before any tensor
    is allocated."""
    shown = os.path.join(os.fspath(directory), filename)
    limit = 8 + MAX_HEADER_BYTES + 8 * sum(math.prod(s) for s in expected.values())
    data = read_file(real_dir, filename, real_root, limit, shown)
    if _sha256(data) != meta["files"][filename]:
        raise AdapterLoadError(f"{shown} is corrupted (checksum mismatch); re-save or re-download the {what}")
    check_header(data, expected, shown)
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as e:
        raise AdapterLoadError(f"{shown} is not a readable safetensors file ({e}); re-save the {what}") from None
    del data
    return tensors


def insert_tensors(model: nn.Module, name: str, config: AdapterConfig, head: HeadConfig,
                   tensors: dict[str, torch.Tensor], shown: str) -> None:
    """Insert adapter ``name`` with exactly ``tensors`` (keys as in :func:`planned_tensors`, shapes checked by
    the caller or here) after checking that every value is finite; the model is unchanged on any error.
    ``shown`` names the source in messages. (load_adapter's last step; format converters use it too.)"""
    for key, t in tensors.items():
        if not torch.isfinite(t).all():
            raise AdapterLoadError(f"{shown}: tensor {key} holds NaN or infinite values (a diverged training run?); "
                                   "retrain or re-save the adapter from a good checkpoint")

    def fill(own: dict[str, torch.Tensor]) -> None:
        if set(own) != set(tensors) or any(own[k].shape != tensors[k].shape for k in own):
            raise AdapterLoadError(f"{shown} does not fit the adapter built for it; re-save the adapter")
        with torch.no_grad():
            for key, target in own.items():
                target.copy_(tensors[key])

    _insert(model, name, config, head, None, fill=fill)


def check_fingerprint(directory, saved: dict[str, Any], current: dict[str, Any]) -> None:
    diffs = [f"{k}: adapter {reprlib.repr(saved.get(k))} vs model {current.get(k)!r}" for k in current if saved.get(k) != current.get(k)]
    if diffs:
        raise AdapterLoadError(f"{directory}: adapter was trained on a different base model (" + "; ".join(diffs) +
                               "); load it into the model it was trained on, or pass check_base=False")


__all__ = ["AdapterLoadError", "adapter_shape", "check_fingerprint", "read_checked_safetensors", "fingerprint", "insert_tensors", "load_adapter",
           "read_adapter_config", "read_checked_weights", "save_adapter"]

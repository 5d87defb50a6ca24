"""Saving and loading adapters: safetensors only, checked against the base model, written atomically.

An adapter directory holds
  adapter_config.json         {"name", "config", "head", "base_model" (fingerprint), "parameters" (counts),
                               "files" (sha256), "extra"}
  adapter_model.safetensors   the adapter's bottlenecks, layer-norm copies and head -- nothing else
Tensor keys are the model's state-dict keys without the adapter's name (``...dense.adapters.down.weight``),
so an adapter can be loaded under another name. No pickle is ever read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .architectures import detect, resolve
from .config import AdapterConfig
from .heads import HeadConfig
from .model import _output_dim, _require, adapter_modules, adapter_summary, add_adapter, remove_adapter

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
FORMAT_VERSION = 1


class AdapterLoadError(ValueError):
    """An adapter directory cannot be loaded into this model; nothing was changed."""


def _adapter_tensors(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    tensors = {}
    for path, holder in adapter_modules(model):
        if name in holder.adapters:
            for rel, tensor in holder.adapters[name].state_dict().items():
                tensors[f"{path}.{rel}"] = tensor
    return tensors


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_adapter(model: nn.Module, name: str, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write adapter ``name`` to ``directory`` atomically: everything goes to a temporary sibling directory
    first, which then replaces ``directory`` in one rename. ``extra`` (JSON-able) is stored alongside."""
    state = _require(model, name)
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in _adapter_tensors(model, name).items()}
        save_file(tensors, tmp / WEIGHTS_FILE, metadata={"format": "pt", "adapterkit": str(FORMAT_VERSION)})
        meta = {
            "adapterkit_format": FORMAT_VERSION,
            "name": name,
            "config": state.configs[name].to_dict(),
            "head": state.heads[name].to_dict(),
            "base_model": fingerprint(model),
            "parameters": {k: v for k, v in adapter_summary(model)[name].items() if k != "percent"},
            "files": {WEIGHTS_FILE: _sha256(tmp / WEIGHTS_FILE)},
            "extra": extra or {},
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_adapter_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed adapter_config.json, or AdapterLoadError saying what is wrong."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise AdapterLoadError(f"{path} not found: is {directory} an adapter directory written by save_adapter?")
    try:
        meta = json.loads(path.read_text())
        AdapterConfig.from_dict(meta["config"])
        HeadConfig(**{**meta["head"], "labels": meta["head"].get("labels")})
    except (ValueError, KeyError, TypeError) as e:
        raise AdapterLoadError(f"{path} is not a valid adapter config ({e}); re-save the adapter") from None
    return meta


def load_adapter(model: nn.Module, directory: str | os.PathLike, name: str | None = None, check_base: bool = True) -> str:
    """Load an adapter saved by :func:`save_adapter` into ``model`` under ``name`` (default: its saved name).
    Everything is checked before the model is touched: the base-model fingerprint, the file checksum, the
    tensor names and shapes. On any error the model is left as it was. Returns the adapter's name."""
    directory = Path(directory)
    meta = read_adapter_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise AdapterLoadError(f"{weights} not found: the adapter directory is incomplete; re-save the adapter")
    expected_sha = meta.get("files", {}).get(WEIGHTS_FILE)
    if expected_sha and _sha256(weights) != expected_sha:
        raise AdapterLoadError(f"{weights} is corrupted (checksum mismatch); re-save or re-download the adapter")
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise AdapterLoadError(f"{weights} is not a readable safetensors file ({e}); re-save the adapter") from None

    name = name or meta["name"]
    config = AdapterConfig.from_dict(meta["config"])
    head = HeadConfig(**meta["head"])
    if check_base:
        _check_fingerprint(meta["base_model"], fingerprint(model))
    add_adapter(model, name, config, head=head)
    try:
        own = {k: v for k, v in _adapter_tensors(model, name).items()}
        own = {k.replace(f".adapters.{name}.", ".adapters."): v for k, v in own.items()}
        missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        if missing or unexpected:
            raise AdapterLoadError(
                f"{weights} does not fit this model: {len(missing)} missing tensor(s) (e.g. {missing[:1]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:1]}); was it saved from another architecture?")
        for key, target in own.items():
            if tensors[key].shape != target.shape:
                raise AdapterLoadError(f"{weights}: tensor {key} has shape {tuple(tensors[key].shape)}, "
                                       f"the model expects {tuple(target.shape)}")
        with torch.no_grad():
            for key, target in own.items():
                target.copy_(tensors[key])
    except BaseException:
        remove_adapter(model, name)
        raise
    return name


def _check_fingerprint(saved: dict[str, Any], current: dict[str, Any]) -> None:
    diffs = [f"{k}: adapter {saved.get(k)!r} vs model {current.get(k)!r}" for k in current if saved.get(k) != current.get(k)]
    if diffs:
        raise AdapterLoadError("adapter was trained on a different base model (" + "; ".join(diffs) +
                               "); load it into the model it was trained on, or pass check_base=False")


__all__ = ["AdapterLoadError", "fingerprint", "load_adapter", "read_adapter_config", "save_adapter"]

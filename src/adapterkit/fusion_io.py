"""Saving and loading a fusion (fusion.py): its own safetensors file that names the adapters it fuses.

A fusion directory holds
  fusion_config.json          {"adapterkit_fusion_format": 1, "name", "adapters" (the fused names, in order),
                               "adapter_sha256" (per fused adapter: sha256 of its tensors as save_adapter
                               writes them, i.e. of its adapter_model.safetensors), "config" (FusionConfig),
                               "head", "base_model" (fingerprint), "files" (sha256 of the weights), "extra",
                               "config_sha256" (of the canonical JSON of the other fields)}
  fusion_model.safetensors    the fusion layers (``<site>.adapters.fusion.*``) and its head -- nothing else
The fused adapters are not copied: they are saved (and loaded) as adapters of their own, before the fusion.
``load_fusion`` refuses, before touching the model, when a fused adapter is missing or is not the adapter the
fusion was trained over (another sha256), when the base model differs, or when the file is damaged.
"""

from __future__ import annotations

import hashlib
import json
import os
import reprlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from .checks import MAX_CONFIG_BYTES, AdapterLoadError, config_digest, existing_entries, parse_json, read_file, resolve_directory
from .composition import Fuse
from .fusion import FusionConfig, _record, add_fusion, fusion_tensors, planned_fusion_tensors
from .heads import HeadConfig
from .io import check_fingerprint, fingerprint, read_checked_safetensors, write_directory
from .model import adapter_tensors, get_state

FUSION_CONFIG_FILE = "fusion_config.json"
FUSION_WEIGHTS_FILE = "fusion_model.safetensors"
FUSION_FORMAT = 1
_FIELDS = {"adapterkit_fusion_format", "name", "adapters", "adapter_sha256", "config", "head", "base_model", "files",
           "extra", "config_sha256"}


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """The bytes save_adapter writes for these tensors (sorted keys, CPU, one metadata key)."""
    return save_safetensors({k: v.detach().to("cpu", copy=True).contiguous() for k, v in sorted(tensors.items())},
                            metadata={"format": "pt"})


def adapter_sha256(model: nn.Module, name: str) -> str:
    """sha256 of adapter ``name``'s tensors as save_adapter writes them: the sha256 of its
    adapter_model.safetensors (and of its config's "files" entry) when saved from this model's dtype."""
    return hashlib.sha256(_safetensors_bytes(adapter_tensors(model, name))).hexdigest()


def save_fusion(model: nn.Module, fusion, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``fusion`` (a Fuse block or its name) to ``directory`` atomically (a temporary sibling renamed into
    place). ``directory`` must be new, empty, or a fusion directory written before."""
    record = _record(model, fusion)
    if extra is not None and not isinstance(extra, dict):
        raise ValueError(f"extra must be a JSON-able dict or None, got {type(extra).__name__}")
    directory = Path(directory)
    _check_target(directory)
    weights = _safetensors_bytes(fusion_tensors(model, record.block.name))
    meta = {
        "adapterkit_fusion_format": FUSION_FORMAT,
        "name": record.block.name,
        "adapters": list(record.block.names),
        "adapter_sha256": {n: adapter_sha256(model, n) for n in record.block.names},
        "config": record.config.to_dict(),
        "head": record.head.to_dict(),
        "base_model": fingerprint(model),
        "files": {FUSION_WEIGHTS_FILE: hashlib.sha256(weights).hexdigest()},
        "extra": extra or {},
    }
    meta = json.loads(json.dumps(meta))
    meta["config_sha256"] = config_digest(meta)
    text = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode("ascii")
    if len(text) > MAX_CONFIG_BYTES:
        raise ValueError(f"{directory / FUSION_CONFIG_FILE} would be {len(text)} bytes, over {MAX_CONFIG_BYTES}; store less in extra")
    write_directory(directory, {FUSION_WEIGHTS_FILE: weights, FUSION_CONFIG_FILE: text}, _check_target)
    return directory


def _check_target(directory: Path) -> None:
    """Replace only what save_fusion wrote: a new path, an empty directory, or a fusion directory."""
    entries = existing_entries(directory, "fusion")
    if not entries:
        return
    ours = False
    if entries <= {FUSION_CONFIG_FILE, FUSION_WEIGHTS_FILE} and FUSION_CONFIG_FILE in entries:
        try:
            meta = parse_json(read_file(str(directory), FUSION_CONFIG_FILE, None, MAX_CONFIG_BYTES, str(directory)))
            ours = isinstance(meta, dict) and "adapterkit_fusion_format" in meta
        except ValueError:
            ours = False
    if not ours:
        raise FileExistsError(f"{directory} is not empty and not a fusion directory written by save_fusion; "
                              "save_fusion replaces the whole directory, so pick a new or empty path")


def read_fusion_config(directory: str | os.PathLike, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The parsed, checked fusion_config.json of ``directory``, or AdapterLoadError saying what is wrong."""
    real_dir, real_root = resolve_directory(directory, root)
    return _read_meta(directory, real_dir, real_root)


def _read_meta(directory, real_dir: str, real_root: str | None) -> dict[str, Any]:
    shown = os.path.join(os.fspath(directory), FUSION_CONFIG_FILE)

    def bad(problem: str, fix: str = "re-save the fusion with save_fusion") -> AdapterLoadError:
        return AdapterLoadError(f"{shown}: {problem}; {fix}")

    try:
        meta = parse_json(read_file(real_dir, FUSION_CONFIG_FILE, real_root, MAX_CONFIG_BYTES, shown))
    except AdapterLoadError:
        raise
    except ValueError as e:
        raise bad(f"not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("adapterkit_fusion_format") != FUSION_FORMAT:
        raise bad(f"adapterkit_fusion_format is {reprlib.repr(meta.get('adapterkit_fusion_format') if isinstance(meta, dict) else meta)}, "
                  f"this adapterkit reads {FUSION_FORMAT}", "is this a directory written by save_fusion?")
    if set(meta) != _FIELDS:
        raise bad(f"fields {sorted(set(meta) ^ _FIELDS)} missing or unknown")
    if not isinstance(meta["config_sha256"], str) or config_digest(meta) != meta["config_sha256"]:
        raise bad("the config was changed after it was saved (config_sha256 mismatch)", "re-save or re-download the fusion")
    names, hashes = meta["adapters"], meta["adapter_sha256"]
    if not isinstance(names, list) or not isinstance(hashes, dict) or set(hashes) != set(names):
        raise bad("adapters must be a list of names and adapter_sha256 one sha256 per name")
    for key in ("config", "head", "base_model", "files", "extra"):
        if not isinstance(meta[key], dict):
            raise bad(f"{key} is not a JSON object")
    if set(meta["files"]) != {FUSION_WEIGHTS_FILE}:
        raise bad(f"files must be {{{FUSION_WEIGHTS_FILE!r}: its sha256}}")
    try:
        Fuse(*names, name=meta["name"])
        FusionConfig.from_dict(meta["config"])
        HeadConfig.coerce(meta["head"], model_has_head=True)
    except (ValueError, TypeError) as e:
        raise bad(f"invalid fusion ({e})") from None
    return meta


def load_fusion(model: nn.Module, directory: str | os.PathLike, check_base: bool = True, check_adapters: bool = True,
                root: str | os.PathLike | None = None) -> Fuse:
    """Load a fusion saved by :func:`save_fusion` into ``model``, whose fused adapters must already be loaded
    under the saved names (``load_adapter(model, dir, name=...)``). Checked before the model is touched: the
    config and its checksum, that every fused adapter is there and (``check_adapters``) is the one the fusion
    was trained over, the base-model fingerprint (``check_base``), the weights' checksum, header and finite
    values. Returns the Fuse block (pass it to ``set_active``)."""
    real_dir, real_root = resolve_directory(directory, root)
    meta = _read_meta(directory, real_dir, real_root)
    block = Fuse(*meta["adapters"], name=meta["name"])
    state = model.__dict__.get("adapterkit")
    present = set(state.configs) if state else set()
    missing = [n for n in block.names if n not in present]
    if missing:
        raise AdapterLoadError(f"{directory}: the fusion {block.name!r} fuses adapters {list(block.names)}, and this model "
                               f"lacks {missing}; load them first (adapterkit.load_adapter(model, DIR, name=...))")
    if check_adapters:
        changed = [n for n in block.names if adapter_sha256(model, n) != meta["adapter_sha256"][n]]
        if changed:
            raise AdapterLoadError(f"{directory}: adapter(s) {changed} differ from those the fusion was trained over "
                                   "(sha256 of their weights); load the same adapter directories, or pass check_adapters=False")
    if check_base:
        check_fingerprint(directory, meta["base_model"], fingerprint(model))
    config = FusionConfig.from_dict(meta["config"])
    head = HeadConfig.coerce(meta["head"], model_has_head=True)
    if block.name in get_state(model).fusions:
        raise AdapterLoadError(f"{directory}: this model already has a fusion named {block.name!r}; remove_fusion it first")
    try:
        expected = planned_fusion_tensors(model, block, config, head)
    except (ValueError, KeyError) as e:
        raise AdapterLoadError(f"{directory}: the fusion does not fit this model ({e})") from None
    shown = os.path.join(os.fspath(directory), FUSION_WEIGHTS_FILE)
    tensors = read_checked_safetensors(directory, real_dir, real_root, FUSION_WEIGHTS_FILE, meta, expected, "fusion")
    for key, t in tensors.items():
        if not torch.isfinite(t).all():
            raise AdapterLoadError(f"{shown}: tensor {key} holds NaN or infinite values; retrain or re-save the fusion")

    def fill(own: dict[str, torch.Tensor]) -> None:
        if set(own) != set(tensors):
            raise AdapterLoadError(f"{shown} does not fit the fusion built for it; re-save the fusion")
        with torch.no_grad():
            for key, target in own.items():
                target.copy_(tensors[key])

    add_fusion(model, block, config, head, fill=fill)
    return block


__all__ = ["FUSION_CONFIG_FILE", "FUSION_WEIGHTS_FILE", "adapter_sha256", "load_fusion", "read_fusion_config", "save_fusion"]

"""AdapterHub (``adapters``) bottleneck adapters in and out of adapterkit.

    import adapterkit as ak
    ak.load_adapter(model, "hub_adapter_dir")             # a directory saved by adapters' save_adapter
    export_adapterhub(model, "task", "out_dir")           # a directory adapters 1.3 loads with load_adapter

Import reads ``adapter_config.json`` (a bottleneck config), the weights (``adapter.safetensors`` /
``adapter_model.safetensors``, or ``pytorch_adapter.bin`` through ``torch_files``: never an unchecked pickle)
and, if saved, the prediction head (``head_config.json`` + ``model_head.safetensors`` / ``pytorch_model_head.bin``).
Every option is checked against what adapterkit computes exactly (``adapterhub_format``); anything else is
refused with one line naming the option. AdapterHub has no layer-norm copies, so an imported adapter uses the
model's norms (``train_layer_norms=False``). AdapterHub records only the base model's name, type and hidden
size, so ``check_base`` compares those and the layer count; the weights themselves cannot be checked.

Export refuses an adapter whose layer-norm copies differ from the model's norms unless ``drop_layer_norms``
(then :func:`layer_norm_cost` says what dropping them changes). Both .bin (what ``load_adapter`` reads by
default) and .safetensors (``use_safetensors=True``) weights are written.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from .. import io as core_io
from ..architectures import resolve
from ..checks import MAX_CONFIG_BYTES, AdapterLoadError, check_meta, parse_json, read_file, resolve_directory
from ..heads import MAX_LABELS, HeadConfig
from ..copies import ModuleCopies
from ..model import _NAME, adapter_modules, adapter_tensors, get_state, planned_tensors
from . import adapterhub_format as fmt
from .torch_files import load_state_dict

MAX_WEIGHT_BYTES = 1 << 31  # refused before reading; the expected tensors bound it far lower (below)


# ---- detection and reading -------------------------------------------------------------------------------
def read_adapterhub_config(directory, root=None) -> dict[str, Any] | None:
    """The parsed adapter_config.json of ``directory`` if it is an AdapterHub one (no adapterkit_format, a
    "config" entry), else None. Never raises for a directory that is not AdapterHub's."""
    try:
        real_dir, real_root = resolve_directory(directory, root)
        meta = parse_json(read_file(real_dir, fmt.CONFIG_FILE, real_root, MAX_CONFIG_BYTES, fmt.CONFIG_FILE))
    except ValueError:  # AdapterLoadError too: let the native loader report it
        return None
    return meta if _is_adapterhub(meta) else None


def _tensors(real_dir: str, real_root: str | None, names: tuple[str, ...], limit: int, shown_dir: str
             ) -> tuple[dict[str, torch.Tensor], str] | None:
    """(tensors, file name) of the first of ``names`` present, or None if none is."""
    for name in names:
        if not os.path.lexists(os.path.join(real_dir, name)):
            continue
        shown = os.path.join(shown_dir, name)
        data = read_file(real_dir, name, real_root, limit, shown)
        if name.endswith(".bin"):
            return load_state_dict(data, shown), name
        try:
            return dict(load_safetensors(data)), name
        except (SafetensorError, ValueError, RuntimeError, OSError) as e:
            raise AdapterLoadError(f"{shown} is not a readable safetensors file ({e}); re-save the adapter") from None
    return None


def _limit(elements: int) -> int:
    """The most bytes a weights file of this many elements can need (fp64, plus room for header / zip overhead)."""
    return min(MAX_WEIGHT_BYTES, (1 << 20) + 16 * elements)


# ---- import -----------------------------------------------------------------------------------------------
def import_adapterhub(model: nn.Module, directory, name: str | None = None, check_base: bool = True,
                      root=None, meta: Any = None) -> tuple[str, list[str]]:
    """Load the AdapterHub adapter in ``directory`` into ``model``: (its name, notes on options not kept).
    ``meta``: its adapter_config.json, when the caller has read it already."""
    shown_dir = os.fspath(directory)
    shown = os.path.join(shown_dir, fmt.CONFIG_FILE)
    real_dir, real_root = resolve_directory(directory, root)
    if meta is None:
        meta = core_io.read_config_json(directory, real_dir, real_root)
    if not isinstance(meta, dict):
        raise AdapterLoadError(f"{shown} is not a JSON object; is this an adapter directory?")
    c = fmt.bn_config(meta.get("config"), shown)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    layout = fmt.MODEL_TYPES.get(model_type)
    if layout is None:
        raise AdapterLoadError(f"{shown}: importing AdapterHub adapters is supported for {', '.join(fmt.MODEL_TYPES)} "
                               f"models, not {model_type!r}")
    layers = resolve(model, get_spec(model))
    hidden, num_layers = model.config.hidden_size, len(layers)
    if check_base:
        _check_base(meta, model_type, hidden, shown_dir)
    name = name if name is not None else meta.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise AdapterLoadError(f"{shown}: adapter name {name!r} is not letters, digits, '_' or '-'; pass name=")
    # the weights: sizes are bounded by the widest adapter that could fit (4x hidden) before anything is read
    widest = num_layers * 2 * (2 * 4 * hidden * hidden + 5 * hidden)  # 2 adapters a layer, m at most 4 x hidden
    found = _tensors(real_dir, real_root, fmt.WEIGHT_FILES, _limit(widest), shown_dir)
    if found is None:
        raise AdapterLoadError(f"{shown_dir}: no adapter weights ({', '.join(fmt.WEIGHT_FILES)}); "
                               "save the adapter with adapters' model.save_adapter")
    raw, weights_file = found
    by_site = _parse_adapter_keys(raw, os.path.join(shown_dir, weights_file), num_layers)
    for (layer, site, part, wb), t in by_site.items():
        width = t.shape[-1] if part == "down" and wb == "weight" else t.shape[0] if part == "up" else hidden
        if width != hidden:
            raise AdapterLoadError(f"{shown_dir}: the layer-{layer} {site} adapter is {width} wide but this model's "
                                   f"hidden size is {hidden}; load it into the model it was trained on "
                                   f"({meta.get('model_name')!r})")
    sizes = {t.shape[0] for (_, _, part, wb), t in by_site.items() if part == "down" and wb == "weight"}
    config, notes = fmt.to_adapter_config(c, hidden, num_layers, sizes, shown)
    head, head_tensors = _read_head(real_dir, real_root, shown_dir, model_type, hidden, layout[1])
    try:
        expected = planned_tensors(model, config, head)
    except ValueError as e:
        raise AdapterLoadError(f"{shown_dir}: the adapter does not fit this model ({e})") from None
    tensors = _map_in(expected, by_site, head_tensors, os.path.join(shown_dir, weights_file))
    core_io.insert_tensors(model, name, config, head, tensors, shown_dir)
    return name, notes


def get_spec(model: nn.Module):
    from ..architectures import detect

    state = model.__dict__.get("adapterkit")
    return state.spec if state else detect(model)


def _check_base(meta: dict, model_type: str, hidden: int, shown_dir: str) -> None:
    saved_type, saved_hidden = meta.get("model_type"), meta.get("hidden_size")
    diffs = [f"{what}: adapter {saved!r} vs model {now!r}" for what, saved, now in
             (("model_type", saved_type, model_type), ("hidden_size", saved_hidden, hidden))
             if saved is not None and saved != now]
    if diffs:
        raise AdapterLoadError(f"{shown_dir}: adapter was trained on another base model ({'; '.join(diffs)}; it names "
                               f"{meta.get('model_name')!r}); load it into that model, or pass check_base=False")


def _parse_adapter_keys(raw: dict[str, torch.Tensor], shown: str, num_layers: int) -> dict[tuple, torch.Tensor]:
    """(layer, "attention" | "ffn", "down" | "up", "weight" | "bias") -> tensor; refuses any other tensor."""
    out, names = {}, set()
    for key, t in raw.items():
        m = fmt.ADAPTER_KEY.match(key)
        if m is None:
            raise fmt.refuse(shown, f"it holds tensor {key!r}, which is not a plain bottleneck projection")
        layer = int(m["layer"])
        if layer >= num_layers:
            raise AdapterLoadError(f"{shown}: tensor {key!r} is for layer {layer} but the model has {num_layers} "
                                   "layers; load it into the model it was trained on")
        names.add(m["name"])
        out[(layer, fmt.SITES[m["site"]], m["part"].split("_")[1].split(".")[0], m["wb"])] = t
    if len(names) > 1:
        raise AdapterLoadError(f"{shown} holds the weights of several adapters ({', '.join(sorted(names))}); "
                               "save them one per directory")
    return out


def _read_head(real_dir, real_root, shown_dir, model_type, hidden, layout):
    """(HeadConfig, {role: tensor}) for a saved prediction head, or (shared, {}) when none was saved."""
    if not os.path.lexists(os.path.join(real_dir, fmt.HEAD_CONFIG)):
        return HeadConfig("shared"), {}
    shown = os.path.join(shown_dir, fmt.HEAD_CONFIG)
    meta = parse_json(read_file(real_dir, fmt.HEAD_CONFIG, real_root, MAX_CONFIG_BYTES, shown))
    if not isinstance(meta, dict):
        raise AdapterLoadError(f"{shown} is not a JSON object; re-save the head")
    hc = meta.get("config")
    found = _tensors(real_dir, real_root, fmt.HEAD_FILES, _limit((hidden + 1) * (hidden + MAX_LABELS)), shown_dir)
    if found is None:
        raise AdapterLoadError(f"{shown_dir}: {fmt.HEAD_CONFIG} but no head weights ({', '.join(fmt.HEAD_FILES)})")
    raw, _ = found
    if hc is None:  # a static head (BertForSequenceClassification...): head_utils' STATIC_TO_FLEX_HEAD_MAP
        static = {"bert": {"layers": 1, "use_pooler": True}, "roberta": {"layers": 2, "use_pooler": False}}
        hc = {"head_type": "classification", "num_labels": meta.get("num_labels"), "activation_function": "tanh",
              "label2id": meta.get("label2id"), "bias": True, **static["bert" if layout == "pooler" else "roberta"]}
        rename = {"classifier.weight": "heads.h.1.weight", "classifier.bias": "heads.h.1.bias",
                  "classifier.dense.weight": "heads.h.1.weight", "classifier.dense.bias": "heads.h.1.bias",
                  "classifier.out_proj.weight": "heads.h.4.weight", "classifier.out_proj.bias": "heads.h.4.bias"}
        raw = {rename.get(k, k): v for k, v in raw.items()}
    if not isinstance(hc, dict) or hc.get("head_type") != "classification":
        raise fmt.refuse(shown, f"head_type {hc.get('head_type') if isinstance(hc, dict) else hc!r} (adapterkit "
                                "imports classification and regression heads)")
    n, n_layers, pooler = hc.get("num_labels"), hc.get("layers"), hc.get("use_pooler")
    two = n_layers == 2 and hc.get("activation_function") == "tanh" and pooler is False
    if not (isinstance(n, int) and n >= 1) or hc.get("bias", True) is not True or not (
            two or (layout == "pooler" and n_layers == 1 and pooler is True)):
        raise fmt.refuse(shown, f"a head with layers={n_layers!r}, activation {hc.get('activation_function')!r}, "
                                f"use_pooler={pooler!r}, bias={hc.get('bias', True)!r} on a {model_type} model")
    roles = {"out": 1} if n_layers == 1 else {"dense": 1, "out": 4}  # heads.NAME.<index> (Dropout, Linear, ...)
    tensors = {}
    for role, index in roles.items():
        for wb in ("weight", "bias"):
            hit = [v for k, v in raw.items() if k.endswith(f".{index}.{wb}") and k.startswith("heads.")]
            if len(hit) != 1:
                raise AdapterLoadError(f"{shown_dir}: the head weights lack heads.*.{index}.{wb}; re-save the head")
            tensors[f"{role}.{wb}"] = hit[0]
    if len(raw) != len(tensors):
        raise fmt.refuse(shown, f"the head file holds {len(raw)} tensors where this head has {len(tensors)}")
    labels = _labels(hc.get("label2id"), n, shown)
    kind = "regression" if n == 1 else "classification"
    head = HeadConfig(kind, num_labels=n, labels=labels if kind == "classification" else None,
                      train_pooler=layout == "pooler" and two)
    return head, tensors


def _labels(label2id, n: int, shown: str) -> tuple[str, ...] | None:
    if not label2id:
        return None
    if not isinstance(label2id, dict) or sorted(label2id.values()) != list(range(n)):
        raise AdapterLoadError(f"{shown}: label2id {label2id!r} does not number {n} labels 0..{n - 1}")
    return tuple(str(k) for k, _ in sorted(label2id.items(), key=lambda kv: kv[1]))


def _map_in(expected: dict[str, tuple[int, ...]], by_site: dict, head: dict[str, torch.Tensor], shown: str
            ) -> dict[str, torch.Tensor]:
    """adapterkit's tensors (keys of ``expected``) from AdapterHub's, shapes checked; all must be used."""
    layer_key = {"attention.output.dense": "attention", "output.dense": "ffn"}
    out, used = {}, set()
    for key, shape in expected.items():
        parts = key.split(".")
        if ".encoder.layer." in f".{key}":
            i = parts.index("layer")
            site = layer_key[".".join(parts[i + 2: parts.index("adapters")])]
            source = (int(parts[i + 1]), site, parts[-2], parts[-1])
            t = by_site.get(source)
            used.add(source)
        else:  # the head: the pooler copy's or dense layer's tensors, then the output layer's
            role = "dense" if key.endswith(("pooler.adapters.dense.weight", "pooler.adapters.dense.bias",
                                            "classifier.adapters.dense.weight", "classifier.adapters.dense.bias")) else "out"
            t = head.get(f"{role}.{parts[-1]}")
        if t is None:
            raise AdapterLoadError(f"{shown} lacks the tensor for {key}; re-save the adapter (is leave_out right?)")
        if tuple(t.shape) != tuple(shape):
            raise AdapterLoadError(f"{shown}: the tensor for {key} has shape {tuple(t.shape)}, this model needs "
                                   f"{tuple(shape)}; load it into the model it was trained on")
        out[key] = t.to(torch.float32) if t.dtype != torch.float32 else t
    extra = sorted(set(by_site) - used)
    if extra:
        raise AdapterLoadError(f"{shown} holds weights for layer {extra[0][0]} ({extra[0][1]}) that its config's "
                               "leave_out / mh_adapter exclude; re-save the adapter")
    return out


def load_adapter(model: nn.Module, directory, name: str | None = None, check_base: bool = True, root=None) -> str:
    """:func:`adapterkit.io.load_adapter`, which also accepts a directory saved by AdapterHub's ``adapters``.
    The config is read once and decides which of the two it is."""
    real_dir, real_root = resolve_directory(directory, root)
    meta = core_io.read_config_json(directory, real_dir, real_root)
    if _is_adapterhub(meta):
        return import_adapterhub(model, directory, name, check_base, root, meta=meta)[0]
    meta = check_meta(meta, os.path.join(os.fspath(directory), fmt.CONFIG_FILE))
    return core_io.load_checked(model, directory, real_dir, real_root, meta, name, check_base)


def _is_adapterhub(meta: Any) -> bool:
    return isinstance(meta, dict) and "adapterkit_format" not in meta and "config" in meta


# ---- export -----------------------------------------------------------------------------------------------
def layer_norm_differences(model: nn.Module, name: str) -> float:
    """The largest |copy - base| over adapter ``name``'s layer-norm copies (0.0: identical to the model's)."""
    worst = 0.0
    for _, holder in adapter_modules(model):
        if isinstance(holder, ModuleCopies) and holder.role == "layer_norm" and name in holder.adapters:
            base = dict(holder._base.named_parameters())
            for k, p in holder.adapters[name].named_parameters():
                worst = max(worst, float((p.detach() - base[k].detach()).abs().max()))
    return worst


def export_adapterhub(model: nn.Module, name: str, output, model_name: str, drop_layer_norms: bool = False,
                      hub_name: str | None = None) -> Path:
    """Write adapter ``name`` of ``model`` as a directory ``adapters`` 1.3 loads (weights and, unless the head is
    shared, the head), naming it ``hub_name`` (default ``name``) there and the base model ``model_name``.
    ``output`` must not exist. Raises ValueError for what AdapterHub cannot represent."""
    state = get_state(model)
    config, head = state.configs[name], state.heads[name]
    model_type = getattr(model.config, "model_type", None)
    if model_type not in fmt.MODEL_TYPES:
        raise ValueError(f"exporting to AdapterHub is supported for {', '.join(fmt.MODEL_TYPES)} models, not {model_type!r}")
    prefix, layout = fmt.MODEL_TYPES[model_type]
    norms = layer_norm_differences(model, name)
    if norms > 0 and not drop_layer_norms:
        raise ValueError(f"adapter {name!r} has its own layer norms (max |difference| from the model's {norms:.3g}); "
                         "AdapterHub has no per-adapter layer norms: pass --drop-layer-norms (drop_layer_norms=True) "
                         "to export without them, at the cost it reports")
    hidden, num_layers = model.config.hidden_size, len(resolve(model, state.spec))
    tensors = {}
    two_layer_head = layout == "classifier" or head.train_pooler
    for key, t in adapter_tensors(model, name).items():
        tensors.update(_map_out(key, t, hub_name or name, prefix, two_layer_head))
    bottlenecks = {k: v for k, v in tensors.items() if not k.startswith("heads.")}
    head_tensors = {k: v for k, v in tensors.items() if k.startswith("heads.")}
    common = {"hidden_size": hidden, "model_class": f"{type(model).__name__.split('For')[0]}AdapterModel",
              "model_name": model_name, "model_type": model_type, "name": hub_name or name, "version": fmt.ADAPTERS_VERSION}
    files = {fmt.CONFIG_FILE: _json({"config": fmt.bn_config_out(config, hidden, num_layers), **common})}
    files.update(_weights(bottlenecks, fmt.BIN_WEIGHTS, fmt.SAFE_WEIGHTS))
    if head.kind != "shared":
        files[fmt.HEAD_CONFIG] = _json({"config": _head_config(model, head, layout), **common})
        files.update(_weights(head_tensors, fmt.BIN_HEAD, fmt.SAFE_HEAD))
    return write_directory(Path(output), files)


def _map_out(key: str, t: torch.Tensor, name: str, prefix: str, two_layer_head: bool) -> dict[str, torch.Tensor]:
    """AdapterHub's key for one adapterkit tensor ({} for a layer-norm copy, which has none)."""
    t = t.detach().to("cpu", torch.float32).contiguous().clone()
    parts = key.split(".")
    if "layer" in parts and "adapters" in parts and parts[parts.index("adapters") - 1] == "dense":
        i = parts.index("layer")
        site = ".".join(parts[i + 2: parts.index("adapters") - 1])  # attention.output | output
        part = {"down": "adapter_down.0", "up": "adapter_up"}[parts[-2]]
        return {f"{prefix}.encoder.layer.{parts[i + 1]}.{site}.adapters.{name}.{part}.{parts[-1]}": t}
    if "LayerNorm" in parts:  # layer-norm copies: checked (or dropped) by the caller
        return {}
    if "pooler" in parts or key.startswith("classifier.adapters.dense."):  # BERT's pooler copy, RoBERTa's dense
        return {f"heads.{name}.1.{parts[-1]}": t}
    if key.startswith("classifier.adapters."):  # the output layer
        return {f"heads.{name}.{4 if two_layer_head else 1}.{parts[-1]}": t}
    raise ValueError(f"adapter tensor {key} has no AdapterHub counterpart; it cannot be exported")


def _head_config(model: nn.Module, head: HeadConfig, layout: str) -> dict[str, Any]:
    n = head.num_labels or model.config.num_labels
    names = None if n == 1 else head.labels or tuple(str(model.config.id2label[i]) for i in range(n))
    two = layout == "classifier" or head.train_pooler
    return {"head_type": "classification", "num_labels": n, "layers": 2 if two else 1,
            "activation_function": "tanh" if two else None, "use_pooler": not two, "bias": True,
            "dropout_prob": None, "label2id": {label: i for i, label in enumerate(names)} if names else None}


def _weights(tensors: dict[str, torch.Tensor], bin_name: str, safe_name: str) -> dict[str, bytes]:
    buffer = io.BytesIO()
    torch.save(dict(sorted(tensors.items())), buffer)
    return {bin_name: buffer.getvalue(), safe_name: save_safetensors(dict(sorted(tensors.items())))}


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def write_directory(output: Path, files: dict[str, bytes]) -> Path:
    """Create ``output`` holding ``files``, atomically: a temporary sibling renamed into place. ``output``
    must not exist (nothing adapterkit did not write is ever replaced)."""
    if os.path.lexists(output):
        raise FileExistsError(f"{output} already exists; pick a new output path")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = core_io._new_directory(output.parent, f".{output.name}.tmp-")
    try:
        for filename, data in files.items():
            core_io._write(tmp / filename, data)
        core_io._fsync(tmp)
        if os.path.lexists(output):
            raise FileExistsError(f"{output} appeared while it was being written; pick a new output path")
        os.rename(tmp, output)
    except BaseException:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
        raise
    core_io._fsync(output.parent)
    return output


__all__ = ["export_adapterhub", "import_adapterhub", "layer_norm_differences", "load_adapter",
           "read_adapterhub_config", "write_directory"]

"""The public API on a model: add, activate, train, remove and count adapters.

The model stays the user's own object (a ``PreTrainedModel`` or any ``nn.Module``). adapterkit keeps one
:class:`AdapterState` on it (``model.adapterkit``, a plain attribute, not a submodule) and hangs an
``adapters`` child plus a forward hook on each adapted module (see ``layers.py``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .architectures import ArchitectureSpec, LayerSites, detect, embedding_norm_module, head_modules, pooler_module, resolve
from .bottleneck import Bottleneck
from .config import AdapterConfig
from .heads import HeadConfig, replace_last_linear
from .layers import AdapterModule, BottleneckLayer, ModuleCopies, Routing

_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


@dataclass
class AdapterState:
    spec: ArchitectureSpec
    routing: Routing = field(default_factory=Routing)
    configs: dict[str, AdapterConfig] = field(default_factory=dict)
    heads: dict[str, HeadConfig] = field(default_factory=dict)
    base_labels: tuple | None = None  # (id2label, label2id, problem_type) of the model as loaded


def _label_fields(model: nn.Module) -> tuple | None:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "id2label"):
        return None
    return (config.id2label, config.label2id, getattr(config, "problem_type", None))


def _set_label_fields(model: nn.Module, fields: tuple) -> None:
    """transformers computes the ``labels=`` loss from ``config.num_labels`` / ``model.num_labels`` and
    ``config.problem_type``: keep them in step with the active head so that loss (and ``Trainer``) is right."""
    config = model.config
    config.id2label, config.label2id, config.problem_type = fields
    if "num_labels" in model.__dict__:
        model.num_labels = len(config.id2label)


def _head_label_fields(head: HeadConfig, base: tuple) -> tuple:
    if head.kind not in ("classification", "regression"):
        return base
    names = head.labels or tuple(f"LABEL_{i}" for i in range(head.num_labels))
    problem = "regression" if head.kind == "regression" else "single_label_classification"
    return dict(enumerate(names)), {n: i for i, n in enumerate(names)}, problem


def get_state(model: nn.Module) -> AdapterState:
    state = model.__dict__.get("adapterkit")
    if state is None:
        raise ValueError("this model has no adapters; call adapterkit.add_adapter(model, name) first")
    return state


def _require(model: nn.Module, name: str) -> AdapterState:
    state = get_state(model)
    if name not in state.configs:
        known = ", ".join(state.configs) or "none"
        raise KeyError(f"no adapter named {name!r} on this model (adapters: {known})")
    return state


def adapter_modules(model: nn.Module) -> Iterator[tuple[str, AdapterModule]]:
    """Every adapter holder in the model with its module path (found by type: the protocol)."""
    for path, module in model.named_modules():
        if isinstance(module, AdapterModule):
            yield path, module


def _holder(module: nn.Module, make) -> AdapterModule:
    """The adapter holder hanging on ``module`` (its ``adapters`` child), created on first use."""
    existing = module._modules.get("adapters")
    if existing is None:
        if hasattr(module, "adapters"):
            raise ValueError(f"{type(module).__name__} already has an attribute 'adapters' not made by adapterkit")
        existing = make()
        module.add_module("adapters", existing)
    return existing


def _output_dim(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if hasattr(module, "nf"):  # transformers' Conv1D (GPT-2)
        return module.nf
    raise ValueError(f"cannot tell the output width of {type(module).__name__}; use an nn.Linear output projection")


def _sublayers(layer: LayerSites, placement: str) -> list[tuple[nn.Module, nn.Module, nn.Module]]:
    """(output projection, the module whose output the adapter rewrites, sublayer input module) for each
    sublayer that gets an adapter under ``placement``. The holder hangs on the projection (its state-dict keys
    name it), the hook on the dropout after it where there is one (see architectures.py)."""
    attention = (layer.attention_output, layer.attention_site, layer.attention_input)
    ffn = (layer.ffn_output, layer.ffn_site, layer.ffn_input)
    return [ffn] if placement == "pfeiffer" else [attention, ffn]


def add_adapter(
    model: nn.Module,
    name: str,
    config: AdapterConfig | None = None,
    head: HeadConfig | int | str | dict | None = None,
    spec: ArchitectureSpec | None = None,
) -> nn.Module:
    """Insert adapter ``name`` (initialised near identity) with its layer-norm copies and head.

    ``head``: None (a copy of the model's own head; shared if it has none, e.g. a causal LM), a number of
    labels, ``"regression"``, or a :class:`HeadConfig`. ``spec`` overrides architecture detection.
    """
    config = config or AdapterConfig()
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"adapter name must be letters, digits, '_' or '-', got {name!r}")
    state = model.__dict__.get("adapterkit")
    if state is None:
        state = AdapterState(spec=spec or detect(model), base_labels=_label_fields(model))
        model.__dict__["adapterkit"] = state
    elif spec is not None and spec != state.spec:
        raise ValueError("this model already has adapters inserted with another architecture spec")
    if name in state.configs:
        raise ValueError(f"adapter {name!r} already exists; remove_adapter(model, {name!r}) first or pick another name")
    layers = resolve(model, state.spec)
    config.check_layers(len(layers))
    embedding_norm = embedding_norm_module(model, state.spec) if config.train_embedding_norm else None
    if config.train_embedding_norm and embedding_norm is None:
        raise ValueError(f"train_embedding_norm=True, but {type(model).__name__} has no embedding layer norm "
                         f"({state.spec.embedding_norm!r} in its spec); leave train_embedding_norm off for this model")
    heads = head_modules(model, state.spec)
    head = HeadConfig.coerce(head, model_has_head=bool(heads))
    pooler = pooler_module(model, state.spec) if head.train_pooler and heads else None
    heads = ([pooler] if pooler is not None else []) + heads  # the pooler copy first, the output layer last
    if head.kind != "shared" and not heads:
        raise ValueError(f"{type(model).__name__} has no task head to copy ({state.spec.head}); load the model with "
                         "its task class (e.g. AutoModelForSequenceClassification) or pass head='shared'")
    routing = state.routing

    for index, layer in enumerate(layers):
        if config.layers is not None and index not in config.layers:
            continue
        for output_module, site, input_module in _sublayers(layer, config.placement):
            d = _output_dim(output_module)
            reference = next(output_module.parameters())
            bottleneck = Bottleneck(d, config.bottleneck_size(d), config.activation, config.init_std)
            bottleneck.to(device=reference.device, dtype=reference.dtype)
            holder = _holder(output_module, lambda m=site: BottleneckLayer(routing, m))
            parallel = config.placement == "parallel"
            holder.add(name, bottleneck, parallel_input=input_module if parallel else None, scaling=config.scaling)
        if config.train_layer_norms:
            for norm in layer.layer_norms:
                holder = _holder(norm, lambda m=norm: ModuleCopies(routing, m, role="layer_norm"))
                holder.add(name, holder.copy_of_base())
    if embedding_norm is not None:
        holder = _holder(embedding_norm, lambda m=embedding_norm: ModuleCopies(routing, m, role="layer_norm"))
        holder.add(name, holder.copy_of_base())

    if head.kind != "shared":
        init_std = getattr(getattr(model, "config", None), "initializer_range", 0.02)
        for j, module in enumerate(heads):
            holder = _holder(module, lambda m=module: ModuleCopies(routing, m, role="head"))
            copy = holder.copy_of_base()
            if head.kind in ("classification", "regression") and j == len(heads) - 1:
                copy = replace_last_linear(copy, head.num_labels, init_std)
            holder.add(name, copy)
    state.configs[name] = config
    state.heads[name] = head
    return model


def set_active(model: nn.Module, active: str | None | Sequence[str | None]) -> nn.Module:
    """Activate one adapter, ``None`` (the base model, exactly), or one name/None per batch row."""
    state = get_state(model) if active is not None else model.__dict__.get("adapterkit")
    if state is None:
        return model
    names = [active] if active is None or isinstance(active, str) else list(active)
    for n in names:
        if n is not None:
            _require(model, n)
    state.routing.set(active)
    if state.base_labels is not None:
        head = state.heads[active] if isinstance(active, str) else HeadConfig("own")
        _set_label_fields(model, _head_label_fields(head, state.base_labels))
    return model


def active_adapter(model: nn.Module) -> str | None | tuple[str | None, ...]:
    state = model.__dict__.get("adapterkit")
    return None if state is None else state.routing.active


@contextlib.contextmanager
def use_adapter(model: nn.Module, active: str | None | Sequence[str | None]):
    """``with use_adapter(model, "sst2"):`` -- activate for the block, then restore what was active."""
    before = active_adapter(model)
    set_active(model, active)
    try:
        yield model
    finally:
        set_active(model, before)


def disable_adapters(model: nn.Module):
    """``with disable_adapters(model):`` -- the base model for the block."""
    return use_adapter(model, None)


def adapter_parameters(model: nn.Module, name: str) -> Iterator[nn.Parameter]:
    """Everything adapter ``name`` owns: bottlenecks, layer-norm copies, head."""
    _require(model, name)
    for _, holder in adapter_modules(model):
        yield from holder.adapter_parameters(name)


def parameter_groups(model: nn.Module, name: str, lr: float, head_lr: float | None = None) -> list[dict]:
    """Optimiser parameter groups for adapter ``name``: its bottlenecks and layer-norm copies at ``lr``, its
    head (and pooler copy) at ``head_lr`` (default ``lr``). A new head starts from random weights and needs a
    larger step than the near-identity adapters: ``torch.optim.AdamW(parameter_groups(m, "t", 1e-3, 1e-2))``."""
    _require(model, name)
    body, head = [], []
    for _, holder in adapter_modules(model):
        (head if holder.role == "head" else body).extend(holder.adapter_parameters(name))
    groups = [{"params": body, "lr": lr}]
    if head:
        groups.append({"params": head, "lr": lr if head_lr is None else head_lr})
    return groups


def train_adapter(model: nn.Module, name: str) -> nn.Module:
    """Freeze everything but adapter ``name`` (its bottlenecks, layer norms and head), activate it, and put
    the model in training mode."""
    _require(model, name)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in adapter_parameters(model, name):
        p.requires_grad_(True)
    set_active(model, name)
    return model.train()


def remove_adapter(model: nn.Module, name: str) -> nn.Module:
    state = _require(model, name)
    for path, holder in list(adapter_modules(model)):
        holder.remove(name)
        if not holder.adapters:  # last adapter here: unhook and drop the holder
            holder.detach_hooks()
            del model.get_submodule(path.rpartition(".")[0])._modules["adapters"]
    del state.configs[name], state.heads[name]
    active = state.routing.active
    if active == name or (isinstance(active, tuple) and name in active):
        set_active(model, None)
    return model


def list_adapters(model: nn.Module) -> list[str]:
    state = model.__dict__.get("adapterkit")
    return list(state.configs) if state else []


def adapter_summary(model: nn.Module) -> dict[str, dict[str, int | float]]:
    """Per adapter: adapter, layer-norm, head and trainable parameter counts, the base model's parameter
    count, and the trainable share of the base model in percent."""
    state = model.__dict__.get("adapterkit")
    holders = [h for _, h in adapter_modules(model)]
    owned = sum(p.numel() for h in holders for p in h.parameters())
    base = sum(p.numel() for p in model.parameters()) - owned
    summary = {}
    for name in state.configs if state else ():
        counts = {"adapter": 0, "layer_norm": 0, "head": 0}
        for h in holders:
            counts[h.role] += sum(p.numel() for p in h.adapter_parameters(name))
        trainable = sum(counts.values())
        summary[name] = {
            "adapter_params": counts["adapter"],
            "layer_norm_params": counts["layer_norm"],
            "head_params": counts["head"],
            "trainable_params": trainable,
            "base_params": base,
            "percent": 100.0 * trainable / base,
        }
    return summary


def base_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """The model's own parameters (not adapterkit's), with their names."""
    owned = {id(p) for _, h in adapter_modules(model) for p in h.parameters()}
    for n, p in model.named_parameters():
        if id(p) not in owned:
            yield n, p

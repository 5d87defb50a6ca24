"""AdapterFusion (Pfeiffer et al. 2021, arXiv 2005.00247) with AdapterHub 1.3's semantics.

    ak.add_fusion(model, ak.Fuse("sst2", "mnli", "qqp"), head=2)   # per-site attention + a new head
    ak.train_fusion(model, ak.Fuse("sst2", "mnli", "qqp"))          # only the fusion layers and its head train
    ak.set_active(model, ak.Fuse("sst2", "mnli", "qqp"))

At every site the fused adapters share, with h (B, T, d) the sublayer's output and u_i = f_i(h) the fused
adapters' branches (their bottleneck outputs, ``AdapterKind.branch``):

    s_i = (W_q h + b_q) . (W_k u_i + b_k)           scores over the N adapters, per token
    p   = softmax(dropout(s))                       (dropout: the model's attention dropout, training only)
    out = h + sum_i p_i (W_v u_i)                   W_v: no bias, initialised to the identity

This is AdapterHub's ``BertFusion`` (adapters 1.3, methods/modeling.py) under ``compose_fuse``
(methods/bottleneck.py) for serial adapters (query and residual = the sublayer output) with the default
``DynamicFusionConfig`` (query, key and value; value before the softmax; value = I + 1e-6 off the diagonal
at start, as AdapterHub initialises it; query/key ~ N(0, 0.02), bias 0). ``FusionConfig.static()`` drops
the value matrix (``StaticFusionConfig``); ``residual_before=True`` adds h to the keys and values instead of
to the output (AdapterHub adds it in place to the one tensor both read). With W_v = I the output is
h + a convex combination of the adapters' branches: a fusion of one adapter is that adapter.

The fused adapters must be serial kinds (houlsby, pfeiffer) with the same placement and layers (AdapterHub
refuses adapters whose locations differ). Layer norms are the last fused adapter's copies (as for
``Stack``; AdapterHub's adapters have none); the fusion trains its own head. The fused adapters and the
base model stay frozen (``train_fusion``); ``fusion_regularization_loss`` is AdapterHub's trainer's
0.01 * ||I - W_v||^2 summed over sites (DynamicFusionConfig's ``regularization``).
Parity with AdapterHub on MiniLM: tests/test_fusion_parity.py. Saving and loading: ``fusion_io.py``.
"""

from __future__ import annotations

import dataclasses
import reprlib
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .composition import Fuse
from .config import AdapterConfig
from .heads import HeadConfig
from .layers import BottleneckLayer
from .architectures import base_modules
from .model import _Plan, _build, _output_dim, _plan, _require, _rollback, adapter_modules, get_state, set_active

#: AdapterHub's weight on the value-matrix regulariser (adapters 1.3, ModelAdaptersMixin.get_fusion_regularization_loss).
REGULARIZATION_WEIGHT = 0.01


@dataclass(frozen=True)
class FusionConfig:
    """How one fusion layer is built: AdapterHub's ``DynamicFusionConfig`` fields that apply (default) --
    ``temperature`` (off in both of its presets) and ``query_before_ln`` (the same for adapterkit's adapters)
    are not offered.

    query, key, value:      learn W_q, W_k (d x d, with bias) and W_v (d x d, no bias); off: the identity
    value_before_softmax:   apply W_v to each branch before the weighting (else to the weighted sum)
    value_initialized:      W_v starts at I (+1e-6 off the diagonal, as in AdapterHub) instead of N(0, 0.02)
    residual_before:        add h to the keys and values rather than to the output
    regularization:         the training loop adds 0.01 * ||I - W_v||^2 (fusion_regularization_loss)
    dropout_prob:           dropout on the attention scores (None: the model's attention_probs_dropout_prob)
    """

    query: bool = True
    key: bool = True
    value: bool = True
    value_before_softmax: bool = True
    value_initialized: bool = True
    residual_before: bool = False
    regularization: bool = True
    dropout_prob: float | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "dropout_prob":
                if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1):
                    raise ValueError(f"FusionConfig: dropout_prob must be None or a number in [0, 1), got {reprlib.repr(v)}")
            elif not isinstance(v, bool):
                raise ValueError(f"FusionConfig: {f.name} must be True or False, got {reprlib.repr(v)}")

    @classmethod
    def dynamic(cls) -> "FusionConfig":
        """AdapterHub's default, ``DynamicFusionConfig``: query, key and an identity-initialised value."""
        return cls()

    @classmethod
    def static(cls) -> "FusionConfig":
        """AdapterHub's ``StaticFusionConfig``: query and key, no value matrix, no regulariser."""
        return cls(value=False, value_initialized=False, regularization=False)

    @classmethod
    def coerce(cls, config) -> "FusionConfig":
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        if config in ("dynamic", "static"):
            return getattr(cls, config)()
        if isinstance(config, dict):
            return cls.from_dict(config)
        raise ValueError(f"a fusion config is a FusionConfig, 'dynamic', 'static' or a dict, got {reprlib.repr(config)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FusionConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(d) - known)) if isinstance(d, dict) else None
        if unknown is None or unknown:
            raise ValueError(f"FusionConfig: unknown field(s) {reprlib.repr(unknown)}; known: {sorted(known)}")
        return cls(**d)


class FusionLayer(nn.Module):
    """One site's fusion: attention of the sublayer output over the fused adapters' branches (AdapterHub's
    ``BertFusion``, with its operations in its order, so eval outputs agree to float rounding)."""

    def __init__(self, config: FusionConfig, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.config = config
        d = hidden_size
        self.dropout = nn.Dropout(dropout_prob)
        if config.query:
            self.query = nn.Linear(d, d)
        if config.key:
            self.key = nn.Linear(d, d)
        if config.value:
            self.value = nn.Linear(d, d, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """AdapterHub's init: weights ~ N(0, 0.02), biases 0; W_v = I + 1e-6 off the diagonal if value_initialized."""
        for linear in (getattr(self, n, None) for n in ("query", "key", "value")):
            if linear is not None:
                nn.init.normal_(linear.weight, std=0.02)
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)
        if self.config.value and self.config.value_initialized:
            with torch.no_grad():
                self.value.weight.fill_(1e-6).fill_diagonal_(1.0)

    def forward(self, query: torch.Tensor, ups: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        # query, residual: (B, T, d); ups: (B, T, N, d), one branch per fused adapter
        c = self.config
        if c.residual_before:  # AdapterHub adds it in place to the tensor that is both key and value
            ups = ups + residual[:, :, None, :]
        q = self.query(query) if c.query else query  # (B, T, d)
        k = self.key(ups) if c.key else ups  # (B, T, N, d)
        v = self.value(ups) if c.value and c.value_before_softmax else ups  # (B, T, N, d)
        scores = torch.squeeze(torch.matmul(q.unsqueeze(2), k.transpose(-2, -1)), dim=2)  # (B, T, N)
        probs = torch.softmax(self.dropout(scores), dim=-1)
        context = torch.squeeze(torch.matmul(probs.unsqueeze(2), v), dim=2)  # (B, T, d)
        if c.value and not c.value_before_softmax:
            context = self.value(context)
        return context if c.residual_before else context + residual


@dataclass(frozen=True)
class FusionRecord:
    """What a model knows about one of its fusions (``get_state(model).fusions[name]``)."""

    block: Fuse
    config: FusionConfig
    head: HeadConfig


def _block(block) -> Fuse:
    if isinstance(block, str):
        block = Fuse(*block.split(","))
    if not isinstance(block, Fuse):
        raise ValueError(f"give a Fuse block, e.g. Fuse('a', 'b'), got {reprlib.repr(block)}")
    return block


def _sites(model: nn.Module, block: Fuse) -> list[tuple[str, BottleneckLayer, int]]:
    """(holder path, holder, hidden size) of every site of the fused adapters, after checking that they can be
    fused: serial kinds, one placement, the same layers."""
    state = get_state(model)
    for n in block.names:
        _require(model, n)
    configs = [state.configs[n] for n in block.names]
    for n, c in zip(block.names, configs):
        if not c.kind.fusable:
            raise ValueError(f"{block!r}: adapter {n!r} is a {c.placement} adapter; AdapterFusion fuses serial "
                             "adapters (houlsby, pfeiffer)")
        if (c.kind.sublayers, c.layers) != (configs[0].kind.sublayers, configs[0].layers):
            raise ValueError(f"{block!r}: adapters {block.names[0]!r} and {n!r} sit at different sites (placement "
                             f"{configs[0].placement} layers {configs[0].layers} vs {c.placement} layers {c.layers}); "
                             "fuse adapters with the same placement and layers")
        if c.site != configs[0].site:  # one attention per site: the fused branches must read the same output
            raise ValueError(f"{block!r}: adapter {block.names[0]!r} reads its sublayer {configs[0].site} and {n!r} "
                             f"{c.site}; fuse adapters trained with the same AdapterConfig.site")
    sites = []
    for path, holder in adapter_modules(model):
        if isinstance(holder, BottleneckLayer) and any(n in holder.adapters for n in block.names):
            if not all(n in holder.adapters for n in block.names):  # unreachable after the checks above
                raise ValueError(f"{block!r}: not every fused adapter sits at {path}")
            sites.append((path, holder, _output_dim(model.get_submodule(path.rpartition(".")[0]))))
    return sites


def _head_plan(model: nn.Module, head) -> tuple[_Plan, dict[str, tuple[int, ...]]]:
    """The head steps add_adapter would take for ``head``, and their tensors' shapes."""
    state = get_state(model)
    plan = _plan(model, state.spec, AdapterConfig(size=1, placement="pfeiffer", train_layer_norms=False), head)
    steps = [s for s in plan.steps if s[0] == "head"]
    paths = {id(m): p for p, m in base_modules(model)}
    prefixes = tuple(f"{paths[id(s[1])]}.adapters." for s in steps)
    shapes = {k: v for k, v in plan.shapes.items() if k.startswith(prefixes)}
    return _Plan(plan.head, steps, {}), shapes


def _dropout(model: nn.Module, config: FusionConfig) -> float:
    if config.dropout_prob is not None:
        return float(config.dropout_prob)
    return float(getattr(getattr(model, "config", None), "attention_probs_dropout_prob", 0.0) or 0.0)


def planned_fusion_tensors(model: nn.Module, block, config=None, head=None) -> dict[str, tuple[int, ...]]:
    """The tensors :func:`add_fusion` would give (keys as in a fusion file -> shapes), allocating nothing."""
    block, config = _block(block), FusionConfig.coerce(config)
    shapes = {}
    for path, _, d in _sites(model, block):
        with torch.device("meta"):
            layer = FusionLayer(config, d, 0.0)
        shapes.update({f"{path}.fusion.{k}": tuple(v.shape) for k, v in layer.state_dict().items()})
    shapes.update(_head_plan(model, head)[1])
    return shapes


def add_fusion(model: nn.Module, block, config: FusionConfig | str | dict | None = None, head=None,
               fill: Callable[[dict[str, torch.Tensor]], None] | None = None) -> nn.Module:
    """Add a fusion layer over the adapters of ``block`` (a :class:`Fuse`, or "a,b,c") at each of their sites,
    and a head for it (``head`` as in ``add_adapter``: None copies the model's own). ``config``: a
    :class:`FusionConfig`, "dynamic" (default) or "static". A transaction: on any error the model is as it
    was. ``fill`` gets the new tensors (keys as in :func:`fusion_tensors`) before they are committed."""
    block, config = _block(block), FusionConfig.coerce(config)
    state = get_state(model)
    if block.name in state.fusions:
        raise ValueError(f"a fusion named {block.name!r} exists; remove_fusion(model, {block.name!r}) first")
    if block.name in state.configs:
        raise ValueError(f"{block.name!r} names an adapter; give the fusion another name (Fuse(..., name=...))")
    sites = _sites(model, block)
    head_plan, _ = _head_plan(model, head)
    dropout = _dropout(model, config)
    fused, created, touched = [], [], []
    try:
        for path, holder, d in sites:
            reference = next(holder.adapters[block.names[0]].parameters())
            layer = FusionLayer(config, d, dropout).to(device=reference.device, dtype=reference.dtype)
            layer.train(model.training)  # a new module trains by default; follow the model
            holder.fusions[block.name] = layer
            fused.append(holder)
        _build(model, block.name, None, head_plan, state.routing, created, touched)
        if fill is not None:
            fill(_tensors(model, block.name))
        state.fusions[block.name] = FusionRecord(block, config, head_plan.head)
    except BaseException as e:
        for holder in fused:
            if block.name in holder.fusions:
                del holder.fusions[block.name]
        _rollback(model, block.name, state, False, created, touched)
        traceback.clear_frames(e.__traceback__)
        raise
    return model


def _record(model: nn.Module, fusion) -> FusionRecord:
    state = get_state(model)
    name = fusion.name if isinstance(fusion, Fuse) else fusion
    if name not in state.fusions:
        raise KeyError(f"no fusion named {name!r} on this model (fusions: {', '.join(state.fusions) or 'none'})")
    return state.fusions[name]


def fusion_tensors(model: nn.Module, fusion) -> dict[str, torch.Tensor]:
    """The fusion's tensors (sharing storage): ``<site>.adapters.fusion.<query|key|value>.*`` and its head's
    ``<head module>.adapters.*``, keyed as in a fusion file."""
    return _tensors(model, _record(model, fusion).block.name)


def _tensors(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    tensors = {}
    for path, holder in adapter_modules(model):
        if isinstance(holder, BottleneckLayer) and name in holder.fusions:
            tensors.update({f"{path}.fusion.{k}": t for k, t in holder.fusions[name].state_dict().items()})
        elif holder.role == "head" and name in holder.adapters:
            tensors.update({f"{path}.{k}": t for k, t in holder.adapters[name].state_dict().items()})
    return tensors


def fusion_parameters(model: nn.Module, fusion) -> Iterator[nn.Parameter]:
    """What a fusion trains: its layers at every site and its head."""
    name = _record(model, fusion).block.name
    for _, holder in adapter_modules(model):
        if isinstance(holder, BottleneckLayer) and name in holder.fusions:
            yield from holder.fusions[name].parameters()
        elif holder.role == "head":
            yield from holder.adapter_parameters(name)


def train_fusion(model: nn.Module, fusion) -> nn.Module:
    """Freeze everything but the fusion's layers and head (the fused adapters and the base model stay
    frozen, as in the paper and AdapterHub's ``train_adapter_fusion``), activate it, training mode."""
    record = _record(model, fusion)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in fusion_parameters(model, record.block.name):
        p.requires_grad_(True)
    set_active(model, record.block)
    return model.train()


def fusion_regularization_loss(model: nn.Module, fusion) -> torch.Tensor | None:
    """0.01 * sum over sites of ||I - W_v||_F^2 (AdapterHub's, for trainable value matrices), or None when the
    fusion has no value matrix or its config turns the regulariser off."""
    record = _record(model, fusion)
    if not (record.config.value and record.config.regularization):
        return None
    total = None
    for _, holder in adapter_modules(model):
        if isinstance(holder, BottleneckLayer) and record.block.name in holder.fusions:
            weight = holder.fusions[record.block.name].value.weight  # (d, d)
            if weight.requires_grad:
                eye = torch.eye(weight.shape[0], device=weight.device, dtype=weight.dtype)
                term = REGULARIZATION_WEIGHT * (eye - weight).pow(2).sum()
                total = term if total is None else total + term
    return total


def remove_fusion(model: nn.Module, fusion) -> nn.Module:
    """Remove a fusion's layers and head (the fused adapters stay); deactivates it if it was active."""
    record = _record(model, fusion)
    state = get_state(model)
    name = record.block.name
    for path, holder in list(adapter_modules(model)):
        holder.remove(name)
        if not holder.adapters and not getattr(holder, "fusions", None):
            holder.detach_hooks()
            del model.get_submodule(path.rpartition(".")[0])._modules["adapters"]
    del state.fusions[name]
    if state.routing.active == record.block:
        set_active(model, None)
    return model


def list_fusions(model: nn.Module) -> list[Fuse]:
    state = model.__dict__.get("adapterkit")
    return [r.block for r in state.fusions.values()] if state else []


__all__ = ["FusionConfig", "FusionLayer", "FusionRecord", "add_fusion", "fusion_parameters", "fusion_regularization_loss",
           "fusion_tensors", "list_fusions", "planned_fusion_tensors", "remove_fusion", "train_fusion"]

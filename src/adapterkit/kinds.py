"""The seam for adapter kinds: one registry entry per kind says where it sits, what it builds and how its
branch meets the sublayer.

A kind is named by ``AdapterConfig.placement`` (the saved field keeps its name). Like peft's ``LoraVariant``
(peft/tuners/lora/variants.py: ``init`` builds a variant's weights, ``forward`` combines them with the base
layer's result), a kind is a small object with two methods and two facts:

    sublayers       which sublayers of every adapted layer get one module: ("attention", "ffn") or ("ffn",)
    reads_input     whether its branch also reads the sublayer's input x (a forward pre-hook captures it)
    build(config, d)              -> the module for one site of hidden size d; its state dict is what an
                                     adapter file stores there (``shapes(config, d)`` gives its shapes
                                     without allocating: by default ``build`` on the meta device)
    combine(module, h, x, config) -> the sublayer's new output from its output h (..., d) and, for a kind
                                     that reads it, its input x (else None)
    stacked_parts(module, config) -> optional: the module as (down, act, up, scale) when ``combine`` is
                                     h + scale * up(act(down(x or h))); a mixed batch then runs all its rows'
                                     adapters of such kinds in one batched matmul (stacked.py). None (the
                                     default): the per-adapter grouped path, which works for every kind

``model.add_adapter`` asks the registry which sites to hook and what to build, ``layers.BottleneckLayer``
asks it how to combine. A new kind is one module (its ``nn.Module``), one :class:`AdapterKind` passed to
:func:`register`, and one test row; nothing in the core changes (see tests/test_kinds.py).

    houlsby   Houlsby et al. 2019 (arXiv 1902.00751): h + f(h) after attention and FFN
    pfeiffer  Pfeiffer et al. 2021 (arXiv 2005.00247): h + f(h) after the FFN only
    parallel  He et al. 2022 (arXiv 2110.04366): h + s * f(x), x the sublayer's input, for attention and FFN
    parallel_ffn  the same on the FFN only (AdapterHub's ParBnConfig)

This module imports only torch and the bottleneck; the config asks it which names are valid.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, NamedTuple

import torch
from torch import nn

from .bottleneck import Bottleneck

SUBLAYERS = ("attention", "ffn")


class StackedParts(NamedTuple):
    """An adapter module seen as ``scale * up(act(down(v)))`` (v: the sublayer's input for a kind that reads
    it, else its output), for the stacked mixed-batch path (stacked.py). ``activation`` names ``act``: only
    adapters with the same one stack together."""

    down: nn.Linear
    act: nn.Module
    up: nn.Linear
    scale: float
    activation: str


class AdapterKind:
    """One kind of adapter. Subclass it, set the class attributes, implement ``build`` and ``combine``."""

    name: str = ""
    sublayers: tuple[str, ...] = SUBLAYERS
    reads_input: bool = False
    scaled: bool = False  # whether AdapterConfig.scaling means something for it (else it must stay 1.0)

    def build(self, config: Any, hidden_size: int) -> nn.Module:
        """The module for one site (initialised as ``config`` says, on the default device, in fp32)."""
        raise NotImplementedError

    def combine(self, module: nn.Module, h: torch.Tensor, x: torch.Tensor | None, config: Any) -> torch.Tensor:
        """The sublayer's new output from its output ``h`` (..., d) and input ``x`` (None unless reads_input)."""
        raise NotImplementedError

    def stacked_parts(self, module: nn.Module, config: Any) -> StackedParts | None:
        """``module`` as down/act/up/scale when ``combine`` is ``h + scale * up(act(down(v)))`` with v = x for a
        kind that reads the input, else h; None (the default) keeps mixed batches on the grouped path."""
        return None

    fusable: bool = False  # whether ``branch`` gives what AdapterFusion attends over (fusion.py)

    def branch(self, module: nn.Module, h: torch.Tensor, x: torch.Tensor | None, config: Any) -> torch.Tensor:
        """The adapter's own output at a site (..., d), before it meets the sublayer's: what a fusion's keys and
        values are (AdapterHub's ``bottleneck_up``). Kinds with ``fusable`` implement it."""
        raise NotImplementedError(f"{self.name} adapters cannot be fused")

    def shapes(self, config: Any, hidden_size: int) -> dict[str, tuple[int, ...]]:
        """The state-dict shapes ``build`` gives, without allocating: by default ``build`` on the meta device.
        (A load checks a file's header against these before anything is built.)"""
        with torch.device("meta"):
            return {k: tuple(v.shape) for k, v in self.build(config, hidden_size).state_dict().items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, sublayers={self.sublayers})"


class SerialBottleneck(AdapterKind):
    """h -> h + up(act(down(h))) on each of ``sublayers`` (Houlsby: both; Pfeiffer: the FFN only)."""

    def __init__(self, name: str, sublayers: tuple[str, ...] = SUBLAYERS):
        self.name, self.sublayers = name, tuple(sublayers)

    def build(self, config, hidden_size: int) -> nn.Module:
        return Bottleneck(hidden_size, config.bottleneck_size(hidden_size), config.activation, config.init_std)

    def shapes(self, config, hidden_size: int) -> dict[str, tuple[int, ...]]:
        d, m = hidden_size, config.bottleneck_size(hidden_size)
        return {"down.weight": (m, d), "down.bias": (m,), "up.weight": (d, m), "up.bias": (d,)}

    fusable = True

    def combine(self, module, h, x, config):  # (..., d) -> (..., d)
        return h + module(h)

    def stacked_parts(self, module, config) -> StackedParts | None:
        if type(module) is not Bottleneck or module.down.bias is None or module.up.bias is None:
            return None  # a subclass may compute something else: keep it on the grouped path
        return StackedParts(module.down, module.act, module.up, self._scale(config), config.activation)

    def _scale(self, config) -> float:
        return 1.0

    def branch(self, module, h, x, config):  # (..., d) -> (..., d): f(h)
        return module(h)


class ParallelBottleneck(SerialBottleneck):
    """h -> h + s * up(act(down(x))), x the sublayer's input (He et al. 2022, "parallel adapter")."""

    reads_input = True
    scaled = True
    fusable = False  # AdapterHub fuses parallel adapters on the sublayer input as query; not matched here

    def combine(self, module, h, x, config):  # x: (..., d_in) -> (..., d)
        return h + module(x) * config.scaling

    def _scale(self, config) -> float:
        return config.scaling

    branch = AdapterKind.branch


_REGISTRY: dict[str, AdapterKind] = {}


def register(kind: AdapterKind, replace: bool = False) -> AdapterKind:
    """Make ``kind`` available as ``AdapterConfig(placement=kind.name)``. Returns it."""
    if not isinstance(kind, AdapterKind):
        raise TypeError(f"register an AdapterKind instance, got {type(kind).__name__}")
    if not kind.name or not isinstance(kind.name, str):
        raise ValueError("an adapter kind needs a non-empty name")
    if not kind.sublayers or any(s not in SUBLAYERS for s in kind.sublayers):
        raise ValueError(f"kind {kind.name!r}: sublayers must be a non-empty subset of {SUBLAYERS}, got {kind.sublayers}")
    if kind.name in _REGISTRY and not replace:
        raise ValueError(f"an adapter kind named {kind.name!r} is already registered; pass replace=True to replace it")
    _REGISTRY[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove a kind (models that already hold adapters of it keep working; new ones cannot be added)."""
    _REGISTRY.pop(name, None)


def get(name: str) -> AdapterKind:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise KeyError(f"no adapter kind {name!r}; registered: {', '.join(_REGISTRY)}") from None


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def build_module(kind: AdapterKind, config: Any, hidden_size: int, like: torch.Tensor, initialise: bool = True) -> nn.Module:
    """``kind.build(config, hidden_size)`` on ``like``'s device and dtype. Without ``initialise`` (every tensor
    is about to be overwritten: a load) it is a copy of a prototype built once on the meta device, its storage
    left uninitialised: building and randomly initialising it was two thirds of a load's time on the server's
    worker. A module with tensors outside its state dict (non-persistent buffers, which nothing would fill) is
    built and initialised as usual."""
    if not initialise:
        prototype = _meta_prototype(kind, config, hidden_size)  # keyed by the kind object: kinds re-register
        if prototype is not None:
            return copy.deepcopy(prototype).to_empty(device=like.device).to(dtype=like.dtype)
    return kind.build(config, hidden_size).to(device=like.device, dtype=like.dtype)


@functools.lru_cache(maxsize=32)
def _meta_prototype(kind: AdapterKind, config: Any, hidden_size: int) -> nn.Module | None:
    with torch.device("meta"):
        module = kind.build(config, hidden_size)
    filled = module.state_dict().keys()
    return module if all(n in filled for n, _ in (*module.named_parameters(), *module.named_buffers())) else None


register(SerialBottleneck("houlsby"))
register(SerialBottleneck("pfeiffer", sublayers=("ffn",)))
register(ParallelBottleneck("parallel"))
register(ParallelBottleneck("parallel_ffn", sublayers=("ffn",)))  # He et al.'s best single placement; AdapterHub's par_bn

__all__ = ["AdapterKind", "ParallelBottleneck", "SerialBottleneck", "StackedParts", "build_module", "get", "names", "register", "unregister"]

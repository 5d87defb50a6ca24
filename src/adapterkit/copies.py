"""Per-adapter copies of a layer norm or a task head: the other adapter holder beside layers.BottleneckLayer.

Each adapter owns a copy of the module (initialised from it, or a new head) and the copy's output replaces
the module's: one active adapter swaps its parameters in for one run of the norm; a mixed batch runs each
row's copy, or, for affine LayerNorms and Llama-style RMS norms, normalises once and applies each row's own
weight (and bias) in one multiply. Heads of different widths in one mixed batch are padded with zeros.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .composition import Fuse, Parallel, Stack
from .layers import AdapterModule, Entry, Routing, _first_tensor
from .stacked import parameter_fingerprint


class ModuleCopies(AdapterModule):
    """Per-adapter copies of a layer norm or a task head; an adapter's copy replaces the module's output."""

    def __init__(self, routing: Routing, module: nn.Module, role: str):
        super().__init__(routing)
        self.role = role
        # Snapshot the module before anything of ours hangs on it; copies start from it.
        self.__dict__["_template"] = copy.deepcopy(module)
        self.__dict__["_base"] = module
        self._swapped: dict | None = None  # the base module's parameters while an adapter's are in place
        self._ones_in = False  # the swapped-in weight is ones (a mixed batch's RMS norm: ``_on_output`` scales per row)
        self._rms_scales: bool | None = None  # RMS norm output = weight * f(x)? (checked on the first mixed batch)
        # which one-pass mixed path the module allows: "layer_norm" (affine LayerNorm), "rms" (RMS-norm-like), None
        self._norm_form = None if role != "layer_norm" else (
            "layer_norm" if _affine_layer_norm(module) else "rms" if _rms_norm_like(module) else None)
        self._row_weights: tuple | None = None  # the RMS path's per-row weights: (routing key, fingerprint, tensor)
        self._handles = []
        self._hook(module.register_forward_hook, self._on_output, with_kwargs=True)
        if role == "layer_norm":
            self._hook(module.register_forward_pre_hook, self._swap_in)

    @property
    def _owner(self) -> str | None:
        return self.routing.head_owner if self.role == "head" else self.routing.owner

    def copy_of_base(self) -> nn.Module:
        """A fresh copy of the module with the base module's current weights."""
        clone = copy.deepcopy(self._template)
        with torch.no_grad():  # by the template's names: the base module's own walk would cross every copy here
            for n, p in clone.named_parameters():
                p.copy_(self._base.get_parameter(n))
        reference = next(self._base.parameters())
        return clone.to(device=reference.device, dtype=reference.dtype)

    def add(self, name: str, module: nn.Module) -> None:
        self._row_weights = None
        self.adapters[name] = module

    def remove(self, name: str) -> None:
        super().remove(name)
        self._row_weights = None

    def _copy_for(self, entry: Entry) -> nn.Module | None:
        """The copy a routing entry uses here (a stack uses its last adapter's; a fusion its last adapter's
        layer norms and its own head, as :attr:`Routing.head_owner`), or None: the module's own."""
        if isinstance(entry, Fuse):
            name = entry.name if self.role == "head" else entry.last
        else:
            name = entry.last if isinstance(entry, Stack) else entry
        return self.adapters[name] if isinstance(name, str) and name in self.adapters else None

    def _swap_in(self, module, args) -> None:
        """One active adapter: the norm runs once, with the adapter's parameters in place of the base
        module's, and ``_on_output`` puts the base ones back. (Re-running a copy after the base norm cost a
        few percent of inference, in page faults for the extra output: see docs/benchmarks.md.)"""
        self._restore(module)  # a forward that raised last time may have left them swapped
        active = self._owner
        if isinstance(active, str) and active in self.adapters:
            self._swapped = dict(module._parameters)
            module._parameters.update(self.adapters[active]._parameters)
        elif self._rms_scales and self._rms_in_one_pass(args):
            # A mixed batch through an RMS norm already checked to be weight * f(x): the norm runs once with a
            # weight of ones (f(x) exactly) and ``_on_output`` multiplies each row by its own weight.
            self._swapped = {"weight": module._parameters["weight"]}
            module._parameters["weight"] = torch.ones_like(self._swapped["weight"])
            self._ones_in = True

    def _rms_in_one_pass(self, args: tuple) -> bool:
        """Whether this call is a mixed batch, sorted by adapter, that the RMS one-pass path covers."""
        routing = self.routing
        if not routing.mixed or isinstance(routing.active, Parallel) or not args or not torch.is_tensor(args[0]):
            return False
        return args[0].shape[0] == len(routing.rows) and isinstance(routing.groups(args[0].device)[0][1], slice)

    def _restore(self, module) -> None:
        if self._swapped is not None:
            module._parameters.update(self._swapped)
            self._swapped = None
            self._ones_in = False

    def _on_output(self, module, args, kwargs, out: torch.Tensor):
        if self._swapped is not None:  # the norm already ran with the active adapter's parameters (or ones)
            ones = self._ones_in
            self._restore(module)
            if not ones:
                return None
            x = _first_tensor(args, kwargs)
            return self._rows_rms_weight(x, self.routing.groups(x.device)) * out  # (B, 1, ..., d) * (B, ..., d)
        active = self._owner
        if active is None or self.routing.idle(self.adapters):
            return None
        if not self.routing.mixed:
            return self.adapters[active](*args, **kwargs) if active in self.adapters else None
        x = _first_tensor(args, kwargs)
        self.routing.check_batch(x.shape[0])
        groups = self.routing.groups(x.device)
        # A Parallel's norms run per task block, as each task alone would (exact); a mixed batch's in one go.
        if self._norm_form is not None and isinstance(groups[0][1], slice) and not isinstance(self.routing.active, Parallel):
            if self._norm_form == "layer_norm":
                return self._mixed_layer_norm(x, groups)
            mixed = self._mixed_rms_norm(x, out, groups)
            if mixed is not None:
                return mixed
        pieces = []
        for name, rows in groups:
            take = (lambda t: t[rows]) if isinstance(rows, slice) else (lambda t: t.index_select(0, rows))
            copy_here = self._copy_for(name)
            pieces.append((rows, take(out) if copy_here is None else copy_here(take(x))))
        # Heads of different tasks may differ in width: pad to the widest (zeros); see mixed.py.
        width = max(p.shape[-1] for _, p in pieces)
        if isinstance(pieces[0][0], slice):
            padded = [p if p.shape[-1] == width else nn.functional.pad(p, (0, width - p.shape[-1])) for _, p in pieces]
            return torch.cat(padded) if len(padded) > 1 else padded[0]
        result = out.new_zeros((x.shape[0], *out.shape[1:-1], width))
        for rows, piece in pieces:
            result[rows, ..., : piece.shape[-1]] = piece
        return result

    def _mixed_layer_norm(self, x: torch.Tensor, groups: list[tuple[str | None, slice]]) -> torch.Tensor:
        """LayerNorm copies on a batch sorted by adapter: normalise once, then each row's own affine
        (weight and bias of its adapter's copy, or the base module's), one fused multiply-add."""
        weights, biases = [], []
        for name, rows in groups:
            norm = self._copy_for(name)
            norm = self._base if norm is None else norm
            weights.append(norm.weight.expand(rows.stop - rows.start, -1))
            biases.append(norm.bias.expand(rows.stop - rows.start, -1))
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)  # (B, 1, ..., d)
        weight, bias = torch.cat(weights).view(shape), torch.cat(biases).view(shape)
        normed = nn.functional.layer_norm(x, self._base.normalized_shape, None, None, self._base.eps)
        return torch.addcmul(bias, normed, weight)

    def _mixed_rms_norm(self, x: torch.Tensor, out: torch.Tensor, groups: list[tuple[str | None, slice]]):
        """RMS norm copies (Llama-style, ``weight * normalise(x)``) on a batch sorted by adapter: the base
        module's own forward once with a weight of ones, then each row's weight in one multiply. Exact where
        the module's output is ``weight * f(x)`` with ``f`` not depending on the weight (LlamaRMSNorm and its
        copies: Qwen2, Mistral, ...); checked once on the first mixed batch (the hook's ``out`` against
        ``weight * f(x)``, and a weight of twos against ``2 * f(x)``), and None (the per-group path) if not,
        e.g. Gemma's ``(1 + weight)``."""
        normed = _rms_forward_with_weight(self._base, x, 1.0)  # (B, ..., d)
        if self._rms_scales is None:
            self._rms_scales = (torch.equal(out, self._base.weight * normed)
                                and torch.equal(_rms_forward_with_weight(self._base, x, 2.0), 2.0 * normed))
        if not self._rms_scales:
            return None
        return self._rows_rms_weight(x, groups) * normed

    def _rows_rms_weight(self, x: torch.Tensor, groups: list[tuple[str | None, slice]]) -> torch.Tensor:
        """Each row's RMS norm weight ``(B, 1, ..., d)``, cached per routing while no weight changes (a decode
        step reuses the last step's; ``stacked.parameter_fingerprint`` catches training and reloads)."""
        key = (self.routing.rows, x.device, x.dim())
        cached, inference = self._row_weights, not torch.is_grad_enabled()
        if inference and cached is not None and cached[0] == key:  # the same rows: are the weights unchanged?
            fingerprint = parameter_fingerprint(cached[1])
            if fingerprint is not None and fingerprint == cached[2]:
                return cached[3]
        norms = [(self._copy_for(name), rows) for name, rows in groups]
        norms = [(self._base if norm is None else norm, rows) for norm, rows in norms]
        weights = [norm.weight for norm, _ in norms]
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)  # (B, 1, ..., d)
        weight = torch.cat([w.expand(rows.stop - rows.start, -1) for w, (_, rows) in zip(weights, norms)]).view(shape)
        self._row_weights = (key, weights, parameter_fingerprint(weights), weight) if inference else None
        return weight


def _affine_layer_norm(module: nn.Module) -> bool:
    """A plain nn.LayerNorm over the last dimension with weight and bias (BERT-style models)."""
    return (type(module) is nn.LayerNorm and module.weight is not None and module.bias is not None
            and len(module.normalized_shape) == 1)


def _rms_norm_like(module: nn.Module) -> bool:
    """An RMS norm by structure: one parameter, ``weight`` of shape (d,), no bias, an epsilon attribute
    (``variance_epsilon`` as in LlamaRMSNorm, or ``eps``). Whether its output scales with the weight is
    checked in :meth:`ModuleCopies._mixed_rms_norm`."""
    params = dict(module.named_parameters(recurse=False))
    weight = params.get("weight")
    return (len(params) == 1 and weight is not None and weight.dim() == 1
            and (hasattr(module, "variance_epsilon") or hasattr(module, "eps")))


def _rms_forward_with_weight(module: nn.Module, x: torch.Tensor, value: float) -> torch.Tensor:
    """The module's own forward on ``x`` (no hooks) with its weight filled with ``value``."""
    weight = module._parameters["weight"]
    module._parameters["weight"] = torch.full_like(weight, value)
    try:
        return type(module).forward(module, x)
    finally:
        module._parameters["weight"] = weight


__all__ = ["ModuleCopies"]

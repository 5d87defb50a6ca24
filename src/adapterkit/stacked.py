"""One batched matmul per bottleneck site for a mixed batch (issue 15): the stacked path.

A mixed batch's rows are sorted by adapter (``layers.Routing.groups``); the grouped path
(``BottleneckLayer._apply_mixed``) runs each adapter on its slice of rows, i.e. G small matmul pairs per site.
In a decode step each row holds one token, so those matmuls are tiny and the loop's per-op overhead is the cost:
one site of SmolLM2 (8 rows x 1 token x 576, 8 adapters of size 64) measured 0.96 ms grouped against 0.13 ms
as two ``baddbmm`` over stacked weights (benchmarks/mixed_decode_site.py). Here the G adapters' weights are
stacked once into ``(G, m, d)`` / ``(G, d, m)`` tensors, the rows are laid out as ``(G, R*T, d)`` (R: the
largest group's row count; shorter groups padded with copies of a row whose results are dropped), and

    y = baddbmm(b_up, act(baddbmm(b_down, v, W_down^T)), W_up^T) * scale      (G, R*T, d)
    out[rows of g] = h[rows of g] + y[g, rows]                                 rows without an adapter here: h

The weights stay in ``nn.Linear``'s (out, in) layout and ``bmm`` reads their transposed views, the layout
``F.linear`` hands to the BLAS; on this machine that gave the grouped path's values bit for bit for SmolLM2's
and BERT's shapes in fp32 and fp64 (for a few small shapes in fp32 the last bit differs). Greedy generation in a
mixed batch stays token-for-token what each request gives alone (tests/test_generation.py, test_stacked.py).

Which adapters stack: those whose kind gives :meth:`~adapterkit.kinds.AdapterKind.stacked_parts` (the built-in
bottleneck kinds do), all with the same activation and all reading the same input (the sublayer's output, or
its input for parallel kinds). Bottleneck sizes may differ: smaller ones are padded with zero rows/columns
(``act(0) == 0``, checked), exact in value, though the longer sums may round differently in the last bit. Any
other batch (a Stack or Fuse row, a kind without ``stacked_parts``, mixed activations, training with gradients,
or a shape where stacking measured slower: see :func:`worth_stacking`) takes the grouped path.

Caching. The stacked weights are built once per (site, set of adapters in the batch) and kept until a
parameter changes: every call compares each stacked parameter's ``data_ptr`` and version counter (bumped by
in-place updates: optimiser steps, ``load_state_dict``, ``copy_``) with those it was built from, so a trained,
reloaded or moved adapter is re-stacked, never served stale. Parameters that are inference tensors (created
under ``torch.inference_mode``) have no version counter: their stack is rebuilt on every call. The row layout is
cached per routing. This module imports only torch and the kinds' types.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .kinds import StackedParts

MAX_TOKENS_PER_ROW = 64  # one site at 32 rows x 128 tokens measured ~10% slower stacked than grouped; 8 x 40 faster
MAX_ROWS_PER_ADAPTER = 8  # not measured beyond: with many rows per adapter the grouped matmuls are large already


def worth_stacking(rows: int, tokens_per_row: int, adapters: int) -> bool:
    """Whether the stacked path is expected to beat the grouped one: few tokens per row (decode steps, short
    prompts), more than one adapter, not many rows per adapter. Measured per site (one SmolLM2 site: 0.13 vs
    0.96 ms at 8 rows x 1 token, benchmarks/mixed_decode_site.py) and end to end (docs/benchmarks.md)."""
    return adapters > 1 and tokens_per_row <= MAX_TOKENS_PER_ROW and rows <= MAX_ROWS_PER_ADAPTER * adapters


@dataclass
class _Layout:
    """Where each adapter's rows go in the ``(G, R*T, d)`` layout. ``dense``: every row has an adapter here and
    every group has R rows, so the batch already is that layout (a view, no copies)."""

    names: tuple[str, ...]  # the G adapters here, in row order
    parts: tuple[StackedParts, ...]
    params: list[torch.Tensor]  # every stacked parameter, for the fingerprint
    reads_input: bool
    per_group: int  # R
    dense: bool
    pad_index: torch.Tensor | None  # (G*R,) batch row for each layout row
    take_index: torch.Tensor | None  # (n,) layout row of each adapter row
    adapter_rows: torch.Tensor | None  # (n,) the batch rows that have an adapter here


@dataclass
class _Weights:
    fingerprint: tuple | None
    w_down: torch.Tensor  # (G, d_in, m): a transposed view of (G, m, d_in)
    b_down: torch.Tensor  # (G, 1, m)
    w_up: torch.Tensor  # (G, m, d): a transposed view of (G, d, m)
    b_up: torch.Tensor  # (G, 1, d)
    scale: torch.Tensor | None  # (G, 1, 1), None when every scale is 1


def parameter_fingerprint(params: list[torch.Tensor]) -> tuple | None:
    """What a cache was built from: each parameter's storage and version counter (None: some parameter is an
    inference tensor, which has no version counter, so a cache of it cannot be checked)."""
    try:
        return tuple([p._version for p in params] + [p.data_ptr() for p in params])
    except RuntimeError:  # "Inference tensors do not track version counter"
        return None


def _stack(parts: tuple[StackedParts, ...], fingerprint: tuple | None) -> _Weights:
    """The G adapters' weights in (G, ...) tensors, bottleneck sizes zero-padded to the largest."""
    m = max(part.down.out_features for part in parts)
    ref = parts[0].down.weight
    d_in, d = ref.shape[1], parts[0].up.out_features
    with torch.no_grad():
        down = ref.new_zeros((len(parts), m, d_in))  # nn.Linear's (out, in) layout, as F.linear reads it
        b_down = ref.new_zeros((len(parts), 1, m))
        up = ref.new_zeros((len(parts), d, m))
        b_up = ref.new_zeros((len(parts), 1, d))
        for g, part in enumerate(parts):
            size = part.down.out_features
            down[g, :size] = part.down.weight
            b_down[g, 0, :size] = part.down.bias
            up[g, :, :size] = part.up.weight
            b_up[g, 0] = part.up.bias
        scales = [part.scale for part in parts]
        scale = None if all(s == 1.0 for s in scales) else torch.tensor(scales, dtype=ref.dtype, device=ref.device).view(-1, 1, 1)
    return _Weights(fingerprint, down.transpose(1, 2), b_down, up.transpose(1, 2), b_up, scale)


class StackedSites:
    """A BottleneckLayer's cache for the stacked path: per site, the row layout of the current routing and the
    stacked weights of its adapters. The holder clears it when an adapter is added or removed there. Not copied
    with the model (deepcopy/pickle give an empty cache)."""

    def __init__(self) -> None:
        self._layouts: dict[str, tuple[tuple, _Layout | None]] = {}
        self._weights: dict[str, tuple[tuple[str, ...], _Weights]] = {}

    def __getstate__(self) -> dict:
        return {"cache": "not copied"}  # not empty: pickle skips __setstate__ for a false state

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def clear(self) -> None:
        self._layouts.clear()
        self._weights.clear()

    def apply(self, layer, h: torch.Tensor, x: torch.Tensor | None, rows: tuple, groups, site: str):
        """``h`` (B, ..., d) with every row's adapter at ``site`` applied in one batched pass, or None when this
        batch is not one the stacked path covers (the caller then groups)."""
        key = (rows, h.device, h.shape[0], h.shape[1:-1].numel())
        cached = self._layouts.get(site)
        if cached is None or cached[0] != key:
            cached = (key, self._layout(layer, h, groups, site))
            self._layouts[site] = cached
        layout = cached[1]
        if layout is None:
            return None
        weights = self._weights_for(site, layout)
        v = x if layout.reads_input else h
        if v is None or v.dtype != weights.w_down.dtype or v.device != weights.w_down.device:
            return None  # the grouped path raises (or copes) as each adapter alone would
        tokens = h.shape[1:-1].numel()
        if layout.dense:
            vs = v.reshape(len(layout.names), layout.per_group * tokens, v.shape[-1])  # (G, R*T, d_in)
        else:
            vs = v.index_select(0, layout.pad_index).reshape(len(layout.names), layout.per_group * tokens, v.shape[-1])
        act = layout.parts[0].act
        y = torch.baddbmm(weights.b_up, act(torch.baddbmm(weights.b_down, vs, weights.w_down)), weights.w_up)  # (G, R*T, d)
        if weights.scale is not None:
            y = y * weights.scale
        if layout.dense:
            return h + y.view(h.shape)
        y = y.view(len(layout.names) * layout.per_group, *h.shape[1:]).index_select(0, layout.take_index)
        out = h.clone()
        out.index_copy_(0, layout.adapter_rows, h.index_select(0, layout.adapter_rows) + y)
        return out

    def _weights_for(self, site: str, layout: _Layout) -> _Weights:
        fingerprint = parameter_fingerprint(layout.params)
        cached = self._weights.get(site)
        if (fingerprint is not None and cached is not None and cached[0] == layout.names
                and cached[1].fingerprint == fingerprint):
            return cached[1]
        weights = _stack(layout.parts, fingerprint)
        self._weights[site] = (layout.names, weights)
        return weights

    @staticmethod
    def _layout(layer, h: torch.Tensor, groups, site: str) -> _Layout | None:
        """The row layout for these groups, or None when the stacked path does not cover them."""
        if not isinstance(groups[0][1], slice):
            return None  # unsorted rows: the grouped path's index_select/index_copy
        mine = []  # (name, rows) of the groups whose adapter sits here at this site
        for name, rows in groups:
            if not (name is None or isinstance(name, str)):
                return None  # a Stack or a Fuse row
            if name is not None and layer._here(name, site):
                mine.append((name, rows))
        if not mine:
            return None
        parts = []
        for name, _ in mine:
            kind, config = layer.kinds[name]
            part = kind.stacked_parts(layer.adapters[name], config)
            if part is None:
                return None
            parts.append((part, kind.reads_input))
        if len({(p.activation, reads) for p, reads in parts}) != 1:
            return None
        if any(p.down.in_features != parts[0][0].down.in_features or p.up.out_features != parts[0][0].up.out_features
               for p, _ in parts):
            return None
        tokens = h.shape[1:-1].numel()
        sizes = [rows.stop - rows.start for _, rows in mine]
        if not worth_stacking(h.shape[0], tokens, len(mine)):
            return None
        if len({p.down.out_features for p, _ in parts}) > 1:  # padded sizes need act(0) == 0
            with torch.no_grad():
                probe = parts[0][0].act(torch.zeros(1, dtype=h.dtype, device=h.device))
            if probe.item() != 0:
                return None
        per_group = max(sizes)
        names = tuple(n for n, _ in mine)
        dense = sum(sizes) == h.shape[0] and len(set(sizes)) == 1
        params = [t for p, _ in parts for t in (p.down.weight, p.down.bias, p.up.weight, p.up.bias)]
        layout = _Layout(names, tuple(p for p, _ in parts), params, parts[0][1], per_group, dense, None, None, None)
        if not dense:
            pad, take, adapter_rows = [], [], []
            for g, (_, rows) in enumerate(mine):
                members = list(range(rows.start, rows.stop))
                pad += members + [members[0]] * (per_group - len(members))  # padding rows: computed, dropped
                take += [g * per_group + j for j in range(len(members))]
                adapter_rows += members
            as_index = lambda xs: torch.tensor(xs, dtype=torch.long, device=h.device)  # noqa: E731
            layout.pad_index, layout.take_index, layout.adapter_rows = as_index(pad), as_index(take), as_index(adapter_rows)
        return layout


__all__ = ["MAX_ROWS_PER_ADAPTER", "MAX_TOKENS_PER_ROW", "StackedSites", "parameter_fingerprint", "worth_stacking"]

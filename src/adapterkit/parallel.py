"""``Parallel(a, b, ...)``: one input, every adapter's output in one pass, the layers below the first adapted
one computed once for all of them.

AdapterHub's ``Parallel`` (adapters 1.3, ``adjust_tensors_for_parallel`` and ``BottleneckLayer.compose_parallel``)
repeats the batch N times where the first adapter of the block acts, so that a batch of B rows leaves the
model as N x B rows: rows ``[i*B, (i+1)*B)`` went through the block's i-th member. Everything below that point
runs once on B rows: with adapters that leave out the lowest k layers, those k layers are shared by all N
tasks (AdapterDrop, Rücklé et al. 2021, arXiv 2010.11918, report 39% faster inference for 8 tasks with the
first 5 layers dropped).

How it is done here, with forward pre-hooks on the user's own modules (nothing replaced):

* the **replication point** is the lowest module where a module of the block's adapters hangs: the
  transformer layer holding the lowest bottleneck or layer-norm copy, or the first task-head module
  (adapters on no layer). An adapter with its own embedding layer norm (``train_embedding_norm``) differs
  from the first op on: the model's inputs are repeated and nothing is shared (the model builds its
  attention mask from the embeddings' batch, so replicating after them would not do);
* a pre-hook there repeats every tensor of the call with B rows (hidden states, attention mask, position
  tensors) N times along the batch (``t.repeat(N, ...)``: the batch through a, then through b) and tells the
  routing (``Routing.replicate``), which from then on routes the N x B rows like a mixed batch sorted by task:
  each adapter layer, layer-norm copy and head works on its task's block of rows (``layers.py``). Heads of
  different widths are padded to the widest, as in mixed batches (``mixed.split_parallel`` cuts them back);
* a pre-hook on each layer above repeats the tensors the model passes to every layer (the attention mask,
  position embeddings) that still have B rows, since the model built them for the input batch;
* a forward hook on the model checks that its output has N x B rows: a head that reads the inputs (GPT-2's
  and Llama's classifiers pick each row's last token from ``input_ids``, which has B rows) would otherwise
  answer for the first task only; it raises instead.

Each task's rows are computed by the same operations as that task run alone (the norms per block, not the
mixed batch's one-pass affine); the only difference is the batch size the base model's matmuls see below and
above the point, and tests/test_parallel.py checks the outputs are equal to running each adapter alone.
One difference from AdapterHub: it repeats the hidden states at the first adapter *site* (inside the layer,
with ``adjust_tensors_for_parallel`` in its own copies of the model code making the residual and mask follow);
with hooks on an unmodified model the earliest place where every tensor of the call can follow is the layer's
input, so the layer holding the first adapter runs wholly on N x B rows (for Houlsby adapters the first site
is that layer's attention output, so only its self-attention projections are computed N times more).
Encoder-decoder models (two layer stacks) are refused: the decoder would meet an encoder output of N x B rows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .architectures import ArchitectureSpec, base_modules, head_modules, layer_lists
from .composition import Parallel
from .copies import ModuleCopies
from .layers import AdapterModule, Routing, _first_tensor


def replication_point(model: nn.Module, spec: ArchitectureSpec, block: Parallel) -> tuple[nn.Module, list[nn.Module]]:
    """(the module whose input is repeated, the layers above it whose inputs follow): see the module docstring."""
    if len(spec.stacks) != 1:
        raise ValueError(f"{block!r}: Parallel runs on models with one layer stack (encoders, decoders); this "
                         f"model has {len(spec.stacks)} (an encoder-decoder). Run its tasks one by one")
    layers = list(layer_lists(model, spec)[0])
    holders = [h for _, h in base_modules(model) if isinstance(h, AdapterModule) and any(n in h.adapters for n in block.names)]
    held = {id(h) for h in holders}
    for index, layer in enumerate(layers):
        if any(id(m) in held for m in layer.modules()):
            in_layers = {id(m) for other in layers for m in other.modules()}
            if any(id(h) not in in_layers and h.role != "head" for h in holders):
                return model, []  # an embedding-norm copy: the whole model runs on N x B rows
            return layer, layers[index + 1:]
    if any(h.role != "head" for h in holders):
        return model, []
    heads = [m for m in head_modules(model, spec) if isinstance(m._modules.get("adapters"), ModuleCopies)]
    if not heads:
        raise ValueError(f"{block!r}: its adapters have no module in this model")
    return heads[0], []


class Replicator:
    """The hooks of one active Parallel; no-ops once the routing names something else."""

    def __init__(self, routing: Routing, block: Parallel):
        self.routing, self.block = routing, block
        self.batch: int | None = None  # B of the current forward, set at the replication point

    def _live(self) -> bool:
        return self.routing.active is self.block

    def _repeat(self, value: Any, skip: torch.Tensor | None = None) -> Any:
        """Tensors with B rows repeated N times along dim 0 (``[x; x; ...]``), inside tuples and lists too."""
        if torch.is_tensor(value):
            if value is skip or value.dim() == 0 or value.shape[0] != self.batch:
                return value
            return value.repeat(len(self.block), *([1] * (value.dim() - 1)))  # (N*B, ...)
        if isinstance(value, (tuple, list)):
            return type(value)(self._repeat(v, skip) for v in value)
        if isinstance(value, dict):
            return {k: self._repeat(v, skip) for k, v in value.items()}
        return value

    def replicate(self, module: nn.Module, args: tuple, kwargs: dict):
        """Pre-hook at the replication point: (B, ...) -> (N*B, ...) for every tensor of the call."""
        if not self._live():
            return None
        self.batch = _batch_rows(args, kwargs)
        self.routing.replicate(self.batch)
        return self._repeat(args), self._repeat(kwargs)

    def follow(self, module: nn.Module, args: tuple, kwargs: dict):
        """Pre-hook on each layer above the point: repeat what still has B rows (mask, positions)."""
        if not self._live() or self.batch is None or len(self.block) == 1:
            return None
        hidden = _first_tensor(args, kwargs)
        if hidden.shape[0] != len(self.block) * self.batch:
            return None
        return self._repeat(args, skip=hidden), self._repeat(kwargs, skip=hidden)

    def check_output(self, module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        if not self._live() or self.batch is None:
            return
        rows = _output_rows(out)
        want = len(self.block) * self.batch
        if rows is not None and rows != want:
            raise ValueError(
                f"{self.block!r}: the model returned {rows} rows, not {len(self.block)} x {self.batch}: its head "
                f"reads the inputs ({type(module).__name__}'s classifier picks each row's last token from input_ids, "
                "which has the batch's rows), so it cannot answer per task. Run the tasks as a mixed batch "
                "(adapterkit.predict_mixed) or one by one")


def _batch_rows(args: tuple, kwargs: dict) -> int:
    """B: the rows of the hidden states, or (at the model's own input) of the first batched input."""
    try:
        return _first_tensor(args, kwargs).shape[0]
    except TypeError:  # the model's inputs: input_ids, pixel_values, ...
        for value in list(args) + list(kwargs.values()):
            if torch.is_tensor(value) and value.dim():
                return value.shape[0]
        raise


def _output_rows(out: Any) -> int | None:
    for key in ("logits", "last_hidden_state"):
        value = getattr(out, key, None)
        if torch.is_tensor(value):
            return value.shape[0]
    first = out[0] if isinstance(out, (tuple, list)) and out else out
    return first.shape[0] if torch.is_tensor(first) and first.dim() else None


def attach(model: nn.Module, spec: ArchitectureSpec, routing: Routing, block: Parallel) -> list:
    """Hook ``block``'s replication into the model; returns the hook handles (``Routing.set`` removes them)."""
    point, above = replication_point(model, spec, block)
    replicator = Replicator(routing, block)
    handles = [point.register_forward_pre_hook(replicator.replicate, with_kwargs=True, prepend=True)]
    try:
        for layer in above:
            handles.append(layer.register_forward_pre_hook(replicator.follow, with_kwargs=True))
        handles.append(model.register_forward_hook(replicator.check_output, with_kwargs=True))
    except BaseException:
        for handle in handles:
            handle.remove()
        raise
    return handles


__all__ = ["Replicator", "attach", "replication_point"]

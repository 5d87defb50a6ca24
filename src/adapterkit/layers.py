"""Where adapters meet the model: forward hooks on the user's own modules, and the routing object.

Nothing in the user's model is replaced, subclassed or copied. Each adapted module gets a child named
``adapters`` (an :class:`AdapterModule`) and a forward hook that rewrites the module's output:

* :class:`BottleneckLayer` on a sublayer's output (attention out, FFN out), at each adapter's own site: the
  output projection, or the dropout that follows it where the model has one (``AdapterConfig.site``); each
  adapter's kind (``kinds.py``) says how its module meets the output, e.g.
      serial   (houlsby, pfeiffer):  h -> h + up(act(down(h)))
      parallel (He et al. 2022):     h -> h + s * up(act(down(x)))   x = the sublayer's input
* ``ModuleCopies`` (copies.py) on a layer norm or a task-head module: each adapter owns a copy of the module
  (initialised from it, or a new head) and the copy's output replaces the module's output.

Hooks instead of wrapper modules keep every pretrained parameter under its own state-dict key, so
``save_pretrained`` / ``from_pretrained`` of the base model keep working with adapters attached.

All of them read one :class:`Routing` object per model that says what is active: ``None`` (the base model,
bit-exact), an adapter name, a ``Stack``, a ``Parallel`` (``parallel.py`` replicates the batch where its
first adapter acts, then it routes like a mixed batch), or one entry (a name, a ``Stack``, a ``Fuse`` or None)
per example of the batch (mixed-task batches).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .composition import Fuse, Parallel, Stack
from .kinds import AdapterKind
from .stacked import StackedSites


Entry = str | Stack | Fuse | None  # what one row of a mixed batch runs through


class Routing:
    """What is active: None, one adapter name, a :class:`~adapterkit.composition.Stack`, a
    :class:`~adapterkit.composition.Fuse`, a :class:`~adapterkit.composition.Parallel`, or a list with one
    entry (name, Stack, Fuse or None) per batch row."""

    def __init__(self) -> None:
        self.active: str | None | Stack | Parallel | tuple[Entry, ...] = None
        self.rows: tuple[Entry, ...] | None = None  # one entry per row: the mixed list, or a Parallel's replicated batch
        self.hooks: list = []  # a Parallel's replication hooks (parallel.py): removed when the routing changes
        self._groups: dict[torch.device, list[tuple[Entry, torch.Tensor]]] = {}

    def set(self, active: str | None | Stack | Fuse | Parallel | Sequence[Entry]) -> None:
        while self.hooks:
            self.hooks.pop().remove()
        self.active = active if active is None or isinstance(active, (str, Stack, Fuse, Parallel)) else tuple(active)
        self.rows = self.active if isinstance(self.active, tuple) else None
        self._groups = {}

    def replicate(self, batch: int) -> None:
        """The active Parallel's batch of ``batch`` rows is now N x ``batch`` rows (parallel.py): its i-th
        member routes rows ``[i*batch, (i+1)*batch)``, as a mixed batch sorted by task."""
        rows = tuple(m for m in self.active.members for _ in range(batch))
        if rows != self.rows:
            self.rows, self._groups = rows, {}

    def idle(self, here: nn.ModuleDict) -> bool:
        """A Parallel is active and none of its adapters has a module in ``here``: leave the output alone
        (the holder may sit below the point where the batch is replicated)."""
        return isinstance(self.active, Parallel) and not any(n in here for n in self.active.names)

    @property
    def owner(self) -> str | None | Parallel | tuple:
        """The adapter whose layer norms and head are used (one routing for the whole batch): the active one,
        or a stack's (or fusion's) last."""
        return self.active.last if isinstance(self.active, (Stack, Fuse)) else self.active

    @property
    def head_owner(self) -> str | None:
        """Whose head copy is used: a fusion's own (it trains one), else :attr:`owner`'s."""
        return self.active.name if isinstance(self.active, Fuse) else self.owner

    @property
    def mixed(self) -> bool:
        return self.rows is not None

    def groups(self, device: torch.device) -> list[tuple[str | None, torch.Tensor | slice]]:
        """Rows per name for a mixed batch, built once per (routing, device), in order of first appearance.

        When every name's rows are contiguous (a batch sorted by task, as ``predict_mixed`` and the server
        make it), each group is a ``slice``: layers then work on views and join the pieces with one
        ``torch.cat``, no gather/scatter. Otherwise each group is a LongTensor of row indices."""
        if device not in self._groups:
            rows: dict[str | None, list[int]] = {}
            for i, name in enumerate(self.rows):
                rows.setdefault(name, []).append(i)
            if all(r[-1] - r[0] + 1 == len(r) for r in rows.values()):
                self._groups[device] = [(n, slice(r[0], r[-1] + 1)) for n, r in rows.items()]
            else:
                self._groups[device] = [(n, torch.tensor(r, dtype=torch.long, device=device)) for n, r in rows.items()]
        return self._groups[device]

    def check_batch(self, batch_size: int) -> None:
        if len(self.rows) != batch_size:
            raise ValueError(
                f"mixed routing names {len(self.rows)} examples but the batch has {batch_size} rows; "
                "pass one adapter name (or None) per example"
            )

    def __getstate__(self):  # cached index tensors are not worth copying
        return {"active": self.active, "rows": self.rows, "hooks": [], "_groups": {}}


class AdapterModule(nn.Module):
    """The protocol every adapter holder follows: per-adapter weights in ``self.adapters`` (a ModuleDict
    keyed by adapter name), found by ``isinstance``, never by parameter-name matching."""

    role: str  # "adapter" | "layer_norm" | "head": the summary's bucket
    holds_adapters = True  # architectures.base_modules walks past the contents (see there)

    def __init__(self, routing: Routing):
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.__dict__["routing"] = routing  # a plain attribute: shared, not a submodule

    def adapter_parameters(self, name: str) -> Iterator[nn.Parameter]:
        if name in self.adapters:
            yield from self.adapters[name].parameters()

    def remove(self, name: str) -> None:
        if name in self.adapters:
            del self.adapters[name]

    def detach_hooks(self) -> None:
        """Unhook from the model (called when the last adapter here is removed)."""
        while self._handles:
            self._handles.pop().remove()

    def _hook(self, register, *args, **kwargs) -> None:
        """Register a hook and keep its handle; if that fails, undo the ones this holder registered."""
        try:
            self._handles.append(register(*args, **kwargs))
        except BaseException:
            self.detach_hooks()
            raise


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    if args and torch.is_tensor(args[0]):
        return args[0]
    if torch.is_tensor(kwargs.get("hidden_states")):
        return kwargs["hidden_states"]
    for value in list(args) + list(kwargs.values()):
        if torch.is_tensor(value) and value.is_floating_point():
            return value
    raise TypeError("adapterkit: found no hidden-state tensor among the sublayer's inputs")


class BottleneckLayer(AdapterModule):
    """Per-adapter modules on one sublayer output, each combined with it as its kind says (``kinds.py``),
    each at its own ``AdapterConfig.site``. It hangs on the output projection (so its weights are named after
    it) and hooks the projection (``before_dropout`` adapters: LN(x + drop(h + f(h)))) and, while some
    adapter here is ``after_dropout``, the dropout right after it (LN(x + drop(h) + f(drop(h))), adapter-bert's
    and AdapterHub's order). Without such a dropout (``dropout=None``) every adapter sits on the projection.
    Kinds that read the sublayer's input get it from a forward pre-hook on ``input_module``, registered only
    while some adapter here needs it."""

    role = "adapter"

    def __init__(self, routing: Routing, projection: nn.Module, dropout: nn.Module | None = None):
        super().__init__(routing)
        self.kinds: dict[str, tuple[AdapterKind, Any]] = {}  # adapter name -> (its kind, its AdapterConfig)
        self.fusions = nn.ModuleDict()  # fusion name -> its attention here (fusion.FusionLayer)
        self.sites: dict[str, str] = {}  # adapter name -> where it is applied here: "before_dropout" | "after_dropout"
        self._sublayer_input: torch.Tensor | None = None
        self._handles = []
        self._capture_handle = None  # the sublayer-input hook, while some adapter here reads the input
        self._dropout_handle = None  # the dropout's hook, while some adapter here is after_dropout
        self._stacked = StackedSites()  # mixed batches' stacked weights per site (stacked.py)
        self.__dict__["projection"] = projection  # hooked modules: plain attributes, not submodules
        self.__dict__["dropout"] = dropout
        self._hook(projection.register_forward_hook, self._on_projection)

    def add(self, name: str, module: nn.Module, kind: AdapterKind, config: Any, input_module: nn.Module | None = None) -> None:
        """Adapter ``name``'s ``module`` of ``kind`` here; ``input_module`` is the sublayer's (for kinds that read it)."""
        self._stacked.clear()
        self.adapters[name] = module
        self.kinds[name] = (kind, config)
        self.sites[name] = "after_dropout" if config.site == "after_dropout" and self.dropout is not None else "before_dropout"
        if kind.reads_input and self._capture_handle is None:  # hook the input only while some adapter needs it
            self._capture_handle = input_module.register_forward_pre_hook(self._capture_input, with_kwargs=True)
            self._handles.append(self._capture_handle)
        if self.sites[name] == "after_dropout" and self._dropout_handle is None:  # likewise the dropout
            self._dropout_handle = self.dropout.register_forward_hook(self._on_dropout)
            self._handles.append(self._dropout_handle)

    @property
    def reads_input(self) -> bool:
        return any(kind.reads_input for kind, _ in self.kinds.values())

    def remove(self, name: str) -> None:
        super().remove(name)
        self._stacked.clear()
        self.kinds.pop(name, None)
        if name in self.fusions:
            del self.fusions[name]
        self.sites.pop(name, None)
        if not self.reads_input and self._capture_handle is not None:  # the last reader here: unhook the input
            self._unhook(self._capture_handle)
            self._capture_handle = None
            self._sublayer_input = None
        if "after_dropout" not in self.sites.values() and self._dropout_handle is not None:
            self._unhook(self._dropout_handle)
            self._dropout_handle = None

    def _unhook(self, handle) -> None:
        handle.remove()
        self._handles.remove(handle)

    def detach_hooks(self) -> None:
        super().detach_hooks()
        self._capture_handle = self._dropout_handle = None

    def _capture_input(self, module, args, kwargs):
        if self.reads_input:
            self._sublayer_input = _first_tensor(args, kwargs)

    def _combine(self, name: str, h: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        kind, config = self.kinds[name]
        return kind.combine(self.adapters[name], h, x if kind.reads_input else None, config)

    # Bound methods, not lambdas, as hooks: copy.deepcopy and pickle of the model then keep them pointing at
    # the copy's holder.
    def _on_projection(self, module, args, h: torch.Tensor):
        return self._rewrite(h, "before_dropout")

    def _on_dropout(self, module, args, h: torch.Tensor):
        return self._rewrite(h, "after_dropout")

    def _rewrite(self, h: torch.Tensor, site: str):  # h: (B, T, d), the output of the module hooked for ``site``
        """The hooked module's output with the active adapters that sit at ``site`` applied (None: unchanged)."""
        x = self._sublayer_input
        if site == "after_dropout" or self._dropout_handle is None:  # the last hook of the sublayer: let x go
            self._sublayer_input = None
        active = self.routing.active
        if active is None or self.routing.idle(self.adapters):
            return None
        if isinstance(active, Fuse):  # the fused adapters share one site (add_fusion checks)
            return self._fuse(active, h, x) if any(self._here(n, site) for n in active.names) else None
        if not self.routing.mixed:  # one adapter or one Stack for the whole batch
            return self._apply_entry(active, h, x, site) if self._has(active, site) else None
        self.routing.check_batch(h.shape[0])
        groups = self.routing.groups(h.device)
        return self._apply_mixed(h, x, groups, site) if any(self._has(n, site) for n, _ in groups) else None

    def _here(self, name: str, site: str) -> bool:
        return name in self.adapters and self.sites[name] == site

    def _has(self, entry: Entry, site: str) -> bool:
        """Whether a routing entry (a name, a Stack, a Fuse, None) has a module here at ``site``."""
        if isinstance(entry, (Stack, Fuse)):
            return any(self._here(n, site) for n in entry.names)
        return isinstance(entry, str) and self._here(entry, site)

    def _apply_entry(self, entry: str | Stack | Fuse, h: torch.Tensor, x: torch.Tensor | None, site: str) -> torch.Tensor:
        """An entry's modules at ``site`` on ``h``; a stack's one after the other, each reading the previous
        output (set_active keeps a stack's before_dropout adapters first); a fusion's attention over its
        adapters' branches (a mixed-batch row that names a Fuse)."""
        if isinstance(entry, Fuse):
            return self._fuse(entry, h, x)
        if isinstance(entry, Stack):
            for name in entry.names:
                if self._here(name, site):
                    h = self._combine(name, h, x)
            return h
        return self._combine(entry, h, x)

    def _fuse(self, block: Fuse, h: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor | None:
        """AdapterHub's ``compose_fuse``: query and residual are the sublayer output h, keys and values the
        fused adapters' branches (``AdapterKind.branch``) stacked on a new axis."""
        names = [n for n in block.names if n in self.adapters]
        if not names:
            return None
        branches = [self.kinds[n][0].branch(self.adapters[n], h, x, self.kinds[n][1]) for n in names]
        ups = torch.stack(branches).permute(1, 2, 0, 3)  # (N, B, T, d) -> (B, T, N, d)
        return self.fusions[block.name](h, ups, h)

    def _apply_mixed(self, h: torch.Tensor, x: torch.Tensor | None, groups, site: str) -> torch.Tensor:
        """Each row through its own entry (a name or a Stack), grouped by entry; rows whose adapter sits at the
        other site (or is the base model's) pass unchanged. At inference, batches of few tokens per row whose
        adapters' kinds can be stacked (decode steps) run as one batched matmul over stacked weights instead
        (stacked.py: 0.13 vs 0.96 ms per SmolLM2 site); grouping works for every adapter kind and is the path
        for training, long rows and everything the stacked path does not cover."""
        if not torch.is_grad_enabled():
            out = self._stacked.apply(self, h, x, self.routing.rows, groups, site)
            if out is not None:
                return out
        rows_of = lambda t, rows: None if t is None else t[rows]  # noqa: E731
        apply = lambda name, rows, hr, xr: self._apply_entry(name, hr, xr, site) if self._has(name, site) else hr  # noqa: E731
        if isinstance(groups[0][1], slice) and not torch.is_grad_enabled():  # inference: write into one output
            out = torch.empty_like(h)
            for name, rows in groups:
                out[rows] = apply(name, rows, h[rows], rows_of(x, rows))
            return out
        if isinstance(groups[0][1], slice):  # contiguous groups: work on views
            pieces = [apply(name, rows, h[rows], rows_of(x, rows)) for name, rows in groups]
            return torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        out = h.clone()
        for name, rows in groups:
            if self._has(name, site):
                out.index_copy_(0, rows, self._apply_entry(name, h.index_select(0, rows),
                                                           None if x is None else x.index_select(0, rows), site))
        return out


__all__ = ["AdapterModule", "BottleneckLayer", "Routing"]

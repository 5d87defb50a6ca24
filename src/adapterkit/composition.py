"""Composition blocks, with AdapterHub's names and semantics (docs: "Adapter Activation and Composition").

    ak.set_active(model, ak.Stack("lang", "task"))   # at each site task's module reads lang's output (MAD-X)
    ak.add_adapter(model, "avg", ak.Average("a", "b", weights=[0.3, 0.7]))   # a new plain adapter

``Stack(a, b)``: at every site both adapters have, h -> combine_b(combine_a(h)), i.e. for serial kinds
h -> h1 + f_b(h1) with h1 = h + f_a(h) (``kinds.py``); a site only one of them has applies that one. Layer
norms and the head are the last adapter's (the task adapter of MAD-X; AdapterHub also takes the last
adapter's head). This is AdapterHub's ``compose_stack`` (adapters 1.3, methods/bottleneck.py: each adapter's
``pre_forward`` takes the previous output as its input and residual, ``post_forward`` of the last adds the
sublayer's residual under the model's layer norm); measured on MiniLM with the same weights, the last
hidden state is the same to 0.0 (tests/test_stack_parity.py). A stack in which a parallel adapter shares a
site with another adapter of the stack is refused by ``set_active``: AdapterHub keeps only the last branch
there (``model._check_stack``).

``Average(a, b, weights=...)``: every tensor of the new adapter (bottlenecks, layer-norm copies, head) is
sum_i w_i * t_i over the adapters' tensors, with the weights divided by their sum unless
``normalize=False`` (AdapterHub's ``average_adapter(..., normalize_weights=True)``). The adapters must have
the same shapes and the same config (``init_std`` aside); the new adapter takes the first one's config and
head. It is an ordinary adapter afterwards: train, save, load, serve.

``Fuse(a, b, c)``: AdapterFusion (Pfeiffer et al. 2021, arXiv 2005.00247), a learned attention over the
outputs of frozen adapters at each site; added with ``ak.add_fusion(model, Fuse(...))`` and activated with
``set_active`` (``fusion.py``).

``Parallel(a, b, ...)``: one input, every adapter's output in one call. As AdapterHub's ``Parallel``
(adapters 1.3, ``adjust_tensors_for_parallel`` / ``BottleneckLayer.compose_parallel``) a batch of B rows comes
out as N x B rows: rows ``[i*B, (i+1)*B)`` are the batch through the i-th adapter (a name, or a ``Stack``).
The batch is replicated only where the first of them acts (``parallel.py``): the layers below are computed
once for all tasks (AdapterDrop, Rücklé et al. 2021, arXiv 2010.11918). Each task's head reads its own rows;
``adapterkit.mixed.split_parallel`` cuts the output into one tensor per task.

``adapterkit.Stack`` used to name the architecture spec's layer stack, now :class:`LayerStack`: called with
that signature (a tuple of layer norms, or keywords) it still builds one, with a DeprecationWarning, for one
release.
"""

from __future__ import annotations

import math
import re
import warnings

from .architectures import LayerStack


def _names(block: str, names: tuple) -> tuple[str, ...]:
    if not names or any(not isinstance(n, str) for n in names):
        raise ValueError(f"{block} takes adapter names, e.g. {block}('a', 'b'), got {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{block}: an adapter may appear once, got {names!r}")
    return tuple(names)


class Stack:
    """Adapters applied one after the other at each site: ``set_active(model, Stack("a", "b"))``."""

    def __new__(cls, *names, **kwargs):
        if kwargs or any(not isinstance(n, str) for n in names):  # the layer-stack spec of 0.1
            warnings.warn("adapterkit.Stack(layers, attention_output, ...) is now adapterkit.LayerStack; "
                          "adapterkit.Stack('a', 'b') stacks adapters. The old form goes in the next release.",
                          DeprecationWarning, stacklevel=2)
            return LayerStack(*names, **kwargs)
        return super().__new__(cls)

    def __init__(self, *names: str):
        self.names = _names("Stack", names)

    @property
    def last(self) -> str:
        """The adapter whose layer norms and head the stack uses."""
        return self.names[-1]

    def __eq__(self, other) -> bool:
        return type(other) is Stack and other.names == self.names

    def __hash__(self) -> int:
        return hash(("Stack", self.names))

    def __repr__(self) -> str:
        return f"Stack({', '.join(map(repr, self.names))})"


_FUSION_NAME = re.compile(r"^[A-Za-z0-9_\-,]+$")


class Fuse:
    """AdapterFusion over adapters: ``add_fusion(model, Fuse("a", "b", "c"))``, then
    ``set_active(model, Fuse("a", "b", "c"))``. ``name`` defaults to AdapterHub's: the names joined by ","."""

    def __init__(self, *names: str, name: str | None = None):
        self.names = _names("Fuse", names)
        self.name = ",".join(self.names) if name is None else name
        if not isinstance(self.name, str) or not _FUSION_NAME.fullmatch(self.name):
            raise ValueError(f"Fuse: a fusion name is letters, digits, '_', '-' or ',', got {self.name!r}")

    @property
    def last(self) -> str:
        """The adapter whose layer-norm copies the fusion uses (AdapterHub: the last adapter's config counts)."""
        return self.names[-1]

    def __eq__(self, other) -> bool:
        return type(other) is Fuse and (other.names, other.name) == (self.names, self.name)

    def __hash__(self) -> int:
        return hash(("Fuse", self.names, self.name))

    def __repr__(self) -> str:
        named = "" if self.name == ",".join(self.names) else f", name={self.name!r}"
        return f"Fuse({', '.join(map(repr, self.names))}{named})"


class Parallel:
    """Several adapters on one input in one pass: ``set_active(model, Parallel("a", "b"))``; the output has
    N x B rows, the batch through a, then through b, ... Members are adapter names or :class:`Stack` blocks."""

    def __init__(self, *members: str | Stack):
        if not members or any(not isinstance(m, (str, Stack)) for m in members):
            raise ValueError(f"Parallel takes adapter names or Stack blocks, e.g. Parallel('a', 'b'), got {members!r}")
        if len(set(members)) != len(members):
            raise ValueError(f"Parallel: a member may appear once, got {members!r}")
        self.members = tuple(members)

    @property
    def names(self) -> tuple[str, ...]:
        """Every adapter the block uses (a stack's adapters included), in order, once each."""
        return tuple(dict.fromkeys(n for m in self.members for n in ((m,) if isinstance(m, str) else m.names)))

    def __len__(self) -> int:
        return len(self.members)

    def __eq__(self, other) -> bool:
        return type(other) is Parallel and other.members == self.members

    def __hash__(self) -> int:
        return hash(("Parallel", self.members))

    def __repr__(self) -> str:
        return f"Parallel({', '.join(map(repr, self.members))})"


def adapter_names(active) -> set[str]:
    """Every adapter name an activation uses: a name, a Stack, a Fuse, a Parallel, or a per-row list of them."""
    if active is None:
        return set()
    if isinstance(active, str):
        return {active}
    if isinstance(active, (Stack, Fuse, Parallel)):
        return set(active.names)
    return set().union(*(adapter_names(a) for a in active))


class Average:
    """A new adapter from the weighted parameters of others: ``add_adapter(model, "avg", Average("a", "b"))``."""

    def __init__(self, *names: str, weights=None, normalize: bool = True):
        self.names = _names("Average", names)
        weights = [1.0] * len(names) if weights is None else list(weights)
        if len(weights) != len(names) or any(not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w)
                                              for w in weights):
            raise ValueError(f"Average: give one finite weight per adapter ({len(names)}), got {weights!r}")
        total = math.fsum(weights)
        if normalize and total == 0:
            raise ValueError("Average: the weights sum to 0; pass normalize=False to use them as they are")
        self.weights = tuple(float(w) / total if normalize else float(w) for w in weights)

    def __repr__(self) -> str:
        return f"Average({', '.join(map(repr, self.names))}, weights={list(self.weights)})"


__all__ = ["Average", "Fuse", "Parallel", "Stack", "adapter_names"]

"""AdapterConfig: everything that defines one adapter, as a frozen dataclass with a JSON round-trip.

Defaults follow adapter-bert (Houlsby et al. 2019, https://github.com/google-research/adapter-bert):
bottleneck size 64, GELU (BERT's tanh approximation, ``gelu_new``), truncated-normal init with a small std so the adapter starts near identity,
two adapters per layer, layer norms trained.
"""

from __future__ import annotations

import dataclasses
import json
import reprlib
from dataclasses import dataclass
from typing import Any

from . import kinds

SITES = ("after_dropout", "before_dropout")
# What a saved config without ``site`` (written before the field existed: adapterkit 0.1 hooked the output
# projection) ran at, whatever the default is now: see AdapterConfig.from_saved.
SITE_WHEN_UNRECORDED = "before_dropout"
# gelu_new = gelu_pytorch_tanh: the tanh approximation adapter-bert (and BERT's original code) uses; gelu: exact.
ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu", "relu", "swish", "silu", "tanh", "identity")


# The widest bottleneck add_adapter builds, as a multiple of the hidden size it sits on. A bottleneck is
# narrower than the hidden size (the paper: 8 to 256 on 768); the headroom is for tiny test models, and the
# cap keeps a damaged or hostile config (size 300000) from allocating gigabytes.
MAX_SIZE_FACTOR = 4
DEFAULT_SIZE = 64  # the bottleneck width when neither size nor reduction_factor is given (adapter-bert's)


def __getattr__(name: str):
    if name == "PLACEMENTS":  # the names this module once listed; the registry now holds them (kinds.py)
        return kinds.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class AdapterConfigError(ValueError):
    """An AdapterConfig field has an invalid value."""


def _r(x: Any) -> str:
    """A short one-line repr for messages (a config file may hold a 1 MB string)."""
    return reprlib.repr(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class AdapterConfig:
    """How one adapter is shaped and where it sits.

    size:              bottleneck width m. Give this or ``reduction_factor``; neither means DEFAULT_SIZE (64). add_adapter
                       refuses an m over MAX_SIZE_FACTOR (4) times the hidden size.
    reduction_factor:  m = hidden_size / reduction_factor (rounded, at least 1).
    activation:        nonlinearity between the down- and up-projection (``gelu_new``: adapter-bert's tanh GELU).
    init_std:          std of the truncated-normal init of both projections (cut at 2 std);
                       0 makes the adapter an exact identity at start. The paper (Figure 6) finds
                       stds up to ~1e-2 equally good and larger ones worse: above 1e-2 the adapter
                       no longer starts near the identity.
    placement:         the adapter kind, a name in the registry of ``kinds.py``; built in:
                       "houlsby"  -- after the attention and the FFN output projections (2 per layer);
                       "pfeiffer" -- after the FFN output projection only (1 per layer);
                       "parallel" -- He et al. 2022: adapter(sublayer input) * scaling added to the
                                     sublayer output, for attention and FFN (2 per layer);
                       "parallel_ffn" -- the same for the FFN only (1 per layer): He et al.'s best single
                                     placement and AdapterHub's ParBnConfig.
    scaling:           multiplier of the adapter's output (kinds with ``scaled``: parallel; 1.0 elsewhere).
    site:              where a sublayer has a dropout right after its output projection, whether the adapter
                       reads that dropout's output ("after_dropout": adapter-bert's and AdapterHub's order,
                       LN(x + drop(h) + f(drop(h)))) or the projection's ("before_dropout": LN(x + drop(h + f(h))),
                       adapterkit 0.1's). Eval outputs are the same; training differs (docs/results.md, "The
                       default recipe"). Adapters of both sites can share one model (layers.BottleneckLayer).
    layers:            layer indices that get adapters (None: all). Counting runs over every layer stack
                       of the model in order (T5: encoder blocks, then decoder blocks).
    train_layer_norms: give the adapter its own copies of the layer norms, trained with it (as in the paper).
    train_embedding_norm: also a copy of the embeddings' layer norm (adapter-bert trains it too).
    """

    size: int | None = None
    reduction_factor: float | None = None
    activation: str = "gelu_new"
    init_std: float = 1e-3
    placement: str = "houlsby"
    site: str = "after_dropout"
    scaling: float = 1.0
    layers: tuple[int, ...] | None = None
    train_layer_norms: bool = True
    train_embedding_norm: bool = False

    def __post_init__(self) -> None:
        if self.size is not None and self.reduction_factor is not None:
            raise AdapterConfigError("give either size or reduction_factor, not both")
        if self.size is not None and (not _is_int(self.size) or self.size < 1):
            raise AdapterConfigError(f"size must be a positive integer, got {_r(self.size)}")
        if self.reduction_factor is not None and not (_is_number(self.reduction_factor) and 0 < self.reduction_factor < float("inf")):
            raise AdapterConfigError(f"reduction_factor must be a finite number > 0, got {_r(self.reduction_factor)}")
        if not isinstance(self.activation, str) or self.activation not in ACTIVATIONS:
            raise AdapterConfigError(f"unknown activation {_r(self.activation)}; choose one of {', '.join(ACTIVATIONS)}")
        if not (_is_number(self.init_std) and 0 <= self.init_std <= 10):  # the paper's sweep ends at 1
            raise AdapterConfigError(f"init_std must be a number in [0, 10] (default 1e-3: near identity), got {_r(self.init_std)}")
        if not isinstance(self.placement, str) or self.placement not in kinds.names():
            raise AdapterConfigError(f"unknown placement {_r(self.placement)}; choose one of {', '.join(kinds.names())}")
        if not (_is_number(self.scaling) and abs(self.scaling) < float("inf")):
            raise AdapterConfigError(f"scaling must be a finite number, got {_r(self.scaling)}")
        if not isinstance(self.site, str) or self.site not in SITES:
            raise AdapterConfigError(f"site must be {' or '.join(SITES)}; unknown site {_r(self.site)}")
        if not self.kind.scaled and self.scaling != 1.0:
            scaled = [n for n in kinds.names() if kinds.get(n).scaled]
            raise AdapterConfigError(f"scaling applies to placement={' or '.join(map(repr, scaled))} only")
        for flag in ("train_layer_norms", "train_embedding_norm"):
            if not isinstance(getattr(self, flag), bool):
                raise AdapterConfigError(f"{flag} must be True or False, got {_r(getattr(self, flag))}")
        if self.layers is not None:
            if not isinstance(self.layers, (list, tuple, range)):
                raise AdapterConfigError(f"layers must be a list of layer indices or None, got {_r(self.layers)}")
            layers = tuple(self.layers)
            if not layers or any(not _is_int(i) or i < 0 for i in layers) or len(set(layers)) != len(layers):
                raise AdapterConfigError(f"layers must be distinct non-negative integers, got {_r(self.layers)}")
            object.__setattr__(self, "layers", tuple(sorted(layers)))

    @property
    def kind(self) -> kinds.AdapterKind:
        """The registry entry of ``placement``: the sites it needs, what it builds, how it combines."""
        return kinds.get(self.placement)

    def bottleneck_size(self, hidden_size: int) -> int:
        if self.size is not None:
            return self.size
        if self.reduction_factor is not None:
            return max(1, round(min(hidden_size / self.reduction_factor, 2.0**62)))  # 1e-320 would be inf
        return DEFAULT_SIZE

    def check_layers(self, num_layers: int) -> None:
        """Raise if a requested layer index does not exist in a model with ``num_layers`` layers."""
        bad = [i for i in self.layers or () if i >= num_layers]
        if bad:
            raise AdapterConfigError(f"layer index {bad[0]} out of range: the model has {num_layers} layers (0..{num_layers - 1})")

    # --- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers) if self.layers is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AdapterConfig":
        if not isinstance(d, dict):
            raise AdapterConfigError(f"an AdapterConfig must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(d) - known))
        if unknown:
            raise AdapterConfigError(f"unknown AdapterConfig field(s) {_r(unknown)}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_saved(cls, d: dict[str, Any]) -> "AdapterConfig":
        """:meth:`from_dict` for a config adapterkit saved (adapter_config.json): one saved before ``site``
        existed ran at SITE_WHEN_UNRECORDED, and keeps it when the default changes."""
        return cls.from_dict({"site": SITE_WHEN_UNRECORDED, **d} if isinstance(d, dict) else d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "AdapterConfig":
        return cls.from_dict(json.loads(text))

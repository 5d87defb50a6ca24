"""AdapterConfig: everything that defines one adapter, as a frozen dataclass with a JSON round-trip.

Defaults follow adapter-bert (Houlsby et al. 2019, https://github.com/google-research/adapter-bert):
bottleneck size 64, GELU (BERT's tanh approximation, ``gelu_new``), truncated-normal init with a small std so the adapter starts near identity,
two adapters per layer, layer norms trained.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

PLACEMENTS = ("houlsby", "pfeiffer", "parallel")
# gelu_new = gelu_pytorch_tanh: the tanh approximation adapter-bert (and BERT's original code) uses; gelu: exact.
ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu", "relu", "swish", "silu", "tanh", "identity")


class AdapterConfigError(ValueError):
    """An AdapterConfig field has an invalid value."""


@dataclass(frozen=True)
class AdapterConfig:
    """How one adapter is shaped and where it sits.

    size:              bottleneck width m. Give this or ``reduction_factor``; neither means 64.
    reduction_factor:  m = hidden_size / reduction_factor (rounded, at least 1).
    activation:        nonlinearity between the down- and up-projection (``gelu_new``: adapter-bert's tanh GELU).
    init_std:          std of the truncated-normal init of both projections (cut at 2 std);
                       0 makes the adapter an exact identity at start. The paper (Figure 6) finds
                       stds up to ~1e-2 equally good and larger ones worse: above 1e-2 the adapter
                       no longer starts near the identity.
    placement:         "houlsby"  -- after the attention and the FFN output projections (2 per layer);
                       "pfeiffer" -- after the FFN output projection only (1 per layer);
                       "parallel" -- He et al. 2022: adapter(sublayer input) * scaling added to the
                                     sublayer output, for attention and FFN (2 per layer).
    scaling:           multiplier of the adapter's output (parallel placement; 1.0 elsewhere).
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
    scaling: float = 1.0
    layers: tuple[int, ...] | None = None
    train_layer_norms: bool = True
    train_embedding_norm: bool = False

    def __post_init__(self) -> None:
        if self.size is not None and self.reduction_factor is not None:
            raise AdapterConfigError("give either size or reduction_factor, not both")
        if self.size is not None and (not isinstance(self.size, int) or self.size < 1):
            raise AdapterConfigError(f"size must be a positive integer, got {self.size!r}")
        if self.reduction_factor is not None and not self.reduction_factor > 0:
            raise AdapterConfigError(f"reduction_factor must be > 0, got {self.reduction_factor!r}")
        if self.activation not in ACTIVATIONS:
            raise AdapterConfigError(f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if not (isinstance(self.init_std, (int, float)) and 0 <= self.init_std < float("inf")):
            raise AdapterConfigError(f"init_std must be a finite number >= 0 (default 1e-3: near identity), got {self.init_std!r}")
        if self.placement not in PLACEMENTS:
            raise AdapterConfigError(f"unknown placement {self.placement!r}; choose one of {', '.join(PLACEMENTS)}")
        if self.placement != "parallel" and self.scaling != 1.0:
            raise AdapterConfigError("scaling applies to placement='parallel' only")
        if self.layers is not None:
            layers = tuple(self.layers)
            if not layers or any(not isinstance(i, int) or i < 0 for i in layers) or len(set(layers)) != len(layers):
                raise AdapterConfigError(f"layers must be distinct non-negative integers, got {self.layers!r}")
            object.__setattr__(self, "layers", tuple(sorted(layers)))

    def bottleneck_size(self, hidden_size: int) -> int:
        if self.size is not None:
            return self.size
        if self.reduction_factor is not None:
            return max(1, round(hidden_size / self.reduction_factor))
        return 64

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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise AdapterConfigError(f"unknown AdapterConfig field(s) {unknown}; known: {sorted(known)}")
        d = dict(d)
        if d.get("layers") is not None:
            d["layers"] = tuple(d["layers"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "AdapterConfig":
        return cls.from_dict(json.loads(text))

"""The bottleneck adapter of Houlsby et al. 2019 (arXiv 1902.00751, Figure 2).

    h -> h + up(act(down(h)))            d -> m -> d, m << d

Parameters per adapter: down (m*d + m) + up (d*m + d) = 2md + d + m.
Both projections start from a truncated normal with a small std and zero biases, so the adapter starts
as (nearly) the identity and the pretrained network is (nearly) unchanged before training.
This module knows nothing about transformers; `layers.py` decides where it is applied.
"""

from __future__ import annotations

import torch
from torch import nn

_ACTIVATIONS = {
    "gelu_new": lambda: nn.GELU(approximate="tanh"),  # adapter-bert's (BERT's original) GELU
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),  # transformers' other name for it
    "gelu": nn.GELU,  # exact (erf)
    "relu": nn.ReLU,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


class Bottleneck(nn.Module):
    """down d->m, activation, up m->d. ``forward`` returns the residual branch only: the caller adds it
    (to the same input for serial placement, to another sublayer's output for parallel placement)."""

    def __init__(self, hidden_size: int, bottleneck_size: int, activation: str = "gelu_new", init_std: float = 1e-3):
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck_size)
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck_size, hidden_size)
        self.reset_parameters(init_std)

    def reset_parameters(self, init_std: float) -> None:
        for linear in (self.down, self.up):
            if init_std > 0:
                nn.init.trunc_normal_(linear.weight, std=init_std, a=-2 * init_std, b=2 * init_std)
            else:
                nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., d) -> (..., d)
        return self.up(self.act(self.down(x)))  # (..., d) -> (..., m) -> (..., d)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def bottleneck_parameter_count(hidden_size: int, bottleneck_size: int) -> int:
    """2md + d + m: the paper's count for one adapter."""
    return 2 * bottleneck_size * hidden_size + hidden_size + bottleneck_size


__all__ = ["Bottleneck", "bottleneck_parameter_count"]

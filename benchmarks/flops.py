"""Analytic multiply-accumulate counts (MACs) for an encoder with Houlsby adapters, LoRA, and training floors.

Per token and layer (d hidden, f FFN width, T sequence length):
  linear layers  L = 4 d^2 (q, k, v, o) + 2 d f (FFN in, out)
  attention      A = 2 T d (QK^T and AV)
  one adapter    a = 2 d m (down, up); Houlsby puts 2 per layer
  one LoRA       l = 2 d r on each targeted projection (q and v: 2 per layer)
Training step (MACs): forward F; backward of a trained linear costs 2x its forward (dX and dW), of a frozen
one 1x (dX only); attention matmuls always 2x (both inputs are activations). Layers below the lowest
trained module need no backward at all. Element-wise work (GELU, softmax, layer norm, AdamW) is not counted.
"""

from __future__ import annotations


def layer_macs(d: int, f: int, t: int) -> dict[str, float]:
    return {"linear": 4 * d * d + 2 * d * f, "attention": 2 * t * d, "ffn": 2 * d * f, "attn_proj_qkv": 3 * d * d}


def analyse(d: int, f: int, n_layers: int, t: int, m: int | None = None, layers: list[int] | None = None,
            lora_r: int | None = None) -> dict[str, float]:
    """FLOP share of the adapters (or LoRA) in inference, and the training-step floor relative to full FT.

    Per token; the pooler/classifier (per sequence) and the embeddings (lookups) are left out."""
    lm = layer_macs(d, f, t)
    base_layer = lm["linear"] + lm["attention"]
    base = n_layers * base_layer
    adapted = sorted(layers) if layers else list(range(n_layers))
    if lora_r:
        per_layer_extra = 2 * (2 * d * lora_r)
    else:
        per_layer_extra = 2 * (2 * d * (m or 0))
    extra = per_layer_extra * len(adapted)
    share = extra / (base + extra)

    full_step = 3 * base  # forward + dX + dW everywhere
    low = adapted[0]
    # Backward of the frozen backbone above the lowest trained module: dX of every linear and both
    # attention-matmul gradients in layers above ``low``; in layer ``low`` only what lies above its first
    # trained module (Houlsby: the attention-output adapter -> the FFN; LoRA on q/v: almost the whole layer).
    above = (n_layers - 1 - low) * (lm["linear"] + 2 * lm["attention"])
    if lora_r:
        in_low = lm["linear"] - lm["attn_proj_qkv"] + 2 * lm["attention"] + d * d  # o, FFN, attention, v
    else:
        in_low = lm["ffn"]
    train_extra = 3 * extra  # adapters: forward + dX + dW
    floor_step = (base + extra) + above + in_low + 2 * extra
    return {
        "base_macs_per_token": base,
        "extra_macs_per_token": extra,
        "flop_share": share,
        "inference_ratio_floor": (base + extra) / base,
        "train_floor_vs_full": floor_step / full_step,
        "train_extra_share": train_extra / full_step,
        "lowest_trained_layer": low,
    }


__all__ = ["analyse", "layer_macs"]

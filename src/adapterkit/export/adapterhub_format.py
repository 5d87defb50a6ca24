"""AdapterHub's bottleneck-adapter format, and which of its options adapterkit represents exactly.

Checked against ``adapters`` 1.3.0 (transformers 4.57): ``configuration/adapter_config.py`` (BnConfig and its
presets), ``methods/modeling.py`` (``Adapter`` / ``ParallelAdapter``: pre_forward, forward, post_forward),
``heads/base.py`` (``ClassificationHead``), ``head_utils.py`` (static heads) and ``loading.py`` (file names).

In eval mode, with h the sublayer's output after its dropout, x the sublayer's input (the residual) and LN the
layer's own norm, AdapterHub computes for the options adapterkit accepts (original_ln_before=False,
original_ln_after=True, no inner norms, no gating, no phm):

    serial     LN((f(h) * 1.0 + h) + x)        f = up(act(down(.)))
    parallel   LN((s * f(x) + h) + x)

which is what adapterkit's hooks compute (``layers.py``: ``h + f(h)`` / ``h + s * f(x)``, then the model's
own ``LN(. + x)``); IEEE addition is commutative, so the two agree bit for bit where the activation does.
Placement: mh_adapter (after attention) and output_adapter (after the FFN) both -> houlsby / parallel;
output_adapter only -> pfeiffer / parallel_ffn. Everything else is refused with the option that is the reason.

This module only describes and checks; ``adapterhub.py`` reads and writes directories.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from ..checks import AdapterLoadError
from ..config import AdapterConfig

ADAPTERS_VERSION = "adapters.1.3.0"  # what exported files say they were written for
CONFIG_FILE = "adapter_config.json"
BIN_WEIGHTS, SAFE_WEIGHTS = "pytorch_adapter.bin", "adapter.safetensors"
# adapter_model.safetensors is PEFT's name (and adapterkit's); some tools save AdapterHub weights under it
WEIGHT_FILES = (SAFE_WEIGHTS, "adapter_model.safetensors", BIN_WEIGHTS)
HEAD_CONFIG = "head_config.json"
BIN_HEAD, SAFE_HEAD = "pytorch_model_head.bin", "model_head.safetensors"
HEAD_FILES = (SAFE_HEAD, BIN_HEAD)

# model_type -> (base_model_prefix, head layout). BERT: the head reads the pooler (dense + tanh on [CLS]);
# RoBERTa: the classifier holds dense + tanh + out_proj on <s>.
MODEL_TYPES = {"bert": ("bert", "pooler"), "roberta": ("roberta", "classifier"), "xlm-roberta": ("roberta", "classifier")}

# BnConfig's fields and defaults in adapters 1.3.0, and its named presets (the string form of a config).
BN_DEFAULTS: dict[str, Any] = {
    "original_ln_before": False, "original_ln_after": True, "ln_before": False, "ln_after": False,
    "init_weights": "bert", "init_weights_seed": None, "is_parallel": False, "scaling": 1.0, "use_gating": False,
    "residual_before_ln": True, "adapter_residual_before_ln": False, "inv_adapter": None,
    "inv_adapter_reduction_factor": None, "cross_adapter": False, "leave_out": [], "dropout": 0.0,
    "phm_layer": False, "phm_dim": 4, "factorized_phm_W": True, "shared_W_phm": False, "shared_phm_rule": True,
    "factorized_phm_rule": False, "phm_c_init": "normal", "phm_init_range": 0.0001, "learn_phm": True,
    "hypercomplex_nonlinearity": "glorot-uniform", "phm_rank": 1, "phm_bias": True, "stochastic_depth": 0.0,
}
_REQUIRED = ("mh_adapter", "output_adapter", "reduction_factor", "non_linearity")
PRESETS: dict[str, dict[str, Any]] = {
    "double_seq_bn": {"mh_adapter": True, "output_adapter": True, "non_linearity": "swish", "reduction_factor": 16},
    "seq_bn": {"mh_adapter": False, "output_adapter": True, "non_linearity": "relu", "reduction_factor": 16,
               "original_ln_before": True},
    "par_bn": {"mh_adapter": False, "output_adapter": True, "non_linearity": "relu", "reduction_factor": 2,
               "init_weights": "mam_adapter", "is_parallel": True, "scaling": 4.0},
}
PRESETS.update(houlsby=PRESETS["double_seq_bn"], pfeiffer=PRESETS["seq_bn"], parallel=PRESETS["par_bn"])

# AdapterHub non_linearity (transformers' ACT2FN name, lower-cased) -> adapterkit activation: the same function.
# gelu_new is transformers' hand-written tanh formula; adapterkit's is torch's kernel (rounding differs ~1e-7).
ACTIVATIONS_IN = {"relu": "relu", "swish": "swish", "silu": "silu", "gelu": "gelu", "gelu_python": "gelu",
                  "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_pytorch_tanh", "gelu_python_tanh": "gelu_new",
                  "tanh": "tanh", "linear": "identity"}
# adapterkit -> AdapterHub: names whose transformers 4.57 class computes exactly adapterkit's torch function.
ACTIVATIONS_OUT = {"gelu_new": "gelu_pytorch_tanh", "gelu_pytorch_tanh": "gelu_pytorch_tanh", "gelu": "gelu",
                   "relu": "relu", "swish": "swish", "silu": "silu", "tanh": "tanh", "identity": "linear"}

# Options adapterkit represents only at these values, and what another value would mean (for the one-line error).
_ONLY = {
    "original_ln_before": ((False,), "the adapter reads LN(h + x) and the norm runs twice (SeqBnConfig's default); "
                                     "adapterkit's adapters read the sublayer output h"),
    "original_ln_after": ((True,), "the layer's own norm is skipped after the adapter"),
    "ln_before": ((False,), "a layer norm inside the adapter, before the bottleneck"),
    "ln_after": ((False,), "a layer norm inside the adapter, after the bottleneck"),
    "use_gating": ((False,), "a learned gate on the adapter's output"),
    "phm_layer": ((False,), "PHM (Compacter) projections"),
    "cross_adapter": ((False,), "adapters after cross-attention"),
    "residual_before_ln": ((True, False), "the residual taken after the previous residual connection"),
    "adapter_residual_before_ln": ((True, False), "an unknown residual option"),
    "inv_adapter": ((None,), "invertible adapters on the embeddings"),
    "mh_adapter": ((True, False), "not a boolean"),
    "output_adapter": ((True,), "an adapter after attention only"),
    "is_parallel": ((True, False), "not a boolean"),
}
ADAPTER_KEY = re.compile(r"^(?:(?P<prefix>\w+)\.)?encoder\.layer\.(?P<layer>\d+)\.(?P<site>attention\.output|output)"
                         r"\.adapters\.(?P<name>[^.]+)\.(?P<part>adapter_down\.0|adapter_up)\.(?P<wb>weight|bias)$")
SITES = {"attention.output": "attention", "output": "ffn"}


def refuse(shown: str, problem: str) -> AdapterLoadError:
    return AdapterLoadError(f"{shown}: {problem}; adapterkit cannot represent this adapter exactly, so it is not loaded")


def bn_config(raw: Any, shown: str) -> dict[str, Any]:
    """The full BnConfig dict of an AdapterHub adapter_config.json's "config" (a dict or a preset name)."""
    if isinstance(raw, str):
        if raw.split("[")[0] not in PRESETS:
            raise refuse(shown, f"config {raw!r} is not a bottleneck adapter adapterkit knows "
                                f"(known: {', '.join(sorted(PRESETS))})")
        raw = PRESETS[raw]
    if not isinstance(raw, Mapping):
        raise refuse(shown, f"its \"config\" is {type(raw).__name__}, not an adapter config")
    architecture = raw.get("architecture", "bottleneck")
    if architecture != "bottleneck":
        raise refuse(shown, f"it is a {architecture!r} adapter; adapterkit imports bottleneck adapters only")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise refuse(shown, f"its config lacks {missing[0]!r}")
    unknown = sorted(set(raw) - set(BN_DEFAULTS) - set(_REQUIRED) - {"architecture"})
    if unknown:
        raise refuse(shown, f"unknown option {unknown[0]!r} (written by a newer adapters?)")
    return {**BN_DEFAULTS, **raw}


def to_adapter_config(c: dict[str, Any], hidden: int, num_layers: int, sizes: set[int], shown: str
                      ) -> tuple[AdapterConfig, list[str]]:
    """(the AdapterConfig computing what BnConfig ``c`` computes, notes on train-time options not kept).
    ``sizes``: the bottleneck widths found in the weights."""
    for key, (allowed, what) in _ONLY.items():
        if not any(c[key] is v for v in allowed):  # `is`: 1 is not True, 0 is not False
            raise refuse(shown, f"{key}={c[key]!r} ({what})")
    parallel = c["is_parallel"] is True
    scaling = c["scaling"]
    if isinstance(scaling, str) or isinstance(scaling, bool) or not isinstance(scaling, (int, float)):
        raise refuse(shown, f"scaling={scaling!r} (a learned scaling factor)")
    if not parallel and scaling != 1.0:
        raise refuse(shown, f"scaling={scaling!r} on a serial adapter")
    placement = ("parallel" if c["mh_adapter"] else "parallel_ffn") if parallel else (
        "houlsby" if c["mh_adapter"] else "pfeiffer")
    act = c["non_linearity"]
    activation = ACTIVATIONS_IN.get(act.lower() if isinstance(act, str) else act)
    if activation is None:
        raise refuse(shown, f"non_linearity={act!r} (adapterkit has {', '.join(sorted(ACTIVATIONS_IN))})")
    leave_out = c["leave_out"] or []
    if not isinstance(leave_out, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in leave_out):
        raise refuse(shown, f"leave_out={leave_out!r} is not a list of layer indices")
    layers = tuple(i for i in range(num_layers) if i not in set(leave_out))
    if not layers:
        raise refuse(shown, "leave_out leaves no layer with an adapter")
    expected = {_down_size(hidden, c["reduction_factor"], i, shown) for i in layers}
    if len(expected) != 1:
        raise refuse(shown, f"reduction_factor={c['reduction_factor']!r} gives layers different bottleneck sizes "
                            f"{sorted(expected)} (adapterkit uses one size per adapter)")
    if sizes and sizes != expected:
        raise refuse(shown, f"the weights have bottleneck size(s) {sorted(sizes)} but reduction_factor "
                            f"{c['reduction_factor']!r} on hidden size {hidden} gives {sorted(expected)}")
    config = AdapterConfig(size=expected.pop(), activation=activation, placement=placement, site="after_dropout",
                           scaling=float(scaling), layers=None if len(layers) == num_layers else layers,
                           train_layer_norms=False, init_std=0.0)
    notes = [f"{k}={c[k]} is a training-time option adapterkit does not keep (eval outputs are unchanged)"
             for k in ("dropout", "stochastic_depth") if c[k]]
    return config, notes


def _down_size(hidden: int, factor: Any, layer: int, shown: str) -> int:
    """AdapterHub's bottleneck width for one layer: ``int(hidden // reduction_factor)``, at least 1."""
    if isinstance(factor, Mapping):
        factor = factor.get(str(layer), factor.get("default"))
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < math.inf:
        raise refuse(shown, f"reduction_factor {factor!r} is not a positive number")
    return max(1, int(hidden // factor))


def reduction_factor_for(hidden: int, size: int) -> float | int:
    """A reduction factor AdapterHub turns back into exactly ``size`` (``int(hidden // rf) == size``)."""
    if hidden % size == 0:
        return hidden // size
    rf = hidden / size
    for _ in range(64):  # hidden / size may round so that the floor division lands one below
        if int(hidden // rf) == size:
            return rf
        rf = math.nextafter(rf, 0.0)
    raise ValueError(f"no reduction factor gives bottleneck size {size} on hidden size {hidden}")


def bn_config_out(config: AdapterConfig, hidden: int, num_layers: int) -> dict[str, Any]:
    """The full BnConfig dict that makes AdapterHub compute what ``config`` computes (see the module doc)."""
    parallel = config.placement in ("parallel", "parallel_ffn")
    return {**BN_DEFAULTS,
            "mh_adapter": config.placement in ("houlsby", "parallel"), "output_adapter": True,
            "reduction_factor": reduction_factor_for(hidden, config.bottleneck_size(hidden)),
            "non_linearity": ACTIVATIONS_OUT[config.activation], "is_parallel": parallel,
            "scaling": float(config.scaling), "init_weights": "mam_adapter" if parallel else "bert",
            "leave_out": [i for i in range(num_layers) if config.layers is not None and i not in config.layers]}


__all__ = ["ACTIVATIONS_IN", "ACTIVATIONS_OUT", "ADAPTER_KEY", "BN_DEFAULTS", "MODEL_TYPES", "PRESETS", "bn_config",
           "bn_config_out", "reduction_factor_for", "refuse", "to_adapter_config"]

"""``--method lora``: PEFT's LoRA (Hu et al. 2021, arXiv 2106.09685) as a baseline for the adapters, trained
by the same loop on the same data (needs ``pip install adapterkit[lora]``, i.e. ``peft``).

LoRA adds ``W x + (alpha / r) B A x`` to the attention's query and value projections (``q_proj``, ``v_proj``:
the configuration of the LoRA paper and of PEFT's examples); A is random and B zero at the start, so the model
starts as the base model. Dropout is 0 (deterministic runs, like the adapters). The base weights stay frozen;
only A and B train. It covers causal-LM kinds (``lm``, ``generation``): a classification task would also
need a trained head.

The result is a PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``, loadable with
``peft.PeftModel.from_pretrained``) plus the run's metadata (methods.RUN_META_FILE).

Parameter count (SmolLM2-135M, 30 layers, q 576->576, v 576->192): 16 x (576 + 576 + 576 + 192) x 30 = 921,600.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

LORA_R = 16
LORA_ALPHA = 32
LORA_TARGETS = ("q_proj", "v_proj")
LORA_KINDS = ("lm", "generation")
_WEIGHTS = "adapter_model.safetensors"


class LoraError(ValueError):
    """LoRA cannot be set up here (peft missing, a task kind it does not cover, no target modules)."""


def _peft():
    try:
        import peft
    except ImportError:
        raise LoraError("--method lora needs peft: pip install 'adapterkit[lora]' (or pip install peft)") from None
    return peft


def lora_config(r: int = LORA_R, alpha: int = LORA_ALPHA, targets: tuple[str, ...] = LORA_TARGETS):
    return _peft().LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none",
                              task_type="CAUSAL_LM")


def add_lora(model: nn.Module, kind: str, r: int = LORA_R, alpha: int = LORA_ALPHA,
             targets: tuple[str, ...] = LORA_TARGETS) -> list[nn.Parameter]:
    """Inject LoRA into ``model`` in place (peft.inject_adapter_in_model); freeze everything else.
    Returns the trainable (LoRA) parameters."""
    if kind not in LORA_KINDS:
        raise LoraError(f"--method lora covers causal-LM tasks ({', '.join(LORA_KINDS)}), not a {kind} task; "
                        "use --method adapter")
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if not set(targets) <= names:
        raise LoraError(f"--method lora targets {', '.join(targets)} (Llama-style attention); this model has no "
                        f"{', '.join(sorted(set(targets) - names))} layers")
    for p in model.parameters():
        p.requires_grad_(False)
    _peft().inject_adapter_in_model(lora_config(r, alpha, targets), model)
    for n, p in model.named_parameters():
        p.requires_grad_(".lora_" in n)
    return [p for p in model.parameters() if p.requires_grad]


def save_lora(model: nn.Module, directory: Path) -> None:
    """PEFT's own adapter format (keys under ``base_model.model.``, as PeftModel.save_pretrained writes)."""
    from safetensors.torch import save_file

    peft = _peft()
    state = peft.get_peft_model_state_dict(model)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({f"base_model.model.{k}": v.detach().contiguous().cpu() for k, v in state.items()},
              str(directory / _WEIGHTS), metadata={"format": "pt"})
    config = model.peft_config["default"].to_dict()
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")


def load_lora(model: nn.Module, directory: Path, kind: str) -> nn.Module:
    """``model`` (the base) with the LoRA weights of ``directory`` injected."""
    from safetensors.torch import load_file

    config = json.loads((Path(directory) / "adapter_config.json").read_text())
    add_lora(model, kind, config["r"], config["lora_alpha"], tuple(config["target_modules"]))
    state = {k.removeprefix("base_model.model."): v for k, v in load_file(str(Path(directory) / _WEIGHTS)).items()}
    result = _peft().set_peft_model_state_dict(model, state)
    if getattr(result, "unexpected_keys", None):
        raise LoraError(f"{directory}: LoRA weights that fit no module of the base model: {result.unexpected_keys[:3]}")
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def is_lora_dir(directory: Path) -> bool:
    return (Path(directory) / _WEIGHTS).is_file()


__all__ = ["LORA_ALPHA", "LORA_R", "LORA_TARGETS", "LoraError", "add_lora", "is_lora_dir", "load_lora", "save_lora"]

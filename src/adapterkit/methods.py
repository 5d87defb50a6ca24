"""Training methods: which parameters train, and how the result is saved and loaded back.

One training loop serves every method; a method only decides what is trainable and what gets saved:

  adapter  bottleneck adapters + their layer-norm copies + the task head (Houlsby et al. 2019).
  ln       layer norms + head only (the paper's ablation).
  head     the task head only (a linear probe on the frozen model).
  top-k    the top K transformer layers + everything above them (pooler, head): the paper's
           "variable fine-tuning" baseline.
  full     every parameter (full fine-tuning).
  fusion   AdapterFusion (Pfeiffer et al. 2021) over saved adapters (``fuse``: their directories): the fusion
           layers + a new head train, the adapters and the model stay frozen (fusion.py).
  lora     PEFT's LoRA, r=16 on q_proj/v_proj (causal-LM tasks; a baseline, see lora.py).

``ln`` and ``head`` reuse the core's adapter machinery so that their result is an ordinary adapter
directory (``eval``/``predict``/``info``/``load_adapter`` treat it like any other): they add an adapter
whose bottleneck is an exact identity (``init_std=0``: all-zero weights, so ``h + 0 == h`` bit for bit)
and keep that bottleneck frozen; only its layer-norm copies (``ln``) and its head train. The identity
bottleneck is as small as the core allows (size 1, one per layer, ``pfeiffer``; ``head`` puts it in the
last layer only), costing < 0.01% extra compute. ``full`` and ``top-k`` change base weights, so they
save a whole model with ``save_pretrained`` (plus the tokenizer) instead; ``lora`` saves PEFT's adapter files. ``fusion`` saves a fusion
directory (fusion_io.py) whose run metadata names the fused adapters' directories ("fused_adapters").
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import adapterkit as ak
from .architectures import detect, layer_lists
from .config import DEFAULT_SIZE
from .model import adapter_modules

METHODS = ("adapter", "full", "top-k", "ln", "head", "fusion", "lora")
ADAPTER_NAME = "task"
#: Written next to a full / top-k model in ``adapter/``: what adapter_config.json's "extra" holds for adapters.
RUN_META_FILE = "adapterkit_run.json"


class MethodError(ValueError):
    """A method cannot be set up with the given options."""


#: The training layer's names (CLI options, metrics.json keys, TrainConfig / MethodConfig keywords) of the
#: AdapterConfig fields it exposes, as recorded since 0.1. The fields and their defaults live in AdapterConfig.
ADAPTER_OPTIONS = {"adapter_size": "size", "placement": "placement", "init_std": "init_std",
                   "adapter_layers": "layers", "site": "site", "train_embedding_norm": "train_embedding_norm"}


def option_name(keyword: str) -> str:
    return "--" + keyword.replace("_", "-")


def adapter_with(adapter: ak.AdapterConfig, options: dict) -> ak.AdapterConfig:
    """``adapter`` with the AdapterConfig fields in ``options`` replaced; an invalid value is reported under
    its option name (``--adapter-size must be a positive integer, got 0``)."""
    try:
        return dataclasses.replace(adapter, **options)
    except ak.AdapterConfigError as e:
        message = str(e)
        for keyword, name in ADAPTER_OPTIONS.items():
            if name in options and message.startswith(name + " "):
                message = option_name(keyword) + message[len(name):]
                break
        raise ak.AdapterConfigError(message) from None


def with_adapter_options(cls):
    """Class decorator for a dataclass with an ``adapter: AdapterConfig`` field: it also takes the keywords of
    ADAPTER_OPTIONS (``cls(adapter_size=8)`` sets ``adapter.size``), so the flat names of 0.1 keep working
    while the values and their defaults live in the AdapterConfig alone. (Reading them back: the
    properties of :class:`MethodConfig`.)"""
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        options = {ADAPTER_OPTIONS[k]: kwargs.pop(k) for k in list(kwargs) if k in ADAPTER_OPTIONS}
        if options:
            bound = signature.bind_partial(self, *args, **kwargs)
            bound.arguments["adapter"] = adapter_with(_as_adapter_config(bound.arguments.get("adapter")), options)
            args, kwargs = bound.args[1:], bound.kwargs
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


def _as_adapter_config(value) -> ak.AdapterConfig:
    if value is None:
        return ak.AdapterConfig()
    if isinstance(value, dict):  # as recorded in JSON
        return ak.AdapterConfig.from_dict(value)
    if not isinstance(value, ak.AdapterConfig):
        raise MethodError(f"adapter must be an AdapterConfig, got {type(value).__name__}")
    return value


@with_adapter_options
@dataclass
class MethodConfig:
    """What trains: the method, the adapter it adds (``adapter``: the whole AdapterConfig, used by the
    adapter method; ln/head add their own identity bottleneck, see :func:`adapter_config_for`), K for
    top-k, and whether the head trains its own pooler copy (adapter/ln/head; full and top-k train it anyway).

    Takes the flat option names of 0.1 too: ``MethodConfig("adapter", adapter_size=8)``
    (see ADAPTER_OPTIONS), and reads them back as properties (``.adapter_size`` is ``adapter.size``)."""

    method: str = "adapter"
    adapter: ak.AdapterConfig = field(default_factory=ak.AdapterConfig)
    top_layers: int = 2  # K for --method top-k
    train_pooler: bool = False  # adapter/ln/head/fusion: HeadConfig.train_pooler
    fuse: tuple[str, ...] = ()  # --method fusion: the directories of the adapters to fuse (saved by adapterkit)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise MethodError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        self.fuse = tuple(str(Path(d).resolve()) for d in self.fuse or ())
        if (self.method == "fusion") != bool(self.fuse):
            raise MethodError("--method fusion needs --fuse DIR_a,DIR_b,... (adapter directories saved by adapterkit)"
                              if self.method == "fusion" else "--fuse goes with --method fusion")
        self.adapter = _as_adapter_config(self.adapter)
        if not (isinstance(self.top_layers, int) and self.top_layers >= 1):
            raise MethodError("--top-layers must be at least 1")

    @property
    def uses_adapter(self) -> bool:
        """Whether the result is a core adapter directory (else a whole saved model)."""
        return self.method in ("adapter", "ln", "head")

    @property
    def adapter_size(self) -> int | None:
        """The bottleneck width ``adapter`` gives (None when it is a reduction factor of the hidden size)."""
        a = self.adapter
        return a.size if a.size is not None else None if a.reduction_factor is not None else DEFAULT_SIZE

    placement = property(lambda self: self.adapter.placement, doc="``adapter.placement``")
    init_std = property(lambda self: self.adapter.init_std, doc="``adapter.init_std``")
    adapter_layers = property(lambda self: self.adapter.layers, doc="``adapter.layers``")
    site = property(lambda self: self.adapter.site, doc="``adapter.site``")
    train_embedding_norm = property(lambda self: self.adapter.train_embedding_norm, doc="``adapter.train_embedding_norm``")


def head_for(kind: str, label_names: list[str] | None, train_pooler: bool = False) -> ak.HeadConfig | None:
    """The adapter's head for a task kind: a fresh classifier carrying the label names, a regression
    output, the model's own span head (qa), or the shared LM head (lm)."""
    if kind == "classification":
        return ak.HeadConfig("classification", num_labels=len(label_names), labels=tuple(label_names),
                             train_pooler=train_pooler)
    if kind == "regression":
        return ak.HeadConfig("regression", train_pooler=train_pooler)
    return None


def _num_layers(model: nn.Module) -> int:
    from .architectures import detect, resolve

    return len(resolve(model, detect(model)))


def adapter_config_for(method: MethodConfig, model: nn.Module) -> ak.AdapterConfig:
    if method.method == "adapter":  # the width written out in the saved config, as since 0.1
        return method.adapter if method.adapter_size is None else dataclasses.replace(method.adapter, size=method.adapter_size)
    last = (_num_layers(model) - 1,) if method.method == "head" else None
    return ak.AdapterConfig(size=1, init_std=0.0, placement="pfeiffer", layers=last,
                            train_layer_norms=method.method == "ln",
                            train_embedding_norm=method.method == "ln" and method.train_embedding_norm)


def fused_names(directories: tuple[str, ...]) -> list[str]:
    """A name per fused adapter directory: the task its run recorded (else the folder's name), made unique."""
    names = []
    for i, directory in enumerate(directories):
        task = ak.read_adapter_config(directory).get("extra", {}).get("task")
        path = Path(directory)
        base = task if isinstance(task, str) else (path.parent.name if path.name == "adapter" else path.name)
        base = re.sub(r"[^A-Za-z0-9_\-]", "_", base)[:64] or f"adapter{i}"
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def _prepare_fusion(model: nn.Module, method: MethodConfig, kind: str, label_names: list[str] | None) -> None:
    """Load the adapters of ``method.fuse`` (frozen) and add a fusion over them with a new head, to train."""
    names = fused_names(method.fuse)
    for name, directory in zip(names, method.fuse):
        ak.load_adapter(model, directory, name=name)
    block = ak.Fuse(*names)
    ak.add_fusion(model, block, head=head_for(kind, label_names, method.train_pooler))
    ak.train_fusion(model, block)


def fusion_block(model: nn.Module) -> "ak.Fuse":
    """The one fusion --method fusion trained on ``model``."""
    return ak.list_fusions(model)[0]


def extra_loss(model: nn.Module, method: MethodConfig):
    """What the training loss adds for ``method``: AdapterFusion's value regulariser (else 0)."""
    if method.method != "fusion":
        return 0.0
    reg = ak.fusion_regularization_loss(model, fusion_block(model))
    return 0.0 if reg is None else reg


def prepare(model: nn.Module, method: MethodConfig, kind: str, label_names: list[str] | None,
            label_mean: float | None = None) -> list[nn.Parameter]:
    """Set up ``model`` for ``method`` (adds the adapter where needed, sets requires_grad) and return
    the trainable parameters: only these get optimiser state.

    ``label_mean`` (regression): the new output's bias starts at the mean training label. Adam moves a
    parameter by about lr per step, so a bias starting at 0 would need thousands of adapter-sized steps
    just to reach STS-B's mean score (2.7) and the model would predict a constant meanwhile."""
    if method.uses_adapter:
        ak.add_adapter(model, ADAPTER_NAME, adapter_config_for(method, model), head=head_for(kind, label_names, method.train_pooler))
        ak.train_adapter(model, ADAPTER_NAME)
        if method.method != "adapter":  # identity bottleneck stays frozen (exactly zero)
            for _, holder in adapter_modules(model):
                if holder.role == "adapter":
                    for p in holder.adapter_parameters(ADAPTER_NAME):
                        p.requires_grad_(False)
    elif method.method == "fusion":
        _prepare_fusion(model, method, kind, label_names)
    elif method.method == "lora":
        from .lora import add_lora

        add_lora(model, kind)
    elif method.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    else:  # top-k
        _select_top_layers(model, method.top_layers)
    if kind == "regression" and label_mean is not None:
        _set_output_bias(model, method, label_mean)
    model.train()
    return [p for p in model.parameters() if p.requires_grad]


def head_parameters(model: nn.Module, method: MethodConfig) -> list[nn.Parameter]:
    """The trainable parameters of the task head (with a trained pooler copy): the adapter's head copies, or
    for full / top-k the model's own head modules. ``--head-lr`` applies to these."""
    from .architectures import head_modules

    if method.method == "lora":  # LoRA keeps the model's own (frozen) LM head
        return []
    if method.uses_adapter or method.method == "fusion":
        owner = ADAPTER_NAME if method.uses_adapter else fusion_block(model).name
        params = [p for _, h in adapter_modules(model) if h.role == "head" for p in h.adapter_parameters(owner)]
    else:
        params = [p for m in head_modules(model, detect(model)) for p in m.parameters()]
    return [p for p in params if p.requires_grad]


def _set_output_bias(model: nn.Module, method: MethodConfig, value: float) -> None:
    from .architectures import head_modules

    if method.uses_adapter or method.method == "fusion":
        owner = ADAPTER_NAME if method.uses_adapter else fusion_block(model).name
        heads = [h.adapters[owner] for _, h in adapter_modules(model) if h.role == "head"]
    else:
        heads = head_modules(model, detect(model))
    linears = [m for head in heads[-1:] for m in head.modules() if isinstance(m, nn.Linear)]
    if linears and linears[-1].bias is not None and linears[-1].out_features == 1:
        with torch.no_grad():
            linears[-1].bias.fill_(value)


def _select_top_layers(model: nn.Module, k: int) -> None:
    """Train the top ``k`` layers of the (last) layer stack and every parameter above the layers
    (pooler, final norm, head); embeddings and lower layers stay frozen."""
    stacks = layer_lists(model, detect(model))
    layers = stacks[-1]
    if not 1 <= k <= len(layers):
        raise MethodError(f"--top-layers must be between 1 and {len(layers)} for this model, got {k}")
    in_layers = {id(p) for stack in stacks for p in stack.parameters()}
    top = {id(p) for layer in list(layers)[-k:] for p in layer.parameters()}
    # Parameters are registered bottom-up (embeddings, layers, then pooler / final norm / head): whatever
    # comes before the first layer's parameters is below the layers and stays frozen.
    params = list(model.parameters())
    first_layer = next(i for i, p in enumerate(params) if id(p) in in_layers)
    below = {id(p) for p in params[:first_layer]}
    if hasattr(model, "get_input_embeddings"):  # tied output embeddings are an input embedding too
        below |= {id(p) for p in model.get_input_embeddings().parameters()}
    for p in params:
        above = id(p) not in in_layers and id(p) not in below
        p.requires_grad_(id(p) in top or above)


def count_parameters(model: nn.Module) -> dict[str, int | float]:
    """Trainable parameters (what the optimiser updates) against the base model's own parameters."""
    owned = {id(p) for _, h in adapter_modules(model) for p in h.parameters()} if "adapterkit" in model.__dict__ else set()
    owned |= {id(p) for n, p in model.named_parameters() if ".lora_" in n}  # --method lora's (peft) weights
    total = sum(p.numel() for p in model.parameters() if id(p) not in owned)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": total, "trainable_pct": 100.0 * trainable / total}


def save_result(model: nn.Module, tokenizer, method: MethodConfig, directory: Path, meta: dict) -> None:
    """Write the trained result to ``directory``: a core adapter directory (``meta`` in its "extra"), or
    for full / top-k the whole model + tokenizer with ``meta`` in RUN_META_FILE."""
    if method.uses_adapter:
        ak.save_adapter(model, ADAPTER_NAME, directory, extra=meta)
        return
    if method.method == "fusion":  # the fusion, with references to the adapters it fuses
        block = fusion_block(model)
        ak.save_fusion(model, block, directory, extra={**meta, "fused_adapters": dict(zip(block.names, method.fuse))})
        return
    directory.mkdir(parents=True, exist_ok=True)
    if method.method == "lora":
        from .lora import save_lora

        save_lora(model, directory)
    else:
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    (directory / RUN_META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_result_meta(directory: str | Path) -> tuple[str, dict]:
    """("adapter" | "fusion" | "model" | "lora", the run's metadata) of a directory written by :func:`save_result`."""
    from .fusion_io import FUSION_CONFIG_FILE, read_fusion_config
    from .lora import is_lora_dir
    from .runs import check_run_meta

    directory = Path(directory)
    if (directory / FUSION_CONFIG_FILE).is_file():
        meta = check_run_meta(read_fusion_config(directory).get("extra", {}), str(directory / FUSION_CONFIG_FILE))
        fused = meta.get("fused_adapters")
        if not isinstance(fused, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in fused.items()):
            raise ak.AdapterLoadError(f"{directory / FUSION_CONFIG_FILE} names no fused adapter directories "
                                      "(extra.fused_adapters); it was not written by 'adapterkit train --method fusion'")
        return "fusion", meta
    lora = (directory / RUN_META_FILE).is_file() and is_lora_dir(directory)  # PEFT writes adapter_config.json too
    if (directory / "adapter_config.json").is_file() and not lora:
        config = ak.read_adapter_config(directory)
        return "adapter", check_run_meta(config.get("extra", {}) if isinstance(config, dict) else None,
                                         str(directory / "adapter_config.json"))
    if (directory / RUN_META_FILE).is_file():
        path = directory / RUN_META_FILE
        try:
            meta = json.loads(path.read_text()) if path.stat().st_size < (1 << 24) else None
        except RecursionError:
            meta = None
        return ("lora" if lora else "model"), check_run_meta(meta, str(path))
    if not directory.exists():
        raise ak.AdapterLoadError(f"{directory} does not exist; pass the adapter/ folder of a training run")
    if (directory / "adapter").is_dir():  # the run directory itself
        raise ak.AdapterLoadError(f"{directory} is a training run, not its adapter; pass {directory / 'adapter'}")
    raise ak.AdapterLoadError(f"{directory} is neither an adapter or fusion directory nor a model saved by "
                              "'adapterkit train'; pass the adapter/ folder of a training run")


def trainable_state(model: nn.Module) -> dict:
    """The trainable tensors by parameter name (what a checkpoint or the best snapshot needs), copied to
    the CPU (the best snapshot then costs no accelerator memory)."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def named_trainable(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    return ((n, p) for n, p in model.named_parameters() if p.requires_grad)


__all__ = ["ADAPTER_NAME", "ADAPTER_OPTIONS", "METHODS", "MethodConfig", "MethodError", "count_parameters", "extra_loss",
           "fused_names", "head_for", "head_parameters", "prepare",
           "read_result_meta", "save_result", "trainable_state"]

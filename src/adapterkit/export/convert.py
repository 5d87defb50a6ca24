"""``adapterkit convert``: AdapterHub directories to adapterkit adapters and back, with the base model loaded.

    adapterkit convert --from adapterhub HUB_DIR --output OUT          # a native adapterkit adapter directory
    adapterkit convert --to adapterhub --adapter DIR --output OUT      # a directory adapters 1.3 loads

The native adapter carries run metadata (model, kind, labels) in its "extra", so ``eval`` / ``predict`` /
``info`` use it like a trained one. Outputs must be new paths; both are written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

import adapterkit as ak
from ..heads import HeadConfig
from ..copies import ModuleCopies
from ..model import adapter_modules
from .adapterhub import export_adapterhub, import_adapterhub, layer_norm_differences, read_adapterhub_config

# Hub ids of the bundled aliases (AdapterHub records the hub id it loaded).
HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2", "mpnet": "sentence-transformers/all-mpnet-base-v2"}
# What --drop-layer-norms is measured on: a few short sentences of the kind adapters are trained on.
PROBE_TEXTS = ("a gripping, beautifully acted film", "dull and far too long", "it is a movie",
               "the plot never comes together, but the cast is great fun", "not bad at all",
               "one of the worst films of the year", "Is this a question?", "The committee approved the budget.")


def _new_output(output: str) -> Path:
    path = Path(output)
    if os.path.lexists(path):
        raise FileExistsError(f"--output {output} already exists; pick a new path (convert never replaces files)")
    return path


def from_adapterhub(source: str, output: str, model_name: str | None = None) -> list[str]:
    """Convert the AdapterHub adapter in ``source`` to an adapterkit adapter directory ``output``; returns the
    lines to print."""
    from ..models import load_model

    meta = read_adapterhub_config(source)
    if meta is None:
        raise ValueError(f"{source} is not an AdapterHub adapter directory (its adapter_config.json, with a "
                         "\"config\" entry, is missing); pass the directory adapters' save_adapter wrote")
    target = _new_output(output)
    recorded = meta.get("model_name")
    if model_name is None:
        if not isinstance(recorded, str) or not recorded:
            raise ValueError(f"{source} does not name its base model; pass --model")
        model_name = {hub: alias for alias, hub in HUB_IDS.items()}.get(recorded, recorded)
    model, _ = load_model(model_name, kind="classification")
    name, notes = import_adapterhub(model, source)
    head = model.adapterkit.heads[name]
    kind = head.kind if head.kind in ("classification", "regression") else None
    extra = {"model": model_name, "method": "adapter", "kind": kind, "max_length": 128,
             "label_names": list(head.labels or [f"LABEL_{i}" for i in range(head.num_labels)])
             if kind == "classification" else None,
             "converted_from": {"format": "adapterhub", "version": meta.get("version"), "model_name": recorded,
                                "notes": notes}}
    ak.save_adapter(model, name, target, extra=extra)
    c = model.adapterkit.configs[name]
    lines = [f"wrote {target}: adapter {name!r}, placement {c.placement}, size {c.size}, {c.activation}"
             f"{f', scaling {c.scaling:g}' if c.scaling != 1.0 else ''}, head {_describe(head)}, base {model_name}"]
    if head.kind == "shared":
        lines.append(f"note: {source} has no prediction head; the adapter uses the model's own head")
    return lines + [f"note: {n}" for n in notes]


def _describe(head: HeadConfig) -> str:
    if head.kind == "classification":
        return f"classification ({head.num_labels} labels)"
    return head.kind


def to_adapterhub(adapter: str, output: str, model_name: str | None = None, drop_layer_norms: bool = False
                  ) -> list[str]:
    """Export the adapterkit adapter ``adapter`` (a run's adapter/ folder) to an AdapterHub directory."""
    from ..evaluation import load_trained
    from ..methods import ADAPTER_NAME

    target = _new_output(output)
    saved_name = ak.read_adapter_config(adapter)["name"]
    trained = load_trained(adapter, model_name)
    if trained.form != "adapter":
        raise ValueError(f"{adapter} holds a whole fine-tuned model, not an adapter; only adapters can be exported")
    model = trained.model
    recorded = model_name or trained.meta.get("model") or "minilm"
    lines = []
    norms = layer_norm_differences(model, ADAPTER_NAME)
    if norms > 0 and not drop_layer_norms:  # named by its directory: the name inside is adapterkit's own ("task")
        raise ValueError(f"{adapter} has its own layer norms (max |difference| from the model's {norms:.3g}), as "
                         "adapterkit trains them by default; AdapterHub has none: add --drop-layer-norms to export "
                         "without them (the logit change it costs is printed)")
    if norms > 0:
        change, flips = layer_norm_cost(model, ADAPTER_NAME, trained.tokenizer)
        lines.append(f"dropped the adapter's layer norms: logits change by up to {change:.4g} (max abs over "
                     f"{len(PROBE_TEXTS)} sample sentences; the top class changed on {flips} of them)")
    export_adapterhub(model, ADAPTER_NAME, target, HUB_IDS.get(recorded, recorded), drop_layer_norms=drop_layer_norms,
                      hub_name=saved_name)
    config = model.adapterkit.configs[ADAPTER_NAME]
    if config.site == "before_dropout":
        lines.append("note: trained with the adapter before the sublayer's dropout; AdapterHub puts it after "
                     "(eval outputs are identical; further training in AdapterHub uses its order)")
    return [f"wrote {target}: adapters.load_adapter({str(target)!r}) loads adapter {saved_name!r}"] + lines


@torch.no_grad()
def layer_norm_cost(model, name: str, tokenizer, texts=PROBE_TEXTS) -> tuple[float, int]:
    """(max |logit change|, how many top classes change) over ``texts`` when adapter ``name`` uses the model's
    layer norms instead of its own copies. The copies are restored afterwards."""
    batch = dict(tokenizer(list(texts), padding=True, truncation=True, max_length=128, return_tensors="pt"))
    batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    was_training = model.training
    model.eval()
    before = model(**batch).logits.float()
    saved = []
    for _, holder in adapter_modules(model):
        if isinstance(holder, ModuleCopies) and holder.role == "layer_norm" and name in holder.adapters:
            base = dict(holder._base.named_parameters())
            for k, p in holder.adapters[name].named_parameters():
                saved.append((p, p.detach().clone()))
                p.copy_(base[k])
    try:
        after = model(**batch).logits.float()
    finally:
        for p, value in saved:
            p.copy_(value)
        model.train(was_training)
    flips = int((before.argmax(-1) != after.argmax(-1)).sum()) if before.shape[-1] > 1 else 0
    return float((before - after).abs().max()), flips


__all__ = ["from_adapterhub", "layer_norm_cost", "to_adapterhub"]

"""Architectures as data: where the adapters, layer norms and task heads sit in each model family.

One :class:`LayerStack` entry per stack of transformer layers. Paths are dotted module paths; ``a|b`` lists
alternatives (the first that exists wins) because transformers renames modules between releases
(ViT: ``attention.output.dense`` in 4.x, ``attention.o_proj`` in 5.x). ``layers`` is matched against the
end of a module name, so ``encoder.layer`` finds ``bert.encoder.layer`` and ``encoder.layer`` alike; the
other paths are relative to one layer. Adding an architecture = one entry in ``PRESETS``.

Where a sublayer applies dropout right after its output projection (BERT: dense -> dropout -> LayerNorm(. + x)),
the entry names that dropout and serial adapters read ITS output, as adapter-bert (``modeling.py``: dense ->
dropout -> adapter -> layer_norm(out + input)) and AdapterHub do: ``LN(x + drop(h) + f(drop(h)))``. Without it
the adapter sits on the projection: ``LN(x + drop(h + f(h)))``. In eval mode dropout is the identity and both
orders give the same outputs bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn


class ArchitectureError(ValueError):
    """The model's structure does not match what adapterkit needs to insert adapters."""


@dataclass(frozen=True)
class LayerStack:
    layers: str  # the nn.ModuleList of layers (suffix of a module name)
    attention_output: str  # attention output projection: serial adapters go after it
    ffn_output: str  # feed-forward output projection
    attention_input: str  # module whose input is the attention sublayer's input (parallel adapters)
    ffn_input: str  # module whose input is the FFN sublayer's input
    layer_norms: tuple[str, ...]  # the layer's norms: each adapter trains its own copies
    # The dropout applied right after attention_output / ffn_output (None: there is none, or it is not a module
    # of its own, e.g. ViT in transformers 5 shares one dropout between both sublayers). Serial adapters read
    # its output, the paper's order.
    attention_dropout: str | None = None
    ffn_dropout: str | None = None


@dataclass(frozen=True)
class ArchitectureSpec:
    stacks: tuple[LayerStack, ...]
    # Top-level modules that make up the task head (only those the model has are used). Each adapter gets
    # its own copies. A model without any (a causal LM with its tied lm_head) shares its head, frozen.
    head: tuple[str, ...] = ("classifier|score|qa_outputs",)
    # A pretrained pooler between the layers and the head, if the head reads one (BERT: dense + tanh on
    # [CLS]); HeadConfig(train_pooler=True) gives an adapter's head its own trainable copy of it.
    # RoBERTa, ELECTRA, MPNet... have that dense layer inside ``head`` already.
    pooler: str | None = None
    # The embeddings' layer norm (suffix of a module name), which adapter-bert also trains:
    # AdapterConfig(train_embedding_norm=True) gives each adapter its own copy of it.
    embedding_norm: str | None = None


_BERT = LayerStack(
    layers="encoder.layer",
    attention_output="attention.output.dense",
    ffn_output="output.dense",
    attention_input="attention",
    ffn_input="intermediate",
    layer_norms=("attention.output.LayerNorm", "output.LayerNorm"),
    attention_dropout="attention.output.dropout",
    ffn_dropout="output.dropout",
)
_LLAMA = LayerStack(
    layers="layers",
    attention_output="self_attn.o_proj",
    ffn_output="mlp.down_proj",
    attention_input="self_attn",
    ffn_input="mlp",
    layer_norms=("input_layernorm", "post_attention_layernorm"),
)

_EMBEDDING_NORM = "embeddings.LayerNorm"

PRESETS: dict[str, ArchitectureSpec] = {
    "bert": ArchitectureSpec((_BERT,), pooler="bert.pooler", embedding_norm=_EMBEDDING_NORM),
    "roberta": ArchitectureSpec((_BERT,), embedding_norm=_EMBEDDING_NORM),
    "xlm-roberta": ArchitectureSpec((_BERT,), embedding_norm=_EMBEDDING_NORM),
    "electra": ArchitectureSpec((_BERT,), embedding_norm=_EMBEDDING_NORM),
    "deberta-v2": ArchitectureSpec((_BERT,), head=("pooler", "classifier|qa_outputs"), embedding_norm=_EMBEDDING_NORM),
    "distilbert": ArchitectureSpec(  # its attention has no dropout after out_lin
        (LayerStack("transformer.layer", "attention.out_lin", "ffn.lin2", "attention", "ffn", ("sa_layer_norm", "output_layer_norm"),
               ffn_dropout="ffn.dropout"),),
        head=("pre_classifier", "classifier|qa_outputs"), embedding_norm=_EMBEDDING_NORM,
    ),
    "mpnet": ArchitectureSpec(
        (LayerStack("encoder.layer", "attention.attn.o", "output.dense", "attention.attn", "intermediate", ("attention.LayerNorm", "output.LayerNorm"),
               attention_dropout="attention.dropout", ffn_dropout="output.dropout"),),
        embedding_norm=_EMBEDDING_NORM,
    ),
    "gpt2": ArchitectureSpec((LayerStack("h", "attn.c_proj", "mlp.c_proj", "attn", "mlp", ("ln_1", "ln_2"),
                                    attention_dropout="attn.resid_dropout", ffn_dropout="mlp.dropout"),)),
    "llama": ArchitectureSpec((_LLAMA,)),
    "mistral": ArchitectureSpec((_LLAMA,)),
    "qwen2": ArchitectureSpec((_LLAMA,)),
    "t5": ArchitectureSpec(
        (
            LayerStack("encoder.block", "layer.0.SelfAttention.o", "layer.1.DenseReluDense.wo", "layer.0.SelfAttention",
                  "layer.1.DenseReluDense", ("layer.0.layer_norm", "layer.1.layer_norm"),
                  attention_dropout="layer.0.dropout", ffn_dropout="layer.1.dropout"),
            LayerStack("decoder.block", "layer.0.SelfAttention.o", "layer.2.DenseReluDense.wo", "layer.0.SelfAttention",
                  "layer.2.DenseReluDense", ("layer.0.layer_norm", "layer.1.layer_norm", "layer.2.layer_norm"),
                  attention_dropout="layer.0.dropout", ffn_dropout="layer.2.dropout"),
        ),
    ),
    # ViT: transformers 5 applies ONE dropout module after both sublayers, so the adapters stay on the
    # projections (ViT's hidden dropout defaults to 0.0, where the two orders are the same).
    "vit": ArchitectureSpec(
        (LayerStack("encoder.layer|layers", "attention.output.dense|attention.o_proj", "output.dense|mlp.fc2", "attention",
               "intermediate|mlp", ("layernorm_before", "layernorm_after")),),
    ),
}


@dataclass
class LayerSites:
    """The resolved modules of one transformer layer."""

    attention_output: nn.Module
    ffn_output: nn.Module
    attention_input: nn.Module
    ffn_input: nn.Module
    layer_norms: list[nn.Module]
    attention_site: nn.Module  # whose output serial adapters rewrite: the dropout after the projection, else it
    ffn_site: nn.Module


def _get(root: nn.Module, alternatives: str) -> nn.Module | None:
    for path in alternatives.split("|"):
        try:
            return root.get_submodule(path)
        except AttributeError:
            continue
    return None


def base_modules(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """``model.named_modules()`` without descending into what adapterkit hung on the model: a module whose class
    sets ``holds_adapters`` (``layers.AdapterModule``) is yielded, its contents are not. With hundreds of
    adapters resident (a server's store) their modules outnumber the model's many times over, and every
    insertion or removal walks the model (a full walk cost 0.3 s per adapter load with 64 adapters in MiniLM)."""
    seen: set[int] = set()

    def walk(module: nn.Module, path: str) -> Iterator[tuple[str, nn.Module]]:
        if id(module) in seen:
            return
        seen.add(id(module))
        yield path, module
        if getattr(type(module), "holds_adapters", False):
            return
        for name, child in module._modules.items():
            if child is not None:
                yield from walk(child, f"{path}.{name}" if path else name)

    yield from walk(model, prefix)


def _find_layer_list(model: nn.Module, alternatives: str) -> nn.ModuleList | None:
    for suffix in alternatives.split("|"):
        found = [m for n, m in base_modules(model) if isinstance(m, nn.ModuleList) and (n == suffix or n.endswith("." + suffix))]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ArchitectureError(f"layer path {suffix!r} matches {len(found)} module lists; pass an explicit spec")
    return None


def resolve(model: nn.Module, spec: ArchitectureSpec) -> list[LayerSites]:
    """All layers of all stacks, in order. Raises ArchitectureError naming the first path not found."""
    sites = []
    for stack in spec.stacks:
        layers = _find_layer_list(model, stack.layers)
        if layers is None or len(layers) == 0:
            raise ArchitectureError(f"no layer list {stack.layers!r} in {type(model).__name__}")
        for i, layer in enumerate(layers):
            found = {}
            for role in ("attention_output", "ffn_output", "attention_input", "ffn_input"):
                found[role] = _get(layer, getattr(stack, role))
                if found[role] is None:
                    raise ArchitectureError(f"layer {i} of {stack.layers!r} has no module {getattr(stack, role)!r} ({role})")
            norms = [_get(layer, path) for path in stack.layer_norms]
            if any(n is None for n in norms):
                raise ArchitectureError(f"layer {i} of {stack.layers!r} lacks a layer norm among {stack.layer_norms}")
            for sublayer in ("attention", "ffn"):
                path = getattr(stack, f"{sublayer}_dropout")
                found[f"{sublayer}_site"] = _get(layer, path) if path else found[f"{sublayer}_output"]
                if found[f"{sublayer}_site"] is None:
                    raise ArchitectureError(f"layer {i} of {stack.layers!r} has no module {path!r} ({sublayer}_dropout)")
            sites.append(LayerSites(layer_norms=norms, **found))
    return sites


def layer_lists(model: nn.Module, spec: ArchitectureSpec) -> list[nn.ModuleList]:
    """The model's layer stacks (one ModuleList per LayerStack of the spec), in order."""
    stacks = [_find_layer_list(model, stack.layers) for stack in spec.stacks]
    if any(s is None for s in stacks):
        raise ArchitectureError(f"{type(model).__name__} lacks a layer list of its spec")
    return stacks


def head_modules(model: nn.Module, spec: ArchitectureSpec) -> list[nn.Module]:
    """The model's task-head modules that exist (top-level attributes), in order."""
    return [m for m in (_get(model, alternatives) for alternatives in spec.head) if m is not None]


def pooler_module(model: nn.Module, spec: ArchitectureSpec) -> nn.Module | None:
    """The pretrained pooler the head reads (``spec.pooler``), if the model has one."""
    return _get(model, spec.pooler) if spec.pooler else None


def embedding_norm_module(model: nn.Module, spec: ArchitectureSpec) -> nn.Module | None:
    """The embeddings' layer norm (``spec.embedding_norm``, matched against the end of module names)."""
    if spec.embedding_norm is None:
        return None
    found = [m for n, m in base_modules(model) if n == spec.embedding_norm or n.endswith("." + spec.embedding_norm)]
    return found[0] if len(found) == 1 else None


def detect(model: nn.Module) -> ArchitectureSpec:
    """The preset for ``model.config.model_type``; else the first preset whose paths all resolve."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in PRESETS:
        return PRESETS[model_type]
    for spec in PRESETS.values():
        try:
            resolve(model, spec)
            return spec
        except ArchitectureError:
            continue
    raise ArchitectureError(
        f"unknown architecture {type(model).__name__} (model_type={model_type!r}); pass spec=ArchitectureSpec(...) "
        f"to add_adapter. Candidate modules: {', '.join(_candidates(model)) or 'none found'}"
    )


def _candidates(model: nn.Module, limit: int = 12) -> list[str]:
    """Module lists (layer stacks) and the linear layers of the first layer, to help write a spec."""
    names = []
    for n, m in base_modules(model):
        if isinstance(m, nn.ModuleList) and len(m) > 0:
            names.append(f"{n} (ModuleList of {len(m)})")
            names += [f"{n}.0.{c}" for c, sub in m[0].named_modules() if isinstance(sub, nn.Linear)]
            break
    return names[:limit]


Stack = LayerStack  # its name until issue 14 (adapterkit.Stack is now the composition block); goes next release

__all__ = ["ArchitectureError", "ArchitectureSpec", "LayerSites", "LayerStack", "PRESETS", "detect", "embedding_norm_module", "head_modules", "layer_lists", "pooler_module", "resolve"]

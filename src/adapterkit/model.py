"""The public API on a model: add, activate, train, remove and count adapters.

The model stays the user's own object (a ``PreTrainedModel`` or any ``nn.Module``). adapterkit keeps one
:class:`AdapterState` on it (``model.adapterkit``, a plain attribute, not a submodule) and hangs an
``adapters`` child plus a forward hook on each adapted module (see ``layers.py``).
"""

from __future__ import annotations

import contextlib
import re
import reprlib
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .architectures import ArchitectureSpec, LayerSites, base_modules, detect, embedding_norm_module, head_modules, pooler_module, resolve
from . import kinds, parallel
from .composition import Average, Fuse, Parallel, Stack, adapter_names
from .config import MAX_SIZE_FACTOR, AdapterConfig, AdapterConfigError
from .heads import HeadConfig, head_shapes, replace_last_linear
from .copies import ModuleCopies
from .layers import AdapterModule, BottleneckLayer, Routing

_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


@dataclass
class AdapterState:
    spec: ArchitectureSpec
    routing: Routing = field(default_factory=Routing)
    configs: dict[str, AdapterConfig] = field(default_factory=dict)
    heads: dict[str, HeadConfig] = field(default_factory=dict)
    base_labels: tuple | None = None  # (id2label, label2id, problem_type) of the model as loaded
    fusions: dict = field(default_factory=dict)  # fusion name -> fusion.FusionRecord (its block, config, head)


def _label_fields(model: nn.Module) -> tuple | None:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "id2label"):
        return None
    return (config.id2label, config.label2id, getattr(config, "problem_type", None))


def _set_label_fields(model: nn.Module, fields: tuple) -> None:
    """transformers computes the ``labels=`` loss from ``config.num_labels`` / ``model.num_labels`` and
    ``config.problem_type``: keep them in step with the active head so that loss (and ``Trainer``) is right."""
    config = model.config
    config.id2label, config.label2id, config.problem_type = fields
    if "num_labels" in model.__dict__:
        model.num_labels = len(config.id2label)


def _head_label_fields(head: HeadConfig, base: tuple) -> tuple:
    if head.kind not in ("classification", "regression"):
        return base
    names = head.labels or tuple(f"LABEL_{i}" for i in range(head.num_labels))
    problem = "regression" if head.kind == "regression" else "single_label_classification"
    return dict(enumerate(names)), {n: i for i, n in enumerate(names)}, problem


def get_state(model: nn.Module) -> AdapterState:
    state = model.__dict__.get("adapterkit")
    if state is None:
        raise ValueError("this model has no adapters; call adapterkit.add_adapter(model, name) first")
    return state


def _require(model: nn.Module, name: str) -> AdapterState:
    state = get_state(model)
    if name not in state.configs:
        known = ", ".join(state.configs) or "none"
        raise KeyError(f"no adapter named {name!r} on this model (adapters: {known})")
    return state


def adapter_modules(model: nn.Module) -> Iterator[tuple[str, AdapterModule]]:
    """Every adapter holder in the model with its module path (found by type: the protocol)."""
    for path, module in base_modules(model):
        if isinstance(module, AdapterModule):
            yield path, module


def _holder(module: nn.Module, make, created: list) -> AdapterModule:
    """The adapter holder hanging on ``module`` (its ``adapters`` child), created on first use (and then
    recorded in ``created``, so that a failed add_adapter can take it away again)."""
    existing = module._modules.get("adapters")
    if existing is None:
        if hasattr(module, "adapters"):
            raise ValueError(f"{type(module).__name__} already has an attribute 'adapters' not made by adapterkit")
        existing = make()
        created.append((module, existing))
        module.add_module("adapters", existing)
    return existing


def _output_dim(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if hasattr(module, "nf"):  # transformers' Conv1D (GPT-2)
        return module.nf
    raise ValueError(f"cannot tell the output width of {type(module).__name__}; use an nn.Linear output projection")


def _sublayers(layer: LayerSites, config: AdapterConfig) -> list[tuple[nn.Module, nn.Module | None, nn.Module]]:
    """(output projection, the dropout right after it or None, sublayer input module) for each sublayer its
    kind (``config.kind.sublayers``) puts a module on. The holder hangs on the projection (its state-dict keys
    name it) and applies each adapter at its own site (``layers.BottleneckLayer``)."""
    sites = {"attention": (layer.attention_output, layer.attention_site, layer.attention_input),
             "ffn": (layer.ffn_output, layer.ffn_site, layer.ffn_input)}
    return [(out, None if dropout is out else dropout, inp) for out, dropout, inp in (sites[s] for s in config.kind.sublayers)]


@dataclass
class _Plan:
    """What add_adapter will build, worked out (and checked against the model's limits) before anything is
    allocated: the steps in order, and the state-dict shapes the new adapter's tensors will have."""

    head: HeadConfig
    steps: list[tuple]  # ("bottleneck", output projection, its dropout or None, input module, d) | ("norm", module)
    #                     | ("head", module, resize)
    shapes: dict[str, tuple[int, ...]]  # key without the adapter's name (as in an adapter file) -> shape


def _template(module: nn.Module) -> nn.Module:
    """The module as copies of it start from: its snapshot if adapterkit already holds copies of it."""
    holder = module._modules.get("adapters")
    return holder._template if isinstance(holder, ModuleCopies) else module


def _plan(model: nn.Module, spec: ArchitectureSpec, config: AdapterConfig, head) -> _Plan:
    if not isinstance(config, AdapterConfig):
        raise ValueError(f"config must be an AdapterConfig, got {type(config).__name__}")
    layers = resolve(model, spec)
    config.check_layers(len(layers))
    heads = head_modules(model, spec)
    head = HeadConfig.coerce(head, model_has_head=bool(heads))
    pooler = pooler_module(model, spec) if head.train_pooler and heads else None
    heads = ([pooler] if pooler is not None else []) + heads  # the pooler copy first, the output layer last
    if head.kind != "shared" and not heads:
        raise ValueError(f"{type(model).__name__} has no task head to copy ({spec.head}); load the model with "
                         "its task class (e.g. AutoModelForSequenceClassification) or pass head='shared'")
    paths = {id(m): p for p, m in base_modules(model)}
    steps, shapes = [], {}

    def expect(module: nn.Module, tensors: dict[str, tuple[int, ...]]) -> None:
        shapes.update({f"{paths[id(module)]}.adapters.{k}": v for k, v in tensors.items()})

    for index, layer in enumerate(layers):
        if config.layers is not None and index not in config.layers:
            continue
        for output_module, dropout, input_module in _sublayers(layer, config):
            d = _output_dim(output_module)
            m = config.bottleneck_size(d)
            if m > MAX_SIZE_FACTOR * d:
                raise AdapterConfigError(
                    f"bottleneck size {m} is over {MAX_SIZE_FACTOR}x the hidden size {d} of {paths[id(output_module)]}; "
                    f"use a size of at most {MAX_SIZE_FACTOR * d} (adapters are usually 8 to 256 wide)")
            steps.append(("bottleneck", output_module, dropout, input_module, d))
            expect(output_module, config.kind.shapes(config, d))
        if config.train_layer_norms:
            for norm in layer.layer_norms:
                steps.append(("norm", norm))
                expect(norm, {k: tuple(v.shape) for k, v in _template(norm).state_dict().items()})
    if config.train_embedding_norm:
        norm = embedding_norm_module(model, spec)
        if norm is None:
            raise ValueError(f"train_embedding_norm=True, but {type(model).__name__} has no embedding layer norm "
                             f"({spec.embedding_norm!r} in its spec); leave train_embedding_norm off for this model")
        steps.append(("norm", norm))
        expect(norm, {k: tuple(v.shape) for k, v in _template(norm).state_dict().items()})
    if head.kind != "shared":
        for j, module in enumerate(heads):
            resize = head.num_labels if head.kind in ("classification", "regression") and j == len(heads) - 1 else None
            steps.append(("head", module, resize))
            expect(module, head_shapes(_template(module), resize))
    return _Plan(head, steps, shapes)


def planned_tensors(model: nn.Module, config: AdapterConfig | None = None, head: HeadConfig | int | str | dict | None = None,
                    spec: ArchitectureSpec | None = None) -> dict[str, tuple[int, ...]]:
    """The tensors :func:`add_adapter` would give an adapter with ``config`` and ``head`` (keys as in a saved
    adapter file, i.e. without the adapter's name -> shapes), after the same checks, allocating nothing."""
    state = model.__dict__.get("adapterkit")
    return _plan(model, state.spec if state else spec or detect(model), config or AdapterConfig(), head).shapes


def add_adapter(
    model: nn.Module,
    name: str,
    config: AdapterConfig | Average | None = None,
    head: HeadConfig | int | str | dict | None = None,
    spec: ArchitectureSpec | None = None,
) -> nn.Module:
    """Insert adapter ``name`` (initialised near identity) with its layer-norm copies and head.

    ``head``: None (a copy of the model's own head; shared if it has none, e.g. a causal LM), a number of
    labels, ``"regression"``, or a :class:`HeadConfig`. ``spec`` overrides architecture detection.

    Everything is checked before anything is allocated (a bottleneck at most ``MAX_SIZE_FACTOR`` times the
    hidden size, existing layer indices, at most ``MAX_LABELS`` labels), and the insertion is a transaction:
    if anything fails, even a MemoryError or KeyboardInterrupt half-way, the model is left exactly as it was.

    ``config=Average("a", "b", weights=...)`` (composition.py) makes the new adapter the weighted sum of
    those adapters' tensors, with the first one's config and head.
    """
    if isinstance(config, Average):
        if head is not None or spec is not None:
            raise ValueError("an averaged adapter takes its head and spec from the adapters it averages; drop head/spec")
        return _average(model, name, config)
    return _insert(model, name, config or AdapterConfig(), head, spec)


def _average(model: nn.Module, name: str, block: Average) -> nn.Module:
    state = get_state(model)
    for n in block.names:
        _require(model, n)
    first = block.names[0]
    strip = lambda c: {**c.to_dict(), "init_std": None}  # noqa: E731  (how an adapter started no longer matters)
    for n in block.names[1:]:
        if strip(state.configs[n]) != strip(state.configs[first]) or state.heads[n] != state.heads[first]:
            raise ValueError(f"Average: adapters {first!r} and {n!r} differ in config or head; only adapters of one "
                             "shape can be averaged")
    sources = [adapter_tensors(model, n) for n in block.names]

    def fill(own: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for key, target in own.items():
                total = block.weights[0] * sources[0][key]
                for weight, tensors in zip(block.weights[1:], sources[1:]):
                    total = total + weight * tensors[key]
                target.copy_(total)

    return _insert(model, name, state.configs[first], state.heads[first], None, fill=fill)


def _insert(model: nn.Module, name: str, config: AdapterConfig, head, spec: ArchitectureSpec | None,
            fill: Callable[[dict[str, torch.Tensor]], None] | None = None) -> nn.Module:
    """add_adapter, with ``fill`` called on the new adapter's tensors (keys as in :func:`planned_tensors`)
    before it is committed (load_adapter copies the saved weights in there)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"adapter name must be letters, digits, '_' or '-', got {reprlib.repr(name)}")
    state = model.__dict__.get("adapterkit")
    new_state = state is None
    if new_state:
        state = AdapterState(spec=spec or detect(model), base_labels=_label_fields(model))
    elif spec is not None and spec != state.spec:
        raise ValueError("this model already has adapters inserted with another architecture spec")
    if name in state.configs:
        raise ValueError(f"adapter {name!r} already exists; remove_adapter(model, {name!r}) first or pick another name")
    plan = _plan(model, state.spec, config, head)
    created: list[tuple[nn.Module, AdapterModule]] = []  # holders this call made
    touched: list[AdapterModule] = []  # holders this call added to (made or not)
    try:
        if new_state:
            model.__dict__["adapterkit"] = state
        _build(model, name, config, plan, state.routing, created, touched, initialise=fill is None)
        if fill is not None:
            fill(adapter_tensors(model, name))
        state.configs[name] = config
        state.heads[name] = plan.head
    except BaseException as e:
        _rollback(model, name, state, new_state, created, touched)
        created.clear()
        touched.clear()
        traceback.clear_frames(e.__traceback__)  # frames below hold the half-built modules: let them go now
        raise
    return model


def _build(model, name, config, plan, routing, created, touched, initialise: bool = True) -> None:
    for step in plan.steps:
        if step[0] == "bottleneck":
            _, output_module, dropout, input_module, d = step
            reference = next(output_module.parameters())
            module = kinds.build_module(config.kind, config, d, like=reference, initialise=initialise)
            holder = _holder(output_module, lambda o=output_module, p=dropout: BottleneckLayer(routing, o, p), created)
            touched.append(holder)
            holder.add(name, module, config.kind, config, input_module)
        elif step[0] == "norm":
            holder = _holder(step[1], lambda n=step[1]: ModuleCopies(routing, n, role="layer_norm"), created)
            touched.append(holder)
            holder.add(name, holder.copy_of_base())
        else:
            _, module, resize = step
            holder = _holder(module, lambda h=module: ModuleCopies(routing, h, role="head"), created)
            copy = holder.copy_of_base()
            if resize is not None:
                copy = replace_last_linear(copy, resize, getattr(getattr(model, "config", None), "initializer_range", 0.02))
            touched.append(holder)
            holder.add(name, copy)


def adapter_tensors(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s tensors (sharing storage with its parameters), keyed as in an adapter file: the
    model's state-dict keys without the adapter's name (``...dense.adapters.down.weight``)."""
    return {f"{path}.{rel}": t for path, holder in adapter_modules(model) if name in holder.adapters
            for rel, t in holder.adapters[name].state_dict().items()}


def _rollback(model, name, state, new_state, created, touched) -> None:
    for holder in reversed(touched):
        holder.remove(name)
    for module, holder in reversed(created):
        holder.detach_hooks()
        if module._modules.get("adapters") is holder:
            del module._modules["adapters"]
    state.configs.pop(name, None)
    state.heads.pop(name, None)
    if new_state and model.__dict__.get("adapterkit") is state:
        del model.__dict__["adapterkit"]


def set_active(model: nn.Module, active: str | None | Stack | Fuse | Parallel | Sequence[str | Stack | None]) -> nn.Module:
    """Activate one adapter, ``None`` (the base model, exactly), a ``Stack("a", "b")``, a fusion added with
    ``add_fusion`` (``Fuse("a", "b")``; fusion.py) or a ``Parallel("a", "b")`` (composition.py, parallel.py),
    or one entry per batch row: a name, a Stack, a fusion (Fuse) or None."""
    state = get_state(model) if active is not None else model.__dict__.get("adapterkit")
    if state is None:
        return model
    if active is None or isinstance(active, (str, Stack, Fuse, Parallel)):
        entries = [active]
    else:
        entries = list(active)
        for e in entries:
            if isinstance(e, Parallel):
                raise ValueError(f"a row of a mixed batch takes an adapter name, a Stack, a Fuse or None, not {e!r}; "
                                 f"activate a Parallel for the whole batch: set_active(model, {e!r})")
    for n in entries:
        if n is not None and not isinstance(n, (Stack, Fuse, Parallel)):
            _require(model, n)
    for n in adapter_names([e for e in entries if isinstance(e, (Stack, Fuse, Parallel))]):
        _require(model, n)
    stacks = {e for e in entries if isinstance(e, Stack)} | {m for e in entries if isinstance(e, Parallel)
                                                             for m in e.members if isinstance(m, Stack)}
    for stack in stacks:
        _check_stack(model, stack)
    for fuse in {e for e in entries if isinstance(e, Fuse)}:
        if fuse.name not in state.fusions or state.fusions[fuse.name].block != fuse:
            raise KeyError(f"no fusion {fuse!r} on this model (fusions: {', '.join(map(repr, (r.block for r in state.fusions.values()))) or 'none'}); "
                           "add it with adapterkit.add_fusion or load it with adapterkit.load_fusion first")
    hooks = parallel.attach(model, state.spec, state.routing, active) if isinstance(active, Parallel) else []
    state.routing.set(active)
    state.routing.hooks = hooks
    if state.base_labels is not None:
        owner = state.routing.head_owner
        head = (state.fusions[owner].head if isinstance(active, Fuse) else state.heads[owner]) if isinstance(owner, str) else HeadConfig("own")
        _set_label_fields(model, _head_label_fields(head, state.base_labels))
    return model


def _check_stack(model: nn.Module, stack: Stack) -> None:
    """Refuse a stack that lists an ``after_dropout`` adapter before a ``before_dropout`` one at a sublayer
    where both sit and the sites differ: each stacked adapter runs at its own site, in the stack's order,
    and the projection's output exists before its dropout's, so that order cannot be kept.

    Refuse a stack in which an adapter whose branch reads the sublayer's input (a parallel kind) shares a
    site with another adapter of the stack. AdapterHub's Stack (adapters 1.3, ``BottleneckLayer.compose_stack``)
    gives every parallel adapter the sublayer's input again, not the previous adapter's output, and its
    ``post_forward`` adds only the last adapter's result: Stack(a, b) of two parallel adapters computes b alone
    (on MiniLM: to 0.0, tests/test_stack_parity.py), and on stacks of a Houlsby and a parallel adapter the
    former b-reads-a's-output formula was 1.7 and 4.7 (max abs, last hidden state) away from it. Matching that would silently drop adapters; computing anything else
    would not be AdapterHub's Stack. A site with one adapter of the stack is that adapter alone, in both."""
    for path, holder in adapter_modules(model):
        if not isinstance(holder, BottleneckLayer):
            continue
        here = [n for n in stack.names if n in holder.adapters]
        at_dropout = [holder.sites[n] == "after_dropout" for n in here]
        if at_dropout != sorted(at_dropout):  # an after_dropout adapter before a before_dropout one
            first = at_dropout.index(True)
            late, early = here[first], here[at_dropout.index(False, first)]
            raise ValueError(
                f"{stack!r}: {early!r} (site before_dropout) cannot follow {late!r} (site after_dropout) at "
                f"{path.removesuffix('.adapters')}: each stacked adapter runs at its own site, and the output "
                "projection comes before its dropout; put the before_dropout adapters first in the stack")
        readers = [n for n in here if holder.kinds[n][0].reads_input]
        if len(here) > 1 and readers:
            reader, others = readers[0], [n for n in here if n != readers[0]]
            raise ValueError(
                f"{stack!r}: {reader!r} is a {holder.kinds[reader][0].name} adapter and shares the site "
                f"{path.removesuffix('.adapters')} with {others}; AdapterHub's Stack keeps only the last "
                "adapter's branch where a parallel adapter is stacked, so adapterkit does not stack them. Stack "
                "serial adapters (houlsby, pfeiffer), or give the parallel adapter layers the others do not have"
            )


def active_adapter(model: nn.Module) -> str | None | Stack | Parallel | tuple[str | Stack | None, ...]:
    state = model.__dict__.get("adapterkit")
    return None if state is None else state.routing.active


@contextlib.contextmanager
def use_adapter(model: nn.Module, active: str | None | Stack | Parallel | Sequence[str | Stack | None]):
    """``with use_adapter(model, "sst2"):`` -- activate for the block, then restore what was active."""
    before = active_adapter(model)
    set_active(model, active)
    try:
        yield model
    finally:
        set_active(model, before)


def disable_adapters(model: nn.Module):
    """``with disable_adapters(model):`` -- the base model for the block."""
    return use_adapter(model, None)


def adapter_parameters(model: nn.Module, name: str) -> Iterator[nn.Parameter]:
    """Everything adapter ``name`` owns: bottlenecks, layer-norm copies, head."""
    _require(model, name)
    for _, holder in adapter_modules(model):
        yield from holder.adapter_parameters(name)


def parameter_groups(model: nn.Module, name: str, lr: float, head_lr: float | None = None) -> list[dict]:
    """Optimiser parameter groups for adapter ``name``: its bottlenecks and layer-norm copies at ``lr``, its
    head (and pooler copy) at ``head_lr`` (default ``lr``). A new head starts from random weights and needs a
    larger step than the near-identity adapters: ``torch.optim.AdamW(parameter_groups(m, "t", 1e-3, 1e-2))``."""
    _require(model, name)
    body, head = [], []
    for _, holder in adapter_modules(model):
        (head if holder.role == "head" else body).extend(holder.adapter_parameters(name))
    groups = [{"params": body, "lr": lr}]
    if head:
        groups.append({"params": head, "lr": lr if head_lr is None else head_lr})
    return groups


def train_adapter(model: nn.Module, name: str) -> nn.Module:
    """Freeze everything but adapter ``name`` (its bottlenecks, layer norms and head), activate it, and put
    the model in training mode."""
    _require(model, name)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in adapter_parameters(model, name):
        p.requires_grad_(True)
    set_active(model, name)
    return model.train()


def remove_adapter(model: nn.Module, name: str) -> nn.Module:
    state = _require(model, name)
    users = [f for f, record in state.fusions.items() if name in record.block.names]
    if users:
        raise ValueError(f"adapter {name!r} is fused by {users[0]!r}; remove_fusion(model, {users[0]!r}) first")
    for path, holder in list(adapter_modules(model)):
        holder.remove(name)
        if not holder.adapters:  # last adapter here: unhook and drop the holder
            holder.detach_hooks()
            del model.get_submodule(path.rpartition(".")[0])._modules["adapters"]
    del state.configs[name], state.heads[name]
    active = state.routing.active
    if name in adapter_names(active):
        set_active(model, None)
    return model


def list_adapters(model: nn.Module) -> list[str]:
    state = model.__dict__.get("adapterkit")
    return list(state.configs) if state else []


def adapter_summary(model: nn.Module) -> dict[str, dict[str, int | float]]:
    """Per adapter: adapter, layer-norm, head and trainable parameter counts, the base model's parameter
    count, and the trainable share of the base model in percent."""
    state = model.__dict__.get("adapterkit")
    holders = [h for _, h in adapter_modules(model)]
    owned = sum(p.numel() for h in holders for p in h.parameters())
    base = sum(p.numel() for p in model.parameters()) - owned
    summary = {}
    for name in state.configs if state else ():
        counts = {"adapter": 0, "layer_norm": 0, "head": 0}
        for h in holders:
            counts[h.role] += sum(p.numel() for p in h.adapter_parameters(name))
        trainable = sum(counts.values())
        summary[name] = {
            "adapter_params": counts["adapter"],
            "layer_norm_params": counts["layer_norm"],
            "head_params": counts["head"],
            "trainable_params": trainable,
            "base_params": base,
            "percent": 100.0 * trainable / base,
        }
    return summary


def base_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """The model's own parameters (not adapterkit's), with their names."""
    owned = {id(p) for _, h in adapter_modules(model) for p in h.parameters()}
    for n, p in model.named_parameters():
        if id(p) not in owned:
            yield n, p

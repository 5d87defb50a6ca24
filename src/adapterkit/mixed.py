"""Mixed-task batches: every row of one batch runs through its own adapter (or the base model) in one pass.

    from adapterkit.mixed import predict_mixed
    rows = predict_mixed(model, ["great film", ("is it?", "yes it is"), "boring"],
                            tasks=["sentiment", "nli", None], tokenizer=tok)
    rows[0]   # tensor (2,): sentiment logits;  rows[1] (3,): nli logits;  rows[2]: the base model's logits

The routing itself lives in ``layers.py`` (``set_active(model, [name or None, ...])``): each adapter layer
applies, per row, that row's bottleneck, and each task head is applied to its own rows. Heads of different
widths are padded with zeros to the widest in the model's output; :func:`predict_mixed` cuts every row back
to its own task's width, so callers never see the padding. A row may also name a ``Stack("lang", "task")``
or a fusion's ``Fuse("a", "b")`` (its attention at each site, its last adapter's layer norms, its own head).

``Parallel`` (``parallel.py``) gives every task's output for the same inputs in one pass:

    out = predict_parallel(model, ["great film", "boring"], ["sentiment", "topic"], tokenizer=tok)
    out["sentiment"]   # (2, 2): both inputs through the sentiment adapter;  out["topic"]: (2, 5)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .architectures import head_modules
from .composition import Fuse, Parallel, Stack
from .model import get_state, use_adapter

Text = str | tuple[str, str] | list[str]


def _last_linear_width(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1].out_features
    return getattr(module, "nf", None)  # transformers' Conv1D


def head_width(model: nn.Module, task: str | Stack | Fuse | None) -> int | None:
    """How many outputs task ``task``'s head has (``None``: the base model's head; a Stack: its last
    adapter's; a Fuse: the fusion's own); ``None`` when the model has no task head of its own (e.g. a causal LM)."""
    task = task.last if isinstance(task, Stack) else task.name if isinstance(task, Fuse) else task
    state = model.__dict__.get("adapterkit")
    heads = head_modules(model, state.spec) if state is not None else []
    if not heads:
        return None
    last = heads[-1]
    holder = last._modules.get("adapters")
    if task is not None and holder is not None and task in holder.adapters:
        return _last_linear_width(holder.adapters[task])
    return _last_linear_width(last)


def encode(tokenizer, inputs: Sequence[Text], max_length: int | None = 512) -> dict[str, torch.Tensor]:
    """Tokenise a list of texts and/or (text, pair) items into one padded batch, order kept."""
    items = [(x, None) if isinstance(x, str) else tuple(x) for x in inputs]
    bad = [i for i, it in enumerate(items) if len(it) != 2 or not all(t is None or isinstance(t, str) for t in it)]
    if bad:
        raise ValueError(f"input {bad[0]} must be a text or a [text, pair] of two texts, got {inputs[bad[0]]!r}")
    rows: list = [None] * len(items)
    for want_pair in (False, True):  # one batched tokenizer call for the texts, one for the pairs
        index = [i for i, (_, b) in enumerate(items) if (b is not None) == want_pair]
        if index:
            pairs = [items[i][1] for i in index] if want_pair else None
            enc = tokenizer([items[i][0] for i in index], pairs, truncation=max_length is not None, max_length=max_length)
            for k, i in enumerate(index):
                rows[i] = {key: enc[key][k] for key in enc}
    return dict(tokenizer.pad(rows, padding=True, return_tensors="pt"))


@torch.inference_mode()
def predict_mixed(
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor] | Sequence[Text],
    tasks: Sequence[str | Stack | Fuse | None],
    tokenizer=None,
    max_length: int | None = 512,
) -> list[torch.Tensor]:
    """Run one forward pass in which row ``i`` uses adapter ``tasks[i]`` (a name, a ``Stack``, a fusion added
    with ``add_fusion`` as its ``Fuse``, or ``None``: the base model) and
    return each row's logits, cut to its own head's width (``(num_labels,)`` per row for a sequence
    classifier). ``inputs``: tokenised tensors (``input_ids``, ``attention_mask``...) or, with
    ``tokenizer``, a list of texts / (text, pair) items. The previously active adapter is restored after."""
    inputs = _tensors(inputs, tokenizer, max_length, "predict_mixed")
    tasks = list(tasks)
    rows = next(v for v in inputs.values() if torch.is_tensor(v)).shape[0]
    if len(tasks) != rows:
        raise ValueError(f"{len(tasks)} task names for a batch of {rows} rows; give one task (or None) per row")
    get_state(model)  # a clear error when the model has no adapters at all
    # Sort rows by task (stable) so that each task's rows are contiguous: the adapter layers then work on
    # views of the hidden states instead of gathering and scattering rows (see Routing.groups).
    first = {t: i for i, t in reversed(list(enumerate(tasks)))}
    order = sorted(range(rows), key=lambda i: first[tasks[i]])
    if order != list(range(rows)):
        index = torch.tensor(order)
        inputs = {k: v.index_select(0, index.to(v.device)) if torch.is_tensor(v) and v.dim() and v.shape[0] == rows
                  else v for k, v in inputs.items()}
    routed = [tasks[i] for i in order]
    with use_adapter(model, routed[0] if len(first) == 1 else routed):  # one task: the plain path
        out = model(**inputs)
    logits = out.logits if hasattr(out, "logits") else out[0]
    widths = {t: head_width(model, t) for t in first}
    result: list[torch.Tensor] = [None] * rows  # type: ignore[list-item]
    for k, i in enumerate(order):
        w = widths[tasks[i]]
        result[i] = logits[k] if w is None else logits[k, ..., :w]
    return result


def _tensors(inputs, tokenizer, max_length: int | None, caller: str) -> Mapping[str, torch.Tensor]:
    if isinstance(inputs, Mapping):
        return inputs
    if tokenizer is None:
        raise ValueError(f"pass a tokenizer to {caller} when the inputs are texts")
    return encode(tokenizer, inputs, max_length)


def split_parallel(model: nn.Module, block: Parallel, output: torch.Tensor) -> dict[str | Stack, torch.Tensor]:
    """A Parallel pass's output (N x B rows, heads padded to the widest) as {member: its B rows, cut to its
    head's width}; a member that is a Stack is keyed by the Stack."""
    n = len(block.members)
    if output.shape[0] % n:
        raise ValueError(f"{block!r}: an output of {output.shape[0]} rows is not {n} blocks of rows")
    rows = output.shape[0] // n
    result = {}
    for i, member in enumerate(block.members):
        width = head_width(model, member)
        piece = output[i * rows : (i + 1) * rows]
        result[member] = piece if width is None else piece[..., :width]
    return result


@torch.inference_mode()
def predict_parallel(
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor] | Sequence[Text],
    tasks: Parallel | Sequence[str | Stack],
    tokenizer=None,
    max_length: int | None = 512,
) -> dict[str | Stack, torch.Tensor]:
    """Every task's logits for the same inputs, in one ``Parallel`` pass: {task: (B, its head's width)}.
    ``inputs`` as for :func:`predict_mixed`. The previously active adapter is restored after."""
    block = tasks if isinstance(tasks, Parallel) else Parallel(*tasks)
    inputs = _tensors(inputs, tokenizer, max_length, "predict_parallel")
    get_state(model)
    with use_adapter(model, block):
        out = model(**inputs)
    return split_parallel(model, block, out.logits if hasattr(out, "logits") else out[0])


__all__ = ["encode", "head_width", "predict_mixed", "predict_parallel", "split_parallel"]

"""What the server knows about each loaded adapter (a :class:`Task`), and how a task's inputs and outputs
are shaped: ``--adapter NAME=DIR`` specs, tokenisation of a request's inputs, and scores to JSON predictions.

None of this touches the queue or the worker; :mod:`.batcher` calls it while loading adapters and answering
batches, :mod:`.app` while validating requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..composition import Fuse
from ..io import read_adapter_config
from ..mixed import head_width
from ..model import get_state
from .settings import BadAdapter, ServeSettings

SERVED_HEADS = ("classification", "regression", "own")


@dataclass(frozen=True)
class Task:
    name: str
    path: str | None
    kind: str  # "classification" | "regression" | "lm" (generation: /v1/completions, /v1/chat/completions)
    labels: tuple[str, ...]  # label names (classification); () for regression
    max_length: int
    route: Any = None  # what its rows run through, when not the adapter ``name``: a Fuse (fusion_task.py)

    @property
    def entry(self) -> Any:
        """The routing entry of the task's rows in a mixed batch (``predict_mixed``)."""
        return self.name if self.route is None else self.route

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "kind": self.kind, "labels": list(self.labels),
                "num_labels": len(self.labels) if self.kind == "classification" else 1, "max_length": self.max_length}


def task_from_model(model, name: str, path: str | None, meta: dict, settings: ServeSettings,
                    model_limit: int | None = None, entry: Fuse | None = None) -> Task:
    """Describe a loaded adapter (or, with ``entry``, a loaded fusion served as ``name``): its kind and label
    names (the saved HeadConfig.labels, else extra["label_names"], else LABEL_i)."""
    state = get_state(model)
    head = state.heads[name] if entry is None else state.fusions[entry.name].head
    extra = meta.get("extra") or {}
    if not isinstance(extra, dict):
        raise BadAdapter(f"adapter {name!r}: extra in adapter_config.json is not an object")
    if extra.get("kind") is not None and not isinstance(extra["kind"], str):
        raise BadAdapter(f"adapter {name!r}: extra.kind in adapter_config.json is not a string")
    names = extra.get("label_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(x, str) for x in names)):
        raise BadAdapter(f"adapter {name!r}: extra.label_names in adapter_config.json is not a list of strings")
    length = extra.get("max_length")
    if length is not None and not (type(length) is int and length > 0):  # noqa: E721 - not a bool
        raise BadAdapter(f"adapter {name!r}: extra.max_length in adapter_config.json is not a positive integer")
    causal = is_causal_lm(model)
    if extra.get("kind") == "lm" or (causal and head.kind in ("own", "shared") and extra.get("kind") in (None, "lm")):
        if not causal:
            raise BadAdapter(f"adapter {name!r} is a language-model adapter; serve it on a causal LM "
                             "(--model smollm2 or a *ForCausalLM directory)")
        return Task(name, path, "lm", (), _max_length(extra, settings, model_limit))
    if head.kind not in SERVED_HEADS or extra.get("kind") == "qa" or causal:
        raise BadAdapter(f"adapter {name!r} has a {extra.get('kind') or head.kind} head; the server serves "
                         "sequence classification and regression adapters, and language-model adapters on "
                         "a causal LM")
    width = head_width(model, name if entry is None else entry)
    max_length = _max_length(extra, settings, model_limit)
    regression = head.kind == "regression" or (head.kind == "own" and extra.get("kind") == "regression")
    if regression:
        return Task(name, path, "regression", (), max_length, entry)
    labels = head.labels or extra.get("label_names") or ()
    if not labels or len(labels) != width:
        labels = tuple(f"LABEL_{i}" for i in range(width or 0))
    return Task(name, path, "classification", tuple(str(x) for x in labels), max_length, entry)


def is_causal_lm(model) -> bool:
    """A text generator (``*ForCausalLM``, GPT-2's ``*LMHeadModel``): the server serves LM adapters on it."""
    return type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))


def _max_length(extra: dict, settings: ServeSettings, model_limit: int | None) -> int:
    """Tokens per input: the server's limit, the length the adapter was trained with (extra["max_length"],
    written by ``adapterkit train``) and the model's own limit, whichever is least."""
    limits = [settings.max_length, model_limit, extra.get("max_length")]
    return min(x for x in limits if type(x) is int and x > 0)  # noqa: E721 - not a bool


def model_max_length(model, tokenizer) -> int | None:
    """The fewest tokens the tokenizer or the model's position embeddings allow (None: no known limit)."""
    limits = [getattr(tokenizer, "model_max_length", None),
              getattr(getattr(model, "config", None), "max_position_embeddings", None)]
    limits = [n for n in limits if isinstance(n, int) and 0 < n < 100_000]
    return min(limits) if limits else None


def parse_adapters(adapters: dict[str, str] | Sequence[str]) -> dict[str, str]:
    """``["name=dir", ...]`` (or a dict) -> {name: dir}; a bare directory is loaded under its saved name."""
    if isinstance(adapters, dict):
        return dict(adapters)
    out: dict[str, str] = {}
    for spec in adapters:
        name, sep, path = spec.partition("=")
        if not sep:
            path = spec
            name = read_adapter_config(path)["name"]
        if not name or not path:
            raise ValueError(f"--adapter takes NAME=DIRECTORY, got {spec!r}")
        if name in out:
            raise ValueError(f"adapter name {name!r} given twice")
        out[name] = path
    return out


def tokenize(tokenizer, inputs: Sequence[str | Sequence[str]], max_length: int) -> list[dict[str, list[int]]]:
    """Each input (text or [text, pair]) to token ids, truncated to ``max_length``, unpadded, order kept."""
    singles = [i for i, x in enumerate(inputs) if isinstance(x, str)]
    pairs = [i for i, x in enumerate(inputs) if not isinstance(x, str)]
    features: list[dict[str, list[int]]] = [None] * len(inputs)  # type: ignore[list-item]
    keep = ("input_ids", "token_type_ids", "attention_mask")
    # Texts and [text, pair] items are tokenised in two calls (the tokenizer takes one kind at a time).
    for rows, columns in ((singles, ([inputs[i] for i in singles],)),
                          (pairs, ([inputs[i][0] for i in pairs], [inputs[i][1] for i in pairs]))):
        if not rows:
            continue
        enc = tokenizer(*columns, truncation=True, max_length=max_length)
        for k, i in enumerate(rows):
            features[i] = {key: enc[key][k] for key in keep if key in enc}
    return features


def format_predictions(task: Task, logits: torch.Tensor) -> list[dict[str, Any]]:
    """One request's rows of head outputs to its JSON predictions: {"score"} (regression), else
    {"label", "scores": {label: probability}}."""
    if task.kind == "regression":
        return [{"score": float(x)} for x in logits[:, 0]]
    probs = torch.softmax(logits, dim=-1)
    out = []
    for row in probs.tolist():
        best = max(range(len(row)), key=row.__getitem__)
        out.append({"label": task.labels[best], "scores": dict(zip(task.labels, row))})
    return out

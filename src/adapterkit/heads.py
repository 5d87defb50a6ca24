"""Task heads that belong to an adapter.

A head is described by a :class:`HeadConfig` and built from the model's own head modules (``classifier``,
``score``, ``qa_outputs``...; see ``ArchitectureSpec.head``), so a new head takes its input exactly where the
model's head does (BERT's pooled output, RoBERTa's first token, a decoder's last token):

* ``own``            -- copies of the model's head (same labels); also span QA with ``qa_outputs``.
* ``classification`` -- the model's head with its last linear layer replaced by a fresh one of ``num_labels``.
* ``regression``     -- the same with one output.
* ``shared``         -- no head of its own: the model's head is used as it is and stays frozen (causal LMs,
                        whose ``lm_head`` is tied to the input embeddings).

``train_pooler``: where the head reads a pretrained pooler (BERT's dense + tanh on [CLS],
``ArchitectureSpec.pooler``), True gives the adapter its own trainable copy of it. The default, False,
keeps the model's pooler frozen and shared, as adapter-bert did. Sentence-transformers checkpoints such as
all-MiniLM-L6-v2 ship an untrained (random) pooler; docs/results.md measures both ways.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass

from torch import nn

HEAD_KINDS = ("own", "classification", "regression", "shared")
# The widest head an adapter may have: more labels than this is a damaged or hostile config, not a task
# (65536 labels on a 1024-wide model is already a 256 MB output layer).
MAX_LABELS = 65536
MAX_LABEL_CHARS = 1000


@dataclass(frozen=True)
class HeadConfig:
    kind: str = "own"
    num_labels: int | None = None
    labels: tuple[str, ...] | None = None  # label names, index = class id
    train_pooler: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in HEAD_KINDS:
            raise ValueError(f"unknown head kind {reprlib.repr(self.kind)}; choose one of {', '.join(HEAD_KINDS)}")
        if self.num_labels is not None and (not isinstance(self.num_labels, int) or isinstance(self.num_labels, bool)
                                            or not 1 <= self.num_labels <= MAX_LABELS):
            raise ValueError(f"num_labels must be an integer from 1 to {MAX_LABELS}, got {reprlib.repr(self.num_labels)}")
        if self.kind == "regression" and self.num_labels not in (None, 1):
            raise ValueError("a regression head has exactly one output")
        if self.kind == "regression":
            object.__setattr__(self, "num_labels", 1)
        if self.kind == "classification" and (not isinstance(self.num_labels, int) or self.num_labels < 1):
            raise ValueError(f"a classification head needs num_labels >= 1, got {self.num_labels!r}")
        if not isinstance(self.train_pooler, bool):
            raise ValueError(f"train_pooler must be True or False, got {self.train_pooler!r}")
        if self.labels is not None:
            if not isinstance(self.labels, (list, tuple)) or len(self.labels) > MAX_LABELS or not all(
                    isinstance(n, str) and len(n) <= MAX_LABEL_CHARS for n in self.labels):
                raise ValueError(f"labels must be a list of at most {MAX_LABELS} label names (strings of at most "
                                 f"{MAX_LABEL_CHARS} characters), got {reprlib.repr(self.labels)}")
            object.__setattr__(self, "labels", tuple(self.labels))
            if self.num_labels is not None and len(self.labels) != self.num_labels:
                raise ValueError(f"{len(self.labels)} label names for {self.num_labels} labels")

    @classmethod
    def coerce(cls, head: "HeadConfig | int | str | dict | None", model_has_head: bool) -> "HeadConfig":
        """``None`` -> own head if the model has one else shared; an int -> that many classes;
        ``"regression"``; a dict of fields; or a HeadConfig."""
        if isinstance(head, cls):
            return head
        if head is None:
            return cls("own" if model_has_head else "shared")
        if isinstance(head, bool):
            raise ValueError("head must be None, a number of labels, 'regression', a dict or a HeadConfig")
        if isinstance(head, int):
            return cls("classification", num_labels=head)
        if isinstance(head, str):
            return cls(head)
        if isinstance(head, dict):
            unknown = sorted(map(str, set(head) - {"kind", "num_labels", "labels", "train_pooler"}))
            if unknown:
                raise ValueError(f"unknown head field(s) {reprlib.repr(unknown)}; known: kind, num_labels, labels, train_pooler")
            return cls(**head)
        raise ValueError(f"head must be None, a number of labels, 'regression', a dict or a HeadConfig, got {reprlib.repr(head)}")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "num_labels": self.num_labels, "labels": list(self.labels) if self.labels else None,
                "train_pooler": self.train_pooler}


def replace_last_linear(head: nn.Module, num_outputs: int, init_std: float) -> nn.Module:
    """Give a copied head module a fresh output layer: its last nn.Linear becomes in_features -> num_outputs."""
    if isinstance(head, nn.Linear):
        new = nn.Linear(head.in_features, num_outputs, bias=head.bias is not None)
        _init_linear(new, init_std)
        return new.to(device=head.weight.device, dtype=head.weight.dtype)
    linears = [(name, m) for name, m in head.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"cannot resize head {type(head).__name__}: it has no nn.Linear output layer")
    name, last = linears[-1]
    parent = head.get_submodule(name.rpartition(".")[0]) if "." in name else head
    setattr(parent, name.rpartition(".")[2], replace_last_linear(last, num_outputs, init_std))
    return head


def _init_linear(linear: nn.Linear, std: float) -> None:
    nn.init.normal_(linear.weight, std=std)  # as transformers' _init_weights (initializer_range)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def head_shapes(template: nn.Module, num_outputs: int | None) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of a copy of ``template`` -- with its last nn.Linear resized to ``num_outputs``
    when given, as :func:`replace_last_linear` does -- computed without building anything."""
    shapes = {k: tuple(v.shape) for k, v in template.state_dict().items()}
    if num_outputs is None:
        return shapes
    linears = [(name, m) for name, m in template.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"cannot resize head {type(template).__name__}: it has no nn.Linear output layer")
    name, last = linears[-1]
    prefix = f"{name}." if name else ""
    for k in list(shapes):
        if k.startswith(prefix) and "." not in k[len(prefix):]:
            del shapes[k]  # the old layer's own tensors: the fresh nn.Linear has weight and bias only
    shapes[f"{prefix}weight"] = (num_outputs, last.in_features)
    if last.bias is not None:
        shapes[f"{prefix}bias"] = (num_outputs,)
    return shapes


__all__ = ["HEAD_KINDS", "MAX_LABELS", "HeadConfig", "head_shapes", "replace_last_linear"]

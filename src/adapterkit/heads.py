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

from dataclasses import dataclass

from torch import nn

HEAD_KINDS = ("own", "classification", "regression", "shared")


@dataclass(frozen=True)
class HeadConfig:
    kind: str = "own"
    num_labels: int | None = None
    labels: tuple[str, ...] | None = None  # label names, index = class id
    train_pooler: bool = False

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"unknown head kind {self.kind!r}; choose one of {', '.join(HEAD_KINDS)}")
        if self.kind == "regression" and self.num_labels not in (None, 1):
            raise ValueError("a regression head has exactly one output")
        if self.kind == "regression":
            object.__setattr__(self, "num_labels", 1)
        if self.kind == "classification" and (not isinstance(self.num_labels, int) or self.num_labels < 1):
            raise ValueError(f"a classification head needs num_labels >= 1, got {self.num_labels!r}")
        if not isinstance(self.train_pooler, bool):
            raise ValueError(f"train_pooler must be True or False, got {self.train_pooler!r}")
        if self.labels is not None:
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
            return cls(**head)
        raise ValueError(f"head must be None, a number of labels, 'regression', a dict or a HeadConfig, got {head!r}")

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


__all__ = ["HEAD_KINDS", "HeadConfig", "replace_last_linear"]

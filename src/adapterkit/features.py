"""From task examples to model inputs: tokenisation, batching with dynamic padding, and the loss per kind.

A *feature* is a dict of token lists (``input_ids``, ``attention_mask``, maybe ``token_type_ids``) plus its
targets: ``labels`` (an int class, a float score, or for a causal LM the token ids, -100 where ignored),
or ``start_positions``/``end_positions`` (span QA, see ``qa.py``). Batches are padded to their longest row
only (most snippets are far shorter than ``max_length``), and rows always keep the order given, so that a
fixed order and batch size give bit-identical logits in ``train`` and ``eval``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: Kinds whose targets are next tokens (labels per token, -100 where ignored): lm, and generation (chat
#: prompt + answer, the loss on the answer only; see gentask.py).
TOKEN_KINDS = ("lm", "generation")


def tokenize(examples: Sequence[dict], kind: str, tokenizer, max_length: int) -> list[dict]:
    """Features for classification / regression (text [+ text_pair] -> label) or lm (text -> itself)."""
    texts = [e["text"] for e in examples]
    if kind == "lm":
        enc = tokenizer(texts, truncation=True, max_length=max_length)
        features = [{k: enc[k][i] for k in ("input_ids", "attention_mask")} for i in range(len(texts))]
        for f in features:
            f["labels"] = list(f["input_ids"])
        return [f for f in features if len(f["input_ids"]) >= 2]  # a 1-token row has nothing to predict
    pairs = [e.get("text_pair") for e in examples]
    if any(p is not None for p in pairs):
        enc = tokenizer(texts, [p or "" for p in pairs], truncation=True, max_length=max_length)
    else:
        enc = tokenizer(texts, truncation=True, max_length=max_length)
    features = [{k: enc[k][i] for k in MODEL_INPUTS if k in enc} for i in range(len(texts))]
    for f, e in zip(features, examples):
        f["labels"] = e["label"]
    return features


def target_count(feature: dict, kind: str) -> int:
    """How many loss terms a feature contributes (tokens predicted for lm, else 1): lets every process
    normalise its share of a global batch by the global count, so N processes match one exactly."""
    if kind in TOKEN_KINDS:
        return sum(1 for t in feature["labels"][1:] if t != -100)
    return 1


def _pad_row(row: list, width: int, fill: int, left: bool = False) -> list:
    gap = [fill] * (width - len(row))
    return gap + row if left else row + gap


def pad_inputs(features: Sequence[dict], pad_token_id: int, left: bool = False) -> dict[str, torch.Tensor]:
    """The model inputs of ``features`` padded to the longest row (on the left for decoders that pad there),
    with an attention mask made from the lengths when the features carry none."""
    width = max(len(f["input_ids"]) for f in features)
    batch: dict[str, torch.Tensor] = {}
    for key in MODEL_INPUTS:
        if key in features[0]:
            fill = pad_token_id if key == "input_ids" else 0
            batch[key] = torch.tensor([_pad_row(f[key], width, fill, left) for f in features], dtype=torch.long)
    if "attention_mask" not in batch:
        batch["attention_mask"] = torch.tensor([_pad_row([1] * len(f["input_ids"]), width, 0, left) for f in features],
                                               dtype=torch.long)
    return batch


def collate(features: Sequence[dict], kind: str, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad a list of features to the longest one; returns model inputs and targets as tensors."""
    batch = pad_inputs(features, pad_token_id)
    width = batch["input_ids"].shape[1]
    if kind in TOKEN_KINDS:
        batch["labels"] = torch.tensor([_pad_row(f["labels"], width, -100) for f in features])
    elif kind == "qa":
        if "start_positions" in features[0]:
            batch["start_positions"] = torch.tensor([f["start_positions"] for f in features])
            batch["end_positions"] = torch.tensor([f["end_positions"] for f in features])
    else:
        dtype = torch.float32 if kind == "regression" else torch.long
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=dtype)
    return batch


def length_batches(features: Sequence[dict], batch_size: int) -> list[list[int]]:
    """Feature indices in batches of similar length (less padding): sorted by token count, then cut into
    ``batch_size`` runs. evaluate() and predict --input-file both batch this way, so their outputs agree."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    return [order[k: k + batch_size] for k in range(0, len(order), batch_size)]


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


def loss_sum(outputs, batch: dict, kind: str) -> torch.Tensor:
    """The *sum* of the per-target losses of a batch (the caller divides by the global target count).

    Computed here rather than by the model: a classification head an adapter brings may differ from the
    one the model was configured with, and the sum form is what makes data-parallel runs exact."""
    if kind == "classification":
        return F.cross_entropy(outputs.logits.float(), batch["labels"], reduction="sum")
    if kind == "regression":
        return F.mse_loss(outputs.logits.float().squeeze(-1), batch["labels"], reduction="sum")
    if kind == "qa":
        start = F.cross_entropy(outputs.start_logits.float(), batch["start_positions"], reduction="sum")
        end = F.cross_entropy(outputs.end_logits.float(), batch["end_positions"], reduction="sum")
        return (start + end) / 2
    logits = outputs.logits[:, :-1].float()  # lm / generation: token t predicts token t+1
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum")


__all__ = ["collate", "length_batches", "loss_sum", "model_inputs", "pad_inputs", "target_count", "tokenize"]

"""Evaluation, loading a trained result, and prediction: what ``train``, ``eval`` and ``predict`` share.

``evaluate`` runs the model over the validation features in length-sorted batches of a fixed size (features.length_batches);
``train`` records its numbers with this same function and ``eval`` reloads the saved result and calls it
again with the recorded batch size and max length, so both print bit-identical metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import adapterkit as ak
from . import metrics as M
from . import qa
from .features import collate, length_batches, loss_sum, model_inputs, target_count, tokenize
from .methods import ADAPTER_NAME, read_result_meta
from .models import load_model


class HeadMismatchError(ValueError):
    """A trained adapter/model does not fit the task it is used on."""


def build_features(examples: list[dict], kind: str, tokenizer, max_length: int, doc_stride: int) -> list[dict]:
    if kind == "qa":
        return qa.prepare_features(examples, tokenizer, max_length, doc_stride)
    return tokenize(examples, kind, tokenizer, max_length)


@torch.no_grad()
def evaluate(model, tokenizer, kind: str, metric: str, examples: list[dict], features: list[dict],
             batch_size: int, device: torch.device | str = "cpu") -> dict[str, float]:
    """Validation metrics (``main`` = the task's main metric) plus the mean validation ``loss``."""
    was_training = model.training
    model.eval()
    # Batches of similar length (less padding); results are put back in feature order.
    predictions, starts, ends = [None] * len(features), [None] * len(features), [None] * len(features)
    total_loss, total_targets = 0.0, 0
    for rows in length_batches(features, batch_size):
        chunk = [features[i] for i in rows]
        batch = {key: v.to(device) for key, v in collate(chunk, kind, tokenizer.pad_token_id).items()}
        out = model(**model_inputs(batch))
        total_loss += float(loss_sum(out, batch, kind))
        total_targets += sum(target_count(f, kind) for f in chunk)
        for j, i in enumerate(rows):
            if kind == "classification":
                predictions[i] = int(out.logits[j].argmax(-1))
            elif kind == "regression":
                predictions[i] = float(out.logits[j].squeeze(-1))
            elif kind == "qa":
                starts[i], ends[i] = out.start_logits[j].float().cpu().numpy(), out.end_logits[j].float().cpu().numpy()
    model.train(was_training)
    loss = total_loss / max(total_targets, 1)
    if kind == "lm":
        return M.compute_metrics(metric, [loss])
    if kind == "qa":
        answers = qa.postprocess(examples, features, starts, ends)
        result = M.compute_metrics(metric, answers, [e["answers"] for e in examples])
    else:
        result = M.compute_metrics(metric, predictions, [e["label"] for e in examples])
    return {**result, "loss": loss}


@dataclass
class Trained:
    """A trained result loaded for use: the model with its adapter active, and the run's metadata."""

    model: torch.nn.Module
    tokenizer: object
    meta: dict
    form: str  # "adapter" | "fusion" | "model"


def load_trained(adapter_dir: str | Path, model_name: str | None = None) -> Trained:
    """Load ``adapter_dir`` (the ``adapter/`` folder of a run) onto its base model (``model_name`` or the
    one recorded), or, for full / top-k runs, the saved model itself."""
    form, meta = read_result_meta(adapter_dir)
    kind = meta.get("kind", "classification")
    if form == "model":
        model, tokenizer = load_model(str(adapter_dir), kind=_model_kind(kind), labels=meta.get("label_names"))
    else:
        model, tokenizer = load_model(model_name or meta.get("model", "minilm"), kind=_model_kind(kind),
                                      labels=meta.get("label_names"))
        if form == "fusion":  # the fused adapters from the directories the run recorded, then the fusion
            for name, directory in meta["fused_adapters"].items():
                ak.load_adapter(model, directory, name=name)
            ak.set_active(model, ak.load_fusion(model, adapter_dir))
        else:
            ak.load_adapter(model, adapter_dir, name=ADAPTER_NAME)
            ak.set_active(model, ADAPTER_NAME)
    model.eval()
    return Trained(model, tokenizer, meta, form)


def _model_kind(kind: str) -> str:
    return kind if kind in ("classification", "regression", "qa", "lm") else "classification"


def check_task_fits(meta: dict, kind: str, label_names: list[str] | None, task_name: str) -> None:
    """Refuse to score an adapter on a task whose kind or labels differ from those it was trained on."""
    if meta.get("kind") and meta["kind"] != kind:
        raise HeadMismatchError(f"the adapter was trained for a {meta['kind']} task ({meta.get('task')}) but "
                                f"task {task_name!r} is {kind}; evaluate it on a task of the same kind")
    trained = meta.get("label_names")
    if kind == "classification" and trained is not None and list(trained) != list(label_names or []):
        raise HeadMismatchError(f"the adapter's head predicts labels {trained} but task {task_name!r} has "
                                f"{label_names}; use the task it was trained on ({meta.get('task')})")


@torch.no_grad()
def predict(trained: Trained, text: str, pair: str | None = None, max_new_tokens: int = 40) -> dict:
    """Label and scores (classification), a score (regression), an answer span (qa: text = question,
    pair = context), or a continuation (lm)."""
    model, tok, meta = trained.model, trained.tokenizer, trained.meta
    kind, max_length = meta.get("kind", "classification"), meta.get("max_length", 128)
    if kind == "lm":
        enc = {k: v for k, v in tok(text, return_tensors="pt").items() if k in ("input_ids", "attention_mask")}
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        return {"prompt": text, "generated": tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)}
    if kind == "qa":
        if pair is None:
            raise ValueError("QA predict needs a question and a context: adapterkit predict ... QUESTION CONTEXT")
        example = {"id": "0", "question": text, "context": pair, "answers": {"text": [], "answer_start": []}}
        features = qa.prepare_features([example], tok, max_length, meta.get("doc_stride", 128))
        batch = collate(features, "qa", tok.pad_token_id)
        out = model(**model_inputs(batch))
        answer = qa.postprocess([example], features, list(out.start_logits.numpy()), list(out.end_logits.numpy()))[0]
        return {"answer": answer}
    enc = tok(text, pair, truncation=True, max_length=max_length, return_tensors="pt")
    logits = model(**enc).logits[0].float()
    if kind == "regression":
        return {"score": float(logits.squeeze())}
    probs = torch.softmax(logits, -1).numpy()
    names = meta.get("label_names") or [str(i) for i in range(len(probs))]
    best = int(np.argmax(probs))
    return {"label": names[best], "scores": {n: float(p) for n, p in zip(names, probs)}}


__all__ = ["HeadMismatchError", "Trained", "build_features", "check_task_fits", "evaluate", "load_trained", "predict"]

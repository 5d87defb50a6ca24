"""Evaluation metrics (numpy only): GLUE-style classification/correlation scores, SQuAD v1.1
EM/F1 and perplexity.

All scores are fractions (accuracy 0.875, SQuAD F1 0.881), not percentages. Correlations of a
constant input are undefined; they are reported as 0.0 (like sklearn's MCC) so that metrics stay
valid JSON and comparable during model selection.

``compute_metrics(metric_set, predictions, references)`` returns a dict that always has "main",
the score used to pick checkpoints; ``higher_is_better(metric_set)`` says which way it points.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

#: metric_set -> (keys it returns besides "main", the key "main" copies)
METRIC_SETS: dict[str, tuple[tuple[str, ...], str]] = {
    "accuracy": (("accuracy",), "accuracy"),
    "f1_accuracy": (("f1", "accuracy"), "f1"),            # MRPC (GLUE reports F1 / accuracy)
    "mcc": (("mcc", "accuracy"), "mcc"),                   # CoLA
    "pearson_spearman": (("pearson", "spearman"), "pearson"),  # STS-B
    "squad": (("exact_match", "f1"), "f1"),
    "label_accuracy": (("accuracy",), "accuracy"),          # generated label words (generative tasks)
    "perplexity": (("loss", "perplexity"), "perplexity"),
}
_LOWER_IS_BETTER = {"perplexity"}


def _pair(predictions, references) -> tuple[np.ndarray, np.ndarray]:
    p, r = np.asarray(predictions), np.asarray(references)
    if p.shape != r.shape or p.ndim != 1:
        raise ValueError(f"predictions and references must be 1-d of equal length, "
                         f"got shapes {p.shape} and {r.shape}")
    if p.size == 0:
        raise ValueError("no predictions to score")
    return p, r


# --- classification --------------------------------------------------------------------

def accuracy(predictions, references) -> float:
    p, r = _pair(predictions, references)
    return float(np.mean(p == r))


def _f1_for(p: np.ndarray, r: np.ndarray, label) -> float:
    tp = int(np.sum((p == label) & (r == label)))
    fp = int(np.sum((p == label) & (r != label)))
    fn = int(np.sum((p != label) & (r == label)))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def f1(predictions, references, average: str = "binary", pos_label=1) -> float:
    """F1 of ``pos_label`` (average="binary") or the mean over the labels present in either
    predictions or references (average="macro")."""
    p, r = _pair(predictions, references)
    if average == "binary":
        return _f1_for(p, r, pos_label)
    if average == "macro":
        labels = np.union1d(p, r)
        return float(np.mean([_f1_for(p, r, label) for label in labels]))
    raise ValueError(f"average must be 'binary' or 'macro', got {average!r}")


def matthews_corrcoef(predictions, references) -> float:
    """Matthews correlation (multi-class form, equal to the usual one for two classes)."""
    p, r = _pair(predictions, references)
    labels = np.union1d(p, r)
    pred_counts = np.array([np.sum(p == c) for c in labels], dtype=float)
    true_counts = np.array([np.sum(r == c) for c in labels], dtype=float)
    correct, n = float(np.sum(p == r)), float(p.size)
    cov_pt = correct * n - pred_counts @ true_counts
    cov_pp = n * n - pred_counts @ pred_counts
    cov_tt = n * n - true_counts @ true_counts
    if cov_pp == 0 or cov_tt == 0:
        return 0.0
    return float(cov_pt / math.sqrt(cov_pp * cov_tt))


# --- correlation -----------------------------------------------------------------------

def pearson(x, y) -> float:
    a, b = _pair(x, y)
    a, b = a.astype(float) - a.mean(), b.astype(float) - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b / denom) if denom else 0.0


def rankdata(x) -> np.ndarray:
    """1-based ranks; tied values get the average of the ranks they span."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    starts = np.flatnonzero(np.r_[True, x[order][1:] != x[order][:-1]])   # first index of each tie run
    ends = np.r_[starts[1:], x.size]
    ranks = np.empty(x.size)
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + 1 + e) / 2
    return ranks


def spearman(x, y) -> float:
    """Spearman's rho: Pearson correlation of average ranks (handles ties like scipy)."""
    a, b = _pair(x, y)
    return pearson(rankdata(a), rankdata(b))


# --- SQuAD v1.1 ------------------------------------------------------------------------

_PUNCTUATION = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """The official SQuAD v1.1 normalisation: lowercase, drop punctuation, drop the articles
    a/an/the, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_exact_match(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def squad_f1(prediction: str, ground_truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def _gold_texts(reference) -> list[str]:
    """A reference is a gold string, a list of them, or a SQuAD answers dict {"text": [...]}."""
    if isinstance(reference, str):
        return [reference]
    if isinstance(reference, dict):
        reference = reference["answers"]["text"] if "answers" in reference else reference["text"]
    texts = list(reference)
    if not texts:
        raise ValueError("a SQuAD reference has no gold answer")
    return texts


def squad_scores(predictions: Sequence[str], references: Sequence) -> dict[str, float]:
    """Mean over questions of the max over gold answers, as the official v1.1 script does."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    em = f1_total = 0.0
    for pred, ref in zip(predictions, references):
        golds = _gold_texts(ref)
        em += max(squad_exact_match(pred, g) for g in golds)
        f1_total += max(squad_f1(pred, g) for g in golds)
    return {"exact_match": em / len(predictions), "f1": f1_total / len(predictions)}


# --- generated labels ------------------------------------------------------------------

def normalize_label(s: str) -> str:
    """A generated label word as scored: its first line, lowercased, without surrounding whitespace and
    punctuation ("Positive." and " positive\n..." both read "positive")."""
    first = s.strip().split("\n", 1)[0] if s.strip() else ""
    return first.strip().strip(string.punctuation + " \t").strip().lower()


def label_accuracy(predictions: Sequence[str], references: Sequence) -> float:
    """Exact-match accuracy of generated label words: a prediction is right when it reads as one of its
    gold words after :func:`normalize_label` (anything else, a longer sentence too, is wrong)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    hits = sum(normalize_label(p) in {normalize_label(g) for g in _gold_texts(r)}
               for p, r in zip(predictions, references))
    return hits / len(predictions)


# --- entry points ----------------------------------------------------------------------

def perplexity(mean_loss: float) -> float:
    """exp(mean token cross-entropy in nats); inf when that overflows."""
    return math.exp(mean_loss) if mean_loss < 700 else math.inf


def higher_is_better(metric_set: str) -> bool:
    """Whether a larger ``main`` is better (False only for perplexity)."""
    _check(metric_set)
    return metric_set not in _LOWER_IS_BETTER


def _check(metric_set: str) -> None:
    if metric_set not in METRIC_SETS:
        raise ValueError(f"unknown metric set {metric_set!r}; use one of {', '.join(METRIC_SETS)}")


def compute_metrics(metric_set: str, predictions, references=None) -> dict[str, float]:
    """Scores of ``predictions`` against ``references``; the dict always has "main".

    accuracy / f1_accuracy / mcc: class ids (f1 is the F1 of class 1).
    pearson_spearman: float scores.  squad: answer strings vs references (see _gold_texts).
    label_accuracy: generated strings vs gold label words (a string or a list of them per example).
    perplexity: predictions is the mean token loss (or a sequence of per-token losses, which
    are averaged); references is ignored.
    """
    _check(metric_set)
    if metric_set == "perplexity":
        losses = np.asarray(predictions, dtype=float)
        if losses.size == 0:
            raise ValueError("no loss to score")
        loss = float(losses.mean())
        out = {"loss": loss, "perplexity": perplexity(loss)}
    elif metric_set == "squad":
        out = squad_scores(list(predictions), list(references))
    elif metric_set == "label_accuracy":
        out = {"accuracy": label_accuracy(list(predictions), list(references))}
    elif metric_set == "pearson_spearman":
        out = {"pearson": pearson(predictions, references), "spearman": spearman(predictions, references)}
    else:
        out = {"accuracy": accuracy(predictions, references)}
        if metric_set == "f1_accuracy":
            out["f1"] = f1(predictions, references)
        elif metric_set == "mcc":
            out["mcc"] = matthews_corrcoef(predictions, references)
    out["main"] = out[METRIC_SETS[metric_set][1]]
    return out

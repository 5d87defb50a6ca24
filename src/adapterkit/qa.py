"""Extractive (SQuAD-style) QA: sliding-window features and span post-processing.

A context longer than ``max_length`` is cut into overlapping windows (``doc_stride`` tokens of overlap,
as in BERT's run_squad); each window is one feature. Training targets are the answer's token span, or the
[CLS] position (index 0) when the window does not contain the answer. At evaluation every window proposes
its ``n_best`` start/end positions; the best-scoring valid span over all windows of a question (inside the
context, start <= end, at most ``max_answer_length`` tokens) is mapped back to the context text with the
tokenizer's character offsets. Needs a fast tokenizer (offset mapping).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _encode(examples: Sequence[dict], tokenizer, max_length: int, doc_stride: int):
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("span QA needs a fast tokenizer (offset mappings); this model's tokenizer is not one")
    if doc_stride >= max_length // 2:
        raise ValueError(f"--doc-stride ({doc_stride}) must be well below --max-length ({max_length}); "
                         "use about max_length / 3")
    pad_right = tokenizer.padding_side == "right"
    return tokenizer(
        [e["question"].lstrip() for e in examples] if pad_right else [e["context"] for e in examples],
        [e["context"] for e in examples] if pad_right else [e["question"].lstrip() for e in examples],
        truncation="only_second" if pad_right else "only_first",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    ), (1 if pad_right else 0)


def prepare_features(examples: Sequence[dict], tokenizer, max_length: int, doc_stride: int) -> list[dict]:
    """One feature per window, with ``start_positions``/``end_positions`` (training targets; also used
    for the validation loss), ``example_index`` and ``offsets`` (character spans of context tokens, None
    elsewhere) for post-processing."""
    enc, context_id = _encode(examples, tokenizer, max_length, doc_stride)
    features = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        example = examples[enc["overflow_to_sample_mapping"][i]]
        sequence_ids = enc.sequence_ids(i)
        feature = {k: enc[k][i] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        context = [j for j, s in enumerate(sequence_ids) if s == context_id]
        start_tok = end_tok = 0
        answers = example.get("answers") or {"text": [], "answer_start": []}
        if answers["answer_start"] and context:
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            first, last = context[0], context[-1]
            if offsets[first][0] <= start_char and offsets[last][1] >= end_char:  # answer inside this window
                start_tok = first
                while start_tok <= last and offsets[start_tok][0] <= start_char:
                    start_tok += 1
                start_tok -= 1
                end_tok = last
                while end_tok >= first and offsets[end_tok][1] >= end_char:
                    end_tok -= 1
                end_tok += 1
        feature["start_positions"], feature["end_positions"] = start_tok, end_tok
        feature["example_index"] = int(enc["overflow_to_sample_mapping"][i])
        feature["offsets"] = [tuple(o) if s == context_id else None for o, s in zip(offsets, sequence_ids)]
        features.append(feature)
    return features


def postprocess(examples: Sequence[dict], features: Sequence[dict], start_logits: Sequence[np.ndarray],
                end_logits: Sequence[np.ndarray], n_best: int = 20, max_answer_length: int = 30) -> list[str]:
    """The best answer text for each example (empty when no window yields a valid span)."""
    by_example: dict[int, list[int]] = {}
    for i, f in enumerate(features):
        by_example.setdefault(f["example_index"], []).append(i)
    answers = []
    for e, example in enumerate(examples):
        best_score, best_text = -np.inf, ""
        for i in by_example.get(e, []):
            offsets, s_logits, e_logits = features[i]["offsets"], start_logits[i], end_logits[i]
            n = len(offsets)
            starts = np.argsort(s_logits[:n])[::-1][:n_best]
            ends = np.argsort(e_logits[:n])[::-1][:n_best]
            for s in starts:
                for t in ends:
                    if offsets[s] is None or offsets[t] is None or t < s or t - s + 1 > max_answer_length:
                        continue
                    score = s_logits[s] + e_logits[t]
                    if score > best_score:
                        best_score, best_text = score, example["context"][offsets[s][0]: offsets[t][1]]
        answers.append(best_text)
    return answers


__all__ = ["postprocess", "prepare_features"]

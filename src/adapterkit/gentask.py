"""Generative tasks on chat LMs: chat-template features with the loss on the answer only, greedy decoding,
and scoring of the generated text.

Features (``tokenize_chat``): the user turn goes through the tokenizer's own chat template
(``tokenizer.apply_chat_template(..., add_generation_prompt=True)``), then the answer's tokens and the
end-of-turn token follow. ``labels`` are -100 on every prompt token (and on padding, see
features.collate), so the loss is the answer's tokens plus the end-of-turn token that stops generation.
The ids are exactly the prefix of the tokenised full conversation up to the assistant's end-of-turn
(tests/test_gentask.py checks it on SmolLM2), i.e. what the model sees at inference.

Evaluation (``evaluate_generation``): greedy decoding (transformers' ``generate``, ``do_sample=False``) of
each prompt with left padding in length-sorted batches, at most ``max_new_tokens`` per example (the
task's budget), stopping at the end-of-turn token; the text is scored by the task's metric set
(``squad``: EM/F1 against every gold answer; ``label_accuracy``: the generated label word). The mean
answer-token loss (teacher forcing) is reported too.

Instruction tuning with the loss on responses only: Ouyang et al. 2022 (arXiv 2203.02155), and TRL's
``DataCollatorForCompletionOnlyLM`` / ``assistant_only_loss``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import metrics as M
from .features import collate, length_batches, loss_sum, model_inputs, pad_inputs, target_count

IGNORE = -100


def _check_chat(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("generative tasks need a chat model (its tokenizer has a chat template), e.g. --model "
                         "smollm2; this model's tokenizer has none")


def end_of_turn_id(tokenizer) -> int:
    """The token that ends an assistant turn (ChatML's <|im_end|> for SmolLM2): the eos token."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token to end a generated answer")
    return int(tokenizer.eos_token_id)


def prompt_ids(tokenizer, user: str) -> list[int]:
    """Token ids of a one-turn conversation up to where the assistant starts to write."""
    _check_chat(tokenizer)
    text = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_chat(examples: Sequence[dict], tokenizer, max_length: int, training: bool = True) -> list[dict]:
    """Features of generation examples: ``input_ids`` = prompt + answer + end-of-turn, ``labels`` = -100 on
    the prompt and the answer's ids after it, ``prompt_length``, ``example_index``.

    A training row longer than ``max_length`` is dropped (never cut: a cut answer teaches the model to stop
    mid-answer); a validation row keeps its whole prompt (generation needs it) and is never dropped."""
    _check_chat(tokenizer)
    eot = end_of_turn_id(tokenizer)
    features = []
    for i, e in enumerate(examples):
        prompt = prompt_ids(tokenizer, e["prompt"])
        answer = tokenizer(e["answer"], add_special_tokens=False)["input_ids"] + [eot]
        ids = prompt + answer
        if training and len(ids) > max_length:
            continue
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                         "labels": [IGNORE] * len(prompt) + answer, "prompt_length": len(prompt),
                         "example_index": i})
    return features


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int,
                    device: torch.device | str = "cpu") -> list[str]:
    """Greedy continuations of token-id prompts decoded in one batch (left padding), cut at end-of-turn."""
    eot = end_of_turn_id(tokenizer)
    batch = pad_inputs([{"input_ids": list(p)} for p in prompts], tokenizer.pad_token_id, left=True)
    batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eot,
                         pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
    new = out[:, batch["input_ids"].shape[1]:]  # (batch, <= max_new_tokens)
    texts = []
    for row in new.tolist():
        if eot in row:
            row = row[: row.index(eot)]
        texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return texts


@torch.no_grad()
def evaluate_generation(model, tokenizer, metric: str, examples: list[dict], features: list[dict],
                        batch_size: int, device: torch.device | str = "cpu") -> dict:
    """The task's metrics on greedy generations, plus the mean answer-token ``loss`` (teacher forcing).
    ``features`` are ``tokenize_chat(examples, ..., training=False)``: one per example, in order."""
    was_training = model.training
    model.eval()
    total_loss, total_targets = 0.0, 0
    generated: list[str | None] = [None] * len(examples)
    for rows in length_batches(features, batch_size):
        chunk = [features[i] for i in rows]
        batch = {k: v.to(device) for k, v in collate(chunk, "generation", tokenizer.pad_token_id).items()}
        total_loss += float(loss_sum(model(**model_inputs(batch)), batch, "generation"))
        total_targets += sum(target_count(f, "generation") for f in chunk)
        budget = max(examples[f["example_index"]].get("max_new_tokens", 32) for f in chunk)
        texts = greedy_generate(model, tokenizer, [f["input_ids"][: f["prompt_length"]] for f in chunk], budget, device)
        for f, text in zip(chunk, texts):
            generated[f["example_index"]] = text
    model.train(was_training)
    result = M.compute_metrics(metric, generated, [e["references"] for e in examples])
    return {**result, "loss": total_loss / max(total_targets, 1)}


def generate_one(model, tokenizer, user: str, max_new_tokens: int) -> str:
    """The model's greedy answer to one user message (``adapterkit predict`` on a generative task)."""
    model.eval()
    return greedy_generate(model, tokenizer, [prompt_ids(tokenizer, user)], max_new_tokens,
                           next(model.parameters()).device)[0]


__all__ = ["evaluate_generation", "generate_one", "greedy_generate", "prompt_ids", "tokenize_chat"]

"""Generative (instruction-style) tasks made from the offline data sets: the model reads a user message
and writes the answer as text.

Every example is ``{"prompt": str, "answer": str, "references": [str, ...], "max_new_tokens": int}``:
``prompt`` is the user turn (the model's chat template wraps it, see ``adapterkit.gentask``), ``answer``
the assistant turn trained on, ``references`` what a generation is scored against (SQuAD: every gold
answer; label tasks: the label word), ``max_new_tokens`` the generation budget at evaluation.

  squad-gen             SQuAD v1.1 (the same files and article split as task ``squad``). Caps, so that a
                        2-core CPU can train it: only questions whose paragraph has at most
                        SQUAD_MAX_CONTEXT_WORDS words (about 57% of the dev set's questions), and in training
                        only those whose first gold answer has at most SQUAD_MAX_ANSWER_WORDS words. The answer
                        trained on is the first gold answer; generations are scored by SQuAD EM/F1 against all.
  trec-gen              TREC coarse question type (task ``trec``'s split), the label as a word.
  rotten_tomatoes-gen   Rotten Tomatoes sentiment (task ``rotten_tomatoes``'s split): positive / negative.

The prompts state the allowed answers, so the instruct model can follow them before any training
(the zero-shot base model is a meaningful row of a results table).
"""
from __future__ import annotations

from collections.abc import Callable

from .base import SPLIT_SEED, DataError

SQUAD_MAX_CONTEXT_WORDS = 120
SQUAD_MAX_ANSWER_WORDS = 8
SQUAD_MAX_NEW_TOKENS = 24
LABEL_MAX_NEW_TOKENS = 6

#: Label words of the classification-as-generation tasks, in the source task's label order.
TREC_WORDS = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "human",
              "LOC": "location", "NUM": "number"}
ROTTEN_TOMATOES_WORDS = {"rotten": "negative", "fresh": "positive"}


def squad_prompt(question: str, context: str) -> str:
    return ("Answer the question with a short span copied from the passage.\n\n"
            f"Passage: {context.strip()}\n\nQuestion: {question.strip()}")


def trec_prompt(question: str) -> str:
    return ("What kind of answer does this question ask for? Reply with one word: abbreviation, "
            f"description, entity, human, location or number.\n\nQuestion: {question.strip()}")


def rotten_tomatoes_prompt(review: str) -> str:
    return ("Is the sentiment of this movie review positive or negative? Reply with one word.\n\n"
            f"Review: {review.strip()}")


def _squad_rows(examples: list[dict], training: bool) -> list[dict]:
    rows = []
    for e in examples:
        if len(e["context"].split()) > SQUAD_MAX_CONTEXT_WORDS:
            continue
        golds = list(e["answers"]["text"])
        if training and len(golds[0].split()) > SQUAD_MAX_ANSWER_WORDS:
            continue
        rows.append({"id": e["id"], "prompt": squad_prompt(e["question"], e["context"]),
                     "answer": golds[0].strip(), "references": golds, "max_new_tokens": SQUAD_MAX_NEW_TOKENS})
    return rows


def _label_rows(examples: list[dict], label_names: list[str], words: dict[str, str],
                prompt: Callable[[str], str]) -> list[dict]:
    rows = []
    for e in examples:
        word = words[label_names[e["label"]]]
        rows.append({"prompt": prompt(e["text"]), "answer": word, "references": [word],
                     "max_new_tokens": LABEL_MAX_NEW_TOKENS})
    return rows


#: name -> (source task, metric set, user-message builder for `predict`: (text, pair) -> prompt)
GENERATIVE = {
    "squad-gen": ("squad", "squad", lambda text, pair: squad_prompt(text, _need(pair, "squad-gen"))),
    "trec-gen": ("trec", "label_accuracy", lambda text, pair: trec_prompt(text)),
    "rotten_tomatoes-gen": ("rotten_tomatoes", "label_accuracy", lambda text, pair: rotten_tomatoes_prompt(text)),
}


def _need(pair: str | None, task: str) -> str:
    if pair is None:
        raise DataError(f"task {task!r} needs a question and a passage: adapterkit predict ... QUESTION PASSAGE")
    return pair


def user_prompt(task: str, text: str, pair: str | None = None) -> str:
    """The user message a generative task's model was trained on, for one input (``predict``)."""
    return GENERATIVE[task][2](text, pair)


def load_generative(name: str, data_dir=None, split_seed: int = SPLIT_SEED):
    """(train, validation, split info) of a generative task; the source task's split, converted."""
    from .offline import load_offline
    from .text import load_squad

    source, _, _ = GENERATIVE[name]
    if source == "squad":
        train, validation, info = load_squad(None, None, data_dir, split_seed)
        n_train, n_val = len(train), len(validation)
        train, validation = _squad_rows(train, training=True), _squad_rows(validation, training=False)
        info["generative"] = {"source_task": source, "max_context_words": SQUAD_MAX_CONTEXT_WORDS,
                              "max_train_answer_words": SQUAD_MAX_ANSWER_WORDS,
                              "kept": {"train": f"{len(train)}/{n_train}", "validation": f"{len(validation)}/{n_val}"},
                              "max_new_tokens": SQUAD_MAX_NEW_TOKENS}
        return train, validation, info
    words = TREC_WORDS if source == "trec" else ROTTEN_TOMATOES_WORDS
    prompt = trec_prompt if source == "trec" else rotten_tomatoes_prompt
    train, validation, label_names, info = load_offline(source, split_seed)
    info["generative"] = {"source_task": source, "label_words": {n: words[n] for n in label_names},
                          "max_new_tokens": LABEL_MAX_NEW_TOKENS}
    return (_label_rows(train, label_names, words, prompt), _label_rows(validation, label_names, words, prompt),
            info)


__all__ = ["GENERATIVE", "load_generative", "user_prompt"]

"""Tiny random models (saved with the bundled MiniLM tokenizer) and tiny task files for the training tests."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import torch
from transformers import (AutoTokenizer, BertConfig, BertForQuestionAnswering, BertForSequenceClassification, BertModel,
                          LlamaConfig, LlamaForCausalLM)

from adapterkit.models import resolve_model

POSITIVE = ["great", "wonderful", "moving", "brilliant", "funny", "charming", "superb", "delightful"]
NEGATIVE = ["dull", "boring", "awful", "tedious", "clumsy", "lifeless", "terrible", "bland"]
NOUNS = ["film", "movie", "story", "plot", "cast", "script", "picture", "drama"]


def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model("minilm"))


def bert_config(**overrides) -> BertConfig:
    tok = tokenizer()
    base = dict(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=128)
    return BertConfig(**{**base, **overrides})


def save_tiny_bert(directory: Path, qa: bool = False, num_labels: int | None = None, **overrides) -> Path:
    """A headless BertModel like MiniLM (any number of labels fits), a span-QA model, or with num_labels
    a classifier of that size."""
    torch.manual_seed(0)
    if qa:
        model = BertForQuestionAnswering(bert_config(**overrides))
    elif num_labels:
        model = BertForSequenceClassification(bert_config(num_labels=num_labels, **overrides))
    else:
        model = BertModel(bert_config(**overrides))
    model.save_pretrained(directory)
    tokenizer().save_pretrained(directory)
    return directory


def save_tiny_llama(directory: Path) -> Path:
    torch.manual_seed(0)
    tok = tokenizer()
    config = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        word = rng.choice(POSITIVE if label else NEGATIVE)
        rows.append({"sentence": f"a {word} {rng.choice(NOUNS)} , really {word}", "label": ["neg", "pos"][label]})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["sentence", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_sentiment(directory: Path, n_train: int = 48, n_val: int = 16) -> dict:
    """Files for task 'local'; returns the TrainConfig.data / CLI options."""
    directory.mkdir(parents=True, exist_ok=True)
    train = write_csv(directory / "train.csv", sentiment_rows(n_train, 0))
    val = write_csv(directory / "val.csv", sentiment_rows(n_val, 1))
    return {"train_file": str(train), "validation_file": str(val), "text_column": "sentence", "label_column": "label"}


def write_squad(path: Path, n_articles: int = 4) -> Path:
    rng = random.Random(0)
    data = []
    for a in range(n_articles):
        paragraphs = []
        for p in range(2):
            names = rng.sample(["alice", "bob", "carol", "dave", "erin", "frank"], 3)
            filler = " ".join(rng.choice(NOUNS) for _ in range(40))  # long enough for several windows
            context = f"{filler} the prize went to {names[0]} in paris . {filler} {names[1]} lives in rome ."
            start = context.index(names[0])
            paragraphs.append({"context": context, "qas": [
                {"id": f"{a}-{p}-0", "question": "who got the prize ?",
                 "answers": [{"text": names[0], "answer_start": start}]},
                {"id": f"{a}-{p}-1", "question": "who lives in rome ?",
                 "answers": [{"text": names[1], "answer_start": context.index(names[1] + " lives")}]}]})
        data.append({"title": f"article {a}", "paragraphs": paragraphs})
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


def write_text(path: Path, n: int = 60) -> Path:
    rng = random.Random(0)
    lines = [" ".join(rng.choice(NOUNS + POSITIVE) for _ in range(rng.randint(5, 15))) for _ in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def train_keeping_model(config):
    """``adapterkit.train.train(config)`` and the model it trained: (metrics, model)."""
    import pytest

    import adapterkit.train as T

    seen = {}
    real_prepare = T.prepare

    def spy(model, *args, **kwargs):
        seen["model"] = model
        return real_prepare(model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "prepare", spy)
        metrics = T.train(config)
    return metrics, seen["model"]

"""Extractive QA (SQuAD v1.1 JSON) and causal-LM text files.

SQuAD: ``train_file`` / ``validation_file``, else ``train-v1.1.json`` / ``dev-v1.1.json`` in
``data_dir`` (default ``$ADAPTERKIT_SQUAD_DIR``, else ``<cwd>/../shared/data/squad``). With only
one file, its articles are split 80/20 (seeded) so no paragraph sits on both sides.

LM: a .txt file holds one document per paragraph (paragraphs are separated by blank lines); a
.txt file without blank lines holds one document per non-empty line. .jsonl/.json/.csv/.tsv
files hold one document per row, in ``text_column`` (default ``text``). Without a validation
file, 10% of the documents are held out (seeded; identical documents stay together).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .base import SPLIT_SEED, VALIDATION_FRACTION, DataError, holdout_split
from .files import read_records

LM_VALIDATION_FRACTION = 0.1


def _squad_articles(path: Path, what: str) -> list[tuple[str, list[dict]]]:
    """[(title, [qa example, ...]), ...] from a SQuAD v1.1 JSON file."""
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist; give a SQuAD v1.1 JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{path} is not SQuAD JSON (a top-level 'data' list of articles)") from None
    articles = []
    for a_i, article in enumerate(data):
        examples = []
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                if qa.get("is_impossible") or not qa["answers"]:
                    raise DataError(f"{path}: question {qa['id']} has no answer; only SQuAD v1.1 "
                                    "(every question answerable) is supported")
                examples.append({
                    "id": str(qa["id"]), "question": qa["question"], "context": paragraph["context"],
                    "answers": {"text": [a["text"] for a in qa["answers"]],
                                "answer_start": [int(a["answer_start"]) for a in qa["answers"]]}})
        articles.append((article.get("title", f"article-{a_i}"), examples))
    if not any(examples for _, examples in articles):
        raise DataError(f"{path} has no questions")
    return articles


def _answer_mismatches(examples: list[dict]) -> int:
    """Gold answers whose text is not found at answer_start in the context."""
    count = 0
    for ex in examples:
        for text, start in zip(ex["answers"]["text"], ex["answers"]["answer_start"]):
            count += ex["context"][start:start + len(text)] != text
    return count


def load_squad(train_file=None, validation_file=None, data_dir=None, split_seed: int = SPLIT_SEED):
    """(train, validation, split info) of a SQuAD v1.1-format task."""
    if not train_file and not validation_file:
        folder = Path(data_dir or os.environ.get("ADAPTERKIT_SQUAD_DIR")
                      or Path.cwd().parent / "shared" / "data" / "squad")
        train_file = folder / "train-v1.1.json" if (folder / "train-v1.1.json").is_file() else None
        validation_file = folder / "dev-v1.1.json" if (folder / "dev-v1.1.json").is_file() else None
        if not train_file and not validation_file:
            raise DataError(f"no SQuAD files in {folder}; pass --train-file (SQuAD v1.1 JSON) "
                            "or --data-dir to a folder with train-v1.1.json / dev-v1.1.json")
    paths = [Path(p) for p in (train_file, validation_file) if p]
    info: dict = {"sources": [str(p.resolve()) for p in paths]}
    if len(paths) == 2:
        train = [e for _, ex in _squad_articles(paths[0], "--train-file") for e in ex]
        validation = [e for _, ex in _squad_articles(paths[1], "--validation-file") for e in ex]
        info["method"] = "given train / validation files"
    else:
        articles = _squad_articles(paths[0], "--train-file" if train_file else "--validation-file")
        rows = [dict(e, _article=title) for title, ex in articles for e in ex]
        train, validation, split = holdout_split(
            rows, fraction=VALIDATION_FRACTION, seed=split_seed, group=lambda r: r["_article"],
            group_label="article")
        split["validation_articles"] = sorted({r["_article"] for r in validation})
        split["train_articles"] = len({r["_article"] for r in train})
        info.update(split)
        train, validation = ([{k: v for k, v in r.items() if k != "_article"} for r in part]
                             for part in (train, validation))
    info["answer_start_mismatches"] = _answer_mismatches(train) + _answer_mismatches(validation)
    return train, validation, info


def read_documents(path, text_column: str | None = None, what: str = "--train-file") -> list[str]:
    """LM documents of one file (see the module doc for the rules)."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise DataError(f"{what} {path} does not exist; check the path")
        text = path.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
        docs = [p.strip() for p in re.split(r"\n[ \t]*\n", text) if p.strip()]
        if len(docs) == 1:
            docs = [line.strip() for line in text.split("\n") if line.strip()]
    else:
        records = read_records(path, what)
        column = text_column or "text"
        if column not in records[0]:
            raise DataError(f"{path}: no column {column!r} (columns: {', '.join(records[0])}); "
                            "pass --text-column")
        docs = [str(r.get(column) or "").strip() for r in records]
        docs = [d for d in docs if d]
    if not docs:
        raise DataError(f"{what} {path} has no text")
    return docs


def load_lm(train_file=None, validation_file=None, text_column=None, split_seed: int = SPLIT_SEED):
    """(train, validation, split info) of a causal-LM task."""
    if not train_file:
        raise DataError("task 'lm' needs --train-file (.txt, .jsonl, .json, .csv or .tsv)")
    train = [{"text": d} for d in read_documents(train_file, text_column, "--train-file")]
    info: dict = {"sources": [str(Path(p).resolve()) for p in (train_file, validation_file) if p],
                  "document_rule": "txt: blank-line-separated paragraphs (or lines if none); "
                                   "other files: one row per document"}
    if validation_file:
        validation = [{"text": d} for d in read_documents(validation_file, text_column, "--validation-file")]
        info["method"] = "given train / validation files"
    else:
        train, validation, split = holdout_split(
            train, fraction=LM_VALIDATION_FRACTION, seed=split_seed, group=lambda r: r["text"])
        info.update(split)
    return train, validation, info

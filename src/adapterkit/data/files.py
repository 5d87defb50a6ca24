"""User data files: CSV, TSV or JSON Lines with text / text-pair / label columns.

Column rules follow transformers' ``run_glue.py``: the label column is ``label`` unless named;
without ``text_column`` the first known layout present is used (sentence1+sentence2,
text+text_pair, question+passage, question+sentence, premise+hypothesis, sentence, text). When
``text_column`` is given, the pair column is only used if ``text_pair_column`` is given too.

Kind: labels that are all integers, or any non-numeric string, mean classification; numbers
with a fractional part (or written as floats, "1.0") mean regression. ``problem_type`` overrides
this. Class ids index ``label_names``: the sorted distinct training labels (numeric order for
numbers). A validation label not seen in training is an error.

Readers: .csv with standard quoting; .tsv with no quoting at all (GLUE style: quotes are text);
.jsonl (one object per line) or .json (a list of objects, or JSON Lines).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from .base import DataError, holdout_split, text_key

TEXT_COLUMN_GUESSES = (
    ("sentence1", "sentence2"), ("text", "text_pair"), ("question", "passage"),
    ("question", "sentence"), ("premise", "hypothesis"), ("sentence", None), ("text", None),
)
MAX_REGRESSION_LABEL = 1e15
PROBLEM_TYPES = {"classification": "classification", "single_label_classification": "classification",
                 "regression": "regression"}


def read_records(path: str | Path, what: str = "--train-file") -> list[dict]:
    """Rows of a .csv/.tsv/.jsonl/.json file as dicts (column -> value)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist; check the path")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8-sig", newline="") as fh:
            if suffix == ".tsv":
                reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            else:
                reader = csv.DictReader(fh)
            records = list(reader)
        bad = next((i for i, r in enumerate(records, start=2) if None in r or None in r.values()), None)
        if bad is not None:
            raise DataError(f"{path}:{bad} has a different number of fields than the header")
    elif suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8-sig")
        try:
            records = json.loads(text) if suffix == ".json" and text.lstrip().startswith("[") else [
                json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON{' Lines' if suffix == '.jsonl' else ''}: {exc}") from None
        if not all(isinstance(r, dict) for r in records):
            raise DataError(f"{path} must hold one JSON object per example")
    else:
        raise DataError(f"{what} {path}: unsupported file type {suffix or '(none)'}; "
                        "use .csv, .tsv, .jsonl or .json")
    if not records:
        raise DataError(f"{what} {path} has no examples")
    return records


def resolve_columns(columns, text_column=None, text_pair_column=None, label_column=None, *,
                    where: str, need_label: bool = True) -> tuple[str, str | None, str | None]:
    """(text, text_pair or None, label or None) column names, checked against ``columns``."""
    columns = list(columns)
    listed = ", ".join(map(str, columns))
    if text_column is None:
        for text, pair in TEXT_COLUMN_GUESSES:
            if text in columns and (pair is None or pair in columns):
                text_column, text_pair_column = text, text_pair_column or pair
                break
        else:
            raise DataError(f"{where}: no text column found (columns: {listed}); pass --text-column")
    for flag, col in (("--text-column", text_column), ("--text-pair-column", text_pair_column)):
        if col is not None and col not in columns:
            raise DataError(f"{where}: no column {col!r} for {flag} (columns: {listed})")
    label_column = label_column or ("label" if need_label or "label" in columns else None)
    if label_column is not None and label_column not in columns:
        raise DataError(f"{where}: no label column {label_column!r} (columns: {listed}); "
                        "pass --label-column")
    return text_column, text_pair_column, label_column


def _parse_label(value, where: str):
    """int, float or str form of one raw label."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return value
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: missing label; every example needs one")
    text = str(value).strip()
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def infer_kind(labels: list) -> str:
    """'classification' (ints or any string) or 'regression' (any float) for parsed labels."""
    if any(isinstance(v, str) for v in labels):
        return "classification"
    return "regression" if any(isinstance(v, float) for v in labels) else "classification"


def build_examples(train_records, validation_records, *, text_column=None, text_pair_column=None,
                   label_column=None, problem_type=None, label_names=None, where: str,
                   validation_where: str | None = None):
    """(train, validation, kind, label_names) from raw records.

    ``label_names`` given (e.g. a hub ClassLabel) means the labels already are class ids.
    ``validation_records`` may be None; then validation is None. ``where`` / ``validation_where``
    name the sources in error messages.
    """
    sources = {"train": where, "validation": validation_where or where}
    text_col, pair_col, label_col = resolve_columns(
        train_records[0].keys(), text_column, text_pair_column, label_column, where=where)

    def parsed(records, name):
        out = []
        for i, r in enumerate(records):
            at = f"{sources[name]} ({name} example {i})"
            missing = [c for c in (text_col, pair_col, label_col) if c is not None and c not in r]
            if missing:
                raise DataError(f"{at}: no column {missing[0]!r} (columns: {', '.join(r)})")
            text = "" if r[text_col] is None else str(r[text_col])
            pair = None if pair_col is None else ("" if r[pair_col] is None else str(r[pair_col]))
            out.append((text, pair, _parse_label(r[label_col], at)))
        return out

    train = parsed(train_records, "train")
    val = parsed(validation_records, "validation") if validation_records is not None else None
    if problem_type is not None and problem_type not in PROBLEM_TYPES:
        raise DataError(f"unknown problem type {problem_type!r}; use classification or regression")
    kind = PROBLEM_TYPES[problem_type] if problem_type else infer_kind([t[2] for t in train])

    given_ids = label_names is not None               # e.g. a hub ClassLabel: labels are ids
    if not given_ids and kind == "classification":
        values = {t[2] for t in train}
        numeric = all(isinstance(v, (int, float)) for v in values)
        label_names = [str(v) for v in (sorted(values) if numeric else sorted(map(str, values)))]
    index = {name: i for i, name in enumerate(label_names or [])}

    def finish(rows, name):
        out = []
        for i, (text, pair, label) in enumerate(rows):
            at = f"{sources[name]} ({name} example {i})"
            if kind == "regression":
                if isinstance(label, str):
                    raise DataError(f"{at}: label {label!r} is not a number; "
                                    "regression needs numeric labels")
                try:
                    label = float(label)
                except OverflowError:  # an integer too large for a float
                    label = math.inf
                if not abs(label) <= MAX_REGRESSION_LABEL:  # also NaN; training squares labels in float32
                    raise DataError(f"{at}: label {label!r} is not a finite number of magnitude at most "
                                    f"{MAX_REGRESSION_LABEL:g}; fix or rescale the labels")
            elif given_ids:
                if not (isinstance(label, int) and 0 <= label < len(label_names)):
                    raise DataError(f"{at}: label {label!r} is not a class id 0..{len(label_names) - 1}")
            elif str(label) in index:
                label = index[str(label)]
            else:
                raise DataError(f"{at}: label {label!r} does not occur in the training labels "
                                f"{label_names}; fix the file or its labels")
            out.append({"text": text, "text_pair": pair, "label": label})
        return out

    return finish(train, "train"), (finish(val, "validation") if val is not None else None), kind, label_names


def load_local(train_file, validation_file=None, *, text_column=None, text_pair_column=None,
               label_column=None, problem_type=None, split_seed: int = 0):
    """(train, validation, kind, label_names, split info) of user files."""
    if train_file is None:
        raise DataError("task 'local' needs --train-file (CSV, TSV or JSONL)")
    train_records = read_records(train_file, "--train-file")
    val_records = read_records(validation_file, "--validation-file") if validation_file else None
    train, validation, kind, label_names = build_examples(
        train_records, val_records, text_column=text_column, text_pair_column=text_pair_column,
        label_column=label_column, problem_type=problem_type, where=str(train_file),
        validation_where=str(validation_file) if validation_file else None)
    info: dict = {"sources": [str(Path(p).resolve()) for p in (train_file, validation_file) if p]}
    if validation is None:
        stratify = (lambda r: r["label"]) if kind == "classification" else None
        train, validation, split = holdout_split(train, seed=split_seed, stratify=stratify, group=text_key)
        info.update(split)
    else:
        info["method"] = "given train / validation files"
    return train, validation, kind, label_names, info

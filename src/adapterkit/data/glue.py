"""GLUE tasks from the official TSV files (the layout GLUE's download script writes).

The files are read with ``csv.QUOTE_NONE``: GLUE sentences contain unbalanced double quotes
that a quoting reader would merge across lines. Validation is the dev file (GLUE test labels
are hidden). The folder is ``data_dir``, else ``$ADAPTERKIT_GLUE_DIR``, else
``<cwd>/../shared/data/glue``; it holds one sub-folder per task (RTE/, MRPC/, ...).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from .base import DataError, count_overlap


@dataclass(frozen=True)
class GlueSpec:
    folder: str
    header: bool
    text: str | int                # column name (header files) or index (CoLA)
    pair: str | int | None
    label: str | int
    label_names: tuple[str, ...] | None   # None: regression
    label_is_index: bool           # label column holds the id ("0"/"1") rather than the name
    metric: str
    min_columns: int


GLUE = {
    "glue/rte": GlueSpec("RTE", True, "sentence1", "sentence2", "label",
                         ("entailment", "not_entailment"), False, "accuracy", 4),
    "glue/mrpc": GlueSpec("MRPC", True, "#1 String", "#2 String", "Quality",
                          ("not_equivalent", "equivalent"), True, "f1_accuracy", 5),
    "glue/cola": GlueSpec("CoLA", False, 3, None, 1,
                          ("unacceptable", "acceptable"), True, "mcc", 4),
    "glue/stsb": GlueSpec("STS-B", True, "sentence1", "sentence2", "score",
                          None, False, "pearson_spearman", 10),
    "glue/sst2": GlueSpec("SST-2", True, "sentence", None, "label",
                          ("negative", "positive"), True, "accuracy", 2),
    "glue/qnli": GlueSpec("QNLI", True, "question", "sentence", "label",
                          ("entailment", "not_entailment"), False, "accuracy", 4),
}


def glue_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The GLUE root folder (see module doc); DataError when none is found."""
    candidates = [data_dir] if data_dir else [
        os.environ.get("ADAPTERKIT_GLUE_DIR"), Path.cwd().parent / "shared" / "data" / "glue"]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    where = data_dir or "$ADAPTERKIT_GLUE_DIR or ../shared/data/glue"
    raise DataError(f"GLUE folder not found ({where}); pass --data-dir to the folder holding "
                    "RTE/, MRPC/, ... or use hf:glue/<task> when online")


def _task_dir(root: Path, spec: GlueSpec) -> Path:
    # Accept the GLUE root (RTE/ inside) or the task folder itself (train.tsv inside).
    if (root / spec.folder).is_dir():
        return root / spec.folder
    if (root / "dev.tsv").is_file():
        return root
    raise DataError(f"{root} has no {spec.folder}/ folder; pass --data-dir to the GLUE root folder")


def _read_tsv(path: Path, spec: GlueSpec, name: str) -> list[dict]:
    with open(path, encoding="utf-8-sig", newline="") as fh:   # -sig: MRPC files start with a BOM
        lines = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    header = lines.pop(0) if spec.header else None

    def col(key: str | int) -> int:
        if isinstance(key, int):
            return key
        if key not in header:
            raise DataError(f"{path} has no column {key!r} (columns: {', '.join(header)}); "
                            "is it an official GLUE file?")
        return header.index(key)

    text_i, label_i = col(spec.text), col(spec.label)
    pair_i = col(spec.pair) if spec.pair is not None else None
    rows = []
    for line_no, fields in enumerate(lines, start=2 if spec.header else 1):
        if len(fields) < spec.min_columns:
            raise DataError(f"{path}:{line_no} has {len(fields)} tab-separated fields, "
                            f"expected {spec.min_columns}; is it an official GLUE file?")
        raw = fields[label_i]
        try:
            if spec.label_names is None:
                label = float(raw)
            elif spec.label_is_index:
                label = int(raw)
                if not 0 <= label < len(spec.label_names):
                    raise ValueError
            else:
                label = spec.label_names.index(raw)
        except ValueError:
            raise DataError(f"{path}:{line_no}: bad {name} label {raw!r}") from None
        rows.append({"text": fields[text_i],
                     "text_pair": fields[pair_i] if pair_i is not None else None,
                     "label": label})
    if not rows:
        raise DataError(f"{path} has no examples")
    return rows


def load_glue(name: str, data_dir=None) -> tuple[list, list, list[str] | None, dict]:
    """(train, validation, label_names, split info) of a GLUE task."""
    spec = GLUE[name]
    folder = _task_dir(glue_dir(data_dir), spec)
    train_path, dev_path = folder / "train.tsv", folder / "dev.tsv"
    for path in (train_path, dev_path):
        if not path.is_file():
            hint = (" (only the QNLI dev set is available offline; use hf:glue/qnli when online)"
                    if name == "glue/qnli" else "")
            raise DataError(f"{name}: missing {path}{hint}")
    train, validation = _read_tsv(train_path, spec, name), _read_tsv(dev_path, spec, name)
    info = {"sources": [str(train_path.resolve()), str(dev_path.resolve())],
            "method": "GLUE train / dev files",
            "validation_rows_also_in_train": count_overlap(train, validation)}
    return train, validation, list(spec.label_names) if spec.label_names else None, info

"""``hf:NAME[/CONFIG]`` tasks: Hugging Face hub datasets through the ``datasets`` library.

``datasets`` is imported only here, lazily; it is not a dependency of adapterkit. Names:
``hf:imdb``, ``hf:glue/sst2`` (NAME/CONFIG), ``hf:nyu-mll/glue/sst2`` (ORG/NAME/CONFIG). With
one slash, NAME/CONFIG is tried first and the whole string as a repository id second.

Validation split: ``validation``, else the first ``validation*`` split (e.g. MNLI's
``validation_matched``), else ``test`` when it is labelled, else a seeded 20% holdout of train.
Kind: ``problem_type`` if given; question+context+answers columns: qa; a ClassLabel label:
classification with its names; a label column: inferred as for local files; only text: lm.
"""
from __future__ import annotations

from .base import SPLIT_SEED, DataError, holdout_split, text_key
from .files import build_examples, resolve_columns

_LM_COLUMNS = ("text", "content", "document")


def _load_dataset(spec: str):
    try:
        import datasets
    except ImportError:
        raise DataError(f"hf:{spec} needs the datasets library: pip install datasets") from None
    parts = spec.split("/")
    attempts = [(spec, None)]
    if len(parts) >= 2:
        attempts.insert(0, ("/".join(parts[:-1]), parts[-1]))
    if len(parts) > 2:                      # ORG/NAME/CONFIG: never the whole string as a repo
        attempts = attempts[:1]
    errors = []
    for path, config in attempts:
        try:
            return datasets.load_dataset(path, config), path, config
        except Exception as exc:            # network, missing repo, unknown config...
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            errors.append(f"{path}{' config ' + config if config else ''}: {first_line}")
    raise DataError(f"could not load hf:{spec} from the hub ({'; '.join(errors)}); "
                    "check the name and your connection, or use a local file with --train-file")


def _pick_validation(ds, label_column: str | None) -> str | None:
    names = list(ds.keys())
    if "validation" in names:
        return "validation"
    prefixed = sorted(n for n in names if n.startswith("validation"))
    if prefixed:
        return prefixed[0]
    if "test" in names:
        test = ds["test"]
        if label_column is None or label_column not in test.column_names:
            return "test"
        labels = test[label_column]
        if any(v is not None and v != -1 for v in labels):   # GLUE hides test labels as -1
            return "test"
    return None


def _lm_rows(split, column: str) -> list[dict]:
    texts = (str(r[column]).strip() for r in split if r[column] is not None)
    return [{"text": t} for t in texts if t]


def _qa_rows(split) -> list[dict]:
    return [{"id": str(r.get("id", i)), "question": r["question"], "context": r["context"],
             "answers": {"text": list(r["answers"]["text"]),
                         "answer_start": [int(s) for s in r["answers"]["answer_start"]]}}
            for i, r in enumerate(split)]


def load_hf(name: str, *, text_column=None, text_pair_column=None, label_column=None,
            problem_type=None, split_seed: int = SPLIT_SEED):
    """(train, validation, kind, label_names, split info) of ``hf:...`` tasks."""
    spec = name[3:] if name.startswith("hf:") else name
    ds, path, config = _load_dataset(spec)
    if "train" not in ds:
        raise DataError(f"hf:{spec} has no train split (splits: {', '.join(ds.keys())})")
    columns = ds["train"].column_names
    where = f"hf:{spec}"
    if problem_type is None:
        if {"question", "context", "answers"} <= set(columns):
            problem_type = "qa"
        elif (label_column or "label") in columns:
            problem_type = None              # classification / regression, decided below
        elif text_column or any(c in columns for c in _LM_COLUMNS):
            problem_type = "lm"
        else:
            raise DataError(f"{where}: no label column (columns: {', '.join(columns)}); "
                            "pass --label-column, or --problem-type lm with --text-column")
    label_col = None if problem_type in ("qa", "lm") else (label_column or "label")
    val_name = _pick_validation(ds, label_col)
    info = {"sources": [f"hub dataset {path}" + (f" config {config}" if config else "")],
            "validation_split": val_name or "holdout of train"}

    if problem_type == "qa":
        train = _qa_rows(ds["train"])
        validation = _qa_rows(ds[val_name]) if val_name else None
        kind, label_names = "qa", None
    elif problem_type == "lm":
        col = text_column or next(c for c in _LM_COLUMNS if c in columns)
        if col not in columns:
            raise DataError(f"{where}: no column {col!r} (columns: {', '.join(columns)})")
        train = _lm_rows(ds["train"], col)
        validation = _lm_rows(ds[val_name], col) if val_name else None
        kind, label_names = "lm", None
    else:
        feature = ds["train"].features.get(label_col)
        label_names = list(feature.names) if hasattr(feature, "names") else None
        text_col, pair_col, _ = resolve_columns(columns, text_column, text_pair_column, label_col, where=where)

        def records(split):                  # -1 marks an unlabelled row (GLUE test sets)
            return [r for r in ds[split].to_list() if r[label_col] is not None and r[label_col] != -1]
        train, validation, kind, label_names = build_examples(
            records("train"), records(val_name) if val_name else None, text_column=text_col,
            text_pair_column=pair_col, label_column=label_col,
            problem_type=problem_type or ("classification" if label_names else None),
            label_names=label_names, where=where)
    if not train:
        raise DataError(f"{where}: the train split has no usable examples")
    if validation is None:
        stratify = (lambda r: r["label"]) if kind == "classification" else None
        group = text_key if kind in ("classification", "regression") else None
        train, validation, split = holdout_split(train, seed=split_seed, stratify=stratify, group=group)
        info.update(split)
    return train, validation, kind, label_names, info

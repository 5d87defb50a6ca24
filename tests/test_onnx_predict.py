"""adapterkit predict --input-file --onnx OUT/: the graph `export --format onnx` wrote, run by ONNX Runtime
through the same file handling as the PyTorch path; on real rotten_tomatoes validation rows it gives PyTorch's
labels on every row, scores within 1e-4, and eval's accuracy from the written file; bad --onnx directories and a
missing onnxruntime are one error line with nothing written."""

from __future__ import annotations

import json
import sys

import pytest
from test_batch_predict import _cli, interrupted_at_chunk, rotten_run, tiny_adapter  # noqa: F401 (tiny_adapter: a fixture)

from adapterkit import batch_predict
from adapterkit.export import ONNX_META_FILE
from adapterkit.metrics import compute_metrics

TOL = 1e-4  # the acceptance bound (issue 17): ONNX Runtime vs PyTorch on MiniLM


@pytest.fixture(scope="module")
def rotten_export(tmp_path_factory, minilm_dir):
    """A MiniLM adapter run on 48 real validation rows, exported once (an export takes ~25 s on 2 cores)."""
    root = tmp_path_factory.mktemp("onnx-predict")
    adapter, validation, gold, names = rotten_run(root, minilm_dir, 48)
    r = _cli("export", "--adapter", adapter, "--format", "onnx", "--output", root / "onnx")
    assert r.exit_code == 0, r.output
    return root, adapter, validation, gold, names


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_onnx_predictions_are_pytorchs_and_reproduce_evals_accuracy(rotten_export, tmp_path):
    root, adapter, validation, gold, names = rotten_export
    meta = json.loads((root / "onnx" / ONNX_META_FILE).read_text())
    assert meta["info"]["eval_batch_size"] == 32 and meta["label_names"] == names  # batched as eval batches
    r = _cli("eval", "--adapter", adapter, "--json")
    assert r.exit_code == 0, r.output
    accuracy = json.loads(r.output.strip().splitlines()[-1])["accuracy"]
    for source, path in (("--adapter", adapter), ("--onnx", root / "onnx")):
        r = _cli("predict", source, path, "--input-file", validation, "--output", tmp_path / f"{source[2:]}.jsonl",
                 "--quiet")
        assert r.exit_code == 0, r.output
    torch_preds, onnx_preds = _lines(tmp_path / "adapter.jsonl"), _lines(tmp_path / "onnx.jsonl")
    assert [p["index"] for p in onnx_preds] == list(range(48))
    assert [p["label"] for p in onnx_preds] == [p["label"] for p in torch_preds]
    diff = max(abs(o["scores"][n] - t["scores"][n]) for o, t in zip(onnx_preds, torch_preds) for n in names)
    assert diff <= TOL
    predicted = [names.index(p["label"]) for p in onnx_preds]
    assert compute_metrics("accuracy", predicted, gold)["accuracy"] == accuracy
    assert 0.0 < accuracy < 1.0 and len(set(predicted)) == 2  # both labels occur: not a trivial agreement
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.jsonl", "onnx.jsonl"]


def test_an_interrupted_onnx_run_resumes_to_the_same_file_and_not_with_another_model(rotten_export, tmp_path,
                                                                                      monkeypatch):
    root, adapter, validation, _, _ = rotten_export
    monkeypatch.setattr(batch_predict, "CHUNK_ROWS", 7)
    whole = tmp_path / "whole.jsonl"
    batch_predict.predict_file(None, str(validation), str(whole), onnx=str(root / "onnx"), progress=False)
    out = tmp_path / "preds.jsonl"
    with interrupted_at_chunk(3):
        batch_predict.predict_file(None, str(validation), str(out), onnx=str(root / "onnx"), progress=False)
    r = _cli("predict", "--adapter", adapter, "--input-file", validation, "--output", out, "--resume", "--quiet")
    assert r.exit_code == 1 and "written for another input file or model" in r.output  # never mixes two models
    r = _cli("predict", "--onnx", root / "onnx", "--input-file", validation, "--output", out, "--resume", "--quiet")
    assert r.exit_code == 0 and "resumed after row 14" in r.output, r.output
    assert out.read_bytes() == whole.read_bytes()


def _fake_export(directory, **meta):
    directory.mkdir()
    (directory / "model.onnx").write_bytes(b"")
    (directory / ONNX_META_FILE).write_text(json.dumps({
        "adapterkit_onnx_format": 1, "model_file": "model.onnx", "kind": "classification", "label_names": None,
        "max_length": 16, **meta}))
    return directory


BAD = {  # name -> (make the --onnx argument from (tmp_path, adapter dir), other arguments, words of the error)
    "missing": (lambda t, a: t / "nope", [], "does not exist; an ONNX export is a directory"),
    "a file": (lambda t, a: a / "adapter_config.json", [], "is not a directory"),
    "an adapter dir": (lambda t, a: a, [], "is not an adapterkit ONNX export (no adapterkit_onnx.json); make one with"),
    "bad json": (lambda t, a: _fake_export(t / "x").joinpath(ONNX_META_FILE).write_text("{") and t / "x", [],
                 "is not readable JSON"),
    "foreign json": (lambda t, a: (t / "x").mkdir() or (t / "x" / ONNX_META_FILE).write_text("[]") and t / "x", [],
                     "is not an adapterkit ONNX export's"),
    "newer format": (lambda t, a: _fake_export(t / "x", adapterkit_onnx_format=2), [], "format 2"),
    "no graph": (lambda t, a: _fake_export(t / "x", model_file="gone.onnx"), [], "no graph file 'gone.onnx'"),
    "escaping graph": (lambda t, a: _fake_export(t / "x", model_file="../model.onnx"), [], "no graph file"),
    "corrupt graph": (lambda t, a: _fake_export(t / "x"), [], "ONNX Runtime cannot load"),
    "qa export": (lambda t, a: _fake_export(t / "x", kind="qa"), [], "classification and regression"),
    "with --adapter": (lambda t, a: t / "nope", ["--adapter", "ADAPTER"], "exactly one of --adapter"),
    "with --model": (lambda t, a: t / "nope", ["--model", "minilm"], "--model does not apply to --onnx"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_onnx_directories_and_options_are_one_error_line_and_write_nothing(case, tmp_path, tiny_adapter):
    make, args, words = BAD[case]
    (tmp_path / "in.csv").write_text("text\na fine film\n")
    onnx_dir = make(tmp_path, tiny_adapter)
    out = tmp_path / "out"
    out.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    args = [str(tiny_adapter) if a == "ADAPTER" else a for a in args]
    r = _cli("predict", "--onnx", onnx_dir, "--input-file", tmp_path / "in.csv", "--output", out / "p.jsonl",
             "--quiet", *args)
    assert r.exit_code == 1 and r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
    assert words in r.output, r.output
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == before


def test_predict_needs_one_source_and_onnx_only_scores_files(tmp_path):
    (tmp_path / "in.csv").write_text("text\na fine film\n")
    for args, words in [(["--input-file", tmp_path / "in.csv", "--output", tmp_path / "p.jsonl"], "exactly one of"),
                        (["a fine film"], "give --adapter DIR"),
                        (["--onnx", tmp_path, "a fine film"], "--onnx scores files")]:
        r = _cli("predict", *args)
        assert r.exit_code == 1 and r.output.startswith("error: ") and words in r.output, r.output
    assert [p.name for p in tmp_path.iterdir()] == ["in.csv"]


def test_without_onnxruntime_the_error_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "in.csv").write_text("text\na fine film\n")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    r = _cli("predict", "--onnx", _fake_export(tmp_path / "x"), "--input-file", tmp_path / "in.csv",
             "--output", tmp_path / "p.jsonl")
    assert r.exit_code == 1
    assert r.output == "error: predict --onnx needs onnxruntime (not installed); pip install 'adapterkit[onnx]'\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "x"]

"""ONNX export (adapterkit.export.onnx): ONNX Runtime reproduces PyTorch on the bundled MiniLM for an adapter of
each placement and a regression head, on real padded text; the adapter path is in the graph (zeroing it in
PyTorch moves the logits far outside the tolerance); dynamic axes; the output directory rules; the CLI."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import load_minilm, tiny_model
from transformers import AutoTokenizer
from typer.testing import CliRunner

import adapterkit as ak
import adapterkit.export.onnx as E
from adapterkit.cli import app
from adapterkit.data import load_task
from adapterkit.export import ONNX_META_FILE, OnnxExportError, export_model_onnx
from adapterkit.export.onnx import INT8_FILE, MODEL_FILE, run_onnx
from adapterkit.copies import ModuleCopies
from adapterkit.layers import BottleneckLayer
from adapterkit.model import adapter_modules

from train_helpers import save_tiny_bert

runner = CliRunner()
TOL = 1e-4  # the acceptance bound (issue 17): ONNX Runtime vs PyTorch logits on MiniLM


@pytest.fixture(scope="module")
def rotten_batch(minilm_dir):
    """16 real validation reviews of different lengths (shortest to longest), padded to the longest."""
    rows = load_task("rotten_tomatoes").validation
    texts = sorted((r["text"] for r in rows[:200]), key=len)[::12][:16]
    assert len({len(t.split()) for t in texts}) > 8  # really different lengths: padding matters
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    return dict(tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt"))


def randomise(model, name: str, seed: int = 0) -> None:
    """Untrained but far from identity: every tensor of the adapter (bottlenecks, norm copies, head) moves."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ak.adapter_parameters(model, name):
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def torch_outputs(model, batch) -> np.ndarray:
    with torch.no_grad():
        return model(**batch).logits.numpy()


def holders(model, kind):
    return [h for _, h in adapter_modules(model) if isinstance(h, kind)]


PLACEMENTS = {  # placement -> (AdapterConfig fields, head, task kind)
    "houlsby": (dict(), 3, "classification"),
    "pfeiffer": (dict(train_embedding_norm=True), "regression", "regression"),
    "parallel": (dict(scaling=2.0, site="after_dropout"), 2, "classification"),
}


@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_minilm_onnx_runtime_matches_pytorch_and_needs_the_adapter(placement, minilm_dir, rotten_batch, tmp_path):
    fields, head, kind = PLACEMENTS[placement]
    model = load_minilm(minilm_dir)
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    ak.add_adapter(model, "t", ak.AdapterConfig(size=8, placement=placement, **fields), head=head)
    randomise(model, "t")
    out = export_model_onnx(model, tok, tmp_path / "onnx", "t", kind=kind, max_length=128)

    ak.set_active(model, "t")
    want = torch_outputs(model, rotten_batch)
    got = run_onnx(out / MODEL_FILE, rotten_batch)[0]
    assert got.shape == want.shape == (16, 1 if kind == "regression" else head)
    assert np.abs(got - want).max() <= TOL

    # The adapter's tensors are in the graph by name, and each part of the adapter path changes the logits by
    # far more than the tolerance: a graph without it could not pass the check above.
    names = {i.name for i in onnx.load(str(out / MODEL_FILE)).graph.initializer}
    assert any(n.endswith(".adapters.adapters.t.down.bias") for n in names)  # (weights are stored transposed)
    with torch.no_grad():
        for h in holders(model, BottleneckLayer):
            h.adapters["t"].up.weight.zero_()
            h.adapters["t"].up.bias.zero_()
    without_bottlenecks = torch_outputs(model, rotten_batch)
    assert np.abs(got - without_bottlenecks).max() > 100 * TOL
    with torch.no_grad():
        for h in holders(model, ModuleCopies):
            if h.role == "layer_norm":
                for n, p in h.adapters["t"].named_parameters():
                    p.copy_(h._base.get_parameter(n))  # the copy back to the base norm's values
    assert np.abs(without_bottlenecks - torch_outputs(model, rotten_batch)).max() > 100 * TOL

    meta = json.loads((out / ONNX_META_FILE).read_text())
    assert meta["kind"] == kind and meta["adapter"]["name"] == "t" and meta["adapter"]["config"]["placement"] == placement
    assert meta["base_model"] == ak.fingerprint(model) and meta["parity"]["max_abs_diff"] <= TOL
    assert AutoTokenizer.from_pretrained(out)("a film")["input_ids"] == tok("a film")["input_ids"]


# ---- tiny models: shapes, kinds, the directory rules ------------------------------------------------------
_TRACES: dict = {}  # id(model) -> the program traced from it (a trace takes seconds even for a tiny model)


def _cached_trace(wrapper, example, input_names, output_names):
    key = id(wrapper.model)
    if key not in _TRACES:
        _TRACES[key] = _real_trace(wrapper, example, input_names, output_names)
    return _TRACES[key]


_real_trace = E._trace


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, minilm_dir):
    """A tiny BERT (MiniLM's tokenizer) with a randomised Houlsby adapter, exported once with int8. The tests
    that use it are about what is written where, not about tracing: they reuse its trace (``reuse_trace``)."""
    model = tiny_model("bert", vocab_size=30522)
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    ak.add_adapter(model, "t", ak.AdapterConfig(size=4), head=2)
    randomise(model, "t")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(E, "_trace", _cached_trace)
        out = export_model_onnx(model, tok, tmp_path_factory.mktemp("tiny") / "onnx", "t", label_names=["neg", "pos"],
                                quantize="int8", info={"task": "demo"})
    yield model, tok, out
    _TRACES.clear()


@pytest.fixture
def reuse_trace(monkeypatch, tiny_export):
    monkeypatch.setattr(E, "_trace", _cached_trace)
    return tiny_export


@pytest.mark.parametrize("shape", [(1, 1), (1, 16), (7, 40)])
def test_dynamic_batch_and_sequence_axes(tiny_export, shape):
    model, _, out = tiny_export
    graph = onnx.load(str(out / MODEL_FILE)).graph
    assert {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in graph.input} == {
        n: ["batch", "sequence"] for n in ("input_ids", "attention_mask", "token_type_ids")}
    g = torch.Generator().manual_seed(shape[0] * 100 + shape[1])
    ids = torch.randint(1000, 30000, shape, generator=g)
    mask = torch.ones_like(ids)
    mask[0, shape[1] // 2 + 1:] = 0  # a padded row
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    ak.set_active(model, "t")
    assert np.abs(run_onnx(out / MODEL_FILE, batch)[0] - torch_outputs(model, batch)).max() <= TOL


def test_export_writes_tokenizer_labels_and_int8_beside_the_graph(tiny_export):
    model, tok, out = tiny_export
    meta = json.loads((out / ONNX_META_FILE).read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(meta["files"] + [ONNX_META_FILE])
    assert {MODEL_FILE, INT8_FILE, "tokenizer.json"} <= set(meta["files"])
    assert meta["label_names"] == ["neg", "pos"] and meta["outputs"] == ["logits"] and meta["info"] == {"task": "demo"}
    assert meta["adapter"]["tensors_sha256"] == ak.export.onnx.adapter_digest(model, "t")
    batch = dict(tok(["a good film", "bad"], padding=True, return_tensors="pt"))
    fp32, int8 = run_onnx(out / MODEL_FILE, batch)[0], run_onnx(out / INT8_FILE, batch)[0]
    assert int8.shape == fp32.shape and 0 < np.abs(int8 - fp32).max() < 0.05  # quantised: close, not equal
    assert not list(out.parent.glob(".onnx.*"))  # no temporary directory left


def test_qa_model_exports_start_and_end_logits(tmp_path, minilm_dir):
    model = ak.add_adapter(_tiny_qa(), "qa", ak.AdapterConfig(size=4))
    randomise(model, "qa")
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    out = export_model_onnx(model, tok, tmp_path / "qa", "qa", kind="qa")
    batch = dict(tok(["who?", "where is it?"], ["alice went home", "the cat sat on the mat today"], padding=True,
                     return_tensors="pt"))
    ak.set_active(model, "qa")
    with torch.no_grad():
        want = model(**batch)
    start, end = run_onnx(out / MODEL_FILE, batch)
    assert np.abs(start - want.start_logits.numpy()).max() <= TOL and np.abs(end - want.end_logits.numpy()).max() <= TOL


def _tiny_qa():
    import transformers
    from transformers import AutoConfig

    from conftest import TINY

    torch.manual_seed(0)
    config = AutoConfig.for_model("bert", **{**TINY["bert"][0], "vocab_size": 30522})
    return transformers.AutoModelForQuestionAnswering.from_config(config).eval()


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["roberta", "distilbert", "electra", "deberta-v2", "mpnet", "xlm-roberta",
                                        "gpt2", "llama"])
def test_other_presets_export_with_parity(model_type, tmp_path, minilm_dir):
    """The other text presets (tiny random models, MiniLM's tokenizer for ids): about 20-80 s each on 2 cores."""
    model = tiny_model(model_type, vocab_size=30522)
    ak.add_adapter(model, "t", ak.AdapterConfig(size=4), head=2)
    randomise(model, "t")
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    out = export_model_onnx(model, tok, tmp_path / "onnx", "t")
    batch = dict(tok(["hello there my friend, how are you", "x", "a b c"], padding=True, return_tensors="pt"))
    meta = json.loads((out / ONNX_META_FILE).read_text())
    batch = {k: v for k, v in batch.items() if k in meta["inputs"]}
    ak.set_active(model, "t")
    assert np.abs(run_onnx(out / MODEL_FILE, batch)[0] - torch_outputs(model, batch)).max() <= TOL


def test_refuses_a_directory_it_did_not_write_and_replaces_its_own(reuse_trace, tmp_path):
    model, tok, _ = reuse_trace
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a directory adapterkit exported"):
        export_model_onnx(model, tok, foreign, "t")
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    out = export_model_onnx(model, tok, tmp_path / "ours", "t")
    before = (out / MODEL_FILE).stat().st_ino
    export_model_onnx(model, tok, out, "t")  # an earlier export is replaced whole
    assert (out / MODEL_FILE).stat().st_ino != before
    (out / "extra.txt").write_text("added by the user")
    with pytest.raises(FileExistsError, match="extra.txt"):
        export_model_onnx(model, tok, out, "t")
    assert (out / "extra.txt").read_text() == "added by the user"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "ours"]


def test_a_failed_check_writes_nothing_and_keeps_an_earlier_export(reuse_trace, tmp_path, monkeypatch):
    model, tok, earlier = reuse_trace
    out = shutil.copytree(earlier, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(E, "TOLERANCE", -1.0)  # any difference, even 0, fails the parity check
    with pytest.raises(OnnxExportError, match="differ from PyTorch"):
        export_model_onnx(model, tok, out, "t")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_bad_requests_fail_before_exporting(tiny_export, tmp_path):
    model, tok, _ = tiny_export
    for kwargs, words in [(dict(kind="lm"), "KV-cache"), (dict(quantize="int4"), "int8"), (dict(adapter="nope"), "nope")]:
        with pytest.raises(OnnxExportError, match=words):
            export_model_onnx(model, tok, tmp_path / "out", **{"adapter": "t", **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_missing_packages_name_the_extra(tiny_export, tmp_path, monkeypatch):
    model, tok, _ = tiny_export
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(OnnxExportError, match=r"onnxruntime .*pip install 'adapterkit\[onnx\]'"):
        export_model_onnx(model, tok, tmp_path / "out", "t")
    assert list(tmp_path.iterdir()) == []


# ---- the CLI ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A trained-run-like adapter directory on a tiny BERT saved to disk (what `adapterkit train` writes)."""
    root = tmp_path_factory.mktemp("cli-onnx")
    bert = save_tiny_bert(root / "bert")
    model = _load_tiny(bert)
    ak.add_adapter(model, "task", ak.AdapterConfig(size=4), head=ak.HeadConfig("classification", num_labels=2,
                                                                                labels=("neg", "pos")))
    randomise(model, "task")
    meta = {"model": str(bert), "task": "local", "kind": "classification", "label_names": ["neg", "pos"],
            "max_length": 32, "method": "adapter"}
    ak.save_adapter(model, "task", root / "adapter", extra=meta)
    return root, bert


def _load_tiny(bert: Path):
    from adapterkit.models import load_model

    return load_model(str(bert), labels=["neg", "pos"])[0]


def test_cli_export_matches_the_loaded_adapter(saved_run):
    root, bert = saved_run
    result = runner.invoke(app, ["export", "--adapter", str(root / "adapter"), "--format", "onnx",
                                 "--output", str(root / "onnx")])
    assert result.exit_code == 0, result.output
    assert "ONNX Runtime vs PyTorch" in result.output
    meta = json.loads((root / "onnx" / ONNX_META_FILE).read_text())
    assert meta["label_names"] == ["neg", "pos"] and meta["max_length"] == 32 and meta["info"]["task"] == "local"
    assert meta["adapter"]["name"] == "task" and meta["info"]["adapter_config_sha256"]

    from adapterkit.evaluation import load_trained

    trained = load_trained(root / "adapter")
    tok = AutoTokenizer.from_pretrained(root / "onnx")
    batch = dict(tok(["a great film", "dull and far too long, really"], padding=True, return_tensors="pt"))
    assert np.abs(run_onnx(root / "onnx" / MODEL_FILE, batch)[0] - torch_outputs(trained.model, batch)).max() <= TOL


@pytest.mark.parametrize("args,words", [
    (["--format", "tflite"], ["--format", "onnx"]),
    (["--quantize", "int4"], ["int8"]),
])
def test_cli_export_bad_options_one_error_line(saved_run, args, words):
    root, _ = saved_run
    out = root / "bad-out"
    result = runner.invoke(app, ["export", "--adapter", str(root / "adapter"), "--output", str(out), *args])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(w in lines[0] for w in words), lines
    assert not out.exists()


def test_cli_export_without_onnx_packages_says_how_to_install(saved_run, monkeypatch):
    root, _ = saved_run
    monkeypatch.setitem(sys.modules, "onnx", None)
    result = runner.invoke(app, ["export", "--adapter", str(root / "adapter"), "--output", str(root / "none")])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: ONNX export needs onnx (not installed); pip install 'adapterkit[onnx]'"
    assert not (root / "none").exists()

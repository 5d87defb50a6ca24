"""Issue 13 (CLI / training side): --overwrite deletes only adapterkit runs, hostile adapter configs and
extreme option values end in one ``error:`` line (exit 1, nothing written), unknown models fail fast, your
own files imply task local, and run directories follow the umask."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import adapterkit.models as models_module
from adapterkit.cli import app
from adapterkit.runs import MARKER

from train_helpers import save_tiny_bert, write_csv, write_sentiment

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("harden")
    data = write_sentiment(root / "data", n_train=16, n_val=8)
    args = ["--train-file", data["train_file"], "--validation-file", data["validation_file"],
            "--text-column", "sentence", "--label-column", "label"]
    return {"root": root, "bert": str(save_tiny_bert(root / "bert")), "data_args": args}


def train_args(tiny, output, *extra) -> list[str]:
    return ["train", "--model", tiny["bert"], "--task", "local", "--output", str(output), "--epochs", "1",
            "--batch-size", "8", "--adapter-size", "4", "--quiet", *tiny["data_args"], *extra]


@pytest.fixture(scope="module")
def trained(tiny):
    out = tiny["root"] / "run"
    result = runner.invoke(app, train_args(tiny, out))
    assert result.exit_code == 0, result.output
    return out


def one_error_line(result, *words: str) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


# ---- 1. --overwrite replaces only what adapterkit wrote -----------------------------------------------------
def test_run_directory_has_the_marker(trained):
    assert json.loads((trained / MARKER).read_text())["adapterkit_run"] == 1
    assert {p.name for p in trained.iterdir()} == {MARKER, "metrics.json", "adapter", "curves.png"}


@pytest.mark.parametrize("layout", ["unrelated", "run-plus-notes", "file", "symlink"])
def test_overwrite_refuses_what_adapterkit_did_not_write(tiny, trained, tmp_path, layout):
    out = tmp_path / "out"
    if layout == "unrelated":
        out.mkdir()
        (out / "thesis.tex").write_text("years of work")
        (out / "data").mkdir()
        (out / "data" / "x.csv").write_text("a,b\n")
    elif layout == "run-plus-notes":  # a real run, with a file the user put beside it
        os.system(f"cp -r {trained} {out}")
        (out / "notes.txt").write_text("mine")
    elif layout == "file":
        out.write_text("not a directory")
    else:
        os.system(f"cp -r {trained} {tmp_path / 'real'}")
        out.symlink_to(tmp_path / "real")
    before = tree(tmp_path)
    result = runner.invoke(app, train_args(tiny, out, "--overwrite"))
    line = one_error_line(result, str(out), "nothing was replaced")
    assert "--output" in line
    assert tree(tmp_path) == before
    assert not list(tmp_path.glob(".out.partial*"))


def test_overwrite_replaces_a_run_and_a_legacy_run(tiny, trained, tmp_path):
    out = tmp_path / "out"
    os.system(f"cp -r {trained} {out}")
    (out / "metrics.json").write_text(json.dumps({"old": True}))
    result = runner.invoke(app, train_args(tiny, out, "--overwrite"))
    assert result.exit_code == 0, result.output
    assert "old" not in json.loads((out / "metrics.json").read_text())
    (out / MARKER).unlink()  # as written before the marker existed: metrics.json + adapter/adapter_config.json
    (out / "metrics.json").write_text(json.dumps({"old": True}))
    result = runner.invoke(app, train_args(tiny, out, "--overwrite"))
    assert result.exit_code == 0, result.output
    assert (out / MARKER).is_file() and "old" not in json.loads((out / "metrics.json").read_text())
    assert not list(tmp_path.glob(".out*"))
    empty = tmp_path / "empty"  # e.g. made by a job script: nothing to lose
    empty.mkdir()
    result = runner.invoke(app, train_args(tiny, empty, "--overwrite"))
    assert result.exit_code == 0 and (empty / MARKER).is_file(), result.output


def test_a_foreign_partial_directory_is_not_cleared(tiny, tmp_path):
    out = tmp_path / "out"
    partial = tmp_path / ".out.partial"
    partial.mkdir()
    (partial / "keep.me").write_text("mine")
    one_error_line(runner.invoke(app, train_args(tiny, out)), str(partial))
    assert (partial / "keep.me").read_text() == "mine" and not out.exists()


def test_sweep_does_not_replace_a_foreign_run_directory(tiny, tmp_path):
    out = tmp_path / "sweep"
    foreign = out / "runs" / "lr0.001-m4-e1"
    foreign.mkdir(parents=True)
    (foreign / "metrics.json").write_text("{}")  # stale-looking, but no adapter/: not a run adapterkit wrote
    args = ["sweep", "--model", tiny["bert"], "--output", str(out), "--lrs", "1e-3", "--sizes", "4",
            "--epochs", "1", "--batch-size", "8", "--quiet", *tiny["data_args"]]
    one_error_line(runner.invoke(app, args), str(foreign))
    assert (foreign / "metrics.json").read_text() == "{}"


# ---- 6. group-readable -----------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_run_files_follow_the_umask(tiny, tmp_path, umask):
    out = tmp_path / "o"
    previous = os.umask(umask)
    try:
        result = runner.invoke(app, train_args(tiny, out))
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    for path in [out, *out.rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == expected, (path, oct(path.stat().st_mode))


# ---- 3. hostile adapter configs: info / predict / eval ---------------------------------------------------
def _nested(depth: int):
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value


HOSTILE = {
    "files-list": lambda c: {**c, "files": ["adapter_model.safetensors"]},
    "files-value": lambda c: {**c, "files": {"adapter_model.safetensors": 5}},
    "base-model-str": lambda c: {**c, "base_model": "bert"},
    "extra-list": lambda c: {**c, "extra": [1, 2]},
    "extra-best-str": lambda c: {**c, "extra": {**c["extra"], "best": "x", "label_names": 3}},
    "deep-nesting": lambda c: {**c, "extra": _nested(100_000)},
    "layers-99": lambda c: {**c, "config": {**c["config"], "layers": [99]}},
    "huge-size": lambda c: {**c, "config": {**c["config"], "size": 10**12}},
    "size-str": lambda c: {**c, "config": {**c["config"], "size": "64"}},
    "not-an-object": lambda c: [c],
}


@pytest.fixture(scope="module")
def hostile(trained, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    config = json.loads((trained / "adapter" / "adapter_config.json").read_text())
    dirs = {}
    for name, change in HOSTILE.items():
        target = root / name / "adapter"
        os.system(f"cp -r {trained} {root / name}")
        text = json.dumps(change(config)) if name != "deep-nesting" else \
            json.dumps({**config, "extra": "X"}).replace('"X"', '{"a":' * 100_000 + "1" + "}" * 100_000)
        (target / "adapter_config.json").write_text(text)
        dirs[name] = target
    return dirs


@pytest.mark.parametrize("name", list(HOSTILE))
@pytest.mark.parametrize("command", ["info", "predict", "eval"])
def test_hostile_adapter_config_is_one_error_line(hostile, name, command):
    adapter = str(hostile[name])
    args = {"info": ["info", adapter], "predict": ["predict", "--adapter", adapter, "a fine film"],
            "eval": ["eval", "--adapter", adapter]}[command]
    before = tree(hostile[name].parent)
    one_error_line(runner.invoke(app, args))
    assert tree(hostile[name].parent) == before


# ---- 3. bad training input -----------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["1e308", "-1e309", "nan", "1" + "0" * 400])
def test_regression_label_out_of_range_names_the_row(tiny, tmp_path, value):
    rows = [{"sentence": f"text {i}", "label": f"{0.5 * i}"} for i in range(12)]
    rows[5]["label"] = value
    data = write_csv(tmp_path / "reg.csv", rows)
    out = tmp_path / "o"
    args = ["train", "--model", tiny["bert"], "--output", str(out), "--train-file", str(data), "--quiet"]
    one_error_line(runner.invoke(app, args), "example 5", "rescale")
    assert not out.exists() and not list(tmp_path.glob(".o.partial*"))


def test_max_length_above_the_models_limit(tiny, tmp_path):
    out = tmp_path / "o"
    one_error_line(runner.invoke(app, train_args(tiny, out, "--max-length", "100000")), "128", "--max-length")
    assert not out.exists() and not list(tmp_path.glob(".o.partial*"))


def test_huge_adapter_size_is_refused_before_allocating(tiny, tmp_path):
    out = tmp_path / "o"
    started = time.perf_counter()
    one_error_line(runner.invoke(app, train_args(tiny, out, "--adapter-size", str(10**12))), "--adapter-size", "128")
    assert time.perf_counter() - started < 30 and not out.exists()


_INTS = st.one_of(st.integers(-3, 3), st.sampled_from([0, 7, 64, 129, 2**31, 2**63, 10**30, -(10**30)]))
_FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0.0, -0.0, 1e-3, 0.5, 1.0, 1e308, -1e308]))
_OPTIONS = {"--batch-size": _INTS, "--eval-batch-size": _INTS, "--max-length": _INTS, "--doc-stride": _INTS,
            "--max-train": _INTS, "--max-validation": _INTS, "--seed": _INTS, "--adapter-size": _INTS,
            "--top-layers": _INTS, "--lr": _FLOATS, "--warmup": _FLOATS, "--init-std": _FLOATS,
            "--head-lr": _FLOATS, "--probe-epochs": _INTS, "--lr-reference-size": _INTS}


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "25")), deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=not os.environ.get("FUZZ_EXAMPLES"))  # CI: the same examples every run; FUZZ_EXAMPLES=N explores
@given(values=st.fixed_dictionaries({}, optional=_OPTIONS), method=st.sampled_from(["adapter", "top-k", "head"]))
def test_train_numeric_options_never_give_a_traceback(tiny, tmp_path_factory, values, method):
    out = tmp_path_factory.mktemp("fuzz") / "o"
    extra = [part for option, value in values.items() for part in (option, str(value))]
    result = runner.invoke(app, train_args(tiny, out, "--method", method, *extra))
    if result.exit_code == 0:
        assert (out / "metrics.json").is_file()
    else:
        one_error_line(result)
        assert not out.exists()
    assert not list(out.parent.glob(".o.partial*"))


# ---- 4. unknown model names fail fast ------------------------------------------------------------------
@pytest.mark.parametrize("online", [False, True])
def test_unknown_model_fails_fast_in_one_line(tiny, tmp_path, monkeypatch, online):
    if online:  # the hub is asked once (no network here: refused at once; online: no such model)
        monkeypatch.setattr(models_module, "hub_offline", lambda: False)
    out = tmp_path / "o"
    started = time.perf_counter()
    result = runner.invoke(app, train_args(tiny, out, "--model", "nosuchmodel"))
    line = one_error_line(result, "nosuchmodel", "minilm", "mpnet", "smollm2", "local")
    assert time.perf_counter() - started < 10
    if not online:
        assert "offline" in line


# ---- 5. --train-file implies --task local ----------------------------------------------------------------
def test_train_file_implies_task_local(tiny, tmp_path):
    out = tmp_path / "o"
    args = ["train", "--model", tiny["bert"], "--output", str(out), "--epochs", "1", "--batch-size", "8",
            "--adapter-size", "4", "--quiet", *tiny["data_args"]]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["task"] == "local"


def test_train_file_with_a_named_task_is_one_clear_error(tiny, tmp_path):
    out = tmp_path / "o"
    args = ["train", "--model", tiny["bert"], "--task", "rotten_tomatoes", "--output", str(out), *tiny["data_args"]]
    one_error_line(runner.invoke(app, args), "rotten_tomatoes", "--train-file", "--task local")


# ---- the adapter path, and what eval needs to know ---------------------------------------------------------
def test_a_missing_adapter_path_and_a_run_directory_are_named(trained, tmp_path):
    for command in (["info", str(tmp_path / "nope")], ["predict", "--adapter", str(tmp_path / "nope"), "x"],
                    ["eval", "--adapter", str(tmp_path / "nope")]):
        one_error_line(runner.invoke(app, command), "does not exist")
    one_error_line(runner.invoke(app, ["predict", "--adapter", str(trained), "x"]),
                   "is a training run, not its adapter", str(trained / "adapter"))


def test_eval_of_an_adapter_with_no_recorded_task_asks_for_one(tiny, trained, tmp_path):
    """An adapter without a recorded task (one converted from AdapterHub, say) is not scored on a guessed task."""
    import adapterkit as ak
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny["bert"], num_labels=2)
    name = ak.load_adapter(model, str(trained / "adapter"))
    bare = tmp_path / "bare"
    ak.save_adapter(model, name, bare)  # no extra: no task, seed or data recorded
    one_error_line(runner.invoke(app, ["eval", "--adapter", str(bare), "--model", tiny["bert"]]),
                   "records no task", "--task")
    given = runner.invoke(app, ["eval", "--adapter", str(bare), "--model", tiny["bert"], "--threads", "1",
                                *tiny["data_args"]])  # your own files: task local
    assert given.exit_code == 0, given.output
    assert "local: 8 validation examples" in given.stdout


@pytest.mark.parametrize("option", ["--lrs", "--sizes", "--epochs"])
def test_sweep_names_the_option_that_is_not_a_number_list(tmp_path, option):
    result = runner.invoke(app, ["sweep", "--output", str(tmp_path / "s"), option, "abc"])
    one_error_line(result, f"{option} expects comma-separated numbers", "'abc'")
    assert not (tmp_path / "s").exists()


def test_the_lm_task_on_an_encoder_is_refused(tiny, tmp_path):
    """transformers would put an untrained LM head on BERT and train it: refused, naming the fix."""
    text = tmp_path / "docs.txt"
    text.write_text("\n".join(f"line {i} of some plain text to model" for i in range(12)) + "\n")
    result = runner.invoke(app, ["train", "--model", tiny["bert"], "--task", "lm", "--train-file", str(text),
                                 "--output", str(tmp_path / "lm"), "--quiet"])
    one_error_line(result, "is not a causal LM", "--model smollm2")
    assert not (tmp_path / "lm").exists()

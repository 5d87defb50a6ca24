"""The command line: happy paths on a tiny model, and every bad input ending in one line, exit != 0 and no
output left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import adapterkit.train as T
from adapterkit.cli import app

from train_helpers import save_tiny_bert, sentiment_rows, write_csv, write_sentiment

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = write_sentiment(root / "data")
    args = ["--train-file", data["train_file"], "--validation-file", data["validation_file"],
            "--text-column", "sentence", "--label-column", "label"]
    return {"root": root, "bert": str(save_tiny_bert(root / "bert")), "data_args": args}


def train_args(tiny, output, *extra) -> list[str]:
    return ["train", "--model", tiny["bert"], "--task", "local", "--output", str(output), "--epochs", "1",
            "--batch-size", "8", "--quiet", *tiny["data_args"], *extra]


@pytest.fixture(scope="module")
def trained(tiny):
    out = tiny["root"] / "run"
    result = runner.invoke(app, train_args(tiny, out))
    assert result.exit_code == 0, result.output
    return out


def test_train_prints_table_and_writes_run(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["method"] == "adapter" and metrics["adapter_size"] == 64


def test_eval_table_and_json(trained):
    table = runner.invoke(app, ["eval", "--adapter", str(trained / "adapter")])
    assert table.exit_code == 0 and "accuracy" in table.stdout
    as_json = runner.invoke(app, ["eval", "--adapter", str(trained / "adapter"), "--json"])
    best = json.loads((trained / "metrics.json").read_text())["best"]
    assert json.loads(as_json.stdout)["main"] == best["main"]


def test_predict_and_info(trained):
    result = runner.invoke(app, ["predict", "--adapter", str(trained / "adapter"), "a great film"])
    assert result.exit_code == 0 and result.stdout.split("\n")[0] in ("neg", "pos")
    as_json = runner.invoke(app, ["predict", "--adapter", str(trained / "adapter"), "a great film", "--json"])
    assert set(json.loads(as_json.stdout)["scores"]) == {"neg", "pos"}
    info = runner.invoke(app, ["info", str(trained / "adapter")])
    assert info.exit_code == 0
    for word in ("size 64", "houlsby", "labels", "weights_sha256", "trainable", "best"):
        assert word in info.stdout
    counts = json.loads((trained / "adapter" / "adapter_config.json").read_text())["parameters"]
    assert f"adapter {counts['adapter_params']:,}, layer_norm {counts['layer_norm_params']:,}" in info.stdout


def test_sweep_writes_tables_and_continues(tiny, monkeypatch):
    out = tiny["root"] / "sweep"
    args = ["sweep", "--model", tiny["bert"], "--task", "local", "--output", str(out), "--lrs", "1e-3,1e-2",
            "--sizes", "4", "--epochs", "1", "--batch-size", "8", "--quiet", *tiny["data_args"]]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    summary = json.loads((out / "sweep.json").read_text())
    assert len(summary["runs"]) == 2 and summary["best"]["name"] in {r["name"] for r in summary["runs"]}
    assert "| run |" in (out / "sweep.md").read_text()
    monkeypatch.setattr(T, "_train_epoch", lambda *a, **k: pytest.fail("finished runs must not retrain"))
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and again.stdout.count("done before") == 2


# ---- errors -------------------------------------------------------------------------------------------
def assert_clean_failure(result, output: Path, *words: str) -> None:
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]
    assert not output.exists()
    assert not list(output.parent.glob(f".{output.name}.partial*"))


def test_unknown_model(tiny, tmp_path):
    out = tmp_path / "o"
    result = runner.invoke(app, train_args(tiny, out) + ["--model", str(tmp_path / "no-such-model")])
    assert_clean_failure(result, out, "no-such-model")


def test_unknown_task(tiny, tmp_path):
    out = tmp_path / "o"
    result = runner.invoke(app, ["train", "--model", tiny["bert"], "--task", "no_such_task", "--output", str(out)])
    assert_clean_failure(result, out, "no_such_task")


def test_missing_column(tiny, tmp_path):
    out = tmp_path / "o"
    args = train_args(tiny, out)
    args[args.index("--text-column") + 1] = "nope"
    assert_clean_failure(runner.invoke(app, args), out, "nope")


def test_empty_dataset(tiny, tmp_path):
    out = tmp_path / "o"
    empty = tmp_path / "empty.csv"
    empty.write_text("sentence,label\n")
    args = ["train", "--model", tiny["bert"], "--task", "local", "--output", str(out), "--train-file", str(empty)]
    assert_clean_failure(runner.invoke(app, args), out)


def test_labels_unseen_in_training(tiny, tmp_path):
    out = tmp_path / "o"
    rows = sentiment_rows(8, 2) + [{"sentence": "a so-so film", "label": "meh"}]
    args = train_args(tiny, out)
    args[args.index("--validation-file") + 1] = str(write_csv(tmp_path / "val.csv", rows))
    assert_clean_failure(runner.invoke(app, args), out, "meh")


def test_model_head_does_not_fit_task(tiny, tmp_path):
    out = tmp_path / "o"
    three = save_tiny_bert(tmp_path / "three-labels", num_labels=3)
    result = runner.invoke(app, train_args(tiny, out) + ["--model", str(three)])
    assert_clean_failure(result, out, "head")


def test_adapter_head_does_not_fit_task(trained, tmp_path):
    rows = [{"sentence": f"text {i}", "label": ["a", "b", "c"][i % 3]} for i in range(12)]
    data = write_csv(tmp_path / "three.csv", rows)
    result = runner.invoke(app, ["eval", "--adapter", str(trained / "adapter"), "--task", "local",
                                 "--train-file", str(data), "--text-column", "sentence", "--label-column", "label"])
    assert_clean_failure(result, tmp_path / "nothing", "labels")


def test_nan_loss(tiny, tmp_path, monkeypatch):
    out = tmp_path / "o"
    real = T.loss_sum
    monkeypatch.setattr(T, "loss_sum", lambda *a: real(*a) * torch.tensor(float("nan")))
    assert_clean_failure(runner.invoke(app, train_args(tiny, out)), out, "nan", "--lr")


def test_existing_output_is_not_overwritten(trained):
    before = (trained / "metrics.json").read_text()
    result = runner.invoke(app, ["train", "--output", str(trained), "--task", "no_such_task"])
    assert result.exit_code != 0 and "already exists" in result.stderr
    assert (trained / "metrics.json").read_text() == before


def test_bad_method_and_adapter_dir(tiny, tmp_path):
    out = tmp_path / "o"
    assert_clean_failure(runner.invoke(app, train_args(tiny, out, "--method", "prefix")), out, "prefix")
    result = runner.invoke(app, ["eval", "--adapter", str(tmp_path)])
    assert_clean_failure(result, tmp_path / "nothing", "adapter")


def test_adapter_layers_and_init_std_options(tiny, tmp_path):
    out = tmp_path / "upper"
    result = runner.invoke(app, train_args(tiny, out, "--adapter-layers", "1", "--init-std", "0.05"))
    assert result.exit_code == 0, result.output
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["config"]["layers"] == [1] and config["config"]["init_std"] == 0.05
    assert config["head"]["train_pooler"] is False


def test_train_pooler_option_trains_the_heads_own_pooler_copy(tiny, trained, tmp_path):
    out = tmp_path / "pooler"
    result = runner.invoke(app, train_args(tiny, out, "--train-pooler"))
    assert result.exit_code == 0, result.output
    head = json.loads((out / "adapter" / "adapter_config.json").read_text())["head"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert head["train_pooler"] is True and metrics["train_pooler"] is True
    default = json.loads((trained / "metrics.json").read_text())  # the same run without the flag
    assert default["train_pooler"] is False
    assert metrics["trainable_params"] - default["trainable_params"] == 32 * 32 + 32  # the pooler copy: d * d + d
    as_json = runner.invoke(app, ["eval", "--adapter", str(out / "adapter"), "--json"])  # loads back as saved
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["main"] == metrics["best"]["main"]


@pytest.mark.parametrize("layers, message", [("x,1", "layer indices"), ("5", "out of range"), ("", "layer indices")])
def test_bad_adapter_layers(tiny, tmp_path, layers, message):
    out = tmp_path / "o"
    assert_clean_failure(runner.invoke(app, train_args(tiny, out, "--adapter-layers", layers)), out, message)

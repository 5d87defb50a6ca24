"""The sweep grid: only the adapter method varies the adapter size; every other method trains once per
(lr, epochs), not once per size (issue 14)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import adapterkit.sweep as S
from adapterkit.cli import app
from adapterkit.methods import METHODS
from adapterkit.train import TrainConfig

from train_helpers import save_tiny_bert, write_sentiment


def fake_train(calls):
    def train(config: TrainConfig) -> dict:
        calls.append(config)
        metrics = {"metric": "accuracy", "best": {"epoch": 1, "main": config.lr}, "trainable_pct": 1.0,
                   "train_seconds": 0.0, "config": config.recorded()}
        S.Path(config.output).mkdir(parents=True)
        (S.Path(config.output) / "metrics.json").write_text(json.dumps(metrics))
        return metrics

    return train


@pytest.mark.parametrize("method", METHODS)
def test_only_the_adapter_method_is_trained_once_per_size(method, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(S, "train", fake_train(calls))
    fuse = ("a", "b") if method == "fusion" else ()  # fusion needs the adapter directories it fuses
    summary = S.sweep(TrainConfig(output="unused", method=method, fuse=fuse), tmp_path, lrs=[1e-3, 1e-2], sizes=[4, 8, 16],
                      epochs=[1, 2])
    names = [r["name"] for r in summary["runs"]]
    if method == "adapter":
        assert len(calls) == 2 * 3 * 2 and [c.adapter_size for c in calls[:3]] == [4, 4, 8]
        assert names[:2] == ["lr0.001-m4-e1", "lr0.001-m4-e2"] and summary["grid"]["adapter_size"] == [4, 8, 16]
    else:
        assert len(calls) == 2 * 2 and names == ["lr0.001-e1", "lr0.001-e2", "lr0.01-e1", "lr0.01-e2"]
        assert all(c.adapter == TrainConfig(output="x").adapter for c in calls)  # the size was never touched
        assert summary["grid"]["adapter_size"] == [None] and all(r["adapter_size"] is None for r in summary["runs"])
        assert "| lr0.01-e1 **(best)** | 0.01 | - | 1 |" in (tmp_path / "sweep.md").read_text()
    assert [c.lr for c in calls][0] == 1e-3 and summary["best"]["lr"] == 1e-2


def test_sweep_cli_trains_full_once_per_lr(tmp_path):
    data = write_sentiment(tmp_path / "data")
    bert = save_tiny_bert(tmp_path / "bert")
    out = tmp_path / "sweep"
    args = ["sweep", "--model", str(bert), "--method", "full", "--output", str(out), "--lrs", "1e-3",
            "--sizes", "4,8,16", "--epochs", "1", "--batch-size", "8", "--quiet", "--train-file", data["train_file"],
            "--validation-file", data["validation_file"], "--text-column", "sentence", "--label-column", "label"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert [p.name for p in (out / "runs").iterdir()] == ["lr0.001-e1"]
    assert result.stdout.count("lr0.001-e1: val accuracy") == 1

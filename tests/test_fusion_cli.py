"""`adapterkit train --method fusion --fuse DIR,DIR`: the run, eval/predict/info on its output, bad input."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from typer.testing import CliRunner

from adapterkit.cli import app

from test_cli import tiny, train_args  # noqa: F401  (tiny: a fixture)

runner = CliRunner()


@pytest.fixture(scope="module")
def adapters(tiny):  # noqa: F811
    dirs = []
    for seed in (1, 2):
        out = tiny["root"] / f"adapter{seed}"
        result = runner.invoke(app, train_args(tiny, out, "--seed", str(seed), "--adapter-size", "8"))
        assert result.exit_code == 0, result.output
        dirs.append(out / "adapter")
    return dirs


@pytest.fixture(scope="module")
def fused(tiny, adapters):  # noqa: F811
    out = tiny["root"] / "fused"
    result = runner.invoke(app, train_args(tiny, out, "--method", "fusion", "--fuse", ",".join(map(str, adapters)),
                                           "--lr", "1e-3"))
    assert result.exit_code == 0, result.output
    return out


def test_fusion_run_evaluates_to_its_recorded_score_and_keeps_the_adapters(tiny, adapters, fused):  # noqa: F811
    metrics = json.loads((fused / "metrics.json").read_text())
    assert metrics["method"] == "fusion" and metrics["fuse"] == [str(d.resolve()) for d in adapters]
    config = json.loads((fused / "adapter" / "fusion_config.json").read_text())
    names = config["adapters"]
    assert names == ["local", "local_2"] and config["extra"]["fused_adapters"] == dict(zip(names, metrics["fuse"]))
    for name, directory in zip(names, adapters):  # the fused adapters are the saved ones, untouched
        assert config["adapter_sha256"][name] == hashlib.sha256((directory / "adapter_model.safetensors").read_bytes()).hexdigest()
    result = runner.invoke(app, ["eval", "--adapter", str(fused / "adapter"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["main"] == metrics["best"]["main"]
    result = runner.invoke(app, ["predict", "--adapter", str(fused / "adapter"), "a great film", "--json"])
    assert result.exit_code == 0 and set(json.loads(result.output)["scores"]) == {"neg", "pos"}, result.output
    result = runner.invoke(app, ["info", str(fused / "adapter")])
    assert result.exit_code == 0 and "fusion     'local,local_2' over local (" in result.output, result.output


def test_fusion_bad_input_is_one_error_line_and_leaves_nothing(tiny, adapters, fused, tmp_path):  # noqa: F811
    for extra, message in [(["--method", "fusion"], "--method fusion needs --fuse"),
                           (["--fuse", str(adapters[0])], "--fuse goes with --method fusion"),
                           (["--method", "fusion", "--fuse", f"{adapters[0]},{tmp_path / 'nope'}"], "nope")]:
        out = tmp_path / "out"
        result = runner.invoke(app, train_args(tiny, out, *extra))
        assert result.exit_code == 1 and result.output.startswith("error: ") and message in result.output, result.output
        assert not out.exists() and not list(tmp_path.glob(".out*"))
    moved = tmp_path / "moved"
    shutil.copytree(fused, moved)
    meta_adapter = tiny["root"] / "adapter2" / "adapter"
    shutil.move(meta_adapter, tmp_path / "gone")
    try:
        result = runner.invoke(app, ["eval", "--adapter", str(moved / "adapter")])
        assert result.exit_code == 1 and result.output.startswith("error: ") and "adapter2" in result.output, result.output
    finally:
        shutil.move(tmp_path / "gone", meta_adapter)

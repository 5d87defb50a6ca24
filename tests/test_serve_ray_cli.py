"""``adapterkit serve --ray``'s argument errors: one ``error:`` line and exit code 2 (as the server's other
errors), before Ray is started; and the message when Ray is not installed."""

from __future__ import annotations

import pytest

from adapterkit.serve import main
from adapterkit.serve import ray_app


def fails(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    assert e.value.code == 2 and out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("adapterkit serve: error: "), out.err
    return lines[0]


def test_ray_not_installed_is_one_clear_line(monkeypatch, capsys):
    monkeypatch.setattr(ray_app, "serve", None)  # what the module holds when `from ray import serve` fails
    line = fails(["--ray", "--adapter-store", "."], capsys)
    assert line == "adapterkit serve: error: --ray needs Ray Serve; pip install 'adapterkit[ray]'"


@pytest.mark.parametrize("args, message", [
    (["--ray"], "--ray needs --adapter-store DIR or --adapter NAME=DIR"),
    (["--replicas", "2"], "--replicas needs --ray"),
    (["--ray", "--adapter-store", ".", "--replicas", "0"], "--replicas must be >= 1, got 0"),
    (["--ray", "--adapter-store", ".", "--replica-cpus", "0"], "--replica-cpus must be > 0"),
    (["--ray", "--adapter-store", ".", "--port", "0"], "with --ray pass a fixed port"),
    (["--ray", "--adapter-store", "/nonexistent/store"], "adapter store /nonexistent/store cannot be opened"),
])
def test_argument_errors_before_ray_starts(args, message, capsys, monkeypatch):
    monkeypatch.setattr(ray_app, "serve", object())  # Ray "installed"; run() must not be reached
    monkeypatch.setattr(ray_app, "run", lambda *a, **k: pytest.fail("Ray was started"))
    assert message in fails(args, capsys)

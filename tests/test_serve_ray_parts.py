"""The parts of ``adapterkit serve --ray`` that need no running Ray: argument errors (one ``error:`` line and
exit code 2, as the server's other errors, before Ray is started), the message when Ray is not installed, the
router's task extraction, and the multiplex handle's unload on Ray's LRU drop."""

from __future__ import annotations

import pytest

from adapterkit.serve import main
from adapterkit.serve import ray_app
from adapterkit.serve.ray_app import ResidentAdapter, task_of


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


@pytest.mark.parametrize("body, task", [
    (b'{"task": "t0", "inputs": ["x"]}', "t0"), (b'{"task": "a--b", "inputs": []}', "a--b"),
    (b'{"inputs": ["x"]}', None), (b'{"task": 3}', None), (b'{"task": ""}', None), (b"[1]", None),
    (b"{not json", None), (b"\xff\xfe", None), (b'{"task": "t0", "x": NaN}', "t0"), (b"", None),
])
def test_task_of_routes_by_the_bodys_task_or_not_at_all(body, task):
    assert task_of(body) == task


def test_resident_adapter_unloads_once_through_the_residency():
    calls = []

    class Engine:
        running = True

    class FakeResidency:
        engine = Engine()

        def unload(self, name):
            calls.append(name)

    handle = ResidentAdapter(FakeResidency(), "t0")
    handle.__del__()  # what Ray calls when its LRU drops the name
    handle.__del__()  # the garbage collector, later
    assert calls == ["t0"]
    FakeResidency.engine.running = False
    ResidentAdapter(FakeResidency(), "t1").__del__()  # the replica is stopping: nothing to unload into
    assert calls == ["t0"]

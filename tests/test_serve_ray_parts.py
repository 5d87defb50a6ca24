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


def test_an_adapter_ray_drops_while_its_request_runs_is_evicted_after_it(tmp_path, monkeypatch):
    """A replica's request for ``t0``: Ray's multiplex loads it, then another request's load makes Ray's LRU
    drop it before this request reaches the app. The request is still answered, and afterwards the Residency
    holds nothing Ray does not: the adapter goes once the request is answered, instead of being loaded back by
    the app with no Ray entry left to unload it (it stayed resident for good, over Ray's bound)."""
    import asyncio
    import json
    from types import SimpleNamespace

    serve = pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install 'adapterkit[ray]')")
    from serve_helpers import perturb, tiny_model_dir

    import adapterkit as ak
    from adapterkit.models import load_model
    from adapterkit.serve import ServeSettings
    from adapterkit.serve.ray_app import AdapterReplica, ReplicaSpec

    model_dir = tiny_model_dir(tmp_path)
    model, _ = load_model(str(model_dir))
    ak.add_adapter(model, "t0", ak.AdapterConfig(size=8), head=2)
    perturb(model, "t0", 0.3, seed=0)
    ak.save_adapter(model, "t0", tmp_path / "store" / "t0")
    replica_id = SimpleNamespace(unique_id="r0")
    monkeypatch.setattr(serve, "get_replica_context", lambda: SimpleNamespace(replica_id=replica_id))
    monkeypatch.setattr(serve, "get_multiplexed_model_id", lambda: "t0")  # the request's task

    class LocalReplica(AdapterReplica):
        def __del__(self):  # Ray awaits the async __del__ once; the test does below, the collector must not
            pass

    async def scenario():
        replica = object.__new__(LocalReplica)
        await AdapterReplica.__init__(replica, ReplicaSpec(model=str(model_dir), store=str(tmp_path / "store"),
                                                           settings=ServeSettings(batch_window_ms=1), max_loaded=2))
        residency = replica.residency

        async def settle():  # the controls queued so far (unloads, evictions) have run on the worker
            await asyncio.wrap_future(residency.engine.control(lambda: None))

        async def get_adapter(name):  # Ray's multiplex: the load, then the LRU drop of another request's load
            held = await replica._load_adapter(name)
            assert residency.resident() == [name]
            held.__del__()
            await settle()
            return held

        replica.get_adapter = get_adapter
        try:
            body = json.dumps({"task": "t0", "inputs": ["a fine film"]}).encode()
            status, _, answer = await replica.forward("POST", "/v1/predict", "", [("content-type", "application/json")],
                                                      body)
            await settle()
            lookups = residency.hits, residency.misses
            return status, json.loads(answer), residency.resident(), "t0" in residency.engine.tasks, lookups
        finally:
            await AdapterReplica.__del__(replica)  # the worker stops

    status, answer, resident, loaded, lookups = asyncio.run(scenario())
    assert status == 200 and answer["task"] == "t0" and len(answer["predictions"]) == 1
    assert resident == [] and not loaded
    assert lookups == (1, 1)  # Ray's load missed, the app's request hit; the replica's own pin is no lookup

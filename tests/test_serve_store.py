"""The adapter store (``--adapter-store``): names and path safety, LRU residency with pins, metrics, and a
concurrent load test through the app in which every answer must equal the all-resident server's.

A tiny random BERT (MiniLM tokenizer) keeps it fast; adapters differ in heads and weights so that serving the
wrong one would show.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import re
import shutil
import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient
from serve_helpers import perturb, tiny_model_dir

import adapterkit as ak
from adapterkit.models import load_model
from adapterkit.serve import Engine, ServeSettings, create_app, tokenize
from adapterkit.serve.residency import Residency, parse_bytes
from adapterkit.serve.store import DirectoryStore, UnknownAdapter

ATOL = 1e-5
# store name -> relative directory; heads vary: 2 and 3 labels, regression
LAYOUT = {f"t{i}": f"t{i}" for i in range(4)} | {"team-a--t4": "team-a/t4", "team-a--t5": "team-a/t5",
                                                  "team-b--deep--t6": "team-b/deep/t6", "t7": "t7"}
HEADS = [2, 3, "regression"]
TEXTS = ["a gripping, beautifully acted film", "dull and far too long", ["the cat sat", "on the mat"], "ok"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    model_dir = tiny_model_dir(root)
    model, tok = load_model(str(model_dir))
    store = root / "store"
    for i, (name, rel) in enumerate(LAYOUT.items()):
        ak.add_adapter(model, f"a{i}", ak.AdapterConfig(size=8), head=HEADS[i % 3])
        perturb(model, f"a{i}", 0.3, seed=i)
        ak.save_adapter(model, f"a{i}", store / rel)
    # Things the store must not offer: a hidden temp dir, a bad component, links in and out of the tree.
    shutil.copytree(store / "t0", store / ".t0.tmp-abc")
    shutil.copytree(store / "t0", store / "bad--name")
    outside = root / "outside"
    shutil.copytree(store / "t1", outside / "x")
    os.symlink(outside / "x", store / "linked_out")
    os.symlink(store / "t2", store / "linked_in")
    os.symlink(outside, store / "linked_tree")
    reference, _ = load_model(str(model_dir))
    for name, rel in LAYOUT.items():
        ak.load_adapter(reference, store / rel, name=name)
    return {"root": root, "model_dir": model_dir, "store": store, "tok": tok, "ref": reference, "outside": outside}


# --- the store -------------------------------------------------------------------------------------

def test_directory_store_names_every_adapter_in_the_tree_and_nothing_else(world):
    store = DirectoryStore(world["store"])
    assert store.names() == sorted(LAYOUT)
    d = store.describe("team-b--deep--t6")
    assert d["path"] == os.path.join("team-b", "deep", "t6") and d["bytes"] == (
        world["store"] / "team-b/deep/t6/adapter_model.safetensors").stat().st_size
    assert "t3" in store and "nope" not in store


@pytest.mark.parametrize("name", ["../outside--x", "..", "/etc", "t0/../t1", "team-a/t4", "linked_out", "linked_in",
                                  "linked_tree--x", ".t0.tmp-abc", "bad--name", "team-a", "", "t0--", "-t0",
                                  "a" * 300, "t0\x00"])
def test_store_refuses_traversal_links_and_non_names(world, name):
    store = DirectoryStore(world["store"])
    with pytest.raises(UnknownAdapter):
        store.locate(name)
    assert name not in store


def test_parse_bytes():
    assert parse_bytes("512MB") == 512 * 10**6 and parse_bytes("2GiB") == 2 << 30 and parse_bytes("1000") == 1000
    for bad in ("", "MB", "-1MB", "1XB", "nanMB"):
        with pytest.raises(ValueError, match="memory size"):
            parse_bytes(bad)


# --- residency, on the engine directly ---------------------------------------------------------------

@pytest.fixture
def engine(world):
    model, tok = load_model(str(world["model_dir"]))
    e = Engine(model, tok, ServeSettings(batch_window_ms=1))
    e.start()
    yield e
    e.stop()


def use(r: Residency, name: str):
    """Acquire and release ``name`` (a request that came and went)."""
    task = r.acquire(name).result(timeout=30)
    r.release(name)
    return task


def settle(r: Residency):
    """Wait until controls queued so far (evictions after a release) have run on the worker."""
    r.engine.control(lambda: None).result(timeout=30)


def test_lru_order_hits_misses_and_evictions(engine, world):
    r = Residency(engine, DirectoryStore(world["store"]), max_loaded=2)
    for name in ("t0", "t1", "t0", "t2"):  # t2 evicts t1 (t0 was used after it)
        use(r, name)
    settle(r)
    assert r.resident() == ["t0", "t2"] and set(engine.tasks) == {"t0", "t2"}
    assert set(ak.list_adapters(engine.model)) == {"t0", "t2"}
    use(r, "t1")  # evicts t0, the least recently used
    settle(r)
    assert r.resident() == ["t2", "t1"]
    assert (r.hits, r.misses, r.loads, r.evictions, r.load_failures) == (1, 4, 4, 2, 0)
    text = r.render()
    assert 'adapterkit_store_lookups_total{result="hit"} 1' in text
    assert 'adapterkit_store_lookups_total{result="miss"} 4' in text
    assert 'adapterkit_store_loads_total{result="ok"} 4' in text
    assert "adapterkit_store_evictions_total 2" in text
    assert "adapterkit_store_load_seconds_count 4" in text and "adapterkit_store_resident_adapters 2" in text
    r.stop()


def test_memory_bound(engine, world):
    r = Residency(engine, DirectoryStore(world["store"]))
    one = r._read(r.store.locate("t0"))[2]  # bytes of a 2-label adapter (t3 has the same head)
    r = Residency(engine, DirectoryStore(world["store"]), max_memory=int(2.5 * one))
    for name in ("t0", "t3", "t0", "t1", "t2"):
        use(r, name)
        settle(r)
        assert r.info()["memory_bytes"] <= r.max_memory
    assert r.resident()[-1] == "t2" and r.evictions >= 2
    with pytest.raises(Exception, match="more than the whole adapter memory bound"):
        Residency(engine, DirectoryStore(world["store"]), max_memory=one // 2).acquire("t0").result(timeout=30)
    r.stop()


def test_pinned_adapter_is_never_evicted_and_overflow_goes_once_released(engine, world):
    r = Residency(engine, DirectoryStore(world["store"]), max_loaded=1)
    r.acquire("t0").result(timeout=30)  # pinned: a request in flight
    r.acquire("t1").result(timeout=30)  # no room, but t0 is in use: inserted over the bound
    settle(r)
    assert r.resident() == ["t0", "t1"] and r.evictions == 0
    r.release("t1")  # t1 idle; t0 (older) still pinned: t1 is the only candidate
    settle(r)
    assert r.resident() == ["t0"]
    r.release("t0")
    settle(r)
    assert r.resident() == ["t0"]  # within the bound again: nothing to evict
    # DELETE while in use waits for the request; a later request loads it again.
    r.acquire("t0").result(timeout=30)
    r.unload("t0").result(timeout=30)
    assert r.resident() == ["t0"] and "t0" in engine.tasks
    r.release("t0")
    settle(r)
    assert r.resident() == [] and "t0" not in engine.tasks
    use(r, "t0")
    assert r.resident() == ["t0"]
    r.stop()


@pytest.mark.parametrize("waiting", [True, False])
def test_an_unload_while_loading_evicts_once_loaded_and_idle(engine, world, waiting):
    """An unload (Ray's LRU drop, a DELETE) that reaches the worker while the adapter is still being read is
    not lost: the adapter goes once loaded and no request uses it, whether a request still waits for it
    (``waiting``) or every one has given up meanwhile."""
    store = DirectoryStore(world["store"])
    gate, locate = threading.Event(), store.locate

    def slow_locate(name):  # the loader thread reads the adapter only once the test lets it
        gate.wait(30)
        return locate(name)

    store.locate = slow_locate
    r = Residency(engine, store, max_loaded=2)
    future = r.acquire("t0")
    if not waiting:
        r.release("t0")  # the request gave up (its deadline); the load goes on
    r.unload("t0").result(timeout=30)  # decided while loading: no error, nothing evicted yet
    gate.set()
    assert future.result(timeout=30).name == "t0"
    settle(r)
    assert r.resident() == (["t0"] if waiting else [])
    if waiting:
        r.release("t0")
        settle(r)
        assert r.resident() == []
    assert "t0" not in engine.tasks
    use(r, "t0")  # a later request loads it again, and it stays
    settle(r)
    assert r.resident() == ["t0"]
    r.stop()


def test_an_adapter_being_evicted_is_still_managed_by_the_store(engine, world):
    """Between the worker taking an adapter out of the resident set and unloading it from the engine, the
    engine still lists its task: a request arriving then must go through the store (a cold load), not use the
    task about to go (it would be answered "no adapter is loaded")."""
    r = Residency(engine, DirectoryStore(world["store"]), max_loaded=1)
    use(r, "t0")
    gate, window = threading.Event(), {}

    def evict_slowly():  # the worker's eviction, held open in the middle
        victims = r._victims(1, 0)
        window["in engine"] = "t0" in engine.tasks
        window["managed"] = r.manages("t0")
        gate.wait(30)
        r._evict(victims)

    done = engine.control(evict_slowly)
    while "managed" not in window:
        time.sleep(0.001)
    later = r.acquire("t0")  # a request in the window: a miss, loaded again after the eviction
    gate.set()
    done.result(timeout=30)
    assert window == {"in engine": True, "managed": True}
    assert later.result(timeout=30).name == "t0" and "t0" in engine.tasks and r.resident() == ["t0"]
    r.release("t0")
    assert r.misses == 2 and r.evictions == 1
    r.stop()


def test_a_cold_load_does_not_stall_resident_tasks(engine, world):
    """While a (slow) cold load is read on the loader thread, a resident task's requests are answered."""
    gate = threading.Event()

    class SlowStore(DirectoryStore):
        def locate(self, name):
            if name == "t1":
                gate.wait(30)  # the cold adapter's read takes as long as the test wants
            return super().locate(name)

    r = Residency(engine, SlowStore(world["store"]), max_loaded=4)
    use(r, "t0")
    cold = r.acquire("t1")
    for _ in range(3):
        task = r.acquire("t0").result(timeout=30)
        out = engine.submit("t0", tokenize(world["tok"], TEXTS, task.max_length)).result(timeout=30)
        r.release("t0")
        assert len(out) == len(TEXTS) and not cold.done()
    gate.set()
    assert cold.result(timeout=30).name == "t1"
    r.release("t1")
    assert r.resident() == ["t0", "t1"] and (r.hits, r.misses) == (3, 2)
    r.stop()


def test_unknown_and_broken_stored_adapters(engine, world, tmp_path):
    shutil.copytree(world["store"] / "t0", tmp_path / "ok")
    shutil.copytree(world["store"] / "t0", tmp_path / "broken")
    weights = tmp_path / "broken" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x80\x7f")  # checksum no longer matches
    r = Residency(engine, DirectoryStore(tmp_path), max_loaded=4)
    with pytest.raises(Exception, match="corrupted") as e:
        r.acquire("broken").result(timeout=30)
    assert e.value.status == 400
    r.release("broken")
    with pytest.raises(Exception, match="is loaded or in the adapter store") as e:
        r.acquire("missing").result(timeout=30)
    assert e.value.status == 404
    r.release("missing")
    use(r, "ok")
    assert (r.loads, r.load_failures) == (1, 2) and r.resident() == ["ok"]
    r.stop()


# --- through the app ---------------------------------------------------------------------------------

_REF: dict = {}
_REF_LOCK = threading.Lock()  # the reference model's active adapter is state: one caller at a time


def reference_answer(world, name, inputs):
    """Each input alone through the all-resident reference model, its adapter active."""
    from adapterkit.mixed import encode, predict_mixed

    out = []
    for x in inputs:
        key = (name, tuple(x) if isinstance(x, list) else x)
        with _REF_LOCK:
            if key not in _REF:
                _REF[key] = predict_mixed(world["ref"], encode(world["tok"], [key[1]], 128), [name])[0].tolist()
        out.append(_REF[key])
    return out


def assert_same(world, name, inputs, body):
    assert body["task"] == name
    for got, want in zip(body["predictions"], reference_answer(world, name, inputs), strict=True):
        if "score" in got:
            assert got["score"] == pytest.approx(want[0], abs=ATOL)
        else:
            assert list(got["scores"].values()) == pytest.approx(torch.softmax(torch.tensor(want), -1).tolist(),
                                                                  abs=ATOL)


def test_app_lists_serves_and_counts_stored_adapters(world):
    model, tok = load_model(str(world["model_dir"]))
    app = create_app(model, tok, settings=ServeSettings(batch_window_ms=1), store=str(world["store"]), max_loaded=2)
    with TestClient(app) as c:
        listed = c.get("/v1/adapters").json()
        assert listed["adapters"] == [] and listed["store"]["known"] == sorted(LAYOUT)
        assert listed["store"]["resident"] == [] and listed["store"]["max_loaded"] == 2
        for name in ("team-a--t4", "t1", "team-a--t4"):
            r = c.post("/v1/predict", json={"task": name, "inputs": TEXTS})
            assert r.status_code == 200, r.text
            assert_same(world, name, TEXTS, r.json())
        listed = c.get("/v1/adapters").json()
        assert listed["store"]["resident"] == ["t1", "team-a--t4"]
        assert {a["name"] for a in listed["adapters"]} == {"t1", "team-a--t4"}
        for bad in ("nope", "../outside--x", "linked_out", "team-a/t4"):
            r = c.post("/v1/predict", json={"task": bad, "inputs": ["x"]})
            assert r.status_code == 404, (bad, r.text)
        assert c.delete("/v1/adapters/t1").status_code == 200
        assert c.delete("/v1/adapters/t1").status_code == 404
        assert c.get("/v1/adapters").json()["store"]["resident"] == ["team-a--t4"]
        metrics = c.get("/metrics").text
        assert 'adapterkit_store_lookups_total{result="hit"} 1' in metrics
        assert 'adapterkit_store_lookups_total{result="miss"} 2' in metrics
        assert "adapterkit_store_evictions_total 1" in metrics


def test_max_loaded_needs_a_store(world):
    model, tok = load_model(str(world["model_dir"]))
    with pytest.raises(ValueError, match="--adapter-store"):
        create_app(model, tok, max_loaded=2)


def test_concurrent_requests_loads_unloads_and_evictions_give_the_all_resident_answers(world):
    """8 stored adapters, at most 2 resident, 6 client threads sending random requests while another keeps
    DELETE-ing adapters: every answer is 200 and equal to the reference model's (all adapters loaded)."""
    model, tok = load_model(str(world["model_dir"]))
    settings = ServeSettings(batch_window_ms=2, max_batch_size=16, request_timeout_s=60)
    app = create_app(model, tok, settings=settings, store=str(world["store"]), max_loaded=2)
    names = sorted(LAYOUT)
    stop = time.monotonic() + 6
    with TestClient(app) as c:
        def client(seed: int) -> int:
            rng, n = random.Random(seed), 0
            while time.monotonic() < stop:
                name = rng.choice(names)
                inputs = rng.sample(TEXTS, rng.randint(1, len(TEXTS)))
                r = c.post("/v1/predict", json={"task": name, "inputs": inputs})
                assert r.status_code == 200, r.text
                assert_same(world, name, inputs, r.json())
                n += 1
            return n

        def unloader() -> int:
            rng, n = random.Random(99), 0
            while time.monotonic() < stop:
                r = c.delete(f"/v1/adapters/{rng.choice(names)}")
                assert r.status_code in (200, 404), r.text
                n += r.status_code == 200
                time.sleep(0.01)
            return n

        with concurrent.futures.ThreadPoolExecutor(7) as pool:
            answered = [pool.submit(client, s) for s in range(6)]
            unloads = pool.submit(unloader)
            total = sum(f.result() for f in answered)
            unloads = unloads.result()
        metrics = c.get("/metrics").text
        residency = app.state.residency
        settle(residency)
        assert len(residency.resident()) <= 2
    assert total > 20 and unloads > 0
    evictions = int(re.search(r"adapterkit_store_evictions_total (\d+)", metrics).group(1))
    loads = int(re.search(r'adapterkit_store_loads_total\{result="ok"\} (\d+)', metrics).group(1))
    assert evictions > 0 and loads > len(names)
    assert 'adapterkit_store_loads_total{result="failed"} 0' in metrics


def test_cli_serves_a_store_over_http(world, tmp_path):
    """``python -m adapterkit.serve --adapter-store DIR --max-loaded 1`` on loopback: two stored adapters in
    turn (each evicts the other), answers equal to the reference, the store counted in /metrics."""
    import httpx
    from serve_helpers import Server

    s = Server(["--model", str(world["model_dir"]), "--adapter-store", str(world["store"]), "--max-loaded", "1",
                "--max-adapter-memory", "64MB", "--log-level", "warning", "--threads", "1"], tmp_path / "server.log")
    try:
        with httpx.Client(base_url=s.url, timeout=60) as c:
            for name in ("t2", "team-b--deep--t6", "t2"):
                r = c.post("/v1/predict", json={"task": name, "inputs": TEXTS})
                assert r.status_code == 200, r.text
                assert_same(world, name, TEXTS, r.json())
            assert c.post("/v1/predict", json={"task": "../t2", "inputs": ["x"]}).status_code == 404
            store = c.get("/v1/adapters").json()["store"]
            assert store["resident"] == ["t2"] and store["max_memory_bytes"] == 64 * 10**6
            metrics = c.get("/metrics").text
            assert 'adapterkit_store_loads_total{result="ok"} 3' in metrics
            assert "adapterkit_store_evictions_total 2" in metrics
    finally:
        assert s.stop() is not None


@pytest.mark.parametrize("args, message", [(["--max-adapter-memory", "lots"], "cannot read 'lots' as a memory size"),
                                           (["--max-loaded", "0", "--adapter-store", "."], "max_loaded must be >= 1"),
                                           (["--adapter-store", "/nonexistent/store"], "cannot be opened")])
def test_cli_refuses_bad_store_options(world, capsys, args, message):
    from adapterkit.serve import main

    with pytest.raises(SystemExit) as e:
        main(["--model", str(world["model_dir"]), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err

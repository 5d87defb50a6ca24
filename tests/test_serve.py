"""The multi-task server: a real `python -m adapterkit.serve` process on 127.0.0.1, spoken to over HTTP.

A tiny random BERT (with the real MiniLM tokenizer) keeps the model cheap; every answer is compared with
calling the model directly (each request alone, its adapter active) at 1e-5. In-process tests cover the
batching worker (window, cap, control messages in FIFO order, failure isolation) without HTTP, and the
``--adapter-root`` guard through the app (FastAPI's TestClient, no server process).
"""

from __future__ import annotations

import concurrent.futures
import random
import shutil
import threading
import time

import httpx
import pytest
import torch
from serve_helpers import ADAPTERS, Server, save_adapters, tiny_model_dir

import adapterkit as ak
from adapterkit.mixed import encode, predict_mixed
from adapterkit.models import load_model
from adapterkit.serve import Engine, ServeSettings, UnknownTask, parse_adapters, tokenize

ATOL = 1e-5
SERVED = ["sentiment", "topic", "sts", "plain"]
TEXTS = ["a gripping, beautifully acted film", "dull and far too long", "stocks fell on tuesday",
         ["a man plays a guitar", "someone plays an instrument"], "ok", ["the cat sat", "on the mat, again"],
         "the quick brown fox jumps over the lazy dog " * 3]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Model dir, adapter dirs (+ ones that must fail to load), and a reference model in this process."""
    root = tmp_path_factory.mktemp("serve")
    model_dir = tiny_model_dir(root)
    model, tok = load_model(str(model_dir))
    dirs = save_adapters(model, root, SERVED + ["hot"])
    ak.remove_adapter(model, "hot")
    # An adapter trained on another base model (fingerprint mismatch), and a directory with pickle weights only.
    other, _ = load_model(str(tiny_model_dir(root / "other", seed=1)))
    foreign = save_adapters(other, root / "other", ["sentiment"])["sentiment"]
    pickled = root / "pickled"
    pickled.mkdir()
    torch.save({"x": torch.zeros(1)}, pickled / "adapter_model.bin")
    (pickled / "adapter_config.json").write_text((dirs["topic"] / "adapter_config.json").read_text())
    reference, _ = load_model(str(model_dir))
    for name in SERVED + ["hot"]:
        ak.load_adapter(reference, dirs[name], name=name)
    return {"root": root, "model_dir": model_dir, "dirs": dirs, "tok": tok, "ref": reference,
            "foreign": foreign, "pickled": pickled}


_CACHE: dict = {}


def expected(world, task, inputs, max_length=128):
    """What the server must answer: each input alone through the model, its adapter active."""
    return [_expected_one(world, task, tuple(x) if isinstance(x, list) else x, max_length) for x in inputs]


def _expected_one(world, task, x, max_length):
    key = (task, x, max_length)
    if key not in _CACHE:
        row = predict_mixed(world["ref"], encode(world["tok"], [x], max_length), [task])[0]
        if ADAPTERS[task][0] == "regression":
            _CACHE[key] = {"score": float(row[0])}
        else:
            labels = {"sentiment": ["negative", "positive"], "topic": ["world", "sports", "tech"],
                      "plain": ["LABEL_0", "LABEL_1"], "hot": ["a", "b", "c", "d"]}[task]
            _CACHE[key] = dict(zip(labels, torch.softmax(row, -1).tolist()))
    return _CACHE[key]


def check(world, task, inputs, body):
    assert body["task"] == task
    want = expected(world, task, inputs)
    assert len(body["predictions"]) == len(want)
    for got, exp in zip(body["predictions"], want):
        if "score" in exp:
            assert set(got) == {"score"} and got["score"] == pytest.approx(exp["score"], abs=ATOL)
        else:
            assert list(got["scores"]) == list(exp)
            for label, p in exp.items():
                assert got["scores"][label] == pytest.approx(p, abs=ATOL)
            assert got["label"] == max(exp, key=exp.get)


@pytest.fixture(scope="module")
def server(world):
    args = ["--model", str(world["model_dir"]), "--batch-window-ms", "20", "--max-inputs", "8",
            "--max-chars", "300", "--max-queue", "256", "--max-batch-size", "16", "--log-level", "warning",
            "--threads", "1"]  # one intra-op thread: a tiny model gains nothing from more on a shared machine
    for name in SERVED:
        args += ["--adapter", f"{name}={world['dirs'][name]}"]
    s = Server(args, world["root"] / "server.log")
    yield s
    assert s.proc.poll() is None, "the server died during the tests:\n" + s.log()
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def test_healthz_and_openapi(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["adapters"] == len(SERVED)
    spec = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/adapters", "/v1/adapters/{name}", "/healthz", "/metrics"} <= set(spec["paths"])


def test_list_adapters(client, world):
    adapters = {a["name"]: a for a in client.get("/v1/adapters").json()["adapters"]}
    assert set(adapters) == set(SERVED)
    assert adapters["sentiment"]["labels"] == ["negative", "positive"]  # HeadConfig.labels
    assert adapters["topic"]["labels"] == ["world", "sports", "tech"]  # extra["label_names"]
    assert adapters["plain"]["labels"] == ["LABEL_0", "LABEL_1"]
    assert adapters["sts"]["kind"] == "regression"
    assert adapters["sentiment"]["max_length"] == 128  # capped by the model's position embeddings
    assert adapters["topic"]["path"] == str(world["dirs"]["topic"])


@pytest.mark.parametrize("task", SERVED)
def test_predict_matches_direct_model_call(client, world, task):
    r = client.post("/v1/predict", json={"task": task, "inputs": TEXTS})
    assert r.status_code == 200, r.text
    check(world, task, TEXTS, r.json())


def test_concurrent_requests_across_tasks_are_batched_and_correct(client, world, server):
    before = _metric(client, "adapterkit_batches_total")
    rng = random.Random(0)
    jobs = [(rng.choice(SERVED), rng.sample(TEXTS, rng.randint(1, 4))) for _ in range(48)]

    def call(job):  # httpx.Client is thread-safe: one connection pool for all threads
        task, inputs = job
        return client.post("/v1/predict", json={"task": task, "inputs": inputs})

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(call, jobs))
    for (task, inputs), r in zip(jobs, responses):
        assert r.status_code == 200, r.text
        check(world, task, inputs, r.json())
    batches = _metric(client, "adapterkit_batches_total") - before
    assert batches < len(jobs), "concurrent requests should share batches"
    text = client.get("/metrics").text
    multi = _metric(client, "adapterkit_batch_tasks_count") - _bucket(text, "adapterkit_batch_tasks", "1")
    assert multi > 0, "some batch should mix tasks"


@pytest.mark.parametrize("body, field", [
    ({"inputs": ["x"]}, ["body", "task"]),
    ({"task": "sentiment"}, ["body", "inputs"]),
    ({"task": "sentiment", "inputs": []}, ["body", "inputs"]),
    ({"task": "sentiment", "inputs": "just a string"}, ["body", "inputs"]),
    ({"task": "sentiment", "inputs": [1]}, ["body", "inputs", 0]),
    ({"task": "sentiment", "inputs": [["a", "b", "c"]]}, ["body", "inputs", 0]),
    ({"task": 3, "inputs": ["x"]}, ["body", "task"]),
    ({"task": "sentiment", "inputs": ["x"], "extra": 1}, ["body", "extra"]),
])
def test_malformed_requests_are_422_naming_the_field(client, body, field):
    r = client.post("/v1/predict", json=body)
    assert r.status_code == 422
    locs = [d["loc"] for d in r.json()["detail"]]
    assert any(loc[: len(field)] == field for loc in locs), locs


def test_invalid_json_is_422(client):
    r = client.post("/v1/predict", content=b'{"task": "sentiment", "inputs": [', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"


def test_limits(client):
    r = client.post("/v1/predict", json={"task": "nope", "inputs": ["x"]})
    assert r.status_code == 404 and "sentiment" in r.json()["detail"]
    r = client.post("/v1/predict", json={"task": "sentiment", "inputs": ["x"] * 9})
    assert r.status_code == 413 and "limit is 8" in r.json()["detail"]
    r = client.post("/v1/predict", json={"task": "sentiment", "inputs": ["ok", ["fine", "y" * 301]]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "inputs", 1, 1]
    # Long in tokens but not in characters: truncated to max_length tokens, answered.
    r = client.post("/v1/predict", json={"task": "sentiment", "inputs": ["a " * 149]})
    assert r.status_code == 200


def test_hot_load_and_unload(client, world):
    hot = str(world["dirs"]["hot"])
    assert client.post("/v1/predict", json={"task": "hot", "inputs": ["x"]}).status_code == 404
    r = client.post("/v1/adapters", json={"name": "hot", "path": hot})
    assert r.status_code == 201 and r.json()["labels"] == ["a", "b", "c", "d"]
    r = client.post("/v1/predict", json={"task": "hot", "inputs": TEXTS[:4]})
    assert r.status_code == 200
    check(world, "hot", TEXTS[:4], r.json())
    assert client.post("/v1/adapters", json={"name": "hot", "path": hot}).status_code == 409
    assert client.delete("/v1/adapters/hot").json() == {"unloaded": "hot"}
    assert client.post("/v1/predict", json={"task": "hot", "inputs": ["x"]}).status_code == 404
    assert client.delete("/v1/adapters/hot").status_code == 404
    assert {a["name"] for a in client.get("/v1/adapters").json()["adapters"]} == set(SERVED)
    # the same directory under another name
    assert client.post("/v1/adapters", json={"name": "hot2", "path": hot}).status_code == 201
    check(world, "hot", ["x"], {**client.post("/v1/predict", json={"task": "hot2", "inputs": ["x"]}).json(), "task": "hot"})
    assert client.delete("/v1/adapters/hot2").status_code == 200


@pytest.mark.parametrize("what", ["missing", "foreign", "pickled", "badname"])
def test_loading_a_bad_adapter_fails_cleanly(client, world, what):
    path = {"missing": str(world["root"] / "nowhere"), "foreign": str(world["foreign"]),
            "pickled": str(world["pickled"]), "badname": str(world["dirs"]["hot"])}[what]
    name = "bad name!" if what == "badname" else "bad"
    r = client.post("/v1/adapters", json={"name": name, "path": path})
    assert r.status_code == (422 if what == "badname" else 400), r.text
    if what == "foreign":
        assert "different base model" in r.json()["detail"]
    if what == "pickled":
        assert "adapter_model.safetensors" in r.json()["detail"]
    assert {a["name"] for a in client.get("/v1/adapters").json()["adapters"]} == set(SERVED)
    assert client.post("/v1/predict", json={"task": "bad", "inputs": ["x"]}).status_code == 404


def test_hot_load_unload_during_traffic_never_gives_wrong_results(client, world, server):
    """Clients hammer the served tasks and the adapter being loaded and unloaded; every 200 must be the
    right answer for its task, the rest 404 (only for the hot adapter)."""
    stop = threading.Event()
    failures: list[str] = []
    counts = {"ok": 0, "404": 0}
    lock = threading.Lock()
    # The hot adapter is loaded under the name of each round; its answers must be the hot adapter's.
    want = {task: expected(world, task, TEXTS[:3]) for task in SERVED + ["hot"]}

    def hammer(seed):
        rng = random.Random(seed)
        with httpx.Client(base_url=server.url, timeout=60) as c:
            while not stop.is_set():
                task = rng.choice(SERVED + ["hot"])
                r = c.post("/v1/predict", json={"task": task, "inputs": TEXTS[:3]})
                with lock:
                    if r.status_code == 404 and task == "hot":
                        counts["404"] += 1
                        continue
                    if r.status_code != 200:
                        failures.append(f"{task}: {r.status_code} {r.text}")
                        continue
                    counts["ok"] += 1
                    for got, exp in zip(r.json()["predictions"], want[task]):
                        value = got.get("score", got.get("scores"))
                        ref = exp if "score" not in exp else exp["score"]
                        if isinstance(ref, float):
                            ok = abs(value - ref) <= ATOL
                        else:
                            ok = list(value) == list(ref) and all(abs(value[k] - ref[k]) <= ATOL for k in ref)
                        if not ok:
                            failures.append(f"{task}: wrong answer {got} vs {exp}")

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        for _ in range(6):
            assert client.post("/v1/adapters", json={"name": "hot", "path": str(world["dirs"]["hot"])}).status_code == 201
            time.sleep(0.15)
            assert client.delete("/v1/adapters/hot").status_code == 200
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures[:5]
    assert counts["ok"] > 20
    assert client.get("/healthz").status_code == 200


def test_metrics(client):
    client.post("/v1/predict", json={"task": "sentiment", "inputs": ["x", "y"]})
    text = client.get("/metrics").text
    for name in ("adapterkit_http_requests_total", "adapterkit_predict_requests_total", "adapterkit_inputs_total",
                 "adapterkit_batches_total", "adapterkit_batch_rows_bucket", "adapterkit_batch_tasks_bucket",
                 "adapterkit_request_latency_seconds_bucket", "adapterkit_queued_inputs"):
        assert name in text
    assert 'adapterkit_predict_requests_total{task="sentiment",code="200"}' in text
    assert 'adapterkit_http_requests_total{route="/v1/predict",method="POST",code="422"}' in text
    assert _metric(client, "adapterkit_request_latency_seconds_count") > 0


def test_backpressure_read_only_and_startup_errors(world):
    """A second server: a long batch window (3 s) and a queue of 4 inputs give a deterministic 503; --read-only."""
    args = ["--model", str(world["model_dir"]), "--adapter", f"sentiment={world['dirs']['sentiment']}",
            "--max-queue", "4", "--batch-window-ms", "3000", "--max-batch-size", "64", "--read-only",
            "--log-level", "warning", "--threads", "1"]
    s = Server(args, world["root"] / "server2.log")
    try:
        with httpx.Client(base_url=s.url, timeout=60) as c, concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(c.post, "/v1/predict", json={"task": "sentiment", "inputs": ["a", "b", "c"]})
            deadline = time.monotonic() + 2.5  # wait until the first request waits in its batch window
            while c.get("/healthz").json()["queued_inputs"] != 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            r = c.post("/v1/predict", json={"task": "sentiment", "inputs": ["d", "e"]})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert first.result().status_code == 200
            check(world, "sentiment", ["a", "b", "c"], first.result().json())
            assert c.post("/v1/predict", json={"task": "sentiment", "inputs": ["d", "e"]}).status_code == 200
            assert c.post("/v1/adapters", json={"name": "x", "path": str(world["dirs"]["hot"])}).status_code == 403
            assert c.delete("/v1/adapters/sentiment").status_code == 403
    finally:
        s.stop()


def test_startup_errors_exit_with_a_message(world, capsys):
    """What `adapterkit serve` does with an adapter it cannot load or a bad setting: exit 2, one line."""
    from adapterkit.serve import main

    for argv, message in ((["--adapter", f"x={world['foreign']}"], "different base model"),
                          (["--adapter", "x"], "adapter_config.json not found"),
                          (["--max-batch-size", "0"], "max_batch_size must be >= 1"),
                          (["--adapter-root", str(world["root"] / "nowhere")], "is not a directory")):
        with pytest.raises(SystemExit) as exit_:
            main(["--model", str(world["model_dir"]), "--port", "0", *argv])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err


def test_adapter_root_guards_hot_loading(world, tmp_path):
    """With adapter roots, POST /v1/adapters loads only directories that resolve inside one (in process)."""
    from fastapi.testclient import TestClient

    from adapterkit.serve import create_app

    allowed, other = tmp_path / "allowed", tmp_path / "other"
    shutil.copytree(world["dirs"]["hot"], allowed / "hot")
    (allowed / "inner").symlink_to(allowed / "hot")  # a symlink that stays inside: fine
    (allowed / "escape").symlink_to(world["dirs"]["hot"])  # inside by name, outside once resolved
    (allowed / "loop").symlink_to(allowed / "loop")  # cannot be resolved
    (tmp_path / "allowed-not").mkdir()  # shares the root's name as a string prefix
    other.mkdir()
    model, tok = load_model(str(world["model_dir"]))
    settings = ServeSettings(adapter_roots=[str(allowed), other])
    assert settings.adapter_roots == (str(allowed.resolve()), str(other.resolve()))
    with TestClient(create_app(model, tok, settings=settings)) as c:
        r = c.post("/v1/adapters", json={"name": "hot", "path": str(allowed / "hot")})
        assert r.status_code == 201 and r.json()["path"] == str((allowed / "hot").resolve())
        assert c.post("/v1/adapters", json={"name": "inner", "path": str(allowed / "inner")}).status_code == 201
        for path in (world["dirs"]["hot"], allowed / "escape", allowed / "hot" / ".." / "..", tmp_path / "allowed-not",
                     allowed / "loop", f"{allowed}/hot\0"):
            r = c.post("/v1/adapters", json={"name": "out", "path": str(path)})
            assert r.status_code == 403, (path, r.text)
            assert r.json()["detail"] == (f"{path} is outside the adapter roots this server loads from: "
                                          f"{allowed.resolve()}, {other.resolve()}")
        assert c.post("/v1/adapters", json={"name": "out", "path": str(allowed / "nowhere")}).status_code == 400
        assert {a["name"] for a in c.get("/v1/adapters").json()["adapters"]} == {"hot", "inner"}
        r = c.post("/v1/predict", json={"task": "inner", "inputs": TEXTS[:2]})
        check(world, "hot", TEXTS[:2], {**r.json(), "task": "hot"})
    # One root given as a single directory; --read-only still refuses everything.
    with TestClient(create_app(model, tok, settings=ServeSettings(adapter_roots=str(allowed), read_only=True))) as c:
        r = c.post("/v1/adapters", json={"name": "hot2", "path": str(allowed / "hot")})
        assert r.status_code == 403 and "--read-only" in r.json()["detail"]


# --- in-process: the worker ---------------------------------------------------------------------------------
@pytest.fixture()
def engine(world):
    model, tok = load_model(str(world["model_dir"]))
    e = Engine(model, tok, ServeSettings(batch_window_ms=300, max_batch_size=8))
    for name in ("sentiment", "topic"):
        e.load_now(name, str(world["dirs"][name]))
    e.start()
    yield e
    e.stop()


def _features(world, texts):
    return tokenize(world["tok"], texts, 128)


def test_engine_window_cap_and_fifo_controls(engine, world):
    f = lambda texts, task="sentiment": engine.submit(task, _features(world, texts))  # noqa: E731
    x, yz, w = _features(world, ["x"]), _features(world, ["y", "z"]), _features(world, ["w"])
    a, b, c = engine.submit("sentiment", x), engine.submit("topic", yz), engine.submit("sentiment", w)
    for fut in (a, b, c):
        fut.result(30)
    assert engine.metrics.batches == 1  # three requests within the window: one mixed batch
    big = f(["t"] * 6)
    small = f(["u"] * 3)  # does not fit with the first (cap 8): next batch
    big.result(30), small.result(30)
    assert engine.metrics.batches == 3
    # control messages keep FIFO order: queued before the unload -> answered; after -> 404
    before = f(["p"], "topic")
    unload = engine.unload("topic")
    after = f(["q"], "topic")
    assert before.result(30)[0]["label"] in ("world", "sports", "tech")
    unload.result(30)
    with pytest.raises(UnknownTask):
        after.result(30)
    assert engine.queued_rows == 0


def test_engine_skips_requests_cancelled_while_queued(engine, world):
    """A client that disconnects cancels its future; the others in its batch are still answered."""
    keep, drop, keep2 = (engine.submit("sentiment", _features(world, [t])) for t in ("a", "b", "c"))
    assert drop.cancel()  # still waiting in the 300 ms window
    assert keep.result(30) and keep2.result(30)
    assert engine.running and engine.queued_rows == 0
    unload = engine.unload("topic")
    unload.cancel()  # may or may not have run yet; either way the worker goes on
    assert engine.submit("sentiment", _features(world, ["d"])).result(30)


def test_engine_isolates_a_failing_request(engine, world, monkeypatch):
    original = engine._predict

    def flaky(batch):
        if any(r.task == "topic" for r in batch):
            raise RuntimeError("boom")
        return original(batch)

    monkeypatch.setattr(engine, "_predict", flaky)
    good, bad, good2 = (engine.submit(t, _features(world, ["x"])) for t in ("sentiment", "topic", "sentiment"))
    assert good.result(30)[0]["label"] in ("negative", "positive") and good2.result(30)
    with pytest.raises(RuntimeError, match="boom"):
        bad.result(30)
    assert engine.running and engine.metrics.batch_failures >= 1
    monkeypatch.setattr(engine, "_predict", original)
    assert engine.submit("topic", _features(world, ["x"])).result(30)


def test_parse_adapters(world):
    assert parse_adapters(["a=/x", "b=/y"]) == {"a": "/x", "b": "/y"}
    assert parse_adapters([str(world["dirs"]["topic"])]) == {"topic": str(world["dirs"]["topic"])}
    with pytest.raises(ValueError, match="twice"):
        parse_adapters(["a=/x", "a=/y"])


def _metric(client, name):
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def _bucket(text, name, le):
    for line in text.splitlines():
        if line.startswith(f'{name}_bucket{{le="{le}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"{name} bucket {le} not in /metrics")

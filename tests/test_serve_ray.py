"""``adapterkit serve --ray``: a real local Ray instance, 2 replicas over one adapter store, driven over HTTP
through Ray Serve's proxy; every answer is compared with the single-process server's for the same request.

One Ray start for the module (``ray.init(num_cpus=2)``, no dashboard) and a tiny random BERT keep it within
the fast suite. The store holds 5 adapters (2/3 labels, regression) and the replicas keep at most 2 each,
so Ray's multiplex LRU drops adapters during the test and the Residency unloads them (its own backstop,
twice that, is never reached).
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import socket
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray[serve] is not installed (pip install 'adapterkit[ray]')")
pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install 'adapterkit[ray]')")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from ray import serve  # noqa: E402
from serve_helpers import perturb, tiny_model_dir  # noqa: E402

import adapterkit as ak  # noqa: E402
from adapterkit.models import load_model  # noqa: E402
from adapterkit.serve import ServeSettings, create_app  # noqa: E402
from adapterkit.serve.ray_app import REPLICA_HEADER, ReplicaSpec, run  # noqa: E402

ATOL = 1e-5
TASKS = ["t0", "t1", "t2", "team--t3", "team--t4"]
FUSION = "fusions--f01"  # a fusion in the store over t0's and t1's adapters (served like an adapter)
HEADS = [2, 3, "regression"]
TEXTS = ["a gripping, beautifully acted film", "dull and far too long", ["the cat sat", "on the mat"], "ok"]
MAX_LOADED = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    model_dir = tiny_model_dir(root)
    model, tok = load_model(str(model_dir))
    store = root / "store"
    for i, name in enumerate(TASKS):
        ak.add_adapter(model, f"a{i}", ak.AdapterConfig(size=8), head=HEADS[i % 3])
        perturb(model, f"a{i}", 0.3, seed=i)
        ak.save_adapter(model, f"a{i}", store / Path(*name.split("--")))
    block = ak.Fuse("a0", "a1")
    ak.add_fusion(model, block, head=2)
    perturb_fusion(model, block)
    fused = {"a0": str((store / "t0").resolve()), "a1": str((store / "t1").resolve())}
    ak.save_fusion(model, block, store / Path(*FUSION.split("--")), extra={"kind": "classification", "fused_adapters": fused})
    settings = ServeSettings(batch_window_ms=2)
    reference, _ = load_model(str(model_dir))
    started = time.perf_counter()
    # The replicas' processes import the adapterkit this test imports (a worktree's src, or the installed one).
    src = str(Path(ak.__file__).resolve().parents[1])
    path = os.pathsep.join([src] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}})
    port = free_port()
    spec = ReplicaSpec(model=str(model_dir), settings=settings, store=str(store), max_loaded=MAX_LOADED, threads=1)
    try:
        run(spec, replicas=2, port=port, replica_cpus=1, blocking=False)
        print(f"Ray up and 2 replicas serving in {time.perf_counter() - started:.1f} s")
        with TestClient(create_app(reference, tok, settings=settings, store=store)) as single, \
                httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield {"client": client, "single": single, "store": store}
    finally:
        serve.shutdown()
        ray.shutdown()


def perturb_fusion(model, block) -> None:
    import torch

    from adapterkit.fusion import fusion_parameters

    with torch.no_grad():
        for p in fusion_parameters(model, block):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)) * 0.2)


def predict(client, task, inputs=TEXTS):
    return client.post("/v1/predict", json={"task": task, "inputs": inputs})


def assert_same(got: dict, want: dict) -> None:
    assert got["task"] == want["task"] and len(got["predictions"]) == len(want["predictions"])
    for g, w in zip(got["predictions"], want["predictions"]):
        assert set(g) == set(w)
        if "label" in w:
            assert g["label"] == w["label"] and set(g["scores"]) == set(w["scores"])
            for k in w["scores"]:
                assert g["scores"][k] == pytest.approx(w["scores"][k], abs=ATOL)
        else:
            assert g["score"] == pytest.approx(w["score"], abs=ATOL)


def test_a_tasks_requests_go_to_the_replica_that_holds_its_adapter(world):
    client = world["client"]
    # The first test: no adapter is loaded yet. A new adapter goes to the replica that holds the fewest.
    for task in ("t0", "t1"):
        assert predict(client, task).status_code == 200  # loaded on some replica; Ray learns where
        time.sleep(1.0)  # the replicas push their model ids to Ray's routers every 0.1 s
    for task in ("t0", "t1"):
        served = {predict(client, task, ["x"]).headers[REPLICA_HEADER] for _ in range(6)}
        assert len(served) == 1, f"{task} was served by {served}"


def test_every_answer_equals_the_single_process_servers_under_concurrent_mixed_traffic(world):
    tasks = TASKS + [FUSION]
    want = {t: world["single"].post("/v1/predict", json={"task": t, "inputs": TEXTS}).json() for t in tasks}
    jobs = [tasks[i % len(tasks)] for i in range(48)]  # 6 tasks over 2 replicas of 2 entries: evictions happen
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda t: predict(world["client"], t), jobs))
    replicas = set()
    for task, r in zip(jobs, answers):
        assert r.status_code == 200, r.text
        assert_same(r.json(), want[task])
        replicas.add(r.headers[REPLICA_HEADER])
    assert len(replicas) == 2  # both replicas served


def test_ray_lru_drop_unloads_through_the_residency(world):
    client = world["client"]
    for task in TASKS:  # every replica sees more than MAX_LOADED adapters over the module
        assert predict(client, task, ["y"]).status_code == 200
    seen: dict[str, dict] = {}
    for _ in range(300):  # Ray drops a multiplexed model asynchronously: a replica may hold one more for a moment
        r = client.get("/v1/adapters")
        assert r.status_code == 200
        seen[r.headers[REPLICA_HEADER]] = r.json()["store"]
        if len(seen) == 2 and all(len(store["resident"]) <= MAX_LOADED for store in seen.values()):
            break
        time.sleep(0.1)
    for store in seen.values():
        assert store["known"] == sorted(TASKS + [FUSION])
        # The replica's Residency alone would keep 2 * MAX_LOADED (its backstop): only Ray's drops hold it here.
        assert store["max_loaded"] == 2 * MAX_LOADED and len(store["resident"]) <= MAX_LOADED
    evictions = []
    for _ in range(30):
        r = client.get("/metrics")
        assert r.status_code == 200
        evictions.append(int(re.search(r"^adapterkit_store_evictions_total (\d+)$", r.text, re.M).group(1)))
    assert max(evictions) > 0


def test_errors_are_the_single_process_servers(world):
    client, single = world["client"], world["single"]
    r = predict(client, "nope")
    assert r.status_code == 404 and "unknown task 'nope'" in r.json()["detail"]
    for body in (b"{not json", b'{"task": "t0"}', b'{"task": "t0", "inputs": [1]}', b'{"task": 3, "inputs": ["x"]}',
                 b"[1, 2]", b'{"task": "t0", "inputs": [NaN]}'):
        got = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
        want = single.post("/v1/predict", content=body, headers={"content-type": "application/json"})
        assert 400 <= got.status_code < 500 and (got.status_code, got.json()) == (want.status_code, want.json())
    r = client.post("/v1/predict", json={"task": "t0", "inputs": ["x" * 30_000]})
    assert r.status_code == 422
    r = client.put("/v1/predict", json={})
    assert r.status_code == 405 and "POST" in r.headers["allow"]


def test_other_routes(world):
    client = world["client"]
    assert client.get("/healthz").json()["status"] == "ok"
    r = client.post("/v1/adapters", json={"name": "x", "path": str(world["store"] / "t0")})
    assert r.status_code == 403 and "adapter store" in r.json()["detail"]
    assert client.delete("/v1/adapters/t0").status_code == 403
    assert client.get("/openapi.json").json()["paths"].keys() == world["single"].get("/openapi.json").json()[
        "paths"].keys()

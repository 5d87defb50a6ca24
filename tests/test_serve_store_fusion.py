"""Fusions in the server beyond ``--adapter``: a fusion directory in the adapter store (serve/stored_fusion.py)
is served by name, loaded on first use with its fused adapters from inside the store, counted (its bytes with
its fused adapters'), pinned and LRU-evicted like any stored adapter; a fusion hot-loaded through
``POST /v1/adapters`` under ``--adapter-root`` is confined with the adapters it records, and DELETE unloads it
with them. An ``Average`` of adapters is a plain adapter and is served from the store like one.

A tiny random BERT (MiniLM tokenizer); references are the fusion loaded in Python (``ak.load_adapter`` +
``ak.load_fusion`` + ``ak.set_active``) and run one input at a time.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from fastapi.testclient import TestClient
from serve_helpers import perturb, tiny_model_dir

import adapterkit as ak
from adapterkit.fusion import fusion_parameters, fusion_tensors, planned_fusion_tensors
from adapterkit.model import adapter_tensors
from adapterkit.models import load_model
from adapterkit.serve import Engine, ServeSettings, create_app
from adapterkit.serve.residency import Residency
from adapterkit.serve.store import DirectoryStore
from adapterkit.serve.stored_fusion import planned_fusion_tensors_at

ATOL = 1e-5
TEXTS = ["a gripping, beautifully acted film", ["the cat sat", "on the mat"], "dull and far too long"]
ADAPTERS = {"x": 2, "y": 2, "z": "regression"}  # store/glue/<name>; x and y may be averaged
FUSIONS = {"xy": (("x", "y"), ("e", "n", "c")), "yz": (("y", "z"), ("neg", "pos"))}  # store/fusions/<name>


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("store-fusion")
    model_dir = tiny_model_dir(root)
    model, tok = load_model(str(model_dir))
    store, outside = root / "store", root / "outside"
    dirs = {}
    for i, (name, head) in enumerate(ADAPTERS.items()):
        ak.add_adapter(model, name, ak.AdapterConfig(size=8), head=head)
        perturb(model, name, 0.3, seed=i)
        dirs[name] = ak.save_adapter(model, name, store / "glue" / name)
    ak.add_adapter(model, "avg", ak.Average("x", "y", weights=[0.3, 0.7]))  # a plain adapter (x's head)
    dirs["avg"] = ak.save_adapter(model, "avg", store / "glue" / "avg")
    sizes = {}
    for k, (name, (fused, labels)) in enumerate(FUSIONS.items()):
        block = ak.Fuse(*fused)
        ak.add_fusion(model, block, head=ak.HeadConfig("classification", len(labels), labels))
        with torch.no_grad():
            for p in fusion_parameters(model, block):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(10 + k)) * 0.2)
        # as 'adapterkit train --method fusion' writes it: the fused adapters' absolute directories
        extra = {"kind": "classification", "fused_adapters": {n: str(dirs[n].resolve()) for n in fused}}
        dirs[name] = ak.save_fusion(model, block, store / "fusions" / name, extra=extra)
        sizes[name] = _nbytes(fusion_tensors(model, block)) + sum(_nbytes(adapter_tensors(model, n)) for n in fused)
    # a fusion in the store over an adapter saved outside it
    shutil.copytree(dirs["y"], outside / "y")
    extra = {"kind": "classification", "fused_adapters": {"x": str(dirs["x"].resolve()), "y": str(outside / "y")}}
    dirs["leaky"] = ak.save_fusion(model, ak.Fuse("x", "y"), store / "bad" / "leaky", extra=extra)
    # the reference: each fusion loaded in Python as a user would, its adapters under their saved names
    references = {}
    for name, (fused, _) in FUSIONS.items():
        ref, _ = load_model(str(model_dir))
        for n in fused:
            ak.load_adapter(ref, dirs[n], name=n)
        ak.set_active(ref, ak.load_fusion(ref, dirs[name]))
        references[name] = ref.eval()
    avg, _ = load_model(str(model_dir))
    ak.load_adapter(avg, dirs["avg"], name="avg")
    ak.set_active(avg, "avg")
    references["avg"] = avg.eval()
    return {"root": root, "model_dir": model_dir, "store": store, "outside": outside, "tok": tok, "dirs": dirs,
            "refs": references, "sizes": sizes}


def expected(world, ref_name: str, labels) -> list[dict]:
    """What the server should answer: each input through the Python-loaded reference, alone."""
    out = []
    for text in TEXTS:
        enc = world["tok"](*([text] if isinstance(text, str) else text), return_tensors="pt")
        with torch.no_grad():
            logits = world["refs"][ref_name](**enc).logits[0].float()
        out.append(dict(zip(labels, torch.softmax(logits, -1).tolist())))
    return out


def assert_serves(c, task: str, ref_name: str, labels) -> list[dict]:
    r = c.post("/v1/predict", json={"task": task, "inputs": TEXTS})
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    for g, want in zip(got, expected_for := expected(c.world, ref_name, labels)):
        assert list(g["scores"]) == list(want)
        assert list(g["scores"].values()) == pytest.approx(list(want.values()), abs=ATOL)
    assert len(got) == len(expected_for)
    return got


def client(world, **kwargs) -> TestClient:
    model, tok = load_model(str(world["model_dir"]))
    settings = kwargs.pop("settings", ServeSettings(batch_window_ms=1))
    app = create_app(model, tok, settings=settings, **kwargs)
    c = TestClient(app)
    c.world = world
    return c


# --- the store -------------------------------------------------------------------------------------------

def test_the_store_names_fusions_with_their_kind(world):
    store = DirectoryStore(world["store"])
    assert store.names() == ["bad--leaky", "fusions--xy", "fusions--yz", "glue--avg", "glue--x", "glue--y", "glue--z"]
    d = store.describe("fusions--xy")
    assert d["kind"] == "fusion" and d["path"] == "fusions/xy" and d["bytes"] == (
        world["store"] / "fusions/xy/fusion_model.safetensors").stat().st_size
    assert store.describe("glue--x")["kind"] == "adapter"


def test_planned_fusion_tensors_before_the_adapters_are_in_equal_add_fusions(world):
    model, _ = load_model(str(world["model_dir"]))
    config = ak.AdapterConfig(size=8)
    head = ak.HeadConfig("classification", 3, ("e", "n", "c"))
    before = planned_fusion_tensors_at(model, config, ak.FusionConfig.dynamic(), head)
    for n in ("x", "y"):
        ak.add_adapter(model, n, config, head=2)
    after = planned_fusion_tensors(model, ak.Fuse("x", "y"), ak.FusionConfig.dynamic(), head)
    assert before == after and any(".fusion.value.weight" in k for k in before)


# --- served from the store --------------------------------------------------------------------------------

def test_stored_fusions_serve_as_the_python_loaded_fusion_beside_their_own_adapters(world):
    with client(world, store=str(world["store"])) as c:
        xy = assert_serves(c, "fusions--xy", "xy", ("e", "n", "c"))
        assert_serves(c, "fusions--yz", "yz", ("neg", "pos"))  # fuses y too: both resident, each its own copy
        assert_serves(c, "glue--avg", "avg", ("LABEL_0", "LABEL_1"))  # an Average is a plain adapter
        r = c.post("/v1/predict", json={"task": "glue--y", "inputs": TEXTS[:1]})
        assert r.status_code == 200, r.text
        listed = c.get("/v1/adapters").json()
        tasks = {a["name"]: a for a in listed["adapters"]}
        assert set(tasks) == {"fusions--xy", "fusions--yz", "glue--avg", "glue--y"}
        assert tasks["fusions--xy"]["labels"] == ["e", "n", "c"] and tasks["fusions--xy"]["kind"] == "classification"
        assert listed["store"]["resident"] == ["fusions--xy", "fusions--yz", "glue--avg", "glue--y"]
        model = c.app.state.engine.model
        assert sorted(ak.list_adapters(model)) == ["fusions--xy---x", "fusions--xy---y", "fusions--yz---y",
                                                   "fusions--yz---z", "glue--avg", "glue--y"]
        residency = c.app.state.residency
        assert residency._resident["fusions--xy"] == world["sizes"]["xy"]  # fusion + fused adapters' tensors
        # hits answer the same, exactly
        assert c.post("/v1/predict", json={"task": "fusions--xy", "inputs": TEXTS}).json()["predictions"] == xy


def test_a_stored_fusion_over_an_adapter_outside_the_store_is_refused(world):
    with client(world, store=str(world["store"])) as c:
        r = c.post("/v1/predict", json={"task": "bad--leaky", "inputs": ["hello"]})
        assert r.status_code == 400, r.text
        detail = r.json()["detail"]
        assert "'bad--leaky'" in detail and "fuses adapter 'y'" in detail and str(world["outside"] / "y") in detail
        assert "outside the adapter store" in detail
        model = c.app.state.engine.model
        assert ak.list_adapters(model) == [] and ak.list_fusions(model) == []  # nothing half-loaded
        assert c.app.state.residency.resident() == []


def test_a_fused_adapter_replaced_after_training_is_refused(world, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(world["store"] / "glue", store / "glue")
    model, _ = load_model(str(world["model_dir"]))
    for n in ("x", "y"):
        ak.load_adapter(model, store / "glue" / n, name=n)
    ak.add_fusion(model, ak.Fuse("x", "y"))
    extra = {"fused_adapters": {n: str((store / "glue" / n).resolve()) for n in ("x", "y")}}
    ak.save_fusion(model, ak.Fuse("x", "y"), store / "f", extra=extra)
    shutil.rmtree(store / "glue" / "x")
    shutil.copytree(store / "glue" / "avg", store / "glue" / "x")  # another adapter of the same shape
    with client(world, store=str(store)) as c:
        r = c.post("/v1/predict", json={"task": "f", "inputs": ["hello"]})
        assert r.status_code == 400 and "not the adapter the fusion was trained over" in r.text, r.text


def test_a_stored_fusion_is_evicted_whole_and_reloads_to_the_same_answers(world):
    with client(world, store=str(world["store"]), max_loaded=1) as c:
        first = assert_serves(c, "fusions--xy", "xy", ("e", "n", "c"))
        model, residency = c.app.state.engine.model, c.app.state.residency
        assert c.post("/v1/predict", json={"task": "glue--x", "inputs": TEXTS[:1]}).status_code == 200
        c.app.state.engine.control(lambda: None).result(timeout=30)
        assert residency.resident() == ["glue--x"] and residency.evictions == 1
        assert ak.list_adapters(model) == ["glue--x"] and ak.list_fusions(model) == []  # its adapters went with it
        again = c.post("/v1/predict", json={"task": "fusions--xy", "inputs": TEXTS})
        assert again.json()["predictions"] == first
        assert residency.resident() == ["fusions--xy"] and residency.loads == 3
        assert c.delete("/v1/adapters/fusions--xy").json() == {"unloaded": "fusions--xy"}
        assert ak.list_adapters(model) == [] and ak.list_fusions(model) == []


def test_the_memory_bound_counts_a_fusion_with_its_adapters(world):
    with client(world, store=str(world["store"]), max_memory=world["sizes"]["xy"] - 1) as c:
        r = c.post("/v1/predict", json={"task": "fusions--xy", "inputs": ["hi"]})
        assert r.status_code == 400 and f"takes {world['sizes']['xy']} bytes" in r.text, r.text


def test_a_pinned_fusion_is_not_evicted_until_released(world):
    model, tok = load_model(str(world["model_dir"]))
    engine = Engine(model, tok, ServeSettings(batch_window_ms=1))
    engine.start()
    try:
        r = Residency(engine, DirectoryStore(world["store"]), max_loaded=1)
        r.acquire("fusions--xy").result(timeout=30)  # pinned: a request in flight
        r.acquire("glue--z").result(timeout=30)  # pinned too: both stay, over the bound
        engine.control(lambda: None).result(timeout=30)
        assert r.resident() == ["fusions--xy", "glue--z"] and len(ak.list_fusions(model)) == 1
        r.release("fusions--xy")  # the overflow goes as soon as its last pin does
        engine.control(lambda: None).result(timeout=30)
        assert r.resident() == ["glue--z"] and ak.list_fusions(model) == [] and ak.list_adapters(model) == ["glue--z"]
        r.release("glue--z")
        r.stop()
    finally:
        engine.stop()


def test_concurrent_requests_evictions_and_deletes_with_fusions_give_the_all_resident_answers(world):
    """Fusions and adapters of the store, at most 2 resident, 4 client threads sending random requests while
    another keeps DELETE-ing: every answer is 200 and equals the unbounded server's, input by input."""
    import concurrent.futures
    import random
    import time

    names = ["fusions--xy", "fusions--yz", "glue--x", "glue--y", "glue--z"]
    with client(world, store=str(world["store"])) as c:  # every task resident: the answers to match
        want = {(n, i): row for n in names
                for i, row in enumerate(c.post("/v1/predict", json={"task": n, "inputs": TEXTS}).json()["predictions"])}
    settings = ServeSettings(batch_window_ms=2, max_batch_size=16, request_timeout_s=60)
    stop = time.monotonic() + 3
    with client(world, settings=settings, store=str(world["store"]), max_loaded=2) as c:
        def ask(seed: int) -> int:
            rng, n = random.Random(seed), 0
            while time.monotonic() < stop or n < 5:  # at least 5 each, however busy the machine
                task, rows = rng.choice(names), rng.sample(range(len(TEXTS)), rng.randint(1, len(TEXTS)))
                r = c.post("/v1/predict", json={"task": task, "inputs": [TEXTS[i] for i in rows]})
                assert r.status_code == 200, r.text
                for got, i in zip(r.json()["predictions"], rows):
                    expect = want[(task, i)]
                    if "score" in expect:
                        assert got["score"] == pytest.approx(expect["score"], abs=ATOL)
                    else:
                        assert got["label"] == expect["label"]
                        assert got["scores"] == pytest.approx(expect["scores"], abs=ATOL)
                n += 1
            return n

        def unload() -> int:
            rng, n = random.Random(7), 0
            while time.monotonic() < stop or n < 3:
                n += c.delete(f"/v1/adapters/{rng.choice(names)}").status_code == 200
                time.sleep(0.02)
            return n

        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            answered = [pool.submit(ask, s) for s in range(4)]
            deletes = pool.submit(unload)
            total, deletes = sum(f.result() for f in answered), deletes.result()
        residency = c.app.state.residency
        c.app.state.engine.control(lambda: None).result(timeout=30)
        resident = residency.resident()
        assert len(resident) <= 2 and residency.load_failures == 0 and residency.evictions > 0
        # nothing left behind: the model holds exactly the resident tasks' adapters and fusions
        model = c.app.state.engine.model
        private = {f"{n}---{a}" for n in resident if n.startswith("fusions--") for a in n[-2:]}
        plain = {n for n in resident if n.startswith("glue--")}
        assert set(ak.list_adapters(model)) == private | plain
        assert {f.name for f in ak.list_fusions(model)} == {f"{n}---fusion" for n in resident if n.startswith("fusions--")}
    assert total >= 20 and deletes >= 3


# --- hot load --------------------------------------------------------------------------------------------

def test_hot_load_of_a_fusion_under_adapter_roots_and_its_delete(world, tmp_path):
    settings = ServeSettings(batch_window_ms=1, adapter_roots=[str(world["store"])])
    with client(world, settings=settings) as c:
        model = c.app.state.engine.model
        r = c.post("/v1/adapters", json={"name": "fz", "path": str(world["dirs"]["xy"])})
        assert r.status_code == 201, r.text
        assert r.json()["labels"] == ["e", "n", "c"]
        assert_serves(c, "fz", "xy", ("e", "n", "c"))
        assert sorted(ak.list_adapters(model)) == ["x", "y"]  # under their saved names, as at start-up
        assert c.delete("/v1/adapters/fz").json() == {"unloaded": "fz"}
        assert ak.list_adapters(model) == [] and ak.list_fusions(model) == []
        assert c.get("/v1/adapters").json()["adapters"] == []
        # a fusion inside the roots that records an adapter outside them: 403 naming it, nothing loaded
        r = c.post("/v1/adapters", json={"name": "leaky", "path": str(world["dirs"]["leaky"])})
        assert r.status_code == 403 and "fuses adapter 'y'" in r.text and "outside the adapter roots" in r.text, r.text
        assert ak.list_adapters(model) == []
        # the fusion directory itself outside the roots (its adapters inside): 403 as for an adapter
        shutil.copytree(world["dirs"]["xy"], tmp_path / "xy")
        r = c.post("/v1/adapters", json={"name": "out", "path": str(tmp_path / "xy")})
        assert r.status_code == 403 and "outside the adapter roots" in r.text, r.text
        assert ak.list_adapters(model) == []


def test_hot_load_refuses_a_fusion_whose_adapters_lie_under_no_root(world):
    settings = ServeSettings(batch_window_ms=1, adapter_roots=[str(world["store"] / "fusions")])
    with client(world, settings=settings) as c:
        r = c.post("/v1/adapters", json={"name": "fz", "path": str(world["dirs"]["xy"])})
        assert r.status_code == 403 and "fuses adapter 'x'" in r.text, r.text
        assert ak.list_adapters(c.app.state.engine.model) == []


def test_hot_load_of_a_fusion_with_a_store_and_delete(world):
    with client(world, store=str(world["store"])) as c:
        model = c.app.state.engine.model
        r = c.post("/v1/adapters", json={"name": "hot", "path": str(world["dirs"]["yz"])})
        assert r.status_code == 201, r.text
        assert_serves(c, "hot", "yz", ("neg", "pos"))
        assert_serves(c, "fusions--yz", "yz", ("neg", "pos"))  # the stored copy beside it, its own names
        assert c.delete("/v1/adapters/hot").status_code == 200
        assert sorted(ak.list_adapters(model)) == ["fusions--yz---y", "fusions--yz---z"]
        assert [f.name for f in ak.list_fusions(model)] == ["fusions--yz---fusion"]


# --- the bundled MiniLM ---------------------------------------------------------------------------------

def test_a_stored_fusion_on_minilm_serves_as_the_python_loaded_fusion(tmp_path):
    model, tok = load_model("minilm")
    store = tmp_path / "store"
    dirs = {}
    for i, name in enumerate(("sst2", "mrpc")):
        ak.add_adapter(model, name, ak.AdapterConfig(size=16), head=2)
        perturb(model, name, 0.05, seed=i)
        dirs[name] = ak.save_adapter(model, name, store / "glue" / name)
    block = ak.Fuse("sst2", "mrpc")
    ak.add_fusion(model, block, head=ak.HeadConfig("classification", 2, ("entailment", "not_entailment")))
    with torch.no_grad():
        for p in fusion_parameters(model, block):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.05)
    extra = {"kind": "classification", "fused_adapters": {n: str(d.resolve()) for n, d in dirs.items()}}
    fusion_dir = ak.save_fusion(model, block, store / "fusions" / "rte", extra=extra)
    ref, _ = load_model("minilm")
    for n, d in dirs.items():
        ak.load_adapter(ref, d, name=n)
    ak.set_active(ref, ak.load_fusion(ref, fusion_dir))
    world = {"tok": tok, "refs": {"rte": ref.eval()}}
    served, _ = load_model("minilm")
    with TestClient(create_app(served, tok, settings=ServeSettings(batch_window_ms=1), store=str(store))) as c:
        c.world = world
        assert_serves(c, "fusions--rte", "rte", ("entailment", "not_entailment"))
        assert_serves(c, "fusions--rte", "rte", ("entailment", "not_entailment"))  # a hit

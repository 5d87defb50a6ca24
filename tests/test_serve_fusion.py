"""A fusion directory served as a task (serve/fusion_task.py), through the app (FastAPI's TestClient): its
predictions equal the fusion run alone, requests for it and for a plain adapter share batches, it unloads
with the adapters it fused, and a fusion whose fused adapter name is taken is refused with the model unchanged."""

from __future__ import annotations

import pytest
import torch
from serve_helpers import perturb

import adapterkit as ak
from adapterkit.fusion import fusion_parameters
from adapterkit.mixed import encode, predict_mixed

TEXTS = ["a gripping film", ["a man plays", "someone plays a guitar"], "dull", "stocks fell sharply today"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from adapterkit.models import resolve_model

    root = tmp_path_factory.mktemp("fusion-serve")
    tok = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=2)

    def base():
        torch.manual_seed(0)
        return BertForSequenceClassification(config).eval()

    ref = base()
    dirs = {}
    for i, name in enumerate(("x", "y", "solo")):
        ak.add_adapter(ref, name, ak.AdapterConfig(size=8), head=2 + i)
        perturb(ref, name, 0.2, seed=i)
        dirs[name] = ak.save_adapter(ref, name, root / name)
    block = ak.Fuse("x", "y", name="xy")
    ak.add_fusion(ref, block, head=ak.HeadConfig("classification", 3, ("e", "n", "c")))
    with torch.no_grad():
        for p in fusion_parameters(ref, block):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(9)) * 0.2)
    # as `adapterkit train --method fusion` writes it: the fusion names its adapters' directories
    dirs["xy"] = ak.save_fusion(ref, block, root / "fusion", extra={"fused_adapters": {"x": str(dirs["x"]), "y": str(dirs["y"])},
                                                                    "kind": "classification"})
    return {"tok": tok, "ref": ref.eval(), "base": base, "dirs": dirs, "block": block}


def _alone(world, entry, text):
    x = tuple(text) if isinstance(text, list) else text
    return predict_mixed(world["ref"], encode(world["tok"], [x], 128), [entry])[0]


def test_a_fusion_serves_like_an_adapter_and_unloads_with_its_adapters(world):
    from fastapi.testclient import TestClient

    from adapterkit.serve import create_app

    model = world["base"]()
    app = create_app(model, world["tok"], {"fz": str(world["dirs"]["xy"]), "solo": str(world["dirs"]["solo"])})
    with TestClient(app) as c:
        listed = {a["name"]: a for a in c.get("/v1/adapters").json()["adapters"]}
        assert set(listed) == {"fz", "solo"} and listed["fz"]["labels"] == ["e", "n", "c"]
        for task, entry in (("fz", world["block"]), ("solo", "solo")):
            r = c.post("/v1/predict", json={"task": task, "inputs": TEXTS})
            assert r.status_code == 200, r.text
            for got, text in zip(r.json()["predictions"], TEXTS):
                want = torch.softmax(_alone(world, entry, text), -1).tolist()
                assert list(got["scores"].values()) == pytest.approx(want, abs=1e-5)
        # one mixed batch with both tasks' rows (the worker runs them as one predict_mixed call)
        engine = app.state.engine
        feats = [{"input_ids": ids} for ids in world["tok"](["dull", "a gripping film"])["input_ids"]]
        with engine.model_lock:
            both = engine._predict([type("R", (), {"task": t, "features": [f]})() for t, f in zip(("fz", "solo"), feats)])
        assert both[0][0]["scores"] == pytest.approx(dict(zip("enc", torch.softmax(_alone(world, world["block"], "dull"), -1).tolist())), abs=1e-5)
        # the fused adapters' names are taken while the fusion is loaded; unloading it removes them too
        assert c.post("/v1/adapters", json={"name": "x", "path": str(world["dirs"]["solo"])}).status_code == 409
        assert c.delete("/v1/adapters/fz").json() == {"unloaded": "fz"}
        assert ak.list_adapters(model) == ["solo"] and ak.list_fusions(model) == []
        # a fusion whose fused adapter's name is in use: refused, nothing loaded
        assert c.post("/v1/adapters", json={"name": "x", "path": str(world["dirs"]["solo"])}).status_code == 201
        r = c.post("/v1/adapters", json={"name": "fz", "path": str(world["dirs"]["xy"])})
        assert r.status_code == 409 and "fuses adapter(s) ['x']" in r.text, r.text
        assert ak.list_adapters(model) == ["solo", "x"] and ak.list_fusions(model) == []
        assert c.delete("/v1/adapters/x").status_code == 200
        # loaded again while serving, from the directory
        assert c.post("/v1/adapters", json={"name": "fz", "path": str(world["dirs"]["xy"])}).status_code == 201
        r = c.post("/v1/predict", json={"task": "fz", "inputs": TEXTS[:1]})
        want = torch.softmax(_alone(world, world["block"], TEXTS[0]), -1).tolist()
        assert list(r.json()["predictions"][0]["scores"].values()) == pytest.approx(want, abs=1e-5)

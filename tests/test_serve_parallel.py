"""POST /v1/predict/parallel (serve/parallel.py): every task's predictions for the same inputs in one Parallel
pass, in process with FastAPI's TestClient. Each task's answer is compared with what /v1/predict answers for
that task alone (scores within 1e-5, same labels), and every refusal is a 4xx naming the problem."""

from __future__ import annotations

import pytest
from serve_helpers import save_adapters, tiny_model_dir

import adapterkit as ak
from adapterkit.models import load_model
from adapterkit.serve import ServeSettings
from adapterkit.serve.parallel import MAX_TASKS

TASKS = ["sentiment", "topic", "sts", "plain"]
TEXTS = ["a gripping, beautifully acted film", ["a man plays a guitar", "someone plays an instrument"],
         "dull and far too long", "ok"]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from fastapi.testclient import TestClient

    from adapterkit.serve import create_app

    root = tmp_path_factory.mktemp("serve-parallel")
    model_dir = tiny_model_dir(root)
    model, tok = load_model(str(model_dir))
    dirs = save_adapters(model, root, TASKS)
    served, _ = load_model(str(model_dir))
    settings = ServeSettings(max_inputs=8, max_batch_size=6, batch_window_ms=1)  # 4 tasks x 4 inputs: 3 passes
    with TestClient(create_app(served, tok, {n: str(d) for n, d in dirs.items()}, settings=settings)) as c:
        yield c


def close(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.get("label") == w.get("label")
        if "score" in w:
            assert abs(g["score"] - w["score"]) <= 1e-5
        else:
            assert g["scores"].keys() == w["scores"].keys()
            assert all(abs(g["scores"][k] - w["scores"][k]) <= 1e-5 for k in w["scores"])


def test_each_task_answers_as_it_does_alone(client):
    r = client.post("/v1/predict/parallel", json={"tasks": TASKS, "inputs": TEXTS})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["task"] for x in results] == TASKS
    for result in results:
        alone = client.post("/v1/predict", json={"task": result["task"], "inputs": TEXTS})
        assert alone.status_code == 200
        close(result["predictions"], alone.json()["predictions"])
    assert "score" in results[2]["predictions"][0]  # sts: regression
    assert set(results[1]["predictions"][0]["scores"]) == {"world", "sports", "tech"}
    metrics = client.get("/metrics").text
    assert 'adapterkit_inputs_total{task="topic"} 8\n' in metrics  # 4 in the parallel request, 4 alone
    assert 'adapterkit_http_requests_total{route="/v1/predict/parallel",method="POST",code="200"} 1\n' in metrics


@pytest.mark.parametrize("body, status, words", [
    ({"tasks": ["sentiment", "nope", "gone"], "inputs": ["x"]}, 404, ["'nope'", "'gone'", "loaded adapters: plain"]),
    ({"tasks": ["sentiment"] * 2, "inputs": ["x"]}, 422, ["appears twice"]),
    ({"tasks": [f"t{i}" for i in range(MAX_TASKS + 1)], "inputs": ["x"]}, 413, [f"the limit is {MAX_TASKS}"]),
    ({"tasks": ["sentiment"], "inputs": ["x"] * 9}, 413, ["9 inputs", "the limit is 8"]),
    ({"tasks": [], "inputs": ["x"]}, 422, ["tasks"]),
    ({"tasks": ["sentiment"], "inputs": ["x"], "task": "sentiment"}, 422, ["task"]),
    ({"tasks": "sentiment", "inputs": ["x"]}, 422, ["tasks"]),
])
def test_refusals(client, body, status, words):
    r = client.post("/v1/predict/parallel", json=body)
    assert r.status_code == status, r.text
    for w in words:
        assert w in r.text


def test_one_task_is_the_plain_predict(client):
    r = client.post("/v1/predict/parallel", json={"tasks": ["topic"], "inputs": TEXTS[:2]})
    assert r.status_code == 200
    close(r.json()["results"][0]["predictions"],
          client.post("/v1/predict", json={"task": "topic", "inputs": TEXTS[:2]}).json()["predictions"])
    assert ak.Parallel("topic") == ak.Parallel("topic")

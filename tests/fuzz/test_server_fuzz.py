"""Property-based tests of the server's request handling (hypothesis), in process: whatever body a client sends
to predict, load or unload, the answer is never a 5xx, and every error is JSON with a ``detail``.

Bodies are drawn as near-valid requests (right keys, hostile values: lone surrogates, NaN, huge and nested
values, texts over the limits, wrong types) and as arbitrary JSON or bytes; hot loads point at real adapter
directories whose configs hypothesis mutates (and re-signs, so the checks behind the checksum are reached).
Request counts are bounded by ``max_examples`` and derandomized (the fast suite runs them); everything stays in
this process (no socket).
"""

from __future__ import annotations

import json
import math
import shutil
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from serve_helpers import build_world_with_root

from adapterkit.checks import config_digest
from adapterkit.models import load_model
from adapterkit.serve import ServeSettings

FUZZ = settings(deadline=None, database=None, derandomize=True, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
LOADED = {"sentiment", "sts"}
NASTY = ["", "\ud800", "x\udfffy", "\x00", "NaN", "a" * 301, "\u202e", "../..", "%00", "\\", '"', "é" * 50]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from fastapi.testclient import TestClient

    from adapterkit.serve import create_app

    w = build_world_with_root(tmp_path_factory.mktemp("fuzz"))
    allowed = w["allowed"]
    model, tok = load_model(str(w["model_dir"]))
    s = ServeSettings(max_inputs=8, max_chars=300, max_body_bytes=256 << 10, batch_window_ms=1,
                      adapter_roots=[str(allowed)])
    app = create_app(model, tok, {n: str(w["dirs"][n]) for n in LOADED}, s)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield {"client": c, "world": w, "allowed": allowed, "outside": w["dirs"]["hot"]}


texts = st.one_of(st.text(st.characters(exclude_categories=()), max_size=40), st.sampled_from(NASTY))
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(texts, inner, max_size=4)), max_leaves=12)
inputs = st.one_of(st.lists(st.one_of(texts, st.lists(texts, max_size=3), json_values), max_size=10), json_values)
tasks = st.one_of(st.sampled_from(sorted(LOADED)), texts, json_values)
predict_bodies = st.one_of(
    st.fixed_dictionaries({"task": tasks, "inputs": inputs}, optional={"extra": json_values}),
    st.fixed_dictionaries({"task": st.sampled_from(sorted(LOADED)),
                           "inputs": st.lists(st.one_of(texts, st.lists(texts, min_size=2, max_size=2)),
                                              min_size=1, max_size=8)}),
    json_values)


def encode(body, deep: int) -> bytes:
    """JSON text as a client may send it: NaN/Infinity literals and \\ud800 escapes included, maybe buried
    ``deep`` arrays down."""
    text = json.dumps(body, allow_nan=True)
    return ("[" * deep + text + "]" * deep).encode()


def check_answer(r) -> None:
    event(f"status {r.status_code}")
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400 and r.status_code != 404 or r.headers.get("content-type", "").startswith("application/json"):
        assert r.headers["content-type"].startswith("application/json"), (r.status_code, r.headers, r.text[:200])
        body = r.json()
        if r.status_code >= 400:
            assert "detail" in body and "Traceback" not in r.text, r.text[:500]


@settings(FUZZ, max_examples=150)
@given(body=predict_bodies, deep=st.sampled_from([0, 0, 0, 1, 3000]))
def test_predict_never_5xx(env, body, deep):
    r = env["client"].post("/v1/predict", content=encode(body, deep), headers={"content-type": "application/json"})
    check_answer(r)
    if r.status_code == 200:
        preds = r.json()["predictions"]
        assert deep == 0 and len(preds) == len(body["inputs"])
        for p in preds:
            numbers = [p["score"]] if "score" in p else list(p["scores"].values())
            assert all(isinstance(x, float) and math.isfinite(x) for x in numbers), p


@settings(FUZZ, max_examples=60)
@given(content=st.binary(max_size=300), content_type=st.sampled_from(["application/json", "text/plain", None]),
       path=st.sampled_from(["/v1/predict", "/v1/adapters"]))
def test_raw_bytes_never_5xx(env, content, content_type, path):
    headers = {} if content_type is None else {"content-type": content_type}
    check_answer(env["client"].post(path, content=content, headers=headers))


@settings(FUZZ, max_examples=60)
@given(name=st.one_of(st.from_regex(r"\A[A-Za-z0-9_\-]{1,12}\Z"), texts, json_values),
       where=st.one_of(st.sampled_from(["hot", "outside", "missing", "root", "dotdot"]), texts, json_values))
def test_load_never_5xx(env, name, where):
    c = env["client"]
    paths = {"hot": env["allowed"] / "hot", "outside": env["outside"], "missing": env["allowed"] / "missing",
             "root": env["allowed"], "dotdot": env["allowed"] / "hot" / ".." / ".."}
    path = str(paths[where]) if isinstance(where, str) and where in paths else where
    r = c.post("/v1/adapters", content=encode({"name": name, "path": path}, 0),
               headers={"content-type": "application/json"})
    check_answer(r)
    if r.status_code == 201:
        assert name not in LOADED and where == "hot"
        assert c.delete(f"/v1/adapters/{quote(name, safe='')}").status_code == 200
    assert LOADED <= {a["name"] for a in c.get("/v1/adapters").json()["adapters"]}


FIELDS = ["config", "config.size", "config.reduction_factor", "config.layers", "config.activation",
          "config.placement", "config.init_std", "config.scaling", "config.train_layer_norms", "head", "head.kind",
          "head.num_labels", "head.labels", "base_model", "base_model.hidden_size", "base_model.num_layers", "files",
          "files.adapter_model.safetensors", "extra", "extra.label_names", "extra.max_length", "extra.kind", "name",
          "adapterkit_format", "parameters"]
hostile_numbers = st.sampled_from([0, -1, 1, 99, 10**6, 10**12, 2**63, -(2**63), 1e308, -0.0, 0.5])


@settings(FUZZ, max_examples=80)
@given(changes=st.lists(st.tuples(st.sampled_from(FIELDS), st.one_of(json_values, hostile_numbers)),
                        min_size=1, max_size=3),
       resign=st.booleans())
def test_load_of_a_mutated_config_never_5xx(env, changes, resign):
    c = env["client"]
    d = env["allowed"] / "mutant"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(env["allowed"] / "hot", d)
    meta = json.loads((d / "adapter_config.json").read_text())
    for field, value in changes:
        keys = ["files", field[6:]] if field.startswith("files.") else field.split(".")
        node = meta
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node[keys[-1]] = value
    if resign:
        try:
            meta["config_sha256"] = config_digest(meta)
        except Exception:  # noqa: BLE001 - too broken to digest: sent as it is
            pass
    (d / "adapter_config.json").write_text(json.dumps(meta, allow_nan=True))
    r = c.post("/v1/adapters", json={"name": "mutant", "path": str(d)})
    check_answer(r)
    assert r.status_code in (201, 400), (r.status_code, r.text[:300])
    if r.status_code == 201:
        p = c.post("/v1/predict", json={"task": "mutant", "inputs": ["a", ["b", "c"]]})
        assert p.status_code in (200, 422), p.text[:300]
        assert c.delete("/v1/adapters/mutant").status_code == 200


@settings(FUZZ, max_examples=50)
@given(name=texts.filter(lambda n: n not in LOADED))
def test_unload_never_5xx(env, name):
    r = env["client"].delete("/v1/adapters/" + quote(name.encode("utf-8", "surrogatepass"), safe=""))
    check_answer(r)
    assert r.status_code in (404, 405, 422), (r.status_code, r.text[:200])

"""Property-based tests over adapter directories (issue 13): whatever is in adapter_config.json and
adapter_model.safetensors -- random JSON, mutated fields of a good config, wrong types, huge numbers, deep
nesting, odd strings (lone surrogates included), truncated or mutated weights -- a load either succeeds or
raises AdapterLoadError: never another exception, never a bottleneck or head beyond the model's limits, and
a failed load leaves the model exactly as it was. Bounded and derandomized, so they run in the fast suite."""

from __future__ import annotations

import hashlib
import json
import math
import resource
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import tiny_inputs, tiny_model
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import adapterkit as ak
import adapterkit.heads as akheads
import adapterkit.kinds as akkinds
import adapterkit.model as akmodel
from adapterkit.checks import config_digest
from adapterkit.config import MAX_SIZE_FACTOR
from adapterkit.io import CONFIG_FILE, WEIGHTS_FILE

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])

ODD_STRINGS = st.one_of(st.sampled_from(["", "\ud800", "a\udfffb", "\x00", "../../etc/passwd", "\n", "NaN"]),
                        st.integers(200, 5000).map(lambda n: "é" * n))
TEXT = st.one_of(st.text(st.characters(exclude_categories=()), max_size=20), ODD_STRINGS)
NUMBERS = st.one_of(st.integers(), st.sampled_from([0, -1, 1, 2, 128, 129, 2**31, 2**63, 10**30, 300000]),
                    st.floats(allow_nan=True, allow_infinity=True))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                    st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)
NESTED = st.integers(1, 300).map(lambda depth: json.loads("[" * depth + "]" * depth))

# Where a mutation can land in adapter_config.json: (section or None for the top level, key).
FIELDS = ([(None, k) for k in ("adapterkit_format", "name", "config", "head", "base_model", "parameters", "files",
                               "extra", "config_sha256", "surprise")]
          + [("config", k) for k in ("size", "reduction_factor", "activation", "init_std", "placement", "scaling",
                                     "layers", "train_layer_norms", "surprise")]
          + [("head", k) for k in ("kind", "num_labels", "labels", "train_pooler", "surprise")]
          + [("base_model", k) for k in ("architecture", "hidden_size", "num_layers", "vocab_size", "weights_sha256")]
          + [("files", WEIGHTS_FILE), ("files", "other.bin"), ("extra", "x")])
VALUES = st.one_of(JSON, NESTED, st.just("<delete>"),
                   st.sampled_from([[0, 1], [1], [5], [-1], [0, 0], 64, 128, 129, 10**9, 65536, 65537, ["a", "b"], "parallel",
                                    "pfeiffer", "classification", "regression", "shared", "own", 1, 2, 3, {}]))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One tiny BERT (shared by every example: a failed load must leave it exactly as it was) and one good
    adapter directory, saved with a 3-label head."""
    root = tmp_path_factory.mktemp("fuzz")
    source = tiny_model("bert")
    ak.add_adapter(source, "a", ak.AdapterConfig(size=8, placement="parallel", scaling=2.0), head=3)
    with torch.no_grad():
        for p in ak.adapter_parameters(source, "a"):
            p.add_(torch.randn_like(p) * 0.1)
    good = ak.save_adapter(source, "a", root / "good")
    model, inputs = tiny_model("bert"), tiny_inputs("bert")
    with torch.no_grad():
        reference = model(**inputs).logits
    return {"root": root, "good": good, "model": model, "inputs": inputs, "reference": reference,
            "config": json.loads((good / CONFIG_FILE).read_text()), "weights": (good / WEIGHTS_FILE).read_bytes()}


@pytest.fixture(autouse=True)
def guard(monkeypatch):
    """Whatever a load builds stays within the model's limits (no big allocation sneaks through)."""
    real_bottleneck, real_replace = akkinds.Bottleneck, akmodel.replace_last_linear  # the bottleneck kinds build it

    class Bounded(real_bottleneck):
        def __init__(self, d, m, *a, **k):
            assert m <= MAX_SIZE_FACTOR * d, f"bottleneck {m} on {d}"
            super().__init__(d, m, *a, **k)

    def bounded_replace(head, n, std):
        assert n <= akheads.MAX_LABELS, f"{n} labels"
        return real_replace(head, n, std)

    monkeypatch.setattr(akkinds, "Bottleneck", Bounded)
    monkeypatch.setattr(akmodel, "replace_last_linear", bounded_replace)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 500_000  # KiB: no half-gigabyte spike


def _snapshot(model, inputs):
    """Modules, hooks, state and attributes (outputs are compared once, at the end: a forward per example
    would be most of the suite's time)."""
    return ([(n, type(m).__name__, tuple(m._forward_hooks), tuple(m._forward_pre_hooks)) for n, m in model.named_modules()],
            {k: v.clone() for k, v in model.state_dict().items()}, sorted(model.__dict__), ak.list_adapters(model))


def _same(a, b) -> bool:
    return (a[0] == b[0] and a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])
            and a[2] == b[2] and a[3] == b[3])


def _try_load(world, config_bytes: bytes, weights: bytes, check_base: bool = True, root: bool = False) -> str:
    """Write an adapter directory, load it; 'ok' or 'refused'. Anything else fails the test."""
    model, inputs = world["model"], world["inputs"]
    directory = Path(tempfile.mkdtemp(dir=world["root"]))
    try:
        (directory / CONFIG_FILE).write_bytes(config_bytes)
        (directory / WEIGHTS_FILE).write_bytes(weights)
        before = _snapshot(model, inputs)
        try:
            name = ak.load_adapter(model, directory, check_base=check_base, root=world["root"] if root else None)
        except ak.AdapterLoadError as e:
            assert "\n" not in str(e)
            assert _same(before, _snapshot(model, inputs)), "a failed load changed the model"
            return "refused"
        try:
            assert all(torch.isfinite(p).all() for p in ak.adapter_parameters(model, name))
        finally:
            ak.set_active(model, None)
            ak.remove_adapter(model, name)
        return "ok"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _sign(meta, weights: bytes | None = None):
    if isinstance(meta, dict):
        if weights is not None and isinstance(meta.get("files"), dict):
            meta["files"][WEIGHTS_FILE] = hashlib.sha256(weights).hexdigest()
        meta["config_sha256"] = config_digest(meta)
    return meta


def _dumps(meta) -> bytes:
    return json.dumps(meta, ensure_ascii=True, allow_nan=True).encode()


def test_the_good_adapter_loads(world):
    assert _try_load(world, (world["good"] / CONFIG_FILE).read_bytes(), world["weights"]) == "ok"


@FUZZ
@given(mutations=st.lists(st.tuples(st.sampled_from(FIELDS), VALUES), min_size=1, max_size=3),
       resign=st.booleans(), check_base=st.booleans())
def test_mutated_configs_load_or_are_refused(world, mutations, resign, check_base):
    meta = json.loads(json.dumps(world["config"]))
    for (section, key), value in mutations:
        target = meta if section is None else meta.get(section)
        if not isinstance(target, dict):
            continue
        if value == "<delete>":
            target.pop(key, None)
        else:
            target[key] = value
    if resign:
        _sign(meta)
    event(_try_load(world, _dumps(meta), world["weights"], check_base=check_base))


@FUZZ
@given(meta=JSON, resign=st.booleans())
def test_random_json_configs_are_refused(world, meta, resign):
    assert _try_load(world, _dumps(_sign(meta) if resign else meta), world["weights"]) == "refused"


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), TEXT.map(lambda s: s.encode("utf-8", "surrogatepass"))))
def test_random_bytes_as_config_are_refused(world, data):
    assert _try_load(world, data, world["weights"]) == "refused"
    directory = Path(tempfile.mkdtemp(dir=world["root"]))
    try:
        (directory / CONFIG_FILE).write_bytes(data)
        with pytest.raises(ak.AdapterLoadError):
            ak.read_adapter_config(directory, root=world["root"])
    finally:
        shutil.rmtree(directory)


@FUZZ
@given(kind=st.sampled_from(["truncate", "flip", "insert", "header_length", "header_json"]),
       where=st.floats(0, 1), byte=st.integers(0, 255), count=st.integers(1, 8), header=JSON,
       resign=st.booleans(), root=st.booleans())
def test_mutated_weights_load_or_are_refused(world, kind, where, byte, count, header, resign, root):
    data = bytearray(world["weights"])
    at = min(int(where * len(data)), len(data) - 1)
    if kind == "truncate":
        data = data[:at]
    elif kind == "flip":
        for i in range(count):
            data[(at + 97 * i) % len(data)] ^= byte or 1
    elif kind == "insert":
        data[at:at] = bytes([byte]) * count
    elif kind == "header_length":
        data[:8] = (int.from_bytes(data[:8], "little") + (byte - 128) * count).to_bytes(8, "little", signed=True)
    else:
        body = json.dumps(header).encode()
        n = int.from_bytes(data[:8], "little")
        data = bytearray(len(body).to_bytes(8, "little")) + body + data[8 + n:]
    data = bytes(data)
    meta = json.loads(json.dumps(world["config"]))
    if resign:  # a consistent checksum: the header and the tensors themselves must be checked
        _sign(meta, data)
    result = _try_load(world, _dumps(meta), data, root=root)
    event(result)
    if data != world["weights"]:
        assert result == "refused" or kind == "flip" and resign  # a flipped byte in the data may be a valid float


@FUZZ
@given(values=st.lists(st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e38, -0.0]), min_size=1, max_size=3),
       index=st.integers(0, 10_000))
def test_non_finite_weights_are_refused(world, values, index):
    from safetensors.torch import load, save

    tensors = load(world["weights"])
    key = sorted(tensors)[index % len(tensors)]
    flat = tensors[key].flatten()
    for i, v in enumerate(values):
        flat[(index + i) % flat.numel()] = v
    tensors[key] = flat.view_as(tensors[key])
    data = save(tensors, metadata={"format": "pt"})
    meta = _sign(json.loads(json.dumps(world["config"])), data)
    finite = all(math.isfinite(v) for v in values)
    assert _try_load(world, _dumps(meta), data) == ("ok" if finite else "refused")


def test_the_model_ends_as_it_began(world):
    """After every example above, the shared model holds no adapter, hook or holder, and computes what it did."""
    model = world["model"]
    assert ak.list_adapters(model) == []
    assert not any(isinstance(m, akmodel.AdapterModule) for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(**world["inputs"]).logits, world["reference"])

"""Saving and loading adapters: exact round trips, and every way a load can fail leaves the model as it was."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import logits, tiny_inputs, tiny_model

import adapterkit as ak
from adapterkit.io import CONFIG_FILE, WEIGHTS_FILE


def resign(config_path, mutate=None):
    """Edit an adapter_config.json and re-sign it (a consistent config_sha256): what gets past the checksum."""
    from adapterkit.checks import config_digest

    meta = json.loads(config_path.read_text())
    if mutate is not None:
        mutate(meta)
    meta["config_sha256"] = config_digest(meta)
    config_path.write_text(json.dumps(meta))
    return meta


def _trained(arch="bert", name="a", config=None, head=None, seed=0):
    model, inputs = tiny_model(arch, seed=seed), tiny_inputs(arch)
    ak.add_adapter(model, name, config or ak.AdapterConfig(size=8), head=head)
    ak.train_adapter(model, name)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(**inputs).logits.pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return model.eval(), inputs


@pytest.mark.parametrize("arch,head", [("bert", None), ("bert", 5), ("bert", {"kind": "own", "train_pooler": True}),
                                       ("roberta", "regression"), ("llama", 3), ("t5", None)])
def test_save_then_load_into_fresh_base_gives_identical_logits(tmp_path, arch, head):
    model, inputs = _trained(arch, head=head, config=ak.AdapterConfig(size=8, placement="parallel", scaling=2.0))
    expected = logits(model, inputs)
    ak.save_adapter(model, "a", tmp_path / "a", extra={"task": "demo"})
    fresh = tiny_model(arch)
    assert ak.load_adapter(fresh, tmp_path / "a", name="again") == "again"
    ak.set_active(fresh, "again")
    assert torch.equal(logits(fresh, inputs), expected)
    meta = ak.read_adapter_config(tmp_path / "a")
    assert meta["extra"] == {"task": "demo"} and meta["config"]["scaling"] == 2.0
    assert set(meta["base_model"]) == {"architecture", "hidden_size", "num_layers", "vocab_size", "weights_sha256"}
    summary = ak.adapter_summary(model)["a"]
    assert meta["parameters"] == {k: v for k, v in summary.items() if k != "percent"}


def test_adapter_file_holds_only_the_adapter(tmp_path):
    from safetensors.torch import load_file

    model, _ = _trained(head=4)
    ak.save_adapter(model, "a", tmp_path / "a")
    tensors = load_file(tmp_path / "a" / WEIGHTS_FILE)
    assert sum(t.numel() for t in tensors.values()) == ak.adapter_summary(model)["a"]["trainable_params"]
    assert all(".adapters." in k for k in tensors)


def test_loading_into_a_different_base_fails_and_loads_nothing(tmp_path):
    model, _ = _trained()
    ak.save_adapter(model, "a", tmp_path / "a")
    other = tiny_model("bert", seed=1)  # same shapes, other weights
    keys = set(other.state_dict())
    with pytest.raises(ak.AdapterLoadError, match="different base model.*weights_sha256"):
        ak.load_adapter(other, tmp_path / "a")
    wider = tiny_model("bert", hidden_size=48)
    with pytest.raises(ak.AdapterLoadError, match="hidden_size: adapter 32 vs model 48"):
        ak.load_adapter(wider, tmp_path / "a")
    assert ak.list_adapters(other) == [] and set(other.state_dict()) == keys


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "garbage", "missing_weights", "missing_config", "bad_json"])
def test_damaged_adapter_directory_fails_clearly_and_loads_nothing(tmp_path, damage):
    model, _ = _trained()
    path = ak.save_adapter(model, "a", tmp_path / "a")
    weights, config = path / WEIGHTS_FILE, path / CONFIG_FILE
    data = weights.read_bytes()
    if damage == "flip_byte":
        weights.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    elif damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        weights.write_bytes(b"\xff" * 64)
        import hashlib  # a matching checksum: the safetensors header check must catch it

        resign(config, lambda m: m["files"].update({WEIGHTS_FILE: hashlib.sha256(b"\xff" * 64).hexdigest()}))
    elif damage == "missing_weights":
        weights.unlink()
    elif damage == "missing_config":
        config.unlink()
    elif damage == "bad_json":
        config.write_text("{not json")
    fresh = tiny_model("bert")
    keys = set(fresh.state_dict())
    with pytest.raises(ak.AdapterLoadError) as err:
        ak.load_adapter(fresh, path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert ak.list_adapters(fresh) == [] and set(fresh.state_dict()) == keys


def test_tensor_mismatch_is_caught_before_anything_is_copied(tmp_path):
    model, _ = _trained(config=ak.AdapterConfig(size=8))
    path = ak.save_adapter(model, "a", tmp_path / "a")
    resign(path / CONFIG_FILE, lambda m: m["config"].update(size=16))  # the config now disagrees with the tensors
    fresh = tiny_model("bert")
    with pytest.raises(ak.AdapterLoadError, match="has shape"):
        ak.load_adapter(fresh, path)
    assert ak.list_adapters(fresh) == []


def test_save_is_atomic_and_replaces_an_existing_directory(tmp_path, monkeypatch):
    model, _ = _trained()
    path = ak.save_adapter(model, "a", tmp_path / "a")
    before = (path / WEIGHTS_FILE).read_bytes()
    import adapterkit.io as io

    real_write = io._write

    def crash(path, data):  # the weights are written, the config is not
        if path.name == CONFIG_FILE:
            raise OSError("disk full")
        real_write(path, data)

    monkeypatch.setattr(io, "_write", crash)
    with pytest.raises(OSError, match="disk full"):
        ak.save_adapter(model, "a", tmp_path / "a")
    assert (path / WEIGHTS_FILE).read_bytes() == before  # the old adapter is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temporary left behind
    monkeypatch.undo()
    ak.save_adapter(model, "a", tmp_path / "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_base_save_pretrained_round_trips_with_adapters_attached(tmp_path):
    model, inputs = _trained()
    ak.set_active(model, None)
    base = logits(model, inputs)
    model.save_pretrained(tmp_path / "base")
    reloaded = type(model).from_pretrained(tmp_path / "base").eval()
    assert torch.equal(logits(reloaded, inputs), base)


def test_config_json_round_trip_and_validation():
    cfg = ak.AdapterConfig(reduction_factor=16, placement="parallel", scaling=4.0, layers=(3, 1))
    assert cfg.layers == (1, 3)
    assert ak.AdapterConfig.from_json(cfg.to_json()) == cfg
    assert cfg.bottleneck_size(384) == 24 and ak.AdapterConfig().bottleneck_size(384) == 64
    for bad, match in [(dict(size=0), "size"), (dict(placement="middle"), "placement"), (dict(init_std=-1e-3), "init_std"),
                       (dict(init_std=float("nan")), "init_std"), (dict(layers=(-1,)), "layers"), (dict(size=8, reduction_factor=2), "either"),
                       (dict(activation="softmax"), "activation"), (dict(scaling=2.0), "parallel")]:
        with pytest.raises(ak.AdapterConfigError, match=match):
            ak.AdapterConfig(**bad)
    with pytest.raises(ak.AdapterConfigError, match="unknown AdapterConfig field"):
        ak.AdapterConfig.from_dict({"sise": 8})

"""Issue 13 (hardening), the library side: limits before allocation, checksums over the config, transactional
add/load, files read once from inside a root, saves that never delete what adapterkit did not write,
deterministic bytes, umask permissions."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import stat
import weakref

import pytest
import torch
from conftest import logits, tiny_inputs, tiny_model
from test_io import resign

import adapterkit as ak
import adapterkit.io  # noqa: F401  (ak.io)
import adapterkit.kinds as akkinds
import adapterkit.model as akmodel
from adapterkit.checks import MAX_CONFIG_BYTES, config_digest
from adapterkit.io import CONFIG_FILE, WEIGHTS_FILE


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trained-looking adapter (non-trivial weights) saved once; tests copy it."""
    model = tiny_model("bert")
    ak.add_adapter(model, "a", ak.AdapterConfig(size=8), head=3)
    with torch.no_grad():
        for p in ak.adapter_parameters(model, "a"):
            p.add_(torch.randn_like(p) * 0.1)
    path = ak.save_adapter(model, "a", tmp_path_factory.mktemp("saved") / "a")
    ak.set_active(model, "a")
    return path, logits(model, tiny_inputs("bert"))


def copy_of(saved, tmp_path, name="a"):
    src, _ = saved
    dst = tmp_path / name
    dst.mkdir(parents=True)
    for f in (CONFIG_FILE, WEIGHTS_FILE):
        (dst / f).write_bytes((src / f).read_bytes())
    return dst


def snapshot(model):
    """Everything a failed add/load must leave as it was."""
    hooks = {n: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks), tuple(m._forward_hooks_with_kwargs))
             for n, m in model.named_modules()}
    state = model.__dict__.get("adapterkit")
    active = ak.active_adapter(model)
    outputs = {a: logits(ak.set_active(model, a), tiny_inputs("bert")) for a in [None, *ak.list_adapters(model)]}
    ak.set_active(model, active)
    return {
        "modules": [(n, type(m).__name__) for n, m in model.named_modules()],
        "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": hooks,
        "attrs": sorted(model.__dict__),
        "adapters": None if state is None else (dict(state.configs), dict(state.heads), state.routing.active),
        "outputs": outputs,
    }


def assert_same(before, after):
    assert after["modules"] == before["modules"]
    assert after["state_dict"].keys() == before["state_dict"].keys()
    assert all(torch.equal(after["state_dict"][k], v) for k, v in before["state_dict"].items())
    assert after["hooks"] == before["hooks"]
    assert after["attrs"] == before["attrs"] and after["adapters"] == before["adapters"]
    assert after["outputs"].keys() == before["outputs"].keys()
    assert all(torch.equal(after["outputs"][k], v) for k, v in before["outputs"].items())


def load_fails(model, path, match, **kw):
    before = snapshot(model)
    with pytest.raises(ak.AdapterLoadError, match=match) as err:
        ak.load_adapter(model, path, **kw)
    assert "\n" not in str(err.value) and len(str(err.value)) < 600
    assert_same(before, snapshot(model))
    return str(err.value)


# --- 1. limits and types, before anything is allocated ---------------------------------------------

class NoBottleneck(torch.nn.Module):
    def __init__(self, *a, **k):
        raise AssertionError("a bottleneck was allocated")


def test_a_huge_bottleneck_in_a_small_config_is_refused_before_allocating(saved, tmp_path, monkeypatch):
    path = copy_of(saved, tmp_path)
    resign(path / CONFIG_FILE, lambda m: m["config"].update(size=300000))
    assert (path / CONFIG_FILE).stat().st_size < 2000
    monkeypatch.setattr(akkinds, "Bottleneck", NoBottleneck)  # the bottleneck kinds build it (kinds.py)
    load_fails(tiny_model("bert"), path, r"bottleneck size 300000 is over 4x the hidden size 32 .*at most 128")
    with pytest.raises(ak.AdapterConfigError, match="bottleneck size 300000"):
        ak.add_adapter(tiny_model("bert"), "x", ak.AdapterConfig(size=300000))
    with pytest.raises(ak.AdapterConfigError, match="bottleneck size 3200"):  # reduction_factor 0.01 -> 3200
        ak.add_adapter(tiny_model("bert"), "x", ak.AdapterConfig(reduction_factor=0.01))


def test_add_adapter_accepts_up_to_the_limit():
    model = tiny_model("bert")
    ak.add_adapter(model, "x", ak.AdapterConfig(size=4 * 32), head=ak.heads.MAX_LABELS)
    assert ak.adapter_summary(model)["x"]["head_params"] == 33 * ak.heads.MAX_LABELS


@pytest.mark.parametrize("mutate,match", [
    (lambda m: m["config"].update(layers=[0, 7]), "layer index 7 out of range: the model has 2 layers"),
    (lambda m: m["head"].update(kind="classification", num_labels=10**9, labels=None), "num_labels must be an integer from 1 to 65536"),
    (lambda m: m["head"].update(labels=[1, 2, 3]), "labels must be a list"),
    (lambda m: m["head"].update(labels="abc"), "labels must be a list"),
    (lambda m: m["head"].update(num_labels=True), "num_labels"),
    (lambda m: m["head"].update(colour="red"), "unknown head field"),
    (lambda m: m["config"].update(size="8"), "size must be a positive integer"),
    (lambda m: m["config"].update(size=True), "size must be a positive integer"),
    (lambda m: m["config"].update(layers="01"), "layers must be a list"),
    (lambda m: m["config"].update(layers=[True]), "layers must be distinct non-negative integers"),
    (lambda m: m["config"].update(train_layer_norms="yes"), "train_layer_norms"),
    (lambda m: m["config"].update(activation=["gelu"]), "unknown activation"),
    (lambda m: m.update(config=[8]), "config is list, not an AdapterConfig"),
    (lambda m: m.update(files=["x"]), "files is list"),
    (lambda m: m.update(files={WEIGHTS_FILE: 5}), "files must be"),
    (lambda m: m.update(files={WEIGHTS_FILE: "0" * 64, "../../etc/passwd": "0" * 64}), "files must be"),
    (lambda m: m.pop("files"), "missing field.* files"),
    (lambda m: m.update(base_model=["bert"]), "base_model is list"),
    (lambda m: m.update(base_model={"x": [1]}), "base_model values"),
    (lambda m: m.update(extra=[1]), "extra is list"),
    (lambda m: m.update(extra={"deep": json.loads("[" * 70 + "]" * 70)}), "nested more than 64 deep"),
    (lambda m: m.update(extra={"s": "\ud800"}), "lone surrogate"),
    (lambda m: m.update(name="../x"), "name"),
    (lambda m: m.update(name="a\n"), "name"),
    (lambda m: m.update(parameters={"adapter_params": -1}), "parameters"),
    (lambda m: m.update(surprise=1), "unknown field"),
    (lambda m: m.update(adapterkit_format=3), "format 3.*upgrade adapterkit"),
    (lambda m: m.update(adapterkit_format="2"), "adapterkit_format"),
])
def test_every_config_field_is_checked(saved, tmp_path, mutate, match, monkeypatch):
    path = copy_of(saved, tmp_path)
    resign(path / CONFIG_FILE, mutate)
    monkeypatch.setattr(akkinds, "Bottleneck", NoBottleneck)  # the bottleneck kinds build it (kinds.py)
    message = load_fails(tiny_model("bert"), path, match)
    assert str(path) in message


@pytest.mark.parametrize("text,match", [
    ('{"a": 1, "a": 2}', "duplicate key"),
    ("[" * 100000 + "]" * 100000, "nested more than 64 deep"),
    ("\xff\xfe", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"adapterkit_format": 1e999}', "adapterkit_format"),
    ("1" * 5000, "not valid JSON"),  # int->str limits
])
def test_malformed_json_is_refused(saved, tmp_path, text, match):
    path = copy_of(saved, tmp_path)
    (path / CONFIG_FILE).write_bytes(text.encode("latin-1"))
    load_fails(tiny_model("bert"), path, match)
    with pytest.raises(ak.AdapterLoadError, match=match):
        ak.read_adapter_config(path)


def test_a_config_over_1_mib_is_refused_unread(saved, tmp_path, monkeypatch):
    path = copy_of(saved, tmp_path)
    meta = json.loads((path / CONFIG_FILE).read_text())
    meta["extra"] = {"pad": "x" * MAX_CONFIG_BYTES}
    text = json.dumps(meta)
    (path / CONFIG_FILE).write_text(text)
    monkeypatch.setattr("adapterkit.io.parse_json", lambda data: pytest.fail("parsed"))
    load_fails(tiny_model("bert"), path, f"is {len(text)} bytes, more than the {MAX_CONFIG_BYTES}")


def test_save_refuses_extra_that_would_not_load_again(tmp_path):
    model = tiny_model("bert")
    ak.add_adapter(model, "a", ak.AdapterConfig(size=8))
    for extra, match in [({"s": "\udc80"}, "lone surrogate"), ({"big": "x" * MAX_CONFIG_BYTES}, "store less in extra"),
                         ([1], "extra must be")]:
        with pytest.raises(ValueError, match=match):
            ak.save_adapter(model, "a", tmp_path / "a", extra=extra)
    assert list(tmp_path.iterdir()) == []


# --- safetensors header, values -------------------------------------------------------------------

def _rewrite_weights(path, tensors, metadata=None):
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    (path / WEIGHTS_FILE).write_bytes(data)
    resign(path / CONFIG_FILE, lambda m: m["files"].update({WEIGHTS_FILE: hashlib.sha256(data).hexdigest()}))


def _tensors(path):
    from safetensors.torch import load

    return load((path / WEIGHTS_FILE).read_bytes())


@pytest.mark.parametrize("damage,match", [
    ("nan", "holds NaN or infinite values"),
    ("inf", "holds NaN or infinite values"),
    ("int_dtype", "has dtype 'I64'.*floating point"),
    ("bool_dtype", "has dtype 'BOOL'"),
    ("extra_tensor", "1 unexpected"),
    ("missing_tensor", "1 missing tensor"),
    ("wrong_shape", r"has shape \(8, 33\), the model expects \(8, 32\)"),
])
def test_weights_are_checked_against_the_model_before_allocating(saved, tmp_path, damage, match, monkeypatch):
    path = copy_of(saved, tmp_path)
    tensors = _tensors(path)
    key = next(k for k in sorted(tensors) if k.endswith("down.weight"))
    if damage == "nan":
        tensors[key] = torch.full_like(tensors[key], float("nan"))
    elif damage == "inf":
        tensors[key][0, 0] = float("-inf")
    elif damage == "int_dtype":
        tensors[key] = tensors[key].to(torch.int64)
    elif damage == "bool_dtype":
        tensors[key] = tensors[key] > 0
    elif damage == "extra_tensor":
        tensors["classifier.adapters.sneaky"] = torch.zeros(3)
    elif damage == "missing_tensor":
        del tensors[key]
    elif damage == "wrong_shape":
        tensors[key] = torch.zeros(8, 33)
    _rewrite_weights(path, tensors)
    if damage not in ("nan", "inf"):  # the header alone tells: no bottleneck is built
        monkeypatch.setattr(akkinds, "Bottleneck", NoBottleneck)  # the bottleneck kinds build it (kinds.py)
    load_fails(tiny_model("bert"), path, match)


def test_a_header_claiming_more_bytes_than_the_file_is_refused(saved, tmp_path):
    path = copy_of(saved, tmp_path)
    data = bytearray((path / WEIGHTS_FILE).read_bytes())
    data[:8] = (2**62).to_bytes(8, "little")
    (path / WEIGHTS_FILE).write_bytes(bytes(data))
    resign(path / CONFIG_FILE, lambda m: m["files"].update({WEIGHTS_FILE: hashlib.sha256(bytes(data)).hexdigest()}))
    load_fails(tiny_model("bert"), path, "damaged header")


def test_weights_bigger_than_the_config_can_need_are_refused_unread(saved, tmp_path):
    path = copy_of(saved, tmp_path)
    with open(path / WEIGHTS_FILE, "ab") as f:
        f.truncate(64 << 20)  # sparse: 64 MiB for an adapter of a few KB
    load_fails(tiny_model("bert"), path, "more than the .* an adapter of this config can need")


# --- 2. the checksum covers the config, and is required -----------------------------------------------

def test_config_checksum_catches_any_edit_and_format_1_still_loads(saved, tmp_path):
    path = copy_of(saved, tmp_path)
    meta = json.loads((path / CONFIG_FILE).read_text())
    assert meta["adapterkit_format"] == 2 and meta["config_sha256"] == config_digest(meta)
    meta["head"]["labels"] = ["x", "y", "z"]  # an edit without re-signing
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    load_fails(tiny_model("bert"), path, r"config was changed after it was saved \(config_sha256 mismatch\)")

    v1 = copy_of(saved, tmp_path, "v1")  # what adapterkit wrote before: format 1, no config checksum
    meta = json.loads((v1 / CONFIG_FILE).read_text())
    meta["adapterkit_format"] = 1
    del meta["config_sha256"]
    (v1 / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    fresh = tiny_model("bert")
    assert ak.load_adapter(fresh, v1) == "a"
    assert torch.equal(logits(ak.set_active(fresh, "a"), tiny_inputs("bert")), saved[1])
    meta["extra"] = {"edited": True}  # format 1 cannot notice this; its weights checksum is now required
    del meta["files"]
    (v1 / CONFIG_FILE).write_text(json.dumps(meta))
    load_fails(tiny_model("bert"), v1, "missing field.* files")


# --- 3. add_adapter and load_adapter are transactions -------------------------------------------------

def _with_adapter(placement="parallel"):
    model = tiny_model("bert")
    ak.add_adapter(model, "old", ak.AdapterConfig(size=4, placement=placement, **({"scaling": 2.0} if placement == "parallel" else {})), head=2)
    with torch.no_grad():
        for p in ak.adapter_parameters(model, "old"):
            p.add_(0.05)
    return model


@pytest.mark.parametrize("error", [MemoryError, KeyboardInterrupt, RuntimeError])
@pytest.mark.parametrize("fail_at", [1, 3, "norm", "head"])
@pytest.mark.parametrize("existing", [None, "houlsby", "parallel"])  # the new adapter is parallel: it hooks inputs too
def test_a_failed_add_adapter_leaves_the_model_exactly_as_it_was(monkeypatch, error, fail_at, existing):
    model = _with_adapter(existing) if existing else tiny_model("bert")
    before = snapshot(model)
    made = []
    real = akkinds.Bottleneck  # the bottleneck kinds build it (kinds.py)

    class Failing(real):
        def __init__(self, *a, **k):
            if fail_at == len(made) + 1:
                raise error("injected")
            super().__init__(*a, **k)
            made.append(weakref.ref(self))

    monkeypatch.setattr(akkinds, "Bottleneck", Failing)
    if fail_at == "norm":
        real_copy = akmodel.ModuleCopies.copy_of_base
        calls = []

        def copy_of_base(self):
            calls.append(1)
            if len(calls) == 3:
                raise error("injected")
            return real_copy(self)

        monkeypatch.setattr(akmodel.ModuleCopies, "copy_of_base", copy_of_base)
    if fail_at == "head":
        monkeypatch.setattr(akmodel, "replace_last_linear", lambda *a: (_ for _ in ()).throw(error("injected")))
    with pytest.raises(error, match="injected"):
        ak.add_adapter(model, "new", ak.AdapterConfig(size=16, placement="parallel", scaling=0.5), head=5)
    monkeypatch.undo()
    gc.collect()
    assert made == [] if fail_at == 1 else all(r() is None for r in made) and made  # the half-built adapter is freed
    assert_same(before, snapshot(model))
    ak.add_adapter(model, "new", ak.AdapterConfig(size=16, placement="parallel", scaling=0.5), head=5)  # and works after


def test_a_failed_copy_in_load_adapter_leaves_the_model_as_it_was(saved, monkeypatch):
    model = _with_adapter("houlsby")
    before = snapshot(model)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(akmodel, "adapter_tensors", interrupted)  # what fill() copies into
    with pytest.raises(KeyboardInterrupt):
        ak.load_adapter(model, saved[0])
    monkeypatch.undo()
    assert_same(before, snapshot(model))
    assert ak.load_adapter(model, saved[0]) == "a"
    assert torch.equal(logits(ak.set_active(model, "a"), tiny_inputs("bert")), saved[1])


def test_removing_the_last_parallel_adapter_unhooks_the_sublayer_input():
    model = tiny_model("bert")
    hooks = {n: len(m._forward_pre_hooks) + len(m._forward_hooks) for n, m in model.named_modules()}
    ak.add_adapter(model, "s", ak.AdapterConfig(size=4))
    ak.add_adapter(model, "p", ak.AdapterConfig(size=4, placement="parallel"))
    ak.remove_adapter(model, "p")
    ak.remove_adapter(model, "s")
    assert {n: len(m._forward_pre_hooks) + len(m._forward_hooks) for n, m in model.named_modules()} == hooks


def test_planned_tensors_are_what_add_adapter_builds():
    for arch in ("bert", "roberta", "t5", "gpt2", "distilbert", "vit"):
        for config, head in [(ak.AdapterConfig(size=8, placement="parallel"), None if arch == "t5" else 3),
                             (ak.AdapterConfig(reduction_factor=4, placement="pfeiffer", layers=(1,)), None)]:
            model = tiny_model(arch)
            planned = akmodel.planned_tensors(model, config, head)
            ak.add_adapter(model, "x", config, head=head)
            assert {k: tuple(v.shape) for k, v in akmodel.adapter_tensors(model, "x").items()} == planned


# --- 4. files read once, from inside the root -------------------------------------------------------

def test_root_keeps_every_file_inside_it(saved, tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    inside = copy_of(saved, root, "good")
    copy_of(saved, outside, "a")
    assert ak.load_adapter(tiny_model("bert"), inside, root=root) == "a"
    assert ak.read_adapter_config(inside, root=root)["name"] == "a"
    (root / "linked_dir").symlink_to(outside / "a")  # a directory symlink leading out
    mixed = root / "mixed"  # a real directory in the root, its weights a link leading out
    mixed.mkdir()
    (mixed / CONFIG_FILE).write_bytes((inside / CONFIG_FILE).read_bytes())
    (mixed / WEIGHTS_FILE).symlink_to(outside / "a" / WEIGHTS_FILE)
    system = root / "system"  # the config a link to a system file
    system.mkdir()
    (system / CONFIG_FILE).symlink_to("/etc/passwd")
    (system / WEIGHTS_FILE).symlink_to("/dev/zero")
    for path, match in [(root / "linked_dir", "outside the adapter root"), (root / ".." / "outside" / "a", "outside the adapter root"),
                        (mixed, f"{WEIGHTS_FILE} is a link to a file outside the adapter root"),
                        (system, f"{CONFIG_FILE} is a link to a file outside the adapter root"), (outside / "a", "outside")]:
        load_fails(tiny_model("bert"), path, match, root=root)
        if path != mixed:
            with pytest.raises(ak.AdapterLoadError, match=match):
                ak.read_adapter_config(path, root=root)
    assert ak.load_adapter(tiny_model("bert"), mixed) == "a"  # root=None: no restriction, as before
    linked_inside = root / "linked_inside"  # links that stay inside the root are fine
    linked_inside.symlink_to(inside)
    assert ak.load_adapter(tiny_model("bert"), linked_inside, root=root) == "a"


def test_only_regular_files_are_read(saved, tmp_path):
    path = copy_of(saved, tmp_path)
    (path / WEIGHTS_FILE).unlink()
    os.mkfifo(path / WEIGHTS_FILE)  # opening a FIFO for reading would block forever
    load_fails(tiny_model("bert"), path, "not a regular file", root=tmp_path)
    (path / WEIGHTS_FILE).unlink()
    (path / WEIGHTS_FILE).mkdir()
    load_fails(tiny_model("bert"), path, "not a regular file|cannot be opened")


def test_each_file_is_read_once_and_what_is_checked_is_what_is_loaded(saved, tmp_path, monkeypatch):
    path = copy_of(saved, tmp_path)
    opened = []
    real_open = os.open

    def counting_open(p, flags, *a, **k):
        opened.append(os.fspath(p))
        return real_open(p, flags, *a, **k)

    monkeypatch.setattr(os, "open", counting_open)
    real_check = ak.io.check_header

    def check_then_swap(data, expected, shown):  # replace the file on disk once its bytes were checked
        real_check(data, expected, shown)
        tensors = {k: torch.zeros_like(v) for k, v in _tensors(path).items()}
        _rewrite_weights(path, tensors)

    monkeypatch.setattr(ak.io, "check_header", check_then_swap)
    fresh = tiny_model("bert")
    ak.load_adapter(fresh, path, root=tmp_path)
    names = [os.path.basename(p) for p in opened]
    assert names.count(CONFIG_FILE) == 1 and names.count(WEIGHTS_FILE) == 1
    assert torch.equal(logits(ak.set_active(fresh, "a"), tiny_inputs("bert")), saved[1])


# --- 5. save never deletes what adapterkit did not write ---------------------------------------------

def test_save_refuses_to_replace_what_is_not_an_adapter_directory(tmp_path):
    model = tiny_model("bert")
    ak.add_adapter(model, "a", ak.AdapterConfig(size=8))
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    project = tmp_path / "project"
    project.mkdir()
    (project / "main.py").write_text("print(1)")
    json_dir = tmp_path / "json_dir"
    json_dir.mkdir()
    (json_dir / CONFIG_FILE).write_text('{"model_type": "bert"}')  # someone else's adapter_config.json
    adapter = ak.save_adapter(model, "a", tmp_path / "adapter")
    (adapter / "README.md").write_text("my notes")
    link = tmp_path / "link"
    link.symlink_to(project)
    before = {p: (p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*")}
    for target, match in [(a_file, "not a directory"), (project, "is not an adapterkit adapter directory"),
                          (json_dir, "is not an adapterkit adapter directory"), (adapter, "holds 'README.md'"),
                          (link, "is a symlink")]:
        with pytest.raises(FileExistsError, match=match):
            ak.save_adapter(model, "a", target)
    assert {p: (p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*")} == before
    (adapter / "README.md").unlink()
    ak.save_adapter(model, "a", adapter)  # an adapter directory is replaced, an empty one filled
    (tmp_path / "empty").mkdir()
    ak.save_adapter(model, "a", tmp_path / "empty")
    assert sorted(os.listdir(tmp_path / "empty")) == sorted([CONFIG_FILE, WEIGHTS_FILE])


# --- 6. deterministic bytes, permissions --------------------------------------------------------

def test_equal_tensors_give_byte_identical_files(saved, tmp_path):
    model = tiny_model("bert")
    ak.load_adapter(model, saved[0])
    first = ak.save_adapter(model, "a", tmp_path / "one")
    second = ak.save_adapter(model, "a", tmp_path / "two")
    again = tiny_model("bert")  # the same tensors in another model object, loaded from the first save
    ak.load_adapter(again, first)
    third = ak.save_adapter(again, "a", tmp_path / "three")
    for f in (WEIGHTS_FILE, CONFIG_FILE):
        digests = {hashlib.sha256((d / f).read_bytes()).hexdigest() for d in (saved[0], first, second, third)}
        assert len(digests) == 1, f


@pytest.mark.parametrize("umask,dir_mode,file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640), (0o077, 0o700, 0o600)])
def test_saved_files_follow_the_umask(tmp_path, umask, dir_mode, file_mode):
    model = tiny_model("bert")
    ak.add_adapter(model, "a", ak.AdapterConfig(size=8))
    old = os.umask(umask)
    try:
        path = ak.save_adapter(model, "a", tmp_path / "a")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == dir_mode
    assert {stat.S_IMODE((path / f).stat().st_mode) for f in (CONFIG_FILE, WEIGHTS_FILE)} == {file_mode}


def test_a_directory_written_by_the_previous_release_still_loads(tmp_path):
    """tests/data/format1_adapter was written by adapterkit before issue 13 (format 1: no config_sha256, two
    safetensors metadata keys) from tiny_model("bert"); it loads, and re-saves as format 2 with equal tensors."""
    from pathlib import Path

    from safetensors.torch import load_file

    v1 = Path(__file__).parent / "data" / "format1_adapter"
    assert json.loads((v1 / CONFIG_FILE).read_text())["adapterkit_format"] == 1
    model = tiny_model("bert")
    assert ak.load_adapter(model, v1, root=v1.parent, check_base=False) == "v1"  # robust to a torch upgrade re-drawing tiny_model
    saved = load_file(v1 / WEIGHTS_FILE)
    loaded = akmodel.adapter_tensors(model, "v1")
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    expected = logits(ak.set_active(model, "v1"), tiny_inputs("bert"))
    again = ak.save_adapter(model, "v1", tmp_path / "v2", extra=ak.read_adapter_config(v1)["extra"])
    meta = ak.read_adapter_config(again)
    assert meta["adapterkit_format"] == 2 and meta["extra"]["task"] == "format-1 fixture"
    fresh = tiny_model("bert")
    ak.load_adapter(fresh, again)
    assert torch.equal(logits(ak.set_active(fresh, "v1"), tiny_inputs("bert")), expected)

"""Model aliases and the errors a user sees for a bad --model."""

import pytest

from adapterkit.models import ModelError, load_model


def test_missing_model_directory_is_named(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_saved_head_of_another_size_is_a_one_line_error(tmp_path):
    model, tokenizer = load_model("minilm", "classification", num_labels=2)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="task head of another size") as err:
        load_model(str(tmp_path), "classification", num_labels=5)
    assert "\n" not in str(err.value)
    again, _ = load_model(str(tmp_path), "classification", labels=["a", "b"])
    assert again.config.id2label == {0: "a", 1: "b"}


def test_auto_kind_serves_an_encoder_as_classification_and_checks_the_hub_once(monkeypatch):
    """kind "auto" (what `adapterkit serve` loads): an encoder is a classifier; a hub id costs one hub check."""
    import adapterkit.models as models

    calls = []
    monkeypatch.setattr(models, "_hub_local_only", lambda name: calls.append(name) or True)
    monkeypatch.setattr(models, "resolve_model", lambda name: "some-org/not-local")  # as a hub id resolves
    with pytest.raises(ModelError, match="cannot load model"):  # nothing cached: from_pretrained fails
        load_model("some-org/not-local", kind="auto")
    assert calls == ["some-org/not-local"]
    monkeypatch.undo()
    model, _ = load_model("minilm", kind="auto")
    assert type(model).__name__ == "BertForSequenceClassification"


def test_unpacking_a_model_twice_at_once_keeps_the_first_complete_copy(tmp_path, monkeypatch):
    """Two runner processes filling the same model cache at once: the loser must not delete the copy
    the winner is already reading (this once failed a SmolLM2 run with 'no file named model.safetensors')."""
    from adapterkit import models

    monkeypatch.setenv("ADAPTERKIT_CACHE", str(tmp_path / "packages"))
    target = models.models_dir() / "toy"

    def fill_while_another_process_wins(tmp):
        target.mkdir(parents=True)  # the other process renames its complete copy into place meanwhile
        (target / "config.json").write_text("{}")
        (target / "model.safetensors").write_text("winner")
        (tmp / "config.json").write_text("{}")
        (tmp / "model.safetensors").write_text("loser")

    assert models._unpack("toy", fill_while_another_process_wins) == target
    assert (target / "model.safetensors").read_text() == "winner"
    assert sorted(p.name for p in target.parent.iterdir()) == ["toy"]  # the loser's temporary copy is gone

    def fill(tmp):
        (tmp / "config.json").write_text("{}")

    leftover = models.models_dir() / "fresh"
    leftover.mkdir()  # an incomplete leftover (no config.json) is replaced
    (leftover / "partial.bin").write_text("x")
    assert models._unpack("fresh", fill) == leftover
    assert sorted(p.name for p in leftover.iterdir()) == ["config.json"]

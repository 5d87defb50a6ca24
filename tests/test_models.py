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

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

"""Shared fixtures: tiny random models of every preset architecture, and the real bundled MiniLM."""

from __future__ import annotations

import os

import pytest
import torch
import transformers
from transformers import AutoConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
transformers.logging.set_verbosity_error()

_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100)

# model_type -> (config overrides, auto class). Every preset in adapterkit.PRESETS has a row here.
TINY = {
    "bert": (_SMALL, "AutoModelForSequenceClassification"),
    "roberta": (_SMALL, "AutoModelForSequenceClassification"),
    "xlm-roberta": (_SMALL, "AutoModelForSequenceClassification"),
    "electra": ({**_SMALL, "embedding_size": 32}, "AutoModelForSequenceClassification"),
    "deberta-v2": (_SMALL, "AutoModelForSequenceClassification"),
    "distilbert": (dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=100), "AutoModelForSequenceClassification"),
    "mpnet": (_SMALL, "AutoModelForSequenceClassification"),
    "gpt2": (dict(n_embd=32, n_layer=2, n_head=2, vocab_size=100, pad_token_id=0), "AutoModelForSequenceClassification"),
    "llama": ({**_SMALL, "num_key_value_heads": 1, "pad_token_id": 0}, "AutoModelForSequenceClassification"),
    "mistral": ({**_SMALL, "num_key_value_heads": 1, "pad_token_id": 0}, "AutoModelForSequenceClassification"),
    "qwen2": ({**_SMALL, "num_key_value_heads": 1, "pad_token_id": 0}, "AutoModelForSequenceClassification"),
    "t5": (dict(d_model=32, num_layers=2, num_heads=2, d_ff=64, d_kv=16, vocab_size=100), "AutoModelForSeq2SeqLM"),
    "vit": ({**_SMALL, "image_size": 16, "patch_size": 8}, "AutoModelForImageClassification"),
}


def tiny_model(model_type: str, seed: int = 0, **overrides) -> torch.nn.Module:
    kwargs, auto = TINY[model_type]
    config = AutoConfig.for_model(model_type, **{**kwargs, **overrides})
    torch.manual_seed(seed)
    return getattr(transformers, auto).from_config(config).eval()


def tiny_inputs(model_type: str, batch: int = 3, length: int = 8, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if model_type == "vit":
        return {"pixel_values": torch.randn(batch, 3, 16, 16, generator=g)}
    ids = torch.randint(1, 100, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0  # one padded row (right padding)
    ids[0, -3:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if model_type == "t5":
        inputs["decoder_input_ids"] = torch.randint(1, 100, (batch, 4), generator=g)
    return inputs


def spy_taken(monkeypatch, cls, method: str) -> list[bool]:
    """Patch ``cls.method`` to record, per call, whether it returned something (True) or None (False)."""
    taken = []
    original = getattr(cls, method)

    def counting(self, *args):
        result = original(self, *args)
        taken.append(result is not None)
        return result

    monkeypatch.setattr(cls, method, counting)
    return taken


def assert_rows_match_alone(model, names: list, seed: int, atol: float, tokens: int = 6, vocab: int = 100) -> None:
    """Logits of a mixed batch (inference mode), row by row, against each row run alone with its adapter."""
    import adapterkit as ak

    ids = torch.randint(1, vocab, (len(names), tokens), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        with ak.use_adapter(model, names):
            mixed = model(input_ids=ids).logits
        for i, name in enumerate(names):
            with ak.use_adapter(model, name):
                alone = model(input_ids=ids[i : i + 1]).logits
            torch.testing.assert_close(mixed[i : i + 1], alone, atol=atol, rtol=0)


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    from adapterkit.models import resolve_model

    return resolve_model("minilm")


@pytest.fixture(scope="session")
def minilm_batch(minilm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    return dict(tok(["a gripping, beautifully acted film", "dull and far too long", "it is a movie"],
                    padding=True, return_tensors="pt"))


def load_minilm(minilm_dir: str, num_labels: int = 2, seed: int = 0):
    torch.manual_seed(seed)  # the classifier head is new: seed it so two loads are the same model
    return transformers.AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=num_labels).eval()


def reloaded_logits(model, name: str, directory, inputs, model_type: str = "bert") -> torch.Tensor:
    """Save adapter ``name``, load it into a fresh tiny model of ``model_type`` and return its logits there."""
    import adapterkit as ak

    ak.save_adapter(model, name, directory)
    fresh = tiny_model(model_type)
    ak.load_adapter(fresh, directory)
    ak.set_active(fresh, name)
    return logits(fresh, inputs)

"""The core on the real pretrained all-MiniLM-L6-v2 (bundled), and with the HF tools users combine it with."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import TINY, load_minilm, logits, tiny_inputs, tiny_model
from transformers import AutoConfig

import adapterkit as ak


def _steps(model, name, batch, labels, steps=3, lr=1e-2):
    ak.train_adapter(model, name)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        model(**batch, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def test_minilm_houlsby_64_counts_match_the_paper_formula(minilm_dir):
    model = load_minilm(minilm_dir)
    ak.add_adapter(model, "a", ak.AdapterConfig(size=64))
    s = ak.adapter_summary(model)["a"]
    assert s["adapter_params"] == 6 * 2 * (2 * 64 * 384 + 384 + 64) == 595_200
    assert s["layer_norm_params"] == 6 * 2 * 2 * 384
    assert s["head_params"] == 384 * 2 + 2
    assert s["trainable_params"] == s["adapter_params"] + s["layer_norm_params"] + s["head_params"]
    assert s["base_params"] == 22_713_986 and s["percent"] < 3.0


def test_minilm_pooler_is_untrained_and_train_pooler_gives_a_head_its_own_copy(minilm_dir):
    """all-MiniLM-L6-v2 pools by mean and ships BERT's pooler untouched since initialisation (zero bias,
    N(0, ~0.01) weights), so the frozen pooler the default head reads is a random projection of [CLS].
    train_pooler=True copies it and trains the copy; the model's own pooler stays frozen."""
    model = load_minilm(minilm_dir)
    pooler = model.bert.pooler.dense
    assert not pooler.bias.any() and pooler.weight.std() < 0.02
    ak.add_adapter(model, "own", head=ak.HeadConfig("own", train_pooler=True))
    ak.add_adapter(model, "shared")
    assert ak.adapter_summary(model)["own"]["head_params"] - ak.adapter_summary(model)["shared"]["head_params"] == 384 * 384 + 384
    ak.train_adapter(model, "own")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("bert.pooler.adapters.adapters.own.") for n in trainable)
    assert not model.bert.pooler.dense.weight.requires_grad


def test_minilm_identity_training_isolation_and_round_trip(minilm_dir, minilm_batch, tmp_path):
    model = load_minilm(minilm_dir)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    base = logits(model, minilm_batch)
    labels = torch.tensor([1, 0, 1])

    ak.add_adapter(model, "zero", ak.AdapterConfig(init_std=0))
    ak.set_active(model, "zero")
    assert torch.equal(logits(model, minilm_batch), base)

    ak.add_adapter(model, "a")
    _steps(model, "a", minilm_batch, labels)
    ak.set_active(model, "a")
    a_logits = logits(model, minilm_batch)
    assert not torch.equal(a_logits, base)

    ak.add_adapter(model, "b", ak.AdapterConfig(size=16), head=3)
    _steps(model, "b", minilm_batch, torch.tensor([2, 0, 1]))
    ak.set_active(model, "a")
    assert torch.equal(logits(model, minilm_batch), a_logits)  # B trained, A bit-identical
    ak.set_active(model, None)
    assert torch.equal(logits(model, minilm_batch), base)  # base model bit-identical
    for k, v in base_state.items():
        assert torch.equal(model.state_dict()[k], v), k

    ak.save_adapter(model, "a", tmp_path / "a")
    fresh = load_minilm(minilm_dir, seed=123)  # another random classifier: the adapter brings its own head
    ak.load_adapter(fresh, tmp_path / "a")
    ak.set_active(fresh, "a")
    assert torch.equal(logits(fresh, minilm_batch), a_logits)


def test_hf_trainer_trains_only_the_adapter(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = tiny_model("bert")
    ak.add_adapter(model, "a", ak.AdapterConfig(size=8))
    ak.train_adapter(model, "a")
    frozen = {n: p.clone() for n, p in ak.base_parameters(model)}
    adapter_before = [p.clone() for p in ak.adapter_parameters(model, "a")]
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(1, 100, (8,), generator=g), "labels": torch.tensor(i % 2)} for i in range(16)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2,
                             report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no")
    Trainer(model=model, args=args, train_dataset=rows).train()
    assert all(torch.equal(p, frozen[n]) for n, p in ak.base_parameters(model))
    assert any(not torch.equal(a, b) for a, b in zip(adapter_before, ak.adapter_parameters(model, "a")))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_generate_runs_with_an_adapter_on_causal_lms(arch):
    config = AutoConfig.for_model(arch, **TINY[arch][0])
    torch.manual_seed(0)
    lm = transformers.AutoModelForCausalLM.from_config(config).eval()
    ids = tiny_inputs(arch)["input_ids"][1:]
    base = lm.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    ak.add_adapter(lm, "a", ak.AdapterConfig(size=8, init_std=0))  # LM head is shared, frozen
    assert ak.adapter_summary(lm)["a"]["head_params"] == 0
    ak.set_active(lm, "a")
    assert torch.equal(lm.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0), base)
    with torch.no_grad():
        for p in ak.adapter_parameters(lm, "a"):
            p.add_(torch.randn_like(p) * 0.5)
    out = lm.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == base.shape


@pytest.mark.slow
def test_torch_compile_runs_the_adapted_model():
    model, inputs = tiny_model("bert"), tiny_inputs("bert")
    ak.add_adapter(model, "a", ak.AdapterConfig(size=8, init_std=1e-2))
    ak.set_active(model, "a")
    eager = logits(model, inputs)
    compiled = torch.compile(model)
    with torch.no_grad():
        assert torch.allclose(compiled(**inputs).logits, eager, atol=1e-5)

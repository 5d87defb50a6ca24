"""Generative tasks (squad-gen, trec-gen, rotten_tomatoes-gen): chat-template features with the loss on the
answer only, generated-text scoring, training a tiny random Llama with adapters and with PEFT LoRA, and eval."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from adapterkit import metrics as M
from adapterkit.cli import app
from adapterkit.data import load_task
from adapterkit.data.generative import SQUAD_MAX_CONTEXT_WORDS, TREC_WORDS
from adapterkit.evaluation import load_trained, predict
from adapterkit.features import collate, target_count
from adapterkit.gentask import tokenize_chat
from adapterkit.models import resolve_model
from adapterkit.train import TrainConfig

from train_helpers import train_keeping_model


@pytest.fixture(scope="module")
def smol_tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model("smollm2"))


@pytest.fixture(scope="module")
def tiny_chat_llama(tmp_path_factory, smol_tokenizer):
    """A tiny random Llama with SmolLM2's tokenizer (and so its chat template)."""
    directory = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(smol_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         pad_token_id=smol_tokenizer.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(directory)
    smol_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def squad_dir(tmp_path_factory):
    """SQuAD v1.1 JSON of 3 articles x 2 short paragraphs x 2 questions (split 80/20 by article). Short
    passages keep the tiny model's steps cheap: its cost is the 49k-token vocabulary's logits per position."""
    directory = tmp_path_factory.mktemp("squad")
    names = ["alice", "bob", "carol", "dave", "erin", "frank"]
    data = []
    for a in range(3):
        paragraphs = []
        for p in range(2):
            first, second = names[(a + p) % 6], names[(a + p + 2) % 6]
            context = f"the prize went to {first} in paris . {second} lives in rome ."
            paragraphs.append({"context": context, "qas": [
                {"id": f"{a}-{p}-0", "question": "who got the prize ?",
                 "answers": [{"text": first, "answer_start": context.index(first)}]},
                {"id": f"{a}-{p}-1", "question": "who lives in rome ?",
                 "answers": [{"text": second, "answer_start": context.index(second)}]}]})
        data.append({"title": f"article {a}", "paragraphs": paragraphs})
    (directory / "dev-v1.1.json").write_text(json.dumps({"version": "1.1", "data": data}))
    return directory


# ---- features ---------------------------------------------------------------------------------------
def test_features_are_the_chat_template_with_loss_on_the_answer_only(smol_tokenizer):
    tok = smol_tokenizer
    examples = [{"prompt": "What is the capital of France?", "answer": "Paris", "references": ["Paris"]},
                {"prompt": "Name two colours.", "answer": "red and a deep blue", "references": ["red"]}]
    features = tokenize_chat(examples, tok, max_length=512)
    for e, f in zip(examples, features):
        conversation = [{"role": "user", "content": e["prompt"]}, {"role": "assistant", "content": e["answer"]}]
        full = tok(tok.apply_chat_template(conversation, tokenize=False), add_special_tokens=False)["input_ids"]
        ids, n = f["input_ids"], f["prompt_length"]
        # Exactly the tokenised conversation up to and including the assistant's <|im_end|>.
        assert ids == full[: len(ids)] and ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
        assert tok.decode(ids[:n]).startswith("<|im_start|>system\n") and tok.decode(ids[:n]).endswith(
            "<|im_start|>user\n" + e["prompt"] + "<|im_end|>\n<|im_start|>assistant\n")
        assert f["labels"][:n] == [-100] * n
        assert f["labels"][n:] == ids[n:]
        assert tok.decode(ids[n:-1]) == e["answer"]
    batch = collate(features, "generation", tok.pad_token_id)
    short, long_ = sorted(range(2), key=lambda i: len(features[i]["input_ids"]))
    pad = len(features[long_]["input_ids"]) - len(features[short]["input_ids"])
    assert pad > 0 and batch["labels"][short, -pad:].tolist() == [-100] * pad  # padding is ignored too
    assert batch["attention_mask"][short, -pad:].tolist() == [0] * pad
    # Loss terms: the answer's tokens and the end of turn, nothing else.
    n_answer = len(tok("Paris", add_special_tokens=False)["input_ids"]) + 1
    assert target_count(features[0], "generation") == n_answer


def test_over_long_rows_are_dropped_in_training_and_kept_for_validation(smol_tokenizer):
    examples = [{"prompt": "word " * 300, "answer": "x", "references": ["x"]},
                {"prompt": "short", "answer": "y", "references": ["y"]}]
    assert [f["example_index"] for f in tokenize_chat(examples, smol_tokenizer, 64)] == [1]
    assert [f["example_index"] for f in tokenize_chat(examples, smol_tokenizer, 64, training=False)] == [0, 1]


def test_a_tokenizer_without_chat_template_is_refused():
    tok = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    with pytest.raises(ValueError, match="chat template"):
        tokenize_chat([{"prompt": "a", "answer": "b", "references": ["b"]}], tok, 64)


# ---- scoring ----------------------------------------------------------------------------------------
def test_squad_scoring_of_generated_text_takes_the_best_gold():
    scores = M.compute_metrics("squad", ["the Eiffel Tower!", "in Paris France", "nothing"],
                               [["Eiffel Tower", "tower"], ["Paris", "Lyon"], ["London"]])
    assert scores["exact_match"] == pytest.approx(1 / 3)
    # F1 of "in paris france" vs "paris": precision 1/3, recall 1 -> 0.5
    assert scores["f1"] == pytest.approx((1 + 0.5 + 0) / 3) and scores["main"] == scores["f1"]


def test_label_accuracy_reads_the_first_line_without_case_or_punctuation():
    assert M.normalize_label("  Positive.\nBecause...") == "positive"
    predictions = ["Positive.", "negative because it is dull", "  human\nmore text", "Location", ""]
    references = ["positive", "negative", ["human"], "number", "number"]
    scores = M.compute_metrics("label_accuracy", predictions, references)
    assert scores["accuracy"] == pytest.approx(2 / 5) and scores["main"] == scores["accuracy"]


# ---- data -------------------------------------------------------------------------------------------
def test_trec_gen_is_trec_with_label_words():
    gen, base = load_task("trec-gen"), load_task("trec")
    assert gen.kind == "generation" and gen.metric == "label_accuracy" and gen.label_names is None
    assert len(gen.train) == len(base.train) and len(gen.validation) == len(base.validation)
    for g, b in zip(gen.validation[:50], base.validation[:50]):
        word = TREC_WORDS[base.label_names[b["label"]]]
        assert g["answer"] == word and g["references"] == [word] and b["text"].strip() in g["prompt"]


SQUAD_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad" / "dev-v1.1.json"


@pytest.mark.skipif(not SQUAD_DEV.is_file(), reason="no SQuAD dev file")  # as tests/test_data.py's SQuAD tests
def test_squad_gen_caps_the_paragraphs_and_keeps_every_gold_answer():
    gen, base = load_task("squad-gen"), load_task("squad")
    assert gen.kind == "generation" and gen.metric == "squad"
    by_id = {e["id"]: e for e in base.validation}
    assert 0 < len(gen.validation) < len(base.validation)
    for e in gen.validation:
        source = by_id[e["id"]]
        assert len(source["context"].split()) <= SQUAD_MAX_CONTEXT_WORDS
        assert e["references"] == source["answers"]["text"] and source["question"].strip() in e["prompt"]
    assert gen.split["generative"]["max_context_words"] == SQUAD_MAX_CONTEXT_WORDS


# ---- training and eval ------------------------------------------------------------------------------
def _base_state(directory) -> dict:
    return {k: v.clone() for k, v in LlamaForCausalLM.from_pretrained(directory).state_dict().items()}


def _train_spying(tmp_path, model_dir, squad_dir, method: str) -> tuple[dict, torch.nn.Module]:
    return train_keeping_model(TrainConfig(output=str(tmp_path / method), model=str(model_dir), task="squad-gen",
                                           method=method, data={"data_dir": str(squad_dir)}, epochs=2, batch_size=4,
                                           adapter_size=8, lr=1e-2, progress=False))


def _assert_base_untouched(model, base: dict) -> None:
    """Every base weight of the trained model is bit-identical to the saved base model's."""
    state = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items()}
    for name, value in base.items():
        assert torch.equal(state[name], value), name


@pytest.mark.parametrize("method", ["adapter", pytest.param("lora", marks=pytest.mark.skipif(
    importlib.util.find_spec("peft") is None, reason="needs peft (pip install adapterkit[lora])"))])
def test_squad_gen_trains_a_tiny_llama_and_eval_recomputes_the_scores(tmp_path, tiny_chat_llama, squad_dir, method):
    base = _base_state(tiny_chat_llama)
    metrics, model = _train_spying(tmp_path, tiny_chat_llama, squad_dir, method)
    assert metrics["kind"] == "generation" and metrics["metric"] == "squad"
    first, last = metrics["epochs"][0], metrics["epochs"][-1]
    assert last["train_loss"] < first["train_loss"]  # the answer tokens are being learnt
    assert set(metrics["best"]) >= {"exact_match", "f1", "loss", "main"}
    _assert_base_untouched(model, base)
    base_count = sum(p.numel() for p in LlamaForCausalLM.from_pretrained(tiny_chat_llama).parameters())
    assert metrics["total_params"] == base_count  # the base model's own, without the adapter's or LoRA's
    if method == "lora":  # r=16 on q (32 -> 32) and v (32 -> 16, one KV head) in 2 layers
        assert metrics["trainable_params"] == 2 * 16 * ((32 + 32) + (32 + 16)) and metrics["lora"]["r"] == 16
    result = CliRunner().invoke(app, ["eval", "--adapter", str(tmp_path / method / "adapter"), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output.strip().splitlines()[-1])
    best = metrics["best"]
    assert (scores["exact_match"], scores["f1"]) == (best["exact_match"], best["f1"])
    assert scores["loss"] == pytest.approx(best["loss"], rel=1e-6)
    out = predict(load_trained(tmp_path / method / "adapter"), "who got the prize ?",
                  "the prize went to alice in paris .", max_new_tokens=4)
    assert "Passage: the prize went to alice" in out["prompt"] and isinstance(out["generated"], str)
    info = CliRunner().invoke(app, ["info", str(tmp_path / method / "adapter")])
    assert info.exit_code == 0 and "trained on task squad-gen (generation)" in info.output, info.output
    if method == "lora":
        assert "lora       r 16, alpha 32" in info.output
        _assert_peft_loads_the_same(tmp_path / method / "adapter", tiny_chat_llama)


def _assert_peft_loads_the_same(adapter_dir: Path, base_dir: Path) -> None:
    """The saved LoRA is PEFT's own format: PeftModel.from_pretrained gives the same logits as load_trained."""
    import peft

    ours = load_trained(adapter_dir).model
    theirs = peft.PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_dir), str(adapter_dir)).eval()
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253]])
    with torch.no_grad():
        logits = ours(input_ids=ids).logits
        assert torch.equal(logits, theirs(input_ids=ids).logits)
        assert not torch.equal(logits, LlamaForCausalLM.from_pretrained(base_dir)(input_ids=ids).logits)


def test_lora_is_refused_on_a_classification_task(tmp_path, tiny_chat_llama):
    result = CliRunner().invoke(app, ["train", "--output", str(tmp_path / "x"), "--model", str(tiny_chat_llama),
                                      "--task", "trec", "--method", "lora", "--max-train", "8", "--quiet"])
    assert result.exit_code == 1
    assert "error: --method lora covers causal-LM tasks" in result.output and not (tmp_path / "x").exists()

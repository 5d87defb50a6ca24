"""The training loop on tiny random models: outputs, frozen weights, determinism, resume, eval == train,
span QA and causal LM. Real MiniLM runs are in test_train_real.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import adapterkit as ak
import adapterkit.train as T
from adapterkit.evaluation import load_trained, predict
from adapterkit.models import load_model
from adapterkit.train import TrainConfig, train

from train_helpers import save_tiny_bert, save_tiny_llama, train_keeping_model, write_sentiment, write_squad, write_text

REQUIRED_FIELDS = {"task", "method", "adapter_size", "placement", "trainable_params", "total_params", "trainable_pct",
                   "epochs", "best", "train_seconds", "examples_per_second", "seed", "split", "versions"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"bert": str(save_tiny_bert(root / "bert")), "data": write_sentiment(root / "data"), "root": root}


def config(tiny, output, **kw) -> TrainConfig:
    base = dict(output=str(output), model=tiny["bert"], task="local", data=tiny["data"], epochs=2, batch_size=8,
                eval_batch_size=8, lr=5e-3, progress=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def adapter_run(tiny):
    """One adapter run shared by several tests, with the model object it trained kept."""
    seen = {}

    def spy(*args, **kwargs):
        model, tok = load_model(*args, **kwargs)
        seen["model"] = model
        return model, tok

    out = tiny["root"] / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "load_model", spy)
        metrics = train(config(tiny, out, epochs=3))
    return {"out": out, "metrics": metrics, "model": seen["model"]}


def test_outputs_and_metrics_fields(adapter_run):
    out, metrics = adapter_run["out"], adapter_run["metrics"]
    assert {p.name for p in out.iterdir()} == {"metrics.json", "adapter", "curves.png", "adapterkit-run.json"}
    assert not list(out.parent.glob(".run.partial*"))
    written = json.loads((out / "metrics.json").read_text())
    assert REQUIRED_FIELDS <= set(written)
    assert len(written["epochs"]) == 3 and written["best"]["main"] == max(e["main"] for e in written["epochs"])
    assert written["trainable_pct"] < 10 and written["split"]["kind"] == "classification"
    assert {"torch", "transformers", "accelerate", "adapterkit"} <= set(written["versions"])
    assert all(0 < e["train_loss"] < 5 for e in written["epochs"])  # random tiny models barely learn: shape only
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_frozen_weights_bit_identical(adapter_run, tiny):
    trained = adapter_run["model"]
    torch.manual_seed(42)  # the headless checkpoint's unused base classifier is initialised as in train()
    fresh, _ = load_model(tiny["bert"], labels=["neg", "pos"])
    fresh_params = dict(fresh.named_parameters())
    base = dict(ak.base_parameters(trained))
    assert base.keys() == fresh_params.keys()
    for name, p in base.items():
        assert torch.equal(p, fresh_params[name]), name


def test_eval_reproduces_recorded_metrics(adapter_run):
    from typer.testing import CliRunner

    from adapterkit.cli import app

    result = CliRunner().invoke(app, ["eval", "--adapter", str(adapter_run["out"] / "adapter"), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    best = adapter_run["metrics"]["best"]
    assert scores == {k: v for k, v in best.items() if k not in ("epoch", "train_loss")}


def test_predict_gives_a_label(adapter_run):
    result = predict(load_trained(adapter_run["out"] / "adapter"), "a wonderful film , really wonderful")
    assert result["label"] in ("neg", "pos") and abs(sum(result["scores"].values()) - 1) < 1e-5


def test_deterministic_for_a_seed(tiny, adapter_run, tmp_path):
    again = train(config(tiny, tmp_path / "again", epochs=3))
    assert again["epochs"] == adapter_run["metrics"]["epochs"]
    a = load_file(adapter_run["out"] / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "again" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = train(config(tiny, tmp_path / "other", epochs=1, seed=7))
    assert other["epochs"][0] != adapter_run["metrics"]["epochs"][0]


def test_resume_after_interruption_matches_uninterrupted(tiny, adapter_run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_epoch = T._train_epoch

    def interrupted(*args, **kwargs):
        if args[6] == 1:  # the second epoch: Ctrl-C
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(T, "_train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt, match="--resume"):
        train(config(tiny, out, epochs=3))
    state = tmp_path / ".run.partial" / "checkpoint-1" / "state.json"
    assert not out.exists() and state.is_file()
    saved = json.loads(state.read_text())  # as written before train_pooler existed: it ran at its default
    del saved["config"]["train_pooler"]
    state.write_text(json.dumps(saved))
    monkeypatch.setattr(T, "_train_epoch", real_epoch)
    resumed = train(config(tiny, out, epochs=3, resume=True))
    expected = adapter_run["metrics"]
    assert resumed["epochs"] == expected["epochs"] and resumed["best"] == expected["best"]
    a = load_file(adapter_run["out"] / "adapter" / "adapter_model.safetensors")
    b = load_file(out / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / ".run.partial").exists()


def test_an_interrupted_run_is_not_restarted_silently(tiny, tmp_path, monkeypatch):
    """Rerunning without --resume keeps the finished epochs and says how to go on; --overwrite starts over."""
    real_epoch = T._train_epoch
    monkeypatch.setattr(T, "_train_epoch", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt) if a[6] == 1
                        else real_epoch(*a, **k))
    with pytest.raises(KeyboardInterrupt):
        train(config(tiny, tmp_path / "run", epochs=2))
    monkeypatch.undo()
    checkpoint = tmp_path / ".run.partial" / "checkpoint-1"
    before = sorted(p.name for p in checkpoint.iterdir())
    with pytest.raises(FileExistsError, match="interrupted run with epoch checkpoints.*--resume.*--overwrite"):
        train(config(tiny, tmp_path / "run", epochs=2))
    assert sorted(p.name for p in checkpoint.iterdir()) == before  # untouched
    train(config(tiny, tmp_path / "run", epochs=2, overwrite=True))
    assert (tmp_path / "run" / "metrics.json").is_file() and not (tmp_path / ".run.partial").exists()


def test_resume_refuses_changed_settings(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(T, "_train_epoch", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        train(config(tiny, tmp_path / "run", epochs=2))
    monkeypatch.undo()
    # No epoch finished: nothing to resume, so a changed run starts fresh.
    train(config(tiny, tmp_path / "run", epochs=1, resume=True))
    assert (tmp_path / "run" / "metrics.json").is_file()
    # One epoch finished, then a resume with another setting: refused, naming it.
    real_epoch = T._train_epoch
    monkeypatch.setattr(T, "_train_epoch", lambda *a, **k: real_epoch(*a, **k) if a[6] == 0 else (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        train(config(tiny, tmp_path / "two", epochs=2))
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"different settings \(train_pooler\)"):
        train(config(tiny, tmp_path / "two", epochs=2, resume=True, train_pooler=True))


@pytest.mark.parametrize("method", ["full", "top-k", "ln", "head"])
def test_every_method_trains_and_evaluates_back(tiny, tmp_path, method):
    out = tmp_path / method
    metrics = train(config(tiny, out, method=method, epochs=1, top_layers=1))
    assert metrics["method"] == method and metrics["trainable_params"] > 0
    trained = load_trained(out / "adapter")
    from adapterkit.data import load_task
    from adapterkit.evaluation import build_features, evaluate

    task = load_task("local", **tiny["data"])
    features = build_features(task.validation, task.kind, trained.tokenizer, metrics["max_length"], 128)
    scores = evaluate(trained.model, trained.tokenizer, task.kind, task.metric, task.validation, features, 8)
    assert scores == {k: v for k, v in metrics["best"].items() if k not in ("epoch", "train_loss")}


def test_regression_task(tiny, tmp_path):
    from train_helpers import write_csv

    rows = [{"sentence": f"{'very ' * (i % 5)}good", "score": float(i % 5)} for i in range(40)]
    data = {"train_file": str(write_csv(tmp_path / "r.csv", rows)), "text_column": "sentence", "label_column": "score"}
    metrics = train(config(tiny, tmp_path / "reg", data=data, epochs=1))
    assert metrics["kind"] == "regression" and {"pearson", "spearman", "main"} <= set(metrics["best"])


def test_span_qa_with_sliding_window(tmp_path):
    model = save_tiny_bert(tmp_path / "qa-bert", qa=True)
    squad = write_squad(tmp_path / "squad.json")
    metrics = train(TrainConfig(output=str(tmp_path / "qa"), model=str(model), task="squad",
                                data={"train_file": str(squad)}, epochs=1, batch_size=8, max_length=64,
                                doc_stride=16, lr=1e-3, progress=False))
    assert metrics["kind"] == "qa" and {"exact_match", "f1", "main"} <= set(metrics["best"])
    answer = predict(load_trained(tmp_path / "qa" / "adapter"), "who got the prize ?",
                     "the prize went to alice in paris .")
    assert isinstance(answer["answer"], str)


def test_qa_features_map_answers_back_to_text(tmp_path):
    from adapterkit import qa
    from train_helpers import tokenizer

    tok = tokenizer()
    squad = json.loads(write_squad(tmp_path / "s.json").read_text())
    paragraph = squad["data"][0]["paragraphs"][0]
    q = paragraph["qas"][0]
    example = {"id": q["id"], "question": q["question"], "context": paragraph["context"],
               "answers": {"text": [q["answers"][0]["text"]], "answer_start": [q["answers"][0]["answer_start"]]}}
    features = qa.prepare_features([example], tok, max_length=48, doc_stride=16)
    assert len(features) > 1  # the context needs several windows
    hits = [f for f in features if f["start_positions"] > 0]
    assert hits
    for f in hits:  # the target span's offsets cut out exactly the gold answer
        s, e = f["offsets"][f["start_positions"]], f["offsets"][f["end_positions"]]
        assert example["context"][s[0]: e[1]] == example["answers"]["text"][0]
    # post-processing picks the best valid span across windows
    import numpy as np

    f = hits[0]
    starts = [np.full(len(x["input_ids"]), -10.0) for x in features]
    ends = [np.full(len(x["input_ids"]), -10.0) for x in features]
    i = features.index(f)
    starts[i][f["start_positions"]], ends[i][f["end_positions"]] = 5.0, 5.0
    assert qa.postprocess([example], features, starts, ends) == [example["answers"]["text"][0]]


def test_causal_lm_adapter_and_generation(tmp_path):
    model = save_tiny_llama(tmp_path / "llama")
    text = write_text(tmp_path / "docs.txt")
    metrics = train(TrainConfig(output=str(tmp_path / "lm"), model=str(model), task="lm",
                                data={"train_file": str(text)}, epochs=1, batch_size=8, max_length=32, lr=1e-3,
                                progress=False))
    assert metrics["kind"] == "lm" and metrics["best"]["perplexity"] > 1
    assert metrics["trainable_pct"] < 50  # the tied LM head stays shared and frozen
    out = predict(load_trained(tmp_path / "lm" / "adapter"), "great film", max_new_tokens=5)
    assert isinstance(out["generated"], str)


def test_adapter_layers_and_init_std_shape_the_adapter(tiny, tmp_path):
    """--adapter-layers puts adapters (and their layer-norm copies) in those layers only; --init-std sets the
    init: 0 gives an exact identity, so before training the model is the base model."""
    seen = {}
    real_prepare = T.prepare

    def spy(model, *args, **kwargs):
        trainable = real_prepare(model, *args, **kwargs)
        seen["start"] = {n: p.detach().clone() for n, p in model.named_parameters() if ".adapters.task." in n}
        return trainable

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "prepare", spy)
        metrics = train(config(tiny, tmp_path / "upper", epochs=1, adapter_layers=[1], init_std=0.0))
    d, m = 32, 64  # the tiny BERT's width, the default bottleneck
    head = d * 2 + 2
    assert metrics["trainable_params"] == 2 * ak.bottleneck_parameter_count(d, m) + 2 * 2 * d + head
    assert metrics["adapter_layers"] == [1] and metrics["init_std"] == 0.0
    bottlenecks = {n for n in seen["start"] if ".down." in n or ".up." in n}
    assert bottlenecks and all(".layer.1." in n for n in bottlenecks)
    assert all(not seen["start"][n].any() for n in bottlenecks if "weight" in n)  # init_std 0: zero weights
    saved = json.loads((tmp_path / "upper" / "adapter" / "adapter_config.json").read_text())["config"]
    assert saved["layers"] == [1] and saved["init_std"] == 0.0


def test_bf16_autocast_trains_in_bf16_and_keeps_fp32_weights(tiny, tmp_path, adapter_run):
    dtypes = []
    real_loss = T.loss_sum

    def spy(outputs, batch, kind):
        dtypes.append(outputs.logits.dtype)
        return real_loss(outputs, batch, kind)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "loss_sum", spy)
        metrics = train(config(tiny, tmp_path / "bf16", epochs=3, bf16=True))
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert metrics["bf16"] is True and all(torch.isfinite(torch.tensor(e["train_loss"])) for e in metrics["epochs"])
    weights = load_file(tmp_path / "bf16" / "adapter" / "adapter_model.safetensors")
    fp32 = load_file(adapter_run["out"] / "adapter" / "adapter_model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values())
    # the same run in fp32 ends close by, but not bit-identical: autocast really changed the arithmetic
    assert any(not torch.equal(weights[k], fp32[k]) for k in fp32)
    assert all(torch.allclose(weights[k], fp32[k], atol=5e-2) for k in fp32)


def test_gradient_checkpointing_trains_the_same_adapter(tiny, tmp_path, adapter_run):
    metrics, model = train_keeping_model(config(tiny, tmp_path / "ckpt", epochs=3, gradient_checkpointing=True))
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    a = load_file(adapter_run["out"] / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "ckpt" / "adapter" / "adapter_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # recomputation, same dropout masks
    assert metrics["best"]["main"] == adapter_run["metrics"]["best"]["main"]

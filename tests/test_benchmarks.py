"""The benchmark suite's own plumbing: FLOP floors, report rendering from a small JSON, and one worker
round trip (build, time, save, memory) on a tiny random BERT. Fast: no real model, no side venv."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    """benchmarks/<name>.py under a private module name: experiments/ has its own ``report`` module, and a bare
    ``import report`` here would shadow it for other test files (sys.modules is shared)."""
    spec = importlib.util.spec_from_file_location(f"_adapterkit_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flops = _load("flops")
report = _load("report")


def test_flop_share_and_training_floor_minilm():
    a = flops.analyse(384, 1536, 6, 128, m=24)
    assert a["flop_share"] == pytest.approx(0.0194, abs=5e-4)  # 2 adapters x 2dm per layer over the layer's MACs
    assert 0.66 < a["train_floor_vs_full"] < 0.70  # dX through the frozen backbone: about 2/3 of full FT
    upper = flops.analyse(384, 1536, 6, 128, m=24, layers=[3, 4, 5])
    assert upper["train_floor_vs_full"] < 0.52  # backprop stops below layer 3
    assert flops.analyse(384, 1536, 6, 128, m=0)["train_floor_vs_full"] == pytest.approx(2 / 3, abs=0.02)


def _group(kind, labels_ratios, batch=8, seq=64):
    rows = []
    for label, venv, ratio in labels_ratios:
        rows.append({"label": label, "venv": venv, "spec": {}, "params_trainable": 10, "params_total": 100,
                     "median_s": 0.1 * ratio, "p25_s": 0.09, "p75_s": 0.11, "min_s": 0.08, "n": 4,
                     "examples_per_s": batch / (0.1 * ratio), "reference": None, "ratio": ratio,
                     "ratio_p25": ratio - 0.01, "ratio_p75": ratio + 0.01, "per_round_s": [0.1]})
    return {"kind": kind, "batch": batch, "seq": seq, "rounds": 2, "calls_per_round": 2, "rows": rows}


def _results():
    return {
        "model": "minilm", "model_dir_name": "model", "quick": False, "threads": 1, "wall_s": 60.0,
        "started": "2026-01-01 00:00:00 UTC", "config": {"hidden": 384, "ffn": 1536, "layers": 6},
        "machine": {"cpu": "test cpu", "cores": 2, "mem_bytes": 2**34, "avx512_bf16": False, "loadavg_start": [1, 1, 1],
                    "loadavg_end": [2, 2, 2]},
        "versions": {"main": {"torch": "2.13.0"}, "side": {"adapters": "1.3.0"}},
        "inference": [_group("infer", [("plain", "main", 1.0), ("adapterkit m=24", "main", 1.025),
                                       ("plain [side venv]", "side", 1.0), ("AdapterHub m=24", "side", 1.11)])],
        "training": [_group("train", [("full fine-tuning", "main", 1.0), ("adapterkit m=24", "main", 0.72),
                                      ("adapterkit m=64", "main", 0.69)])],
        "memory": {"batch": 8, "seq": 64, "steps": 1, "method": "test", "rows": [
            {"label": "full fine-tuning", "venv": "main", "spec": {}, "rss_before": 2**28, "rss_peak": 2**29, "delta": 2**28,
             "step_s": [1.0], "params_trainable": 10, "reference": "full fine-tuning", "delta_ratio": 1.0, "peak_ratio": 1.0},
            {"label": "adapterkit m=24", "venv": "main", "spec": {}, "rss_before": 2**28, "rss_peak": 3 * 2**27,
             "delta": 2**27, "step_s": [0.5], "params_trainable": 5, "reference": "full fine-tuning", "delta_ratio": 0.5,
             "peak_ratio": 0.75}]},
        "checkpoint": [{"label": "full fine-tuning (save_pretrained)", "venv": "main", "bytes": 1000, "files": ["a"], "share_of_full": 1.0},
                       {"label": "adapterkit m=64", "venv": "main", "bytes": 30, "files": ["b"], "share_of_full": 0.03}],
        "flops": [{"label": "adapters m=24", "seq": 64, **flops.analyse(384, 1536, 6, 64, m=24)}],
        "compile": {"ok": True, "batch": 8, "seq": 64, "compile_and_warmup_s": 30.0, "compiled_median_s": 0.09,
                    "eager_median_s": 0.1, "ratio": 0.9},
    }


def test_targets_verdicts():
    rows = {r[0]: r for r in report.targets(_results())}
    assert rows["inference overhead m=24, 8×64"][3] == "met"  # 1.025 <= 1.0299 and below AdapterHub's 1.11
    assert rows["training step m=24, 8×64"][3].startswith("not met (+0.020")
    assert rows["training step m=64, 8×64"][3] == "met"
    assert rows["peak training memory m=24, 8×64"][3] == "met"  # delta 0.5 (the whole-process peak is 0.75)
    assert rows["checkpoint m=64"][3] == "met"


def test_doc_renders_from_results_dir(tmp_path):
    (tmp_path / "minilm.json").write_text(json.dumps(_results()))
    quick = dict(_results(), quick=True)
    (tmp_path / "minilm-quick.json").write_text(json.dumps(quick))
    (tmp_path / "serve_load.json").write_text(json.dumps({"another": "suite"}))  # ignored
    doc = tmp_path / "docs" / "benchmarks.md"
    report.write_doc(tmp_path, doc)
    text = doc.read_text()
    assert text.startswith("# Benchmarks")
    assert "quick run" not in text  # quick results stay out of the doc when a full run exists
    assert "| adapterkit m=24 | main | 102 |" in text
    assert "**Targets (issue 6)**" in text and "torch.compile" in text
    assert "machine was shared" in text


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=1200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=64, num_labels=2)
    d = tmp_path_factory.mktemp("tiny-bert")
    BertForSequenceClassification(cfg).save_pretrained(d)
    return str(d)


def test_worker_round_trip(tiny_bert_dir, tmp_path):
    spec = {"model_dir": tiny_bert_dir, "size": 4, "batch": 2, "seq": 16, "threads": 1}
    reqs = [
        {"cmd": "hello"},
        {"cmd": "build", "key": "a", "method": "adapterkit", "mode": "train", **spec},
        {"cmd": "time", "key": "a", "n": 2},
        {"cmd": "save", "key": "a", "dir": str(tmp_path / "ad")},
        {"cmd": "build", "key": "p", "method": "plain", "mode": "infer", **spec},
        {"cmd": "time", "key": "p", "n": 1},
        {"cmd": "memory", "method": "full", "mode": "train", "steps": 1, **spec},
        {"cmd": "build", "key": "f", "method": "frozen", "mode": "train", **spec},
        {"cmd": "time", "key": "f", "n": 1},
        {"cmd": "build", "key": "u", "method": "fusion", "fuse": 3, "mode": "train", **spec},
        {"cmd": "time", "key": "u", "n": 1},
        {"cmd": "quit"},
    ]
    proc = subprocess.run([sys.executable, str(BENCH / "worker.py")], input="".join(json.dumps(r) + "\n" for r in reqs),
                          capture_output=True, text=True, timeout=120)
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["ok"] for o in out] == [True] * len(reqs), proc.stdout + proc.stderr
    assert out[0]["versions"]["adapterkit"]
    assert 0 < out[1]["params_trainable"] < out[1]["params_total"]
    assert len(out[2]["times"]) == 2
    assert "adapter_model.safetensors" in out[3]["files"]
    assert out[6]["rss_peak"] >= out[6]["rss_before"] and out[6]["delta"] >= 0
    assert out[6]["saved_bytes"] > 0 and "GeluBackward0.self" in out[6]["saved_by_node"]
    # the frozen-backbone floor trains the layers' norms (2 per layer, weight + bias) and the classifier only
    assert out[7]["params_trainable"] == 2 * 2 * 2 * 32 + (32 * 2 + 2)
    # a fusion trains exactly the tensors add_fusion plans (its layers and head), not the adapters it fuses
    import adapterkit as ak
    from adapterkit.fusion import planned_fusion_tensors
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    for name in ("a0", "a1", "a2"):
        ak.add_adapter(model, name, ak.AdapterConfig(size=4), head=2)
    planned = planned_fusion_tensors(model, ak.Fuse("a0", "a1", "a2"), head=2)
    assert out[9]["params_trainable"] == sum(math.prod(shape) for shape in planned.values()) > 0
    assert len(out[10]["times"]) == 1


def test_onnx_runtime_section_renders_the_committed_results_into_the_doc():
    """docs/benchmarks.md carries the ONNX Runtime tables exactly as report.py renders benchmarks/results/."""
    res = json.loads((BENCH / "results" / "onnx_runtime.json").read_text())
    section = report.render_onnx(res)
    assert [(g["batch"], g["seq"]) for g in res["groups"]] == [(1, 16), (8, 64), (32, 128)]
    for g in res["groups"]:
        assert set(g["rows"]) == {"pytorch", "onnxruntime", "ort int8"}
        assert f"**batch {g['batch']} × {g['seq']} tokens**" in section
        assert f"| ONNX Runtime fp32 | {g['rows']['onnxruntime']['median_ms']:.1f} |" in section
    assert res["accuracy"]["onnxruntime"]["predictions_differing_from_pytorch"] == 0
    assert section in (BENCH.parent / "docs" / "benchmarks.md").read_text()


def test_generation_sections_render_the_committed_results_into_the_doc():
    """docs/benchmarks.md carries the generation tables (benchmarks/generation.py) and the generation load test's
    table (benchmarks/serve_generation_load.py) as their render functions give them from benchmarks/results/;
    the committed load test had no failures."""
    doc = (BENCH.parent / "docs" / "benchmarks.md").read_text()
    generation = json.loads((BENCH / "results" / "generation.json").read_text())
    assert _load("generation").render(generation) in doc
    assert generation["throughput"]["mixed_vs_single_cpu"] >= 0.9  # issue 15's acceptance, as measured
    load = json.loads((BENCH / "results" / "serve_generation_load.json").read_text())
    assert _load("serve_generation_load").render(load) in doc
    assert load["server"]["failed"] == 0 and load["server_exit_ok"] and load["server"]["requests"] > 0


def test_fusion_step_section_renders_the_committed_results_into_the_doc():
    """docs/benchmarks.md carries benchmarks/fusion_step.py's tables as its render gives them from the committed
    JSON, and the fused rows train only the fusion layers and head (the same count for any number fused)."""
    res = json.loads((BENCH / "results" / "fusion_step-quick.json").read_text())
    fusion_step = _load("fusion_step")
    assert fusion_step.render(res).strip() in (BENCH.parent / "docs" / "benchmarks.md").read_text()
    train = next(g for g in res["groups"] if g["kind"] == "train")
    fused = {r["params_trainable"] for r in train["rows"] if r["label"].startswith("fusion of")}
    assert len(fused) == 1 and fused.pop() > next(r for r in train["rows"] if r["label"] == fusion_step.ADAPTER)["params_trainable"]

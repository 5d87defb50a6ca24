"""The runner's derived results: what is computed from trained runs (or the bare model) rather than trained.

Each function returns the JSON-able result that ``Runner.derived`` caches; run.py decides what they read.
"""

from __future__ import annotations

import hashlib

from runner import data_options, ensure_trained, run_dir


def task_data(spec: dict):
    from adapterkit.data import load_task

    return load_task(spec["task"], seed=spec["seed"], max_train=spec["max_train"],
                     max_validation=spec["max_validation"], **data_options(spec["task"]))


def evaluate(model, tokenizer, spec: dict, task=None) -> dict:
    from adapterkit.evaluation import build_features, evaluate as evaluate_features

    task = task or task_data(spec)
    features = build_features(task.validation, task.kind, tokenizer, spec["max_length"], 128)
    return evaluate_features(model, tokenizer, task.kind, task.metric, task.validation, features, 64, "cpu")


def majority_baseline(task: str, seed: int, max_validation: int | None) -> dict:
    """The score of always predicting train's majority class (regression: train's mean score; its Pearson
    correlation is undefined and counted as 0): what a model that learned nothing gets."""
    from collections import Counter

    from adapterkit import metrics as M

    data = task_data({"task": task, "seed": seed, "max_train": None, "max_validation": max_validation})
    labels = [e["label"] for e in data.validation]
    if data.kind == "regression":
        return {"task": task, "metric": data.metric, "main": 0.0, "note": "constant prediction: Pearson undefined, 0"}
    majority = Counter(e["label"] for e in data.train).most_common(1)[0][0]
    scores = M.compute_metrics(data.metric, [majority] * len(labels), labels)
    return {"task": task, "metric": data.metric, "main": scores["main"], "majority": data.label_names[majority]}


def pooler_stats() -> dict:
    """Is MiniLM's pooler trained? Its weight std, bias and top singular value, against the top singular value
    a random Gaussian matrix of that std has (2 std sqrt(d), the Marchenko-Pastur edge)."""
    import torch

    from adapterkit.models import load_model

    model, _ = load_model("minilm", kind="base")
    w, b = model.pooler.dense.weight.detach(), model.pooler.dense.bias.detach()
    return {"d": w.shape[0], "weight_std": float(w.std()), "bias_max_abs": float(b.abs().max()),
            "top_singular": float(torch.linalg.svdvals(w)[0]), "random_top_singular": float(2 * w.std() * w.shape[0] ** 0.5),
            "query_weight_std": float(model.encoder.layer[0].attention.self.query.weight.std())}


def up_projections(model) -> list[tuple]:
    """(layer index, parameter) for the weight and bias of every bottleneck's up-projection, found through the
    adapter holders (the protocol) in each layer of the model's layer stack."""
    from adapterkit.architectures import detect, layer_lists
    from adapterkit.model import adapter_modules

    found = []
    for i, layer in enumerate(layer_lists(model, detect(model))[0]):
        for _, holder in adapter_modules(layer):
            if holder.role == "adapter":
                found += [(i, p) for bottleneck in holder.adapters.values() for p in bottleneck.up.parameters()]
    return found


def ablation_spans(spec: dict, recorded: float) -> dict:
    """Every contiguous span of layers i..j: the score with the trained adapters of those layers removed."""
    import torch

    import adapterkit as ak
    from adapterkit.evaluation import load_trained

    trained = load_trained(ensure_trained(spec) / "adapter")
    model, tok = trained.model, trained.tokenizer
    task = task_data(spec)
    ups = up_projections(model)
    original = [p.detach().clone() for _, p in ups]
    n_layers = model.config.num_hidden_layers

    full = evaluate(model, tok, spec, task)["main"]
    spans = {}
    for i in range(n_layers):
        for j in range(i, n_layers):
            with torch.no_grad():
                for layer, p in ups:
                    if i <= layer <= j:
                        p.zero_()  # the adapter's output is 0: it becomes the identity
            spans[f"{i}-{j}"] = evaluate(model, tok, spec, task)["main"]
            with torch.no_grad():
                for (_, p), saved in zip(ups, original):
                    p.copy_(saved)
    ak.set_active(model, None)
    return {"task": spec["task"], "metric": task.metric, "layers": n_layers, "trained": full,
            "recorded": recorded, "spans": spans,
            "method": "up-projection weight and bias set to 0 in layers i..j (adapter = identity there; "
                      "its layer-norm copies and the head stay trained)"}


def sequential_adapters(tasks: list[str], adapter_specs: list[dict], recorded: dict[str, float]) -> dict:
    """One frozen MiniLM gets the tasks' adapters one after another; after each, every earlier task is
    re-scored (``recorded``: each task's score at training time, which the re-scores must equal exactly)."""
    import adapterkit as ak
    from adapterkit.models import load_model

    model, tok = load_model("minilm", kind="classification")

    def base_hash() -> str:  # SHA-256 over every base (non-adapter) parameter, in name order
        digest = hashlib.sha256()
        for n, p in sorted(ak.base_parameters(model), key=lambda x: x[0]):
            digest.update(n.encode())
            digest.update(p.detach().contiguous().numpy().tobytes())
        return digest.hexdigest()

    base_before = base_hash()
    stages = []
    for k, spec in enumerate(adapter_specs):
        ak.load_adapter(model, ensure_trained(spec) / "adapter", name=f"t{k}")
        scores = {}
        for j in range(k + 1):
            ak.set_active(model, f"t{j}")
            scores[tasks[j]] = evaluate(model, tok, adapter_specs[j])["main"]
        stages.append({"added": tasks[k], "scores": scores})
    exact = all(s["scores"][t] == recorded[t] for s in stages for t in s["scores"])
    return {"tasks": list(tasks), "stages": stages, "recorded": recorded, "exactly_unchanged": exact,
            "base_fingerprint_unchanged": base_before == base_hash(), "base_sha256": base_before}


def sequential_full(tasks: list[str], full_specs: list[dict], recorded: dict[str, float]) -> dict:
    """Sequential full fine-tuning: after each task, every earlier task's own head on the new body."""
    from adapterkit.models import load_model

    def kind(task: str) -> str:
        return "regression" if task == "glue/stsb" else "classification"

    bodies = []
    for k, spec in enumerate(full_specs):
        m, _ = load_model(str(ensure_trained(spec) / "adapter"), kind=kind(tasks[k]))
        bodies.append({n: p.detach().clone() for n, p in m.base_model.state_dict().items()})
    stages = []
    for k in range(len(tasks)):
        scores = {}
        for j in range(k + 1):  # task j's own head on the body after task k
            model, tok = load_model(str(run_dir(full_specs[j]) / "adapter"), kind=kind(tasks[j]))
            model.base_model.load_state_dict(bodies[k])
            scores[tasks[j]] = evaluate(model, tok, full_specs[j])["main"]
        stages.append({"added": tasks[k], "scores": scores})
    return {"tasks": list(tasks), "stages": stages, "recorded": recorded}


def probe(spec: dict) -> dict:
    """How much does each frozen MiniLM feature carry? A logistic-regression probe (L-BFGS, L2 1e-2,
    standardised features) on the CLS vector, the pooler output (what BertForSequenceClassification's head
    reads) and the mean of the token vectors (what sentence-transformers trained MiniLM for)."""
    import numpy as np
    import torch

    from adapterkit.models import load_model

    task = task_data({**spec, "model": "minilm"})
    model, tok = load_model("minilm", kind="base")
    model.eval()

    def feats(rows):
        out = {"cls": [], "pooler": [], "mean": []}
        for i in range(0, len(rows), 50):
            enc = tok([r["text"] for r in rows[i:i + 50]], truncation=True, max_length=spec["max_length"],
                      padding=True, return_tensors="pt")
            with torch.no_grad():
                o = model(**enc)
            h, mask = o.last_hidden_state, enc["attention_mask"].unsqueeze(-1)  # (B, T, d), (B, T, 1)
            out["cls"].append(h[:, 0])
            out["pooler"].append(o.pooler_output)
            out["mean"].append((h * mask).sum(1) / mask.sum(1))
        return {k: torch.cat(v) for k, v in out.items()}

    torch.manual_seed(0)
    ftr, fva = feats(task.train), feats(task.validation)
    ytr = torch.tensor([r["label"] for r in task.train])
    yva = np.array([r["label"] for r in task.validation])
    result = {"task": spec["task"], "train": len(task.train), "validation": len(task.validation)}
    for k in ftr:
        mu, sd = ftr[k].mean(0), ftr[k].std(0) + 1e-6
        x, xv = (ftr[k] - mu) / sd, (fva[k] - mu) / sd
        w = torch.zeros(x.shape[1], len(task.label_names), requires_grad=True)
        b = torch.zeros(len(task.label_names), requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200)

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ w + b, ytr) + 1e-2 * (w ** 2).sum()
            loss.backward()
            return loss
        opt.step(closure)
        with torch.no_grad():
            acc = float(((xv @ w + b).argmax(1).numpy() == yva).mean())
        result[k] = {"accuracy": acc, "feature_std": float(ftr[k].std())}
    return result

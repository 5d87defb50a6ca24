"""Issue 15's generative-task experiment: bottleneck adapters vs full fine-tuning vs PEFT LoRA on SmolLM2-135M-
Instruct, on squad-gen (SQuAD as text generation, EM/F1) and trec-gen (the question type as a word, accuracy);
plus the instruct model zero-shot (no training) as the floor. The budget's ``generation`` dict sets the sizes.

Parameter budgets (SmolLM2: 30 layers, hidden 576; counted with methods.count_parameters): LoRA r=16 on q/v
trains 921,600 (0.69%); Houlsby adapters of size 12 train 899,280 (0.67%: 60 bottlenecks of 2 x 12 x 576 +
biases, plus the RMSNorm copies), size 64 4,496,640 (3.34%); full FT all 134,515,008.
"""

from __future__ import annotations

import functools

from runner import data_options

# doc imports run, which imports this module: doc's helpers are imported where the section is built.


def generation_specs(B: dict) -> list[dict]:
    """Every training run of the experiment, most informative first (the like-for-like budget pair first)."""
    from adapterkit.train import DEFAULT_LR

    G = B["generation"]
    specs = []
    for task in G["tasks"]:
        base = {"model": G["model"], "task": task, "epochs": G["epochs"], "batch_size": G["batch_size"],
                "eval_batch_size": G["eval_batch_size"], "max_train": G["max_train"][task],
                "max_validation": G["max_validation"][task], "max_length": G["max_length"], "seed": B["seed"]}
        specs += [{**base, "method": "adapter", "adapter_size": G["adapter_sizes"][0], "lr": DEFAULT_LR["adapter"]},
                  {**base, "method": "lora", "lr": DEFAULT_LR["lora"]},
                  {**base, "method": "full", "lr": G["full_lr"]}]
        specs += [{**base, "method": "adapter", "adapter_size": s, "lr": DEFAULT_LR["adapter"]}
                  for s in G["adapter_sizes"][1:]]
    # LoRA at other lrs last (added after the rest had run; the like-for-like rows come first)
    specs += [{**s, "lr": lr} for lr in G.get("lora_extra_lrs", ()) for s in list(specs) if s["method"] == "lora"]
    return specs


def zero_shot_key(B: dict, task: str) -> dict:
    G = B["generation"]
    return {"model": G["model"], "task": task, "max_validation": G["max_validation"][task], "seed": B["seed"],
            "eval_batch_size": G["eval_batch_size"], "max_length": G["max_length"], "what": "zero-shot, no training"}


def zero_shot(key: dict) -> dict:
    """The instruct model's scores on the validation rows before any training (greedy, the same prompts)."""
    from adapterkit.data import load_task
    from adapterkit.evaluation import build_features, evaluate
    from adapterkit.models import load_model

    task = load_task(key["task"], seed=key["seed"], max_validation=key["max_validation"], **data_options(key["task"]))
    model, tok = load_model(key["model"], kind="lm")
    features = build_features(task.validation, task.kind, tok, key["max_length"], 128)
    scores = evaluate(model, tok, task.kind, task.metric, task.validation, features, key["eval_batch_size"])
    return {"task": key["task"], "metric": task.metric, "best": scores}


def exp_generation(R) -> None:
    B = R.B
    for task in B["generation"]["tasks"]:
        R.derived(f"zero-shot-{task}", zero_shot_key(B, task), functools.partial(zero_shot, zero_shot_key(B, task)))
    R.log("generation: adapters, LoRA and full FT on SmolLM2")
    R.need(generation_specs(B))


def _cells(result: dict, metric: str) -> str:
    from doc import fmt

    b = result["best"]
    if metric == "squad":
        return f"{fmt(100 * b['f1'])} | {fmt(100 * b['exact_match'])}"
    return f"{fmt(100 * b['accuracy'])}"


def section(d) -> None:
    """The results-page section (d: a doc.Doc)."""
    from doc import fmt, name

    B, G = d.B, d.B["generation"]
    d.add("## Generative tasks on SmolLM2 (issue 15)", "",
          "SmolLM2-135M-Instruct (`--model smollm2`, its chat template; the loss on the answer tokens only) "
          "learns two tasks as text generation: **squad-gen** (passage + question -> the answer as text, scored "
          "by SQuAD EM/F1 against every gold answer; passages of at most 120 words, from the SQuAD v1.1 dev "
          "articles split 80/20 as in the SQuAD section) and **trec-gen** (the TREC question type as a word, "
          "scored by exact-match accuracy of the generated word). Greedy decoding, at most 24 (squad-gen) or 6 "
          "(trec-gen) new tokens. Adapters (Houlsby, size m) against full fine-tuning and PEFT LoRA (r=16, alpha "
          "32, q_proj/v_proj, dropout 0), all trained by the same loop at adapterkit's default lrs (adapters "
          f"1e-3, LoRA 5e-4; full FT {G['full_lr']:g}; LoRA also at "
          f"{', '.join(f'{lr:g}' for lr in G.get('lora_extra_lrs', ()))}, so that its row is not held back by "
          "its lr), and the instruct model with no training.", "",
          "Budget: " + "; ".join(f"{name(t)} {G['max_train'][t]} train / {G['max_validation'][t]} validation examples"
                                 for t in G["tasks"]) + "; "
          f"{G['epochs']} epochs, batch {G['batch_size']}, max length {G['max_length']}, seed {B['seed']}.", "")
    specs = generation_specs(B)
    records = dict(zip((id(s) for s in specs), d.need("generation", specs)))
    for task in G["tasks"]:
        squad = task == "squad-gen"
        d.add(f"**{task}**", "", "| method | trained params | trained % | " + ("F1 | EM |" if squad else "accuracy |"),
              "|---|---|---|" + ("---|---|" if squad else "---|"))
        zero = d.derived("generation", f"zero-shot-{task}", zero_shot_key(B, task))
        metric = "squad" if squad else "label_accuracy"
        blank = "| |" if squad else "|"
        d.add("| zero-shot (no training) | 0 | 0.00% | " + (_cells(zero["result"], metric) + " |" if zero else "not run " + blank))
        for spec in (s for s in specs if s["task"] == task):
            label = {"adapter": f"adapters m={spec.get('adapter_size')}", "lora": "LoRA r=16 (q, v)",
                     "full": "full FT"}[spec["method"]] + f", lr {spec['lr']:g}"
            r = records[id(spec)]
            if r is None or "error" in r["result"]:
                d.add(f"| {label} | | | {'not run' if r is None else 'failed'} {blank}")
                continue
            res = r["result"]
            d.add(f"| {label} | {res['trainable_params']:,} | {res['trainable_pct']:.2f}% | {_cells(res, metric)} |")
        d.add("")

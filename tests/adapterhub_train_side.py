"""Run in the side venv (adapters 1.3.0, transformers 4.x) by experiments/adapterhub_default.py: train AdapterHub's
default bottleneck adapter on a classification task prepared by adapterkit, return each epoch's predictions.

    python tests/adapterhub_train_side.py JOB.json OUT.json

JOB (written by adapterhub_default.job_of): model_dir, config (an ``adapters`` config name, e.g. "seq_bn"),
num_labels, lr, epochs, batch_size, seed, warmup, grad_clip, pad_token_id, threads, train (features with a
label), validation (features with a label), orders (one list of train indices per epoch: adapterkit's batch order).

The model is AdapterHub's documented set-up (docs.adapterhub.ml "Adapter Training"): ``AutoAdapterModel``,
``add_adapter(name, config=...)``, ``add_classification_head(name, num_labels)`` (its defaults: two layers, tanh,
on [CLS]) and ``train_adapter(name)`` (base frozen, adapter and head trained). The loop is adapterkit's
optimiser and schedule (AdamW without weight decay, linear warm-up then linear decay, gradient clipping), so
the two libraries differ only in the adapter, its head and the lr.

OUT: {"epochs": [{"epoch", "train_loss", "train_seconds", "predictions", "validation_loss"}], "trainable_params",
"total_params", "adapter_size", "versions"}.
"""

import json
import platform
import sys
import time

import adapters
import torch
import torch.nn.functional as F
import transformers
from adapters import AutoAdapterModel

NAME = "task"


def collate(rows, pad_id):
    """Right-padded input_ids / attention_mask / token_type_ids of feature dicts, as adapterkit pads them."""
    width = max(len(r["input_ids"]) for r in rows)
    batch = {"input_ids": torch.tensor([r["input_ids"] + [pad_id] * (width - len(r["input_ids"])) for r in rows]),
             "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])}
    if "token_type_ids" in rows[0]:
        batch["token_type_ids"] = torch.tensor([r["token_type_ids"] + [0] * (width - len(r["token_type_ids"])) for r in rows])
    return batch


def schedule(warmup_steps, total_steps):
    """adapterkit's train._linear_factor: linear warm-up, then linear decay to zero."""
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


@torch.no_grad()
def predict(model, rows, pad_id, batch_size=64):
    """The logits of every row (in ``rows``' order), batched by similar length as adapterkit evaluates."""
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))  # similar lengths share a batch
    logits = [None] * len(rows)
    for k in range(0, len(order), batch_size):
        idx = order[k:k + batch_size]
        out = model(**collate([rows[i] for i in idx], pad_id)).logits
        for j, i in enumerate(idx):
            logits[i] = out[j]
    return torch.stack(logits)


def main(job_file, out_file):
    job = json.load(open(job_file))
    torch.set_num_threads(job["threads"])
    torch.manual_seed(job["seed"])  # the adapter's and the head's initialisation
    model = AutoAdapterModel.from_pretrained(job["model_dir"])
    model.add_adapter(NAME, config=job["config"])
    model.add_classification_head(NAME, num_labels=job["num_labels"])
    model.train_adapter(NAME)  # freezes the base model; the adapter and its head train
    trainable = [p for p in model.parameters() if p.requires_grad]
    adapter_params = {id(p) for n, p in model.named_parameters() if f"adapters.{NAME}." in n}
    bottleneck = next(p for n, p in model.named_parameters() if f"adapters.{NAME}." in n and n.endswith("weight")
                      and p.dim() == 2)
    optimizer = torch.optim.AdamW(trainable, lr=job["lr"], weight_decay=0.0)
    bs, train = job["batch_size"], job["train"]
    total = sum((len(o) + bs - 1) // bs for o in job["orders"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(int(job["warmup"] * total), total))
    labels = torch.tensor([r["label"] for r in job["validation"]])
    epochs = []
    for epoch, order in enumerate(job["orders"]):
        torch.manual_seed(job["seed"] * 1000 + epoch)  # dropout
        model.train()
        started, loss_sum = time.perf_counter(), 0.0
        for k in range(0, len(order), bs):
            rows = [train[i] for i in order[k:k + bs]]
            logits = model(**collate(rows, job["pad_token_id"])).logits
            loss = F.cross_entropy(logits.float(), torch.tensor([r["label"] for r in rows]), reduction="sum")
            (loss / len(rows)).backward()
            torch.nn.utils.clip_grad_norm_(trainable, job["grad_clip"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += float(loss.detach())
        seconds = time.perf_counter() - started
        logits = predict(model, job["validation"], job["pad_token_id"])
        record = {"epoch": epoch + 1, "train_loss": loss_sum / len(order), "train_seconds": seconds,
                  "predictions": logits.argmax(-1).tolist(),
                  "validation_loss": float(F.cross_entropy(logits.float(), labels))}
        epochs.append(record)
    total_params = sum(p.numel() for p in model.parameters() if id(p) not in adapter_params)
    json.dump({"epochs": epochs, "trainable_params": sum(p.numel() for p in trainable), "total_params": total_params,
               "adapter_size": min(bottleneck.shape),
               "versions": {"adapters": adapters.__version__, "transformers": transformers.__version__,
                            "torch": torch.__version__, "python": platform.python_version()}},
              open(out_file, "w"))


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Run in the side venv (adapters 1.3.0, transformers 4.x) by tests/test_adapterhub.py's slow tests.

    python tests/adapterhub_side.py logits ADAPTER_DIR BASE_DIR BATCH.safetensors OUT.safetensors
        load ADAPTER_DIR with adapters' own load_adapter (a BertAdapterModel when it carries a head), refuse
        missing or unexpected keys, and write the logits on the batch
    python tests/adapterhub_side.py train BASE_DIR EXAMPLES.json BATCH.safetensors OUT_DIR
        train a Houlsby adapter (DoubleSeqBnConfig, exact GELU) and a 2-label head for a few steps on the
        examples with adapters' own train_adapter, save it with save_adapter, write OUT_DIR.logits.safetensors
"""

import json
import os
import sys

import adapters
import torch
from adapters import AutoAdapterModel, BertAdapterModel, DoubleSeqBnConfig
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def logits(adapter_dir, base_dir, batch_file, out_file):
    batch = load_file(batch_file)
    flex = os.path.exists(os.path.join(adapter_dir, "head_config.json"))
    if flex:
        model = AutoAdapterModel.from_pretrained(base_dir)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(base_dir)
        adapters.init(model)
    info = {}
    name = model.load_adapter(adapter_dir, loading_info=info, set_active=True)
    assert not info.get("missing_keys") and not info.get("unexpected_keys"), info
    model.set_active_adapters(name)
    if flex:
        assert name in model.heads, list(model.heads)
        model.active_head = name
    model.eval()
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    save_file({"logits": out.contiguous()}, out_file)


def train(base_dir, examples_file, batch_file, out_dir):
    examples = json.load(open(examples_file))
    tok = AutoTokenizer.from_pretrained(base_dir)
    torch.manual_seed(0)
    model = BertAdapterModel.from_pretrained(base_dir)
    model.add_adapter("sentiment", config=DoubleSeqBnConfig(reduction_factor=16, non_linearity="gelu"))
    model.add_classification_head("sentiment", num_labels=2, id2label={0: "neg", 1: "pos"})
    model.train_adapter("sentiment")  # freezes the base model; the adapter and its head train
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for step in range(12):
        rows = examples[(step * 8) % len(examples):][:8]
        enc = tok([r["text"] for r in rows], padding=True, truncation=True, max_length=64, return_tensors="pt")
        loss = model(**enc, labels=torch.tensor([r["label"] for r in rows])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_adapter(out_dir, "sentiment")
    batch = load_file(batch_file)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    save_file({"logits": out.contiguous(), "final_loss": loss.detach().reshape(1)}, out_dir + ".logits.safetensors")


if __name__ == "__main__":
    {"logits": logits, "train": train}[sys.argv[1]](*sys.argv[2:])

"""Regenerate the AdapterHub fixture directories next to this file (run in the side venv that has adapters 1.3.0):

    python benchmarks/_adapterhub_env.py                       # once: creates benchmarks/.venvs/adapterhub
    benchmarks/.venvs/adapterhub/bin/python tests/data/adapterhub/make_fixtures.py

A tiny random BERT (tiny-bert/: 2 layers x 32, its own 99-token vocabulary) and adapters saved by adapters'
own ``save_adapter``, with random (not near-identity) weights so that a wrong mapping shows in the logits;
expected.safetensors holds the inputs and what adapters 1.3.0 computes for each good fixture (the logits; for
the adapter saved without a head, the encoder's last hidden state).
Bad fixtures: a .bin whose pickle names a function, SeqBnConfig's default (original_ln_before), an adapter
of another base model (hidden size 48).
"""

import io
import json
import os
import shutil
from pathlib import Path

import adapters
import torch
from adapters import BertAdapterModel, BnConfig, DoubleSeqBnConfig, ParBnConfig, SeqBnConfig
from safetensors.torch import save_file
from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizer

HERE = Path(__file__).resolve().parent
WORDS = ("the a an is was it this that film movie good bad great dull long short story actor acted plot fun "
         "boring funny sad and or but not very too so of in on to with for as by at from".split())


def tiny_config(hidden=32):
    return BertConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                      vocab_size=99, max_position_embeddings=64, num_labels=2)


def base_dir(name, hidden=32):
    out = HERE / name
    shutil.rmtree(out, ignore_errors=True)
    torch.manual_seed(hidden)
    BertModel(tiny_config(hidden)).save_pretrained(out)  # no task head: heads come with the adapters
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz")
    vocab = vocab[:99] + [f"[unused{i}]" for i in range(99 - len(vocab))]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(out / "vocab.txt")).save_pretrained(out)
    return out


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".adapters." in n or n.startswith("heads."):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def save(model, name, **kwargs):
    out = HERE / name
    shutil.rmtree(out, ignore_errors=True)
    model.save_adapter(str(out), "t", **kwargs)
    return out


def main():
    tiny = base_dir("tiny-bert")
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 99, (3, 8), generator=g)
    ids[:, 0] = 2  # [CLS]
    mask = torch.ones_like(ids)
    ids[0, -3:], mask[0, -3:] = 0, 0  # one padded row
    expected = {"input_ids": ids, "attention_mask": mask}

    def flex(config, head, seed):
        m = BertAdapterModel.from_pretrained(tiny).eval()
        m.add_adapter("t", config=config)
        m.add_classification_head("t", **head)
        m.set_active_adapters("t")
        randomize(m, seed)
        return m

    def static(config, seed):
        torch.manual_seed(seed)  # the classifier is new: a static head saved with the adapter carries it
        m = BertForSequenceClassification.from_pretrained(tiny).eval()
        adapters.init(m)
        m.add_adapter("t", config=config)
        m.set_active_adapters("t")
        randomize(m, seed)
        return m

    cases = {
        "houlsby_head": (flex(DoubleSeqBnConfig(reduction_factor=8, non_linearity="gelu_new", leave_out=[1]),
                              dict(num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"}), 1), {}),
        "pfeiffer_regression": (flex(SeqBnConfig(original_ln_before=False, reduction_factor=4, non_linearity="gelu"),
                                     dict(num_labels=1, layers=1, use_pooler=True), 2), {"use_safetensors": True}),
        "par_bn_static_head": (static(ParBnConfig(), 3), {}),
        "parallel_both_no_head": (static(BnConfig(mh_adapter=True, output_adapter=True, is_parallel=True, scaling=2.0,
                                                  non_linearity="swish", reduction_factor=16), 4), {"with_head": False}),
    }
    with torch.no_grad():
        for name, (model, kwargs) in cases.items():
            save(model, name, **kwargs)
            if kwargs.get("with_head") is False:  # no head: compare the encoder's output
                out = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            else:
                out = model(input_ids=ids, attention_mask=mask).logits
            expected[f"{name}.output"] = out.contiguous()
    save_file(expected, HERE / "expected.safetensors")

    # bad fixtures
    bad = HERE / "bad_pickle"
    shutil.rmtree(bad, ignore_errors=True)
    shutil.copytree(HERE / "houlsby_head", bad)
    state = torch.load(bad / "pytorch_adapter.bin", weights_only=True)
    state["hook"] = os.getcwd  # a plain function: never called by adapterkit, which refuses to unpickle it
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (bad / "pytorch_adapter.bin").write_bytes(buffer.getvalue())
    save(static(SeqBnConfig(reduction_factor=8), 5), "seq_bn_default", with_head=False)
    other = base_dir("_other_base", hidden=48)
    m = BertForSequenceClassification.from_pretrained(other).eval()
    adapters.init(m)
    m.add_adapter("t", config=DoubleSeqBnConfig(reduction_factor=8))
    save(m, "other_base", with_head=False)
    shutil.rmtree(other)
    for d in HERE.iterdir():  # model_name is the absolute path of this machine: make it stable
        for f in ("adapter_config.json", "head_config.json"):
            if (d / f).is_file():
                meta = json.loads((d / f).read_text())
                meta["model_name"] = "tiny-bert"
                (d / f).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print("wrote", sorted(p.name for p in HERE.iterdir()))


if __name__ == "__main__":
    main()

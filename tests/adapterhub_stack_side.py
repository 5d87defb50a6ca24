"""Run in the side venv (adapters 1.3.0, transformers 4.x) by tests/test_stack_parity.py's slow tests.

    python tests/adapterhub_stack_side.py BASE_DIR BATCH.safetensors OUT_DIR CASE

Builds the base model (BASE_DIR, e.g. MiniLM) with two AdapterHub adapters "a" and "b" of CASE's configs,
moves every adapter weight away from its initialisation (seeded Gaussian noise: AdapterHub initialises the
up projections near zero, which would hide the order of a stack), saves both with ``save_adapter`` to
OUT_DIR/a and OUT_DIR/b, and writes OUT_DIR/outputs.safetensors: the base model's last hidden state in eval
mode on the batch for each active setup, keys ``base``, ``a``, ``b``, ``a,b`` (Stack("a", "b")) and
``b,a`` (Stack("b", "a")).

Cases (reduction factors differ so that the two adapters cannot stand in for each other):
    houlsby   DoubleSeqBnConfig for both (gelu / relu)
    pfeiffer  SeqBnConfig(original_ln_before=False) for both (the form adapterkit's importer reads)
    mixed     a Pfeiffer adapter without layer 5 under a Houlsby adapter without layer 0: sites only one has
    parallel  ParBnConfig for both (AdapterHub's parallel adapters inside a Stack)
    serial_parallel  a Houlsby adapter and a ParBnConfig adapter, stacked both ways
"""

import os
import sys

import adapters
import torch
from adapters import DoubleSeqBnConfig, ParBnConfig, SeqBnConfig
from adapters.composition import Stack
from safetensors.torch import load_file, save_file
from transformers import AutoModel

CASES = {
    "houlsby": (DoubleSeqBnConfig(reduction_factor=16, non_linearity="gelu"),
                DoubleSeqBnConfig(reduction_factor=32, non_linearity="relu")),
    "pfeiffer": (SeqBnConfig(original_ln_before=False, reduction_factor=16, non_linearity="gelu"),
                 SeqBnConfig(original_ln_before=False, reduction_factor=32, non_linearity="swish")),
    "mixed": (SeqBnConfig(original_ln_before=False, reduction_factor=16, non_linearity="gelu", leave_out=[5]),
              DoubleSeqBnConfig(reduction_factor=32, non_linearity="relu", leave_out=[0])),
    "parallel": (ParBnConfig(reduction_factor=16, non_linearity="gelu", scaling=2.0),
                 ParBnConfig(reduction_factor=32, non_linearity="relu", scaling=0.5)),
    "serial_parallel": (DoubleSeqBnConfig(reduction_factor=16, non_linearity="gelu"),
                        ParBnConfig(reduction_factor=32, non_linearity="relu", scaling=0.5)),
}
SETUPS = {"base": None, "a": "a", "b": "b", "a,b": Stack("a", "b"), "b,a": Stack("b", "a")}


def main(base_dir, batch_file, out_dir, case):
    batch = load_file(batch_file)
    model = AutoModel.from_pretrained(base_dir)
    adapters.init(model)
    generator = torch.Generator().manual_seed(0)
    for name, config in zip(("a", "b"), CASES[case]):
        model.add_adapter(name, config=config)
        with torch.no_grad():
            for key, p in model.named_parameters():
                if f".adapters.{name}." in key:
                    p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    model.eval()
    outputs = {}
    for key, setup in SETUPS.items():
        model.set_active_adapters(setup)
        with torch.no_grad():
            outputs[key] = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    for name in ("a", "b"):
        model.save_adapter(os.path.join(out_dir, name), name)
    save_file({k: v.contiguous() for k, v in outputs.items()}, os.path.join(out_dir, "outputs.safetensors"))


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Run in the side venv (adapters 1.3.0, transformers 4.x) by tests/test_fusion_parity.py's slow tests.

    python tests/adapterhub_fusion_side.py BASE_DIR BATCH.safetensors OUT_DIR CASE

Builds the base model (BASE_DIR, e.g. MiniLM) with three AdapterHub adapters "a", "b", "c" of CASE's config
and an AdapterFusion over them (``add_adapter_fusion(Fuse("a", "b", "c"), config)``), moves every adapter and
fusion weight away from its initialisation (seeded Gaussian noise: at init the value matrix is ~I and the
scores are small, which would hide a wrong query, key or value), saves the adapters with ``save_adapter`` to
OUT_DIR/a, b, c and writes OUT_DIR/fusion.safetensors (the fusion weights under AdapterHub's parameter names)
and OUT_DIR/outputs.safetensors: the last hidden state in eval mode on the batch for ``base``, ``a``, ``b``,
``c`` and ``fuse`` (Fuse("a", "b", "c")).

Cases:
    houlsby          DoubleSeqBnConfig adapters, DynamicFusionConfig (AdapterHub's default fusion)
    pfeiffer         SeqBnConfig(original_ln_before=False) adapters, DynamicFusionConfig
    static           DoubleSeqBnConfig adapters, StaticFusionConfig (no value matrix)
    residual_before  DoubleSeqBnConfig adapters, DynamicFusionConfig(residual_before=True)
"""

import os
import sys

import adapters
import torch
from adapters import DoubleSeqBnConfig, DynamicAdapterFusionConfig, SeqBnConfig, StaticAdapterFusionConfig
from adapters.composition import Fuse
from safetensors.torch import load_file, save_file
from transformers import AutoModel

CASES = {
    "houlsby": (lambda rf, act: DoubleSeqBnConfig(reduction_factor=rf, non_linearity=act), DynamicAdapterFusionConfig()),
    "pfeiffer": (lambda rf, act: SeqBnConfig(original_ln_before=False, reduction_factor=rf, non_linearity=act),
                 DynamicAdapterFusionConfig()),
    "static": (lambda rf, act: DoubleSeqBnConfig(reduction_factor=rf, non_linearity=act), StaticAdapterFusionConfig()),
    "residual_before": (lambda rf, act: DoubleSeqBnConfig(reduction_factor=rf, non_linearity=act),
                        DynamicAdapterFusionConfig(residual_before=True)),
}
SHAPES = {"a": (16, "gelu"), "b": (32, "relu"), "c": (8, "swish")}


def main(base_dir, batch_file, out_dir, case):
    batch = load_file(batch_file)
    model = AutoModel.from_pretrained(base_dir)
    adapters.init(model)
    adapter_config, fusion_config = CASES[case]
    for name, (rf, act) in SHAPES.items():
        model.add_adapter(name, config=adapter_config(rf, act))
    model.add_adapter_fusion(Fuse("a", "b", "c"), config=fusion_config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if ".adapters." in key or ".adapter_fusion_layer." in key:
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    model.eval()
    outputs = {}
    for key, setup in {"base": None, "a": "a", "b": "b", "c": "c", "fuse": Fuse("a", "b", "c")}.items():
        model.set_active_adapters(setup)
        with torch.no_grad():
            outputs[key] = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    for name in SHAPES:
        model.save_adapter(os.path.join(out_dir, name), name)
    fusion = {k: v.detach().contiguous() for k, v in model.state_dict().items() if ".adapter_fusion_layer." in k}
    save_file(fusion, os.path.join(out_dir, "fusion.safetensors"))
    save_file({k: v.contiguous() for k, v in outputs.items()}, os.path.join(out_dir, "outputs.safetensors"))


if __name__ == "__main__":
    main(*sys.argv[1:])

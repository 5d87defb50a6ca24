"""Helpers for the generation tests: a tiny random Llama with a tiny byte-level BPE tokenizer (trained here on
a few sentences, with a ChatML chat template and ``<|im_end|>`` as EOS, like SmolLM2's), and LM adapters with
non-trivial random weights (so that each adapter really changes what the model generates)."""

from __future__ import annotations

import torch

import adapterkit as ak

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = ["the cat sat on the mat", "once upon a time there was a dog", "hello there, how are you today?",
          "count to five: one two three four five", "write a haiku about the rain in spring"] * 4


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                  bos_token="<|im_start|>")
    tok.chat_template = CHATML
    return tok


def tiny_llama(tokenizer, seed: int = 0, dtype=torch.float64):
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    transformers.logging.set_verbosity_error()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(dtype).eval()


def add_lm_adapters(model, names, size: int = 8, scale: float = 0.1) -> None:
    """Add each adapter and move it far from its near-identity init (seeded per name)."""
    for i, name in enumerate(names):
        ak.add_adapter(model, name, ak.AdapterConfig(size=size))
        g = torch.Generator().manual_seed(1000 + i)
        with torch.no_grad():
            for p in ak.adapter_parameters(model, name):
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def reference(model, tokenizer, prompt_ids: list[int], adapter, max_new_tokens: int) -> list[int]:
    """Greedy tokens from transformers' own ``generate``, the prompt alone, with ``adapter`` active."""
    ids = torch.tensor([prompt_ids])
    with ak.use_adapter(model, adapter):
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, len(prompt_ids):].tolist()

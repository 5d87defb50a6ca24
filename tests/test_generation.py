"""Mixed-adapter generation (adapterkit.generation): every row decodes with its own adapter in one batched
forward per step, token-for-token what each prompt gives alone with transformers' ``generate``."""

from __future__ import annotations

import pytest
import torch
from gen_helpers import add_lm_adapters, reference, tiny_llama, tiny_tokenizer

import adapterkit as ak
from adapterkit.generation import Row, SamplingParams, decode_step, eos_ids, merge, prefill

PROMPTS = ["hello there, how are", "the cat", "once upon a time there was a dog and", "count", "write a haiku about",
           "the rain in spring"]
ADAPTERS = ["a", None, "b", "c", "a", None]
NEW = 10


@pytest.fixture(scope="module")
def world():
    tok = tiny_tokenizer()
    model = tiny_llama(tok)
    add_lm_adapters(model, ["a", "b", "c"])
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    refs = [reference(model, tok, i, a, NEW) for i, a in zip(ids, ADAPTERS)]
    return model, tok, ids, refs


def test_greedy_mixed_batch_matches_each_prompt_alone(world):
    model, tok, ids, refs = world
    out = ak.generate_mixed(model, tok, PROMPTS, ADAPTERS, max_new_tokens=NEW, return_ids=True)
    assert out == refs
    # the adapters matter: the same prompts on the base model generate something else
    base = [reference(model, tok, i, None, NEW) for i in ids]
    assert sum(o != b for o, b, a in zip(out, base, ADAPTERS) if a is not None) >= 3
    assert [o == b for o, b, a in zip(out, base, ADAPTERS) if a is None] == [True, True]
    texts = ak.generate_mixed(model, tok, PROMPTS, ADAPTERS, max_new_tokens=NEW)
    eos = eos_ids(model, tok)
    assert texts == [tok.decode([t for t in r if t not in eos], skip_special_tokens=True) for r in refs]
    assert ak.active_adapter(model) is None  # routing restored


def test_rows_joining_and_leaving_between_steps_match_alone(world):
    """The server's continuous batching: rows prefilled later join a running batch (caches merged, left-padded),
    finished rows leave; every row still gets exactly its solo tokens."""
    model, tok, ids, refs = world
    eos = eos_ids(model, tok)
    params = [SamplingParams(max_new_tokens=n) for n in (NEW, 3, NEW, NEW, 5, NEW)]  # some leave early
    rows = [Row(i, a, p) for i, a, p in zip(ids, ADAPTERS, params)]
    with torch.inference_mode():
        batch = prefill(model, rows[:2], tok.pad_token_id, tok, eos)
        for step in range(4):
            if step == 2:  # three more join, one of them long
                batch = merge(batch, prefill(model, rows[2:5], tok.pad_token_id, tok, eos))
            batch = batch.keep([i for i, r in enumerate(batch.rows) if not r.done])
            decode_step(model, batch, tok, eos)
        batch = merge(batch.keep([i for i, r in enumerate(batch.rows) if not r.done]),
                      prefill(model, rows[5:], tok.pad_token_id, tok, eos))
        while batch is not None:
            batch = batch.keep([i for i, r in enumerate(batch.rows) if not r.done])
            if batch is not None:
                decode_step(model, batch, tok, eos)
    for row, ref, p in zip(rows, refs, params):
        assert row.generated == ref[: p.max_new_tokens]
        assert row.finish_reason == ("stop" if row.generated[-1] in eos else "length")


def test_seeded_sampling_does_not_depend_on_the_batch(world):
    model, tok, _, _ = world
    kw = dict(max_new_tokens=8, temperature=1.3, top_p=0.9, return_ids=True)
    mixed = ak.generate_mixed(model, tok, PROMPTS, ADAPTERS, seed=7, **kw)
    alone = [ak.generate_mixed(model, tok, [p], [a], seed=7, **kw)[0] for p, a in zip(PROMPTS, ADAPTERS)]
    assert mixed == alone
    again = ak.generate_mixed(model, tok, PROMPTS, ADAPTERS, seed=8, **kw)
    assert again != mixed
    greedy = ak.generate_mixed(model, tok, PROMPTS, ADAPTERS, max_new_tokens=8, return_ids=True)
    assert mixed != greedy


def test_stop_strings_cut_the_text(world):
    model, tok, _, _ = world
    full = ak.generate_mixed(model, tok, PROMPTS[:1], ["a"], max_new_tokens=NEW)[0]
    assert len(full) > 6
    stop = full[3:6]
    cut = ak.generate_mixed(model, tok, PROMPTS[:1], ["a"], max_new_tokens=NEW, stop=[stop, "never appears"])[0]
    assert cut == full[: full.find(stop)]


def test_streaming_text_holds_back_a_possible_stop():
    row = Row([1], None, SamplingParams(stop=("END",)))
    row.text = "hello EN"
    assert row.visible_text() == "hello "
    row.text = "hello E\ufffd"
    assert row.visible_text() == "hello "
    row.text, row.finish_reason = "hello EN", "length"
    assert row.visible_text() == "hello EN"


def test_bad_input(world):
    model, tok, _, _ = world
    with pytest.raises(ValueError, match="no adapter named 'nope'"):
        ak.generate_mixed(model, tok, ["x"], ["nope"])
    with pytest.raises(ValueError, match="one adapter"):
        ak.generate_mixed(model, tok, ["x", "y"], ["a"])
    with pytest.raises(ValueError, match="max_new_tokens"):
        ak.generate_mixed(model, tok, ["x"], ["a"], max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        ak.generate_mixed(model, tok, ["x"], ["a"], top_p=0)


@pytest.mark.slow
def test_smollm2_greedy_mixed_batch_matches_alone():
    from adapterkit.models import load_model

    model, tok = load_model("smollm2", kind="lm")
    model.eval()
    add_lm_adapters(model, ["a", "b"], size=16, scale=0.05)
    chats = ["What is the capital of France?", "Write a haiku about rain.", "Count to five.", "Hi"]
    prompts = [tok.apply_chat_template([{"role": "user", "content": c}], tokenize=False, add_generation_prompt=True)
               for c in chats]
    adapters = ["a", None, "b", "a"]
    out = ak.generate_mixed(model, tok, prompts, adapters, max_new_tokens=8, return_ids=True)
    refs = [reference(model, tok, tok(p)["input_ids"], a, 8) for p, a in zip(prompts, adapters)]
    assert out == refs
    base = reference(model, tok, tok(prompts[0])["input_ids"], None, 8)
    assert out[0] != base

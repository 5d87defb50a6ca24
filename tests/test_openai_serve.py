"""The OpenAI-style generation routes, tested with the real ``openai`` client against the real server (uvicorn
on a loopback port, in a thread) on a tiny random Llama with LM adapters: completions, chat, streaming, the
4xx/503 answers, and continuous batching (a short request finishes while a long one is still decoding)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import httpx
import pytest
import torch
from gen_helpers import add_lm_adapters, reference, tiny_llama, tiny_tokenizer
from transformers import LlamaForCausalLM

import adapterkit as ak
from adapterkit.serve import ServeSettings, create_app
from adapterkit.models import load_model
from adapterkit.serve.openai_api import GenerationLimits

openai = pytest.importorskip("openai")
BASE = "tiny-llama"


@contextlib.contextmanager
def running(app):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("openai")
    tok = tiny_tokenizer()
    trained = tiny_llama(tok)
    add_lm_adapters(trained, ["a", "b"])
    dirs = {"a": ak.save_adapter(trained, "a", root / "a", extra={"kind": "lm"}),
            "b": ak.save_adapter(trained, "b", root / "b")}  # no extra: an "own" head on a causal LM is an LM adapter
    return {"tok": tok, "ref_model": trained, "dirs": dirs}


def make_app(world, limits=GenerationLimits(max_tokens=64, max_prompt_tokens=40), **settings):
    model = tiny_llama(world["tok"])  # the same seed: the same base weights as the reference model
    return create_app(model, world["tok"], world["dirs"], ServeSettings(**settings), model_name=BASE,
                      generation=limits)


@pytest.fixture(scope="module")
def server(world):
    with running(make_app(world)) as url:
        yield url


def expected(world, ids, adapter, n):
    tok = world["tok"]
    out = reference(world["ref_model"], tok, ids, adapter, n)
    return out, tok.decode([t for t in out if t != tok.eos_token_id], skip_special_tokens=True)


def test_completions_and_chat_with_the_openai_client(world, server):
    client = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == [BASE, "a", "b"]
    tok = world["tok"]
    for model, adapter in (("a", "a"), (BASE, None), ("b", "b")):
        prompt = "once upon a time"
        got = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0)
        ids, text = expected(world, tok(prompt)["input_ids"], adapter, 12)
        assert got.choices[0].text == text
        assert got.choices[0].finish_reason == ("stop" if ids[-1] == tok.eos_token_id else "length")
        assert got.usage.prompt_tokens == len(tok(prompt)["input_ids"]) and got.usage.completion_tokens == len(ids)
        assert got.model == model and got.object == "text_completion"
    texts = [got.choices[0].text for got in (client.completions.create(model=m, prompt="the cat", max_tokens=12,
                                                                      temperature=0) for m in ("a", "b", BASE))]
    assert len(set(texts)) == 3  # each adapter really generates its own text
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "count to five"}]
    chat = client.chat.completions.create(model="a", messages=messages, max_tokens=10, temperature=0)
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert chat.choices[0].message.content == expected(world, list(ids), "a", 10)[1]
    assert chat.choices[0].message.role == "assistant" and chat.usage.prompt_tokens == len(ids)
    # a list of prompts: one choice each, in order
    many = client.completions.create(model="b", prompt=["the cat", "hello there"], max_tokens=6, temperature=0)
    assert [c.index for c in many.choices] == [0, 1]
    assert many.choices[1].text == expected(world, tok("hello there")["input_ids"], "b", 6)[1]


def test_streaming_gives_the_same_text(world, server):
    client = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    whole = client.completions.create(model="a", prompt="write a haiku", max_tokens=16, temperature=0)
    chunks = list(client.completions.create(model="a", prompt="write a haiku", max_tokens=16, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    messages = [{"role": "user", "content": "hello there"}]
    whole = client.chat.completions.create(model=BASE, messages=messages, max_tokens=12, temperature=0)
    deltas = list(client.chat.completions.create(model=BASE, messages=messages, max_tokens=12, temperature=0,
                                                 stream=True))
    assert deltas[0].choices[0].delta.role == "assistant"
    assert "".join(d.choices[0].delta.content or "" for d in deltas) == whole.choices[0].message.content
    assert deltas[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    raw = httpx.post(server + "/v1/completions", json={"model": "a", "prompt": "x", "max_tokens": 2, "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream") and raw.text.endswith("data: [DONE]\n\n")


def test_seeded_sampling_repeats(server):
    client = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    runs = [client.completions.create(model="a", prompt="the cat", max_tokens=10, temperature=1.5, seed=s).choices[0].text
            for s in (3, 3, 4)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


@pytest.mark.parametrize("body, status, where", [
    ({"model": "nope", "prompt": "x"}, 404, None),
    ({"model": "a", "prompt": "x", "max_tokens": 65}, 422, ["body", "max_tokens"]),
    ({"model": "a", "prompt": "the cat " * 30}, 422, ["body", "prompt"]),
    ({"model": "a", "prompt": "x", "max_tokens": "5"}, 422, ["body", "max_tokens"]),
    ({"model": "a", "prompt": "x", "n": 2}, 422, ["body", "n"]),
    ({"model": "a", "prompt": "x", "temperature": 3}, 422, ["body", "temperature"]),
    ({"model": "a", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 422, ["body", "stop"]),
    ({"model": "a", "prompt": "x", "frequency_penalty": 0.5}, 422, ["body", "frequency_penalty"]),
    ({"model": "a", "prompt": []}, 422, ["body", "prompt"]),
    ({"model": "a"}, 422, ["body", "prompt"]),
])
def test_bad_requests_are_4xx(server, body, status, where):
    r = httpx.post(server + "/v1/completions", json=body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    if where is not None:
        assert detail[0]["loc"][: len(where)] == where
    r = httpx.post(server + "/v1/chat/completions", json={"model": "a", "messages": [{"role": "robot", "content": "x"}]})
    assert r.status_code == 422
    r = httpx.post(server + "/v1/predict", json={"task": "a", "inputs": ["x"]})
    assert r.status_code == 422 and "language-model adapter" in r.json()["detail"][0]["msg"]


def test_queue_full_is_503_with_retry_after(world):
    with running(make_app(world, max_queue=1)) as url:
        r = httpx.post(url + "/v1/completions", json={"model": "a", "prompt": ["x", "y"], "max_tokens": 2})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert httpx.post(url + "/v1/completions", json={"model": "a", "prompt": "x", "max_tokens": 2}).status_code == 200


def _short_during_long(url: str) -> bool:
    """Stream a long generation; once it has started, ask for a short one. Returns whether the long stream
    was still going when the short answer came."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    seen, short_done = [], threading.Event()
    stream = client.completions.create(model="a", prompt="the cat", max_tokens=60, temperature=0, stream=True)
    first = next(iter(stream))
    seen.append(first)

    def short():
        client.completions.create(model="b", prompt="hello", max_tokens=2, temperature=0)
        short_done.set()

    t = threading.Thread(target=short)
    t.start()
    still_going = False
    for chunk in stream:
        seen.append(chunk)
        if short_done.is_set() and not still_going:
            still_going = chunk.choices[0].finish_reason is None
    t.join(30)
    assert short_done.is_set()
    return still_going


def test_continuous_batching_lets_a_short_request_finish_first(world, server):
    ids, _ = expected(world, world["tok"]("the cat")["input_ids"], "a", 60)
    assert len(ids) == 60  # no EOS: the long one really decodes 60 tokens
    assert _short_during_long(server)
    with running(make_app(world, limits=GenerationLimits(max_tokens=64, max_prompt_tokens=40, continuous=False))) as url:
        assert _short_during_long(url) is False  # static batching: the short one waits for the long one


def test_the_cli_server_loads_a_causal_lm_for_generation(world, tmp_path):
    """``adapterkit serve --model DIR`` on a *ForCausalLM directory: LM adapters, OpenAI routes."""
    from serve_helpers import Server

    model_dir = tmp_path / "tiny-llama"
    tiny_llama(world["tok"], dtype=torch.float32).save_pretrained(model_dir)
    world["tok"].save_pretrained(model_dir)
    assert isinstance(load_model(str(model_dir), kind="auto")[0], LlamaForCausalLM)
    server = Server(["--model", str(model_dir), "--adapter", f"a={world['dirs']['a']}", "--max-tokens", "8",
                     "--threads", "1", "--log-level", "warning"], tmp_path / "server.log")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == [str(model_dir), "a"]
        got = client.completions.create(model="a", prompt="the cat", max_tokens=8, temperature=0)
        assert got.usage.completion_tokens >= 1
        with pytest.raises(openai.UnprocessableEntityError):
            client.completions.create(model="a", prompt="the cat", max_tokens=9)
    finally:
        server.stop()

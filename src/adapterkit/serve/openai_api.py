"""OpenAI-style generation endpoints on a causal LM: ``GET /v1/models``, ``POST /v1/completions`` and
``POST /v1/chat/completions``, with continuous batching across adapters (:mod:`.decode_loop`).

The ``model`` field names a loaded LM adapter or the base model (the name the server was started with); each
request's rows decode in the running batch with that adapter. Shapes follow OpenAI's API reference, so the
``openai`` Python client talks to the server unchanged (``OpenAI(base_url="http://host:port/v1",
api_key="unused")``): non-streamed answers carry ``choices`` and ``usage``; ``stream: true`` answers
server-sent events, one ``data: {chunk}`` per text delta, a last chunk with ``finish_reason``, an optional
usage chunk (``stream_options.include_usage``), then ``data: [DONE]``. Chat applies the tokenizer's chat
template (``apply_chat_template(..., add_generation_prompt=True)``).

Errors keep the server's shape (``{"detail": ...}``) and codes: unknown model 404; bad types, ``n`` > 1,
``max_tokens`` over ``--max-tokens``, a prompt over ``--max-prompt-tokens`` or prompt + ``max_tokens`` over the
model's context 422 naming the field; a queue full or a request that waited past its deadline 503 +
``Retry-After``. A streamed request whose generation fails after its first event gets an ``error`` event.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations as real objects.
import asyncio
import copy
import json
import threading
import time
import uuid
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import StreamingResponse

from ..generation import Row, SamplingParams
from .app import error
from .decode_loop import DecodeLoop
from .openai_schemas import ChatRequest, CompletionRequest, Sampling
from .schemas import errors
from .settings import ServeError, UnknownTask, safe


@dataclass(frozen=True)
class GenerationLimits:
    max_tokens: int = 512  # max_tokens per request; more -> 422
    max_prompt_tokens: int = 2048  # prompt tokens per prompt; more -> 422
    max_prompts: int = 16  # prompts per /v1/completions request; more -> 413
    continuous: bool = True  # False: static batching (the benchmark's baseline)

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_prompt_tokens", "max_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class Invalid(ServeError):
    """A request the server's limits refuse (422), naming the field."""

    status = 422

    def __init__(self, message: str, loc: list):
        super().__init__(message)
        self.loc = loc


class TooMany(ServeError):
    status = 413


def add_generation_routes(app, engine, tokenizer, settings, model_name: str, model_limit, limits: GenerationLimits):
    """Add the generation routes to ``app`` and return the :class:`DecodeLoop` (the caller starts/stops it)."""
    loop_ = DecodeLoop(engine.model, tokenizer, engine, max_running=settings.max_batch_size,
                       max_queue=settings.max_queue, request_timeout_s=settings.request_timeout_s,
                       continuous=limits.continuous)
    local = threading.local()
    base_name = model_name or "base"

    def tok():
        if not hasattr(local, "tokenizer"):  # one tokenizer per thread: a call sets its truncation state
            local.tokenizer = copy.deepcopy(tokenizer)
        return local.tokenizer

    def adapter_for(name: str):
        if name == base_name:
            return None
        task = engine.tasks.get(name)
        if task is None or task.kind != "lm":
            known = [base_name] + sorted(t.name for t in engine.tasks.values() if t.kind == "lm")
            raise UnknownTask(f"unknown model {safe(name, 200)!r}; this server generates with: {', '.join(known[:20])}")
        return task.name

    def budget(field: str, prompts: list[list[int]], where: list, max_tokens: int) -> None:
        if max_tokens > limits.max_tokens:
            raise Invalid(f"{field} {max_tokens} is over this server's limit of {limits.max_tokens}", ["body", field])
        for i, ids in enumerate(prompts):
            loc = where + ([i] if len(prompts) > 1 else [])
            if not ids:
                raise Invalid("the prompt has no tokens; give some text", loc)
            if len(ids) > limits.max_prompt_tokens:
                raise Invalid(f"the prompt has {len(ids)} tokens; the limit is {limits.max_prompt_tokens}", loc)
            if model_limit and len(ids) + max_tokens > model_limit:
                raise Invalid(f"the prompt's {len(ids)} tokens + {field} {max_tokens} exceed the model's context "
                              f"of {model_limit} tokens; shorten the prompt or lower {field}", loc)

    def params(body: Sampling, max_tokens: int) -> SamplingParams:
        greedy = body.temperature == 0 or body.top_p == 0
        return SamplingParams(max_new_tokens=max_tokens, temperature=0.0 if greedy else float(body.temperature),
                              top_p=1.0 if greedy else float(body.top_p), seed=body.seed, stop=tuple(body.stop or ()))

    async def run(body: Sampling, prompts: list[list[int]], max_tokens: int, adapter, chat: bool):
        """Queue the rows, then answer (a JSON body, or an event stream)."""
        sampling = params(body, max_tokens)
        rows = [Row(ids, adapter, sampling) for ids in prompts]
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        index = {id(r): i for i, r in enumerate(rows)}

        def listener(row: Row, delta: str, done: bool) -> None:  # on the decode thread
            loop.call_soon_threadsafe(events.put_nowait, (index[id(row)], delta, done, row))

        items = loop_.submit(rows, listener)
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        usage = lambda: {"prompt_tokens": sum(len(p) for p in prompts),  # noqa: E731
                         "completion_tokens": sum(len(r.generated) for r in rows),
                         "total_tokens": sum(len(p) for p in prompts) + sum(len(r.generated) for r in rows)}
        try:
            first = await events.get()
        except BaseException:
            loop_.cancel(items)
            raise
        failed = _failure(first[3]) if first[2] else None
        if failed is not None:
            loop_.cancel(items)
            raise failed
        if not body.stream:
            try:
                pending, item = len(rows), first
                while True:
                    if item[2]:
                        pending -= 1
                        failed = _failure(item[3])
                        if failed is not None:
                            raise failed
                    if not pending:
                        break
                    item = await events.get()
            finally:
                loop_.cancel(items)  # a no-op for finished rows; stops the others when the client left
            choices = [_choice(i, r, chat) for i, r in enumerate(rows)]
            return {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": created,
                    "model": body.model, "choices": choices, "usage": usage()}

        async def stream():
            kind = "chat.completion.chunk" if chat else "text_completion"

            def chunk(choices, **extra) -> str:
                return "data: " + json.dumps({"id": ident, "object": kind, "created": created, "model": body.model,
                                              "choices": choices, **extra}, ensure_ascii=False) + "\n\n"

            try:
                if chat:
                    yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                                 for i in range(len(rows))])
                pending, item = len(rows), first
                while True:
                    i, delta, done, row = item
                    failed = _failure(row) if done else None
                    if failed is not None:
                        yield "data: " + json.dumps({"error": {"message": str(failed), "code": failed.status}}) + "\n\n"
                        return
                    reason = row.finish_reason if done else None
                    if delta or done:
                        piece = ({"delta": {"content": delta} if delta else {}} if chat
                                 else {"text": delta, "logprobs": None})
                        yield chunk([{"index": i, **piece, "finish_reason": reason}])
                    pending -= done
                    if not pending:
                        break
                    item = await events.get()
                if body.stream_options is not None and body.stream_options.include_usage:
                    yield chunk([], usage=usage())
                yield "data: [DONE]\n\n"
            finally:
                loop_.cancel(items)  # the client went away mid-stream: its rows leave the batch

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def tokenized(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    @app.exception_handler(Invalid)
    async def invalid(request: Request, e: Invalid):
        return error(422, str(e), loc=e.loc)

    common = errors(404, 413, 415, 422, 503, e404="no LM adapter or base model of that name")

    @app.get("/v1/models")
    async def models():
        names = [base_name] + sorted(t.name for t in engine.tasks.values() if t.kind == "lm")
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "adapterkit"}
                                           for n in names]}

    @app.post("/v1/completions", responses=common)
    async def completions(body: CompletionRequest, request: Request):
        adapter = adapter_for(body.model)
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(texts) > limits.max_prompts:
            raise TooMany(f"{len(texts)} prompts in one request; the limit is {limits.max_prompts}")
        prompts = await tokenized(lambda: [tok()(t)["input_ids"] for t in texts])
        budget("max_tokens", prompts, ["body", "prompt"], body.max_tokens)
        return await run(body, prompts, body.max_tokens, adapter, chat=False)

    @app.post("/v1/chat/completions", responses=common)
    async def chat_completions(body: ChatRequest, request: Request):
        adapter = adapter_for(body.model)
        if not getattr(tokenizer, "chat_template", None):
            raise Invalid("this model's tokenizer has no chat template; use POST /v1/completions", ["body", "messages"])
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        try:
            ids = await tokenized(lambda: list(tok().apply_chat_template(messages, add_generation_prompt=True,
                                                                          tokenize=True, return_dict=True)["input_ids"]))
        except Exception as e:  # noqa: BLE001 - a template that refuses these messages (e.g. role order)
            raise Invalid(f"the chat template refused these messages: {safe(str(e), 300)}", ["body", "messages"]) from None
        field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is None:  # OpenAI's default: as many as fit (here: up to --max-tokens)
            room = model_limit - len(ids) if model_limit else limits.max_tokens
            max_tokens = max(1, min(limits.max_tokens, room))
        budget(field, [ids], ["body", "messages"], max_tokens)
        return await run(body, [ids], max_tokens, adapter, chat=True)

    return loop_


def _failure(row: Row):
    """The ServeError to answer for a row that ended in error (None if it did not)."""
    if row.finish_reason != "error":
        return None
    e = row.error
    if isinstance(e, ServeError):
        return e
    return ServeError(f"generation failed: {type(e).__name__}: {safe(str(e), 300)}")


def _choice(i: int, row: Row, chat: bool) -> dict:
    reason = row.finish_reason
    if chat:
        return {"index": i, "message": {"role": "assistant", "content": row.text}, "finish_reason": reason}
    return {"index": i, "text": row.text, "finish_reason": reason, "logprobs": None}


__all__ = ["GenerationLimits", "Invalid", "add_generation_routes"]

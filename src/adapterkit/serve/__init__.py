"""``adapterkit serve``: one frozen backbone, many task adapters, one HTTP server with mixed-task batching.

    python -m adapterkit.serve --model minilm --adapter sentiment=runs/rt/adapter --adapter topic=runs/20ng/adapter \\
        --host 127.0.0.1 --port 8000

Endpoints (OpenAPI at ``/openapi.json``, docs at ``/docs``):
  POST   /v1/predict           {"task": "sentiment", "inputs": ["text", ["text", "pair"], ...]}
                               -> {"task", "predictions": [{"label", "scores": {label: prob}} | {"score": x}]}
  POST   /v1/predict/parallel  {"tasks": ["sentiment", "topic"], "inputs": [...]} -> {"results": [{"task",
                               "predictions"}, ...]}: every task for every input, one Parallel pass (parallel.py)
  GET    /v1/adapters          the loaded adapters with their heads and label names
  POST   /v1/adapters          {"name", "path"}: load a saved adapter directory while serving (safetensors only,
                               config, limits, fingerprint and checksums checked before anything is allocated;
                               nothing changes on error). Any directory on the server, unless
                               ``--adapter-root DIR`` limits it to DIRs (the request's path resolved, then
                               every file's real path again when the load reads it) or ``--read-only``
                               refuses all
  DELETE /v1/adapters/{name}   unload
  GET    /healthz              200 while the worker is alive
  GET    /metrics              Prometheus text: requests, inputs, batches, batch sizes, tasks per batch, latency
                               (with ``--adapter-store DIR``: every adapter under DIR is servable by name,
                               loaded on first use, LRU-evicted beyond ``--max-loaded``; see residency.py)
On a causal LM (``--model smollm2``, a ``*ForCausalLM`` directory), with LM adapters (openai_api.py):
  GET    /v1/models            the base model and the LM adapters, as OpenAI lists models
  POST   /v1/completions       OpenAI's completions (``model`` = an adapter or the base model; ``stream``: SSE)
  POST   /v1/chat/completions  OpenAI's chat completions, through the tokenizer's chat template

How it works. One worker thread owns the model. HTTP handlers validate a request, check every limit (inputs,
characters, room in the queue), tokenise it on a small thread pool, then queue it and wait until its deadline
(``request_timeout_s``; a request still queued then is dropped unrun, 503). The worker takes the oldest
request, keeps collecting requests for up to ``batch_window_ms`` (from the first one's arrival) or until
``max_batch_size`` rows, and runs them as ONE mixed-task batch through :func:`adapterkit.mixed.predict_mixed`
(each row through its own adapter). Loading and unloading adapters are queued in the same FIFO and run by the
worker between batches, so a batch always sees one fixed set of adapters: a request never gets a result from a
half-loaded or another adapter (a request for an adapter unloaded before its batch ran gets 404). A hot load's
config is read and checked on a thread of its own first, so a hostile directory is refused without holding the
worker. Back-pressure: at most ``max_queue`` input rows may be waiting or running; beyond that a request gets
503 with ``Retry-After``. A batch that fails is retried request by request, so one bad request fails alone,
and no request can stop the worker.

Errors, all JSON ``{"detail": ...}`` and documented in the OpenAPI schema; no client input gives a 500:
unknown task 404; malformed or non-strict JSON (NaN, Infinity, bad UTF-8, nesting too deep), lone
surrogates or wrong types 422 (``detail`` names the field, e.g. ``["body", "inputs", 2]``); a body over
``max_body_bytes`` or more than ``max_inputs`` inputs 413; a text over ``max_chars`` characters 422 (texts
are truncated to ``max_length`` tokens, as classification normally is); scores that come out NaN/inf 422
naming the adapter; queue full or deadline passed 503 with ``Retry-After``; adapter name in use 409; an
adapter directory that cannot be loaded 400; ``--read-only`` refuses load/unload with 403, and so does
``--adapter-root`` a directory outside its roots; a method a path does not take 405 with ``Allow``
(``OPTIONS`` answers 204 with it). ``/metrics`` labels stay bounded: unknown task names are ``_unknown``.

The modules, in reading order:
  settings.py   ServeSettings and the errors (ServeError and its subclasses) that carry HTTP status codes
  tasks.py      a loaded adapter as a Task; ``NAME=DIR`` specs, tokenising inputs, formatting predictions
  metrics.py    counters and histograms rendered as Prometheus text
  batcher.py    Engine: the FIFO, the worker thread, dynamic batching, load/unload between batches
  store.py      AdapterStore / DirectoryStore: saved adapters addressable by name without loading them
  residency.py  ``--adapter-store``: load on first use off the worker, LRU eviction between batches, pins
  fusion_task.py, stored_fusion.py  a fusion directory as a task (``--adapter``/hot load; from the store)
  schemas.py    the pydantic request and response bodies
  app.py        create_app: the FastAPI routes around an Engine
  decode_loop.py  DecodeLoop: continuous batching for generation (rows join and leave between decode steps)
  openai_schemas.py, openai_api.py  the OpenAI-style generation routes around a DecodeLoop
  server.py     serve() (load, bind, run uvicorn) and main() (argparse); __main__.py runs main()
  ray_app.py    ``--ray --replicas N``: the same app in N Ray Serve replicas, requests routed by task (optional)
"""

from .batcher import Engine
from .metrics import Metrics
from .server import main, serve
from .settings import (BadAdapter, Conflict, Expired, Forbidden, NonFinite, QueueFull, ServeError, ServeSettings,
                       UnknownTask)
from .tasks import Task, parse_adapters, tokenize


def __getattr__(name: str):
    # create_app is imported on first use, so that importing this package (for Engine, or main's --help)
    # does not import FastAPI and pydantic.
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BadAdapter", "Conflict", "Engine", "Expired", "Forbidden", "Metrics", "NonFinite", "QueueFull",
           "ServeError", "ServeSettings", "Task", "UnknownTask", "create_app", "main", "parse_adapters", "serve", "tokenize"]

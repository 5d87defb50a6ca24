"""``adapterkit serve``: one frozen backbone, many task adapters, one HTTP server with mixed-task batching.

    python -m adapterkit.serve --model minilm --adapter sentiment=runs/rt/adapter --adapter topic=runs/20ng/adapter \\
        --host 127.0.0.1 --port 8000

Endpoints (OpenAPI at ``/openapi.json``, docs at ``/docs``):
  POST   /v1/predict           {"task": "sentiment", "inputs": ["text", ["text", "pair"], ...]}
                               -> {"task", "predictions": [{"label", "scores": {label: prob}} | {"score": x}]}
  GET    /v1/adapters          the loaded adapters with their heads and label names
  POST   /v1/adapters          {"name", "path"}: load a saved adapter directory while serving (safetensors only,
                               base-model fingerprint and checksum checked; nothing changes on error)
  DELETE /v1/adapters/{name}   unload
  GET    /healthz              200 while the worker is alive
  GET    /metrics              Prometheus text: requests, inputs, batches, batch sizes, tasks per batch, latency

How it works. One worker thread owns the model. HTTP handlers validate and tokenise a request, then queue it
and wait. The worker takes the oldest request, keeps collecting requests for up to ``batch_window_ms`` (from
the first one's arrival) or until ``max_batch_size`` rows, and runs them as ONE mixed-task batch through
:func:`adapterkit.mixed.predict_mixed` (each row through its own adapter). Loading and unloading adapters are
queued in the same FIFO and run by the worker between batches, so a batch always sees one fixed set of
adapters: a request never gets a result from a half-loaded or another adapter (a request for an adapter
unloaded before its batch ran gets 404). Back-pressure: at most ``max_queue`` input rows may be waiting or
running; beyond that a request gets 503 with ``Retry-After``. A batch that fails is retried request by
request, so one bad request fails alone, and no request can stop the worker.

Errors: unknown task 404; malformed JSON or wrong types 422 (FastAPI's ``detail`` names the field, e.g.
``["body", "inputs", 2]``); more than ``max_inputs`` inputs 413; a text over ``max_chars`` characters 422
(texts are truncated to ``max_length`` tokens, as classification normally is); adapter name in use 409;
an adapter directory that cannot be loaded 400; ``--read-only`` refuses load/unload with 403.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the request models defined inside create_app
# from the endpoints' annotations, which must therefore be real objects, not strings.
import argparse
import asyncio
import bisect
import collections
import concurrent.futures
import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Union

import torch

from .io import AdapterLoadError, load_adapter, read_adapter_config
from .mixed import head_width, predict_mixed
from .model import get_state, list_adapters, remove_adapter

log = logging.getLogger("adapterkit.serve")

SERVED_HEADS = ("classification", "regression", "own")


@dataclass(frozen=True)
class ServeSettings:
    max_batch_size: int = 32  # rows per forward pass
    batch_window_ms: float = 5.0  # how long the first request of a batch waits for others
    max_queue: int = 1024  # input rows waiting or running; more -> 503
    max_inputs: int = 64  # inputs per request; more -> 413
    max_length: int = 256  # tokens per input (text + pair); longer inputs are truncated
    max_chars: int = 20_000  # characters per text; longer -> 422
    read_only: bool = False  # refuse POST/DELETE /v1/adapters

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "max_inputs", "max_length", "max_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_window_ms < 0:
            raise ValueError(f"batch_window_ms must be >= 0, got {self.batch_window_ms}")


# --- errors the handlers turn into status codes ------------------------------------------------------------
class ServeError(Exception):
    status = 500

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.headers = headers


class UnknownTask(ServeError):
    status = 404


class QueueFull(ServeError):
    status = 503


class Conflict(ServeError):
    status = 409


class BadAdapter(ServeError):
    status = 400


# --- tasks -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    name: str
    path: str | None
    kind: str  # "classification" | "regression"
    labels: tuple[str, ...]  # label names (classification); () for regression
    max_length: int

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "kind": self.kind, "labels": list(self.labels),
                "num_labels": len(self.labels) if self.kind == "classification" else 1, "max_length": self.max_length}


def _task_from_model(model, name: str, path: str | None, meta: dict, settings: ServeSettings,
                     model_limit: int | None = None) -> Task:
    """Describe a loaded adapter: its kind and label names (the saved HeadConfig.labels, else
    extra["label_names"], else LABEL_i)."""
    head = get_state(model).heads[name]
    extra = meta.get("extra") or {}
    if head.kind not in SERVED_HEADS or extra.get("kind") in ("qa", "lm"):
        raise BadAdapter(f"adapter {name!r} has a {extra.get('kind') or head.kind} head; the server serves "
                         "sequence classification and regression adapters")
    width = head_width(model, name)
    regression = head.kind == "regression" or (head.kind == "own" and extra.get("kind") == "regression")
    if regression:
        return Task(name, path, "regression", (), _max_length(extra, settings, model_limit))
    labels = head.labels or extra.get("label_names") or ()
    if not labels or len(labels) != width:
        labels = tuple(f"LABEL_{i}" for i in range(width or 0))
    return Task(name, path, "classification", tuple(str(x) for x in labels), _max_length(extra, settings, model_limit))


def _max_length(extra: dict, settings: ServeSettings, model_limit: int | None) -> int:
    """Tokens per input: the server's limit, the length the adapter was trained with (extra["max_length"],
    written by ``adapterkit train``) and the model's own limit, whichever is least."""
    limits = [settings.max_length, model_limit, extra.get("max_length")]
    return min(x for x in limits if isinstance(x, int) and x > 0)


def model_max_length(model, tokenizer) -> int | None:
    """The fewest tokens the tokenizer or the model's position embeddings allow (None: no known limit)."""
    limits = [getattr(tokenizer, "model_max_length", None),
              getattr(getattr(model, "config", None), "max_position_embeddings", None)]
    limits = [n for n in limits if isinstance(n, int) and 0 < n < 100_000]
    return min(limits) if limits else None


# --- metrics -----------------------------------------------------------------------------------------------
class Histogram:
    def __init__(self, buckets: Sequence[float]):
        self.buckets = list(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> Iterable[str]:
        cumulative = 0
        for bound, n in zip(self.buckets, self.counts):
            cumulative += n
            yield f'{name}_bucket{{le="{bound:g}"}} {cumulative}'
        yield f'{name}_bucket{{le="+Inf"}} {self.count}'
        yield f"{name}_sum {self.sum:.6f}"
        yield f"{name}_count {self.count}"


class Metrics:
    """Prometheus text exposition (version 0.0.4), no dependency."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: collections.Counter = collections.Counter()  # (route, method, code)
        self.predictions: collections.Counter = collections.Counter()  # (task, code)
        self.inputs: collections.Counter = collections.Counter()  # task
        self.batches = 0
        self.batch_failures = 0
        self.batch_rows = Histogram([1, 2, 4, 8, 16, 32, 64, 128, 256])
        self.batch_tasks = Histogram([1, 2, 3, 4, 6, 8, 16])
        self.batch_seconds = Histogram([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5])
        self.latency = Histogram([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30])

    def request(self, route: str, method: str, code: int) -> None:
        with self.lock:
            self.requests[(route, method, code)] += 1

    def prediction(self, task: str, code: int, inputs: int, seconds: float | None) -> None:
        with self.lock:
            self.predictions[(task, code)] += 1
            if code == 200:
                self.inputs[task] += inputs
                self.latency.observe(seconds)

    def batch(self, rows: int, tasks: int, seconds: float, ok: bool) -> None:
        with self.lock:
            self.batches += 1
            self.batch_failures += not ok
            self.batch_rows.observe(rows)
            self.batch_tasks.observe(tasks)
            self.batch_seconds.observe(seconds)

    def render(self, gauges: dict[str, float]) -> str:
        def esc(v: Any) -> str:
            return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

        out = []
        with self.lock:
            out += ["# HELP adapterkit_http_requests_total HTTP requests by route, method and status code.",
                    "# TYPE adapterkit_http_requests_total counter"]
            out += [f'adapterkit_http_requests_total{{route="{esc(r)}",method="{m}",code="{c}"}} {n}'
                    for (r, m, c), n in sorted(self.requests.items())]
            out += ["# HELP adapterkit_predict_requests_total Predict requests by task and status code.",
                    "# TYPE adapterkit_predict_requests_total counter"]
            out += [f'adapterkit_predict_requests_total{{task="{esc(t)}",code="{c}"}} {n}'
                    for (t, c), n in sorted(self.predictions.items())]
            out += ["# HELP adapterkit_inputs_total Inputs predicted, by task.", "# TYPE adapterkit_inputs_total counter"]
            out += [f'adapterkit_inputs_total{{task="{esc(t)}"}} {n}' for t, n in sorted(self.inputs.items())]
            out += ["# HELP adapterkit_batches_total Forward batches run.", "# TYPE adapterkit_batches_total counter",
                    f"adapterkit_batches_total {self.batches}",
                    "# HELP adapterkit_batch_failures_total Batches that raised (retried request by request).",
                    "# TYPE adapterkit_batch_failures_total counter", f"adapterkit_batch_failures_total {self.batch_failures}"]
            for name, hist, help_ in (
                ("adapterkit_batch_rows", self.batch_rows, "Input rows per batch."),
                ("adapterkit_batch_tasks", self.batch_tasks, "Distinct tasks per batch."),
                ("adapterkit_batch_seconds", self.batch_seconds, "Time to run one batch (tokens to scores)."),
                ("adapterkit_request_latency_seconds", self.latency, "Predict latency, queued to answered (200s)."),
            ):
                out += [f"# HELP {name} {help_}", f"# TYPE {name} histogram", *hist.lines(name)]
        for name, value in gauges.items():
            out += [f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(out) + "\n"


# --- the worker --------------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Request:
    task: str
    features: list[dict[str, list[int]]]  # one tokenised input per row
    future: concurrent.futures.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(eq=False)
class _Control:
    fn: Any  # called on the worker thread between batches
    future: concurrent.futures.Future


class Engine:
    """Owns the model and runs everything that touches it on one worker thread."""

    def __init__(self, model, tokenizer, settings: ServeSettings, metrics: Metrics | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.tasks: dict[str, Task] = {}  # replaced, never mutated (handlers read it without the lock)
        self._items: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._admitted_rows = 0  # rows waiting or running (back-pressure)
        self._stopping = False
        self._thread: threading.Thread | None = None
        pad = getattr(tokenizer, "pad_token_id", None)
        self._pad_id = 0 if pad is None else pad
        self._left_pad = getattr(tokenizer, "padding_side", "right") == "left"
        self.model_limit = model_max_length(model, tokenizer)

    # adapters (call before start(), or through control() while running)
    def _load(self, name: str, path: str) -> Task:
        if name in list_adapters(self.model):
            raise Conflict(f"an adapter named {name!r} is already loaded; DELETE /v1/adapters/{name} first")
        try:
            meta = read_adapter_config(path)
            load_adapter(self.model, path, name=name)
        except AdapterLoadError as e:
            raise BadAdapter(str(e)) from None
        try:
            task = _task_from_model(self.model, name, str(path), meta, self.settings, self.model_limit)
        except BaseException:
            remove_adapter(self.model, name)
            raise
        self.tasks = {**self.tasks, name: task}
        return task

    def _unload(self, name: str) -> None:
        if name not in self.tasks:
            raise UnknownTask(f"no adapter named {name!r} is loaded")
        remove_adapter(self.model, name)
        self.tasks = {k: v for k, v in self.tasks.items() if k != name}

    def load(self, name: str, path: str) -> concurrent.futures.Future:
        return self.control(lambda: self._load(name, path))

    def unload(self, name: str) -> concurrent.futures.Future:
        return self.control(lambda: self._unload(name))

    def load_now(self, name: str, path: str) -> Task:
        """Load before serving (startup)."""
        if self.running:
            return self.load(name, path).result()
        return self._load(name, path)

    # queueing
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def queued_rows(self) -> int:
        return self._admitted_rows

    def submit(self, task: str, features: list[dict[str, list[int]]]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            if self._stopping:
                raise QueueFull("the server is shutting down", {"Retry-After": "1"})
            if self._admitted_rows + len(features) > self.settings.max_queue:
                raise QueueFull(f"the queue is full ({self._admitted_rows} inputs waiting, limit "
                                f"{self.settings.max_queue}); retry later", {"Retry-After": "1"})
            self._admitted_rows += len(features)
            self._items.append(_Request(task, features, future))
            self._cv.notify()
        return future

    def control(self, fn) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            self._items.append(_Control(fn, future))
            self._cv.notify()
        return future

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="adapterkit-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # the worker thread
    def _next(self) -> _Control | list[_Request] | None:
        """The next control message, or the next batch of requests (oldest first, up to the window/cap)."""
        window = self.settings.batch_window_ms / 1000.0
        cap = self.settings.max_batch_size
        with self._cv:
            while not self._items:
                if self._stopping:
                    return None
                self._cv.wait()
            if isinstance(self._items[0], _Control):
                return self._items.popleft()
            batch: list[_Request] = []
            rows = 0
            deadline = self._items[0].enqueued + window
            while True:
                while self._items and isinstance(self._items[0], _Request):
                    n = len(self._items[0].features)
                    if batch and rows + n > cap:
                        return batch  # the next request does not fit: it starts the next batch
                    batch.append(self._items.popleft())
                    rows += n
                    if rows >= cap:
                        return batch
                if self._items or self._stopping:  # a control message waits behind this batch
                    return batch
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    return batch
                self._cv.wait(remaining)

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            item = self._next()
            if item is None:
                break
            if isinstance(item, _Control):
                if not item.future.set_running_or_notify_cancel():
                    continue  # the caller went away before it ran
                try:
                    item.future.set_result(item.fn())
                except BaseException as e:  # noqa: BLE001 - reported to the caller, never fatal
                    item.future.set_exception(e)
                continue
            try:
                self._run_batch(item)
            except BaseException as e:  # noqa: BLE001 - a bug here must not stop the worker
                log.exception("batch failed outside the model")
                for r in item:
                    if not r.future.done():
                        r.future.set_exception(e)
            finally:
                with self._cv:
                    self._admitted_rows -= sum(len(r.features) for r in item)
        with self._cv:  # shutting down: answer whatever is left
            for it in self._items:
                if not it.future.done():
                    it.future.set_exception(QueueFull("the server is shutting down", {"Retry-After": "1"}))
            self._items.clear()

    def _run_batch(self, batch: list[_Request]) -> None:
        live = []
        for r in batch:
            if r.future.running():  # a retry, request by request, of a failed batch
                pass
            elif not r.future.set_running_or_notify_cancel():
                continue  # cancelled while queued (the client disconnected): skip it
            if r.task in self.tasks:
                live.append(r)
            else:  # unloaded after this request was queued
                r.future.set_exception(UnknownTask(f"no adapter named {r.task!r} is loaded"))
        if not live:
            return
        started = time.perf_counter()
        try:
            results = self._predict(live)
        except Exception:  # noqa: BLE001 - isolate the failing request(s)
            self.metrics.batch(sum(len(r.features) for r in live), len({r.task for r in live}),
                               time.perf_counter() - started, ok=False)
            if len(live) == 1:
                live[0].future.set_exception(sys.exc_info()[1])
                return
            log.warning("a batch of %d requests failed; retrying them one by one", len(live), exc_info=True)
            for r in live:
                self._run_batch([r])
            return
        self.metrics.batch(sum(len(r.features) for r in live), len({r.task for r in live}),
                           time.perf_counter() - started, ok=True)
        for r, result in zip(live, results):
            r.future.set_result(result)

    def _predict(self, batch: list[_Request]) -> list[list[dict[str, Any]]]:
        rows = [(r.task, f) for r in batch for f in r.features]
        outputs: list[torch.Tensor] = []
        cap = self.settings.max_batch_size
        order = sorted(range(len(rows)), key=lambda i: rows[i][0])  # one chunk holds few tasks
        for start in range(0, len(order), cap):
            chunk = [rows[i] for i in order[start : start + cap]]
            outputs += predict_mixed(self.model, self._pad([f for _, f in chunk]), [t for t, _ in chunk])
        by_row: list[torch.Tensor] = [None] * len(rows)  # type: ignore[list-item]
        for k, i in enumerate(order):
            by_row[i] = outputs[k]
        results, i = [], 0
        for r in batch:
            task = self.tasks[r.task]
            logits = torch.stack(by_row[i : i + len(r.features)]).float()
            i += len(r.features)
            results.append(_format(task, logits))
        return results

    def _pad(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        batch = {}
        for key in features[0]:
            fill = self._pad_id if key == "input_ids" else 0
            t = torch.full((len(features), width), fill, dtype=torch.long)
            for i, f in enumerate(features):
                values = torch.tensor(f[key], dtype=torch.long)
                if self._left_pad:
                    t[i, width - len(values):] = values
                else:
                    t[i, : len(values)] = values
            batch[key] = t
        if "attention_mask" not in batch:
            batch["attention_mask"] = (batch["input_ids"] != self._pad_id).long()
        return batch


def _format(task: Task, logits: torch.Tensor) -> list[dict[str, Any]]:
    if task.kind == "regression":
        return [{"score": float(x)} for x in logits[:, 0]]
    probs = torch.softmax(logits, dim=-1)
    out = []
    for row in probs.tolist():
        best = max(range(len(row)), key=row.__getitem__)
        out.append({"label": task.labels[best], "scores": dict(zip(task.labels, row))})
    return out


def tokenize(tokenizer, inputs: Sequence[str | Sequence[str]], max_length: int) -> list[dict[str, list[int]]]:
    """Each input (text or [text, pair]) to token ids, truncated to ``max_length``, unpadded, order kept."""
    singles = [i for i, x in enumerate(inputs) if isinstance(x, str)]
    pairs = [i for i, x in enumerate(inputs) if not isinstance(x, str)]
    features: list[dict[str, list[int]]] = [None] * len(inputs)  # type: ignore[list-item]
    keep = ("input_ids", "token_type_ids", "attention_mask")
    if singles:
        enc = tokenizer([inputs[i] for i in singles], truncation=True, max_length=max_length)
        for k, i in enumerate(singles):
            features[i] = {key: enc[key][k] for key in keep if key in enc}
    if pairs:
        enc = tokenizer([inputs[i][0] for i in pairs], [inputs[i][1] for i in pairs], truncation=True,
                        max_length=max_length)
        for k, i in enumerate(pairs):
            features[i] = {key: enc[key][k] for key in keep if key in enc}
    return features


# --- the HTTP app ------------------------------------------------------------------------------------------
def create_app(model, tokenizer, adapters: dict[str, str] | Sequence[str] | None = None,
               settings: ServeSettings | None = None, model_name: str | None = None):
    """A FastAPI app serving ``model`` with ``adapters`` ({name: directory} or ["name=dir", ...]) loaded.
    The worker starts with the app (lifespan) and stops with it."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse
    from pydantic import BaseModel, ConfigDict, Field, StrictStr

    settings = settings or ServeSettings()
    engine = Engine(model, tokenizer, settings)
    for name, path in parse_adapters(adapters or {}).items():
        engine.load_now(name, path)

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    from . import __version__

    app = FastAPI(title="adapterkit serve", version=__version__, lifespan=lifespan,
                  description="One frozen backbone, many task adapters; requests of all tasks are batched together.")
    app.state.engine = engine

    Pair = Annotated[list[StrictStr], Field(min_length=2, max_length=2)]

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        task: StrictStr = Field(min_length=1, max_length=200, description="name of a loaded adapter")
        inputs: list[Union[StrictStr, Pair]] = Field(min_length=1, description="texts, or [text, pair] items")

    class Prediction(BaseModel):
        label: str | None = None
        scores: dict[str, float] | None = None
        score: float | None = None

    class PredictResponse(BaseModel):
        task: str
        predictions: list[Prediction]

    class LoadRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        name: StrictStr = Field(pattern=r"^[A-Za-z0-9_\-]+$", max_length=200)
        path: StrictStr = Field(min_length=1)

    def error(status: int, message: str, headers: dict | None = None, loc: list | None = None) -> JSONResponse:
        detail: Any = message if loc is None else [{"loc": loc, "msg": message, "type": "value_error"}]
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        try:
            response = await call_next(request)
        except Exception:  # noqa: BLE001 - never take the server down
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            response = error(500, "internal error; see the server log")
        route = request.scope.get("route")
        engine.metrics.request(getattr(route, "path", "unmatched"), request.method, response.status_code)
        return response

    async def wait(future: concurrent.futures.Future):
        return await asyncio.wrap_future(future)

    @app.post("/v1/predict", response_model=PredictResponse, response_model_exclude_none=True,
              responses={404: {"description": "unknown task"}, 413: {"description": "too many inputs"},
                         422: {"description": "malformed request or text too long"},
                         503: {"description": "queue full; retry after Retry-After seconds"}})
    async def predict(body: PredictRequest):
        started = time.perf_counter()
        task = engine.tasks.get(body.task)
        if task is None:
            engine.metrics.prediction(body.task[:100], 404, len(body.inputs), None)
            known = ", ".join(sorted(engine.tasks)) or "none"
            return error(404, f"unknown task {body.task!r}; loaded adapters: {known}")
        if len(body.inputs) > settings.max_inputs:
            engine.metrics.prediction(task.name, 413, len(body.inputs), None)
            return error(413, f"{len(body.inputs)} inputs in one request; the limit is {settings.max_inputs}")
        for i, x in enumerate(body.inputs):
            texts = [x] if isinstance(x, str) else x
            for j, t in enumerate(texts):
                if len(t) > settings.max_chars:
                    engine.metrics.prediction(task.name, 422, len(body.inputs), None)
                    loc = ["body", "inputs", i] + ([] if isinstance(x, str) else [j])
                    return error(422, f"text of {len(t)} characters; the limit is {settings.max_chars}", loc=loc)
        features = tokenize(tokenizer, body.inputs, task.max_length)
        try:
            result = await wait(engine.submit(task.name, features))
        except ServeError as e:
            engine.metrics.prediction(task.name, e.status, len(body.inputs), None)
            return error(e.status, str(e), e.headers)
        except Exception as e:  # noqa: BLE001 - the model failed on this request; the server goes on
            log.exception("predict failed")
            engine.metrics.prediction(task.name, 500, len(body.inputs), None)
            return error(500, f"prediction failed: {type(e).__name__}: {e}")
        engine.metrics.prediction(task.name, 200, len(body.inputs), time.perf_counter() - started)
        return {"task": task.name, "predictions": result}

    @app.get("/v1/adapters")
    async def adapters_list():
        return {"adapters": [t.describe() for t in engine.tasks.values()]}

    @app.post("/v1/adapters", status_code=201,
              responses={400: {"description": "cannot load the directory"}, 403: {"description": "read-only"},
                         409: {"description": "name in use"}})
    async def adapters_load(body: LoadRequest):
        if settings.read_only:
            return error(403, "the server runs with --read-only: adapters cannot be loaded or unloaded")
        if body.name in engine.tasks:
            return error(409, f"an adapter named {body.name!r} is already loaded; DELETE /v1/adapters/{body.name} first")
        if not Path(body.path).is_dir():
            return error(400, f"{body.path} is not a directory on the server", loc=["body", "path"])
        try:
            task = await wait(engine.load(body.name, body.path))
        except ServeError as e:
            return error(e.status, str(e), e.headers)
        return task.describe()

    @app.delete("/v1/adapters/{name}", responses={403: {"description": "read-only"}, 404: {"description": "unknown"}})
    async def adapters_unload(name: str):
        if settings.read_only:
            return error(403, "the server runs with --read-only: adapters cannot be loaded or unloaded")
        try:
            await wait(engine.unload(name))
        except ServeError as e:
            return error(e.status, str(e), e.headers)
        return {"unloaded": name}

    @app.get("/healthz")
    async def healthz():
        ok = engine.running
        body = {"status": "ok" if ok else "worker stopped", "model": model_name, "adapters": len(engine.tasks),
                "queued_inputs": engine.queued_rows}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        gauges = {"adapterkit_queued_inputs": engine.queued_rows, "adapterkit_adapters_loaded": len(engine.tasks),
                  "adapterkit_max_queue": settings.max_queue, "adapterkit_max_batch_size": settings.max_batch_size}
        return PlainTextResponse(engine.metrics.render(gauges), media_type="text/plain; version=0.0.4")

    return app


def parse_adapters(adapters: dict[str, str] | Sequence[str]) -> dict[str, str]:
    """``["name=dir", ...]`` (or a dict) -> {name: dir}; a bare directory is loaded under its saved name."""
    if isinstance(adapters, dict):
        return dict(adapters)
    out: dict[str, str] = {}
    for spec in adapters:
        name, sep, path = spec.partition("=")
        if not sep:
            path = spec
            name = read_adapter_config(path)["name"]
        if not name or not path:
            raise ValueError(f"--adapter takes NAME=DIRECTORY, got {spec!r}")
        if name in out:
            raise ValueError(f"adapter name {name!r} given twice")
        out[name] = path
    return out


def serve(model: str = "minilm", adapters: Sequence[str] | dict[str, str] = (), host: str = "127.0.0.1",
          port: int = 8000, max_batch_size: int = 32, batch_window_ms: float = 5.0, max_queue: int = 1024,
          max_inputs: int = 64, max_length: int = 256, max_chars: int = 20_000, read_only: bool = False,
          threads: int | None = None, log_level: str = "info", access_log: bool = False) -> None:
    """Load ``model`` (an alias such as ``minilm``, or a model directory) with ``adapters`` ("name=dir") and
    serve until interrupted. ``port=0`` picks a free port; the bound address is printed on stdout."""
    import uvicorn

    from .models import load_model

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if threads:
        torch.set_num_threads(threads)
    settings = ServeSettings(max_batch_size=max_batch_size, batch_window_ms=batch_window_ms, max_queue=max_queue,
                             max_inputs=max_inputs, max_length=max_length, max_chars=max_chars, read_only=read_only)
    net, tokenizer = load_model(model, kind="classification")
    app = create_app(net, tokenizer, adapters, settings, model_name=model)

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"adapterkit serve: listening on http://{shown}:{bound} ({len(app.state.engine.tasks)} adapters: "
          f"{', '.join(app.state.engine.tasks) or 'none'})", flush=True)
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="adapterkit serve", description="Serve many task adapters on one backbone "
                                "over HTTP, with mixed-task dynamic batching.")
    p.add_argument("--model", default="minilm", help="model alias (minilm, mpnet) or a local model directory")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                   help="adapter directory to serve as task NAME (repeatable)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on stdout)")
    d = ServeSettings()
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help="rows per forward pass")
    p.add_argument("--batch-window-ms", type=float, default=d.batch_window_ms,
                   help="how long a request waits for others to batch with")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="inputs waiting or running before 503")
    p.add_argument("--max-inputs", type=int, default=d.max_inputs, help="inputs per request before 413")
    p.add_argument("--max-length", type=int, default=d.max_length, help="tokens per input (longer: truncated)")
    p.add_argument("--max-chars", type=int, default=d.max_chars, help="characters per text before 422")
    p.add_argument("--read-only", action="store_true", help="refuse loading/unloading adapters over HTTP")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true")
    a = p.parse_args(argv)
    try:
        serve(a.model, a.adapter, a.host, a.port, a.max_batch_size, a.batch_window_ms, a.max_queue, a.max_inputs,
              a.max_length, a.max_chars, a.read_only, a.threads, a.log_level, a.access_log)
    except (ValueError, OSError, ServeError) as e:  # ModelError, AdapterLoadError, bad settings, port in use
        print(f"adapterkit serve: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


__all__ = ["Engine", "Metrics", "ServeSettings", "create_app", "main", "parse_adapters", "serve", "tokenize"]

if __name__ == "__main__":
    main()

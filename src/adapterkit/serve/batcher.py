"""The dynamic mixed-task batcher: :class:`Engine` owns the model and runs everything that touches it on
one worker thread.

HTTP handlers call :meth:`Engine.submit` (tokenised inputs of one request) or :meth:`Engine.load` /
:meth:`Engine.unload`; each returns a ``concurrent.futures.Future`` and appends to one FIFO. The worker takes
the oldest item. A control message (load/unload) runs alone, between batches, so a batch always sees one
fixed set of adapters. A request starts a batch that keeps collecting the requests behind it for up to
``batch_window_ms`` (from the first one's arrival) or until ``max_batch_size`` rows, stopping early at a
control message; the batch runs as ONE mixed-task forward pass (:func:`adapterkit.mixed.predict_mixed`). A
batch that fails is retried request by request, so one bad request fails alone and nothing stops the worker.
Back-pressure: at most ``max_queue`` rows may be waiting or running; :meth:`Engine.submit` raises
:class:`QueueFull` beyond that.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..features import pad_inputs
from ..io import AdapterLoadError, load_adapter, read_adapter_config
from ..mixed import predict_mixed
from ..model import list_adapters, remove_adapter
from .metrics import Metrics
from .settings import BadAdapter, Conflict, QueueFull, ServeSettings, UnknownTask
from .tasks import Task, format_predictions, model_max_length, task_from_model

log = logging.getLogger("adapterkit.serve")


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
            raise Conflict.name_in_use(name)
        try:
            meta = read_adapter_config(path)
            load_adapter(self.model, path, name=name)
        except AdapterLoadError as e:
            raise BadAdapter(str(e)) from None
        try:
            task = task_from_model(self.model, name, str(path), meta, self.settings, self.model_limit)
        except BaseException:
            remove_adapter(self.model, name)
            raise
        self.tasks = {**self.tasks, name: task}
        return task

    def _unload(self, name: str) -> None:
        if name not in self.tasks:
            raise UnknownTask.named(name)
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
                raise QueueFull.shutting_down()
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
                    it.future.set_exception(QueueFull.shutting_down())
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
                r.future.set_exception(UnknownTask.named(r.task))
        if not live:
            return
        rows, tasks = sum(len(r.features) for r in live), len({r.task for r in live})
        started = time.perf_counter()
        try:
            results = self._predict(live)
        except Exception:  # noqa: BLE001 - isolate the failing request(s)
            self.metrics.batch(rows, tasks, time.perf_counter() - started, ok=False)
            if len(live) == 1:
                live[0].future.set_exception(sys.exc_info()[1])
                return
            log.warning("a batch of %d requests failed; retrying them one by one", len(live), exc_info=True)
            for r in live:
                self._run_batch([r])
            return
        self.metrics.batch(rows, tasks, time.perf_counter() - started, ok=True)
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
            results.append(format_predictions(task, logits))
        return results

    def _pad(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return pad_inputs(features, self._pad_id, left=self._left_pad)

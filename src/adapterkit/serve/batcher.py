"""The dynamic mixed-task batcher: :class:`Engine` owns the model and runs everything that touches it on
one worker thread.

HTTP handlers call :meth:`Engine.submit` (tokenised inputs of one request) or :meth:`Engine.load` /
:meth:`Engine.unload`; each returns a ``concurrent.futures.Future`` and appends to one FIFO. The worker takes
the oldest item. A control message (load/unload) runs alone, between batches, so a batch always sees one
fixed set of adapters. A request starts a batch that keeps collecting the requests behind it for up to
``batch_window_ms`` (from the first one's arrival) or until ``max_batch_size`` rows, stopping early at a
control message; the batch runs as ONE mixed-task forward pass (:func:`adapterkit.mixed.predict_mixed`). A
batch that fails is retried request by request, so one bad request fails alone and nothing stops the worker.
Back-pressure: at most ``max_queue`` rows may be waiting or running; :meth:`Engine.reserve` (called before
a request is tokenised) raises :class:`QueueFull` beyond that. Every request has a deadline
(``request_timeout_s`` after it arrived): one still queued when its deadline has passed is dropped unrun with
:class:`Expired`. A request whose scores are not finite (NaN, inf) is refused with :class:`NonFinite`, naming
the adapter, and the other requests of its batch are answered.

Hot loading is split in two: :meth:`Engine.check_adapter` reads and validates the directory on a thread of
its own (at most ``MAX_PENDING_LOADS`` at once), so a slow or hostile directory never holds the worker; only
then is the load queued for the worker, which loads it with the same root check (``root=`` of
:func:`adapterkit.io.load_adapter`: every file's real path must stay inside the root when it is read).
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
from ..composition import Fuse
from ..fusion_io import read_fusion_config
from .fusion_task import confined_directories, fused_directories, is_fusion_dir, load_fusion_task, unload_fusion_task
from .metrics import Metrics
from .settings import (BadAdapter, Conflict, Expired, NonFinite, QueueFull, ServeError, ServeSettings, UnknownTask,
                       safe)
from .tasks import Task, format_predictions, model_max_length, task_from_model

log = logging.getLogger("adapterkit.serve")

MAX_PENDING_LOADS = 2  # hot loads being checked or waiting for the worker at once; more -> 503


@dataclass(eq=False)
class _Request:
    task: str
    features: list[dict[str, list[int]]]  # one tokenised input per row
    future: concurrent.futures.Future
    enqueued: float = field(default_factory=time.perf_counter)
    deadline: float = float("inf")  # time.perf_counter() after which it is dropped unrun
    released: bool = False  # its rows no longer count against max_queue


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
        # Held for every batch and adapter load/unload here, and every generation step (decode_loop.py).
        self.model_lock = threading.RLock()
        self._loads = threading.BoundedSemaphore(MAX_PENDING_LOADS)
        self._checker = concurrent.futures.ThreadPoolExecutor(MAX_PENDING_LOADS, thread_name_prefix="adapterkit-load")
        pad = getattr(tokenizer, "pad_token_id", None)
        self._pad_id = 0 if pad is None else pad
        self._left_pad = getattr(tokenizer, "padding_side", "right") == "left"
        self.model_limit = model_max_length(model, tokenizer)

    # adapters (call before start(), or through control() while running)
    def _load(self, name: str, path: str, root: str | None = None) -> Task:
        if name in list_adapters(self.model) or name in self.tasks:
            raise Conflict.name_in_use(name)
        if is_fusion_dir(path):  # a fusion and the adapters it fuses (fusion_task.py)
            try:
                task = load_fusion_task(self, name, path, root)
            except ServeError:
                raise
            except Exception as e:  # noqa: BLE001 - AdapterLoadError, or anything a hostile directory provokes
                raise self._bad(path, e) from None
            self.tasks = {**self.tasks, name: task}
            return task
        try:
            meta = self._read_config(path, root)
            load_adapter(self.model, path, name=name, **({} if root is None else {"root": root}))
        except BadAdapter:
            raise
        except Exception as e:  # noqa: BLE001 - AdapterLoadError, or anything a hostile directory provokes
            raise self._bad(path, e) from None
        try:
            task = task_from_model(self.model, name, str(path), meta, self.settings, self.model_limit)
        except BaseException as e:
            remove_adapter(self.model, name)
            if isinstance(e, Exception) and not isinstance(e, BadAdapter):
                raise self._bad(path, e) from None
            raise
        self.tasks = {**self.tasks, name: task}
        return task

    @staticmethod
    def _read_config(path: str, root: str | None) -> dict:
        meta = read_adapter_config(path) if root is None else read_adapter_config(path, root=root)
        if not isinstance(meta, dict):
            raise AdapterLoadError(f"{path}: the adapter config is not a JSON object")
        return meta

    @staticmethod
    def _bad(path: str, e: BaseException) -> BadAdapter:
        if isinstance(e, AdapterLoadError):
            return BadAdapter(safe(str(e), 1000))
        log.warning("loading %s failed", safe(path), exc_info=True)
        return BadAdapter(f"cannot load the adapter directory {safe(path)}: {type(e).__name__}: {safe(str(e))}")

    def check_adapter(self, path: str, root: str | None = None) -> dict:
        """Read and validate ``path``'s config (inside ``root``) off the worker; raise :class:`BadAdapter`."""
        try:
            if is_fusion_dir(path):
                meta = read_fusion_config(path, root)
                fused = fused_directories(path, root, meta)
                if root is not None:
                    confined_directories(self.settings, path, fused)
                return meta
            return self._read_config(path, root)
        except ServeError:  # BadAdapter, Forbidden
            raise
        except Exception as e:  # noqa: BLE001
            raise self._bad(path, e) from None

    def _unload(self, name: str) -> None:
        if name not in self.tasks:
            raise UnknownTask.named(name)
        if isinstance(self.tasks[name].route, Fuse):
            unload_fusion_task(self.model, self.tasks[name])
        else:
            remove_adapter(self.model, name)
        self.tasks = {k: v for k, v in self.tasks.items() if k != name}
        self.metrics.forget(name)

    def load(self, name: str, path: str, root: str | None = None) -> concurrent.futures.Future:
        return self.control(lambda: self._load(name, path, root))

    def hot_load(self, name: str, path: str, root: str | None = None) -> concurrent.futures.Future:
        """Check ``path`` on a thread of its own, then queue the load for the worker; the future gives the Task.
        At most ``MAX_PENDING_LOADS`` hot loads at once: beyond, :class:`QueueFull`."""
        if not self._loads.acquire(blocking=False):
            raise QueueFull(f"{MAX_PENDING_LOADS} adapter loads are already in progress; retry later",
                            {"Retry-After": "1"})
        outer: concurrent.futures.Future = concurrent.futures.Future()

        def done(inner: concurrent.futures.Future) -> None:
            self._loads.release()
            if inner.cancelled():
                outer.cancel()
            elif inner.exception() is not None:
                outer.set_exception(inner.exception())
            else:
                outer.set_result(inner.result())

        def check() -> None:
            try:
                self.check_adapter(path, root)
            except BaseException as e:  # noqa: BLE001 - answered, never raised on this thread
                fail = concurrent.futures.Future()
                fail.set_exception(e)
                done(fail)
                return
            self.load(name, path, root).add_done_callback(done)

        try:
            self._checker.submit(check)
        except RuntimeError:  # shutting down
            self._loads.release()
            raise QueueFull.shutting_down() from None
        return outer

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

    def reserve(self, rows: int) -> None:
        """Count ``rows`` against ``max_queue`` before they are tokenised; :class:`QueueFull` if they do not fit.
        Hand them to :meth:`submit` (``reserved=True``) or give them back with :meth:`release`."""
        with self._cv:
            if self._stopping:
                raise QueueFull.shutting_down()
            if self._admitted_rows + rows > self.settings.max_queue:
                raise QueueFull(f"the queue is full ({self._admitted_rows} inputs waiting, limit "
                                f"{self.settings.max_queue}); retry later", {"Retry-After": "1"})
            self._admitted_rows += rows

    def release(self, rows: int) -> None:
        with self._cv:
            self._admitted_rows -= rows

    def submit(self, task: str, features: list[dict[str, list[int]]], reserved: bool = False,
               deadline: float | None = None) -> concurrent.futures.Future:
        """Queue one request's tokenised inputs; ``deadline`` (a ``time.perf_counter()`` value) defaults to
        ``request_timeout_s`` from now."""
        if not reserved:
            self.reserve(len(features))
        future: concurrent.futures.Future = concurrent.futures.Future()
        now = time.perf_counter()
        if deadline is None:
            deadline = now + self.settings.request_timeout_s
        with self._cv:
            if self._stopping:
                self._admitted_rows -= len(features)
                raise QueueFull.shutting_down()
            self._items.append(_Request(task, features, future, now, deadline))
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
        self._checker.shutdown(wait=False, cancel_futures=True)
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
                    with self.model_lock:
                        result = item.fn()
                    item.future.set_result(result)
                except BaseException as e:  # noqa: BLE001 - reported to the caller, never fatal
                    item.future.set_exception(e)
                continue
            try:
                with self.model_lock:
                    self._run_batch(item)
            except BaseException as e:  # noqa: BLE001 - a bug here must not stop the worker
                log.exception("batch failed outside the model")
                for r in item:
                    if not r.future.done():
                        self._answer(r, error=e)
            finally:
                for r in item:  # the ones skipped unanswered (cancelled) too
                    self._release(r)
        with self._cv:  # shutting down: answer whatever is left
            for it in self._items:
                if not it.future.done():
                    it.future.set_exception(QueueFull.shutting_down())
            self._items.clear()

    def _run_batch(self, batch: list[_Request]) -> None:
        live = []
        now = time.perf_counter()
        for r in batch:
            if r.future.running():  # a retry, request by request, of a failed batch
                pass
            elif not r.future.set_running_or_notify_cancel():
                continue  # cancelled while queued (the client disconnected or gave up): skip it
            elif now > r.deadline:  # waited too long: its client has been answered 503 or is about to be
                self.metrics.dropped("expired")
                self._answer(r, error=Expired.after(self.settings.request_timeout_s))
                continue
            if r.task in self.tasks:
                live.append(r)
            else:  # unloaded after this request was queued
                self._answer(r, error=UnknownTask.named(r.task))
        if not live:
            return
        rows, tasks = sum(len(r.features) for r in live), len({r.task for r in live})
        started = time.perf_counter()
        try:
            results = self._predict(live)
        except Exception:  # noqa: BLE001 - isolate the failing request(s)
            self.metrics.batch(rows, tasks, time.perf_counter() - started, ok=False)
            if len(live) == 1:
                self._answer(live[0], error=sys.exc_info()[1])
                return
            log.warning("a batch of %d requests failed; retrying them one by one", len(live), exc_info=True)
            for r in live:
                self._run_batch([r])
            return
        self.metrics.batch(rows, tasks, time.perf_counter() - started, ok=True)
        for r, result in zip(live, results):
            if isinstance(result, BaseException):
                self.metrics.dropped("nonfinite")
                self._answer(r, error=result)
            else:
                self._answer(r, result)

    def _answer(self, r: _Request, result: Any = None, error: BaseException | None = None) -> None:
        """Release ``r``'s rows, then answer it: a client holding its answer finds its rows already given back."""
        self._release(r)
        if error is not None:
            r.future.set_exception(error)
        else:
            r.future.set_result(result)

    def _release(self, r: _Request) -> None:
        with self._cv:
            if not r.released:
                r.released = True
                self._admitted_rows -= len(r.features)

    def _predict(self, batch: list[_Request]) -> list[list[dict[str, Any]] | NonFinite]:
        rows = [(r.task, f) for r in batch for f in r.features]
        outputs: list[torch.Tensor] = []
        cap = self.settings.max_batch_size
        order = sorted(range(len(rows)), key=lambda i: rows[i][0])  # one chunk holds few tasks
        for start in range(0, len(order), cap):
            chunk = [rows[i] for i in order[start : start + cap]]
            outputs += predict_mixed(self.model, self._pad([f for _, f in chunk]), [self.tasks[t].entry for t, _ in chunk])
        by_row: list[torch.Tensor] = [None] * len(rows)  # type: ignore[list-item]
        for k, i in enumerate(order):
            by_row[i] = outputs[k]
        results, i = [], 0
        for r in batch:
            task = self.tasks[r.task]
            logits = torch.stack(by_row[i : i + len(r.features)]).float()
            i += len(r.features)
            bad = (~torch.isfinite(logits)).any(dim=-1).nonzero().flatten().tolist()
            if bad:  # never serve NaN/inf (JSON has no such numbers) nor the nulls they would become
                log.warning("adapter %r produced non-finite scores for %d of %d inputs", task.name, len(bad),
                            len(r.features))
                results.append(NonFinite(f"adapter {task.name!r} produced non-finite scores (NaN or infinity) "
                                         f"for input(s) {bad[:10]}; the adapter is broken for these inputs"))
                continue
            results.append(format_predictions(task, logits))
        return results

    def _pad(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return pad_inputs(features, self._pad_id, left=self._left_pad)

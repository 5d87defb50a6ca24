"""Continuous batching for generation: one thread runs a decode loop in which requests join and leave the
running batch between decode steps (Yu et al. 2022, "Orca: a distributed serving system for
transformer-based generative models", OSDI: iteration-level scheduling).

Each iteration of the loop:
  1. requests waiting in the FIFO join, up to ``max_running`` rows: their prompts run as one prefill (rows of
     different adapters together), and the new rows' KV cache is merged into the running batch's
     (:func:`adapterkit.generation.merge`: the shorter cache left-padded with masked zeros); otherwise
  2. the running batch takes one decode step: one forward of ``(B, 1)`` tokens, each row through its adapter;
  3. every row's new text goes to its request (streamed deltas; stop strings held back until they cannot
     match); finished rows (EOS, a stop string, ``max_tokens``, a cancelled stream) leave the batch at once,
     their cache rows dropped (:meth:`DecodeBatch.keep`).
So a long generation never holds a short one back: a short request joins at the next step and leaves as soon
as it is done. With ``continuous=False`` the loop batches statically instead (a batch runs to its last row
before anyone joins): the baseline ``benchmarks/generation.py`` measures against.

The loop shares the model with the classification :class:`~.batcher.Engine`: every forward here, and every
batch or adapter load/unload there, holds ``engine.model_lock``, so a step always sees one fixed set of
adapters. A row whose adapter was unloaded before its step ends with ``finish_reason`` ``"error"``.
Back-pressure: at most ``max_queue`` rows may be waiting or running; :meth:`DecodeLoop.submit` raises
:class:`~.settings.QueueFull` (503 + Retry-After) beyond that. A request still waiting after
``request_timeout_s`` is dropped unrun (503).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..generation import DecodeBatch, Row, decode_step, eos_ids, merge, prefill
from .settings import Expired, QueueFull

log = logging.getLogger("adapterkit.serve")

#: Called on the loop thread with (row, new text, finished): the request's own channel.
Listener = Callable[[Row, str, bool], None]


@dataclass(eq=False)
class Pending:
    """One row waiting to join, with where its updates go."""

    row: Row
    listener: Listener
    deadline: float
    emitted: int = 0  # characters of the row's text already delivered
    cancelled: bool = False
    enqueued: float = field(default_factory=time.perf_counter)


class DecodeLoop:
    """The generation worker: owns the running batch; see the module docstring."""

    def __init__(self, model, tokenizer, engine, max_running: int = 32, max_queue: int = 1024,
                 request_timeout_s: float = 30.0, continuous: bool = True):
        self.model, self.tokenizer, self.engine = model, tokenizer, engine
        self.max_running, self.max_queue, self.timeout = max_running, max_queue, request_timeout_s
        self.continuous = continuous
        self.eos = eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else next(iter(self.eos), 0)
        self._waiting: collections.deque[Pending] = collections.deque()
        self._pending: dict[int, Pending] = {}  # id(row) -> its Pending, while waiting or running
        self._batch: DecodeBatch | None = None
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # decode steps run (tests and benchmarks read it)

    @property
    def admitted(self) -> int:
        return len(self._pending)

    def submit(self, rows: list[Row], listener: Listener) -> list[Pending]:
        """Queue the rows of one request (all or none); :class:`QueueFull` when they do not fit."""
        deadline = time.perf_counter() + self.timeout
        with self._cv:
            if self._stopping:
                raise QueueFull.shutting_down()
            if len(self._pending) + len(rows) > self.max_queue:
                raise QueueFull(f"the generation queue is full ({len(self._pending)} sequences waiting or "
                                f"running, limit {self.max_queue}); retry later", {"Retry-After": "1"})
            items = [Pending(r, listener, deadline) for r in rows]
            for p in items:
                self._pending[id(p.row)] = p
                self._waiting.append(p)
            self._cv.notify()
        return items

    def cancel(self, items: list[Pending]) -> None:
        """The client went away: its rows leave at the next step (or never start)."""
        with self._cv:
            for p in items:
                p.cancelled = True

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="adapterkit-decode", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # the loop thread
    def _admit(self) -> list[Pending]:
        """Rows to prefill now (possibly none); waits while there is nothing to do."""
        with self._cv:
            while not self._waiting and self._batch is None and not self._stopping:
                self._cv.wait()
            if self._stopping:
                return []
            room = self.max_running - (len(self._batch) if self._batch is not None else 0)
            if not self.continuous and self._batch is not None:
                room = 0  # static batching: the running batch finishes first
            joining, now = [], time.perf_counter()
            while self._waiting and len(joining) < room:
                p = self._waiting.popleft()
                if p.cancelled:
                    self._finish(p, "cancelled")
                elif now > p.deadline:
                    self._finish(p, Expired.after(self.timeout))
                else:
                    joining.append(p)
            return joining

    def _finish(self, p: Pending, reason) -> None:
        """Deliver the end of a row that never ran (reason: a finish reason or an exception)."""
        self._pending.pop(id(p.row), None)
        p.row.finish_reason = reason if isinstance(reason, str) else "error"
        p.row.error = reason if isinstance(reason, BaseException) else None
        p.listener(p.row, "", True)

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            joining = self._admit()
            if self._stopping:
                break
            try:
                with self.engine.model_lock:
                    self._unloaded()
                    if joining:
                        new = prefill(self.model, [p.row for p in joining], self.pad_id, self.tokenizer, self.eos)
                        self._batch = merge(self._batch, new)
                    elif self._batch is not None:
                        decode_step(self.model, self._batch, self.tokenizer, self.eos)
                        self.steps += 1
            except Exception as e:  # noqa: BLE001 - a failed forward fails its rows, never the loop
                log.exception("a generation step failed")
                if joining:  # the prefill failed: its rows end, the running rows go on
                    with self._cv:
                        for p in joining:
                            self._finish(p, e)
                elif self._batch is not None:  # a decode step failed: its cache is suspect, every row ends
                    for row in self._batch.rows:
                        row.finish_reason, row.error = "error", e
            self._deliver()
        with self._cv:  # shutting down: answer whatever is left
            for p in list(self._pending.values()):
                if p.row.finish_reason is None:
                    p.row.finish_reason, p.row.error = "error", QueueFull.shutting_down()
                    p.listener(p.row, "", True)
            self._pending.clear()
            self._waiting.clear()
            self._batch = None

    def _unloaded(self) -> None:
        """Rows whose adapter is no longer loaded end here (under the model lock, before the forward)."""
        if self._batch is None:
            return
        loaded = self.engine.tasks
        for row in self._batch.rows:
            if row.adapter is not None and row.adapter not in loaded and not row.done:
                row.finish_reason = "error"
                row.error = ValueError(f"adapter {row.adapter!r} was unloaded while generating")

    def _deliver(self) -> None:
        """Send each row its new text; drop finished and cancelled rows from the batch."""
        batch = self._batch
        rows = batch.rows if batch is not None else []
        keep = []
        with self._cv:
            for i, row in enumerate(rows):
                p = self._pending.get(id(row))
                if p is None:
                    continue
                if p.cancelled and not row.done:
                    row.finish_reason = "cancelled"
                text = row.visible_text()
                delta = text[p.emitted:]
                p.emitted = max(p.emitted, len(text))
                if row.done:
                    self._pending.pop(id(row), None)
                else:
                    keep.append(i)
                if delta or row.done:
                    try:
                        p.listener(row, delta, row.done)
                    except Exception:  # noqa: BLE001 - a listener must not stop the loop
                        log.exception("delivering a generation update failed")
        if batch is not None:
            self._batch = batch.keep(keep) if len(keep) < len(rows) else batch


__all__ = ["DecodeLoop", "Listener", "Pending"]

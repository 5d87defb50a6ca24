"""Which stored adapters are in memory: loaded on first use, kept under an LRU bound, never evicted in use.

A :class:`Residency` sits beside an :class:`~.batcher.Engine` and an :class:`~.store.AdapterStore`. The
request handler calls :meth:`Residency.acquire` for a stored adapter's name and gets a future of its
:class:`~.tasks.Task`, with the adapter *pinned*; it calls :meth:`Residency.release` once the request's
rows have been answered (or it gave up). The rules:

* **Hit**: the adapter is resident; it moves to the most-recently-used end and the future is already done.
* **Miss (cold load)**: a loader thread does everything that does not touch the model: it finds the adapter
  in the store, reads and checks its config (strict JSON, checksums, base-model fingerprint, limits) and its
  weights (size limit, sha256, safetensors header against the shapes this config gives in this model, finite
  values), exactly the checks of :func:`adapterkit.io.load_adapter`. Only the insertion itself (building the
  small modules and copying the checked tensors in) is queued for the worker, which runs it between two
  batches like any control message. Rows of resident adapters keep being batched while a cold one is read.
  Concurrent requests for one cold adapter share one load.
* **Fusions** in the store (``fusion_config.json`` directories) are stored entries too: read with their fused
  adapters on the loader thread, inserted on the worker, one entry whose bytes include its fused adapters'
  (:mod:`.stored_fusion`).
* **Bounds**: ``max_loaded`` adapters and/or ``max_memory`` bytes of adapter tensors (store adapters only:
  ``--adapter`` and hot-loaded ones are not counted and never evicted). Before an insertion the worker
  evicts least-recently-used adapters until the new one fits; an adapter pinned by a request in flight
  (queued, or in the batch being run) is never evicted. If every resident adapter is pinned, the new one is
  inserted anyway and the bound is exceeded until those requests finish: the overflow is evicted between
  batches as soon as its last pin is released. Evictions run on the worker between batches, so a batch
  always sees a fixed set of adapters.
* ``DELETE /v1/adapters/NAME`` of a stored adapter evicts it at once if no request uses it, else as soon as
  the last one is answered; a later request loads it again.

References: the LRU cache of adapters with reference counts is the scheme of S-LoRA (Sheng et al., 2023,
"S-LoRA: Serving Thousands of Concurrent LoRA Adapters") and LoRAX, here for bottleneck adapters on CPU or GPU.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..io import (AdapterLoadError, adapter_shape, check_fingerprint, fingerprint, insert_tensors,
                  read_adapter_config, read_checked_weights)
from ..checks import resolve_directory
from ..model import list_adapters, planned_tensors, remove_adapter
from .metrics import Histogram
from .settings import BadAdapter, Conflict, Expired, ServeError, UnknownTask, safe
from .store import AdapterStore, StoredAdapter, UnknownAdapter
from .stored_fusion import insert_stored_fusion, read_stored_fusion
from .tasks import Task, task_from_model

log = logging.getLogger("adapterkit.serve")

LOAD_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]


class NotInStore(UnknownTask):
    """404: neither loaded nor in the store."""


class Residency:
    """The LRU set of stored adapters loaded into ``engine``'s model (see the module docstring)."""

    def __init__(self, engine, store: AdapterStore, max_loaded: int | None = None, max_memory: int | None = None,
                 load_threads: int = 1):
        if max_loaded is not None and max_loaded < 1:
            raise ValueError(f"max_loaded must be >= 1, got {max_loaded}")
        if max_memory is not None and max_memory < 1:
            raise ValueError(f"max_memory must be >= 1 byte, got {max_memory}")
        self.engine = engine
        self.store = store
        self.max_loaded = max_loaded
        self.max_memory = max_memory
        # The base model is frozen: its fingerprint is taken once here, not on the loader thread while the
        # worker may be adding modules.
        self._fingerprint = fingerprint(engine.model)
        self._lock = threading.Lock()
        self._resident: collections.OrderedDict[str, int] = collections.OrderedDict()  # name -> bytes, LRU first
        self._pins: collections.Counter = collections.Counter()
        self._loading: dict[str, concurrent.futures.Future] = {}
        self._doomed: set[str] = set()  # DELETE asked while pinned: evict once idle
        # Taken out of _resident but not yet out of the engine (the worker unloads them next): still ours, so a
        # request for one must go through acquire (a cold load) rather than use the task about to go.
        self._leaving: set[str] = set()
        self._evict_queued = False
        self._plans: dict[str, dict[str, tuple[int, ...]]] = {}  # config+head JSON -> planned tensor shapes
        self._loader = concurrent.futures.ThreadPoolExecutor(load_threads, thread_name_prefix="adapterkit-store")
        self.hits = self.misses = self.loads = self.load_failures = self.evictions = 0
        self.load_seconds = Histogram(LOAD_BUCKETS)  # cold load: request of the load to the adapter usable
        self.insert_seconds = Histogram(LOAD_BUCKETS)  # the part on the worker (between batches)

    # what the handlers call
    def manages(self, name: str) -> bool:
        """Whether requests for ``name`` go through the store: resident from it, or not loaded and in it."""
        with self._lock:
            if name in self._resident or name in self._loading or name in self._leaving:
                return True
        return name not in self.engine.tasks and name in self.store

    def acquire(self, name: str, lookup: bool = True) -> concurrent.futures.Future:
        """Pin ``name`` and return a future of its Task (done at once on a hit). Call :meth:`release` once for
        every acquire, whatever happens to the request. ``lookup=False``: a pin that is not a request's lookup
        (not counted as a hit or miss)."""
        with self._lock:
            self._pins[name] += 1
            if name in self._resident:
                task = self.engine.tasks.get(name)
                if task is not None:
                    self.hits += lookup
                    self._resident.move_to_end(name)
                    done: concurrent.futures.Future = concurrent.futures.Future()
                    done.set_result(task)
                    return done
            self.misses += lookup
            future = self._loading.get(name)
            if future is None:
                future = self._loading[name] = concurrent.futures.Future()
                try:
                    self._loader.submit(self._cold_load, name, future, time.perf_counter())
                except RuntimeError:  # shutting down
                    del self._loading[name]
                    future.set_exception(ServeError("the server is shutting down"))
            return future

    async def hold(self, name: str, deadline: float) -> Hold:
        """:meth:`acquire` for a request handler: wait (on the event loop) until ``name`` is usable or the
        request's ``deadline`` (``time.perf_counter()``) passes (:class:`~.settings.Expired`; the load goes on
        for later requests). On any failure the pin is released before this raises."""
        hold = Hold(self, name, self.acquire(name))
        try:
            hold.task = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(hold.future)),
                                               max(0.0, deadline - time.perf_counter()))
        except asyncio.TimeoutError:
            hold.release()
            waited = self.engine.settings.request_timeout_s
            raise Expired(f"adapter {name!r} was still loading at the request's deadline ({waited:g} s); retry later",
                          {"Retry-After": "1"}) from None
        except BaseException:
            hold.release()
            raise
        return hold

    def release(self, name: str) -> None:
        with self._lock:
            self._pins[name] -= 1
            if self._pins[name] <= 0:
                del self._pins[name]
            schedule = self._claim_idle_eviction(name not in self._pins
                                                 and (name in self._doomed or self._over(0, 0)))
        if schedule:
            self.engine.control(self._evict_idle)

    def unload(self, name: str) -> concurrent.futures.Future:
        """Evict ``name`` now if no request uses it, else once the last one is answered (one still loading: once
        loaded and idle). A name that is not a resident stored adapter (``--adapter``, hot-loaded) is unloaded
        as the engine does. Decided on the worker, so a stored adapter that becomes resident meanwhile is still
        treated as one."""

        def run() -> None:
            with self._lock:
                if name in self._loading:  # evicted once loaded and idle, as a pinned one
                    self._doomed.add(name)
                    return
                if name not in self._resident:
                    stored = False
                elif self._pins.get(name):
                    self._doomed.add(name)
                    return
                else:
                    stored = True
                    del self._resident[name]
                    self._leaving.add(name)
                    self.evictions += 1
            if stored:
                self._evict([name])
            elif name in self.engine.tasks:
                self.engine._unload(name)
            else:
                raise UnknownTask.named(name)

        return self.engine.control(run)

    def resident(self) -> list[str]:
        """The resident stored adapters, least recently used first."""
        with self._lock:
            return list(self._resident)

    def info(self) -> dict[str, Any]:
        with self._lock:
            resident = list(self._resident)
            memory = sum(self._resident.values())
            loading = sorted(self._loading)
        return {"known": self.store.names(), "resident": resident, "loading": loading, "max_loaded": self.max_loaded,
                "max_memory_bytes": self.max_memory, "memory_bytes": memory}

    def stop(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)

    # the loader thread
    def _cold_load(self, name: str, future: concurrent.futures.Future, started: float) -> None:
        try:
            where = self.store.locate(name)
            if where.kind == "fusion":  # the fusion and its fused adapters, read and checked here (stored_fusion.py)
                read = read_stored_fusion(self, where)
                self._check_fits(where, read.nbytes)
                inner = self.engine.control(lambda: self._insert(where, read.nbytes,
                                                                 lambda: insert_stored_fusion(self.engine, where, read)))
            else:
                tensors, meta, nbytes = self._read(where)
                inner = self.engine.control(lambda: self._insert(where, nbytes,
                                                                 lambda: self._insert_adapter(where, meta, tensors)))
        except BaseException as e:  # noqa: BLE001 - answered to the waiting requests, never raised here
            self._finish(name, future, started, error=e)
            return
        inner.add_done_callback(lambda f: self._finish(name, future, started, inner=f))

    def _read(self, where: StoredAdapter) -> tuple[dict, dict, int]:
        """The checked config and tensors of a stored adapter, read without touching the model."""
        try:
            meta = read_adapter_config(where.directory, root=where.root)
            config, head = adapter_shape(meta)
            check_fingerprint(where.directory, meta["base_model"], self._fingerprint)
            expected = self._planned(where, meta, config, head)
            real_dir, real_root = resolve_directory(where.directory, where.root)
            tensors = read_checked_weights(where.directory, real_dir, real_root, meta, expected)
        except AdapterLoadError as e:
            raise BadAdapter(f"stored adapter {where.name!r} cannot be loaded: {safe(str(e), 1000)}") from None
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        self._check_fits(where, nbytes)
        return tensors, meta, nbytes

    def _check_fits(self, where: StoredAdapter, nbytes: int) -> None:
        if self.max_memory is not None and nbytes > self.max_memory:
            raise BadAdapter(f"stored {where.kind} {where.name!r} takes {nbytes} bytes, more than the whole adapter "
                             f"memory bound ({self.max_memory}); raise --max-adapter-memory")

    def _planned(self, where: StoredAdapter, meta: dict, config, head) -> dict[str, tuple[int, ...]]:
        """The tensor shapes this config and head give in the model (the same for every adapter of one shape),
        worked out once per shape on the worker: planning walks the model's modules, which the worker alone
        may change."""
        key = json.dumps([meta["config"], meta["head"]], sort_keys=True)
        plan = self._plans.get(key)
        if plan is None:
            try:
                plan = self.engine.control(lambda: planned_tensors(self.engine.model, config, head)).result(
                    timeout=self.engine.settings.request_timeout_s)
            except ValueError as e:  # over the model's limits, layers it lacks, no head to copy
                raise AdapterLoadError(f"{where.directory}: the adapter does not fit this model ({e})") from None
            self._plans[key] = plan
        return plan

    def _finish(self, name: str, future: concurrent.futures.Future, started: float, inner=None, error=None) -> None:
        if inner is not None:
            error = inner.exception() if not inner.cancelled() else ServeError("the load was cancelled")
        with self._lock:
            self._loading.pop(name, None)
            if error is None:
                self.loads += 1
                self.load_seconds.observe(time.perf_counter() - started)
            else:
                self.load_failures += 1
                self._doomed.discard(name)  # an unload asked during a failed load has nothing left to evict
            # unloaded while loading, and every request that waited for it has gone: evict now
            evict = self._claim_idle_eviction(error is None and name in self._doomed and not self._pins.get(name))
        if evict:
            self.engine.control(self._evict_idle)
        if error is None:
            future.set_result(inner.result())
        else:
            if isinstance(error, UnknownAdapter):
                error = NotInStore(f"no adapter named {name!r} is loaded or in the adapter store")
            elif not isinstance(error, ServeError):
                log.warning("loading stored adapter %r failed", safe(name), exc_info=error)
                error = BadAdapter(f"stored adapter {safe(name)!r} cannot be loaded: {type(error).__name__}: "
                                   f"{safe(str(error))}")
            future.set_exception(error)

    # the worker thread (between batches)
    def _insert(self, where: StoredAdapter, nbytes: int, build: Callable[[], Task]) -> Task:
        """Make room for ``nbytes``, then ``build()`` the task (an adapter's or a fusion's insertion) and count it."""
        started = time.perf_counter()
        name = where.name
        self._evict(self._victims(1, nbytes))
        if name in list_adapters(self.engine.model) or name in self.engine.tasks:  # hot-loaded meanwhile
            raise Conflict.name_in_use(name)
        task = build()
        with self._lock:
            self._resident[name] = nbytes
            self.engine.tasks = {**self.engine.tasks, name: task}
            self.insert_seconds.observe(time.perf_counter() - started)
        return task

    def _insert_adapter(self, where: StoredAdapter, meta: dict, tensors: dict) -> Task:
        model, name = self.engine.model, where.name
        config, head = adapter_shape(meta)
        try:
            insert_tensors(model, name, config, head, tensors, f"{where.directory}")
        except AdapterLoadError as e:
            raise BadAdapter(f"stored adapter {name!r} cannot be loaded: {safe(str(e), 1000)}") from None
        try:
            return task_from_model(model, name, where.directory, meta, self.engine.settings, self.engine.model_limit)
        except BaseException:
            remove_adapter(model, name)
            raise

    def _over(self, count: int, nbytes: int) -> bool:
        """Whether ``count`` more adapters of ``nbytes`` in all would break a bound (call with the lock held)."""
        if self.max_loaded is not None and len(self._resident) + count > self.max_loaded:
            return True
        return self.max_memory is not None and sum(self._resident.values()) + nbytes > self.max_memory

    def _victims(self, count: int, nbytes: int) -> list[str]:
        """Take out of the resident set the least-recently-used unpinned adapters whose eviction makes room for
        ``count`` more of ``nbytes``, and every doomed unpinned one."""
        with self._lock:
            victims = [n for n in self._resident if n in self._doomed and not self._pins.get(n)]
            for n in victims:
                del self._resident[n]
                self._doomed.discard(n)
            for n in list(self._resident):
                if not self._over(count, nbytes):
                    break
                if not self._pins.get(n):
                    del self._resident[n]
                    victims.append(n)
            self.evictions += len(victims)
            self._leaving.update(victims)
            return victims

    def _evict(self, victims: list[str]) -> None:
        """Unload ``victims`` (already out of ``_resident``) from the engine; worker thread only."""
        for n in victims:
            try:
                self.engine._unload(n)
            finally:
                with self._lock:
                    self._leaving.discard(n)

    def _claim_idle_eviction(self, due: bool) -> bool:
        """With the lock held: whether the caller queues :meth:`_evict_idle` (``due``, and none is queued yet)."""
        if due and not self._evict_queued:
            self._evict_queued = True
            return True
        return False

    def _evict_idle(self) -> None:
        with self._lock:
            self._evict_queued = False
        self._evict(self._victims(0, 0))

    # /metrics
    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP adapterkit_store_lookups_total Requests for stored adapters: resident (hit) or not (miss).",
                "# TYPE adapterkit_store_lookups_total counter",
                f'adapterkit_store_lookups_total{{result="hit"}} {self.hits}',
                f'adapterkit_store_lookups_total{{result="miss"}} {self.misses}',
                "# HELP adapterkit_store_loads_total Cold loads of stored adapters, by outcome.",
                "# TYPE adapterkit_store_loads_total counter",
                f'adapterkit_store_loads_total{{result="ok"}} {self.loads}',
                f'adapterkit_store_loads_total{{result="failed"}} {self.load_failures}',
                "# HELP adapterkit_store_evictions_total Stored adapters evicted (LRU, or DELETE).",
                "# TYPE adapterkit_store_evictions_total counter",
                f"adapterkit_store_evictions_total {self.evictions}",
                "# HELP adapterkit_store_load_seconds Cold load latency: first request to adapter usable.",
                "# TYPE adapterkit_store_load_seconds histogram",
                *self.load_seconds.lines("adapterkit_store_load_seconds"),
                "# HELP adapterkit_store_insert_seconds The part of a cold load run on the worker between batches.",
                "# TYPE adapterkit_store_insert_seconds histogram",
                *self.insert_seconds.lines("adapterkit_store_insert_seconds"),
                "# TYPE adapterkit_store_resident_adapters gauge",
                f"adapterkit_store_resident_adapters {len(self._resident)}",
                "# TYPE adapterkit_store_resident_bytes gauge",
                f"adapterkit_store_resident_bytes {sum(self._resident.values())}",
                "# TYPE adapterkit_store_pinned_adapters gauge",
                f"adapterkit_store_pinned_adapters {len(self._pins)}",
            ]
            if self.max_loaded is not None:
                lines += ["# TYPE adapterkit_store_max_loaded gauge", f"adapterkit_store_max_loaded {self.max_loaded}"]
            if self.max_memory is not None:
                lines += ["# TYPE adapterkit_store_max_memory_bytes gauge",
                          f"adapterkit_store_max_memory_bytes {self.max_memory}"]
        return "\n".join(lines) + "\n"


class Hold:
    """One request's pin on a stored adapter; :meth:`release` is idempotent (safe from any path, and as a
    future's done callback)."""

    def __init__(self, residency: Residency, name: str, future: concurrent.futures.Future):
        self.residency, self.name, self.future = residency, name, future
        self.task: Task | None = None
        self._released = False
        self._lock = threading.Lock()

    def release(self, *_: Any) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self.residency.release(self.name)


def parse_bytes(text: str) -> int:
    """``"512MB"``, ``"2GiB"``, ``"1000000"`` -> bytes (MB = 10^6, MiB = 2^20)."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
             "K": 10**3, "M": 10**6, "G": 10**9}
    s = str(text).strip().upper().replace(" ", "")
    number = s.rstrip("KMGIB")
    unit = s[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or not value > 0 or value != value:
        raise ValueError(f"cannot read {text!r} as a memory size; write e.g. 512MB, 2GiB or 1000000")
    return int(value * units[unit])


__all__ = ["Hold", "NotInStore", "Residency", "parse_bytes"]

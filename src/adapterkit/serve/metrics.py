"""The server's counters and histograms, rendered as Prometheus text (exposition format 0.0.4) for
``GET /metrics``. No dependency: a lock, a few Counters, and a small fixed-bucket histogram.

The worker records batches (:meth:`Metrics.batch`), the HTTP layer requests and predictions.

Every label set is bounded whatever clients send: routes are the app's route templates (or ``unmatched``),
methods the standard ones (or ``OTHER``), tasks the loaded adapters -- a prediction for any other name is
counted under ``task="_unknown"`` (:data:`UNKNOWN`), and an adapter's series go when it is unloaded.
"""

from __future__ import annotations

import bisect
import collections
import threading
from collections.abc import Iterable, Sequence
from typing import Any

UNKNOWN = "_unknown"  # the task label of predictions for names that are not loaded adapters
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


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


def _esc(value: Any) -> str:
    """A label value, escaped as the text format requires."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _header(name: str, kind: str, help_: str) -> list[str]:
    return [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]


class Metrics:
    """Prometheus text exposition (version 0.0.4), no dependency."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: collections.Counter = collections.Counter()  # (route, method, code)
        self.predictions: collections.Counter = collections.Counter()  # (task, code)
        self.inputs: collections.Counter = collections.Counter()  # task
        self.drops: collections.Counter = collections.Counter()  # reason: "expired" | "nonfinite"
        self.batches = 0
        self.batch_failures = 0
        self.batch_rows = Histogram([1, 2, 4, 8, 16, 32, 64, 128, 256])
        self.batch_tasks = Histogram([1, 2, 3, 4, 6, 8, 16])
        self.batch_seconds = Histogram([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5])
        self.latency = Histogram([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30])

    def request(self, route: str, method: str, code: int) -> None:
        method = method if method in METHODS else "OTHER"
        with self.lock:
            self.requests[(route, method, code)] += 1

    def prediction(self, task: str | None, code: int, inputs: int, seconds: float | None) -> None:
        """One predict request's outcome; ``task`` None (or :data:`UNKNOWN`) for a name that is not loaded."""
        task = task or UNKNOWN
        with self.lock:
            self.predictions[(task, code)] += 1
            if code == 200:
                self.inputs[task] += inputs
                self.latency.observe(seconds)

    def dropped(self, reason: str) -> None:
        with self.lock:
            self.drops[reason] += 1

    def forget(self, task: str) -> None:
        """Drop an unloaded adapter's series, so that the label set follows the loaded adapters."""
        with self.lock:
            for key in [k for k in self.predictions if k[0] == task]:
                del self.predictions[key]
            self.inputs.pop(task, None)

    def batch(self, rows: int, tasks: int, seconds: float, ok: bool) -> None:
        with self.lock:
            self.batches += 1
            self.batch_failures += not ok
            self.batch_rows.observe(rows)
            self.batch_tasks.observe(tasks)
            self.batch_seconds.observe(seconds)

    def render(self, gauges: dict[str, float]) -> str:
        out = []
        with self.lock:
            out += _header("adapterkit_http_requests_total", "counter", "HTTP requests by route, method and status code.")
            out += [f'adapterkit_http_requests_total{{route="{_esc(r)}",method="{m}",code="{c}"}} {n}'
                    for (r, m, c), n in sorted(self.requests.items())]
            out += _header("adapterkit_predict_requests_total", "counter", "Predict requests by task and status code.")
            out += [f'adapterkit_predict_requests_total{{task="{_esc(t)}",code="{c}"}} {n}'
                    for (t, c), n in sorted(self.predictions.items())]
            out += _header("adapterkit_inputs_total", "counter", "Inputs predicted, by task.")
            out += [f'adapterkit_inputs_total{{task="{_esc(t)}"}} {n}' for t, n in sorted(self.inputs.items())]
            out += _header("adapterkit_batches_total", "counter", "Forward batches run.")
            out += [f"adapterkit_batches_total {self.batches}"]
            out += _header("adapterkit_batch_failures_total", "counter",
                           "Batches that raised (retried request by request).")
            out += [f"adapterkit_batch_failures_total {self.batch_failures}"]
            out += _header("adapterkit_dropped_requests_total", "counter",
                           "Requests refused by the worker: past their deadline, or non-finite scores.")
            out += [f'adapterkit_dropped_requests_total{{reason="{r}"}} {self.drops[r]}'
                    for r in ("expired", "nonfinite")]
            for name, hist, help_ in (
                ("adapterkit_batch_rows", self.batch_rows, "Input rows per batch."),
                ("adapterkit_batch_tasks", self.batch_tasks, "Distinct tasks per batch."),
                ("adapterkit_batch_seconds", self.batch_seconds, "Time to run one batch (tokens to scores)."),
                ("adapterkit_request_latency_seconds", self.latency, "Predict latency, queued to answered (200s)."),
            ):
                out += [*_header(name, "histogram", help_), *hist.lines(name)]
        for name, value in gauges.items():
            out += [f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(out) + "\n"

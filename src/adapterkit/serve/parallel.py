"""``POST /v1/predict/parallel``: several tasks' predictions for the same inputs, in one ``Parallel`` pass.

    POST /v1/predict/parallel  {"tasks": ["sentiment", "topic"], "inputs": ["great film", ["a", "b"]]}
    200 {"results": [{"task": "sentiment", "predictions": [...]}, {"task": "topic", "predictions": [...]}]}

Each result is what ``POST /v1/predict`` answers for that task alone (same prediction shape). The request
runs on the engine's worker thread as one control item (between batches, as loads do), through
:func:`adapterkit.mixed.predict_parallel`: the layers below the tasks' lowest adapted layer run once for all
tasks (``adapterkit/parallel.py``). The inputs are tokenised once, at the least ``max_length`` of the tasks.

Limits, all checked before any work: at most ``MAX_TASKS`` tasks (413), every task loaded (404 naming the
unknown ones), no task twice (422), at most ``max_inputs`` inputs (413) of at most ``max_chars`` characters
(422); the request counts N x inputs rows against the queue (503 when full). A forward pass holds at most
``max_batch_size`` rows (N x inputs): more inputs are run in chunks.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoint's annotations as real objects.
import asyncio
import time
from typing import Annotated, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, create_model

from ..composition import Parallel
from ..mixed import predict_parallel
from .schemas import PredictResponse, Text, errors
from .settings import Expired, NonFinite, ServeError, UnknownTask, safe
from .tasks import format_predictions

MAX_TASKS = 16  # tasks per parallel request: each multiplies the rows the pass computes


def parallel_request(max_inputs: int = 64, max_chars: int = 20_000) -> type[BaseModel]:
    text = Annotated[Text, Field(json_schema_extra={"maxLength": max_chars})]
    pair = Annotated[list[text], Field(min_length=2, max_length=2)]
    task = Annotated[Text, Field(min_length=1, max_length=200)]
    return create_model(
        "ParallelPredictRequest", __config__=ConfigDict(extra="forbid"),
        tasks=(list[task], Field(min_length=1, json_schema_extra={"maxItems": MAX_TASKS},
                                 description="names of loaded adapters, each answered for every input")),
        inputs=(list[Union[text, pair]], Field(min_length=1, json_schema_extra={"maxItems": max_inputs},
                                              description="texts, or [text, pair] items")))


class ParallelResponse(BaseModel):
    results: list[PredictResponse]


def add_parallel_route(app, engine, settings, tokenize_async, error) -> None:
    """Register ``POST /v1/predict/parallel`` on ``app``; ``tokenize_async(inputs, max_length)`` tokenises off
    the event loop, ``error(status, message, loc=...)`` builds an error response (both from app.py)."""
    Request = parallel_request(settings.max_inputs, settings.max_chars)  # noqa: N806 - a model class

    @app.post("/v1/predict/parallel", response_model=ParallelResponse, response_model_exclude_none=True,
              responses=errors(400, 404, 413, 415, 422, 503, e413=f"more than {MAX_TASKS} tasks or "
                               f"{settings.max_inputs} inputs, or a body over {settings.max_body_bytes} bytes"))
    async def predict_parallel_route(body: Request):
        started = time.perf_counter()
        deadline = started + settings.request_timeout_s
        if len(body.tasks) > MAX_TASKS:
            return error(413, f"{len(body.tasks)} tasks in one request; the limit is {MAX_TASKS}")
        unknown = [t for t in body.tasks if t not in engine.tasks]
        if unknown:
            names = sorted(engine.tasks)
            known = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "") or "none"
            return error(404, f"unknown task(s) {', '.join(repr(safe(t, 200)) for t in unknown[:10])}; "
                              f"loaded adapters: {known}")
        if len(set(body.tasks)) != len(body.tasks):
            return error(422, "a task appears twice in tasks; name each task once", loc=["body", "tasks"])
        if len(body.inputs) > settings.max_inputs:
            return error(413, f"{len(body.inputs)} inputs in one request; the limit is {settings.max_inputs}")
        for i, x in enumerate(body.inputs):
            for j, t in enumerate([x] if isinstance(x, str) else x):
                if len(t) > settings.max_chars:
                    loc = ["body", "inputs", i] + ([] if isinstance(x, str) else [j])
                    return error(422, f"text of {len(t)} characters; the limit is {settings.max_chars}", loc=loc)
        tasks = [engine.tasks[t] for t in body.tasks]
        rows = len(tasks) * len(body.inputs)
        try:
            engine.reserve(rows)
        except ServeError as e:
            return error(e.status, str(e), e.headers)
        try:
            try:
                features = await tokenize_async(body.inputs, min(t.max_length for t in tasks))
            except Exception as e:  # noqa: BLE001 - a bad input, not a server fault
                return error(422, f"the inputs cannot be tokenised: {type(e).__name__}: {e}")

            def run():
                if time.perf_counter() > deadline:
                    raise Expired.after(settings.request_timeout_s)
                gone = [t.name for t in tasks if t.name not in engine.tasks]
                if gone:  # unloaded while this request waited
                    raise UnknownTask.named(gone[0])
                return _run(engine, tasks, features)

            future = engine.control(run)
            try:
                results = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)),
                                                 max(0.0, deadline - time.perf_counter()))
            except asyncio.TimeoutError:
                future.cancel()  # dropped if still queued; if running, its answer is not awaited
                e = Expired.after(settings.request_timeout_s)
                return error(e.status, str(e), e.headers)
        except ServeError as e:
            return error(e.status, str(e), e.headers)
        finally:
            engine.release(rows)
        seconds = time.perf_counter() - started
        for t in tasks:
            engine.metrics.prediction(t.name, 200, len(body.inputs), seconds)
        return {"results": [{"task": t.name, "predictions": p} for t, p in zip(tasks, results)]}


def _run(engine, tasks, features) -> list[list[dict]]:
    """On the worker thread: the Parallel pass(es), each task's predictions; NonFinite for a task whose
    scores are not all finite."""
    block = Parallel(*(t.name for t in tasks))
    chunk = max(1, engine.settings.max_batch_size // len(tasks))  # N x chunk rows per forward pass
    per_task: dict[str, list[torch.Tensor]] = {t.name: [] for t in tasks}
    with torch.inference_mode():
        for start in range(0, len(features), chunk):
            out = predict_parallel(engine.model, engine._pad(features[start : start + chunk]), block)
            for name, logits in out.items():
                per_task[name].append(logits.float())
    results = []
    for t in tasks:
        logits = torch.cat(per_task[t.name])
        bad = (~torch.isfinite(logits)).any(dim=-1).nonzero().flatten().tolist()
        if bad:
            raise NonFinite(f"adapter {t.name!r} produced non-finite scores (NaN or infinity) for input(s) "
                            f"{bad[:10]}; the adapter is broken for these inputs")
        results.append(format_predictions(t, logits))
    return results


__all__ = ["MAX_TASKS", "ParallelResponse", "add_parallel_route", "parallel_request"]

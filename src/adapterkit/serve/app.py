"""The HTTP layer: :func:`create_app` builds the FastAPI app around one :class:`~.batcher.Engine`.

Routes validate a request (pydantic models in :mod:`.schemas`, then the server's limits), tokenise it, hand
it to the engine and await its future. A :class:`~.settings.ServeError` raised on the way (unknown task,
queue full, name in use, bad adapter, read-only, outside the adapter roots) becomes its status code with a
``{"detail": message}`` body; any other exception becomes a 500, and the server goes on. A middleware counts
every response for ``GET /metrics``.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations as real objects.
import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from .. import __version__
from .batcher import Engine
from .schemas import LoadRequest, PredictRequest, PredictResponse
from .settings import Conflict, Forbidden, ServeError, ServeSettings
from .tasks import parse_adapters, tokenize

log = logging.getLogger("adapterkit.serve")


def error(status: int, message: str, headers: dict | None = None, loc: list | None = None) -> JSONResponse:
    """FastAPI's error shape: ``{"detail": message}``, or with ``loc`` a validation-style list naming the field."""
    detail: Any = message if loc is None else [{"loc": loc, "msg": message, "type": "value_error"}]
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def wait(future: concurrent.futures.Future):
    return await asyncio.wrap_future(future)


def create_app(model, tokenizer, adapters: dict[str, str] | Sequence[str] | None = None,
               settings: ServeSettings | None = None, model_name: str | None = None):
    """A FastAPI app serving ``model`` with ``adapters`` ({name: directory} or ["name=dir", ...]) loaded.
    The worker starts with the app (lifespan) and stops with it."""
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

    app = FastAPI(title="adapterkit serve", version=__version__, lifespan=lifespan,
                  description="One frozen backbone, many task adapters; requests of all tasks are batched together.")
    app.state.engine = engine

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, e: ServeError):
        return error(e.status, str(e), e.headers)

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

    @app.post("/v1/predict", response_model=PredictResponse, response_model_exclude_none=True,
              responses={404: {"description": "unknown task"}, 413: {"description": "too many inputs"},
                         422: {"description": "malformed request or text too long"},
                         503: {"description": "queue full; retry after Retry-After seconds"}})
    async def predict(body: PredictRequest):
        started = time.perf_counter()
        task = engine.tasks.get(body.task)

        def refuse(status: int, message: str, headers: dict | None = None, loc: list | None = None):
            engine.metrics.prediction(body.task[:100] if task is None else task.name, status, len(body.inputs), None)
            return error(status, message, headers, loc)

        if task is None:
            known = ", ".join(sorted(engine.tasks)) or "none"
            return refuse(404, f"unknown task {body.task!r}; loaded adapters: {known}")
        if len(body.inputs) > settings.max_inputs:
            return refuse(413, f"{len(body.inputs)} inputs in one request; the limit is {settings.max_inputs}")
        for i, x in enumerate(body.inputs):
            texts = [x] if isinstance(x, str) else x
            for j, t in enumerate(texts):
                if len(t) > settings.max_chars:
                    loc = ["body", "inputs", i] + ([] if isinstance(x, str) else [j])
                    return refuse(422, f"text of {len(t)} characters; the limit is {settings.max_chars}", loc=loc)
        features = tokenize(tokenizer, body.inputs, task.max_length)
        try:
            result = await wait(engine.submit(task.name, features))
        except ServeError as e:
            return refuse(e.status, str(e), e.headers)
        except Exception as e:  # noqa: BLE001 - the model failed on this request; the server goes on
            log.exception("predict failed")
            return refuse(500, f"prediction failed: {type(e).__name__}: {e}")
        engine.metrics.prediction(task.name, 200, len(body.inputs), time.perf_counter() - started)
        return {"task": task.name, "predictions": result}

    @app.get("/v1/adapters")
    async def adapters_list():
        return {"adapters": [t.describe() for t in engine.tasks.values()]}

    def check_writable() -> None:
        if settings.read_only:
            raise Forbidden("the server runs with --read-only: adapters cannot be loaded or unloaded")

    @app.post("/v1/adapters", status_code=201,
              responses={400: {"description": "cannot load the directory"},
                         403: {"description": "read-only, or the directory is outside the adapter roots"},
                         409: {"description": "name in use"}})
    async def adapters_load(body: LoadRequest):
        check_writable()
        path = settings.hot_load_path(body.path)
        if body.name in engine.tasks:
            raise Conflict.name_in_use(body.name)
        if not Path(path).is_dir():
            return error(400, f"{body.path} is not a directory on the server", loc=["body", "path"])
        task = await wait(engine.load(body.name, path))
        return task.describe()

    @app.delete("/v1/adapters/{name}", responses={403: {"description": "read-only"}, 404: {"description": "unknown"}})
    async def adapters_unload(name: str):
        check_writable()
        await wait(engine.unload(name))
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

"""The HTTP layer: :func:`create_app` builds the FastAPI app around one :class:`~.batcher.Engine`.

Routes validate a request (pydantic models in :mod:`.schemas`, then the server's limits), reserve its rows in
the queue, tokenise it on a small thread pool (never on the event loop), hand it to the engine and await its
future until the request's deadline. Whatever a client sends is answered with a 4xx JSON error, never a 500 or
a traceback: bodies that are not strict JSON (``NaN``, ``Infinity``, nesting too deep, bad UTF-8) are 422
``json_invalid``; lone surrogates are 422; bodies over ``max_body_bytes`` are 413; any method a path does not
take is 405 with ``Allow``, and ``OPTIONS`` answers 204 with ``Allow``. A :class:`~.settings.ServeError`
(unknown task, queue full, deadline passed, name in use, bad adapter, read-only, outside the adapter roots,
non-finite scores) becomes its status code with a ``{"detail": message}`` body. Anything else is a bug: 500
with a one-line message, logged, and the server goes on. A middleware counts every response for
``GET /metrics``.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations as real objects.
import asyncio
import concurrent.futures
import copy
import json
import logging
import re
import threading
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute

from .. import __version__
from .batcher import Engine
from .schemas import AdapterInfo, AdapterList, Health, LoadRequest, PredictResponse, Unloaded, errors, predict_request
from .settings import Conflict, Expired, Forbidden, ServeError, ServeSettings, safe
from .parallel import add_parallel_route
from .tasks import is_causal_lm, parse_adapters, tokenize

log = logging.getLogger("adapterkit.serve")
_TYPE_TAG = re.compile(r"^[a-z-]+\[.*\]$")  # "function-after[_utf8(), str]", "list[...]" in a loc


class SafeJSONResponse(JSONResponse):
    """JSON that always encodes: lone surrogates escaped, NaN refused (a bug upstream, never sent as ``NaN``)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(
            "utf-8", "backslashreplace")


def error(status: int, message: str, headers: dict | None = None, loc: list | None = None) -> JSONResponse:
    """FastAPI's error shape: ``{"detail": message}``, or with ``loc`` a validation-style list naming the field."""
    message = safe(message, 2000)
    detail: Any = message if loc is None else [{"loc": loc, "msg": message, "type": "value_error"}]
    return SafeJSONResponse({"detail": detail}, status_code=status, headers=headers)


def json_content_type(value: str | None) -> bool:
    """Whether a request's content-type lets FastAPI read its body as JSON: application/json or any
    application/*+json, parameters such as charset allowed (no content-type: not JSON, as FastAPI has it)."""
    if value is None:
        return False
    kind = value.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def _not_json(name: str):
    raise ValueError(f"{name} is not a JSON value")


class StrictJSONRequest(Request):
    """A body of at most ``max_body`` bytes (else 413, before more is read), and ``request.json()`` as RFC 8259
    has it: ``NaN``/``Infinity``, nesting too deep or bytes that are not UTF-8 raise JSONDecodeError, which
    FastAPI answers 422 ``json_invalid``."""

    max_body = 8 << 20

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            declared = self.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_body:
                raise HTTPException(413, f"a body of {declared} bytes; the limit is {self.max_body}")
            chunks, size = [], 0
            async for chunk in self.stream():
                size += len(chunk)
                if size > self.max_body:
                    raise HTTPException(413, f"a body over {self.max_body} bytes; the limit is {self.max_body}")
                chunks.append(chunk)
            self._body = b"".join(chunks)
        return self._body

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = json.loads(body, parse_constant=_not_json)
            except json.JSONDecodeError:
                raise
            except RecursionError:
                raise json.JSONDecodeError("nested too deeply", "", 0) from None
            except ValueError as e:  # NaN/Infinity, invalid UTF-8
                raise json.JSONDecodeError(safe(str(e), 200), "", 0) from None
        return self._json


class StrictJSONRoute(APIRoute):
    request_class = StrictJSONRequest

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(self.request_class(request.scope, request.receive))

        return strict


async def wait(future: concurrent.futures.Future):
    return await asyncio.wrap_future(future)


def create_app(model, tokenizer, adapters: dict[str, str] | Sequence[str] | None = None,
               settings: ServeSettings | None = None, model_name: str | None = None, generation=None,
               store=None, max_loaded: int | None = None, max_memory: int | None = None):
    """A FastAPI app serving ``model`` with ``adapters`` ({name: directory} or ["name=dir", ...]) loaded.
    The worker starts with the app (lifespan) and stops with it. On a causal LM the OpenAI-style generation
    routes are added too (:mod:`.openai_api`; ``generation``: its GenerationLimits). ``store`` (an
    :class:`~.store.AdapterStore` or a directory) makes every adapter in it servable by name, loaded on first
    use and kept under an LRU bound of ``max_loaded`` adapters and/or ``max_memory`` bytes (:mod:`.residency`)."""
    settings = settings or ServeSettings()
    engine = Engine(model, tokenizer, settings)
    for name, path in parse_adapters(adapters or {}).items():
        engine.load_now(name, path)
    residency = make_residency(engine, store, max_loaded, max_memory)
    # Tokenising runs on these threads (the fast tokenizers release the GIL), each with its own copy of the
    # tokenizer: a tokenizer call sets its truncation state, so one instance must not serve two threads.
    pool = concurrent.futures.ThreadPoolExecutor(settings.tokenize_threads, thread_name_prefix="adapterkit-tokenize")
    local = threading.local()

    def tokenize_here(inputs, max_length):
        if not hasattr(local, "tokenizer"):
            local.tokenizer = copy.deepcopy(tokenizer)
        return tokenize(local.tokenizer, inputs, max_length)

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        decoding = app.state.generation  # the generation loop (causal LMs), else None
        if decoding is not None:
            decoding.start()
        try:
            yield
        finally:
            if decoding is not None:
                decoding.stop()
            engine.stop()
            if residency is not None:
                residency.stop()
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="adapterkit serve", version=__version__, lifespan=lifespan,
                  default_response_class=SafeJSONResponse,
                  description="One frozen backbone, many task adapters; requests of all tasks are batched together.")
    limited = type("LimitedRequest", (StrictJSONRequest,), {"max_body": settings.max_body_bytes})
    app.router.route_class = type("LimitedRoute", (StrictJSONRoute,), {"request_class": limited})
    app.state.engine = engine
    app.state.residency = residency
    PredictRequest = predict_request(settings.max_inputs, settings.max_chars)  # noqa: N806 - a model class

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, e: ServeError):
        return error(e.status, str(e), e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        detail = []
        for item in e.errors()[:20]:  # never echo the input back: it may be huge, or not encodable
            msg = str(item.get("msg", "invalid"))
            if item.get("type") == "json_invalid" and isinstance(item.get("ctx"), dict):
                msg = f"{msg}: {item['ctx'].get('error')}"
            loc = [x if isinstance(x, int) else safe(x, 100) for x in item.get("loc", ())
                   if not (isinstance(x, str) and _TYPE_TAG.match(x))]  # pydantic's union-branch tags
            detail.append({"loc": loc, "msg": safe(msg, 500), "type": safe(item.get("type", "value_error"), 100)})
        return SafeJSONResponse({"detail": detail}, status_code=422)

    def methods_for(path: str) -> tuple[set[str], str | None]:
        """The methods some route takes at ``path`` (with HEAD for GET), and that route's template."""
        methods: set[str] = set()
        template = None
        for route in app.routes:
            regex, allowed = getattr(route, "path_regex", None), getattr(route, "methods", None)
            if regex is not None and allowed and regex.match(path):
                methods |= set(allowed)
                template = template or route.path
        return methods, template

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        methods, template = methods_for(request.url.path)
        try:
            if methods and request.method not in methods:
                allow = {"Allow": ", ".join(sorted(methods | {"OPTIONS"}))}
                if request.method == "OPTIONS":
                    response = Response(status_code=204, headers=allow)
                else:
                    response = error(405, f"{safe(request.method, 20)} is not allowed on {template}; "
                                     f"allowed: {allow['Allow']}", allow)
            elif request.method == "POST" and not json_content_type(request.headers.get("content-type")):
                # FastAPI would hand a form-encoded body (curl -d's default) to the schema as bytes: a puzzling 422
                response = error(415, f"the body must be JSON, sent as 'content-type: application/json' (curl: -H "
                                      f"'content-type: application/json'), not {safe(request.headers.get('content-type', 'none'), 100)!r}")
            else:
                response = await call_next(request)
        except Exception:  # noqa: BLE001 - never take the server down
            log.exception("unhandled error on %s %s", safe(request.method, 20), safe(request.url.path))
            response = error(500, "internal error; see the server log")
        route = request.scope.get("route")
        engine.metrics.request(getattr(route, "path", template or "unmatched"), request.method, response.status_code)
        return response

    @app.post("/v1/predict", response_model=PredictResponse, response_model_exclude_none=True,
              responses=errors(400, 404, 413, 415, 422, 503, e400="the body cannot be parsed",
                               e413=f"more than {settings.max_inputs} inputs, or a body over "
                                    f"{settings.max_body_bytes} bytes"))
    async def predict(body: PredictRequest):
        started = time.perf_counter()
        deadline = started + settings.request_timeout_s
        task = engine.tasks.get(body.task)
        stored = residency is not None and residency.manages(body.task)  # loaded on first use, pinned while used
        hold = None

        def refuse(status: int, message: str, headers: dict | None = None, loc: list | None = None):
            engine.metrics.prediction(None if task is None else task.name, status, len(body.inputs), None)
            return error(status, message, headers, loc)

        if task is None and not stored:
            names = sorted(engine.tasks)
            known = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "") or "none"
            return refuse(404, f"unknown task {safe(body.task, 200)!r}; loaded adapters: {known}")
        if task is not None and task.kind == "lm":
            return refuse(422, f"{task.name!r} is a language-model adapter; use POST /v1/completions or "
                          f"/v1/chat/completions with model={task.name!r}", loc=["body", "task"])
        # Every limit is checked before any work is done for the request: counts, characters, queue room.
        if len(body.inputs) > settings.max_inputs:
            return refuse(413, f"{len(body.inputs)} inputs in one request; the limit is {settings.max_inputs}")
        for i, x in enumerate(body.inputs):
            texts = [x] if isinstance(x, str) else x
            for j, t in enumerate(texts):
                if len(t) > settings.max_chars:
                    loc = ["body", "inputs", i] + ([] if isinstance(x, str) else [j])
                    return refuse(422, f"text of {len(t)} characters; the limit is {settings.max_chars}", loc=loc)
        rows = len(body.inputs)
        try:
            engine.reserve(rows)
        except ServeError as e:
            return refuse(e.status, str(e), e.headers)
        if stored:
            try:
                hold = await residency.hold(body.task, deadline)
            except BaseException as e:
                engine.release(rows)
                if not isinstance(e, ServeError):
                    raise
                return refuse(e.status, str(e), e.headers)
            task = hold.task
        try:
            features = await asyncio.get_running_loop().run_in_executor(pool, tokenize_here, body.inputs,
                                                                        task.max_length)
            future = engine.submit(task.name, features, reserved=True, deadline=deadline)
            if hold is not None:
                future.add_done_callback(hold.release)  # answered, failed or dropped: unpinned
        except ServeError as e:  # shutting down
            if hold is not None:
                hold.release()
            return refuse(e.status, str(e), e.headers)
        except BaseException as e:
            if hold is not None:
                hold.release()
            engine.release(rows)
            if not isinstance(e, Exception):
                raise  # cancelled: the client went away
            log.warning("tokenising a request for %r failed", task.name, exc_info=True)
            return refuse(422, f"the inputs cannot be tokenised: {type(e).__name__}: {e}")
        waiting = asyncio.wrap_future(future)
        try:
            result = await asyncio.wait_for(asyncio.shield(waiting), max(0.0, deadline - time.perf_counter()))
        except asyncio.TimeoutError:
            if future.cancel():  # still queued: dropped unrun
                engine.metrics.dropped("expired")
                e = Expired.after(settings.request_timeout_s)
                return refuse(e.status, str(e), e.headers)
            try:  # already running: its batch is under way, wait for it
                result = await waiting
            except ServeError as e:
                return refuse(e.status, str(e), e.headers)
        except ServeError as e:
            return refuse(e.status, str(e), e.headers)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as e:  # noqa: BLE001 - the model failed on this request; the server goes on
            log.exception("predict failed")
            return refuse(500, f"prediction failed: {type(e).__name__}: {e}")
        name = task.name if task.name in engine.tasks else None  # unloaded meanwhile: its series are gone
        engine.metrics.prediction(name, 200, len(body.inputs), time.perf_counter() - started)
        return {"task": task.name, "predictions": result}

    async def tokenize_async(inputs, max_length):
        return await asyncio.get_running_loop().run_in_executor(pool, tokenize_here, inputs, max_length)

    add_parallel_route(app, engine, settings, tokenize_async, error)  # POST /v1/predict/parallel (serve/parallel.py)

    @app.get("/v1/adapters", response_model=AdapterList)
    async def adapters_list():
        listed = {"adapters": [t.describe() for t in engine.tasks.values()]}
        if residency is not None:
            listed["store"] = await asyncio.get_running_loop().run_in_executor(pool, residency.info)
        return listed

    def check_writable() -> None:
        if settings.read_only:
            raise Forbidden("the server runs with --read-only: adapters cannot be loaded or unloaded")

    @app.post("/v1/adapters", status_code=201, response_model=AdapterInfo,
              responses=errors(400, 403, 409, 413, 415, 422, 503, e503="too many adapter loads in progress, or "
                               "shutting down; retry after Retry-After seconds"))
    async def adapters_load(body: LoadRequest):
        check_writable()
        path, root = settings.hot_load_path(body.path)
        if body.name in engine.tasks:
            raise Conflict.name_in_use(body.name)
        if not _is_dir(path):
            return error(400, f"{safe(body.path)} is not a directory on the server", loc=["body", "path"])
        task = await wait(engine.hot_load(body.name, path, root))
        return task.describe()

    @app.delete("/v1/adapters/{name}", response_model=Unloaded, responses=errors(403, 404, 422))
    async def adapters_unload(name: str):
        check_writable()
        await wait(engine.unload(name) if residency is None else residency.unload(name))
        return {"unloaded": name}

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health, "description": "worker stopped"}})
    async def healthz():
        ok = engine.running
        body = {"status": "ok" if ok else "worker stopped", "model": model_name, "adapters": len(engine.tasks),
                "queued_inputs": engine.queued_rows}
        return SafeJSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        gauges = {"adapterkit_queued_inputs": engine.queued_rows, "adapterkit_adapters_loaded": len(engine.tasks),
                  "adapterkit_max_queue": settings.max_queue, "adapterkit_max_batch_size": settings.max_batch_size}
        text = engine.metrics.render(gauges) + (residency.render() if residency is not None else "")
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    app.state.generation = None
    if is_causal_lm(model):
        from .openai_api import GenerationLimits, add_generation_routes

        app.state.generation = add_generation_routes(app, engine, tokenizer, settings, model_name, engine.model_limit,
                                                     generation or GenerationLimits())
    return app


def make_residency(engine, store, max_loaded: int | None, max_memory: int | None):
    """The :class:`~.residency.Residency` over ``store`` (a directory or an AdapterStore), or None without one."""
    if store is None:
        if max_loaded is not None or max_memory is not None:
            raise ValueError("--max-loaded and --max-adapter-memory bound an adapter store; pass --adapter-store DIR")
        return None
    from .residency import Residency
    from .store import AdapterStore, DirectoryStore

    return Residency(engine, store if isinstance(store, AdapterStore) else DirectoryStore(store), max_loaded,
                     max_memory)


def _is_dir(path: str) -> bool:
    try:
        return Path(path).is_dir()
    except (OSError, ValueError):  # a NUL byte, a name too long, not encodable
        return False

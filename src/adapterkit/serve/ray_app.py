"""``adapterkit serve --ray --replicas N``: the same HTTP API on a Ray Serve deployment of N engine replicas.

Two deployments (Ray Serve 2.x, ``pip install 'adapterkit[ray]'``):

* :class:`AdapterReplica` (``N`` replicas, each on its own Ray worker process, possibly on another node):
  loads the model and builds exactly the single-process server's app (:func:`~.app.create_app`: an
  :class:`~.batcher.Engine` with its worker thread and mixed-task batching, and a
  :class:`~.residency.Residency` over the *shared* adapter store, a directory every node sees at the same
  path). :meth:`AdapterReplica.forward` runs one HTTP request through that app in-process, so every route,
  status code and error body is the single-process server's.
* :class:`Router` (the HTTP ingress, one replica, no CPU reserved): reads the body, takes the task of a
  ``POST /v1/predict`` from it and, when the store holds that name, calls a replica with
  ``handle.options(multiplexed_model_id=task)``. Ray
  Serve's model multiplexing then sends the request to a replica that already holds that adapter (or, for a
  new one, to the replica holding the fewest), so a task's traffic stays on few replicas while each replica
  still batches the rows of all the tasks it receives together. Other routes go to any replica.

Residency under Ray. In a replica, :meth:`AdapterReplica.get_adapter` is ``@serve.multiplexed``: Ray keeps
its own per-replica LRU of adapter names (``max_num_models_per_replica`` = ``--max-loaded``) and reports
them to its routers. The loader pins and loads the adapter through the replica's Residency (off the worker,
as in one process) and returns a :class:`ResidentAdapter`; when Ray's LRU drops it, Ray calls its
``__del__``, which calls :meth:`Residency.unload <.residency.Residency.unload>`: evicted between batches,
and never while a request uses it (a pinned adapter is evicted when its last request is answered). So Ray's
LRU is the ``--max-loaded`` bound. The Residency keeps ``--max-adapter-memory`` and a backstop of twice
``--max-loaded`` for an adapter Ray does not know is there (a request whose adapter Ray dropped between its
routing and its run loads it again, outside Ray's cache). Correctness never depends on Ray's routing
information being current: a request that reaches a replica without its adapter loads it there.

What is per replica: ``GET /metrics``, ``/healthz`` and ``/v1/adapters`` answer from one replica (the
``x-adapterkit-replica`` response header names it). Hot loading and unloading over HTTP (``POST /v1/adapters``,
``DELETE /v1/adapters/NAME``) would change one replica only, so they are refused (403): put the adapter in
the store instead. Responses are buffered, so ``stream: true`` generation arrives in one piece.

References: Ray Serve model multiplexing (``serve.multiplexed``, ``serve.get_multiplexed_model_id``,
``DeploymentHandle.options(multiplexed_model_id=...)``), https://docs.ray.io/en/latest/serve/model-multiplexing.html
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

try:  # the optional extra: adapterkit[ray]
    from ray import serve
except ImportError:  # pragma: no cover - exercised by the CLI test without Ray
    serve = None

from .settings import ServeSettings

log = logging.getLogger("adapterkit.serve")

NO_RAY = "--ray needs Ray Serve; pip install 'adapterkit[ray]'"
REPLICA_HEADER = "x-adapterkit-replica"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}
APP_NAME = "adapterkit"


@dataclass(frozen=True)
class ReplicaSpec:
    """What every replica builds: the arguments of :func:`~.app.create_app`, by value (they travel to the
    replicas' processes, on any node: ``model`` and the directories must exist there at the same paths)."""

    model: str = "minilm"
    adapters: dict[str, str] = field(default_factory=dict)
    settings: ServeSettings = field(default_factory=ServeSettings)
    store: str | None = None
    max_loaded: int | None = None
    max_memory: int | None = None
    threads: int | None = None  # torch threads per replica (default: Ray's OMP_NUM_THREADS = its CPUs)


class ResidentAdapter:
    """What Ray's multiplex cache holds for one adapter name in one replica. Ray calls ``__del__`` when its LRU
    drops the name; that unloads the adapter through the Residency (after its pins). Idempotent: Ray calls it,
    then the garbage collector may call it again."""

    def __init__(self, residency, name: str):
        self.residency, self.name = residency, name
        self._gone = False

    def __del__(self) -> None:
        if self._gone:
            return
        self._gone = True
        if not self.residency.engine.running:  # the replica is shutting down
            return
        try:
            self.residency.unload(self.name)  # evicted between batches, once no request pins it
        except Exception:  # noqa: BLE001 - shutting down meanwhile; the engine goes anyway
            log.debug("unloading %r after Ray dropped it failed", self.name, exc_info=True)


class AdapterReplica:
    """One replica: adapterkit's own server app, run in-process. Made into a deployment by
    :func:`deployments` (which sets the multiplex bound)."""

    async def __init__(self, spec: ReplicaSpec):
        import httpx
        import torch

        from ..models import load_model
        from .app import create_app

        if spec.threads:
            torch.set_num_threads(spec.threads)
        net, tokenizer = load_model(spec.model, kind="auto")
        backstop = None if spec.max_loaded is None else 2 * spec.max_loaded  # Ray's LRU bounds at max_loaded
        self.app = create_app(net, tokenizer, spec.adapters, spec.settings, model_name=spec.model,
                              store=spec.store, max_loaded=backstop, max_memory=spec.max_memory)
        self.residency = self.app.state.residency
        self._stack = AsyncExitStack()
        await self._stack.enter_async_context(self.app.router.lifespan_context(self.app))  # the worker starts
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://replica",
                                         timeout=None)
        self._stack.push_async_callback(self._client.aclose)
        context = serve.get_replica_context()
        self.name = context.replica_id.unique_id if context is not None else "local"

    async def _load_adapter(self, name: str) -> ResidentAdapter:
        """Ray's multiplex loader: pin ``name`` in the Residency until it is usable, then unpin (each request
        pins it again while it runs)."""
        future = self.residency.acquire(name)
        try:
            await asyncio.wrap_future(future)
        finally:
            self.residency.release(name)
        return ResidentAdapter(self.residency, name)

    async def forward(self, method: str, path: str, query: str, headers: list[tuple[str, str]],
                      body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """Run one HTTP request through this replica's app; returns (status, headers, body)."""
        task = serve.get_multiplexed_model_id()
        pinned = bool(task) and self.residency is not None and self.residency.manages(task)
        if pinned:
            # Pinned from before Ray's load until the answer: if Ray's LRU drops the adapter meanwhile (another
            # request's load), the Residency evicts it after this request. Unpinned, the app's own load would
            # bring it back after the drop, resident with no Ray entry left to unload it.
            self.residency.acquire(task, lookup=False)  # the app's own acquire below is the request's lookup
        try:
            if pinned:
                try:
                    await self.get_adapter(task)  # Ray's LRU and routing table learn the replica holds it
                except Exception:  # noqa: BLE001 - the app's own load answers the error (400, 503) below
                    pass
            url = path + (f"?{query}" if query else "")
            response = await self._client.request(method, url, headers=headers, content=body)
        finally:
            if pinned:
                self.residency.release(task)
        out = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in HOP_BY_HOP]
        return response.status_code, out + [(REPLICA_HEADER, self.name)], response.content

    async def __del__(self) -> None:  # Ray calls this once when it stops the replica
        stack, self._stack = getattr(self, "_stack", None), None
        if stack is not None:
            await stack.aclose()  # the worker stops


class Router:
    """The HTTP ingress: reads the request, routes ``POST /v1/predict`` by its task (multiplexed model id)."""

    def __init__(self, replicas, max_body_bytes: int, store: str | None):
        from .store import DirectoryStore

        self.replicas = replicas
        self.max_body = max_body_bytes
        # Only names in the store are routed by name: Ray remembers every id it routes by, so a client's made-up
        # names must not become ids; --adapter tasks are loaded in every replica and need no routing.
        self.store = DirectoryStore(store) if store else None

    async def __call__(self, request):
        from starlette.responses import JSONResponse, Response

        method, path = request.method, request.url.path
        if (method == "POST" and path == "/v1/adapters") or (method == "DELETE" and path.startswith("/v1/adapters/")):
            return JSONResponse({"detail": "with --ray, adapters come from the adapter store that every replica "
                                 "shares: save the adapter under the store directory (hot loading and unloading "
                                 "over HTTP would change one replica only)"}, status_code=403)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            return JSONResponse({"detail": f"a body of {declared} bytes; the limit is {self.max_body}"}, 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                return JSONResponse({"detail": f"a body over {self.max_body} bytes; the limit is {self.max_body}"},
                                    413)
            chunks.append(chunk)
        body = b"".join(chunks)
        task = task_of(body) if method == "POST" and path == "/v1/predict" and self.store is not None else None
        routed = task is not None and task in self.store  # a few lstat calls
        handle = self.replicas.options(multiplexed_model_id=task) if routed else self.replicas
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        try:
            status, out, content = await handle.forward.remote(method, path, request.url.query, headers, body)
        except Exception as e:  # noqa: BLE001 - a replica died or is restarting
            log.warning("forwarding %s %s failed", method, path, exc_info=True)
            return JSONResponse({"detail": f"no replica could answer ({type(e).__name__}); retry"}, 503,
                                headers={"Retry-After": "1"})
        response = Response(content, status_code=status)
        for k, v in out:
            response.headers.append(k, v)
        return response


def task_of(body: bytes) -> str | None:
    """The ``task`` of a predict body, or None when there is none to route by (the replica's app then answers
    whatever is wrong with the body)."""
    try:
        task = json.loads(body).get("task")
    except Exception:  # noqa: BLE001 - not JSON, not an object, bad UTF-8: the app answers 4xx
        return None
    return task if isinstance(task, str) and 0 < len(task) <= 1000 else None


def deployments(spec: ReplicaSpec, replicas: int, replica_cpus: float = 1.0):
    """The Ray Serve application: a :class:`Router` ingress bound to ``replicas`` :class:`AdapterReplica`
    replicas of ``replica_cpus`` CPUs each, whose multiplex LRU holds ``spec.max_loaded`` adapters."""
    if serve is None:
        raise ImportError(NO_RAY)
    if replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {replicas}")
    max_models = spec.max_loaded if spec.max_loaded is not None else -1  # -1: Ray's "no limit"

    class Replica(AdapterReplica):
        @serve.multiplexed(max_num_models_per_replica=max_models)
        async def get_adapter(self, name: str) -> ResidentAdapter:
            return await self._load_adapter(name)

    # A replica with 2 full batches of requests in flight counts as busy to Ray's router, which then sends a
    # hot task's next requests to another replica (loading the adapter there too) instead of queueing them.
    replica = serve.deployment(Replica, name="AdapterReplica", num_replicas=replicas,
                               max_ongoing_requests=max(8, 2 * spec.settings.max_batch_size),
                               ray_actor_options={"num_cpus": replica_cpus})
    router = serve.deployment(Router, name="Router", num_replicas=1, max_ongoing_requests=10_000,
                              ray_actor_options={"num_cpus": 0})
    return router.bind(replica.bind(spec), spec.settings.max_body_bytes, spec.store)


def run(spec: ReplicaSpec, replicas: int, host: str = "127.0.0.1", port: int = 8000, replica_cpus: float = 1.0,
        blocking: bool = True):
    """Start (or join) Ray, deploy the application on ``host:port`` and, with ``blocking``, serve until
    interrupted. Ray is joined where one runs (``RAY_ADDRESS``, or a ``ray start`` on this machine), else a
    local instance is started. Returns the router's handle when not blocking."""
    if serve is None:
        raise ImportError(NO_RAY)
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
    serve.start(http_options={"host": host, "port": port})
    handle = serve.run(deployments(spec, replicas, replica_cpus), name=APP_NAME, route_prefix="/")
    shown = f"[{host}]" if ":" in host else host
    print(f"adapterkit serve: listening on http://{shown}:{port} (Ray Serve, {replicas} replicas; store: "
          f"{spec.store or 'none'}, adapters: {', '.join(spec.adapters) or 'none'})", flush=True)
    if not blocking:
        return handle
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(APP_NAME)
    return None


def serve_ray_options(options: dict, replicas: int, replica_cpus: float = 1.0) -> None:
    """:func:`serve_ray` from ``adapterkit serve``'s parsed options (the parameters of :func:`.server.serve`)."""
    if serve is None:
        raise ImportError(NO_RAY)
    logging.basicConfig(level=options["log_level"].upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = ("max_batch_size", "batch_window_ms", "max_queue", "max_inputs", "max_length", "max_chars",
             "max_body_bytes", "tokenize_threads", "read_only")
    settings = ServeSettings(**{k: options[k] for k in names}, request_timeout_s=options["request_timeout"],
                             adapter_roots=options["adapter_root"] or ())
    serve_ray(options["model"], options["adapters"], settings, options["host"], options["port"], replicas,
              options["adapter_store"], options["max_loaded"], options["max_adapter_memory"], options["threads"],
              replica_cpus)


def serve_ray(model: str, adapters: Sequence[str] | dict[str, str], settings: ServeSettings, host: str, port: int,
              replicas: int, adapter_store: str | None, max_loaded: int | None, max_adapter_memory: int | None,
              threads: int | None = None, replica_cpus: float = 1.0) -> None:
    """``adapterkit serve --ray``: check the arguments here (so a mistake is one line, before Ray starts), then
    :func:`run`."""
    from .store import DirectoryStore
    from .tasks import parse_adapters

    if serve is None:
        raise ImportError(NO_RAY)
    if not adapter_store and not adapters:
        raise ValueError("--ray needs --adapter-store DIR or --adapter NAME=DIR: the replicas serve those")
    if replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {replicas}")
    if max_loaded is not None and max_loaded < 1:
        raise ValueError(f"--max-loaded must be >= 1, got {max_loaded}")
    if not replica_cpus > 0:
        raise ValueError(f"--replica-cpus must be > 0, got {replica_cpus}")
    if not 0 < port < 65536:
        raise ValueError(f"--port {port}: with --ray pass a fixed port (Ray's proxy listens on it on every node)")
    store = DirectoryStore(adapter_store).root if adapter_store else None  # absolute: the replicas' cwd differs
    parsed = {name: os.path.abspath(path) for name, path in parse_adapters(adapters or {}).items()}
    spec = ReplicaSpec(model=model if not os.path.isdir(model) else os.path.abspath(model), adapters=parsed,
                       settings=settings, store=store, max_loaded=max_loaded, max_memory=max_adapter_memory,
                       threads=threads)
    started = time.perf_counter()
    run(spec, replicas, host, port, replica_cpus)
    log.info("served for %.0f s", time.perf_counter() - started)


__all__ = ["AdapterReplica", "NO_RAY", "REPLICA_HEADER", "ReplicaSpec", "ResidentAdapter", "Router", "deployments",
           "run", "serve_ray", "serve_ray_options", "task_of"]

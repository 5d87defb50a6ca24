"""Running the server: :func:`serve` loads the model and adapters, binds the socket and runs uvicorn;
:func:`main` is its command-line front end (``python -m adapterkit.serve``, see :mod:`.__main__`)."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Sequence

import torch

from ..models import MODELS
from .settings import ServeError, ServeSettings

HOT_LOADING = ("Hot loading (POST /v1/adapters) accepts any directory on the server unless --adapter-root or "
               "--read-only is given.")


def serve(model: str = "minilm", adapters: Sequence[str] | dict[str, str] = (), host: str = "127.0.0.1",
          port: int = 8000, max_batch_size: int = 32, batch_window_ms: float = 5.0, max_queue: int = 1024,
          max_inputs: int = 64, max_length: int = 256, max_chars: int = 20_000, max_body_bytes: int = 8 << 20,
          request_timeout: float = 30.0, tokenize_threads: int = 2, read_only: bool = False,
          threads: int | None = None, log_level: str = "info", access_log: bool = False,
          adapter_root: str | Sequence[str] | None = None, max_tokens: int = 512,
          max_prompt_tokens: int = 2048, adapter_store: str | None = None,
          max_loaded: int | None = None, max_adapter_memory: int | None = None) -> None:
    """Load ``model`` (an alias such as ``minilm``, or a model directory) with ``adapters`` ("name=dir") and
    serve until interrupted. ``port=0`` picks a free port; the bound address is printed on stdout.

    Hot loading (``POST /v1/adapters``) accepts any directory on the server unless ``adapter_root`` (one
    directory or several) or ``read_only`` is given: with ``adapter_root``, only directories that resolve
    (symlinks followed) inside one of those roots are loaded, others get 403, and every file is checked again
    when it is read (its real path must stay inside the root); ``read_only`` refuses all.

    A causal LM (``smollm2``, a ``*ForCausalLM`` directory) serves LM adapters with the OpenAI-style routes
    (:mod:`.openai_api`): ``max_tokens`` caps a request's ``max_tokens``, ``max_prompt_tokens`` its prompt.
    ``adapter_store`` (a directory tree of saved adapters) makes each adapter in it servable by name, loaded
    on first use and evicted least-recently-used beyond ``max_loaded`` adapters or ``max_adapter_memory``
    bytes (:mod:`.residency`)."""
    import uvicorn

    from ..models import load_model
    from .app import create_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if threads:
        torch.set_num_threads(threads)
    settings = ServeSettings(max_batch_size=max_batch_size, batch_window_ms=batch_window_ms, max_queue=max_queue,
                             max_inputs=max_inputs, max_length=max_length, max_chars=max_chars,
                             max_body_bytes=max_body_bytes, request_timeout_s=request_timeout,
                             tokenize_threads=tokenize_threads, read_only=read_only, adapter_roots=adapter_root or ())
    from .openai_api import GenerationLimits

    generation = GenerationLimits(max_tokens=max_tokens, max_prompt_tokens=max_prompt_tokens)
    net, tokenizer = load_model(model, kind="auto")  # a causal LM serves generation
    app = create_app(net, tokenizer, adapters, settings, model_name=model, generation=generation,
                     store=adapter_store, max_loaded=max_loaded, max_memory=max_adapter_memory)

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    tasks = app.state.engine.tasks
    print(f"adapterkit serve: listening on http://{shown}:{bound} ({len(tasks)} adapters: "
          f"{', '.join(tasks) or 'none'})", flush=True)
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port; give 0-65535 (0 picks a free one)")
    return port


def _memory(text: str) -> int:
    from .residency import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="adapterkit serve", description="Serve many task adapters on one backbone "
                                f"over HTTP, with mixed-task dynamic batching; on a causal LM, OpenAI-style generation with LM adapters "
                                "(/v1/completions, /v1/chat/completions). {HOT_LOADING}")
    # Every dest is a parameter of serve(), which gets them all by name.
    p.add_argument("--model", default="minilm", help=f"model alias ({', '.join(MODELS)}), a local model directory "
                   "or a hub id")
    p.add_argument("--adapter", dest="adapters", action="append", default=[], metavar="NAME=DIR",
                   help="adapter directory to serve as task NAME (repeatable)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8000, help="0 picks a free port (printed on stdout)")
    d = ServeSettings()
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help="rows per forward pass")
    p.add_argument("--batch-window-ms", type=float, default=d.batch_window_ms,
                   help="how long a request waits for others to batch with")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="inputs waiting or running before 503")
    p.add_argument("--max-inputs", type=int, default=d.max_inputs, help="inputs per request before 413")
    p.add_argument("--max-length", type=int, default=d.max_length, help="tokens per input (longer: truncated)")
    p.add_argument("--max-chars", type=int, default=d.max_chars, help="characters per text before 422")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="request body bytes before 413")
    p.add_argument("--request-timeout", type=float, default=d.request_timeout_s, metavar="SECONDS",
                   help="a request not answered within this is dropped unrun and answered 503")
    p.add_argument("--tokenize-threads", type=int, default=d.tokenize_threads,
                   help="threads that tokenise requests (off the event loop)")
    p.add_argument("--read-only", action="store_true", help="refuse loading/unloading adapters over HTTP")
    p.add_argument("--adapter-root", action="append", default=None, metavar="DIR",
                   help="hot loading accepts only directories that resolve (symlinks followed) inside DIR, and "
                   "only files whose real paths stay inside it; others get 403/400 (repeatable). Without it any "
                   "directory on the server can be loaded")
    p.add_argument("--max-tokens", type=int, default=512,
                   help="causal LMs: the most tokens one generation request may ask for (max_tokens) before 422")
    p.add_argument("--max-prompt-tokens", type=int, default=2048,
                   help="causal LMs: the most prompt tokens one generation request may send before 422")
    p.add_argument("--adapter-store", default=None, metavar="DIR",
                   help="serve every adapter (and fusion) saved under DIR (a tree) by name, loading it on first "
                   "use: DIR/a/b-c/ is task a--b-c. See --max-loaded")
    p.add_argument("--max-loaded", type=int, default=None, metavar="N",
                   help="with --adapter-store: at most N stored adapters in memory; the least recently used "
                   "one not in use is evicted between batches (default: no limit)")
    p.add_argument("--max-adapter-memory", type=_memory, default=None, metavar="SIZE",
                   help="with --adapter-store: at most SIZE (e.g. 512MB, 2GiB) of stored adapters' tensors in "
                   "memory, evicted as --max-loaded")
    p.add_argument("--ray", action="store_true",
                   help="serve on Ray Serve: --replicas engine replicas over the adapter store, requests routed by "
                   "task (joins a running Ray cluster, else starts a local one; needs adapterkit[ray])")
    p.add_argument("--replicas", type=int, default=None, metavar="N", help="with --ray: engine replicas (default 1)")
    p.add_argument("--replica-cpus", type=float, default=1.0, metavar="CPUS",
                   help="with --ray: CPUs Ray reserves for each replica")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (per replica with --ray)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true")
    options = vars(p.parse_args(argv))
    ray, replicas, replica_cpus = options.pop("ray"), options.pop("replicas"), options.pop("replica_cpus")
    try:
        if ray:
            from .ray_app import serve_ray_options

            serve_ray_options(options, 1 if replicas is None else replicas, replica_cpus)  # adapterkit/serve/ray_app.py
        elif replicas is not None:
            raise ValueError("--replicas needs --ray (one process serves without it)")
        else:
            serve(**options)
    except ModuleNotFoundError as e:
        extra = e.name in ("fastapi", "uvicorn", "httpx", "starlette") or (e.name or "").startswith("ray")
        hint = f"; install the server's dependencies: pip install '{'adapterkit[ray]' if ray else 'adapterkit[serve]'}'"
        print(f"adapterkit serve: error: {e}{hint if extra else ''}", file=sys.stderr)
        raise SystemExit(2) from None
    except (ValueError, OSError, ServeError, ImportError) as e:  # ModelError, AdapterLoadError, bad settings, port in use
        print(f"adapterkit serve: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None

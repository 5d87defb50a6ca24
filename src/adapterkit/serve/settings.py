"""The server's settings (:class:`ServeSettings`) and the errors its handlers turn into HTTP status codes.

Everything else in :mod:`adapterkit.serve` imports from here, so this module imports nothing of the package.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServeSettings:
    max_batch_size: int = 32  # rows per forward pass
    batch_window_ms: float = 5.0  # how long the first request of a batch waits for others
    max_queue: int = 1024  # input rows waiting or running; more -> 503
    max_inputs: int = 64  # inputs per request; more -> 413
    max_length: int = 256  # tokens per input (text + pair); longer inputs are truncated
    max_chars: int = 20_000  # characters per text; longer -> 422
    max_body_bytes: int = 8 << 20  # bytes per request body; larger -> 413 (before it is parsed)
    request_timeout_s: float = 30.0  # a request not answered within this (queued, tokenising or running) -> 503
    tokenize_threads: int = 2  # threads that tokenise requests (off the event loop)
    read_only: bool = False  # refuse POST/DELETE /v1/adapters
    # POST /v1/adapters loads only directories that resolve inside one of these (() = any directory).
    # Given as one directory or several; stored resolved (absolute, symlinks followed).
    adapter_roots: Sequence[str | os.PathLike] = ()

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "max_inputs", "max_length", "max_chars", "max_body_bytes",
                     "tokenize_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_window_ms < 0:
            raise ValueError(f"batch_window_ms must be >= 0, got {self.batch_window_ms}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        roots = self.adapter_roots
        if isinstance(roots, (str, os.PathLike)):
            roots = [roots]
        resolved = []
        for root in roots:
            path = Path(root).resolve()
            if not path.is_dir():
                raise ValueError(f"adapter root {root} is not a directory")
            resolved.append(str(path))
        object.__setattr__(self, "adapter_roots", tuple(resolved))

    def hot_load_path(self, path: str) -> tuple[str, str | None]:
        """Where ``POST /v1/adapters`` may load ``path`` from: ``(path, None)`` when no adapter roots are set;
        else ``(resolved, root)``: its resolved form (symlinks followed, ``..`` removed) and the root it lies in.
        Raises :class:`Forbidden` when it is in none. This is the early answer only: the load itself passes
        ``root`` to :func:`adapterkit.io.load_adapter`, which checks every file's real path again when it reads
        it, so a directory swapped for a symlink after this check is still refused."""
        if not self.adapter_roots:
            return path, None
        try:
            resolved = Path(path).resolve()
        except (OSError, ValueError, RuntimeError):  # a symlink loop, a NUL byte: cannot be inside a root
            resolved = None
        for root in self.adapter_roots:
            if resolved is not None and resolved.is_relative_to(root):
                return str(resolved), root
        raise Forbidden(f"{safe(path)} is outside the adapter roots this server loads from: "
                        f"{', '.join(self.adapter_roots)}")


def safe(text: str, limit: int = 300) -> str:
    """``text`` made fit for a one-line JSON error: lone surrogates (not UTF-8) escaped, cut to ``limit``."""
    text = str(text)
    if len(text) > limit:
        text = text[:limit] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class ServeError(Exception):
    """An error with an HTTP status; the message is the response's ``detail``."""

    status = 500

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.headers = headers


class UnknownTask(ServeError):
    status = 404

    @classmethod
    def named(cls, name: str) -> UnknownTask:
        return cls(f"no adapter named {name!r} is loaded")


class QueueFull(ServeError):
    status = 503

    @classmethod
    def shutting_down(cls) -> QueueFull:
        return cls("the server is shutting down", {"Retry-After": "1"})


class Conflict(ServeError):
    status = 409

    @classmethod
    def name_in_use(cls, name: str) -> Conflict:
        return cls(f"an adapter named {name!r} is already loaded; DELETE /v1/adapters/{name} first")


class BadAdapter(ServeError):
    status = 400


class Expired(ServeError):
    """Not answered within ``request_timeout_s``: dropped before it ran."""

    status = 503

    @classmethod
    def after(cls, seconds: float) -> Expired:
        return cls(f"the request waited longer than its deadline ({seconds:g} s) and was dropped before it ran; "
                   "retry later", {"Retry-After": "1"})


class NonFinite(ServeError):
    """The adapter produced NaN or infinite scores for these inputs: refused rather than served as null."""

    status = 422


class Forbidden(ServeError):
    status = 403

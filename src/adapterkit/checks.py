"""What an adapter directory must look like before anything in it is believed or allocated.

An adapter directory may come from anyone (a download, an upload to the server), so every read here is
bounded and checked:

* files are opened once, by a path resolved once: with ``root`` given, the directory and each file must
  resolve inside it (a symlink leading out is refused before anything is opened), and the resolved path is
  then walked component by component with ``O_NOFOLLOW`` from the root, so a link swapped in afterwards is
  refused too. Only regular files are read (a FIFO would block, a device never end), up to a size limit;
  what is checked is then the very bytes that are parsed and loaded.
* the config is strict JSON of at most 1 MiB, nested at most 64 deep, without duplicate keys or lone
  surrogates, with every field of the expected type (:func:`check_meta`);
* the safetensors header is parsed from those bytes (names, dtypes, shapes, offsets) and compared with the
  tensors the adapter will have in this model before anything is allocated (:func:`check_header`).

Imports only the standard library and the core.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import reprlib
import stat
from typing import Any

from .config import AdapterConfig
from .heads import HeadConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
FORMAT_VERSION = 2  # 2: adapter_config.json carries config_sha256 over itself; 1 (still read): no config checksum
MAX_CONFIG_BYTES = 1 << 20
MAX_HEADER_BYTES = 16 << 20
MAX_JSON_DEPTH = 64
MAX_NAME_CHARS = 200
FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}  # safetensors dtype -> bytes per element

_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_REQUIRED = {"adapterkit_format", "name", "config", "head", "base_model", "files"}
_OPTIONAL = {"parameters", "extra"}


class AdapterLoadError(ValueError):
    """An adapter directory cannot be loaded into this model; nothing was changed."""


def _r(x: Any) -> str:
    return reprlib.repr(x)


# --- files ---------------------------------------------------------------------------------------

def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolve_directory(directory: str | os.PathLike, root: str | os.PathLike | None) -> tuple[str, str | None]:
    """(the directory's real path, the root's real path or None); refuses a directory outside ``root``."""
    try:
        real = os.path.realpath(os.fspath(directory))
        real_root = None if root is None else os.path.realpath(os.fspath(root))
    except (TypeError, ValueError, OSError) as e:  # a NUL byte, a path too long, a symlink loop...
        raise AdapterLoadError(f"{_r(directory)} is not a usable path ({e}); pass an adapter directory") from None
    if real_root is not None and not _inside(real, real_root):
        raise AdapterLoadError(f"{directory} lies outside the adapter root {root} (after following links); "
                               f"pass an adapter directory under {root}")
    return real, real_root


def _flags(final: bool) -> int:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    return flags | getattr(os, "O_NONBLOCK", 0) if final else flags | getattr(os, "O_DIRECTORY", 0)


def _open(real: str, real_root: str | None) -> int:
    """Open the resolved path ``real``; under a root, walk to it from the root without following links."""
    if real_root is None or os.open not in os.supports_dir_fd:
        return os.open(real, _flags(final=True))
    parts = os.path.relpath(real, real_root).split(os.sep)
    fd = os.open(real_root, _flags(final=False))
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, _flags(final=False), dir_fd=fd)
            os.close(fd)
            fd = next_fd
        return os.open(parts[-1], _flags(final=True), dir_fd=fd)
    finally:
        os.close(fd)


def read_file(real_dir: str, filename: str, real_root: str | None, limit: int, shown: str) -> bytes:
    """The bytes of ``real_dir/filename``, read once: a regular file of at most ``limit`` bytes that
    resolves inside ``real_root`` (if given). ``shown`` is how messages name the file."""
    real = os.path.realpath(os.path.join(real_dir, filename))
    if real_root is not None and not _inside(real, real_root):
        raise AdapterLoadError(f"{shown} is a link to a file outside the adapter root; "
                               "copy the file into the adapter directory instead of linking it")
    try:
        fd = _open(real, real_root)
    except (FileNotFoundError, NotADirectoryError):
        raise AdapterLoadError(f"{shown} not found: is this an adapter directory written by save_adapter?") from None
    except OSError as e:
        raise AdapterLoadError(f"{shown} cannot be opened ({e.strerror}); "
                               "it must be a regular file inside the adapter directory") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AdapterLoadError(f"{shown} is not a regular file; re-save the adapter")
        if st.st_size > limit:
            raise AdapterLoadError(f"{shown} is {st.st_size} bytes, more than the {limit} an adapter of this "
                                   "config can need; re-save the adapter")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise AdapterLoadError(f"{shown} grew while it was read; load it again once it is written")
    return data


# --- JSON --------------------------------------------------------------------------------------

def existing_entries(directory: str | os.PathLike, what: str) -> set[str] | None:
    """What a writer about to replace ``directory`` with a new ``what`` (e.g. "adapter") finds there: None for a
    new path, the names of its entries for a directory (empty if empty). A symlink or a non-directory is refused
    (FileExistsError): adapterkit never writes through a link or over a file it did not write. The caller
    decides whether the entries are its own."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise FileExistsError(f"{directory} is a symlink; save to the directory it points to, or to a new path")
    if not stat.S_ISDIR(st.st_mode):
        raise FileExistsError(f"{directory} exists and is not a directory; pick a new path for the {what}")
    return set(os.listdir(directory))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {_r(dup)}")
    return out


def _check_tree(value: Any) -> None:
    """Nesting depth at most MAX_JSON_DEPTH, and every string valid Unicode (no lone surrogates)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"nested more than {MAX_JSON_DEPTH} deep")
        if isinstance(v, dict):
            stack.extend((k, depth) for k in v)
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)
        elif isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"string {_r(v)} is not valid Unicode (a lone surrogate)") from None


def parse_json(data: bytes) -> Any:
    """Strict JSON (UTF-8, no duplicate keys, bounded nesting, valid Unicode); ValueError otherwise."""
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} deep") from None
    _check_tree(value)
    return value


def canonical_json(value: Any) -> bytes:
    """The bytes config_sha256 is taken over: sorted keys, no spaces, ASCII."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def config_digest(meta: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json({k: v for k, v in meta.items() if k != "config_sha256"})).hexdigest()


# --- adapter_config.json -----------------------------------------------------------------------

def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_meta(meta: Any, shown: str) -> dict[str, Any]:
    """Check every field of a parsed adapter_config.json (types, ranges, checksum of format 2); returns it."""

    def bad(problem: str, fix: str = "re-save the adapter with save_adapter") -> AdapterLoadError:
        return AdapterLoadError(f"{shown}: {problem}; {fix}")

    if not isinstance(meta, dict):
        raise bad(f"expected a JSON object, found {type(meta).__name__}")
    fmt = meta.get("adapterkit_format")
    if not _is_int(fmt) or fmt < 1:
        raise bad(f"adapterkit_format is {_r(fmt)}, not a format number", "is this a directory written by save_adapter?")
    if fmt > FORMAT_VERSION:
        raise bad(f"written in adapter format {fmt}, this adapterkit reads up to {FORMAT_VERSION}", "upgrade adapterkit")
    required = _REQUIRED | ({"config_sha256"} if fmt >= 2 else set())
    missing, unknown = sorted(required - set(meta)), sorted(set(meta) - required - _OPTIONAL)
    if missing:
        raise bad(f"missing field(s) {', '.join(missing)}")
    if unknown:
        raise bad(f"unknown field(s) {_r(unknown)} for format {fmt}")
    if fmt >= 2:
        if not isinstance(meta["config_sha256"], str) or not _SHA256.match(meta["config_sha256"]):
            raise bad(f"config_sha256 is {_r(meta['config_sha256'])}, not a sha256 hex digest")
        if config_digest(meta) != meta["config_sha256"]:
            raise bad("the config was changed after it was saved (config_sha256 mismatch)", "re-save or re-download the adapter")
    name = meta["name"]
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS or not _NAME.fullmatch(name):
        raise bad(f"name {_r(name)} is not letters, digits, '_' or '-' (at most {MAX_NAME_CHARS})")
    for key, kind in (("config", "an AdapterConfig"), ("head", "a HeadConfig"), ("base_model", "a base-model fingerprint"),
                      ("files", "a map of file name to sha256"), ("extra", "an object"), ("parameters", "parameter counts")):
        if key in meta and not isinstance(meta[key], dict):
            raise bad(f"{key} is {type(meta[key]).__name__}, not {kind} (a JSON object)")
    try:
        AdapterConfig.from_saved(meta["config"])
        HeadConfig.coerce(meta["head"], model_has_head=True)
    except (ValueError, TypeError) as e:  # AdapterConfigError, a bad head field
        raise bad(f"invalid adapter config ({e})") from None
    if not all(v is None or isinstance(v, (str, int, float)) for v in meta["base_model"].values()):
        raise bad("base_model values must be strings or numbers")
    if not all(_is_int(v) and v >= 0 for v in meta.get("parameters", {}).values()):
        raise bad("parameters must map names to counts")
    files = meta["files"]
    if set(files) != {WEIGHTS_FILE} or not isinstance(files[WEIGHTS_FILE], str) or not _SHA256.match(files[WEIGHTS_FILE]):
        raise bad(f"files must be {{{WEIGHTS_FILE!r}: its sha256}}, found {_r(files)}")
    return meta


# --- adapter_model.safetensors -------------------------------------------------------------------

def check_header(data: bytes, expected: dict[str, tuple[int, ...]], shown: str) -> None:
    """Check a safetensors file's header (parsed from its bytes; nothing allocated) against the tensors the
    adapter will have: the same names, the same shapes, floating-point dtypes, offsets that tile the data."""

    def bad(problem: str, fix: str = "re-save the adapter") -> AdapterLoadError:
        return AdapterLoadError(f"{shown}: {problem}; {fix}")

    if len(data) < 8:
        raise bad("too short to be a safetensors file")
    n = int.from_bytes(data[:8], "little")
    if n > min(MAX_HEADER_BYTES, len(data) - 8):
        raise bad(f"damaged header (it claims {n} bytes)")
    try:
        header = parse_json(data[8:8 + n])
    except ValueError as e:
        raise bad(f"damaged header ({e})") from None
    if not isinstance(header, dict):
        raise bad("damaged header (not a JSON object)")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("damaged header (__metadata__ is not a map of strings)")
    missing, unexpected = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
    if missing or unexpected:
        raise bad(f"does not fit this model: {len(missing)} missing tensor(s) (e.g. {missing[:1]}), "
                  f"{len(unexpected)} unexpected (e.g. {_r(unexpected[:1])})", "was it saved from another architecture?")
    spans = []
    for key, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"damaged header entry for {key}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in FLOAT_DTYPES:
            raise bad(f"tensor {key} has dtype {_r(dtype)}", f"adapter tensors are floating point ({', '.join(FLOAT_DTYPES)})")
        if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
            raise bad(f"damaged header entry for {key} (shape {_r(shape)})")
        if tuple(shape) != tuple(expected[key]):
            raise bad(f"tensor {key} has shape {tuple(shape)}, the model expects {tuple(expected[key])}",
                      "was it saved with another config?")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
                or offsets[1] - offsets[0] != math.prod(shape) * FLOAT_DTYPES[dtype]):
            raise bad(f"damaged header entry for {key} (offsets {_r(offsets)})")
        spans.append(tuple(offsets))
    end = 0
    for start, stop in sorted(spans):
        if start != end:
            raise bad("damaged header (tensor data overlaps or leaves gaps)")
        end = stop
    if end != len(data) - 8 - n:
        raise bad(f"{len(data) - 8 - n} bytes of tensor data where the header describes {end}")


__all__ = ["CONFIG_FILE", "FORMAT_VERSION", "MAX_CONFIG_BYTES", "WEIGHTS_FILE", "AdapterLoadError", "check_header",
           "check_meta", "config_digest", "parse_json", "read_file", "resolve_directory"]

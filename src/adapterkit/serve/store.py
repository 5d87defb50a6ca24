"""Where the server finds adapters it has not loaded yet: an :class:`AdapterStore` names every adapter it holds
and says where each one is, without loading any. :class:`DirectoryStore` is a directory tree of adapters saved
by :func:`adapterkit.save_adapter` and fusions saved by :func:`adapterkit.save_fusion` (``adapterkit train
--method fusion``; a fusion is served as one task, :mod:`.stored_fusion`); another store (an object store, a database) implements the same three
methods. :mod:`.residency` decides which of them are in memory.

Names. An adapter at ``DIR/customers/acme-v2/`` is named ``customers--acme-v2``: its path relative to the store,
with ``--`` between the directories. Every directory name must be letters, digits and ``_``, with single
``-`` between them (``acme-v2``, not ``-x``, ``a--b``, ``.hidden`` or ``a.b``), so that a name maps to exactly
one path and back, and every name is a valid adapter name (:func:`adapterkit.add_adapter`). Directories
whose names do not fit, and everything below a symlink, are skipped: they are not addressable.

Safety. A name is parsed into path components, never joined as a string, so ``..``, ``/`` and absolute paths
are not names at all (they are refused as unknown). Every component is checked with ``lstat``: a symlink
anywhere on the way, in or out of the tree, is refused. The load itself then reads each file through
:func:`adapterkit.io.load_adapter`'s checks with the store as its ``root`` (resolved inside it, opened without
following links), so a link swapped in after the lookup is refused as well.
"""

from __future__ import annotations

import os
import re
import stat
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from ..checks import CONFIG_FILE, MAX_NAME_CHARS, WEIGHTS_FILE
from ..fusion_io import FUSION_CONFIG_FILE, FUSION_WEIGHTS_FILE

# what makes a directory a stored entry, by kind (an adapter directory first: it is what it always was)
ENTRY_FILES = {"adapter": (CONFIG_FILE, WEIGHTS_FILE), "fusion": (FUSION_CONFIG_FILE, FUSION_WEIGHTS_FILE)}

SEPARATOR = "--"
_COMPONENT = re.compile(r"^[A-Za-z0-9_]+(?:-[A-Za-z0-9_]+)*$")


class UnknownAdapter(KeyError):
    """The store holds no adapter of that name (or the name is not a valid store name)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown adapter"


@dataclass(frozen=True)
class StoredAdapter:
    """Where a stored adapter is: ``directory`` (absolute), to be loaded with ``root`` as its adapter root.
    ``kind`` "fusion": a fusion directory (its fused adapters are read when it is loaded)."""

    name: str
    directory: str
    root: str
    bytes: int  # size of its weights file (what it will take in memory, about)
    kind: str = "adapter"  # or "fusion"

    def describe(self) -> dict:
        return {"name": self.name, "path": os.path.relpath(self.directory, self.root), "bytes": self.bytes,
                "kind": self.kind}


class AdapterStore(ABC):
    """The adapters a server may load by name."""

    @abstractmethod
    def names(self) -> list[str]:
        """Every name the store holds, sorted."""

    @abstractmethod
    def locate(self, name: str) -> StoredAdapter:
        """Where adapter ``name`` is; :class:`UnknownAdapter` if the store holds none by that name."""

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self.locate(name)
        except UnknownAdapter:
            return False
        return True

    def describe(self, name: str) -> dict:
        return self.locate(name).describe()


def name_to_parts(name: str) -> list[str] | None:
    """``"a--b-c"`` -> ``["a", "b-c"]``; None for a string that is not a store name."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
        return None
    parts = name.split(SEPARATOR)
    return parts if all(_COMPONENT.match(p) for p in parts) else None


def parts_to_name(parts: list[str]) -> str | None:
    """The name of the adapter at relative path ``parts``; None where a component does not fit."""
    if not parts or not all(_COMPONENT.match(p) for p in parts):
        return None
    name = SEPARATOR.join(parts)
    return name if len(name) <= MAX_NAME_CHARS else None


class DirectoryStore(AdapterStore):
    """Every adapter directory (one holding ``adapter_config.json``) and fusion directory (``fusion_config.json``)
    under ``root``, a directory tree."""

    def __init__(self, root: str | os.PathLike):
        try:
            resolved = Path(root).resolve(strict=True)
        except (OSError, RuntimeError, ValueError) as e:
            raise ValueError(f"adapter store {root} cannot be opened ({e}); pass an existing directory") from None
        if not resolved.is_dir():
            raise ValueError(f"adapter store {root} is not a directory; pass the directory that holds the adapters")
        self.root = str(resolved)

    def __repr__(self) -> str:
        return f"DirectoryStore({self.root!r})"

    def locate(self, name: str) -> StoredAdapter:
        parts = name_to_parts(name)
        if parts is None:
            raise UnknownAdapter(f"{name!r} is not an adapter name (letters, digits, '_' and single '-'; "
                                 f"{SEPARATOR!r} between directories)")
        path = self.root
        for part in parts:  # lstat every step: no symlink anywhere on the way
            path = os.path.join(path, part)
            if not _is_real_dir(path):
                raise UnknownAdapter(f"the adapter store holds no adapter named {name!r}")
        kind = _entry_kind(path)
        if kind is None:
            raise UnknownAdapter(f"the adapter store holds no adapter named {name!r}")
        try:
            size = os.lstat(os.path.join(path, ENTRY_FILES[kind][1])).st_size
        except OSError:
            size = 0  # the load will say what is wrong
        return StoredAdapter(name, path, self.root, size, kind)

    def names(self) -> list[str]:
        out = []
        for top, dirs, files in os.walk(self.root, followlinks=False):
            rel = os.path.relpath(top, self.root)
            parts = [] if rel == "." else rel.split(os.sep)
            if parts and any(config in files for config, _ in ENTRY_FILES.values()):
                dirs[:] = []  # an adapter (or fusion) directory holds no further adapters
                name = parts_to_name(parts)
                if name is not None and _entry_kind(top) is not None:
                    out.append(name)
                continue
            # os.walk lists symlinks to directories in dirs but does not enter them; skip names that cannot
            # be addressed, so that the walk stays inside what locate() accepts.
            dirs[:] = sorted(d for d in dirs if _COMPONENT.match(d) and _is_real_dir(os.path.join(top, d)))
        return sorted(out)


def _entry_kind(path: str) -> str | None:
    """"adapter" or "fusion" for a directory holding that kind's config as a regular file (not a link), else None."""
    for kind, (config, _) in ENTRY_FILES.items():
        try:
            if stat.S_ISREG(os.lstat(os.path.join(path, config)).st_mode):
                return kind
        except OSError:
            continue
    return None


def _is_real_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except (OSError, ValueError):
        return False


__all__ = ["AdapterStore", "DirectoryStore", "StoredAdapter", "UnknownAdapter", "name_to_parts", "parts_to_name"]

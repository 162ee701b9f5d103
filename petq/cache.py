"""Content-addressed, crash-safe cache of variants, results and decoded images.

An entry is a folder `<root>/<kind>/<key>/` holding its files and a
`manifest.json` listing every file with its size (and sha256 for small files).
It is built in a temporary folder, manifest last, then renamed into place under
a file lock: two processes asking for one key build it once, a killed build
leaves nothing at the key, and an entry whose files do not match its manifest
is rebuilt, never served. The temp folder of a killed build (`<kind>/.tmp-<key>-*`)
is cleared when a Cache opens, once no builder holds the key's lock. A build that
finds the disk full ends in one DiskFullError naming the folder, and leaves nothing behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from petq.errors import DiskFullError

MANIFEST = "manifest.json"
HASHED_FILE_LIMIT = 64 * 1024 * 1024  # files above this are checked by size alone
STALE_TEMP_AGE = 300.0  # seconds: an unlocked temp folder older than this is a killed build's
TEMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"


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


def _create_unique(parent: Path, prefix: str, suffix: str, make: Callable[[Path], None]
                   ) -> Path:
    """Create `parent/<prefix><random><suffix>` with `make`, retrying on a name clash."""
    while True:
        path = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            make(path)
            return path
        except FileExistsError:
            continue


def _new_file(path: Path) -> None:
    # 0o666 through the umask, like open(path, "w"); tempfile.mkstemp would give 0600.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a file so readers see the old content or the new, never a partial one.

    The file gets the mode any new file gets under the process's umask.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_unique(path.parent, f".{path.name}.", ".tmp", _new_file)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
        self.clear_stale_temp()

    def entry_path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def lock(self, kind: str, key: str) -> FileLock:
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{kind}-{key}.lock"), timeout=self.lock_timeout)

    def held(self, kind: str, key: str) -> bool:
        """Is the entry's lock held by another process now (being built there)?"""
        try:
            lock = self.lock(kind, key)
            lock.acquire(timeout=0)
        except Timeout:
            return True
        except OSError:  # no lock can be taken here: nothing of ours is building it
            return False
        lock.release()
        return False

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
        tmp = _create_unique(parent, f"{TEMP_PREFIX}{key}-", "", lambda p: p.mkdir(0o777))
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
                trash = parent / f"{TRASH_PREFIX}{key}-{os.getpid()}-{time.time_ns()}"
                os.replace(target, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, target)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"no space left in {parent} for a {kind} entry "
                                f"({shutil.disk_usage(parent).free:,} bytes free once its "
                                "partial files went); free some space there, or give a cache "
                                "folder on a larger disk (--cache-dir, PETQ_CACHE)") from None
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

    def clear_stale_temp(self, max_age: float = STALE_TEMP_AGE) -> list[Path]:
        """Remove what killed builds left: temp folders whose key no builder has locked and
        that are older than `max_age` seconds, and old trash folders. Returns what went.

        A live builder holds its key's lock for as long as its temp folder exists, so its
        folder is never touched, however old.
        """
        removed: list[Path] = []
        try:
            kinds = [p for p in self.root.iterdir()
                     if p.is_dir() and not p.name.startswith(".") and p.name != "locks"]
        except OSError:  # no cache yet, or unreadable: nothing to clear
            return removed
        now = time.time()
        for parent in kinds:
            try:
                leftovers = [p for p in parent.iterdir()
                             if p.name.startswith((TEMP_PREFIX, TRASH_PREFIX))]
            except OSError:
                continue
            for path in leftovers:
                try:
                    old = now - path.lstat().st_mtime > max_age
                except OSError:
                    continue
                if not old:
                    continue
                if path.name.startswith(TRASH_PREFIX):  # only ever removed, never rebuilt
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
                    continue
                key = path.name[len(TEMP_PREFIX):].rsplit("-", 1)[0]
                try:
                    lock = self.lock(parent.name, key)
                    lock.acquire(timeout=0)
                except (Timeout, OSError):  # a live builder owns it, or no lock can be taken
                    continue
                try:
                    if path.exists():
                        shutil.rmtree(path, ignore_errors=True)
                        removed.append(path)
                finally:
                    lock.release()
        return removed

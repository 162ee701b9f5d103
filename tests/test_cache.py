"""Cache: hit, miss, corrupt entry rebuilt, killed build leaves nothing, concurrent builds,
a killed build's temp folder cleared (never a live builder's), file modes from the umask."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filelock import FileLock

from petq.cache import STALE_TEMP_AGE, Cache, write_bytes_atomic, write_json_atomic


def write_file(tmp: Path, text: str = "payload") -> dict:
    (tmp / "data.txt").write_text(text)
    return {"note": text}


def test_miss_then_hit(tmp_path):
    cache = Cache(tmp_path)
    calls = []

    def build(tmp):
        calls.append(1)
        return write_file(tmp)

    entry, built = cache.get_or_build("things", "k1", build)
    assert built and entry.file("data.txt").read_text() == "payload"
    entry2, built2 = cache.get_or_build("things", "k1", build)
    assert not built2 and entry2.manifest["note"] == "payload" and len(calls) == 1
    assert [e.path.name for e in cache.entries("things")] == ["k1"]


def test_corrupt_entry_is_rebuilt_not_served(tmp_path):
    cache = Cache(tmp_path)
    entry, _ = cache.get_or_build("things", "k", write_file)
    entry.file("data.txt").write_text("payloaX")  # same size, different bytes
    assert cache.get("things", "k") is None
    entry, built = cache.get_or_build("things", "k", lambda t: write_file(t, "fresh"))
    assert built and entry.file("data.txt").read_text() == "fresh"
    (entry.path / "manifest.json").write_text("{truncated")
    assert cache.get("things", "k") is None
    entry.file("data.txt").unlink()
    assert cache.get("things", "k") is None


def test_failed_build_leaves_nothing_and_keeps_other_entries(tmp_path):
    cache = Cache(tmp_path)
    cache.get_or_build("things", "good", write_file)

    def explode(tmp):
        (tmp / "half.bin").write_bytes(b"\0" * 100)
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        cache.get_or_build("things", "bad", explode)
    assert cache.get("things", "bad") is None
    assert not (tmp_path / "things" / "bad").exists()
    assert not [p for p in (tmp_path / "things").iterdir() if p.name.startswith(".tmp")]
    assert cache.get("things", "good") is not None


def _slow_build(root: str, log: str) -> None:
    def build(tmp):
        with open(log, "a") as handle:
            handle.write("built\n")
        time.sleep(1.0)
        return write_file(tmp)

    Cache(root).get_or_build("things", "shared", build)


def test_two_processes_build_once(tmp_path):
    log = tmp_path / "log.txt"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_slow_build, args=(str(tmp_path / "c"), str(log)))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert log.read_text().count("built") == 1
    manifest = json.loads((tmp_path / "c" / "things" / "shared" / "manifest.json").read_text())
    assert manifest["files"]["data.txt"]["size"] == len("payload")


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_stale_temp_folders_go_a_live_builders_stays(tmp_path):
    things = tmp_path / "things"
    (tmp_path / "locks").mkdir(parents=True)
    killed = things / ".tmp-k1-abcd1234"  # a killed build: old, its lock free
    live = things / ".tmp-k2-efgh5678"  # a long build still running: old, its lock held
    fresh = things / ".tmp-k3-ijkl9012"  # killed a moment ago: young, lock free
    trash = things / ".trash-k4-123-456"  # a corrupt entry a killed build was dropping
    for folder in (killed, live, fresh, trash):
        folder.mkdir(parents=True)
        (folder / "model.tflite").write_bytes(b"half")
    for folder in (killed, live, trash):
        age(folder, STALE_TEMP_AGE + 60)
    entry = things / "k5"
    entry.mkdir()
    age(entry, 10 * STALE_TEMP_AGE)  # entries are never touched
    with FileLock(str(tmp_path / "locks" / "things-k2.lock")):
        cache = Cache(tmp_path)
        assert not killed.exists() and not trash.exists()
        assert live.exists() and (live / "model.tflite").read_bytes() == b"half"
        assert fresh.exists() and entry.exists()
    assert cache.clear_stale_temp() == [live]  # its builder let go: now it goes


_BUILDER = """
import sys, time
from petq.cache import Cache
def build(tmp):
    (tmp / "data.txt").write_text("payload")
    print("building", flush=True)
    time.sleep(float(sys.argv[2]))
    return {}
Cache(sys.argv[1]).get_or_build("things", sys.argv[3], build)
print("built", flush=True)
"""


def _builder(root: Path, seconds: float, key: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", _BUILDER, str(root), str(seconds), key],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "building"
    return process


def test_a_sigkilled_build_is_cleared_a_concurrent_one_is_not(tmp_path):
    root = tmp_path / "c"
    victim = _builder(root, 60, "killed")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    alive = _builder(root, 3, "alive")
    try:
        temps = sorted(p.name.rsplit("-", 1)[0] for p in (root / "things").iterdir())
        assert temps == [".tmp-alive", ".tmp-killed"]  # the killed build left its folder
        removed = Cache(root).clear_stale_temp(max_age=0)
        assert [p.name.rsplit("-", 1)[0] for p in removed] == [".tmp-killed"]
        assert [p.name.rsplit("-", 1)[0] for p in (root / "things").iterdir()] == [".tmp-alive"]
        assert alive.stdout.readline().strip() == "built"  # the live build completed
        assert alive.wait(30) == 0
    finally:
        alive.kill()
        alive.wait()
    assert Cache(root).get("things", "alive").file("data.txt").read_text() == "payload"
    assert [p.name for p in (root / "things").iterdir()] == ["alive"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_bytes_atomic(tmp_path / "report.md", b"# report\n")
        write_json_atomic(tmp_path / "config.json", {"a": 1})
        entry, _ = Cache(tmp_path / "c").get_or_build("things", "k", write_file)
    finally:
        os.umask(previous)
    for path in (tmp_path / "report.md", tmp_path / "config.json", entry.file("manifest.json"),
                 entry.file("data.txt")):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert stat.S_IMODE(entry.path.stat().st_mode) == 0o777 & ~umask  # as os.mkdir makes it
    assert (tmp_path / "report.md").read_bytes() == b"# report\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

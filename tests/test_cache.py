"""Cache: hit, miss, corrupt entry rebuilt, killed build leaves nothing, concurrent builds."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from petq.cache import Cache


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

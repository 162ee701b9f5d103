"""Background jobs: a detached worker converts and evaluates, progress in a JSON file."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from petq.cache import write_json_atomic
from petq.errors import SpecError
from petq.jobs import (
    cancel_job,
    job_path,
    job_status,
    list_jobs,
    pid_alive,
    progress_fraction,
    run_job,
    stage_fraction,
    start_job,
)
from petq.types import VariantSpec
from petq.workspace import Workspace


def wait_for(cache, job_id, timeout=180.0):
    deadline = time.monotonic() + timeout
    seen_stages = set()
    while time.monotonic() < deadline:
        record = job_status(cache, job_id)
        if record["stage"]:
            seen_stages.add(record["stage"])
        if record["state"] not in ("queued", "running"):
            return record, seen_stages
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {record['state']} after {timeout} s")


@pytest.mark.slow
def test_job_converts_evaluates_and_caches(tiny_model, pet_root, tmp_path):
    cache = tmp_path / "cache"
    specs = [VariantSpec.fp32(), VariantSpec.int8(0.5, seed=7)]
    job_id = start_job(tiny_model, pet_root, cache, 1, specs, test_fraction=1.0)
    record, stages = wait_for(cache, job_id)
    assert record["state"] == "done", record
    assert [v["status"] for v in record["variants"]] == ["done", "done"]
    assert record["done"] == record["total"] == 2
    assert record["fraction"] == 1.0
    assert {"decode", "evaluate"} <= stages or record["stage"] is None
    ws = Workspace(tiny_model, pet_root, cache, threads=1)
    names = {r["variant"] for r in ws.results()}
    assert {"tflite-fp32", "tflite-int8-0.5-s7"} <= names
    assert {v["result_key"] for v in record["variants"]} == {
        r["result_key"] for r in ws.results()}
    assert len(list((cache / "figures").rglob("confusion.png"))) == 2  # the report's, drawn

    # Asking again: every spec is cached, reported done at once, no worker started.
    again = start_job(tiny_model, pet_root, cache, 1, specs, test_fraction=1.0)
    status = job_status(cache, again)
    assert status["state"] == "done" and status["pid"] is None
    assert all(v["cached"] for v in status["variants"])
    assert [j["id"] for j in list_jobs(cache)][:2] == [again, job_id]
    assert list_jobs(cache, active_only=True) == []


def test_a_spec_that_does_not_fit_starts_nothing(tiny_model, pet_root, tmp_path):
    with pytest.raises(SpecError, match="out of range"):
        start_job(tiny_model, pet_root, tmp_path, 1, [VariantSpec.imbint8((5,))])
    assert list_jobs(tmp_path) == []


def test_cancel_stops_the_worker(tiny_model, pet_root, tmp_path):
    job_id = start_job(tiny_model, pet_root, tmp_path, 1, [VariantSpec.fp32()])
    pid = job_status(tmp_path, job_id)["pid"]
    assert pid and pid_alive(pid)
    record = cancel_job(tmp_path, job_id)
    assert record["state"] == "cancelled"
    assert not pid_alive(pid)
    assert list_jobs(tmp_path, active_only=True) == []


def test_a_dead_worker_is_reported_failed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = job_path(tmp_path, "20000101-000000-abcdef")
    write_json_atomic(path, {
        "id": "20000101-000000-abcdef", "state": "running", "created": time.time(),
        "variants": [{"name": "tflite-fp32", "status": "running"}], "total": 1,
        "current": "tflite-fp32", "stage": "convert", "stage_done": 0, "stage_total": 1,
        "error": None, "pid": dead.pid,
    })
    record = job_status(tmp_path, "20000101-000000-abcdef")
    assert record["state"] == "failed"
    assert "ended unexpectedly" in record["error"]
    assert list_jobs(tmp_path, active_only=True) == []


def test_worker_reports_the_petq_error(tmp_path, pet_root):
    path = job_path(tmp_path, "20000101-000000-000001")
    write_json_atomic(path, {
        "id": "20000101-000000-000001", "state": "queued", "created": time.time(),
        "model_path": str(tmp_path / "missing.keras"), "dataset_root": str(pet_root),
        "cache_root": str(tmp_path), "threads": 1, "test_fraction": 1.0,
        "variants": [{"name": "tflite-fp32", "spec": VariantSpec.fp32().to_dict(),
                      "status": "queued"}],
        "total": 1, "current": None, "stage": None, "error": None, "pid": None,
    })
    assert run_job(path) == 1
    record = job_status(tmp_path, "20000101-000000-000001")
    assert record["state"] == "failed"
    assert "missing.keras: model file not found" in record["error"]


def test_progress_counts_variants_and_the_current_stage():
    record = {"state": "running", "total": 4, "current": "x", "stage_done": 5,
              "stage_total": 10, "variants": [{"status": "done"}, {"status": "running"},
                                              {"status": "queued"}, {"status": "queued"}]}
    assert progress_fraction(record) == 0.25
    assert stage_fraction(record) == 0.5
    assert stage_fraction({**record, "stage_total": 0}) == 0.0
    assert progress_fraction({**record, "state": "done"}) == 1.0


def test_bad_job_ids_are_refused(tmp_path):
    with pytest.raises(ValueError):
        job_path(tmp_path, "../etc/passwd")

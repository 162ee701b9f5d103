"""Background jobs: a detached worker converts and evaluates, progress in a JSON file.

One worker per cache at a time (a held lock keeps the others queued), liveness by pid and
create time, restart, pruning.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from petq.cache import write_json_atomic
from petq.errors import SpecError
from petq.jobs import (
    CONFIGS,
    Job,
    JobError,
    JobVariant,
    Status,
    cancel_job,
    job_path,
    job_status,
    list_jobs,
    pid_alive,
    process_alive,
    process_create_time,
    prune_jobs,
    read_job,
    restart_job,
    start_job,
    worker_lock,
)
from petq.types import CurveConfig, JobKind, ProfileConfig, Stage, TuneConfig, VariantSpec
from petq.worker import run_job
from petq.workspace import Workspace
from waiting import wait_until


def wait_for(cache, job_id, timeout=180.0):
    """The job once it ends, and every stage it was seen in on the way."""
    seen_stages = set()

    def ended():
        job = job_status(cache, job_id)
        if job.stage:
            seen_stages.add(job.stage)
        return not job.active and job

    job = wait_until(ended, timeout, message=lambda: f"job {job_id} "
                     f"still {job_status(cache, job_id).state.value}")
    return job, seen_stages


def raw(cache, job_id):
    """The job file as the worker wrote it (no liveness check)."""
    return read_job(job_path(cache, job_id))


def fake_job(cache, job_id, state=Status.RUNNING, age=0.0, **fields):
    """Write a job record by hand, as a worker of `fields['pid']` would have."""
    created = time.time() - age
    job = Job(id=job_id, model_path="m", dataset_root="d", cache_root=str(cache), threads=1,
              variants=[JobVariant("tflite-fp32", VariantSpec.fp32(), state)], state=state,
              created=created, updated=created,
              finished=None if state.active else created, **fields)
    path = job_path(cache, job_id)
    write_json_atomic(path, job.to_dict())
    return path


def waiting_worker(cache, job_id):
    """The job's record once its worker has reported and waits for the worker lock."""
    def check():
        job = raw(cache, job_id)
        return job if job.pid and job.stage is Stage.WAITING else None
    return wait_until(check, 30, message=f"job {job_id} waiting for its turn")


@pytest.mark.slow
def test_job_converts_evaluates_and_caches(tiny_model, pet_root, tmp_path):
    cache = tmp_path / "cache"
    specs = [VariantSpec.fp32(), VariantSpec.int8(0.5, seed=7)]
    job_id = start_job(tiny_model, pet_root, cache, 1, specs, test_fraction=1.0)
    job, stages = wait_for(cache, job_id)
    assert job.state is Status.DONE, job
    assert [v.status for v in job.variants] == [Status.DONE, Status.DONE]
    assert job.done == job.total == 2
    assert job.fraction == 1.0
    assert Stage.CONVERT in stages  # seen while it ran: the converter takes a second or more
    assert job.stage is None and job.current is None
    ws = Workspace(tiny_model, pet_root, cache, threads=1)
    names = {r.spec.name for r in ws.results()}
    assert {"tflite-fp32", "tflite-int8-0.5-s7"} <= names
    assert {v.result_key for v in job.variants} == {r.result_key for r in ws.results()}
    assert len(list((cache / "figures").rglob("confusion.png"))) == 2  # the report's, drawn
    on_disk = json.loads(job_path(cache, job_id).read_text())  # what other processes read
    assert on_disk["state"] == "done" and on_disk["variants"][0]["status"] == "done"
    assert Job.from_dict(on_disk).variants == job.variants

    # Asking again: every spec is cached, reported done at once, no worker started.
    again = start_job(tiny_model, pet_root, cache, 1, specs, test_fraction=1.0)
    status = job_status(cache, again)
    assert status.state is Status.DONE and status.pid is None
    assert all(v.cached for v in status.variants)
    assert [j.id for j in list_jobs(cache)][:2] == [again, job_id]
    assert list_jobs(cache, active_only=True) == []


@pytest.mark.slow
def test_two_real_jobs_run_one_after_the_other(tiny_model, pet_root, tmp_path):
    first = start_job(tiny_model, pet_root, tmp_path, 1, [VariantSpec.fp32()])
    wait_until(lambda: raw(tmp_path, first).state is Status.RUNNING, 30,
               message="the first job running")
    second = start_job(tiny_model, pet_root, tmp_path, 1, [VariantSpec.int8(0.5, seed=1)])
    job = wait_until(lambda: (j := raw(tmp_path, second)).stage_note == first and j, 30,
                     message="the second job naming the first")
    assert job.stage is Stage.WAITING and job.stage_text == f"waiting for job {first}"
    assert job_status(tmp_path, second).state is Status.QUEUED
    done_first, _ = wait_for(tmp_path, first)
    done_second, stages = wait_for(tmp_path, second)
    assert (done_first.state, done_second.state) == (Status.DONE, Status.DONE)
    assert done_first.finished <= done_second.started  # never both at work
    assert done_second.started - done_second.created > 1.0  # it did wait
    assert Stage.CONVERT in stages


def test_a_spec_that_does_not_fit_starts_nothing(tiny_model, pet_root, tmp_path):
    with pytest.raises(SpecError, match="out of range"):
        start_job(tiny_model, pet_root, tmp_path, 1, [VariantSpec.imbint8((5,))])
    assert list_jobs(tmp_path) == []


def test_cancel_stops_the_worker(tiny_model, pet_root, tmp_path):
    job_id = start_job(tiny_model, pet_root, tmp_path, 1, [VariantSpec.fp32()])
    pid = job_status(tmp_path, job_id).pid
    assert pid and pid_alive(pid)
    job = cancel_job(tmp_path, job_id)
    assert job.state is Status.CANCELLED
    assert not pid_alive(pid)
    assert list_jobs(tmp_path, active_only=True) == []


def test_the_pid_file_names_the_worker_by_pid_and_create_time(tiny_model, pet_root, tmp_path):
    with worker_lock(tmp_path):  # keeps the worker waiting: no conversion
        job_id = start_job(tiny_model, pet_root, tmp_path, 1, [VariantSpec.fp32()])
        side = json.loads(job_path(tmp_path, job_id).with_suffix(".pid").read_text())
        assert side["create_time"] == process_create_time(side["pid"])
        assert job_status(tmp_path, job_id).pid == side["pid"]
        job = waiting_worker(tmp_path, job_id)
        assert (job.pid, job.create_time) == (side["pid"], side["create_time"])
        cancel_job(tmp_path, job_id)


def test_a_reused_pid_is_not_the_worker(tmp_path):
    me, started = os.getpid(), process_create_time()
    assert process_alive(me, started)
    assert not process_alive(me, started - 3600.0)
    fake_job(tmp_path, "20000101-000000-000010", pid=me, create_time=started)
    assert job_status(tmp_path, "20000101-000000-000010").state is Status.RUNNING
    # The same live pid, but created at another time: another process got the pid.
    fake_job(tmp_path, "20000101-000000-000011", pid=me, create_time=started - 3600.0)
    job = job_status(tmp_path, "20000101-000000-000011")
    assert job.state is Status.FAILED
    assert "ended unexpectedly" in job.error
    saved = raw(tmp_path, "20000101-000000-000011")  # written down, not only reported
    assert saved.state is Status.FAILED and saved.finished
    assert [v.status for v in saved.variants] == [Status.FAILED]
    assert [j.id for j in list_jobs(tmp_path, active_only=True)] == ["20000101-000000-000010"]


def test_a_zombie_worker_is_dead(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        wait_until(lambda: process_create_time(child.pid) and not process_alive(child.pid),
                   30, message="the child turning zombie")  # ended, not reaped: a zombie
        assert process_create_time(child.pid) is not None
    finally:
        child.wait()
    assert process_create_time(child.pid) is None


def test_a_killed_worker_is_failed_at_once_and_restarts(tiny_model, pet_root, tmp_path):
    with worker_lock(tmp_path):  # the worker waits for its turn: nothing is converted
        job_id = start_job(tiny_model, pet_root, tmp_path, 1,
                           [VariantSpec.fp32(), VariantSpec.int8(0.5, seed=3)])
        pid = waiting_worker(tmp_path, job_id).pid
        assert job_status(tmp_path, job_id).state is Status.QUEUED
        with pytest.raises(JobError, match="still queued"):
            restart_job(tmp_path, job_id)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not process_alive(pid), 30, message="the killed worker gone")
        # Liveness is read from the pid, not from a heartbeat gone stale: the first status
        # read after the worker died already says failed.
        job = job_status(tmp_path, job_id)
        assert job.state is Status.FAILED
        assert "ended unexpectedly" in job.error
        assert [v.status for v in job.variants] == [Status.FAILED, Status.FAILED]

        again = restart_job(tmp_path, job_id)
        assert again != job_id
        fresh = job_status(tmp_path, again)
        assert fresh.state is Status.QUEUED and fresh.restart_of == job_id
        assert [v.name for v in fresh.variants] == ["tflite-fp32", "tflite-int8-0.5-s3"]
        assert [v.status for v in fresh.variants] == [Status.QUEUED, Status.QUEUED]
        assert (fresh.model_path, fresh.dataset_root, fresh.threads, fresh.test_fraction) == (
            job.model_path, job.dataset_root, job.threads, job.test_fraction)
        # A waiting worker can be cancelled too, and a cancelled job restarts.
        new_pid = waiting_worker(tmp_path, again).pid
        cancelled = cancel_job(tmp_path, again)
        assert cancelled.state is Status.CANCELLED
        assert not process_alive(new_pid)
        assert [v.status for v in cancelled.variants] == [Status.CANCELLED, Status.CANCELLED]
        third = restart_job(tmp_path, again)
        cancel_job(tmp_path, third)


def test_restart_refuses_unknown_and_finished_jobs(tmp_path):
    with pytest.raises(JobError, match="no such job"):
        restart_job(tmp_path, "20000101-000000-000020")
    fake_job(tmp_path, "20000101-000000-000021", state=Status.DONE)
    with pytest.raises(JobError, match="nothing to restart"):
        restart_job(tmp_path, "20000101-000000-000021")


def test_a_second_job_waits_while_the_first_runs(tiny_model, pet_root, tmp_path):
    # The first job: this process, running, holding the cache's worker lock.
    fake_job(tmp_path, "20000101-000000-000030", pid=os.getpid(),
             create_time=process_create_time(), stage=Stage.CONVERT)
    lock = worker_lock(tmp_path)
    lock.acquire()
    try:
        second = start_job(tiny_model, pet_root, tmp_path, 1, [VariantSpec.fp32()])
        job = waiting_worker(tmp_path, second)
        assert job.stage_text == "waiting for job 20000101-000000-000030"
        time.sleep(1.5)  # a few lock polls later, still waiting, still alive
        status = job_status(tmp_path, second)
        assert status.state is Status.QUEUED and process_alive(status.pid)
        assert status.started is None
        assert [j.state for j in list_jobs(tmp_path)] == [Status.QUEUED, Status.RUNNING]
    finally:
        lock.release()
    wait_until(lambda: raw(tmp_path, second).state is Status.RUNNING, 30,
               message="its turn after release")
    assert raw(tmp_path, second).started is not None
    assert cancel_job(tmp_path, second).state is Status.CANCELLED


def test_finished_jobs_are_pruned_active_ones_kept(tmp_path):
    day = 24 * 3600.0
    old = [f"20000101-000000-{n:06d}" for n in range(3)]
    recent = [f"20000102-000000-{n:06d}" for n in range(55)]
    for job_id in old:
        fake_job(tmp_path, job_id, state=Status.DONE, age=8 * day)
        job_path(tmp_path, job_id).with_suffix(".log").write_text("log")
        job_path(tmp_path, job_id).with_suffix(".pid").write_text("{}")
    for n, job_id in enumerate(recent):  # the first is the oldest
        fake_job(tmp_path, job_id, state=Status.FAILED if n % 2 else Status.DONE, age=day - n)
    active = "20000101-000000-999999"  # older than any, but running: never pruned
    fake_job(tmp_path, active, age=9 * day, pid=os.getpid(), create_time=process_create_time())
    orphan_old = job_path(tmp_path, "20000101-000000-aaaaaa").with_suffix(".log")
    orphan_new = job_path(tmp_path, "20000101-000000-bbbbbb").with_suffix(".log")
    killed_write = tmp_path / "jobs" / ".20000101-000000-cccccc.json.1a2b3c4d.tmp"
    for path in (orphan_old, orphan_new, killed_write):
        path.write_text("x")
    for path in (orphan_old, killed_write):
        os.utime(path, (time.time() - 8 * day,) * 2)

    ids = [j.id for j in list_jobs(tmp_path)]
    assert ids == recent[:4:-1] + [active]  # newest first: the 50 newest finished, the active
    left = {p.name for p in (tmp_path / "jobs").iterdir()}
    for job_id in old + recent[:5]:
        assert not {f"{job_id}.json", f"{job_id}.log", f"{job_id}.pid"} & left
    assert orphan_new.name in left
    assert orphan_old.name not in left and killed_write.name not in left
    assert prune_jobs(tmp_path) == []  # nothing more to prune
    assert prune_jobs(tmp_path, keep=10) == sorted(recent[5:45])
    assert {j.id for j in list_jobs(tmp_path)} == {active, *recent[45:]}


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
    job = job_status(tmp_path, "20000101-000000-abcdef")  # a record without specs, too
    assert job.state is Status.FAILED
    assert "ended unexpectedly" in job.error
    assert [(v.name, v.status, v.spec) for v in job.variants] == [
        ("tflite-fp32", Status.FAILED, None)]
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
    job = job_status(tmp_path, "20000101-000000-000001")
    assert job.state is Status.FAILED
    assert "missing.keras: model file not found" in job.error
    assert [v.status for v in job.variants] == [Status.FAILED]


def test_progress_counts_variants_and_the_current_stage():
    job = Job(id="x", model_path="m", dataset_root="d", cache_root="c", threads=1,
              variants=[JobVariant(n, VariantSpec.fp32(), s) for n, s in (
                  ("a", Status.DONE), ("b", Status.RUNNING), ("c", Status.FAILED),
                  ("d", Status.QUEUED))],
              state=Status.RUNNING, current="b", stage=Stage.CALIBRATE, stage_done=5,
              stage_total=10)
    assert (job.done, job.total) == (1, 4)
    assert job.fraction == 0.5  # done and failed are both finished
    assert job.stage_fraction == 0.5
    assert job.stage_text == "b: calibrating 5/10"
    job.stage = Stage.CONVERT  # one step: no count
    assert job.stage_text == "b: converting"
    job.stage_total = 0
    assert job.stage_fraction == 0.0
    job.stage, job.stage_note, job.current = Stage.RAY, "2 slot(s)", None
    job.stage_done, job.stage_total = 1, 4
    assert job.stage_text == "tasks finished on Ray 1/4, 2 slot(s)"
    job.finish(Status.CANCELLED)
    assert job.fraction == 1.0 and job.stage is None
    assert [v.status for v in job.variants] == [Status.DONE, Status.CANCELLED, Status.FAILED,
                                                Status.CANCELLED]
    assert Job.from_dict(json.loads(json.dumps(job.to_dict()))) == job


def test_every_stage_has_one_label():
    labels = [stage.label for stage in Stage]
    assert len(set(labels)) == len(labels) and all(labels)
    assert Stage("latency") is Stage.LATENCY and Stage.LATENCY.label == "measuring latency"


def test_bad_job_ids_are_refused(tmp_path):
    with pytest.raises(ValueError):
        job_path(tmp_path, "../etc/passwd")


def test_a_record_without_a_kind_reads_as_variants(tmp_path):
    """Records written before jobs had kinds list variants."""
    path = fake_job(tmp_path, "20000101-000000-000001", state=Status.DONE)
    data = json.loads(path.read_text())
    for name in ("kind", "config", "results_path", "lines"):
        data.pop(name)
    path.write_text(json.dumps(data))
    job = read_job(path)
    assert job.kind is JobKind.VARIANTS and job.config is None and job.lines == []
    assert [v.name for v in job.variants] == ["tflite-fp32"]
    assert job.title == "tflite-fp32"


@pytest.mark.parametrize("config", [
    TuneConfig(max_drop=0.02, objective="latency", guard_breeds=(1, 0), budget=3),
    CurveConfig(recipes=("tflite-int8", "aeq-wi8-ai8"), sizes=("8", "2", "all"), seeds=(3,)),
    ProfileConfig(VariantSpec.of("tflite-int8", 0.3, seed=5, exclude=("b_1",))),
])
def test_a_kind_and_its_config_round_trip_through_the_record(tmp_path, config):
    kind = next(k for k, c in CONFIGS.items() if isinstance(config, c))
    job = Job(id="20000101-000000-000002", model_path="m", dataset_root="d",
              cache_root=str(tmp_path), threads=1, kind=kind, config=config,
              results_path=str(tmp_path / "jobs" / "20000101-000000-000002"),
              lines=["one", "two"], stage=Stage.CANDIDATES, stage_done=1, stage_total=4,
              state=Status.RUNNING)
    path = job_path(tmp_path, job.id)
    path.parent.mkdir(parents=True)
    write_json_atomic(path, job.to_dict())
    again = read_job(path)
    assert again == job and again.config == config
    assert again.fraction == 0.25 and not again.todo()
    with pytest.raises(ValueError, match="needs a"):
        Job(id="x", model_path="m", dataset_root="d", cache_root="c", threads=1, kind=kind)


def test_a_pruned_task_job_takes_its_folder_with_it(tmp_path):
    config = TuneConfig(max_drop=0.1)
    job_id = "20000101-000000-000003"
    old = time.time() - 8 * 24 * 3600.0
    job = Job(id=job_id, model_path="m", dataset_root="d", cache_root=str(tmp_path), threads=1,
              state=Status.DONE, created=old, finished=old, kind=JobKind.TUNE, config=config)
    job_path(tmp_path, job_id).parent.mkdir(parents=True)
    write_json_atomic(job_path(tmp_path, job_id), job.to_dict())
    folder = job_path(tmp_path, job_id).with_suffix("")
    folder.mkdir()
    (folder / "tune.json").write_text("{}")
    assert prune_jobs(tmp_path) == [job_id]
    assert not folder.exists()

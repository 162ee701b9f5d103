"""Background jobs: convert and evaluate variants in a detached worker process.

The dashboard starts a job and returns at once; the worker (petq.worker, `python -m
petq.worker <job.json>`) calls `Workspace.evaluate` for each variant and writes its progress
atomically to `<cache>/jobs/<job_id>.json`, so any page, session or process can
follow it. A job outlives the page that started it; specs already cached are
reported done without starting a process. No streamlit here.

One worker converts/evaluates per cache at a time: a worker holds
`<cache>/jobs/.worker.lock` while it works, and a job whose worker waits for it stays
"queued". A job is alive while a process with its worker's pid AND psutil create time
exists (a reused pid is not the worker); a dead worker's job is marked failed on read.
Finished jobs' files are pruned (older than a week, beyond the newest 50).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
from filelock import FileLock

from petq.cache import write_json_atomic
from petq.errors import PetqError
from petq.types import VariantSpec

ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")
START_GRACE = 120.0  # a queued job whose worker never reported is failed after this
CREATE_TIME_TOLERANCE = 1.5  # s; psutil's create time is epoch-based: the boot time may shift
WORKER_LOCK = ".worker.lock"
PRUNE_AGE = 7 * 24 * 3600.0  # finished jobs older than this (seconds) are pruned
KEEP_FINISHED = 50  # at most this many finished jobs are kept, newest first
STALE_WRITE_AGE = 3600.0  # a write_json_atomic temp file this old was left by a killed writer
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class JobError(PetqError):
    """A job does not exist, or cannot be restarted in its state."""


def jobs_dir(cache_root: Path | str) -> Path:
    return Path(cache_root) / "jobs"


def job_path(cache_root: Path | str, job_id: str) -> Path:
    if not job_id or any(c in job_id for c in "/\\."):
        raise ValueError(f"bad job id {job_id!r}")
    return jobs_dir(cache_root) / f"{job_id}.json"


def worker_lock(cache_root: Path | str, timeout: float = -1) -> FileLock:
    """The lock a worker holds while it converts and evaluates: one worker per cache."""
    folder = jobs_dir(cache_root)
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / WORKER_LOCK), timeout=timeout)


def _new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def _result_key(result: Any) -> str | None:
    """A result's cache key, from a result record (attribute) or a plain dict."""
    if result is None:
        return None
    if isinstance(result, dict):
        return result.get("result_key")
    return getattr(result, "result_key", None)


def plan(ws: Any, specs: Sequence[VariantSpec], test_fraction: float = 1.0
         ) -> list[dict[str, Any]]:
    """What a job on `specs` would do: per spec, `cached`, `running` (in an active job),
    `to do`, or `skipped` with the reason (a spec that does not fit the dataset, e.g. a
    class index out of range).
    """
    running = {
        v["name"]
        for job in list_jobs(ws.cache.root, active_only=True)
        if job.get("test_fraction") == test_fraction
        and job.get("model_path") == str(Path(ws.model_path).resolve())
        and job.get("dataset_root") == str(Path(ws.dataset.root).resolve())
        for v in job["variants"] if v["status"] in ACTIVE
    }
    out = []
    for spec in dict.fromkeys(specs):
        item: dict[str, Any] = {"spec": spec, "name": spec.name, "reason": None}
        try:
            ws.calibration_samples(spec)
            if ws.cached_result(spec, test_fraction) is not None:
                item["status"] = "cached"
            else:
                item["status"] = "running" if spec.name in running else "to do"
        except PetqError as exc:
            item.update(status="skipped", reason=str(exc))
        out.append(item)
    return out


def start_job(
    model_path: Path | str,
    dataset_root: Path | str,
    cache_root: Path | str,
    threads: int | None,
    specs: Sequence[VariantSpec],
    test_fraction: float = 1.0,
    *,
    workspace: Any = None,
    restart_of: str | None = None,
    layers: bool = False,
    preprocessing: str | None = None,
    ray: str | None = None,
) -> str:
    """Start converting + evaluating `specs` (with `layers`, their per-layer quantization
    error too); return the job id at once. With `ray` (`local`, `auto` or host:port) the
    job sends them to Ray as a sweep (one task per variant, `petq.sweep.run_sweep`).

    The job stays "queued" while another job's worker holds the cache. Raises PetqError
    when the workspace or a spec is invalid (nothing started). Pass `workspace` to reuse
    an open Workspace on the same paths; `restart_of` names the job this one repeats.
    """
    from petq.workspace import Workspace

    ws = workspace or Workspace(model_path, dataset_root, cache_root, threads,
                                preprocessing=preprocessing)
    specs = list(dict.fromkeys(specs))
    if not specs:
        raise ValueError("a job needs at least one variant")
    if ray:
        if layers:
            raise JobError("per-layer statistics run on this machine, not on Ray")
        from petq.raysweep import resolve_ray_address

        if ray != "local":
            resolve_ray_address(ray)  # an address that does not answer fails here, at once
    variants = []
    for spec in specs:
        ws.calibration_samples(spec)  # raises SpecError for a class out of range
        cached = ws.cached_result(spec, test_fraction)
        done = cached is not None and (not layers or ws.cached_layer_stats(spec) is not None)
        variants.append({
            "name": spec.name, "spec": spec.to_dict(),
            "status": "done" if done else "queued", "cached": done,
            "result_key": _result_key(cached), "error": None,
        })
    prune_jobs(cache_root)
    job_id = _new_id()
    now = time.time()
    record: dict[str, Any] = {
        "id": job_id, "state": "queued", "created": now, "started": None, "finished": None,
        "updated": now, "model_path": str(Path(model_path).resolve()),
        "dataset_root": str(Path(dataset_root).resolve()),
        "cache_root": str(Path(cache_root).resolve()), "threads": ws.threads,
        "preprocessing": ws.contract.preprocessing, "layers": layers,
        "test_fraction": test_fraction, "variants": variants,
        "total": len(variants), "done": sum(v["status"] == "done" for v in variants),
        "current": None, "stage": None, "stage_done": 0, "stage_total": 0,
        "error": None, "pid": None, "create_time": None, "restart_of": restart_of,
        "ray": ray,
    }
    path = job_path(cache_root, job_id)
    if record["done"] == record["total"]:
        record.update(state="done", finished=now)
        write_json_atomic(path, record)
        return job_id
    write_json_atomic(path, record)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p
    )
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with open(path.with_suffix(".log"), "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "petq.worker", str(path)],
            cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    # Read before the reaper below can reap it: a worker that already ended stays a zombie.
    create_time = process_create_time(process.pid)
    # Reap the worker when it ends, so a crashed one does not linger as a zombie.
    threading.Thread(target=process.wait, daemon=True).start()
    write_json_atomic(path.with_suffix(".pid"), {"pid": process.pid, "create_time": create_time})
    return job_id


def restart_job(cache_root: Path | str, job_id: str, *, workspace: Any = None) -> str:
    """Start a fresh job for the variants of a failed or cancelled job that did not finish
    (same model, dataset, cache, threads and test fraction); return the new job's id.

    Raises JobError for an unknown job, a job still queued or running, or one with nothing
    left to do.
    """
    record = job_status(cache_root, job_id)
    if record is None:
        raise JobError(f"{job_path(cache_root, job_id)}: no such job")
    if record["state"] in ACTIVE:
        raise JobError(f"job {job_id} is still {record['state']}: cancel it or let it finish "
                       "before restarting it")
    todo = [v for v in record.get("variants", []) if v.get("status") != "done"]
    if record["state"] == "done" or not todo:
        raise JobError(f"job {job_id} finished every variant: nothing to restart")
    missing = [v.get("name", "?") for v in todo if not v.get("spec")]
    if missing:
        raise JobError(f"job {job_id}: no spec recorded for {', '.join(missing)}")
    specs = [VariantSpec.from_dict(v["spec"]) for v in todo]
    return start_job(record["model_path"], record["dataset_root"], cache_root,
                     record.get("threads"), specs, record.get("test_fraction", 1.0),
                     workspace=workspace, restart_of=job_id, layers=bool(record.get("layers")),
                     preprocessing=record.get("preprocessing"), ray=record.get("ray"))


def read_job(path: Path) -> dict[str, Any] | None:
    for _ in range(3):
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            time.sleep(0.05)
    return None


def _worker_of(path: Path, record: dict[str, Any]) -> tuple[int | None, float | None]:
    """(pid, create time) of the job's worker: the worker's own record, else the .pid file
    start_job wrote (a bare pid in files of older versions)."""
    if record.get("pid"):
        return int(record["pid"]), record.get("create_time")
    try:
        text = path.with_suffix(".pid").read_text()
    except OSError:
        return None, None
    try:
        data = json.loads(text)
    except ValueError:
        return None, None
    if isinstance(data, int):
        return data, None
    if isinstance(data, dict) and data.get("pid"):
        return int(data["pid"]), data.get("create_time")
    return None, None


def process_create_time(pid: int | None = None) -> float | None:
    """psutil's create time of process `pid` (this process by default); None if it is gone."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def process_alive(pid: int, create_time: float | None = None) -> bool:
    """Whether process `pid` runs and is the one created at `create_time` (a zombie, or a
    later process that reuses the pid, counts as dead). Without `create_time`, the pid alone
    decides, as records of older versions only have that."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        if create_time is None:
            return True
        return abs(process.create_time() - float(create_time)) <= CREATE_TIME_TOLERANCE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # someone else's process with that pid: not our worker
        return create_time is None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs (a zombie counts as dead); see process_alive."""
    return process_alive(pid)


def worker_alive(record: dict[str, Any]) -> bool:
    pid = record.get("pid")
    if pid:
        return process_alive(pid, record.get("create_time"))
    return time.time() - record.get("created", 0) <= START_GRACE


def _mark_dead(path: Path) -> dict[str, Any] | None:
    """Record that the job's worker died: the job and its unfinished variants failed."""
    record = read_job(path)  # it may have finished just now
    if record is None or record["state"] not in ACTIVE:
        return record
    error = "the worker process ended unexpectedly; see " + str(path.with_suffix(".log"))
    for variant in record.get("variants", []):
        if variant.get("status") in ACTIVE:
            variant.update(status="failed", error=variant.get("error") or error)
    now = time.time()
    record.update(state="failed", error=record.get("error") or error, finished=now,
                  updated=now, current=None, stage=None)
    try:
        write_json_atomic(path, record)
    except OSError:  # a read-only jobs folder: report the failure all the same
        pass
    return record


def job_status(cache_root: Path | str, job_id: str) -> dict[str, Any] | None:
    """The job's record, or None. An active job whose worker died is marked failed."""
    path = job_path(cache_root, job_id)
    record = read_job(path)
    if record is None:
        return None
    record["pid"], record["create_time"] = _worker_of(path, record)
    if record["state"] in ACTIVE and not worker_alive(record):
        dead = _mark_dead(path)
        if dead is not None:
            dead["pid"], dead["create_time"] = record["pid"], record["create_time"]
            record = dead
    record["fraction"] = progress_fraction(record)
    record["stage_fraction"] = stage_fraction(record)
    return record


def _statuses(cache_root: Path | str) -> list[dict[str, Any]]:
    folder = jobs_dir(cache_root)
    if not folder.is_dir():
        return []
    records = []
    for path in folder.glob("*.json"):
        if path.name.startswith("."):
            continue
        record = job_status(cache_root, path.stem)
        if record is not None:
            records.append(record)
    records.sort(key=lambda r: r.get("created", 0), reverse=True)
    return records


def _prune(cache_root: Path | str, records: list[dict[str, Any]], max_age: float, keep: int
           ) -> set[str]:
    """Delete the files of finished jobs beyond the newest `keep` or older than `max_age`,
    files of no job older than `max_age`, and temp files of killed writes."""
    folder = jobs_dir(cache_root)
    now = time.time()
    finished = [r for r in records if r["state"] in FINISHED]  # records: newest first
    gone = {r["id"] for r in finished[keep:]}
    gone |= {r["id"] for r in finished
             if now - (r.get("finished") or r.get("updated") or r.get("created") or now)
             > max_age}
    known = {r["id"] for r in records} - gone
    for job_id in gone:
        for suffix in (".json", ".log", ".pid"):
            job_path(cache_root, job_id).with_suffix(suffix).unlink(missing_ok=True)
    try:
        leftovers = list(folder.iterdir())
    except OSError:
        return gone
    for path in leftovers:
        if path.name == WORKER_LOCK or path.stem in known:
            continue
        leftover_write = path.name.startswith(".") and path.name.endswith(".tmp")
        orphan = not path.name.startswith(".") and path.suffix in (".json", ".log", ".pid")
        try:
            age = now - path.stat().st_mtime
        except OSError:
            continue
        if (leftover_write and age > STALE_WRITE_AGE) or (orphan and age > max_age):
            path.unlink(missing_ok=True)
    return gone


def prune_jobs(cache_root: Path | str, max_age: float = PRUNE_AGE, keep: int = KEEP_FINISHED
               ) -> list[str]:
    """Delete finished jobs' files (.json, .log, .pid) older than `max_age` seconds or beyond
    the newest `keep`; active jobs are never touched. Returns the ids pruned."""
    return sorted(_prune(cache_root, _statuses(cache_root), max_age, keep))


def list_jobs(cache_root: Path | str, active_only: bool = False) -> list[dict[str, Any]]:
    """Every job under the cache, newest first (old finished jobs are pruned first)."""
    records = _statuses(cache_root)
    gone = _prune(cache_root, records, PRUNE_AGE, KEEP_FINISHED)
    return [r for r in records
            if r["id"] not in gone and (not active_only or r["state"] in ACTIVE)]


def find_active(
    cache_root: Path | str, variant: str, test_fraction: float,
    model_path: Path | str | None = None, dataset_root: Path | str | None = None,
) -> dict[str, Any] | None:
    """A running or queued job that is converting/evaluating `variant`, if any."""
    for job in list_jobs(cache_root, active_only=True):
        if job.get("test_fraction") != test_fraction:
            continue
        if model_path and job.get("model_path") != str(Path(model_path).resolve()):
            continue
        if dataset_root and job.get("dataset_root") != str(Path(dataset_root).resolve()):
            continue
        if any(v["name"] == variant and v["status"] in ACTIVE for v in job["variants"]):
            return job
    return None


def cancel_job(cache_root: Path | str, job_id: str, wait: float = 5.0) -> dict[str, Any] | None:
    """Stop a job's worker (its whole process group), running or waiting for its turn, and
    mark the job cancelled."""
    path = job_path(cache_root, job_id)
    record = job_status(cache_root, job_id)
    if record is None or record["state"] not in ACTIVE:
        return record
    pid, create_time = record.get("pid"), record.get("create_time")
    if pid and process_alive(pid, create_time):
        for sig, patience in ((signal.SIGTERM, wait), (signal.SIGKILL, 2.0)):
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            deadline = time.monotonic() + patience
            while process_alive(pid, create_time) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not process_alive(pid, create_time):
                break
    record = read_job(path) or record
    if record["state"] in ACTIVE:
        for variant in record["variants"]:
            if variant["status"] in ACTIVE:
                variant["status"] = "cancelled"
        now = time.time()
        record.update(state="cancelled", finished=now, updated=now, current=None, stage=None)
        write_json_atomic(path, record)
    return job_status(cache_root, job_id)


def progress_fraction(record: dict[str, Any]) -> float:
    """Overall progress in [0, 1]: the share of variants finished (never goes back)."""
    if record.get("state") == "done":
        return 1.0
    total = max(1, int(record.get("total") or 0))
    return sum(v["status"] in FINISHED for v in record.get("variants", [])) / total


def stage_fraction(record: dict[str, Any]) -> float:
    """Progress of the current stage (decode, calibrate, evaluate...) in [0, 1]."""
    total = record.get("stage_total") or 0
    return min(1.0, (record.get("stage_done") or 0) / total) if total else 0.0

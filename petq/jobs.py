"""Background jobs: convert and evaluate variants, tune, or draw a calibration curve, in a
detached worker process.

The dashboard starts a job and returns at once; the worker (petq.worker, `python -m
petq.worker <job.json>`) converts and evaluates each variant and writes its progress
atomically to `<cache>/jobs/<job_id>.json`, so any page, session or process can follow it.
That file is a `Job` (`Job.to_dict`); it is written and read only through `Job`. A job
outlives the page that started it; specs already cached are reported done without starting
a process. No streamlit here.

One worker converts/evaluates per cache at a time: a worker holds
`<cache>/jobs/.worker.lock` while it works, and a job whose worker waits for it stays
queued. A job's `kind` says what it runs (`JobKind`): a list of variants, a tune
(`TuneConfig`), a calibration curve (`CurveConfig`) or a range profile (`ProfileConfig`);
tunes and curves write their files into the job's own folder, `<cache>/jobs/<job_id>/`,
pruned with the job.

A job is alive while a process with its worker's pid AND psutil create time exists (a
reused pid is not the worker); a dead worker's job is marked failed on read.
Finished jobs' files are pruned (older than a week, beyond the newest 50).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

import psutil
from filelock import FileLock

from petq.cache import write_json_atomic
from petq.errors import PetqError
from petq.types import CurveConfig, JobKind, ProfileConfig, Stage, TuneConfig, VariantSpec

START_GRACE = 120.0  # a queued job whose worker never reported is failed after this
CREATE_TIME_TOLERANCE = 1.5  # s; psutil's create time is epoch-based: the boot time may shift
WORKER_LOCK = ".worker.lock"
PRUNE_AGE = 7 * 24 * 3600.0  # finished jobs older than this (seconds) are pruned
KEEP_FINISHED = 50  # at most this many finished jobs are kept, newest first
STALE_WRITE_AGE = 3600.0  # a write_json_atomic temp file this old was left by a killed writer
PROJECT_ROOT = Path(__file__).resolve().parent.parent
KEPT_LINES = 200  # a job's `lines`: the last this many
CONFIGS: dict[JobKind, type] = {JobKind.TUNE: TuneConfig, JobKind.CURVE: CurveConfig,
                                JobKind.PROFILE: ProfileConfig}


class Status(str, Enum):
    """Where a job, or one variant of it, stands."""

    QUEUED = "queued"  # waiting for its worker, or for its turn on the cache
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        return self in (Status.QUEUED, Status.RUNNING)


@dataclass
class JobVariant:
    """One variant of a job. `spec` is None when the record holds none (or an unreadable one:
    `error` says why); `cached`: it was in the cache when the job started."""

    name: str
    spec: VariantSpec | None
    status: Status = Status.QUEUED
    cached: bool = False
    result_key: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "spec": self.spec.to_dict() if self.spec else None,
                "status": self.status.value, "cached": self.cached,
                "result_key": self.result_key, "error": self.error}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobVariant:
        spec, error = None, data.get("error")
        if data.get("spec"):
            try:
                spec = VariantSpec.from_dict(data["spec"])
            except (PetqError, KeyError, TypeError, ValueError) as exc:
                error = error or f"unreadable spec: {exc}"
        return cls(name=str(data.get("name") or (spec.name if spec else "?")), spec=spec,
                   status=Status(data.get("status") or Status.QUEUED),
                   cached=bool(data.get("cached")), result_key=data.get("result_key"),
                   error=error)


@dataclass
class Job:
    """A background job's record: what it converts and evaluates, where, and how far it got.

    `stage` is what the worker does now (for `current`, the variant(s) at work), with
    `stage_done` of `stage_total` steps; `stage_note` adds what the stage alone cannot say
    (the job waited for, the Ray slots). `pid` and `create_time` name the worker process.
    `kind` says what the job runs; a TUNE, CURVE or PROFILE job holds its `config` (the
    first two write their files into `results_path`), and `lines` keeps what its worker
    said, last lines last.
    """

    id: str
    model_path: str
    dataset_root: str
    cache_root: str
    threads: int | None
    test_fraction: float = 1.0
    variants: list[JobVariant] = field(default_factory=list)
    state: Status = Status.QUEUED
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    updated: float | None = None
    preprocessing: str | None = None
    layers: bool = False
    ray: str | None = None
    restart_of: str | None = None
    current: str | None = None
    stage: Stage | None = None
    stage_note: str | None = None
    stage_done: int = 0
    stage_total: int = 0
    error: str | None = None
    pid: int | None = None
    create_time: float | None = None
    kind: JobKind = JobKind.VARIANTS
    config: TuneConfig | CurveConfig | ProfileConfig | None = None
    results_path: str | None = None
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        expected = CONFIGS.get(self.kind)
        if expected is not None and not isinstance(self.config, expected):
            raise ValueError(f"a {self.kind.value} job needs a {expected.__name__}, got "
                             f"{type(self.config).__name__}")

    @property
    def title(self) -> str:
        """What the job runs, in a few words."""
        if isinstance(self.config, TuneConfig):
            c = self.config
            unit = "%" if c.relative else " pts"
            return (f"tune: {c.metric} drop below {100 * c.max_drop:g}{unit} at "
                    f"{c.confidence:.0%}, smallest {c.objective}, budget {c.budget}")
        if isinstance(self.config, CurveConfig):
            c = self.config
            return (f"calibration curve: {', '.join(c.recipes)}; sizes "
                    f"{' '.join(c.sizes) if c.sizes else 'default'}; seeds "
                    f"{' '.join(map(str, c.seeds))}")
        if isinstance(self.config, ProfileConfig):
            return f"range profile: the calibration images of {self.config.spec.name}"
        return ", ".join(v.name for v in self.variants)

    def say(self, line: str) -> None:
        """Keep a line of what the worker did (the last KEPT_LINES)."""
        self.lines = [*self.lines, line][-KEPT_LINES:]

    @property
    def total(self) -> int:
        return len(self.variants)

    @property
    def done(self) -> int:
        """Variants done (evaluated, or in the cache already)."""
        return sum(v.status is Status.DONE for v in self.variants)

    @property
    def active(self) -> bool:
        return self.state.active

    @property
    def fraction(self) -> float:
        """Overall progress in [0, 1]: the share of variants finished (never goes back)."""
        if self.state is Status.DONE:
            return 1.0
        if self.kind is not JobKind.VARIANTS:
            return self.stage_fraction if self.stage in (Stage.CANDIDATES, Stage.CELLS,
                                                         Stage.PROFILE) else 0.0
        return sum(not v.status.active for v in self.variants) / max(1, self.total)

    @property
    def stage_fraction(self) -> float:
        """Progress of the current stage (decode, calibrate, evaluate...) in [0, 1]."""
        return min(1.0, self.stage_done / self.stage_total) if self.stage_total else 0.0

    @property
    def stage_text(self) -> str:
        """`tflite-int8-0.3: calibrating 3/12`, `waiting for job <id>`..."""
        if self.stage is Stage.WAITING and self.stage_note:
            return f"waiting for job {self.stage_note}"
        stage = self.stage or Stage.START
        text = stage.label
        if stage.counted and self.stage_total:
            text += f" {self.stage_done}/{self.stage_total}"
        if self.stage_note:
            text += f", {self.stage_note}"
        return f"{self.current}: {text}" if self.current else text

    def todo(self) -> list[JobVariant]:
        """The variants not done yet."""
        return [v for v in self.variants if v.status is not Status.DONE]

    @property
    def restartable(self) -> bool:
        """A failed or cancelled job with work left (`restart_job`)."""
        return self.state in (Status.FAILED, Status.CANCELLED) and (
            self.kind is not JobKind.VARIANTS or bool(self.todo()))

    def finish(self, state: Status, error: str | None = None) -> None:
        """End the job in `state`: its unfinished variants end so too (keeping their own
        errors), with `error` where they have none."""
        now = time.time()
        for variant in self.variants:
            if variant.status.active:
                variant.status = state
                if state is Status.FAILED:
                    variant.error = variant.error or error
        self.state, self.finished, self.updated = state, now, now
        self.error = self.error or error
        self.current, self.stage, self.stage_note = None, None, None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(variants=[v.to_dict() for v in self.variants], state=self.state.value,
                   stage=self.stage.value if self.stage else None, kind=self.kind.value,
                   config=self.config.to_dict() if self.config else None)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        """A record as written by `to_dict` (older records' missing fields take defaults:
        one without a kind lists variants)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["variants"] = [JobVariant.from_dict(v) for v in data.get("variants") or []]
        values["state"] = Status(data.get("state") or Status.QUEUED)
        values["stage"] = Stage(data["stage"]) if data.get("stage") else None
        kind = values["kind"] = JobKind(data.get("kind") or JobKind.VARIANTS)
        config = data.get("config")
        values["config"] = CONFIGS[kind].from_dict(config) if kind in CONFIGS else None
        values["lines"] = [str(line) for line in data.get("lines") or []]
        return cls(**{"model_path": "", "dataset_root": "", "cache_root": "", "threads": None,
                      **values})


class PlanStatus(str, Enum):
    """What a job on a spec would do (`plan`)."""

    CACHED = "cached"
    RUNNING = "running"  # in an active job already
    TODO = "to do"
    SKIPPED = "skipped"  # does not fit the dataset: `PlanItem.reason` says why


@dataclass(frozen=True)
class PlanItem:
    spec: VariantSpec
    status: PlanStatus
    reason: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name


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


def plan(ws: Any, specs: Sequence[VariantSpec], test_fraction: float = 1.0) -> list[PlanItem]:
    """What a job on `specs` would do with each: cached, running (in an active job), to do,
    or skipped with the reason (a spec that does not fit the dataset, e.g. a class index out
    of range)."""
    model, dataset = str(Path(ws.model_path).resolve()), str(Path(ws.dataset.root).resolve())
    running = {
        v.name
        for job in list_jobs(ws.cache.root, active_only=True)
        if job.test_fraction == test_fraction and job.model_path == model
        and job.dataset_root == dataset
        for v in job.variants if v.status.active
    }
    out = []
    for spec in dict.fromkeys(specs):
        try:
            ws.check(spec)
        except PetqError as exc:
            out.append(PlanItem(spec, PlanStatus.SKIPPED, str(exc)))
            continue
        if ws.cached_result(spec, test_fraction) is not None:
            out.append(PlanItem(spec, PlanStatus.CACHED))
        else:
            out.append(PlanItem(spec, PlanStatus.RUNNING if spec.name in running
                                else PlanStatus.TODO))
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

    The job stays queued while another job's worker holds the cache. Raises PetqError
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
        ws.check(spec)  # a SpecError for what this model or dataset cannot make
        cached = ws.cached_result(spec, test_fraction)
        done = cached is not None and (not layers or ws.cached_layer_stats(spec) is not None)
        variants.append(JobVariant(spec.name, spec, Status.DONE if done else Status.QUEUED,
                                   cached=done, result_key=cached.result_key if cached else None))
    prune_jobs(cache_root)
    now = time.time()
    job = Job(
        id=_new_id(), model_path=str(Path(model_path).resolve()),
        dataset_root=str(Path(dataset_root).resolve()),
        cache_root=str(Path(cache_root).resolve()), threads=ws.threads,
        test_fraction=test_fraction, variants=variants, created=now, updated=now,
        preprocessing=ws.contract.preprocessing, layers=layers, ray=ray, restart_of=restart_of,
    )
    path = job_path(cache_root, job.id)
    if not job.todo():
        job.finish(Status.DONE)
        write_job(path, job)
        return job.id
    return _launch(path, job)


def start_task_job(ws: Any, config: TuneConfig | CurveConfig | ProfileConfig, *,
                   test_fraction: float = 1.0, ray: str | None = None,
                   restart_of: str | None = None) -> str:
    """Start a tune (`TuneConfig`), a calibration curve (`CurveConfig`) or a range profile
    (`ProfileConfig`) on the open workspace `ws` in a worker; return the job id at once.
    Its files go to the job's folder (`Job.results_path`). The faces check the config
    against the dataset first (petq.tunerun, petq.curve, petq.outliers); `ray` sends its
    variants to Ray as a sweep would (a profile runs on the worker itself)."""
    kind = next(k for k, c in CONFIGS.items() if isinstance(config, c))
    if ray and ray != "local":
        from petq.raysweep import resolve_ray_address

        resolve_ray_address(ray)
    prune_jobs(ws.cache.root)
    now = time.time()
    job_id = _new_id()
    path = job_path(ws.cache.root, job_id)
    job = Job(
        id=job_id, model_path=str(Path(ws.model_path).resolve()),
        dataset_root=str(Path(ws.dataset.root).resolve()),
        cache_root=str(Path(ws.cache.root).resolve()), threads=ws.threads,
        test_fraction=test_fraction, created=now, updated=now,
        preprocessing=ws.contract.preprocessing, ray=ray, restart_of=restart_of, kind=kind,
        config=config, results_path=str(path.with_suffix("").resolve()),
    )
    return _launch(path, job)


def _launch(path: Path, job: Job) -> str:
    """Write the job's record and start its worker, detached; return its id."""
    write_job(path, job)
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
    return job.id


def restart_job(cache_root: Path | str, job_id: str, *, workspace: Any = None) -> str:
    """Start a fresh job for the variants of a failed or cancelled job that did not finish
    (same model, dataset, cache, threads and test fraction); return the new job's id.

    Raises JobError for an unknown job, a job still queued or running, or one with nothing
    left to do.
    """
    job = job_status(cache_root, job_id)
    if job is None:
        raise JobError(f"{job_path(cache_root, job_id)}: no such job")
    if job.active:
        raise JobError(f"job {job_id} is still {job.state.value}: cancel it or let it finish "
                       "before restarting it")
    if job.kind is not JobKind.VARIANTS:
        if job.state is Status.DONE:
            raise JobError(f"job {job_id} is done: nothing to restart")
        from petq.workspace import Workspace

        ws = workspace or Workspace(job.model_path, job.dataset_root, cache_root, job.threads,
                                    preprocessing=job.preprocessing)
        return start_task_job(ws, job.config, test_fraction=job.test_fraction, ray=job.ray,
                              restart_of=job_id)
    todo = job.todo()
    if job.state is Status.DONE or not todo:
        raise JobError(f"job {job_id} finished every variant: nothing to restart")
    missing = [v.name for v in todo if v.spec is None]
    if missing:
        raise JobError(f"job {job_id}: no spec recorded for {', '.join(missing)}")
    return start_job(job.model_path, job.dataset_root, cache_root, job.threads,
                     [v.spec for v in todo], job.test_fraction, workspace=workspace,
                     restart_of=job_id, layers=job.layers, preprocessing=job.preprocessing,
                     ray=job.ray)


def write_job(path: Path, job: Job) -> None:
    """Write the record atomically (readers never see half of it)."""
    write_json_atomic(path, job.to_dict())


def read_job(path: Path) -> Job | None:
    """The record at `path` as written (no liveness check), or None when there is none or
    it cannot be read."""
    for _ in range(3):
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            time.sleep(0.05)
            continue
        try:
            return Job.from_dict(data)
        except (KeyError, TypeError, ValueError, PetqError):  # not a record petq wrote
            return None
    return None


def _worker_of(path: Path, job: Job) -> tuple[int | None, float | None]:
    """(pid, create time) of the job's worker: the worker's own record, else the .pid file
    start_job wrote (a bare pid in files of older versions)."""
    if job.pid:
        return int(job.pid), job.create_time
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


def worker_alive(job: Job) -> bool:
    if job.pid:
        return process_alive(job.pid, job.create_time)
    return time.time() - job.created <= START_GRACE


def _mark_dead(path: Path) -> Job | None:
    """Record that the job's worker died: the job and its unfinished variants failed."""
    job = read_job(path)  # it may have finished just now
    if job is None or not job.active:
        return job
    job.finish(Status.FAILED, "the worker process ended unexpectedly; see "
               + str(path.with_suffix(".log")))
    try:
        write_job(path, job)
    except OSError:  # a read-only jobs folder: report the failure all the same
        pass
    return job


def job_status(cache_root: Path | str, job_id: str) -> Job | None:
    """The job's record, or None. An active job whose worker died is marked failed."""
    path = job_path(cache_root, job_id)
    job = read_job(path)
    if job is None:
        return None
    job.pid, job.create_time = _worker_of(path, job)
    if job.active and not worker_alive(job):
        dead = _mark_dead(path)
        if dead is not None:
            dead.pid, dead.create_time = job.pid, job.create_time
            job = dead
    return job


def _statuses(cache_root: Path | str) -> list[Job]:
    folder = jobs_dir(cache_root)
    if not folder.is_dir():
        return []
    jobs = []
    for path in folder.glob("*.json"):
        if path.name.startswith("."):
            continue
        job = job_status(cache_root, path.stem)
        if job is not None:
            jobs.append(job)
    jobs.sort(key=lambda j: j.created, reverse=True)
    return jobs


def _prune(cache_root: Path | str, jobs: list[Job], max_age: float, keep: int) -> set[str]:
    """Delete the files of finished jobs beyond the newest `keep` or older than `max_age`,
    files of no job older than `max_age`, and temp files of killed writes."""
    folder = jobs_dir(cache_root)
    now = time.time()
    finished = [j for j in jobs if not j.active]  # jobs: newest first
    gone = {j.id for j in finished[keep:]}
    gone |= {j.id for j in finished
             if now - (j.finished or j.updated or j.created or now) > max_age}
    known = {j.id for j in jobs} - gone
    for job_id in gone:
        for suffix in (".json", ".log", ".pid"):
            job_path(cache_root, job_id).with_suffix(suffix).unlink(missing_ok=True)
        shutil.rmtree(job_path(cache_root, job_id).with_suffix(""), ignore_errors=True)
    try:
        leftovers = list(folder.iterdir())
    except OSError:
        return gone
    for path in leftovers:
        if path.name == WORKER_LOCK or path.stem in known:
            continue
        leftover_write = path.name.startswith(".") and path.name.endswith(".tmp")
        orphan = not path.name.startswith(".") and (
            path.suffix in (".json", ".log", ".pid") or path.is_dir())
        try:
            age = now - path.stat().st_mtime
        except OSError:
            continue
        if (leftover_write and age > STALE_WRITE_AGE) or (orphan and age > max_age):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return gone


def prune_jobs(cache_root: Path | str, max_age: float = PRUNE_AGE, keep: int = KEEP_FINISHED
               ) -> list[str]:
    """Delete finished jobs' files (.json, .log, .pid, their folder) older than `max_age`
    seconds or beyond the newest `keep`; active jobs are never touched. Returns the ids pruned."""
    return sorted(_prune(cache_root, _statuses(cache_root), max_age, keep))


def list_jobs(cache_root: Path | str, active_only: bool = False) -> list[Job]:
    """Every job under the cache, newest first (old finished jobs are pruned first)."""
    jobs = _statuses(cache_root)
    gone = _prune(cache_root, jobs, PRUNE_AGE, KEEP_FINISHED)
    return [j for j in jobs if j.id not in gone and (not active_only or j.active)]


def cancel_job(cache_root: Path | str, job_id: str, wait: float = 5.0) -> Job | None:
    """Stop a job's worker (its whole process group), running or waiting for its turn, and
    mark the job cancelled."""
    path = job_path(cache_root, job_id)
    job = job_status(cache_root, job_id)
    if job is None or not job.active:
        return job
    pid, create_time = job.pid, job.create_time
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
    job = read_job(path) or job
    if job.active:
        job.finish(Status.CANCELLED)
        write_job(path, job)
    return job_status(cache_root, job_id)

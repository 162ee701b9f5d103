"""The job worker: `python -m petq.worker <job.json>`, started by `petq.jobs.start_job`.

It waits for its cache's worker lock (one worker per cache), then runs the job by its
kind, writing its progress into the job record (petq.jobs) as it goes: a VARIANTS job
converts and evaluates each queued variant, in this process or as a sweep on Ray; a TUNE
job runs petq.tune.tune (progress per candidate) and a CURVE job
petq.curve.calibration_curve (progress per cell), each on the sweep engine (a local
process pool, or Ray), and both write their files into the job's `results_path`; a
PROFILE job calibrates a spec's images into the range profile, here.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from petq.errors import PetqError
from petq.jobs import (
    WORKER_LOCK,
    Job,
    JobVariant,
    Status,
    process_create_time,
    read_job,
    worker_alive,
    write_job,
)
from petq.types import JobKind, Stage, VariantSpec

WRITE_INTERVAL = 0.25  # seconds between progress writes within one stage
LOCK_POLL = 1.0  # seconds between checks of who holds the worker lock, while waiting

class _Reporter:
    """Writes the job record: at once on a stage change, else at most every WRITE_INTERVAL."""

    def __init__(self, path: Path, job: Job):
        self.path, self.job = path, job
        self.last = 0.0

    def write(self, **changes: Any) -> None:
        """Set these fields of the job (`Job`'s names) and write the record."""
        now = time.time()
        for name, value in changes.items():
            setattr(self.job, name, value)
        self.job.updated = now
        write_job(self.path, self.job)
        self.last = now

    def progress(self, stage: str, done: int, total: int) -> None:
        """A progress(stage, done, total) callback for the library (stage: a `Stage` value)."""
        stage = Stage(stage)
        changed = stage is not self.job.stage
        self.job.stage, self.job.stage_note = stage, None
        self.job.stage_done, self.job.stage_total = done, total
        if changed or done >= total or time.time() - self.last >= WRITE_INTERVAL:
            self.write()

    def fail(self, variant: JobVariant, error: str, errors: list[str]) -> None:
        """Record a variant's failure; `errors` collects the job's."""
        variant.status, variant.error = Status.FAILED, error
        errors.append(f"{variant.name}: {error}")


def _running_job(folder: Path, own_id: str) -> str | None:
    """The id of another job of this cache whose worker is running, if any."""
    for path in folder.glob("*.json"):
        if path.stem == own_id or path.name.startswith("."):
            continue
        job = read_job(path)
        if job and job.state is Status.RUNNING and worker_alive(job):
            return path.stem
    return None


def _wait_for_turn(lock: FileLock, reporter: _Reporter) -> None:
    """Take the cache's worker lock; until then the job stays queued, its stage says why."""
    timeout = 0.0
    while True:
        try:
            lock.acquire(timeout=timeout)
            return
        except Timeout:
            timeout = LOCK_POLL
            holder = _running_job(reporter.path.parent, reporter.job.id)
            if (Stage.WAITING, holder) != (reporter.job.stage, reporter.job.stage_note):
                reporter.write(stage=Stage.WAITING, stage_note=holder)


def run_job(path: Path | str) -> int:
    """The worker: evaluate every queued variant of the job at `path`; 0 when all are done.

    It waits for the cache's worker lock first, so jobs on one cache run one at a time.
    """
    path = Path(path)
    job = read_job(path)
    if job is None:
        print(f"{path}: no such job", file=sys.stderr)
        return 2
    if job.state is not Status.QUEUED:  # cancelled (or failed) before the worker began
        print(f"{path}: job is {job.state.value}, not queued", file=sys.stderr)
        return 2
    reporter = _Reporter(path, job)
    reporter.write(pid=os.getpid(), create_time=process_create_time())
    lock = FileLock(str(path.parent / WORKER_LOCK))
    _wait_for_turn(lock, reporter)
    try:
        return _work(reporter)
    finally:
        lock.release()


def _work(reporter: _Reporter) -> int:
    job = reporter.job
    reporter.write(state=Status.RUNNING, started=time.time(), stage=Stage.START,
                   stage_note=None)
    from petq.engine import evaluate_run  # after the first write: imports take seconds
    from petq.workspace import Workspace

    try:
        ws = Workspace(job.model_path, job.dataset_root, job.cache_root, job.threads,
                       preprocessing=job.preprocessing)
    except PetqError as exc:
        job.finish(Status.FAILED, str(exc))
        reporter.write()
        return 1
    if job.kind is not JobKind.VARIANTS:
        return _work_task(ws, reporter)
    errors: list[str] = []
    todo: dict[VariantSpec, JobVariant] = {}  # the job's specs are distinct (petq.jobs)
    for variant in job.todo():
        if variant.spec is None:
            reporter.fail(variant, variant.error or "no spec recorded", errors)
        else:
            todo[variant.spec] = variant
    if job.ray:
        _work_on_ray(ws, reporter, todo, errors)
    else:
        def progress_for(running):  # one variant, or two side by side
            for spec in running:
                todo[spec].status = Status.RUNNING
            reporter.write(current=" + ".join(spec.name for spec in running),
                           stage=Stage.START, stage_note=None, stage_done=0, stage_total=0)
            return reporter.progress

        for spec, outcome, _ in evaluate_run(ws, todo, job.test_fraction, progress_for):
            _work_on(ws, reporter, todo[spec], outcome, errors)
    job.finish(Status.FAILED if errors else Status.DONE, "; ".join(errors) or None)
    reporter.write()
    return 1 if errors else 0


def _work_on(ws, reporter: _Reporter, variant: JobVariant, outcome,
             errors: list[str]) -> None:
    """Record one evaluated variant of the job (`outcome`: its Result or PetqError), and
    make what its reports and Compare read (`petq.engine.after_variant`)."""
    from petq.engine import AfterVariant, after_variant  # imported after the first write

    reporter.write(current=variant.name)
    try:
        if isinstance(outcome, PetqError):
            raise outcome
        what = AfterVariant(timing=True, against_native=True, layers=reporter.job.layers)
        # compared with FP32 (native for FP32) and native, whichever the cache holds
        after_variant(ws, outcome, (VariantSpec.fp32(), VariantSpec.native()), what,
                      reporter.progress)
        variant.status, variant.result_key = Status.DONE, outcome.result_key
    except PetqError as exc:
        reporter.fail(variant, str(exc), errors)
    except Exception as exc:  # a bug: keep the traceback in the log, report the gist
        traceback.print_exc()
        reporter.fail(variant, f"{type(exc).__name__}: {exc}", errors)
    reporter.write()


def _work_on_ray(ws, reporter: _Reporter, todo: dict[VariantSpec, JobVariant],
                 errors: list[str]) -> None:
    """The job's variants as a sweep on Ray; each variant's record follows its cell."""
    from petq.report import cached_confusion_png
    from petq.sweep import run_sweep

    job = reporter.job

    def progress(status, cell) -> None:
        if cell is not None:
            variant = todo[cell.spec]
            if cell.ok:
                variant.status, variant.result_key = Status.DONE, cell.result.result_key
                cached_confusion_png(ws.cache, cell.result.result_key, cell.spec.name)
            else:
                reporter.fail(variant, cell.error, errors)
        reporter.write(current=None, stage=Stage.RAY,
                       stage_done=status.count("done", "cached", "failed"),
                       stage_total=status.total, stage_note=f"{status.workers} slot(s)")

    address = None if job.ray == "local" else job.ray
    try:
        run_sweep(ws.model_path, ws.dataset.root, ws.cache.root, list(todo), job.test_fraction,
                  backend="ray", address=address, progress=progress,
                  threads=job.threads,  # the session's: its results, its latencies
                  preprocessing=job.preprocessing)
    except PetqError as exc:
        for variant in todo.values():
            if variant.status is not Status.DONE:
                variant.status, variant.error = Status.FAILED, str(exc)
        errors.append(str(exc))


def _work_task(ws, reporter: _Reporter) -> int:
    """A TUNE, CURVE or PROFILE job: run it (a tune or a curve writes its files into the
    job's folder), end the job."""
    job = reporter.job
    work = {JobKind.TUNE: _tune, JobKind.CURVE: _curve, JobKind.PROFILE: _profile}[job.kind]
    try:
        work(ws, reporter, Path(job.results_path))
    except PetqError as exc:
        job.finish(Status.FAILED, str(exc))
    except Exception as exc:  # a bug: keep the traceback in the log, report the gist
        traceback.print_exc()
        job.finish(Status.FAILED, f"{type(exc).__name__}: {exc}")
    else:
        job.finish(Status.DONE)
    reporter.write()
    return 0 if job.state is Status.DONE else 1


def _engine_options(job: Job, root: Path) -> dict[str, Any]:
    """The sweep engine a TUNE or CURVE job builds its variants on: Ray when the job names
    it, else a local process pool (its logs in the job's folder)."""
    from petq.sweep import task_threads

    backend = "ray" if job.ray else "local"
    return {"backend": backend, "address": None if job.ray in (None, "local") else job.ray,
            "threads": task_threads(backend),
            "log_dir": root / "logs" if backend == "local" else None}


def _tune(ws, reporter: _Reporter, root: Path) -> None:
    """petq.tune.tune on the job's TuneConfig; its outputs (petq.tunerun.write_outputs)."""
    from petq.tune import Engine, tune
    from petq.tunerun import write_outputs

    job, config = reporter.job, reporter.job.config
    options = _engine_options(job, root)
    engine = Engine(options["backend"], options["address"], None, options["threads"],
                    options["log_dir"])

    def progress(outcome, candidate, line: str) -> None:
        job.say(f"[{outcome.built}/{config.budget}] {line}" if candidate else line)
        reporter.write(stage=Stage.CANDIDATES, current=candidate.name if candidate else None,
                       stage_done=outcome.built, stage_total=config.budget, stage_note=None)

    root.mkdir(parents=True, exist_ok=True)
    outcome = tune(ws, config, engine, progress)
    write_outputs(ws, outcome, root)
    job.say(outcome.decision())


def _curve(ws, reporter: _Reporter, root: Path) -> None:
    """petq.curve.calibration_curve on the job's CurveConfig; its csv, png and md."""
    from petq.curve import calibration_curve

    job = reporter.job

    def progress(status, cell) -> None:
        if cell is not None and cell.finished:
            job.say(f"{cell.spec.name}: " + (f"accuracy {cell.result.accuracy:.4f}"
                                             if cell.ok else f"failed: {cell.error}"))
        reporter.write(stage=Stage.CELLS, current=None, stage_note=None,
                       stage_done=status.count("done", "cached", "failed"),
                       stage_total=status.total)

    run = calibration_curve(ws, job.config, root, job.test_fraction, progress=progress,
                            profile_progress=lambda _, done, total: reporter.progress(
                                Stage.PROFILE, done, total), **_engine_options(job, root))
    job.say(f"range profile: {run.profiled}")
    for recommendation in run.recommendations:
        job.say(f"{recommendation.recipe}: {recommendation.reason}")


def _profile(ws, reporter: _Reporter, root: Path) -> None:
    """The range profile of the job's spec's calibration images (those it lacks)."""
    spec = reporter.job.config.spec
    reporter.write(current=spec.name)
    ids = ws.calibration_ids(spec)
    profile = ws.range_profile(spec, ids, lambda _, done, total: reporter.progress(
        Stage.PROFILE, done, total))
    reporter.job.say(f"{spec.name}: {len(ids)} calibration image(s) in the range profile, "
                     f"{profile.calibrated} calibrated now")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m petq.worker <job.json>", file=sys.stderr)
        sys.exit(2)
    # On cancel, unwind normally so a half-built cache entry is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(run_job(sys.argv[1]))

"""The job worker: `python -m petq.worker <job.json>`, started by `petq.jobs.start_job`.

It waits for its cache's worker lock (one worker per cache), then converts and
evaluates each queued variant of the job, in this process or as a sweep on Ray,
writing its progress into the job record (petq.jobs) as it goes.
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

from petq.cache import write_json_atomic
from petq.errors import PetqError
from petq.jobs import WORKER_LOCK, process_create_time, read_job, worker_alive
from petq.types import VariantSpec

WRITE_INTERVAL = 0.25  # seconds between progress writes within one stage
LOCK_POLL = 1.0  # seconds between checks of who holds the worker lock, while waiting

class _Reporter:
    """Writes the job record: at once on a stage change, else at most every WRITE_INTERVAL."""

    def __init__(self, path: Path, record: dict[str, Any]):
        self.path, self.record = path, record
        self.last = 0.0

    def write(self, **changes: Any) -> None:
        now = time.time()
        self.record.update(changes, updated=now)
        self.record["done"] = sum(v["status"] == "done" for v in self.record["variants"])
        write_json_atomic(self.path, self.record)
        self.last = now

    def progress(self, stage: str, done: int, total: int) -> None:
        changed = stage != self.record.get("stage")
        self.record.update(stage=stage, stage_done=done, stage_total=total)
        if changed or done >= total or time.time() - self.last >= WRITE_INTERVAL:
            self.write()


def _running_job(folder: Path, own_id: str) -> str | None:
    """The id of another job of this cache whose worker is running, if any."""
    for path in folder.glob("*.json"):
        if path.stem == own_id or path.name.startswith("."):
            continue
        record = read_job(path)
        if record and record.get("state") == "running" and worker_alive(record):
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
            holder = _running_job(reporter.path.parent, reporter.record["id"])
            stage = f"waiting for job {holder}" if holder else "waiting for another job"
            if stage != reporter.record.get("stage"):
                reporter.write(stage=stage)


def run_job(path: Path | str) -> int:
    """The worker: evaluate every queued variant of the job at `path`; 0 when all are done.

    It waits for the cache's worker lock first, so jobs on one cache run one at a time.
    """
    path = Path(path)
    record = read_job(path)
    if record is None:
        print(f"{path}: no such job", file=sys.stderr)
        return 2
    if record.get("state") != "queued":  # cancelled (or failed) before the worker began
        print(f"{path}: job is {record.get('state')}, not queued", file=sys.stderr)
        return 2
    reporter = _Reporter(path, record)
    reporter.write(pid=os.getpid(), create_time=process_create_time())
    lock = FileLock(str(path.parent / WORKER_LOCK))
    _wait_for_turn(lock, reporter)
    try:
        return _work(reporter)
    finally:
        lock.release()


def _work(reporter: _Reporter) -> int:
    record = reporter.record
    reporter.write(state="running", started=time.time(), stage="start")
    from petq.engine import evaluate_run  # after the first write: imports take seconds
    from petq.workspace import Workspace

    try:
        ws = Workspace(record["model_path"], record["dataset_root"], record["cache_root"],
                       record["threads"], preprocessing=record.get("preprocessing"))
    except PetqError as exc:
        for variant in record["variants"]:
            if variant["status"] != "done":
                variant.update(status="failed", error=str(exc))
        reporter.write(state="failed", error=str(exc), current=None, stage=None,
                       finished=time.time())
        return 1
    errors: list[str] = []
    todo: dict[VariantSpec, dict[str, Any]] = {}  # the job's specs are distinct (petq.jobs)
    for variant in record["variants"]:
        if variant["status"] != "done":
            try:
                todo[VariantSpec.from_dict(variant["spec"])] = variant
            except PetqError as exc:
                variant.update(status="failed", error=str(exc))
                errors.append(f"{variant['name']}: {exc}")
    if record.get("ray"):
        _work_on_ray(ws, reporter, todo, errors)
    else:
        def progress_for(running):  # one variant, or two side by side
            for spec in running:
                todo[spec]["status"] = "running"
            reporter.write(current=" + ".join(spec.name for spec in running), stage="start",
                           stage_done=0, stage_total=0)
            return reporter.progress

        for spec, outcome, _ in evaluate_run(ws, todo, record["test_fraction"], progress_for):
            _work_on(ws, reporter, todo[spec], outcome, errors)
    reporter.write(state="failed" if errors else "done", error="; ".join(errors) or None,
                   current=None, stage=None, finished=time.time())
    return 1 if errors else 0


def _work_on(ws, reporter: _Reporter, variant: dict[str, Any], outcome,
             errors: list[str]) -> None:
    """Record one evaluated variant of the job (`outcome`: its Result or PetqError), and
    make what its reports and Compare read (`petq.engine.after_variant`)."""
    from petq.engine import AfterVariant, after_variant  # imported after the first write

    reporter.write(current=variant["name"])
    try:
        if isinstance(outcome, PetqError):
            raise outcome
        what = AfterVariant(timing=True, against_native=True,
                            layers=bool(reporter.record.get("layers")))
        # compared with FP32 (native for FP32) and native, whichever the cache holds
        after_variant(ws, outcome, (VariantSpec.fp32(), VariantSpec.native()), what,
                      reporter.progress)
        variant.update(status="done", result_key=outcome.result_key)
    except PetqError as exc:
        variant.update(status="failed", error=str(exc))
        errors.append(f"{variant['name']}: {exc}")
    except Exception as exc:  # a bug: keep the traceback in the log, report the gist
        traceback.print_exc()
        variant.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        errors.append(f"{variant['name']}: {type(exc).__name__}: {exc}")
    reporter.write()


def _work_on_ray(ws, reporter: _Reporter, todo: dict[VariantSpec, dict[str, Any]],
                 errors: list[str]) -> None:
    """The job's variants as a sweep on Ray; each variant's record follows its cell."""
    from petq.report import cached_confusion_png
    from petq.sweep import run_sweep

    record = reporter.record

    def progress(status, cell) -> None:
        if cell is not None:
            variant = todo[cell.spec]
            if cell.ok:
                variant.update(status="done", result_key=cell.result.result_key)
                cached_confusion_png(ws.cache, cell.result.result_key, cell.spec.name)
            else:
                variant.update(status="failed", error=cell.error)
                errors.append(f"{cell.spec.name}: {cell.error}")
        finished = status.count("done", "cached", "failed")
        reporter.write(current=None, stage=f"on Ray: {finished} of {status.total} task(s) "
                                           f"finished, {status.workers} slot(s)")

    address = None if record["ray"] == "local" else record["ray"]
    try:
        run_sweep(ws.model_path, ws.dataset.root, ws.cache.root, list(todo),
                  record["test_fraction"],
                  backend="ray", address=address, progress=progress,
                  threads=record["threads"],  # the session's: its results, its latencies
                  preprocessing=record.get("preprocessing"))
    except PetqError as exc:
        for variant in todo.values():
            if variant["status"] != "done":
                variant.update(status="failed", error=str(exc))
        errors.append(str(exc))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m petq.worker <job.json>", file=sys.stderr)
        sys.exit(2)
    # On cancel, unwind normally so a half-built cache entry is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(run_job(sys.argv[1]))

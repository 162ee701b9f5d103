"""Background jobs: convert and evaluate variants in a detached worker process.

The dashboard starts a job and returns at once; the worker (`python -m petq.jobs
<job.json>`) calls `Workspace.evaluate` for each variant and writes its progress
atomically to `<cache>/jobs/<job_id>.json`, so any page, session or process can
follow it. A job outlives the page that started it; specs already cached are
reported done without starting a process. No streamlit here.
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
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from petq.cache import write_json_atomic
from petq.errors import PetqError
from petq.types import VariantSpec

ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")
WRITE_INTERVAL = 0.25  # seconds between progress writes within one stage
START_GRACE = 120.0  # a queued job whose worker never reported is failed after this
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def jobs_dir(cache_root: Path | str) -> Path:
    return Path(cache_root) / "jobs"


def job_path(cache_root: Path | str, job_id: str) -> Path:
    if not job_id or any(c in job_id for c in "/\\."):
        raise ValueError(f"bad job id {job_id!r}")
    return jobs_dir(cache_root) / f"{job_id}.json"


def _new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


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
            if ws.cached_result(spec, test_fraction):
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
) -> str:
    """Start converting + evaluating `specs`; return the job id at once.

    Raises PetqError when the workspace or a spec is invalid (nothing started).
    Pass `workspace` to reuse an open Workspace on the same paths.
    """
    from petq.workspace import Workspace

    ws = workspace or Workspace(model_path, dataset_root, cache_root, threads)
    specs = list(dict.fromkeys(specs))
    if not specs:
        raise ValueError("a job needs at least one variant")
    variants = []
    for spec in specs:
        ws.calibration_samples(spec)  # raises SpecError for a class out of range
        cached = ws.cached_result(spec, test_fraction)
        variants.append({
            "name": spec.name, "spec": spec.to_dict(),
            "status": "done" if cached else "queued", "cached": bool(cached),
            "result_key": cached["result_key"] if cached else None, "error": None,
        })
    job_id = _new_id()
    now = time.time()
    record: dict[str, Any] = {
        "id": job_id, "state": "queued", "created": now, "started": None, "finished": None,
        "updated": now, "model_path": str(Path(model_path).resolve()),
        "dataset_root": str(Path(dataset_root).resolve()),
        "cache_root": str(Path(cache_root).resolve()), "threads": ws.threads,
        "test_fraction": test_fraction, "variants": variants,
        "total": len(variants), "done": sum(v["status"] == "done" for v in variants),
        "current": None, "stage": None, "stage_done": 0, "stage_total": 0,
        "error": None, "pid": None,
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
            [sys.executable, "-m", "petq.jobs", str(path)],
            cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    path.with_suffix(".pid").write_text(str(process.pid))
    # Reap the worker when it ends, so a crashed one does not linger as a zombie.
    threading.Thread(target=process.wait, daemon=True).start()
    return job_id


def _read(path: Path) -> dict[str, Any] | None:
    for _ in range(3):
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            time.sleep(0.05)
    return None


def _pid_of(path: Path, record: dict[str, Any]) -> int | None:
    if record.get("pid"):
        return int(record["pid"])
    try:
        return int(path.with_suffix(".pid").read_text())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process runs (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def job_status(cache_root: Path | str, job_id: str) -> dict[str, Any] | None:
    """The job's record, or None. A running job whose worker died is reported failed."""
    path = job_path(cache_root, job_id)
    record = _read(path)
    if record is None:
        return None
    record["pid"] = _pid_of(path, record)
    if record["state"] in ACTIVE:
        pid = record["pid"]
        dead = (not pid_alive(pid)) if pid else time.time() - record["created"] > START_GRACE
        if dead:
            record = _read(path) or record  # it may have finished just now
            if record["state"] in ACTIVE:
                record["state"] = "failed"
                record["error"] = record.get("error") or (
                    "the worker process ended unexpectedly; see " + str(path.with_suffix(".log"))
                )
    record["fraction"] = progress_fraction(record)
    record["stage_fraction"] = stage_fraction(record)
    return record


def list_jobs(cache_root: Path | str, active_only: bool = False) -> list[dict[str, Any]]:
    """Every job under the cache, newest first."""
    folder = jobs_dir(cache_root)
    if not folder.is_dir():
        return []
    records = []
    for path in folder.glob("*.json"):
        if path.name.startswith("."):
            continue
        record = job_status(cache_root, path.stem)
        if record is not None and (not active_only or record["state"] in ACTIVE):
            records.append(record)
    records.sort(key=lambda r: r.get("created", 0), reverse=True)
    return records


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
    """Stop a job's worker (its whole process group) and mark the job cancelled."""
    path = job_path(cache_root, job_id)
    record = job_status(cache_root, job_id)
    if record is None or record["state"] not in ACTIVE:
        return record
    pid = record.get("pid")
    if pid and pid_alive(pid):
        for sig, patience in ((signal.SIGTERM, wait), (signal.SIGKILL, 2.0)):
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            deadline = time.monotonic() + patience
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not pid_alive(pid):
                break
    record = _read(path) or record
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


# ---------------------------------------------------------------- the worker


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


def run_job(path: Path | str) -> int:
    """The worker: evaluate every queued variant of the job at `path`; 0 when all are done."""
    path = Path(path)
    record = _read(path)
    if record is None:
        print(f"{path}: no such job", file=sys.stderr)
        return 2
    reporter = _Reporter(path, record)
    reporter.write(state="running", pid=os.getpid(), started=time.time(), stage="start")
    from petq.report import cached_confusion_png  # after the first write: imports take seconds
    from petq.workspace import Workspace

    try:
        ws = Workspace(record["model_path"], record["dataset_root"], record["cache_root"],
                       record["threads"])
    except PetqError as exc:
        reporter.write(state="failed", error=str(exc), finished=time.time())
        return 1
    errors = []
    for variant in record["variants"]:
        if variant["status"] == "done":
            continue
        variant["status"] = "running"
        reporter.write(current=variant["name"], stage="start", stage_done=0, stage_total=0)
        try:
            spec = VariantSpec.from_dict(variant["spec"])
            result, _ = ws.evaluate(spec, record["test_fraction"], progress=reporter.progress)
            reporter.progress("figures", 0, 1)
            cached_confusion_png(ws, result["result_key"], spec.name)  # the report's, drawn now
            variant.update(status="done", result_key=result["result_key"])
        except PetqError as exc:
            variant.update(status="failed", error=str(exc))
            errors.append(f"{variant['name']}: {exc}")
        except Exception as exc:  # a bug: keep the traceback in the log, report the gist
            traceback.print_exc()
            variant.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            errors.append(f"{variant['name']}: {type(exc).__name__}: {exc}")
        reporter.write()
    reporter.write(state="failed" if errors else "done", error="; ".join(errors) or None,
                   current=None, stage=None, finished=time.time())
    return 1 if errors else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m petq.jobs <job.json>", file=sys.stderr)
        sys.exit(2)
    # On cancel, unwind normally so a half-built cache entry is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(run_job(sys.argv[1]))

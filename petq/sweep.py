"""Sweeps: a grid of recipes x calibration fractions x seeds (x models), one task per variant.

`expand_grid` turns the grid into validated, deduplicated variant specs (a recipe that
does not calibrate gives one cell). `run_sweep` runs each spec as the engine's one task
(`petq.engine.run_variant`: convert, then evaluate): in this process (`serial`), on a
local process pool sized to the cores (`local`), or as Ray tasks on a cluster (`ray`,
petq.raysweep). Every task opens its own workspace and writes into the one
content-addressed cache, which may sit on shared storage; a cell already cached is not
sent. A worker killed mid-task is retried (`max_retries`: the pool is restarted, Ray
retries the task), and the cache holds only complete entries. Everything that can be
checked (grid, paths, cache writable, Ray address and nodes) is checked before any work.

`write_csv` writes one row per cell. `petq sweep` is the command line (`add_parser`,
`run`); a dashboard job sent to Ray runs `run_sweep` with a `progress` callback. No
streamlit here, and ray only when asked for."""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petq.cache import Cache
from petq.engine import (
    VariantOutcome,
    VariantTask,
    Where,
    check_writable,
    probe_paths,
    run_here,
    run_on_pool,
)
from petq.errors import SpecError, SweepError
from petq.results import Result
from petq.types import DEFAULT_CALIBRATION_SEED, RECIPES, VariantSpec

BACKENDS = ("serial", "local", "ray")
DEFAULT_MAX_RETRIES = 3  # Ray retries of a task whose worker died; local pool restarts
MAX_SEED = 2**32 - 1  # scikit-learn's random_state range
CSV_COLUMNS = (
    "model", "recipe", "fraction", "seed", "classes", "variant", "status", "accuracy", "g_mean",
    "file_size_bytes", "latency_p50_ms", "latency_context", "threads", "task_seconds",
    "worker", "result_key", "error",
)
CACHED = "cached (measured earlier)"  # latency_context of a result this sweep did not compute


# ---------------------------------------------------------------- the grid


def expand_grid(
    recipes: Sequence[str],
    fractions: Sequence[float] = (),
    seeds: Sequence[int] = (DEFAULT_CALIBRATION_SEED,),
    classes: Sequence[Sequence[int]] | None = None,
) -> list[VariantSpec]:
    """Every cell of recipes x fractions x seeds, plus one cell per class set for each
    calibrating recipe, in grid order and without duplicates.

    A recipe that does not calibrate gives one cell whatever the fractions and seeds;
    a calibrating recipe with neither fractions nor class sets, an unknown recipe, a
    fraction outside (0, 1], a seed outside 0..2**32-1 or an empty grid is a SpecError.
    """
    recipes = list(dict.fromkeys(str(r).strip() for r in recipes))
    if not recipes:
        raise SpecError("the sweep grid is empty: name at least one recipe (`petq recipes`)")
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise SpecError(f"unknown recipe(s) {', '.join(map(repr, unknown))}: expected some of "
                        f"{', '.join(RECIPES)}")
    checked_fractions = []
    for value in fractions:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise SpecError(f"calibration fraction must be a number, got {value!r}") from None
        if math.isnan(number) or not 0.0 < number <= 1.0:
            raise SpecError(f"calibration fraction must be in (0, 1], got {value!r}")
        checked_fractions.append(number)
    fractions = list(dict.fromkeys(checked_fractions))
    seeds = list(dict.fromkeys(seeds))
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise SpecError(f"calibration seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
    class_sets = [tuple(sorted({int(c) for c in group})) for group in (classes or ())]
    if any(not group for group in class_sets):
        raise SpecError("a calibration class set is empty")
    calibrating = [r for r in recipes if RECIPES[r].calibrates]
    if calibrating and not fractions and not class_sets:
        raise SpecError(f"{', '.join(calibrating)} calibrate(s): give calibration fractions "
                        "(e.g. 0.01 0.08) or calibration classes")
    if calibrating and fractions and not seeds:
        raise SpecError("give at least one calibration seed")
    specs: list[VariantSpec] = []
    for key in recipes:
        if not RECIPES[key].calibrates:
            specs.append(VariantSpec.of(key))
            continue
        specs.extend(VariantSpec.of(key, f, seed=s) for f in fractions for s in seeds)
        specs.extend(VariantSpec.of(key, classes=group) for group in class_sets)
    return list(dict.fromkeys(specs))


# ---------------------------------------------------------------- cells and status


@dataclass
class Cell:
    """One grid cell: its spec and, once run, its result or its error."""

    spec: VariantSpec
    model: str = ""  # the source model's path (a sweep may run several)
    result: Result | None = None
    error: str | None = None
    state: str = "pending"  # pending | queued | done | cached | failed
    seconds: float = 0.0  # the task's wall time in its worker (0 when not run)
    worker: str = ""  # host:pid that ran the task
    latency_context: str = ""  # how the latency was measured: serial, parallel, cached

    @property
    def ok(self) -> bool:
        return self.result is not None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "cached", "failed")

    def row(self) -> dict[str, Any]:
        """The cell as a flat row of sweep.csv."""
        spec, result = self.spec, self.result
        return {
            "model": Path(self.model).name,
            "recipe": spec.recipe.key,
            "fraction": "" if spec.fraction is None else f"{spec.fraction:g}",
            "seed": spec.seed if spec.uses_seed else "",
            "classes": "+".join(str(c) for c in spec.classes),
            "variant": spec.name,
            "status": self.state,
            "accuracy": result.accuracy if result else "",
            "g_mean": result.g_mean if result else "",
            "file_size_bytes": result.file_size_bytes if result else "",
            "latency_p50_ms": result.latency_p50_ms if result else "",
            "latency_context": self.latency_context if result else "",
            "threads": result.threads if result else "",
            "task_seconds": round(self.seconds, 3) if self.seconds else "",
            "worker": self.worker,
            "result_key": result.result_key if result else "",
            "error": self.error or "",
        }


@dataclass
class SweepStatus:
    """Where a sweep stands; `run_sweep` updates it in place, so a page may poll it."""

    cells: list[Cell]
    backend: str
    workers: int = 1
    threads: int = 1
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def count(self, *states: str) -> int:
        return sum(cell.state in states for cell in self.cells)

    @property
    def total(self) -> int:
        return len(self.cells)

    @property
    def fraction_done(self) -> float:
        return self.count("done", "cached", "failed") / self.total if self.cells else 1.0

    @property
    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started

    def summary(self) -> str:
        return (f"{self.count('done')} done, {self.count('failed')} failed, "
                f"{self.count('cached')} cached of {self.total} cell(s) in {self.elapsed:.1f} s")


Progress = Callable[[SweepStatus, "Cell | None"], None]  # cell None: the sweep starts or ends


# ---------------------------------------------------------------- running a sweep


def default_workers() -> int:
    return os.cpu_count() or 1


def task_threads(backend: str, workers: int | None = None, threads: int | None = None) -> int:
    """Interpreter threads per task: given, else all cores serially, cores / workers on the
    local pool and 1 on Ray (a Ray task asks for as many CPUs as it has threads)."""
    if threads is not None:
        if threads < 1:
            raise SweepError(f"threads per task must be at least 1, got {threads}")
        return threads
    cores = os.cpu_count() or 1
    if backend == "serial":
        return cores
    if backend == "local":
        return max(1, cores // (workers or default_workers()))
    return 1


def run_sweep(
    model_path: Path | str | Sequence[Path | str],
    dataset_root: Path | str,
    cache_root: Path | str,
    specs: Sequence[VariantSpec],
    test_fraction: float = 1.0,
    backend: str = "local",
    address: str | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    *,
    threads: int | None = None,
    preprocessing: str | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    log_dir: Path | str | None = None,
    status: SweepStatus | None = None,
) -> list[Cell]:
    """Run every spec (convert, evaluate) of every model as one task; return one Cell per
    (model, spec), model by model, specs in order. `model_path`: one model or several (the
    grid's model axis).

    backend: `serial` (this process), `local` (a spawned process pool of `workers`,
    default one per core) or `ray` (`address`: None starts or reuses a local Ray, `auto`
    or `host:port` joins a cluster; `workers` caps the tasks in flight). `threads`:
    interpreter threads per task (see `task_threads`); it is part of a result's cache key.
    Cells already in the cache are not sent. `progress(status, cell)` is called when a
    cell changes state (cell None when the sweep starts and ends); `status`, if given,
    is filled in place. Bad input raises a SweepError/SpecError before any work.

    From a Streamlit page, call this from a worker process (as petq.worker does), not from
    the script thread: spawned pool workers re-import the caller's main script.
    """
    specs = list(dict.fromkeys(specs))
    threads = _check_options(backend, specs, test_fraction, workers, threads, max_retries)
    given = [model_path] if isinstance(model_path, str | Path) else list(model_path)
    if not given:
        raise SweepError("no model to sweep")
    models = list(dict.fromkeys(str(Path(m).resolve()) for m in given))
    dataset, cache = (str(Path(p).resolve()) for p in (dataset_root, cache_root))
    problems: list[str] = []
    for model in models:
        local = probe_paths(model, dataset, cache)
        problems += [p for p in local.problems if p not in problems]
    if problems:
        raise SweepError("; ".join(problems))
    if backend == "ray":
        from petq.raysweep import RaySession, resolve_ray_address
    ray_address = resolve_ray_address(address) if backend == "ray" else None

    from petq.workspace import Workspace

    spaces = {m: Workspace(m, dataset, cache, threads, preprocessing) for m in models}
    for ws in spaces.values():
        for spec in specs:  # what this model or dataset cannot make: before any work
            ws.check(spec)

    session = RaySession(ray_address, workers, threads, max_retries) if backend == "ray" \
        else None
    try:
        if session is not None:
            for model in models:
                session.check_nodes([model, dataset, cache], local.versions)
        calibrates = any(spec.recipe.calibrates for spec in specs)
        for ws in spaces.values():  # decoded once here (per input size): the tasks only read
            for split in ("trainval", "test") if calibrates else ("test",):
                ws.store(split)
        cells = [Cell(spec, model) for model in models for spec in specs]
        for cell in cells:
            cached = spaces[cell.model].cached_result(cell.spec, test_fraction)
            if cached is not None:
                cell.result, cell.state, cell.latency_context = cached, "cached", CACHED
        todo = [i for i, cell in enumerate(cells) if cell.state == "pending"]
        parallel = min(len(todo), workers or default_workers()) if backend == "local" else 1
        if status is None:
            status = SweepStatus(cells, backend)
        status.cells, status.backend, status.threads = cells, backend, threads
        status.workers = session.slots if session else parallel
        status.started, status.finished = time.time(), None
        context = (session.context if session else
                   "serial" if parallel <= 1 else f"parallel: {parallel} tasks per machine")

        def notify(cell: Cell | None) -> None:
            if progress is not None:
                progress(status, cell)

        def done(index: int, outcome: VariantOutcome) -> None:
            cell = cells[index]
            cell.seconds, cell.worker = outcome.seconds, outcome.worker
            if outcome.result is not None:
                cell.result = outcome.result
                cell.state = "done" if outcome.computed else "cached"
                cell.latency_context = context if outcome.computed else CACHED
            else:
                cell.state, cell.error = "failed", str(outcome.error or "unknown error")
            notify(cell)

        run = secrets.token_hex(8)  # a worker keeps one workspace for the sweep's tasks
        tasks = {i: VariantTask(Where(cells[i].model, dataset, cache, preprocessing, threads,
                                      run), cells[i].spec, test_fraction)
                 for i in todo}
        for i in todo:
            cells[i].state = "queued"
        notify(None)
        if backend == "serial":
            run_here(tasks, done)
        elif backend == "local":
            run_on_pool(tasks, done, parallel, threads, max_retries, log_dir)
        else:
            session.run(tasks, done)
    finally:
        if session is not None:
            session.close()
    Cache(cache).clear_stale_temp(max_age=0)  # temp folders of killed workers, never live
    status.finished = time.time()
    notify(None)
    return cells


def _check_options(backend: str, specs: Sequence[VariantSpec], test_fraction: float,
                   workers: int | None, threads: int | None, max_retries: int) -> int:
    """Options that need no file or cluster; returns the threads per task."""
    if backend not in BACKENDS:
        raise SweepError(f"unknown sweep backend {backend!r}: expected one of "
                         f"{', '.join(BACKENDS)}")
    if not specs:
        raise SpecError("the sweep grid is empty: no variant to run")
    if not 0.0 < test_fraction <= 1.0:
        raise SpecError(f"test dataset fraction must be in (0, 1], got {test_fraction}")
    if workers is not None and workers < 1:
        raise SweepError(f"workers must be at least 1, got {workers}")
    if max_retries < 0:
        raise SweepError(f"max_retries must be >= 0, got {max_retries}")
    return task_threads(backend, workers, threads)


# ---------------------------------------------------------------- sweep.csv


def write_csv(cells: Iterable[Cell], path: Path | str) -> Path:
    """One row per cell (CSV_COLUMNS), written atomically."""
    from petq.cache import write_bytes_atomic

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for cell in cells:
        writer.writerow(cell.row())
    path = Path(path)
    write_bytes_atomic(path, buffer.getvalue().encode())
    return path


# ---------------------------------------------------------------- command line


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `petq sweep` on the CLI's subparsers."""
    from petq.console import add_common_options

    p = subparsers.add_parser(
        "sweep", help="a grid of recipes x calibration fractions x seeds (x models), one "
                      "task per variant, on a local process pool or a Ray cluster")
    p.add_argument("--recipes", nargs="+", required=True,
                   help="recipe keys from `petq recipes` (tflite-int8, aeq-wi8-ai8, ...)")
    p.add_argument("--fractions", nargs="+", type=float, default=[],
                   help="calibration fractions of trainval, each in (0, 1] (calibrating "
                        "recipes only)")
    p.add_argument("--seeds", nargs="+", type=int, default=[DEFAULT_CALIBRATION_SEED],
                   help="calibration seeds (default: %(default)s)")
    p.add_argument("--calibration-classes", nargs="+", action="append", metavar="CLASS",
                   help="also calibrate on these breeds (names or indices); repeat the flag "
                        "for several class sets")
    p.add_argument("--models", nargs="+", type=Path, metavar="MODEL",
                   help="the grid's model axis: every cell for each of these models "
                        "(default: --model-path, or the demo model)")
    p.add_argument("--results-path", type=Path, default=Path("results"),
                   help="where sweep.csv and sweep-config.json go")
    p.add_argument("--test-dataset-fraction", type=float, default=1.0,
                   help="stratified fraction of the test split to evaluate on (0, 1]")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run the tasks on Ray: `local` (start one here), `auto` (the cluster "
                        "`ray start` made, or RAY_ADDRESS) or host:port")
    p.add_argument("--serial", action="store_true",
                   help="run the tasks one by one in this process (no pool)")
    p.add_argument("--workers", type=int,
                   help="pool processes (default: one per core); with --ray, tasks in flight")
    p.add_argument("--max-retries", type=int, default=DEFAULT_MAX_RETRIES,
                   help="retries of a task whose worker died (default: %(default)s)")
    add_common_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """`petq sweep`: exit status 1 when a cell failed."""
    from petq.console import open_workspace, result_line
    from petq.demo import cache_dir

    if args.ray and args.serial:
        raise SweepError("--serial and --ray exclude each other")
    if args.models and args.model_path:
        raise SweepError("--models and --model-path exclude each other: list every model "
                         "after --models")
    backend = "ray" if args.ray else "serial" if args.serial else "local"
    threads = task_threads(backend, args.workers, args.threads)
    check_writable(args.cache_dir or cache_dir())
    if backend == "ray":
        from petq.raysweep import resolve_ray_address

        resolve_ray_address(args.ray)  # an address that does not answer fails here, at once
    groups = args.calibration_classes or []
    # the grid's own errors first, before the dataset is opened (breed names need it)
    specs = expand_grid(args.recipes, args.fractions, args.seeds, [(0,)] * len(groups))
    args.threads = threads
    if args.models:
        args.model_path = args.models[0]
    ws = open_workspace(args)
    models = args.models or [ws.model_path]
    several = len(set(models)) > 1
    class_sets = [tuple(ws.class_index(c) for c in group) for group in groups]
    if class_sets:
        specs = expand_grid(args.recipes, args.fractions, args.seeds, class_sets)
    out = sys.stdout

    def line(cell: Cell, finished: int, total: int) -> None:
        model = f"{Path(cell.model).name}: " if several else ""
        text = f"[{finished}/{total}] {model}{cell.spec.name:28s} "
        if not cell.ok:
            text += f"failed: {cell.error}"
        elif cell.seconds:
            text += f"{result_line(cell.result)}  ({cell.state} in {cell.seconds:.1f} s)"
        else:
            text += f"{result_line(cell.result)}  (cached)"
        print(text, file=out, flush=True)

    def progress(status: SweepStatus, cell: Cell | None) -> None:
        if cell is not None:
            line(cell, status.count("done", "cached", "failed"), status.total)
            return
        if status.finished is not None:
            return
        queued, cached = status.count("queued"), status.count("cached")
        where = (f"Ray ({status.workers} task slot(s))" if backend == "ray" else
                 f"a local pool of {status.workers} process(es)" if backend == "local"
                 else "this process")
        plan = f"{queued} to run on {where}, {status.threads} thread(s) per task" if queued \
            else "nothing to run"
        print(f"sweep: {status.total} cell(s), {cached} cached, {plan}", file=sys.stderr,
              flush=True)
        shown = [c for c in status.cells if c.state == "cached"]
        for n, c in enumerate(shown, 1):
            line(c, n, status.total)

    results_path = Path(args.results_path)
    cells = run_sweep(
        models, ws.dataset.root, ws.cache.root, specs, args.test_dataset_fraction,
        backend=backend, address=None if args.ray in (None, "local") else args.ray,
        workers=args.workers, progress=progress, threads=threads,
        preprocessing=args.preprocessing, max_retries=args.max_retries,
        log_dir=results_path / "logs" if backend == "local" else None)
    csv_path = write_csv(cells, results_path / "sweep.csv")
    config = {
        "models": [str(m) for m in models], "dataset_root": str(ws.dataset.root),
        "cache_dir": str(ws.cache.root), "recipes": args.recipes, "fractions": args.fractions,
        "seeds": args.seeds, "calibration_classes": [list(g) for g in class_sets],
        "test_dataset_fraction": args.test_dataset_fraction, "backend": backend,
        "ray": args.ray, "workers": args.workers, "threads": threads,
        "cells": [c.spec.name for c in cells],  # model by model, as in sweep.csv
    }
    from petq.cache import write_json_atomic

    write_json_atomic(results_path / "sweep-config.json", config)
    failed = sum(not c.ok for c in cells)
    total = sum(c.seconds for c in cells)
    print(f"sweep: {len(cells) - failed} of {len(cells)} cell(s) have results "
          f"({total:.1f} task-seconds); wrote {csv_path}", file=sys.stderr)
    return 1 if failed else 0

"""Conversions ahead of evaluation: one spawned process converts, this one evaluates.

The converter runs its calibration on one core, and a run of several variants
spends about a third of its time there; the other core would idle. So a run that
must convert two or more variants hands them to one spawned process, the largest
calibrations first, while this process decodes (the trainval images first, which
the converter process calibrates on) and evaluates in the run's order.

The converter process imports TensorFlow and loads the Keras model anyway, so it
also does all this process would need TensorFlow for: it reads the model's facts
first (parameter count, input shape), and after its conversions it runs the native
model's accuracy pass; once this process waits, it times the native latency and
the report's interleaved timings against it. This process never imports TensorFlow
(4-5 CPU-seconds) and waits for the conversions it needs rather than converting
them itself.

On a model the cache has never read, the CLI starts that process first thing
(`start_converter`), before the run's calibration picks, whose scikit-learn import
alone takes a second; `ConvertAhead` takes it, or stops it when the run needs none.

Its tasks report their progress on a queue (each stage's ends, and at most one count
per REPORT_S between), so a wait here shows the calibration or accuracy pass it waits for
as it goes, not one count that stands still for seconds.

Both go through the content-addressed cache and its per-entry locks, so a variant
another process is converting is skipped. Nothing the converter process says is
trusted: this process always asks the cache, so a model read, conversion or native
evaluation that failed there is done again here, where its error is reported as
without this module.

`evaluate_run` times latencies only while the converter process has nothing to do:
before that, each variant gets its accuracy pass and its latency waits. Once the
converter process has nothing left to do, `evaluate_run` gives the two
variants next in line their accuracy passes side by side, on half the interpreter
threads each, and then times each alone: two INT8 passes of the demo take 0.98 s one
after the other on two threads each and 0.58 s side by side on one thread each
(`python benchmarks/bench_eval.py --side-by-side`). The second pass runs in the
converter process when there is one: its own interpreter loop, not a second thread
contending for this process's GIL.

Measured in benchmarks/README.md (section 5).
"""

from __future__ import annotations

import functools
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from petq.errors import PetqError
from petq.types import VariantSpec

if TYPE_CHECKING:
    from petq.results import Result
    from petq.workspace import Stage

    ProgressFor = Callable[[tuple[VariantSpec, ...]], Stage | None]  # one spec or a pair
    # what a held spec has before its latency: its scores, its error, a future of its
    # scores (or of an error's text) from the converter process, or None (result cached)
    Found = np.ndarray | PetqError | Future | None


@dataclass(frozen=True)
class Where:
    """What a task in the converter process opens: the run's model, dataset and cache, and
    its thread count (what the native model is timed on there; conversions do not depend on
    it, and accuracy passes there run on one interpreter thread)."""

    model_path: str
    dataset_root: str
    cache_root: str
    preprocessing: str | None = None
    threads: int = 1

    @classmethod
    def of(cls, ws) -> Where:
        return cls(str(ws.model_path), str(ws.dataset.root), str(ws.cache.root),
                   ws.contract.preprocessing, ws.threads)


REPORT_S = 0.2  # how often the converter process reports a task's progress, at most

_reports = None  # in the converter process: the queue its tasks report their progress on


def _init_converter(threads: int, reports) -> None:
    """The converter process: a pool worker on the run's threads, reporting on `reports`."""
    from petq.sweep import _init_pool_worker

    global _reports
    _init_pool_worker(threads, None)
    reports.cancel_join_thread()  # at exit, reports the caller has not read are dropped
    _reports = reports


def _reporting(spec: VariantSpec) -> Stage | None:
    """A progress callback that sends (spec name, stage, done, total) to the caller
    (`ConverterProcess.wait_for` shows it): each stage's first and last call, and at most one
    call every REPORT_S in between."""
    if _reports is None:
        return None
    last = {"stage": "", "at": 0.0}

    def report(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage == last["stage"] and done < total and now - last["at"] < REPORT_S:
            return
        last.update(stage=stage, at=now)
        _reports.put((spec.name, stage, done, total))

    return report


@functools.lru_cache(maxsize=4)
def _workspace(where: Where):
    """One Workspace per run in the converter process (its lists and picks read once)."""
    from petq.workspace import Workspace

    return Workspace(where.model_path, where.dataset_root, where.cache_root, where.threads,
                     where.preprocessing)


@dataclass(frozen=True)
class ConvertTask:
    """One variant to convert in the converter process."""

    where: Where
    spec: dict
    run: tuple[dict, ...] = ()  # the run's specs: static ones share calibration (petq.calibration)


@dataclass(frozen=True)
class PassTask:
    """One variant's accuracy pass in the converter process (`Workspace.predictions`)."""

    where: Where
    spec: dict
    test_fraction: float


@dataclass(frozen=True)
class EvaluateTask:
    """A variant's result from its scores (`Workspace.evaluate(scores=)`: its latency timed
    there, while the caller waits), then the interleaved timings of the run's specs that
    take it as their reference (`Workspace.time_against_reference`), for the reports."""

    where: Where
    spec: dict
    test_fraction: float
    scores: np.ndarray
    latency_runs: int
    referring: tuple[dict, ...] = ()


def model_info_task(where: Where) -> str | None:
    """The model's facts into the cache (the caller then reads them without importing
    TensorFlow), or the error's text."""
    try:
        ws = _workspace(where)
        if not ws.source_is_tflite:
            ws.keras_runner()  # loaded once: the facts are read from it, the native pass runs it
        ws.model_info(check_classes=False)
    except PetqError as exc:
        return str(exc)
    return None


def pass_task(task: PassTask) -> np.ndarray | str:
    """The variant's scores on one interpreter thread, or the error's text."""
    try:
        spec = VariantSpec.from_dict(task.spec)
        return _workspace(task.where).predictions(spec, task.test_fraction,
                                                  _reporting(spec), threads=1)
    except PetqError as exc:
        return str(exc)


def evaluate_task(task: EvaluateTask) -> str | None:
    """The variant's result and its timings into the cache, or the error's text."""
    try:
        ws = _workspace(task.where)
        ws.evaluate(VariantSpec.from_dict(task.spec), task.test_fraction,
                    latency_runs=task.latency_runs, scores=task.scores)
        for spec in task.referring:
            ws.time_against_reference(VariantSpec.from_dict(spec))
    except PetqError as exc:
        return str(exc)
    return None


def convert_task(task: ConvertTask) -> str | None:
    """Convert one variant into the cache in this process, unless another process is
    converting it now; None, or the error's text."""
    try:
        ws = _workspace(task.where)
        spec = VariantSpec.from_dict(task.spec)
        ws.share_calibration(VariantSpec.from_dict(d) for d in task.run)  # once: same run
        if not ws.cache.held("variants", ws.variant_key(spec)):
            ws.tflite(spec, _reporting(spec))
    except PetqError as exc:
        return str(exc)
    return None


def _order(ws, spec: VariantSpec, position: int) -> tuple:
    """The converter process's order: uncalibrated variants first (the run soon needs
    them: AEQ recipes start from FP32); then those sharing calibration in the run's order
    (each image is calibrated once whatever the order, so the first needed come first);
    then the largest calibration sets, which this process would wait longest for."""
    if not spec.recipe.calibrates:
        return (0, 0)
    if ws.shares_calibration(spec):
        return (1, position)
    return (2, -len(ws.calibration_samples(spec)))


def _to_convert(ws, spec: VariantSpec) -> bool:
    """Not converted yet; a spec with no key (e.g. a class out of range) is left to the
    caller's own conversion, which reports it."""
    try:
        return ws.cached_tflite(spec) is None
    except PetqError:
        return False


def _spawn_can_start() -> bool:
    """A spawned process re-runs the caller's main script by its path: one read from
    standard input or a string (`python -`, `python -c`) has none, and would fail."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return getattr(main, "__spec__", None) is not None or path is None or Path(path).is_file()


class Reports:
    """The caller's end of the queue the converter process reports progress on (`_reporting`):
    each spec's last report, handed out once."""

    def __init__(self, reports):
        self.queue = reports
        self._latest: dict[str, tuple[str, int, int]] = {}  # spec name -> its last report

    def take(self, spec: VariantSpec) -> tuple[str, int, int] | None:
        """`spec`'s last report (stage, done, total) not handed out yet, if any."""
        while True:
            try:
                name, *report = self.queue.get_nowait()
            except queue.Empty:
                break
            self._latest[name] = tuple(report)
        return self._latest.pop(spec.name, None)


class ConverterProcess:
    """The spawned converter process: one pool worker on the run's threads (TensorFlow's
    thread count is set before it loads: the native model is timed there), the queue its
    tasks report progress on, and every task given it. It starts by reading the model's
    facts (`model_info_task`), which imports TensorFlow."""

    def __init__(self, where: Where):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.where = where
        context = multiprocessing.get_context("spawn")  # TensorFlow and fork do not mix
        self._reports = Reports(context.Queue())
        self._pool = ProcessPoolExecutor(1, mp_context=context, initializer=_init_converter,
                                         initargs=(where.threads, self._reports.queue))
        self.futures: list[Future] = []
        self.info = self.submit(model_info_task, where)

    def submit(self, task: Callable, argument: Any) -> Future:
        assert self._pool is not None
        future = self._pool.submit(task, argument)
        self.futures.append(future)
        return future

    def wait_for(self, waited: Iterable[Future], spec: VariantSpec | None = None,
                 progress: Stage | None = None) -> None:
        """Until `waited` are done, passing to `progress` what the converter process
        reports of `spec`'s task there (its calibration, its accuracy pass) as it comes."""
        pending = set(waited)
        while pending:
            _, pending = futures.wait(pending, timeout=REPORT_S)
            report = self._reports.take(spec) if spec is not None else None
            if progress is not None and report is not None:
                progress(*report)

    def close(self, wait: bool = True) -> None:
        """Drop the tasks not started; with `wait`, wait for one in progress. An idle
        process is not waited for: it exits (a second or two of TensorFlow's teardown)
        while the caller goes on."""
        if self._pool is not None:
            busy = any(not future.done() for future in self.futures)
            self._pool.shutdown(wait=wait and busy, cancel_futures=True)
            self._pool = None
            self._reports.queue.close()

    def stop(self) -> None:
        """End the process now, whatever it is doing (a start the run did not need after
        all: the interpreter would otherwise wait for TensorFlow's import at exit)."""
        if self._pool is None:
            return
        if hasattr(self._pool, "terminate_workers"):  # Python 3.14
            self._pool.terminate_workers()
        else:
            for process in list((self._pool._processes or {}).values()):
                process.terminate()
        self.close(wait=False)


def start_converter(ws, specs: Iterable[VariantSpec]) -> ConverterProcess | None:
    """The converter process, started before the run's specs are resolved when this cache
    has never read the model (so nothing of it is converted): TensorFlow's import there
    then overlaps this process's own start (scikit-learn's import, for the calibration
    picks, alone takes a second). `ConvertAhead` takes it, or stops it."""
    candidates = [s for s in specs if not s.is_native and not s.keep_float]
    if (len(candidates) < ConvertAhead.MIN_CONVERSIONS or (os.cpu_count() or 1) < 2
            or not _spawn_can_start() or ws.model_info_cached()):
        return None
    return ConverterProcess(Where.of(ws))


class ConvertAhead:
    """Converts `specs` in a spawned process while the caller evaluates them.

    Does nothing (no process) on one core, or when fewer than two of the specs still
    need converting (one, with a process `started` already: `start_converter`). Use as a
    context manager: leaving it drops the conversions not started and stops the process.
    """

    MIN_CONVERSIONS = 2  # one conversion alone has nothing to overlap with

    def __init__(self, ws, specs: Iterable[VariantSpec],
                 started: ConverterProcess | None = None):
        self._process: ConverterProcess | None = None
        self._conversions: dict[VariantSpec, Future] = {}
        self.calibrates = False  # whether the converter process needs the trainval images
        specs = list(dict.fromkeys(specs))
        ws.share_calibration(specs)  # here and in the converter process
        todo = [s for s in specs if not s.is_native and not s.keep_float
                and _to_convert(ws, s)]
        if (os.cpu_count() or 1) < 2 or not _spawn_can_start() or len(todo) < (
                1 if started else self.MIN_CONVERSIONS):
            if started is not None:
                started.stop()
            return
        self.calibrates = any(s.recipe.calibrates for s in todo)
        position = {s: i for i, s in enumerate(todo)}  # the run's order
        todo.sort(key=lambda s: _order(ws, s, position[s]))
        run = tuple(s.to_dict() for s in specs)
        self._process = started or ConverterProcess(Where.of(ws))
        for spec in todo:
            self._conversions[spec] = self._process.submit(
                convert_task, ConvertTask(self._process.where, spec.to_dict(), run))

    @property
    def active(self) -> bool:
        return self._process is not None

    def converting(self, spec: VariantSpec) -> Future | None:
        """The converter process's conversion of `spec`, when it has it to do."""
        return self._conversions.get(spec)

    def model_info(self, ws) -> dict[str, Any]:
        """`ws.model_info()`, read first by the converter process when there is one (it
        imports TensorFlow anyway), so that this process need not import it for that; its
        error, if any, is met again here."""
        if self._process is not None:
            futures.wait([self._process.info])
        return ws.model_info()

    def predictions(self, spec: VariantSpec, test_fraction: float) -> Future:
        """`spec`'s accuracy pass in the converter process (after the work given it before):
        a future of its scores, or of the error's text. Only while `active`."""
        assert self._process is not None
        return self._process.submit(pass_task, PassTask(self._process.where, spec.to_dict(),
                                                        test_fraction))

    def evaluate(self, spec: VariantSpec, test_fraction: float, scores: np.ndarray,
                 latency_runs: int, referring: Iterable[VariantSpec] = ()) -> Future:
        """`spec`'s result from `scores` (its latency timed there, on the run's threads)
        and the timings of `referring` against it, into the cache: a future of None, or of
        the error's text. Only while `active`."""
        assert self._process is not None
        return self._process.submit(evaluate_task, EvaluateTask(
            self._process.where, spec.to_dict(), test_fraction, scores, latency_runs,
            tuple(s.to_dict() for s in referring)))

    @property
    def idle(self) -> bool:
        """Whether the converter process has nothing left to do (or there is none)."""
        return self._process is None or all(f.done() for f in self._process.futures)

    def wait(self, spec: VariantSpec | None = None, progress: Stage | None = None) -> None:
        """Until the converter process has nothing left to do (see `wait_for`)."""
        if self._process is not None:
            self._process.wait_for(self._process.futures, spec, progress)

    def wait_for(self, waited: Iterable[Future], spec: VariantSpec | None = None,
                 progress: Stage | None = None) -> None:
        """`ConverterProcess.wait_for`. Only while `active`: its futures come from there."""
        assert self._process is not None
        self._process.wait_for(waited, spec, progress)

    def close(self, wait: bool = True) -> None:
        """`ConverterProcess.close`; the run is no longer `active`."""
        if self._process is not None:
            self._process.close(wait)
            self._process = None

    def __enter__(self) -> ConvertAhead:
        return self

    def __exit__(self, kind, *_) -> None:
        self.close(wait=kind is None)  # after an error or Ctrl-C: do not wait for it


def evaluate_run(ws, specs: Iterable[VariantSpec], test_fraction: float = 1.0,
                 progress_for: ProgressFor | None = None, latency_runs: int = 100,
                 scored: Callable[[VariantSpec, np.ndarray], None] | None = None,
                 started: ConverterProcess | None = None,
                 ) -> Iterator[tuple[VariantSpec, Result | PetqError, bool]]:  # fmt: skip
    """Evaluate a run's specs in order, converting ahead (ConvertAhead); yields (spec, its
    Result or its PetqError, computed) as each is done.

    While the converter process works, each variant gets its accuracy pass and waits for
    its latency: latencies are timed only once that process is idle (beside one busy
    core, the demo's FP32 and INT8 medians read about twice their quiet values: `python
    benchmarks/bench_eval.py --busy-core`). The native model is evaluated in the converter
    process, which loads TensorFlow anyway: its accuracy pass after the conversions, its
    latency (and the timings against it) once this process waits; this process then never
    imports TensorFlow. Once the converter process is idle, two converted variants next in
    line get their accuracy passes side by side, then each is timed alone on the run's
    threads as it is yielded. `progress_for(specs)` gives the progress callback for one
    spec, or for a pair's accuracy passes (their images counted together). `scored(spec,
    scores)` is called as each accuracy pass is done, before its latency: what needs only
    the scores (the CLI's confusion figures) need not wait for the timings. `started`:
    the converter process, started early (`start_converter`).
    """
    specs = list(dict.fromkeys(specs))
    with ConvertAhead(ws, specs, started) as ahead:
        lent = _lend_native(ws, specs, test_fraction, ahead)
        if ahead.active:  # the model's facts from the converter process, as it decodes
            first = next((s for s in specs if s not in lent), specs[0])
            try:
                ws.prepare(first, progress_for((first,)) if progress_for else None,
                           calibration_first=ahead.calibrates, read=lambda: ahead.model_info(ws))
            except PetqError:
                pass  # met again by the first spec's evaluation, which reports it
        queue = deque(specs)
        held: list[tuple[VariantSpec, Found]] = []  # to be timed
        while queue or held:
            if held and (ahead.idle or not queue):  # quiet: time each alone, in order
                _wait(ws, ahead, lent, test_fraction, progress_for)
                yield from _time_alone(ws, held, test_fraction, progress_for, latency_runs,
                                       ahead, specs, scored)
                held.clear()
                continue
            pair: tuple[VariantSpec, ...] = (queue.popleft(),)
            if pair[0] in lent:
                scores: dict[VariantSpec, Found] = {pair[0]: lent[pair[0]]}
            elif ahead.idle and queue and _side_by_side(ws, (pair[0], queue[0]), test_fraction):
                pair += (queue.popleft(),)
                scores = _passes_side_by_side(ws, pair, test_fraction,
                                              progress_for(pair) if progress_for else None,
                                              ahead)
            else:  # its accuracy pass now; its latency once the converter process is idle
                scores = {pair[0]: _pass_now(ws, pair[0], test_fraction, progress_for, ahead)}
            held += [(spec, scores[spec]) for spec in pair]
            for spec in pair:
                if scored is not None and isinstance(scores[spec], np.ndarray):
                    scored(spec, scores[spec])


def _lend_native(ws, specs: list[VariantSpec], test_fraction: float,
                 ahead: ConvertAhead) -> dict[VariantSpec, Future]:
    """The native variant's accuracy pass, given to the converter process after its
    conversions when it is in the run and not evaluated yet: {native: future of scores}."""
    native = VariantSpec.native()
    if not ahead.active or native not in specs or ws.source_is_tflite:
        return {}
    try:
        if ws.cached_result(native, test_fraction) is not None:
            return {}
    except PetqError:
        return {}  # evaluated here, which reports it
    return {native: ahead.predictions(native, test_fraction)}


def _wait(ws, ahead: ConvertAhead, lent: dict[VariantSpec, Future], test_fraction: float,
          progress_for: ProgressFor | None) -> None:
    """Until the converter process is idle, showing a lent pass still running there."""
    pending = [spec for spec, future in lent.items() if not future.done()]
    progress = progress_for((pending[0],)) if pending and progress_for else None
    if progress is not None:
        progress("evaluate", 0, len(ws.dataset.test_samples(test_fraction)))
    ahead.wait(pending[0] if pending else None, progress)


def _pass_now(ws, spec: VariantSpec, test_fraction: float, progress_for: ProgressFor | None,
              ahead: ConvertAhead) -> np.ndarray | PetqError | None:  # fmt: skip
    """`spec`'s scores (None when its result is cached), or its PetqError. A variant the
    converter process has still to convert is waited for, not converted here: that would
    import TensorFlow in this process too."""
    progress = progress_for((spec,)) if progress_for else None
    try:
        if ws.cached_result(spec, test_fraction) is not None:
            return None
        conversion = ahead.converting(spec)
        if conversion is not None and not conversion.done():
            if progress is not None:
                progress("convert", 0, 1)
            ahead.wait_for([conversion], spec, progress)  # its error is met again below
        # beside the busy converter process, one interpreter thread: a second one would
        # wait for the core that process holds
        threads = None if ahead.idle else 1
        return ws.predictions(spec, test_fraction, progress, threads)
    except PetqError as exc:
        return exc


def _time_alone(ws, held: list[tuple[VariantSpec, Found]], test_fraction: float,
                progress_for: ProgressFor | None, latency_runs: int, ahead: ConvertAhead,
                specs: list[VariantSpec],
                scored: Callable[[VariantSpec, np.ndarray], None] | None,
                ) -> list[tuple[VariantSpec, Result | PetqError, bool]]:  # fmt: skip
    """Each held spec's result (scores None: cached), all timed before any is given out:
    work that waits for quiet (the CLI's figures, after each result) then waits for all
    the timings, not between two of them. A spec whose pass ran in the converter process
    is timed there too, while this process waits."""
    from petq.evaluate import QUIET

    outcomes: list[tuple[VariantSpec, Result | PetqError, bool]] = []
    with QUIET:
        for spec, found in held:
            if isinstance(found, PetqError):
                outcomes.append((spec, found, False))
                continue
            progress = progress_for((spec,)) if progress_for else None
            there = False
            if isinstance(found, Future):
                found = found.result()
                if isinstance(found, str):  # its error's text: evaluated here, which reports it
                    found = None
                elif scored is not None:
                    scored(spec, found)
                if found is not None and ahead.active:
                    there = _evaluate_there(ws, spec, test_fraction, found, latency_runs,
                                            ahead, specs, progress)
            try:
                result, computed = ws.evaluate(spec, test_fraction, progress, latency_runs,
                                               scores=found)
            except PetqError as exc:  # one variant the model cannot take: the rest go on
                outcomes.append((spec, exc, False))
            else:
                outcomes.append((spec, result, computed or there))
    return outcomes


def _evaluate_there(ws, spec: VariantSpec, test_fraction: float, scores: np.ndarray,
                    latency_runs: int, ahead: ConvertAhead, specs: list[VariantSpec],
                    progress: Stage | None) -> bool:  # fmt: skip
    """`spec`'s result and the run's timings against it, made in the converter process
    while this one waits; whether that worked (if not, this process makes them)."""
    if ws.cached_result(spec, test_fraction) is not None:
        return False
    referring = [s for s in specs if s != spec and s.reference == spec
                 and _converted(ws, s)]
    if progress is not None:
        progress("latency", 0, 1)
    error = ahead.evaluate(spec, test_fraction, scores, latency_runs, referring).result()
    if progress is not None:
        progress("latency", 1, 1)
    return error is None


def _converted(ws, spec: VariantSpec) -> bool:
    """A LiteRT variant whose .tflite is in the cache (a spec with no key, e.g. a class out
    of range, is not: evaluated alone, which reports it)."""
    try:
        return not spec.is_native and ws.cached_tflite(spec) is not None
    except PetqError:
        return False


def _side_by_side(ws, pair: tuple[VariantSpec, ...], test_fraction: float) -> bool:
    """Two LiteRT variants, converted, not evaluated yet, on a run of two threads or more."""
    try:
        return ws.threads > 1 and all(
            _converted(ws, spec) and ws.cached_result(spec, test_fraction) is None
            for spec in pair)
    except PetqError:  # e.g. a bad test fraction: evaluated alone, which reports it
        return False


def _passes_side_by_side(ws, pair: tuple[VariantSpec, ...], test_fraction: float,
                         progress: Stage | None, ahead: ConvertAhead,
                         ) -> dict[VariantSpec, np.ndarray | PetqError]:  # fmt: skip
    """Each spec's scores (or its PetqError), the passes run at once on half the threads:
    the last one's in the converter process when it is there, else in a thread."""
    threads = max(1, ws.threads // len(pair))
    counts: dict[VariantSpec, tuple[int, int]] = {}
    lock = threading.Lock()
    lent = {pair[-1]: ahead.predictions(pair[-1], test_fraction)} if ahead.active else {}

    def one(spec: VariantSpec) -> np.ndarray | PetqError:
        def report(stage: str, done: int, total: int) -> None:
            if progress is not None and stage == "evaluate":
                with lock:
                    counts[spec] = (done, total)
                    progress(stage, sum(d for d, _ in counts.values()),
                             sum(t for _, t in counts.values()))
        if spec in lent:
            report("evaluate", 0, len(ws.dataset.test_samples(test_fraction)))
            ahead.wait_for([lent[spec]], spec, report)
            found = lent[spec].result()
            if not isinstance(found, str):  # an error's text: met again below, as its type
                report("evaluate", len(found), len(found))
                return found
        try:
            return ws.predictions(spec, test_fraction, report, threads)
        except PetqError as exc:
            return exc

    with ThreadPoolExecutor(len(pair), thread_name_prefix="petq-pass") as pool:
        return dict(zip(pair, pool.map(one, pair), strict=True))

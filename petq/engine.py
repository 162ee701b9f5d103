"""The engine: how petq runs variants. The CLI, the dashboard's job worker and `petq sweep`
all run variants through it.

- **One task** (`run_variant`): convert and evaluate one `VariantTask` (the cache first),
  in this process or in another (a sweep's pool worker, a Ray task), with its own cached
  workspace (`workspace_for`). It returns a `VariantOutcome`: the Result or the PetqError.
- **One step after each variant** (`after_pass`, `after_variant`): what the reports and
  the dashboard read of a result, made as soon as it can be (its confusion-matrix figure,
  its paired statistics against its reference, its timing against it), into the cache.
- **Ways to run a list of specs**: `evaluate_run` (this process evaluates while a
  spawned converter process converts and evaluates the native model: the CLI and the
  dashboard's jobs); `run_here` and `run_on_pool` (one task per spec, in this process or
  on a spawned process pool: `petq sweep`); on Ray, petq.raysweep runs the same task.

Why a converter process: the converter calibrates on one core, so while it converts the
run's variants (largest calibrations first) this process decodes and evaluates on the
other; it also does all this process would need TensorFlow for (the model's facts, the
native model's accuracy pass and latency), so this process never imports TensorFlow.
Latencies are timed only while that process has nothing to do (beside a busy core they
read about twice their quiet values); once it is idle, two converted variants get their
accuracy passes side by side on half the threads each (the second in that process), then
each is timed alone. Measured in benchmarks/README.md, section 5.

Nothing the converter process says is trusted: this process asks the cache. So a model
read, conversion or evaluation that failed there, or that it did not finish because it
died or hung (petq.taskprocess bounds every wait on it), is done again here, where its
error, if any, is reported like any other.
"""

from __future__ import annotations

import atexit
import functools
import gc
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from petq.errors import PetqError, SweepError
from petq.taskprocess import SILENCE_S, TaskFailed, TaskProcess, portable, reporter
from petq.types import VariantSpec

if TYPE_CHECKING:
    from petq.results import Details, Result
    from petq.workspace import Stage, Workspace

    ProgressFor = Callable[[tuple[VariantSpec, ...]], Stage | None]  # one spec or a pair
    # what a held spec has before its latency: its scores, its error, a future of its
    # scores from the converter process, or None (result cached)
    Found = np.ndarray | PetqError | Future | None


# ---------------------------------------------------------------- one task


@dataclass(frozen=True)
class Where:
    """What a task in another process opens: the model, dataset and cache, the input
    scaling, the interpreter threads, and the run it belongs to (a process keeps one
    workspace per run: its lists read and its calibration picks made once)."""

    model_path: str
    dataset_root: str
    cache_root: str
    preprocessing: str | None = None
    threads: int = 1
    run: str = ""

    @classmethod
    def of(cls, ws: Workspace, run: str = "") -> Where:
        return cls(str(ws.model_path), str(ws.dataset.root), str(ws.cache.root),
                   ws.contract.preprocessing, ws.threads, run)


@functools.lru_cache(maxsize=4)
def workspace_for(where: Where) -> Workspace:
    """The workspace of `where`, opened once per process and run."""
    from petq.workspace import Workspace

    return Workspace(where.model_path, where.dataset_root, where.cache_root, where.threads,
                     where.preprocessing)


@dataclass(frozen=True)
class VariantTask:
    """One variant to convert and evaluate; picklable, for any process."""

    where: Where
    spec: VariantSpec
    test_fraction: float = 1.0


@dataclass(frozen=True)
class VariantOutcome:
    """What a task gives back: the Result or the error, and where and how long it ran."""

    result: Result | None = None
    error: PetqError | None = None
    computed: bool = False  # evaluated by this task, not found in the cache
    seconds: float = 0.0
    worker: str = ""  # host:pid


def run_variant(task: VariantTask) -> VariantOutcome:
    """Convert and evaluate one variant in this process (the cache first). Never raises
    for one variant the model cannot take, nor for a bug: its error comes back, so the
    rest of a sweep goes on."""
    start = time.perf_counter()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    try:
        ws = workspace_for(task.where)
        result, computed = ws.evaluate(task.spec, task.test_fraction)
    except Exception as exc:  # a PetqError, or a bug reported on the variant
        return VariantOutcome(error=portable(exc), seconds=time.perf_counter() - start,
                              worker=worker)
    return VariantOutcome(result, None, computed, time.perf_counter() - start, worker)


def worker_environment(threads: int) -> dict[str, str]:
    """Environment that keeps one task's TensorFlow and OpenMP to `threads` threads."""
    n = str(max(1, threads))
    return {"TF_NUM_INTRAOP_THREADS": n, "TF_NUM_INTEROP_THREADS": n, "OMP_NUM_THREADS": n,
            "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}


def init_worker_process(threads: int, log_dir: str | None = None) -> None:
    """A spawned worker (pool worker, converter process): thread limits before TensorFlow
    loads; its output to a log in `log_dir`, if given.

    numpy is already loaded here (the spawn re-imports the caller's modules) and read
    OMP_NUM_THREADS too early, so its OpenBLAS pool is limited through threadpoolctl."""
    os.environ.update(worker_environment(threads))
    atexit.register(gc.freeze)  # exit without walking TensorFlow's objects (petq.cli.run)
    from threadpoolctl import threadpool_limits

    threadpool_limits(max(1, threads))
    if log_dir:
        log = os.open(Path(log_dir) / f"worker-{os.getpid()}.log",
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)


@dataclass(frozen=True)
class PathProbe:
    """What `probe_paths` found on one machine."""

    host: str
    pid: int
    problems: tuple[str, ...]  # each names the path and what is wrong with it
    versions: dict[str, str] = field(default_factory=dict)  # library_versions()
    cpus: int = 1


def probe_paths(model_path: str, dataset_root: str, cache_root: str) -> PathProbe:
    """Can this process read the model and dataset and write the cache? Runs before any
    work in the caller and, on Ray, once on every node."""
    from petq.workspace import library_versions

    problems = []
    if not Path(model_path).exists():
        problems.append(f"model {model_path} not found")
    if not (Path(dataset_root) / "annotations").is_dir():
        problems.append(f"dataset {dataset_root} not found (no annotations/ folder)")
    try:
        check_writable(cache_root)
    except SweepError as exc:
        problems.append(str(exc))
    return PathProbe(socket.gethostname(), os.getpid(), tuple(problems), library_versions(),
                     os.cpu_count() or 1)


def check_writable(cache_root: Path | str) -> None:
    """Create the cache folder and a file in it, then remove the file: SweepError if not."""
    root = Path(cache_root)
    probe = root / f".write-probe-{socket.gethostname()}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"petq")
        probe.unlink()
    except OSError as exc:
        raise SweepError(f"cache folder {root} is not writable here "
                         f"({socket.gethostname()}): {exc.strerror or exc}") from None


# ---------------------------------------------------------------- running a list of tasks


Done = Callable[[Any, VariantOutcome], None]  # done(task id, outcome), as each task ends


def run_here(tasks: Mapping[Any, VariantTask], done: Done) -> None:
    """Each task in this process, in order."""
    for key, task in tasks.items():
        done(key, run_variant(task))


def run_on_pool(tasks: Mapping[Any, VariantTask], done: Done, workers: int, threads: int,
                max_retries: int, log_dir: Path | str | None = None) -> None:
    """The tasks on a spawned process pool of `workers` (`threads` each). A dead worker
    breaks the pool: what did not finish is sent again on a new pool, up to `max_retries`
    times, and then fails with the reason."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
    pending = dict(tasks)
    restarts = 0
    context = multiprocessing.get_context("spawn")  # TensorFlow and fork do not mix
    while pending:
        pool = ProcessPoolExecutor(
            max(1, min(workers, len(pending))), mp_context=context,
            initializer=init_worker_process,
            initargs=(threads, str(log_dir) if log_dir is not None else None))
        broken = None
        try:
            futures = {pool.submit(run_variant, task): key for key, task in pending.items()}
            for future in as_completed(futures):
                key = futures[future]
                try:
                    outcome = future.result()
                except BrokenProcessPool as exc:
                    broken = exc
                    continue
                del pending[key]
                done(key, outcome)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        if broken is not None:
            restarts += 1
            if restarts > max_retries:
                for key in list(pending):
                    done(key, VariantOutcome(error=TaskFailed(
                        f"a pool worker died {restarts} times ({broken})")))
                pending.clear()


# ---------------------------------------------------------------- the step after each variant


@dataclass(frozen=True)
class AfterVariant:
    """What the step after each variant makes, besides its figure and its paired
    statistics against its reference: its timing against that reference (the Report
    page's speed sentence; the CLI's reports time only what their summary says), its
    paired statistics against native too (Compare's default), its per-layer error."""

    timing: bool = False
    against_native: bool = False
    layers: bool = False


def after_pass(ws: Workspace, spec: VariantSpec, scores: np.ndarray, test_fraction: float,
               passes: dict[VariantSpec, Details], run: Collection[VariantSpec]) -> None:
    """What needs only a variant's scores, made as soon as its accuracy pass is done,
    before its latency is timed: its confusion-matrix figure and the paired statistics its
    pass completes (`passes`: the run's passes so far, filled in here). `after_variant`
    then finds them in the cache."""
    from petq.evaluate import QUIET
    from petq.report import early_confusion_png, early_paired

    with QUIET:  # never beside a latency being timed
        passes[spec], _ = ws.scored(scores, test_fraction)
        early_confusion_png(ws, spec, test_fraction, passes[spec])
        early_paired(ws, test_fraction, passes, run, spec)


def after_variant(ws: Workspace, result: Result, run: Collection[VariantSpec],
                  what: AfterVariant = AfterVariant(), progress: Stage | None = None) -> None:
    """What the reports and the dashboard read of a result, into the cache: its
    confusion-matrix figure, its paired statistics against its reference among the run's
    specs (`reference_spec`) once that is evaluated, and what `what` adds."""
    from petq.evaluate import QUIET
    from petq.report import cached_confusion_png, reference_spec

    spec = result.spec
    if progress is not None:
        progress("figures", 0, 1)
    with QUIET:  # never beside a latency being timed
        cached_confusion_png(ws.cache, result.result_key, spec.name)
    if what.timing:
        if progress is not None:
            progress("timing", 0, 1)
        ws.time_against_reference(spec)
    if progress is not None:
        progress("statistics", 0, 1)
    references = [reference_spec(spec, run)]
    if what.against_native:
        references.append(VariantSpec.native())
    for reference in dict.fromkeys(r for r in references if r is not None and r != spec):
        found = ws.cached_result(reference, result.test_fraction)
        if found is not None:
            with QUIET:
                ws.paired(result.result_key, found.result_key)
    if what.layers and spec.recipe.quantized and not spec.is_native:
        ws.layer_stats(spec, progress=progress)


# ---------------------------------------------------------------- the converter process


def model_info_task(where: Where) -> None:
    """The model's facts into the cache (the caller then reads them without importing
    TensorFlow)."""
    ws = workspace_for(where)
    if not ws.source_is_tflite:
        ws.keras_runner()  # loaded once: the facts are read from it, the native pass runs it
    ws.model_info(check_classes=False)


@dataclass(frozen=True)
class ConvertTask:
    """One variant to convert in the converter process."""

    where: Where
    spec: VariantSpec


def convert_task(task: ConvertTask) -> None:
    """Convert one variant into the cache, unless another process is converting it now."""
    ws = workspace_for(task.where)
    if not ws.cache.held("variants", ws.variant_key(task.spec)):
        ws.tflite(task.spec, reporter(task.spec.name))


@dataclass(frozen=True)
class PassTask:
    """One variant's accuracy pass in the converter process (`Workspace.predictions`)."""

    where: Where
    spec: VariantSpec
    test_fraction: float


def pass_task(task: PassTask) -> np.ndarray:
    """The variant's scores, on one interpreter thread."""
    return workspace_for(task.where).predictions(task.spec, task.test_fraction,
                                                 reporter(task.spec.name), threads=1)


@dataclass(frozen=True)
class EvaluateTask:
    """A variant's result from its scores (`Workspace.evaluate(scores=)`: its latency timed
    there, while the caller waits), then the interleaved timings of the run's specs that
    take it as their reference (`Workspace.time_against_reference`), for the reports."""

    where: Where
    spec: VariantSpec
    test_fraction: float
    scores: np.ndarray
    latency_runs: int
    referring: tuple[VariantSpec, ...] = ()


def evaluate_task(task: EvaluateTask) -> None:
    """The variant's result and its timings into the cache."""
    ws = workspace_for(task.where)
    ws.evaluate(task.spec, task.test_fraction, latency_runs=task.latency_runs,
                scores=task.scores)
    for spec in task.referring:
        ws.time_against_reference(spec)


@dataclass(frozen=True)
class ProfileTask:
    """A share of one spec's calibration images to profile in a profiling process."""

    where: Where
    spec: VariantSpec
    start: int  # where in the spec's calibration ids this process begins
    of: int  # how many processes share them (the converter process included)


def profile_task(task: ProfileTask) -> int:
    """Profile the spec's calibration images from this process's share on (walking on into
    the others' until all are profiled: `RangeProfile.ensure`); how many it calibrated."""
    ws = workspace_for(task.where)
    ids = ws.calibration_ids(task.spec)
    before = ws.range_profile(task.spec).calibrated
    profile = ws.range_profile(task.spec, ids, start=len(ids) * task.start // task.of)
    return profile.calibrated - before


def _order(ws: Workspace, spec: VariantSpec, position: int) -> tuple:
    """The converter process's order: uncalibrated variants first (the run soon needs
    them: AEQ recipes start from FP32); then those sharing calibration in the run's order
    (each image is calibrated once whatever the order, so the first needed come first);
    then the largest calibration sets, which this process would wait longest for."""
    if not spec.recipe.calibrates:
        return (0, 0)
    if ws.shares_calibration(spec):
        return (1, position)
    return (2, -len(ws.calibration_samples(spec)))


def _to_convert(ws: Workspace, spec: VariantSpec) -> bool:
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


class ConverterProcess(TaskProcess):
    """The spawned converter process (a TaskProcess) for one run's `where`: TensorFlow's
    thread count is set before it loads (the native model is timed there). It starts by
    reading the model's facts (`model_info_task`), which imports TensorFlow."""

    def __init__(self, where: Where, silence_s: float = SILENCE_S):
        super().__init__(init_worker_process, (where.threads,), silence_s,
                         name="converter process")
        self.where = where
        self.info = self.submit(model_info_task, where)


def start_converter(ws: Workspace, specs: Iterable[VariantSpec]) -> ConverterProcess | None:
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
    """Converts `specs` in the converter process while the caller evaluates them.

    Does nothing (no process) on one core, or when fewer than two of the specs still
    need converting (one, with a process `started` already: `start_converter`). Use as a
    context manager: leaving it drops the conversions not started and closes the process.
    Once the process is lost (it died, or hung and was stopped), the run is no longer
    `active`: what it did not finish is done in this process.
    """

    MIN_CONVERSIONS = 2  # one conversion alone has nothing to overlap with
    MIN_SHARED = 256  # calibration images a spec needs before profiling processes help
    MAX_HELPERS = 3  # profiling processes at most (each imports TensorFlow)

    def __init__(self, ws: Workspace, specs: Iterable[VariantSpec],
                 started: ConverterProcess | None = None):
        self._process: ConverterProcess | None = None
        self._helpers: list[TaskProcess] = []
        self._shared: list[VariantSpec] = []
        self._waited = False  # whether a helper started once this process waited
        self._cache = ws.cache
        self.conversions: dict[VariantSpec, Future] = {}  # in the converter process's order
        self.calibrates = False  # whether the converter process needs the trainval images
        specs = list(dict.fromkeys(specs))
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
        self._process = started or ConverterProcess(Where.of(ws))
        for spec in todo:
            self.conversions[spec] = self._process.submit(
                convert_task, ConvertTask(self._process.where, spec))
        self._shared = self._shared_specs(ws, todo)
        self._start_helpers(min(self.MAX_HELPERS, (os.cpu_count() or 1) - 2))

    def _shared_specs(self, ws: Workspace, todo: list[VariantSpec]) -> list[VariantSpec]:
        """The specs whose calibration goes through the range profile with many images."""
        try:
            return [s for s in todo if ws.shares_calibration(s)
                    and len(ws.calibration_samples(s)) >= self.MIN_SHARED]
        except PetqError:  # met again by the spec's conversion, which reports it
            return []

    def _start_helpers(self, count: int) -> bool:
        """Profiling processes for the shared specs not converted yet: each starts on its
        own share of a spec's images, and the converter process, profiling the same spec
        from the first, meets their saved batches (`RangeProfile.ensure`). They start on
        the cores beyond this process's and the converter's, and one more once this
        process waits for the converter (a core it leaves idle). They only ever help: one
        that dies or is stopped costs its unsaved batch, which the converter process does."""
        specs = [s for s in self._shared if not self.conversions[s].done()]
        count = min(count, self.MAX_HELPERS - len(self._helpers))
        if count < 1 or not specs or self._process is None:
            return False
        total = len(self._helpers) + count
        for number in range(len(self._helpers) + 1, total + 1):
            helper = TaskProcess(init_worker_process, (1,), name="profiling process")
            for spec in specs:
                helper.submit(profile_task, ProfileTask(self._process.where, spec, number,
                                                        total + 1))
            self._helpers.append(helper)
        return True

    @property
    def helpers(self) -> list[TaskProcess]:
        """The profiling processes helping the converter process (see `_start_helpers`)."""
        return list(self._helpers)

    @property
    def process(self) -> ConverterProcess | None:
        return self._process

    @property
    def active(self) -> bool:
        """Whether the converter process takes work (started, not lost, not closed)."""
        return self._process is not None and self._process.alive

    def converting(self, spec: VariantSpec) -> Future | None:
        """The converter process's conversion of `spec`, when it has it to do."""
        return self.conversions.get(spec)

    def model_info(self, ws: Workspace) -> dict[str, Any]:
        """`ws.model_info()`, read first by the converter process when there is one (it
        imports TensorFlow anyway), so that this process need not import it for that; its
        error, if any, is met again here."""
        if self._process is not None:
            self._process.wait_for([self._process.info])
        return ws.model_info()

    def predictions(self, spec: VariantSpec, test_fraction: float) -> Future:
        """`spec`'s accuracy pass in the converter process (after the work given it
        before): a future of its scores. Only while `active`."""
        assert self._process is not None
        return self._process.submit(pass_task, PassTask(self._process.where, spec,
                                                        test_fraction))

    def evaluate(self, spec: VariantSpec, test_fraction: float, scores: np.ndarray,
                 latency_runs: int, referring: Iterable[VariantSpec] = ()) -> Future:
        """`spec`'s result from `scores` (its latency timed there, on the run's threads)
        and the timings of `referring` against it, into the cache. Only while `active`."""
        assert self._process is not None
        return self._process.submit(evaluate_task, EvaluateTask(
            self._process.where, spec, test_fraction, scores, latency_runs,
            tuple(referring)))

    def value(self, future: Future, spec: VariantSpec | None = None,
              progress: Stage | None = None) -> Any:
        """What a task there gave, once done (see `wait_for`); None when it failed or
        was not finished: the caller then does that work itself, and meets its error."""
        self.wait_for([future], spec, progress)
        return None if future.exception() is not None else future.result()

    @property
    def idle(self) -> bool:
        """Whether the converter process has nothing left to do (or there is none)."""
        return self._process is None or not self._process.busy

    def wait(self, spec: VariantSpec | None = None, progress: Stage | None = None) -> None:
        """Until the converter process has nothing left to do (see `wait_for`)."""
        if self._process is not None:
            self.wait_for(self._process.futures, spec, progress)

    def wait_for(self, waited: Iterable[Future], spec: VariantSpec | None = None,
                 progress: Stage | None = None) -> None:
        """Until `waited` are done, showing `progress` what the converter process
        reports of `spec`'s task there; bounded (`TaskProcess.wait_for`)."""
        if self._process is not None:
            if not self._waited and (os.cpu_count() or 1) >= 2:
                self._waited = self._start_helpers(1)
            self._process.wait_for(waited, spec.name if spec is not None else None, progress)

    def close(self, wait: bool = True) -> None:
        """`TaskProcess.close`; the run is no longer `active`. What a lost process was
        building is cleared from the cache (a live builder's folder never is)."""
        busy = any(helper.busy for helper in self._helpers)
        for helper in self._helpers:
            helper.stop("was stopped: the run's conversions are done")
        self._helpers = []
        if busy:  # what a stopped helper was saving
            self._cache.clear_stale_temp(max_age=0)
        if self._process is not None:
            lost = not self._process.alive
            self._process.close(wait)
            self._process = None
            if lost:
                self._cache.clear_stale_temp(max_age=0)

    def __enter__(self) -> ConvertAhead:
        return self

    def __exit__(self, kind, *_) -> None:
        self.close(wait=kind is None)  # after an error or Ctrl-C: do not wait for it


def evaluate_run(ws: Workspace, specs: Iterable[VariantSpec], test_fraction: float = 1.0,
                 progress_for: ProgressFor | None = None, latency_runs: int = 100,
                 scored: Callable[[VariantSpec, np.ndarray], None] | None = None,
                 started: ConverterProcess | None = None,
                 ) -> Iterator[tuple[VariantSpec, Result | PetqError, bool]]:  # fmt: skip
    """Evaluate a run's specs in order, converting ahead (ConvertAhead); yields (spec, its
    Result or its PetqError, computed) as each is done.

    While the converter process works, each variant gets its accuracy pass and waits for
    its latency: latencies are timed only once that process is idle. The native model is
    evaluated in the converter process: its accuracy pass after the conversions, its
    latency (and the timings against it) once this process waits. Once the converter
    process is idle, two converted variants next in line get their accuracy passes side by
    side, then each is timed alone on the run's threads as it is yielded.

    `progress_for(specs)` gives the progress callback for one spec, or for a pair's
    accuracy passes (their images counted together). `scored(spec, scores)` is called as
    each accuracy pass is done, before its latency: what needs only the scores
    (`after_pass`) need not wait for the timings. `started`: the converter process,
    started early (`start_converter`).
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


def _lend_native(ws: Workspace, specs: list[VariantSpec], test_fraction: float,
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


def _wait(ws: Workspace, ahead: ConvertAhead, lent: dict[VariantSpec, Future], test_fraction: float,
          progress_for: ProgressFor | None) -> None:
    """Until the converter process is idle, showing a lent pass still running there."""
    pending = [spec for spec, future in lent.items() if not future.done()]
    progress = progress_for((pending[0],)) if pending and progress_for else None
    if progress is not None:
        progress("evaluate", 0, len(ws.dataset.test_samples(test_fraction)))
    ahead.wait(pending[0] if pending else None, progress)


def _pass_now(ws: Workspace, spec: VariantSpec, test_fraction: float,
              progress_for: ProgressFor | None, ahead: ConvertAhead,
              ) -> np.ndarray | PetqError | None:  # fmt: skip
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


def _time_alone(ws: Workspace, held: list[tuple[VariantSpec, Found]], test_fraction: float,
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
                found = ahead.value(found)  # None: failed there, evaluated here
                if found is not None and scored is not None:
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


def _evaluate_there(ws: Workspace, spec: VariantSpec, test_fraction: float, scores: np.ndarray,
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
    done = ahead.evaluate(spec, test_fraction, scores, latency_runs, referring)
    ahead.wait_for([done])
    if progress is not None:
        progress("latency", 1, 1)
    return done.exception() is None


def _converted(ws: Workspace, spec: VariantSpec) -> bool:
    """A LiteRT variant whose .tflite is in the cache (a spec with no key, e.g. a class out
    of range, is not: evaluated alone, which reports it)."""
    try:
        return not spec.is_native and ws.cached_tflite(spec) is not None
    except PetqError:
        return False


def _side_by_side(ws: Workspace, pair: tuple[VariantSpec, ...], test_fraction: float) -> bool:
    """Two LiteRT variants, converted, not evaluated yet, on a run of two threads or more."""
    try:
        return ws.threads > 1 and all(
            _converted(ws, spec) and ws.cached_result(spec, test_fraction) is None
            for spec in pair)
    except PetqError:  # e.g. a bad test fraction: evaluated alone, which reports it
        return False


def _passes_side_by_side(ws: Workspace, pair: tuple[VariantSpec, ...], test_fraction: float,
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
            found = ahead.value(lent[spec], spec, report)
            if found is not None:  # else failed there: met again below
                report("evaluate", len(found), len(found))
                return found
        try:
            return ws.predictions(spec, test_fraction, report, threads)
        except PetqError as exc:
            return exc

    with ThreadPoolExecutor(len(pair), thread_name_prefix="petq-pass") as pool:
        return dict(zip(pair, pool.map(one, pair), strict=True))

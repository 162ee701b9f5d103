"""The engine (petq.engine): a spawned converter process and this one share the cache, each
variant is converted once, whichever process gets to it; a converter process that dies or
hangs costs at most its work (petq.taskprocess)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from petq import engine, taskprocess
from petq.engine import ConvertAhead, ConvertTask, convert_task, evaluate_run
from petq.errors import PetqError, SpecError
from petq.taskprocess import ProcessLost, TaskProcess
from petq.types import VariantSpec
from petq.workspace import Workspace
from waiting import wait_until


@pytest.mark.slow
def test_a_run_with_the_converter_process_gives_the_same_files(tiny_model, pet_root,
                                                               shared_cache, tmp_path):
    specs = [VariantSpec.native(), VariantSpec.fp32(), VariantSpec.int8(0.5, seed=3),
             VariantSpec.int8(0.25, seed=3)]
    ws = Workspace(tiny_model, pet_root, tmp_path / "cache", threads=1)
    seen = []
    with ConvertAhead(ws, specs) as converter:
        assert converter.active
        for spec in specs:
            ws.evaluate(spec, progress=lambda stage, *_: seen.append(stage), latency_runs=3)
    assert not converter.active
    alone = Workspace(tiny_model, pet_root, shared_cache, threads=1)  # converted in-process
    for spec in specs[1:]:
        ours, theirs = ws.cached_tflite(spec), alone.tflite(spec)[0]
        assert ours is not None
        assert ours.file("model.tflite").read_bytes() == theirs.file("model.tflite").read_bytes()
    assert "evaluate" in seen


def test_nothing_to_convert_starts_no_process(workspace):
    workspace.tflite(VariantSpec.fp32())
    with ConvertAhead(workspace, [VariantSpec.native(), VariantSpec.fp32()]) as converter:
        assert not converter.active


def test_the_converter_skips_a_variant_another_process_is_converting(tiny_model, pet_root,
                                                                     tmp_path):
    ws = Workspace(tiny_model, pet_root, tmp_path / "cache", threads=1)
    spec = VariantSpec.int8(0.5, seed=11)
    key = ws.variant_key(spec)
    task = ConvertTask(engine.Where.of(ws), spec)
    (ws.cache.root / "locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(ws.cache.root / "locks" / f"variants-{key}.lock")):
        assert ws.cache.held("variants", key)
        assert convert_task(task) is None
        assert ws.cached_tflite(spec) is None  # left to the holder
    assert not ws.cache.held("variants", key)
    assert convert_task(task) is None and ws.cached_tflite(spec) is not None


def test_a_bad_recipe_raises_its_error(tiny_model, pet_root, tmp_path):
    where = engine.Where(str(tiny_model), str(pet_root), str(tmp_path / "cache"))
    with pytest.raises(SpecError, match="out of range"):
        convert_task(ConvertTask(where, VariantSpec.imbint8((99,))))


def test_no_process_when_the_main_script_cannot_be_spawned(workspace, monkeypatch):
    main = sys.modules["__main__"]
    monkeypatch.setattr(main, "__spec__", None, raising=False)
    monkeypatch.setattr(main, "__file__", "<stdin>", raising=False)
    assert not engine._spawn_can_start()
    specs = [VariantSpec.int8(0.5, seed=21), VariantSpec.int8(0.25, seed=21)]
    with ConvertAhead(workspace, specs) as converter:
        assert not converter.active


@pytest.mark.slow  # a cold pipeline: converts and evaluates for real
def test_a_run_pairs_converted_variants_and_gives_what_one_at_a_time_gives(tiny_model,
                                                                          pet_root, tmp_path):
    specs = [VariantSpec.native(), VariantSpec.fp32(), VariantSpec.int8(0.5, seed=5),
             VariantSpec.imbint8((99,)), VariantSpec.int8(0.25, seed=5)]
    ws = Workspace(tiny_model, pet_root, tmp_path / "run", threads=2)
    for spec in (specs[1], specs[2], specs[4]):
        ws.tflite(spec)  # all converted: the run has no converter process, so it is idle
    running, stages = [], []

    def progress_for(names):
        running.append(tuple(s.name for s in names))
        return lambda stage, done, total: stages.append((len(names), stage, done, total))

    outcomes = list(evaluate_run(ws, specs, progress_for=progress_for, latency_runs=3))
    assert [spec for spec, _, _ in outcomes] == specs  # the run's order
    assert isinstance(outcomes[3][1], PetqError) and "99" in str(outcomes[3][1])
    assert (specs[1].name, specs[2].name) in running  # side by side, then timed alone
    n = len(ws.dataset.test)
    assert (2, "evaluate", 2 * n, 2 * n) in stages
    assert not any(pair == 2 and stage == "latency" for pair, stage, *_ in stages)
    alone = Workspace(tiny_model, pet_root, tmp_path / "alone", threads=2)
    for spec, result, computed in outcomes:
        if spec is specs[3]:
            continue
        expected, _ = alone.evaluate(spec, latency_runs=3)
        assert computed and result.threads == 2 and result.latency_runs == 3
        assert result.accuracy == expected.accuracy and result.top5 == expected.top5
        np.testing.assert_array_equal(ws.details(result.result_key).top5_scores,
                                      alone.details(expected.result_key).top5_scores)
    again = list(evaluate_run(ws, specs[:3], progress_for=progress_for))
    assert [computed for *_, computed in again] == [False, False, False]  # cached


def test_a_pass_in_the_converter_process_gives_the_scores_of_one_here(workspace):
    spec = VariantSpec.int8(0.5)
    task = engine.PassTask(engine.Where.of(workspace), spec, 0.5)
    np.testing.assert_array_equal(engine.pass_task(task), workspace.predictions(spec, 0.5))
    with pytest.raises(SpecError, match="out of range"):
        engine.pass_task(engine.PassTask(task.where, VariantSpec.imbint8((99,)), 1.0))


def test_a_task_reports_each_stage_s_ends_and_little_between():
    """What a task in the task process reports to the caller (`taskprocess.throttled`):
    each stage's first and last count, and at most one count per period in between."""
    sent = []
    report = taskprocess.throttled(lambda *call: sent.append(call), period=3600.0)
    for done in range(101):
        report("calibrate", done, 100)
    report("convert", 0, 1)
    report("convert", 1, 1)
    assert sent == [("calibrate", 0, 100), ("calibrate", 100, 100), ("convert", 0, 1),
                    ("convert", 1, 1)]
    sent.clear()
    report = taskprocess.throttled(lambda *call: sent.append(call), period=0.0)
    for done in range(11):
        report("calibrate", done, 10)
    assert len(sent) == 11
    assert taskprocess.reporter("native") is None  # not in a task process: nothing to send


def report_twice(name: str) -> str:
    """A task: two reports on `name`, then another name's."""
    report = taskprocess.reporter(name)
    report("evaluate", 10, 40)
    report("evaluate", 40, 40)
    taskprocess.reporter("other")("calibrate", 5, 9)
    return "reported"


def test_a_wait_is_shown_the_last_report_of_the_waited_task():
    process = TaskProcess(silence_s=60)
    try:
        future = process.submit(report_twice, "native")
        shown = []
        process.wait_for([future], "native", lambda *report: shown.append(report))
        assert future.result() == "reported"
        last = shown[-1] if shown else process.take("native")
        assert last == ("evaluate", 40, 40)  # the latest, never the other name's
        assert process.take("native") is None  # once
        assert process.take("other") == ("calibrate", 5, 9)
    finally:
        process.close()


def test_a_task_s_error_comes_back_as_its_type():
    from petq.types import parse_tasks

    process = TaskProcess(silence_s=60)
    try:
        bad, good = process.submit(parse_tasks, ["no-such-recipe"]), process.submit(len, "ab")
        process.wait_for([bad, good])
        assert isinstance(bad.exception(), SpecError)
        assert good.result() == 2  # the process goes on after a failed task
        odd = process.submit(int, "x")  # not a PetqError: its type and message, as one
        process.wait_for([odd])
        assert isinstance(odd.exception(), taskprocess.TaskFailed)
        assert "ValueError" in str(odd.exception())
    finally:
        process.close()


def test_a_killed_task_process_fails_its_tasks_not_the_caller():
    import signal
    import time

    process = TaskProcess(silence_s=60)
    busy, queued = process.submit(time.sleep, 60), process.submit(len, "ab")
    os.kill(process.pid, signal.SIGKILL)
    started = time.monotonic()
    process.wait_for([busy, queued])
    assert time.monotonic() - started < 30
    for future in (busy, queued):
        assert isinstance(future.exception(), ProcessLost)
        assert "exit code -9" in str(future.exception())
    assert not process.alive
    late = process.submit(len, "ab")  # no more work there: it fails at once
    assert late.done() and isinstance(late.exception(), ProcessLost)
    process.close()


def test_a_silent_task_process_is_stopped_as_hung():
    import time

    process = TaskProcess(silence_s=2.0)
    hung = process.submit(time.sleep, 3600)
    started = time.monotonic()
    process.wait_for([hung])  # bounded by the silence
    assert time.monotonic() - started < 30
    assert isinstance(hung.exception(), ProcessLost) and "hung" in str(hung.exception())
    assert not process.alive
    # ended: its reader thread and stop() both join it, and the one that reaps it sets the
    # exit code a moment later (seen as still running on a loaded machine)
    wait_until(lambda: not process.running, 10, message="the hung process still running")


def test_closing_a_busy_task_process_waits_a_bounded_time():
    import time

    process = TaskProcess(silence_s=2.0)
    process.submit(time.sleep, 3600)
    started = time.monotonic()
    process.close(wait=True)
    assert time.monotonic() - started < 30
    wait_until(lambda: not process.running, 10, message="the closed process still running")


@pytest.mark.slow
def test_a_wait_shows_the_conversion_s_progress_in_the_converter_process(tiny_model, pet_root,
                                                                        tmp_path):
    specs = [VariantSpec.int8(0.5, seed=3), VariantSpec.fp32()]
    ws = Workspace(tiny_model, pet_root, tmp_path / "run", threads=2)
    shown = []
    with ConvertAhead(ws, specs) as converter:
        assert converter.active
        first = next(iter(converter.conversions))  # the largest calibration set first
        converter.wait(first, lambda *call: shown.append(call))
    assert shown and shown[-1][0] in ("calibrate", "convert")
    assert all(stage in ("calibrate", "convert") for stage, *_ in shown)


@pytest.mark.slow
def test_once_idle_the_converter_process_takes_the_second_pass_of_a_pair(tiny_model, pet_root,
                                                                        tmp_path):

    pair = (VariantSpec.int8(0.5, seed=7), VariantSpec.int8(0.25, seed=7))
    ws = Workspace(tiny_model, pet_root, tmp_path / "run", threads=2)
    calls = []
    with ConvertAhead(ws, pair) as converter:
        assert converter.active
        wait_until(lambda: converter.idle, 120, interval=0.2, raise_on_timeout=False)
        assert all(ws.cached_tflite(spec) is not None for spec in pair)
        scores = engine._passes_side_by_side(ws, pair, 1.0, lambda *call: calls.append(call),
                                             converter)
        # the model read, two conversions, the lent pass
        assert len(converter.process.futures) == 4
    for spec in pair:
        np.testing.assert_array_equal(scores[spec], ws.predictions(spec))
    n = len(ws.dataset.test)
    assert ("evaluate", 2 * n, 2 * n) in calls


@pytest.mark.slow
def test_latencies_are_timed_only_once_the_converter_process_is_idle(tiny_model, pet_root,
                                                                     tmp_path, monkeypatch):
    made = []

    class Recorded(ConvertAhead):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(engine, "ConvertAhead", Recorded)
    specs = [VariantSpec.native(), VariantSpec.int8(0.5, seed=9), VariantSpec.int8(0.25, seed=9)]
    ws = Workspace(tiny_model, pet_root, tmp_path / "run", threads=2)
    timed_while_busy, stages = [], []

    def progress_for(names):
        def progress(stage, done, total):
            stages.append((names[0].name, stage))
            if stage == "latency":
                timed_while_busy.append(not made[0].idle)
        return progress

    outcomes = list(evaluate_run(ws, specs, progress_for=progress_for, latency_runs=3))
    assert made[0].calibrates  # a converter process was started
    assert [spec for spec, _, _ in outcomes] == specs and timed_while_busy
    assert not any(timed_while_busy)
    alone = Workspace(tiny_model, pet_root, tmp_path / "alone", threads=2)
    for spec, result, _ in outcomes:
        assert result.accuracy == alone.evaluate(spec, latency_runs=3)[0].accuracy


RUN_IN_A_FRESH_PROCESS = """
import json, sys
from petq.engine import evaluate_run, start_converter
from petq.types import VariantSpec
from petq.workspace import Workspace

if __name__ == "__main__":  # the converter process is spawned: it imports this file again
    ws = Workspace(sys.argv[1], sys.argv[2], sys.argv[3], threads=2)
    specs = [VariantSpec.from_dict(spec) for spec in json.loads(sys.argv[4])]
    started = start_converter(ws, specs)  # as the CLI does, before the calibration picks
    outcomes = [(spec.name, result.accuracy, result.latency_runs, result.threads, computed)
                for spec, result, computed in evaluate_run(ws, specs, latency_runs=3,
                                                           started=started)]
    print(json.dumps({"outcomes": outcomes, "tensorflow": "tensorflow" in sys.modules,
                      "started": started is not None}))
"""


@pytest.mark.slow
def test_the_converter_process_evaluates_the_native_model_and_this_one_never_loads_tensorflow(
        tiny_model, pet_root, tmp_path):
    import json
    import subprocess

    script = tmp_path / "run.py"
    script.write_text(RUN_IN_A_FRESH_PROCESS)
    specs = [VariantSpec.native(), VariantSpec.fp32(), VariantSpec.int8(0.5, seed=13),
             VariantSpec.int8(0.25, seed=13)]
    cache = tmp_path / "run"
    root = Path(__file__).resolve().parent.parent  # petq from this checkout
    done = subprocess.run(
        [sys.executable, str(script), str(tiny_model), str(pet_root), str(cache),
         json.dumps([spec.to_dict() for spec in specs])],
        capture_output=True, text=True, timeout=300, env=os.environ | {"PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["tensorflow"] is False and report["started"] is True
    assert [name for name, *_ in report["outcomes"]] == [spec.name for spec in specs]
    ws = Workspace(tiny_model, pet_root, cache, threads=2)
    alone = Workspace(tiny_model, pet_root, tmp_path / "alone", threads=2)
    for spec, (_, accuracy, runs, threads, computed) in zip(specs, report["outcomes"],
                                                          strict=True):
        assert computed and runs == 3 and threads == 2
        expected, _ = alone.evaluate(spec, latency_runs=3)
        assert accuracy == expected.accuracy
        ours = ws.cached_result(spec, 1.0)
        np.testing.assert_array_equal(ws.details(ours.result_key).top5_scores,
                                      alone.details(expected.result_key).top5_scores)
    # the report's timing of FP32 against native was made there too, for the report to read
    timings = [entry.manifest for entry in ws.cache.entries("latency")]
    assert [(t["a"], t["b"]) for t in timings] == [("tflite-fp32", "native")]


def test_a_converter_process_is_started_early_only_for_a_model_the_cache_never_read(
        workspace, tiny_model, pet_root, tmp_path):
    specs = [VariantSpec.native(), VariantSpec.fp32(), VariantSpec.int8(0.5)]
    workspace.model_info()
    assert engine.start_converter(workspace, specs) is None  # read: maybe all converted
    fresh = Workspace(tiny_model, pet_root, tmp_path / "cache", threads=2)
    assert engine.start_converter(fresh, specs[:2]) is None  # one conversion: nothing to overlap
    started = engine.start_converter(fresh, specs)
    assert started is not None
    started.stop()


def test_a_converter_process_started_for_nothing_is_stopped_at_once(workspace):
    """An early start (`start_converter`) the run does not need, e.g. everything is
    converted, ends the process now: it is not left importing TensorFlow, which the
    interpreter would wait for at exit."""
    import multiprocessing

    specs = [VariantSpec.fp32(), VariantSpec.int8(0.5)]
    for spec in specs:
        workspace.tflite(spec)
    before = set(multiprocessing.active_children())
    started = engine.ConverterProcess(engine.Where.of(workspace))
    workers = set(multiprocessing.active_children()) - before
    assert workers
    with ConvertAhead(workspace, specs, started) as converter:
        assert not converter.active
    for worker in workers:  # the pool's own thread may reap it first: poll, not join
        wait_until(lambda w=worker: w.exitcode is not None, 60, interval=0.05,
                   raise_on_timeout=False)
        assert worker.exitcode == -15  # SIGTERM: stopped, not done with its import


# ---------------------------------------------------------------- a converter process killed


def converter_processes(pid: int) -> list:
    """The spawned processes under `pid` (the converter process; not the resource tracker)."""
    import psutil

    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # ended meanwhile
            continue
    return found


class KillMidConversion:
    """A thread that SIGKILLs the converter process while it builds a variant (its
    calibration), once `find()` gives that process: it watches the cache's variants/ for
    the build's temporary folder, stops the process (SIGSTOP), checks the build is still
    there, then kills it. `killed`: whether it did, mid-build. With `hung` (its
    TaskProcess), it leaves the process stopped instead and shortens its silence bound."""

    def __init__(self, cache: Path, find, timeout: float = 300.0, hung=None):
        import threading

        self.cache, self.find, self.timeout, self.hung = cache, find, timeout, hung
        self.killed = False
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def building(self) -> bool:
        variants = self.cache / "variants"
        return variants.is_dir() and any(p.name.startswith(".tmp-") for p in variants.iterdir())

    def _watch(self) -> None:
        import signal

        import psutil

        def stopped_while_building() -> bool:
            if not self.building():
                return False
            process = self.find()
            if process is None:
                return False
            try:
                process.send_signal(signal.SIGSTOP)
                self.killed = self.building()
                if self.hung is None:
                    process.send_signal(signal.SIGKILL)
                else:  # left stopped, a hung process, and its silence bound shortened
                    self.hung.silence_s = 3.0
            except psutil.Error:
                self.killed = False
            return self.killed

        wait_until(stopped_while_building, self.timeout, interval=0.005,
                   raise_on_timeout=False)


def the_converter_under(pid: int):
    """`find` for KillMidConversion: the newest converter process under `pid`, if any."""
    found = converter_processes(pid)
    return max(found, key=lambda p: p.create_time()) if found else None


def assert_cache_whole(root: Path) -> None:
    """Every entry verifies against its manifest, and no killed build is left."""
    from petq.cache import Cache

    cache = Cache(root)
    for kind in (p for p in root.iterdir() if p.is_dir() and p.name not in ("locks", "jobs")):
        for path in kind.iterdir():
            assert not path.name.startswith(".tmp-"), path
            if not path.name.startswith("."):
                assert cache.get(kind.name, path.name, verify=True) is not None, path


def assert_same_files(ws: Workspace, alone: Workspace, specs) -> None:
    for spec in specs:
        if not spec.is_native:
            ours = ws.cached_tflite(spec).file("model.tflite").read_bytes()
            assert ours == alone.tflite(spec)[0].file("model.tflite").read_bytes()


@pytest.mark.slow
def test_a_converter_process_killed_mid_conversion_costs_only_its_work(
        tiny_model, pet_root, shared_cache, tmp_path):
    specs = [VariantSpec.native(), VariantSpec.int8(0.5, seed=17),
             VariantSpec.int8(0.25, seed=17)]
    ws = Workspace(tiny_model, pet_root, tmp_path / "run", threads=2)
    killer = KillMidConversion(ws.cache.root, lambda: the_converter_under(os.getpid()))
    outcomes = list(evaluate_run(ws, specs, latency_runs=3))
    assert killer.killed
    assert [spec for spec, *_ in outcomes] == specs
    assert all(not isinstance(result, PetqError) and computed for _, result, computed in outcomes)
    alone = Workspace(tiny_model, pet_root, shared_cache, threads=2)
    for spec, result, _ in outcomes:
        assert result.accuracy == alone.evaluate(spec, latency_runs=3)[0].accuracy
    assert_same_files(ws, alone, specs)
    assert_cache_whole(ws.cache.root)


@pytest.mark.slow
def test_a_converter_process_that_hangs_mid_conversion_is_stopped_and_its_work_done_here(
        tiny_model, pet_root, shared_cache, tmp_path):
    import time

    specs = [VariantSpec.int8(0.5, seed=23), VariantSpec.int8(0.25, seed=23)]
    ws = Workspace(tiny_model, pet_root, tmp_path / "run", threads=2)
    started = engine.ConverterProcess(engine.Where.of(ws))
    hang = KillMidConversion(ws.cache.root, lambda: the_converter_under(os.getpid()),
                             hung=started)
    began = time.monotonic()
    outcomes = list(evaluate_run(ws, specs, latency_runs=3, started=started))
    assert hang.killed  # stopped (SIGSTOP) while it built a variant
    assert not started.running  # stopped as hung, then killed: a stopped process ignores SIGTERM
    assert time.monotonic() - began < 240
    assert all(not isinstance(result, PetqError) for _, result, _ in outcomes)
    assert_same_files(ws, Workspace(tiny_model, pet_root, shared_cache, threads=2), specs)
    assert_cache_whole(ws.cache.root)


@pytest.mark.slow
def test_the_cli_survives_its_converter_process_killed_mid_conversion(
        tiny_model, pet_root, shared_cache, tmp_path):
    import subprocess

    cache, results = tmp_path / "cache", tmp_path / "results"
    tasks = ["tflite-int8-0.5", "tflite-int8-0.25"]
    root = Path(__file__).resolve().parent.parent  # petq from this checkout
    cli = subprocess.Popen(
        [sys.executable, "-m", "petq", "experiments", "--model-path", str(tiny_model),
         "--dataset-root", str(pet_root), "--cache-dir", str(cache), "--results-path",
         str(results), "--threads", "2", "--tasks", *tasks],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root,
        env=os.environ | {"PYTHONPATH": str(root)})
    killer = KillMidConversion(cache, lambda: the_converter_under(cli.pid))
    try:
        out, errors = cli.communicate(timeout=600)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(timeout=30)
    assert killer.killed, errors
    assert cli.returncode == 0, errors
    assert "Traceback" not in errors and "petq: error" not in errors
    for name in tasks:
        assert any(line.startswith(name) for line in out.splitlines()), out
    ws = Workspace(tiny_model, pet_root, cache, threads=2)
    alone = Workspace(tiny_model, pet_root, shared_cache, threads=2)
    assert_same_files(ws, alone, [VariantSpec.from_name(name) for name in tasks])
    assert_cache_whole(cache)


@pytest.mark.slow
def test_a_dashboard_job_survives_its_converter_process_killed_mid_conversion(
        tiny_model, pet_root, shared_cache, tmp_path):

    from petq.jobs import Status, job_status, start_job

    cache = tmp_path / "cache"
    specs = [VariantSpec.native(), VariantSpec.int8(0.5, seed=19),
             VariantSpec.int8(0.25, seed=19)]
    job = start_job(tiny_model, pet_root, cache, 2, specs)

    def converter():
        pid = job_status(cache, job).pid
        return the_converter_under(pid) if pid else None

    killer = KillMidConversion(cache, converter)
    record = wait_until(
        lambda: (r := job_status(cache, job)).state not in (Status.QUEUED, Status.RUNNING) and r,
        600, interval=0.2, raise_on_timeout=False) or job_status(cache, job)
    log = (cache / "jobs" / f"{job}.log").read_text()
    assert killer.killed, log
    assert record.state is Status.DONE, (record, log)
    assert all(v.status is Status.DONE for v in record.variants), record
    assert "Traceback" not in log
    ws = Workspace(tiny_model, pet_root, cache, threads=2)
    alone = Workspace(tiny_model, pet_root, shared_cache, threads=2)
    assert_same_files(ws, alone, specs)
    assert_cache_whole(cache)


# ---------------------------------------------------------------- profiling processes


def _ranges_saved(cache: Path) -> int:
    """Images in the cache's range-profile batches, duplicates counted."""
    import json

    return sum(len(json.loads((entry / "ids.json").read_text()))
               for entry in (cache / "ranges").iterdir() if not entry.name.startswith("."))


@pytest.mark.slow
@pytest.mark.parametrize("kill", [False, True])
def test_profiling_processes_share_a_conversion_s_calibration_and_may_die(
        kill, tiny_model, pet_root, shared_cache, tmp_path, monkeypatch):
    """Three cores: one profiling process from the start (beside this process and the
    converter), SIGKILLed once a batch is saved, and one more once this process waits for
    the converter. Two cores: none until this process waits, then one."""
    import signal

    from petq.profile import BATCH

    monkeypatch.setattr(ConvertAhead, "MIN_SHARED", 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 3 if kill else 2)
    specs = [VariantSpec.fp32(), VariantSpec.int8(1.0, seed=31), VariantSpec.int8(0.5, seed=31)]
    ws = Workspace(tiny_model, pet_root, tmp_path / "run", threads=1)
    with ConvertAhead(ws, specs) as ahead:
        assert ahead.active and len(ahead.helpers) == (1 if kill else 0)
        if kill:  # once a batch is saved (by either), the helper dies: the run goes on
            wait_until(lambda: (ws.cache.root / "ranges").is_dir()
                       and any((ws.cache.root / "ranges").iterdir()), 300, interval=0.01)
            os.kill(ahead.helpers[0].pid, signal.SIGKILL)
        ahead.wait()
        helpers = ahead.helpers
    assert len(helpers) == (2 if kill else 1)  # and one more once this process waited
    assert not any(helper.running for helper in helpers)  # stopped with the run, or killed
    ids = ws.calibration_ids(specs[1])
    assert ws.range_profile(specs[1]).profiled(ids) == set(ids)
    assert _ranges_saved(ws.cache.root) <= len(ids) + (len(helpers) + 1) * BATCH
    assert_same_files(ws, Workspace(tiny_model, pet_root, shared_cache, threads=1), specs)
    assert_cache_whole(ws.cache.root)

"""Sweeps: grid expansion, bad input refused before any work, and the three backends
(serial, spawned process pool, Ray) on the tiny fixtures, with a worker killed mid-task."""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import threading
from pathlib import Path

import psutil
import pytest

from petq import raysweep, sweep
from petq.cache import Cache
from petq.errors import PetqError, SpecError
from petq.sweep import Cell, SweepError, expand_grid, run_sweep, write_csv
from petq.types import VariantSpec
from petq.workspace import Workspace
from waiting import wait_until

GRID = {"recipes": ["tflite-fp32", "tflite-int8"], "fractions": [0.5], "seeds": [1234, 7]}
GRID_NAMES = ["tflite-fp32", "tflite-int8-0.5", "tflite-int8-0.5-s7"]


# ---------------------------------------------------------------- the grid


def test_grid_crosses_calibrating_recipes_only():
    specs = expand_grid(["tflite-fp32", "tflite-int8", "aeq-wi8-ai8"], [0.01, 0.08], [1234, 1])
    names = [s.name for s in specs]
    assert names == [
        "tflite-fp32",
        "tflite-int8-0.01", "tflite-int8-0.01-s1", "tflite-int8-0.08", "tflite-int8-0.08-s1",
        "aeq-wi8-ai8-0.01", "aeq-wi8-ai8-0.01-s1", "aeq-wi8-ai8-0.08", "aeq-wi8-ai8-0.08-s1",
    ]
    assert specs[1] == VariantSpec.of("tflite-int8", 0.01, seed=1234)


def test_grid_deduplicates_and_adds_class_sets():
    specs = expand_grid(["tflite-int8", "tflite-int8", "tflite-fp16"], [0.3, 0.30], [5, 5],
                        classes=[(5,), (7, 3), (3, 7)])
    assert [s.name for s in specs] == ["tflite-int8-0.3-s5", "tflite-imbint8",
                                       "tflite-imbint8-c3+7", "tflite-fp16"]


def test_fractions_for_non_calibrating_recipes_are_ignored():
    assert [s.name for s in expand_grid(["tflite-fp32", "native"], [0.5], [1, 2])] == [
        "tflite-fp32", "native"]


@pytest.mark.parametrize("recipes, fractions, seeds, message", [
    ([], [0.1], [1], "grid is empty"),
    (["tflite-int9"], [0.1], [1], "unknown recipe"),
    (["tflite-int8"], [0.0], [1], "(0, 1]"),
    (["tflite-int8"], [1.5], [1], "(0, 1]"),
    (["tflite-int8"], [float("nan")], [1], "(0, 1]"),
    (["tflite-int8"], ["abc"], [1], "must be a number"),
    (["tflite-int8"], [], [1], "calibrate"),
    (["tflite-int8"], [0.1], [-1], "seed"),
    (["tflite-int8"], [0.1], [], "seed"),
])
def test_bad_grids_are_refused(recipes, fractions, seeds, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace("]", r"\]")):
        expand_grid(recipes, fractions, seeds)


def test_threads_per_task():
    cores = os.cpu_count() or 1
    assert sweep.task_threads("local", workers=cores) == 1
    assert sweep.task_threads("local", workers=1) == cores
    assert sweep.task_threads("serial") == cores
    assert sweep.task_threads("ray") == 1
    assert sweep.task_threads("ray", threads=3) == 3
    with pytest.raises(SweepError):
        sweep.task_threads("local", threads=0)


# ---------------------------------------------------------------- bad input, before any work


@pytest.fixture()
def fake_model(tmp_path) -> Path:
    """A model file that is never opened: every check below must fail before that."""
    path = tmp_path / "never-opened.keras"
    path.write_bytes(b"not a model")
    return path


def test_unreachable_ray_address_fails_fast(fake_model, pet_root, tmp_path):
    """One bounded TCP check, before Ray is started or anything is read: no ray.init
    (whose connection retries take minutes) and no cache written."""
    import ray

    cache = tmp_path / "cache"
    with pytest.raises(SweepError, match=r"no Ray cluster answers at 127\.0\.0\.1:1 within"):
        run_sweep(fake_model, pet_root, cache, [VariantSpec.fp32()], backend="ray",
                  address="127.0.0.1:1")
    assert not ray.is_initialized()
    assert not (cache / "decoded").exists() and not (cache / "variants").exists()


def test_ray_auto_with_a_dead_address_fails_fast(monkeypatch):
    import ray

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(SweepError, match=r"no Ray cluster answers at 127\.0\.0\.1:1 within"):
        raysweep.resolve_ray_address("auto")
    assert not ray.is_initialized()


@pytest.mark.parametrize("address", ["host:port", "ray://h:x"])
def test_malformed_ray_address(address):
    with pytest.raises(SweepError, match="bad Ray address"):
        raysweep.resolve_ray_address(address)


def test_unwritable_cache_is_one_clear_error(fake_model, pet_root, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(SweepError, match="not writable"):
        run_sweep(fake_model, pet_root, blocker / "cache", [VariantSpec.fp32()])


@pytest.mark.parametrize("kwargs, error", [
    ({"backend": "dask"}, SweepError),
    ({"workers": 0}, SweepError),
    ({"test_fraction": 1.5}, SpecError),
])
def test_bad_options(fake_model, pet_root, tmp_path, kwargs, error):
    with pytest.raises(error):
        run_sweep(fake_model, pet_root, tmp_path / "cache", [VariantSpec.fp32()], **kwargs)
    assert not (tmp_path / "cache").exists()


def test_empty_spec_list(fake_model, pet_root, tmp_path):
    with pytest.raises(SpecError, match="empty"):
        run_sweep(fake_model, pet_root, tmp_path / "cache", [])


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="petq")
    sweep.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["sweep", *argv])


@pytest.mark.parametrize("argv, message", [
    (["--recipes", "tflite-int9"], "unknown recipe"),
    (["--recipes", "tflite-int8", "--fractions", "2"], "(0, 1]"),
    (["--recipes", "tflite-int8"], "calibrate"),
    (["--recipes", "tflite-fp32", "--ray", "127.0.0.1:1"], "no Ray cluster answers"),
    (["--recipes", "tflite-fp32", "--ray", "local", "--serial"], "exclude each other"),
])
def test_cli_bad_input(argv, message, fake_model, pet_root, tmp_path):
    args = _cli([*argv, "--model-path", str(fake_model), "--dataset-root", str(pet_root),
                 "--cache-dir", str(tmp_path / "cache"), "--results-path", str(tmp_path / "r")])
    with pytest.raises(PetqError, match=message.replace("(", r"\(").replace("]", r"\]")):
        args.func(args)
    assert not (tmp_path / "r").exists()


def test_csv_row_of_a_failed_cell(tmp_path):
    cell = Cell(VariantSpec.of("aeq-wi8-ai8", 0.08, seed=3), error="the model is too odd",
                state="failed")
    rows = list(csv.DictReader(write_csv([cell], tmp_path / "sweep.csv").open()))
    assert rows == [{**{k: "" for k in sweep.CSV_COLUMNS}, "recipe": "aeq-wi8-ai8",
                     "fraction": "0.08", "seed": "3", "variant": "aeq-wi8-ai8-0.08-s3",
                     "status": "failed", "error": "the model is too odd"}]


# ---------------------------------------------------------------- running sweeps


def _run(tiny_model, pet_root, cache, backend, **kwargs) -> list[Cell]:
    return run_sweep(tiny_model, pet_root, cache, expand_grid(**GRID), backend=backend,
                     threads=1, **kwargs)


def _assert_cache_clean(cache_root: Path) -> None:
    """No temp or trash folder left, and every entry's files match its manifest."""
    cache = Cache(cache_root)
    for kind in ("decoded", "models", "variants", "results"):
        folder = cache_root / kind
        assert folder.is_dir(), kind
        names = [p.name for p in folder.iterdir()]
        assert not [n for n in names if n.startswith(".")], (kind, names)
        for name in names:
            assert cache.get(kind, name, verify=True) is not None, (kind, name)


def _same_results(cells: list[Cell], reference: list[Cell]) -> None:
    assert [c.spec.name for c in cells] == GRID_NAMES
    for cell, ref in zip(cells, reference, strict=True):
        assert cell.ok, cell.error
        assert cell.result.result_key == ref.result.result_key  # the same inputs, the same key
        assert (cell.result.accuracy, cell.result.g_mean, cell.result.file_size_bytes) == (
            ref.result.accuracy, ref.result.g_mean, ref.result.file_size_bytes)


@pytest.fixture(scope="module")
def serial_cells(tiny_model, pet_root, tmp_path_factory):
    cache = tmp_path_factory.mktemp("sweep-serial")
    return cache, _run(tiny_model, pet_root, cache, "serial")


def _kill_once_while_building(cache_root: Path, find: callable) -> dict:
    """Start a thread that SIGKILLs one worker (found by `find`) as soon as a variant or a
    result is being written into the cache; the returned dict gets its pid."""
    killed: dict = {}

    def building_worker():
        building = [p for kind in ("variants", "results") if (cache_root / kind).is_dir()
                    for p in (cache_root / kind).iterdir() if p.name.startswith(".tmp-")]
        workers = find() if building else []
        return workers and (workers[0], building[0])

    def watch() -> None:
        found = wait_until(building_worker, timeout=120, interval=0.05,
                           raise_on_timeout=False)
        if found:
            worker, temp = found
            os.kill(worker.pid, signal.SIGKILL)
            killed.update(pid=worker.pid, temp=str(temp))

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    killed["thread"] = thread
    return killed


@pytest.mark.slow
def test_serial_sweep_and_its_csv(serial_cells, tmp_path, tiny_model, pet_root, shared_cache):
    cache, cells = serial_cells
    _same_results(cells, cells)
    swept, plain = (Workspace(tiny_model, pet_root, root, threads=1) for root in (cache,
                                                                                  shared_cache))
    for cell in cells[1:]:  # INT8 cells of one recipe share calibration: the same files
        assert (swept.cached_tflite(cell.spec).file("model.tflite").read_bytes()
                == plain.tflite(cell.spec)[0].file("model.tflite").read_bytes())
    assert {c.state for c in cells} == {"done"}
    assert {c.latency_context for c in cells} == {"serial"}
    rows = list(csv.DictReader(write_csv(cells, tmp_path / "sweep.csv").open()))
    assert [r["variant"] for r in rows] == GRID_NAMES
    assert [r["seed"] for r in rows] == ["", "1234", "7"]
    assert [r["fraction"] for r in rows] == ["", "0.5", "0.5"]
    assert float(rows[1]["accuracy"]) == cells[1].result.accuracy
    assert rows[0]["threads"] == "1" and rows[0]["status"] == "done" and not rows[0]["error"]
    _assert_cache_clean(cache)


@pytest.mark.slow
def test_local_pool_matches_serial_and_skips_cached_cells(serial_cells, tiny_model, pet_root,
                                                          tmp_path):
    events: list[tuple[str | None, float]] = []

    def progress(status, cell):
        events.append((cell.spec.name if cell else None, status.fraction_done))

    cells = _run(tiny_model, pet_root, tmp_path / "cache", "local", workers=2,
                 progress=progress, log_dir=tmp_path / "logs")
    _same_results(cells, serial_cells[1])
    assert {c.latency_context for c in cells} == {"parallel: 2 tasks per machine"}
    assert len({c.worker for c in cells}) >= 1 and all(c.seconds > 0 for c in cells)
    assert events[0] == (None, 0.0) and events[-1] == (None, 1.0)
    assert sorted(name for name, _ in events[1:-1]) == sorted(GRID_NAMES)

    status = sweep.SweepStatus([], "local")
    again = _run(tiny_model, pet_root, tmp_path / "cache", "local", workers=2, status=status)
    assert [c.state for c in again] == ["cached"] * 3
    assert all(c.worker == "" and c.seconds == 0 for c in again)  # never sent to a worker
    assert status.fraction_done == 1.0 and status.count("cached") == 3
    _assert_cache_clean(tmp_path / "cache")


@pytest.mark.slow
def test_killed_pool_worker_is_restarted(serial_cells, tiny_model, pet_root, tmp_path):
    me = psutil.Process()

    def pool_workers():
        return [p for p in me.children() if "spawn_main" in " ".join(p.cmdline())]

    killed = _kill_once_while_building(tmp_path / "cache", pool_workers)
    cells = _run(tiny_model, pet_root, tmp_path / "cache", "local", workers=2)
    killed["thread"].join(5)
    assert "pid" in killed, "no worker was killed mid-task"
    _same_results(cells, serial_cells[1])
    assert all(c.worker.rsplit(":", 1)[1] != str(killed["pid"]) for c in cells)
    _assert_cache_clean(tmp_path / "cache")


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_killed_ray_worker_is_retried_and_the_cache_stays_whole(
        local_ray, serial_cells, tiny_model, pet_root, tmp_path):
    me = psutil.Process()

    def ray_tasks():
        return [p for p in me.children(recursive=True)
                if " ".join(p.cmdline()).startswith("ray::run_variant")]

    killed = _kill_once_while_building(tmp_path / "cache", ray_tasks)
    cells = _run(tiny_model, pet_root, tmp_path / "cache", "ray", max_retries=2)
    killed["thread"].join(5)
    assert "pid" in killed, "no Ray worker was killed mid-task"
    _same_results(cells, serial_cells[1])
    assert all(c.worker.rsplit(":", 1)[1] != str(killed["pid"]) for c in cells)
    assert {c.state for c in cells} == {"done"}
    assert all(c.latency_context.startswith("parallel: up to 2 tasks") for c in cells)
    _assert_cache_clean(tmp_path / "cache")
    assert local_ray.is_initialized()  # a Ray the caller started is left running
    address = local_ray.get_runtime_context().gcs_address  # a live cluster passes the check
    assert raysweep.resolve_ray_address(address) == address


@pytest.mark.slow
def test_cli_sweep_reads_the_cache_and_writes_csv(serial_cells, tiny_model, pet_root,
                                                  tmp_path, capsys):
    cache, cells = serial_cells
    results = tmp_path / "results"
    args = _cli(["--recipes", "tflite-fp32", "tflite-int8", "--fractions", "0.5",
                 "--seeds", "1234", "7", "--serial", "--threads", "1",
                 "--model-path", str(tiny_model), "--dataset-root", str(pet_root),
                 "--cache-dir", str(cache), "--results-path", str(results)])
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    assert "3 cached, nothing to run" in err
    assert out.count("(cached)") == 3
    rows = list(csv.DictReader((results / "sweep.csv").open()))
    assert [(r["variant"], r["status"]) for r in rows] == [(n, "cached") for n in GRID_NAMES]
    assert [r["result_key"] for r in rows] == [c.result.result_key for c in cells]
    assert all(r["latency_context"] == sweep.CACHED for r in rows)
    config = json.loads((results / "sweep-config.json").read_text())
    assert config["cells"] == GRID_NAMES and config["threads"] == 1


@pytest.mark.slow
def test_a_grid_over_two_models(tiny_model, pet_root, tmp_path, capsys):
    """The grid's model axis: every cell for each model, in sweep.csv model by model."""
    cache = tmp_path / "cache"
    fp32 = Workspace(tiny_model, pet_root, cache, threads=1).tflite(VariantSpec.fp32())[0]
    second = tmp_path / "second.tflite"  # a float .tflite source: fp32 and AEQ recipes
    second.write_bytes(fp32.file("model.tflite").read_bytes())
    results = tmp_path / "results"
    args = _cli(["--recipes", "tflite-fp32", "aeq-wi8-afp32", "--serial", "--threads", "1",
                 "--models", str(tiny_model), str(second), "--dataset-root", str(pet_root),
                 "--cache-dir", str(cache), "--results-path", str(results)])
    assert args.func(args) == 0
    out, _ = capsys.readouterr()
    assert "second.tflite: aeq-wi8-afp32" in out
    rows = list(csv.DictReader((results / "sweep.csv").open()))
    assert [(r["model"], r["variant"]) for r in rows] == [
        (tiny_model.name, "tflite-fp32"), (tiny_model.name, "aeq-wi8-afp32"),
        ("second.tflite", "tflite-fp32"), ("second.tflite", "aeq-wi8-afp32")]
    assert all(r["status"] in ("done", "cached") for r in rows)
    assert len({r["result_key"] for r in rows}) == 4
    # the .tflite source is the Keras model's own FP32 file: the same predictions
    assert rows[0]["accuracy"] == rows[2]["accuracy"]
    config = json.loads((results / "sweep-config.json").read_text())
    assert config["models"] == [str(tiny_model), str(second)]
    with pytest.raises(SweepError, match="exclude each other"):
        both = _cli(["--recipes", "tflite-fp32", "--models", str(second), "--model-path",
                     str(tiny_model), "--dataset-root", str(pet_root),
                     "--cache-dir", str(tmp_path / "other")])
        both.func(both)
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_a_dashboard_job_sends_its_grid_to_ray(local_ray, tiny_model, pet_root, tmp_path):
    """The Convert page's grid on Ray: a background job runs the sweep there, each variant's
    record follows its cell, and the results join the session's (same thread count)."""
    from petq.jobs import Status, job_status, start_job

    cache = tmp_path / "cache"
    address = local_ray.get_runtime_context().gcs_address
    specs = expand_grid(["tflite-fp32", "tflite-int8"], [0.5], [1234])
    job_id = start_job(tiny_model, pet_root, cache, 1, specs, ray=address)
    wait_until(lambda: not job_status(cache, job_id).active, timeout=240, interval=0.5,
               message=lambda: str(job_status(cache, job_id)))
    job = job_status(cache, job_id)
    assert job.state is Status.DONE, job
    assert job.ray == address
    assert [v.status for v in job.variants] == [Status.DONE, Status.DONE]
    ws = Workspace(tiny_model, pet_root, cache, threads=1)
    assert all(ws.cached_result(spec) is not None for spec in specs)
    with pytest.raises(PetqError, match="no Ray cluster answers"):
        start_job(tiny_model, pet_root, cache, 1, specs, ray="127.0.0.1:1")

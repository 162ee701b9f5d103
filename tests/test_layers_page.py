"""The Layers page (per-layer error, selective quantization) and its figures, on the tiny
fixtures through Streamlit's AppTest: real conversions, a real background job."""

from __future__ import annotations

import pytest

from conftest import open_page
from petq import layerviews
from petq.jobs import Status, list_jobs
from petq.types import VariantSpec
from waiting import wait_until

pytestmark = pytest.mark.usefixtures("dashboard_navigation")


@pytest.fixture(scope="module")
def layered(tiny_model, pet_root, tmp_path_factory):
    """FP32, INT8 with per-layer statistics, and one keep-1 variant of it; a second INT8
    variant evaluated without statistics."""
    from petq.workspace import Workspace

    cache = tmp_path_factory.mktemp("layers-cache")
    ws = Workspace(tiny_model, pet_root, cache, threads=1)
    for spec in (VariantSpec.fp32(), VariantSpec.int8(0.5), VariantSpec.imbint8((1,)),
                 VariantSpec.of("tflite-int8", 0.5, keep_float=1)):
        ws.evaluate(spec, latency_runs=5)
    ws.layer_stats(VariantSpec.int8(0.5))
    return ws


def test_views_mark_the_worst_layers_and_draw_each_variant(layered):
    stats = layered.cached_layer_stats(VariantSpec.int8(0.5))
    table = layerviews.layer_table(stats, worst=2)
    quantized = table.dropna(subset=["error"])
    assert int(table["worst"].sum()) == min(2, len(quantized))
    assert quantized.loc[quantized["worst"], "error"].min() >= \
        quantized.loc[~quantized["worst"], "error"].max()
    figure = layerviews.error_figure([("a", stats), ("b", stats)], worst=2)
    assert [trace.name for trace in figure.data] == ["a", "b"]
    assert len(figure.data[0].y) == len(quantized)


@pytest.mark.slow
def test_layers_page_shows_statistics_and_what_keeping_layers_recovers(monkeypatch, layered):
    at = open_page(layered, monkeypatch, "pages/layers.py")
    assert not at.error, [e.value for e in at.error]
    at.selectbox(key="layers_a").set_value("tflite-int8-0.5").run()
    assert at.selectbox(key="layers_b").value is None
    charts = [c for c in at.get("plotly_chart")]
    assert charts, "the per-layer error chart is missing"
    frames = [f.value for f in at.dataframe]
    layer_frame = next(f for f in frames if "error" in f.columns)
    assert len(layer_frame) == len(layered.cached_layer_stats(VariantSpec.int8(0.5)))
    recovery = next(f for f in frames if "keep_float" in f.columns)
    assert list(recovery["keep_float"]) == [0, 0, 1]  # FP32, the base, keep 1
    assert "tflite-int8-0.5-keep1" in recovery.index


@pytest.mark.slow
def test_missing_statistics_start_one_background_job(monkeypatch, layered):
    at = open_page(layered, monkeypatch, "pages/layers.py")
    at.selectbox(key="layers_a").set_value("tflite-imbint8-c1").run()
    assert any("not yet" in i.value for i in at.info)
    before = {j.id for j in list_jobs(layered.cache.root)}
    at.button(key="layers_compute").click().run()
    jobs = [j for j in list_jobs(layered.cache.root) if j.id not in before]
    assert len(jobs) == 1 and jobs[0].layers is True
    wait_until(lambda: not next(j for j in list_jobs(layered.cache.root)
                                if j.id == jobs[0].id).active,
               120, interval=0.5, raise_on_timeout=False)
    job = next(j for j in list_jobs(layered.cache.root) if j.id == jobs[0].id)
    assert job.state is Status.DONE, job
    assert layered.cached_layer_stats(VariantSpec.imbint8((1,))) is not None


@pytest.mark.slow
def test_a_killed_worker_shows_failed_and_restarts_from_the_page(monkeypatch, layered):
    """SIGKILL the worker of a real job: the panel says failed within seconds, and its
    Restart button starts a new job for what was left (same preprocessing, same flags)."""
    import os
    import signal

    from petq.jobs import job_status, process_alive, start_job

    spec = VariantSpec.of("tflite-dynamic")
    job_id = start_job(layered.model_path, layered.dataset.root, layered.cache.root, 1, [spec],
                       workspace=layered)
    wait_until(lambda: job_status(layered.cache.root, job_id).create_time, 60,
               message="the worker never reported")
    pid = job_status(layered.cache.root, job_id).pid
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not process_alive(pid), 30, message="the killed worker gone")
    # read from the pid, not a stale heartbeat: failed as soon as the worker is gone
    assert job_status(layered.cache.root, job_id).state is Status.FAILED, \
        "a killed worker still shows as alive"
    at = open_page(layered, monkeypatch, "pages/layers.py")
    from pages.common.job_panel import JOBS_KEY

    at.session_state[JOBS_KEY] = [job_id]
    at.run()
    at.button(key=f"layers_restart_{job_id}").click().run()
    restarted = [j for j in list_jobs(layered.cache.root) if j.restart_of == job_id]
    assert len(restarted) == 1
    assert restarted[0].preprocessing == layered.contract.preprocessing
    assert [v.name for v in restarted[0].variants] == [spec.name]
    wait_until(lambda: not job_status(layered.cache.root, restarted[0].id).active, 120,
               interval=0.5)
    assert job_status(layered.cache.root, restarted[0].id).state is Status.DONE


@pytest.mark.slow
def test_compare_times_a_variant_against_the_reference_interleaved(monkeypatch, layered):
    at = open_page(layered, monkeypatch, "pages/compare.py")
    at.selectbox(key="compare_reference").set_value("tflite-fp32").run()
    at.selectbox(key="compare_timed").set_value("tflite-int8-0.5").run()
    at.button(key="compare_time").click().run()
    assert not at.exception, [e.value for e in at.exception]
    said = [m.value for m in [*at.info, *at.warning] if "Timed interleaved" in m.value]
    assert len(said) == 1
    timing = layered.latency_comparison(VariantSpec.int8(0.5), VariantSpec.fp32())  # cached
    assert f"median {timing.median_a_ms:.2f} ms against {timing.median_b_ms:.2f} ms" in said[0]


@pytest.mark.slow
def test_convert_takes_a_sweep_grid_as_one_job(monkeypatch, layered):
    from petq.jobs import cancel_job

    at = open_page(layered, monkeypatch, "pages/convert.py")
    at.toggle(key="convert_grid").set_value(True).run()
    at.multiselect(key="convert_grid_recipes").set_value(["tflite-int8", "aeq-wi8-afp32"]).run()
    at.text_input(key="convert_grid_fractions").set_value("0.3, 0.5").run()
    at.text_input(key="convert_grid_seeds").set_value("1, 2").run()
    assert not at.error, [e.value for e in at.error]
    assert any("**5 variants**" in m.value for m in at.markdown)
    before = {j.id for j in list_jobs(layered.cache.root)}
    at.button(key="convert_start").click().run()
    jobs = [j for j in list_jobs(layered.cache.root) if j.id not in before]
    assert len(jobs) == 1
    assert sorted(v.name for v in jobs[0].variants) == sorted([
        "tflite-int8-0.3-s1", "tflite-int8-0.3-s2", "tflite-int8-0.5-s1", "tflite-int8-0.5-s2",
        "aeq-wi8-afp32"])
    assert jobs[0].ray is None  # this machine, unless Ray is chosen
    cancel_job(layered.cache.root, jobs[0].id)
    at.radio(key="convert_grid_where").set_value("Ray").run()
    at.text_input(key="convert_grid_ray").set_value("127.0.0.1:1").run()
    at.button(key="convert_start").click().run()
    assert any("no Ray cluster answers" in e.value for e in at.error), \
        [e.value for e in at.error]
    assert len(list_jobs(layered.cache.root)) == len(before) + 1  # nothing started
    at.text_input(key="convert_grid_fractions").set_value("0.3, 2").run()
    assert any("(0, 1]" in e.value for e in at.error)

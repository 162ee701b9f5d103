"""The images that set the ranges, on the dashboard: petq.outliers.gallery read from the
recorded range profile (never exporting or calibrating), the twin calibrated without
ticked images and its pair with the original, the PROFILE job, and the Convert and
Compare pages through AppTest on the tiny fixtures (the real converter and workers)."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest

from conftest import dashboard_app, point_dashboard_at
from petq import stats, tables
from petq.errors import SpecError
from petq.jobs import Status, cancel_job, job_status, list_jobs, start_task_job
from petq.outliers import exclusion_pairs, gallery, original, twin
from petq.profile import outliers
from petq.results import Result
from petq.types import JobKind, ProfileConfig, VariantSpec
from petq.workspace import Workspace
from waiting import wait_until

SPEC = VariantSpec.int8(0.5)
OPEN = "convert_outliers_open"  # the Convert page's expander of the gallery
pytestmark = pytest.mark.usefixtures("dashboard_navigation")


def result(spec: VariantSpec, accuracy: float, key: str, count: int,
           test_fraction: float = 1.0) -> Result:
    return Result(spec=spec, description="", model="m.keras", model_sha="s", dataset="d",
                  dataset_fingerprint="f", synthetic=False, test_fraction=test_fraction,
                  n_images=8, skipped_images=0, param_count=10, threads=1, accuracy=accuracy,
                  mean_precision=accuracy, mean_sensitivity=accuracy, g_mean=accuracy,
                  top5=1.0, latency_mean_ms=1.0, latency_p50_ms=1.0, latency_p95_ms=1.0,
                  latency_std_ms=0.1, latency_runs=5, file_size_bytes=100,
                  calibration_count=count, result_key=key)


def test_a_twin_pairs_with_its_original_on_the_same_test_set():
    without = twin(SPEC, ["b_2", "a_1"])
    assert without.calibration.exclude == ("a_1", "b_2") and without.recipe == SPEC.recipe
    assert original(without) == SPEC and original(SPEC) is None
    assert twin(without, ["c_3"]).calibration.exclude == ("a_1", "b_2", "c_3")
    other_seed = VariantSpec.int8(0.5, seed=9)
    rows = [result(SPEC, 0.75, "k0", 20), result(without, 0.5, "k1", 18),
            result(twin(other_seed, ["a_1"]), 0.5, "k2", 19),  # its original is not here
            result(twin(SPEC, ["c_3"]), 0.5, "k3", 19, test_fraction=0.5)]  # other images
    pairs = exclusion_pairs(rows)
    assert [(t.result_key, o.result_key) for t, o in pairs] == [("k1", "k0")]

    # the table: both accuracies, how many images left the set, the paired test's verdict
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    reference = labels.copy()
    variant = labels.copy()
    variant[:2] = 1 - variant[:2]  # two images lost: McNemar b/c = 2/0, not significant
    comparison = stats.compare_paired(labels, variant, reference, 2)
    table = tables.exclusion_table(pairs, {without.name: comparison})
    row = table.loc[without.name]
    assert row["original"] == SPEC.name and row["excluded"] == 2
    assert (row["accuracy"], row["original_accuracy"]) == (0.5, 0.75)
    assert row["mcnemar_bc"] == "2 / 0"
    assert row["significant"] == ("✱" if comparison.significant else "")
    assert not comparison.significant  # 2 of 8 lost: chance can do that
    assert tables.exclusion_table([], {}).empty


@pytest.mark.parametrize("spec", [SPEC, VariantSpec.of("aeq-wi8-ai8", 0.5)])
def test_the_gallery_reads_the_profile_a_conversion_recorded_without_exporting(
        spec, tiny_model, pet_root, tmp_path, monkeypatch):
    ws = Workspace(tiny_model, pet_root, tmp_path / "cache", threads=1)
    before = gallery(ws, spec)
    assert not before.ready and before.top == ()
    assert before.missing == before.images == len(ws.calibration_samples(spec))
    ws.tflite(spec)  # converts from the range profile: its images profiled, the profile noted

    from petq.calibration import Profiled

    def no_calibrator(*_):
        raise AssertionError("the gallery made a calibrator (an export, a float .tflite)")

    monkeypatch.setattr(Profiled, "backend", no_calibrator)
    fresh = Workspace(tiny_model, pet_root, tmp_path / "cache", threads=1)  # as a page opens it
    found = gallery(fresh, spec, top=5)
    assert found.ready and found.images == len(fresh.calibration_ids(spec))
    profile = fresh.known_profile(spec)
    ids = fresh.calibration_ids(spec)
    tensors, images = outliers(profile, ids)
    assert found.tensors == len(tensors) > 0
    assert [g.image_id for g in found.top] == [im.image_id for im in images[:5]]
    breeds = {s.image_id: fresh.class_names[fresh.label(s)] for s in fresh.dataset.trainval}
    for shown, im in zip(found.top, images, strict=False):
        assert shown.breed == breeds[shown.image_id]
        assert shown.layers == im.layers
        assert shown.largest_stretch == im.largest_stretch
        assert shown.width_vs_median == max(im.width_vs_median.values(), default=1.0)
    # another seed of the recipe shares the profile: only its images not profiled are missing
    other = VariantSpec(spec.recipe, replace(spec.calibration, seed=9))
    wanted = {s.image_id for s in fresh.calibration_samples(other)}
    assert gallery(fresh, other).missing == len(wanted - profile.profiled(wanted)) > 0


@pytest.mark.parametrize("spec", [VariantSpec.fp32(), VariantSpec.of("tflite-int16x8", 0.5),
                                  VariantSpec.of("tflite-int8", 0.5, keep_float=1)])
def test_a_recipe_without_a_profile_says_so(workspace, spec):
    with pytest.raises(SpecError, match="no range profile"):
        gallery(workspace, spec)
    assert workspace.known_profile(spec) is None


def test_a_profile_job_needs_a_profiled_recipe():
    with pytest.raises(SpecError, match="range profile"):
        ProfileConfig(VariantSpec.fp32())
    with pytest.raises(SpecError, match="range profile"):
        ProfileConfig(replace(SPEC, keep_float=2))


@pytest.mark.slow
def test_a_profile_job_profiles_the_calibration_images(tiny_model, pet_root, tmp_path):
    cache = tmp_path / "cache"
    ws = Workspace(tiny_model, pet_root, cache, threads=1)
    job_id = start_task_job(ws, ProfileConfig(SPEC))
    job = wait_until(lambda: (j := job_status(cache, job_id)) and not j.active and j, 240,
                     interval=0.5)
    assert job.state is Status.DONE and job.kind is JobKind.PROFILE, job.error
    assert job.title.endswith(SPEC.name)
    assert any("calibrated now" in line for line in job.lines)
    assert gallery(Workspace(tiny_model, pet_root, cache, threads=1), SPEC).ready
    assert not (cache / "variants").exists()  # profiled only: nothing converted


# ---------------------------------------------------------------- the pages, through AppTest


def assert_clean(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def texts(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [e.value for kind in ("success", "info", "warning", "error") for e in at.get(kind)]
    return "\n".join(str(p) for p in parts)


@pytest.fixture(scope="module")
def profiled_cache(tiny_model, pet_root, tmp_path_factory):
    """A cache where tflite-int8-0.5 was converted (its images in the range profile)."""
    cache = tmp_path_factory.mktemp("gallery-cache")
    Workspace(tiny_model, pet_root, cache, threads=1).tflite(SPEC)
    return cache


@pytest.fixture()
def profiled(monkeypatch, tiny_model, pet_root, profiled_cache, tmp_path):
    """A copy of `profiled_cache` (a test's job writes into it), the dashboard pointed at it."""

    cache = tmp_path / "cache"
    shutil.copytree(profiled_cache, cache)
    point_dashboard_at(monkeypatch, tiny_model, pet_root, cache)
    return cache


def convert_page(fraction: float = 0.5):

    at = dashboard_app("pages/convert.py")
    at.slider(key="convert_fraction").set_value(fraction).run()
    at.session_state[OPEN] = True  # as a click on the expander does
    return at.run()


def stop_jobs(cache) -> None:
    for job in list_jobs(cache, active_only=True):
        cancel_job(cache, job.id)


def test_convert_shows_the_gallery_and_starts_the_twin(profiled, tiny_model, pet_root):

    at = convert_page()
    assert_clean(at)
    found = gallery(Workspace(tiny_model, pet_root, profiled, threads=1), SPEC)
    images = at.get("image")
    assert len(images) == len(found.top) > 1
    captions = [c for image in images for c in image.captions]
    for shown, caption in zip(found.top, captions, strict=True):
        assert caption.startswith(f"{shown.image_id} · {shown.breed}")
        assert f"stretches {shown.layers} layer(s)" in caption
    ticked = [found.top[0].image_id, found.top[1].image_id]
    for image_id in ticked:
        at.checkbox(key=f"convert_outliers_{image_id}").check()
    at.run()
    without = twin(SPEC, ticked)
    button = at.button(key="convert_outliers_start")
    assert button.label == f"Convert and evaluate {without.name} and {SPEC.name}"
    button.click().run()
    try:
        assert_clean(at)
        jobs = list_jobs(profiled, active_only=True)
        assert len(jobs) == 1 and jobs[0].kind is JobKind.VARIANTS
        assert [v.spec for v in jobs[0].variants] == [SPEC, without]
    finally:
        stop_jobs(profiled)


def test_convert_offers_profiling_and_explains_other_recipes(empty):

    at = convert_page()
    assert_clean(at)
    assert "not in the range profile yet" in texts(at)
    assert not at.get("image")
    at.button(key="convert_outliers_profile").click().run()
    try:
        jobs = list_jobs(empty, active_only=True)
        assert [(j.kind, j.config) for j in jobs] == [(JobKind.PROFILE, ProfileConfig(SPEC))]
        assert_clean(at)
        assert "Being profiled now" in texts(at)
    finally:
        stop_jobs(empty)
    at.selectbox(key="convert_recipe_TFLite converter").set_value("tflite-int16x8").run()
    assert_clean(at)
    assert "no range profile" in texts(at)


@pytest.fixture()
def empty(monkeypatch, tiny_model, pet_root, tmp_path):

    point_dashboard_at(monkeypatch, tiny_model, pet_root, tmp_path / "cache")
    return tmp_path / "cache"


@pytest.mark.slow
def test_the_twin_s_job_ends_in_a_paired_comparison_on_compare(profiled, tiny_model, pet_root):

    at = convert_page()
    ticked = [gallery(Workspace(tiny_model, pet_root, profiled, threads=1), SPEC).top[0].image_id]
    at.checkbox(key=f"convert_outliers_{ticked[0]}").check()
    at.run()
    at.button(key="convert_outliers_start").click().run()
    try:
        wait_until(lambda: not list_jobs(profiled, active_only=True), 300, interval=0.5)
    finally:
        stop_jobs(profiled)
    assert [j.state for j in list_jobs(profiled)] == [Status.DONE]
    without = twin(SPEC, ticked)
    at.run()
    assert_clean(at)
    assert f"`{SPEC.name}` calibrated without chosen images" in texts(at)
    pair = at.dataframe[-1].value
    assert list(pair.index) == [without.name]

    ws = Workspace(tiny_model, pet_root, profiled, threads=1)
    first, second = ws.cached_result(without), ws.cached_result(SPEC)
    expected = ws.paired(first.result_key, second.result_key)[0]
    assert pair.loc[without.name, "significant"] == ("✱" if expected.significant else "")
    assert pair.loc[without.name, "excluded"] == 1

    compare = dashboard_app("pages/compare.py")
    assert_clean(compare)
    assert compare.selectbox(key="compare_pair").value == without.name
    compare.button(key="compare_pair_show").click().run()
    assert_clean(compare)
    assert compare.multiselect(key="compare_variants").value == [SPEC.name, without.name]
    assert compare.selectbox(key="compare_reference").value == SPEC.name
    metrics = compare.dataframe[0].value
    assert set(metrics.index) == {SPEC.name, without.name}
    assert metrics.loc[without.name, "mcnemar_bc"] == pair.loc[without.name, "mcnemar_bc"]

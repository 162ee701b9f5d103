"""The dashboard: petq.compare on hand-made rows, and every page through Streamlit's AppTest
on the tiny fixtures (real library calls: conversion, evaluation, classification).
"""

from __future__ import annotations

import io
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from petq import compare
from petq.cache import write_json_atomic
from petq.jobs import job_path, list_jobs
from petq.types import VariantSpec

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["dashboard.py", "pages/1_Convert.py", "pages/2_Compare.py", "pages/3_Classify.py",
         "pages/4_Report.py"]

# ---------------------------------------------------------------- petq.compare, hand-made


def row(variant, kind, accuracy, latency, size, key, created=0.0, **extra):
    return {"variant": variant, "kind": kind, "precision": "p", "description": "",
            "result_key": key, "n_images": 4, "test_fraction": 1.0, "calibration_count": 0,
            "accuracy": accuracy, "mean_precision": accuracy, "mean_sensitivity": accuracy,
            "g_mean": accuracy, "top5": 1.0, "latency_mean_ms": latency,
            "latency_p95_ms": latency * 1.5, "file_size_bytes": size, "created": created,
            **extra}


def details(top1, cm, sensitivity, ids=("a", "b", "c", "d")):
    return {"top1": list(top1), "confusion_matrix": cm, "per_class_sensitivity": sensitivity,
            "per_class_precision": sensitivity, "image_ids": list(ids), "labels": [0, 0, 1, 1],
            "class_names": ["Abyssinian", "beagle"]}


ROWS = [
    row("native", "native", 1.0, 20.0, 16_000, "kn"),
    row("tflite-fp32", "tflite-fp32", 1.0, 10.0, 8_000, "kf"),
    row("tflite-int8-0.5", "tflite-int8", 0.75, 5.0, 2_000, "ki"),
    row("tflite-imbint8", "tflite-imbint8", 0.5, 12.0, 2_000, "kb"),
]
DETAILS = {
    "kn": details([0, 0, 1, 1], [[2, 0], [0, 2]], [1.0, 1.0]),
    "kf": details([0, 0, 1, 1], [[2, 0], [0, 2]], [1.0, 1.0]),
    "ki": details([0, 1, 1, 1], [[1, 1], [0, 2]], [0.5, 1.0]),
    "kb": details([0, 1, 1, 0], [[1, 1], [1, 1]], [0.5, 0.5], ids=("a", "b", "c", "x")),
}


def test_comparison_table_has_deltas_compression_and_agreement():
    table = compare.comparison_table(ROWS, DETAILS, "native").set_index("variant")
    assert table.loc["tflite-int8-0.5", "accuracy_delta"] == pytest.approx(-0.25)
    assert table.loc["native", "accuracy_delta"] == 0.0
    assert table.loc["tflite-int8-0.5", "latency_mean_ms_delta"] == pytest.approx(-15.0)
    assert table.loc["tflite-int8-0.5", "compression_ratio"] == pytest.approx(4.0)
    assert table.loc["native", "compression_ratio"] == pytest.approx(0.5)
    assert table.loc["tflite-fp32", "agreement"] == 1.0
    assert table.loc["tflite-int8-0.5", "agreement"] == 0.75
    # evaluated on other test images: no agreement is claimed
    assert math.isnan(table.loc["tflite-imbint8", "agreement"])
    shown = compare.display_table(table.reset_index())
    assert {"Accuracy", "Δ Accuracy", "Top-1 agreement", "Δ Compression vs FP32"} <= set(shown)


def test_comparison_table_without_reference_or_fp32():
    table = compare.comparison_table(ROWS[2:], DETAILS, "native")
    assert table["accuracy_delta"].isna().all()
    assert table["compression_ratio"].isna().all()
    assert compare.comparison_table([], {}, "native").empty


def test_latest_per_variant_and_test_fractions():
    older = row("native", "native", 0.1, 1.0, 1, "old", created=1.0)
    newer = row("native", "native", 0.9, 1.0, 1, "new", created=2.0)
    assert [r["result_key"] for r in compare.latest_per_variant([older, newer])] == ["new"]
    assert compare.test_fractions([{"test_fraction": 0.5}, {"test_fraction": 1.0}]) == [1.0, 0.5]


def test_pareto_front_keeps_only_undominated_variants():
    table = compare.comparison_table(ROWS, DETAILS, "native")
    assert set(compare.pareto_front(table)) == {"tflite-int8-0.5", "tflite-fp32"}
    fig = compare.pareto_scatter(table)
    assert any(trace.name == "Pareto front" for trace in fig.data)
    assert {t.name for t in fig.data} >= {r["variant"] for r in ROWS}


def test_per_class_views_show_which_breeds_a_variant_hurts():
    sensitivity = compare.per_class_sensitivity(ROWS, DETAILS)
    assert list(sensitivity.index) == ["Abyssinian", "beagle"]
    delta = compare.per_class_delta(sensitivity, "native")
    assert "native" not in delta.columns
    hurt = compare.hurt_classes(delta, "tflite-int8-0.5")
    assert list(hurt.index) == ["Abyssinian"] and hurt.iloc[0] == pytest.approx(-0.5)
    assert compare.hurt_classes(delta, "tflite-fp32").empty
    assert compare.most_hurt(delta) == "tflite-imbint8"
    fig = compare.per_class_heatmap(sensitivity, "native")
    assert "change from native" in fig.data[0].hovertemplate


def test_confusion_heatmaps_and_difference():
    fig = compare.confusion_heatmap(DETAILS["ki"], "tflite-int8-0.5")
    hover = fig.data[0].hovertemplate
    assert "true: %{y}" in hover and "predicted: %{x}" in hover and "count: %{z}" in hover
    diff = compare.confusion_difference(DETAILS["ki"], DETAILS["kn"])
    assert diff.tolist() == [[-1, 1], [0, 0]]
    assert compare.difference_heatmap(diff, ["a", "b"], "d").data[0].zmid == 0
    with pytest.raises(ValueError, match="different test images"):
        compare.confusion_difference(DETAILS["kb"], DETAILS["kn"])
    assert compare.max_count(DETAILS["kn"], DETAILS["ki"]) == 2
    table = compare.comparison_table(ROWS[:3], DETAILS, "native")
    assert compare.default_pair(table, "native") == "tflite-int8-0.5"


def test_bars_histogram_and_sizes():
    table = compare.comparison_table(ROWS, DETAILS, "native")
    fig = compare.metric_bars(table)
    assert [t.name for t in fig.data] == ["Accuracy", "Mean precision", "Mean sensitivity",
                                          "G-Mean", "Top-5"]
    assert list(fig.data[0].x) == [r["variant"] for r in ROWS]
    assert compare.calibration_histogram({"a": 3, "b": 0}, "t").data[0].y == (3, 0)
    assert compare.human_size(8_748) == "8.75 kB"
    assert compare.human_size(14_000_000) == "14.0 MB"
    assert compare.human_size(512) == "512 B"
    assert compare.fraction_text(1.0) == "the whole test split"
    assert compare.fraction_text(0.3) == "30% of the test split"


class FakeRunner:
    def __init__(self, scores):
        self.scores = np.asarray(scores, np.float32)

    def predict(self, x):
        return self.scores


def test_classify_gives_top_k_probabilities_and_disagreement():
    names = ["a", "b", "c"]
    out = compare.classify({"one": FakeRunner([0.0, 5.0, 1.0]),
                            "two": FakeRunner([3.0, 0.0, 0.0])}, np.zeros((1, 2, 2, 3)), names,
                           k=2)
    assert [p["top1"] for p in out] == ["b", "a"]
    assert [b for b, _ in out[0]["top"]] == ["b", "c"]
    assert sum(p for _, p in out[0]["top"]) < 1.0 and out[0]["latency_ms"] >= 0
    assert compare.disagreement(out)
    assert not compare.disagreement(out[:1])


# ---------------------------------------------------------------- the pages, through AppTest


@pytest.fixture(scope="module")
def filled_cache(tiny_model, pet_root, tmp_path_factory):
    """A cache holding native, FP32, INT8 and imbalanced INT8 results of the tiny model."""
    from petq.workspace import Workspace

    cache = tmp_path_factory.mktemp("dashboard-cache")
    ws = Workspace(tiny_model, pet_root, cache, threads=1)
    for spec in (VariantSpec.native(), VariantSpec.fp32(), VariantSpec.int8(0.5),
                 VariantSpec.imbint8((1,))):
        ws.evaluate(spec, latency_runs=5)
    return cache


def point_at(monkeypatch, model, dataset, cache):
    monkeypatch.setenv("PETQ_MODEL", str(model))
    monkeypatch.setenv("PETQ_DATASET_ROOT", str(dataset))
    monkeypatch.setenv("PETQ_CACHE", str(cache))
    monkeypatch.setenv("PETQ_THREADS", "1")
    monkeypatch.delenv("PETQ_TEST_FRACTION", raising=False)


@pytest.fixture()
def filled(monkeypatch, tiny_model, pet_root, filled_cache):
    point_at(monkeypatch, tiny_model, pet_root, filled_cache)
    return filled_cache


@pytest.fixture()
def empty(monkeypatch, tiny_model, pet_root, tmp_path):
    point_at(monkeypatch, tiny_model, pet_root, tmp_path / "cache")
    return tmp_path / "cache"


def app(page: str = "dashboard.py"):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=90)
    if page != "dashboard.py":
        at.switch_page(page)
    return at.run()


def assert_clean(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def texts(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [caption for image in at.get("image") for caption in image.captions]
    parts += [e.value for kind in ("success", "info", "warning", "error") for e in at.get(kind)]
    return "\n".join(str(p) for p in parts)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_on_an_empty_cache(empty, page):
    at = app(page)
    assert_clean(at)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_from_a_filled_cache(filled, page):
    at = app(page)
    assert_clean(at)
    start = time.perf_counter()
    at.run()
    assert time.perf_counter() - start < 5.0  # from the cache (< 1 s measured; CI margin)


def test_home_shows_the_workspace_and_the_task_plan(filled):
    at = app()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Parameters"] == "1,460" or int(metrics["Parameters"].replace(",", "")) > 0
    assert metrics["Input"] == "32×32"
    assert metrics["Trainval images"] == "40" and metrics["Test images"] == "20"
    plan = at.dataframe[-1].value
    status = dict(zip(plan["Variant"], plan["Status"], strict=True))
    assert status["native"] == "cached" and status["tflite-fp32"] == "cached"
    assert status["tflite-int8-0.08"] == "to do"
    assert status["tflite-imbint8"] == "skipped"  # class 5 is not in the 4-class fixture
    assert "out of range" in dict(zip(plan["Variant"], plan["Why"], strict=True))[
        "tflite-imbint8"]
    assert len(at.get("plotly_chart")) == 1


def test_home_settings_reject_a_bad_path_and_keep_running(filled, tmp_path):
    at = app()
    at.text_input(key="home_model").set_value(str(tmp_path / "missing.keras"))
    submit = next(b for b in at.get("button") if "Apply" in str(b.proto.label))
    submit.click().run()
    assert not at.exception
    assert any("missing.keras: model file not found" in e.value for e in at.error)
    assert any(m.label == "Parameters" for m in at.metric)  # still on the old workspace


def test_home_settings_switch_to_another_dataset(filled, tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import write_pet_tree

    other = write_pet_tree(tmp_path / "other", seed=5)
    at = app()
    at.text_input(key="home_dataset").set_value(str(other))
    submit = next(b for b in at.get("button") if "Apply" in str(b.proto.label))
    submit.click().run()
    assert_clean(at)
    assert str(other) in texts(at)


def test_a_running_job_shows_progress(filled):
    record = {
        "id": "20990101-000000-aaaaaa", "state": "running", "created": time.time(),
        "model_path": "m", "dataset_root": "d", "cache_root": str(filled), "threads": 1,
        "test_fraction": 1.0, "total": 2, "done": 1, "current": "tflite-int8-0.3",
        "stage": "calibrate", "stage_done": 3, "stage_total": 12, "error": None,
        "pid": os.getpid(),
        "variants": [{"name": "tflite-fp32", "status": "done", "cached": True},
                     {"name": "tflite-int8-0.3", "status": "running", "cached": False}],
    }
    path = job_path(filled, record["id"])
    write_json_atomic(path, record)
    try:
        at = app()
        assert_clean(at)
        bars = [p.proto.text for p in at.get("progress")]
        assert "1/2 variants done · running" in bars
        assert "tflite-int8-0.3: calibrating 3/12" in bars
    finally:
        path.unlink()


def test_convert_int8_slider_and_seed_drive_the_calibration_set(filled):
    at = app("pages/1_Convert.py")
    assert at.radio(key="convert_kind").value == "tflite-int8"
    at.slider(key="convert_fraction").set_value(0.5).run()
    assert_clean(at)
    assert "**20** of 40 trainval images" in texts(at)
    assert "`tflite-int8-0.5` is already in the cache" in texts(at)  # shown at once
    at.number_input(key="convert_seed").set_value(99).run()
    assert "tflite-int8-0.5-s99" in texts(at)
    assert any(b.label.startswith("Convert and evaluate") for b in at.button)
    assert len(at.get("plotly_chart")) == 1  # the calibration histogram


def test_convert_imbalanced_class_picker_and_shortcut(filled):
    at = app("pages/1_Convert.py")
    at.radio(key="convert_kind").set_value("tflite-imbint8").run()
    assert_clean(at)
    picker = at.multiselect(key="convert_classes")
    assert picker.value == ["Abyssinian"]  # class 5 does not exist here: the first breed
    picker.set_value(["Abyssinian", "Bengal"]).run()
    assert "tflite-imbint8-c0+2" in texts(at)
    assert "**20** of 40 trainval images" in texts(at)
    at.selectbox(key="convert_one_class").set_value("american_bulldog").run()
    assert at.multiselect(key="convert_classes").value == ["american_bulldog"]
    assert "`tflite-imbint8-c1` is already in the cache" in texts(at)
    at.multiselect(key="convert_classes").set_value([]).run()
    assert_clean(at)
    assert any("at least one breed" in w.value for w in at.warning)


@pytest.mark.slow
def test_convert_button_converts_in_the_background(monkeypatch, tiny_model, pet_root, tmp_path):
    cache = tmp_path / "cache"
    point_at(monkeypatch, tiny_model, pet_root, cache)
    at = app("pages/1_Convert.py")
    at.radio(key="convert_kind").set_value("tflite-fp32").run()
    button = next(b for b in at.button if b.label == "Convert and evaluate tflite-fp32")
    start = time.perf_counter()
    button.click().run()
    assert time.perf_counter() - start < 20  # the page does not wait for the conversion
    assert_clean(at)
    assert len(at.session_state["petq_jobs"]) == 1
    assert any("variants done" in p.proto.text for p in at.get("progress"))
    deadline = time.monotonic() + 180
    while list_jobs(cache, active_only=True) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [j["state"] for j in list_jobs(cache)] == ["done"]
    at.run()
    assert_clean(at)
    assert "`tflite-fp32` is already in the cache" in texts(at)


def test_compare_table_reference_and_confusions(filled):
    at = app("pages/2_Compare.py")
    table = at.dataframe[0].value
    assert list(table.index) == ["native", "tflite-fp32", "tflite-int8-0.5", "tflite-imbint8-c1"]
    assert table.loc["native", "Δ Accuracy"] == 0.0
    assert table.loc["tflite-fp32", "Top-1 agreement"] == pytest.approx(1.0)
    assert table.loc["tflite-int8-0.5", "Compression vs FP32"] > 1.0
    at.selectbox(key="compare_reference").set_value("tflite-fp32").run()
    assert_clean(at)
    table = at.dataframe[0].value
    assert table.loc["tflite-fp32", "Δ Latency mean (ms)"] == 0.0
    assert at.selectbox(key="compare_cm_left").value == "tflite-fp32"
    at.multiselect(key="compare_variants").set_value(["tflite-int8-0.5"]).run()
    assert_clean(at)
    assert list(at.dataframe[0].value.index) == ["tflite-int8-0.5"]
    # bars, latency, Pareto, two confusions, (difference or identical note), per class
    assert len(at.get("plotly_chart")) >= 6
    at.multiselect(key="compare_variants").set_value([]).run()
    assert any("at least one variant" in i.value for i in at.info)


def jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def good_files() -> list[tuple[str, bytes, str]]:
    rng = np.random.default_rng(1)
    pixels = np.clip(np.array([50, 70, 200]) + rng.normal(0, 20, (50, 70, 3)), 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    png, webp = io.BytesIO(), io.BytesIO()
    image.convert("L").save(png, format="PNG")
    rgba = image.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(webp, format="WEBP")
    return [("blue.jpg", jpeg(image), "image/jpeg"),
            ("rotated.jpg", jpeg(image, exif=exif), "image/jpeg"),
            ("gray.png", png.getvalue(), "image/png"),
            ("rgba.webp", webp.getvalue(), "image/webp")]


def bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, format="PNG")  # 100 MP, a few kB
    return buffer.getvalue()


def test_classify_good_uploads_of_every_kind(filled):
    at = app("pages/3_Classify.py")
    variants = at.multiselect(key="classify_variants").value
    assert variants[0] == "native" and {"tflite-fp32", "tflite-int8-0.5"} <= set(variants)
    at.file_uploader(key="classify_upload").set_value(good_files()).run()
    assert_clean(at)
    captions = texts(at)
    for name in ("blue.jpg · 70×50", "rotated.jpg · 50×70", "gray.png", "rgba.webp"):
        assert name in captions  # the EXIF rotation is applied
    headers = [m.value for m in at.markdown if m.value.startswith("**tflite-fp32**")]
    assert len(headers) == 4 and all(" ms" in h for h in headers)
    # top-5 (here all 4 classes) per variant per photo
    assert len(at.get("progress")) == 4 * len(variants) * 4
    assert len(at.get("badge")) >= 4 or "agree" in captions


@pytest.mark.parametrize("name, data, message", [
    ("notes.jpg", b"this is not an image", "not an image Pillow can read"),
    ("cut.jpg", None, "cannot decode image"),
    ("bomb.png", None, "image too large"),
    ("huge.jpg", None, "file too large"),
])
def test_classify_bad_uploads_get_a_clear_message(filled, name, data, message):
    import streamlit as st

    if name == "cut.jpg":
        data = jpeg(Image.new("RGB", (64, 64), (200, 30, 30)))[:300]
    elif name == "bomb.png":
        data = bomb()
    elif name == "huge.jpg":
        data = b"\xff\xd8" + bytes(int(st.get_option("server.maxUploadSize")) * 1024 * 1024)
    at = app("pages/3_Classify.py")
    at.file_uploader(key="classify_upload").set_value(
        [(name, data, "image/jpeg"), good_files()[0]]).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith(name) and message in errors[0], errors
    assert any(m.value.startswith("**native**") for m in at.markdown)  # the good one still runs


def test_classify_camera_photo(filled):
    at = app("pages/3_Classify.py")
    at.toggle(key="classify_use_camera").set_value(True).run()
    at.camera_input(key="classify_camera").set_value(good_files()[0][:2] + ("image/jpeg",))
    at.run()
    assert_clean(at)
    assert "camera photo" in texts(at)


def test_classify_says_when_the_model_is_synthetic(monkeypatch, tiny_model, pet_root,
                                                    filled_cache, tmp_path):
    import json
    import shutil

    model = tmp_path / "synthetic.keras"
    shutil.copy(tiny_model, model)
    sidecar = json.loads(tiny_model.with_suffix(".json").read_text())
    model.with_suffix(".json").write_text(json.dumps({**sidecar, "synthetic": True}))
    point_at(monkeypatch, model, pet_root, tmp_path / "cache")
    at = app("pages/3_Classify.py")
    at.file_uploader(key="classify_upload").set_value(good_files()[:1]).run()
    assert_clean(at)
    assert "trained on synthetic data" in texts(at)


def test_report_shows_the_summary_and_offers_downloads(filled):
    at = app("pages/4_Report.py")
    assert_clean(at)
    body = texts(at)
    assert "How does the TFLite FP32 model perform compared to the native model?" in body
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Download the report (zip)", "Download summary.md"]
    assert len(at.get("image")) == 1  # the chosen variant's confusion PNG
    at.selectbox(key="report_variant").set_value("tflite-int8-0.5").run()
    assert_clean(at)
    assert "Model type: tflite-int8-0.5" in texts(at)


def test_comparison_table_from_real_results(filled_cache, tiny_model, pet_root):
    from petq.workspace import Workspace

    ws = Workspace(tiny_model, pet_root, filled_cache, threads=1)
    rows = ws.results()
    table = compare.comparison_table(rows, {r["result_key"]: ws.details(r["result_key"])
                                            for r in rows}, "native")
    assert isinstance(table, pd.DataFrame) and len(table) == 4
    assert table["agreement"].notna().all()
    names = [spec.name for spec, _ in compare.available_variants(ws)]
    assert names == ["native", "tflite-fp32", "tflite-int8-0.5", "tflite-imbint8-c1"]

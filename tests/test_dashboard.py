"""The dashboard: petq.tables on hand-made records, and every page through Streamlit's
AppTest on the tiny fixtures (real library calls: conversion, evaluation, classification).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import dashboard_app, point_dashboard_at
from pages.common.job_panel import JOBS_KEY
from pages.common.settings import SETTINGS_OPEN_KEY
from petq import figures, stats, tables
from petq.cache import write_json_atomic
from petq.classify import Answer, classify_image, disagreement
from petq.errors import SpecError
from petq.jobs import (
    Job,
    JobVariant,
    PlanItem,
    PlanStatus,
    Status,
    job_path,
    list_jobs,
    process_create_time,
)
from petq.results import METRICS, Details, Result
from petq.types import RECIPES, Backend, Stage, VariantSpec
from waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("dashboard_navigation")
PAGES = ["pages/home.py", "pages/convert.py", "pages/compare.py", "pages/classify.py",
         "pages/report.py"]
NAMES = ["Abyssinian", "beagle"]

# ---------------------------------------------------------------- hand-made records


def result(name: str, accuracy: float, latency: float, size: int, key: str,
           created: float = 0.0, n: int = 4, test_fraction: float = 1.0) -> Result:
    return Result(
        spec=VariantSpec.from_name(name), description="", model="m.keras", model_sha="s",
        dataset="d", dataset_fingerprint="f", synthetic=False, test_fraction=test_fraction,
        n_images=n, skipped_images=0, param_count=10, threads=1, accuracy=accuracy,
        mean_precision=accuracy, mean_sensitivity=accuracy, g_mean=accuracy, top5=1.0,
        latency_mean_ms=latency, latency_p50_ms=latency, latency_p95_ms=latency * 1.5,
        latency_std_ms=0.1, latency_runs=5, file_size_bytes=size, result_key=key,
        created=created,
    )


def details(labels, top1, ids=None, names=NAMES) -> Details:
    labels, top1 = np.asarray(labels), np.asarray(top1)
    k = len(names)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (labels, top1), 1)
    totals = cm.sum(axis=1)
    sensitivity = np.where(totals > 0, np.diag(cm) / np.maximum(totals, 1), np.nan)
    top = np.stack([top1, (top1 + 1) % k], axis=1)
    return Details(class_names=tuple(names),
                   image_ids=tuple(ids or (f"i{i}" for i in range(len(labels)))),
                   labels=labels, top5=top, top5_scores=np.ones(top.shape, np.float32),
                   confusion_matrix=cm, per_class_precision=sensitivity,
                   per_class_sensitivity=sensitivity)


ROWS = [
    result("native", 1.0, 20.0, 16_000, "kn"),
    result("tflite-fp32", 1.0, 10.0, 8_000, "kf"),
    result("tflite-int8-0.5", 0.75, 5.0, 2_000, "ki"),
    result("tflite-imbint8", 0.5, 12.0, 2_000, "kb"),
]
DETAILS = {
    "kn": details([0, 0, 1, 1], [0, 0, 1, 1]),
    "kf": details([0, 0, 1, 1], [0, 0, 1, 1]),
    "ki": details([0, 0, 1, 1], [0, 1, 1, 1]),
    "kb": details([0, 0, 1, 1], [0, 1, 1, 0], ids=("i0", "i1", "i2", "x")),
}


def test_columns_come_from_the_metric_registry():
    columns = tables.columns_for(["accuracy", "accuracy_delta", "file_size_bytes",
                                   "latency_p50_ms_delta", "accuracy_mean", "scheme"])
    assert columns["accuracy"].label == METRICS["accuracy"].label
    assert columns["accuracy"].format == "%.4f"
    assert columns["accuracy"].help == METRICS["accuracy"].help
    assert columns["accuracy_delta"] == tables.Column(
        f"Δ {METRICS['accuracy'].label}", "%+.4f", f"{METRICS['accuracy'].label} minus the "
        "reference's")
    assert columns["file_size_bytes"].format == "%,d"
    assert columns["latency_p50_ms_delta"].format == "%+.3f"
    assert columns["accuracy_mean"].label == f"{METRICS['accuracy'].label} mean"
    assert columns["scheme"].label == "Scheme" and columns["scheme"].format is None
    for metric in METRICS.values():  # every registry format has a printf twin
        assert tables.printf_format(metric.fmt).startswith("%")
    with pytest.raises(ValueError, match="no printf equivalent"):
        tables.printf_format("%")


def test_pages_take_labels_and_formats_from_the_registry():
    """No page hard-codes a metric's label or number format, nor calls a scheme precision."""
    for page in [ROOT / p for p in PAGES]:
        source = page.read_text()
        assert not re.search(r"""["']%[,+]?\.?\d*[dfe]["']""", source), page
        for metric in METRICS.values():
            assert f'"{metric.label}"' not in source, (page, metric.label)
        assert '"Precision"' not in source and '"precision"' not in source, page


def test_comparison_table_has_deltas_compression_and_agreement():
    table = tables.comparison_table(ROWS, DETAILS, "native").set_index("variant")
    assert table.loc["tflite-int8-0.5", "accuracy_delta"] == pytest.approx(-0.25)
    assert table.loc["native", "accuracy_delta"] == 0.0
    assert table.loc["tflite-int8-0.5", "latency_p50_ms_delta"] == pytest.approx(-15.0)
    assert table.loc["tflite-int8-0.5", "compression_ratio"] == pytest.approx(4.0)
    assert table.loc["native", "compression_ratio"] == pytest.approx(0.5)
    assert table.loc["tflite-fp32", "agreement"] == 1.0
    assert table.loc["tflite-int8-0.5", "agreement"] == 0.75
    assert table.loc["tflite-int8-0.5", "scheme"] == "wi8_ai8"
    assert table.loc["native", "backend"] == "Keras"
    # evaluated on other test images: no agreement is claimed
    assert math.isnan(table.loc["tflite-imbint8", "agreement"])
    shown = tables.view(table.reset_index(), tables.HOME_VIEW)
    assert list(shown.columns) == list(tables.HOME_VIEW[1:])
    assert shown.index.name == "variant"


def test_comparison_table_without_reference_or_fp32():
    table = tables.comparison_table(ROWS[2:], DETAILS, "native")
    assert table["accuracy_delta"].isna().all()
    assert table["compression_ratio"].isna().all()
    assert tables.comparison_table([], {}, "native").empty


def test_latest_per_variant_and_test_fractions():
    older = result("native", 0.1, 1.0, 1, "old", created=1.0)
    newer = result("native", 0.9, 1.0, 1, "new", created=2.0)
    assert [r.result_key for r in tables.latest_per_variant([older, newer])] == ["new"]
    halves = [result("native", 1, 1, 1, "a", test_fraction=0.5), result("native", 1, 1, 1, "b")]
    assert tables.test_fractions(halves) == [1.0, 0.5]


def paired_details(b: int, c: int, both: int = 20, neither: int = 0):
    """Variant and reference details on the same images with b images only the reference
    gets right and c only the variant (class 0)."""
    n = both + b + c + neither
    labels = np.zeros(n, dtype=np.int64)
    reference = np.array([0] * both + [0] * b + [1] * c + [1] * neither)
    variant = np.array([0] * both + [1] * b + [0] * c + [1] * neither)
    return details(labels, variant), details(labels, reference)


def paired_comparison(variant: Details, reference: Details) -> stats.PairedComparison:
    """As `Workspace.paired` computes it for the pages: at the tables' level."""
    return stats.compare_details(variant, reference, resamples=tables.RESAMPLES, seed=0,
                                 level=tables.LEVEL)


def breed_changes(variant: Details, reference: Details) -> pd.DataFrame:
    return tables.breed_table(stats.class_changes_of(variant, reference, level=tables.LEVEL),
                              variant.class_names)


def test_paired_statistics_mark_only_real_differences():
    many_v, many_r = paired_details(b=12, c=0)
    few_v, few_r = paired_details(b=2, c=1)
    many = paired_comparison(many_v, many_r)
    few = paired_comparison(few_v, few_r)
    assert (many.mcnemar.b, many.mcnemar.c) == (12, 0) and many.significant
    assert many.accuracy_difference.high < 0  # the interval excludes zero
    assert not few.significant and few.accuracy_difference.low < 0 < few.accuracy_difference.high
    table = tables.paired_table({"ref": None, "many": many, "few": few})
    assert table.loc["many", "significant"] == "✱" and table.loc["few", "significant"] == ""
    assert table.loc["many", "mcnemar_bc"] == "12 / 0"
    assert table.loc["many", "accuracy_ci"].startswith(f"{-12 / 32:+.4f} [")
    assert table.loc["ref", "accuracy_ci"] == "" and math.isnan(table.loc["ref", "mcnemar_p"])
    assert tables.column("accuracy_ci").label == "Δ accuracy [95% CI]"
    with pytest.raises(ValueError, match="different test images"):
        paired_comparison(DETAILS["kb"], DETAILS["kn"])


def test_a_breed_is_hurt_only_when_its_interval_excludes_zero():
    # Abyssinian: 20 images, the variant loses 12 of them; beagle: 20 images, loses 1.
    labels = np.array([0] * 20 + [1] * 20)
    reference = labels.copy()
    variant = labels.copy()
    variant[:12] = 1
    variant[20] = 0
    changes = breed_changes(details(labels, variant), details(labels, reference))
    assert list(changes.index) == NAMES
    assert changes.loc["beagle", "difference"] == pytest.approx(-0.05)  # a drop ...
    assert not changes.loc["beagle", "hurt"]  # ... within chance: not called hurt
    assert changes.loc["Abyssinian", "hurt"] and changes.loc["Abyssinian", "b"] == 12
    assert list(tables.hurt_breeds(changes).index) == ["Abyssinian"]
    small = breed_changes(details(labels, reference), details(labels, reference))
    assert tables.hurt_breeds(small).empty
    assert tables.most_hurt({"same": small, "worse": changes}) == "worse"
    assert tables.most_hurt({}) is None


def test_seeds_parse_to_one_spec_each():
    assert tables.parse_seeds("1234") == (1234,)
    assert tables.parse_seeds("1, 2 3,2") == (1, 2, 3)
    assert tables.parse_seeds("1-3, 7") == (1, 2, 3, 7)
    for bad, message in (("x", "not a seed"), ("5-1", "backwards"), ("1-100", "at most"),
                         ("", "at least one")):
        with pytest.raises(SpecError, match=message):
            tables.parse_seeds(bad)
    specs = tables.requested_specs("tflite-int8", 0.3, (1234, 7))
    assert [s.name for s in specs] == ["tflite-int8-0.3", "tflite-int8-0.3-s7"]
    assert [s.name for s in tables.requested_specs("aeq-wi8-ai8", classes=(0, 2))] == [
        "aeq-wi8-ai8-c0+2"]
    assert [s.name for s in tables.requested_specs("tflite-fp16", 0.3, (1, 2))] == [
        "tflite-fp16"]  # no calibration: one spec, whatever the seeds
    with pytest.raises(SpecError, match="needs a calibration"):
        tables.requested_specs("tflite-int8")


def test_recipes_are_grouped_by_backend():
    groups = tables.recipe_groups()
    assert list(groups) == ["Keras", "TFLite converter", "AI Edge Quantizer",
                            "The .tflite as it is"]
    assert [r.key for r in groups["The .tflite as it is"]] == ["source"]
    # what a source can never have is not offered: Keras for a .tflite, the file for Keras
    assert list(tables.recipe_groups(tflite_source=False)) == [
        "Keras", "TFLite converter", "AI Edge Quantizer"]
    assert list(tables.recipe_groups(tflite_source=True)) == [
        "TFLite converter", "AI Edge Quantizer", "The .tflite as it is"]
    assert sum(len(g) for g in groups.values()) == len(RECIPES)
    assert all(r.backend is Backend.AEQ for r in groups["AI Edge Quantizer"])
    assert [r.key for r in groups["Keras"]] == ["native"]


def test_seed_spread_per_fraction():
    runs = [result(name, accuracy, 1, 1, name) for name, accuracy in (
        ("tflite-int8-0.3", 0.80), ("tflite-int8-0.3-s7", 0.84), ("tflite-int8-0.3-s8", 0.82),
        ("tflite-int8-0.8", 0.9), ("aeq-wi8-ai8-0.3", 0.7), ("native", 0.9))]
    table = tables.seed_spread_table(runs)
    assert list(table["recipe"]) == ["tflite-int8"]  # one seed elsewhere: no spread
    row = table.iloc[0]
    assert row["seeds"] == 3 and row["fraction"] == 0.3
    assert row["accuracy_mean"] == pytest.approx(0.82)
    assert row["accuracy_std"] == pytest.approx(0.02)
    assert row["accuracy_low"] < 0.82 < row["accuracy_high"]
    fig = figures.seed_spread_figure(table)
    bars = fig.data[0].error_y
    assert bars.array[0] == pytest.approx(row["accuracy_high"] - 0.82)
    assert sorted(fig.data[1].y) == pytest.approx([0.80, 0.82, 0.84])  # each seed's dot
    assert tables.seed_spread_table(runs[3:]).empty


def test_plan_table_shows_status_and_cached_figures():
    tasks = [PlanItem(VariantSpec.native(), PlanStatus.CACHED),
             PlanItem(VariantSpec.imbint8((5,)), PlanStatus.SKIPPED, "class 5 out of range")]
    table = tables.plan_table(tasks, {"native": ROWS[0]})
    assert table.loc["native", "accuracy"] == 1.0
    assert math.isnan(table.loc["tflite-imbint8", "accuracy"])
    assert table.loc["tflite-imbint8", "reason"] == "class 5 out of range"
    assert table.loc["native", "status"] == "cached"
    assert "reason" not in tables.plan_table(tasks[:1], {}).columns  # nothing skipped
    assert tables.column("status").label == "Status"


def test_pareto_front_keeps_only_undominated_variants():
    table = tables.comparison_table(ROWS, DETAILS, "native")
    assert set(tables.pareto_front(table)) == {"tflite-int8-0.5", "tflite-fp32"}
    fig = figures.pareto_scatter(table)
    assert any(trace.name == "Pareto front" for trace in fig.data)
    assert {t.name for t in fig.data} >= {r.variant for r in ROWS}
    bubble = next(t for t in fig.data if t.name == "native")
    assert bubble.marker.size[0] == 16_000  # bubble area = file size


def test_per_class_views():
    sensitivity = tables.per_class_sensitivity(ROWS, DETAILS)
    assert list(sensitivity.index) == NAMES
    delta = tables.per_class_delta(sensitivity, "native")
    assert "native" not in delta.columns
    assert delta.loc["Abyssinian", "tflite-int8-0.5"] == pytest.approx(-0.5)
    fig = figures.per_class_heatmap(sensitivity, "native")
    assert "change from native" in fig.data[0].hovertemplate


def test_confusion_heatmaps_and_difference():
    fig = figures.confusion_heatmap(DETAILS["ki"], "tflite-int8-0.5")
    hover = fig.data[0].hovertemplate
    assert "true: %{y}" in hover and "predicted: %{x}" in hover and "count: %{z}" in hover
    diff = tables.confusion_difference(DETAILS["ki"], DETAILS["kn"])
    assert diff.tolist() == [[-1, 1], [0, 0]]
    assert figures.difference_heatmap(diff, ["a", "b"], "d").data[0].zmid == 0
    with pytest.raises(ValueError, match="different test images"):
        tables.confusion_difference(DETAILS["kb"], DETAILS["kn"])
    assert tables.max_count(DETAILS["kn"], DETAILS["ki"]) == 2
    table = tables.comparison_table(ROWS[:3], DETAILS, "native")
    assert tables.default_pair(table, "native") == "tflite-int8-0.5"


def test_bars_histogram_and_sizes():
    table = tables.comparison_table(ROWS, DETAILS, "native")
    fig = figures.metric_bars(table)
    assert [t.name for t in fig.data] == [METRICS[m].label for m in
                                          ("accuracy", "mean_precision", "mean_sensitivity",
                                           "g_mean", "top5")]
    assert list(fig.data[0].x) == [r.variant for r in ROWS]
    assert figures.calibration_histogram({"a": 3, "b": 0}, "t").data[0].y == (3, 0)
    assert tables.human_size(8_748) == "8.75 kB"
    assert tables.human_size(14_000_000) == "14.0 MB"
    assert tables.human_size(512) == "512 B"
    assert tables.fraction_text(1.0) == "the whole test split"
    assert tables.fraction_text(0.3) == "30% of the test split"


class FakeRunner:
    """Fixed scores: the one stand-in here, for classify()'s ranking arithmetic."""

    def __init__(self, scores):
        self.scores = np.asarray(scores, np.float32)

    def predict(self, x):
        return self.scores


def test_classify_gives_top_k_probabilities_and_disagreement():
    names = ["a", "b", "c"]
    out = classify_image({"one": FakeRunner([0.0, 5.0, 1.0]),
                          "two": FakeRunner([3.0, 0.0, 0.0])}, np.zeros((1, 2, 2, 3)), names,
                         "photo.jpg", k=2)
    assert all(isinstance(a, Answer) and a.file == "photo.jpg" for a in out)
    assert [(a.variant, a.top1) for a in out] == [("one", "b"), ("two", "a")]
    assert [b for b, _ in out[0].top5] == ["b", "c"]
    assert sum(p for _, p in out[0].top5) < 1.0 and 0 <= out[0].latency_ms < 1000
    assert disagreement(out)
    assert not disagreement(out[:1])


# ---------------------------------------------------------------- the pages, through AppTest

FILLED = [VariantSpec.native(), VariantSpec.fp32(), VariantSpec.int8(0.5),
          VariantSpec.imbint8((1,)), VariantSpec.int8(0.5, seed=7),
          VariantSpec.int8(0.5, seed=8), VariantSpec.of("aeq-wi8-afp32")]
FILLED_NAMES = ["native", "tflite-fp32", "tflite-imbint8-c1", "tflite-int8-0.5-s7",
                "tflite-int8-0.5-s8", "tflite-int8-0.5", "aeq-wi8-afp32"]  # by recipe, seed


@pytest.fixture(scope="module")
def filled_cache(tiny_model, pet_root, tmp_path_factory):
    """A cache holding native, FP32, INT8 (three seeds), imbalanced INT8 and an AI Edge
    Quantizer result of the tiny model."""
    from petq.workspace import Workspace

    cache = tmp_path_factory.mktemp("dashboard-cache")
    ws = Workspace(tiny_model, pet_root, cache, threads=1)
    for spec in FILLED:
        ws.evaluate(spec, latency_runs=5)
    return cache


@pytest.fixture()
def filled(monkeypatch, tiny_model, pet_root, filled_cache):
    point_dashboard_at(monkeypatch, tiny_model, pet_root, filled_cache)
    return filled_cache


@pytest.fixture()
def empty(monkeypatch, tiny_model, pet_root, tmp_path):
    point_dashboard_at(monkeypatch, tiny_model, pet_root, tmp_path / "cache")
    return tmp_path / "cache"


def assert_clean(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def texts(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [caption for image in at.get("image") for caption in image.captions]
    parts += [e.value for kind in ("success", "info", "warning", "error") for e in at.get(kind)]
    return "\n".join(str(p) for p in parts)


def column_labels(frame) -> dict[str, str]:
    """A shown dataframe's column keys -> the labels its column_config gives them."""
    return {key: config["label"] for key, config in json.loads(frame.proto.columns).items()
            if "label" in config}


def test_navigation_registers_every_page(empty):
    """The pages in pages/, registered with st.navigation (which turns the folder's legacy
    discovery off): each page file once, Home at the root, the same URL paths as ever;
    Streamlit's own sidebar navigation is on."""
    assert "showSidebarNavigation" not in (ROOT / ".streamlit" / "config.toml").read_text()
    at = dashboard_app()
    pages = {info["script_path"]: (info["page_name"], info["url_pathname"])
             for info in at._registered_pages.values()}
    mine = {str(ROOT / "pages/home.py"): ("Home", ""),
            str(ROOT / "pages/convert.py"): ("Convert", "convert"),
            str(ROOT / "pages/compare.py"): ("Compare", "compare"),
            str(ROOT / "pages/classify.py"): ("Classify", "classify"),
            str(ROOT / "pages/report.py"): ("Report", "report")}
    assert {k: v for k, v in pages.items() if k in mine} == mine
    assert pages[str(ROOT / "pages/layers.py")] == ("Layers", "layers")
    assert sorted(pages) == sorted(str(p) for p in (ROOT / "pages").glob("*.py"))


def test_a_page_opened_first_runs_inside_the_frame(monkeypatch, empty):
    """A server's first run, before any st.navigation call, finds pages/ the legacy way and
    runs the requested page's file alone; the page then reruns through dashboard.py."""
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.testing.v1 import AppTest

    monkeypatch.setattr(PagesManager, "__init__", PagesManager.__init__.__wrapped__)
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120)
    at.switch_page("pages/compare.py").run()  # a bookmark of /compare: the session's first run
    assert_clean(at)
    assert at.title[0].value == "Compare"
    assert "**Model**" in "\n".join(c.value for c in at.sidebar.caption)  # the frame ran
    titles = {info["page_name"] for info in at._registered_pages.values()}
    assert titles == {"Home", "Convert", "Classify", "Tune", "Compare", "Layers", "Report"}


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_on_an_empty_cache(empty, page):
    at = dashboard_app(page)
    assert_clean(at)
    assert at.title[0].value  # the page itself ran, not only the frame


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_from_a_filled_cache(filled, page):
    at = dashboard_app(page)
    assert_clean(at)
    before = cache_files(filled)
    at.run()
    assert cache_files(filled) == before  # a rerun reads the cache: nothing built or rewritten
    assert_clean(at)


def cache_files(root: Path) -> dict[str, int]:
    """Every file under the cache, with its modification time (ns): a build shows here."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file()}


def test_home_shows_the_workspace_the_variants_and_the_task_plan(filled):
    at = dashboard_app()
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Parameters"] == "1,460"  # the tiny CNN: 224 + 1,168 + 68
    assert metrics["Input"] == "32×32"
    assert metrics["Trainval images"] == "40" and metrics["Test images"] == "20"
    cached = at.dataframe[0]
    assert list(cached.value.index) == FILLED_NAMES
    assert cached.value.loc["tflite-int8-0.5", "scheme"] == "wi8_ai8"
    assert cached.value.loc["aeq-wi8-afp32", "scheme"] == "wi8_afp32"
    labels = column_labels(cached)
    assert labels["scheme"] == "Scheme" and labels["file_size_bytes"] == "Size (bytes)"
    assert "Precision" not in labels.values()
    assert "test images 20 listed, 20 evaluated, 0 skipped" in texts(at)
    plan = at.dataframe[-1].value
    status = dict(zip(plan["Variant"], plan["Status"], strict=True))
    assert status["native"] == "cached" and status["tflite-fp32"] == "cached"
    assert status["tflite-int8-0.08"] == "to do"
    assert status["tflite-imbint8"] == "skipped"  # class 5 is not in the 4-class fixture
    assert "out of range" in dict(zip(plan["Variant"], plan["Why"], strict=True))[
        "tflite-imbint8"]
    bubbles = at.get("plotly_chart")
    assert len(bubbles) == 1
    figure = json.loads(bubbles[0].proto.spec)
    assert {t["name"] for t in figure["data"]} >= set(FILLED_NAMES)


def submit_settings(at):
    next(b for b in at.button if b.label == "Apply").click().run()
    return at


def open_settings(at):
    """Open the sidebar's Settings, as a click on the expander does (closed, it holds no
    widgets: a fresh tab loads none)."""
    assert not at.sidebar.selectbox and not at.sidebar.text_input
    at.session_state[SETTINGS_OPEN_KEY] = True
    return at.run()


def test_settings_list_the_models_folder_and_reject_a_bad_path(filled, tmp_path):
    at = open_settings(dashboard_app())
    model = at.selectbox(key="settings_model")
    assert "petq-demo.keras" in model.options  # shown by name
    assert model.options[-1] == "Other path…" and model.value == "Other path…"  # the fixture
    at.text_input(key="settings_model_path").set_value(str(tmp_path / "missing.keras"))
    submit_settings(at)
    assert not at.exception
    assert any("missing.keras: model file not found" in e.value for e in at.error)
    assert {m.label: m.value for m in at.metric}["Parameters"] == "1,460"  # the old workspace
    # the shipped demo model, picked from the list, on the fixture's four breeds
    at.selectbox(key="settings_model").set_value(str(ROOT / "models" / "petq-demo.keras"))
    submit_settings(at)
    assert_clean(at)
    assert at.session_state["petq_settings"].model is None  # None: the demo model
    assert "**Model** `petq-demo.keras`" in "\n".join(c.value for c in at.sidebar.caption)
    assert {m.label: m.value for m in at.metric}["Input"] == "224×224"


@pytest.mark.slow  # several whole-page runs; settings keep a quick test
def test_settings_switch_to_another_dataset(filled, tmp_path):
    from conftest import write_pet_tree

    other = write_pet_tree(tmp_path / "other", seed=5)
    at = open_settings(dashboard_app())
    at.text_input(key="settings_dataset").set_value(str(other))
    submit_settings(at)
    assert_clean(at)
    assert str(other) in texts(at)
    at.switch_page("pages/compare.py").run()  # the setting holds on every page
    assert_clean(at)
    assert "`other`" in "\n".join(c.value for c in at.sidebar.caption)


@pytest.mark.slow  # several whole-page runs; settings keep a quick test
def test_settings_preprocessing_defaults_to_the_sidecar_and_can_be_changed(filled):
    at = open_settings(dashboard_app())
    choice = at.selectbox(key="settings_preprocessing")
    assert choice.value is None
    assert "the model's own (torch)" in choice.options[0]
    assert "preprocessing `torch`" in "\n".join(c.value for c in at.sidebar.caption)
    choice.set_value("unit")
    submit_settings(at)
    assert_clean(at)
    assert "preprocessing `unit`" in "\n".join(c.value for c in at.sidebar.caption)
    # another contract: the cached results of the sidecar's preprocessing are not this one's
    plan = at.dataframe[-1].value
    status = dict(zip(plan["Variant"], plan["Status"], strict=True))
    assert status["tflite-fp32"] == "to do" and status["native"] == "to do"
    assert len(at.dataframe) == 1  # no cached-variants table
    assert any("Nothing evaluated" in i.value for i in at.info)


def small_model(path: Path, width: int) -> Path:
    """An untrained 4-class CNN on 32x32 inputs with `width` filters (a different size)."""
    import keras

    model = keras.Sequential([keras.Input((32, 32, 3)),
                              keras.layers.Conv2D(width, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(4, name="out_layer")])
    model.save(path)
    return path


@pytest.mark.slow  # builds a second model; two Home runs on a fresh cache
def test_a_model_replaced_at_the_same_path_is_noticed(monkeypatch, tiny_model, pet_root,
                                                       tmp_path):
    model = tmp_path / "model.keras"
    shutil.copy(tiny_model, model)
    shutil.copy(tiny_model.with_suffix(".json"), model.with_suffix(".json"))
    point_dashboard_at(monkeypatch, model, pet_root, tmp_path / "cache")
    at = dashboard_app()
    assert {m.label: m.value for m in at.metric}["Parameters"] == "1,460"
    replacement = small_model(tmp_path / "replacement.keras", width=3)
    shutil.copy(replacement, model)  # same path, new bytes
    at.run()
    assert_clean(at)
    assert {m.label: m.value for m in at.metric}["Parameters"] == "100"  # 84 + 16


def test_a_running_job_shows_progress(filled):
    job = Job(id="20990101-000000-aaaaaa", model_path="m", dataset_root="d",
              cache_root=str(filled), threads=1, state=Status.RUNNING, created=time.time(),
              current="tflite-int8-0.3", stage=Stage.CALIBRATE, stage_done=3, stage_total=12,
              pid=os.getpid(), create_time=process_create_time(),
              variants=[JobVariant("tflite-fp32", VariantSpec.fp32(), Status.DONE, cached=True),
                        JobVariant("tflite-int8-0.3", VariantSpec.int8(0.3), Status.RUNNING)])
    path = job_path(filled, job.id)
    write_json_atomic(path, job.to_dict())
    try:
        at = dashboard_app()
        assert_clean(at)
        bars = [p.proto.text for p in at.get("progress")]
        assert "1/2 variants done · running" in bars
        assert "tflite-int8-0.3: calibrating 3/12" in bars
    finally:
        path.unlink()


def convert_plan(at) -> pd.DataFrame:
    return at.dataframe[0].value


def test_convert_fraction_and_seeds_give_one_spec_per_seed(filled):
    at = dashboard_app("pages/convert.py")
    assert at.radio(key="convert_backend").value == "TFLite converter"
    assert at.selectbox(key="convert_recipe_TFLite converter").value == "tflite-int8"
    assert RECIPES["tflite-int8"].summary in texts(at)
    at.slider(key="convert_fraction").set_value(0.5).run()
    assert_clean(at)
    assert "**20** of 40 trainval images" in texts(at)
    assert convert_plan(at).loc["tflite-int8-0.5", "status"] == "cached"  # shown at once
    assert "nothing to convert" in texts(at)
    at.text_input(key="convert_seeds").set_value("1234, 7-9").run()
    assert_clean(at)
    plan = convert_plan(at)
    assert list(plan.index) == ["tflite-int8-0.5", "tflite-int8-0.5-s7", "tflite-int8-0.5-s8",
                                "tflite-int8-0.5-s9"]
    assert list(plan["status"]) == ["cached", "cached", "cached", "to do"]
    assert plan.loc["tflite-int8-0.5-s7", "calibration_count"] == 20
    assert column_labels(at.dataframe[0])["accuracy"] == METRICS["accuracy"].label
    assert [b.label for b in at.button if b.key == "convert_start"] == [
        "Convert and evaluate tflite-int8-0.5-s9"]
    assert len(at.get("plotly_chart")) == 1  # the calibration histogram
    at.text_input(key="convert_seeds").set_value("seven").run()
    assert any("not a seed" in e.value for e in at.error)


@pytest.mark.slow  # several whole-page runs; the convert page keeps a quick test
def test_convert_recipes_by_backend_calibrate_only_when_static(filled):
    at = dashboard_app("pages/convert.py")
    at.radio(key="convert_backend").set_value("AI Edge Quantizer").run()
    recipe = at.selectbox(key="convert_recipe_AI Edge Quantizer")
    assert set(recipe.options) == {f"{k} · {r.scheme}" for k, r in RECIPES.items()
                                   if r.backend is Backend.AEQ}
    recipe.set_value("aeq-wi8-afp32").run()
    assert_clean(at)
    assert RECIPES["aeq-wi8-afp32"].summary in texts(at)
    assert [r.key for r in at.radio] == ["convert_backend"]  # no calibration controls
    assert not at.slider and not at.multiselect
    assert convert_plan(at).loc["aeq-wi8-afp32", "status"] == "cached"
    at.selectbox(key="convert_recipe_AI Edge Quantizer").set_value("aeq-wi8-ai8").run()
    assert_clean(at)
    assert at.radio(key="convert_calibration").value == "a fraction of trainval"
    at.radio(key="convert_calibration").set_value("chosen breeds only").run()
    assert_clean(at)
    at.multiselect(key="convert_classes").set_value(["Abyssinian", "Bengal"]).run()
    assert list(convert_plan(at).index) == ["aeq-wi8-ai8-c0+2"]
    assert convert_plan(at).loc["aeq-wi8-ai8-c0+2", "status"] == "to do"
    at.radio(key="convert_backend").set_value("Keras").run()
    assert_clean(at)
    assert [b.label for b in at.button if b.key == "convert_start"] == []  # native is cached


@pytest.mark.slow  # several whole-page runs; the convert page keeps a quick test
def test_convert_breeds_picker_and_shortcut(filled):
    at = dashboard_app("pages/convert.py")
    at.radio(key="convert_calibration").set_value("chosen breeds only").run()
    assert_clean(at)
    picker = at.multiselect(key="convert_classes")
    assert picker.value == ["Abyssinian"]  # class 5 does not exist here: the first breed
    picker.set_value(["Abyssinian", "Bengal"]).run()
    assert "tflite-imbint8-c0+2" in texts(at)
    assert "**20** of 40 trainval images" in texts(at)
    at.selectbox(key="convert_one_class").set_value("american_bulldog").run()
    assert at.multiselect(key="convert_classes").value == ["american_bulldog"]
    assert convert_plan(at).loc["tflite-imbint8-c1", "status"] == "cached"
    at.multiselect(key="convert_classes").set_value([]).run()
    assert_clean(at)
    assert any("at least one breed" in w.value for w in at.warning)


@pytest.mark.slow
def test_convert_button_starts_one_job_for_every_seed(monkeypatch, tiny_model, pet_root,
                                                      tmp_path):
    cache = tmp_path / "cache"
    point_dashboard_at(monkeypatch, tiny_model, pet_root, cache)
    at = dashboard_app("pages/convert.py")
    at.slider(key="convert_fraction").set_value(0.5).run()
    at.text_input(key="convert_seeds").set_value("1, 2").run()
    button = at.button(key="convert_start")
    assert button.label == "Convert and evaluate 2 variants"
    button.click().run()
    # the page does not wait for the conversion: back with the job still under way
    assert [j.state.active for j in list_jobs(cache)] == [True]
    assert_clean(at)
    assert len(at.session_state[JOBS_KEY]) == 1
    assert any("variants done" in p.proto.text for p in at.get("progress"))
    wait_until(lambda: not list_jobs(cache, active_only=True), 240, interval=0.5,
               raise_on_timeout=False)
    jobs = list_jobs(cache)
    assert [j.state for j in jobs] == [Status.DONE]
    assert [v.name for v in jobs[0].variants] == ["tflite-int8-0.5-s1", "tflite-int8-0.5-s2"]
    at.run()
    assert_clean(at)
    assert list(convert_plan(at)["status"]) == ["cached", "cached"]


def test_compare_table_paired_statistics_and_reference(filled):
    at = dashboard_app("pages/compare.py")
    assert_clean(at)
    table = at.dataframe[0].value
    assert list(table.index) == FILLED_NAMES
    labels = column_labels(at.dataframe[0])
    assert labels["accuracy_ci"] == "Δ accuracy [95% CI]" and labels["scheme"] == "Scheme"
    assert labels["file_size_bytes"] == "Size (bytes)"
    assert table.loc["native", "accuracy_ci"] == ""  # the reference itself
    assert np.isnan(table.loc["native", "mcnemar_p"])  # no value: shown as "—", not "None"
    assert at.dataframe[0].proto.placeholder == "—"
    assert table.loc["tflite-fp32", "mcnemar_bc"] == "0 / 0"  # FP32 = Keras on every image
    assert table.loc["tflite-fp32", "accuracy_ci"] == "+0.0000 [+0.0000, +0.0000]"
    assert table.loc["tflite-fp32", "mcnemar_p"] == 1.0
    assert table.loc["tflite-fp32", "significant"] == ""
    assert table.loc["tflite-fp32", "agreement"] == pytest.approx(1.0)
    assert table.loc["tflite-int8-0.5", "compression_ratio"] > 1.0
    assert table.loc["tflite-int8-0.5", "scheme"] == "wi8_ai8"
    at.selectbox(key="compare_reference").set_value("tflite-fp32").run()
    assert_clean(at)
    table = at.dataframe[0].value
    assert table.loc["tflite-fp32", "latency_p50_ms_delta"] == 0.0
    assert table.loc["native", "mcnemar_bc"] == "0 / 0"
    assert "hurts no breed beyond chance" in texts(at)  # per breed: the detail shown first
    assert "compare_cm_left" not in [box.key for box in at.selectbox]
    at.segmented_control(key="compare_detail").set_value("Confusion matrices").run()
    assert_clean(at)
    assert at.selectbox(key="compare_cm_left").value == "tflite-fp32"
    assert "hurts no breed beyond chance" not in texts(at)


@pytest.mark.slow  # a whole-page run; the compare page keeps a quick test
def test_compare_shows_the_spread_over_seeds(filled):
    at = dashboard_app("pages/compare.py")
    figures = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    spread = next(f for f in figures if "over calibration seeds" in f["layout"]["title"]["text"])
    assert spread["data"][0]["x"] == [0.5]
    assert len(spread["data"][1]["y"]) == 3  # one dot per seed
    seeds = at.dataframe[1].value
    assert list(seeds["recipe"]) == ["tflite-int8"] and list(seeds["seeds"]) == [3]
    at.multiselect(key="compare_variants").set_value(["native", "tflite-int8-0.5"]).run()
    assert_clean(at)
    assert not any("over calibration seeds" in json.loads(c.proto.spec)["layout"]["title"]
                   ["text"] for c in at.get("plotly_chart"))
    assert list(at.dataframe[0].value.index) == ["native", "tflite-int8-0.5"]
    at.multiselect(key="compare_variants").set_value([]).run()
    assert any("at least one variant" in i.value for i in at.info)


def jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def good_files() -> list[tuple[str, bytes, str]]:
    rng = np.random.default_rng(1)
    pixels = np.clip(np.array([50, 70, 200]) + rng.normal(0, 20, (50, 70, 3)), 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    rgba = image.convert("RGBA")
    rgba.putalpha(128)
    return [("blue.jpg", jpeg(image), "image/jpeg"),
            ("rotated.jpg", jpeg(image, exif=exif), "image/jpeg"),
            ("gray.png", encoded(image.convert("L"), "PNG"), "image/png"),
            ("rgba.webp", encoded(rgba, "WEBP"), "image/webp"),
            ("anim.gif", encoded(image, "GIF"), "image/gif"),
            ("plain.bmp", encoded(image, "BMP"), "image/bmp"),
            ("scan.tiff", encoded(image, "TIFF"), "image/tiff")]


def bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, format="PNG")  # 100 MP, a few kB
    return buffer.getvalue()


def test_classify_accepts_what_the_decoder_reads(filled):
    from petq.data import UPLOAD_TYPES

    at = dashboard_app("pages/classify.py")
    accepted = list(at.get("file_uploader")[0].proto.type)
    assert accepted == [f".{t}" for t in UPLOAD_TYPES]
    assert {".gif", ".bmp", ".tiff", ".heic", ".heif"} <= set(accepted)


@pytest.mark.slow  # whole-page run per upload kind; the classify page keeps its quick smoke tests
def test_classify_good_uploads_of_every_kind(filled):
    at = dashboard_app("pages/classify.py")
    variants = at.multiselect(key="classify_variants").value
    assert variants[0] == "native" and {"tflite-fp32", "aeq-wi8-afp32"} <= set(variants)
    files = good_files()
    at.file_uploader(key="classify_upload").set_value(files).run()
    assert_clean(at)
    captions = texts(at)
    for name in ("blue.jpg · 70×50", "rotated.jpg · 50×70", "gray.png", "rgba.webp",
                 "anim.gif", "plain.bmp", "scan.tiff"):
        assert name in captions  # the EXIF rotation is applied
    headers = [m.value for m in at.markdown if m.value.startswith("**tflite-fp32**")]
    assert len(headers) == len(files) and all(" ms" in h for h in headers)
    # top-5 (here all 4 classes) per variant per photo
    assert len(at.get("progress")) == 4 * len(variants) * len(files)
    badges = [m.value for m in at.markdown if "-badge[" in m.value and "agree" in m.value]
    assert len(badges) == len(files)  # one verdict per photo
    agree = ":green-badge[:material/check: All variants agree]"
    disagree = ":orange-badge[:material/warning: Variants disagree]"
    assert set(badges) <= {agree, disagree}


@pytest.mark.parametrize("name, data, message", [
    ("notes.jpg", b"this is not an image", "not an image Pillow can read"),
    # the same page run for each: one stays in the quick loop
    pytest.param("cut.jpg", None, "cannot decode image", marks=pytest.mark.slow),
    pytest.param("bomb.png", None, "image too large", marks=pytest.mark.slow),
    pytest.param("huge.jpg", None, "file too large", marks=pytest.mark.slow),
])
def test_classify_bad_uploads_get_a_clear_message(filled, name, data, message):
    import streamlit as st

    if name == "cut.jpg":
        data = jpeg(Image.new("RGB", (64, 64), (200, 30, 30)))[:300]
    elif name == "bomb.png":
        data = bomb()
    elif name == "huge.jpg":
        data = b"\xff\xd8" + bytes(int(st.get_option("server.maxUploadSize")) * 1024 * 1024)
    at = dashboard_app("pages/classify.py")
    at.file_uploader(key="classify_upload").set_value(
        [(name, data, "image/jpeg"), good_files()[0]]).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith(name) and message in errors[0], errors
    assert any(m.value.startswith("**native**") for m in at.markdown)  # the good one still runs


@pytest.mark.slow  # whole-page run; the classify page keeps its quick smoke tests
def test_classify_camera_photo(filled):
    at = dashboard_app("pages/classify.py")
    at.toggle(key="classify_use_camera").set_value(True).run()
    at.camera_input(key="classify_camera").set_value(good_files()[0][:2] + ("image/jpeg",))
    at.run()
    assert_clean(at)
    assert "camera photo" in texts(at)


@pytest.mark.slow  # its own workspace and a whole-page run
def test_classify_says_when_the_model_is_synthetic(monkeypatch, tiny_model, pet_root,
                                                    tmp_path):
    model = tmp_path / "synthetic.keras"
    shutil.copy(tiny_model, model)
    sidecar = json.loads(tiny_model.with_suffix(".json").read_text())
    model.with_suffix(".json").write_text(json.dumps({**sidecar, "synthetic": True}))
    point_dashboard_at(monkeypatch, model, pet_root, tmp_path / "cache")
    at = dashboard_app("pages/classify.py")
    at.file_uploader(key="classify_upload").set_value(good_files()[:1]).run()
    assert_clean(at)
    assert "trained on synthetic data" in texts(at)


def test_report_shows_the_summary_and_offers_downloads(filled):
    at = dashboard_app("pages/report.py")
    assert_clean(at)
    body = texts(at)
    assert "How does the TFLite FP32 model perform compared to the native model?" in body
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Download the report (zip)", "Download summary.md"]
    assert len(at.get("image")) == 1  # the chosen variant's confusion PNG
    at.selectbox(key="report_variant").set_value("tflite-int8-0.5").run()
    assert_clean(at)
    assert "Model type: tflite-int8-0.5" in texts(at)


@pytest.mark.slow  # its own workspace, evaluated, and two whole-page runs
def test_report_redraws_no_confusion_matrix(monkeypatch, tiny_model, pet_root, tmp_path):
    """The page and the zip read the PNGs the worker drew into the cache; a second build
    draws nothing."""
    from petq import report
    from petq.workspace import Workspace

    cache = tmp_path / "cache"
    ws = Workspace(tiny_model, pet_root, cache, threads=1)
    rows = [ws.evaluate(spec, latency_runs=3)[0] for spec in FILLED[:2]]
    report.cached_confusion_png(ws.cache, rows[0].result_key, rows[0].variant)  # as a job's worker
    drawn = []
    draw = report.confusion_png

    def counting(matrix, names, title):  # counts the drawings, draws for real
        drawn.append(title)
        return draw(matrix, names, title)

    monkeypatch.setattr(report, "confusion_png", counting)
    point_dashboard_at(monkeypatch, tiny_model, pet_root, cache)
    at = dashboard_app("pages/report.py")
    assert_clean(at)
    assert at.selectbox(key="report_variant").value == rows[0].variant
    assert drawn == []  # the page showed the worker's PNG
    first = report.report_zip(ws, rows)  # what the page's download button calls
    assert drawn == [rows[1].variant]  # the one no worker drew, once
    second = report.report_zip(ws, rows)
    assert drawn == [rows[1].variant] and first == second
    newest = time.localtime(max(r.created for r in rows))[:6]  # not the time of zipping
    stamps = {i.date_time for i in zipfile.ZipFile(io.BytesIO(first)).infolist()}
    assert stamps == {(*newest[:5], newest[5] // 2 * 2)}  # zip keeps even seconds
    assert len(list(ws.cache.entries("figures"))) == 2
    at.selectbox(key="report_variant").set_value(rows[1].variant).run()
    assert_clean(at)
    assert drawn == [rows[1].variant]



def test_a_figure_drawn_from_the_scores_is_the_result_s_own(monkeypatch, workspace):
    """The CLI draws a variant's confusion PNG once its accuracy pass is done, before its
    latency and result: the report then reads that drawing, which is what the result's
    confusion matrix draws."""
    from petq import report

    spec = VariantSpec.int8(0.5)
    scores = workspace.predictions(spec, 0.5)
    report.early_confusion_png(workspace, spec, 0.5, workspace.scored(scores, 0.5)[0])
    result, _ = workspace.evaluate(spec, 0.5, latency_runs=3, scores=scores)
    details = workspace.details(result.result_key)
    expected = report.confusion_png(details.confusion_matrix, details.class_names,
                                    result.variant)
    monkeypatch.setattr(report, "confusion_png", None)  # drawing again would fail
    assert report.cached_confusion_png(workspace.cache, result.result_key,
                                       result.variant) == expected

def test_comparison_table_from_real_results(filled_cache, tiny_model, pet_root):
    from petq.workspace import Workspace

    ws = Workspace(tiny_model, pet_root, filled_cache, threads=1)
    rows = ws.results()
    table = tables.comparison_table(rows, {r.result_key: ws.details(r.result_key)
                                            for r in rows}, "native")
    assert isinstance(table, pd.DataFrame) and len(table) == len(FILLED)
    assert table["agreement"].notna().all()
    names = [spec.name for spec, _ in tables.available_variants(ws)]
    assert names == FILLED_NAMES

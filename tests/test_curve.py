"""Calibration curves and outlier images (petq.curve): the grid, the recommendation rule,
and both commands end to end on the tiny fixtures with the real converter."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from conftest import open_page
from petq.cli import main
from petq.curve import (
    ALL,
    CurvePoint,
    SizeSummary,
    curve_specs,
    read_exclusions,
    recommend,
)
from petq.errors import SpecError
from petq.stats import Interval, McNemar, PairedComparison
from petq.types import VariantSpec, parse_sizes


def test_sizes_are_counts_ascending_with_all_last():
    assert parse_sizes(["8", "1", "all", "8", "2"]) == [1, 2, 8, ALL]
    assert parse_sizes(["4"]) == [4, ALL]  # every size is compared with all of trainval
    for bad in ("0", "1.5", "many"):
        with pytest.raises(SpecError, match="calibration size"):
            parse_sizes([bad])


def test_the_grid_is_recipes_by_sizes_by_seeds_plus_all_of_trainval():
    specs = curve_specs(["tflite-int8", "aeq-wi8-ai8"], [1, 4, ALL], [7, 8], trainval=40)
    assert len(specs) == 2 * (2 * 2 + 1)
    assert VariantSpec.of("aeq-wi8-ai8", count=4, seed=8) in specs
    assert VariantSpec.of("tflite-int8", 1.0) in specs
    without = curve_specs(["tflite-int8"], [2, ALL], [1], 40, exclude=["b_1", "a_2"])
    assert all(s.calibration.exclude == ("a_2", "b_1") for s in without)
    with pytest.raises(SpecError, match="more than trainval's 40"):
        curve_specs(["tflite-int8"], [41, ALL], [1], trainval=40)
    with pytest.raises(SpecError, match="takes no calibration"):
        curve_specs(["tflite-fp16"], [1, ALL], [1], trainval=40)
    with pytest.raises(SpecError, match="seed"):
        curve_specs(["tflite-int8"], [1, ALL], [-1], trainval=40)


def test_exclusions_come_from_flags_and_a_file(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("# outliers\nBengal_3, beagle_1\n\nBengal_3  # twice\n")
    assert read_exclusions(["x_1"], path) == ["x_1", "Bengal_3", "beagle_1"]
    with pytest.raises(SpecError, match="--exclude-file"):
        read_exclusions([], tmp_path / "missing.txt")


def _point(size, seed, b, c, p) -> CurvePoint:
    """A cell that lost b and won c test images against all of trainval, McNemar p."""
    from petq.results import Result

    spec = VariantSpec.of("tflite-int8", count=size, seed=seed)
    accuracy = 0.9 + (c - b) / 100
    result = Result(spec, "", "m", "", "", "", True, 1.0, 100, 0, 0, 1, accuracy, accuracy,
                    accuracy, accuracy, 1.0, 1.0, 1.0, 1.0, 0.0, 1, 1)
    interval = Interval((c - b) / 100, (c - b) / 100 - 0.02, (c - b) / 100 + 0.02, 0.95)
    comparison = PairedComparison(interval, interval, interval, interval, interval, interval,
                                  McNemar(b, c, p, 100), p < 0.05, 2000, 0)
    return CurvePoint(spec, size, result, "", comparison)


def test_the_recommendation_is_the_smallest_size_from_which_every_size_passes():
    sizes = [
        SizeSummary("tflite-int8", 1, (_point(1, 1, 9, 0, 0.004), _point(1, 2, 1, 1, 1.0))),
        SizeSummary("tflite-int8", 2, (_point(2, 1, 2, 1, 1.0), _point(2, 2, 0, 0, 1.0))),
        # size 4 has a seed significantly worse: 2 (which passes) is not recommended
        SizeSummary("tflite-int8", 4, (_point(4, 1, 8, 0, 0.008), _point(4, 2, 0, 0, 1.0))),
        SizeSummary("tflite-int8", 8, (_point(8, 1, 3, 2, 1.0), _point(8, 2, 1, 0, 1.0))),
        # a significant difference in the variant's favour is not "worse"
        SizeSummary("tflite-int8", 16, (_point(16, 1, 0, 9, 0.004),)),
    ]
    (rec,) = recommend(sizes, {"tflite-int8"})
    assert rec.size == 8
    assert "worst seed (1)" in rec.reason  # 3 lost against 2 won: the lower accuracy
    assert recommend(sizes[:3], {"tflite-int8"})[0].size == ALL
    assert recommend(sizes, set())[0].size is None


def _rows(path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


@pytest.mark.slow
def test_a_curve_end_to_end_and_a_second_with_new_seeds(tiny_model, pet_root, tmp_path,
                                                        capsys):
    cache, out = tmp_path / "cache", tmp_path / "curve"
    common = ["--model-path", str(tiny_model), "--dataset-root", str(pet_root),
              "--cache-dir", str(cache), "--threads", "1", "--serial"]
    assert main(["calibration-curve", "--recipes", "tflite-int8", "--sizes", "2", "8",
                 "--seeds", "1", "2", "--results-path", str(out), *common]) == 0
    first = capsys.readouterr().err
    assert "tflite-int8: 40 image(s) calibrated now, 0 of 40 read" in first  # `all` is in
    rows = _rows(out / "calibration-curve.csv")
    assert [(r["size"], r["seed"]) for r in rows] == [
        ("2", "1"), ("2", "2"), ("8", "1"), ("8", "2"), ("all", "")]
    assert all(r["status"] == "ok" and r["result_key"] for r in rows)
    assert [int(r["calibration_images"]) for r in rows] == [2, 2, 8, 8, 40]
    assert all(r["mcnemar_p"] for r in rows[:4]) and not rows[4]["mcnemar_p"]
    assert (out / "calibration-curve.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "calibration-curve.md").read_text()
    assert "## Recommendation" in md and "**tflite-int8**" in md
    assert main(["calibration-curve", "--recipes", "tflite-int8", "--sizes", "2", "8",
                 "--seeds", "3", "4", "--results-path", str(out), *common]) == 0
    second = capsys.readouterr()  # the new cells' images, all profiled by the first run
    assert re.search(r"tflite-int8: 0 image\(s\) calibrated now, (\d+) of \1 read", second.err)
    assert re.search(r"tflite-int8-1 .*\(cached\)", second.out)  # all of trainval: cached


@pytest.mark.slow
def test_outliers_and_a_variant_without_them_against_the_original(tiny_model, pet_root,
                                                                  tmp_path, capsys):
    from petq.workspace import Workspace

    cache, out = tmp_path / "cache", tmp_path / "outliers"
    assert main(["calibration-outliers", "--model-path", str(tiny_model), "--dataset-root",
                 str(pet_root), "--cache-dir", str(cache), "--threads", "1", "--top", "4",
                 "--compare", "tflite-int8-0.5", "--exclude-top", "2",
                 "--results-path", str(out)]) == 0
    rows = _rows(out / "calibration-outliers.csv")
    ranked = list(dict.fromkeys(r["image_id"] for r in rows))
    assert rows and all(float(r["stretch"]) >= 1.0 for r in rows)
    assert (out / "calibration-outliers.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "calibration-outliers.md").read_text()
    assert f"Excluded: {ranked[0]}, {ranked[1]}." in md
    assert "tflite-int8-0.5-ex2-" in md and "McNemar" in md
    ws = Workspace(tiny_model, pet_root, cache, threads=1)
    names = {r.spec.name for r in ws.results()}
    twin = next(n for n in names if n.startswith("tflite-int8-0.5-ex2-"))
    assert "tflite-int8-0.5" in names and twin
    twin_spec = next(r.spec for r in ws.results() if r.spec.name == twin)
    assert set(twin_spec.calibration.exclude) == set(ranked[:2])
    assert not {s.image_id for s in ws.calibration_samples(twin_spec)} & set(ranked[:2])
    all_of_trainval = VariantSpec.of("tflite-int8", 1.0)  # what Convert's gallery reads
    assert ws.known_profile(all_of_trainval).profiled() >= set(ws.calibration_ids(
        all_of_trainval))
    assert main(["calibration-outliers", "--model-path", str(tiny_model), "--dataset-root",
                 str(pet_root), "--cache-dir", str(cache), "--exclude-images", "nope_1",
                 "--compare", "tflite-int8-0.5", "--results-path", str(out)]) == 1
    assert "petq: error:" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "says"), [
    (["--sizes", "0"], "calibration size '0'"),
    (["--sizes", "41"], "more than trainval's 40"),
    (["--recipes", "tflite-fp16"], "takes no calibration"),
    (["--exclude-images", "nope_1"], "not trainval images"),
    (["--serial", "--ray", "local"], "exclude each other"),
])
def test_a_bad_curve_is_one_error_line_before_any_work(args, says, tiny_model, pet_root,
                                                       tmp_path, capsys):
    code = main(["calibration-curve", "--model-path", str(tiny_model), "--dataset-root",
                 str(pet_root), "--cache-dir", str(tmp_path / "cache"), *args])
    err = capsys.readouterr().err
    assert code == 1 and "petq: error:" in err and says in err and "Traceback" not in err
    assert not (tmp_path / "cache" / "variants").exists()  # nothing was converted


@pytest.mark.usefixtures("dashboard_navigation")
@pytest.mark.parametrize("field, value, said", [
    ("convert_curve_sizes", "4 x", "calibration size 'x'"),
    ("convert_curve_sizes", "100000", "more than trainval"),
    ("convert_curve_seeds", "1, a", "seed"),
])
def test_bad_curve_input_is_one_message_and_starts_nothing(workspace, monkeypatch, field,
                                                           value, said):
    from petq.jobs import list_jobs

    at = open_page(workspace, monkeypatch, "pages/convert.py")
    before = len(list_jobs(workspace.cache.root))
    at.toggle(key="convert_curve").set_value(True).run()
    at.text_input(key=field).set_value(value)
    next(b for b in at.button if b.label == "Draw the curve").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and said in errors[0], errors
    assert len(list_jobs(workspace.cache.root)) == before


@pytest.mark.slow
@pytest.mark.usefixtures("dashboard_navigation")
def test_a_curve_job_writes_its_files_and_the_convert_page_charts_them(workspace,
                                                                        monkeypatch):
    """A CURVE job (petq.jobs): its worker runs calibration_curve into the job's folder;
    the Convert page reads the csv and md back (nothing recomputed) into a chart."""
    from petq.curve import CURVE_FILES, read_outputs, start_curve_job
    from petq.jobs import Status, cancel_job, job_status
    from petq.types import CurveConfig, JobKind
    from waiting import wait_until

    config = CurveConfig(recipes=("tflite-int8",), sizes=("2", "all"), seeds=(1, 2))
    job_id = start_curve_job(workspace, config)
    cache = workspace.cache.root
    try:
        job = wait_until(lambda: (j := job_status(cache, job_id)) and not j.active and j, 400,
                         interval=0.5, message=lambda: str(job_status(cache, job_id)))
    finally:
        cancel_job(cache, job_id)
    assert job.state is Status.DONE, (job.error, job.lines)
    assert job.kind is JobKind.CURVE and job.config == config
    assert all((Path(job.results_path) / name).stat().st_size > 0 for name in CURVE_FILES)
    outputs = read_outputs(job.results_path)
    assert sorted(outputs.table["size"]) == ["2", "2", "all"]
    assert len(outputs.recommendations) == 1
    assert outputs.recommendations[0].startswith("tflite-int8: ")
    assert any(line.startswith("tflite-int8-n2-s1: accuracy") for line in job.lines)

    at = open_page(workspace, monkeypatch, "pages/convert.py")
    chart = at.get("plotly_chart")
    assert chart, "no chart"
    shown = " ".join(m.value for m in at.markdown)
    assert outputs.recommendations[0] in shown

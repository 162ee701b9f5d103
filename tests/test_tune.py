"""petq tune: the certifying statistics (petq.certify), the protocol's split and search
order, bad input, and the whole search on the tiny fixture model with the real
converter and interpreter."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import dashboard_app, open_page, point_dashboard_at
from petq.certify import (
    PairedCounts,
    best_case,
    certification_size,
    contrast_statistic,
    difference_lower_bound,
    g_mean_bound,
    needed_images,
    noninferiority_p_value,
    paired_bound,
    ratio_lower_bound,
    restricted_mle,
    score_statistic,
    tango_restricted,
)
from petq.stats import StatsError
from petq.tune import (
    Candidate,
    ImageSplit,
    State,
    TuneConfig,
    TuneError,
    TuneOutcome,
    first_candidates,
    group_of,
    split_test_images,
)
from petq.types import VariantSpec

Z95 = 1.6448536269514722
TABLES = [(300, 3, 3, 64), (300, 0, 5, 65), (10, 2, 0, 8), (50, 10, 20, 20), (320, 0, 0, 50)]


# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("delta", [-0.3, -0.05, -0.01, 0.02])
def test_tango_closed_form_is_the_restricted_maximum(table, delta):
    """Tango's closed-form restricted MLE equals a numerical maximisation of the
    multinomial likelihood under the same constraint, and so do the statistics."""
    counts = PairedCounts(*table)
    numeric = restricted_mle(counts, 1.0, delta)
    assert numeric[2] == pytest.approx(tango_restricted(counts, delta), abs=1e-5)
    assert contrast_statistic(counts, 1.0, delta) == pytest.approx(
        score_statistic(counts, delta), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("b, c", [(3, 8), (10, 2), (1, 0), (7, 7)])
def test_score_at_zero_is_mcnemar_as_statsmodels_computes_it(b, c):
    from statsmodels.stats.contingency_tables import mcnemar

    counts = PairedCounts(300, c, b, 60)
    chi2 = mcnemar([[300, b], [c, 60]], exact=False, correction=False).statistic
    assert score_statistic(counts, 0.0) ** 2 == pytest.approx(chi2)
    assert math.copysign(1, score_statistic(counts, 0.0)) == (1 if c > b else -1 if c < b else 1)


def test_no_discordance_bounds_the_drop_by_z_squared_over_n():
    for n in (10, 100, 370):
        counts = PairedCounts(n - 5, 0, 0, 5)
        assert difference_lower_bound(counts, 0.95) == pytest.approx(-Z95**2 / (n + Z95**2),
                                                                     rel=1e-6)


def test_bound_and_test_agree():
    """The bound clears -D exactly when the one-sided test rejects 'drop >= D' at 5%."""
    for table in TABLES:
        counts = PairedCounts(*table)
        bound = difference_lower_bound(counts, 0.95)
        for drop in (0.005, 0.01, 0.02, 0.05, 0.1, 0.3):
            if abs(bound + drop) > 1e-6:
                assert (bound > -drop) == (noninferiority_p_value(counts, drop) < 0.05)


def test_bound_monotone_in_images_confidence_and_discordance():
    base = PairedCounts(300, 3, 6, 61)
    bounds_n = [difference_lower_bound(base.scaled(n)) for n in (50, 100, 370, 1000, 5000)]
    assert all(a < b for a, b in zip(bounds_n, bounds_n[1:], strict=False))
    assert bounds_n[-1] < base.difference  # a lower bound, below the estimate
    bounds_conf = [difference_lower_bound(base, c) for c in (0.6, 0.8, 0.9, 0.95, 0.99)]
    assert all(a > b for a, b in zip(bounds_conf, bounds_conf[1:], strict=False))
    worse = PairedCounts(300, 2, 7, 61)  # one image moved from "only variant" to "only ref"
    assert difference_lower_bound(worse) < difference_lower_bound(base)
    assert ratio_lower_bound(worse) < ratio_lower_bound(base)
    assert ratio_lower_bound(base.scaled(100)) < ratio_lower_bound(base.scaled(1000))


def test_false_certifications_stay_below_the_error_rate():
    """Tables drawn with a true drop of exactly D: the test certifies 'drop < D' in at
    most about 5% of them (Tango's score test is close to nominal, here below)."""
    rng = np.random.default_rng(66)
    for n, only_v, only_r in [(370, 0.005, 0.025), (370, 0.0, 0.02), (100, 0.01, 0.06)]:
        drop = only_r - only_v
        p = [0.8 - only_v, only_v, only_r, 0.2 - only_r]
        tables = rng.multinomial(n, p, size=2000)
        rate = np.mean([noninferiority_p_value(PairedCounts(*t), drop) < 0.05 for t in tables])
        assert rate <= 0.05 + 0.015, (n, only_v, only_r, rate)


def test_relative_bound_is_a_score_bound_on_the_ratio():
    counts = PairedCounts(280, 4, 10, 76)
    bound = ratio_lower_bound(counts, 0.95)
    estimate = counts.variant / counts.reference - 1
    assert bound < estimate
    # at the bound the score statistic sits at the normal quantile
    assert contrast_statistic(counts, 1 + bound, 0.0) == pytest.approx(Z95, abs=1e-4)
    # certifying a relative drop D is the test of p_variant - (1 - D) p_reference > 0
    for drop in (0.02, 0.05, 0.1):
        passes = contrast_statistic(counts, 1 - drop, 0.0) > Z95
        assert passes == (bound > -drop)


def test_certification_size_is_where_the_bound_crosses():
    """With power 1/2 the estimate is the n at which a table of the same proportions
    just certifies; below it the bound misses, above it clears."""
    counts = PairedCounts(300, 2, 5, 63)
    for drop in (0.01, 0.02, 0.04):
        n = certification_size(counts, drop, 0.95, power=0.5)
        assert difference_lower_bound(counts.scaled(0.95 * n)) < -drop
        assert difference_lower_bound(counts.scaled(1.05 * n)) > -drop
    assert certification_size(counts, 0.005) is None  # its drop is 0.8 points already
    assert certification_size(counts, 0.02, power=0.8) > certification_size(counts, 0.02,
                                                                             power=0.5)


def test_certification_size_has_the_power_it_says():
    rng = np.random.default_rng(7)
    counts = PairedCounts(300, 2, 4, 64)
    drop = 0.02
    n = certification_size(counts, drop, 0.95, power=0.8)
    tables = rng.multinomial(n, counts.proportions(), size=1000)
    power = np.mean([noninferiority_p_value(PairedCounts(*t), drop) < 0.05 for t in tables])
    assert 0.72 <= power <= 0.88, (n, power)


def test_needed_images_from_a_bound_matches_certification_size():
    labels = np.zeros(100, dtype=np.int64)
    ref = np.ones(100, dtype=bool)
    var = ref.copy()
    var[:3] = False
    bound = paired_bound(labels, var, ref, 1, confidence=0.95)
    assert (bound.only_reference, bound.only_variant, bound.n) == (3, 0, 100)
    assert needed_images(bound, 0.05) == certification_size(bound.counts, 0.05)
    assert needed_images(bound, 0.02) is None  # observed drop 3 points


def test_g_mean_bootstrap_bound():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4), 25)
    ref = rng.random(100) < 0.9
    estimate, bound = g_mean_bound(labels, ref, ref, 4, 0.95)
    assert (estimate, bound) == (0.0, 0.0)  # the same answers: no change, no width
    worse = ref.copy()
    worse[labels == 2] &= rng.random(25) < 0.5
    estimate, bound = g_mean_bound(labels, worse, ref, 4, 0.95, seed=1)
    assert bound < estimate < 0
    rel_estimate, rel_bound = g_mean_bound(labels, worse, ref, 4, 0.95, relative=True, seed=1)
    assert rel_bound < rel_estimate < 0


def test_bad_statistics_input():
    with pytest.raises(StatsError, match="confidence"):
        difference_lower_bound(PairedCounts(1, 0, 0, 1), 0.4)
    with pytest.raises(StatsError, match="at least one image"):
        PairedCounts(0, 0, 0, 0)
    with pytest.raises(StatsError, match="unknown metric"):
        paired_bound(np.zeros(2, int), np.ones(2, bool), np.ones(2, bool), 1, metric="f1")


# ---------------------------------------------------------------- the protocol


def test_split_is_stratified_disjoint_and_seeded():
    ids = [f"img{i}" for i in range(60)]
    labels = [i % 3 for i in range(60)]
    split = split_test_images(ids, labels, 0.5, seed=4)
    assert not set(split.selection) & set(split.certification)
    assert sorted(split.selection + split.certification) == sorted(ids)
    by_id = dict(zip(ids, labels, strict=True))
    assert [sum(by_id[i] == c for i in split.certification) for c in range(3)] == [10, 10, 10]
    assert split == split_test_images(ids, labels, 0.5, seed=4)
    assert split != split_test_images(ids, labels, 0.5, seed=5)
    with pytest.raises(TuneError, match="share"):
        ImageSplit(("a", "b"), ("b",), 0)


def test_a_test_set_too_small_to_split_is_one_clear_error():
    with pytest.raises(TuneError, match="too small to split.*Bengal"):
        split_test_images(["a", "b", "c"], [0, 0, 1], 0.5, 0, ["beagle", "Bengal"])
    with pytest.raises(TuneError, match="too small to split"):
        split_test_images([f"i{i}" for i in range(8)], [i % 4 for i in range(8)], 0.1, 0)


@pytest.mark.parametrize("kwargs, message", [
    ({"max_drop": 0}, "--max-drop must be in \\(0, 1\\)"),
    ({"max_drop": 1.5}, "--max-drop must be in \\(0, 1\\)"),
    ({"max_drop": 0.01, "confidence": 0.5}, "--confidence must be in \\(0.5, 1\\)"),
    ({"max_drop": 0.01, "confidence": 1.0}, "--confidence must be in \\(0.5, 1\\)"),
    ({"max_drop": 0.01, "budget": 0}, "--budget must be a whole number >= 1"),
    ({"max_drop": 0.01, "certify_top": 0}, "--certify-top"),
    ({"max_drop": 0.01, "objective": "energy"}, "--objective"),
])
def test_bad_limits(kwargs, message):
    with pytest.raises(TuneError, match=message):
        TuneConfig(**kwargs)


@pytest.mark.parametrize("flags, message", [
    (["--max-drop", "0"], "--max-drop must be in (0, 1)"),
    (["--max-drop", "1"], "--max-drop must be in (0, 1)"),
    (["--max-drop", "0.01", "--confidence", "0.3"], "--confidence must be in (0.5, 1)"),
    (["--max-drop", "0.01", "--confidence", "1"], "--confidence must be in (0.5, 1)"),
    (["--max-drop", "0.01", "--budget", "0"], "--budget must be a whole number >= 1"),
])
def test_bad_input_on_the_command_line_is_one_error_line(flags, message, capsys, tmp_path):
    from petq.cli import main

    code = main(["tune", *flags, "--cache-dir", str(tmp_path / "cache"),
                 "--results-path", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"petq: error: {lines[0][len('petq: error: '):]}"]
    assert message in lines[0] and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_search_order_puts_the_objectives_best_guess_first():
    size = first_candidates("size")
    assert size[0].name == "aeq-wi4-afp32"  # int4 weights: the smallest file
    groups = [group_of(s, "size") for s in size]
    assert groups == sorted(groups)
    assert size[-1].recipe.key == "tflite-fp16"
    int8 = [s for s in size if group_of(s, "size") == 1]
    assert not int8[0].recipe.calibrates  # within a group, no calibration first
    latency = first_candidates("latency")
    assert all(s.recipe.weights != "i4" for s in latency)
    assert latency[0].recipe.mode.value == "static" and latency[0].recipe.activations == "i8"
    assert latency[-1].recipe.activations == "i16"
    assert VariantSpec.fp32() not in size and VariantSpec.native() not in size


def test_pareto_front_keeps_what_nothing_beats():
    outcome = TuneOutcome(TuneConfig(0.01), "m", "d", "tflite-fp32")
    for name, size, acc in [("tflite-int8-0.08", 100, 0.80), ("tflite-dynamic", 110, 0.85),
                            ("tflite-int8-0.3", 100, 0.82), ("tflite-fp16", 200, 0.84)]:
        c = Candidate(VariantSpec.from_name(name), 1, "recipe", State.REJECTED)
        c.file_size_bytes, c.selection_metric = size, acc
        outcome.candidates.append(c)
    assert [c.name for c in outcome.pareto()] == ["tflite-int8-0.3", "tflite-dynamic"]


# ---------------------------------------------------------------- the whole search


def _engine():
    from petq.tune import Engine

    return Engine("serial", threads=1)


@pytest.mark.slow
def test_tune_certifies_on_held_out_images_only(workspace, tmp_path):
    """The whole protocol on the tiny model: the certifier scored exactly the
    certification ids, never a selection image, and its bound recomputed from those ids
    is the one reported; calibration used trainval only; the outputs are written."""
    from petq.tune import tune
    from petq.tunerun import write_outputs

    config = TuneConfig(max_drop=0.5, objective="latency", budget=3, certify_top=2)
    outcome = tune(workspace, config, _engine())
    split = outcome.split
    test_ids = {s.image_id for s in workspace.dataset.test}
    assert not set(split.selection) & set(split.certification)
    assert set(split.selection) | set(split.certification) <= test_ids
    assert outcome.certified and outcome.chosen.state is State.CERTIFIED
    assert 1 <= outcome.built <= config.budget and outcome.attempts <= config.certify_top
    looks = {(s.variant, s.part): s.image_ids for s in outcome.scored}
    for (_, part), ids in looks.items():
        assert ids == split.part(part)
    certified = [ids for (_, part), ids in looks.items() if part == "certification"]
    assert len(certified) == outcome.attempts
    assert all(not set(ids) & set(split.selection) for ids in certified)
    chosen = outcome.chosen
    assert chosen.selection.n == len(split.selection)
    assert chosen.certification.n == len(split.certification)
    # outputs
    written = write_outputs(workspace, outcome, tmp_path / "out")
    data = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert data["certified"] and data["max_drop"] == 0.5
    assert data["certified_bound"] == chosen.certification.bound
    assert data["selection_images"] == list(split.selection)
    assert data["certification_images"] == list(split.certification)
    assert [c["variant"] for c in data["candidates"]] == [c.name for c in outcome.candidates]
    sidecar = json.loads((tmp_path / "out" / f"{chosen.name}.json").read_text())
    assert sidecar["calibration"]["split"] == "trainval"
    trainval = {s.image_id for s in workspace.dataset.trainval}
    assert set(sidecar["calibration"]["image_ids"]) <= trainval
    assert not set(sidecar["calibration"]["image_ids"]) & test_ids
    tflite = tmp_path / "out" / f"{chosen.name}.tflite"
    assert tflite in written
    assert tflite.read_bytes() == workspace.cached_tflite(chosen.spec).file(
        "model.tflite").read_bytes()
    assert "Ship " + chosen.name in (tmp_path / "out" / "tune.md").read_text()


@pytest.mark.slow
def test_certification_reads_only_its_own_part(workspace):
    """Recompute each certified bound from the certification ids and the cached
    per-image predictions: it must equal the reported one, and the selection ids must
    give the selection bound (a certifier that read selection images would differ:
    the two parts' tables are not the same on this model)."""
    from petq.certify import paired_bound as bound_of
    from petq.tune import tune

    config = TuneConfig(max_drop=0.6, objective="size", budget=2, certify_top=2, seed=3)
    outcome = tune(workspace, config, _engine())
    reference = workspace.details(_reference_key(workspace, outcome))
    row = {i: k for k, i in enumerate(reference.image_ids)}
    checked = 0
    for c in outcome.candidates:
        if c.selection is None:
            continue
        details = workspace.details(c.result_key)
        for part, recorded in (("selection", c.selection), ("certification",
                                                            c.certification)):
            if recorded is None:
                continue
            rows = np.array([row[i] for i in outcome.split.part(part)])
            labels = reference.labels[rows]
            again = bound_of(labels, details.top1[rows] == labels,
                             reference.top1[rows] == labels, len(reference.class_names),
                             confidence=config.test_confidence)
            assert again == recorded
            checked += 1
    assert checked >= 2


def _reference_key(workspace, outcome) -> str:
    keys = {c.result_key for c in outcome.candidates}
    for result in workspace.results(any_threads=True):
        if result.spec == VariantSpec.fp32() and result.result_key not in keys:
            return result.result_key
    raise AssertionError("the reference's result is not cached")


@pytest.mark.slow
def test_too_strict_a_drop_says_what_would_certify(workspace, tmp_path, capsys):
    from petq.cli import main

    code = main(["tune", "--max-drop", "0.01", "--model-path", str(workspace.model_path),
                 "--dataset-root", str(workspace.dataset.root), "--cache-dir",
                 str(workspace.cache.root), "--results-path", str(tmp_path / "out"),
                 "--serial", "--threads", "1", "--budget", "2", "--objective", "latency"])
    out = capsys.readouterr().out
    assert code == 1
    assert "No variant is certified" in out
    assert "smallest drop certifiable at" in out
    assert "certification images" in out and "relax --max-drop" in out
    data = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert not data["certified"] and data["certified_bound"] is None
    assert data["candidates_built"] <= 2
    assert not list((tmp_path / "out").glob("*.tflite"))


@pytest.mark.slow
def test_a_recipe_the_model_cannot_take_is_a_failed_candidate(workspace, tmp_path):
    """A float .tflite source: converter recipes need the Keras model; they are recorded
    as failed candidates and the search goes on to AI Edge Quantizer's."""
    from petq.tune import tune
    from petq.workspace import Workspace

    entry, _ = workspace.tflite(VariantSpec.fp32())
    source = tmp_path / "tiny.tflite"
    source.write_bytes(entry.file("model.tflite").read_bytes())
    (tmp_path / "tiny.json").write_text(
        (Path(workspace.model_path).with_suffix(".json")).read_text())
    ws = Workspace(source, workspace.dataset.root, workspace.cache.root, threads=1)
    outcome = tune(ws, TuneConfig(max_drop=0.5, objective="latency", budget=4),
                   _engine())
    states = {c.name: c.state for c in outcome.candidates}
    converter = [c for c in outcome.candidates if c.spec.recipe.backend.value == "tflite"]
    assert len(converter) == 3 and all(c.state is State.FAILED and c.error for c in converter)
    assert states["aeq-wi8-ai8-0.08"] is not State.FAILED


# ---------------------------------------------------------------- the dashboard


def _finished(cache_root, job_id, timeout):
    """The job once its worker ended (bounded), then its worker stopped in any case."""
    from petq.jobs import cancel_job, job_status
    from waiting import wait_until

    try:
        return wait_until(lambda: (job := job_status(cache_root, job_id)) and not job.active
                          and job, timeout, interval=0.5,
                          message=lambda: str(job_status(cache_root, job_id)))
    finally:
        cancel_job(cache_root, job_id)  # nothing to do when it ended; bounded when not


@pytest.mark.slow
@pytest.mark.usefixtures("dashboard_navigation")
def test_a_tune_job_runs_in_a_worker_and_the_page_offers_the_file(workspace, monkeypatch):
    """The Tune page's tune: a TUNE job (petq.jobs) whose worker runs petq.tune.tune and
    writes its outputs into the job's folder, reporting progress per candidate; the page
    shows the verdict, the Pareto plot and a download of the chosen .tflite, and Compare
    offers any cached variant's .tflite."""
    from petq.jobs import Status, jobs_dir, start_task_job
    from petq.tunerun import read_outputs
    from petq.types import JobKind, Stage

    config = TuneConfig(max_drop=0.5, objective="latency", budget=2)
    job_id = start_task_job(workspace, config)
    job = _finished(workspace.cache.root, job_id, 400)
    assert job.state is Status.DONE, (job.error, job.lines)
    assert job.kind is JobKind.TUNE and job.config == config
    assert Path(job.results_path).parent == jobs_dir(workspace.cache.root).resolve()
    assert job.stage is None and job.fraction == 1.0
    built = [line for line in job.lines if line.startswith("[")]  # one per candidate
    assert built and built[-1].startswith(f"[{len(read_outputs(job.results_path).rows)}/2]")
    status = read_outputs(job.results_path)
    assert status.certified and status.chosen_file is not None and status.chosen_file.exists()
    assert status.decision == json.loads((Path(job.results_path) / "tune.json").read_text()
                                         )["decision"]
    assert any(row.pareto for row in status.rows)
    assert Stage.CANDIDATES.label == "candidates built"

    at = open_page(workspace, monkeypatch, "pages/tune.py")
    assert any(status.decision == s.value for s in at.success)
    labels = [b.proto.label for b in at.get("download_button")]
    assert f"Download {status.chosen_file.name}" in labels
    assert at.get("plotly_chart")
    at.switch_page("pages/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    labels = [b.proto.label for b in at.get("download_button")]
    assert any(label.startswith("Download ") and label.endswith(".tflite") for label in labels)


def test_best_case_is_perfect_agreement():
    bound, needed = best_case(370, 0.02, 0.95)
    assert bound == pytest.approx(-Z95**2 / (370 + Z95**2))
    # a variant agreeing on every image certifies max_drop from `needed` images on
    assert difference_lower_bound(PairedCounts(needed, 0, 0, 0)) > -0.02
    assert difference_lower_bound(PairedCounts(needed - 2, 0, 0, 0)) < -0.02
    relative, _ = best_case(370, 0.02, 0.95, relative=True, reference_accuracy=0.5)
    assert relative < best_case(370, 0.02, 0.95, relative=True, reference_accuracy=0.9)[0]


def _bound(estimate, bound, b, c, n=370):
    from petq.certify import Bound

    return Bound("accuracy", False, estimate, bound, 0.9833, n, n - b - c, c, b, 0,
                 "Tango score")


def test_advice_names_the_closest_candidate_and_the_images_it_needs():
    outcome = TuneOutcome(TuneConfig(0.015), "m", "d", "tflite-fp32",
                          split=ImageSplit(tuple(f"s{i}" for i in range(370)),
                                           tuple(f"c{i}" for i in range(370)), 0))
    near = Candidate(VariantSpec.int8(0.08), 0, "recipe", State.UNCERTIFIED)
    near.selection = _bound(0.003, -0.009, 1, 2)
    near.certification = _bound(-0.005, -0.025, 4, 2)
    far = Candidate(VariantSpec.of("aeq-wi8-ai8", 0.08), 0, "recipe", State.REJECTED)
    far.selection = _bound(-0.011, -0.034, 7, 3)
    outcome.candidates = [far, near]
    assert outcome.closest() is near
    assert outcome.decision().startswith("No variant is certified")
    first, second = outcome.advice()
    assert "tflite-int8-0.08" in first and "certification bound -2.5 points" in first
    needed = needed_images(near.certification, 0.015)
    assert "smallest drop certifiable at 98.3% is 2.5 points" in second
    assert f"about {needed:,} certification images, {2 * needed:,} test images" in second
    far_only = TuneOutcome(TuneConfig(0.005), "m", "d", "tflite-fp32", split=outcome.split,
                           candidates=[far])
    assert "no number of images would certify it" in far_only.advice()[1]
    gone = TuneOutcome(TuneConfig(0.005), "m", "d", "tflite-fp32", split=outcome.split,
                       unreachable=best_case(370, 0.005, 0.9833))
    assert "even for a variant that agrees with tflite-fp32 on every image" in \
        gone.advice()[0]


def test_breed_guard_fails_only_a_breed_hurt_beyond_the_limit():
    from petq.tune import breeds_hurt

    names = ["Abyssinian", "beagle", "Bengal"]
    labels = np.repeat([0, 1, 2], 40)
    reference = labels.copy()
    variant = labels.copy()
    variant[40:52] = 0  # beagle: 12 of 40 lost (-30 points)
    variant[80:81] = 0  # Bengal: 1 of 40 lost
    hurt = breeds_hurt(labels, variant, reference, names, (), 0.05)
    assert [h.breed for h in hurt] == ["beagle"]
    assert hurt[0].difference == pytest.approx(-0.3) and hurt[0].high < -0.05
    assert breeds_hurt(labels, variant, reference, names, (0, 2), 0.05) == ()  # not guarded
    assert breeds_hurt(labels, variant, reference, names, (), 0.25) == ()  # within 25 points
    assert breeds_hurt(labels, reference, reference, names, (), 0.01) == ()


def test_g_mean_bound_is_never_tighter_than_perfect_agreement_allows():
    labels = np.repeat(np.arange(4), 25)
    right = np.ones(100, dtype=bool)
    bound = paired_bound(labels, right, right, 4, metric="g-mean", confidence=0.95)
    assert bound.estimate == 0.0
    assert bound.bound == pytest.approx(-Z95**2 / (100 + Z95**2))


@pytest.mark.slow
def test_a_tune_job_can_be_cancelled(tiny_model, pet_root, tmp_path):
    """Cancel stops a tune's worker and its pool (one process group) and the job says so."""
    from petq.jobs import Status, cancel_job, job_status, process_alive, start_task_job
    from petq.workspace import Workspace
    from waiting import wait_until

    ws = Workspace(tiny_model, pet_root, tmp_path / "cache", 1)
    job_id = start_task_job(ws, TuneConfig(max_drop=0.5, budget=3))
    try:
        wait_until(lambda: job_status(ws.cache.root, job_id).state is Status.RUNNING, 120,
                   message=lambda: str(job_status(ws.cache.root, job_id)))
    finally:
        job = cancel_job(ws.cache.root, job_id, wait=10)
    assert job.state is Status.CANCELLED
    assert job.pid and not process_alive(job.pid, job.create_time)
    assert not (tmp_path / "cache" / "jobs" / job_id / "tune.json").exists()


@pytest.mark.usefixtures("dashboard_navigation")
def test_tune_page_renders_on_an_empty_cache(tiny_model, pet_root, tmp_path, monkeypatch):
    point_dashboard_at(monkeypatch, tiny_model, pet_root, tmp_path / "cache")
    at = dashboard_app("pages/tune.py")
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Tune"
    assert any("No tune has run" in i.value for i in at.info)
    assert at.slider(key="tune_drop").value == 2.0
    assert [o for o in at.radio(key="tune_objective").options] == ["size", "latency"]


def test_refinements_try_fractions_then_seeds_of_the_best_static_recipes():
    from petq.tune import refinements

    best = Candidate(VariantSpec.int8(0.08), 0, "recipe", State.REJECTED)
    second = Candidate(VariantSpec.of("aeq-wi8-ai8", 0.08), 0, "recipe", State.REJECTED)
    tried = {VariantSpec.int8(0.3)}
    names = [(s.name, why) for s, why in refinements([best, second], tried)]
    assert names == [("tflite-int8-0.01", "fraction"), ("aeq-wi8-ai8-0.3", "fraction"),
                     ("aeq-wi8-ai8-0.01", "fraction"), ("tflite-int8-0.08-s1", "seed"),
                     ("tflite-int8-0.08-s2", "seed"), ("aeq-wi8-ai8-0.08-s1", "seed"),
                     ("aeq-wi8-ai8-0.08-s2", "seed")]


def test_a_test_set_too_small_to_split_is_one_error_line(workspace, tmp_path, capsys):
    from petq.cli import main

    code = main(["tune", "--max-drop", "0.2", "--certification-fraction", "0.1",
                 "--model-path", str(workspace.model_path), "--dataset-root",
                 str(workspace.dataset.root), "--cache-dir", str(workspace.cache.root),
                 "--results-path", str(tmp_path / "out"), "--serial"])
    err = capsys.readouterr().err
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("petq: error:")]
    assert len(errors) == 1 and "too small to split" in errors[0]
    assert "Traceback" not in err and not (tmp_path / "out" / "tune.json").exists()

"""Metrics against hand-computed confusion matrices; agreement; latency shape."""

from __future__ import annotations

import numpy as np
import pytest

from petq.evaluate import agreement, compute_metrics


def one_hot_scores(predicted, num_classes):
    scores = np.zeros((len(predicted), num_classes))
    scores[np.arange(len(predicted)), predicted] = 1.0
    return scores


def test_metrics_match_hand_computed_confusion_matrix():
    # truth:     0 0 0 0 1 1 2 2 2 2
    # predicted: 0 0 1 2 1 1 2 2 2 0
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    predicted = np.array([0, 0, 1, 2, 1, 1, 2, 2, 2, 0])
    m = compute_metrics(labels, one_hot_scores(predicted, 3), 3)
    assert m["confusion_matrix"] == [[2, 1, 1], [0, 2, 0], [1, 0, 3]]  # rows = truth
    assert m["accuracy"] == pytest.approx(7 / 10)
    # precision = TP / predicted-as-class: 2/3, 2/3, 3/4
    assert m["per_class_precision"] == pytest.approx([2 / 3, 2 / 3, 3 / 4])
    # sensitivity = TP / truly-class: 2/4, 2/2, 3/4 (the lab's metrics.py swaps these)
    assert m["per_class_sensitivity"] == pytest.approx([1 / 2, 1.0, 3 / 4])
    assert m["mean_precision"] == pytest.approx((2 / 3 + 2 / 3 + 3 / 4) / 3)
    assert m["mean_sensitivity"] == pytest.approx((1 / 2 + 1 + 3 / 4) / 3)
    assert m["g_mean"] == pytest.approx((1 / 2 * 1 * 3 / 4) ** (1 / 3))


def test_class_never_predicted_and_class_absent():
    # class 1 present but never predicted; class 3 neither present nor predicted
    labels = np.array([0, 0, 1, 2])
    predicted = np.array([0, 0, 0, 2])
    m = compute_metrics(labels, one_hot_scores(predicted, 4), 4)
    assert m["per_class_precision"][1] == 0.0  # no division by zero
    assert m["per_class_precision"][3] is None and m["per_class_sensitivity"][3] is None
    assert m["g_mean"] == 0.0  # a class with zero recall
    assert m["mean_sensitivity"] == pytest.approx((1 + 0 + 1) / 3)
    assert m["mean_precision"] == pytest.approx((2 / 3 + 0 + 1) / 3)


def test_top5_uses_scores_not_just_argmax():
    rng = np.random.default_rng(66)
    labels = np.arange(10)
    scores = rng.random((10, 10))
    scores[np.arange(10), labels] = -1.0  # truth ranked last: never in the top 5
    scores[0, 0] = 2.0  # ...except image 0, ranked first
    m = compute_metrics(labels, scores, 10)
    assert m["top5"] == pytest.approx(0.1)
    assert m["accuracy"] == pytest.approx(0.1)


def test_agreement():
    assert agreement(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == 0.75
    assert np.isnan(agreement(np.array([1]), np.array([1, 2])))


def test_input_lookup_table_equals_preprocess_then_quantize(workspace):
    from petq.data import preprocess
    from petq.evaluate import apply_lut, input_lut
    from petq.runtime import LiteRTRunner
    from petq.types import VariantSpec

    for spec in (VariantSpec.fp32(), VariantSpec.int8(0.5)):
        entry, _ = workspace.tflite(spec)
        runner = LiteRTRunner(entry.file("model.tflite"), threads=1)
        pixels = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
        lut = input_lut(runner, workspace.contract)
        expected = runner.quantize(preprocess(pixels, workspace.contract))
        via_lut = np.stack([lut[c][pixels[..., c]] for c in range(3)], axis=-1)
        np.testing.assert_array_equal(via_lut, expected)
        np.testing.assert_array_equal(apply_lut(pixels, lut), expected)  # Pillow for int8
        assert apply_lut(pixels[:0], lut).shape == (0, 32, 32, 3)


def test_accuracy_pass_equals_one_predict_per_image(workspace):
    from petq.data import preprocess
    from petq.evaluate import LITERT_CHUNK, predict_all
    from petq.runtime import LiteRTRunner
    from petq.types import VariantSpec

    n = 2 * LITERT_CHUNK + 3
    pixels = np.random.default_rng(2).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    for spec in (VariantSpec.fp32(), VariantSpec.int8(0.5)):
        entry, _ = workspace.tflite(spec)
        runner = LiteRTRunner(entry.file("model.tflite"), threads=1)
        seen = []
        progress = lambda done, total, log=seen: log.append(done)  # noqa: E731
        scores = predict_all(runner, pixels, workspace.contract, progress)
        x = preprocess(pixels, workspace.contract)
        one_by_one = np.stack([runner.predict(x[i:i + 1]) for i in range(len(x))])
        np.testing.assert_array_equal(scores, one_by_one)
        assert seen == [LITERT_CHUNK, 2 * LITERT_CHUNK, 2 * LITERT_CHUNK + 3]
        assert predict_all(runner, pixels[:0], workspace.contract).shape == (0, 4)


def test_scores_do_not_depend_on_the_interpreter_threads(workspace):
    """What lets a run compute two accuracy passes side by side on fewer threads."""
    from petq.types import VariantSpec

    for spec in (VariantSpec.fp32(), VariantSpec.int8(0.5)):
        one = workspace.predictions(spec, threads=1)
        np.testing.assert_array_equal(one, workspace.predictions(spec, threads=2))
        assert one.shape == (len(workspace.dataset.test), 4)


def test_native_accuracy_pass_equals_keras_predict(workspace):
    """predict_on_batch in slices of 32 gives exactly `model.predict(x, batch_size=32)`."""
    from petq.data import preprocess

    runner = workspace.keras_runner()
    pixels = np.random.default_rng(3).integers(0, 256, (70, 32, 32, 3), dtype=np.uint8)
    x = preprocess(pixels, workspace.contract)
    expected = runner.model.predict(x, batch_size=32, verbose=0)
    np.testing.assert_array_equal(runner.predict_batch(x), expected)


def test_latency_stops_at_its_budget_but_not_before_the_floor(workspace):
    from petq.data import preprocess
    from petq.evaluate import MIN_LATENCY_RUNS, measure_latency

    runner = workspace.keras_runner()
    x = preprocess(np.zeros((1, 32, 32, 3), np.uint8), workspace.contract)
    assert measure_latency(runner, x, runs=100, warmup=1, budget_s=0.0)["latency_runs"] == \
        MIN_LATENCY_RUNS
    assert measure_latency(runner, x, runs=5, warmup=1, budget_s=0.0)["latency_runs"] == 5
    timed = measure_latency(runner, x, runs=30, warmup=1, budget_s=60.0)
    assert timed["latency_runs"] == 30 and timed["latency_p50_ms"] > 0

"""petq.stats against hand-computed cases, scipy's exact binomial test and compute_metrics."""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
from scipy.stats import binomtest

from petq import stats
from petq.errors import PetqError
from petq.evaluate import compute_metrics

C = 37


def pairs(both: int, only_variant: int, only_reference: int, neither: int, label: int = 0,
          num_classes: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Labels and predictions of one class with the four paired outcomes counted."""
    wrong = (label + 1) % num_classes
    n = both + only_variant + only_reference + neither
    labels = np.full(n, label)
    variant = np.array([label] * (both + only_variant) + [wrong] * (only_reference + neither))
    reference = np.array(
        [label] * both + [wrong] * only_variant + [label] * only_reference + [wrong] * neither)
    return labels, variant, reference


def oxford_sized(seed: int = 0, ref_acc: float = 0.85, flip: float = 0.03, n_per: int = 100):
    """37 classes x n_per images; a reference near ref_acc and a variant that changes some."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(C), n_per)
    n = len(labels)
    reference = np.where(rng.random(n) < ref_acc, labels, rng.integers(0, C, n))
    variant = np.where(rng.random(n) < 1 - flip, reference, rng.integers(0, C, n))
    return labels, variant, reference


@contextmanager
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_mcnemar_matches_the_exact_binomial_test():
    labels, variant, reference = pairs(both=20, only_variant=9, only_reference=3, neither=5)
    result = stats.mcnemar(labels, variant, reference)
    assert (result.b, result.c, result.n) == (3, 9, 37)
    assert result.p_value == pytest.approx(binomtest(3, 12, 0.5).pvalue, rel=1e-12)
    assert result.p_value == pytest.approx(0.14599609375)  # 2 * P(X <= 3), X ~ Bin(12, 1/2)


def test_mcnemar_without_discordant_images_is_p_one():
    labels, variant, reference = pairs(both=10, only_variant=0, only_reference=0, neither=4)
    result = stats.mcnemar(labels, variant, reference)
    assert (result.b, result.c, result.p_value) == (0, 0, 1.0)


def test_mismatched_or_bad_arrays_raise_clear_errors():
    with pytest.raises(PetqError, match="same images"):
        stats.mcnemar(np.zeros(5, int), np.zeros(5, int), np.zeros(4, int))
    with pytest.raises(PetqError, match="outside 0..3"):
        stats.compare_paired(np.array([0, 4]), np.array([0, 1]), np.array([0, 1]), 4)
    with pytest.raises(PetqError, match="integer"):
        stats.mcnemar(np.zeros(3), np.zeros(3, int), np.zeros(3, int))
    with pytest.raises(PetqError, match="1000"):
        stats.compare_paired(np.zeros(5, int), np.zeros(5, int), np.zeros(5, int), 2,
                             resamples=100)


def test_estimates_match_compute_metrics():
    labels, variant, reference = oxford_sized()
    labels, variant, reference = labels[:-150], variant[:-150], reference[:-150]  # 2 absent
    result = stats.compare_paired(labels, variant, reference, C)
    for pred, acc, gm in ((variant, result.accuracy_variant, result.g_mean_variant),
                          (reference, result.accuracy_reference, result.g_mean_reference)):
        metrics = compute_metrics(labels, np.eye(C)[pred], C)
        assert acc.estimate == pytest.approx(metrics["accuracy"], abs=1e-12)
        assert gm.estimate == pytest.approx(metrics["g_mean"], abs=1e-12)
        assert acc.low < acc.estimate < acc.high
        assert gm.low < gm.estimate < gm.high
    assert result.accuracy_difference.estimate == pytest.approx(
        result.accuracy_variant.estimate - result.accuracy_reference.estimate)


def test_resampled_metrics_match_compute_metrics_per_resample():
    """The vectorised statistic, G-Mean's zero rule included, on resampled images."""
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(5), 4)
    variant = np.where(rng.random(20) < 0.7, labels, rng.integers(0, 5, 20))
    variant[labels == 4] = 0  # class 4 has recall 0 for the variant: G-Mean 0
    reference = np.where(rng.random(20) < 0.8, labels, rng.integers(0, 5, 20))
    codes = labels * 4 + 2 * (variant == labels) + (reference == labels)
    index = rng.integers(0, 20, (30, 20))
    got = stats.metrics_of_codes(codes[index], 5)
    zero_seen = False
    for r, rows in enumerate(index):
        m_v = compute_metrics(labels[rows], np.eye(5)[variant[rows]], 5)
        m_r = compute_metrics(labels[rows], np.eye(5)[reference[rows]], 5)
        expected = [m_v["accuracy"], m_r["accuracy"], m_v["accuracy"] - m_r["accuracy"],
                    m_v["g_mean"], m_r["g_mean"], m_v["g_mean"] - m_r["g_mean"]]
        np.testing.assert_allclose(got[:, r], expected, atol=1e-12)
        zero_seen |= m_v["g_mean"] == 0
    assert zero_seen


def test_identical_variants_have_zero_width_difference_intervals():
    labels, _, reference = oxford_sized()
    with no_warnings():
        result = stats.compare_paired(labels, reference.copy(), reference, C)
    for interval in (result.accuracy_difference, result.g_mean_difference):
        assert (interval.estimate, interval.low, interval.high) == (0.0, 0.0, 0.0)
        assert not interval.excludes_zero
    assert result.mcnemar.p_value == 1.0
    assert not result.significant


def test_interval_widens_when_there_are_fewer_images():
    big = stats.compare_paired(*oxford_sized(n_per=100), C)
    small = stats.compare_paired(*oxford_sized(n_per=10), C)

    def width(interval: stats.Interval) -> float:
        return interval.high - interval.low
    assert width(small.accuracy_variant) > 2 * width(big.accuracy_variant)
    assert width(small.accuracy_difference) > 2 * width(big.accuracy_difference)


def test_clearly_better_variant_excludes_zero():
    labels, worse, better = oxford_sized(flip=0.10)  # "reference" is the better one here
    result = stats.compare_paired(labels, better, worse, C)
    assert result.accuracy_difference.low > 0
    assert result.accuracy_difference.excludes_zero
    assert result.g_mean_difference.low > 0
    assert result.significant and result.mcnemar.p_value < 1e-6
    reverse = stats.compare_paired(labels, worse, better, C)
    assert reverse.accuracy_difference.high < 0


def test_same_seed_same_interval_other_seed_other_interval():
    """The bootstrap (G-Mean) follows the seed; the exact accuracy intervals do not."""
    data = oxford_sized()
    first = stats.compare_paired(*data, C, seed=7)
    assert stats.compare_paired(*data, C, seed=7) == first
    other = stats.compare_paired(*data, C, seed=8)
    assert other.g_mean_variant.estimate == first.g_mean_variant.estimate
    assert (other.g_mean_variant.low, other.g_mean_variant.high) != (
        first.g_mean_variant.low, first.g_mean_variant.high)
    assert other.accuracy_difference == first.accuracy_difference


def test_compare_paired_resamples_in_a_few_vectorised_batches(monkeypatch):
    """At Oxford size the 2,000 resamples are scored in a handful of vectorised calls of
    at most BOOTSTRAP_CELLS codes each, not one call per resample (what keeps the paired
    statistics fast; their time is in benchmarks/bench_analysis.py)."""
    shapes = []
    real = stats.metrics_of_codes

    def counted(codes, num_classes):
        shapes.append(np.shape(codes))
        return real(codes, num_classes)

    monkeypatch.setattr(stats, "metrics_of_codes", counted)
    data = oxford_sized()
    n = len(data[0])
    stats.compare_paired(*data, C, resamples=2000)
    batches = [shape for shape in shapes if len(shape) == 2]
    assert sum(rows for rows, _ in batches) >= 2000
    assert all(rows * images <= stats.BOOTSTRAP_CELLS for rows, images in batches)
    assert len(shapes) <= math.ceil(2000 * n / stats.BOOTSTRAP_CELLS) + 2, shapes


def test_interval_excludes_zero_exactly_when_mcnemar_is_significant():
    """One rule: for every split of up to 60 discordant images among 100, and at two
    levels, the accuracy difference's interval excludes zero exactly when the exact
    McNemar test is significant, and it holds the estimate."""
    b, c = (v.ravel() for v in np.meshgrid(np.arange(61), np.arange(61)))
    n = np.full(b.shape, 150)
    p_values = stats.mcnemar_p_values(b, c)
    for level in (0.95, 0.9):
        low, high = stats.accuracy_difference_intervals(b, c, n, level)
        excludes = (low > 0) | (high < 0)
        verdicts = np.array([stats.significant(p, level) for p in p_values])
        assert (excludes == verdicts).all()
        assert verdicts.any() and not verdicts.all()  # both kinds of table are covered
        estimate = (c - b) / n
        assert ((low <= estimate + 1e-12) & (estimate <= high + 1e-12)).all()


def test_the_self_contradicting_small_set_is_now_consistent():
    """The issue's case: 51 images, the variant loses 4 and gains none (-7.8 points,
    exact McNemar p = 0.125). A percentile bootstrap of the difference excluded zero;
    the interval petq shows now includes it, and the verdict says not significant."""
    from scipy import stats as sps

    labels = np.zeros(51, dtype=np.int64)
    reference = labels.copy()
    variant = labels.copy()
    variant[:4] = 1
    result = stats.compare_paired(labels, variant, reference, 2)
    d = result.accuracy_difference
    assert round(100 * d.estimate, 1) == -7.8 and result.mcnemar.p_value == 0.125
    assert d.low < 0 < d.high and not d.excludes_zero and not result.significant
    codes = labels * 4 + 2 * (variant == labels) + (reference == labels)
    old = sps.bootstrap((codes,), lambda x, axis: ((x & 2) > 0).mean(axis) - (x & 1).mean(axis),
                        n_resamples=2000, method="percentile", rng=np.random.default_rng(0))
    assert old.confidence_interval.high < 0  # what the summary used to show beside p = 0.125
    text = __import__("petq.report", fromlist=["_verdict"])._verdict(result)
    assert "not significant" in text and "p = 0.125" in text


def test_two_image_drop_in_twenty_is_not_hurt_twelve_is():
    small = stats.per_class_changes(*pairs(both=18, only_variant=0, only_reference=2,
                                           neither=0), num_classes=4)
    assert len(small) == 1
    change = small[0]
    assert (change.class_index, change.n, change.b, change.c) == (0, 20, 2, 0)
    assert (change.reference_recall, change.variant_recall) == (1.0, 0.9)
    assert change.difference == pytest.approx(-0.1)
    assert change.low <= -0.1 < 0 < change.high  # conditional on b + c: no lower than -b/n
    assert not change.hurt and not change.helped
    assert change.p_value == pytest.approx(0.5)

    big = stats.per_class_changes(*pairs(both=8, only_variant=0, only_reference=12,
                                         neither=0), num_classes=4)[0]
    assert big.difference == pytest.approx(-0.6)
    assert big.high < 0 and big.hurt and not big.helped
    assert big.p_value == pytest.approx(2 * 0.5**12)


def test_per_class_changes_per_class_and_helped():
    class0 = pairs(both=18, only_variant=0, only_reference=2, neither=0, label=0)
    class2 = pairs(both=5, only_variant=12, only_reference=0, neither=3, label=2)
    labels, variant, reference = (np.concatenate(parts) for parts in zip(class0, class2,
                                                                          strict=True))
    changes = stats.per_class_changes(labels, variant, reference, num_classes=4)
    assert [c.class_index for c in changes] == [0, 2]  # absent classes 1 and 3 left out
    assert not changes[0].hurt and not changes[0].helped
    assert changes[1].helped and not changes[1].hurt
    assert changes[1].variant_recall == pytest.approx(17 / 20)
    assert changes[1].reference_recall == pytest.approx(5 / 20)
    assert changes[1].p_adjusted == pytest.approx(min(1.0, 2 * changes[1].p_value))  # Holm


def test_per_class_changes_at_oxford_size_match_compute_metrics():
    labels, variant, reference = oxford_sized()
    changes = stats.per_class_changes(labels, variant, reference, C)
    recall_v = compute_metrics(labels, np.eye(C)[variant], C)["per_class_sensitivity"]
    recall_r = compute_metrics(labels, np.eye(C)[reference], C)["per_class_sensitivity"]
    assert len(changes) == C
    for change in changes:
        assert change.variant_recall == pytest.approx(recall_v[change.class_index])
        assert change.reference_recall == pytest.approx(recall_r[change.class_index])
        assert change.low <= change.difference <= change.high


def test_seed_spread_against_hand_numbers():
    spread = stats.seed_spread([0.80, 0.82, 0.84])
    assert spread.mean == pytest.approx(0.82)
    assert spread.std == pytest.approx(0.02)
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t(0.975, df=2) from tables
    assert (spread.low, spread.high) == (pytest.approx(0.82 - half), pytest.approx(0.82 + half))
    assert (spread.n, spread.min, spread.max) == (3, 0.80, 0.84)


def test_seed_spread_one_value_has_no_interval_and_no_warning():
    with no_warnings():
        spread = stats.seed_spread([0.9])
    assert spread.mean == 0.9 and spread.n == 1
    assert math.isnan(spread.std) and math.isnan(spread.low) and math.isnan(spread.high)
    with no_warnings():
        same = stats.seed_spread([0.9, 0.9, 0.9])
    assert (same.std, same.low, same.high) == (0.0, 0.9, 0.9)
    with pytest.raises(PetqError, match="non-empty"):
        stats.seed_spread([])


class WorkClock:
    """A nanosecond clock that only the timed callables move: `work(ms, spread)` is a
    callable that advances it by `ms` times a seeded log-normal factor (0 spread: exactly
    `ms`). Verdicts on 1 ms against 3 ms then hold on a machine of any load."""

    def __init__(self, seed: int = 0):
        self.ns = 0
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> int:
        return self.ns

    def work(self, ms: float, spread: float = 0.1):
        def run() -> None:
            self.ns += round(ms * 1e6 * self.rng.lognormal(0.0, spread))
        return run


def test_interleaved_latency_finds_the_faster_callable():
    clock = WorkClock()
    result = stats.interleaved_latency(clock.work(1.0), clock.work(3.0), rounds=30, warmup=2,
                                       clock=clock)
    assert result.faster == "a faster"
    assert 0.9 < result.median_a_ms < 1.1 and 2.7 < result.median_b_ms < 3.3
    assert 2.7 < result.ratio_b_over_a.low <= result.ratio_b_over_a.estimate \
        <= result.ratio_b_over_a.high < 3.3
    assert len(result.times_a_ms) == len(result.times_b_ms) == 30
    assert 0 <= result.cpu_percent <= 100 and result.cpu_count >= 1  # the machine's, real
    assert len(result.loadavg_before) == 3 and isinstance(result.busy, bool)
    swapped = stats.interleaved_latency(clock.work(3.0), clock.work(1.0), rounds=30, warmup=2,
                                        clock=clock)
    assert swapped.faster == "b faster" and swapped.ratio_b_over_a.high < 1 / 2.7


def test_interleaved_latency_identical_callables_no_clear_difference():
    clock = WorkClock(seed=1)
    same = clock.work(2.0)
    result = stats.interleaved_latency(same, same, rounds=30, warmup=2, clock=clock)
    assert result.faster == "no clear difference"
    assert result.ratio_b_over_a.low < 1 < result.ratio_b_over_a.high
    assert 0.9 < result.ratio_b_over_a.estimate < 1.1


def test_interleaved_latency_needs_the_difference_beyond_its_tolerance():
    clock = WorkClock()
    result = stats.interleaved_latency(clock.work(1.0, 0), clock.work(1.04, 0), rounds=10,
                                       warmup=0, clock=clock)
    assert result.ratio_b_over_a.low == pytest.approx(1.04)  # no spread: a sure 4%
    assert result.faster == "no clear difference"  # within the 5% tolerance
    strict = stats.interleaved_latency(clock.work(1.0, 0), clock.work(1.04, 0), rounds=10,
                                       warmup=0, tolerance=0.0, clock=clock)
    assert strict.faster == "a faster"


def test_interleaved_latency_times_real_calls_by_default():
    result = stats.interleaved_latency(lambda: sum(range(1000)), lambda: None, rounds=5,
                                       warmup=0)
    assert all(t > 0 for t in result.times_a_ms + result.times_b_ms)


def test_interleaved_latency_alternates_the_order_every_round():
    calls: list[str] = []
    stats.interleaved_latency(lambda: calls.append("a"), lambda: calls.append("b"),
                              rounds=6, warmup=1)
    assert "".join(calls) == "ab" + "ab" "ba" "ab" "ba" "ab" "ba"


def test_vectorised_mcnemar_over_many_tables():
    """The per-breed table computes all classes at once: McNemar equal to statsmodels'
    exact test table by table."""
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    rng = np.random.default_rng(5)
    tables = rng.integers(0, 30, (300, 2))
    tables[:5] = 0  # b = c = 0
    p_values = stats.mcnemar_p_values(tables[:, 0], tables[:, 1])
    for i, (b, c) in enumerate(tables):
        expected = 1.0 if b + c == 0 else sm_mcnemar([[0, c], [b, 0]], exact=True).pvalue
        assert p_values[i] == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_holm_equals_statsmodels_multipletests():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(9)
    for size in (1, 2, 5, 37, 200):
        p = rng.uniform(0, 1, size) ** 3
        p[: size // 3] = p[0]  # ties
        np.testing.assert_allclose(stats.holm(p), multipletests(p, method="holm")[1],
                                   rtol=1e-15, atol=0)
    assert stats.holm(np.array([])).shape == (0,)

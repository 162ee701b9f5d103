"""How sure: paired tests and intervals for comparing variants, seed spread, latency.

Every variant is evaluated on the same test images, so two variants are compared
image by image (paired): McNemar's exact test on the images where exactly one of
them is right, and bootstrap intervals that resample test images once per
resample for both variants. Pure numpy/scipy/statsmodels over per-image arrays
(true labels, top-1 predictions), so the dashboard and the reports can call
them without TensorFlow or a workspace.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import psutil

from petq.errors import PetqError

BOOTSTRAP_CELLS = 2_000_000  # resampled image codes held at once (resamples x images)
# A latency run counts as busy when other processes used more than this share
# of the machine's CPUs while it ran, or when the 1-minute load average per
# core was above BUSY_LOAD_PER_CORE when it started (more runnable threads than
# cores: the timed code had to wait for a core).
BUSY_OTHER_CPU_SHARE = 0.25
BUSY_LOAD_PER_CORE = 1.0


class StatsError(PetqError, ValueError):
    """Per-image arrays or parameters that cannot be compared (shapes, labels, level)."""


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided confidence interval at `level`."""

    estimate: float
    low: float
    high: float
    level: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test: b = reference right and variant wrong, c = the reverse."""

    b: int
    c: int
    p_value: float
    n: int


@dataclass(frozen=True)
class PairedComparison:
    """Variant against reference on the same images; differences are variant - reference."""

    accuracy_variant: Interval
    accuracy_reference: Interval
    accuracy_difference: Interval
    g_mean_variant: Interval
    g_mean_reference: Interval
    g_mean_difference: Interval
    mcnemar: McNemar
    significant: bool  # McNemar p < 1 - level (0.05 at the default level)
    resamples: int
    seed: int
    method: str = "percentile"

    @classmethod
    def from_dict(cls, data: dict) -> PairedComparison:
        """The inverse of `dataclasses.asdict` (comparisons are cached as JSON)."""
        return cls(**{k: Interval(**v) if isinstance(v, dict) and "estimate" in v
                      else McNemar(**v) if k == "mcnemar" else v for k, v in data.items()})


@dataclass(frozen=True)
class ClassChange:
    """One class's sensitivity (recall), reference and variant, on the same images."""

    class_index: int
    n: int
    reference_recall: float
    variant_recall: float
    difference: float  # variant - reference
    low: float
    high: float
    b: int  # images of the class the reference gets right and the variant wrong
    c: int  # the reverse
    p_value: float  # exact McNemar on the class's images
    p_adjusted: float  # Holm over all classes returned, for "any class at all" questions
    hurt: bool  # interval entirely below 0
    helped: bool  # interval entirely above 0


@dataclass(frozen=True)
class Spread:
    """Spread of one metric over repeated runs (e.g. calibration seeds)."""

    mean: float
    std: float  # ddof=1; nan for one value
    n: int
    low: float  # t-interval of the mean; nan for one value
    high: float
    level: float
    min: float
    max: float


@dataclass(frozen=True)
class LatencyComparison:
    """Interleaved timings of A and B, the ratio of medians and the machine's load."""

    median_a_ms: float
    median_b_ms: float
    ratio_b_over_a: Interval  # > 1: B is slower
    faster: str  # "a faster", "b faster" or "no clear difference"
    rounds: int
    warmup: int
    tolerance: float
    cpu_percent: float  # whole machine during timing, 0-100
    process_cpu_percent: float  # this process during timing, 100 = one core
    other_cpu_share: float  # other processes' share of the machine during timing, 0-1
    loadavg_before: tuple[float, float, float]
    loadavg_after: tuple[float, float, float]
    cpu_count: int
    busy: bool
    times_a_ms: tuple[float, ...]
    times_b_ms: tuple[float, ...]


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise StatsError(f"confidence level must be between 0 and 1, got {level}")


def _paired_arrays(
    labels: np.ndarray, pred_variant: np.ndarray, pred_reference: np.ndarray,
    num_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    arrays = [np.asarray(a) for a in (labels, pred_variant, pred_reference)]
    for name, a in zip(("labels", "pred_variant", "pred_reference"), arrays, strict=True):
        if a.ndim != 1:
            raise StatsError(f"{name} must be one label per image (1-D), got shape {a.shape}")
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise StatsError(f"{name} must hold integer class indices, got dtype {a.dtype}")
        if num_classes is not None and a.size and (a.min() < 0 or a.max() >= num_classes):
            raise StatsError(
                f"{name} holds class indices outside 0..{num_classes - 1}: "
                f"{int(a.min())}..{int(a.max())}"
            )
    if not arrays[0].size:
        raise StatsError("no images: labels is empty")
    if not arrays[0].shape == arrays[1].shape == arrays[2].shape:
        raise StatsError(
            "labels and predictions must cover the same images: lengths "
            f"{arrays[0].size}, {arrays[1].size}, {arrays[2].size}"
        )
    return arrays[0].astype(np.int64), arrays[1].astype(np.int64), arrays[2].astype(np.int64)


def _mcnemar_counts(b: int, c: int, n: int) -> McNemar:
    return McNemar(b=b, c=c, p_value=float(mcnemar_p_values(np.array([b]), np.array([c]))[0]),
                   n=n)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values: statsmodels' `multipletests(p, method="holm")[1]`
    (a test checks they are equal). Written out because statsmodels runs `gc.collect()` on
    every Holm call, 0.1 s in a dashboard process holding many objects, once per variant."""
    p_values = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p_values)
    steps = np.arange(len(p_values), 0, -1)
    adjusted = np.empty_like(p_values)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(p_values[order] * steps))
    return adjusted


def mcnemar_p_values(b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Exact McNemar p for arrays of discordant counts: statsmodels' `mcnemar(exact=True)`
    (two-sided binomial at 1/2 on min(b, c) of b + c, capped at 1), for all at once.
    b = c = 0 gives p = 1: nothing speaks for a difference."""
    from scipy import stats as sps  # here, not at import: 0.7 s before a run's first image

    b, c = np.asarray(b, dtype=np.int64), np.asarray(c, dtype=np.int64)
    return np.minimum(1.0, 2.0 * sps.binom.cdf(np.minimum(b, c), b + c, 0.5))


def mcnemar(labels: np.ndarray, pred_variant: np.ndarray, pred_reference: np.ndarray
            ) -> McNemar:  # fmt: skip
    """Exact McNemar test of variant against reference on the same images.

    Only the images where exactly one of the two is right carry information;
    under "no difference" each is equally likely to go either way (a binomial
    test of c out of b + c at 1/2). b = c = 0 gives p = 1.
    """
    labels, pred_v, pred_r = _paired_arrays(labels, pred_variant, pred_reference)
    right_v, right_r = pred_v == labels, pred_r == labels
    b = int(np.count_nonzero(right_r & ~right_v))
    c = int(np.count_nonzero(right_v & ~right_r))
    return _mcnemar_counts(b, c, len(labels))


def _metrics_of_codes(codes: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy and G-Mean of variant, reference and their differences: (6, R), or (6,).

    `codes` (R, N) hold label * 4 + 2 * variant-right + reference-right per image,
    so one bincount per chunk gives every resample's per-class counts.
    """
    if codes.ndim == 1:
        return _metrics_of_codes(codes[None], num_classes)[:, 0]
    rows, n = codes.shape
    width = 4 * num_classes
    offsets = (np.arange(rows, dtype=np.int64) * width)[:, None]
    counts = np.bincount((codes + offsets).ravel(), minlength=rows * width)
    counts = counts.reshape(rows, num_classes, 4)
    per_class = counts.sum(axis=2)
    tp_v = counts[..., 2] + counts[..., 3]
    tp_r = counts[..., 1] + counts[..., 3]
    present = per_class > 0
    n_present = present.sum(axis=1)
    acc_v, acc_r = tp_v.sum(axis=1) / n, tp_r.sum(axis=1) / n

    def g_mean(tp: np.ndarray) -> np.ndarray:
        # geometric mean of the present classes' recall; 0 when one of them is 0
        # (petq.evaluate.compute_metrics' definition)
        hit = tp > 0
        recall = np.where(hit, tp / np.maximum(per_class, 1), 1.0)
        log_sum = np.where(present, np.log(recall), 0.0).sum(axis=1)
        zero = (present & ~hit).any(axis=1)
        return np.where(zero, 0.0, np.exp(log_sum / np.maximum(n_present, 1)))

    gm_v, gm_r = g_mean(tp_v), g_mean(tp_r)
    return np.stack([acc_v, acc_r, acc_v - acc_r, gm_v, gm_r, gm_v - gm_r])


def compare_paired(
    labels: np.ndarray,
    pred_variant: np.ndarray,
    pred_reference: np.ndarray,
    num_classes: int,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> PairedComparison:
    """Accuracy and G-Mean of both variants and of their difference, with paired intervals.

    `scipy.stats.bootstrap` draws test images with replacement; each image is one
    code (its label and whether each variant got it right), so a resample always
    carries both variants' answers on the same images. Percentile intervals, not
    BCa: BCa returns nan (with a warning) when the bootstrap distribution is
    degenerate, which is the common case of two variants that disagree on no or
    very few images, and its jackknife costs N more evaluations of the statistic.
    The exact McNemar test decides `significant`.
    """
    from scipy import stats as sps

    labels, pred_v, pred_r = _paired_arrays(labels, pred_variant, pred_reference, num_classes)
    _check_level(level)
    if resamples < 1000:
        raise StatsError(f"at least 1000 bootstrap resamples give a stable 95% interval, "
                         f"got {resamples}")
    codes = labels * 4 + 2 * (pred_v == labels) + (pred_r == labels)
    estimate = _metrics_of_codes(codes, num_classes)
    if len(codes) < 2:  # scipy cannot resample one image: no interval
        low = high = np.full(6, np.nan)
    else:
        result = sps.bootstrap(
            (codes,),
            lambda sample, axis: _metrics_of_codes(sample, num_classes),
            n_resamples=resamples,
            batch=max(1, BOOTSTRAP_CELLS // len(codes)),
            vectorized=True,
            confidence_level=level,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        low, high = result.confidence_interval.low, result.confidence_interval.high
    acc_v, acc_r, acc_d, gm_v, gm_r, gm_d = (
        Interval(float(e), float(lo), float(hi), level)
        for e, lo, hi in zip(estimate, low, high, strict=True)
    )
    right_v, right_r = pred_v == labels, pred_r == labels
    test = _mcnemar_counts(int(np.count_nonzero(right_r & ~right_v)),
                           int(np.count_nonzero(right_v & ~right_r)), len(labels))
    return PairedComparison(
        accuracy_variant=acc_v, accuracy_reference=acc_r, accuracy_difference=acc_d,
        g_mean_variant=gm_v, g_mean_reference=gm_r, g_mean_difference=gm_d,
        mcnemar=test, significant=test.p_value < 1 - level, resamples=resamples, seed=seed,
    )


def compare_details(variant, reference, resamples: int = 2000, seed: int = 0,
                    level: float = 0.95) -> PairedComparison:
    """`compare_paired` on two results' per-image predictions (`petq.results.Details`:
    `image_ids`, `labels`, `top1`, `class_names`), which must cover the same images."""
    _check_same_images(variant, reference)
    return compare_paired(variant.labels, variant.top1, reference.top1,
                          len(variant.class_names), resamples=resamples, seed=seed, level=level)


def class_changes_of(variant, reference, level: float = 0.95) -> list[ClassChange]:
    """`per_class_changes` on two results' per-image predictions (as `compare_details`)."""
    _check_same_images(variant, reference)
    return per_class_changes(variant.labels, variant.top1, reference.top1,
                             len(variant.class_names), level=level)


def _check_same_images(variant, reference) -> None:
    if (tuple(variant.image_ids) != tuple(reference.image_ids)
            or not np.array_equal(variant.labels, reference.labels)):
        raise StatsError("the two results were evaluated on different test images: a paired "
                         "comparison needs the same ones")


def paired_difference_interval(
    both_right: int, only_first: int, only_second: int, both_wrong: int, level: float = 0.95
) -> tuple[float, float]:
    """Newcombe's square-and-add interval for a paired difference of proportions (first - second).

    Newcombe (1998), method 10: Wilson intervals of the two proportions (statsmodels),
    combined with the correlation of the pairs. Fagerland, Lydersen and Laake (2014)
    recommend it for paired binomial proportions; neither scipy nor statsmodels has
    one. Checked against their R package contingencytables (Cavo et al. 2012 table).
    """
    if both_right + only_first + only_second + both_wrong == 0:
        raise StatsError("paired_difference_interval needs at least one pair")
    low, high = paired_difference_intervals(
        *(np.array([v]) for v in (both_right, only_first, only_second, both_wrong)), level)
    return float(low[0]), float(high[0])


def paired_difference_intervals(
    both_right: np.ndarray, only_first: np.ndarray, only_second: np.ndarray,
    both_wrong: np.ndarray, level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """`paired_difference_interval` for arrays of 2x2 tables at once (each n > 0)."""
    from statsmodels.stats.proportion import proportion_confint

    _check_level(level)
    both_right, only_first, only_second, both_wrong = (
        np.asarray(v, dtype=np.float64) for v in (both_right, only_first, only_second,
                                                  both_wrong))
    n = both_right + only_first + only_second + both_wrong
    first_right, second_right = both_right + only_first, both_right + only_second
    p1, p2 = first_right / n, second_right / n
    l1, u1 = proportion_confint(first_right, n, alpha=1 - level, method="wilson")
    l2, u2 = proportion_confint(second_right, n, alpha=1 - level, method="wilson")
    margins = np.stack([first_right, n - first_right, second_right, n - second_right])
    a = both_right * both_wrong - only_first * only_second
    a = np.where(a > n / 2, a - n / 2, np.minimum(a, 0))  # continuity-corrected, as Newcombe's
    product = margins.prod(axis=0)
    psi = np.divide(a, np.sqrt(product), out=np.zeros_like(a), where=margins.min(axis=0) > 0)
    d1, d2 = p1 - l1, u2 - p2
    low = p1 - p2 - np.sqrt(d1**2 + d2**2 - 2 * psi * d1 * d2)
    d1, d2 = u1 - p1, p2 - l2
    high = p1 - p2 + np.sqrt(d1**2 + d2**2 - 2 * psi * d1 * d2)
    return low, high


def per_class_changes(
    labels: np.ndarray,
    pred_variant: np.ndarray,
    pred_reference: np.ndarray,
    num_classes: int,
    level: float = 0.95,
) -> list[ClassChange]:
    """Each present class's recall change (variant - reference), with a paired interval.

    Within a class both recalls come from the same images, so the interval is
    Newcombe's paired square-and-add interval (`paired_difference_interval`)
    and `hurt`/`helped` say it lies entirely below/above 0. Not a bootstrap:
    within a 20-image class a percentile bootstrap calls a 4-of-20 drop real
    although the exact McNemar p is 0.125; Newcombe's interval does not. Its
    verdicts agree with McNemar's mid-p test (recommended by Fagerland et al.
    2014) on 99.8% of all tables with n = 10..200 (checked here), the rest
    borderline; the exact `p_value` is more conservative (a 5-of-20 drop is
    hurt, exact p = 0.0625, mid-p 0.031). `p_adjusted` (Holm over the classes
    returned) answers "is any class hurt at all": with 37 classes, a few
    per-class flags at 5% can come from chance alone.
    """
    labels, pred_v, pred_r = _paired_arrays(labels, pred_variant, pred_reference, num_classes)
    _check_level(level)
    right_v, right_r = pred_v == labels, pred_r == labels

    def per_class(mask: np.ndarray) -> np.ndarray:
        return np.bincount(labels[mask], minlength=num_classes)

    n_class = np.bincount(labels, minlength=num_classes)
    both, only_v = per_class(right_v & right_r), per_class(right_v & ~right_r)
    only_r, neither = per_class(right_r & ~right_v), per_class(~right_v & ~right_r)
    present = np.flatnonzero(n_class)
    if not len(present):
        return []
    b, c, n = only_r[present], only_v[present], n_class[present]
    p_values = mcnemar_p_values(b, c)
    adjusted = holm(p_values)
    lows, highs = paired_difference_intervals(both[present], c, b, neither[present], level)
    return [ClassChange(
        class_index=int(k), n=int(n[i]),
        reference_recall=float((both[k] + only_r[k]) / n[i]),
        variant_recall=float((both[k] + only_v[k]) / n[i]),
        difference=float((c[i] - b[i]) / n[i]), low=float(lows[i]), high=float(highs[i]),
        b=int(b[i]), c=int(c[i]), p_value=float(p_values[i]), p_adjusted=float(adjusted[i]),
        hurt=bool(highs[i] < 0), helped=bool(lows[i] > 0),
    ) for i, k in enumerate(present)]


def seed_spread(values: Sequence[float], level: float = 0.95) -> Spread:
    """Mean, standard deviation and t-interval of the mean of repeated runs.

    For one metric (e.g. accuracy of one INT8 calibration fraction) measured with
    several calibration seeds: the interval says where the mean over seeds lies,
    the std how far one seed's result strays. One value gives no spread (nan).
    """
    from scipy import stats as sps

    _check_level(level)
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or not x.size:
        raise StatsError(f"seed_spread needs a non-empty list of values, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise StatsError(f"seed_spread values must be finite numbers, got {x.tolist()}")
    n, mean = len(x), float(x.mean())
    if n == 1:
        std = low = high = math.nan
    else:
        std = float(x.std(ddof=1))
        if std == 0:  # scipy needs scale > 0; identical runs have a zero-width interval
            low = high = mean
        else:
            low, high = (float(v) for v in sps.t.interval(
                level, df=n - 1, loc=mean, scale=std / math.sqrt(n)))
    return Spread(mean=mean, std=std, n=n, low=low, high=high, level=level,
                  min=float(x.min()), max=float(x.max()))


def _median_ratio(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(b, axis=axis) / np.median(a, axis=axis)


def interleaved_latency(
    run_a: Callable[[], object],
    run_b: Callable[[], object],
    rounds: int = 50,
    warmup: int = 5,
    tolerance: float = 0.05,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> LatencyComparison:
    """Time two zero-argument callables interleaved and say which is faster, if either.

    Rounds alternate A, B then B, A, so drift in the machine's speed (other work,
    clock changes) hits both alike and neither always runs second. The ratio of
    medians B / A gets a paired percentile bootstrap interval over rounds; a
    verdict needs the interval beyond 1 +/- `tolerance` (differences of a few
    percent are noise on a shared VM; 0 asks only that it exclude 1). The
    machine's load is recorded so a reader can discount a busy run. `clock`: nanoseconds
    (tests give a clock the callables advance, so the verdicts do not rest on real sleeps).
    """
    from scipy import stats as sps

    _check_level(level)
    if rounds < 5:
        raise StatsError(f"interleaved_latency needs at least 5 rounds, got {rounds}")
    if warmup < 0 or tolerance < 0:
        raise StatsError(f"warmup and tolerance must be >= 0, got {warmup} and {tolerance}")
    for _ in range(warmup):
        run_a()
        run_b()
    process = psutil.Process()
    cpu_count = psutil.cpu_count() or 1
    loadavg_before = os.getloadavg()
    psutil.cpu_percent(interval=None)  # starts both measurement windows
    process.cpu_percent(interval=None)
    times = np.empty((rounds, 2), dtype=np.float64)
    for i in range(rounds):
        for j in ((0, 1) if i % 2 == 0 else (1, 0)):
            run = run_a if j == 0 else run_b
            start = clock()
            run()
            times[i, j] = (clock() - start) / 1e6
    cpu_percent = float(psutil.cpu_percent(interval=None))
    process_cpu = float(process.cpu_percent(interval=None))
    loadavg_after = os.getloadavg()
    other_share = max(0.0, cpu_percent / 100 - process_cpu / 100 / cpu_count)
    busy = other_share > BUSY_OTHER_CPU_SHARE or loadavg_before[0] / cpu_count > BUSY_LOAD_PER_CORE
    a, b = times[:, 0], times[:, 1]
    result = sps.bootstrap(
        (a, b), _median_ratio, paired=True, vectorized=True, n_resamples=resamples,
        confidence_level=level, method="percentile", rng=np.random.default_rng(seed),
    )
    ratio = Interval(float(_median_ratio(a, b)), float(result.confidence_interval.low),
                     float(result.confidence_interval.high), level)
    if ratio.low > 1 + tolerance:
        faster = "a faster"
    elif ratio.high < 1 / (1 + tolerance):
        faster = "b faster"
    else:
        faster = "no clear difference"
    return LatencyComparison(
        median_a_ms=float(np.median(a)), median_b_ms=float(np.median(b)),
        ratio_b_over_a=ratio, faster=faster, rounds=rounds, warmup=warmup,
        tolerance=tolerance, cpu_percent=cpu_percent, process_cpu_percent=process_cpu,
        other_cpu_share=other_share, loadavg_before=tuple(loadavg_before),
        loadavg_after=tuple(loadavg_after), cpu_count=cpu_count, busy=busy,
        times_a_ms=tuple(a.tolist()), times_b_ms=tuple(b.tolist()),
    )

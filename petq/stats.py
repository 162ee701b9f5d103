"""How sure: paired tests and intervals for comparing variants, seed spread, latency.

Every variant is evaluated on the same test images, so two variants are compared
image by image (paired): McNemar's exact test on the images where exactly one of
them is right decides "significant", and the accuracy difference's interval is that
test inverted (`accuracy_difference_intervals`), so an interval excludes zero exactly
when the test is significant. G-Mean has no such test: its intervals come from a
bootstrap that resamples test images once per resample for both variants. Pure
numpy/scipy/statsmodels over per-image arrays (true labels, top-1 predictions), so the
dashboard and the reports can call them without TensorFlow or a workspace.
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
    significant: bool  # `significant(mcnemar.p_value, level)`: accuracy_difference excludes 0
    resamples: int  # of the G-Mean bootstrap
    seed: int
    method: str = "exact-conditional"  # the accuracy difference's interval

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


def significant(p_value: float, level: float = 0.95) -> bool:
    """The one rule behind every "significant" petq writes (summary.md, comparisons.csv,
    Compare): the exact McNemar p below 1 - level. The accuracy intervals petq shows
    (`accuracy_difference_intervals`) exclude zero exactly when this holds."""
    return bool(p_value < 1 - level)


def accuracy_difference_intervals(b: np.ndarray, c: np.ndarray, n: np.ndarray,
                                  level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Interval of the paired accuracy difference (c - b) / n, the exact McNemar test
    inverted: arrays of discordant counts (b: only the reference right, c: only the
    variant) and image counts.

    Given the b + c images where exactly one is right, c is binomial with share
    theta = c / (b + c) (equal accuracies: theta = 1/2). The Clopper-Pearson interval of
    theta (statsmodels' `proportion_confint(method="beta")`) excludes 1/2 exactly when
    the two-sided exact binomial test, which is the exact McNemar test, has p < 1 - level;
    the difference is (b + c) / n * (2 theta - 1), so its interval excludes zero exactly
    then too. This is the exact conditional interval (conditional on b + c); no images
    that disagree give [0, 0] (and p = 1). Its width reflects only the discordant
    images' split, which is what decides whether two variants differ.
    """
    from statsmodels.stats.proportion import proportion_confint

    _check_level(level)
    b, c, n = (np.asarray(v, dtype=np.float64) for v in (b, c, n))
    discordant = b + c
    with np.errstate(divide="ignore", invalid="ignore"):
        low, high = proportion_confint(c, np.maximum(discordant, 1), alpha=1 - level,
                                       method="beta")
    low, high = np.nan_to_num(low, nan=0.0), np.nan_to_num(high, nan=1.0)
    share = np.divide(discordant, n, out=np.zeros_like(discordant), where=n > 0)
    return share * (2 * low - 1) + 0.0, share * (2 * high - 1) + 0.0  # + 0.0: no -0.0


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


def metrics_of_codes(codes: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy and G-Mean of variant, reference and their differences: (6, R), or (6,).

    `codes` (R, N) hold label * 4 + 2 * variant-right + reference-right per image,
    so one bincount per chunk gives every resample's per-class counts.
    """
    if codes.ndim == 1:
        return metrics_of_codes(codes[None], num_classes)[:, 0]
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

    The exact McNemar test decides `significant` (`significant`), and the accuracy
    difference's interval is that test inverted (`accuracy_difference_intervals`): the
    two never disagree. (A percentile bootstrap of the difference did: on 51 images
    with 4 lost and none gained it excluded zero while p = 0.125.) Each variant's own
    accuracy gets a Wilson interval (statsmodels). G-Mean has no exact test: its
    intervals come from `scipy.stats.bootstrap`, which draws test images with
    replacement; each image is one code (its label and whether each variant got it
    right), so a resample always carries both variants' answers on the same images.
    Percentile intervals, not BCa: BCa returns nan (with a warning) when the bootstrap
    distribution is degenerate, the common case of two variants that disagree on no
    or very few images.
    """
    from scipy import stats as sps
    from statsmodels.stats.proportion import proportion_confint

    labels, pred_v, pred_r = _paired_arrays(labels, pred_variant, pred_reference, num_classes)
    _check_level(level)
    if resamples < 1000:
        raise StatsError(f"at least 1000 bootstrap resamples give a stable 95% interval, "
                         f"got {resamples}")
    codes = labels * 4 + 2 * (pred_v == labels) + (pred_r == labels)
    estimate = metrics_of_codes(codes, num_classes)
    if len(codes) < 2:  # scipy cannot resample one image: no interval
        low = high = np.full(6, np.nan)
    else:
        result = sps.bootstrap(
            (codes,),
            lambda sample, axis: metrics_of_codes(sample, num_classes),
            n_resamples=resamples,
            batch=max(1, BOOTSTRAP_CELLS // len(codes)),
            vectorized=True,
            confidence_level=level,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        low, high = result.confidence_interval.low, result.confidence_interval.high
    _, _, _, gm_v, gm_r, gm_d = (
        Interval(float(e), float(lo), float(hi), level)
        for e, lo, hi in zip(estimate, low, high, strict=True)
    )
    right_v, right_r = pred_v == labels, pred_r == labels
    n = len(labels)
    test = _mcnemar_counts(int(np.count_nonzero(right_r & ~right_v)),
                           int(np.count_nonzero(right_v & ~right_r)), n)
    accuracy = []
    for right in (right_v, right_r):
        lo, hi = proportion_confint(int(right.sum()), n, alpha=1 - level, method="wilson")
        accuracy.append(Interval(float(right.mean()), float(lo), float(hi), level))
    d_low, d_high = accuracy_difference_intervals(np.array([test.b]), np.array([test.c]),
                                                  np.array([n]), level)
    acc_d = Interval(float((test.c - test.b) / n), float(d_low[0]), float(d_high[0]), level)
    return PairedComparison(
        accuracy_variant=accuracy[0], accuracy_reference=accuracy[1], accuracy_difference=acc_d,
        g_mean_variant=gm_v, g_mean_reference=gm_r, g_mean_difference=gm_d,
        mcnemar=test, significant=significant(test.p_value, level), resamples=resamples,
        seed=seed,
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


def per_class_changes(
    labels: np.ndarray,
    pred_variant: np.ndarray,
    pred_reference: np.ndarray,
    num_classes: int,
    level: float = 0.95,
) -> list[ClassChange]:
    """Each present class's recall change (variant - reference), with a paired interval.

    Within a class both recalls come from the same images; the interval is the class's
    exact McNemar test inverted (`accuracy_difference_intervals`), the rule every
    accuracy comparison follows, so `hurt`/`helped` (the interval entirely below/above
    0) hold exactly when the class's exact `p_value` is below 1 - level. Not a
    bootstrap: within a 20-image class a percentile bootstrap calls a 4-of-20 drop
    real although the exact p is 0.125. `p_adjusted` (Holm over the classes returned)
    answers "is any class hurt at all": with 37 classes, a few per-class flags at 5%
    can come from chance alone.
    """
    labels, pred_v, pred_r = _paired_arrays(labels, pred_variant, pred_reference, num_classes)
    _check_level(level)
    right_v, right_r = pred_v == labels, pred_r == labels

    def per_class(mask: np.ndarray) -> np.ndarray:
        return np.bincount(labels[mask], minlength=num_classes)

    n_class = np.bincount(labels, minlength=num_classes)
    both, only_v = per_class(right_v & right_r), per_class(right_v & ~right_r)
    only_r = per_class(right_r & ~right_v)
    present = np.flatnonzero(n_class)
    if not len(present):
        return []
    b, c, n = only_r[present], only_v[present], n_class[present]
    p_values = mcnemar_p_values(b, c)
    adjusted = holm(p_values)
    lows, highs = accuracy_difference_intervals(b, c, n, level)
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

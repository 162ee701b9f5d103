"""Certify a drop: one-sided paired non-inferiority bounds of a variant against a reference.

`petq tune` ships a variant only when its drop against the reference is shown to be
smaller than the user's `max_drop` at a confidence level, on test images the search
never looked at. This module holds that statistics, pure numpy/scipy over per-image
correctness (no TensorFlow, no workspace), so it can be tested on its own:

- accuracy, absolute drop: Tango's score bound for the difference of paired
  proportions (Tango 1998, Statistics in Medicine 17:891). Its restricted maximum
  likelihood estimate has a closed form; the bound is the root (scipy's `brentq`)
  of the score statistic at the normal quantile. At a difference of 0 the statistic
  is McNemar's, (c - b) / sqrt(b + c) (a test checks it against statsmodels). Unlike
  a Wald bound it stays honest when the two models disagree on no image at all: then
  the smallest certifiable drop is z^2 / (n + z^2), not 0.
- accuracy, relative drop (variant >= (1 - D) x reference): the same score test for
  the linear contrast p_variant - rho x p_reference = 0 (Nam and Blackwelder 2002's
  ratio test), its restricted estimate found numerically (scipy's SLSQP); the bound
  is on rho - 1.
- G-Mean: a paired percentile bootstrap (scipy.stats.bootstrap, test images resampled
  once for both models). A large-sample approximation: with few discordant images it
  is optimistic (no discordant image gives a bound of exactly 0), so the bound is
  never above the score bound of a variant that agrees with a perfect reference on
  every image (-z^2 / (n + z^2)); the tune report says so.
- `certification_size`: how many images the score test needs to certify `max_drop`
  at the observed discordance (Nam 1997's sample size for a score test: normal
  approximation, variance under the null at its restricted estimate and under the
  alternative at the observed proportions).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from petq.stats import StatsError, metrics_of_codes
from petq.types import TUNE_METRICS

METRICS = TUNE_METRICS


@dataclass(frozen=True)
class PairedCounts:
    """The 2x2 table of two models on the same images: both right, only the variant
    right, only the reference right, neither. Counts may be fractional (scaled tables
    for sample-size checks)."""

    both: float
    only_variant: float
    only_reference: float
    neither: float

    def __post_init__(self) -> None:
        cells = (self.both, self.only_variant, self.only_reference, self.neither)
        if min(cells) < 0 or not all(math.isfinite(v) for v in cells):
            raise StatsError(f"paired counts must be finite and >= 0, got {cells}")
        if sum(cells) <= 0:
            raise StatsError("paired counts need at least one image")

    @classmethod
    def of(cls, variant_right: np.ndarray, reference_right: np.ndarray) -> PairedCounts:
        v = np.asarray(variant_right, dtype=bool)
        r = np.asarray(reference_right, dtype=bool)
        if v.shape != r.shape or v.ndim != 1:
            raise StatsError(f"per-image correctness must be two 1-D arrays of one length, "
                             f"got {v.shape} and {r.shape}")
        return cls(int(np.count_nonzero(v & r)), int(np.count_nonzero(v & ~r)),
                   int(np.count_nonzero(~v & r)), int(np.count_nonzero(~v & ~r)))

    @property
    def n(self) -> float:
        return self.both + self.only_variant + self.only_reference + self.neither

    @property
    def discordant(self) -> float:
        return self.only_variant + self.only_reference

    @property
    def variant(self) -> float:
        """The variant's accuracy."""
        return (self.both + self.only_variant) / self.n

    @property
    def reference(self) -> float:
        return (self.both + self.only_reference) / self.n

    @property
    def difference(self) -> float:
        """Variant minus reference accuracy: (c - b) / n."""
        return (self.only_variant - self.only_reference) / self.n

    def scaled(self, n: float) -> PairedCounts:
        """The same proportions on n images."""
        k = n / self.n
        return PairedCounts(self.both * k, self.only_variant * k, self.only_reference * k,
                            self.neither * k)

    def proportions(self) -> np.ndarray:
        return np.array([self.both, self.only_variant, self.only_reference, self.neither],
                        dtype=np.float64) / self.n


def _check_confidence(confidence: float) -> None:
    if not 0.5 < confidence < 1:
        raise StatsError(f"confidence must be in (0.5, 1), got {confidence}")


def _z(confidence: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(confidence))


# ---------------------------------------------------------------- absolute: Tango


def tango_restricted(counts: PairedCounts, delta: float) -> float:
    """Tango's restricted MLE of P(only the reference right) under variant - reference =
    `delta` (the root of 2n x^2 + B x + C = 0, B = -(b + c) + (2n - c + b) delta with
    b = only the reference, c = only the variant; C = -b delta (1 - delta))."""
    n, c, b = counts.n, counts.only_variant, counts.only_reference
    big_b = -(b + c) + (2 * n - c + b) * delta
    big_c = -b * delta * (1 - delta)
    return (-big_b + math.sqrt(max(big_b * big_b - 8 * n * big_c, 0.0))) / (4 * n)


def score_statistic(counts: PairedCounts, delta: float) -> float:
    """Tango's score statistic for H0: variant - reference = delta; large when the
    observed difference lies above delta."""
    if not -1 < delta < 1:
        raise StatsError(f"a difference of accuracies lies in (-1, 1), got {delta}")
    n = counts.n
    q = tango_restricted(counts, delta)
    variance = 2 * q + delta * (1 - delta)  # n x Var(difference) under H0 (>= 0: q >= -delta)
    numerator = counts.only_variant - counts.only_reference - n * delta
    if variance <= 0:
        return math.copysign(math.inf, numerator) if numerator else 0.0
    return numerator / math.sqrt(n * variance)


def difference_lower_bound(counts: PairedCounts, confidence: float = 0.95) -> float:
    """One-sided lower confidence bound on variant - reference accuracy (Tango's score
    interval): the smallest difference the score test at `confidence` cannot reject."""
    from scipy.optimize import brentq

    _check_confidence(confidence)
    z = _z(confidence)
    estimate = counts.difference
    low = -1 + 1e-12
    if score_statistic(counts, low) <= z:
        return -1.0
    if estimate <= low:
        return -1.0
    return float(brentq(lambda d: score_statistic(counts, d) - z, low, estimate,
                        xtol=1e-10))


def noninferiority_p_value(counts: PairedCounts, max_drop: float) -> float:
    """One-sided p-value of H0: variant - reference <= -max_drop (Tango's score test)."""
    from scipy.stats import norm

    return float(norm.sf(score_statistic(counts, -max_drop)))


# ---------------------------------------------------------------- relative: ratio


def restricted_mle(counts: PairedCounts, k: float, delta: float) -> np.ndarray:
    """The cell probabilities (both, only variant, only reference, neither) of largest
    likelihood under p_variant - k p_reference = delta (SLSQP; the log-likelihood is
    concave on that plane, so the local maximum is the maximum)."""
    from scipy.optimize import minimize

    observed = np.array([counts.both, counts.only_variant, counts.only_reference,
                         counts.neither], dtype=np.float64)

    def cells(x: np.ndarray) -> np.ndarray:  # x = (both, only reference)
        t, s = x
        only_v = delta + (k - 1) * t + k * s
        return np.array([t, only_v, s, 1 - t - s - only_v])

    def loss(x: np.ndarray) -> float:
        p = cells(x)
        used = observed > 0
        if (p[used] <= 0).any():
            return 1e300
        return -float(observed[used] @ np.log(p[used])) / counts.n

    start = _feasible_start(counts, k, delta, cells)
    eps = 1e-12
    constraints = [{"type": "ineq", "fun": lambda x, i=i: cells(x)[i] - eps} for i in range(4)]
    found = minimize(loss, start, method="SLSQP", constraints=constraints,
                     options={"ftol": 1e-14, "maxiter": 500})
    return np.clip(cells(found.x), 0.0, 1.0)


def _feasible_start(counts: PairedCounts, k: float, delta: float, cells) -> np.ndarray:
    """The point of a grid strictly inside the constraint plane's simplex nearest to the
    observed (both, only reference) cells."""
    grid = np.unique(np.concatenate([np.geomspace(1e-7, 0.5, 60), 1 - np.geomspace(1e-7, 0.5, 60)]))
    t, s = (a.ravel() for a in np.meshgrid(grid, grid))
    only_v = delta + (k - 1) * t + k * s
    feasible = (only_v > 1e-6) & (1 - t - s - only_v > 1e-6)
    if not feasible.any():
        raise StatsError(f"no table has p_variant - {k:g} p_reference = {delta:g}")
    p = counts.proportions()
    distance = (t - p[0]) ** 2 + (s - p[2]) ** 2
    best = np.flatnonzero(feasible)[np.argmin(distance[feasible])]
    return np.array([t[best], s[best]])


def contrast_statistic(counts: PairedCounts, k: float, delta: float) -> float:
    """Score statistic for H0: p_variant - k p_reference = delta (k = 1: Tango's)."""
    p = restricted_mle(counts, k, delta)
    variance = _contrast_variance(p, k)
    numerator = counts.variant - k * counts.reference - delta
    if variance <= 0:
        return math.copysign(math.inf, numerator) if numerator else 0.0
    return numerator / math.sqrt(variance / counts.n)


def _contrast_variance(p: np.ndarray, k: float) -> float:
    """Var(X_variant - k X_reference) for one image, from cell probabilities."""
    pv, pr = p[0] + p[1], p[0] + p[2]
    return float(pv * (1 - pv) + k * k * pr * (1 - pr) - 2 * k * (p[0] - pv * pr))


def ratio_lower_bound(counts: PairedCounts, confidence: float = 0.95) -> float:
    """One-sided lower confidence bound on variant / reference accuracy - 1 (the relative
    change), by inverting the score test of p_variant - rho p_reference = 0."""
    from scipy.optimize import brentq

    _check_confidence(confidence)
    if counts.reference <= 0:
        raise StatsError("the reference is right on no image: a relative drop is undefined")
    z = _z(confidence)
    estimate = counts.variant / counts.reference
    if estimate <= 0:
        return -1.0
    low = 0.01  # a bound below a 99% relative drop says no more
    if contrast_statistic(counts, low, 0.0) <= z:
        return low - 1.0
    return float(brentq(lambda rho: contrast_statistic(counts, rho, 0.0) - z, low, estimate,
                        xtol=1e-7)) - 1.0


# ---------------------------------------------------------------- sample size


def certification_size(counts: PairedCounts, max_drop: float, confidence: float = 0.95,
                       relative: bool = False, power: float = 0.8) -> int | None:
    """Images the score test needs to certify `max_drop` with probability `power`, if the
    two models keep the proportions of `counts` (None: the observed drop is not below
    `max_drop`, so no number of images certifies it). Nam (1997): n = ((z_conf sigma_0 +
    z_power sigma_1) / (theta - theta_0))^2, sigma_0 at the restricted estimate."""
    _check_confidence(confidence)
    if not 0 < power < 1:
        raise StatsError(f"power must be in (0, 1), got {power}")
    k, delta = (1 - max_drop, 0.0) if relative else (1.0, -max_drop)
    gap = counts.variant - k * counts.reference - delta
    if gap <= 0:
        return None
    p = counts.proportions()
    if relative:
        sigma0 = math.sqrt(max(_contrast_variance(restricted_mle(counts, k, delta), k), 0.0))
    else:
        q = tango_restricted(counts.scaled(1.0), delta)
        sigma0 = math.sqrt(max(2 * q + delta * (1 - delta), 0.0))
    sigma1 = math.sqrt(max(_contrast_variance(p, k), 0.0))
    n = ((_z(confidence) * sigma0 + _z(power) * sigma1) / gap) ** 2
    return max(1, math.ceil(n))


def agreeing_counts(n: float, reference_accuracy: float) -> PairedCounts:
    """The table of a variant that agrees with the reference on each of n images."""
    if not 0 < reference_accuracy <= 1:
        raise StatsError(f"reference accuracy must be in (0, 1], got {reference_accuracy}")
    return PairedCounts(n * reference_accuracy, 0.0, 0.0, n * (1 - reference_accuracy))


def best_case(n: int, max_drop: float, confidence: float = 0.95, relative: bool = False,
              reference_accuracy: float = 1.0) -> tuple[float, int]:
    """What n images can certify at best: the bound of a variant that agrees with the
    reference on every image (absolute: -z^2 / (n + z^2)), and the images such a
    variant would need to certify `max_drop`. When the bound is not above -max_drop, no
    candidate can be certified on n images, whatever the search finds."""
    counts = agreeing_counts(n, reference_accuracy)
    bound = ratio_lower_bound(counts, confidence) if relative else \
        difference_lower_bound(counts, confidence)
    needed = certification_size(agreeing_counts(1.0, reference_accuracy), max_drop,
                                confidence, relative, power=0.5)
    return bound, int(needed)


# ---------------------------------------------------------------- G-Mean: bootstrap


def g_mean_bound(labels: np.ndarray, variant_right: np.ndarray, reference_right: np.ndarray,
                 num_classes: int, confidence: float = 0.95, relative: bool = False,
                 resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """(estimate, one-sided lower bound) of the G-Mean change, variant - reference (or
    variant / reference - 1): a paired percentile bootstrap over images."""
    from scipy import stats as sps

    _check_confidence(confidence)
    labels = np.asarray(labels, dtype=np.int64)
    codes = labels * 4 + 2 * np.asarray(variant_right, bool) + np.asarray(reference_right, bool)

    def change(sample: np.ndarray, axis: int = -1) -> np.ndarray:
        sample = np.atleast_2d(sample)
        g_v, g_r = metrics_of_codes(sample, num_classes)[3:5]  # G-Mean: variant, reference
        if relative:
            return np.where(g_r > 0, g_v / np.where(g_r > 0, g_r, 1.0) - 1, -1.0)
        return g_v - g_r

    estimate = float(change(codes[None])[0])
    if len(codes) < 2:
        return estimate, -1.0
    result = sps.bootstrap((codes,), change, n_resamples=resamples, vectorized=True,
                           confidence_level=2 * confidence - 1, method="percentile",
                           rng=np.random.default_rng(seed), batch=max(1, 2_000_000 // len(codes)))
    return estimate, float(result.confidence_interval.low)


# ---------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class Bound:
    """A candidate's change against the reference on one part of the test images, with
    its one-sided lower bound at `confidence` (negative: a drop). Units: accuracy or
    G-Mean points as fractions (absolute), or fractions of the reference (relative)."""

    metric: str
    relative: bool
    estimate: float
    bound: float
    confidence: float
    n: int
    both: int  # images both get right
    only_variant: int  # images only the variant gets right (c)
    only_reference: int  # b
    neither: int
    method: str

    @property
    def counts(self) -> PairedCounts:
        return PairedCounts(self.both, self.only_variant, self.only_reference, self.neither)

    def certifies(self, max_drop: float) -> bool:
        return self.bound > -max_drop

    @property
    def smallest_drop(self) -> float:
        """The smallest max drop this bound certifies (any above it)."""
        return max(0.0, -self.bound)

    def to_dict(self) -> dict:
        return asdict(self)


def paired_bound(labels: np.ndarray, variant_right: np.ndarray, reference_right: np.ndarray,
                 num_classes: int, metric: str = "accuracy", relative: bool = False,
                 confidence: float = 0.95, seed: int = 0) -> Bound:
    """The one-sided bound `petq tune` certifies with (see the module docstring)."""
    if metric not in METRICS:
        raise StatsError(f"unknown metric {metric!r}: expected one of {', '.join(METRICS)}")
    counts = PairedCounts.of(variant_right, reference_right)
    if metric == "accuracy":
        if relative:
            estimate = counts.variant / counts.reference - 1 if counts.reference else -1.0
            bound, method = ratio_lower_bound(counts, confidence), "score (ratio)"
        else:
            estimate = counts.difference
            bound, method = difference_lower_bound(counts, confidence), "Tango score"
    else:
        estimate, bound = g_mean_bound(labels, variant_right, reference_right, num_classes,
                                       confidence, relative, seed=seed)
        # a bootstrap of two models that agree on every image has no width at all: never
        # claim more than the score bound of such a variant (reference right everywhere)
        agreeing = agreeing_counts(counts.n, 1.0)
        floor = ratio_lower_bound(agreeing, confidence) if relative else \
            difference_lower_bound(agreeing, confidence)
        bound = min(bound, floor)
        method = "paired percentile bootstrap, at most the agreeing-variant score bound"
    return Bound(metric=metric, relative=relative, estimate=float(estimate),
                 bound=float(min(bound, estimate)), confidence=confidence, n=int(counts.n),
                 both=int(counts.both), only_variant=int(counts.only_variant),
                 only_reference=int(counts.only_reference), neither=int(counts.neither),
                 method=method)


def needed_images(bound: Bound, max_drop: float, power: float = 0.8) -> int | None:
    """`certification_size` for a bound's own table (accuracy), or a normal-approximation
    scaling of the bootstrap's width for G-Mean; None when the estimate itself is not
    above -max_drop."""
    if bound.estimate <= -max_drop:
        return None
    if bound.metric == "accuracy":
        return certification_size(bound.counts, max_drop, bound.confidence, bound.relative,
                                  power)
    width = bound.estimate - bound.bound
    if width <= 0:
        return None
    z_ratio = (_z(bound.confidence) + _z(power)) / _z(bound.confidence)
    return max(1, math.ceil(bound.n * (z_ratio * width / (bound.estimate + max_drop)) ** 2))

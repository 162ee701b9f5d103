"""Which variant to ship: a search over recipes with a statistical guarantee (`petq tune`).

The protocol, in order:

1. The test images are split once, seeded and stratified by breed (scikit-learn),
   into a **selection** part and a **certification** part; both id lists are kept.
2. Candidates are built on the sweep engine (`_build`: a process pool, in-process,
   or Ray) and each is evaluated once on the whole test split (cached). Every search
   decision (what passes, what to try next, the order) reads only the selection rows
   of those per-image predictions. Calibration only ever uses trainval images.
3. A candidate passes selection when its one-sided bound on the selection part
   already clears `max_drop` (and, with a breed guard, no guarded breed is hurt by more
   than `max_drop` there). Passing candidates go to certification in search order,
   at most `certify_top` of them, each at confidence 1 - (1 - confidence) / certify_top
   (Bonferroni over a sequence fixed by the selection part alone, so the chance that
   any certified claim is false stays below 1 - confidence). The first certified one
   ships. A candidate whose selection answers equal those of one already tested is not
   tested again (float I/O around the same INT8 model: the same test, a wasted try).
   The statistics live in petq.certify.
4. When nothing certifies, the outcome names the closest candidate, its bound (the
   smallest drop it could certify), and how many certification images the observed
   discordance would need for `max_drop`. A limit beyond what the certification part
   can certify even for a variant that agrees with the reference on every image stops
   the search before anything is built.

The search order puts a cheap likely answer first: candidates are grouped by what
the objective predicts before building them (size: int4, then int8, then float16
weights; latency: int8 activations, then dynamic range, then float, then int4 weight
only, then 16-bit activations), and within a group the recipes without calibration
come first, then static recipes at one calibration fraction, then, for the best
static recipes of the group that failed selection, other calibration fractions and
seeds, then "keep the N worst layers in float" (`-keep<N>`, ranked by petq's
per-layer error). The search stops at the first certified candidate, at the budget,
or when the certification attempts are spent.

petq.tunerun is the command and writes what a tune leaves behind (tune.md, tune.json,
the chosen `.tflite` and its recipe); the Tune page runs a tune as a job (petq.jobs).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from petq.certify import METRICS, Bound, best_case, needed_images, paired_bound
from petq.errors import PetqError, TuneError
from petq.types import (
    DEFAULT_CERTIFY_TOP,
    DEFAULT_TUNE_BUDGET,
    RECIPES,
    TUNE_OBJECTIVES,
    Backend,
    Mode,
    TuneConfig,
    VariantSpec,
)

OBJECTIVES = TUNE_OBJECTIVES
START_FRACTION = 0.08  # the lab's middle calibration fraction: the first static try
MORE_FRACTIONS = (0.3, 0.01)
MORE_SEEDS = (1, 2)
KEEP_FLOAT = (1, 2, 4, 8)
REFINED_RECIPES = 2  # static recipes per group that get other fractions, seeds, keep-N
DEFAULT_BUDGET = DEFAULT_TUNE_BUDGET
POWER = 0.8  # of the sample-size estimate


class State(str, Enum):
    """What became of a candidate."""

    FAILED = "failed"  # could not be built or evaluated (a recipe the model cannot take)
    REJECTED = "failed selection"  # its selection bound does not clear max_drop
    GUARDED = "breed hurt on selection"  # --guard-breeds: a breed dropped more than max_drop
    PASSED = "passed selection"  # not sent to certification (search stopped, tries spent)
    SAME = "not tested again"  # its selection answers equal a tested candidate's
    UNCERTIFIED = "not certified"
    CERTIFIED = "certified"


@dataclass(frozen=True)
class ImageSplit:
    """The test images in two disjoint parts (ids, in the order the results list them)."""

    selection: tuple[str, ...]
    certification: tuple[str, ...]
    seed: int

    def __post_init__(self) -> None:
        overlap = set(self.selection) & set(self.certification)
        if overlap:
            raise TuneError(f"selection and certification share {len(overlap)} image(s)")

    def part(self, name: str) -> tuple[str, ...]:
        return {"selection": self.selection, "certification": self.certification}[name]


def split_test_images(image_ids: Sequence[str], labels: Sequence[int], fraction: float,
                      seed: int, class_names: Sequence[str] = ()) -> ImageSplit:
    """Split the test images, stratified by breed and seeded: `fraction` of each breed to
    certification, the rest to selection. Every breed needs two test images."""
    from collections import Counter

    from sklearn.model_selection import train_test_split

    ids, labels = list(image_ids), [int(v) for v in labels]
    counts = Counter(labels)
    thin = sorted(label for label, count in counts.items() if count < 2)
    if thin:
        names = [class_names[c] if c < len(class_names) else str(c) for c in thin[:5]]
        raise TuneError(f"the test set is too small to split into selection and certification "
                        f"parts: {len(thin)} breed(s) have a single test image ({', '.join(names)}"
                        f"{', ...' if len(thin) > 5 else ''}); each needs at least 2")
    try:
        selection, certification = train_test_split(
            ids, test_size=fraction, random_state=seed, shuffle=True, stratify=labels)
    except ValueError as exc:
        raise TuneError(f"the test set is too small to split into selection and certification "
                        f"parts ({len(ids)} images, {len(counts)} breeds, certification "
                        f"fraction {fraction:g}): {exc}") from None
    order = {image_id: i for i, image_id in enumerate(ids)}
    return ImageSplit(tuple(sorted(selection, key=order.__getitem__)),
                     tuple(sorted(certification, key=order.__getitem__)), seed)


@dataclass(frozen=True)
class BreedHarm:
    """A guarded breed whose sensitivity dropped by more than max_drop (interval entirely
    below -max_drop)."""

    breed: str
    n: int
    difference: float
    high: float

    def to_dict(self) -> dict[str, Any]:
        return {"breed": self.breed, "n": self.n, "difference": self.difference,
                "high": self.high}


@dataclass
class Candidate:
    """One variant tried: how it was built, its selection estimate, its verdict."""

    spec: VariantSpec
    group: int  # the objective's group (lower: better predicted)
    why: str  # recipe | fraction | seed | keep
    state: State = State.FAILED
    error: str = ""
    result_key: str = ""
    file_size_bytes: int | None = None
    latency_ms: float | None = None
    calibration_count: int = 0  # trainval images that calibrated it
    selection_metric: float | None = None  # the variant's metric on the selection part
    selection: Bound | None = None
    selection_harm: tuple[BreedHarm, ...] = ()
    certification: Bound | None = None
    certification_harm: tuple[BreedHarm, ...] = ()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def built(self) -> bool:
        return self.state is not State.FAILED

    def objective_value(self, objective: str) -> float | None:
        return self.file_size_bytes if objective == "size" else self.latency_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.name, "spec": self.spec.to_dict(), "group": self.group,
            "why": self.why, "state": self.state.value, "error": self.error,
            "result_key": self.result_key, "file_size_bytes": self.file_size_bytes,
            "latency_p50_ms": self.latency_ms, "calibration_count": self.calibration_count,
            "selection_metric": self.selection_metric,
            "selection": self.selection.to_dict() if self.selection else None,
            "selection_breeds_hurt": [h.to_dict() for h in self.selection_harm],
            "certification": self.certification.to_dict() if self.certification else None,
            "certification_breeds_hurt": [h.to_dict() for h in self.certification_harm],
        }


@dataclass
class Scored:
    """One look at one part of the test images: which candidate, which ids (an audit
    trail: tests check that certification never read a selection image)."""

    variant: str
    part: str
    image_ids: tuple[str, ...]


@dataclass
class TuneOutcome:
    """Everything a tune decided and why (tune.json is its `to_dict`)."""

    config: TuneConfig
    model: str
    dataset: str
    reference: str
    split: ImageSplit | None = None
    reference_selection: float | None = None  # the reference's metric on each part
    reference_certification: float | None = None
    candidates: list[Candidate] = field(default_factory=list)
    chosen: Candidate | None = None
    attempts: int = 0  # certification tests made
    scored: list[Scored] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    seconds: float = 0.0
    stopped: str = ""  # why the search ended
    # set when max_drop is beyond what the parts can certify even for a variant that
    # agrees with the reference on every image: (that best bound, images it would need)
    unreachable: tuple[float, int] | None = None

    @property
    def certified(self) -> bool:
        return self.chosen is not None

    @property
    def built(self) -> int:
        return len(self.candidates)

    def closest(self) -> Candidate | None:
        """The candidate nearest to certifying: the best certification bound among those
        tested, else the best selection bound."""
        tested = [c for c in self.candidates if c.certification is not None]
        if tested:
            return max(tested, key=lambda c: c.certification.bound)
        scored = [c for c in self.candidates if c.selection is not None]
        return max(scored, key=lambda c: c.selection.bound) if scored else None

    def pareto(self) -> list[Candidate]:
        """Built candidates no other beats on both the objective and the selection metric."""
        objective = self.config.objective
        points = sorted((c for c in self.candidates if c.selection_metric is not None
                         and c.objective_value(objective) is not None),
                        key=lambda c: (c.objective_value(objective), -c.selection_metric))
        front, best = [], -math.inf
        for c in points:
            if c.selection_metric > best:
                front.append(c)
                best = c.selection_metric
        return front

    def decision(self) -> str:
        """The decision in one sentence."""
        cfg = self.config
        limit = limit_text(cfg)
        if self.chosen is not None:
            c = self.chosen
            return (f"Ship {c.name}: it is certified at {cfg.confidence:.0%} to lose less "
                    f"than {limit} against {self.reference}, on {c.certification.n} "
                    f"held-out certification images (lower bound "
                    f"{change_text(c.certification.bound, cfg)}).")
        return (f"No variant is certified: none is shown at {cfg.confidence:.0%} to lose "
                f"less than {limit} against {self.reference}.")

    def advice(self) -> list[str]:
        """Why nothing certified and what would: the closest candidate, the smallest drop
        it certifies, and the certification images its discordance would need."""
        if self.chosen is not None:
            return []
        cfg = self.config
        if self.unreachable is not None:
            bound, needed = self.unreachable
            n_cert = len(self.split.certification)
            return [f"With {n_cert} certification images, the smallest drop certifiable at "
                    f"{cfg.test_confidence:.1%} is {amount(-bound, cfg)} even for a variant "
                    f"that agrees with {self.reference} on every image, so "
                    f"{amount(cfg.max_drop, cfg)} cannot be certified and nothing was "
                    f"built: give more test images (about {needed:,} certification images, "
                    f"{math.ceil(needed / cfg.certification_fraction):,} test images in "
                    "all) or relax --max-drop."]
        closest = self.closest()
        if closest is None:
            return [f"No candidate could be built and evaluated ({self.stopped})."]
        tested = closest.certification is not None
        bound = closest.certification if tested else closest.selection
        part = "certification" if tested else "selection"
        lines = [f"Closest: {closest.name}, {part} bound {change_text(bound.bound, cfg)} "
                 f"(estimate {change_text(bound.estimate, cfg)}; {bound.only_reference} image(s) "
                 f"only the reference gets right, {bound.only_variant} only the variant)."]
        needed = needed_images(bound, cfg.max_drop, POWER)
        n_cert = len(self.split.certification) if self.split else bound.n
        seen = "this discordance" if tested else "the discordance seen on the selection part"
        text = (f"With {n_cert} certification images and {seen}, the smallest "
                f"drop certifiable at {bound.confidence:.1%} is "
                f"{amount(bound.smallest_drop, cfg)}")
        if needed is None:
            text += (f"; its estimated drop is already beyond {amount(cfg.max_drop, cfg)}, "
                     "so no number of images would certify it: relax --max-drop or try "
                     "other recipes (a larger --budget)")
        else:
            total = math.ceil(needed / cfg.certification_fraction)
            text += (f": give more test images (about {needed:,} certification images, "
                     f"{total:,} test images in all, would certify "
                     f"{amount(cfg.max_drop, cfg)} with {POWER:.0%} power at this "
                     "discordance) or relax --max-drop")
        return lines + [text + "."]

    def to_dict(self) -> dict[str, Any]:
        cfg = self.config
        chosen = self.chosen
        return {
            "decision": self.decision(), "certified": self.certified,
            "max_drop": cfg.max_drop, "relative": cfg.relative, "metric": cfg.metric,
            "units": "fraction of the reference" if cfg.relative else f"{cfg.metric} (0-1)",
            "certified_bound": chosen.certification.bound if chosen else None,
            "chosen": chosen.name if chosen else None,
            "config": cfg.to_dict(), "model": self.model, "dataset": self.dataset,
            "reference": self.reference,
            "reference_selection": self.reference_selection,
            "reference_certification": self.reference_certification,
            "attempts": self.attempts, "candidates_built": self.built,
            "stopped": self.stopped, "seconds": round(self.seconds, 3),
            "unreachable": None if self.unreachable is None else
            {"best_bound": self.unreachable[0], "images_needed": self.unreachable[1]},
            "advice": self.advice(),
            "pareto": [c.name for c in self.pareto()],
            "candidates": [c.to_dict() for c in self.candidates],
            "selection_images": list(self.split.selection) if self.split else [],
            "certification_images": list(self.split.certification) if self.split else [],
        }


def amount(value: float, cfg: TuneConfig) -> str:
    """A drop in the user's units: points, or percent of the reference."""
    return f"{100 * value:.1f}% of the reference" if cfg.relative else \
        f"{100 * value:.1f} points"


def limit_text(cfg: TuneConfig) -> str:
    """`2.0 points of accuracy`, `1.0% of the reference's accuracy`."""
    if cfg.relative:
        return f"{100 * cfg.max_drop:.1f}% of the reference's {cfg.metric}"
    return f"{100 * cfg.max_drop:.1f} points of {cfg.metric}"


def change_text(value: float, cfg: TuneConfig) -> str:
    return f"{100 * value:+.1f}%" if cfg.relative else f"{100 * value:+.1f} points"


# ---------------------------------------------------------------- the search space


def group_of(spec: VariantSpec, objective: str) -> int:
    """What the objective predicts for a spec before it is built (lower: better)."""
    recipe = spec.recipe
    if objective == "size":
        return {"i4": 0, "i8": 1, "f16": 2, "fp32": 3}[recipe.weights]
    if recipe.mode is Mode.STATIC:
        return 0 if recipe.activations == "i8" else 4
    return {Mode.DYNAMIC: 1, Mode.FLOAT16: 2, Mode.FLOAT: 2, Mode.WEIGHT_ONLY: 3}[recipe.mode]


def _cost(spec: VariantSpec) -> int:
    """Build and evaluation cost, roughly: no calibration, static 8-bit, static 16-bit
    (LiteRT's reference kernels make 16-bit activations slow on x86)."""
    recipe = spec.recipe
    if not recipe.calibrates:
        return 0
    return 1 if recipe.activations == "i8" else 2


def first_candidates(objective: str) -> list[VariantSpec]:
    """One spec per recipe the search starts from (static recipes at START_FRACTION),
    in search order: the objective's group, then cost, then the registry's order. int4
    weights only when size is the objective; the FP32 reference is not a candidate."""
    keys = list(RECIPES)
    specs = []
    for key, recipe in RECIPES.items():
        if recipe.stem in ("native", "tflite-fp32") or recipe.backend is Backend.SOURCE:
            continue  # the reference, and the source file as it is, are not candidates
        if recipe.weights == "i4" and objective != "size":
            continue
        specs.append(VariantSpec.of(key, START_FRACTION if recipe.calibrates else None))
    return sorted(specs, key=lambda s: (group_of(s, objective), _cost(s),
                                        keys.index(s.recipe.key)))


def refinements(bases: Sequence[Candidate], tried: set[VariantSpec]
                ) -> list[tuple[VariantSpec, str]]:  # fmt: skip
    """What to try next for the best static candidates that failed selection: other
    calibration fractions, then other seeds at their fraction."""
    out: list[tuple[VariantSpec, str]] = []

    def add(spec: VariantSpec, why: str) -> None:
        if spec not in tried and spec not in (s for s, _ in out):
            out.append((spec, why))

    for base in bases:
        for fraction in MORE_FRACTIONS:
            add(VariantSpec.of(base.spec.recipe, fraction, seed=base.spec.seed), "fraction")
    for base in bases:
        for seed in MORE_SEEDS:
            add(VariantSpec.of(base.spec.recipe, base.spec.fraction, seed=seed), "seed")
    return out


# ---------------------------------------------------------------- the engine


Progress = Callable[["TuneOutcome", "Candidate | None", str], None]  # (outcome, candidate, line)


@dataclass(frozen=True)
class Engine:
    """Where candidates are built: the sweep engine's backend and its options."""

    backend: str = "local"  # serial | local | ray (petq.sweep.BACKENDS)
    address: str | None = None
    workers: int | None = None
    threads: int | None = None
    log_dir: Path | None = None

    @property
    def batch(self) -> int:
        """Candidates sent at once: one per worker (the search reads them in order)."""
        if self.backend == "serial":
            return 1
        import os

        return max(1, self.workers or (os.cpu_count() or 1))


def _build(ws, specs: Sequence[VariantSpec], engine: Engine) -> list[tuple[Any, str]]:
    """Convert and evaluate `specs` on the sweep engine: (Result or None, error) each, in
    order. The one place tune calls the engine. A spec this model cannot make
    (`Workspace.check`: a converter recipe on a .tflite source, say) is not sent: it fails
    with its reason, and the rest are built."""
    from petq.sweep import run_sweep

    refused: dict[VariantSpec, str] = {}
    for spec in specs:
        try:
            ws.check(spec)
        except PetqError as exc:
            refused[spec] = str(exc)
    buildable = [s for s in specs if s not in refused]
    cells = run_sweep(ws.model_path, ws.dataset.root, ws.cache.root, buildable,
                      backend=engine.backend, address=engine.address, workers=engine.workers,
                      threads=engine.threads, preprocessing=ws.contract.preprocessing,
                      log_dir=engine.log_dir) if buildable else []
    by_spec = {cell.spec: (cell.result, cell.error or "") for cell in cells}
    return [by_spec.get(s, (None, refused.get(s, ""))) for s in specs]


# ---------------------------------------------------------------- scoring parts


class Parts:
    """Per-image correctness of the reference and each candidate, sliced by the split's
    id lists. Every slice read is logged in `outcome.scored`."""

    def __init__(self, ws, reference_key: str, split: ImageSplit, outcome: TuneOutcome):
        reference = ws.details(reference_key)
        self.ws, self.split, self.outcome = ws, split, outcome
        self.image_ids = reference.image_ids
        self.row = {image_id: i for i, image_id in enumerate(reference.image_ids)}
        self.labels = reference.labels
        self.num_classes = len(reference.class_names)
        self.class_names = reference.class_names
        self.reference_top1 = reference.top1
        missing = [i for i in split.selection + split.certification if i not in self.row]
        if missing:
            raise TuneError(f"the reference was evaluated without {len(missing)} test "
                            f"image(s) of the split ({missing[0]}, ...)")
        self.rows = {name: np.array([self.row[i] for i in split.part(name)], dtype=np.int64)
                     for name in ("selection", "certification")}

    def _top1(self, result_key: str) -> np.ndarray:
        details = self.ws.details(result_key)
        if details.image_ids != self.image_ids:
            raise TuneError("a candidate was evaluated on other test images than the "
                            "reference")
        return details.top1

    def metric(self, part: str) -> float:
        """The reference's metric on a part."""
        rows = self.rows[part]
        right = self.reference_top1[rows] == self.labels[rows]
        if self.outcome.config.metric == "accuracy":
            return float(right.mean())
        return _g_mean(self.labels[rows], right)

    def score(self, candidate: Candidate, part: str
              ) -> tuple[Bound, tuple[BreedHarm, ...], float]:  # fmt: skip
        """The candidate against the reference on one part: its bound, the guarded
        breeds it hurts, and its own metric there."""
        cfg = self.outcome.config
        rows = self.rows[part]
        self.outcome.scored.append(Scored(candidate.name, part, self.split.part(part)))
        labels = self.labels[rows]
        pred_v, pred_r = self._top1(candidate.result_key)[rows], self.reference_top1[rows]
        right_v, right_r = pred_v == labels, pred_r == labels
        bound = paired_bound(labels, right_v, right_r, self.num_classes, cfg.metric,
                             cfg.relative, cfg.test_confidence, seed=cfg.seed)
        own = float(right_v.mean()) if cfg.metric == "accuracy" else _g_mean(labels, right_v)
        return bound, self._harm(labels, pred_v, pred_r), own

    def answers(self, candidate: Candidate) -> bytes:
        """The candidate's top-1 answers on the selection part, as a key: two candidates
        with the same key are not both sent to certification."""
        self.outcome.scored.append(Scored(candidate.name, "selection", self.split.selection))
        return self._top1(candidate.result_key)[self.rows["selection"]].tobytes()

    def _harm(self, labels: np.ndarray, pred_v: np.ndarray, pred_r: np.ndarray
              ) -> tuple[BreedHarm, ...]:  # fmt: skip
        cfg = self.outcome.config
        if cfg.guard_breeds is None:
            return ()
        return breeds_hurt(labels, pred_v, pred_r, self.class_names, cfg.guard_breeds,
                           cfg.max_drop, cfg.relative, cfg.confidence)


def breeds_hurt(labels: np.ndarray, pred_variant: np.ndarray, pred_reference: np.ndarray,
                class_names: Sequence[str], guarded: Sequence[int], max_drop: float,
                relative: bool = False, confidence: float = 0.95) -> tuple[BreedHarm, ...]:
    """The guarded breeds (all when `guarded` is empty) whose sensitivity change has a
    paired interval (petq.stats.per_class_changes, the one Compare shows)
    entirely below -max_drop (relative: -max_drop x the breed's reference sensitivity)."""
    from petq.stats import per_class_changes

    wanted = set(guarded) or set(range(len(class_names)))
    harms = []
    for change in per_class_changes(labels, pred_variant, pred_reference, len(class_names),
                                    level=confidence):
        limit = max_drop * (change.reference_recall if relative else 1.0)
        if change.class_index in wanted and change.high < -limit:
            harms.append(BreedHarm(class_names[change.class_index], change.n,
                                   change.difference, change.high))
    return tuple(harms)


def _g_mean(labels: np.ndarray, right: np.ndarray) -> float:
    """G-Mean of one model from its per-image correctness (petq.evaluate's definition)."""
    recalls = []
    for c in np.unique(labels):
        recalls.append(float(right[labels == c].mean()))
    if not recalls or min(recalls) == 0:
        return 0.0
    return float(np.exp(np.mean(np.log(recalls))))


# ---------------------------------------------------------------- the search


def tune(ws, config: TuneConfig, engine: Engine = Engine(),
         progress: Progress | None = None) -> TuneOutcome:
    """Search, select and certify (the module docstring has the protocol)."""
    start = time.perf_counter()
    # every candidate is held against the FP32 .tflite (a float .tflite source: that file)
    reference = VariantSpec.fp32()
    outcome = TuneOutcome(config=config, model=str(ws.model_path), dataset=str(ws.dataset.root),
                          reference=reference.name)

    def say(line: str, candidate: Candidate | None = None) -> None:
        if progress is not None:
            progress(outcome, candidate, line)

    plan = first_candidates(config.objective)
    groups = sorted({group_of(s, config.objective) for s in plan})
    # the split comes from the test images themselves (those that decode, in the order a
    # result lists them), so a limit no candidate can meet stops before anything is built
    _, kept = ws.store("test").rows(ws.dataset.test_samples(1.0))
    outcome.split = split_test_images([s.image_id for s in kept],
                                      [ws.label(s) for s in kept],
                                      config.certification_fraction, config.seed,
                                      ws.class_names)
    say(f"test images: {len(outcome.split.selection)} for selection, "
        f"{len(outcome.split.certification)} for certification (seed {config.seed})")
    # the best a variant could do: agree with the reference on every image (G-Mean
    # bounds share this floor: petq.certify.paired_bound)
    n = min(len(outcome.split.selection), len(outcome.split.certification))
    # a reference right on every image is the best case for a relative limit too
    bound, needed = best_case(n, config.max_drop, config.test_confidence,
                              config.relative, 1.0)
    if bound <= -config.max_drop:
        outcome.unreachable = (bound, needed)
        outcome.stopped = "max drop is beyond what the certification part can certify"
        say(outcome.advice()[0])
        outcome.seconds = time.perf_counter() - start
        return outcome
    first_batch = plan[: min(max(engine.batch - 1, 1), config.budget)]
    say(f"building the reference {reference.name}")
    built = _build(ws, [reference, *first_batch], engine)
    ref_result, ref_error = built[0]
    if ref_result is None:
        raise TuneError(f"the reference {reference.name} could not be evaluated: {ref_error}")
    parts = Parts(ws, ref_result.result_key, outcome.split, outcome)
    outcome.reference_selection = parts.metric("selection")
    say(f"{reference.name} {config.metric} on the selection part: "
        f"{outcome.reference_selection:.4f}")
    ready = dict(zip(first_batch, built[1:], strict=True))
    tried: set[VariantSpec] = set()
    tested: dict[bytes, str] = {}  # selection answers of the candidates certified -> name

    def run(queue: list[tuple[VariantSpec, str]]) -> bool:
        """Build and judge the queue in batches; True when the search must stop."""
        queue = [(s, why) for s, why in queue if s not in tried]
        while queue:
            room = config.budget - outcome.built
            if room <= 0:
                outcome.stopped = f"the budget of {config.budget} candidate(s) is spent"
                return True
            size = min(engine.batch, room)
            batch, queue = queue[:size], queue[size:]
            todo = [s for s, _ in batch if s not in ready]
            if todo:
                say(f"building {', '.join(s.name for s in todo)}")
                ready.update(zip(todo, _build(ws, todo, engine), strict=True))
            stop = False
            for spec, why in batch:  # a batch built is judged whole: it counts as built
                tried.add(spec)
                stop = _judge(spec, why, ready.pop(spec), certify=not stop) or stop
            if stop:
                return True
        return False

    def _judge(spec: VariantSpec, why: str, built: tuple[Any, str], certify: bool) -> bool:
        result, error = built
        candidate = Candidate(spec, group_of(spec, config.objective), why)
        outcome.candidates.append(candidate)
        if result is None:
            candidate.error = error
            say(f"{spec.name}: failed: {error}", candidate)
            return False
        candidate.result_key = result.result_key
        candidate.file_size_bytes = result.file_size_bytes
        candidate.latency_ms = result.latency_p50_ms
        candidate.calibration_count = result.calibration_count
        candidate.selection, candidate.selection_harm, candidate.selection_metric = \
            parts.score(candidate, "selection")
        if not candidate.selection.certifies(config.max_drop):
            candidate.state = State.REJECTED
        elif candidate.selection_harm:
            candidate.state = State.GUARDED
        else:
            candidate.state = State.PASSED
        say(f"{spec.name}: selection {change_text(candidate.selection.estimate, config)}, bound "
            f"{change_text(candidate.selection.bound, config)}: {candidate.state.value}", candidate)
        if candidate.state is not State.PASSED or not certify:
            return False
        if outcome.attempts >= config.certify_top:
            outcome.stopped = (f"the {config.certify_top} certification attempt(s) are spent")
            return True
        answers = parts.answers(candidate)
        if answers in tested:  # e.g. float I/O around the same INT8 model: a wasted test
            candidate.state = State.SAME
            candidate.error = f"same selection answers as {tested[answers]}"
            say(f"{spec.name}: {candidate.error}: not certified again", candidate)
            return False
        tested[answers] = spec.name
        outcome.attempts += 1
        candidate.certification, candidate.certification_harm, _ = \
            parts.score(candidate, "certification")
        passed = candidate.certification.certifies(config.max_drop) \
            and not candidate.certification_harm
        candidate.state = State.CERTIFIED if passed else State.UNCERTIFIED
        say(f"{spec.name}: certification {change_text(candidate.certification.estimate, config)}, "
            f"bound {change_text(candidate.certification.bound, config)} at "
            f"{config.test_confidence:.1%}: {candidate.state.value}", candidate)
        if passed:
            outcome.chosen = candidate
            outcome.stopped = "a candidate is certified"
            return True
        if outcome.attempts >= config.certify_top:
            outcome.stopped = f"the {config.certify_top} certification attempt(s) are spent"
            return True
        return False

    done = False
    for group in groups:
        members = [(s, "recipe") for s in plan if group_of(s, config.objective) == group]
        if run(members):
            done = True
            break
        static = sorted((c for c in outcome.candidates if c.group == group and c.built
                         and c.spec.recipe.calibrates and c.state is not State.CERTIFIED),
                        key=lambda c: -c.selection.bound)
        bases = []
        for c in static:  # the best spec of each of the best recipes
            if all(b.spec.recipe != c.spec.recipe for b in bases):
                bases.append(c)
        if bases and run(refinements(bases[:REFINED_RECIPES], tried)):
            done = True
            break
        # refinements may change which spec of a recipe is best: keep-N of the best now
        best = max((c for c in outcome.candidates if c.group == group and c.built
                    and c.spec.recipe.calibrates and not c.spec.keep_float),
                   key=lambda c: c.selection.bound, default=None)
        if best is not None and run([(replace(best.spec, keep_float=k), "keep")
                                     for k in KEEP_FLOAT]):
            done = True
            break
    if not done:
        outcome.stopped = "every candidate of the search space was tried"
    outcome.reference_certification = parts.metric("certification") \
        if outcome.attempts else None
    outcome.seconds = time.perf_counter() - start
    return outcome


__all__ = ["DEFAULT_BUDGET", "DEFAULT_CERTIFY_TOP", "METRICS", "OBJECTIVES", "Candidate",
           "Engine", "ImageSplit", "State", "TuneConfig", "TuneError",
           "TuneOutcome", "split_test_images", "tune"]

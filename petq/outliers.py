"""The images that set the calibration ranges: `petq calibration-outliers`.

An outlier image can stretch an activation range and coarsen every other image's
quantization. From the range profile of all trainval (petq.profile; the images it lacks
are calibrated first), this lists the images that hold the most tensors' extremes or
widest ranges, with each tensor they stretch and by how much (the range with the image
against the range without it; the image's own range against the median image's), as a
table and a thumbnail gallery. With `--compare`, each variant is converted and evaluated
again without chosen images (a new calibration source: `-ex<n>-<digest>` in its name and
cache key) and compared with the original by the paired statistics
(`Workspace.paired`), so Compare can show both.

For the dashboard: `gallery` reads who sets the ranges of one static variant's own
calibration set from the recorded profile (never exporting or calibrating in a page),
`twin` and `original` go from a variant to its twin without chosen images and back, and
`exclusion_pairs` finds each twin's original among results.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from petq.cache import write_bytes_atomic
from petq.curve import exclusion_options, read_exclusions, signed_points
from petq.errors import SpecError
from petq.results import Result
from petq.types import RECIPES, VariantSpec


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `petq calibration-outliers`."""
    from petq.console import add_common_options

    p = subparsers.add_parser(
        "calibration-outliers", help="the trainval images that set the calibration ranges, "
                                     "and variants calibrated without chosen images")
    p.add_argument("--recipe", default="tflite-int8",
                   help="the static recipe whose range profile is read (default: %(default)s)")
    p.add_argument("--top", type=int, default=12, help="images in the table and gallery")
    p.add_argument("--compare", nargs="+", metavar="VARIANT",
                   help="static variants (e.g. tflite-int8-0.3) to convert and evaluate again "
                        "without the excluded images, each compared with the original")
    p.add_argument("--exclude-top", type=int, metavar="K",
                   help="with --compare: exclude the K images that stretch the most layers")
    p.add_argument("--results-path", type=Path, default=Path("results"),
                   help="where calibration-outliers.csv, .md and .png go")
    p.add_argument("--test-dataset-fraction", type=float, default=1.0,
                   help="stratified fraction of the test split to evaluate on (0, 1]")
    exclusion_options(p, "the --compare variants' calibration")
    add_common_options(p)
    p.set_defaults(func=run_outliers)


def run_outliers(args: argparse.Namespace) -> int:
    """`petq calibration-outliers`: the profile of all trainval, its outliers, and with
    --compare the variants without the excluded images against their originals."""
    from petq.console import StageBars, open_workspace
    from petq.profile import outliers

    if args.top < 1:
        raise SpecError(f"--top must be at least 1, got {args.top}")
    if args.recipe not in RECIPES or not RECIPES[args.recipe].calibrates:
        raise SpecError(f"--recipe {args.recipe!r}: expected a static recipe "
                        "(tflite-int8, aeq-wi8-ai8, ...)")
    exclude = read_exclusions(args.exclude_images, args.exclude_file)
    if (exclude or args.exclude_top) and not args.compare:
        raise SpecError("--exclude-images, --exclude-file and --exclude-top need --compare "
                        "(the variants to calibrate again without those images)")
    compare = [VariantSpec.from_name(name) for name in args.compare or []]
    for spec in compare:
        if not spec.recipe.calibrates:
            raise SpecError(f"--compare {spec.name}: not a calibrated variant")
    ws = open_workspace(args)
    spec = VariantSpec.of(args.recipe, 1.0)
    ids = ws.calibration_ids(spec)
    bars = StageBars()
    try:
        profile = ws.range_profile(spec, ids, lambda stage, done, total: bars(
            "profiling trainval", done, total))
    finally:
        bars.close()
    tensors, images = outliers(profile, ids)
    labels = {s.image_id: ws.class_names[ws.label(s)] for s in ws.dataset.trainval}
    results_path = Path(args.results_path)
    results_path.mkdir(parents=True, exist_ok=True)
    top = images[:args.top]
    write_bytes_atomic(results_path / "calibration-outliers.csv",
                       outliers_csv(tensors, images, labels).encode())
    write_bytes_atomic(results_path / "calibration-outliers.png",
                       gallery_png(ws, top, labels))
    print(f"calibration-outliers: {len(ids)} trainval images ({profile.calibrated} calibrated "
          f"now), {len(tensors)} calibrated tensors; {len(images)} image(s) set a range",
          file=sys.stderr)
    for im in top:
        print(f"  {im.image_id:32s} stretches {im.layers:3d} tensor(s), most x"
              f"{im.largest_stretch:.3f}; widest range of {len(im.widest)}")
    if args.exclude_top:
        exclude = list(dict.fromkeys([*exclude, *(im.image_id for im in
                                                  images[:args.exclude_top])]))
    comparisons = []
    if compare and exclude:
        comparisons = compare_exclusions(ws, compare, exclude, args.test_dataset_fraction)
    write_bytes_atomic(results_path / "calibration-outliers.md",
                       outliers_md(ws, tensors, images[:args.top], labels, profile.calibrated,
                                   len(ids), exclude, comparisons).encode())
    print(f"calibration-outliers: wrote {results_path / 'calibration-outliers.md'}, .csv and "
          ".png", file=sys.stderr)
    return 0


def compare_exclusions(ws, specs: Sequence[VariantSpec], exclude: Sequence[str],
                       test_fraction: float) -> list[tuple[VariantSpec, VariantSpec, Any]]:
    """Each spec and its twin without `exclude`, evaluated, and their paired comparison
    (twin against original)."""
    out = []
    for spec in specs:
        other = twin(spec, exclude)
        before, _ = ws.evaluate(spec, test_fraction)
        without, _ = ws.evaluate(other, test_fraction)
        paired = ws.paired(without.result_key, before.result_key)
        out.append((spec, other, (before, without, paired[0] if paired else None)))
        print(f"  {other.name}: accuracy {without.accuracy:.4f} against {before.accuracy:.4f} "
              f"for {spec.name}", file=sys.stderr)
    return out


def _without(spec: VariantSpec, exclude: Sequence[str]):
    return replace(spec.calibration, exclude=tuple({*spec.calibration.exclude, *exclude}))


def twin(spec: VariantSpec, exclude: Sequence[str]) -> VariantSpec:
    """The spec calibrated without the images `exclude` (besides those it excludes)."""
    return VariantSpec(spec.recipe, _without(spec, exclude), spec.keep_float)


def original(spec: VariantSpec) -> VariantSpec | None:
    """The spec a twin was made from: the same calibration with no image excluded (None
    for a spec that excludes none)."""
    if not spec.calibration.exclude:
        return None
    return VariantSpec(spec.recipe, replace(spec.calibration, exclude=()), spec.keep_float)


def exclusion_pairs(results: Sequence[Result]) -> list[tuple[Result, Result]]:
    """(twin, original) for each result calibrated without chosen images whose original is
    among `results` on the same test set (e.g. one test set's latest results)."""
    by_spec = {(r.spec, r.test_fraction): r for r in results}
    pairs = []
    for r in results:
        made_from = original(r.spec)
        if made_from is not None and (made_from, r.test_fraction) in by_spec:
            pairs.append((r, by_spec[made_from, r.test_fraction]))
    return pairs


@dataclass(frozen=True)
class GalleryImage:
    """One image that sets ranges of a calibration set, as the gallery shows it."""

    image_id: str
    breed: str
    layers: int  # tensors whose range it alone stretches
    largest_stretch: float  # the most it stretches one (range with it / without it)
    largest_tensor: str  # that tensor, as people read it
    widest: int  # tensors where its own range is the widest of the set
    width_vs_median: float  # its widest own range against the median image's (that tensor)
    width_tensor: str


@dataclass(frozen=True)
class Gallery:
    """Who sets the ranges of a static spec's calibration set, read from the range profile:
    `missing` of the set's `images` are not profiled yet (then `top` is empty)."""

    spec: VariantSpec
    images: int
    missing: int
    tensors: int
    top: tuple[GalleryImage, ...]

    @property
    def ready(self) -> bool:
        return self.missing == 0


def gallery(ws, spec: VariantSpec, top: int = 12) -> Gallery:
    """The images that set the ranges of `spec`'s calibration set, at most `top`, from the
    recorded range profile only (`Workspace.known_profile`: never exports nor calibrates;
    a `ProfileConfig` job adds what is missing). SpecError for a spec without a profile."""
    from petq.profile import outliers, short_name

    if not ws.shares_calibration(spec):
        raise SpecError(f"{spec.name}: no range profile; the images that set the ranges are "
                        "read for the static 8-bit converter recipes of a Keras model and the "
                        "AI Edge Quantizer static recipes, without kept layers")
    samples = ws.calibration_samples(spec)
    profile = ws.known_profile(spec)
    if profile is None:
        return Gallery(spec, len(samples), len(samples), 0, ())
    missing = len(samples) - len(profile.profiled(s.image_id for s in samples))
    if missing:  # undecodable images are never profiled: count only the decodable ones
        ids = ws.calibration_ids(spec)
        missing = len(ids) - len(profile.profiled(ids))
    else:
        ids = [s.image_id for s in samples]
    if missing or len(ids) < 2:
        return Gallery(spec, len(ids), missing, 0, ())
    tensors, images = outliers(profile, ids)
    labels = {s.image_id: ws.class_names[ws.label(s)] for s in samples}
    shown = []
    for im in images[:top]:
        stretched, ratio = max(im.stretch.items(), key=lambda kv: kv[1], default=("", 1.0))
        wide, vs = max(im.width_vs_median.items(), key=lambda kv: kv[1], default=("", 1.0))
        shown.append(GalleryImage(im.image_id, labels.get(im.image_id, ""), im.layers, ratio,
                                  short_name(stretched) if stretched else "", len(im.widest),
                                  vs, short_name(wide) if wide else ""))
    return Gallery(spec, len(ids), 0, len(tensors), tuple(shown))


def outliers_csv(tensors, images, labels: dict[str, str]) -> str:
    """One row per (image, tensor) where the image holds an extreme of the tensor's range
    or its widest range: how much the image stretches it and its width against the
    median image's."""
    from petq.profile import short_name

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image_id", "breed", "rank", "tensors_stretched", "tensor", "holds",
                     "stretch", "width_vs_median", "range_low", "range_high",
                     "median_image_low", "median_image_high"])
    by_name = {t.name: t for t in tensors}
    for rank, im in enumerate(images, 1):
        for name in dict.fromkeys([*im.stretch, *im.widest]):
            t = by_name[name]
            holds = "+".join(h for h, who in (("min", t.low_image), ("max", t.high_image),
                                              ("widest", t.widest)) if who == im.image_id)
            writer.writerow([im.image_id, labels.get(im.image_id, ""), rank, im.layers,
                             short_name(name, 200), holds,
                             f"{im.stretch.get(name, 1.0):.4f}",
                             f"{im.width_vs_median.get(name, math.nan):.4f}",
                             f"{t.low:.6g}", f"{t.high:.6g}", f"{t.median_low:.6g}",
                             f"{t.median_high:.6g}"])
    return buffer.getvalue()


def outliers_md(ws, tensors, top, labels, calibrated: int, total: int,
                exclude: Sequence[str], comparisons) -> str:
    from petq.profile import short_name

    lines = ["# The images that set the calibration ranges", "",
             f"All {total} trainval images of `{ws.dataset.root}` through the calibrator of "
             f"`{ws.model_path.name}` ({calibrated} calibrated for this report, the rest read "
             "from the range profile). A tensor's calibrated range is the minimum and maximum "
             "over the calibration set, so the image holding an extreme alone sets that end; "
             "**stretch** is the range with the image against the range without it (how much "
             "coarser every other image's quantization step is because of it); **x median** is "
             "the image's own range against the median image's.", "",
             "| rank | image | breed | tensors stretched | largest stretch (tensor) | "
             "widest range of |",
             "|---|---|---|---|---|---|"]
    for rank, im in enumerate(top, 1):
        name, ratio = max(im.stretch.items(), key=lambda kv: kv[1], default=("", 1.0))
        lines.append(f"| {rank} | {im.image_id} | {labels.get(im.image_id, '')} | "
                     f"{im.layers} | x{ratio:.3f} ({short_name(name)}) | {len(im.widest)} |")
    widest = sorted(tensors, key=lambda t: -max(t.stretch.values(), default=1.0))[:15]
    lines += ["", "## Tensors whose range one image stretches most", "",
              "| tensor | range | median image's range | held by (min / max) | stretch |",
              "|---|---|---|---|---|"]
    for t in widest:
        lines.append(f"| {short_name(t.name)} | {t.low:.4g} to {t.high:.4g} | "
                     f"{t.median_low:.4g} to {t.median_high:.4g} | {t.low_image} / "
                     f"{t.high_image} | x{max(t.stretch.values(), default=1.0):.3f} |")
    if exclude:
        lines += ["", f"## Calibrated without {len(exclude)} image(s)", "",
                  f"Excluded: {', '.join(exclude)}.", "",
                  "| variant | without them | images left out of its set | accuracy | without | "
                  "Δ accuracy (95% CI) | McNemar b/c, p |", "|---|---|---|---|---|---|---|"]
        for spec, twin, (original, without, c) in comparisons:
            removed = (f"{original.calibration_count - without.calibration_count} of "
                       f"{original.calibration_count}")
            if c is None:
                lines.append(f"| {spec.name} | {twin.name} | {removed} | "
                             f"{original.accuracy:.4f} | {without.accuracy:.4f} | "
                             "(different test images) | |")
                continue
            d = c.accuracy_difference
            lines.append(f"| {spec.name} | {twin.name} | {removed} | {original.accuracy:.4f} | "
                         f"{without.accuracy:.4f} | {signed_points(d.estimate)} "
                         f"({100 * d.low:+.1f} to {100 * d.high:+.1f}) | "
                         f"{c.mcnemar.b}/{c.mcnemar.c}, "
                         f"{c.mcnemar.p_value:.2g} |")
        lines += ["", "Both variants are in the cache: Compare shows them side by side."]
    return "\n".join(lines) + "\n"


def gallery_png(ws, images, labels: dict[str, str], columns: int = 4) -> bytes:
    """The outlier images as thumbnails, each captioned with its id, breed and what it
    stretches."""
    import numpy as np
    from matplotlib.figure import Figure

    from petq.profile import short_name

    store = ws.store("trainval")
    n = max(1, len(images))
    rows = math.ceil(n / columns)
    fig = Figure(figsize=(3.2 * columns, 3.4 * rows), dpi=90)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, im in zip(axes, images, strict=False):
        ax.imshow(np.asarray(store.pixels[store.index[im.image_id]]))
        name, ratio = max(im.stretch.items(), key=lambda kv: kv[1], default=("", 1.0))
        ax.set_title(f"{im.image_id} ({labels.get(im.image_id, '')})\n{im.layers} tensor(s), "
                     f"most x{ratio:.3f}\n{short_name(name, 30)}", fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()

"""Calibration curves: how many calibration images a static recipe needs.

"How many calibration images do I need, and does the choice matter?" `petq
calibration-curve` answers it for one model: each static recipe calibrated on N
trainval images (stratified when N holds every breed, else a plain seeded pick), once
per seed, for each size N, and once on all of trainval; every cell evaluated on the same
test images. Each cell is compared with calibration on all of trainval by the paired
statistics (`Workspace.paired`: McNemar's exact test, paired bootstrap intervals), and
the recommendation is the smallest size from which on no size has a seed significantly
worse than all of trainval (McNemar p < 0.05 with more images lost than won), naming
each size's worst seed and what it cost. "Not significantly worse" is not "as good":
the report shows each worst seed's interval, so a reader sees how much it may lose.

The cells run on the sweep engine (`run_cells`, the one call into it: a local process
pool, serial, or Ray). Before that, the images of every cell are put in the range
profile once (petq.profile: each image calibrated once, ever), so no worker calibrates
an image another has, and a second curve with new seeds calibrates only images never
profiled before.

`--exclude-images`/`--exclude-file` leave chosen images out of every cell (a new
calibration source: `-ex<n>-<digest>` in the names); petq.outliers finds such images.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from petq.cache import write_bytes_atomic, write_json_atomic
from petq.errors import SpecError
from petq.results import Result
from petq.stats import PairedComparison
from petq.types import (
    CURVE_ALL,
    DEFAULT_CURVE_SEEDS,
    DEFAULT_CURVE_SIZES,
    CurveConfig,
    VariantSpec,
)

ALL = CURVE_ALL
DEFAULT_SIZES = DEFAULT_CURVE_SIZES
DEFAULT_SEEDS = DEFAULT_CURVE_SEEDS
LEVEL = 0.95  # the paired comparisons' level: significant at p < 0.05
CURVE_COLUMNS = (
    "recipe", "size", "seed", "variant", "calibration_images", "status", "accuracy", "g_mean",
    "accuracy_difference", "accuracy_difference_low", "accuracy_difference_high",
    "g_mean_difference", "mcnemar_b", "mcnemar_c", "mcnemar_p", "significantly_worse",
    "result_key", "error",
)


# ---------------------------------------------------------------- the grid


def curve_specs(recipes: Sequence[str], sizes: Sequence[int | str], seeds: Sequence[int],
                trainval: int, exclude: Sequence[str] = ()) -> list[VariantSpec]:
    """Every cell: each recipe x each numeric size x each seed, and each recipe on all of
    trainval (fraction 1, one cell). Sizes must not exceed `trainval` images."""
    checked = CurveConfig(recipes=tuple(recipes), seeds=tuple(seeds))  # the one set of rules
    recipes, seeds = checked.recipes, checked.seeds
    counts = [s for s in sizes if s != ALL]
    too_many = [n for n in counts if n > trainval]
    if too_many:
        raise SpecError(f"calibration size {too_many[0]} is more than trainval's {trainval} "
                        f"images (use `{ALL}`)")
    specs = []
    for key in recipes:
        specs += [VariantSpec.of(key, count=n, seed=s, exclude=tuple(exclude))
                  for n in counts for s in seeds]
        specs.append(VariantSpec.of(key, 1.0, exclude=tuple(exclude)))
    return list(dict.fromkeys(specs))


def run_cells(model_path: Path | str, dataset_root: Path | str, cache_root: Path | str,
              specs: Sequence[VariantSpec], test_fraction: float = 1.0, **options: Any):
    """The cells on the sweep engine (`options`: its backend, address, workers, progress,
    threads, preprocessing, max_retries, log_dir). The one place this module runs
    variants, so it can be pointed at another engine."""
    from petq.sweep import run_sweep

    return run_sweep(model_path, dataset_root, cache_root, specs, test_fraction, **options)


def profile_cells(ws, specs: Sequence[VariantSpec], progress=None) -> dict[str, tuple[int, int]]:
    """Put every cell's calibration images in its recipe's range profile, each image once;
    {recipe: (images calibrated now, images the cells use)}. Cells that cannot go through
    a profile are left to their own conversion."""
    done: dict[str, tuple[int, int]] = {}
    by_recipe: dict[str, list[VariantSpec]] = {}
    for spec in specs:
        if ws.shares_calibration(spec):
            by_recipe.setdefault(spec.recipe.key, []).append(spec)
    for key, group in by_recipe.items():
        ids = list(dict.fromkeys(i for spec in group for i in ws.calibration_ids(spec)))
        profile = ws.range_profile(group[0])
        before = profile.calibrated
        ws.range_profile(group[0], ids, progress)
        done[key] = (profile.calibrated - before, len(ids))
    return done


# ---------------------------------------------------------------- the answer


@dataclass(frozen=True)
class CurvePoint:
    """One cell of the curve and its paired comparison with all of trainval."""

    spec: VariantSpec
    size: int | str  # images asked for, or ALL
    result: Result | None
    error: str = ""
    comparison: PairedComparison | None = None  # this cell against the recipe's ALL cell

    @property
    def worse(self) -> bool:
        """Significantly worse than all of trainval: McNemar p < 0.05, more lost than won."""
        c = self.comparison
        return bool(c and c.significant and c.mcnemar.b > c.mcnemar.c)

    def row(self) -> dict[str, Any]:
        r, c = self.result, self.comparison
        return {
            "recipe": self.spec.recipe.key, "size": self.size,
            "seed": self.spec.seed if self.size != ALL else "",
            "variant": self.spec.name,
            "calibration_images": r.calibration_count if r else "",
            "status": "ok" if r else "failed",
            "accuracy": r.accuracy if r else "", "g_mean": r.g_mean if r else "",
            "accuracy_difference": c.accuracy_difference.estimate if c else "",
            "accuracy_difference_low": c.accuracy_difference.low if c else "",
            "accuracy_difference_high": c.accuracy_difference.high if c else "",
            "g_mean_difference": c.g_mean_difference.estimate if c else "",
            "mcnemar_b": c.mcnemar.b if c else "", "mcnemar_c": c.mcnemar.c if c else "",
            "mcnemar_p": c.mcnemar.p_value if c else "",
            "significantly_worse": self.worse if c else "",
            "result_key": r.result_key if r else "", "error": self.error,
        }


@dataclass(frozen=True)
class SizeSummary:
    """One recipe at one size, over its seeds."""

    recipe: str
    size: int | str
    points: tuple[CurvePoint, ...]

    @property
    def ok(self) -> list[CurvePoint]:
        return [p for p in self.points if p.result is not None]

    @property
    def worst(self) -> CurvePoint | None:
        """The seed with the lowest accuracy (then the lowest G-Mean)."""
        ok = self.ok
        return min(ok, key=lambda p: (p.result.accuracy, p.result.g_mean)) if ok else None

    @property
    def passes(self) -> bool:
        """Every seed has a result and none is significantly worse than all of trainval."""
        return bool(self.points) and len(self.ok) == len(self.points) and all(
            p.comparison is not None and not p.worse for p in self.points)

    def spread(self, metric: str) -> tuple[float, float, float]:
        values = [getattr(p.result, metric) for p in self.ok]
        if not values:
            return (math.nan,) * 3
        return min(values), sum(values) / len(values), max(values)


@dataclass(frozen=True)
class Recommendation:
    recipe: str
    size: int | str | None  # None: no size passes (not even all of trainval's cell ran)
    reason: str


def summarize(ws, cells) -> tuple[list[CurvePoint], list[SizeSummary], list[Recommendation]]:
    """Points compared with their recipe's all-of-trainval cell, sizes, recommendations."""
    reference: dict[str, Result] = {}
    for cell in cells:
        if cell.spec.fraction == 1.0 and cell.result is not None:
            reference[cell.spec.recipe.key] = cell.result
    points = []
    for cell in cells:
        size: int | str = ALL if cell.spec.fraction == 1.0 else cell.spec.calibration.count
        comparison = None
        ref = reference.get(cell.spec.recipe.key)
        if cell.result is not None and ref is not None and size != ALL:
            paired = ws.paired(cell.result.result_key, ref.result_key)
            comparison = paired[0] if paired else None
        points.append(CurvePoint(cell.spec, size, cell.result, cell.error or "", comparison))
    sizes: list[SizeSummary] = []
    for recipe in dict.fromkeys(p.spec.recipe.key for p in points):
        mine = [p for p in points if p.spec.recipe.key == recipe]
        for size in dict.fromkeys(p.size for p in mine):
            sizes.append(SizeSummary(recipe, size, tuple(p for p in mine if p.size == size)))
    return points, sizes, recommend(sizes, set(reference))


def recommend(sizes: Sequence[SizeSummary], referenced: set[str]) -> list[Recommendation]:
    """Per recipe, the smallest size from which on every size passes (`SizeSummary.passes`);
    `referenced`: the recipes whose all-of-trainval cell has a result."""
    recommendations = []
    for recipe in dict.fromkeys(s.recipe for s in sizes):
        numeric = [s for s in sizes if s.recipe == recipe and s.size != ALL]
        if recipe not in referenced:
            recommendations.append(Recommendation(recipe, None, "calibration on all of "
                                                  "trainval failed: nothing to compare with"))
            continue
        chosen = next((summary for i, summary in enumerate(numeric)
                       if all(s.passes for s in numeric[i:])), None)
        if chosen is None:
            recommendations.append(Recommendation(
                recipe, ALL, "every size tried has a seed significantly worse than all of "
                "trainval (or a failed cell) at or above it: calibrate on all of trainval"))
            continue
        worst = chosen.worst
        d = worst.comparison.accuracy_difference
        recommendations.append(Recommendation(
            recipe, chosen.size,
            f"{chosen.size} images: from this size on, no seed is significantly worse "
            f"than all of trainval; the worst seed ({worst.spec.seed}) costs "
            f"{signed_points(d.estimate)} (95% CI {100 * d.low:+.1f} to {100 * d.high:+.1f}, "
            f"McNemar p = {worst.comparison.mcnemar.p_value:.2g})"))
    return recommendations


def signed_points(value: float) -> str:
    return f"{100 * value:+.1f} points"


# ---------------------------------------------------------------- files


def curve_csv(points: Sequence[CurvePoint]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CURVE_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for point in points:
        writer.writerow(point.row())
    return buffer.getvalue()


def curve_png(sizes: Sequence[SizeSummary], trainval: int) -> bytes:
    """Accuracy and G-Mean against calibration images (log scale), per recipe: the seeds'
    range as a band, their mean as a line, each seed as a dot (a cross when significantly
    worse than all of trainval), all of trainval as a dashed line."""
    from matplotlib.figure import Figure  # not pyplot: safe from any thread

    fig = Figure(figsize=(11, 4.6), dpi=100)
    axes = fig.subplots(1, 2)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    recipes = list(dict.fromkeys(s.recipe for s in sizes))
    for ax, metric, label in ((axes[0], "accuracy", "Accuracy"), (axes[1], "g_mean", "G-Mean")):
        for n, recipe in enumerate(recipes):
            colour = colours[n % len(colours)]
            numeric = [s for s in sizes if s.recipe == recipe and s.size != ALL and s.ok]
            xs = [s.size for s in numeric]
            spread = [s.spread(metric) for s in numeric]
            if xs:
                ax.fill_between(xs, [v[0] for v in spread], [v[2] for v in spread],
                                color=colour, alpha=0.2, linewidth=0)
                ax.plot(xs, [v[1] for v in spread], color=colour, marker="", label=recipe)
                for s in numeric:
                    for p in s.ok:
                        ax.plot([s.size], [getattr(p.result, metric)], linestyle="",
                                marker="x" if p.worse else "o", markersize=6 if p.worse else 3,
                                color="black" if p.worse else colour)
            full = [s for s in sizes if s.recipe == recipe and s.size == ALL and s.ok]
            if full:
                ax.axhline(getattr(full[0].ok[0].result, metric), color=colour, linestyle="--",
                           linewidth=1, label=f"{recipe}, all {trainval}")
        ax.set_xscale("log", base=2)
        ticks = sorted({s.size for s in sizes if s.size != ALL})
        if ticks:
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
        ax.set_xlabel("calibration images (log scale)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Calibration curve: seeds' range as a band, x = significantly worse than "
                 "all of trainval", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def curve_md(points: Sequence[CurvePoint], sizes: Sequence[SizeSummary],
             recommendations: Sequence[Recommendation], context: dict[str, Any]) -> str:
    lines = ["# Calibration curve", "",
             f"Model `{context['model']}`, dataset `{context['dataset']}` "
             f"({context['trainval']} trainval images, {context['test_images']} test images); "
             f"seeds {', '.join(str(s) for s in context['seeds'])}. Each size is a stratified "
             "seeded pick of trainval (a plain seeded pick when it is smaller than the number "
             "of breeds); each cell is compared with calibration on all of trainval on the same "
             "test images (McNemar's exact test, 95% paired bootstrap interval).", ""]
    if context.get("exclude"):
        lines += [f"Every cell excludes {len(context['exclude'])} image(s): "
                  f"{', '.join(context['exclude'])}.", ""]
    lines += ["## Recommendation", ""]
    lines += [f"- **{r.recipe}**: {r.reason}." for r in recommendations]
    lines += ["", "\"Not significantly worse\" is not \"as good\": read each worst seed's "
              "interval below for what it may cost.", ""]
    for recipe in dict.fromkeys(s.recipe for s in sizes):
        lines += [f"## {recipe}", "",
                  "| size | seeds | accuracy min / mean / max | G-Mean min / mean / max | "
                  "worst seed | its Δ accuracy vs all (95% CI) | McNemar b/c, p | "
                  "seeds significantly worse |",
                  "|---|---|---|---|---|---|---|---|"]
        for s in (s for s in sizes if s.recipe == recipe):
            acc, gm = s.spread("accuracy"), s.spread("g_mean")
            worst = s.worst
            c = worst.comparison if worst else None
            failed = len(s.points) - len(s.ok)
            lines.append(
                f"| {s.size} | {len(s.ok)}{f' ({failed} failed)' if failed else ''} | "
                f"{_fmt3(acc)} | {_fmt3(gm)} | "
                f"{worst.spec.seed if worst and s.size != ALL else ''} | "
                + (f"{signed_points(c.accuracy_difference.estimate)} "
                   f"({100 * c.accuracy_difference.low:+.1f} to "
                   f"{100 * c.accuracy_difference.high:+.1f}) | "
                   f"{c.mcnemar.b}/{c.mcnemar.c}, {c.mcnemar.p_value:.2g} | " if c else
                   ("reference | | " if s.size == ALL else "| | "))
                + (f"{sum(p.worse for p in s.points)} |" if s.size != ALL else " |"))
        lines.append("")
    failed = [p for p in points if p.result is None]
    if failed:
        lines += ["## Failed cells", ""] + [f"- {p.spec.name}: {p.error}" for p in failed] + [""]
    lines += [f"Range profile: {context['profiled']}.", ""]
    return "\n".join(lines)


def _fmt3(values: tuple[float, float, float]) -> str:
    if any(math.isnan(v) for v in values):
        return ""
    return " / ".join(f"{v:.4f}" for v in values)


# ---------------------------------------------------------------- command line


def read_exclusions(images: Sequence[str] | None, file: Path | None) -> list[str]:
    """`--exclude-images` and the ids in `--exclude-file` (one a line or separated by
    spaces or commas; `#` starts a comment)."""
    ids = list(images or [])
    if file is not None:
        try:
            text = Path(file).read_text()
        except OSError as exc:
            raise SpecError(f"--exclude-file {file}: {exc.strerror or exc}") from None
        for line in text.splitlines():
            ids += line.split("#", 1)[0].replace(",", " ").split()
    return list(dict.fromkeys(ids))


def _engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--test-dataset-fraction", type=float, default=1.0,
                   help="stratified fraction of the test split to evaluate on (0, 1]")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run the cells on Ray: `local`, `auto` or host:port (as petq sweep)")
    p.add_argument("--serial", action="store_true", help="run the cells one by one here")
    p.add_argument("--workers", type=int,
                   help="pool processes (default: one per core); with --ray, tasks in flight")


def exclusion_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--exclude-images", nargs="+", metavar="ID",
                   help=f"trainval image ids left out of {what}")
    p.add_argument("--exclude-file", type=Path, metavar="PATH",
                   help="a file of image ids to leave out (one a line; # comments)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `petq calibration-curve`."""
    from petq.console import add_common_options

    p = subparsers.add_parser(
        "calibration-curve", help="accuracy and G-Mean against the number of calibration "
                                  "images, per seed, each size compared with all of trainval")
    p.add_argument("--recipes", nargs="+", default=["tflite-int8"],
                   help="static recipes (default: tflite-int8)")
    p.add_argument("--sizes", nargs="+",
                   help="numbers of calibration images, and `all` (always added; default: "
                        f"{' '.join(DEFAULT_SIZES)}, those trainval holds)")
    p.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS),
                   help="calibration seeds per size (default: %(default)s)")
    p.add_argument("--results-path", type=Path, default=Path("results"),
                   help="where calibration-curve.csv, .png and .md go")
    _engine_options(p)
    exclusion_options(p, "every cell's calibration")
    add_common_options(p)
    p.set_defaults(func=run_curve)



CURVE_FILES = ("calibration-curve.csv", "calibration-curve.png", "calibration-curve.md")


@dataclass(frozen=True)
class CurveRun:
    """What `calibration_curve` computed and wrote."""

    points: list[CurvePoint]
    recommendations: list[Recommendation]
    profiled: str  # what the range profile calibrated now and what it already held
    written: list[Path]


def cells_of(ws, config: CurveConfig) -> list[VariantSpec]:
    """The curve's cells on this workspace; SpecError for a size beyond trainval, an
    excluded id trainval lacks and the like, before any work."""
    trainval = len(ws.dataset.trainval)
    specs = curve_specs(config.recipes, config.size_list(trainval), config.seeds, trainval,
                        config.exclude)
    for spec in specs:
        ws.calibration_samples(spec)
    return specs


def start_curve_job(ws, config: CurveConfig, test_fraction: float = 1.0,
                    ray: str | None = None) -> str:
    """Check the curve against the workspace (`cells_of`), then start it as a background
    job (petq.jobs, kind CURVE); return the job id."""
    from petq.jobs import start_task_job

    cells_of(ws, config)
    return start_task_job(ws, config, test_fraction=test_fraction, ray=ray)


def calibration_curve(ws, config: CurveConfig, results_path: Path | str,
                      test_fraction: float = 1.0, *, backend: str = "local",
                      address: str | None = None, workers: int | None = None,
                      threads: int | None = None, progress=None, profile_progress=None,
                      log_dir: Path | None = None) -> CurveRun:
    """Run the curve's cells on the sweep engine and write calibration-curve.csv, .png,
    .md and calibration-curve-config.json into `results_path`. `progress(status, cell)`
    follows the sweep (petq.sweep); `profile_progress(stage, done, total)` the range
    profile. The one body of `petq calibration-curve` and the dashboard's curve jobs."""
    trainval = len(ws.dataset.trainval)
    sizes = config.size_list(trainval)
    specs = cells_of(ws, config)
    todo = [s for s in specs if ws.cached_result(s, test_fraction) is None]
    profiled = profile_cells(ws, todo, profile_progress)
    profiled_text = "; ".join(f"{recipe}: {new} image(s) calibrated now, {used - new} of "
                              f"{used} read from the profile"
                              for recipe, (new, used) in profiled.items()) or "none used"
    cells = run_cells(ws.model_path, ws.dataset.root, ws.cache.root, specs, test_fraction,
                      backend=backend, address=address, workers=workers, progress=progress,
                      threads=threads, preprocessing=ws.contract.preprocessing,
                      log_dir=log_dir)
    points, summaries, recommendations = summarize(ws, cells)
    context = {"model": str(ws.model_path), "dataset": str(ws.dataset.root),
               "trainval": trainval,
               "test_images": len(ws.dataset.test_samples(test_fraction)),
               "seeds": list(config.seeds), "exclude": list(config.exclude),
               "profiled": profiled_text}
    root = Path(results_path)
    root.mkdir(parents=True, exist_ok=True)
    csv_path, png_path, md_path = (root / name for name in CURVE_FILES)
    write_bytes_atomic(csv_path, curve_csv(points).encode())
    write_bytes_atomic(png_path, curve_png(summaries, trainval))
    write_bytes_atomic(md_path, curve_md(points, summaries, recommendations, context).encode())
    write_json_atomic(root / "calibration-curve-config.json", {
        **context, "recipes": list(config.recipes), "sizes": [str(s) for s in sizes],
        "test_dataset_fraction": test_fraction, "backend": backend, "ray": address,
        "workers": workers, "threads": threads, "cells": [s.name for s in specs]})
    return CurveRun(points, recommendations, profiled_text, [csv_path, png_path, md_path])


@dataclass(frozen=True)
class CurveOutputs:
    """What a curve wrote, read back for a page: the csv's rows (CURVE_COLUMNS) and the
    recommendation lines of its md."""

    folder: Path
    table: Any  # pandas.DataFrame of calibration-curve.csv
    recommendations: tuple[str, ...]


def read_outputs(folder: Path | str) -> CurveOutputs | None:
    """The curve written into `folder` (`calibration_curve`), or None when it is not
    there (yet). Nothing is recomputed."""
    import pandas as pd

    folder = Path(folder)
    csv_path, _, md_path = (folder / name for name in CURVE_FILES)
    try:
        table = pd.read_csv(csv_path, dtype={"size": str})
        md = md_path.read_text()
    except (OSError, ValueError):
        return None
    section = md.split("## Recommendation", 1)[-1].strip().split("\n\n", 1)[0]
    recommendations = tuple(line.removeprefix("- ").replace("**", "")
                            for line in section.splitlines() if line.startswith("- "))
    return CurveOutputs(folder, table, recommendations)


def run_curve(args: argparse.Namespace) -> int:
    """`petq calibration-curve`: exit status 1 when a cell failed."""
    from petq.console import StageBars, open_workspace
    from petq.sweep import SweepError, check_writable, task_threads

    if args.ray and args.serial:
        raise SweepError("--serial and --ray exclude each other")
    backend = "ray" if args.ray else "serial" if args.serial else "local"
    config = CurveConfig(recipes=tuple(args.recipes),
                         sizes=tuple(args.sizes) if args.sizes else None,
                         seeds=tuple(args.seeds),
                         exclude=tuple(read_exclusions(args.exclude_images,
                                                       args.exclude_file)))
    threads = task_threads(backend, args.workers, args.threads)
    ws = open_workspace(args)
    check_writable(ws.cache.root)

    def line(cell, n: int, total: int) -> None:
        from petq.console import result_line

        text = result_line(cell.result) if cell.ok else f"failed: {cell.error}"
        print(f"[{n}/{total}] {cell.spec.name:28s} {text}"
              + ("  (cached)" if cell.state == "cached" else ""), file=sys.stdout, flush=True)

    def progress(status, cell) -> None:
        if cell is not None and cell.finished:
            line(cell, status.count("done", "cached", "failed"), status.total)
        elif cell is None and status.finished is None:  # the start: what the cache holds
            print(f"calibration-curve: {status.total} cell(s)", file=sys.stderr, flush=True)
            for n, cached in enumerate((c for c in status.cells if c.state == "cached"), 1):
                line(cached, n, status.total)

    results_path = Path(args.results_path)
    bars = StageBars()
    try:
        run = calibration_curve(
            ws, config, results_path, args.test_dataset_fraction, backend=backend,
            address=None if args.ray in (None, "local") else args.ray, workers=args.workers,
            threads=threads, progress=progress,
            profile_progress=lambda stage, done, total: bars(
                "profiling calibration images", done, total),
            log_dir=results_path / "logs" if backend == "local" else None)
    finally:
        bars.close()
    print(f"calibration-curve: range profile: {run.profiled}", file=sys.stderr)
    for r in run.recommendations:
        print(f"calibration-curve: {r.recipe}: {r.reason}", file=sys.stderr)
    print(f"calibration-curve: wrote {results_path / 'calibration-curve.md'}, .csv and .png",
          file=sys.stderr)
    return 1 if any(p.result is None for p in run.points) else 0

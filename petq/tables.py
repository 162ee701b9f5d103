"""The dashboard's table layer: the tables its pages show (variants with deltas and paired
statistics, per-breed changes, seed spread, the plan of a job), their columns' labels and
formats, and the small texts around them. Their Plotly figures are in petq.figures; the
statistics themselves in petq.stats.

Pure functions over `Workspace.results()` (`Result`) and `Workspace.details()`
(`Details`) records, so the dashboard pages only lay them out. Column labels and
number formats come from `petq.results.METRICS` through `columns_for`. No streamlit here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from petq import stats
from petq.errors import PetqError, SpecError
from petq.evaluate import agreement
from petq.jobs import PlanItem
from petq.results import METRICS, Details, Result
from petq.types import DEFAULT_CALIBRATION_SEED, RECIPES, Backend, Recipe, VariantSpec

LEVEL = 0.95  # confidence level of every interval shown; McNemar's test at 1 - LEVEL
RESAMPLES = 2000  # bootstrap resamples of the paired accuracy interval
BACKEND_LABELS = {Backend.KERAS: "Keras", Backend.TFLITE: "TFLite converter",
                  Backend.AEQ: "AI Edge Quantizer", Backend.SOURCE: "The .tflite as it is"}
MAX_SEEDS = 20  # calibration seeds one request may ask for
SIDE_BY_SIDE_CLASSES = 16  # confusion matrices with more classes need a page's full width


# ---------------------------------------------------------------- columns


@dataclass(frozen=True)
class Column:
    """How a table column is shown: its label, a printf format for numbers (None: text)
    and a tooltip. `petq.results.METRICS` is the source for every metric column."""

    label: str
    format: str | None = None
    help: str = ""


_SPEC = re.compile(r"^(?P<comma>,)?(?:\.(?P<digits>\d+))?(?P<kind>[dfe])$")


def printf_format(fmt: str, signed: bool = False) -> str:
    """A Python format spec from the registry (`.4f`, `,d`) as a printf format for
    `st.column_config.NumberColumn` (`%.4f`, `%,d`); `signed` adds `+` for deltas."""
    m = _SPEC.match(fmt)
    if not m:
        raise ValueError(f"no printf equivalent for the format {fmt!r}")
    return ("%" + (m["comma"] or "") + ("+" if signed else "")
            + (f".{m['digits']}" if m["digits"] else "") + m["kind"])


COLUMNS: dict[str, Column] = {
    "variant": Column("Variant"),
    "scheme": Column("Scheme", help="What is quantized, AI Edge Quantizer style: wi8_ai8 = "
                                     "int8 weights and int8 activations, wf16_afp32 = float16 "
                                     "weights and float32 activations"),
    "backend": Column("Backend", help="What made the variant"),
    "recipe": Column("Recipe"),
    "fraction": Column("Calibration fraction", "%.2f"),
    "test_fraction": Column("Test fraction", "%.2f"),
    "n_images": Column("Test images", "%,d"),
    "calibration_count": Column("Calibration images", "%,d"),
    "accuracy_ci": Column(f"Δ accuracy [{LEVEL:.0%} CI]",
                          help="Accuracy minus the reference's, with a paired bootstrap "
                               f"interval ({RESAMPLES} resamples of the test images)"),
    "mcnemar_bc": Column("b / c", help="McNemar's counts: b = images the reference gets "
                                      "right and the variant wrong, c = the reverse"),
    "mcnemar_p": Column("McNemar p", "%.3f",
                        help="Exact McNemar test on the images where exactly one is right"),
    "significant": Column(f"Significant ({1 - LEVEL:.0%})",
                          help=f"✱: McNemar p < {1 - LEVEL:g}: the accuracy difference from "
                               "the reference is unlikely to be chance"),
    "keep_float": Column("Kept in float", "%d", help="Layers with the largest quantization "
                                                    "error kept in float (selective)"),
    "breed": Column("Breed"),
    "n": Column("Test images", "%d"),
    "reference_recall": Column("Reference sensitivity", "%.3f"),
    "variant_recall": Column("Variant sensitivity", "%.3f"),
    "difference": Column("Δ sensitivity", "%+.3f"),
    "difference_ci": Column(f"Δ sensitivity [{LEVEL:.0%} CI]",
                            help="the breed's exact McNemar test inverted: a paired "
                                 "interval on its test images"),
    "b": Column("b", "%d", help="images of the breed the reference gets right, the variant "
                                "wrong"),
    "c": Column("c", "%d", help="the reverse"),
    "p_value": Column("McNemar p", "%.3f"),
    "p_adjusted": Column("Holm-adjusted p", "%.3f",
                         help="Adjusted over all breeds: answers 'is any breed hurt at all'"),
    "seeds": Column("Seeds", "%d"),
    "status": Column("Status", help="cached, running (in a job), to do, or skipped"),
    "original": Column("Calibrated with them", help="the same variant, its calibration set "
                                                     "whole"),
    "excluded": Column("Images left out", "%d", help="calibration images the variant was "
                                                     "calibrated without"),
    "original_accuracy": Column("Accuracy with them", "%.4f"),
    "reason": Column("Why skipped"),
}
_SPREAD = {"mean": "mean", "std": "std over seeds", "low": f"{LEVEL:.0%} CI low",
           "high": f"{LEVEL:.0%} CI high", "min": "min", "max": "max"}


def column(key: str) -> Column:
    """The label, format and help of one table column: a metric (`accuracy`), its delta
    (`accuracy_delta`), a seed-spread statistic (`accuracy_mean`) or a descriptive one."""
    if key in METRICS:
        m = METRICS[key]
        return Column(m.label, printf_format(m.fmt), m.help)
    base, _, suffix = key.rpartition("_")
    if base in METRICS:
        m = METRICS[base]
        if suffix == "delta":
            return Column(f"Δ {m.label}", printf_format(m.fmt, signed=True),
                          f"{m.label} minus the reference's")
        if suffix in _SPREAD:
            return Column(f"{m.label} {_SPREAD[suffix]}", printf_format(m.fmt), m.help)
    return COLUMNS.get(key, Column(key))


def columns_for(keys: Iterable[str]) -> dict[str, Column]:
    """`column(key)` for each column of a table (for `st.column_config`)."""
    return {key: column(key) for key in keys}


# ---------------------------------------------------------------- results


def label(metric: str) -> str:
    return column(metric).label


def latest_per_variant(results: Sequence[Result], threads: int | None = None) -> list[Result]:
    """One result per variant name, in the input order: the most recent one, and with
    `threads`, the most recent one timed with that many threads when there is one."""
    def rank(result: Result) -> tuple[bool, float]:
        return (threads is None or result.threads == threads, result.created)

    best: dict[str, Result] = {}
    for result in results:
        kept = best.get(result.variant)
        if kept is None or rank(result) >= rank(kept):
            best[result.variant] = result
    order = list(dict.fromkeys(r.variant for r in results))
    return [best[name] for name in order]


def test_fractions(results: Sequence[Result]) -> list[float]:
    """The test-set fractions the results were evaluated on, largest first."""
    return sorted({float(r.test_fraction) for r in results}, reverse=True)


TABLE_METRICS = ("accuracy", "mean_precision", "mean_sensitivity", "g_mean", "top5",
                 "latency_p50_ms", "latency_mean_ms", "latency_p95_ms", "file_size_bytes",
                 "compression_ratio", "agreement")


def comparison_table(
    results: Sequence[Result],
    details_by_key: Mapping[str, Details],
    reference_variant: str | None = None,
) -> pd.DataFrame:
    """One line per variant: the metrics, compression against FP32, top-1 agreement
    with the reference, and each metric's delta from the reference (`<metric>_delta`).

    Agreement is only computed between results on the same test images (NaN
    otherwise). Without the reference among the results, deltas and agreement are NaN.
    """
    results = latest_per_variant(results)
    columns = ["variant", "backend", "scheme", "description", "result_key", "n_images",
               "test_fraction", "calibration_count", *TABLE_METRICS]
    if not results:
        return pd.DataFrame(columns=columns + [f"{m}_delta" for m in TABLE_METRICS])
    by_name = {r.variant: r for r in results}
    reference = by_name.get(reference_variant) if reference_variant else None
    fp32 = by_name.get(VariantSpec.fp32().name)
    ref_details = details_by_key.get(reference.result_key) if reference else None
    records = []
    for result in results:
        record: dict[str, Any] = {
            "variant": result.variant,
            "backend": BACKEND_LABELS[result.spec.recipe.backend],
            "scheme": result.scheme, "description": result.description,
            "result_key": result.result_key, "n_images": result.n_images,
            "test_fraction": result.test_fraction, "calibration_count": result.calibration_count,
        }
        for metric in TABLE_METRICS:
            record[metric] = result.value(metric)
        size = result.file_size_bytes
        record["compression_ratio"] = (
            fp32.file_size_bytes / size if fp32 and fp32.file_size_bytes and size else math.nan
        )
        details = details_by_key.get(result.result_key)
        if ref_details is not None and details is not None and details.same_images(ref_details):
            record["agreement"] = agreement(details.top1, ref_details.top1)
        else:
            record["agreement"] = math.nan
        records.append(record)
    table = pd.DataFrame.from_records(records).reindex(columns=columns)
    for metric in TABLE_METRICS:
        table[metric] = pd.to_numeric(table[metric], errors="coerce")
    ref_index = table.index[table["variant"] == reference_variant]
    for metric in TABLE_METRICS:
        if len(ref_index):
            table[f"{metric}_delta"] = table[metric] - table.loc[ref_index[0], metric]
        else:
            table[f"{metric}_delta"] = math.nan
    return table


HOME_VIEW = ("variant", "scheme", "backend", "accuracy", "g_mean", "top5", "latency_p50_ms",
             "file_size_bytes", "calibration_count")
COMPARE_VIEW = ("variant", "scheme", "accuracy", "accuracy_ci", "significant", "mcnemar_bc",
                "mcnemar_p", "g_mean", "g_mean_delta", "top5", "mean_precision",
                "mean_sensitivity", "latency_p50_ms", "latency_p50_ms_delta", "latency_p95_ms",
                "file_size_bytes", "compression_ratio", "agreement", "n_images")


def view(table: pd.DataFrame, keys: Sequence[str] = HOME_VIEW,
         paired: pd.DataFrame | None = None) -> pd.DataFrame:
    """The table's columns `keys` (paired statistics joined by variant), variant as index."""
    out = table.set_index("variant")
    if paired is not None:
        out = out.join(paired, how="left")
    return out.reindex(columns=[k for k in keys if k != "variant"])


# ---------------------------------------------------------------- paired statistics


def interval_text(interval: stats.Interval, fmt: str) -> str:
    """`-0.0135 [-0.0270, +0.0000]` in a registry format, signed."""
    def signed(v: float) -> str:
        return "n/a" if math.isnan(v) else format(v, "+" + fmt)

    return f"{signed(interval.estimate)} [{signed(interval.low)}, {signed(interval.high)}]"


def paired_table(comparisons: Mapping[str, stats.PairedComparison | None]) -> pd.DataFrame:
    """One line per variant: Δ accuracy with its interval, McNemar's b/c, p and a mark (✱)
    when significant. A variant mapped to None (the reference itself, or other test
    images) gets empty cells."""
    fmt = METRICS["accuracy"].fmt
    records = []
    for variant, pc in comparisons.items():
        if pc is None:
            records.append({"variant": variant, "accuracy_ci": "", "mcnemar_bc": "",
                            "mcnemar_p": math.nan, "significant": ""})
            continue
        records.append({
            "variant": variant,
            "accuracy_ci": interval_text(pc.accuracy_difference, fmt),
            "mcnemar_bc": f"{pc.mcnemar.b} / {pc.mcnemar.c}",
            "mcnemar_p": pc.mcnemar.p_value,
            "significant": "✱" if pc.significant else "",
        })
    columns = ["accuracy_ci", "mcnemar_bc", "mcnemar_p", "significant"]
    if not records:
        return pd.DataFrame(columns=columns, index=pd.Index([], name="variant"))
    return pd.DataFrame.from_records(records).set_index("variant")[columns]


def exclusion_table(pairs: Sequence[tuple[Result, Result]],
                    comparisons: Mapping[str, stats.PairedComparison | None]) -> pd.DataFrame:
    """One line per variant calibrated without chosen images (`petq.outliers.exclusion_pairs`):
    its original, how many images it left out, both accuracies and the paired comparison
    against the original (`comparisons`, by the twin's name; `paired_table`'s columns)."""
    columns = ["original", "excluded", "accuracy", "original_accuracy", "accuracy_ci",
               "mcnemar_bc", "mcnemar_p", "significant"]
    if not pairs:
        return pd.DataFrame(columns=columns, index=pd.Index([], name="variant"))
    records = [{"variant": twin.variant, "original": original.variant,
                "excluded": original.calibration_count - twin.calibration_count,
                "accuracy": twin.accuracy, "original_accuracy": original.accuracy}
               for twin, original in pairs]
    table = pd.DataFrame.from_records(records).set_index("variant")
    paired = paired_table({twin.variant: comparisons.get(twin.variant) for twin, _ in pairs})
    return table.join(paired)[columns]


BREED_VIEW = ("reference_recall", "variant_recall", "difference_ci", "b", "c", "p_value",
              "p_adjusted")


def breed_table(changes: Sequence[stats.ClassChange], names: Sequence[str]) -> pd.DataFrame:
    """Per breed present in the test images: both sensitivities, the change (variant −
    reference) with its exact paired interval, McNemar's b/c/p, Holm-adjusted p, and
    `hurt` / `helped` when the interval excludes zero, that is when p < 5%
    (`petq.stats.per_class_changes`)."""
    records = [{
        "breed": names[ch.class_index] if ch.class_index < len(names) else str(ch.class_index),
        "n": ch.n, "reference_recall": ch.reference_recall, "variant_recall": ch.variant_recall,
        "difference": ch.difference, "low": ch.low, "high": ch.high,
        "difference_ci": interval_text(stats.Interval(ch.difference, ch.low, ch.high, LEVEL),
                                       ".3f"),
        "b": ch.b, "c": ch.c, "p_value": ch.p_value, "p_adjusted": ch.p_adjusted,
        "hurt": ch.hurt, "helped": ch.helped,
    } for ch in changes]
    columns = ["n", "reference_recall", "variant_recall", "difference", "low", "high",
               "difference_ci", "b", "c", "p_value", "p_adjusted", "hurt", "helped"]
    if not records:
        return pd.DataFrame(columns=columns, index=pd.Index([], name="breed"))
    return pd.DataFrame.from_records(records).set_index("breed")[columns]


def hurt_breeds(changes: pd.DataFrame) -> pd.DataFrame:
    """Breeds whose sensitivity interval lies entirely below zero, worst first."""
    return changes[changes["hurt"].astype(bool)].sort_values("difference", kind="stable")


def most_hurt(changes_by_variant: Mapping[str, pd.DataFrame]) -> str | None:
    """The variant with the most hurt breeds (ties: the larger summed drop), if any."""
    if not changes_by_variant:
        return None

    def badness(item: tuple[str, pd.DataFrame]) -> tuple[int, float]:
        changes = item[1]
        return (int(changes["hurt"].sum()) if len(changes) else 0,
                -float(changes["difference"].clip(upper=0).sum()) if len(changes) else 0.0)

    return max(changes_by_variant.items(), key=badness)[0]


# ---------------------------------------------------------------- calibration seeds


def parse_seeds(text: str) -> tuple[int, ...]:
    """Calibration seeds from `1234`, `1, 2, 3`, `1 2 3` or a range `1-5` (mixed too),
    in order, without repeats. Raises SpecError on anything else."""
    seeds: list[int] = []
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise SpecError(f"seeds: {part!r} is not a seed (a whole number >= 0) or a range "
                            "like 1-5")
        first, last = int(m[1]), int(m[2] or m[1])
        if last < first:
            raise SpecError(f"seeds: the range {part!r} runs backwards")
        if last - first + 1 > MAX_SEEDS:
            raise SpecError(f"seeds: {part!r} asks for {last - first + 1} seeds; at most "
                            f"{MAX_SEEDS} at once")
        seeds.extend(range(first, last + 1))
    seeds = list(dict.fromkeys(seeds))
    if not seeds:
        raise SpecError("seeds: give at least one seed, e.g. 1234 or 1-5")
    if len(seeds) > MAX_SEEDS:
        raise SpecError(f"seeds: {len(seeds)} seeds; at most {MAX_SEEDS} at once")
    return tuple(seeds)


def recipe_groups(tflite_source: bool | None = None) -> dict[str, list[Recipe]]:
    """The registry's recipes by backend label (Keras, TFLite converter, AI Edge
    Quantizer, the .tflite as it is), in registry order. With `tflite_source` known, the
    group the source cannot have goes: Keras for a .tflite file, the file as it is for a
    Keras model (what else a source cannot take is refused with its reason on request)."""
    never = {True: Backend.KERAS, False: Backend.SOURCE}.get(tflite_source)
    groups: dict[str, list[Recipe]] = {label: [] for label in BACKEND_LABELS.values()}
    for recipe in RECIPES.values():
        if recipe.backend is not never:
            groups[BACKEND_LABELS[recipe.backend]].append(recipe)
    return {k: v for k, v in groups.items() if v}


def requested_specs(recipe: str | Recipe, fraction: float | None = None,
                    seeds: Sequence[int] = (), classes: Sequence[int] = ()) -> list[VariantSpec]:
    """The specs one request asks for: one per seed for a fraction, one for breeds, one
    for a recipe that does not calibrate."""
    recipe = RECIPES[recipe] if isinstance(recipe, str) else recipe
    if not recipe.calibrates:
        return [VariantSpec.of(recipe.key)]
    if classes:
        return [VariantSpec.of(recipe.key, classes=tuple(classes))]
    if fraction is None:
        raise SpecError(f"{recipe.key} needs a calibration fraction or breeds")
    return [VariantSpec.of(recipe.key, fraction, seed=s)
            for s in (tuple(seeds) or (DEFAULT_CALIBRATION_SEED,))]


PLAN_METRICS = ("accuracy", "g_mean", "latency_p50_ms", "file_size_bytes", "calibration_count")


def plan_table(tasks: Sequence[PlanItem], cached: Mapping[str, Result]) -> pd.DataFrame:
    """`petq.jobs.plan` entries as a table: status, why skipped, and the figures of those
    already cached (`cached`: variant name -> result)."""
    records = []
    for task in tasks:
        result = cached.get(task.name)
        records.append({"variant": task.name, "status": task.status.value,
                        "reason": task.reason or "",
                        **{m: getattr(result, m) if result else math.nan for m in PLAN_METRICS}})
    columns = ["status", "reason", *PLAN_METRICS]
    if not any(r["reason"] for r in records):  # nothing skipped: no empty column
        columns.remove("reason")
    if not records:
        return pd.DataFrame(columns=columns, index=pd.Index([], name="variant"))
    return pd.DataFrame.from_records(records).set_index("variant")[columns]


def _seed_group(spec: VariantSpec) -> tuple[str, float, int] | None:
    if spec.calibration.kind != "fraction":
        return None
    return (spec.recipe.key, float(spec.fraction), spec.keep_float)


def seed_spread_table(results: Sequence[Result], metric: str = "accuracy",
                      min_seeds: int = 2) -> pd.DataFrame:
    """Per (recipe, calibration fraction) evaluated with at least `min_seeds` seeds: the
    metric's mean, std, t-interval of the mean, min and max over seeds
    (`petq.stats.seed_spread`). Columns `<metric>_mean` etc."""
    groups: dict[tuple[str, float, int], list[Result]] = {}
    for result in latest_per_variant(results):
        key = _seed_group(result.spec)
        if key is not None:
            groups.setdefault(key, []).append(result)
    records = []
    for (recipe, fraction, keep), members in groups.items():
        if len({r.spec.seed for r in members}) < min_seeds:
            continue
        spread = stats.seed_spread([r.value(metric) for r in members], level=LEVEL)
        records.append({
            "recipe": recipe + (f" keep{keep}" if keep else ""), "fraction": fraction,
            "seeds": spread.n, f"{metric}_mean": spread.mean, f"{metric}_std": spread.std,
            f"{metric}_low": spread.low, f"{metric}_high": spread.high,
            f"{metric}_min": spread.min, f"{metric}_max": spread.max,
            "values": tuple(float(r.value(metric)) for r in members),
        })
    columns = ["recipe", "fraction", "seeds"] + [f"{metric}_{s}" for s in _SPREAD] + ["values"]
    table = pd.DataFrame.from_records(records, columns=columns)
    return table.sort_values(["recipe", "fraction"], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------- per class


def per_class_sensitivity(results: Sequence[Result], details_by_key: Mapping[str, Details]
                          ) -> pd.DataFrame:
    """Per-class sensitivity (recall): one column per variant, one line per class."""
    columns = {}
    names: list[str] = []
    for result in latest_per_variant(results):
        details = details_by_key.get(result.result_key)
        if details is None:
            continue
        names = list(details.class_names)
        columns[result.variant] = details.per_class_sensitivity.tolist()
    return pd.DataFrame(columns, index=pd.Index(names, name="class"))


def per_class_delta(sensitivity: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Each variant's per-class sensitivity minus the reference's (negative: lower)."""
    if reference not in sensitivity.columns:
        return pd.DataFrame(index=sensitivity.index)
    return sensitivity.sub(sensitivity[reference], axis=0).drop(columns=[reference])


def confusion_difference(details: Details, reference: Details) -> np.ndarray:
    """Confusion-matrix counts of a variant minus those of the reference.

    Both must come from the same test images; otherwise the counts do not compare.
    """
    if not details.same_images(reference):
        raise ValueError("the two results were evaluated on different test images")
    return details.confusion_matrix - reference.confusion_matrix


def pareto_front(table: pd.DataFrame, x: str = "latency_p50_ms", y: str = "accuracy"
                 ) -> list[str]:
    """Variants no other variant beats on both lower `x` and higher `y`."""
    points = table[["variant", x, y]].dropna()
    front = []
    for _, p in points.iterrows():
        dominated = ((points[x] <= p[x]) & (points[y] >= p[y])
                     & ((points[x] < p[x]) | (points[y] > p[y]))).any()
        if not dominated:
            front.append(p["variant"])
    return front


# ---------------------------------------------------------------- live classification


def available_variants(ws: Any) -> list[tuple[VariantSpec, str]]:
    """native, plus every variant whose .tflite is cached for this workspace's model,
    with the key that identifies its artifact (the model hash for native).
    """
    out = [] if ws.source_is_tflite else [(VariantSpec.native(), ws.model_sha)]
    for entry in ws.cache.entries("variants"):
        manifest = entry.manifest
        if manifest.get("model_sha") != ws.model_sha:
            continue
        try:
            spec = VariantSpec.from_dict(manifest["spec"])
            if ws.variant_key(spec) != manifest["key"]:  # other calibration ids or versions
                continue
        except (PetqError, KeyError, TypeError, ValueError):
            continue
        if all(spec != s for s, _ in out):
            out.append((spec, manifest["key"]))
    keys = list(RECIPES)
    return sorted(out, key=lambda item: (keys.index(item[0].recipe.key), item[0].fraction or 0.0,
                                         item[0].classes, item[0].seed, item[0].keep_float))


# ---------------------------------------------------------------- figures


def human_size(size: float | None) -> str:
    """Bytes for people: 8.7 kB, 3.52 MB."""
    if size is None or (isinstance(size, float) and math.isnan(size)):
        return "n/a"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            value = size / scale
            digits = 2 if value < 10 else 1 if value < 100 else 0
            return f"{value:.{digits}f} {unit}"
    return f"{int(size)} B"


def fraction_text(fraction: float) -> str:
    return "the whole test split" if fraction >= 1.0 else f"{fraction:.0%} of the test split"


def max_count(*details: Details) -> int:
    """The largest confusion-matrix cell among results: one colour scale for all."""
    return max([1] + [int(np.max(d.confusion_matrix)) for d in details])


def default_pair(table: pd.DataFrame, reference: str) -> str:
    """The variant that agrees least with the reference: the most telling one to show."""
    others = table[table["variant"] != reference]
    if others.empty:
        return reference
    ranked = others.assign(a=others["agreement"].fillna(2.0)).sort_values("a", kind="stable")
    return str(ranked["variant"].iloc[0])



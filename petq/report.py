"""Reports: the lab's per-variant `<prefix>-metrics.md` and confusion PNGs, and a summary.

Every sentence of the summary is computed from the result rows; nothing is canned.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from petq.cache import Cache, key_of
from petq.evaluate import agreement
from petq.results import METRICS, Details, Result
from petq.stats import (
    LatencyComparison,
    PairedComparison,
    class_changes_of,
    compare_details,
    seed_spread,
)
from petq.types import VariantSpec

FIGURE_VERSION = 1  # bump when confusion_png draws differently


def confusion_png(matrix: np.ndarray, class_names: Sequence[str], title: str) -> bytes:
    """A confusion matrix (rows = truth) as a PNG, breed names on both axes."""
    from matplotlib.figure import Figure  # not pyplot: safe from any thread

    cm = np.asarray(matrix, dtype=np.float64)
    names = list(class_names)
    totals = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    side = max(6.0, 0.28 * len(names) + 3)
    fig = Figure(figsize=(side, side), dpi=100)
    ax = fig.subplots()
    ax.imshow(share, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("Predicted breed")
    ax.set_ylabel("True breed")
    ax.set_title(f"{title} (share of each true breed)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _points(delta: float) -> str:
    return f"{100 * delta:+.1f} points"


def _ci_points(interval) -> str:
    """`-0.4 points (95% CI -1.5 to +0.7)`."""
    return (f"{_points(interval.estimate)} ({interval.level:.0%} CI {100 * interval.low:+.1f} "
            f"to {100 * interval.high:+.1f})")


def reference_spec(spec: VariantSpec, specs: Collection[VariantSpec]) -> VariantSpec | None:
    """What `spec` is compared against among `specs` (`VariantSpec.reference`); native
    when the FP32 .tflite is not among them."""
    if spec.reference in specs:
        return spec.reference
    if not spec.is_native and spec.reference == VariantSpec.fp32() and (
            VariantSpec.native() in specs):
        return VariantSpec.native()
    return None


def reference_of(result: Result, results: list[Result]) -> Result | None:
    """The result a variant is compared against (`reference_spec`)."""
    wanted = reference_spec(result.spec, [r.spec for r in results])
    return next((r for r in results if r.spec == wanted), None)


def paired(workspace, result: Result, reference: Result) -> PairedComparison | None:
    """Paired statistics of a result against a reference on the same test images
    (`Workspace.paired`: computed once, then read from the cache)."""
    found = workspace.paired(result.result_key, reference.result_key)
    return found[0] if found else None


def _verdict(comparison: PairedComparison, what: str = "accuracy") -> str:
    """A plain sentence: is the accuracy difference real at 5%?"""
    test = comparison.mcnemar
    counts = (f"exact McNemar test on the {test.b + test.c} images where only one is right: "
              f"{test.b} against {test.c}, p = {test.p_value:.3g}")
    if comparison.significant:
        direction = "lower" if comparison.accuracy_difference.estimate < 0 else "higher"
        return f"The {what} is significantly {direction} at 5% ({counts})."
    return f"The {what} difference is within noise: not significant at 5% ({counts})."


def metrics_markdown(row: Result, comparison: PairedComparison | None = None,
                     reference: str | None = None) -> str:
    """The lab's `<prefix>-metrics.md`, plus what petq measures beyond it."""
    lines = [f"Model type: {row.variant}", ""]
    lines += [f"* {METRICS[key].label}: {METRICS[key].format(row.value(key))}"
              for key in ("accuracy", "mean_precision", "mean_sensitivity", "g_mean")]
    lines += [
        f"* Mean inference time: {row.latency_mean_ms:.3f} ms",
        f"* Top-5 percentage: {row.top5:.4f}",
        "",
        f"* Description: {row.description}",
        f"* Scheme: {row.scheme} ({row.spec.recipe.backend.value})",
        f"* Latency p50 / p95 / std: {row.latency_p50_ms:.3f} / {row.latency_p95_ms:.3f} / "
        f"{row.latency_std_ms:.3f} ms ({row.latency_runs} runs, {row.threads} threads, "
        "after warm-up)",
        f"* File size: {row.file_size_bytes:,} bytes",
        f"* Parameters: {row.param_count:,}",
        f"* Test images: {row.images.text()} (fraction {row.test_fraction:g} of the test "
        "split)",
    ]
    if row.calibration_count:
        lines.append(f"* Calibration images (trainval only): {row.calibration_count}")
    if comparison is not None and reference:
        acc, gm = comparison.accuracy_difference, comparison.g_mean_difference
        lines += [
            f"* Against `{reference}` (paired, same images): accuracy {_ci_points(acc)} "
            f"(exact interval, consistent with the McNemar test below); G-Mean "
            f"{_ci_points(gm)} ({comparison.resamples} bootstrap resamples)",
            f"* {_verdict(comparison)}",
        ]
    if row.synthetic:
        lines.append("* Data: synthetic pets dataset (not Oxford-IIIT Pet)")
    return "\n".join(lines) + "\n"


COMPARISON_COLUMNS = ("variant", "reference", "accuracy", "accuracy_difference",
                      "accuracy_difference_low", "accuracy_difference_high",
                      "g_mean_difference", "g_mean_difference_low", "g_mean_difference_high",
                      "b", "c", "p_value", "significant")


def comparisons_csv(rows: list[tuple[Result, Result, PairedComparison]]) -> str:
    """One line per variant against its reference (`comparisons.csv`)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COMPARISON_COLUMNS)
    for result, reference, c in rows:
        acc, gm = c.accuracy_difference, c.g_mean_difference
        writer.writerow([result.variant, reference.variant, f"{result.accuracy:.6f}",
                         f"{acc.estimate:.6f}", f"{acc.low:.6f}", f"{acc.high:.6f}",
                         f"{gm.estimate:.6f}", f"{gm.low:.6f}", f"{gm.high:.6f}",
                         c.mcnemar.b, c.mcnemar.c, f"{c.mcnemar.p_value:.6g}",
                         int(c.significant)])
    return out.getvalue()


LAYER_COLUMNS = ("index", "name", "op", "error", "rmse", "mean_abs_error", "max_abs_error",
                 "scale", "zero_point", "range_used_min", "range_used_max",
                 "range_observed_min", "range_observed_max")


def layers_csv(stats) -> str:
    """`<prefix>-layers.csv`: one row per layer in graph order (error in quantization steps:
    RMSE / scale; ranges: what the quantized tensor can hold against what the float model
    produced on the sample)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(LAYER_COLUMNS)
    for s in stats:
        used = s.range_used or ("", "")
        seen = s.range_observed or ("", "")
        writer.writerow([s.index, s.name, s.op, "" if s.error is None else f"{s.error:.6g}",
                         f"{s.rmse:.6g}", f"{s.mean_abs_error:.6g}", f"{s.max_abs_error:.6g}",
                         "" if s.scale is None else f"{s.scale:.6g}",
                         "" if s.zero_point is None else s.zero_point, *used, *seen])
    return out.getvalue()


def _speed_sentence(workspace, fast: Result, slow: Result) -> str:
    """Speed of `fast` against `slow`, timed interleaved (cached)."""
    return speed_sentence(workspace.latency_comparison(fast.spec, slow.spec), fast.variant)


def speed_sentence(timing: LatencyComparison, variant: str) -> str:
    """One sentence on an interleaved timing of `variant` (A) against another (B): a claim
    only where the interval of the median ratio says so, and a warning when the machine was
    busy."""
    ratio = timing.ratio_b_over_a
    text = (f"Timed interleaved ({timing.rounds} rounds each), median {timing.median_a_ms:.2f} "
            f"ms against {timing.median_b_ms:.2f} ms: ")
    if timing.faster == "a faster":
        text += (f"`{variant}` is {ratio.estimate:.2f}x faster ({ratio.level:.0%} CI "
                 f"{ratio.low:.2f}x to {ratio.high:.2f}x).")
    elif timing.faster == "b faster":
        text += (f"`{variant}` is {1 / ratio.estimate:.2f}x slower ({ratio.level:.0%} CI "
                 f"of the ratio {ratio.low:.2f} to {ratio.high:.2f}).")
    else:
        text += (f"no clear difference in speed (ratio {ratio.estimate:.2f}, {ratio.level:.0%} "
                 f"CI {ratio.low:.2f} to {ratio.high:.2f}).")
    if timing.busy:
        text += (f" The machine was busy while timing ({100 * timing.other_cpu_share:.0f}% of "
                 "its CPU went to other work): treat the timing with care.")
    return text


def summary_markdown(workspace, rows: list[Result]) -> str:
    """The lab's summary: sizes, a metrics table with paired statistics, and the four
    questions answered from tests, not from point estimates."""
    if not rows:
        return "# Summary\n\nNo evaluated variants yet.\n"
    native = next((r for r in rows if r.spec.is_native), None)
    fp32 = next((r for r in rows if r.spec == VariantSpec.fp32()), None)
    lab_int8 = [r for r in rows if r.spec.lab_int8 and not r.spec.keep_float]
    int8 = sorted((r for r in lab_int8 if r.spec.calibration.kind == "fraction"),
                  key=lambda r: (r.spec.fraction, r.spec.seed))
    imb = [r for r in lab_int8 if r.spec.calibration.kind == "classes"]
    details = {r.result_key: workspace.details(r.result_key) for r in rows}
    pairs = {}
    for r in rows:
        ref = reference_of(r, rows)
        if ref is not None:
            comparison = paired(workspace, r, ref)
            if comparison is not None:
                pairs[r.variant] = (ref, comparison)
    first = rows[0]

    out = ["# Quantization experiment summary", ""]
    data_kind = ("synthetic pets dataset" if first.synthetic
                 else "dataset in the Oxford-IIIT Pet layout")
    c = workspace.contract
    out.append(
        f"Model `{first.model}` on the {data_kind} (`{first.dataset}`), "
        f"{first.n_images} test images evaluated (fraction {first.test_fraction:g} of the "
        f"test split: {first.images.text()}), latency on {first.threads} thread(s). Input "
        f"{c.input_size[0]}x"
        f"{c.input_size[1]}{' grayscale' if c.channels == 1 else ''}, preprocessing "
        f"`{c.preprocessing}`, {len(c.class_names)} classes."
    )
    if first.synthetic:
        out.append("")
        out.append("> These numbers come from synthetic data: they show how petq works, not how "
                   "the lab's model behaves on real pets.")
    out += ["", f"* Parameters in the model: {first.param_count:,}"]
    if fp32 and (int8 or imb):
        small = min(int8 + imb, key=lambda r: r.file_size_bytes).file_size_bytes
        big = fp32.file_size_bytes
        out.append(
            f"* TFLite FP32 size: {big:,} bytes; INT8 size: {small:,} bytes: "
            f"{big / small:.2f}x smaller ({1 - small / big:.0%} reduction)"
        )
    out += ["", "## Metrics", "",
            "Δ accuracy: against the reference (TFLite FP32; native for FP32), paired over the "
            "same test images; p: exact McNemar test on the images only one of the two gets "
            "right, and the 95% interval is that test inverted, so it excludes zero exactly "
            "when p < 0.05.", "",
            "| Variant | Scheme | Accuracy | Δ accuracy (95% CI) | p | G-Mean | Top-5 | "
            "Latency median (ms) | Size (bytes) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.variant in pairs:
            ref, c = pairs[r.variant]
            delta = (f"{_ci_points(c.accuracy_difference)} vs {ref.variant}"
                     + (" *" if c.significant else ""))
            p_text = f"{c.mcnemar.p_value:.3g}"
        else:
            delta, p_text = "reference", ""
        out.append(
            f"| {r.variant} | {r.scheme} | {r.accuracy:.4f} | {delta} | {p_text} | "
            f"{r.g_mean:.4f} | {r.top5:.4f} | {r.latency_p50_ms:.3f} | {r.file_size_bytes:,} |"
        )
    out += ["", "`*`: significant at 5%. Per variant: `<variant>-metrics.md` and "
            "`<variant>-confusion-matrix.png`; every paired comparison in `comparisons.csv`.", ""]
    out += ["## Questions", ""]

    out.append("**1. How does the TFLite FP32 model perform compared to the native model?**")
    out.append("")
    if native and fp32 and fp32.variant in pairs:
        c = pairs[fp32.variant][1]
        agree = agreement(details[fp32.result_key].top1, details[native.result_key].top1)
        out.append(
            f"TFLite FP32 reaches {_pct(fp32.accuracy)} accuracy against "
            f"{_pct(native.accuracy)} for the native model ({_ci_points(c.accuracy_difference)}); "
            f"the two agree on the top-1 breed for {_pct(agree)} of test images. "
            f"{_verdict(c)} {_speed_sentence(workspace, fp32, native)}"
        )
    else:
        out.append("Not answered: evaluate both `native` and `tflite-fp32`.")
    out.append("")

    out.append("**2. How does the best INT8 model perform compared to the TFLite FP32 model?**")
    out.append("")
    quantized = [r for r in int8 + imb if r.variant in pairs]
    if fp32 and quantized:
        best = max(quantized, key=lambda r: (r.accuracy, -r.latency_p50_ms))
        c = pairs[best.variant][1]
        agree = agreement(details[best.result_key].top1, details[fp32.result_key].top1)
        out.append(
            f"The INT8 variant with the highest accuracy, `{best.variant}`, reaches "
            f"{_pct(best.accuracy)} against FP32's {_pct(fp32.accuracy)} "
            f"({_ci_points(c.accuracy_difference)}; G-Mean "
            f"{_ci_points(c.g_mean_difference)}), agrees with FP32 on {_pct(agree)} of images "
            f"and is {fp32.file_size_bytes / best.file_size_bytes:.2f}x smaller. "
            f"{_verdict(c)} {_speed_sentence(workspace, best, fp32)}"
        )
        worse = [r.variant for r in quantized if pairs[r.variant][1].significant
                 and pairs[r.variant][1].accuracy_difference.estimate < 0]
        out.append("")
        out.append(f"Of the {len(quantized)} INT8 variants, "
                   + (f"{len(worse)} are significantly less accurate than FP32: "
                      + ", ".join(f"`{v}`" for v in worse) + "." if worse
                      else "none is significantly less accurate than FP32."))
    else:
        out.append("Not answered: evaluate `tflite-fp32` and at least one INT8 variant.")
    out.append("")

    out.append("**3. Is there a trend in INT8 quality with calibration dataset size?**")
    out.append("")
    out.append(_trend_sentence(int8, details))
    out.append("")

    out.append("**4. How does the model calibrated on chosen classes only compare to the other "
               "INT8 models?**")
    out.append("")
    if imb and int8:
        out.append("\n\n".join(
            _imbalanced_sentence(workspace, r, int8, details) for r in imb
        ))
    else:
        out.append("Not answered: evaluate an imbalanced INT8 variant and at least one "
                   "fraction-calibrated INT8 variant.")
    return "\n".join(out) + "\n"


def _trend_sentence(int8: list[Result], details: dict[str, Details]) -> str:
    """Accuracy by calibration fraction, with the seed spread where several seeds ran, and a
    trend claimed only when Spearman's rank test over all runs says so."""
    fractions = sorted({r.spec.fraction for r in int8})
    if len(fractions) < 2:
        return "Not answered: evaluate INT8 variants with at least two calibration fractions."
    parts = []
    for f in fractions:
        runs = [r for r in int8 if r.spec.fraction == f]
        spread = seed_spread([r.accuracy for r in runs])
        if spread.n > 1:
            parts.append(f"{f:g}: {_pct(spread.mean)} mean over {spread.n} seeds "
                         f"(range {_pct(spread.min)} to {_pct(spread.max)})")
        else:
            parts.append(f"{f:g} ({runs[0].calibration_count} images): {_pct(spread.mean)}")
    text = "Accuracy by calibration fraction: " + ", ".join(parts) + ". "
    smallest = min(int8, key=lambda r: (r.spec.fraction, r.spec.seed))
    largest = max(int8, key=lambda r: (r.spec.fraction, -r.spec.seed))
    a, b = details[largest.result_key], details[smallest.result_key]
    if a.same_images(b):
        c = compare_details(a, b)
        text += (f"From the smallest to the largest fraction (`{smallest.variant}` to "
                 f"`{largest.variant}`): {_ci_points(c.accuracy_difference)}, McNemar p = "
                 f"{c.mcnemar.p_value:.3g}. ")
    if len({r.accuracy for r in int8}) == 1:
        text += "Every run has the same accuracy: no trend."
    elif len(int8) >= 3:
        rho, p = spearmanr([r.spec.fraction for r in int8], [r.accuracy for r in int8])
        if p < 0.05:
            direction = "rises" if rho > 0 else "falls"
            text += (f"Accuracy {direction} with calibration size (Spearman rho {rho:.2f}, "
                     f"p = {p:.3g}, over {len(int8)} runs).")
        else:
            text += (f"No trend can be claimed: Spearman rho {rho:.2f}, p = {p:.3g} over "
                     f"{len(int8)} runs"
                     + ("" if any(seed_spread([r.accuracy for r in int8
                                               if r.spec.fraction == f]).n > 1
                                  for f in fractions)
                        else "; run several seeds per fraction (`--seeds`) to see the spread "
                             "that calibration picks alone cause") + ".")
    else:
        text += "Two runs are too few for a trend test."
    return text


def _imbalanced_sentence(workspace, row: Result, int8: list[Result],
                         details: dict[str, Details]) -> str:
    best = max(int8, key=lambda r: r.accuracy)
    names = workspace.class_names
    chosen = ", ".join(names[c] for c in row.spec.classes if c < len(names))
    mine, ref = details[row.result_key], details[best.result_key]
    c = compare_details(mine, ref)
    text = (
        f"`{row.variant}` (calibrated on {row.calibration_count} images of {chosen}) reaches "
        f"{_pct(row.accuracy)} accuracy, {_ci_points(c.accuracy_difference)} against the best "
        f"fraction-calibrated variant, `{best.variant}`; G-Mean "
        f"{_ci_points(c.g_mean_difference)}. {_verdict(c)}"
    )
    changes = class_changes_of(mine, ref)
    hurt = sorted((k for k in changes if k.hurt), key=lambda k: k.difference)
    if hurt:
        text += (" Breeds it hurts (their sensitivity interval excludes zero): " + ", ".join(
            f"{names[k.class_index]} ({_points(k.difference)}, {k.b} of {k.n} images lost, "
            f"CI {100 * k.low:+.0f} to {100 * k.high:+.0f})" for k in hurt) + ".")
        if all(k.p_adjusted >= 0.05 for k in hurt):
            text += (f" Across all {len(changes)} breeds, none survives a Holm correction: "
                     "with this many breeds, a few such flags can come from chance alone.")
    else:
        worst = min(changes, key=lambda k: k.difference, default=None)
        text += " No breed is hurt: no breed's sensitivity interval lies below zero"
        text += (f" (largest drop {names[worst.class_index]}, {_points(worst.difference)}, "
                 f"{worst.b} of {worst.n} images)." if worst and worst.difference < 0 else ".")
    return text


def report_files(workspace, rows: list[Result]) -> dict[str, bytes]:
    """Report files by name: summary.md, comparisons.csv, `<prefix>-metrics.md`,
    `<prefix>-confusion-matrix.png`."""
    files = {"summary.md": summary_markdown(workspace, rows).encode()}
    compared = []
    for row in rows:
        prefix = row.variant
        reference = reference_of(row, rows)
        comparison = paired(workspace, row, reference) if reference else None
        if comparison is not None:
            compared.append((row, reference, comparison))
        files[f"{prefix}-metrics.md"] = metrics_markdown(
            row, comparison, reference.variant if reference else None).encode()
        files[f"{prefix}-confusion-matrix.png"] = cached_confusion_png(
            workspace.cache, row.result_key, prefix
        )
    files["comparisons.csv"] = comparisons_csv(compared).encode()
    return files


def cached_confusion_png(cache: Cache, result_key: str, title: str,
                         early: tuple[np.ndarray, Sequence[str]] | None = None) -> bytes:
    """`confusion_png` of a result, drawn once and kept in the cache (`figures/`).

    `early`: its confusion matrix and class names, when it is drawn before the result is
    cached (`early_confusion_png`); else they are read from the cached result."""
    from importlib import metadata

    key = key_of({"v": FIGURE_VERSION, "result": result_key, "title": title,
                  "matplotlib": metadata.version("matplotlib")})  # fmt: skip

    def build(tmp: Path) -> dict[str, Any]:
        if early is not None:
            matrix, names = early
        else:
            entry = cache.get("results", result_key, verify=False)
            if entry is None:
                raise KeyError(f"no cached result {result_key}")
            details = Details.read(entry)
            matrix, names = details.confusion_matrix, details.class_names
        (tmp / "confusion.png").write_bytes(confusion_png(matrix, names, title))
        return {"result_key": result_key, "title": title}

    entry, _ = cache.get_or_build("figures", key, build)
    return entry.file("confusion.png").read_bytes()


def early_confusion_png(workspace, spec: VariantSpec, test_fraction: float,
                        details: Details) -> None:
    """`spec`'s confusion PNG into the cache from its pass's details (`Workspace.scored`),
    once its accuracy pass is done: its result, keyed alike, comes only once its latency is
    timed (petq.engine), and the reports then read this drawing."""
    cached_confusion_png(workspace.cache, workspace.result_key(spec, test_fraction), spec.name,
                         (details.confusion_matrix, details.class_names))


def early_paired(workspace, test_fraction: float, scored: Mapping[VariantSpec, Details],
                 specs: Collection[VariantSpec], spec: VariantSpec) -> None:
    """The paired statistics (`Workspace.paired`) of each pair of `specs` (a variant and its
    `reference_spec`) that `spec`'s pass completes, from the passes' details in `scored`,
    before the results are in: the reports then read them from the cache."""
    for variant, details in scored.items():
        reference = reference_spec(variant, specs)
        if spec in (variant, reference) and reference in scored:
            workspace.paired(workspace.result_key(variant, test_fraction),
                             workspace.result_key(reference, test_fraction),
                             early=(details, scored[reference]))


def write_reports(workspace, rows: list[Result], results_path: Path) -> list[Path]:
    from petq.cache import write_bytes_atomic

    results_path = Path(results_path)
    results_path.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in report_files(workspace, rows).items():
        write_bytes_atomic(results_path / name, data)
        written.append(results_path / name)
    return written


def report_zip(workspace, rows: list[Result]) -> bytes:
    """The report files in one zip, the same bytes for the same results: each file is
    stamped with the newest result's time, not the time of zipping."""
    import time

    stamp = time.localtime(max((r.created for r in rows), default=0.0))[:6]
    stamp = max(stamp, (1980, 1, 1, 0, 0, 0))  # the earliest time a zip entry can hold
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in report_files(workspace, rows).items():
            entry = zipfile.ZipInfo(f"petq-report/{name}", date_time=stamp)
            archive.writestr(entry, data, compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()

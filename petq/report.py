"""Reports: the lab's per-variant `<prefix>-metrics.md` and confusion PNGs, and a summary.

Every sentence of the summary is computed from the result rows; nothing is canned.
"""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from petq.evaluate import agreement
from petq.results import METRICS, Details, Result
from petq.types import VariantSpec


def metrics_markdown(row: Result) -> str:
    """The lab's `<prefix>-metrics.md`, plus what petq measures beyond it."""
    lines = [f"Model type: {row.variant}", ""]
    lines += [f"* {METRICS[key].label}: {METRICS[key].format(row.value(key))}"
              for key in ("accuracy", "mean_precision", "mean_sensitivity", "g_mean")]
    lines += [
        f"* Mean inference time: {row.latency_mean_ms:.3f} ms",
        f"* Top-5 percentage: {row.top5:.4f}",
        "",
        f"* Description: {row.description}",
        f"* Latency p50 / p95 / std: {row.latency_p50_ms:.3f} / {row.latency_p95_ms:.3f} / "
        f"{row.latency_std_ms:.3f} ms ({row.latency_runs} runs, {row.threads} threads, "
        "after warm-up)",
        f"* File size: {row.file_size_bytes:,} bytes",
        f"* Parameters: {row.param_count:,}",
        f"* Test images: {row.n_images} (fraction {row.test_fraction:g} of the test split)",
    ]
    if row.calibration_count:
        lines.append(f"* Calibration images (trainval only): {row.calibration_count}")
    if row.synthetic:
        lines.append("* Data: synthetic pets dataset (not Oxford-IIIT Pet)")
    return "\n".join(lines) + "\n"


FIGURE_VERSION = 1  # bump when confusion_png draws differently


def confusion_png(details: Details, title: str) -> bytes:
    """The confusion matrix (rows = truth) as a PNG, breed names on both axes."""
    from matplotlib.figure import Figure  # not pyplot: safe from any thread

    cm = details.confusion_matrix.astype(np.float64)
    names = list(details.class_names)
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


def _speed(a_ms: float, b_ms: float) -> str:
    """'1.8x faster' / '1.2x slower' for a against b (medians: a few slow runs on a busy
    machine move a mean, not a median)."""
    if a_ms <= 0 or b_ms <= 0:
        return "not comparable"
    ratio = b_ms / a_ms
    if abs(ratio - 1) < 0.05:
        return "about as fast"
    return f"{ratio:.2f}x faster" if ratio > 1 else f"{1 / ratio:.2f}x slower"


def _noise(row: Result) -> float:
    """Standard error of the accuracy estimate: a yardstick for 'within noise'."""
    p, n = row.accuracy, max(row.n_images, 1)
    return math.sqrt(max(p * (1 - p), 1e-12) / n)


def summary_markdown(workspace, rows: list[Result]) -> str:
    """The lab's summary: sizes, a metrics table and the four questions, from the numbers."""
    if not rows:
        return "# Summary\n\nNo evaluated variants yet.\n"
    native = next((r for r in rows if r.spec.is_native), None)
    fp32 = next((r for r in rows if r.spec == VariantSpec.fp32()), None)
    lab_int8 = [r for r in rows if r.spec.lab_int8 and not r.spec.keep_float]
    int8 = sorted((r for r in lab_int8 if r.spec.calibration.kind == "fraction"),
                  key=lambda r: (r.spec.fraction, r.spec.seed))
    imb = [r for r in lab_int8 if r.spec.calibration.kind == "classes"]
    details = {r.result_key: workspace.details(r.result_key) for r in rows}
    top1 = {r.variant: details[r.result_key].top1 for r in rows}
    first = rows[0]

    out = ["# Quantization experiment summary", ""]
    data_kind = "synthetic pets dataset" if first.get("synthetic") else "Oxford-IIIT Pet dataset"
    out.append(
        f"Model `{first.model}` on the {data_kind} (`{first.dataset}`), "
        f"{first.n_images} test images (fraction {first.test_fraction:g} of the test "
        f"split), latency on {first.threads} thread(s)."
    )
    if first.get("synthetic"):
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
            "| Variant | Accuracy | Mean precision | Mean sensitivity | G-Mean | Top-5 | "
            "Latency mean (ms) | Latency p95 (ms) | Size (bytes) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| {r.variant} | {r.accuracy:.4f} | {r.mean_precision:.4f} | "
            f"{r.mean_sensitivity:.4f} | {r.g_mean:.4f} | {r.top5:.4f} | "
            f"{r.latency_mean_ms:.3f} | {r.latency_p95_ms:.3f} | {r.file_size_bytes:,} |"
        )
    out += ["", "Per variant: `<variant>-metrics.md` and `<variant>-confusion-matrix.png`.", ""]
    out += ["## Questions", ""]

    out.append("**1. How does the TFLite FP32 model perform compared to the native model?**")
    out.append("")
    if native and fp32:
        agree = agreement(top1[fp32.variant], top1[native.variant])
        out.append(
            f"TFLite FP32 reaches {_pct(fp32.accuracy)} accuracy against "
            f"{_pct(native.accuracy)} for the native model "
            f"({_points(fp32.accuracy - native.accuracy)}); the two "
            f"agree on the top-1 breed for {_pct(agree)} of test images. It runs "
            f"{_speed(fp32.latency_p50_ms, native.latency_p50_ms)} "
            f"(median {fp32.latency_p50_ms:.2f} ms against {native.latency_p50_ms:.2f} ms "
            "per image)."
        )
    else:
        out.append("Not answered: evaluate both `native` and `tflite-fp32`.")
    out.append("")

    out.append("**2. How does the best INT8 model perform compared to the TFLite FP32 model?**")
    out.append("")
    quantized = int8 + imb
    if fp32 and quantized:
        best = max(quantized, key=lambda r: (r.accuracy, -r.latency_p50_ms))
        agree = agreement(top1[best.variant], top1[fp32.variant])
        out.append(
            f"The best INT8 variant, `{best.variant}`, reaches {_pct(best.accuracy)} "
            f"accuracy ({_points(best.accuracy - fp32.accuracy)} against FP32's "
            f"{_pct(fp32.accuracy)}; G-Mean {best.g_mean:.3f} against {fp32.g_mean:.3f}), "
            f"agrees with FP32 on {_pct(agree)} of images, is "
            f"{fp32.file_size_bytes / best.file_size_bytes:.2f}x smaller and runs "
            f"{_speed(best.latency_p50_ms, fp32.latency_p50_ms)} "
            f"(median {best.latency_p50_ms:.2f} ms against {fp32.latency_p50_ms:.2f} ms)."
        )
    else:
        out.append("Not answered: evaluate `tflite-fp32` and at least one INT8 variant.")
    out.append("")

    out.append("**3. Is there a trend in INT8 quality with calibration dataset size?**")
    out.append("")
    out.append(_trend_sentence(int8))
    out.append("")

    out.append("**4. How does the model calibrated on chosen classes only compare to the other "
               "INT8 models?**")
    out.append("")
    if imb and int8:
        out.append("\n\n".join(
            _imbalanced_sentence(r, int8, details, workspace.class_names) for r in imb
        ))
    else:
        out.append("Not answered: evaluate an imbalanced INT8 variant and at least one "
                   "fraction-calibrated INT8 variant.")
    return "\n".join(out) + "\n"


def _trend_sentence(int8: list[Result]) -> str:
    if len(int8) < 2:
        return "Not answered: evaluate INT8 variants with at least two calibration fractions."
    pairs = ", ".join(
        f"{r.spec.fraction:g} ({r.calibration_count} images): {_pct(r.accuracy)}"
        for r in int8
    )
    accuracies = np.array([r.accuracy for r in int8])
    spread = float(accuracies.max() - accuracies.min())
    noise = max(_noise(r) for r in int8)
    steps = np.sign(np.diff(accuracies))
    if spread <= 2 * noise:
        verdict = (
            f"The spread, {_points(spread).lstrip('+')}, is within twice the sampling noise of "
            f"one accuracy estimate ({100 * noise:.1f} points), so no trend can be claimed."
        )
    elif (steps >= 0).all():
        verdict = (f"Accuracy rises with calibration size ({_points(spread).lstrip('+')} from "
                   "smallest to best).")
    elif (steps <= 0).all():
        verdict = f"Accuracy falls as calibration grows ({_points(-spread)} overall)."
    else:
        best = int8[int(accuracies.argmax())]
        verdict = (
            f"No monotonic trend: accuracies spread over {_points(spread).lstrip('+')}, best at "
            f"fraction {best.spec.fraction:g}."
        )
    return f"Accuracy by calibration fraction: {pairs}. {verdict}"


def _imbalanced_sentence(
    row: Result, int8: list[Result], details: dict[str, Details],
    class_names: tuple[str, ...],
) -> str:
    mean_acc = float(np.mean([r.accuracy for r in int8]))
    best = max(int8, key=lambda r: r.accuracy)
    chosen = ", ".join(class_names[c] for c in row.spec.classes if c < len(class_names))
    text = (
        f"`{row.variant}` (calibrated on {row.calibration_count} images of {chosen}) "
        f"reaches {_pct(row.accuracy)} accuracy, {_points(row.accuracy - mean_acc)} against "
        f"the mean of the fraction-calibrated INT8 variants ({_pct(mean_acc)}) and "
        f"{_points(row.accuracy - best.accuracy)} against the best, `{best.variant}`; "
        f"G-Mean {row.g_mean:.3f} against {best.g_mean:.3f}."
    )
    mine = details[row.result_key].per_class_sensitivity
    ref = details[best.result_key].per_class_sensitivity
    drop = ref - mine
    if np.isfinite(drop).any() and np.nanmax(drop) > 0:
        worst = np.argsort(np.nan_to_num(drop, nan=-np.inf))[::-1][:3]
        hurt = [f"{class_names[i]} ({_points(-drop[i])})" for i in worst if drop[i] > 0]
        text += f" Breeds it hurts most against `{best.variant}`: {', '.join(hurt)}."
    else:
        text += f" No breed loses sensitivity against `{best.variant}`."
    return text


def report_files(workspace, rows: list[Result]) -> dict[str, bytes]:
    """Report files by name: summary.md, `<prefix>-metrics.md`, `<prefix>-confusion-matrix.png`."""
    files = {"summary.md": summary_markdown(workspace, rows).encode()}
    for row in rows:
        prefix = row.variant
        files[f"{prefix}-metrics.md"] = metrics_markdown(row).encode()
        files[f"{prefix}-confusion-matrix.png"] = cached_confusion_png(
            workspace, row.result_key, prefix
        )
    return files


def cached_confusion_png(workspace, result_key: str, title: str) -> bytes:
    """`confusion_png` of a cached result, drawn once and kept in the cache (`figures/`)."""
    from importlib import metadata

    from petq.cache import key_of

    key = key_of({"v": FIGURE_VERSION, "result": result_key, "title": title,
                  "matplotlib": metadata.version("matplotlib")})  # fmt: skip

    def build(tmp: Path) -> dict[str, Any]:
        png = confusion_png(workspace.details(result_key), title)
        (tmp / "confusion.png").write_bytes(png)
        return {"result_key": result_key, "title": title}

    entry, _ = workspace.cache.get_or_build("figures", key, build)
    return entry.file("confusion.png").read_bytes()


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
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in report_files(workspace, rows).items():
            archive.writestr(f"petq-report/{name}", data)
    return buffer.getvalue()

"""Comparing variants: tables with deltas, per-class views and Plotly figures.

Pure functions over `Workspace.results()` rows and `Workspace.details()` dicts,
so the dashboard pages only lay them out. No streamlit here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from petq.evaluate import agreement
from petq.runtime import Runner, softmax
from petq.types import VariantKind

Row = Mapping[str, Any]
Details = Mapping[str, Any]

# (column, label, higher is better) in the order the comparison table shows them
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("accuracy", "Accuracy", True),
    ("mean_precision", "Mean precision", True),
    ("mean_sensitivity", "Mean sensitivity", True),
    ("g_mean", "G-Mean", True),
    ("top5", "Top-5", True),
    ("latency_mean_ms", "Latency mean (ms)", False),
    ("latency_p95_ms", "Latency p95 (ms)", False),
    ("file_size_bytes", "File size (bytes)", False),
    ("compression_ratio", "Compression vs FP32", True),
    ("agreement", "Top-1 agreement", True),
)
QUALITY_METRICS = ("accuracy", "mean_precision", "mean_sensitivity", "g_mean", "top5")
LATENCY_METRICS = ("latency_mean_ms", "latency_p95_ms")
LABELS = {column: label for column, label, _ in METRICS}
KIND_COLOURS = {
    VariantKind.NATIVE.value: "#636efa",
    VariantKind.FP32.value: "#00a884",
    VariantKind.INT8.value: "#ef8a17",
    VariantKind.IMBINT8.value: "#d62728",
}


def latest_per_variant(rows: Sequence[Row]) -> list[Row]:
    """One row per variant name (the most recent), in the input order."""
    best: dict[str, Row] = {}
    for row in rows:
        kept = best.get(row["variant"])
        if kept is None or row.get("created", 0) >= kept.get("created", 0):
            best[row["variant"]] = row
    order = list(dict.fromkeys(r["variant"] for r in rows))
    return [best[name] for name in order]


def test_fractions(rows: Sequence[Row]) -> list[float]:
    """The test-set fractions the rows were evaluated on, largest first."""
    return sorted({float(r.get("test_fraction", 1.0)) for r in rows}, reverse=True)


def same_images(a: Details, b: Details) -> bool:
    return list(a.get("image_ids", [])) == list(b.get("image_ids", []))


def comparison_table(
    rows: Sequence[Row],
    details_by_key: Mapping[str, Details],
    reference_variant: str | None = None,
) -> pd.DataFrame:
    """One line per variant: the metrics, compression against FP32, top-1 agreement
    with the reference, and each metric's delta from the reference (`<metric>_delta`).

    Agreement is only computed between results on the same test images (NaN
    otherwise). Without the reference among the rows, deltas and agreement are NaN.
    """
    rows = latest_per_variant(rows)
    columns = ["variant", "kind", "precision", "description", "result_key", "n_images",
               "test_fraction", "calibration_count", *(m for m, _, _ in METRICS)]
    if not rows:
        return pd.DataFrame(columns=columns + [f"{m}_delta" for m, _, _ in METRICS])
    by_name = {r["variant"]: r for r in rows}
    reference = by_name.get(reference_variant) if reference_variant else None
    fp32 = by_name.get(VariantKind.FP32.value)
    fp32_size = fp32.get("file_size_bytes") if fp32 else None
    ref_details = details_by_key.get(reference["result_key"]) if reference else None
    records = []
    for row in rows:
        record = {c: row.get(c) for c in columns if c in row}
        size = row.get("file_size_bytes")
        record["compression_ratio"] = (
            fp32_size / size if fp32_size and size else math.nan
        )
        details = details_by_key.get(row["result_key"])
        if ref_details is not None and details is not None and same_images(details, ref_details):
            record["agreement"] = agreement(details["top1"], ref_details["top1"])
        else:
            record["agreement"] = math.nan
        records.append(record)
    table = pd.DataFrame.from_records(records).reindex(columns=columns)
    for metric, _, _ in METRICS:
        table[metric] = pd.to_numeric(table[metric], errors="coerce")
    ref_index = table.index[table["variant"] == reference_variant]
    for metric, _, _ in METRICS:
        if len(ref_index):
            table[f"{metric}_delta"] = table[metric] - table.loc[ref_index[0], metric]
        else:
            table[f"{metric}_delta"] = math.nan
    return table


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison table for people: metric then its delta, readable headers."""
    out = pd.DataFrame({"Variant": table["variant"], "Precision": table["precision"]})
    for metric, label, _ in METRICS:
        out[label] = table[metric]
        out[f"Δ {label}"] = table[f"{metric}_delta"]
    out["Test images"] = table["n_images"]
    return out.set_index("Variant")


def per_class_sensitivity(rows: Sequence[Row], details_by_key: Mapping[str, Details]
                          ) -> pd.DataFrame:
    """Per-class sensitivity (recall): one column per variant, one line per class."""
    rows = latest_per_variant(rows)
    columns = {}
    names: list[str] = []
    for row in rows:
        details = details_by_key.get(row["result_key"])
        if details is None:
            continue
        names = list(details["class_names"])
        columns[row["variant"]] = [
            math.nan if v is None else float(v) for v in details["per_class_sensitivity"]
        ]
    return pd.DataFrame(columns, index=pd.Index(names, name="class"))


def per_class_delta(sensitivity: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Each variant's per-class sensitivity minus the reference's (negative: hurt)."""
    if reference not in sensitivity.columns:
        return pd.DataFrame(index=sensitivity.index)
    return sensitivity.sub(sensitivity[reference], axis=0).drop(columns=[reference])


def hurt_classes(delta: pd.DataFrame, variant: str, threshold: float = 0.0) -> pd.Series:
    """Classes whose sensitivity the variant lowers by more than `threshold`, worst first."""
    if variant not in delta.columns:
        return pd.Series(dtype=float)
    column = delta[variant].dropna()
    return column[column < -threshold].sort_values()


def confusion_difference(details: Details, reference: Details) -> np.ndarray:
    """Confusion-matrix counts of a variant minus those of the reference.

    Both must come from the same test images; otherwise the counts do not compare.
    """
    if not same_images(details, reference):
        raise ValueError("the two results were evaluated on different test images")
    return np.asarray(details["confusion_matrix"]) - np.asarray(reference["confusion_matrix"])


def pareto_front(table: pd.DataFrame, x: str = "latency_mean_ms", y: str = "accuracy"
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


def classify(
    runners: Mapping[str, Runner], x: np.ndarray, class_names: Sequence[str], k: int = 5
) -> list[dict[str, Any]]:
    """Every runner's top-k classes with probabilities, and the time of its predict (ms)."""
    out = []
    for name, runner in runners.items():
        start = time.perf_counter()
        scores = runner.predict(x)
        latency_ms = (time.perf_counter() - start) * 1000.0
        probs = softmax(scores)
        order = np.argsort(probs)[::-1][:k]
        out.append({
            "variant": name,
            "top": [(class_names[i] if i < len(class_names) else str(i), float(probs[i]))
                    for i in order],
            "top1": class_names[order[0]] if order[0] < len(class_names) else str(order[0]),
            "latency_ms": latency_ms,
        })
    return out


def disagreement(predictions: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the variants' top-1 classes differ."""
    return len({p["top1"] for p in predictions}) > 1


# ---------------------------------------------------------------- figures


def _layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=50, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
    return fig


def metric_bars(table: pd.DataFrame, metrics: Sequence[str] = QUALITY_METRICS,
                title: str = "Quality metrics") -> go.Figure:
    """Grouped bars: one group per metric, one bar per variant."""
    fig = go.Figure()
    for _, row in table.iterrows():
        fig.add_bar(
            name=row["variant"], x=[LABELS.get(m, m) for m in metrics],
            y=[row[m] for m in metrics],
            hovertemplate="%{x}<br>" + str(row["variant"]) + ": %{y:.4g}<extra></extra>",
        )
    fig.update_layout(barmode="group")
    return _layout(fig, title)


def pareto_scatter(table: pd.DataFrame, x: str = "latency_mean_ms", y: str = "accuracy",
                   title: str = "Accuracy against latency (bubble size: file size)"
                   ) -> go.Figure:
    """Accuracy against latency, bubbles sized by file size, the Pareto front drawn."""
    fig = go.Figure()
    data = table.dropna(subset=[x, y])
    sizes = data["file_size_bytes"].fillna(0).astype(float)
    scale = 2.0 * float(sizes.max()) / (50.0 ** 2) if len(sizes) and sizes.max() > 0 else 1.0
    for kind, group in data.groupby("kind", sort=False):
        fig.add_scatter(
            x=group[x], y=group[y], mode="markers+text", name=str(kind),
            text=group["variant"], textposition="top center",
            marker=dict(size=group["file_size_bytes"].fillna(0).astype(float), sizemode="area",
                        sizeref=scale, sizemin=6, color=KIND_COLOURS.get(str(kind)),
                        line=dict(width=1, color="#333")),
            customdata=np.stack([group["variant"], group["file_size_bytes"] / 1e6], axis=1),
            hovertemplate=("%{customdata[0]}<br>" + LABELS.get(x, x) + ": %{x:.3f}<br>"
                           + LABELS.get(y, y) + ": %{y:.4f}<br>size: %{customdata[1]:.2f} MB"
                           "<extra></extra>"),
        )
    front = data[data["variant"].isin(pareto_front(data, x, y))].sort_values(x)
    if len(front) > 1:
        fig.add_scatter(x=front[x], y=front[y], mode="lines", name="Pareto front",
                        line=dict(dash="dash", color="#555"), hoverinfo="skip")
    fig.update_xaxes(title=LABELS.get(x, x))
    fig.update_yaxes(title=LABELS.get(y, y))
    return _layout(fig, title, height=460)


def confusion_heatmap(details: Details, title: str) -> go.Figure:
    """Confusion matrix (rows: true breed); hover shows true, predicted and count."""
    names = list(details["class_names"])
    cm = np.asarray(details["confusion_matrix"])
    fig = go.Figure(go.Heatmap(
        z=cm, x=names, y=names, colorscale="Blues",
        hovertemplate="true: %{y}<br>predicted: %{x}<br>count: %{z}<extra></extra>",
    ))
    fig.update_xaxes(title="predicted breed", tickangle=-60)
    fig.update_yaxes(title="true breed", autorange="reversed")
    return _layout(fig, title, height=max(420, 16 * len(names) + 160))


def difference_heatmap(diff: np.ndarray, class_names: Sequence[str], title: str) -> go.Figure:
    """A confusion difference (variant minus reference), red where the variant has more."""
    names = list(class_names)
    limit = max(1, int(np.abs(diff).max())) if diff.size else 1
    fig = go.Figure(go.Heatmap(
        z=diff, x=names, y=names, colorscale="RdBu", reversescale=True, zmid=0,
        zmin=-limit, zmax=limit,
        hovertemplate="true: %{y}<br>predicted: %{x}<br>difference: %{z:+d}<extra></extra>",
    ))
    fig.update_xaxes(title="predicted breed", tickangle=-60)
    fig.update_yaxes(title="true breed", autorange="reversed")
    return _layout(fig, title, height=max(420, 16 * len(names) + 160))


def per_class_heatmap(sensitivity: pd.DataFrame, reference: str | None = None,
                      title: str = "Per-class sensitivity") -> go.Figure:
    """Classes x variants. With a reference: the change from it (red: the variant hurts)."""
    if reference is not None and reference in sensitivity.columns:
        values = per_class_delta(sensitivity, reference)
        kwargs = dict(colorscale="RdBu", zmid=0, zmin=-1, zmax=1)
        label = "change from " + reference
    else:
        values = sensitivity
        kwargs = dict(colorscale="Viridis", zmin=0, zmax=1)
        label = "sensitivity"
    fig = go.Figure(go.Heatmap(
        z=values.to_numpy(dtype=float), x=list(values.columns), y=list(values.index),
        hovertemplate="breed: %{y}<br>variant: %{x}<br>" + label + ": %{z:.3f}<extra></extra>",
        **kwargs,
    ))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, height=max(360, 16 * len(values.index) + 140))


def calibration_histogram(histogram: Mapping[str, int], title: str) -> go.Figure:
    """Calibration images per class."""
    fig = go.Figure(go.Bar(x=list(histogram), y=list(histogram.values()),
                           hovertemplate="%{x}: %{y} images<extra></extra>"))
    fig.update_xaxes(tickangle=-60)
    fig.update_yaxes(title="images")
    return _layout(fig, title, height=340)

"""Comparing variants: tables with deltas, per-class views and Plotly figures.

Pure functions over `Workspace.results()` and `Workspace.details()` records,
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

from petq.errors import PetqError
from petq.evaluate import agreement
from petq.results import METRICS, QUALITY, Details, Result
from petq.runtime import Runner, softmax
from petq.types import RECIPES, VariantSpec


def label(metric: str) -> str:
    return METRICS[metric].label if metric in METRICS else metric


def latest_per_variant(results: Sequence[Result]) -> list[Result]:
    """One result per variant name (the most recent), in the input order."""
    best: dict[str, Result] = {}
    for result in results:
        kept = best.get(result.variant)
        if kept is None or result.created >= kept.created:
            best[result.variant] = result
    order = list(dict.fromkeys(r.variant for r in results))
    return [best[name] for name in order]


def test_fractions(results: Sequence[Result]) -> list[float]:
    """The test-set fractions the results were evaluated on, largest first."""
    return sorted({float(r.test_fraction) for r in results}, reverse=True)


TABLE_METRICS = ("accuracy", "mean_precision", "mean_sensitivity", "g_mean", "top5",
                 "latency_p50_ms", "latency_p95_ms", "file_size_bytes", "compression_ratio",
                 "agreement")


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
            "variant": result.variant, "backend": result.spec.recipe.backend.value,
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


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison table for people: metric then its delta, labels from the registry."""
    out = pd.DataFrame({"Variant": table["variant"], "Scheme": table["scheme"]})
    for metric in TABLE_METRICS:
        out[label(metric)] = table[metric]
        out[f"Δ {label(metric)}"] = table[f"{metric}_delta"]
    out["Test images"] = table["n_images"]
    return out.set_index("Variant")


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
    out = [(VariantSpec.native(), ws.model_sha)]
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


def _layout(fig: go.Figure, title: str, height: int = 420, legend: str = "top") -> go.Figure:
    """Title top left; the legend above the plot, on its right, or none."""
    fig.update_layout(
        title=dict(text=title, x=0.0, xanchor="left", automargin=True, yref="container",
                   y=0.98, yanchor="top"),
        height=height, margin=dict(l=10, r=10, t=90 if legend == "top" else 40, b=10),
        showlegend=legend != "none",
    )
    if legend == "top":
        fig.update_layout(legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0,
                                      xanchor="left"))
    elif legend == "right":
        fig.update_layout(legend=dict(orientation="v", yanchor="top", y=1.0, x=1.02,
                                      xanchor="left"))
    return fig


def metric_bars(table: pd.DataFrame, metrics: Sequence[str] = QUALITY,
                title: str = "Quality metrics") -> go.Figure:
    """Grouped bars: one group per variant, one bar per metric."""
    fig = go.Figure()
    for metric in metrics:
        fig.add_bar(
            name=label(metric), x=list(table["variant"]), y=list(table[metric]),
            hovertemplate="%{x}<br>" + label(metric) + ": %{y:.4g}<extra></extra>",
        )
    fig.update_layout(barmode="group")
    fig.update_xaxes(tickangle=-30)
    if all(m in QUALITY for m in metrics):
        fig.update_yaxes(range=[0, 1.0])
    return _layout(fig, title)


def pareto_scatter(table: pd.DataFrame, x: str = "latency_p50_ms", y: str = "accuracy",
                   title: str = "Accuracy against latency (bubble size: file size)"
                   ) -> go.Figure:
    """Accuracy against latency, one bubble per variant sized by file size; the Pareto
    front (no other variant is both faster and more accurate) drawn as a dashed line.
    """
    fig = go.Figure()
    data = table.dropna(subset=[x, y])
    sizes = data["file_size_bytes"].fillna(0).astype(float)
    scale = 2.0 * float(sizes.max()) / (45.0 ** 2) if len(sizes) and sizes.max() > 0 else 1.0
    front_names = pareto_front(data, x, y)
    for _, row in data.iterrows():
        on_front = row["variant"] in front_names
        fig.add_scatter(
            x=[row[x]], y=[row[y]], mode="markers", name=str(row["variant"]),
            marker=dict(size=[float(row["file_size_bytes"] or 0)], sizemode="area",
                        sizeref=scale, sizemin=7, opacity=0.8,
                        line=dict(width=2 if on_front else 1,
                                  color="#222" if on_front else "#888")),
            hovertemplate=(f"<b>{row['variant']}</b><br>{label(x)}: %{{x:.3f}}<br>"
                           f"{label(y)}: %{{y:.4f}}<br>size: "
                           f"{human_size(row['file_size_bytes'])}"
                           + ("<br>on the Pareto front" if on_front else "")
                           + "<extra></extra>"),
        )
    front = data[data["variant"].isin(front_names)].sort_values(x)
    if len(front) > 1:
        fig.add_scatter(x=front[x], y=front[y], mode="lines", name="Pareto front",
                        line=dict(dash="dash", color="#555"), hoverinfo="skip")
    positive = data[x][data[x] > 0]
    if len(positive) > 1 and positive.max() / positive.min() > 20:
        fig.update_xaxes(type="log", dtick="D2")
    if len(data):
        low, high = float(data[y].min()), float(data[y].max())
        pad = max(0.3 * (high - low), 0.01)
        fig.update_yaxes(range=[max(0.0, low - pad), min(1.0, high) + pad])
    fig.update_xaxes(title=label(x))
    fig.update_yaxes(title=label(y))
    return _layout(fig, title, height=460, legend="right")


def _square_axes(fig: go.Figure, names: Sequence[str], y_labels: bool) -> None:
    font = dict(size=9 if len(names) > 12 else 11)
    fig.update_xaxes(title="predicted breed", tickangle=-90, dtick=1, tickfont=font)
    fig.update_yaxes(title="true breed" if y_labels else None, autorange="reversed", dtick=1,
                     tickfont=font, showticklabels=y_labels)


def confusion_heatmap(details: Details, title: str, zmax: float | None = None,
                      y_labels: bool = True, colorbar: bool = True) -> go.Figure:
    """Confusion matrix (rows: true breed); hover shows true, predicted and count.

    Side by side, pass one `zmax` to both so equal counts get equal colours.
    """
    names = list(details.class_names)
    cm = details.confusion_matrix
    fig = go.Figure(go.Heatmap(
        z=cm, x=names, y=names, colorscale="Blues", zmin=0, zmax=zmax, showscale=colorbar,
        hovertemplate="true: %{y}<br>predicted: %{x}<br>count: %{z}<extra></extra>",
    ))
    _square_axes(fig, names, y_labels)
    return _layout(fig, title, height=max(420, 15 * len(names) + 220), legend="none")


def difference_heatmap(diff: np.ndarray, class_names: Sequence[str], title: str) -> go.Figure:
    """A confusion difference (variant minus reference), red where the variant has more."""
    names = list(class_names)
    limit = max(1, int(np.abs(diff).max())) if diff.size else 1
    fig = go.Figure(go.Heatmap(
        z=diff, x=names, y=names, colorscale="RdBu", reversescale=True, zmid=0,
        zmin=-limit, zmax=limit,
        hovertemplate="true: %{y}<br>predicted: %{x}<br>difference: %{z:+d}<extra></extra>",
    ))
    _square_axes(fig, names, True)
    return _layout(fig, title, height=max(420, 15 * len(names) + 220), legend="none")


def per_class_heatmap(sensitivity: pd.DataFrame, reference: str | None = None,
                      title: str = "Per-class sensitivity") -> go.Figure:
    """Classes x variants. With a reference: the change from it (red: the variant hurts)."""
    if reference is not None and reference in sensitivity.columns:
        values = per_class_delta(sensitivity, reference)
        limit = float(np.nanmax(np.abs(values.to_numpy(dtype=float)))) if values.size else 0.0
        limit = max(limit, 0.05) if np.isfinite(limit) else 0.05
        kwargs = dict(colorscale="RdBu", zmid=0, zmin=-limit, zmax=limit)
        label = "change from " + reference
        hover = "%{z:+.3f}"
    else:
        values = sensitivity
        kwargs = dict(colorscale="Viridis", zmin=0, zmax=1)
        label = "sensitivity"
        hover = "%{z:.3f}"
    fig = go.Figure(go.Heatmap(
        z=values.to_numpy(dtype=float), x=list(values.columns), y=list(values.index),
        hovertemplate="breed: %{y}<br>variant: %{x}<br>" + label + ": " + hover
        + "<extra></extra>", **kwargs,
    ))
    fig.update_yaxes(autorange="reversed", dtick=1,
                     tickfont=dict(size=9 if len(values.index) > 12 else 11))
    return _layout(fig, title, height=max(360, 15 * len(values.index) + 160), legend="none")


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


def most_hurt(delta: pd.DataFrame) -> str | None:
    """The variant whose per-class sensitivity losses add up most."""
    if delta.empty or not len(delta.columns):
        return None
    return str(delta.clip(upper=0).sum().idxmin())


def calibration_histogram(histogram: Mapping[str, int], title: str) -> go.Figure:
    """Calibration images per class."""
    counts = list(histogram.values())
    fig = go.Figure(go.Bar(x=list(histogram), y=counts,
                           hovertemplate="%{x}: %{y} images<extra></extra>"))
    fig.update_xaxes(tickangle=-60, dtick=1)
    fig.update_yaxes(title="images", tick0=0, dtick=max(1, math.ceil(max(counts or [1]) / 5)))
    return _layout(fig, title, height=420, legend="none")

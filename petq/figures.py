"""Plotly figures of the dashboard: metric bars, the size/latency/accuracy scatter,
confusion and per-breed heatmaps, seed spread, calibration histograms and calibration curves. Pure
functions over the tables and records of petq.tables; no streamlit here."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from petq.results import QUALITY, Details
from petq.tables import LEVEL, human_size, label, pareto_front, per_class_delta
from petq.types import CURVE_ALL


def seed_spread_figure(table: pd.DataFrame, metric: str = "accuracy") -> go.Figure:
    """Mean over seeds per calibration fraction with its t-interval as error bars, one line
    per recipe; each seed's own value as a small dot."""
    name = label(metric)
    fig = go.Figure()
    for recipe, rows in table.groupby("recipe", sort=False):
        mean, low, high = (rows[f"{metric}_{s}"] for s in ("mean", "low", "high"))
        fig.add_scatter(
            x=list(rows["fraction"]), y=list(mean), mode="lines+markers", name=str(recipe),
            error_y=dict(type="data", symmetric=False, array=list(high - mean),
                         arrayminus=list(mean - low)),
            customdata=np.stack([rows["seeds"], rows[f"{metric}_std"], low, high], axis=1),
            hovertemplate=(f"<b>{recipe}</b><br>fraction %{{x:g}}<br>{name} mean %{{y:.4f}}"
                           "<br>std %{customdata[1]:.4f} over %{customdata[0]} seeds<br>"
                           f"{LEVEL:.0%} CI [%{{customdata[2]:.4f}}, %{{customdata[3]:.4f}}]"
                           "<extra></extra>"),
        )
        xs = [f for f, values in zip(rows["fraction"], rows["values"], strict=True)
              for _ in values]
        ys = [v for values in rows["values"] for v in values]
        fig.add_scatter(x=xs, y=ys, mode="markers", name=f"{recipe}: each seed",
                        marker=dict(size=6, color="rgba(80,80,80,0.45)"),
                        hovertemplate="fraction %{x:g}<br>" + name + " %{y:.4f}<extra></extra>")
    fractions = table["fraction"] if len(table) else pd.Series(dtype=float)
    if len(fractions) and fractions.max() / max(fractions.min(), 1e-9) > 8:
        fig.update_xaxes(type="log")
    else:  # fractions live in (0, 1]
        fig.update_xaxes(range=[0, 1.05])
    if len(table):
        values = [v for vs in table["values"] for v in vs]
        low = min(values + list(table[f"{metric}_low"].dropna()))
        high = max(values + list(table[f"{metric}_high"].dropna()))
        pad = max(0.25 * (high - low), 0.005)
        fig.update_yaxes(range=[low - pad, high + pad])
    fig.update_xaxes(title="calibration fraction of trainval")
    fig.update_yaxes(title=name)
    return _layout(fig, f"{name} over calibration seeds: mean and {LEVEL:.0%} interval",
                   height=420, legend="right")


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
    fig.update_xaxes(tickangle=-30, automargin=True)
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
    if len(data) > 10:  # Plotly's default palette repeats after ten colours
        fig.update_layout(colorway=qualitative.Dark24)
    sizes = data["file_size_bytes"].fillna(0).astype(float)
    scale = 2.0 * float(sizes.max()) / (45.0 ** 2) if len(sizes) and sizes.max() > 0 else 1.0
    front_names = pareto_front(data, x, y)
    for _, row in data.iterrows():
        on_front = row["variant"] in front_names
        size = float(row["file_size_bytes"]) if pd.notna(row["file_size_bytes"]) else 0.0
        fig.add_scatter(
            x=[row[x]], y=[row[y]], mode="markers", name=str(row["variant"]),
            marker=dict(size=[size], sizemode="area", sizeref=scale, sizemin=7, opacity=0.8,
                        line=dict(width=2 if on_front else 1,
                                  color="#222" if on_front else "#888")),
            hovertemplate=(f"<b>{row['variant']}</b> ({row['scheme']})<br>{label(x)}: "
                           f"%{{x:.3f}}<br>{label(y)}: %{{y:.4f}}<br>size: "
                           f"{human_size(size)}"
                           + ("<br>on the Pareto front" if on_front else "")
                           + "<extra></extra>"),
        )
    front = data[data["variant"].isin(front_names)].sort_values(x)
    if len(front) > 1:
        fig.add_scatter(x=front[x], y=front[y], mode="lines", name="Pareto front",
                        line=dict(dash="dash", color="#555"), hoverinfo="skip")
    positive = data[x][data[x] > 0]
    if len(positive) > 1 and positive.max() / positive.min() > 20:
        low, high = float(positive.min()) / 1.5, float(positive.max()) * 1.5
        ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(low)),
                                              math.ceil(math.log10(high)) + 1)
                 for m in (1, 2, 5) if low <= m * 10.0 ** e <= high]
        fig.update_xaxes(type="log", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    if len(data):
        low, high = float(data[y].min()), float(data[y].max())
        pad = max(0.3 * (high - low), 0.01)
        fig.update_yaxes(range=[max(0.0, low - pad), min(1.0, high) + pad])
    fig.update_xaxes(title=label(x))
    fig.update_yaxes(title=label(y))
    return _layout(fig, title, height=460, legend="right")


def _square_axes(fig: go.Figure, names: Sequence[str], y_labels: bool) -> None:
    font = dict(size=9 if len(names) > 12 else 11)
    fig.update_xaxes(title="predicted breed", tickangle=-90, dtick=1, tickfont=font,
                     automargin=True)
    fig.update_yaxes(title="true breed" if y_labels else None, autorange="reversed", dtick=1,
                     tickfont=font, showticklabels=y_labels, automargin=True)


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
    """Classes x variants. With a reference: the change from it (red: lower sensitivity)."""
    if reference is not None and reference in sensitivity.columns:
        values = per_class_delta(sensitivity, reference)
        limit = float(np.nanmax(np.abs(values.to_numpy(dtype=float)))) if values.size else 0.0
        limit = max(limit, 0.05) if np.isfinite(limit) else 0.05
        kwargs = dict(colorscale="RdBu", zmid=0, zmin=-limit, zmax=limit)
        what = "change from " + reference
        hover = "%{z:+.3f}"
    else:
        values = sensitivity
        kwargs = dict(colorscale="Viridis", zmin=0, zmax=1)
        what = "sensitivity"
        hover = "%{z:.3f}"
    fig = go.Figure(go.Heatmap(
        z=values.to_numpy(dtype=float), x=list(values.columns), y=list(values.index),
        hovertemplate="breed: %{y}<br>variant: %{x}<br>" + what + ": " + hover
        + "<extra></extra>", **kwargs,
    ))
    fig.update_xaxes(tickangle=-30, automargin=True)
    fig.update_yaxes(autorange="reversed", dtick=1, automargin=True,
                     tickfont=dict(size=9 if len(values.index) > 12 else 11))
    return _layout(fig, title, height=max(360, 15 * len(values.index) + 160), legend="none")


def calibration_histogram(histogram: Mapping[str, int], title: str) -> go.Figure:
    """Calibration images per class."""
    counts = list(histogram.values())
    fig = go.Figure(go.Bar(x=list(histogram), y=counts,
                           hovertemplate="%{x}: %{y} images<extra></extra>"))
    fig.update_xaxes(tickangle=-60, dtick=1, automargin=True)
    fig.update_yaxes(title="images", tick0=0, dtick=max(1, math.ceil(max(counts or [1]) / 5)))
    return _layout(fig, title, height=420, legend="none")


def calibration_curve_figure(table: pd.DataFrame, metric: str = "accuracy") -> go.Figure:
    """A calibration curve (petq.curve's csv rows): `metric` against the number of
    calibration images (log scale), per recipe: the seeds' range as a band, their mean as
    a line, each seed as a dot (a cross when significantly worse than all of trainval),
    all of trainval as a dashed line."""
    name = label(metric)
    fig = go.Figure()
    ok = table[table["status"] == "ok"]
    for n, (recipe, rows) in enumerate(ok.groupby("recipe", sort=False)):
        colour = qualitative.Plotly[n % len(qualitative.Plotly)]
        cells = rows[rows["size"] != CURVE_ALL].assign(images=lambda f: f["size"].astype(int))
        spread = cells.groupby("images")[metric].agg(["min", "mean", "max"]).sort_index()
        xs = list(spread.index)
        fig.add_scatter(x=xs + xs[::-1], y=list(spread["max"]) + list(spread["min"])[::-1],
                        fill="toself", fillcolor=colour, opacity=0.2, line={"width": 0},
                        hoverinfo="skip", name=f"{recipe}: seeds' range", legendgroup=recipe)
        fig.add_scatter(x=xs, y=list(spread["mean"]), mode="lines", line={"color": colour},
                        name=f"{recipe}: mean over seeds", legendgroup=recipe)
        worse = cells["significantly_worse"].astype(str) == "True"
        for bad, rows_ in ((False, cells[~worse]), (True, cells[worse])):
            if not rows_.empty:
                fig.add_scatter(
                    x=list(rows_["images"]), y=list(rows_[metric]), mode="markers",
                    marker={"color": "black" if bad else colour, "size": 9 if bad else 6,
                            "symbol": "x" if bad else "circle"},
                    text=list(rows_["variant"]), legendgroup=recipe,
                    name=f"{recipe}: " + ("significantly worse seed" if bad else "a seed"),
                    hovertemplate="%{text}<br>%{x} images<br>" + name + " %{y:.4f}"
                                  "<extra></extra>")
        full = rows[rows["size"] == CURVE_ALL]
        if not full.empty:
            fig.add_hline(y=float(full[metric].iloc[0]), line={"color": colour, "dash": "dash"},
                          annotation_text=f"{recipe}: all of trainval",
                          annotation_position="top left" if n % 2 else "bottom right")
    sizes = sorted({int(s) for s in ok["size"] if s != CURVE_ALL})
    fig.update_xaxes(type="log", title="calibration images (log scale)", tickvals=sizes,
                     ticktext=[str(s) for s in sizes])
    values = ok[metric].astype(float)
    if not values.empty:  # metrics lie in [0, 1]: no axis beyond 1 around a flat curve
        fig.update_yaxes(range=[max(0.0, values.min() - 0.05), min(1.0, values.max()) + 0.02])
    fig.update_yaxes(title=name)
    return _layout(fig, f"{name} against calibration images", legend="right")

"""Per-layer quantization error for people: a table and Plotly figures of `LayerStat` rows,
one variant or two side by side, the worst layers marked. No streamlit here."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from petq.layers import LayerStat
from petq.results import Result
from petq.tables import Column

COLOURS = ("#1f77b4", "#ef8a17")
# how the layer table's columns are shown (the other tables' come from petq.tables.column)
LAYER_COLUMNS: dict[str, Column] = {
    "index": Column("#", "%d", "Position of the op in the float graph"),
    "layer": Column("Layer", None, "The op's output tensor name (what a denylist matches)"),
    "op": Column("Op", None, "TFLite builtin op"),
    "error": Column("Error (steps)", "%.3f",
                    "RMSE / scale: error in quantization steps (rounding alone: 0.29)"),
    "rank": Column("Rank", "%d", "1: the largest error"),
    "worst": Column("Worst", None, "Among the marked worst layers"),
    "rmse": Column("RMSE", "%.4g", "Root mean square error, in the tensor's float units"),
    "max_abs_error": Column("Max abs error", "%.4g", "Largest absolute error on the sample"),
    "scale": Column("Scale", "%.4g", "Quantization step of the tensor"),
    "used_min": Column("Used min", "%.4g", "Lowest float value the quantized tensor can hold"),
    "used_max": Column("Used max", "%.4g", "Highest float value the quantized tensor can hold"),
    "seen_min": Column("Seen min", "%.4g", "Lowest value of the float model on the sample"),
    "seen_max": Column("Seen max", "%.4g", "Highest value of the float model on the sample"),
    "keep_float": Column("Kept in float", "%d", "Layers kept in float (the worst first)"),
}


def layer_table(stats: Sequence[LayerStat], worst: int = 5) -> pd.DataFrame:
    """One line per layer in graph order; `worst` marks the layers with the largest error."""
    ranked = sorted((s for s in stats if s.error is not None), key=lambda s: (-s.error, s.index))
    rank = {s.name: i + 1 for i, s in enumerate(ranked)}
    rows = []
    for s in stats:
        used = s.range_used or (None, None)
        seen = s.range_observed or (None, None)
        rows.append({
            "index": s.index, "layer": s.name, "op": s.op, "error": s.error,
            "rank": rank.get(s.name), "worst": rank.get(s.name, worst + 1) <= worst,
            "rmse": s.rmse, "max_abs_error": s.max_abs_error, "scale": s.scale,
            "used_min": used[0], "used_max": used[1], "seen_min": seen[0], "seen_max": seen[1],
        })
    return pd.DataFrame(rows)


def axis_label(index: int, op: str) -> str:
    """`12 CONV_2D`: graph position and op (the full tensor name is in the hover)."""
    return f"{index} {op}"


def error_figure(series: Sequence[tuple[str, Sequence[LayerStat]]], worst: int = 5,
                 title: str = "Quantization error per layer (graph order)") -> go.Figure:
    """Error in quantization steps per layer, one bar trace per variant; the `worst`
    layers of each variant outlined in red."""
    fig = go.Figure()
    for (name, stats), colour in zip(series, COLOURS, strict=False):
        table = layer_table(stats, worst)
        quantized = table.dropna(subset=["error"])
        fig.add_bar(
            name=name, x=[axis_label(i, op) for i, op in zip(quantized["index"], quantized["op"],
                                                             strict=True)],
            y=quantized["error"], marker_color=colour,
            marker_line=dict(color=["#d62728" if w else colour for w in quantized["worst"]],
                             width=[3 if w else 0 for w in quantized["worst"]]),
            customdata=list(zip(quantized["layer"], quantized["op"], quantized["rank"],
                                strict=True)),
            hovertemplate=("<b>%{customdata[0]}</b><br>%{customdata[1]}<br>error %{y:.3f} steps"
                           "<br>rank %{customdata[2]}<extra>" + name + "</extra>"),
        )
    fig.update_layout(barmode="group", title=dict(text=title, x=0, xanchor="left"),
                      height=460, margin=dict(l=10, r=10, t=60, b=10),
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0))
    fig.update_xaxes(tickangle=-60, tickfont=dict(size=9))
    fig.update_yaxes(title="RMSE / scale (quantization steps)")
    return fig


def range_figure(stats: Sequence[LayerStat], name: str) -> go.Figure:
    """Per layer: the float range the quantized tensor can hold (bar) against the range the
    float model produced on the sample (line): clipping shows where the line leaves the bar."""
    table = layer_table(stats).dropna(subset=["used_min", "seen_min"])
    labels = [axis_label(i, op) for i, op in zip(table["index"], table["op"], strict=True)]
    fig = go.Figure()
    fig.add_bar(x=labels, y=table["used_max"] - table["used_min"], base=table["used_min"],
                name="range used (quantized)", marker_color="#c7d7ea",
                hovertemplate="%{x}<br>used %{base:.3g} to %{y:.3g} wide<extra></extra>")
    fig.add_scatter(x=labels, y=table["seen_max"], mode="lines+markers", name="observed max",
                    line=dict(color="#d62728"))
    fig.add_scatter(x=labels, y=table["seen_min"], mode="lines+markers", name="observed min",
                    line=dict(color="#1f77b4"))
    fig.update_layout(title=dict(text=f"{name}: range used against range observed", x=0,
                                 xanchor="left"),
                      height=420, margin=dict(l=10, r=10, t=60, b=10),
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0))
    fig.update_xaxes(tickangle=-60, tickfont=dict(size=9))
    return fig


def recovery_table(base: Result, kept: Sequence[Result], fp32: Result | None) -> pd.DataFrame:
    """What keeping layers in float buys (accuracy) and costs (size, latency), per variant;
    deltas against `base`."""
    rows = []
    for r in ([fp32] if fp32 else []) + [base, *sorted(kept, key=lambda r: r.spec.keep_float)]:
        rows.append({
            "variant": r.variant, "keep_float": r.spec.keep_float,
            "accuracy": r.accuracy, "accuracy_delta": r.accuracy - base.accuracy,
            "g_mean": r.g_mean, "file_size_bytes": r.file_size_bytes,
            "file_size_bytes_delta": (r.file_size_bytes or 0) - (base.file_size_bytes or 0),
            "latency_p50_ms": r.latency_p50_ms,
            "latency_p50_ms_delta": r.latency_p50_ms - base.latency_p50_ms,
        })
    return pd.DataFrame(rows)

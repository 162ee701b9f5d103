"""Layers: where quantization hurts. Per-layer error of one variant or two side by side,
the worst layers marked, and selective quantization: keep the N worst layers in float."""

from __future__ import annotations

import streamlit as st

from pages.common import job_panel, layout, reads, settings
from petq import layerviews, tables
from petq.errors import PetqError
from petq.jobs import start_job
from petq.types import VariantSpec

ws = layout.workspace_page("Layers")
test_fraction = settings.current().test_fraction
every = tables.latest_per_variant(
    [r for r in reads.results(ws) if r.test_fraction == test_fraction], ws.threads)
quantized = {r.variant: r for r in every
             if r.spec.recipe.quantized and not r.spec.is_native and not r.spec.keep_float}
if not quantized:
    st.info("No quantized variant evaluated yet: convert one (for example tflite-int8-0.08) "
            "first.")
    st.page_link(layout.CONVERT, label="Convert a variant", icon=":material/tune:")
    st.stop()

st.caption(
    f"Error of each layer's output in quantization steps (RMSE / scale) on "
    f"{ws.LAYER_SAMPLES} test images. Converter INT8 recipes: the error each layer adds "
    "itself (the debugger runs every quantized op beside a float copy on the same inputs). "
    "Other recipes: each op's output against the FP32 model's, error from earlier layers "
    "included. Rounding alone gives about 0.29 steps.")

names = list(quantized)
default_b = next((n for n in names if n.startswith("tflite-imbint8")), None)
left, right, worst_col = st.columns([2, 2, 1])
name_a = left.selectbox("Variant", names, index=names.index("tflite-int8-0.8")
                        if "tflite-int8-0.8" in names else 0, key="layers_a")
name_b = right.selectbox("Side by side with", [None, *[n for n in names if n != name_a]],
                         index=0 if default_b in (None, name_a) else
                         [None, *[n for n in names if n != name_a]].index(default_b),
                         format_func=lambda n: "nothing" if n is None else n, key="layers_b")
worst = int(worst_col.number_input("Worst layers marked", min_value=1, max_value=50, value=5,
                                   key="layers_worst"))
chosen = [quantized[n] for n in (name_a, name_b) if n]
stats = {r.variant: ws.cached_layer_stats(r.spec) for r in chosen}
missing = [r for r in chosen if stats[r.variant] is None]
if missing:
    st.info("Per-layer statistics are computed once per variant (a calibration with the "
            "quantization debugger: seconds on the demo) and then cached: "
            + ", ".join(f"`{r.variant}`" for r in missing) + " not yet.")
    if st.button("Compute per-layer error", type="primary", key="layers_compute"):
        try:
            job_panel.remember_job(start_job(
                ws.model_path, ws.dataset.root, ws.cache.root, ws.threads,
                [r.spec for r in missing], test_fraction, workspace=ws, layers=True))
        except PetqError as exc:
            st.error(str(exc))
        else:
            st.rerun()
    job_panel.job_panel(ws, "layers")
    st.stop()

st.plotly_chart(layerviews.error_figure([(n, s) for n, s in stats.items()], worst),
                width="stretch", key="layers_error")
tabs = st.tabs([f"Table: {n}" for n in stats] + [f"Ranges: {n}" for n in stats])
layer_columns = layout.config_of(layerviews.LAYER_COLUMNS)
for tab, layer_stats in zip(tabs, stats.values(), strict=False):
    table = layerviews.layer_table(layer_stats, worst)
    tab.dataframe(table.sort_values("rank", na_position="last"), hide_index=True,
                  width="stretch", column_config=layer_columns, placeholder=layout.MISSING)
for tab, (name, layer_stats) in zip(tabs[len(stats):], stats.items(), strict=False):
    tab.plotly_chart(layerviews.range_figure(layer_stats, name), width="stretch",
                     key=f"layers_range_{name}")

# ------------------------------------------------------------------ selective quantization

base = quantized[name_a]
st.subheader("Keep the worst layers in float")
if not base.spec.recipe.calibrates:
    st.info(f"`{base.variant}` does not calibrate activations: selective quantization applies "
            "to static recipes (tflite-int8, aeq-wi8-ai8...).")
    st.stop()
n_quantized = sum(s.error is not None for s in stats[name_a])
keep_n = int(st.number_input("Layers kept in float", min_value=1,
                             max_value=max(1, n_quantized - 1), value=min(3, n_quantized - 1)
                             if n_quantized > 1 else 1, key="layers_keep"))
spec = VariantSpec(base.spec.recipe, base.spec.calibration, keep_n)
kept = [r for r in every if r.spec.recipe == base.spec.recipe
        and r.spec.calibration == base.spec.calibration and r.spec.keep_float]
if ws.cached_result(spec, test_fraction) is None:
    if st.button(f"Convert and evaluate {spec.name}", key="layers_keep_start"):
        try:
            job_panel.remember_job(start_job(ws.model_path, ws.dataset.root, ws.cache.root,
                                          ws.threads, [spec], test_fraction, workspace=ws))
        except PetqError as exc:
            st.error(str(exc))
        else:
            st.rerun()
if kept:
    fp32 = next((r for r in every if r.spec == VariantSpec.fp32()), None)
    st.caption("What keeping layers in float recovers (accuracy) and costs (size, latency), "
               f"against `{base.variant}`. Compare gives paired tests of any two of these.")
    recovery = layerviews.recovery_table(base, kept, fp32).set_index("variant")
    layout.table(recovery, width="stretch")
job_panel.job_panel(ws, "layers")

"""petq dashboard, Home: the workspace, the cached variants, and the lab's task set.

Run with `streamlit run dashboard.py`. Without settings it opens the embedded
demo (shipped model, synthetic dataset); PETQ_MODEL, PETQ_DATASET_ROOT,
PETQ_CACHE and PETQ_THREADS, or the sidebar's Settings, point it elsewhere.
"""

from __future__ import annotations

import streamlit as st

import pages as ui
from petq import compare, demo
from petq.errors import PetqError
from petq.jobs import plan, start_job
from petq.types import lab_tasks

ui.page("petq: post-training quantization lab", tab="petq")

# ------------------------------------------------------------------ settings (sidebar)

current = ui.settings()
try:
    ws = ui.open_workspace(current)
    problem = None
except PetqError as exc:
    ws, problem = None, exc
with st.sidebar.expander("Settings", expanded=problem is not None):
    with st.form("home_settings"):
        model = st.text_input("Model (.keras / .h5)", value=current.model or "",
                              placeholder=f"demo: {demo.DEMO_MODEL.name}", key="home_model")
        dataset = st.text_input("Dataset root (Oxford-IIIT Pet layout)",
                                value=current.dataset or "",
                                placeholder="demo: synthetic pets", key="home_dataset")
        cache = st.text_input("Cache folder", value=current.cache, key="home_cache")
        threads = st.number_input("Inference threads (0: all cores)", min_value=0,
                                  max_value=64, value=current.threads or 0, key="home_threads")
        test_fraction = st.number_input(
            "Test dataset fraction", min_value=0.01, max_value=1.0, step=0.05,
            value=current.test_fraction, format="%.2f", key="home_test_fraction",
            help="The lab's --test-dataset-fraction: a stratified, seeded share of the test split.",
        )
        apply = st.form_submit_button("Apply")
    if apply:
        proposed = ui.Settings(
            model=model.strip() or None, dataset=dataset.strip() or None,
            cache=cache.strip() or current.cache, threads=int(threads) or None,
            test_fraction=float(test_fraction),
        )
        try:
            ui.open_workspace(proposed)
        except PetqError as exc:
            st.error(str(exc))
        else:
            ui.set_settings(proposed)
            st.rerun()
    if st.button("Back to the demo defaults", key="home_reset"):
        ui.set_settings(ui.Settings.from_env())
        st.rerun()

# ------------------------------------------------------------------ workspace

st.caption("Convert a Keras image classifier to TFLite FP32 and INT8, evaluate every variant "
           "on the same test images, and compare the trade-offs.")

if problem is not None:
    st.error(f"Cannot open the workspace: {problem}")
    if current.model is None and not demo.DEMO_MODEL.exists():
        st.info("The demo model is missing: train it with `python -m petq train`, or point "
                "**Settings** (sidebar) at a Keras model.")
    else:
        st.info("Point **Settings** (sidebar) at a Keras model and an Oxford-IIIT-Pet-layout "
                "dataset.")
    st.stop()
ui.synthetic_note(ws)
ui.sidebar_workspace(ws)
settings = ui.settings()
info = ui.model_info(ws)

model_col, data_col = st.columns(2)
with model_col:
    st.subheader("Model")
    a, b, c = st.columns(3)
    count = info["param_count"]
    a.metric("Parameters", f"{count / 1e6:.2f} M" if count >= 1e6 else f"{count:,}",
             help=f"{info['param_count']:,} parameters")
    b.metric("Input", f"{ws.contract.input_size[0]}×{ws.contract.input_size[1]}")
    size = info.get("file_size_bytes")
    c.metric("Size on disk", compare.human_size(size) if size else "folder")
    st.caption(f"`{ws.model_path}` · {len(ws.class_names)} classes"
               + (" · trained on synthetic data" if ws.contract.synthetic else ""))
with data_col:
    st.subheader("Dataset")
    a, b, c = st.columns(3)
    a.metric("Breeds", f"{ws.dataset.num_classes}")
    b.metric("Trainval images", f"{len(ws.dataset.trainval):,}")
    c.metric("Test images", f"{len(ws.dataset.test):,}")
    kind = ("synthetic pets (generated, not photos)" if ws.dataset.synthetic
            else "Oxford-IIIT Pet layout")
    st.caption(f"{kind} · `{ws.dataset.root}`")

# ------------------------------------------------------------------ cached variants

st.subheader("Cached variants")
rows = ui.results(ws)
if not rows:
    st.info("Nothing evaluated yet. Run the lab's task set below, or convert a variant on the "
            "**Convert** page.")
else:
    table = compare.comparison_table(rows, {}, None)
    view = table[["variant", "precision", "test_fraction", "accuracy", "g_mean",
                  "latency_mean_ms", "file_size_bytes", "calibration_count"]]
    st.dataframe(
        view, hide_index=True, width="stretch",
        column_config={
            "variant": "Variant", "precision": "Precision",
            "test_fraction": st.column_config.NumberColumn("Test fraction", format="%.2f"),
            "accuracy": st.column_config.NumberColumn("Accuracy", format="%.4f"),
            "g_mean": st.column_config.NumberColumn("G-Mean", format="%.4f"),
            "latency_mean_ms": st.column_config.NumberColumn("Latency (ms)", format="%.2f"),
            "file_size_bytes": st.column_config.NumberColumn("Size (bytes)", format="%d"),
            "calibration_count": st.column_config.NumberColumn("Calibration images"),
        },
    )
    st.plotly_chart(compare.pareto_scatter(table), width="stretch", key="home_bubbles")

# ------------------------------------------------------------------ the lab's task set

st.subheader("The lab's task set")
st.caption("native, tflite-fp32, tflite-int8 at 0.01 / 0.08 / 0.3 / 0.8 of trainval, and "
           "tflite-imbint8 (calibrated on one class), evaluated on "
           f"{compare.fraction_text(settings.test_fraction)}.")
tasks = plan(ws, lab_tasks(), settings.test_fraction)
st.dataframe(
    [{"Variant": t["name"], "Status": t["status"], "Why": t["reason"] or ""} for t in tasks],
    hide_index=True, width="stretch",
)
to_run = [t["spec"] for t in tasks if t["status"] == "to do"]
if to_run:
    label = f"Run the lab's task set ({len(to_run)} to do)"
elif any(t["status"] == "running" for t in tasks):
    label = "The lab's task set is running…"
else:
    label = "The lab's task set is done"
if st.button(label, type="primary", disabled=not to_run, key="home_run_lab"):
    try:
        ui.remember_job(start_job(ws.model_path, ws.dataset.root, ws.cache.root, ws.threads,
                                  to_run, settings.test_fraction, workspace=ws))
    except PetqError as exc:
        st.error(str(exc))
    else:
        st.rerun()
ui.job_panel(ws, "home")

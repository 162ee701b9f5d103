"""Home: the workspace, the cached variants, and the lab's task set."""

from __future__ import annotations

import streamlit as st

from pages.common import job_panel, layout, reads, settings
from petq import figures, tables
from petq.errors import PetqError
from petq.jobs import PlanStatus, plan, start_job
from petq.types import lab_tasks

ws = layout.workspace_page("petq: post-training quantization lab")
test_fraction = settings.current().test_fraction
info = reads.model_info(ws)

st.caption("Convert a Keras image classifier to TFLite variants (converter and AI Edge "
           "Quantizer recipes), evaluate every variant on the same test images, and compare "
           "the trade-offs.")

model_col, data_col = st.columns(2)
with model_col:
    st.subheader("Model")
    a, b, c = st.columns(3)
    count = info["param_count"]
    a.metric("Parameters", f"{count / 1e6:.2f} M" if count >= 1e6 else f"{count:,}",
             help=f"{count:,} parameters")
    b.metric("Input", f"{ws.contract.input_size[0]}×{ws.contract.input_size[1]}")
    size = info.get("file_size_bytes")
    c.metric("Size on disk", tables.human_size(size) if size else "folder")
    st.caption(f"`{ws.model_path}` · {len(ws.class_names)} classes · preprocessing "
               f"`{ws.contract.preprocessing}`"
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
every = reads.results(ws)
shown = tables.latest_per_variant(
    [r for r in every if r.test_fraction == test_fraction], ws.threads)
if not shown:
    st.info("Nothing evaluated on "
            f"{tables.fraction_text(test_fraction)} yet. Run the lab's task set "
            "below, or convert a variant on the **Convert** page.")
else:
    table = tables.comparison_table(shown, {}, None)
    layout.table(tables.view(table, tables.HOME_VIEW), width="stretch")
    others = len(tables.latest_per_variant(every)) - len(shown)
    st.caption(f"Evaluated on {tables.fraction_text(test_fraction)}: test images "
               f"{shown[0].images.text()}"  # skipped: missing or undecodable, by reason
               + (f"; {others} more on other test fractions (see **Compare**)." if others > 0
                  else "."))
    st.plotly_chart(layout.figure(figures.pareto_scatter, table), width="stretch",
                    key="home_bubbles")

# ------------------------------------------------------------------ the lab's task set

st.subheader("The lab's task set")
st.caption("native, tflite-fp32, tflite-int8 at 0.01 / 0.08 / 0.3 / 0.8 of trainval, and "
           "tflite-imbint8 (calibrated on one class), evaluated on "
           f"{tables.fraction_text(test_fraction)}.")
tasks = plan(ws, lab_tasks(), test_fraction)
skipped = any(t.reason for t in tasks)
st.dataframe(
    [{"Variant": t.name, "Status": t.status.value} | ({"Why": t.reason or ""} if skipped else {})
     for t in tasks],
    hide_index=True, width="stretch",
)
to_run = [t.spec for t in tasks if t.status is PlanStatus.TODO]
if to_run:
    action = f"Run the lab's task set ({len(to_run)} to do)"
elif any(t.status is PlanStatus.RUNNING for t in tasks):
    action = "The lab's task set is running…"
else:
    action = "The lab's task set is done"
if st.button(action, type="primary", disabled=not to_run, key="home_run_lab"):
    try:
        job_panel.remember_job(start_job(ws.model_path, ws.dataset.root, ws.cache.root,
                                      ws.threads, to_run, test_fraction, workspace=ws))
    except PetqError as exc:
        st.error(str(exc))
    else:
        st.rerun()
job_panel.job_panel(ws, "home")

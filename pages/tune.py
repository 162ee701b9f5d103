"""Tune: which variant to ship. `petq tune` in a background process: a search over
recipes, selected on one part of the test images and certified on the other."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from pages.common import layout
from petq.errors import PetqError
from petq.tune import DEFAULT_BUDGET, OBJECTIVES, TuneConfig
from petq.tunerun import list_runs, read_run, start_run, stop_run

ws = layout.workspace_page("Tune")
st.caption(
    "Finds the smallest (or fastest) variant whose drop against FP32 is certified below "
    "your limit: candidates are ranked on one half of the test images and the chosen one "
    "is certified on the other half, which the search never saw (a one-sided paired "
    "bound). Calibration only uses trainval images.")

with st.form("tune_form"):
    left, right = st.columns(2)
    drop_points = left.slider("Max drop (points of the metric, or % with relative)", 0.1,
                              10.0, 2.0, 0.1, key="tune_drop")
    confidence = right.slider("Confidence", 0.80, 0.99, 0.95, 0.01, key="tune_confidence")
    objective = left.radio("Objective", OBJECTIVES, horizontal=True, key="tune_objective")
    metric = right.radio("Metric", ("accuracy", "g-mean"), horizontal=True, key="tune_metric")
    relative = left.checkbox("Relative to the reference", key="tune_relative")
    guard = right.multiselect("Breeds to guard (none: no guard)", list(ws.class_names),
                              key="tune_guard")
    budget = left.number_input("Budget (candidates built)", 1, 100, DEFAULT_BUDGET,
                               key="tune_budget")
    seed = right.number_input("Split seed", 0, 2**31 - 1, 0, key="tune_seed")
    started = st.form_submit_button("Start tuning", type="primary")

if started:
    try:
        config = TuneConfig(max_drop=drop_points / 100, relative=relative, metric=metric,
                            confidence=confidence, objective=objective,
                            guard_breeds=tuple(ws.class_index(b) for b in guard) or None,
                            budget=int(budget), seed=int(seed))
        st.session_state["tune_run"] = str(start_run(ws, config))
    except PetqError as exc:
        st.error(str(exc))

runs = list_runs(ws.cache.root)
if not runs:
    st.info("No tune has run on this cache yet.")
    st.stop()
names = [p.name for p in runs]
current = st.session_state.get("tune_run")
index = names.index(current.rsplit("/", 1)[-1]) if current and current.rsplit(
    "/", 1)[-1] in names else 0
picked = st.selectbox("Run", names, index=index, key="tune_picked")
folder = runs[names.index(picked)]


@st.fragment(run_every=1.0 if read_run(folder).running else None)
def show_run() -> None:
    status = read_run(folder)
    if status.running:
        st.progress(min(1.0, status.built / max(status.budget, 1)),
                    text=f"{status.built}/{status.budget} candidates built · running")
        st.code("\n".join(status.lines[-12:]) or "starting", language=None)
        if st.button("Stop", key="tune_stop"):
            stop_run(folder)
            st.rerun(scope="app")
        return
    if status.state == "failed":
        st.error(status.error)
        return
    if status.state == "stopped":
        st.warning("Stopped before it decided.")
        return
    (st.success if status.certified else st.warning)(status.decision)
    for line in status.advice:
        st.markdown(f"- {line}")
    if status.chosen_file is not None:
        st.download_button(f"Download {status.chosen_file.name}",
                           status.chosen_file.read_bytes(), file_name=status.chosen_file.name,
                           mime="application/octet-stream", key="tune_download")
    frame = pd.DataFrame([row.__dict__ for row in status.rows])
    if frame.empty:
        return
    unit = "%" if status.relative else "points"
    x_label = "size (bytes)" if status.objective == "size" else "latency p50 (ms)"
    plotted = frame.dropna(subset=["objective", "metric"]).assign(
        front=lambda f: f["pareto"].map({True: "Pareto front", False: "dominated"}))
    if not plotted.empty:
        figure = px.scatter(plotted, x="objective", y="metric", color="front",
                            hover_name="variant", hover_data=["verdict"],
                            labels={"objective": x_label,
                                    "metric": f"{status.metric} (selection part)"},
                            title=f"{x_label.capitalize()} against {status.metric}")
        front = plotted[plotted["pareto"]].sort_values("objective")
        figure.add_scatter(x=front["objective"], y=front["metric"], mode="lines",
                           line={"dash": "dot"}, showlegend=False, hoverinfo="skip")
        st.plotly_chart(figure, width="stretch", key="tune_pareto")
    shown = frame.assign(change=frame["change"] * 100, bound=frame["bound"] * 100)
    st.dataframe(shown, hide_index=True, width="stretch", column_config={
        "objective": st.column_config.NumberColumn(x_label),
        "metric": st.column_config.NumberColumn(f"{status.metric} (selection)",
                                                format="%.4f"),
        "change": st.column_config.NumberColumn(f"change ({unit})", format="%+.1f"),
        "bound": st.column_config.NumberColumn(f"lower bound ({unit})", format="%+.1f"),
    })
    st.caption(f"Files: {status.folder} (tune.md, tune.json with both image lists, the "
               "chosen .tflite and its recipe).")


show_run()

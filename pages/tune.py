"""Tune: which variant to ship. A tune runs as a background job (petq.jobs, kind TUNE): a
search over recipes, selected on one part of the test images and certified on the other;
the page follows its progress per candidate and reads its outputs once done."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from pages.common import job_panel, layout
from petq.errors import PetqError
from petq.jobs import Job, Status, cancel_job, job_status, list_jobs, start_task_job
from petq.tune import DEFAULT_BUDGET, OBJECTIVES, TuneConfig
from petq.tunerun import read_outputs
from petq.types import JobKind, Stage

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
        job_id = start_task_job(ws, config)
    except PetqError as exc:
        st.error(str(exc))
    else:
        job_panel.remember_job(job_id)
        st.session_state["tune_job"] = job_id

tunes = [j for j in list_jobs(ws.cache.root) if j.kind is JobKind.TUNE]
if not tunes:
    st.info("No tune has run on this cache yet.")
    st.stop()
ids = [j.id for j in tunes]
titles = {j.id: f"{j.id} · {j.state.value} · {j.title}" for j in tunes}
current = st.session_state.get("tune_job")
picked = st.selectbox("Tune", ids, index=ids.index(current) if current in ids else 0,
                      format_func=titles.get, key="tune_picked")


def show_progress(job: Job) -> None:
    st.progress(job.fraction, text=f"{job.stage_done}/{job.stage_total or job.config.budget} "
                                   f"candidates built · {job.state.value}")
    if job.stage is not None and (job.current or job.stage is not Stage.CANDIDATES):
        st.caption(job.stage_text)  # the candidate at work, or what the job waits for
    st.code("\n".join(job.lines[-12:]) or "starting", language=None)
    if st.button("Stop", key="tune_stop"):
        cancel_job(job.cache_root, job.id)
        st.rerun(scope="app")


shown = job_status(ws.cache.root, picked)
polling = shown is not None and shown.active


@st.fragment(run_every=1.0 if polling else None)
def show_tune() -> None:
    job = job_status(ws.cache.root, picked)
    if job is None:
        st.warning(f"Job {picked} is gone (pruned).")
        return
    if polling and not job.active:  # it ended: redraw the page (the job panel too)
        st.rerun(scope="app")
    if job.active:
        show_progress(job)
        return
    if job.state is Status.FAILED:
        st.error(job.error or "the tune failed")
        return
    if job.state is Status.CANCELLED:
        st.warning("Stopped before it decided.")
        return
    status = read_outputs(job.results_path)
    if status is None:
        st.error(f"{job.results_path}: the tune finished but its tune.json is missing")
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
        low, high = plotted["metric"].min(), plotted["metric"].max()
        figure.update_yaxes(range=[max(0.0, low - 0.05), min(1.0, high) + 0.02])  # in [0, 1]
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


show_tune()

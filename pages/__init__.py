"""Helpers shared by the dashboard's pages: which workspace, cached queries, job progress.

Streamlit never runs `__init__.py` as a page, so this module holds what every
page needs without being one. Everything computed comes from `petq`; this only
picks the workspace, caches the library's answers and lays out common parts.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from petq import compare, demo
from petq.errors import ModelError, PetqError
from petq.jobs import ACTIVE, cancel_job, job_status, list_jobs
from petq.types import VariantSpec

SETTINGS_KEY = "petq_settings"
JOBS_KEY = "petq_jobs"  # ids of jobs this session started
PROGRESS_SEEN_KEY = "petq_jobs_progress_seen"  # job id -> (state, variants done) last shown
_DEMO_LOCK = threading.Lock()
# petq.report draws with matplotlib's pyplot, whose state is global: one drawing at a time.
_REPORT_LOCK = threading.Lock()
NAV = (  # the sidebar's links; Streamlit's own list is off (.streamlit/config.toml)
    ("dashboard.py", "Home", ":material/home:"),
    ("pages/1_Convert.py", "Convert", ":material/tune:"),
    ("pages/2_Compare.py", "Compare", ":material/compare_arrows:"),
    ("pages/3_Classify.py", "Classify", ":material/pets:"),
    ("pages/4_Report.py", "Report", ":material/description:"),
)


def page(title: str, tab: str | None = None) -> None:
    """Page setup shared by every page: config, the sidebar's links, the title."""
    st.set_page_config(page_title=tab or f"petq · {title}", page_icon="🐾", layout="wide")
    with st.sidebar:
        for path, label, icon in NAV:
            st.page_link(path, label=label, icon=icon)
        st.divider()
    st.title(title)


@dataclass(frozen=True)
class Settings:
    """Where the workspace lives. `None` model or dataset means the embedded demo's."""

    model: str | None
    dataset: str | None
    cache: str
    threads: int | None
    test_fraction: float = 1.0

    @classmethod
    def from_env(cls) -> Settings:
        threads = os.environ.get("PETQ_THREADS")
        return cls(
            model=os.environ.get("PETQ_MODEL") or None,
            dataset=os.environ.get("PETQ_DATASET_ROOT") or None,
            cache=str(Path(os.environ.get("PETQ_CACHE") or demo.cache_dir()).resolve()),
            threads=int(threads) if threads else None,
            test_fraction=float(os.environ.get("PETQ_TEST_FRACTION") or 1.0),
        )

    @property
    def model_path(self) -> str:
        return self.model or str(demo.DEMO_MODEL)


def settings() -> Settings:
    if SETTINGS_KEY not in st.session_state:
        st.session_state[SETTINGS_KEY] = Settings.from_env()
    return st.session_state[SETTINGS_KEY]


def set_settings(new: Settings) -> None:
    st.session_state[SETTINGS_KEY] = new


def _mtime(path: str) -> float:
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return 0.0


def _demo_dataset() -> str:
    """The synthetic demo dataset's folder, generated on the first run (with progress)."""
    root = demo.demo_dataset_root()
    with _DEMO_LOCK:
        if (root / "SYNTHETIC").exists():
            return str(demo.ensure_demo_dataset())
        bar = st.progress(0.0, text="Generating the synthetic demo dataset (first run only)…")
        path = demo.ensure_demo_dataset(
            lambda done, total: bar.progress(done / max(total, 1),
                                             text=f"Generating the synthetic demo dataset: "
                                                  f"{done}/{total} images (first run only)")
        )
        bar.empty()
        return str(path)


WorkspaceKey = tuple[str, str, str, "int | None", float]


@st.cache_resource(show_spinner=False, max_entries=8)
def _workspace(model: str, dataset: str, cache: str, threads: int | None, _mtime_key: float):
    # A Workspace holds paths, the parsed dataset lists and no interpreter: safe to share.
    from petq.workspace import Workspace

    return Workspace(model, dataset, cache, threads)


def workspace_key(current: Settings | None = None) -> WorkspaceKey:
    """(model, dataset, cache, threads, model mtime): what identifies a workspace."""
    current = current or settings()
    model = current.model_path
    if not Path(model).exists():  # before generating the demo dataset for nothing
        raise ModelError(f"{model}: model file not found")
    dataset = current.dataset or _demo_dataset()
    return (model, dataset, current.cache, current.threads, _mtime(model))


def open_workspace(current: Settings | None = None):
    """The Workspace for the settings, or raises PetqError."""
    return _workspace(*workspace_key(current))


def workspace_page(title: str):
    """A page that shows a workspace: setup, the workspace (or a stop), the synthetic-data
    note and the sidebar line. Returns the workspace."""
    page(title)
    ws = workspace_or_stop()
    synthetic_note(ws)
    sidebar_workspace(ws)
    return ws


def workspace_or_stop():
    """The current Workspace; on a bad model or dataset, a clear error and the page stops."""
    try:
        return open_workspace()
    except PetqError as exc:
        st.error(f"Cannot open the workspace: {exc}")
        st.info("Point the **Settings** in the Home page's sidebar at a model and a dataset.")
        st.page_link("dashboard.py", label="Home", icon=":material/home:")
        st.stop()


def ws_key(ws) -> WorkspaceKey:
    return (str(ws.model_path), str(ws.dataset.root), str(ws.cache.root), ws.threads,
            _mtime(str(ws.model_path)))


def _stamp(ws, kind: str) -> int:
    """Changes whenever an entry of this cache kind is added or replaced."""
    try:
        return (Path(ws.cache.root) / kind).stat().st_mtime_ns
    except OSError:
        return 0


@st.cache_data(show_spinner=False, max_entries=32)
def _results(key: WorkspaceKey, stamp: int) -> list[dict[str, Any]]:
    return _workspace(*key).results()


def rows_for_one_test_set(ws, key: str, empty: str, link: tuple[str, str, str]
                          ) -> tuple[float, list[dict[str, Any]]]:
    """The latest row per variant on one test set (a picker when there are several).

    Stops the page with `empty` and a link (page, label, icon) when nothing is cached.
    """
    all_rows = results(ws)
    if not all_rows:
        st.info(empty)
        st.page_link(link[0], label=link[1], icon=link[2])
        st.stop()
    fractions = compare.test_fractions(all_rows)
    fraction = fractions[0]
    if len(fractions) > 1:
        fraction = st.selectbox(
            "Test set", fractions, format_func=lambda f: f"{f:g} of the test split", key=key,
            help="Variants compare only on the same test images.",
        )
    return fraction, compare.latest_per_variant(
        [r for r in all_rows if r["test_fraction"] == fraction]
    )


def results(ws) -> list[dict[str, Any]]:
    """Every cached result row of the workspace (re-read when the results folder changes)."""
    return _results(ws_key(ws), _stamp(ws, "results"))


@st.cache_data(show_spinner=False, max_entries=256)
def _details(key: WorkspaceKey, result_key: str) -> dict[str, Any]:
    return _workspace(*key).details(result_key)


def details(ws, result_key: str) -> dict[str, Any]:
    return _details(ws_key(ws), result_key)


@st.cache_data(show_spinner="Reading the model (first time only)…", max_entries=8)
def _model_info(key: WorkspaceKey) -> dict[str, Any]:
    return _workspace(*key).model_info()


def model_info(ws) -> dict[str, Any]:
    return _model_info(ws_key(ws))


@st.cache_data(show_spinner=False, max_entries=16)
def _available(key: WorkspaceKey, stamp: int) -> dict[str, tuple[str, str]]:
    return {spec.name: (json.dumps(spec.to_dict(), sort_keys=True), artifact)
            for spec, artifact in compare.available_variants(_workspace(*key))}


def available_variants(ws) -> dict[str, tuple[str, str]]:
    """Variant name -> (spec as JSON, artifact key), for native and every cached .tflite."""
    return _available(ws_key(ws), _stamp(ws, "variants"))


@st.cache_resource(show_spinner=False, max_entries=32)
def _runner(key: WorkspaceKey, spec_json: str, artifact: str):
    # Shared across sessions: Runner.predict holds the runner's lock around each call.
    ws = _workspace(*key)
    loaded = ws.runner(VariantSpec.from_dict(json.loads(spec_json)))
    height, width = ws.contract.input_size
    loaded.predict(np.zeros((1, height, width, 3), np.float32))  # warm up: first call traces
    return loaded


def runner(ws, spec_json: str, artifact: str):
    """A shared, lock-protected runner for a converted variant (`artifact`: its cache key)."""
    return _runner(ws_key(ws), spec_json, artifact)


@st.cache_data(show_spinner="Writing the summary…", max_entries=16)
def _report_summary(key: WorkspaceKey, stamp: int, test_fraction: float) -> str:
    from petq import report

    ws = _workspace(*key)
    rows = [r for r in ws.results() if r["test_fraction"] == test_fraction]
    return report.summary_markdown(ws, compare.latest_per_variant(rows))


def report_summary(ws, test_fraction: float) -> str:
    """The lab's summary for the results on one test fraction (re-made when results change)."""
    return _report_summary(ws_key(ws), _stamp(ws, "results"), test_fraction)


@st.cache_data(show_spinner=False, max_entries=256)
def _report_metrics(key: WorkspaceKey, result_key: str) -> str:
    from petq import report

    row = next(r for r in _workspace(*key).results() if r["result_key"] == result_key)
    return report.metrics_markdown(row)


def report_metrics(ws, result_key: str) -> str:
    return _report_metrics(ws_key(ws), result_key)


@st.cache_data(show_spinner="Drawing the confusion matrix…", max_entries=256)
def _report_confusion_png(key: WorkspaceKey, result_key: str, title: str) -> bytes:
    from petq import report

    with _REPORT_LOCK:
        return report.confusion_png(_workspace(*key).details(result_key), title)


def report_confusion_png(ws, result_key: str, title: str) -> bytes:
    return _report_confusion_png(ws_key(ws), result_key, title)


def report_zip(ws, rows: list[dict[str, Any]]) -> bytes:
    """The report as a zip (made when the download button is clicked)."""
    from petq import report

    with _REPORT_LOCK:
        return report.report_zip(ws, rows)


def synthetic_note(ws) -> None:
    """Say so whenever what is shown comes from synthetic data."""
    if ws.dataset.synthetic or ws.contract.synthetic:
        st.warning(
            "**Synthetic data.** "
            + ("The model was trained on synthetic pet images. " if ws.contract.synthetic else "")
            + ("The dataset is synthetic. " if ws.dataset.synthetic else "")
            + "The numbers show how petq works, not how a model behaves on real pets.",
            icon=":material/science:",
        )


def sidebar_workspace(ws) -> None:
    """A short line in the sidebar: which model and dataset every page shows."""
    with st.sidebar:
        st.caption(
            f"**Model** `{ws.model_path.name}`  \n**Dataset** "
            f"{'synthetic' if ws.dataset.synthetic else 'Oxford-IIIT Pet layout'} "
            f"`{ws.dataset.root.name}`  \n{ws.threads} inference thread(s), evaluated on "
            f"{compare.fraction_text(settings().test_fraction)}"
        )


# ---------------------------------------------------------------- jobs


def remember_job(job_id: str) -> None:
    st.session_state.setdefault(JOBS_KEY, [])
    if job_id not in st.session_state[JOBS_KEY]:
        st.session_state[JOBS_KEY].append(job_id)


def _jobs_to_show(cache: str) -> list[dict[str, Any]]:
    """Running jobs of any session, and this session's finished ones."""
    shown = {j["id"]: j for j in list_jobs(cache, active_only=True)}
    for job_id in st.session_state.get(JOBS_KEY, []):
        if job_id not in shown:
            record = job_status(cache, job_id)
            if record is not None:
                shown[job_id] = record
    return sorted(shown.values(), key=lambda j: j.get("created", 0), reverse=True)


STAGES = {
    "start": "starting the worker (loading TensorFlow)", "decode": "decoding the dataset (once)",
    "calibrate": "calibrating", "convert": "converting", "evaluate": "evaluating",
    "latency": "measuring latency", "figures": "drawing the confusion matrix",
}


def _stage_text(job: dict[str, Any]) -> str:
    stage = job.get("stage") or "start"
    count = (f" {job['stage_done']}/{job['stage_total']}"
             if job.get("stage_total") and stage not in ("convert", "latency", "figures") else "")
    what = STAGES.get(stage, stage) + count
    return f"{job['current']}: {what}" if job.get("current") else what


def _job_box(job: dict[str, Any], key_prefix: str) -> None:
    names = ", ".join(v["name"] for v in job["variants"])
    with st.container(border=True):
        st.markdown(f"**Job {job['id']}** · {names}")
        st.progress(float(job.get("fraction", 0.0)),
                    text=f"{job['done']}/{job['total']} variants done · {job['state']}")
        if job["state"] == "running":
            st.progress(float(job.get("stage_fraction", 0.0)), text=_stage_text(job))
        marks = {"done": ":material/check_circle:", "failed": ":material/error:",
                 "running": ":material/hourglass_top:", "queued": ":material/schedule:",
                 "cancelled": ":material/cancel:"}
        st.caption("  ".join(
            f"{marks.get(v['status'], '·')} {v['name']}"
            + (" (cached)" if v.get("cached") else "") for v in job["variants"]
        ))
        if job["state"] == "failed":
            st.error(job.get("error") or "the job failed")
        if job["state"] in ACTIVE and st.button(
            "Cancel", key=f"{key_prefix}_cancel_{job['id']}"
        ):
            cancel_job(job["cache_root"], job["id"])
            st.rerun(scope="app")


def _progress_marks(jobs: list[dict[str, Any]]) -> dict[str, tuple[str, int]]:
    return {j["id"]: (j["state"], j.get("done", 0)) for j in jobs}


def job_panel(ws, key_prefix: str) -> None:
    """Progress of running jobs, polled every second outside the page's own run.

    Whenever a variant or a job finishes, the whole page reruns so its tables
    and charts pick up the new results.
    """
    cache = str(ws.cache.root)
    jobs = _jobs_to_show(cache)
    active = [j for j in jobs if j["state"] in ACTIVE]
    st.session_state[PROGRESS_SEEN_KEY] = _progress_marks(jobs)

    @st.fragment(run_every=1.0 if active else None)
    def panel() -> None:
        current = _jobs_to_show(cache)
        marks = _progress_marks(current)
        seen = st.session_state.get(PROGRESS_SEEN_KEY, {})
        if any(seen.get(job_id, (None, 0)) != mark and (mark[0] not in ACTIVE or mark[1])
               for job_id, mark in marks.items()):
            st.session_state[PROGRESS_SEEN_KEY] = marks
            st.rerun(scope="app")
        for job in current[:5]:
            _job_box(job, key_prefix)
        finished_mine = [j for j in current if j["state"] not in ACTIVE]
        if finished_mine and st.button("Clear finished jobs", key=f"{key_prefix}_clear_jobs"):
            done = {j["id"] for j in finished_mine}
            st.session_state[JOBS_KEY] = [
                i for i in st.session_state.get(JOBS_KEY, []) if i not in done
            ]
            st.rerun(scope="app")

    if jobs:
        st.subheader("Jobs")
        panel()

"""What every dashboard page shares: the settings, the workspace, cached library answers,
table columns and job progress.

`dashboard.py` draws the frame (navigation, the settings in the sidebar, the workspace
line); each page in this folder calls `workspace_page(title)` and then lays out calls
into `petq`. Everything computed comes from `petq`; this only picks the workspace,
caches the library's answers keyed by what identifies them, and lays out common parts.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from petq import compare, demo
from petq.errors import ModelError, PetqError
from petq.jobs import ACTIVE, cancel_job, job_status, list_jobs, restart_job
from petq.results import Details, Result
from petq.types import PREPROCESSING, VariantSpec, load_contract

SETTINGS_KEY = "petq_settings"
JOBS_KEY = "petq_jobs"  # ids of jobs this session started
PROGRESS_SEEN_KEY = "petq_jobs_progress_seen"  # job id -> (state, variants done) last shown
MODELS_DIR = demo.DEMO_MODEL.parent
MODEL_SUFFIXES = (".keras", ".h5", ".tflite")
OTHER_MODEL = "Other path…"
_DEMO_LOCK = threading.Lock()

# The pages, by file: dashboard.py registers them with st.navigation; links use these paths.
HOME = "app/home.py"
CONVERT = "app/convert.py"
COMPARE = "app/compare.py"
CLASSIFY = "app/classify.py"
REPORT = "app/report.py"


@dataclass(frozen=True)
class Settings:
    """Where the workspace lives. `None` model or dataset means the embedded demo's;
    `None` preprocessing means the model's own (its sidecar's)."""

    model: str | None
    dataset: str | None
    cache: str
    threads: int | None
    test_fraction: float = 1.0
    preprocessing: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        threads = os.environ.get("PETQ_THREADS")
        return cls(
            model=os.environ.get("PETQ_MODEL") or None,
            dataset=os.environ.get("PETQ_DATASET_ROOT") or None,
            cache=str(Path(os.environ.get("PETQ_CACHE") or demo.cache_dir()).resolve()),
            threads=int(threads) if threads else None,
            test_fraction=float(os.environ.get("PETQ_TEST_FRACTION") or 1.0),
            preprocessing=os.environ.get("PETQ_PREPROCESSING") or None,
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


def model_files(folder: Path = MODELS_DIR) -> list[str]:
    """The model files in `models/` (Keras, H5, TFLite), by name."""
    if not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.iterdir()
                  if p.is_file() and p.suffix in MODEL_SUFFIXES)


def sidecar_preprocessing(model: str) -> str | None:
    """The preprocessing the model's sidecar names (None without a readable sidecar)."""
    try:
        contract = load_contract(Path(model))
    except PetqError:
        return None
    return contract.preprocessing


def _model_stamp(path: str) -> tuple[int, int]:
    """(mtime in ns, size) of the model file: changes when the file is replaced in place."""
    try:
        stat = Path(path).stat()
    except OSError:
        return (0, 0)
    return (stat.st_mtime_ns, stat.st_size)


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


# model, dataset, cache, threads, preprocessing, model stamp
WorkspaceKey = tuple[str, str, str, "int | None", "str | None", tuple[int, int]]


@st.cache_resource(show_spinner=False, max_entries=8)
def _workspace(model: str, dataset: str, cache: str, threads: int | None,
               preprocessing: str | None, model_stamp: tuple[int, int]):
    # `model_stamp` is part of the key (no leading underscore): a model replaced at the same
    # path opens a new workspace. A Workspace holds paths, the parsed dataset lists and no
    # interpreter: safe to share across sessions.
    return demo.default_workspace(model, dataset, cache, threads, preprocessing=preprocessing)


def workspace_key(current: Settings | None = None) -> WorkspaceKey:
    """What identifies a workspace: its paths, threads, preprocessing and the model file's
    (mtime, size)."""
    current = current or settings()
    model = current.model_path
    if not Path(model).exists():  # before generating the demo dataset for nothing
        raise ModelError(f"{model}: model file not found")
    dataset = current.dataset or _demo_dataset()
    return (model, dataset, current.cache, current.threads, current.preprocessing,
            _model_stamp(model))


def open_workspace(current: Settings | None = None):
    """The Workspace for the settings, or raises PetqError."""
    return _workspace(*workspace_key(current))


def ws_key(ws) -> WorkspaceKey:
    """The key the page's workspace was opened with (the current settings')."""
    return workspace_key()


def page_header(title: str) -> None:
    st.set_page_config(page_title=f"petq · {title}")
    st.title(title)


def workspace_page(title: str):
    """The top of a page that shows a workspace: its title, the workspace (or an error and
    a stop) and the synthetic-data note. Returns the workspace."""
    page_header(title)
    try:
        ws = open_workspace()
    except PetqError as exc:
        st.error(f"Cannot open the workspace: {exc}")
        if settings().model is None and not demo.DEMO_MODEL.exists():
            st.info("The demo model is missing: train it with `python -m petq train`, or pick "
                    "a model in **Settings** (sidebar).")
        else:
            st.info("Point **Settings** (sidebar) at a model and an Oxford-IIIT-Pet-layout "
                    "dataset.")
        st.stop()
    synthetic_note(ws)
    return ws


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


# ---------------------------------------------------------------- the frame (sidebar)


def settings_form() -> None:
    """The sidebar's Settings: model, dataset, cache, threads, test fraction, preprocessing.
    Applied only when the new workspace opens; otherwise the error is shown and the old
    settings stay."""
    current = settings()
    try:
        open_workspace(current)
        problem = None
    except PetqError as exc:
        problem = exc
    models = model_files()
    in_list = current.model_path in models
    options = [*models, OTHER_MODEL]
    with st.sidebar.expander("Settings", expanded=problem is not None), \
            st.form("settings_form", border=False):
        choice = st.selectbox(
            "Model", options, index=options.index(current.model_path if in_list else OTHER_MODEL),
            format_func=lambda p: p if p == OTHER_MODEL else Path(p).name, key="settings_model",
            help=f"The model files in `{MODELS_DIR}` ({', '.join(MODEL_SUFFIXES)}), or another "
                 "path below.")
        other = st.text_input("Other model path", value="" if in_list else current.model_path,
                              placeholder="/path/to/model.keras", key="settings_model_path",
                              help=f"Used when the model is '{OTHER_MODEL}'.")
        own = sidecar_preprocessing(current.model_path)
        steps = [None, *PREPROCESSING]
        preprocessing = st.selectbox(
            "Preprocessing", steps, index=steps.index(current.preprocessing),
            format_func=lambda k: (f"the model's own ({own or 'torch'})" if k is None
                                   else f"{k}: {PREPROCESSING[k]}"),
            key="settings_preprocessing",
            help="How pixels become the model's input. Default: what the model's sidecar JSON "
                 "says.")
        dataset = st.text_input("Dataset root (Oxford-IIIT Pet layout)",
                                value=current.dataset or "", placeholder="demo: synthetic pets",
                                key="settings_dataset")
        cache = st.text_input("Cache folder", value=current.cache, key="settings_cache")
        threads = st.number_input("Inference threads (0: all cores)", min_value=0,
                                  max_value=64, value=current.threads or 0,
                                  key="settings_threads")
        test_fraction = st.number_input(
            "Test dataset fraction", min_value=0.01, max_value=1.0, step=0.05,
            value=current.test_fraction, format="%.2f", key="settings_test_fraction",
            help="The lab's --test-dataset-fraction: a stratified, seeded share of the test "
                 "split.")
        apply = st.form_submit_button("Apply", type="primary")
    if apply:
        model = other.strip() if choice == OTHER_MODEL else choice
        proposed = replace(
            current, model=None if model in ("", str(demo.DEMO_MODEL)) else model,
            dataset=dataset.strip() or None, cache=cache.strip() or current.cache,
            threads=int(threads) or None, test_fraction=float(test_fraction),
            preprocessing=preprocessing,
        )
        if choice == OTHER_MODEL and not model:
            st.sidebar.error("Give the other model's path.")
        else:
            try:
                open_workspace(proposed)
            except PetqError as exc:
                st.sidebar.error(str(exc))
            else:
                set_settings(proposed)
                st.rerun()
    if st.sidebar.button("Back to the defaults", key="settings_reset",
                         help="PETQ_* environment variables, else the embedded demo"):
        set_settings(Settings.from_env())
        st.rerun()
    if problem is None:
        workspace_line(open_workspace(current))


def workspace_line(ws) -> None:
    """A short line in the sidebar: which model and dataset every page shows."""
    with st.sidebar:
        st.caption(
            f"**Model** `{ws.model_path.name}` · preprocessing `{ws.contract.preprocessing}`  \n"
            f"**Dataset** {'synthetic' if ws.dataset.synthetic else 'Oxford-IIIT Pet layout'} "
            f"`{ws.dataset.root.name}`  \n{ws.threads} inference thread(s), evaluated on "
            f"{compare.fraction_text(settings().test_fraction)}"
        )


# ---------------------------------------------------------------- cached library answers


def _stamp(ws, kind: str) -> int:
    """Changes whenever an entry of this cache kind is added or replaced."""
    try:
        return (Path(ws.cache.root) / kind).stat().st_mtime_ns
    except OSError:
        return 0


@st.cache_data(show_spinner=False, max_entries=32)
def _results(key: WorkspaceKey, stamp: int) -> list[Result]:
    # this workspace's only (its preprocessing too), with any thread count (a sweep's)
    return _workspace(*key).results(any_threads=True)


def results(ws) -> list[Result]:
    """Every cached result of the workspace (re-read when the results folder changes)."""
    return _results(ws_key(ws), _stamp(ws, "results"))


def results_for_one_test_set(ws, key: str, empty: str, link: tuple[str, str, str]
                             ) -> tuple[float, list[Result]]:
    """The latest result per variant on one test set (a picker when there are several).

    Stops the page with `empty` and a link (page, label, icon) when nothing is cached.
    """
    every = results(ws)
    if not every:
        st.info(empty)
        st.page_link(link[0], label=link[1], icon=link[2])
        st.stop()
    fractions = compare.test_fractions(every)
    fraction = settings().test_fraction if settings().test_fraction in fractions else fractions[0]
    if len(fractions) > 1:
        fraction = st.selectbox(
            "Test set", fractions, index=fractions.index(fraction),
            format_func=lambda f: f"{f:g} of the test split", key=key,
            help="Variants compare only on the same test images.",
        )
    rows = compare.latest_per_variant([r for r in every if r.test_fraction == fraction],
                                      ws.threads)
    others = sorted({r.threads for r in rows} - {ws.threads})
    if others:
        st.caption(
            f"{sum(r.threads != ws.threads for r in rows)} of these variants were evaluated "
            f"with {' or '.join(map(str, others))} inference thread(s), not this session's "
            f"{ws.threads} (a sweep's tasks run with their own): the same images and "
            "predictions, but their latencies compare only with each other.")
    return fraction, rows


@st.cache_data(show_spinner=False, max_entries=256)
def _details(key: WorkspaceKey, result_key: str) -> Details:
    return _workspace(*key).details(result_key)


def details(ws, result_key: str) -> Details:
    return _details(ws_key(ws), result_key)


@st.cache_data(show_spinner="Comparing with the reference (paired bootstrap)…",
               max_entries=512)
def _paired(key: WorkspaceKey, result_key: str, reference_key: str):
    return _workspace(*key).paired(result_key, reference_key)  # on disk after the first time


def paired(ws, result_key: str, reference_key: str):
    """The paired statistics of two cached results (`Workspace.paired`); None when they
    were evaluated on different images."""
    found = _paired(ws_key(ws), result_key, reference_key)
    return found[0] if found else None


def breed_changes(ws, result_key: str, reference_key: str) -> pd.DataFrame | None:
    """The per-breed changes of two cached results as a table (`compare.breed_table`)."""
    found = _paired(ws_key(ws), result_key, reference_key)
    return compare.breed_table(found[1], details(ws, result_key).class_names) if found \
        else None


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
def _report_summary(key: WorkspaceKey, result_keys: tuple[str, ...]) -> str:
    from petq import report

    ws = _workspace(*key)
    wanted = set(result_keys)
    return report.summary_markdown(ws, [r for r in ws.results(any_threads=True)
                                        if r.result_key in wanted])


def report_summary(ws, rows: list[Result]) -> str:
    """The lab's summary for these results (kept per set of result keys)."""
    return _report_summary(ws_key(ws), tuple(r.result_key for r in rows))


# ---------------------------------------------------------------- tables


def column_config(keys) -> dict[str, Any]:
    """`st.column_config` for a table's columns, from `compare.columns_for` (the metric
    registry's labels and formats)."""
    config: dict[str, Any] = {}
    for key, col in compare.columns_for(keys).items():
        if col.format:
            config[key] = st.column_config.NumberColumn(col.label, format=col.format,
                                                        help=col.help or None)
        else:
            config[key] = st.column_config.TextColumn(col.label, help=col.help or None)
    return config


MISSING = "—"  # a table cell with no value (e.g. the reference's own McNemar p)


def table(frame: pd.DataFrame, **kwargs: Any) -> None:
    """A dataframe with registry labels and formats for its columns and its named index,
    as tall as its rows (no inner scrolling)."""
    config = column_config(frame.columns)
    if frame.index.name:
        config["_index"] = column_config([frame.index.name])[frame.index.name]
    kwargs.setdefault("height", "content")
    kwargs.setdefault("placeholder", MISSING)
    st.dataframe(frame, column_config=config, **kwargs)


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
    "start": "starting", "decode": "decoding the dataset (once)",
    "calibrate": "calibrating", "convert": "converting", "evaluate": "evaluating",
    "latency": "measuring latency", "figures": "drawing the confusion matrix",
    "timing": "timing against the reference (interleaved)",
    "layers": "per-layer statistics",
}


def _stage_text(job: Mapping[str, Any]) -> str:
    stage = job.get("stage") or "start"
    steps = ("convert", "latency", "timing", "figures", "layers")  # one step: no count
    count = (f" {job['stage_done']}/{job['stage_total']}"
             if job.get("stage_total") and stage not in steps else "")
    what = STAGES.get(stage, stage) + count
    return f"{job['current']}: {what}" if job.get("current") else what


def _job_box(job: Mapping[str, Any], key_prefix: str) -> None:
    names = ", ".join(v["name"] for v in job["variants"])
    with st.container(border=True):
        st.markdown(f"**Job {job['id']}** · {names}")
        st.progress(float(job.get("fraction", 0.0)),
                    text=f"{job['done']}/{job['total']} variants done · {job['state']}")
        if job["state"] == "running":
            st.progress(float(job.get("stage_fraction", 0.0)), text=_stage_text(job))
        elif job["state"] == "queued" and job.get("stage"):
            st.caption(_stage_text(job))  # "waiting for job X": one worker per cache
        marks = {"done": ":material/check_circle:", "failed": ":material/error:",
                 "running": ":material/hourglass_top:", "queued": ":material/schedule:",
                 "cancelled": ":material/cancel:"}
        st.caption("  ".join(
            f"{marks.get(v['status'], '·')} {v['name']}"
            + (" (cached)" if v.get("cached") else "") for v in job["variants"]
        ))
        if job["state"] == "failed":
            st.error(job.get("error") or "the job failed")
        if job["state"] in ("failed", "cancelled") and any(
            v["status"] != "done" for v in job["variants"]
        ) and st.button("Restart", key=f"{key_prefix}_restart_{job['id']}"):
            try:
                remember_job(restart_job(job["cache_root"], job["id"]))
            except PetqError as exc:
                st.error(str(exc))
            else:
                st.rerun(scope="app")
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

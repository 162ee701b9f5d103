"""Which workspace every page shows: the settings (from PETQ_* variables, changed in the
sidebar's form), the Workspace they open (shared by every session) and the sidebar itself.
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import streamlit as st

from petq import demo
from petq.errors import ModelError, PetqError
from petq.tables import fraction_text
from petq.types import PREPROCESSING, load_contract

SETTINGS_KEY = "petq_settings"
SETTINGS_OPEN_KEY = "settings_open"  # the Settings expander, open or not
MODELS_DIR = demo.DEMO_MODEL.parent
MODEL_SUFFIXES = (".keras", ".h5", ".tflite")
OTHER_MODEL = "Other path…"
_DEMO_LOCK = threading.Lock()


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


def current() -> Settings:
    """This session's settings (from the environment until the form changes them)."""
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


# Each open Workspace -> the key it was opened with (see `key_of`).
_OPENED_WITH: weakref.WeakKeyDictionary[Any, WorkspaceKey] = weakref.WeakKeyDictionary()


@st.cache_resource(show_spinner=False, max_entries=8)
def workspace_of(model: str, dataset: str, cache: str, threads: int | None,
                 preprocessing: str | None, model_stamp: tuple[int, int]):
    """The Workspace of a `WorkspaceKey`, opened once and shared by every session.

    `model_stamp` is part of the key: a model replaced at the same path opens a new
    workspace. A Workspace holds paths, the parsed dataset lists and no interpreter: safe
    to share across sessions."""
    ws = demo.default_workspace(model, dataset, cache, threads, preprocessing=preprocessing)
    _OPENED_WITH[ws] = (model, dataset, cache, threads, preprocessing, model_stamp)
    return ws


def key_of(ws) -> WorkspaceKey:
    """The key `ws` was opened with by `workspace_of`. Cheaper than `workspace_key`, which
    checks the model file and the demo dataset (under its lock): the cached reads of a
    page ask for it once per read."""
    return _OPENED_WITH[ws]


def workspace_key(chosen: Settings | None = None) -> WorkspaceKey:
    """What identifies a workspace: its paths, threads, preprocessing and the model file's
    (mtime, size)."""
    chosen = chosen or current()
    model = chosen.model_path
    if not Path(model).exists():  # before generating the demo dataset for nothing
        raise ModelError(f"{model}: model file not found")
    dataset = chosen.dataset or _demo_dataset()
    return (model, dataset, chosen.cache, chosen.threads, chosen.preprocessing,
            _model_stamp(model))


def open_workspace(chosen: Settings | None = None):
    """The Workspace for the settings (the session's by default), or raises PetqError."""
    return workspace_of(*workspace_key(chosen))


def settings_form() -> None:
    """The sidebar's Settings: model, dataset, cache, threads, test fraction, preprocessing.
    Applied only when the new workspace opens; otherwise the error is shown and the old
    settings stay."""
    now = current()
    try:
        ws = open_workspace(now)
        problem = None
    except PetqError as exc:
        ws, problem = None, exc
    expander = st.sidebar.expander("Settings", expanded=problem is not None,
                                   key=SETTINGS_OPEN_KEY, on_change="rerun")
    if expander.open:  # built only when opened: a fresh tab loads no form widgets
        _form(expander, now)
        if expander.button("Back to the defaults", key="settings_reset",
                           help="PETQ_* environment variables, else the embedded demo"):
            set_settings(Settings.from_env())
            st.rerun()
    if ws is not None:
        workspace_line(ws, now)


def _form(expander, now: Settings) -> None:
    models = model_files()
    in_list = now.model_path in models
    options = [*models, OTHER_MODEL]
    with expander, st.form("settings_form", border=False):
        choice = st.selectbox(
            "Model", options, index=options.index(now.model_path if in_list else OTHER_MODEL),
            format_func=lambda p: p if p == OTHER_MODEL else Path(p).name, key="settings_model",
            help=f"The model files in `{MODELS_DIR}` ({', '.join(MODEL_SUFFIXES)}), or another "
                 "path below.")
        other = st.text_input("Other model path", value="" if in_list else now.model_path,
                              placeholder="/path/to/model.keras", key="settings_model_path",
                              help=f"Used when the model is '{OTHER_MODEL}'.")
        own = sidecar_preprocessing(now.model_path)
        steps = [None, *PREPROCESSING]
        preprocessing = st.selectbox(
            "Preprocessing", steps, index=steps.index(now.preprocessing),
            format_func=lambda k: (f"the model's own ({own or 'torch'})" if k is None
                                   else f"{k}: {PREPROCESSING[k]}"),
            key="settings_preprocessing",
            help="How pixels become the model's input. Default: what the model's sidecar JSON "
                 "says.")
        dataset = st.text_input("Dataset root (Oxford-IIIT Pet layout)",
                                value=now.dataset or "", placeholder="demo: synthetic pets",
                                key="settings_dataset")
        cache = st.text_input("Cache folder", value=now.cache, key="settings_cache")
        threads = st.number_input("Inference threads (0: all cores)", min_value=0,
                                  max_value=64, value=now.threads or 0,
                                  key="settings_threads")
        test_fraction = st.number_input(
            "Test dataset fraction", min_value=0.01, max_value=1.0, step=0.05,
            value=now.test_fraction, format="%.2f", key="settings_test_fraction",
            help="The lab's --test-dataset-fraction: a stratified, seeded share of the test "
                 "split.")
        apply = st.form_submit_button("Apply", type="primary")
    if apply:
        model = other.strip() if choice == OTHER_MODEL else choice
        proposed = replace(
            now, model=None if model in ("", str(demo.DEMO_MODEL)) else model,
            dataset=dataset.strip() or None, cache=cache.strip() or now.cache,
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


def workspace_line(ws, shown: Settings) -> None:
    """A short line in the sidebar: which model and dataset every page shows."""
    with st.sidebar:
        st.caption(
            f"**Model** `{ws.model_path.name}` · preprocessing `{ws.contract.preprocessing}`  \n"
            f"**Dataset** {'synthetic' if ws.dataset.synthetic else 'Oxford-IIIT Pet layout'} "
            f"`{ws.dataset.root.name}`  \n{ws.threads} inference thread(s), evaluated on "
            f"{fraction_text(shown.test_fraction)}"
        )

"""The library's answers the pages show, cached by what identifies them: the workspace's
key, and for what changes on disk, a stamp of the cache folder it lives in. Every session
shares them; a page's rerun reads them from memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import streamlit as st

from pages.common.settings import WorkspaceKey, current, key_of, workspace_of
from petq import tables
from petq.results import Details, Result
from petq.types import VariantSpec

if TYPE_CHECKING:
    import pandas as pd


def _stamp(ws, kind: str) -> int:
    """Changes whenever an entry of this cache kind is added or replaced."""
    try:
        return (Path(ws.cache.root) / kind).stat().st_mtime_ns
    except OSError:
        return 0


def _key(ws) -> WorkspaceKey:
    """The key the page's workspace was opened with (the session's settings')."""
    return key_of(ws)


@st.cache_data(show_spinner=False, max_entries=32)
def _results(key: WorkspaceKey, stamp: int) -> list[Result]:
    # this workspace's only (its preprocessing too), with any thread count (a sweep's)
    return workspace_of(*key).results(any_threads=True)


def results(ws) -> list[Result]:
    """Every cached result of the workspace (re-read when the results folder changes)."""
    return _results(_key(ws), _stamp(ws, "results"))


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
    fractions = tables.test_fractions(every)
    wanted = current().test_fraction
    fraction = wanted if wanted in fractions else fractions[0]
    if len(fractions) > 1:
        fraction = st.selectbox(
            "Test set", fractions, index=fractions.index(fraction),
            format_func=lambda f: f"{f:g} of the test split", key=key,
            help="Variants compare only on the same test images.",
        )
    rows = tables.latest_per_variant([r for r in every if r.test_fraction == fraction],
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
    return workspace_of(*key).details(result_key)


def details(ws, result_key: str) -> Details:
    return _details(_key(ws), result_key)


@st.cache_data(show_spinner="Comparing with the reference (paired bootstrap)…",
               max_entries=512)
def _paired(key: WorkspaceKey, result_key: str, reference_key: str):
    return workspace_of(*key).paired(result_key, reference_key)  # on disk after the first time


def paired(ws, result_key: str, reference_key: str):
    """The paired statistics of two cached results (`Workspace.paired`); None when they
    were evaluated on different images."""
    found = _paired(_key(ws), result_key, reference_key)
    return found[0] if found else None


@st.cache_data(show_spinner=False, max_entries=512)
def _breed_changes(key: WorkspaceKey, result_key: str, reference_key: str
                   ) -> pd.DataFrame | None:  # fmt: skip
    found = _paired(key, result_key, reference_key)
    return tables.breed_table(found[1], _details(key, result_key).class_names) if found \
        else None


def breed_changes(ws, result_key: str, reference_key: str) -> pd.DataFrame | None:
    """The per-breed changes of two cached results as a table (`tables.breed_table`)."""
    return _breed_changes(_key(ws), result_key, reference_key)


@st.cache_data(show_spinner="Reading the model (first time only)…", max_entries=8)
def _model_info(key: WorkspaceKey) -> dict[str, Any]:
    return workspace_of(*key).model_info()


def model_info(ws) -> dict[str, Any]:
    return _model_info(_key(ws))


@st.cache_data(show_spinner=False, max_entries=16)
def _available(key: WorkspaceKey, stamp: int) -> dict[str, tuple[str, str]]:
    return {spec.name: (json.dumps(spec.to_dict(), sort_keys=True), artifact)
            for spec, artifact in tables.available_variants(workspace_of(*key))}


def available_variants(ws) -> dict[str, tuple[str, str]]:
    """Variant name -> (spec as JSON, artifact key), for native and every cached .tflite."""
    return _available(_key(ws), _stamp(ws, "variants"))


@st.cache_resource(show_spinner=False, max_entries=32)
def _runner(key: WorkspaceKey, spec_json: str, artifact: str):
    # Shared across sessions: Runner.predict holds the runner's lock around each call.
    ws = workspace_of(*key)
    loaded = ws.runner(VariantSpec.from_dict(json.loads(spec_json)))
    height, width = ws.contract.input_size
    loaded.predict(np.zeros((1, height, width, 3), np.float32))  # warm up: first call traces
    return loaded


def runner(ws, spec_json: str, artifact: str):
    """A shared, lock-protected runner for a converted variant (`artifact`: its cache key)."""
    return _runner(_key(ws), spec_json, artifact)


@st.cache_data(show_spinner="Writing the summary…", max_entries=16)
def _report_summary(key: WorkspaceKey, result_keys: tuple[str, ...]) -> str:
    from petq import report

    ws = workspace_of(*key)
    wanted = set(result_keys)
    return report.summary_markdown(ws, [r for r in ws.results(any_threads=True)
                                        if r.result_key in wanted])


def report_summary(ws, rows: list[Result]) -> str:
    """The lab's summary for these results (kept per set of result keys)."""
    return _report_summary(_key(ws), tuple(r.result_key for r in rows))


@st.cache_data(show_spinner=False, max_entries=32)
def _gallery(key: WorkspaceKey, spec_json: str, stamp: tuple[int, int]):
    from petq.outliers import gallery

    return gallery(workspace_of(*key), VariantSpec.from_dict(json.loads(spec_json)), 12)


def gallery(ws, spec: VariantSpec):
    """The images that set the ranges of a static spec's calibration set
    (`petq.outliers.gallery`, at most 12), re-read when a profile gains images or a recipe's
    profile is recorded; SpecError for a spec without a range profile."""
    return _gallery(_key(ws), json.dumps(spec.to_dict(), sort_keys=True),
                    (_stamp(ws, "ranges"), _stamp(ws, "profile-of")))

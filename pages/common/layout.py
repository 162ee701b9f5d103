"""The parts every page lays out alike: the page paths, the page's top (title, workspace,
synthetic-data note) and tables labelled and formatted from the metric registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import streamlit as st

from pages.common.settings import current, open_workspace
from petq import demo, tables
from petq.errors import PetqError

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

# The pages, by file: dashboard.py registers them with st.navigation; links use these paths.
HOME = "pages/home.py"
CONVERT = "pages/convert.py"
CLASSIFY = "pages/classify.py"
COMPARE = "pages/compare.py"
LAYERS = "pages/layers.py"
REPORT = "pages/report.py"
TUNE = "pages/tune.py"

MISSING = "—"  # a table cell with no value (e.g. the reference's own McNemar p)
FRAME_KEY = "petq_frame"  # set by dashboard.py's frame in every session it runs in


def navigation() -> dict[str, list[st.Page]]:
    """The pages by section, for st.navigation; the URL paths are the bookmarks'."""
    return {
        "": [st.Page(HOME, title="Home", icon=":material/home:", default=True)],
        "Variants": [
            st.Page(CONVERT, title="Convert", icon=":material/tune:", url_path="convert"),
            st.Page(CLASSIFY, title="Classify", icon=":material/pets:", url_path="classify"),
            st.Page(TUNE, title="Tune", icon=":material/verified:", url_path="tune"),
        ],
        "Analysis": [
            st.Page(COMPARE, title="Compare", icon=":material/compare_arrows:",
                    url_path="compare"),
            st.Page(LAYERS, title="Layers", icon=":material/layers:", url_path="layers"),
            st.Page(REPORT, title="Report", icon=":material/description:", url_path="report"),
        ],
    }


def page_header(title: str) -> None:
    """The page's title. A page run without dashboard.py's frame first reruns through it.

    Until some script run calls st.navigation, a Streamlit server treats a `pages/` folder
    beside the main script the legacy way and runs a requested page's file alone. Calling
    st.navigation turns that off for the whole server process, and the rerun then goes
    through dashboard.py to the same URL path."""
    if not st.session_state.get(FRAME_KEY):
        st.navigation(navigation(), position="hidden")
        st.rerun()
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
        if current().model is None and not demo.DEMO_MODEL.exists():
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


def column_config(keys) -> dict[str, Any]:
    """`st.column_config` for a table's columns, from `tables.columns_for` (the metric
    registry's labels and formats)."""
    return config_of(tables.columns_for(keys))


def config_of(columns: Mapping[str, tables.Column]) -> dict[str, Any]:
    """`st.column_config` for columns described as `tables.Column`."""
    config: dict[str, Any] = {}
    for key, col in columns.items():
        if col.format:
            config[key] = st.column_config.NumberColumn(col.label, format=col.format,
                                                        help=col.help or None)
        else:
            config[key] = st.column_config.TextColumn(col.label, help=col.help or None)
    return config


def table(frame: pd.DataFrame, **kwargs: Any) -> None:
    """A dataframe with registry labels and formats for its columns and its named index,
    as tall as its rows (no inner scrolling)."""
    config = column_config(frame.columns)
    if frame.index.name:
        config["_index"] = column_config([frame.index.name])[frame.index.name]
    kwargs.setdefault("height", "content")
    kwargs.setdefault("placeholder", MISSING)
    st.dataframe(frame, column_config=config, **kwargs)


@st.cache_resource(show_spinner=False, max_entries=64)
def _figure(_draw: Callable[..., go.Figure], name: str, *args: Any) -> go.Figure:
    # Shared, never changed: st.plotly_chart serializes a copy (Figure.to_dict).
    return _draw(*args)


def figure(draw: Callable[..., go.Figure], *args: Any) -> go.Figure:
    """`draw(*args)`, a petq.figures function, drawn once per distinct arguments (tables,
    names, numbers) for every session: building a Plotly figure costs a page more than
    finding it again."""
    return _figure(draw, f"{draw.__module__}.{draw.__qualname__}", *args)

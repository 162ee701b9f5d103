"""petq dashboard: the navigation and the frame every page shares.

Run with `streamlit run dashboard.py`. Without settings it opens the embedded
demo (shipped model, synthetic dataset); PETQ_MODEL, PETQ_DATASET_ROOT,
PETQ_CACHE, PETQ_THREADS and PETQ_PREPROCESSING, or the sidebar's Settings,
point it elsewhere. Each page is a file in `app/`; shared helpers live in
`app/common.py`.
"""

from __future__ import annotations

import streamlit as st

from app import common

st.set_page_config(page_title="petq", page_icon="🐾", layout="wide")

PAGES = {
    "": [
        st.Page(common.HOME, title="Home", icon=":material/home:", default=True),
    ],
    "Variants": [
        st.Page(common.CONVERT, title="Convert", icon=":material/tune:", url_path="convert"),
        st.Page(common.CLASSIFY, title="Classify", icon=":material/pets:",
                url_path="classify"),
        st.Page("app/tune.py", title="Tune", icon=":material/verified:", url_path="tune"),
    ],
    "Analysis": [
        st.Page(common.COMPARE, title="Compare", icon=":material/compare_arrows:",
                url_path="compare"),
        st.Page("app/layers.py", title="Layers", icon=":material/layers:", url_path="layers"),
        st.Page(common.REPORT, title="Report", icon=":material/description:",
                url_path="report"),
    ],
}

page = st.navigation(PAGES)
common.settings_form()
page.run()

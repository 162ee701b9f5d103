"""petq dashboard: the navigation and the frame every page shares.

Run with `streamlit run dashboard.py`. Without settings it opens the embedded
demo (shipped model, synthetic dataset); PETQ_MODEL, PETQ_DATASET_ROOT,
PETQ_CACHE, PETQ_THREADS and PETQ_PREPROCESSING, or the sidebar's Settings,
point it elsewhere. Each page is a file in `pages/`, registered here with
st.navigation (which turns off Streamlit's automatic discovery of that folder);
what they share is in `pages/common/`.
"""

from __future__ import annotations

import streamlit as st

from pages.common import layout, settings

st.set_page_config(page_title="petq", page_icon="🐾", layout="wide")

page = st.navigation(layout.navigation())
st.session_state[layout.FRAME_KEY] = True
settings.settings_form()
page.run()

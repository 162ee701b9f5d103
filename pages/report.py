"""Report: the lab's summary answered from the cached results, downloadable with its PNGs.

The confusion-matrix PNGs come from the cache (`petq.report.cached_confusion_png`): the
background jobs draw them when they evaluate, so nothing is drawn here twice.
"""

from __future__ import annotations

import streamlit as st

from pages.common import layout, reads
from petq import report

ws = layout.workspace_page("Report")

fraction, rows = reads.results_for_one_test_set(
    ws, "report_test_fraction", "No evaluated variants yet: run the lab's task set on Home first.",
    (layout.HOME, "Home", ":material/home:"),
)
summary = reads.report_summary(ws, rows)

left, right, _ = st.columns([1, 1, 2])
left.download_button(
    "Download the report (zip)", data=lambda: report.report_zip(ws, rows),
    file_name="petq-report.zip", mime="application/zip", type="primary", key="report_zip",
    help="summary.md, and for each variant <prefix>-metrics.md and <prefix>-confusion-matrix.png",
)
right.download_button("Download summary.md", data=summary, file_name="summary.md",
                      mime="text/markdown", key="report_md")
with st.container(border=True):
    st.markdown(summary)

st.subheader("Per variant")
variant = st.selectbox("Variant", [r.variant for r in rows], key="report_variant")
row = next(r for r in rows if r.variant == variant)
text_col, image_col = st.columns([1, 1])
text_col.markdown(report.metrics_markdown(row))
image_col.image(report.cached_confusion_png(ws.cache, row.result_key, variant),
                caption=f"{variant}-confusion-matrix.png")

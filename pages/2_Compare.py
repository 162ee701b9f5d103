"""Compare: cached variants side by side, against a reference variant."""

from __future__ import annotations

import streamlit as st

import pages as ui
from petq import compare

ws = ui.workspace_page("Compare")

_, rows = ui.rows_for_one_test_set(
    ws, "compare_test_fraction", "No evaluated variants yet: run some on Home or Convert first.",
    ("pages/1_Convert.py", "Convert a variant", ":material/tune:"),
)
names = [r["variant"] for r in rows]

st.session_state["compare_variants"] = [  # default: all; keep only variants still cached
    n for n in st.session_state.get("compare_variants", names) if n in names
]
left, right = st.columns([3, 1])
chosen = left.multiselect("Variants", names, key="compare_variants")


def _new_reference() -> None:  # the confusion pair follows the reference
    for key in ("compare_cm_left", "compare_cm_right", "compare_victim"):
        st.session_state.pop(key, None)


reference = right.selectbox(
    "Reference", names, index=names.index("native") if "native" in names else 0,
    key="compare_reference", on_change=_new_reference,
)
if not chosen:
    st.info("Pick at least one variant to compare.")
    st.stop()
selected = [r for r in rows if r["variant"] in set(chosen) | {reference}]
details = {r["result_key"]: ui.details(ws, r["result_key"]) for r in selected}
table = compare.comparison_table(selected, details, reference)
shown = table[table["variant"].isin(chosen)]

# ------------------------------------------------------------------ table and charts

st.subheader("Metrics")
st.caption(f"Δ: difference from the reference, `{reference}`. Compression: FP32 file size over "
           f"the variant's. Agreement: share of the {rows[0]['n_images']} test images on which "
           "the variant's top-1 breed equals the reference's.")
display = compare.display_table(shown)
numeric = display.select_dtypes("number").columns
formats = {label: "%.4f" for label in numeric}
formats.update({c: "%.3f" for c in numeric if "ms" in c})
formats.update({c: "%d" for c in numeric if "bytes" in c})
formats.update({c: "%.2fx" for c in numeric if "Compression" in c})
formats["Test images"] = "%d"
st.dataframe(
    display, width="stretch",
    column_config={c: st.column_config.NumberColumn(c, format=f) for c, f in formats.items()},
)

quality, latency = st.columns(2)
quality.plotly_chart(compare.metric_bars(shown), width="stretch", key="compare_bars")
latency.plotly_chart(
    compare.metric_bars(shown, compare.LATENCY_METRICS, "Latency per image (ms)"),
    width="stretch", key="compare_latency",
)
st.plotly_chart(compare.pareto_scatter(shown), width="stretch", key="compare_pareto")

# ------------------------------------------------------------------ confusions

st.subheader("Confusion matrices")
by_name = {r["variant"]: r for r in selected}
pair = compare.default_pair(table, reference)
a, b = st.columns(2)
left_name = a.selectbox("Left", list(by_name), index=list(by_name).index(reference),
                        key="compare_cm_left")
right_name = b.selectbox("Right", list(by_name), index=list(by_name).index(pair),
                         key="compare_cm_right", help="Default: the variant that agrees least "
                         "with the reference.")
left_details = details[by_name[left_name]["result_key"]]
right_details = details[by_name[right_name]["result_key"]]
zmax = compare.max_count(left_details, right_details)
a.plotly_chart(compare.confusion_heatmap(left_details, left_name, zmax, colorbar=False),
               width="stretch", key="compare_cm_a")
b.plotly_chart(compare.confusion_heatmap(right_details, right_name, zmax, y_labels=False),
               width="stretch", key="compare_cm_b")
diff = compare.confusion_difference(right_details, left_details)
if right_name == left_name:
    st.caption("Pick two different variants to see their difference.")
elif not diff.any():
    st.success(f"`{right_name}` and `{left_name}` have identical confusion matrices.")
else:
    st.plotly_chart(
        compare.difference_heatmap(diff, right_details["class_names"],
                                   f"{right_name} minus {left_name} (red: more images)"),
        width="stretch", key="compare_cm_diff",
    )

# ------------------------------------------------------------------ per class

st.subheader("Per-class sensitivity")
sensitivity = compare.per_class_sensitivity([by_name[n] for n in chosen if n in by_name]
                                            + [by_name[reference]], details)
delta = compare.per_class_delta(sensitivity, reference)
if len(delta.columns):
    st.plotly_chart(
        compare.per_class_heatmap(sensitivity, reference,
                                  f"Change in per-class sensitivity from {reference} "
                                  "(red: the variant hurts the breed)"),
        width="stretch", key="compare_per_class",
    )
    victims = list(delta.columns)
    victim = st.selectbox("Breeds a variant hurts", victims,
                          index=victims.index(compare.most_hurt(delta)), key="compare_victim")
    hurt = compare.hurt_classes(delta, victim)
    if hurt.empty:
        st.success(f"`{victim}` lowers no breed's sensitivity against `{reference}`.")
    else:
        st.dataframe(
            hurt.rename("Δ sensitivity").to_frame(), width="content",
            column_config={"Δ sensitivity": st.column_config.NumberColumn(format="%+.3f")},
        )
else:
    st.plotly_chart(compare.per_class_heatmap(sensitivity), width="stretch",
                    key="compare_per_class")
with st.expander("Per-class sensitivity, all variants"):
    st.dataframe(sensitivity, width="stretch")

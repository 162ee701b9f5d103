"""Compare: cached variants side by side, against a reference variant, with paired
statistics (is a difference real?), per-breed changes, the spread over seeds, and each
variant calibrated without chosen images against its original."""

from __future__ import annotations

import streamlit as st

from pages.common import layout, reads
from petq import figures, tables
from petq.errors import PetqError
from petq.outliers import exclusion_pairs
from petq.report import speed_sentence
from petq.results import LATENCY

ws = layout.workspace_page("Compare")

_, rows = reads.results_for_one_test_set(
    ws, "compare_test_fraction", "No evaluated variants yet: run some on Home or Convert first.",
    (layout.CONVERT, "Convert a variant", ":material/tune:"),
)
names = [r.variant for r in rows]
by_name = {r.variant: r for r in rows}

st.session_state["compare_variants"] = [  # default: all; keep only variants still cached
    n for n in st.session_state.get("compare_variants", names) if n in names
]
left, right = st.columns([3, 1])
chosen = left.multiselect("Variants", names, key="compare_variants")


def _new_reference() -> None:  # the confusion pair and the per-breed pick follow it
    for key in ("compare_cm_left", "compare_cm_right", "compare_victim"):
        st.session_state.pop(key, None)


reference = right.selectbox(
    "Reference", names, index=names.index("native") if "native" in names else 0,
    key="compare_reference", on_change=_new_reference,
)
if not chosen:
    st.info("Pick at least one variant to tables.")
    st.stop()
selected = [r for r in rows if r.variant in set(chosen) | {reference}]
details = {r.result_key: reads.details(ws, r.result_key) for r in selected}
table = tables.comparison_table(selected, details, reference)
shown = table[table["variant"].isin(chosen)]
ref_key = by_name[reference].result_key
paired = {
    name: None if name == reference else reads.paired(ws, by_name[name].result_key, ref_key)
    for name in shown["variant"]
}

# ------------------------------------------------------------------ table and charts

st.subheader("Metrics")
st.caption(
    f"Against the reference, `{reference}`, on the same {rows[0].n_images} test images: "
    f"Δ accuracy with its {tables.LEVEL:.0%} interval, McNemar's exact test inverted; ✱ when "
    f"that test finds the difference significant at {1 - tables.LEVEL:.0%}, exactly when the "
    "interval excludes zero (b: images only the "
    "reference gets right, c: only the variant). Compression: FP32 file size over the "
    "variant's. Agreement: share of images where the variant's top-1 breed equals the "
    "reference's.")
layout.table(tables.view(shown, tables.COMPARE_VIEW, tables.paired_table(paired)),
             width="stretch")

pairs = exclusion_pairs(rows)
if pairs:
    st.subheader("Calibrated without chosen images")
    st.caption("Each variant calibrated without images picked on Convert (those that set its "
               "ranges), against the same variant calibrated with them, on the same test "
               "images: the paired comparison above, twin against original.")
    twins = {twin.variant: original.variant for twin, original in pairs}
    layout.table(tables.exclusion_table(pairs, {
        twin.variant: reads.paired(ws, twin.result_key, original.result_key)
        for twin, original in pairs}), width="stretch")

    def _show_pair(twin: str) -> None:
        st.session_state["compare_variants"] = [twins[twin], twin]
        st.session_state["compare_reference"] = twins[twin]
        _new_reference()

    pick, show = st.columns([3, 1], vertical_alignment="bottom")
    pair = pick.selectbox("Pair", list(twins), key="compare_pair",
                          format_func=lambda t: f"{t} against {twins[t]}")
    show.button("Show this pair", key="compare_pair_show", on_click=_show_pair, args=(pair,),
                help="The table, charts and per-breed changes above and below: this variant "
                     "and its original, the original as the reference.")

quality, latency = st.columns(2)
quality.plotly_chart(layout.figure(figures.metric_bars, shown), width="stretch", key="compare_bars")
latency.plotly_chart(
    layout.figure(figures.metric_bars, shown, LATENCY, "Latency per image (ms)"),
    width="stretch", key="compare_latency",
)
st.plotly_chart(layout.figure(figures.pareto_scatter, shown), width="stretch", key="compare_pareto")
with st.expander("Speed against the reference, timed interleaved"):
    st.caption("Latencies above come from separate runs: on a busy machine they drift. This "
               "times a variant and the reference in one measurement (A, B, B, A...), with an "
               "interval on the ratio of medians and the machine's load.")
    others = [n for n in chosen if n != reference]
    timed = st.selectbox("Variant", others, key="compare_timed") if others else None
    if timed and st.button(f"Time {timed} against {reference}", key="compare_time"):
        with st.spinner("Timing…"):
            try:
                timing = ws.latency_comparison(by_name[timed].spec, by_name[reference].spec)
            except PetqError as exc:
                st.error(str(exc))
            else:
                (st.warning if timing.busy else st.info)(speed_sentence(timing, timed))

with st.expander("Download a variant's .tflite"):
    files = [n for n in chosen if not by_name[n].spec.is_native]
    picked = st.selectbox("Variant", files, key="compare_download_variant") if files else None
    entry = ws.cached_tflite(by_name[picked].spec) if picked else None
    if entry is not None:
        st.download_button(f"Download {picked}.tflite", entry.file("model.tflite").read_bytes(),
                           file_name=f"{picked}.tflite", mime="application/octet-stream",
                           key="compare_download")
    else:
        st.caption("The native model has no .tflite." if not files else
                   "This variant's .tflite is not in this cache.")

spread = tables.seed_spread_table([by_name[n] for n in chosen])
if len(spread):
    st.subheader("Spread over calibration seeds")
    st.caption("Variants that differ only by their calibration seed (same recipe and "
               "fraction): how much the pick of calibration images alone moves accuracy.")
    st.plotly_chart(layout.figure(figures.seed_spread_figure, spread), width="stretch",
                    key="compare_seeds")
    layout.table(spread.drop(columns=["values"]), hide_index=True, width="stretch")

# ------------------------------------------------------------------ one detail at a time

# One of the two detailed sections at a time: with 37 breeds each is several large heatmaps
# and tables, and the browser draws only the one shown (benchmarks/README.md, section 6).
DETAILS = ("Per breed", "Confusion matrices")
shown_detail = st.segmented_control("Detail", DETAILS, default=DETAILS[0], key="compare_detail",
                                    label_visibility="collapsed") or DETAILS[0]


def confusion_matrices() -> None:
    st.subheader("Confusion matrices")
    pair = tables.default_pair(table, reference)
    listed = [r.variant for r in selected]
    a, b = st.columns(2)
    left_name = a.selectbox("Left", listed, index=listed.index(reference), key="compare_cm_left")
    right_name = b.selectbox("Right", listed, index=listed.index(pair), key="compare_cm_right",
                             help="Default: the variant that agrees least with the reference.")
    left_details = details[by_name[left_name].result_key]
    right_details = details[by_name[right_name].result_key]
    zmax = tables.max_count(left_details, right_details)
    side_by_side = len(left_details.class_names) <= tables.SIDE_BY_SIDE_CLASSES
    if not side_by_side:  # too many breeds for half a page: one above the other, full width
        a, b = st.container(), st.container()
    a.plotly_chart(figures.confusion_heatmap(left_details, left_name, zmax,
                                             colorbar=not side_by_side),
                   width="stretch", key="compare_cm_a")
    b.plotly_chart(figures.confusion_heatmap(right_details, right_name, zmax,
                                             y_labels=not side_by_side),
                   width="stretch", key="compare_cm_b")
    if right_name == left_name:
        st.caption("Pick two different variants to see their difference.")
    elif not right_details.same_images(left_details):
        st.caption("These two were evaluated on different test images: no difference to show.")
    else:
        diff = tables.confusion_difference(right_details, left_details)
        if not diff.any():
            st.success(f"`{right_name}` and `{left_name}` have identical confusion matrices.")
        else:
            st.plotly_chart(
                figures.difference_heatmap(diff, right_details.class_names,
                                           f"{right_name} minus {left_name} (red: more images)"),
                width="stretch", key="compare_cm_diff",
            )


def per_breed() -> None:
    st.subheader("Per breed")
    sensitivity = tables.per_class_sensitivity(
        [by_name[n] for n in chosen] + [by_name[reference]], details)
    others = [n for n in chosen if n != reference]
    if not others:
        st.plotly_chart(layout.figure(figures.per_class_heatmap, sensitivity), width="stretch",
                        key="compare_per_class")
    else:
        st.plotly_chart(
            layout.figure(figures.per_class_heatmap, sensitivity, reference,
                          f"Change in per-breed sensitivity from {reference} (red: lower)"),
            width="stretch", key="compare_per_class",
        )
        changes = {n: c for n in others
                   if (c := reads.breed_changes(ws, by_name[n].result_key, ref_key)) is not None}
        if changes:
            victims = list(changes)
            victim = st.selectbox("Breeds a variant hurts", victims,
                                  index=victims.index(tables.most_hurt(changes)),
                                  key="compare_victim")
            hurt = tables.hurt_breeds(changes[victim])
            lower = int((changes[victim]["difference"] < 0).sum())
            st.caption(
                f"A breed is hurt when its sensitivity's paired {tables.LEVEL:.0%} interval "
                "(its exact McNemar test inverted) lies entirely below zero. "
                f"`{victim}` lowers {lower} breed(s) against "
                f"`{reference}`; {len(hurt)} of them beyond chance.")
            if hurt.empty:
                st.success(f"`{victim}` hurts no breed beyond chance against `{reference}`.")
            else:
                layout.table(hurt.reindex(columns=tables.BREED_VIEW), width="stretch")
            every = st.expander(f"Every breed, {victim} against {reference}",
                                key="compare_every_breed", on_change="rerun")
            if every.open:  # built only when opened: the page loads without it
                with every:
                    layout.table(changes[victim].reindex(columns=tables.BREED_VIEW),
                                 width="stretch")
        else:
            st.caption("The chosen variants were evaluated on other test images than the "
                       "reference: no paired per-breed comparison.")
    every_variant = st.expander("Per-breed sensitivity, all variants",
                                key="compare_sensitivity_table", on_change="rerun")
    if every_variant.open:  # likewise
        every_variant.dataframe(sensitivity, width="stretch")


(per_breed if shown_detail == DETAILS[0] else confusion_matrices)()

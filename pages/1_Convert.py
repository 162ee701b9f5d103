"""Convert: pick a variant, see its calibration set, convert and evaluate it in the background."""

from __future__ import annotations

import streamlit as st

import pages as ui
from petq import compare
from petq.errors import PetqError
from petq.jobs import find_active, start_job
from petq.types import DEFAULT_CALIBRATION_SEED, LAB_IMBALANCED_CLASSES, VariantKind, VariantSpec

ws = ui.workspace_page("Convert")
test_fraction = ui.settings().test_fraction
names = list(ws.class_names)

KIND_LABELS = {
    VariantKind.NATIVE.value: "native (Keras, evaluate only)",
    VariantKind.FP32.value: "TFLite FP32",
    VariantKind.INT8.value: "TFLite INT8 (fraction of trainval)",
    VariantKind.IMBINT8.value: "TFLite INT8 (chosen breeds only)",
}
kind = VariantKind(st.radio(
    "Variant kind", list(KIND_LABELS), index=2, format_func=KIND_LABELS.get, horizontal=True,
    key="convert_kind",
))


def _one_class() -> None:
    if st.session_state.get("convert_one_class"):
        st.session_state["convert_classes"] = [st.session_state["convert_one_class"]]


if kind is VariantKind.INT8:
    left, right = st.columns([3, 1])
    fraction = left.slider("Calibration fraction of trainval", min_value=0.01, max_value=1.0,
                           value=0.08, step=0.01, key="convert_fraction")
    seed = right.number_input("Seed", min_value=0, max_value=2**31 - 1,
                              value=DEFAULT_CALIBRATION_SEED, key="convert_seed")
    spec = VariantSpec.int8(round(fraction, 4), int(seed))
elif kind is VariantKind.IMBINT8:
    default = [names[c] for c in LAB_IMBALANCED_CLASSES if c < len(names)] or names[:1]
    kept = [n for n in st.session_state.get("convert_classes", default) if n in names]
    st.session_state["convert_classes"] = kept
    left, right = st.columns([3, 1])
    chosen = left.multiselect("Calibration breeds", names, key="convert_classes")
    right.selectbox("One-class shortcut", names, index=None, placeholder="Just this breed…",
                    key="convert_one_class", on_change=_one_class)
    if not chosen:
        st.warning("Pick at least one breed to calibrate on.")
        st.stop()
    spec = VariantSpec.imbint8(tuple(ws.dataset.class_index(n) for n in chosen))
else:
    spec = VariantSpec(kind)

st.markdown(f"**{spec.name}**: {spec.describe(ws.class_names)}")

try:
    samples = ws.calibration_samples(spec)
except PetqError as exc:
    st.error(str(exc))
    st.stop()
if samples:
    st.caption(f"Calibration set: **{len(samples):,}** of {len(ws.dataset.trainval):,} trainval "
               "images (never test images).")
    st.plotly_chart(
        compare.calibration_histogram(ws.calibration_histogram(spec),
                                      "Calibration images per breed"),
        width="stretch", key="convert_histogram",
    )

cached = ws.cached_result(spec, test_fraction)
if cached:
    st.success(f"`{spec.name}` is already in the cache (evaluated on {cached['n_images']} test "
               "images): nothing to convert.")
    cols = st.columns(6)
    cols[0].metric("Accuracy", f"{cached['accuracy']:.4f}")
    cols[1].metric("G-Mean", f"{cached['g_mean']:.4f}")
    cols[2].metric("Top-5", f"{cached['top5']:.4f}")
    cols[3].metric("Latency mean", f"{cached['latency_mean_ms']:.2f} ms")
    cols[4].metric("Size", compare.human_size(cached["file_size_bytes"]))
    cols[5].metric("Calibration images", f"{cached['calibration_count']:,}")
    st.page_link("pages/2_Compare.py", label="Compare it with the other variants",
                 icon=":material/compare_arrows:")
elif running := find_active(ws.cache.root, spec.name, test_fraction, ws.model_path,
                            ws.dataset.root):
    st.info(f"`{spec.name}` is being converted and evaluated (job {running['id']}).")
    ui.remember_job(running["id"])
else:
    action = "Evaluate" if kind is VariantKind.NATIVE else "Convert and evaluate"
    if st.button(f"{action} {spec.name}", type="primary", key="convert_start"):
        try:
            job_id = start_job(ws.model_path, ws.dataset.root, ws.cache.root, ws.threads,
                               [spec], test_fraction, workspace=ws)
        except PetqError as exc:
            st.error(str(exc))
        else:
            ui.remember_job(job_id)
            st.rerun()

ui.job_panel(ws, "convert")

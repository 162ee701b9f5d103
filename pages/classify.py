"""Classify: upload pet photos (or take one) and see every variant's top-5 side by side."""

from __future__ import annotations

import streamlit as st

from pages.common import layout, reads
from petq.classify import classify_image, disagreement
from petq.data import UPLOAD_TYPES, model_pixels, open_image, preprocess
from petq.errors import ImageError, PetqError

PER_ROW = 3  # variant cards per row next to a photo

ws = layout.workspace_page("Classify")

variants = reads.available_variants(ws)
st.session_state["classify_variants"] = [
    n for n in st.session_state.get("classify_variants", list(variants)) if n in variants
]
chosen = st.multiselect("Variants", list(variants), key="classify_variants",
                        help="native and every variant converted so far.")
files = st.file_uploader("Pet photos", type=list(UPLOAD_TYPES), accept_multiple_files=True,
                         key="classify_upload",
                         help="Whatever petq's decoder reads: " + ", ".join(UPLOAD_TYPES)
                         + ". EXIF rotation is applied, transparency goes on white.")
shot = None
if st.toggle("Use the camera", key="classify_use_camera"):
    shot = st.camera_input("Take a photo", key="classify_camera")

inputs = [(f.name, f.getvalue()) for f in files or []]
if shot is not None:
    inputs.append(("camera photo", shot.getvalue()))
if not inputs:
    st.info("Upload one or more photos of cats or dogs to see what each variant predicts.")
    st.stop()
if not chosen:
    st.warning("Pick at least one variant.")
    st.stop()

try:
    with st.spinner("Loading the variants (first time only)…"):
        runners = {name: reads.runner(ws, *variants[name]) for name in chosen}
except PetqError as exc:
    st.error(f"Cannot load a variant: {exc}")
    st.stop()

max_bytes = int(st.get_option("server.maxUploadSize")) * 1024 * 1024
for name, data in inputs:
    with st.container(border=True):
        if len(data) > max_bytes:
            st.error(f"{name}: file too large ({len(data) / 1e6:.1f} MB; the limit is "
                     f"{max_bytes // (1024 * 1024)} MB).")
            continue
        try:
            image = open_image(data, name=name)
            x = preprocess(model_pixels(image, ws.contract), ws.contract)
        except ImageError as exc:
            st.error(str(exc))
            continue
        predictions = classify_image(runners, x, ws.class_names, name)
        photo, cards = st.columns([1, 3])
        gray = ws.contract.channels == 1  # shown as the model sees it: in one channel
        thumbnail = image.convert("L") if gray else image.copy()
        thumbnail.thumbnail((480, 480))
        photo.image(thumbnail, caption=f"{name} · {image.width}×{image.height}"
                    + (" · grayscale, as the model sees it" if gray else ""))
        if disagreement(predictions):
            photo.badge("Variants disagree", icon=":material/warning:", color="orange")
        else:
            photo.badge("All variants agree", icon=":material/check:", color="green")
        if ws.contract.synthetic:
            photo.caption("⚠️ This model was trained on synthetic data: its predictions on "
                          "real photos mean nothing.")
        first = predictions[0]
        for start in range(0, len(predictions), PER_ROW):
            for col, p in zip(cards.columns(PER_ROW), predictions[start:start + PER_ROW],
                              strict=False):
                with col:
                    differs = (f" :orange-badge[differs from {first.variant}]"
                               if p.top1 != first.top1 else "")
                    st.markdown(f"**{p.variant}** · {p.latency_ms:.1f} ms{differs}")
                    for breed, probability in p.top5:
                        st.progress(probability, text=f"{probability:.1%} · {breed}")

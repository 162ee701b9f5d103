"""The images that set a static variant's activation ranges (petq.outliers.gallery): a
thumbnail gallery read from the range profile, ticks to leave images out, and a job that
converts and evaluates the variant calibrated without them (its twin), with the paired
comparison of each twin against its original. Convert shows it for the chosen recipe."""

from __future__ import annotations

import streamlit as st

from pages.common import job_panel, layout, reads
from petq import outliers, tables
from petq.errors import PetqError
from petq.jobs import PlanStatus, list_jobs, plan, start_job, start_task_job
from petq.types import ProfileConfig, VariantSpec

COLUMNS = 4  # thumbnails per row
KEY = "convert_outliers"  # prefix of this section's widget keys


def _thumbnail(ws, image_id: str):
    store = ws.store("trainval")
    return store.pixels[store.index[image_id]]


def _caption(image: outliers.GalleryImage) -> str:
    stretch = (f"stretches {image.layers} layer(s), most ×{image.largest_stretch:.2f}"
               if image.layers else f"stretches none; widest range of {image.widest} layer(s)")
    return (f"{image.image_id} · {image.breed}  \n{stretch}  \n"
            f"width ×{image.width_vs_median:.1f} the median image's")


def _help(image: outliers.GalleryImage) -> str:
    return (f"Largest stretch: {image.largest_tensor or 'none'} (its range with this image "
            f"against without it). Widest own range: {image.width_tensor or 'none'}, "
            f"×{image.width_vs_median:.2f} the median image's; the widest of the set for "
            f"{image.widest} tensor(s).")


def range_setters(ws, spec: VariantSpec, test_fraction: float) -> None:
    """The gallery of `spec`'s calibration set, the exclusion job and the pairs it made."""
    try:
        found = reads.gallery(ws, spec)
    except PetqError as exc:
        st.info(str(exc))
        return
    if not found.ready:
        _offer_profiling(ws, spec, found, test_fraction)
        return
    st.caption(
        f"Each activation range of `{spec.name}` is the minimum and maximum over its "
        f"{found.images:,} calibration images ({found.tensors} calibrated tensors), so the "
        "image holding an extreme alone sets that end. **Stretch**: the range with the image "
        "against the range without it (how much coarser every other image's quantization "
        "step is). **Width**: the image's own widest range against the median image's.")
    if not found.top:
        st.success("No single image stretches a range: every extreme is shared.")
        return
    ticked = []
    for start in range(0, len(found.top), COLUMNS):
        for column, image in zip(st.columns(COLUMNS), found.top[start:start + COLUMNS],
                                 strict=False):
            with column:
                st.image(_thumbnail(ws, image.image_id), caption=_caption(image),
                         width="stretch")
                if st.checkbox("Leave out", key=f"{KEY}_{image.image_id}", help=_help(image)):
                    ticked.append(image.image_id)
    _exclusion_job(ws, spec, ticked, test_fraction)
    _pairs(ws, spec, test_fraction)


def _offer_profiling(ws, spec: VariantSpec, found: outliers.Gallery,
                     test_fraction: float) -> None:
    """Say how many images the profile lacks, and start the job that adds them."""
    running = [j for j in list_jobs(ws.cache.root, active_only=True)
               if isinstance(j.config, ProfileConfig) and j.config.spec == spec]
    st.info(f"{found.missing:,} of the {found.images:,} calibration images of `{spec.name}` are "
            "not in the range profile yet: each goes once through the recipe's calibrator "
            "(in a background job), and the gallery reads them from then on.")
    if running:
        st.caption(f"Being profiled now (job {running[0].id}): its progress is in the job "
                   "panel below.")
    elif st.button(f"Profile the {found.missing:,} images", key=f"{KEY}_profile"):
        try:
            job_id = start_task_job(ws, ProfileConfig(spec),
                                    test_fraction=test_fraction)
        except PetqError as exc:
            st.error(str(exc))
        else:
            job_panel.remember_job(job_id)
            st.rerun()


def _exclusion_job(ws, spec: VariantSpec, ticked: list[str], test_fraction: float) -> None:
    """The twin without the ticked images, and the job converting and evaluating it (and
    the original, when it is not evaluated yet: the comparison is paired)."""
    if not ticked:
        st.caption("Tick images to convert and evaluate the variant calibrated without them.")
        return
    twin = outliers.twin(spec, ticked)
    tasks = plan(ws, [spec, twin], test_fraction)
    to_do = [t.spec for t in tasks if t.status is PlanStatus.TODO]
    st.markdown(f"Without {len(ticked)} image(s): **{twin.name}**")
    skipped = [t for t in tasks if t.status is PlanStatus.SKIPPED]
    if skipped:
        st.warning(skipped[0].reason)
    elif any(t.status is PlanStatus.RUNNING for t in tasks):
        st.caption("Being converted and evaluated now: the job panel below follows it.")
    elif not to_do:
        st.caption(f"Evaluated already: its comparison with `{spec.name}` is below.")
    elif to_do and st.button(f"Convert and evaluate {twin.name}"
                             + (f" and {spec.name}" if len(to_do) > 1 else ""),
                             type="primary", key=f"{KEY}_start"):
        try:
            job_id = start_job(ws.model_path, ws.dataset.root, ws.cache.root, ws.threads,
                               to_do, test_fraction, workspace=ws)
        except PetqError as exc:
            st.error(str(exc))
        else:
            job_panel.remember_job(job_id)
            st.rerun()


def _pairs(ws, spec: VariantSpec, test_fraction: float) -> None:
    """This variant's twins in the cache, each against it (paired)."""
    rows = [r for r in reads.results(ws) if r.test_fraction == test_fraction]
    pairs = [(twin, original) for twin, original in outliers.exclusion_pairs(
        tables.latest_per_variant(rows, ws.threads)) if original.spec == spec]
    if not pairs:
        return
    comparisons = {twin.variant: reads.paired(ws, twin.result_key, original.result_key)
                   for twin, original in pairs}
    st.markdown(f"**`{spec.name}` calibrated without chosen images**, against itself on the "
                "same test images (✱: McNemar's exact test finds the difference significant)")
    layout.table(tables.exclusion_table(pairs, comparisons).drop(columns="original"),
                 width="stretch")
    st.page_link(layout.COMPARE, label="Compare them in full",
                 icon=":material/compare_arrows:")

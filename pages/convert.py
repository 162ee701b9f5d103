"""Convert: pick a recipe and its calibration, see the calibration set and the images that
set its ranges (leave some out: a twin variant), and convert and evaluate every requested
variant in one background job; or draw a calibration curve (accuracy against the number of
calibration images) as a background job and show it."""

from __future__ import annotations

import re

import streamlit as st

from pages.common import job_panel, layout, outliers, settings
from petq import curve, figures, tables
from petq.errors import PetqError
from petq.jobs import PlanStatus, Status, list_jobs, plan, start_job
from petq.sweep import expand_grid
from petq.types import (
    DEFAULT_CALIBRATION_SEED,
    DEFAULT_CURVE_SEEDS,
    LAB_IMBALANCED_CLASSES,
    RECIPES,
    CurveConfig,
    JobKind,
)

ws = layout.workspace_page("Convert")
test_fraction = settings.current().test_fraction
names = list(ws.class_names)
groups = tables.recipe_groups(ws.source_is_tflite)

def _one_class() -> None:
    if st.session_state.get("convert_one_class"):
        st.session_state["convert_classes"] = [st.session_state["convert_one_class"]]


def _one_recipe() -> list:
    """One recipe and its calibration (a fraction with seeds, or chosen breeds)."""
    # ------------------------------------------------------------------ recipe

    left, right = st.columns([1, 2])
    backend = left.radio("Made by", list(groups), index=min(1, len(groups) - 1),
                         key="convert_backend")
    recipes = {r.key: r for r in groups[backend]}
    default = "tflite-int8" if "tflite-int8" in recipes else next(iter(recipes))
    key = right.selectbox(
        "Recipe", list(recipes), index=list(recipes).index(default),
        format_func=lambda k: f"{k} · {recipes[k].scheme}", key=f"convert_recipe_{backend}",
        help="Scheme: what is quantized (wi8_ai8 = int8 weights and activations).",
    )
    recipe = recipes[key]
    right.caption(recipe.summary)

    # ------------------------------------------------------------------ calibration

    try:
        if not recipe.calibrates:
            specs = tables.requested_specs(recipe)
        elif st.radio("Calibrate on", ["a fraction of trainval", "chosen breeds only"],
                      horizontal=True, key="convert_calibration") == "a fraction of trainval":
            left, right = st.columns([3, 1])
            fraction = left.slider("Calibration fraction of trainval", min_value=0.01,
                                   max_value=1.0, value=0.08, step=0.01, key="convert_fraction")
            seeds = right.text_input(
                "Seeds", value=str(DEFAULT_CALIBRATION_SEED), key="convert_seeds",
                help="One variant per seed: `1234`, `1, 2, 3` or a range `1-5` "
                     f"(at most {tables.MAX_SEEDS}). Several seeds show how much the pick of "
                     "calibration images moves the results.")
            specs = tables.requested_specs(recipe, round(fraction, 4),
                                            tables.parse_seeds(seeds))
        else:
            default_breeds = ([names[c] for c in LAB_IMBALANCED_CLASSES if c < len(names)]
                              or names[:1])
            st.session_state["convert_classes"] = [
                n for n in st.session_state.get("convert_classes", default_breeds) if n in names]
            left, right = st.columns([3, 1])
            chosen = left.multiselect("Calibration breeds", names, key="convert_classes")
            right.selectbox("One-breed shortcut", names, index=None, placeholder="Just this breed…",
                            key="convert_one_class", on_change=_one_class)
            if not chosen:
                st.warning("Pick at least one breed to calibrate on.")
                st.stop()
            specs = tables.requested_specs(recipe, classes=[ws.class_index(n) for n in chosen])
    except PetqError as exc:
        st.error(str(exc))
        st.stop()

    first = specs[0]
    calibration = first.describe(ws.class_names).removeprefix(recipe.summary).strip()
    if calibration:  # the summary is shown above: say only what calibrates it
        st.markdown(f"**{first.name}**" + (f" and {len(specs) - 1} more seeds" if len(specs) > 1
                                            else "") + f": {calibration}")

    try:
        samples = ws.calibration_samples(first)
    except PetqError as exc:
        st.error(str(exc))
        st.stop()
    if samples:
        st.caption(f"Calibration set: **{len(samples):,}** of {len(ws.dataset.trainval):,} "
                   "trainval images (never test images)"
                   + (f"; shown for seed {first.seed}, the other seeds pick other images in the "
                      "same proportions." if len(specs) > 1 else "."))
        st.plotly_chart(
            layout.figure(figures.calibration_histogram, ws.calibration_histogram(first),
                          "Calibration images per breed"),
            width="stretch", key="convert_histogram",
        )
    return specs


def _grid() -> tuple[list, str | None]:
    """A sweep grid: recipes x fractions x seeds, as one background job; and the Ray
    address to run it on (None: this machine)."""
    st.caption("Every cell is one variant; recipes that do not calibrate give one cell. On "
               "this machine the job converts and evaluates them one after the other; on Ray, "
               "each is one task (as `petq sweep --ray`).")
    left, middle, right = st.columns([3, 2, 1])
    chosen = left.multiselect("Recipes", list(RECIPES), default=["tflite-int8"],
                              key="convert_grid_recipes")
    fractions = middle.text_input("Calibration fractions", value="0.01, 0.08",
                                  key="convert_grid_fractions",
                                  help="Fractions of trainval, each in (0, 1]")
    seeds = right.text_input("Seeds", value=str(DEFAULT_CALIBRATION_SEED),
                             key="convert_grid_seeds", help="`1234`, `1, 2, 3` or `1-5`")
    try:
        values = [float(v) for v in re.split(r"[,\s]+", fractions.strip()) if v]
    except ValueError:
        st.error(f"Calibration fractions must be numbers, got {fractions!r}.")
        st.stop()
    try:
        specs = expand_grid(chosen, values, tables.parse_seeds(seeds))
    except PetqError as exc:
        st.error(str(exc))
        st.stop()
    st.markdown(f"**{len(specs)} variants** in the grid.")
    where, address = st.columns([2, 3])
    on_ray = where.radio("Run on", ["this machine", "Ray"], horizontal=True,
                         key="convert_grid_where") == "Ray"
    if not on_ray:
        return specs, None
    ray = address.text_input(
        "Ray address", value="local", key="convert_grid_ray",
        help="`local`: a Ray started for this job; `auto`: the cluster `ray start` made (or "
             "RAY_ADDRESS); `host:port`: a cluster by address. Every node must see the "
             "model, the dataset and the cache at the same paths.")
    return specs, ray.strip() or "local"


grid = st.toggle("Sweep a grid (recipes x fractions x seeds)", key="convert_grid")
if grid:
    specs, ray = _grid()
else:
    specs, ray = _one_recipe(), None
first = specs[0]

# ------------------------------------------------------------------ what is cached

tasks = plan(ws, specs, test_fraction)
cached = {t.name: ws.cached_result(t.spec, test_fraction) for t in tasks
          if t.status is PlanStatus.CACHED}
st.subheader("Variants")
layout.table(tables.plan_table(tasks, cached), width="stretch")
to_do = [t.spec for t in tasks if t.status is PlanStatus.TODO]
running = [t.name for t in tasks if t.status is PlanStatus.RUNNING]
if to_do:
    action = ("Evaluate" if first.is_native else "Convert and evaluate") + (
        f" {to_do[0].name}" if len(to_do) == 1 else f" {len(to_do)} variants")
    if st.button(action, type="primary", key="convert_start"):
        try:
            job_id = start_job(ws.model_path, ws.dataset.root, ws.cache.root, ws.threads,
                               to_do, test_fraction, workspace=ws, ray=ray)
        except PetqError as exc:
            st.error(str(exc))
        else:
            job_panel.remember_job(job_id)
            st.rerun()
elif running:
    st.info(f"Being converted and evaluated now: {', '.join(running)}.")
elif cached:
    st.success(f"Everything asked for is in the cache (evaluated on "
               f"{tables.fraction_text(test_fraction)}): nothing to convert.")
    st.page_link(layout.COMPARE, label="Compare with the other variants",
                 icon=":material/compare_arrows:")

# ------------------------------------------------------------------ images that set the ranges

if not grid and first.recipe.calibrates:
    setters = st.expander("The images that set the ranges",
                          key="convert_outliers_open", on_change="rerun",
                          icon=":material/photo_library:")
    if setters.open:  # built only when opened: it reads the range profile
        with setters:
            outliers.range_setters(ws, first, test_fraction)

# ------------------------------------------------------------------ calibration curve


def _curve_form() -> None:
    """Recipes, sizes and seeds of a calibration curve; Start checks them and starts the job."""
    static = [k for k, r in RECIPES.items() if r.calibrates]
    trainval = len(ws.dataset.trainval)
    with st.form("convert_curve_form"):
        left, middle, right = st.columns([3, 2, 2])
        recipes = left.multiselect("Static recipes", static, default=["tflite-int8"],
                                   key="convert_curve_recipes")
        sizes = middle.text_input(
            "Calibration sizes (images)", value=" ".join(
                str(n) for n in curve.DEFAULT_SIZES if n == curve.ALL or int(n) <= trainval),
            key="convert_curve_sizes",
            help=f"Whole numbers of trainval images (at most {trainval:,}) and `all`, "
                 "separated by spaces or commas; `all` is always added.")
        seeds = right.text_input("Seeds", value=" ".join(map(str, DEFAULT_CURVE_SEEDS)),
                                 key="convert_curve_seeds",
                                 help="One calibration pick per seed and size: `1, 2, 3` or "
                                      "a range `1-5`")
        started = st.form_submit_button("Draw the curve", type="primary")
    if not started:
        return
    try:
        config = CurveConfig(recipes=tuple(recipes),
                             sizes=tuple(w for w in re.split(r"[,\s]+", sizes.strip()) if w),
                             seeds=tuple(tables.parse_seeds(seeds)))
        job_id = curve.start_curve_job(ws, config, test_fraction)
    except PetqError as exc:
        st.error(str(exc))
    else:
        job_panel.remember_job(job_id)
        st.rerun()


def _latest_curve() -> None:
    """The newest calibration curve on this cache: its chart and recommendation, read
    from the job's files."""
    curves = [j for j in list_jobs(ws.cache.root) if j.kind is JobKind.CURVE]
    done = [j for j in curves if j.state is Status.DONE]
    if any(j.active for j in curves):
        st.caption("A curve is being drawn: its progress is in the job panel below.")
    if not done:
        return
    job = done[0]
    outputs = curve.read_outputs(job.results_path)
    if outputs is None:
        st.error(f"{job.results_path}: the curve's files are missing")
        return
    st.markdown(f"**Job {job.id}** · {job.title}")
    for line in outputs.recommendations:
        st.markdown(f"- {line}")
    metric = st.radio("Metric", ["accuracy", "g_mean"], horizontal=True,
                      format_func=tables.label, key="convert_curve_metric")
    st.plotly_chart(figures.calibration_curve_figure(outputs.table, metric), width="stretch",
                    key="convert_curve_chart")
    st.caption(f"Files: {outputs.folder} (calibration-curve.csv, .md, .png).")


st.subheader("Calibration curve")
st.caption("How many calibration images does a static recipe need, and does the pick "
           "matter? Each recipe is calibrated on N trainval images per seed for each size "
           "N, and on all of trainval; every cell is compared with all of trainval (paired "
           "tests) on the same test images.")
if st.toggle("Draw a new curve (recipes x sizes x seeds)", key="convert_curve"):
    _curve_form()
_latest_curve()

job_panel.job_panel(ws, "convert")

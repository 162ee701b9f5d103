"""Calibration from the range profile (petq.calibration, petq.profile): each image through
a calibrator once, ever, and the same .tflite bytes as a plain conversion."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from petq.calibration import SharedStatic, profiled, shares, shares_aeq
from petq.errors import SpecError
from petq.profile import Layout, Measured, RangeProfile, outliers
from petq.types import VariantSpec
from petq.workspace import Workspace


def test_only_static_recipes_without_kept_layers_go_through_the_profile():
    assert shares(VariantSpec.int8(0.1))
    assert shares(VariantSpec.of("tflite-int8-pertensor", 0.1))
    assert not shares(VariantSpec.of("tflite-int16x8", 0.1))  # another quantizer path
    assert shares_aeq(VariantSpec.of("aeq-wi8-ai8", 0.1))
    assert shares_aeq(VariantSpec.of("aeq-wi8-ai16", count=4))
    assert not profiled(VariantSpec.fp32())
    assert not profiled(VariantSpec.of("aeq-wi8-afp32"))
    assert not profiled(VariantSpec.of("tflite-int8", 0.1, keep_float=2))
    assert not profiled(VariantSpec.of("aeq-wi8-ai8", 0.1, keep_float=1))
    with pytest.raises(ValueError):
        SharedStatic("m.keras", VariantSpec.of("aeq-wi8-ai8", 0.1), None, list)


def test_count_and_exclusion_names_round_trip_and_leave_older_keys_alone():
    import re

    from petq.types import Calibration

    n16 = VariantSpec.of("tflite-int8", count=16, seed=3)
    assert n16.name == "tflite-int8-n16-s3" and VariantSpec.from_name(n16.name) == n16
    assert VariantSpec.from_name("aeq-wi8-ai8-n4") == VariantSpec.of("aeq-wi8-ai8", count=4)
    assert VariantSpec.int8(0.08).to_dict()["calibration"] == {
        "fraction": 0.08, "classes": [], "seed": 1234}  # cache keys made before stay valid
    without = VariantSpec.of("tflite-int8-pertensor", 0.3, exclude=("b_1", "a_2"))
    assert re.fullmatch(r"tflite-int8-0\.3-ex2-[0-9a-f]{6}-pertensor", without.name)
    assert VariantSpec.from_dict(without.to_dict()) == without
    assert without.name != VariantSpec.of("tflite-int8-pertensor", 0.3, exclude=("c_1",
                                                                                   "a_2")).name
    with pytest.raises(SpecError, match="does not list the images"):
        VariantSpec.from_name(without.name)
    for bad in (dict(count=0), dict(count="many"), dict(count=2.5),
                dict(fraction=0.1, count=3), dict(exclude=("a_1",))):
        with pytest.raises(SpecError):
            Calibration(**bad)


def _measured(lo: list[float], hi: list[float]) -> Measured:
    layout = Layout(("a", "b"), ((1,), (1,)))
    return Measured(layout, [(np.array([lo[0]], np.float32), np.array([hi[0]], np.float32)),
                             (np.array([lo[1]], np.float32), np.array([hi[1]], np.float32))])


def test_a_profile_merges_by_min_and_max_and_reads_back_in_a_new_object(tmp_path):
    from petq.cache import Cache

    cache = Cache(tmp_path)
    ranges = {"x": ([0, -1], [1, 2]), "y": ([-3, 0], [0.5, 1]), "z": ([0, 0], [1, 9])}
    measured = []

    def measure(x):
        image_id = ["x", "y", "z"][int(x[0])]
        measured.append(image_id)
        return _measured(*ranges[image_id])

    def inputs(ids):
        return (np.array([["x", "y", "z"].index(i)], np.float32) for i in ids)

    profile = RangeProfile(cache, "k1")
    assert profile.ensure(["x", "y"], inputs, measure) == 2
    merged = profile.merged(["x", "y"])
    assert [float(lo[0]) for lo, _ in merged] == [-3, -1]
    assert [float(hi[0]) for _, hi in merged] == [1, 2]
    again = RangeProfile(cache, "k1")  # another run: reads the cache, calibrates only z
    assert again.ensure(["z", "y", "x"], inputs, measure) == 1
    assert measured == ["x", "y", "z"] and again.calibrated == 1
    assert again.profiled() == {"x", "y", "z"}
    assert RangeProfile(cache, "k2").profiled() == set()  # another identity shares nothing
    with pytest.raises(KeyError, match="not profiled"):
        RangeProfile(cache, "k2").table(["x"])


def test_outliers_name_the_image_that_holds_an_extreme_and_what_it_stretches(tmp_path):
    from petq.cache import Cache

    rng = np.random.default_rng(0)
    ids = [f"img{i}" for i in range(9)]
    table = {i: ([float(rng.uniform(-1.1, -0.9)), 0.0], [float(rng.uniform(0.9, 1.1)), 1.0])
             for i in ids}
    table["img4"] = ([-1.0, 0.0], [1.0, 7.0])  # tensor b: 7 against about 1 for the others
    profile = RangeProfile(Cache(tmp_path), "k")
    profile.ensure(ids, lambda some: (np.array([ids.index(i)]) for i in some),
                   lambda x: _measured(*table[ids[int(x[0])]]))
    tensors, images = outliers(profile, ids)
    b = tensors[1]
    assert (b.high_image, b.widest) == ("img4", "img4")
    assert b.stretch["img4"] == pytest.approx(7.0)  # width 7 with it, 1 without
    assert b.widest_vs_median == pytest.approx(7.0)
    assert images[0].image_id == "img4" and images[0].stretch["b"] == pytest.approx(7.0)
    assert images[0].width_vs_median["b"] == pytest.approx(7.0)


def test_count_and_exclusion_pick_the_calibration_images(workspace):
    n8 = workspace.calibration_samples(VariantSpec.of("tflite-int8", count=8, seed=3))
    assert len(n8) == 8 and len({s.image_id for s in n8}) == 8
    assert Counter(s.label for s in n8) == Counter({0: 2, 1: 2, 2: 2, 3: 2})  # stratified
    assert n8 != workspace.calibration_samples(VariantSpec.of("tflite-int8", count=8, seed=4))
    dropped = (n8[0].image_id, n8[5].image_id)
    without = VariantSpec.of("tflite-int8", count=8, seed=3, exclude=dropped)
    assert [s.image_id for s in workspace.calibration_samples(without)] == [
        s.image_id for s in n8 if s.image_id not in dropped]
    assert "-ex2-" in without.name
    assert workspace.variant_key(without) != workspace.variant_key(
        VariantSpec.of("tflite-int8", count=8, seed=3))
    with pytest.raises(SpecError, match="not trainval images"):
        workspace.calibration_samples(VariantSpec.of("tflite-int8", 0.5, exclude=("nope_1",)))
    with pytest.raises(SpecError, match="trainval has 40"):
        workspace.calibration_samples(VariantSpec.of("tflite-int8", count=41))


def _plain(ws: Workspace, spec: VariantSpec) -> bytes:
    """The plain conversion: the converter or AEQ calibrating the set itself."""
    from petq.convert import convert

    store = ws.store("trainval")
    rows, kept = store.rows(ws.calibration_samples(spec))
    inputs = (ws._inputs([s.image_id for s in kept]))
    float_tflite = ws.fp32_tflite() if spec.recipe.backend.value == "aeq" else None
    return convert(ws.model_path, spec, inputs, len(kept), float_tflite=float_tflite)


SETS = [  # on the fixture tree (40 trainval images, uneven picks): fractions, counts, a class
    dict(fraction=0.25, seed=5), dict(fraction=0.5, seed=5), dict(count=7, seed=6),
    dict(classes=(1,)),
]


class _Fed:
    """Counts the images fed to the real calibrators (TFLite's and AEQ's)."""

    def __init__(self, monkeypatch):
        from ai_edge_quantizer import calibrator as aeq
        from tensorflow.lite.python.optimize import calibrator as tfl

        self.images = 0
        tfl_calibrate, aeq_calibrate = tfl.Calibrator.calibrate, aeq.Calibrator.calibrate

        def counted_tfl(calibrator, dataset_gen):
            def gen():
                for sample in dataset_gen():
                    self.images += 1
                    yield sample
            return tfl_calibrate(calibrator, gen)

        def counted_aeq(calibrator, data, *args, **kwargs):
            data = {key: list(rows) for key, rows in data.items()}
            self.images += sum(len(rows) for rows in data.values())
            return aeq_calibrate(calibrator, data, *args, **kwargs)

        monkeypatch.setattr(tfl.Calibrator, "calibrate", counted_tfl)
        monkeypatch.setattr(aeq.Calibrator, "calibrate", counted_aeq)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["tflite-int8", "tflite-int8-pertensor", "aeq-wi8-ai8"])
def test_conversions_from_the_profile_are_byte_identical_and_never_calibrate_an_image_twice(
        recipe, tiny_model, pet_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    fed = _Fed(monkeypatch)
    first = [VariantSpec.of(recipe, **kw) for kw in SETS]
    ws = Workspace(tiny_model, pet_root, cache, threads=1)
    seen: dict[str, list[tuple[int, int]]] = {}
    union: set[str] = set()
    for spec in first:
        assert ws.shares_calibration(spec)
        before = fed.images
        entry, built = ws.tflite(spec, lambda stage, done, total, name=spec.name:
                                 seen.setdefault(name, []).append((done, total))
                                 if stage == "calibrate" else None)
        ids = {s.image_id for s in ws.calibration_samples(spec)}
        assert built and fed.images - before == len(ids - union), spec.name
        union |= ids
        assert entry.file("model.tflite").read_bytes() == _plain(ws, spec), spec.name
        assert entry.manifest["calibration_count"] == len(ids)
        assert seen[spec.name][-1] == (len(ids),) * 2  # progress ends at the set's size
    # a second run, new seeds and sizes: only images no run has calibrated go through
    fed.images = 0
    again = Workspace(tiny_model, pet_root, cache, threads=1)
    second = [VariantSpec.of(recipe, 0.25, seed=77), VariantSpec.of(recipe, count=12, seed=78)]
    wanted = {s.image_id for spec in second for s in again.calibration_samples(spec)}
    for spec in second:
        entry, built = again.tflite(spec)
        assert built and entry.file("model.tflite").read_bytes() == _plain(again, spec)
    fresh = wanted - union
    assert fresh and wanted & union  # the test means something: both kinds of image
    plain_fed = sum(len(again.calibration_samples(spec)) for spec in second)  # by _plain
    assert fed.images - plain_fed == len(fresh)
    profile = again.range_profile(second[0])
    assert profile.calibrated == len(fresh)


@pytest.mark.slow
def test_aeq_16_bit_activations_from_the_profile_are_byte_identical(tiny_model, pet_root,
                                                                    tmp_path):
    ws = Workspace(tiny_model, pet_root, tmp_path / "cache", threads=1)
    for spec in (VariantSpec.of("aeq-wi8-ai16", 0.25, seed=5),
                 VariantSpec.of("aeq-wi8-ai16", 0.5, seed=5)):
        entry, _ = ws.tflite(spec)
        assert entry.file("model.tflite").read_bytes() == _plain(ws, spec), spec.name


@pytest.mark.slow
def test_a_damaged_profile_entry_is_calibrated_again_not_used(tiny_model, pet_root, tmp_path):
    cache = tmp_path / "cache"
    spec = VariantSpec.of("tflite-int8", 0.5, seed=5)
    Workspace(tiny_model, pet_root, cache, threads=1).tflite(spec)
    entries = [p for p in (cache / "ranges").iterdir() if not p.name.startswith(".")]
    assert entries
    for entry in entries:  # every batch: same size, other numbers
        data = (entry / "ranges.npy").read_bytes()
        (entry / "ranges.npy").write_bytes(data[:-8] + b"\0" * 8)
    ws = Workspace(tiny_model, pet_root, cache, threads=1)
    other = VariantSpec.of("tflite-int8", 0.5, seed=5, exclude=("Bengal_1",))
    out, _ = ws.tflite(other)
    assert ws.range_profile(other).calibrated == len(ws.calibration_samples(other))
    assert out.file("model.tflite").read_bytes() == _plain(ws, other)


@pytest.mark.slow
def test_a_converter_that_does_not_behave_falls_back_to_plain_conversion(
        tiny_model, pet_root, tmp_path, monkeypatch):
    spec = VariantSpec.of("tflite-int8", 0.25, seed=5)
    ws = Workspace(tiny_model, pet_root, tmp_path / "cache", threads=1)

    def broken(self, spec):  # as if a TensorFlow release renamed what this module uses
        raise AttributeError("'TFLiteKerasModelConverterV2' has no '_optimize_tflite_model'")

    monkeypatch.setattr(SharedStatic, "_exported", broken)
    with pytest.warns(UserWarning, match="range profile unavailable"):
        entry, built = ws.tflite(spec)
    assert built and not ws.shares_calibration(spec)  # the recipe goes the plain way now
    assert entry.file("model.tflite").read_bytes() == _plain(ws, spec)


@pytest.mark.slow
def test_a_new_process_profiles_from_the_kept_export_without_exporting(
        tiny_model, pet_root, tmp_path, monkeypatch):
    """The converter's export is kept in the cache: a later process (a profiling process,
    a profiling job) calibrates from it without exporting the Keras model again."""
    cache = tmp_path / "cache"
    first = VariantSpec.of("tflite-int8", 0.25, seed=5)
    ws = Workspace(tiny_model, pet_root, cache, threads=1)
    ws.tflite(first)
    assert len([p for p in (cache / "exports").iterdir() if not p.name.startswith(".")]) == 1
    exported = []
    real = SharedStatic._exported

    def counted(self, spec):
        exported.append(spec.name)
        return real(self, spec)

    monkeypatch.setattr(SharedStatic, "_exported", counted)
    later = Workspace(tiny_model, pet_root, cache, threads=1)
    other = VariantSpec.of("tflite-int8", count=12, seed=78)
    ids = later.calibration_ids(other)
    profile = later.range_profile(other, ids)
    assert exported == [] and profile.key == ws.range_profile(first).key
    assert profile.calibrated == len(set(ids) - set(ws.calibration_ids(first))) > 0
    entry, built = later.tflite(other)  # converting needs the converter: it exports here
    assert built and len(exported) == 1
    assert entry.file("model.tflite").read_bytes() == _plain(later, other)


@pytest.mark.slow
def test_an_export_that_differs_from_the_kept_one_converts_the_plain_way(
        tiny_model, pet_root, tmp_path, monkeypatch):
    spec = VariantSpec.of("tflite-int8", 0.25, seed=5)
    monkeypatch.setattr(Workspace, "_kept_export",  # another model's bytes were kept
                        lambda self, spec, make: self.fp32_tflite())
    ws = Workspace(tiny_model, pet_root, tmp_path / "cache", threads=1)
    with pytest.warns(UserWarning, match="differs from the kept one"):
        entry, built = ws.tflite(spec)
    assert built and entry.file("model.tflite").read_bytes() == _plain(ws, spec)


@pytest.mark.slow
def test_a_bad_spec_does_not_stop_the_others(tiny_model, pet_root, tmp_path):
    good = VariantSpec.of("tflite-int8", 0.25, seed=5)
    bad = VariantSpec.of("tflite-int8", classes=(99,))  # no such class
    ws = Workspace(tiny_model, pet_root, tmp_path / "cache", threads=1)
    with pytest.raises(SpecError, match="out of range"):
        ws.tflite(bad)
    entry, built = ws.tflite(good)
    assert built and ws.shares_calibration(good)
    assert entry.file("model.tflite").read_bytes() == _plain(ws, good)


def test_a_float_tflite_source_profiles_only_aeq_recipes(tmp_path, workspace, pet_root):
    source = tmp_path / "model.tflite"
    source.write_bytes(b"not read here")
    (tmp_path / "model.json").write_text(
        (workspace.model_path.with_suffix(".json")).read_text())
    ws = Workspace(source, pet_root, tmp_path / "cache", threads=1)
    assert not ws.shares_calibration(VariantSpec.int8(0.5))
    assert ws.shares_calibration(VariantSpec.of("aeq-wi8-ai8", 0.5))


def _counted_profile(cache, key, measured: list, sleep: float = 0.0, fail_after: int | None = None):
    """A RangeProfile of `key` and its `measure`, which records each image it calibrates
    (and raises after `fail_after` images: a process that dies)."""
    import time

    def measure(x):
        if fail_after is not None and len(measured) >= fail_after:
            raise RuntimeError("killed")
        measured.append(int(x[0]))
        time.sleep(sleep)
        return _measured([-float(x[0]), 0.0], [float(x[0]), 1.0])

    return RangeProfile(cache, key), measure


def _inputs(ids):
    return (np.array([int(i)], np.float32) for i in ids)


def test_processes_profiling_the_same_images_from_two_starts_share_the_work(tmp_path):
    import threading

    from petq.cache import Cache
    from petq.profile import BATCH

    ids = [str(i) for i in range(6 * BATCH)]
    ours, theirs = [], []
    first, measure_first = _counted_profile(Cache(tmp_path), "k", ours, sleep=0.002)
    second, measure_second = _counted_profile(Cache(tmp_path), "k", theirs, sleep=0.002)
    helper = threading.Thread(target=second.ensure,
                              args=(ids, _inputs, measure_second, None, len(ids) // 2))
    helper.start()
    first.ensure(ids, _inputs, measure_first)
    helper.join(timeout=60)
    assert not helper.is_alive()
    assert ours and theirs  # both worked
    assert set(ours) | set(theirs) == set(range(len(ids)))
    assert len(ours) + len(theirs) <= len(ids) + 2 * BATCH  # they may meet on a batch, no more
    merged = first.merged(ids)  # what either saved, the same numbers
    assert float(merged[0][0][0]) == -(len(ids) - 1) and float(merged[0][1][0]) == len(ids) - 1


def test_a_helper_that_dies_costs_only_its_unsaved_batch(tmp_path):
    from petq.cache import Cache
    from petq.profile import BATCH

    ids = [str(i) for i in range(4 * BATCH)]
    theirs, ours = [], []
    helper, measure_helper = _counted_profile(Cache(tmp_path), "k", theirs,
                                              fail_after=BATCH + 3)
    with pytest.raises(RuntimeError, match="killed"):  # dies in its second batch
        helper.ensure(ids, _inputs, measure_helper, start=2 * BATCH)
    first, measure_first = _counted_profile(Cache(tmp_path), "k", ours)
    assert first.ensure(ids, _inputs, measure_first) == len(ids) - BATCH
    assert set(ours) == set(range(len(ids))) - set(range(2 * BATCH, 3 * BATCH))
    assert first.profiled(ids) == set(ids)

"""The pipeline on real parts: converter, LiteRT interpreter, cache on disk."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import CLASSES
from petq.errors import ModelError, SpecError
from petq.evaluate import MIN_LATENCY_RUNS
from petq.runtime import LiteRTRunner
from petq.types import RECIPES, VariantSpec
from petq.workspace import Workspace

KINDS = [VariantSpec.native(), VariantSpec.fp32(), VariantSpec.int8(0.5),
         VariantSpec.imbint8((1,))]
# every other recipe, calibrated on half of trainval (or on breeds 1 and 2)
RECIPE_SPECS = [VariantSpec.of(r, 0.5 if r.calibrates else None) for r in RECIPES.values()
                if VariantSpec.of(r, 0.5 if r.calibrates else None) not in KINDS
                and r.backend.value != "source"]  # a .tflite source's: test_bring_your_own


@pytest.mark.parametrize("spec", KINDS, ids=lambda s: s.name)
def test_every_kind_evaluates_and_is_cached(workspace, spec):
    row, _ = workspace.evaluate(spec)
    assert row.variant == spec.name
    assert row.n_images == len(workspace.dataset.test)
    assert row.accuracy >= 0.75  # the fixture classes are separable by colour
    for key in ("mean_precision", "mean_sensitivity", "g_mean", "top5"):
        assert 0.0 <= row.value(key) <= 1.0
    # 100 runs, or fewer once the time budget is spent (a busy machine; see test_evaluate)
    assert row.latency_p50_ms > 0 and MIN_LATENCY_RUNS <= row.latency_runs <= 100
    again, computed = workspace.evaluate(spec)
    assert not computed and again.accuracy == row.accuracy
    details = workspace.details(row.result_key)
    assert details.confusion_matrix.sum() == row.n_images
    assert len(details.top1) == row.n_images
    assert details.top5.shape == (row.n_images, len(workspace.class_names))  # 4 classes
    assert (details.top5_scores[:, :-1] >= details.top5_scores[:, 1:]).all()


@pytest.mark.slow
@pytest.mark.parametrize("spec", RECIPE_SPECS, ids=lambda s: s.name)
def test_every_recipe_converts_and_evaluates(workspace, spec):
    entry, _ = workspace.tflite(spec)
    runner = LiteRTRunner(entry.file("model.tflite"), threads=1)
    expected = {"float": np.float32, "int8": np.int8, "int16": np.int16}[spec.recipe.io]
    if spec.recipe.backend.value == "tflite":
        assert runner.input_dtype == expected
    result, _ = workspace.evaluate(spec)
    assert result.variant == spec.name and result.scheme == spec.recipe.scheme
    assert result.accuracy >= 0.75, result
    assert result.calibration_count == (len(workspace.dataset.trainval) // 2
                                        if spec.recipe.calibrates else 0)
    fp32 = workspace.tflite(VariantSpec.fp32())[0].file("model.tflite").stat().st_size
    assert result.file_size_bytes < fp32 or not spec.recipe.quantized


def test_no_two_recipes_share_a_cache_key(workspace):
    specs = [VariantSpec.of(r, 0.5 if r.calibrates else None) for r in RECIPES.values()
             if not r.backend.value == "keras"]
    keys = {workspace.variant_key(s) for s in specs}
    assert len(keys) == len(specs)


def test_int8_variant_is_int8_and_smaller(workspace):
    fp32, _ = workspace.tflite(VariantSpec.fp32())
    int8, _ = workspace.tflite(VariantSpec.int8(0.5))
    runner = LiteRTRunner(int8.file("model.tflite"), threads=1)
    assert runner.quantized_input and runner.input_dtype == np.int8
    assert int8.file("model.tflite").stat().st_size < fp32.file("model.tflite").stat().st_size
    assert int8.manifest["calibration_count"] == len(workspace.dataset.trainval) // 2


def test_calibration_never_uses_test_images(workspace):
    test_ids = {s.image_id for s in workspace.dataset.test}
    for spec in (VariantSpec.int8(1.0), VariantSpec.imbint8((0, 1))):
        calibration = {s.image_id for s in workspace.calibration_samples(spec)}
        assert calibration and not calibration & test_ids


def test_imbalanced_calibration_uses_only_chosen_classes(workspace):
    hist = workspace.calibration_histogram(VariantSpec.imbint8((2,)))
    assert hist[CLASSES[2][0]] > 0
    assert sum(v for k, v in hist.items() if k != CLASSES[2][0]) == 0
    with pytest.raises(SpecError, match="out of range"):
        workspace.calibration_samples(VariantSpec.imbint8((5,)))


def test_keys_change_with_what_changes_the_artifact(workspace):
    a = workspace.variant_key(VariantSpec.int8(0.5))
    assert a == workspace.variant_key(VariantSpec.int8(0.5))
    assert a != workspace.variant_key(VariantSpec.int8(0.5, seed=99))
    assert a != workspace.variant_key(VariantSpec.int8(0.3))


def test_changed_model_bytes_give_new_keys(tiny_model, pet_root, tmp_path):
    copy = tmp_path / "copy.keras"
    shutil.copy(tiny_model, copy)
    shutil.copy(tiny_model.with_suffix(".json"), copy.with_suffix(".json"))
    a = Workspace(copy, pet_root, tmp_path / "c").variant_key(VariantSpec.fp32())
    with open(copy, "ab") as handle:
        handle.write(b"\0")
    b = Workspace(copy, pet_root, tmp_path / "c").variant_key(VariantSpec.fp32())
    assert a != b


def test_corrupt_tflite_in_cache_is_rebuilt(tiny_model, pet_root, tmp_path):
    ws = Workspace(tiny_model, pet_root, tmp_path / "cache", threads=1)
    entry, built = ws.tflite(VariantSpec.fp32())
    assert built
    data = entry.file("model.tflite").read_bytes()
    entry.file("model.tflite").write_bytes(data[: len(data) // 2])
    entry2, built2 = ws.tflite(VariantSpec.fp32())
    assert built2 and entry2.file("model.tflite").read_bytes() == data
    LiteRTRunner(entry2.file("model.tflite"), threads=1)


def test_results_listing_is_filtered_to_model_and_dataset(workspace):
    workspace.evaluate(VariantSpec.fp32())
    rows = workspace.results()
    assert rows and all(r.model_sha == workspace.model_sha for r in rows)
    order = [list(RECIPES).index(r.spec.recipe.key) for r in rows]
    assert order == sorted(order)


def test_results_of_other_thread_counts_are_listed_on_request(tiny_model, pet_root,
                                                               shared_cache):
    """A sweep's tasks run with their own thread count: the dashboard lists them too, and
    prefers this workspace's own result of a variant when it has one."""
    from petq.tables import latest_per_variant

    one = Workspace(tiny_model, pet_root, shared_cache, threads=1)
    three = Workspace(tiny_model, pet_root, shared_cache, threads=3)
    single, _ = one.evaluate(VariantSpec.fp32(), latency_runs=5)
    assert single.threads == 1
    assert single.result_key not in {r.result_key for r in three.results()}
    listed = three.results(any_threads=True)
    assert single.result_key in {r.result_key for r in listed}
    own, _ = three.evaluate(VariantSpec.fp32(), latency_runs=5)
    both = [r for r in three.results(any_threads=True) if r.variant == "tflite-fp32"]
    assert {r.threads for r in both} >= {1, 3}
    assert [r.result_key for r in latest_per_variant(both, threads=3)] == [own.result_key]
    assert [r.result_key for r in latest_per_variant(both, threads=1)] == [single.result_key]
    assert own.accuracy == single.accuracy


def test_test_fraction_evaluates_a_stratified_subset(workspace):
    row, _ = workspace.evaluate(VariantSpec.fp32(), test_fraction=0.4)
    assert row.n_images == int(np.ceil(0.4 * len(workspace.dataset.test)))
    assert row.test_fraction == 0.4


def test_not_a_keras_model(pet_root, tmp_path):
    bogus = tmp_path / "bogus.keras"
    bogus.write_bytes(b"definitely not a model")
    # without a sidecar the model is read at once (for its input size and classes)
    with pytest.raises(ModelError, match="bogus.keras: not a valid .keras archive"):
        Workspace(bogus, pet_root, tmp_path / "cache")
    with pytest.raises(ModelError, match="not found"):
        Workspace(tmp_path / "missing.keras", pet_root, tmp_path / "cache")


def test_a_bad_model_with_a_sidecar_is_reported_when_evaluated(pet_root, tiny_model, tmp_path):
    bogus = tmp_path / "bogus.keras"
    bogus.write_bytes(b"definitely not a model")
    sidecar = tiny_model.with_suffix(".json")
    bogus.with_suffix(".json").write_text(sidecar.read_text())  # the model is read later
    ws = Workspace(bogus, pet_root, tmp_path / "cache", threads=1)
    with pytest.raises(ModelError, match="bogus.keras: not a valid .keras archive"):
        ws.evaluate(VariantSpec.native(), latency_runs=3)
    assert ws.cache.get("results", ws.result_key(VariantSpec.native(), 1.0)) is None


def test_truncated_tflite_gives_clear_error(tmp_path, workspace):
    entry, _ = workspace.tflite(VariantSpec.fp32())
    data = entry.file("model.tflite").read_bytes()
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(data[:200])
    with pytest.raises(ModelError, match="broken.tflite: not a valid TFLite model"):
        LiteRTRunner(broken)


def test_class_count_mismatch(tiny_model, tmp_path):
    from conftest import write_pet_tree

    other = write_pet_tree(tmp_path / "other")
    (other / "annotations" / "test.txt").write_text("Abyssinian_11 1 1 1\nunicorn_12 9 1 1\n")
    (other / "annotations" / "trainval.txt").write_text("Abyssinian_1 1 1 1\n")
    with pytest.raises(ModelError, match="breed 'unicorn'.* 4 classes do not include"):
        Workspace(tiny_model, other, tmp_path / "cache")


def test_a_dataset_of_some_breeds_evaluates_in_the_model_class_space(tiny_model, tmp_path):
    """Only breeds 1 and 3 listed (ids with gaps), in another order: labels follow the names."""
    from conftest import write_pet_tree

    root = write_pet_tree(tmp_path / "some")
    for split in ("trainval", "test"):
        path = root / "annotations" / f"{split}.txt"
        kept = [line for line in path.read_text().splitlines()
                if line.startswith(("Abyssinian", "Bengal"))]
        path.write_text("\n".join(kept) + "\n")
    ws = Workspace(tiny_model, root, tmp_path / "cache", threads=1)
    assert ws.class_names == tuple(name for name, _, _ in CLASSES)  # the model's 4 classes
    assert ws.class_index("Bengal") == 2
    result, _ = ws.evaluate(VariantSpec.fp32())
    details = ws.details(result.result_key)
    assert set(details.labels.tolist()) == {0, 2}
    assert result.n_images == 10 and result.accuracy >= 0.75
    present = ~np.isnan(details.per_class_sensitivity)
    assert present.tolist() == [True, False, True, False]
    assert result.mean_sensitivity == pytest.approx(
        np.mean(details.per_class_sensitivity[present]))


def test_unreadable_image_is_skipped_with_a_counted_warning(tiny_model, tmp_path):
    from conftest import write_pet_tree

    root = write_pet_tree(tmp_path / "pets")
    (root / "images" / "beagle_12.jpg").write_bytes(b"garbage")
    ws = Workspace(tiny_model, root, tmp_path / "cache", threads=1)
    from petq.errors import SkippedImagesWarning

    with pytest.warns(SkippedImagesWarning, match="1 skipped .1 not an image"):
        row, _ = ws.evaluate(VariantSpec.fp32())
    assert row.n_images == len(ws.dataset.test) - 1
    assert row.skipped_images == 1 and row.skipped_by_reason == {"not an image": 1}
    assert row.images.text() == (f"{len(ws.dataset.test)} listed, {row.n_images} evaluated, "
                                 "1 skipped (1 not an image)")


@pytest.mark.slow
def test_layer_stats_and_keeping_the_worst_layers_in_float(workspace):
    from petq.layers import quantized_ops

    base = VariantSpec.int8(0.5)
    stats = workspace.layer_stats(base)
    quantized = [s for s in stats if s.error is not None]
    assert quantized and all(np.isfinite(s.error) and s.error >= 0 for s in quantized)
    assert [s.index for s in stats] == sorted(s.index for s in stats)
    assert workspace.layer_stats(base) == stats  # cached
    keep = VariantSpec.of("tflite-int8", 0.5, keep_float=1)
    kept = workspace.kept_float_layers(keep)
    assert kept == (max(quantized, key=lambda s: (s.error, -s.index)).name,)
    base_ops = quantized_ops(workspace.tflite(base)[0].file("model.tflite").read_bytes())
    keep_ops = quantized_ops(workspace.tflite(keep)[0].file("model.tflite").read_bytes())
    assert len(keep_ops) == len(base_ops) - 1
    assert kept[0] not in {name for _, name in keep_ops}
    result, _ = workspace.evaluate(keep)
    assert result.variant == "tflite-int8-0.5-keep1" and result.accuracy >= 0.75
    aeq = workspace.layer_stats(VariantSpec.of("aeq-wi8-ai8", 0.5))
    assert any(s.error is not None for s in aeq)


@pytest.mark.slow
def test_a_float_tflite_source_model(workspace, pet_root, tmp_path):
    """A float .tflite as the source: contract from the file, fp32 is the file itself, AI Edge
    Quantizer recipes quantize it, native and converter recipes say why not."""
    fp32 = workspace.tflite(VariantSpec.fp32())[0].file("model.tflite")
    source = tmp_path / "bring-your-own.tflite"
    source.write_bytes(fp32.read_bytes())  # no sidecar: size and classes from the model
    ws = Workspace(source, pet_root, tmp_path / "cache", threads=1)
    assert ws.contract.input_size == workspace.contract.input_size
    assert ws.class_names == workspace.class_names
    assert ws.model_info()["param_count"] > 0
    result, _ = ws.evaluate(VariantSpec.fp32())
    assert result.accuracy == workspace.evaluate(VariantSpec.fp32())[0].accuracy
    assert ws.tflite(VariantSpec.fp32())[0].file("model.tflite").read_bytes() == fp32.read_bytes()
    aeq, _ = ws.evaluate(VariantSpec.of("aeq-wi8-ai8", 0.5))
    assert aeq.accuracy >= 0.75
    with pytest.raises(SpecError, match="no native variant"):
        ws.evaluate(VariantSpec.native())
    with pytest.raises(SpecError, match="takes a Keras model"):
        ws.tflite(VariantSpec.int8(0.5))
    source, _ = ws.evaluate(VariantSpec.from_name("source"))  # the float file as it is
    assert source.scheme == "wfp32_afp32" and source.accuracy == result.accuracy


def test_time_against_reference_never_converts_the_reference(tiny_model, pet_root, tmp_path):
    ws = Workspace(tiny_model, pet_root, tmp_path / "cache", threads=1)
    ws.evaluate(VariantSpec.int8(0.5), latency_runs=5)
    assert ws.time_against_reference(VariantSpec.int8(0.5)) is None  # no FP32 yet
    assert ws.cached_tflite(VariantSpec.fp32()) is None
    ws.evaluate(VariantSpec.fp32(), latency_runs=5)
    timing = ws.time_against_reference(VariantSpec.int8(0.5))
    assert timing is not None and timing.rounds == 100
    assert ws.latency_comparison(VariantSpec.int8(0.5), VariantSpec.fp32()) == timing  # cached
    assert ws.time_against_reference(VariantSpec.fp32()).rounds == 30  # against native


def test_paired_statistics_are_cached_on_disk(workspace):
    from petq.stats import class_changes_of, compare_details

    variant, _ = workspace.evaluate(VariantSpec.int8(0.5))
    reference, _ = workspace.evaluate(VariantSpec.fp32())
    comparison, changes = workspace.paired(variant.result_key, reference.result_key)
    mine, ref = workspace.details(variant.result_key), workspace.details(reference.result_key)
    assert comparison == compare_details(mine, ref)
    assert changes == class_changes_of(mine, ref)
    entries = list(workspace.cache.entries("paired"))
    assert entries
    again = workspace.paired(variant.result_key, reference.result_key)
    assert again == (comparison, changes)
    assert len(list(workspace.cache.entries("paired"))) == len(entries)  # read, not redone
    subset, _ = workspace.evaluate(VariantSpec.fp32(), test_fraction=0.4)
    assert workspace.paired(variant.result_key, subset.result_key) is None  # other images


def test_paired_statistics_from_the_passes_are_the_results_own(tiny_model, pet_root, tmp_path):
    """The CLI computes a pair's statistics once both passes are done, before either result
    is cached (petq.report.early_paired); the reports then read those, and they equal the
    statistics of the two cached results."""
    from petq import report
    from petq.stats import class_changes_of, compare_details
    from petq.workspace import Workspace

    ws = Workspace(tiny_model, pet_root, tmp_path / "cache", threads=1)
    specs = [VariantSpec.fp32(), VariantSpec.int8(0.5)]
    scores, passes = {}, {}
    for spec in specs:
        scores[spec] = ws.predictions(spec, 0.5)
        passes[spec], _ = ws.scored(scores[spec], 0.5)
        report.early_paired(ws, 0.5, passes, specs, spec)
    assert len(list(ws.cache.entries("paired"))) == 1  # INT8 against FP32 (no native here)
    variant, _ = ws.evaluate(specs[1], 0.5, latency_runs=3, scores=scores[specs[1]])
    reference, _ = ws.evaluate(specs[0], 0.5, latency_runs=3, scores=scores[specs[0]])
    found = ws.paired(variant.result_key, reference.result_key)
    assert len(list(ws.cache.entries("paired"))) == 1  # read, not computed again
    mine, ref = ws.details(variant.result_key), ws.details(reference.result_key)
    assert found == (compare_details(mine, ref), class_changes_of(mine, ref))


def test_a_cold_native_evaluation_reads_the_model_once(tiny_model, pet_root, tmp_path,
                                                       monkeypatch):
    import petq.runtime as runtime

    loads = []
    real = runtime.load_keras_model
    monkeypatch.setattr(runtime, "load_keras_model", lambda path: loads.append(path) or real(path))
    ws = Workspace(tiny_model, pet_root, tmp_path / "cache", threads=1)  # sidecar: not read
    ws.evaluate(VariantSpec.native(), latency_runs=3)
    assert len(loads) == 1  # the runner's model also gives the model's info
    assert ws.model_info()["num_classes"] == len(ws.class_names)


def decoded_splits(ws: Workspace) -> list[str]:
    """The splits whose stores are in the workspace's cache."""
    from petq.store import store_key

    size = ws.contract.input_size
    return [split for split in ("trainval", "test")
            if ws.cache.get("decoded", store_key(ws.dataset, size, split)) is not None]


def test_a_run_that_only_evaluates_decodes_only_the_test_images(tiny_model, pet_root,
                                                                 tmp_path):  # fmt: skip
    ws = Workspace(tiny_model, pet_root, tmp_path / "cache", threads=1)
    ws.evaluate(VariantSpec.native(), latency_runs=3)
    assert decoded_splits(ws) == ["test"]
    ws.tflite(VariantSpec.int8(0.5))  # calibrating needs the trainval images
    assert decoded_splits(ws) == ["trainval", "test"]


def test_calibration_images_first_then_the_test_images_as_one_stage(tiny_model, pet_root,
                                                                     tmp_path, monkeypatch):
    import petq.workspace as workspace

    loaded = []
    real = workspace.load_store
    monkeypatch.setattr(workspace, "load_store",
                        lambda *args, **kw: loaded.append(args[3]) or real(*args, **kw))
    ws = Workspace(tiny_model, pet_root, tmp_path / "cache", threads=1)
    calls = []
    info, test = ws.prepare(VariantSpec.native(), lambda *call: calls.append(call),
                            calibration_first=True)
    assert loaded == ["trainval", "test"]
    assert list(test.index) == [s.image_id for s in ws.dataset.test]
    total = len(ws.dataset.trainval) + len(ws.dataset.test)
    assert {stage for stage, _, _ in calls} == {"decode"}
    assert {t for _, _, t in calls} == {total}
    done = [d for _, d, _ in calls]
    assert done == sorted(done) and done[-1] == total
    assert info["num_classes"] == len(ws.class_names)
    assert ws.prepare(VariantSpec.fp32(), lambda *call: calls.append(call),
                      calibration_first=True)[1] is test  # nothing decoded again
    assert len(loaded) == 2


def test_calibration_picks_are_kept_and_a_new_process_reads_them(tiny_model, pet_root, tmp_path,
                                                                  monkeypatch):
    from petq import data, workspace

    specs = [VariantSpec.int8(0.5, seed=41), VariantSpec.of("tflite-int8", count=7, seed=42)]
    first = Workspace(tiny_model, pet_root, tmp_path / "cache", threads=1)
    picked = {spec: first.calibration_samples(spec) for spec in specs}
    assert len(list((tmp_path / "cache" / "picks").iterdir())) == len(specs)

    def never(*_):
        raise AssertionError("picked again instead of read from the cache")

    monkeypatch.setattr(workspace, "stratified_count", never)
    monkeypatch.setattr(data, "stratified_fraction", never)
    again = Workspace(tiny_model, pet_root, tmp_path / "cache", threads=1)
    for spec in specs:
        assert again.calibration_samples(spec) == picked[spec]
        assert again.variant_key(spec) == first.variant_key(spec)
    other = VariantSpec.int8(0.5, seed=43)  # never picked: picked now, not read
    with pytest.raises(AssertionError, match="picked again"):
        again.calibration_samples(other)

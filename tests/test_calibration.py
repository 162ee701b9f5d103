"""Shared calibration (petq.calibration): one export, each image calibrated once, and the
same .tflite bytes as converting every variant on its own."""

from __future__ import annotations

import pytest

from petq.calibration import SharedStatic, SharedUnavailable, pieces, shares, worth_sharing
from petq.errors import SpecError
from petq.types import VariantSpec
from petq.workspace import Workspace


def test_pieces_split_the_sets_into_their_venn_parts():
    sets = {"a": ["1", "2", "3", "4"], "b": ["3", "4", "5"], "c": ["4", "6"]}
    parts = pieces(sets)
    assert parts == {frozenset("a"): ["1", "2"], frozenset("ab"): ["3"],
                     frozenset("abc"): ["4"], frozenset("b"): ["5"], frozenset("c"): ["6"]}
    for owner, ids in sets.items():  # each set is exactly the union of its pieces
        assert sorted(i for piece, part in parts.items() if owner in piece for i in part) == ids


def test_sharing_pays_for_nested_sets_but_not_for_disjoint_ones():
    nested = {"small": [str(i) for i in range(10)], "large": [str(i) for i in range(100)]}
    assert worth_sharing(nested)
    disjoint = {"x": ["1", "2"], "y": ["3", "4"]}
    assert not worth_sharing(disjoint)


def test_only_static_8_bit_converter_recipes_share():
    assert shares(VariantSpec.int8(0.1))
    assert shares(VariantSpec.of("tflite-int8-pertensor", 0.1))
    assert not shares(VariantSpec.of("tflite-int16x8", 0.1))  # another quantizer path
    assert not shares(VariantSpec.of("aeq-wi8-ai8", 0.1))
    assert not shares(VariantSpec.fp32())
    assert not shares(VariantSpec.of("tflite-int8", 0.1, keep_float=2))
    with pytest.raises(ValueError):
        SharedStatic("m.keras", {VariantSpec.int8(0.1): ["a"],
                                 VariantSpec.of("tflite-int8-pertensor", 0.1): ["a"]}, list)


SHAPES = {  # on the fixture tree (40 trainval images, uneven classes):
    # fractions, seeds and a class: 60 images in 9 pieces of 33, calibrated piece by piece
    "mixed": [(0.25, 5, ()), (0.5, 5, ()), (0.5, 6, ()), (None, 1, (1,))],
    # two classes: no image in both, so each set is calibrated whole (from the one export)
    "disjoint": [(None, 1, (1,)), (None, 1, (2,))],
}


def _specs(recipe: str, shape: str) -> list[VariantSpec]:
    return [VariantSpec.of(recipe, fraction, classes, seed=seed)
            for fraction, seed, classes in SHAPES[shape]]


@pytest.mark.slow
@pytest.mark.parametrize(("recipe", "shape", "venn"), [
    ("tflite-int8", "mixed", True), ("tflite-int8-pertensor", "disjoint", False)])
def test_shared_conversions_are_byte_identical_to_plain_ones(recipe, shape, venn, tiny_model,
                                                             pet_root, shared_cache, tmp_path):
    specs = _specs(recipe, shape)
    ws = Workspace(tiny_model, pet_root, tmp_path / "cache", threads=1)
    ws.share_calibration([VariantSpec.native(), VariantSpec.fp32(), *specs])
    assert all(ws.shares_calibration(s) for s in specs)
    plain = Workspace(tiny_model, pet_root, shared_cache, threads=1)
    seen: dict[str, list[tuple[int, int]]] = {}
    for spec in specs:
        entry, built = ws.tflite(spec, lambda stage, done, total, name=spec.name:
                                 seen.setdefault(name, []).append((done, total))
                                 if stage == "calibrate" else None)
        assert built
        expected = plain.tflite(spec)[0].file("model.tflite").read_bytes()
        assert entry.file("model.tflite").read_bytes() == expected, spec.name
        assert entry.manifest["calibration_count"] == len(ws.calibration_samples(spec))
    shared = ws._shared._built[recipe]
    assert worth_sharing(shared.sets) is venn
    fed = sum(len(ids) for ids in shared._pieces.values())
    union = {i for ids in shared.sets.values() for i in ids}
    assert fed == (len(union) if venn else sum(len(ids) for ids in shared.sets.values()))
    for spec in specs:  # progress ends at the set's size, whatever was calibrated before
        assert seen[spec.name][-1] == (len(ws.calibration_samples(spec)),) * 2


@pytest.mark.slow
def test_a_converter_that_does_not_behave_falls_back_to_plain_conversion(
        tiny_model, pet_root, shared_cache, tmp_path, monkeypatch):
    specs = _specs("tflite-int8", "mixed")[:2]
    ws = Workspace(tiny_model, pet_root, tmp_path / "cache", threads=1)
    ws.share_calibration(specs)

    def broken(self, spec):  # as if a TensorFlow release renamed what this module uses
        raise AttributeError("'TFLiteKerasModelConverterV2' has no '_optimize_tflite_model'")

    monkeypatch.setattr(SharedStatic, "_exported", broken)
    with pytest.warns(UserWarning, match="shared calibration unavailable"):
        entry, built = ws.tflite(specs[0])
    assert built and not ws.shares_calibration(specs[0])  # the group is dropped
    plain = Workspace(tiny_model, pet_root, shared_cache, threads=1)
    expected = plain.tflite(specs[0])[0].file("model.tflite").read_bytes()
    assert entry.file("model.tflite").read_bytes() == expected


def test_a_spec_outside_the_group_is_refused(tiny_model):
    shared = SharedStatic(tiny_model, {VariantSpec.int8(0.1): ["a"], VariantSpec.int8(0.2): ["a"]},
                          list)
    with pytest.raises(SharedUnavailable, match="not in this group"):
        shared.convert(VariantSpec.int8(0.3))


def test_groups_need_two_variants_of_one_recipe_and_a_keras_source(workspace):
    workspace.share_calibration([VariantSpec.int8(0.1), VariantSpec.of("tflite-int8-floatio", 0.1),
                                 VariantSpec.fp32()])
    assert not workspace.shares_calibration(VariantSpec.int8(0.1))
    workspace.share_calibration([VariantSpec.int8(0.1), VariantSpec.int8(0.2)])
    assert workspace.shares_calibration(VariantSpec.int8(0.2))
    assert not workspace.shares_calibration(VariantSpec.int8(0.3))
    workspace.share_calibration([])  # a new run replaces the groups
    assert not workspace.shares_calibration(VariantSpec.int8(0.2))


@pytest.mark.slow
def test_a_bad_member_does_not_stop_its_group(tiny_model, pet_root, shared_cache, tmp_path):
    good = _specs("tflite-int8", "mixed")[:2]
    bad = VariantSpec.of("tflite-int8", classes=(99,))  # no such class
    ws = Workspace(tiny_model, pet_root, tmp_path / "cache", threads=1)
    ws.share_calibration([*good, bad])
    entry, built = ws.tflite(good[0])
    assert built and ws.shares_calibration(good[0])
    plain = Workspace(tiny_model, pet_root, shared_cache, threads=1)
    assert (entry.file("model.tflite").read_bytes()
            == plain.tflite(good[0])[0].file("model.tflite").read_bytes())
    with pytest.raises(SpecError, match="out of range"):
        ws.tflite(bad)

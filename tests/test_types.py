"""Variant specs: names, parsing, validation, task expansion; model contracts."""

from __future__ import annotations

import pytest

from petq.errors import ModelError, SpecError
from petq.types import (
    RECIPES,
    Calibration,
    ModelContract,
    VariantSpec,
    lab_tasks,
    load_contract,
    parse_tasks,
    save_contract,
)

ALL_KINDS = [
    VariantSpec.native(),
    VariantSpec.fp32(),
    VariantSpec.int8(0.08),
    VariantSpec.int8(0.3, seed=7),
    VariantSpec.imbint8(),
    VariantSpec.imbint8((3, 1)),
    *(VariantSpec.of(r, 0.08 if r.calibrates else None) for r in RECIPES.values()),
    *(VariantSpec.of(r, classes=(2, 4)) for r in RECIPES.values() if r.calibrates),
    *(VariantSpec.of(r, 0.3, seed=9) for r in RECIPES.values() if r.calibrates),
    VariantSpec.of("tflite-int8", 0.8, keep_float=3),
    VariantSpec.of("aeq-wi8-ai8", 1e-5),
]


@pytest.mark.parametrize("spec", ALL_KINDS, ids=lambda s: s.name)
def test_name_round_trips(spec):
    assert VariantSpec.from_name(spec.name) == spec
    assert VariantSpec.from_dict(spec.to_dict()) == spec
    assert hash(spec) == hash(VariantSpec.from_name(spec.name))


def test_lab_names():
    assert [s.name for s in lab_tasks()] == [
        "native", "tflite-fp32", "tflite-int8-0.01", "tflite-int8-0.08", "tflite-int8-0.3",
        "tflite-int8-0.8", "tflite-imbint8",
    ]
    assert VariantSpec.imbint8((3, 1)).name == "tflite-imbint8-c1+3"
    assert VariantSpec.int8(0.3, seed=7).name == "tflite-int8-0.3-s7"
    assert VariantSpec.int8(0.3).recipe.scheme == "wi8_ai8"
    assert VariantSpec.of("aeq-wi4-afp32").recipe.scheme == "wi4_afp32"
    assert VariantSpec.of("tflite-fp16").recipe.scheme == "wf16_afp32"
    assert VariantSpec.of("tflite-int8-pertensor", 0.08).name == "tflite-int8-0.08-pertensor"
    assert VariantSpec.of("tflite-int8", 0.8, keep_float=3).name == "tflite-int8-0.8-keep3"
    assert VariantSpec.of("aeq-wi8-ai16", classes=(5, 2)).name == "aeq-wi8-ai16-c2+5"


def test_names_are_unique_across_recipes():
    names = [s.name for s in ALL_KINDS]
    assert len(set(names)) == len(set(ALL_KINDS))


def test_every_recipe_says_what_it_is():
    for recipe in RECIPES.values():
        assert recipe.summary and recipe.summary.endswith(".")
        says = "needs calibration" in recipe.summary or "no calibration" not in recipe.summary
        assert says == recipe.calibrates or not recipe.quantized


def test_parse_tasks_expands_groups_without_duplicates():
    assert len(parse_tasks(["all"])) == 7
    assert [s.name for s in parse_tasks(["tflite-int8-all", "tflite-int8-0.08"])] == [
        "tflite-int8-0.01", "tflite-int8-0.08", "tflite-int8-0.3", "tflite-int8-0.8"]


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, None])
def test_fraction_outside_range_is_rejected(bad):
    with pytest.raises(SpecError, match="fraction"):
        VariantSpec("tflite-int8", Calibration(bad))


def test_invalid_specs():
    with pytest.raises(SpecError, match="at least one"):
        VariantSpec.imbint8(())
    with pytest.raises(SpecError, match="needs calibration"):
        VariantSpec.from_name("aeq-wi8-ai8")
    with pytest.raises(SpecError, match="takes no calibration"):
        VariantSpec.from_name("aeq-wi4-afp32-0.1")
    with pytest.raises(SpecError, match="static recipe"):
        VariantSpec.of("tflite-dynamic", keep_float=2)
    with pytest.raises(SpecError, match="unknown variant"):
        VariantSpec.from_name("tflite-int4")
    with pytest.raises(SpecError):
        VariantSpec.from_name("tflite-int8-2")
    with pytest.raises(SpecError, match="takes no"):
        VariantSpec("tflite-fp32", Calibration(0.1))


def test_contract_sidecar_round_trip_and_defaults(tmp_path):
    model = tmp_path / "m.keras"
    assert load_contract(model) == ModelContract()  # the lab's defaults
    contract = ModelContract(input_size=(96, 128), class_names=("a", "b"), synthetic=True)
    save_contract(model, contract)
    assert load_contract(model) == contract
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ModelError, match="m.json: malformed"):
        load_contract(model)


def test_recipe_prose_is_not_part_of_the_cache_key():
    recipe = RECIPES["tflite-int8"]
    assert "summary" not in recipe.to_dict()
    spec = VariantSpec.int8(0.08)
    assert VariantSpec.from_dict(spec.to_dict()).recipe.summary == recipe.summary

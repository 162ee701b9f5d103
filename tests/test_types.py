"""Variant specs: names, parsing, validation, task expansion; model contracts."""

from __future__ import annotations

import pytest

from petq.errors import ModelError, SpecError
from petq.types import (
    ModelContract,
    VariantKind,
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
    assert VariantKind.INT8.precision == "wi8_ai8"


def test_parse_tasks_expands_groups_without_duplicates():
    assert len(parse_tasks(["all"])) == 7
    assert [s.name for s in parse_tasks(["tflite-int8-all", "tflite-int8-0.08"])] == [
        "tflite-int8-0.01", "tflite-int8-0.08", "tflite-int8-0.3", "tflite-int8-0.8"]


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, None])
def test_fraction_outside_range_is_rejected(bad):
    with pytest.raises(SpecError, match="fraction"):
        VariantSpec(VariantKind.INT8, fraction=bad)


def test_invalid_specs():
    with pytest.raises(SpecError, match="at least one"):
        VariantSpec(VariantKind.IMBINT8)
    with pytest.raises(SpecError, match="unknown variant"):
        VariantSpec.from_name("tflite-int4")
    with pytest.raises(SpecError):
        VariantSpec.from_name("tflite-int8-2")
    with pytest.raises(SpecError, match="takes no"):
        VariantSpec(VariantKind.FP32, fraction=0.1)


def test_contract_sidecar_round_trip_and_defaults(tmp_path):
    model = tmp_path / "m.keras"
    assert load_contract(model) == ModelContract()  # the lab's defaults
    contract = ModelContract(input_size=(96, 128), class_names=("a", "b"), synthetic=True)
    save_contract(model, contract)
    assert load_contract(model) == contract
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ModelError, match="m.json: malformed"):
        load_contract(model)

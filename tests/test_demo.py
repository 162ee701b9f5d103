"""The shipped demo model and the embedded default (synthetic dataset)."""

from __future__ import annotations

import json

import pytest

from petq import demo
from petq.types import VariantSpec, load_contract

pytestmark = pytest.mark.skipif(not demo.DEMO_MODEL.exists(), reason="demo model not shipped")


def test_demo_model_is_small_and_documented():
    assert demo.DEMO_MODEL.stat().st_size <= 15 * 1024 * 1024
    contract = load_contract(demo.DEMO_MODEL)
    assert contract.synthetic
    assert contract.input_size == (224, 224)
    assert len(contract.class_names) == 37
    info = contract.info
    assert 0.80 <= info["test_accuracy"] <= 0.97
    assert info["command"].startswith("petq train")


@pytest.mark.slow
def test_demo_model_reproduces_its_recorded_accuracy(tmp_path, monkeypatch):
    """Fresh synthetic test split, real conversion: FP32 within 1 point of the record."""
    monkeypatch.setenv("PETQ_DATA", str(tmp_path / "data"))
    ws = demo.default_workspace(cache_root=tmp_path / "cache")
    assert ws.dataset.synthetic
    recorded = load_contract(demo.DEMO_MODEL).info
    assert ws.dataset.fingerprint == recorded["dataset_fingerprint"]
    result, _ = ws.evaluate(VariantSpec.fp32(), latency_runs=5)
    assert result.accuracy == pytest.approx(recorded["test_accuracy"], abs=0.01)
    assert json.loads(json.dumps(result.to_dict()))["synthetic"] is True


def test_the_mobilenetv2_demo_model_is_shipped_and_documented():
    """The lab's architecture beside the demo: within 15 MB, recorded accuracy and command."""
    path = demo.DEMO_MODEL.parent / "petq-mobilenetv2.keras"
    assert path.stat().st_size <= 15 * 1024 * 1024
    contract = load_contract(path)
    assert contract.synthetic and len(contract.class_names) == 37
    assert contract.info["backbone"] == "mobilenetv2"
    assert contract.info["test_accuracy"] >= 0.7
    assert "--backbone mobilenetv2" in contract.info["command"]

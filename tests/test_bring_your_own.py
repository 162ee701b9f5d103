"""Models and datasets a user brings, and every failure said plainly: an already-quantized
.tflite source, broken or unusual model files, a dataset without the lab's calibration
breed, skipped images, and hints only where the dataset can be the cause."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from petq.cli import main
from petq.errors import ModelError, SpecError
from petq.types import ModelContract, VariantSpec, save_contract


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("petq: error:")]


# ------------------------------------------------------------ model files


def test_random_bytes_keras_is_not_a_valid_archive(tmp_path):
    from petq.runtime import load_keras_model

    path = tmp_path / "random.keras"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelError) as caught:
        load_keras_model(path)
    assert str(caught.value) == (f"{path}: not a valid .keras archive (a .keras model is a "
                                 "zip file; this one is not)")


@pytest.mark.slow
def test_subclassed_model_error_is_whole_and_says_what_to_do(tmp_path):
    import keras

    from petq.runtime import load_keras_model

    class Net(keras.Model):  # not registered: Keras cannot find it when loading
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(4)

        def call(self, x):
            return self.dense(keras.ops.mean(x, axis=(1, 2)))

    model = Net()
    model(np.zeros((1, 8, 8, 3), "float32"))
    path = tmp_path / "subclassed.keras"
    model.save(path)
    with pytest.raises(ModelError) as caught:
        load_keras_model(path)
    message = str(caught.value)
    assert "Could not locate class 'Net'" in message
    assert "so that the decorator is run before trying to load them.)" in message  # whole
    assert "Full object config" not in message and "\n" not in message
    assert message.endswith("convert it to .tflite yourself and pass that")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["two-outputs", "detector"])
def test_not_a_single_input_classifier_lists_inputs_and_outputs(tmp_path, kind):
    import keras

    from petq.runtime import model_io

    if kind == "two-outputs":
        image = keras.Input((16, 16, 3), name="image")
        pooled = keras.layers.GlobalAveragePooling2D()(image)
        model = keras.Model(image, [keras.layers.Dense(4, name="breed")(pooled),
                                    keras.layers.Dense(2, name="species")(pooled)])
        expected = ["inputs: image (None, 16, 16, 3)",
                    "outputs: breed (None, 4), species (None, 2)"]
    else:  # a detector takes any image size: no fixed input
        image = keras.Input((None, None, 3), name="image")
        boxes = keras.layers.Conv2D(5, 1, name="boxes")(image)
        model = keras.Model(image, boxes)
        expected = ["inputs: image (None, None, None, 3)", "outputs: boxes (None, None, None, 5)"]
    path = tmp_path / f"{kind}.keras"
    model.save(path)
    with pytest.raises(ModelError) as caught:
        model_io(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: expected ")
    for part in expected:
        assert part in message, message


# ------------------------------------------------------------ a quantized .tflite source


@pytest.fixture(scope="module")
def quantized_sources(tiny_model, pet_root, tmp_path_factory) -> dict[str, Path]:
    """petq's own int8 and dynamic-range files of the tiny model, as a user would bring
    them: .tflite files with no sidecar."""
    from petq.workspace import Workspace

    ws = Workspace(tiny_model, pet_root, tmp_path_factory.mktemp("qcache"), threads=1)
    out = tmp_path_factory.mktemp("brought")
    files = {}
    for name in ("tflite-int8-0.5", "tflite-dynamic", "tflite-fp16"):
        files[name] = out / f"{name}.tflite"
        shutil.copy(ws.tflite(VariantSpec.from_name(name))[0].file("model.tflite"), files[name])
    files["accuracy-int8"] = ws.evaluate(VariantSpec.from_name("tflite-int8-0.5"),
                                         latency_runs=3)[0].accuracy
    return files


@pytest.mark.slow
@pytest.mark.parametrize(("name", "scheme", "mode", "io"), [
    ("tflite-int8-0.5", "wi8_ai8", "static", "int8"),
    ("tflite-dynamic", "wi8_afp32", "dynamic", "float"),
    ("tflite-fp16", "wf16_afp32", "float16", "float"),
])
def test_a_quantized_source_is_labelled_by_its_real_scheme(quantized_sources, pet_root,
                                                           tmp_path, name, scheme, mode, io):
    from petq.workspace import Workspace

    ws = Workspace(quantized_sources[name], pet_root, tmp_path / "cache", threads=1)
    own = ws.own_spec(VariantSpec.from_name("source"))
    assert (own.recipe.scheme, own.recipe.mode.value, own.recipe.io) == (scheme, mode, io)
    assert own.name == "source" and VariantSpec.from_dict(own.to_dict()) == own


@pytest.mark.slow
def test_a_quantized_source_runs_as_it_is_and_refuses_what_needs_a_float_model(
        quantized_sources, tiny_model, pet_root, tmp_path):
    from petq.workspace import Workspace

    path = quantized_sources["tflite-int8-0.5"]
    cache = tmp_path / "cache"
    ws = Workspace(path, pet_root, cache, threads=1)
    refused = {
        "tflite-fp32": "is already quantized (wi8_ai8, int8 input and output): there is no "
                       "float32 model",
        "aeq-wi8-afp32": "AI Edge Quantizer quantizes a float .tflite",
        "aeq-wi8-ai8-0.5": "AI Edge Quantizer quantizes a float .tflite",
        "tflite-int8-0.3": "the TFLite converter takes a Keras model",
        "tflite-dynamic": "the TFLite converter takes a Keras model",
        "native": "it has no native variant",
    }
    for name, reason in refused.items():
        with pytest.raises(SpecError) as caught:
            ws.evaluate(VariantSpec.from_name(name), latency_runs=3)
        assert reason in str(caught.value) and "`source`" in str(caught.value), name
    assert not list(ws.cache.entries("decoded"))  # each refused before decoding anything
    result, _ = ws.evaluate(VariantSpec.from_name("source"), latency_runs=3)
    assert result.variant == "source" and result.scheme == "wi8_ai8"
    assert result.accuracy == quantized_sources["accuracy-int8"]  # the same file, as it is
    assert ws.results()[0].scheme == "wi8_ai8"  # listed again from the cache
    # a Keras model's own variant is native, not source
    keras_ws = Workspace(tiny_model, pet_root, cache, threads=1)
    with pytest.raises(SpecError, match="is a Keras model.*`native`"):
        keras_ws.check(VariantSpec.from_name("source"))


@pytest.mark.slow
def test_cli_on_a_quantized_source_fails_native_alone_before_decoding(quantized_sources,
                                                                      pet_root, tmp_path,
                                                                      capsys):
    results = tmp_path / "results"
    code = main(["experiments", "--model-path", str(quantized_sources["tflite-dynamic"]),
                 "--dataset-root", str(pet_root), "--cache-dir", str(tmp_path / "cache"),
                 "--threads", "1", "--results-path", str(results),
                 "--tasks", "native", "source"])
    captured = capsys.readouterr()
    assert code == 1
    errors = _errors(captured.err)
    assert len(errors) == 1 and "native:" in errors[0] and "no native variant" in errors[0]
    assert captured.err.index("no native variant") < captured.err.index("decoding images")
    assert "petq: 1 task(s) failed: native" in captured.err
    metrics = (results / "source-metrics.md").read_text()
    assert "* Scheme: wi8_afp32 (source)" in metrics
    assert json.loads((results / "config.json").read_text())["failed_tasks"] == ["native"]


# ------------------------------------------------------------ a dataset without breed 5


@pytest.mark.slow
def test_a_missing_calibration_breed_fails_its_task_alone(pet_root, tmp_path, capsys):
    """The lab's set (`--tasks all`) on a model of six breeds and a dataset holding four:
    tflite-imbint8 (breed 5) fails with one line naming the breed; the six other tasks
    run and write their files; the exit status says one task failed."""
    import keras

    names = ("Abyssinian", "american_bulldog", "Bengal", "beagle", "Birman", "Bombay")
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(6)])
    path = tmp_path / "six.keras"
    model.save(path)
    save_contract(path, ModelContract(input_size=(32, 32), class_names=names))
    results = tmp_path / "results"
    code = main(["experiments", "--model-path", str(path), "--dataset-root", str(pet_root),
                 "--cache-dir", str(tmp_path / "cache"), "--threads", "1",
                 "--results-path", str(results), "--tasks", "all"])
    captured = capsys.readouterr()
    assert code == 1
    assert _errors(captured.err) == [
        "petq: error: tflite-imbint8: breed 5 (Bombay) has no trainval images here; choose "
        "breeds with --calibration-classes"]
    assert captured.err.rstrip().endswith("petq: 1 task(s) failed: tflite-imbint8")
    for name in ("native", "tflite-fp32", "tflite-int8-0.01", "tflite-int8-0.08",
                 "tflite-int8-0.3", "tflite-int8-0.8"):
        assert (results / f"{name}-metrics.md").exists(), name
    assert not (results / "tflite-imbint8-metrics.md").exists()
    assert (results / "summary.md").exists()


# ------------------------------------------------------------ hints and skipped images


def test_no_dataset_hint_on_a_missing_model(tmp_path, capsys):
    assert main(["experiments", "--model-path", str(tmp_path / "missing.keras"),
                 "--results-path", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"petq: error: {tmp_path / 'missing.keras'}: model file not found"


@pytest.mark.slow
def test_dataset_hint_where_the_dataset_can_be_the_cause(tmp_path, capsys):
    import keras

    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3)])
    path = tmp_path / "three.keras"  # no sidecar: 3 classes against the demo's 37 breeds
    model.save(path)
    assert main(["experiments", "--model-path", str(path), "--cache-dir",
                 str(tmp_path / "cache"), "--results-path", str(tmp_path / "r")]) == 1
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1
    assert "outputs 3 classes" in errors[0]
    assert errors[0].endswith("(the synthetic demo dataset was used: --dataset-root was not "
                              "given)")


@pytest.mark.slow
def test_skipped_images_one_warning_and_counts_in_every_report(tiny_model, tmp_path):
    import subprocess
    import sys

    from conftest import TEST_PER_CLASS, write_pet_tree

    root = write_pet_tree(tmp_path / "pets")
    (root / "images" / "beagle_12.jpg").unlink()  # missing
    truncated = root / "images" / "Bengal_13.jpg"
    truncated.write_bytes(truncated.read_bytes()[:300])  # truncated
    results = tmp_path / "results"
    out = subprocess.run(
        [sys.executable, "-m", "petq", "experiments", "--model-path", str(tiny_model),
         "--dataset-root", str(root), "--cache-dir", str(tmp_path / "cache"), "--threads", "1",
         "--results-path", str(results), "--tasks", "tflite-fp32"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
        timeout=300)
    assert out.returncode == 0, out.stderr
    listed = 4 * TEST_PER_CLASS
    counts = (f"{listed} listed, {listed - 2} evaluated, 2 skipped (1 missing, 1 truncated or "
              "corrupt)")
    warnings = [line for line in out.stderr.splitlines() if "warning" in line.lower()]
    assert warnings == [f"petq: warning: {root}: images skipped: test: {counts} (see "
                        "summary.md)"], out.stderr
    assert "UserWarning" not in out.stderr and "warnings.warn" not in out.stderr
    assert counts in (results / "tflite-fp32-metrics.md").read_text()
    assert counts in (results / "summary.md").read_text()
    config = json.loads((results / "config.json").read_text())
    assert config["test_images"] == {"listed": listed, "evaluated": listed - 2, "skipped": 2,
                                     "skipped_by_reason": {"missing": 1,
                                                           "truncated or corrupt": 1}}

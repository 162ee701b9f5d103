"""Training: the lab's architecture, and a one-epoch run that writes a usable model + sidecar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petq.errors import SpecError
from petq.types import load_contract

keras = pytest.importorskip("keras")

from petq.train import build_model, retrain_command, train  # noqa: E402

CLASSES = ("Abyssinian", "beagle", "Bengal")  # class ids 1..3: cat, dog, cat


def write_tiny_dataset(root: Path, trainval_per_class: int = 6, test_per_class: int = 2) -> Path:
    """An Oxford-layout dataset of small JPEGs, one dominant colour per class."""
    rng = np.random.default_rng(66)
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], np.float64)
    n = 0
    for split, per_class in (("trainval", trainval_per_class), ("test", test_per_class)):
        lines = []
        for label, name in enumerate(CLASSES):
            species = 1 if name[0].isupper() else 2
            for _ in range(per_class):
                n += 1
                pixels = colours[label] + rng.normal(0, 25, (40, 48, 3))
                image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
                image.save(root / "images" / f"{name}_{n}.jpg", quality=90)
                lines.append(f"{name}_{n} {label + 1} {species} {label + 1}")
        (root / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_build_model_has_the_lab_head():
    model = build_model(5, alpha=0.35, input_size=(32, 32), seed=1)
    assert model.input_shape == (None, 32, 32, 3)
    assert model.output_shape == (None, 5)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [1024, 512, 128, 5]
    assert [layer.activation.__name__ for layer in dense] == ["relu", "relu", "relu", "linear"]
    assert dense[-1].name == "out_layer"
    dropouts = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert dropouts == [0.3, 0.3, 0.3]
    assert any(isinstance(layer, keras.layers.GlobalAveragePooling2D) for layer in model.layers)
    assert all(layer.trainable for layer in model.layers)  # from scratch: nothing frozen
    # No preprocess_input layer: the first layer after the input is the backbone's conv.
    assert isinstance(model.layers[1], keras.layers.Conv2D)


def test_build_model_is_seeded_and_sets_bn_momentum():
    a = build_model(3, alpha=0.35, input_size=(32, 32), seed=7, bn_momentum=0.9)
    b = build_model(3, alpha=0.35, input_size=(32, 32), seed=7)
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    momenta = {
        layer.momentum for layer in a.layers if isinstance(layer, keras.layers.BatchNormalization)
    }
    assert momenta == {0.9}


def test_build_model_rejects_unknown_weights():
    with pytest.raises(SpecError):
        build_model(3, alpha=0.35, input_size=(32, 32), weights="places365")


@pytest.mark.slow  # model training
def test_train_writes_loadable_model_and_sidecar(tmp_path, capsys):
    root = write_tiny_dataset(tmp_path / "pets")
    out = tmp_path / "models" / "tiny.keras"
    seen = []
    info = train(
        root,
        out,
        alpha=0.35,
        epochs=1,
        batch_size=4,
        seed=3,
        learning_rate=1e-3,
        input_size=(32, 32),
        run_eagerly=True,  # tracing the training graph costs about a minute here
        progress=lambda epoch, epochs, logs: seen.append((epoch, epochs, sorted(logs))),
    )
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert not list(out.parent.glob(".*partial*"))
    assert seen == [(1, 1, ["accuracy", "loss", "val_accuracy", "val_loss"])]
    assert "epoch 1/1" in capsys.readouterr().out

    contract = load_contract(out)
    assert contract.class_names == CLASSES
    assert contract.input_size == (32, 32)
    assert contract.synthetic is False
    assert contract.info == info
    assert info["n_train"] + info["n_val"] == 18 and info["n_test"] == 6
    assert info["n_val"] == 4  # ceil(0.2 * 18), stratified
    assert (info["alpha"], info["epochs"], info["batch_size"], info["seed"]) == (0.35, 1, 4, 3)
    assert info["weights"] is None and info["learning_rate"] == 1e-3
    assert len(info["dataset_fingerprint"]) == 16
    assert 0.0 <= info["val_accuracy"] <= 1.0 and 0.0 <= info["test_accuracy"] <= 1.0
    assert info["command"].startswith("petq train --dataset-root ")
    assert "--input-size 32x32" in info["command"] and "--seed 3" in info["command"]

    model = keras.models.load_model(out)
    assert model.output_shape == (None, 3)
    assert model.get_layer("out_layer").units == 3
    assert getattr(model, "optimizer", None) is None  # saved without optimizer state


def test_train_rejects_a_non_keras_path(tmp_path):
    with pytest.raises(SpecError):
        train(tmp_path, tmp_path / "model.h5", epochs=1)


def test_retrain_command_round_trips_the_configuration():
    command = retrain_command(
        "data/my pets",
        "models/m.keras",
        alpha=0.5,
        epochs=4,
        batch_size=16,
        val_fraction=0.25,
        seed=2,
        weights="imagenet",
        learning_rate=3e-4,
        input_size=(224, 224),
        bn_momentum=None,
    )
    assert command == (
        "petq train --dataset-root 'data/my pets' --model-path models/m.keras --alpha 0.5 "
        "--epochs 4 --batch-size 16 --learning-rate 0.0003 --val-fraction 0.25 --seed 2 "
        "--weights imagenet --backbone mobilenetv2 --pretrain-epochs 0"
    )


def test_convnet_backbone_keeps_the_input_contract_and_the_head():
    model = build_model(4, input_size=(224, 224), backbone="convnet", working_size=48, seed=1)
    assert model.input_shape == (None, 224, 224, 3)
    assert model.get_layer("working_resize").output.shape[1:3] == (48, 48)
    dense = [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert dense == [1024, 512, 128, 4]
    with pytest.raises(SpecError, match="backbone"):
        build_model(4, backbone="resnet")
    command = retrain_command(
        "d", "m.keras", alpha=0.35, epochs=2, batch_size=8, val_fraction=0.2, seed=0,
        weights=None, learning_rate=1e-3, input_size=(224, 224), bn_momentum=0.9,
        backbone="convnet", working_size=48,
    )
    assert command.endswith("--backbone convnet --pretrain-epochs 0 --working-size 48")


def test_mobilenetv2_working_size_resizes_inside_the_model():
    model = build_model(4, alpha=0.35, input_size=(224, 224), working_size=48, seed=1)
    assert model.input_shape == (None, 224, 224, 3)
    assert model.get_layer("working_resize").output.shape[1:3] == (48, 48)
    assert isinstance(model.layers[2], keras.layers.Conv2D)  # flat: resize, then the backbone
    assert model.name == "petq_mobilenetv2_0.35_48_224"
    command = retrain_command(
        "d", "m.keras", alpha=0.35, epochs=2, batch_size=8, val_fraction=0.2, seed=0,
        weights=None, learning_rate=1e-3, input_size=(224, 224), bn_momentum=0.9,
        working_size=48,
    )
    assert command.endswith("--bn-momentum 0.9 --backbone mobilenetv2 --pretrain-epochs 0 "
                            "--working-size 48")


@pytest.mark.slow  # model training
def test_two_stage_training_freezes_the_backbone_for_the_head(tmp_path):
    root = write_tiny_dataset(tmp_path / "pets")
    out = tmp_path / "two-stage.keras"
    info = train(
        root, out, epochs=1, batch_size=4, seed=3, learning_rate=1e-3, input_size=(32, 32),
        backbone="convnet", working_size=32, pretrain_epochs=1, run_eagerly=True,
    )
    assert info["pretrain_epochs"] == 1 and info["backbone"] == "convnet"
    assert "--pretrain-epochs 1" in info["command"]
    model = keras.models.load_model(out)
    assert model.get_layer("out_layer").units == 3
    with pytest.raises(ValueError):
        model.get_layer("probe_out")  # the probe is not part of the saved model

"""Training: the lab's architecture, and a one-epoch run that writes a usable model + sidecar."""

from __future__ import annotations

import json
import shlex
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petq.errors import SpecError
from petq.types import load_contract

keras = pytest.importorskip("keras")

from petq.cli import build_parser  # noqa: E402
from petq.train import (  # noqa: E402
    DEMO_TRAINING,
    MOBILENETV2_TRAINING,
    TrainConfig,
    build_model,
    train,
)

MODELS = Path(__file__).resolve().parent.parent / "models"

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


@pytest.fixture(scope="module")
def lab_model():
    """The lab's MobileNetV2 head on 3 classes, seeded, BatchNorm momentum 0.9: built once
    (a few seconds) for the tests that only read it."""
    return build_model(3, alpha=0.35, input_size=(32, 32), seed=7, bn_momentum=0.9)


def test_build_model_has_the_lab_head(lab_model):
    model = lab_model
    assert model.input_shape == (None, 32, 32, 3)
    assert model.output_shape == (None, 3)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [1024, 512, 128, 3]
    assert [layer.activation.__name__ for layer in dense] == ["relu", "relu", "relu", "linear"]
    assert dense[-1].name == "out_layer"
    dropouts = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert dropouts == [0.3, 0.3, 0.3]
    assert any(isinstance(layer, keras.layers.GlobalAveragePooling2D) for layer in model.layers)
    assert all(layer.trainable for layer in model.layers)  # from scratch: nothing frozen
    # No preprocess_input layer: the first layer after the input is the backbone's conv.
    assert isinstance(model.layers[1], keras.layers.Conv2D)


def test_build_model_is_seeded_and_sets_bn_momentum(lab_model):
    a = lab_model
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
    config = TrainConfig(backbone="mobilenetv2", alpha=0.35, working_size=None, pretrain_epochs=0,
                         epochs=1, batch_size=4, seed=3, learning_rate=1e-3, input_size=(32, 32))
    info = train(
        root,
        out,
        config,
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
    assert _parse(info["command"]) == config == TrainConfig.from_dict(info)

    model = keras.models.load_model(out)
    assert model.output_shape == (None, 3)
    assert model.get_layer("out_layer").units == 3
    assert getattr(model, "optimizer", None) is None  # saved without optimizer state


def test_train_rejects_a_non_keras_path(tmp_path):
    with pytest.raises(SpecError):
        train(tmp_path, tmp_path / "model.h5")


def _parse(command: str) -> TrainConfig:
    """The configuration a recorded `petq train ...` command means, read by petq's parser."""
    program, *argv = shlex.split(command)
    assert program == "petq"
    return TrainConfig.from_options(build_parser().parse_args(argv))


@pytest.mark.parametrize("sidecar", ["petq-demo.json", "petq-mobilenetv2.json"])
def test_shipped_sidecars_commands_mean_the_configuration_they_record(sidecar):
    info = json.loads((MODELS / sidecar).read_text("utf-8"))["info"]
    recorded = TrainConfig.from_dict(info)  # what the run used, field by field
    assert _parse(info["command"]) == recorded
    # ... and the command this code writes for it means the same again
    assert _parse(recorded.command_line("d", "m.keras")) == recorded
    assert recorded == {"petq-demo.json": DEMO_TRAINING,
                        "petq-mobilenetv2.json": MOBILENETV2_TRAINING}[sidecar]


def test_petq_train_defaults_are_the_demo_and_options_start_from_the_backbones_preset():
    assert _parse("petq train") == DEMO_TRAINING == TrainConfig()
    assert _parse("petq train --backbone mobilenetv2") == MOBILENETV2_TRAINING
    assert _parse("petq train --backbone mobilenetv2 --epochs 3") == replace(
        MOBILENETV2_TRAINING, epochs=3)
    assert _parse("petq train --working-size none --bn-momentum none --weights imagenet "
                  "--backbone mobilenetv2 --input-size 96x128") == replace(
        MOBILENETV2_TRAINING, working_size=None, bn_momentum=None, weights="imagenet",
        input_size=(96, 128))  # fmt: skip
    # the convnet always resizes: none means its own working size
    assert _parse("petq train --working-size none").working_size == 64


def test_recorded_command_spells_out_every_field_and_round_trips():
    config = TrainConfig(backbone="mobilenetv2", alpha=0.5, working_size=None, input_size=(96, 96),
                         weights="imagenet", bn_momentum=None, pretrain_epochs=0, epochs=4,
                         batch_size=16, learning_rate=3e-4, min_crop=0.85, val_fraction=0.25,
                         seed=2)  # fmt: skip
    command = config.command_line("data/my pets", "models/m.keras")
    assert command == (
        "petq train --dataset-root 'data/my pets' --model-path models/m.keras "
        "--backbone mobilenetv2 --alpha 0.5 --working-size none --input-size 96x96 "
        "--weights imagenet --bn-momentum none --pretrain-epochs 0 --epochs 4 --batch-size 16 "
        "--learning-rate 0.0003 --min-crop 0.85 --val-fraction 0.25 --seed 2"
    )
    for f in fields(TrainConfig):
        assert f"--{f.name.replace('_', '-')} " in command
    assert _parse(command) == config
    odd = replace(config, learning_rate=1 / 3, alpha=0.123456789)  # beyond 6 digits
    assert _parse(odd.command_line("d", "m.keras")) == odd


@pytest.mark.parametrize(("change", "message"), [
    ({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch size"),
    ({"pretrain_epochs": -1}, "pretrain"), ({"working_size": 0}, "working size"),
    ({"min_crop": 0.0}, "min crop"), ({"min_crop": 1.5}, "min crop"),
    ({"val_fraction": 1.0}, "validation fraction"), ({"backbone": "resnet"}, "backbone"),
    ({"weights": "places365"}, "weights"),
])  # fmt: skip
def test_config_rejects_bad_values(change, message):
    with pytest.raises(SpecError, match=message):
        replace(DEMO_TRAINING, **change)


def test_petq_train_reports_a_bad_option_in_one_line(capsys):
    from petq.cli import main

    assert main(["train", "--epochs", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "petq: error: epochs and batch size must be >= 1, got 0 and 32"
    with pytest.raises(SystemExit):  # argparse: usage, then the option and the reason
        main(["train", "--input-size", "22"])
    assert "--input-size: must look like 224x224" in capsys.readouterr().err


def test_convnet_backbone_keeps_the_input_contract_and_the_head():
    model = build_model(4, input_size=(224, 224), backbone="convnet", working_size=48, seed=1)
    assert model.input_shape == (None, 224, 224, 3)
    assert model.get_layer("working_resize").output.shape[1:3] == (48, 48)
    dense = [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert dense == [1024, 512, 128, 4]
    with pytest.raises(SpecError, match="backbone"):
        build_model(4, backbone="resnet")


def test_mobilenetv2_working_size_resizes_inside_the_model():
    model = build_model(4, alpha=0.35, input_size=(224, 224), working_size=48, seed=1)
    assert model.input_shape == (None, 224, 224, 3)
    assert model.get_layer("working_resize").output.shape[1:3] == (48, 48)
    assert isinstance(model.layers[2], keras.layers.Conv2D)  # flat: resize, then the backbone
    assert model.name == "petq_mobilenetv2_0.35_48_224"


@pytest.mark.slow  # model training
def test_two_stage_training_freezes_the_backbone_for_the_head(tmp_path):
    root = write_tiny_dataset(tmp_path / "pets")
    out = tmp_path / "two-stage.keras"
    config = TrainConfig(backbone="convnet", working_size=32, pretrain_epochs=1, epochs=1,
                         batch_size=4, seed=3, learning_rate=1e-3, input_size=(32, 32))
    info = train(root, out, config, run_eagerly=True)
    assert info["pretrain_epochs"] == 1 and info["backbone"] == "convnet"
    assert "--pretrain-epochs 1" in info["command"]
    model = keras.models.load_model(out)
    assert model.get_layer("out_layer").units == 3
    with pytest.raises(ValueError):
        model.get_layer("probe_out")  # the probe is not part of the saved model

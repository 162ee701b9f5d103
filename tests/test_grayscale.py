"""A grayscale (H, W, 1) model, as a user brings one (e.g. a 64x64x1 emotion classifier):
its images are decoded to one channel by the one decoding function, and it runs in
experiments, classify and every kind of recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petq.data import decode, model_pixels, open_image, preprocess
from petq.errors import ModelError
from petq.types import ModelContract, VariantSpec

SIZE = 24


@pytest.fixture(scope="module")
def gray_model(pet_root, tmp_path_factory) -> Path:
    """A tiny CNN on (24, 24, 1) inputs, no sidecar: what the model says is the contract."""
    import keras

    from petq.data import PetDataset

    keras.utils.set_random_seed(3)
    dataset = PetDataset.load(pet_root)
    contract = ModelContract(input_size=(SIZE, SIZE), channels=1, preprocessing="unit")
    x = preprocess(np.stack([model_pixels(open_image(dataset.image_path(s.image_id)), contract)
                             for s in dataset.trainval]), contract)
    y = np.array([s.label for s in dataset.trainval])
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 1)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(len(dataset.class_names)),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.02),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=5, batch_size=8, verbose=0)
    path = tmp_path_factory.mktemp("gray") / "gray.keras"
    model.save(path)
    return path


def test_decode_to_one_channel_is_pillows_luma():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8))
    pixels = decode(image, (12, 16), channels=1)
    assert pixels.shape == (12, 16, 1) and pixels.dtype == np.uint8
    expected = np.asarray(image.convert("L").resize((16, 12)))
    assert np.array_equal(pixels[..., 0], expected)
    contract = ModelContract(input_size=(12, 16), channels=1)  # torch: mean of the means
    x = preprocess(pixels, contract)
    assert x.shape == (1, 12, 16, 1)
    mean, std = np.mean((0.485, 0.456, 0.406)), np.mean((0.229, 0.224, 0.225))
    np.testing.assert_allclose(x[0, ..., 0], (expected / 255 - mean) / std, rtol=1e-5)


def test_a_grayscale_contract_refuses_caffe_and_wrong_means():
    with pytest.raises(ModelError, match="no colour order"):
        ModelContract(channels=1, preprocessing="caffe")
    with pytest.raises(ModelError, match="channels"):
        ModelContract(channels=2)
    assert ModelContract(channels=1, mean=(0.5,), std=(0.25,)).channel_std == (0.25,)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["native", "tflite-fp32", "tflite-int8-0.3", "tflite-dynamic",
                                  "aeq-wi8-afp32", "aeq-wi8-ai8-0.3"])
def test_every_kind_of_recipe_runs_a_grayscale_model(gray_model, pet_root, tmp_path_factory,
                                                     name):
    from petq.workspace import Workspace

    cache = tmp_path_factory.getbasetemp() / "gray-cache"
    ws = Workspace(gray_model, pet_root, cache, threads=1, preprocessing="unit")
    assert ws.contract.channels == 1 and ws.contract.input_size == (SIZE, SIZE)
    assert ws.store("test").pixels.shape[1:] == (SIZE, SIZE, 1)
    result, _ = ws.evaluate(VariantSpec.from_name(name))
    assert result.n_images == len(ws.dataset.test)
    assert 0.0 <= result.accuracy <= 1.0
    if name != "native":  # the converted file takes one channel, in its own type
        from petq.runtime import LiteRTRunner

        runner = ws.runner(VariantSpec.from_name(name))
        assert runner.input_shape[1:] == (SIZE, SIZE, 1)
        # the scores of the accuracy pass (a per-channel table for integer inputs) are
        # those of preprocess + predict, image by image
        store = ws.store("test")
        pixels, _ = store.pixels_of(ws.dataset.test_samples())
        from petq.evaluate import predict_all

        fast = predict_all(runner, pixels[:6], ws.contract)
        slow = np.stack([LiteRTRunner.predict(runner, preprocess(p, ws.contract))
                         for p in pixels[:6]])
        np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_classify_and_experiments_on_a_grayscale_model(gray_model, pet_root, tmp_path, capsys):
    from petq.cli import main

    common = ["--model-path", str(gray_model), "--dataset-root", str(pet_root),
              "--cache-dir", str(tmp_path / "cache"), "--threads", "1",
              "--preprocessing", "unit"]
    photo = pet_root / "images" / "Bengal_3.jpg"  # a CMYK JPEG
    assert main(["classify", str(photo), "--json", *common]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    answers = [line for line in lines if "top5" in line]
    assert len(answers) == 1 and len(answers[0]["top5"]) == 4
    code = main(["experiments", *common, "--results-path", str(tmp_path / "results"),
                 "--tasks", "tflite-fp32", "tflite-int8-0.3"])
    assert code == 0
    assert (tmp_path / "results" / "tflite-int8-0.3-metrics.md").exists()
    config = json.loads((tmp_path / "results" / "config.json").read_text())
    assert config["contract"]["channels"] == 1


def test_a_sidecar_without_channels_on_a_grayscale_model_says_what_to_write(
        gray_model, pet_root, tmp_path):
    import shutil

    from petq.types import save_contract
    from petq.workspace import Workspace

    model = tmp_path / "gray.keras"
    shutil.copy(gray_model, model)
    save_contract(model, ModelContract(input_size=(SIZE, SIZE), preprocessing="unit"))
    ws = Workspace(model, pet_root, tmp_path / "cache", threads=1)
    with pytest.raises(ModelError, match='takes 1-channel images.*"channels": 1'):
        ws.model_info()

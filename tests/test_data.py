"""Dataset layout, splits, image decoding and preprocessing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import CLASSES, TEST_PER_CLASS, TRAINVAL_PER_CLASS
from petq.data import (
    PetDataset,
    decode,
    open_image,
    parse_list_file,
    prepare_image,
    preprocess,
    stratified_fraction,
)
from petq.errors import DatasetError, ImageError, SpecError
from petq.types import ModelContract


def test_loads_layout_with_comments_and_quirk_files(pet_root):
    ds = PetDataset.load(pet_root)
    assert ds.class_names == tuple(name for name, _, _ in CLASSES)
    assert len(ds.trainval) == len(CLASSES) * TRAINVAL_PER_CLASS
    assert len(ds.test) == len(CLASSES) * TEST_PER_CLASS
    assert {s.label for s in ds.test} == set(range(len(CLASSES)))
    assert not ds.synthetic
    for image_id in ("Abyssinian_2", "american_bulldog_11", "Bengal_3"):  # PNG, RGBA, CMYK
        image = open_image(ds.image_path(image_id))
        assert image.mode == "RGB"


def test_list_file_errors_name_file_and_line(tmp_path):
    path = tmp_path / "trainval.txt"
    path.write_text("# header\nAbyssinian_1 1 1 1\nAbyssinian_2 1 one 1\n")
    with pytest.raises(DatasetError, match=r"trainval.txt:3: non-integer"):
        parse_list_file(path)
    path.write_text("Abyssinian_1 1 1\n")
    with pytest.raises(DatasetError, match=r"trainval.txt:1: expected"):
        parse_list_file(path)
    path.write_text("Abyssinian_1 0 1 1\n")
    with pytest.raises(DatasetError, match="out of range"):
        parse_list_file(path)


def test_missing_folder_and_list_file(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        PetDataset.load(tmp_path / "nope")
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="trainval.txt: list file not found"):
        PetDataset.load(tmp_path)


def test_class_id_with_two_names_is_rejected(tmp_path):
    (tmp_path / "images").mkdir()
    ann = tmp_path / "annotations"
    ann.mkdir()
    (ann / "trainval.txt").write_text("Abyssinian_1 1 1 1\nbeagle_1 1 2 1\n")
    (ann / "test.txt").write_text("Abyssinian_2 1 1 1\n")
    with pytest.raises(DatasetError, match="both"):
        PetDataset.load(tmp_path)


def test_stratified_fraction_is_seeded_stratified_and_from_trainval(pet_root):
    ds = PetDataset.load(pet_root)
    pick = ds.calibration_samples(0.5, seed=3)
    assert pick == ds.calibration_samples(0.5, seed=3)
    assert pick != ds.calibration_samples(0.5, seed=4)
    counts = np.bincount([s.label for s in pick], minlength=len(CLASSES))
    assert (counts == TRAINVAL_PER_CLASS // 2).all()
    assert set(pick) <= set(ds.trainval)
    assert not set(pick) & set(ds.test)
    # fewer picks than classes still works (unstratified fallback)
    assert len(stratified_fraction(ds.trainval, 0.05, 1)) == 2
    with pytest.raises(SpecError):
        stratified_fraction(ds.trainval, 0.0, 1)
    with pytest.raises(SpecError):
        ds.test_samples(1.5)


def test_class_index_by_name_or_index(pet_root):
    ds = PetDataset.load(pet_root)
    assert ds.class_index("bengal") == 2
    assert ds.class_index("3") == 3
    with pytest.raises(SpecError, match="unknown class name 'sphynx'"):
        ds.class_index("sphynx")
    with pytest.raises(SpecError, match="out of range"):
        ds.class_index(9)


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_open_image_handles_modes_and_exif_rotation():
    gray = Image.new("L", (30, 20), 128)
    assert open_image(_encoded(gray, "PNG")).size == (30, 20)
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    assert open_image(_encoded(rgba, "PNG")).getpixel((5, 5)) == (255, 255, 255)
    webp = open_image(_encoded(Image.new("RGB", (12, 8), (0, 0, 255)), "WEBP"))
    assert webp.size == (12, 8)
    rotated = Image.new("RGB", (40, 20), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    upright = open_image(_encoded(rotated, "JPEG", exif=exif.tobytes()))
    assert upright.size == (20, 40)


def test_bad_images_raise_clear_errors(tmp_path):
    with pytest.raises(ImageError, match="not an image"):
        open_image(b"hello, I am text", name="notes.jpg")
    good = _encoded(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG")
    with pytest.raises(ImageError, match="truncated.jpg: cannot decode"):
        open_image(good[: len(good) // 2], name="truncated.jpg")
    with pytest.raises(ImageError, match="file not found"):
        open_image(tmp_path / "missing.jpg")
    bomb = _encoded(Image.new("1", (20000, 10000)), "PNG")  # 200 MP, tiny file
    with pytest.raises(ImageError, match="too large"):
        open_image(bomb, name="bomb.png")


def test_preprocess_matches_lab_formula():
    contract = ModelContract(input_size=(4, 6))
    pixels = decode(Image.new("RGB", (10, 10), (255, 128, 0)), contract.input_size)
    assert pixels.shape == (4, 6, 3) and pixels.dtype == np.uint8
    x = preprocess(pixels, contract)
    assert x.shape == (1, 4, 6, 3) and x.dtype == np.float32
    expected = (np.array([255, 128, 0]) / 255.0 - np.array(contract.mean)) / np.array(contract.std)
    np.testing.assert_allclose(x[0, 0, 0], expected, rtol=1e-5)
    batch = preprocess(np.stack([pixels, pixels]), contract)
    assert batch.shape == (2, 4, 6, 3)


def test_preprocess_is_the_plain_float32_formula_bit_for_bit():
    contract = ModelContract(input_size=(5, 7))
    pixels = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    mean, std = np.asarray(contract.mean, np.float32), np.asarray(contract.std, np.float32)
    plain = (pixels.astype(np.float32) / 255.0 - mean) / std
    np.testing.assert_array_equal(preprocess(pixels, contract), plain)
    flipped = pixels[:, ::-1]  # a strided view in, the same numbers out
    np.testing.assert_array_equal(preprocess(flipped, contract), plain[:, ::-1])
    assert preprocess(pixels[:0], contract).shape == (0, 5, 7, 3)
    np.testing.assert_array_equal(pixels, np.asarray(flipped)[:, ::-1])  # input untouched


def test_prepare_image_from_bytes():
    contract = ModelContract(input_size=(8, 8))
    x = prepare_image(_encoded(Image.new("RGB", (30, 50), (1, 2, 3)), "PNG"), contract)
    assert x.shape == (1, 8, 8, 3)

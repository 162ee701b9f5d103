"""Dataset layout, splits, image decoding and preprocessing."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import CLASSES, TEST_PER_CLASS, TRAINVAL_PER_CLASS
from petq.data import (
    UPLOAD_TYPES,
    PetDataset,
    channel_order,
    decode,
    open_image,
    parse_list_file,
    prepare_image,
    preprocess,
    stratified_fraction,
)
from petq.errors import DatasetError, ImageError, SpecError
from petq.evaluate import apply_lut
from petq.types import PREPROCESSING, ModelContract


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
    with pytest.raises(DatasetError, match="CLASS-ID counts breeds from 1"):
        parse_list_file(path)


def test_tfds_style_zero_based_ids_are_named_with_the_oxford_rule(tmp_path):
    """TensorFlow Datasets writes 0-based ids (`image0_0 0 0 0`): the error says the
    Oxford rule and the file and line that broke it, in one line."""
    (tmp_path / "images").mkdir()
    ann = tmp_path / "annotations"
    ann.mkdir()
    (ann / "trainval.txt").write_text("# Image CLASS-ID SPECIES BREED-ID\nimage0_0 0 0 0\n")
    (ann / "test.txt").write_text("image1_0 1 1 1\n")
    with pytest.raises(DatasetError) as caught:
        PetDataset.load(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{ann / 'trainval.txt'}:2: 'image0_0 0 0 0' breaks ")
    for rule in ("CLASS-ID counts breeds from 1", "SPECIES is 1 (cat) or 2 (dog)",
                 "0-based"):
        assert rule in message
    assert "\n" not in message
    (ann / "trainval.txt").write_text("Abyssinian_1 1 3 1\n")  # species 3: not 0-based
    with pytest.raises(DatasetError, match=r"trainval.txt:1: .*SPECIES is 1") as caught:
        PetDataset.load(tmp_path)
    assert "0-based" not in str(caught.value)


def test_a_class_id_that_disagrees_with_its_file_name_is_warned_once_and_named(pet_root,
                                                                                tmp_path):
    """`american_bulldog_3 99 ...` while every other american_bulldog line says 2: one
    warning naming the line, and the image labelled by its name's breed (CLASS-ID 2)."""
    import shutil
    import warnings

    from petq.errors import PetqWarning

    root = tmp_path / "oxford"
    shutil.copytree(pet_root, root)
    trainval = root / "annotations" / "trainval.txt"
    lines = trainval.read_text().splitlines()
    at = lines.index("american_bulldog_3 2 2 1")
    lines[at] = "american_bulldog_3 99 2 1"
    lines[at + 1] = lines[at + 1].replace(" 2 2 1", " 98 2 1")  # a second such line
    trainval.write_text("\n".join(lines) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = PetDataset.load(root)
    found = [w for w in caught if issubclass(w.category, PetqWarning)]
    assert len(found) == 1
    text = str(found[0].message)
    assert text.startswith(f"{trainval}:{at + 1}: CLASS-ID 99 on american_bulldog_3 disagrees")
    assert "labelled as CLASS-ID 2" in text and "1 more such line" in text
    assert ds.class_names == PetDataset.load(pet_root).class_names  # no class 98 or 99
    labels = {s.image_id: s.label for s in ds.trainval}
    assert labels["american_bulldog_3"] == labels["american_bulldog_4"] == 1


def test_image_counts_by_reason():
    from petq.data import ImageCounts, Sample, skip_reason

    samples = [Sample(f"a_{i}", 0) for i in range(5)]
    bad = {"a_1": "/x/a_1.jpg: file not found", "a_2": "/x/a_2.jpg: cannot decode image (x)",
           "a_3": "/x/a_3.jpg: file not found", "elsewhere": "/x/b.jpg: not an image Pillow "
           "can read"}
    counts = ImageCounts.of(samples, bad)
    assert (counts.listed, counts.evaluated, counts.skipped_count) == (5, 2, 3)
    assert counts.text() == "5 listed, 2 evaluated, 3 skipped (2 missing, 1 truncated or corrupt)"
    assert counts.to_dict()["skipped_by_reason"] == {"missing": 2, "truncated or corrupt": 1}
    assert skip_reason("/x: image too large (over 89,478,485 pixels), refusing") == "too large"


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
    encoded = _encoded(rotated, "JPEG", exif=exif.tobytes())
    upright = open_image(encoded)
    assert upright.size == (20, 40)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(encoded))).convert("RGB")
    assert upright.tobytes() == expected.tobytes()


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


# ---------------------------------------------------------------- preprocessing modes


def _pixels(shape=(2, 5, 7, 3)) -> np.ndarray:
    return np.random.default_rng(66).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("mode", ["tf", "caffe", "torch"])
def test_preprocess_modes_match_keras_preprocess_input(mode):
    from keras.applications.imagenet_utils import preprocess_input

    pixels = _pixels()
    contract = ModelContract(input_size=(5, 7), preprocessing=mode)  # ImageNet mean/std
    expected = preprocess_input(pixels.astype(np.float32), mode=mode)
    np.testing.assert_allclose(preprocess(pixels, contract), expected, rtol=1e-6, atol=1e-5)
    # one image in, a batch of one out; a strided view reads the same numbers
    np.testing.assert_allclose(preprocess(pixels[0], contract), expected[:1], rtol=1e-6,
                               atol=1e-5)
    flipped = preprocess(pixels[:, :, ::-1], contract)
    np.testing.assert_allclose(flipped, expected[:, :, ::-1], rtol=1e-6, atol=1e-5)


def test_caffe_is_bgr_without_scaling():
    contract = ModelContract(input_size=(1, 1), preprocessing="caffe")
    x = preprocess(np.array([[[255, 128, 0]]], np.uint8), contract)
    np.testing.assert_allclose(x[0, 0, 0], [0 - 103.939, 128 - 116.779, 255 - 123.68],
                               rtol=1e-6)


def test_unit_and_raw_modes_by_hand():
    pixels = _pixels()
    unit = preprocess(pixels, ModelContract(input_size=(5, 7), preprocessing="unit"))
    np.testing.assert_array_equal(unit, pixels.astype(np.float32) / np.float32(255))
    assert unit.min() >= 0 and unit.max() <= 1
    raw = preprocess(pixels, ModelContract(input_size=(5, 7), preprocessing="raw"))
    assert raw.dtype == np.float32
    np.testing.assert_array_equal(raw, pixels.astype(np.float32))


def test_every_declared_mode_is_implemented_and_leaves_the_input_alone():
    pixels = _pixels()
    before = pixels.copy()
    outputs = {mode: preprocess(pixels, ModelContract(input_size=(5, 7), preprocessing=mode))
               for mode in PREPROCESSING}
    np.testing.assert_array_equal(pixels, before)
    assert all(x.shape == pixels.shape and x.dtype == np.float32 for x in outputs.values())
    distinct = {x.tobytes() for x in outputs.values()}
    assert len(distinct) == len(PREPROCESSING)


@pytest.mark.parametrize("mode", list(PREPROCESSING))
def test_channel_order_makes_a_per_channel_table_exact(mode):
    """evaluate.input_lut's table trick: a (3, 256) table built from `preprocess` on
    [v, v, v] gives preprocess exactly once the pixels are read in `channel_order`."""
    contract = ModelContract(input_size=(5, 7), preprocessing=mode)
    values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)[None]
    scale, zero = 0.05, -3  # an int8 input tensor's quantization

    def quantize(x):
        return np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)

    table = np.ascontiguousarray(quantize(preprocess(values, contract))[0, 0].T)
    pixels = _pixels()
    exact = quantize(preprocess(pixels, contract))
    ordered = np.ascontiguousarray(pixels[..., list(channel_order(contract))])
    np.testing.assert_array_equal(apply_lut(ordered, table), exact)
    if mode == "caffe":  # the plain table, in RGB order, is wrong for caffe
        assert channel_order(contract) == (2, 1, 0)
        assert not np.array_equal(apply_lut(pixels, table), exact)
    else:
        assert channel_order(contract) == (0, 1, 2)


# ---------------------------------------------------------------- 16-bit and other formats


def _png16(values: np.ndarray) -> bytes:
    """A 16-bit PNG (gray, or RGB for HxWx3) written by hand: Pillow cannot write 16-bit RGB."""
    height, width = values.shape[:2]
    colour_type = 2 if values.ndim == 3 else 0
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def _gradient16() -> tuple[np.ndarray, np.ndarray]:
    """A 16-bit gradient over all 256 high bytes (low bytes varied) and its 8-bit match."""
    eight = np.arange(256, dtype=np.uint16)
    sixteen = (eight << 8) | (eight * 7 % 256)
    return np.tile(sixteen, (4, 1)), np.tile(eight.astype(np.uint8), (4, 1))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_gray_decodes_to_the_matching_8_bit_gradient(fmt):
    sixteen, eight = _gradient16()
    image = Image.fromarray(sixteen)  # mode I;16
    data = _encoded(image, fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    decoded = np.asarray(open_image(data))
    assert decoded.shape == (4, 256, 3)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[..., channel], eight)


def test_16_bit_rgb_png_and_16_bit_gray_agree():
    sixteen, eight = _gradient16()
    assert Image.open(io.BytesIO(_png16(sixteen))).mode == "I;16"
    gray = np.asarray(open_image(_png16(sixteen)))
    colour = np.asarray(open_image(_png16(np.stack([sixteen, sixteen, 0xFFFF - sixteen], -1))))
    np.testing.assert_array_equal(gray[..., 0], eight)
    np.testing.assert_array_equal(colour[..., 0], gray[..., 0])  # Pillow's own high byte
    np.testing.assert_array_equal(colour[..., 2], 255 - eight)


def test_32_bit_int_and_float_tiffs_scale_to_8_bits(tmp_path):
    sixteen, eight = _gradient16()
    as_int = Image.fromarray(sixteen.astype(np.int32))  # mode I, 16-bit values
    decoded = np.asarray(open_image(_encoded(as_int, "TIFF")))
    np.testing.assert_array_equal(decoded[..., 1], eight)
    unit = Image.fromarray((eight / 255.0).astype(np.float32))  # mode F in [0, 1]
    path = tmp_path / "unit.tif"
    unit.save(path)
    np.testing.assert_array_equal(np.asarray(open_image(path))[..., 0], eight)
    wide = Image.fromarray((eight * 4.0).astype(np.float32))  # mode F, max 1020: by max
    np.testing.assert_array_equal(np.asarray(open_image(_encoded(wide, "TIFF")))[..., 2], eight)


# lossless formats decode exactly, lossy ones within a few levels on flat colour
FORMATS = {"jpg": ("JPEG", 8), "jpeg": ("JPEG", 8), "jfif": ("JPEG", 8), "png": ("PNG", 0),
           "gif": ("GIF", 0), "bmp": ("BMP", 0), "webp": ("WEBP", 8), "tif": ("TIFF", 0),
           "tiff": ("TIFF", 0), "avif": ("AVIF", 8), "heic": ("HEIF", 8), "heif": ("HEIF", 8)}
QUADRANTS = {(16, 16): (255, 0, 0), (16, 48): (0, 0, 255), (48, 16): (0, 255, 0),
             (48, 48): (255, 255, 0)}


def _quadrants() -> Image.Image:
    pixels = np.zeros((64, 64, 3), np.uint8)
    for (y, x), colour in QUADRANTS.items():
        pixels[y - 16:y + 16, x - 16:x + 16] = colour
    return Image.fromarray(pixels)


@pytest.mark.parametrize("ext", UPLOAD_TYPES)
def test_every_upload_type_round_trips_to_the_right_colours(ext, tmp_path):
    fmt, tolerance = FORMATS[ext]
    path = tmp_path / f"photo.{ext}"
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.from_pillow(_quadrants()).save(path, quality=90)
    else:
        _quadrants().save(path, format=fmt)
    decoded = np.asarray(open_image(path)).astype(int)
    for (y, x), colour in QUADRANTS.items():
        assert np.abs(decoded[y, x] - colour).max() <= tolerance, (ext, (y, x), decoded[y, x])


def test_upload_types_name_the_common_photo_formats():
    assert {"jpg", "jpeg", "png", "gif", "bmp", "webp", "tif", "tiff"} <= set(UPLOAD_TYPES)
    assert {"heic", "heif"} <= set(UPLOAD_TYPES)  # pillow-heif is a dependency
    assert len(set(UPLOAD_TYPES)) == len(UPLOAD_TYPES)


def test_heic_without_pillow_heif_is_a_clear_image_error(tmp_path):
    import pillow_heif

    path = tmp_path / "phone.heic"
    pillow_heif.from_pillow(_quadrants()).save(path, quality=90)
    script = (
        "import sys; sys.modules['pillow_heif'] = None\n"  # as if it were not installed
        "from petq.data import UPLOAD_TYPES, open_image\n"
        "from petq.errors import ImageError\n"
        "assert 'heic' not in UPLOAD_TYPES, UPLOAD_TYPES\n"
        "try:\n"
        f"    open_image({str(path)!r})\n"
        "except ImageError as exc:\n"
        "    print(exc)\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=root, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "phone.heic: a HEIC/HEIF image; reading it needs pillow-heif" in done.stdout


# ---------------------------------------------------------------- datasets with some breeds


def _keep_classes(pet_root: Path, root: Path, class_ids: set[int]) -> Path:
    """The fixture tree with list files rewritten to name only `class_ids` (images shared)."""
    (root / "annotations").mkdir(parents=True)
    (root / "images").symlink_to(pet_root / "images", target_is_directory=True)
    for name in ("list.txt", "trainval.txt", "test.txt"):
        lines = (pet_root / "annotations" / name).read_text().splitlines()
        kept = [line for line in lines
                if line.startswith("#") or int(line.split()[1]) in class_ids]
        (root / "annotations" / name).write_text("\n".join(kept) + "\n")
    return root


def test_dataset_listing_only_some_breeds_loads_with_placeholders(pet_root, tmp_path):
    ds = PetDataset.load(_keep_classes(pet_root, tmp_path / "two", {1, 3}))
    assert ds.class_names == ("Abyssinian", "class_2", "Bengal")  # CLASS-ID 4: not listed
    assert ds.num_classes == 3
    assert ds.present_classes == (0, 2)
    assert {s.label for s in ds.trainval} == {s.label for s in ds.test} == {0, 2}
    assert len(ds.test) == 2 * TEST_PER_CLASS
    assert ds.class_index("bengal") == 2
    pick = ds.calibration_samples(0.5, seed=1)
    assert np.bincount([s.label for s in pick]).tolist() == [5, 0, 5]
    full = PetDataset.load(pet_root)
    assert full.present_classes == (0, 1, 2, 3)
    assert ds.fingerprint != full.fingerprint


def test_partial_dataset_still_rejects_a_class_id_with_two_names(pet_root, tmp_path):
    root = _keep_classes(pet_root, tmp_path / "two", {1, 3})
    test = root / "annotations" / "test.txt"
    test.write_text(test.read_text() + "beagle_99 3 2 2\n")
    with pytest.raises(DatasetError, match="class id 3 is both 'Bengal' and 'beagle'"):
        PetDataset.load(root)


def test_fingerprint_follows_the_images_not_only_the_lists(tmp_path):
    import os

    from conftest import write_pet_tree
    from petq.data import PetDataset

    root = write_pet_tree(tmp_path / "pets")
    before = PetDataset.load(root).images_stamp
    assert PetDataset.load(root).images_stamp == before
    lists = PetDataset.load(root).fingerprint
    image = root / "images" / "beagle_3.jpg"
    data = image.read_bytes()
    image.write_bytes(data + b"\0")  # other pixels, same lists
    os.utime(image, ns=(1, 1))
    assert PetDataset.load(root).images_stamp != before
    assert PetDataset.load(root).fingerprint == lists  # the split's definition is unchanged

"""`petq classify`: every variant's top-5 for your own photos, as text or JSON lines."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from conftest import CLASSES
from petq.classify import (
    Answer,
    Failure,
    add_parser,
    classify_files,
    format_json,
    format_text,
    run,
    top_k,
)
from petq.data import decode, open_image, preprocess
from petq.types import VariantSpec

SPECS = [VariantSpec.native(), VariantSpec.fp32()]


@pytest.fixture()
def photos(pet_root, tmp_path):
    """A test photo, a text file named .jpg, a missing file, and a 16-bit gray PNG with
    its 8-bit twin (the same picture, every value v as v * 257)."""
    photo = pet_root / "images" / "Bengal_12.jpg"  # a test image of Bengal
    text = tmp_path / "notes.jpg"
    text.write_text("hello, I am text")
    gray = np.asarray(Image.open(pet_root / "images" / "beagle_13.jpg").convert("L"))
    eight, sixteen = tmp_path / "gray8.png", tmp_path / "gray16.png"
    Image.fromarray(gray).save(eight)
    Image.fromarray(gray.astype(np.uint16) * 257).save(sixteen)
    assert Image.open(sixteen).mode == "I;16"
    return {"photo": photo, "text": text, "missing": tmp_path / "missing.png",
            "gray8": eight, "gray16": sixteen}


def test_every_variant_answers_every_readable_file_in_order(workspace, photos):
    files = [photos["photo"], photos["text"], photos["gray16"], photos["missing"]]
    items = list(classify_files(workspace, SPECS, files))
    assert [(type(i).__name__, i.file, getattr(i, "variant", None)) for i in items] == [
        ("Answer", str(photos["photo"]), "native"),
        ("Answer", str(photos["photo"]), "tflite-fp32"),
        ("Failure", str(photos["text"]), None),
        ("Answer", str(photos["gray16"]), "native"),
        ("Answer", str(photos["gray16"]), "tflite-fp32"),
        ("Failure", str(photos["missing"]), None),
    ]
    assert items[2].error == "not an image Pillow can read"
    assert items[5].error == "file not found"
    names = {name for name, _, _ in CLASSES}
    for answer in (items[0], items[1], items[3], items[4]):
        assert len(answer.top5) == len(CLASSES)  # 4 classes: all of them
        breeds = [b for b, _ in answer.top5]
        probabilities = [p for _, p in answer.top5]
        assert set(breeds) == names
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    assert items[0].top5[0][0] == items[1].top5[0][0] == "Bengal"
    # the answer is the model's scores on the one preprocessing, through softmax
    contract = workspace.contract
    x = preprocess(decode(open_image(photos["photo"]), contract.input_size), contract)
    scores = workspace.runner(VariantSpec.native()).predict(x)
    assert items[0].top5 == top_k(scores, workspace.class_names)


def test_16_bit_png_answers_as_its_8_bit_twin_not_as_white(workspace, photos, tmp_path):
    white = tmp_path / "white.png"
    Image.new("RGB", (40, 40), (255, 255, 255)).save(white)
    files = [photos["gray16"], photos["gray8"], white]
    by_file = {a.file: a.top5 for a in classify_files(workspace, SPECS[1:], files)}
    assert by_file[str(photos["gray16"])] == by_file[str(photos["gray8"])]
    assert by_file[str(photos["gray16"])] != by_file[str(white)]


def test_unreadable_files_alone_convert_nothing(tiny_model, pet_root, photos, tmp_path):
    from petq.workspace import Workspace

    ws = Workspace(tiny_model, pet_root, tmp_path / "cache", threads=1)
    items = list(classify_files(ws, SPECS, [photos["text"], photos["missing"]]))
    assert all(isinstance(i, Failure) for i in items) and len(items) == 2
    assert list(ws.cache.entries("variants")) == []


def test_top_k_keeps_k_and_class_order_on_ties():
    names = ["a", "b", "c", "d", "e", "f", "g"]
    top = top_k(np.array([0.0, 2.0, 0.0, 1.0, 0.0, 0.0, 0.0]), names)
    assert [b for b, _ in top] == ["b", "d", "a", "c", "e"]
    assert top_k(np.array([0.1, 0.9]), ["x"]) == (("1", 0.9), ("x", 0.1))  # probabilities in


def test_formats():
    answer = Answer("cat.jpg", "tflite-fp32", (("Bengal", 0.912), ("Birman", 0.05)))
    failure = Failure("notes.txt", "not an image Pillow can read")
    assert format_text(answer) == "cat.jpg  tflite-fp32  Bengal 91.2%, Birman 5.0%"
    assert format_text(failure) == "notes.txt: not an image Pillow can read"
    assert json.loads(format_json(answer)) == {
        "file": "cat.jpg", "variant": "tflite-fp32",
        "top5": [["Bengal", 0.912], ["Birman", 0.05]]}
    assert json.loads(format_json(failure)) == {"file": "notes.txt",
                                                "error": "not an image Pillow can read"}
    origin = {"model": "m.keras", "model_trained_on_synthetic_data": True}
    assert json.loads(format_json(answer, origin))["model_trained_on_synthetic_data"] is True
    assert "\n" not in format_json(answer)
    assert json.loads(format_json(Answer("chat é.jpg", "native", ())))["file"] == "chat é.jpg"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="petq")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.fixture()
def common(tiny_model, pet_root, shared_cache):
    return ["--model-path", str(tiny_model), "--dataset-root", str(pet_root),
            "--cache-dir", str(shared_cache), "--threads", "1"]


def test_cli_json_lines_and_exit_status(common, photos, capsys):
    args = _parse(["classify", str(photos["photo"]), str(photos["text"]), "--json",
                   "--tasks", "native", "tflite-fp32", *common])
    assert args.func is run
    assert run(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["file"], d.get("variant"), "error" in d) for d in lines] == [
        (str(photos["photo"]), "native", False), (str(photos["photo"]), "tflite-fp32", False),
        (str(photos["text"]), None, True)]
    assert lines[0]["top5"][0][0] == "Bengal"
    # every line says which model answered and whether it was trained on synthetic pets
    for line in lines:
        assert line["model"] == common[1]
        assert line["model_trained_on_synthetic_data"] is False  # the fixture's sidecar


def test_cli_json_says_the_demo_model_was_trained_on_synthetic_data(tmp_path, capsys):
    from conftest import write_pet_tree

    photo = write_pet_tree(tmp_path / "pets") / "images" / "Bengal_1.jpg"
    # native: the demo model itself; converting it (the default task) adds seconds and
    # nothing to this test (the default is tested on the tiny model)
    args = _parse(["classify", str(photo), "--json", "--tasks", "native",
                   "--cache-dir", str(tmp_path / "cache")])
    assert run(args) == 0
    captured = capsys.readouterr()
    line = json.loads(captured.out.splitlines()[0])
    assert line["model_trained_on_synthetic_data"] is True
    assert line["model"].endswith("petq-demo.keras")
    assert "synthetic pets" in captured.err


def test_cli_text_and_only_unreadable_files(common, photos, capsys):
    assert _parse(["classify", "x.jpg", *common]).tasks is None  # tflite-fp32, or source
    assert run(_parse(["classify", str(photos["gray16"]), str(photos["text"]), *common])) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{photos['gray16']}  tflite-fp32  ")
    assert f"petq: {photos['text']}: not an image Pillow can read" in captured.err
    assert run(_parse(["classify", str(photos["text"]), str(photos["missing"]), *common])) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "file not found" in captured.err


def test_heic_photo_is_classified(workspace, photos, tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    heic = tmp_path / "phone.heic"
    pillow_heif.from_pillow(Image.open(photos["photo"]).convert("RGB")).save(heic, quality=95)
    assert heic.read_bytes()[4:12] == b"ftypheic"
    (answer,) = classify_files(workspace, SPECS[1:], [heic])
    assert isinstance(answer, Answer) and answer.top5[0][0] == "Bengal"

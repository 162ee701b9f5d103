"""Tiny fixtures built in code: an Oxford-layout tree and a small Keras model, each built
once per session.

A test that waits for something (a process, a file, a job) uses the one bounded wait,
`from waiting import wait_until` (benchmarks/waiting.py, on pytest's pythonpath), not a
loop of its own around a deadline.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CLASSES = [("Abyssinian", 1, 1), ("american_bulldog", 2, 1), ("Bengal", 1, 2), ("beagle", 2, 2)]
COLOURS = [(200, 60, 40), (40, 160, 60), (50, 70, 200), (220, 200, 60)]
TRAINVAL_PER_CLASS = 10
TEST_PER_CLASS = 5
INPUT_SIZE = 32
ROOT = Path(__file__).resolve().parent.parent  # the repository: dashboard.py, pages/


def write_pet_tree(root: Path, seed: int = 66) -> Path:
    """Write an Oxford-IIIT-Pet-layout tree: images + annotations with comment lines.

    Each class has its own dominant colour plus noise, so a tiny CNN learns it.
    Quirks of the real dataset: a PNG and an RGBA PNG under .jpg names, a CMYK JPEG.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    for class_id, (name, species, breed) in enumerate(CLASSES, start=1):
        for n in range(1, TRAINVAL_PER_CLASS + TEST_PER_CLASS + 1):
            image_id = f"{name}_{n}"
            base = np.array(COLOURS[class_id - 1], dtype=np.float64)
            size = (int(rng.integers(40, 80)), int(rng.integers(40, 80)))
            pixels = base + rng.normal(0, 25, (size[1], size[0], 3))
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            path = root / "images" / f"{image_id}.jpg"
            if (class_id, n) == (1, 2):
                image.save(path, format="PNG")
            elif (class_id, n) == (2, TRAINVAL_PER_CLASS + 1):
                rgba = image.convert("RGBA")
                rgba.putalpha(200)
                rgba.save(path, format="PNG")
            elif (class_id, n) == (3, 3):
                image.convert("CMYK").save(path, format="JPEG")
            else:
                image.save(path, format="JPEG", quality=90)
            split = "trainval" if n <= TRAINVAL_PER_CLASS else "test"
            lines[split].append(f"{image_id} {class_id} {species} {breed}")
    header = "#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n"
    (root / "annotations" / "list.txt").write_text(
        header + "\n".join(lines["trainval"] + lines["test"]) + "\n"
    )
    (root / "annotations" / "trainval.txt").write_text("\n".join(lines["trainval"]) + "\n")
    test_lines = "# a comment\n" + "\n".join(lines["test"]) + "\n"
    (root / "annotations" / "test.txt").write_text(test_lines)
    return root


def train_tiny_model(dataset_root: Path, out: Path) -> Path:
    """A small CNN trained for a few seconds on the fixture tree, with its sidecar."""
    import keras

    from petq.data import PetDataset, decode, open_image, preprocess
    from petq.types import ModelContract, save_contract

    keras.utils.set_random_seed(66)
    dataset = PetDataset.load(dataset_root)
    contract = ModelContract(input_size=(INPUT_SIZE, INPUT_SIZE), class_names=dataset.class_names)
    x = preprocess(np.stack([
        decode(open_image(dataset.image_path(s.image_id)), contract.input_size)
        for s in dataset.trainval
    ]), contract)
    y = np.array([s.label for s in dataset.trainval])
    model = keras.Sequential([
        keras.Input((INPUT_SIZE, INPUT_SIZE, 3)),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(len(dataset.class_names), name="out_layer"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=30, batch_size=8, verbose=0)
    model.save(out)
    save_contract(out, contract)
    return out


@pytest.fixture(scope="session")
def pet_root(tmp_path_factory) -> Path:
    return write_pet_tree(tmp_path_factory.mktemp("pets") / "oxford")


@pytest.fixture(scope="session")
def tiny_model(pet_root, tmp_path_factory, request) -> Path:
    """The trained tiny model, copied into this session's temp folder. Its training is
    seeded, so it is kept between runs in pytest's cache folder (.pytest_cache), under a
    key of the code that trains it (this file, petq/data.py, petq/types.py) and the Keras
    and TensorFlow versions (a model of another key is dropped). With the cache plugin off
    (`-p no:cacheprovider`), it is trained every session."""
    models = tmp_path_factory.mktemp("models")
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return train_tiny_model(pet_root, models / "tiny.keras")
    from importlib.metadata import version

    import petq.data
    import petq.types

    code = b"".join(Path(m.__file__).read_bytes() for m in (petq.data, petq.types))
    stamp = Path(__file__).read_bytes() + code + \
        f"{version('keras')} {version('tensorflow')}".encode()
    kept = Path(cache.mkdir("petq-tiny-model")) / hashlib.sha256(stamp).hexdigest()[:16]
    if not (kept / "tiny.json").exists():  # the sidecar, written last
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=kept.parent))
        train_tiny_model(pet_root, partial / "tiny.keras")
        try:
            os.replace(partial, kept)
        except OSError:  # another session kept one first
            shutil.rmtree(partial, ignore_errors=True)
        for old in kept.parent.iterdir():
            if old != kept and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
    for name in ("tiny.keras", "tiny.json"):
        shutil.copy2(kept / name, models / name)
    return models / "tiny.keras"


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """A cache shared by tests that only read what earlier conversions built."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture()
def workspace(tiny_model, pet_root, shared_cache):
    from petq.workspace import Workspace

    return Workspace(tiny_model, pet_root, shared_cache, threads=1)


def point_dashboard_at(monkeypatch, model, dataset, cache, threads: int = 1) -> None:
    """The PETQ_* variables the dashboard's settings start from: this model, dataset, cache
    and thread count, the model's own preprocessing and the whole test split."""
    monkeypatch.setenv("PETQ_MODEL", str(model))
    monkeypatch.setenv("PETQ_DATASET_ROOT", str(dataset))
    monkeypatch.setenv("PETQ_CACHE", str(cache))
    monkeypatch.setenv("PETQ_THREADS", str(threads))
    monkeypatch.delenv("PETQ_TEST_FRACTION", raising=False)
    monkeypatch.delenv("PETQ_PREPROCESSING", raising=False)


def dashboard_app(page: str = "pages/home.py"):
    """dashboard.py in Streamlit's AppTest, as `streamlit run dashboard.py` serves it: run
    once, then switched to `page` (a path under pages/). Tests that call it use the
    `dashboard_navigation` fixture."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120).run()
    if page != "pages/home.py":
        at.switch_page(page).run()
    return at


def open_page(workspace, monkeypatch, page: str):
    """`page` of the dashboard on `workspace`'s model, dataset, cache and threads (through
    the PETQ_* variables), checked to have run without an exception."""
    point_dashboard_at(monkeypatch, workspace.model_path, workspace.dataset.root,
                       workspace.cache.root, workspace.threads)
    at = dashboard_app(page)
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture(scope="session")
def streamlit_components_scanned_once():
    """Streamlit's component scan, once per test session instead of once per AppTest.

    Every new AppTest scans the metadata of every installed distribution for Streamlit
    components (about 200 distributions here: 1-2 s per AppTest on a loaded 2-core
    machine, the largest share of a dashboard test). The installed packages do not change
    during a test run; `streamlit run` scans once per server too."""
    from streamlit.components.v2 import manifest_scanner

    scan = functools.cache(manifest_scanner.scan_component_manifests)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(manifest_scanner, "scan_component_manifests", scan)
        yield


@pytest.fixture()
def dashboard_navigation(monkeypatch, streamlit_components_scanned_once):
    """AppTest runs of dashboard.py as the server runs them once st.navigation has run.

    A `pages/` folder beside the main script turns Streamlit's legacy page discovery on
    until the first st.navigation call turns it off for the process. AppTest resets that
    flag before every run, so without this each rerun would execute a page file bare,
    without dashboard.py's frame."""
    from streamlit.runtime.pages_manager import PagesManager

    init = PagesManager.__init__

    def init_with_navigation(self, *args, **kwargs):
        init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    init_with_navigation.__wrapped__ = init  # Streamlit's own, for a test of the first run
    monkeypatch.setattr(PagesManager, "__init__", init_with_navigation)

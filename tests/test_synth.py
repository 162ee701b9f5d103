"""petq.synth: a deterministic synthetic dataset in the exact Oxford-IIIT Pet layout."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from petq import synth

TV, TE = 3, 2  # images per class in trainval / test: small and fast


def _rows(path: Path) -> list[list[str]]:
    return [ln.split() for ln in path.read_text("utf-8").splitlines() if not ln.startswith("#")]


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return synth.generate(
        tmp_path_factory.mktemp("synth") / "pets", trainval_per_class=TV, test_per_class=TE,
        workers=1,
    )  # fmt: skip


def test_class_names_are_the_real_37_in_class_id_order():
    names = synth.CLASS_NAMES
    assert len(names) == 37 == len(set(names))
    assert names[0] == "Abyssinian" and names[5] == "Bengal" and names[-1] == "yorkshire_terrier"
    assert list(names) == sorted(names, key=str.lower)
    assert sum(n[0].isupper() for n in names) == 12
    assert [b.name for b in synth.BREEDS] == list(names)


def test_layout_and_list_files(dataset: Path):
    ann = dataset / "annotations"
    lines = (ann / "list.txt").read_text("utf-8").splitlines()
    assert lines[:6] == list(synth.LIST_HEADER)
    assert all(ln.startswith("#") for ln in lines[:6])
    assert lines[0] == "#Image CLASS-ID SPECIES BREED ID"
    assert not any(ln.startswith("#") for ln in lines[6:])
    for split in ("trainval.txt", "test.txt"):
        assert not any(ln.startswith("#") for ln in (ann / split).read_text("utf-8").splitlines())

    rows = _rows(ann / "list.txt")
    assert len(rows) == 37 * (TV + TE)
    breed_ids: dict[int, set[int]] = {1: set(), 2: set()}
    for image, class_id, species, breed_id in rows:
        name, number = image.rsplit("_", 1)
        assert number.isdigit() and int(number) >= 1
        assert synth.CLASS_NAMES.index(name) == int(class_id) - 1
        assert int(species) == (1 if name[0].isupper() else 2)  # capital first letter: cat
        breed_ids[int(species)].add(int(breed_id))
        assert (dataset / "images" / f"{image}.jpg").is_file()
    assert {int(r[1]) for r in rows} == set(range(1, 38))
    assert breed_ids == {1: set(range(1, 13)), 2: set(range(1, 26))}
    # breed ids count within species in class order, as in the real list.txt
    first = {r[0].rsplit("_", 1)[0]: r for r in rows}
    assert first["Abyssinian"][1:] == ["1", "1", "1"]
    assert first["american_bulldog"][1:] == ["2", "2", "1"]
    assert first["Bengal"][1:] == ["6", "1", "2"]
    assert first["yorkshire_terrier"][1:] == ["37", "2", "25"]
    assert len(list((dataset / "images").iterdir())) == len(rows)


def test_splits_are_balanced_disjoint_and_cover_list(dataset: Path):
    ann = dataset / "annotations"
    trainval, test = _rows(ann / "trainval.txt"), _rows(ann / "test.txt")
    assert Counter(r[1] for r in trainval) == {str(c): TV for c in range(1, 38)}
    assert Counter(r[1] for r in test) == {str(c): TE for c in range(1, 38)}
    tv_names, te_names = {r[0] for r in trainval}, {r[0] for r in test}
    assert not tv_names & te_names
    assert sorted(trainval + test) == sorted(_rows(ann / "list.txt"))


def test_images_decode_with_varied_non_square_sizes(dataset: Path):
    sizes = set()
    for path in (dataset / "images").iterdir():
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            rgb.load()
        w, h = rgb.size
        assert 200 <= w <= 500 and 200 <= h <= 500
        assert w != h
        sizes.add((w, h))
    assert len(sizes) > 20


def test_quirk_files(dataset: Path):
    ann = dataset / "annotations"
    split_of = {r[0]: "trainval" for r in _rows(ann / "trainval.txt")}
    split_of.update({r[0]: "test" for r in _rows(ann / "test.txt")})
    found: dict[tuple[str, str | None], str] = {}
    plain = 0
    for path in (dataset / "images").iterdir():
        with Image.open(path) as im:
            key = (im.format, im.mode if im.format != "GIF" else None)
            assert im.convert("RGB").size == im.size
            if key == ("JPEG", "RGB"):
                plain += 1
            else:
                found[key] = split_of[path.stem]
    assert set(found) == {("PNG", "RGB"), ("PNG", "RGBA"), ("GIF", None), ("JPEG", "CMYK")}
    assert set(found.values()) == {"trainval", "test"}
    assert plain == 37 * (TV + TE) - 4
    # the RGBA one really has transparency
    name = next(
        f"{c}_{n}" for c, n, s, f in _quirk_names(dataset) if f == "png-rgba"
    )
    with Image.open(dataset / "images" / f"{name}.jpg") as im:
        assert im.getchannel("A").getextrema()[0] < 255


def _quirk_names(root: Path):
    ann = root / "annotations"
    for cls, split, rank, fmt in synth.QUIRKS:
        rows = [r for r in _rows(ann / f"{split}.txt") if r[0].rsplit("_", 1)[0] == cls]
        number = sorted(int(r[0].rsplit("_", 1)[1]) for r in rows)[rank]
        yield cls, number, split, fmt


def test_marker_and_is_synthetic(dataset: Path, tmp_path: Path):
    assert synth.is_synthetic(dataset)
    text = (dataset / synth.MARKER_NAME).read_text("utf-8")
    assert "synthetic" in text.lower() and "seed: 0" in text
    assert f"trainval_per_class: {TV}" in text and f"test_per_class: {TE}" in text
    assert not synth.is_synthetic(tmp_path)
    assert not synth.is_synthetic(tmp_path / "missing")


@pytest.mark.slow  # a spawned process pool
def test_same_seed_same_bytes_in_parallel(dataset: Path, tmp_path: Path):
    again = synth.generate(tmp_path / "again", trainval_per_class=TV, test_per_class=TE,
                           workers=2)  # fmt: skip
    assert _files(again) == _files(dataset)  # in parallel or not, byte for byte


def test_other_seed_other_bytes(dataset: Path, tmp_path: Path):
    # The same seed gives the same bytes: test_render_image_is_deterministic, and in a
    # process pool test_same_seed_same_bytes_in_parallel.
    other = synth.generate(tmp_path / "other", trainval_per_class=1, test_per_class=1,
                           seed=1, workers=1)  # fmt: skip
    a, b = _files(dataset), _files(other)
    same_names = set(a) & set(b)
    images = [n for n in same_names if n.startswith("images")]
    assert images and all(a[n] != b[n] for n in images)
    assert a[synth.MARKER_NAME] != b[synth.MARKER_NAME]


@pytest.mark.slow  # a spawned process pool
def test_a_killed_worker_costs_time_not_images(dataset: Path, tmp_path: Path):
    def kill_the_workers(done: int, total: int) -> None:
        for child in multiprocessing.active_children():  # the pool's spawned workers
            os.kill(child.pid, signal.SIGKILL)

    with pytest.warns(UserWarning, match="ended abruptly; drawing the remaining"):
        again = synth.generate(tmp_path / "again", trainval_per_class=TV, test_per_class=TE,
                               workers=2, progress=kill_the_workers)  # fmt: skip
    assert _files(again) == _files(dataset)


def test_render_image_is_deterministic():
    first = synth.render_image(5, 7, seed=3).tobytes()
    assert synth.render_image(5, 7, seed=3).tobytes() == first
    assert synth.render_image(5, 8, seed=3).tobytes() != first
    assert synth.render_image(6, 7, seed=3).tobytes() != first


def test_complete_dataset_is_reused_and_other_parameters_replace_it(tmp_path: Path):
    root = tmp_path / "pets"
    synth.generate(root, trainval_per_class=1, test_per_class=1, workers=1)
    stamp = root / "images" / "keep.me"
    stamp.write_text("x")
    calls = []
    synth.generate(root, trainval_per_class=1, test_per_class=1, workers=1,
                   progress=lambda d, t: calls.append(d))  # fmt: skip
    assert stamp.exists() and calls == []  # same parameters: nothing redone

    synth.generate(root, trainval_per_class=2, test_per_class=1, workers=1)
    assert not stamp.exists()
    assert len(_rows(root / "annotations" / "trainval.txt")) == 37 * 2
    assert not (tmp_path / "pets.partial").exists() and not (tmp_path / "pets.old").exists()


def test_interrupted_run_leaves_no_dataset(tmp_path: Path):
    root = tmp_path / "pets"
    seen = []

    def boom(done: int, total: int) -> None:
        seen.append((done, total))
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synth.generate(root, trainval_per_class=1, test_per_class=1, progress=boom, workers=1)
    assert seen[-1] == (5, 74)
    assert not root.exists()
    assert not (tmp_path / "pets.partial").exists()
    # a stale .partial from a killed run does not block the next run
    (tmp_path / "pets.partial" / "images").mkdir(parents=True)
    synth.generate(root, trainval_per_class=1, test_per_class=1, workers=1)
    assert synth.is_synthetic(root) and not (tmp_path / "pets.partial").exists()


@pytest.mark.slow  # a spawned process pool
def test_interrupted_parallel_run_leaves_no_dataset(tmp_path: Path):
    root = tmp_path / "pets"

    def boom(done: int, total: int) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        synth.generate(root, trainval_per_class=1, test_per_class=1, progress=boom, workers=2)
    assert not root.exists() and not (tmp_path / "pets.partial").exists()


def test_refuses_to_replace_a_non_synthetic_folder(tmp_path: Path):
    root = tmp_path / "real"
    (root / "images").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        synth.generate(root, trainval_per_class=1, test_per_class=1, workers=1)
    assert (root / "images").is_dir() and not synth.is_synthetic(root)


def test_bad_counts_raise(tmp_path: Path):
    with pytest.raises(ValueError):
        synth.generate(tmp_path / "x", trainval_per_class=0)
    with pytest.raises(ValueError):
        synth.generate(tmp_path / "x", test_per_class=0)
    assert not (tmp_path / "x").exists()


def test_breed_traits_are_consistent():
    for breed in synth.BREEDS:
        assert breed.species == (1 if breed.name[0].isupper() else 2)
        for palette in breed.palettes:
            for _, index in breed.markings:
                assert index < len(palette), breed.name
    grouped = {n for group in synth.CONFUSABLE_GROUPS for n in group}
    assert grouped <= set(synth.CLASS_NAMES)


def test_two_generations_at_once_give_one_complete_dataset(tmp_path: Path):
    """The second caller waits for the first one's lock, then finds the dataset complete
    (before the lock it removed the first one's `.partial` mid-write: a third of the
    images went missing under a finished marker)."""
    import threading

    root = tmp_path / "pets"
    events: list[str] = []
    second: list[Path | BaseException] = []

    def run_second() -> None:
        try:
            second.append(synth.generate(root, trainval_per_class=1, test_per_class=1,
                                         workers=1))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            second.append(exc)
        events.append("second done")

    thread = threading.Thread(target=run_second)

    def start_second_midway(done: int, total: int) -> None:
        if done == 5:
            events.append("second started")
            thread.start()

    synth.generate(root, trainval_per_class=1, test_per_class=1, workers=1,
                   progress=start_second_midway)
    events.append("first done")
    thread.join(timeout=60)
    assert events == ["second started", "first done", "second done"]  # they overlapped
    assert second == [root]
    assert len(list((root / "images").iterdir())) == 74
    assert not (tmp_path / "pets.partial").exists()

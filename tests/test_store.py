"""The decoded-image store: threads decode exactly what one thread decodes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import petq.store as store
from petq.cache import Cache
from petq.data import PetDataset, decode, open_image
from petq.errors import DiskFullError, SkippedImagesWarning
from petq.store import decode_into, load_store

SIZE = (24, 20)


@pytest.fixture()
def many_chunks(monkeypatch):
    """Small chunks and no minimum, so the 60-image fixture tree spreads over the threads."""
    monkeypatch.setattr(store, "DECODE_CHUNK", 3)
    monkeypatch.setattr(store, "PARALLEL_MIN_IMAGES", 1)


@pytest.fixture()
def decoding_threads(monkeypatch) -> set[str]:
    """Names of the threads that ran `decode` (the real one, called through)."""
    names: set[str] = set()

    def recorded(image, size, channels=3):
        names.add(threading.current_thread().name)
        return decode(image, size, channels)

    monkeypatch.setattr(store, "decode", recorded)
    return names


@pytest.fixture()
def broken_tree(pet_root, tmp_path) -> Path:
    """The fixture tree with a truncated JPEG, a text file and a missing image."""
    root = tmp_path / "pets"
    shutil.copytree(pet_root, root)
    images = root / "images"
    data = (images / "Bengal_1.jpg").read_bytes()
    (images / "Bengal_1.jpg").write_bytes(data[: len(data) // 3])
    (images / "beagle_12.jpg").write_text("not an image")
    (images / "Abyssinian_7.jpg").unlink()
    return root


def all_paths(dataset: PetDataset) -> list[Path]:
    return [dataset.image_path(s.image_id) for s in dict.fromkeys(dataset.trainval
                                                                  + dataset.test)]


def test_threads_decode_the_same_bytes_as_one_thread(pet_root, many_chunks, decoding_threads):
    paths = all_paths(PetDataset.load(pet_root))
    serial = np.zeros((len(paths), *SIZE, 3), np.uint8)
    assert decode_into(serial, paths, SIZE, workers=1) == {}
    serial_threads = set(decoding_threads)
    decoding_threads.clear()
    parallel = np.zeros_like(serial)
    assert decode_into(parallel, paths, SIZE, workers=3) == {}
    assert serial_threads == {threading.current_thread().name}
    assert len(decoding_threads) >= 2 and all(n.startswith("petq-decode")
                                              for n in decoding_threads)
    assert parallel.tobytes() == serial.tobytes()
    for row in (0, 17, len(paths) - 1):  # and each row is what one decode gives
        np.testing.assert_array_equal(serial[row], decode(open_image(paths[row]), SIZE))


def test_bad_images_are_skipped_alike_in_threads_and_in_order(broken_tree, many_chunks):
    paths = all_paths(PetDataset.load(broken_tree))
    results = []
    for workers in (1, 4):
        pixels = np.zeros((len(paths), *SIZE, 3), np.uint8)
        results.append((decode_into(pixels, paths, SIZE, workers=workers), pixels))
    (serial_bad, serial), (parallel_bad, parallel) = results
    assert parallel_bad == serial_bad
    assert list(parallel_bad) == sorted(parallel_bad)
    named = {paths[row].stem: reason for row, reason in serial_bad.items()}
    assert set(named) == {"Bengal_1", "beagle_12", "Abyssinian_7"}
    assert "file not found" in named["Abyssinian_7"]
    assert "not an image" in named["beagle_12"]
    assert "Bengal_1.jpg" in named["Bengal_1"]
    assert parallel.tobytes() == serial.tobytes()
    for row in serial_bad:
        assert not parallel[row].any()  # a skipped image's row stays as it was


def test_store_files_are_identical_whatever_the_thread_count(broken_tree, tmp_path,
                                                             many_chunks):  # fmt: skip
    dataset = PetDataset.load(broken_tree)
    built = []
    for workers in (1, 3):
        cache = Cache(tmp_path / f"cache-{workers}")
        with pytest.warns(SkippedImagesWarning, match="trainval split: 40 listed, 38 decoded, "
                                                      "2 skipped"):
            load_store(dataset, SIZE, cache, "trainval", workers=workers)
        with pytest.warns(SkippedImagesWarning, match="test split: .* 1 skipped .1 not an "
                                                      "image"):
            decoded = load_store(dataset, SIZE, cache, "test", workers=workers)
        entries = [cache.get("decoded", store.store_key(dataset, SIZE, split))
                   for split in ("trainval", "test")]
        built.append((decoded, [entry.file(name).read_bytes() for entry in entries
                                for name in ("pixels.npy", "index.json")]))
    (one, one_files), (many, many_files) = built
    assert many_files == one_files
    assert many.bad == one.bad and list(many.bad) == ["beagle_12"]  # the test split's own
    rows, kept = many.rows(dataset.test)
    assert len(kept) == len(dataset.test) - 1
    assert np.array_equal(many.pixels[rows], one.pixels[rows])


def test_each_split_is_its_own_store(pet_root, tmp_path):
    dataset = PetDataset.load(pet_root)
    cache = Cache(tmp_path / "cache")
    test = load_store(dataset, SIZE, cache, "test")
    assert cache.get("decoded", store.store_key(dataset, SIZE, "trainval")) is None  # not yet
    assert list(test.index) == [s.image_id for s in dataset.test]
    trainval = load_store(dataset, SIZE, cache, "trainval")
    assert list(trainval.index) == [s.image_id for s in dataset.trainval]
    sample = dataset.trainval[5]
    np.testing.assert_array_equal(trainval.pixels[trainval.index[sample.image_id]],
                                  decode(open_image(dataset.image_path(sample.image_id)), SIZE))


def test_progress_counts_every_image_once_in_the_calling_thread(pet_root, many_chunks):
    paths = all_paths(PetDataset.load(pet_root))
    calls = []
    pixels = np.zeros((len(paths), *SIZE, 3), np.uint8)
    decode_into(pixels, paths, SIZE,
                lambda done, total: calls.append((done, total, threading.current_thread())),
                workers=2)
    assert [c[0] for c in calls] == sorted({c[0] for c in calls})  # increasing, no repeats
    assert calls[-1][:2] == (len(paths), len(paths))
    assert {c[2] for c in calls} == {threading.current_thread()}


class Stop(Exception):
    pass


def test_an_error_stops_the_threads_and_reaches_the_caller(pet_root, many_chunks):
    paths = all_paths(PetDataset.load(pet_root))
    calls = 0

    def stop(done, total):
        nonlocal calls
        calls += 1
        raise Stop

    pixels = np.zeros((len(paths), *SIZE, 3), np.uint8)
    with pytest.raises(Stop):
        decode_into(pixels, paths, SIZE, stop, workers=2)
    assert calls == 1
    decoded_rows = int(pixels.reshape(len(paths), -1).any(axis=1).sum())
    assert 0 < decoded_rows < len(paths)  # the queued chunks were dropped


def test_few_images_are_decoded_in_the_calling_thread(pet_root, decoding_threads):
    paths = all_paths(PetDataset.load(pet_root))[: store.PARALLEL_MIN_IMAGES - 1]
    pixels = np.zeros((len(paths), *SIZE, 3), np.uint8)
    decode_into(pixels, paths, SIZE, workers=4)
    assert decoding_threads == {threading.current_thread().name}


def test_decompression_bombs_stay_refused_in_threads(tmp_path, many_chunks, monkeypatch):
    """open_image's warning filter is process-wide state; threads must not lose it."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 40)  # 41x41 warns, 57x57+ errors
    paths = []
    for i in range(24):
        side = 48 if i % 3 == 0 else 30  # every third image is over the limit (a warning)
        path = tmp_path / f"img_{i}.png"
        Image.new("RGB", (side, side), (i * 10, 0, 0)).save(path)
        paths.append(path)
    pixels = np.zeros((len(paths), *SIZE, 3), np.uint8)
    before = list(warnings.filters)
    bad = decode_into(pixels, paths, SIZE, workers=4)
    assert sorted(bad) == list(range(0, 24, 3))
    assert all("image too large" in reason for reason in bad.values())
    assert warnings.filters == before  # nothing leaks out of the run


def test_consecutive_samples_are_a_view_of_the_store_and_others_a_copy(pet_root, tmp_path):
    dataset = PetDataset.load(pet_root)
    decoded = load_store(dataset, (32, 32), Cache(tmp_path / "cache"), "test")
    test = dataset.test_samples()
    pixels, kept = decoded.pixels_of(test)  # the whole split, in order
    assert np.shares_memory(pixels, decoded.pixels)
    rows, _ = decoded.rows(test)
    np.testing.assert_array_equal(pixels, decoded.pixels[rows])
    shuffled = test[::-1]
    copy, kept_shuffled = decoded.pixels_of(shuffled)
    assert not np.shares_memory(copy, decoded.pixels)
    assert kept_shuffled == list(shuffled)
    np.testing.assert_array_equal(copy, decoded.pixels[rows[::-1]])


def test_prefetch_reads_files_and_leaves_missing_ones_to_the_decoder(pet_root, tmp_path):
    pets = PetDataset.load(pet_root)
    paths = [pets.image_path(s.image_id) for s in pets.test[:3]] + [tmp_path / "gone.jpg"]
    store.prefetch(paths)  # no error for the missing file: decoding reports it
    pixels = np.zeros((len(paths), 8, 8, 3), np.uint8)
    failed = decode_into(pixels, paths, (8, 8), workers=1)
    assert list(failed) == [3] and "not found" in failed[3]
    assert np.array_equal(pixels[0], decode(open_image(paths[0]), (8, 8)))


ROOT = Path(__file__).resolve().parent.parent
BIG = (224, 224)  # 40 trainval images at 224x224: 6 MB, more than the 2 MB disk below


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter: a SIGBUS or SIGKILL there fails a test, not pytest."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture()
def small_disk(tmp_path) -> Path:
    """A 2 MB tmpfs mounted on a fresh folder (root only; skipped where mounting is not
    permitted), unmounted at the end."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small filesystem needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
                             capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], capture_output=True, timeout=30)


def test_a_full_disk_is_one_clear_error_and_the_cache_stays_whole(pet_root, small_disk):
    dataset = PetDataset.load(pet_root)
    cache = Cache(small_disk / "cache")
    small = load_store(dataset, SIZE, cache, "test")  # 20 small images: fits
    small_bytes = cache.get("decoded", store.store_key(dataset, SIZE, "test")
                            ).file("pixels.npy").read_bytes()
    del small
    # In another process: before the space was reserved, this died of SIGBUS with no message.
    outcome = run_python("""
        import sys
        from pathlib import Path
        from petq.cache import Cache
        from petq.data import PetDataset
        from petq.errors import DiskFullError
        from petq.store import load_store
        try:
            load_store(PetDataset.load(Path(sys.argv[1])), (224, 224), Cache(sys.argv[2]),
                       "trainval")
        except DiskFullError as exc:
            print(exc)
            sys.exit(3)
        """, str(pet_root), str(cache.root))
    assert outcome.returncode == 3, (outcome.returncode, outcome.stderr[-2000:])
    message = outcome.stdout.strip()
    needed = 40 * BIG[0] * BIG[1] * 3
    assert f"in {cache.root / 'decoded'}:" in message, message
    numbers = [int(n.replace(",", "")) for n in re.findall(r"\(([\d,]+) bytes\)", message)]
    assert len(numbers) == 2, message
    assert needed <= numbers[0] < needed + 4096  # the pixels and the .npy header
    assert 0 < numbers[1] < 2 * 1024 * 1024  # what the 2 MB disk has left
    decoded = cache.root / "decoded"
    assert not [p.name for p in decoded.iterdir() if p.name.startswith(".tmp-")]
    assert cache.get("decoded", store.store_key(dataset, BIG, "trainval")) is None
    again = cache.get("decoded", store.store_key(dataset, SIZE, "test"))  # verified: sha256
    assert again is not None and again.file("pixels.npy").read_bytes() == small_bytes


def test_any_cache_entry_that_finds_the_disk_full_is_one_clear_error(small_disk):
    cache = Cache(small_disk / "cache")

    def build(tmp: Path) -> dict:
        (tmp / "big.bin").write_bytes(bytes(3 * 1024 * 1024))
        return {}

    with pytest.raises(DiskFullError, match=f"no space left in {small_disk / 'cache' / 'variants'} "
                                        "for a variants entry"):
        cache.get_or_build("variants", "k", build)
    assert list((small_disk / "cache" / "variants").iterdir()) == []


def test_a_dead_writers_temp_folder_is_cleared_when_the_store_opens(pet_root, tmp_path):
    dataset = PetDataset.load(pet_root)
    root = tmp_path / "cache"
    # A writer killed after its first chunk of images leaves its temp folder behind.
    killed = run_python("""
        import os, signal, sys
        from pathlib import Path
        from petq.cache import Cache
        from petq.data import PetDataset
        from petq.store import load_store

        def die(done, total):
            os.kill(os.getpid(), signal.SIGKILL)

        load_store(PetDataset.load(Path(sys.argv[1])), (24, 20), Cache(sys.argv[2]),
                   "trainval", progress=die, workers=1)
        """, str(pet_root), str(root))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    decoded = root / "decoded"
    left = [p for p in decoded.iterdir() if p.name.startswith(".tmp-")]
    assert len(left) == 1 and (left[0] / "pixels.npy").exists()
    # A live writer's folder (its key's lock held) of another store, as young.
    cache = Cache(root)
    assert left[0].exists()  # younger than Cache's own age limit: opening the cache keeps it
    live_key = store.store_key(dataset, SIZE, "test")
    live = decoded / f".tmp-{live_key}-0000abcd"
    live.mkdir()
    with cache.lock("decoded", live_key):
        trainval = load_store(dataset, SIZE, cache, "trainval")
        assert not left[0].exists()
        assert live.exists()
    sample = dataset.trainval[-1]
    np.testing.assert_array_equal(trainval.pixels[trainval.index[sample.image_id]],
                                  decode(open_image(dataset.image_path(sample.image_id)), SIZE))


@pytest.mark.slow
def test_the_cli_on_a_full_disk_says_so_once(pet_root, tiny_model, small_disk, tmp_path):
    """`petq experiments` with its cache on a full disk: one `petq: error:` line naming the
    folder, exit status 1, no traceback, and no second line for every variant after it."""
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(bytes(free - 64 * 1024))  # 64 KB left: too little
    run = subprocess.run(
        [sys.executable, "-m", "petq", "experiments", "--model-path", str(tiny_model),
         "--dataset-root", str(pet_root), "--cache-dir", str(small_disk / "cache"),
         "--results-path", str(tmp_path / "results"), "--tasks", "tflite-fp32",
         "tflite-int8-0.5"],
        capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent.parent)
    errors = [line for line in run.stderr.splitlines() if line.startswith("petq: error:")]
    assert run.returncode == 1, run.stderr[-3000:]
    assert len(errors) == 1, run.stderr
    assert re.search(r"no (room|space left)", errors[0]), errors[0]
    assert str(small_disk / "cache") in errors[0]
    assert "Traceback" not in run.stderr

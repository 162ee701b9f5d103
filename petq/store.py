"""Decoded-image stores: each split's images decoded once per input size, memory-mapped.

Calibration reads the trainval store, evaluation the test store: uint8 pixels
instead of decoding JPEGs again for every variant, and a run that only evaluates
decodes only the test images. A large store is decoded by a few
threads at once: Pillow releases the GIL while it decodes and resizes, so the
threads run in parallel, and the bytes are the same as one thread's. A store's disk
space is reserved before a pixel is written (`reserve_pixels`), and what dead writers
left is cleared when a store opens.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from petq.cache import Cache, key_of
from petq.data import ImageCounts, PetDataset, Sample, Split, decode, open_image
from petq.errors import DiskFullError, ImageError, SkippedImagesWarning

STORE_VERSION = 2  # 2: one store per split
Progress = Callable[[int, int], None]
DECODE_CHUNK = 32  # images per task: the unit of work and of progress calls
PARALLEL_MIN_IMAGES = 2 * DECODE_CHUNK  # fewer: decoded in the calling thread (one chunk)
MAX_DECODE_WORKERS = 8


@dataclass
class DecodedStore:
    """uint8 pixels (N, H, W, C) for every image of one split, by image id (C: 3, or 1 for
    a grayscale model)."""

    pixels: np.ndarray
    index: dict[str, int]
    bad: dict[str, str] = field(default_factory=dict)  # image id -> why it was skipped

    def rows(self, samples: Sequence[Sample]) -> tuple[np.ndarray, list[Sample]]:
        """Row indices of the decodable samples, and those samples (bad ones skipped)."""
        kept = [s for s in samples if s.image_id not in self.bad]
        return np.fromiter((self.index[s.image_id] for s in kept), dtype=np.int64), kept

    def pixels_of(self, samples: Sequence[Sample]) -> tuple[np.ndarray, list[Sample]]:
        """The samples' pixels: a view of the store when their rows are consecutive (the
        whole test split is), else a copy."""
        rows, kept = self.rows(samples)
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
            return self.pixels[rows[0]:rows[-1] + 1], kept
        return self.pixels[rows], kept


def store_key(dataset: PetDataset, size: tuple[int, int], split: Split, channels: int = 3
              ) -> str:  # fmt: skip
    what = {"v": STORE_VERSION, "root": str(dataset.root.resolve()),
            "lists": dataset.fingerprint, "images": dataset.images_stamp, "size": list(size),
            "split": split}
    if channels != 3:  # RGB stores keep their keys
        what["channels"] = channels
    return key_of(what)


def load_store(
    dataset: PetDataset,
    size: tuple[int, int],
    cache: Cache,
    split: Split,
    progress: Progress | None = None,
    workers: int | None = None,
    channels: int = 3,
) -> DecodedStore:
    """Open the store of one split for (dataset, size, channels), decoding its images first
    if needed.

    Images that cannot be decoded are skipped with one counted warning when they are
    decoded (a SkippedImagesWarning: one `petq: warning:` line); their ids and reasons
    are kept in `bad`. `workers`: decoding threads (see `decode_into`).
    """

    def build(tmp: Path) -> dict:
        samples = list(dict.fromkeys(dataset.split(split)))
        height, width = size
        pixels = reserve_pixels(tmp / "pixels.npy", (len(samples), height, width, channels))
        failed = decode_into(pixels, [dataset.image_path(s.image_id) for s in samples], size,
                             progress, workers, channels=channels)
        bad = {samples[row].image_id: reason for row, reason in failed.items()}
        pixels.flush()
        del pixels
        index = {s.image_id: i for i, s in enumerate(samples)}
        (tmp / "index.json").write_text(json.dumps({"index": index, "bad": bad}))
        return {"dataset": str(dataset.root), "split": split, "size": list(size),
                "count": len(samples), "bad": len(bad)}

    cache.clear_stale_temp(max_age=0)  # what dead writers left; a live one holds its lock
    entry, built = cache.get_or_build("decoded", store_key(dataset, size, split, channels),
                                      build)
    meta = json.loads(entry.file("index.json").read_text())
    if meta["bad"] and built:
        counts = ImageCounts.of(dataset.split(split), meta["bad"])
        first = next(iter(meta["bad"].values()))
        warnings.warn(
            f"{dataset.root}: {split} split: {counts.text('decoded')}; first: {first}",
            SkippedImagesWarning, stacklevel=2,
        )
    pixels = np.load(entry.file("pixels.npy"), mmap_mode="r")
    return DecodedStore(pixels=pixels, index=meta["index"], bad=meta["bad"])


def reserve_pixels(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A new uint8 `.npy` file of `shape` at `path`, its disk space reserved, memory-mapped
    for writing.

    A page of a memory-mapped file that the disk has no room for kills the process with
    SIGBUS when it is written, with no message. Reserving every block first
    (`posix_fallocate`) turns a full disk into one DiskFullError here, naming the folder, the
    bytes needed and the bytes free, before any image is decoded.
    """
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
              "fortran_order": False, "shape": tuple(shape)}
    needed = int(np.prod(shape))
    free = shutil.disk_usage(path.parent).free
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        handle.flush()
        total = handle.tell() + needed
        try:
            os.posix_fallocate(handle.fileno(), 0, total)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            raise DiskFullError(
                f"no room for the decoded images in {path.parent.parent}: the store needs "
                f"{_size(total)} ({total:,} bytes) and {_size(free)} ({free:,} bytes) is "
                f"free there ({exc.strerror}); free some space there, or give a cache folder on "
                "a larger disk (--cache-dir, PETQ_CACHE)") from None
    return np.lib.format.open_memmap(path, mode="r+")


def _size(count: int) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 1e8 else f"{count / 1e6:.1f} MB"


def decode_workers() -> int:
    """Threads that decode a large store: one per core, at most MAX_DECODE_WORKERS."""
    return max(1, min(os.cpu_count() or 1, MAX_DECODE_WORKERS))


def decode_into(
    pixels: np.ndarray,
    paths: Sequence[Path | str],
    size: tuple[int, int],
    progress: Progress | None = None,
    workers: int | None = None,
    read_ahead: bool = True,
    channels: int = 3,
) -> dict[int, str]:
    """Decode `paths[i]` into `pixels[i]` (uint8, resized to `size`); return {row: reason}
    for the images that cannot be decoded (their rows are left as they were).

    With `workers` > 1 (default: `decode_workers()`) and at least PARALLEL_MIN_IMAGES
    images, chunks of DECODE_CHUNK images are decoded by that many threads; each
    thread writes its own rows, so the result is the same as decoding in order.
    `progress(done, total)` is called in the calling thread after each chunk. With
    threads, the files are read ahead (`prefetch`) unless `read_ahead` is False.
    """
    total = len(paths)
    workers = decode_workers() if workers is None else max(1, workers)
    starts = range(0, total, DECODE_CHUNK)

    def chunk(start: int) -> tuple[int, dict[int, str]]:
        rows = range(start, min(start + DECODE_CHUNK, total))
        return len(rows), _decode_rows(pixels, paths, rows, size, channels)

    failed: dict[int, str] = {}
    done = 0
    pool = None
    if read_ahead and workers > 1 and total >= PARALLEL_MIN_IMAGES:
        threading.Thread(target=prefetch, args=(paths,), name="petq-prefetch",
                         daemon=True).start()
    with warnings.catch_warnings():
        # open_image turns Pillow's decompression-bomb warning into an error inside its own
        # catch_warnings, which is not thread-safe: with the filter set here for the whole
        # run, every state its threads save and restore holds it, so no image escapes it.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        if workers > 1 and total >= PARALLEL_MIN_IMAGES:
            pool = ThreadPoolExecutor(workers, thread_name_prefix="petq-decode")
            futures = [pool.submit(chunk, start) for start in starts]
            results = (future.result() for future in as_completed(futures))
        else:
            results = map(chunk, starts)
        try:
            for count, bad in results:
                failed.update(bad)
                done += count
                if progress:
                    progress(done, total)
        finally:  # after an error or an interrupt, the chunks not started are dropped
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    return dict(sorted(failed.items()))


def prefetch(paths: Sequence[Path | str]) -> None:
    """Ask the kernel to read `paths` into the page cache now, all at once (Linux's
    POSIX_FADV_WILLNEED starts the reads and returns). Otherwise files not in the page
    cache are read one at a time, by whichever thread decodes them, and a cold store
    waits on the disk (measured in benchmarks/README.md). A file that cannot be opened is
    left to the decoder, which reports it."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            advise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def _decode_rows(pixels: np.ndarray, paths: Sequence[Path | str], rows: range,
                 size: tuple[int, int], channels: int = 3) -> dict[int, str]:  # fmt: skip
    failed = {}
    for row in rows:
        try:
            pixels[row] = decode(open_image(paths[row]), size, channels)
        except ImageError as exc:
            failed[row] = str(exc)
    return failed

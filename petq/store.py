"""Decoded-image store: every dataset image decoded once per input size, memory-mapped.

Calibration, evaluation and training read uint8 pixels from here instead of
decoding JPEGs again for every variant.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from petq.cache import Cache, key_of
from petq.data import PetDataset, Sample, decode, open_image
from petq.errors import ImageError

STORE_VERSION = 1
Progress = Callable[[int, int], None]


@dataclass
class DecodedStore:
    """uint8 pixels (N, H, W, 3) for every trainval and test image, by image id."""

    pixels: np.ndarray
    index: dict[str, int]
    bad: dict[str, str] = field(default_factory=dict)  # image id -> why it was skipped

    def rows(self, samples: Sequence[Sample]) -> tuple[np.ndarray, list[Sample]]:
        """Row indices of the decodable samples, and those samples (bad ones skipped)."""
        kept = [s for s in samples if s.image_id not in self.bad]
        return np.fromiter((self.index[s.image_id] for s in kept), dtype=np.int64), kept

    def pixels_of(self, samples: Sequence[Sample]) -> tuple[np.ndarray, list[Sample]]:
        rows, kept = self.rows(samples)
        return self.pixels[rows], kept


def store_key(dataset: PetDataset, size: tuple[int, int]) -> str:
    return key_of(
        {"v": STORE_VERSION, "root": str(dataset.root.resolve()), "lists": dataset.fingerprint,
         "size": list(size)}
    )


def load_store(
    dataset: PetDataset,
    size: tuple[int, int],
    cache: Cache,
    progress: Progress | None = None,
) -> DecodedStore:
    """Open the store for (dataset, size), decoding every image first if needed.

    Images that cannot be decoded are skipped with one counted warning; their
    ids and reasons are kept in `bad`.
    """

    def build(tmp: Path) -> dict:
        samples = list(dict.fromkeys(dataset.trainval + dataset.test))
        height, width = size
        pixels = np.lib.format.open_memmap(
            tmp / "pixels.npy", mode="w+", dtype=np.uint8, shape=(len(samples), height, width, 3)
        )
        bad: dict[str, str] = {}
        for i, sample in enumerate(samples):
            try:
                pixels[i] = decode(open_image(dataset.image_path(sample.image_id)), size)
            except ImageError as exc:
                bad[sample.image_id] = str(exc)
            if progress:
                progress(i + 1, len(samples))
        pixels.flush()
        del pixels
        index = {s.image_id: i for i, s in enumerate(samples)}
        (tmp / "index.json").write_text(json.dumps({"index": index, "bad": bad}))
        return {"dataset": str(dataset.root), "size": list(size), "count": len(samples),
                "bad": len(bad)}

    entry, _ = cache.get_or_build("decoded", store_key(dataset, size), build)
    meta = json.loads(entry.file("index.json").read_text())
    if meta["bad"]:
        shown = "; ".join(list(meta["bad"].values())[:3])
        warnings.warn(
            f"{len(meta['bad'])} image(s) in {dataset.root} could not be decoded and are "
            f"skipped: {shown}",
            stacklevel=2,
        )
    pixels = np.load(entry.file("pixels.npy"), mmap_mode="r")
    return DecodedStore(pixels=pixels, index=meta["index"], bad=meta["bad"])

"""A range profile that lasts: every calibrated image's (min, max) of every calibrated
tensor, in the cache, so that no image goes through a calibrator twice.

A static recipe's calibrator runs each calibration image through the float model and
keeps statistics of every activation tensor. The TFLite converter keeps the plain
minimum and maximum over the set (`MinMax::Update` in TensorFlow's
calibration_logger.cc); AI Edge Quantizer keeps, per image, the same minimum and
maximum and folds them into a moving average in the set's order
(petq.calibration.AeqStatic). Either way a set's statistics are a function of its
images' own (min, max), so those are worth keeping: a new seed, size, curve point,
exclusion or tuner candidate needs only the images not profiled yet.

A profile is identified by what its numbers depend on (`profile_key`): the float model
the calibrator runs (its bytes: the converter's export, or the FP32 .tflite and the AEQ
recipe), the preprocessing contract, the dataset's image files and library versions.
Its records live in the content-addressed cache (petq.cache: atomic, locked, verified):
one `profiles/<key>` entry with the layout (tensor names and shapes) and the
calibrator's output for one image (where merged ranges are written back), and
`ranges/<key>-<ids digest>` entries, each holding the ranges of a batch of images as
they were calibrated. Any process may add batches; an image found in two batches has
the same numbers in both (the calibrator is deterministic), so the first is used.

`outliers` reads a profile for the images that hold each tensor's extremes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from petq.cache import Cache, key_of

PROFILE_VERSION = 1
TIED = "(several)"  # an extreme held by more than one image: none of them stretches it
BATCH = 16  # images per `ranges` entry: what a killed process loses, and what two
# processes sharing a profile (`RangeProfile.ensure`) may both calibrate where they meet
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Layout:
    """The calibrated tensors of a profile, in the calibrator's order: their names and the
    shapes of their min and max arrays (one value for a per-tensor range)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtype: str = "float32"
    samples: tuple[int, ...] = ()  # AEQ: each tensor's sample count for one image

    @property
    def sizes(self) -> list[int]:
        return [int(np.prod(shape, dtype=np.int64)) for shape in self.shapes]

    @property
    def width(self) -> int:
        """Values per image for the minima (and as many for the maxima)."""
        return sum(self.sizes)

    def flatten(self, ranges: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """(2, width): one image's minima and maxima, tensor by tensor."""
        if len(ranges) != len(self.names):
            raise ValueError(f"{len(ranges)} ranges for {len(self.names)} tensors")
        out = np.empty((2, self.width), dtype=self.dtype)
        at = 0
        for (lo, hi), size, shape in zip(ranges, self.sizes, self.shapes, strict=True):
            lo, hi = np.asarray(lo), np.asarray(hi)
            if lo.shape != shape or hi.shape != shape or lo.dtype != self.dtype \
                    or hi.dtype != self.dtype:
                raise ValueError("a calibrated range differs from the profile's layout")
            out[0, at:at + size] = lo.ravel()
            out[1, at:at + size] = hi.ravel()
            at += size
        return out

    def split(self, row: np.ndarray) -> list[np.ndarray]:
        """Per-tensor arrays (in their shapes) of one flattened row of minima or maxima."""
        arrays, at = [], 0
        for size, shape in zip(self.sizes, self.shapes, strict=True):
            arrays.append(np.array(row[at:at + size], dtype=self.dtype).reshape(shape))
            at += size
        return arrays

    def per_tensor(self, values: np.ndarray, reduce: Callable) -> np.ndarray:
        """(n, tensors): `values` (n, width) reduced over each tensor's elements."""
        bounds = np.cumsum([0, *self.sizes])
        return np.stack([reduce(values[:, a:b], axis=1)
                         for a, b in zip(bounds[:-1], bounds[1:], strict=True)], axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes],
                "dtype": self.dtype, "samples": list(self.samples)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Layout:
        return cls(tuple(data["names"]), tuple(tuple(int(d) for d in s) for s in data["shapes"]),
                   str(data.get("dtype", "float32")),
                   tuple(int(n) for n in data.get("samples", ())))


@dataclass(frozen=True)
class Measured:
    """What a calibrator gives for one image: its layout, its ranges, and (first image
    only) the calibrator's output the profile keeps as its template."""

    layout: Layout
    ranges: list[tuple[np.ndarray, np.ndarray]]
    template: bytes = b""


Measure = Callable[[np.ndarray], Measured]


def profile_key(identity: Mapping[str, Any]) -> str:
    """A profile's key from what its numbers depend on (see the module's docstring)."""
    return key_of({"v": PROFILE_VERSION, **identity})


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RangeProfile:
    """One profile's per-image ranges in `cache`, read lazily and added to by `ensure`.

    `calibrated` counts the images this object ran through its calibrator."""

    def __init__(self, cache: Cache, key: str, identity: Mapping[str, Any] | None = None):
        self.cache = cache
        self.key = key
        self.identity = dict(identity or {})
        self.calibrated = 0
        self._layout: Layout | None = None
        self._template: bytes | None = None
        self._rows: dict[str, np.ndarray] = {}  # image id -> (2, width)
        self._read: set[str] = set()  # `ranges` entries read already

    # ------------------------------------------------------------ reading

    @property
    def layout(self) -> Layout | None:
        if self._layout is None:
            entry = self.cache.get("profiles", self.key, verify=False)
            if entry is not None:
                self._layout = Layout.from_dict(json.loads(entry.file("layout.json")
                                                           .read_text()))
        return self._layout

    @property
    def template(self) -> bytes:
        """The calibrator's output for one image (where merged ranges are written)."""
        if self._template is None:
            entry = self.cache.get("profiles", self.key)
            if entry is None or not entry.file("template.bin").is_file():
                raise KeyError(f"profile {self.key} has no template")
            self._template = entry.file("template.bin").read_bytes()
        return self._template

    def refresh(self) -> None:
        """Read the `ranges` entries other processes (or runs) have added since."""
        layout = self.layout
        parent = self.cache.root / "ranges"
        if layout is None or not parent.is_dir():
            return
        for path in sorted(parent.glob(f"{self.key}-*")):
            if path.name in self._read:
                continue
            entry = self.cache.get("ranges", path.name)
            if entry is None:  # being written, or corrupt: its images count as unprofiled
                continue
            ids = json.loads(entry.file("ids.json").read_text())
            values = np.load(entry.file("ranges.npy"), allow_pickle=False)
            if values.shape != (len(ids), 2, layout.width):
                continue
            for image_id, row in zip(ids, values, strict=True):
                self._rows.setdefault(image_id, row)
            self._read.add(path.name)

    def profiled(self, ids: Iterable[str] | None = None) -> set[str]:
        """The ids (of `ids`, or all) whose ranges are in the profile."""
        self.refresh()
        return set(self._rows) if ids is None else {i for i in ids if i in self._rows}

    def table(self, ids: Sequence[str]) -> np.ndarray:
        """(len(ids), 2, width): each image's minima and maxima, in `ids` order."""
        missing = [i for i in ids if i not in self._rows]
        if missing:
            self.refresh()
            missing = [i for i in ids if i not in self._rows]
            if missing:
                raise KeyError(f"{len(missing)} image(s) not profiled, e.g. {missing[0]}")
        layout = self.layout
        if not ids:
            return np.empty((0, 2, layout.width if layout else 0), dtype=np.float32)
        return np.stack([self._rows[i] for i in ids])

    def merged(self, ids: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The set's ranges as a min/max calibrator keeps them: per tensor, the minimum of
        its images' minima and the maximum of their maxima."""
        values = self.table(ids)
        return list(zip(self.layout.split(values[:, 0].min(axis=0)),
                        self.layout.split(values[:, 1].max(axis=0)), strict=True))

    # ------------------------------------------------------------ adding

    def ensure(self, ids: Sequence[str], inputs: Callable[[Sequence[str]], Iterable[np.ndarray]],
               measure: Measure, progress: Progress | None = None, start: int = 0) -> int:
        """Profile the images of `ids` not profiled yet, one calibrator run each, saving
        them in batches; returns how many this call calibrated. `progress(done, total)`
        counts over `ids` (those profiled already count as done).

        It walks `ids` from position `start` (wrapping round) a batch at a time, and
        before each batch reads what other processes have saved: several processes given
        the same ids at different starts share the work, each image calibrated about once
        (two may meet on the last batch). Any of them may stop or die: what it saved
        stays, and the others calibrate the rest."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return 0
        start %= len(wanted)
        order = wanted[start:] + wanted[:start]
        at = calibrated = 0
        while True:
            have = self.profiled(wanted)
            if progress:
                progress(len(have), len(wanted))
            batch: list[str] = []
            while at < len(order) and len(batch) < BATCH:
                if order[at] not in have:
                    batch.append(order[at])
                at += 1
            if not batch:
                return calibrated
            rows = []
            for done, (_, x) in enumerate(zip(batch, inputs(batch), strict=True), 1):
                measured = measure(np.asarray(x, dtype=np.float32))
                rows.append(self._settle_layout(measured).flatten(measured.ranges))
                self.calibrated += 1
                calibrated += 1
                if progress:
                    progress(min(len(have) + done, len(wanted)), len(wanted))
            for image_id, row in zip(batch, rows, strict=True):
                self._rows.setdefault(image_id, row)
            self._save(batch, rows)

    def _settle_layout(self, measured: Measured) -> Layout:
        layout = self.layout
        if layout is None:
            def build(tmp: Path) -> dict[str, Any]:
                (tmp / "layout.json").write_text(json.dumps(measured.layout.to_dict()))
                if measured.template:
                    (tmp / "template.bin").write_bytes(measured.template)
                return {"identity": self.identity, "tensors": len(measured.layout.names)}

            self.cache.get_or_build("profiles", self.key, build)
            self._layout = layout = self.layout
        if layout != measured.layout:
            raise ValueError(f"profile {self.key}: the calibrator's tensors differ from the "
                             "profile's layout")
        return layout

    def _save(self, ids: list[str], rows: list[np.ndarray]) -> None:
        name = f"{self.key}-{key_of(ids)}"

        def build(tmp: Path) -> dict[str, Any]:
            (tmp / "ids.json").write_text(json.dumps(ids))
            np.save(tmp / "ranges.npy", np.stack(rows), allow_pickle=False)
            return {"profile": self.key, "images": len(ids), "at": time.time()}

        self.cache.get_or_build("ranges", name, build)
        self._read.add(name)


# ---------------------------------------------------------------- the images that set ranges


@dataclass(frozen=True)
class TensorExtremes:
    """One calibrated tensor over a set of images: its merged range, the median image's
    range, which image holds the widest range and the extremes, and what removing the
    image that holds each extreme would leave."""

    name: str
    low: float
    high: float
    median_low: float
    median_high: float
    widest: str  # the image whose own range is widest
    widest_vs_median: float  # its width / the median image's width
    low_image: str  # the image holding the minimum (TIED: several hold it)
    high_image: str  # the image holding the maximum (TIED: several hold it)
    stretch: dict[str, float]  # image -> merged width / width without that image (> 1 only)

    @property
    def width(self) -> float:
        return self.high - self.low


@dataclass(frozen=True)
class ImageExtremes:
    """One image's part in setting the ranges: the tensors whose range it stretches (it
    alone holds their minimum or maximum) and by how much."""

    image_id: str
    stretch: dict[str, float]  # tensor -> merged width / width without this image
    widest: tuple[str, ...]  # tensors where this image's own range is the widest
    width_vs_median: dict[str, float]  # tensor -> its own width / the median image's

    @property
    def layers(self) -> int:
        return len(self.stretch)

    @property
    def largest_stretch(self) -> float:
        return max(self.stretch.values(), default=1.0)


def outliers(profile: RangeProfile, ids: Sequence[str]
             ) -> tuple[list[TensorExtremes], list[ImageExtremes]]:  # fmt: skip
    """Per tensor and per image, who sets the ranges of `ids` (at least two images).

    A tensor with several values per range (per-axis) counts as its overall minimum and
    maximum. Images are sorted by the number of tensors they stretch, then by the largest
    stretch; an image stretching none is left out."""
    ids = list(dict.fromkeys(ids))
    if len(ids) < 2:
        raise ValueError("outliers need at least two profiled images")
    values = profile.table(ids)
    layout = profile.layout
    lo = layout.per_tensor(values[:, 0].astype(np.float64), np.min)  # (n, tensors)
    hi = layout.per_tensor(values[:, 1].astype(np.float64), np.max)
    width = hi - lo
    med_lo, med_hi = np.median(lo, axis=0), np.median(hi, axis=0)
    med_width = np.median(width, axis=0)
    tensors: list[TensorExtremes] = []
    per_image: dict[str, dict[str, float]] = {}
    widest_of: dict[str, list[str]] = {}
    vs_median: dict[str, dict[str, float]] = {}
    order_lo, order_hi = np.argsort(lo, axis=0, kind="stable"), np.argsort(-hi, axis=0,
                                                                             kind="stable")
    for t, name in enumerate(layout.names):
        low, high = lo[:, t].min(), hi[:, t].max()
        i_lo, i_hi = order_lo[0, t], order_hi[0, t]
        stretch: dict[str, float] = {}
        for i in {int(i_lo), int(i_hi)}:
            # without image i: the next image's extreme where i held it
            low_without = lo[order_lo[1, t], t] if i == i_lo else low
            high_without = hi[order_hi[1, t], t] if i == i_hi else high
            without = high_without - low_without
            ratio = (high - low) / without if without > 0 else float("inf")
            if ratio > 1.0:
                stretch[ids[i]] = float(ratio)
        w = int(np.argmax(width[:, t]))
        ratio_w = float(width[w, t] / med_width[t]) if med_width[t] > 0 else float("inf")
        tensors.append(TensorExtremes(
            name=name, low=float(low), high=float(high), median_low=float(med_lo[t]),
            median_high=float(med_hi[t]), widest=ids[w], widest_vs_median=ratio_w,
            low_image=TIED if lo[order_lo[1, t], t] == low else ids[int(i_lo)],
            high_image=TIED if hi[order_hi[1, t], t] == high else ids[int(i_hi)],
            stretch=stretch))
        for image_id, ratio in stretch.items():
            per_image.setdefault(image_id, {})[name] = ratio
        widest_of.setdefault(ids[w], []).append(name)
        for i in {int(i_lo), int(i_hi), w}:
            if med_width[t] > 0:
                vs_median.setdefault(ids[i], {})[name] = float(width[i, t] / med_width[t])
    images = [ImageExtremes(image_id, per_image.get(image_id, {}),
                            tuple(widest_of.get(image_id, ())), vs_median.get(image_id, {}))
              for image_id in dict.fromkeys([*per_image, *widest_of])]
    images = [im for im in images if im.stretch or im.widest]
    images.sort(key=lambda im: (-im.layers, -im.largest_stretch, -len(im.widest), im.image_id))
    return tensors, images


def short_name(tensor: str, limit: int = 48) -> str:
    """A tensor name as people read it: the first of TFLite's `;`-joined names, cut."""
    first = tensor.split(";")[0]
    return first if len(first) <= limit else "..." + first[-(limit - 3):]

"""The Oxford-IIIT Pet layout: list files, splits, image decoding and the one preprocessing."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from petq.errors import DatasetError, ImageError, PetqWarning, SpecError
from petq.types import ModelContract

TEST_SPLIT_SEED = 12345  # the lab's seed for --test-dataset-fraction
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow's decompression-bomb limit (89.5 MP)
Progress = Callable[[int, int], None]
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)  # Keras' caffe mode: ImageNet means, BGR order
Split = Literal["trainval", "test"]  # trainval calibrates (and trains), test evaluates


@dataclass(frozen=True)
class Sample:
    image_id: str  # file stem, e.g. "Abyssinian_100"
    label: int  # 0-based class index (CLASS-ID - 1)


OXFORD_RULE = ("the Oxford-IIIT Pet rule: CLASS-ID counts breeds from 1, SPECIES is 1 (cat) "
               "or 2 (dog), BREED-ID counts from 1 within the species")


@dataclass(frozen=True)
class ListLine:
    """One line of a list file: its sample, the Oxford ids, and where it is."""

    sample: Sample
    species: int
    breed_id: int
    path: Path
    lineno: int

    @property
    def where(self) -> str:
        return f"{self.path}:{self.lineno}"


def parse_list_file(path: Path) -> list[ListLine]:
    """Parse `Image CLASS-ID SPECIES BREED-ID` lines; `#` lines are comments.

    A malformed line raises DatasetError naming the file and line number; ids out of
    range (e.g. TensorFlow Datasets' 0-based ids) are named with the Oxford rule.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: list file not found")
    rows = []
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 4:
            raise DatasetError(
                f"{path}:{lineno}: expected 'Image CLASS-ID SPECIES BREED-ID', got {raw!r}"
            )
        try:
            class_id, species, breed = (int(f) for f in fields[1:])
        except ValueError:
            raise DatasetError(f"{path}:{lineno}: non-integer id in {raw!r}") from None
        if class_id < 1 or species not in (1, 2) or breed < 1:
            zero_based = " (0-based ids, as TensorFlow Datasets writes them?)" if (
                0 in (class_id, species, breed)) else ""
            raise DatasetError(f"{path}:{lineno}: {raw.strip()!r} breaks {OXFORD_RULE}"
                               f"{zero_based}")
        rows.append(ListLine(Sample(fields[0], class_id - 1), species, breed, path, lineno))
    return rows


def _label_by_name(lines: list[ListLine]) -> list[ListLine]:
    """Each file name's breed gets one CLASS-ID: the one most of its lines give (ties: the
    first). A line whose CLASS-ID disagrees is labelled by its name's breed, with one
    warning naming the first such line: petq matches breeds to a model by name, and one
    mislabelled line should not stop an evaluation, nor be followed silently."""
    ids: dict[str, Counter] = {}
    for line in lines:
        ids.setdefault(class_name_of(line.sample.image_id), Counter())[line.sample.label] += 1
    chosen = {name: counts.most_common(1)[0][0] for name, counts in ids.items()}
    wrong = [line for line in lines
             if line.sample.label != chosen[class_name_of(line.sample.image_id)]]
    if not wrong:
        return lines
    first = wrong[0]
    name = class_name_of(first.sample.image_id)
    more = f" ({len(wrong) - 1} more such line(s))" if len(wrong) > 1 else ""
    warnings.warn(
        f"{first.where}: CLASS-ID {first.sample.label + 1} on {first.sample.image_id} "
        f"disagrees with its file name's breed {name!r} (CLASS-ID {chosen[name] + 1} on "
        f"{ids[name][chosen[name]]} line(s)); labelled as CLASS-ID {chosen[name] + 1}{more}",
        PetqWarning, stacklevel=3)
    fixed = {(line.path, line.lineno) for line in wrong}
    return [ListLine(Sample(line.sample.image_id, chosen[class_name_of(line.sample.image_id)]),
                     line.species, line.breed_id, line.path, line.lineno)
            if (line.path, line.lineno) in fixed else line for line in lines]


def class_name_of(image_id: str) -> str:
    return image_id.rsplit("_", 1)[0]


def placeholder_name(label: int) -> str:
    """The name of a class whose CLASS-ID no list line uses: `class_<CLASS-ID>`."""
    return f"class_{label + 1}"


@dataclass(frozen=True)
class PetDataset:
    """An Oxford-IIIT-Pet-layout dataset: `images/` and `annotations/*.txt`.

    The list files may name only some breeds (your own photos of two breeds under
    their Oxford CLASS-IDs): labels stay CLASS-ID - 1, a CLASS-ID that no line uses
    gets a placeholder name (`class_<CLASS-ID>`), and `present_classes` says which
    labels have images.
    """

    root: Path
    class_names: tuple[str, ...]
    trainval: tuple[Sample, ...]
    test: tuple[Sample, ...]
    fingerprint: str  # list files and synthetic marker: the split's definition, portable
    images_stamp: str  # each listed image's size and mtime: these files, on this disk
    synthetic: bool

    @classmethod
    def load(cls, root: Path | str) -> PetDataset:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: dataset folder not found (use --download-dataset?)")
        ann = root / "annotations"
        if not (root / "images").is_dir():
            raise DatasetError(f"{root / 'images'}: images folder not found")
        splits = {}
        digest = hashlib.sha256()
        names: dict[int, str] = {}
        lines: dict[str, list[ListLine]] = {}
        for split in ("trainval", "test"):
            path = ann / f"{split}.txt"
            lines[split] = parse_list_file(path)
            if not lines[split]:
                raise DatasetError(f"{path}: no samples listed")
            digest.update(path.read_bytes())
        labelled = _label_by_name(lines["trainval"] + lines["test"])
        for split in ("trainval", "test"):
            rows, labelled = labelled[:len(lines[split])], labelled[len(lines[split]):]
            for row in rows:
                name = class_name_of(row.sample.image_id)
                known = names.setdefault(row.sample.label, name)
                if known != name:
                    raise DatasetError(
                        f"{row.where}: class id {row.sample.label + 1} is both {known!r} and "
                        f"{name!r}")
            splits[split] = tuple(r.sample for r in rows)
        marker = root / "SYNTHETIC"  # generator version and parameters of a synthetic set
        if marker.exists():
            digest.update(marker.read_bytes())
        # The images themselves, cheaply: size and modification time of every listed file
        # (one stat each), so a copy with the same lists but other pixels is another dataset.
        stamp = hashlib.sha256()
        for sample in (*splits["trainval"], *splits["test"]):
            try:
                info = (root / "images" / f"{sample.image_id}.jpg").stat()
                stamp.update(f"{sample.image_id} {info.st_size} {info.st_mtime_ns}\n".encode())
            except OSError:
                stamp.update(f"{sample.image_id} missing\n".encode())
        count = max(names) + 1
        return cls(
            root=root,
            class_names=tuple(names.get(i, placeholder_name(i)) for i in range(count)),
            trainval=splits["trainval"],
            test=splits["test"],
            fingerprint=digest.hexdigest()[:16],
            images_stamp=stamp.hexdigest()[:16],
            synthetic=(root / "SYNTHETIC").exists(),
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @functools.cached_property
    def present_classes(self) -> tuple[int, ...]:
        """Sorted labels that have trainval or test images (the others are placeholders)."""
        return tuple(sorted({s.label for s in self.trainval} | {s.label for s in self.test}))

    def split(self, name: Split) -> tuple[Sample, ...]:
        return self.trainval if name == "trainval" else self.test

    def image_path(self, image_id: str) -> Path:
        return self.root / "images" / f"{image_id}.jpg"

    def class_index(self, name_or_index: str | int) -> int:
        """Resolve a breed name (case-insensitive) or index; unknown names raise SpecError."""
        return class_index(self.class_names, name_or_index)

    def calibration_samples(self, fraction: float, seed: int) -> list[Sample]:
        """A stratified, seeded fraction of trainval (the lab's calibration set)."""
        return stratified_fraction(self.trainval, fraction, seed)

    def class_samples(self, classes: Sequence[int]) -> list[Sample]:
        """Every trainval image of the given classes (imbalanced calibration)."""
        wanted = set(classes)
        return [s for s in self.trainval if s.label in wanted]

    def test_samples(self, fraction: float = 1.0, seed: int = TEST_SPLIT_SEED) -> list[Sample]:
        """The test split, or a stratified seeded fraction of it (--test-dataset-fraction)."""
        if fraction >= 1.0:
            if fraction > 1.0:
                raise SpecError(f"test dataset fraction must be in (0, 1], got {fraction}")
            return list(self.test)
        return stratified_fraction(self.test, fraction, seed)


def class_index(class_names: Sequence[str], name_or_index: str | int) -> int:
    """A breed name (case-insensitive) or index into `class_names`; SpecError otherwise."""
    if isinstance(name_or_index, int) or str(name_or_index).strip().isdigit():
        index = int(str(name_or_index).strip())
        if not 0 <= index < len(class_names):
            raise SpecError(f"class index {index} out of range 0..{len(class_names) - 1}")
        return index
    lowered = {n.lower(): i for i, n in enumerate(class_names)}
    key = str(name_or_index).strip().lower()
    if key not in lowered:
        raise SpecError(f"unknown class name {name_or_index!r}")
    return lowered[key]


def stratified_fraction(samples: Sequence[Sample], fraction: float, seed: int) -> list[Sample]:
    """Pick `fraction` of the samples, stratified by label, deterministic for a seed.

    Uses scikit-learn's stratified split as the lab does; when the fraction is too
    small to hold every class, falls back to a plain seeded random pick.
    """
    if not 0.0 < fraction <= 1.0:
        raise SpecError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return list(samples)
    return stratified_count(samples, max(1, int(np.ceil(fraction * len(samples)))), seed)


def stratified_count(samples: Sequence[Sample], n_pick: int, seed: int) -> list[Sample]:
    """Pick `n_pick` of the samples as `stratified_fraction` does (all of them when there
    are no more)."""
    if n_pick >= len(samples):
        return list(samples)
    from sklearn.model_selection import train_test_split  # here: a second or two to import

    labels = [s.label for s in samples]
    try:
        _, picked = train_test_split(
            list(samples), test_size=n_pick, random_state=seed, shuffle=True, stratify=labels
        )
    except ValueError:  # fewer picks than classes, or a class with one member
        _, picked = train_test_split(
            list(samples), test_size=n_pick, random_state=seed, shuffle=True
        )
    return list(picked)


# ---------------------------------------------------------------- images

HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")


def _upload_types() -> tuple[str, ...]:
    types = ["jpg", "jpeg", "jfif", "png", "gif", "bmp", "webp", "tif", "tiff"]
    if features.check_module("avif"):  # Pillow's own AVIF plugin, when built with libavif
        types.append("avif")
    if importlib.util.find_spec("pillow_heif") is not None:
        types += ["heic", "heif"]
    return tuple(types)


# File extensions `open_image` decodes (for upload widgets); HEIC/HEIF only with pillow-heif.
UPLOAD_TYPES = _upload_types()


@functools.cache
def _register_heif() -> bool:
    """Teach Pillow HEIC/HEIF (phone photos) through pillow-heif, once; False when missing."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def _looks_like_heif(source: Path | str | bytes) -> bool:
    try:
        if isinstance(source, bytes):
            head = source[:12]
        else:
            with open(source, "rb") as f:
                head = f.read(12)
    except OSError:
        return False
    return head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS


# Why an image is skipped, by the words open_image's errors use: (phrase, short reason)
_SKIP_REASONS = (("file not found", "missing"), ("image too large", "too large"),
                 ("not an image", "not an image"), ("HEIC/HEIF", "HEIC without pillow-heif"),
                 ("cannot decode", "truncated or corrupt"))


def skip_reason(message: str) -> str:
    """The short reason ("missing", "too large", "truncated or corrupt"...) of an
    `open_image` error message, for the counts reports show."""
    return next((reason for phrase, reason in _SKIP_REASONS if phrase in message), "unreadable")


@dataclass(frozen=True)
class ImageCounts:
    """Images listed for an evaluation, and those skipped (not decodable) by reason."""

    listed: int
    skipped: tuple[tuple[str, int], ...] = ()  # (reason, count), most first

    @classmethod
    def of(cls, listed: Sequence[Sample], bad: dict[str, str]) -> ImageCounts:
        """`listed` samples, `bad`: image id -> why it could not be decoded (a store's)."""
        reasons = Counter(skip_reason(bad[s.image_id]) for s in listed if s.image_id in bad)
        return cls(len(listed), tuple(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))))

    @property
    def skipped_count(self) -> int:
        return sum(count for _, count in self.skipped)

    @property
    def evaluated(self) -> int:
        return self.listed - self.skipped_count

    def text(self, kept: str = "evaluated") -> str:
        """`149 listed, 147 evaluated, 2 skipped (1 missing, 1 truncated or corrupt)`;
        `kept`: what the images not skipped are (`decoded`, for a split's store)."""
        text = f"{self.listed} listed, {self.evaluated} {kept}, {self.skipped_count} skipped"
        if self.skipped:
            text += " (" + ", ".join(f"{n} {reason}" for reason, n in self.skipped) + ")"
        return text

    def to_dict(self) -> dict[str, object]:
        return {"listed": self.listed, "evaluated": self.evaluated,
                "skipped": self.skipped_count, "skipped_by_reason": dict(self.skipped)}


def open_image(source: Path | str | bytes, name: str | None = None) -> Image.Image:
    """Decode an image to 8-bit RGB: EXIF orientation applied, alpha composited on white.

    Accepts whatever Pillow reads (JPEG, PNG, GIF, BMP, TIFF, WebP, CMYK, grayscale,
    16-bit...), plus HEIC/HEIF when pillow-heif is installed, whatever the file's
    extension says. Raises ImageError naming the source.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "uploaded image")
    has_heif = _register_heif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # the default copies every image
    except FileNotFoundError:
        raise ImageError(f"{label}: file not found") from None
    except UnidentifiedImageError:
        if not has_heif and _looks_like_heif(source):
            raise ImageError(
                f"{label}: a HEIC/HEIF image; reading it needs pillow-heif (pip install "
                "pillow-heif)"
            ) from None
        raise ImageError(f"{label}: not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"{label}: image too large (over {MAX_IMAGE_PIXELS:,} pixels), refusing to decode"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{label}: cannot decode image ({exc})") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any decoded Pillow image -> 8-bit RGB, alpha composited on white; an RGB image is
    returned as it is: no copy (two full-size copies were 0.9 s of 5.1 s for 2,048
    decodes on one thread: `python benchmarks/bench_lab.py --decode`)."""
    image = to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


def to_8bit(image: Image.Image) -> Image.Image:
    """Single-band 16-bit and 32-bit images -> 8-bit `L`; other modes pass unchanged.

    Pillow's `convert` clips these at 255, so a 16-bit photo comes out all white.
    16-bit (`I;16*`, and `I` holding 0-65535) keeps the high byte, `v >> 8`: the
    reduction Pillow itself applies when it opens 16-bit RGB(A) PNGs and TIFFs,
    so 16-bit gray and colour files agree. Float `F` images in [0, 1] are scaled
    by 255, others by 255 / their maximum (negative and NaN values become 0).
    """
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image)
        if mode == "I":
            values = np.clip(values, 0, 0xFFFF)
        eight = (values >> 8).astype(np.uint8)
    elif mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0,
                               neginf=0.0)
        peak = float(values.max()) if values.size else 0.0
        scale = 255.0 if peak <= 1.0 else 255.0 / peak
        eight = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    else:
        return image
    return Image.fromarray(np.ascontiguousarray(eight))


def decode(image: Image.Image, size: tuple[int, int], channels: int = 3) -> np.ndarray:
    """The one decoding to model pixels: resize to (height, width) with Pillow's default
    filter, as the lab does: uint8 HxWx3; with `channels` 1, the image is first converted
    to Pillow's grayscale (`L`, ITU-R 601-2 luma): uint8 HxWx1."""
    height, width = size
    if channels == 1:
        gray = image.convert("L").resize((width, height))
        return np.asarray(gray, dtype=np.uint8)[..., None]
    return np.asarray(image.resize((width, height)), dtype=np.uint8)


def model_pixels(image: Image.Image, contract: ModelContract) -> np.ndarray:
    """A decoded photo as the model sees it before scaling: `decode` at the contract's
    input size and channel count (what Classify shows and classifies)."""
    return decode(image, contract.input_size, contract.channels)


def channel_order(contract: ModelContract) -> tuple[int, ...]:
    """The channel of the decoded pixels each channel of `preprocess`'s output reads:
    (2, 1, 0) for caffe (BGR), (0,) for a grayscale model.

    A per-channel lookup table built from `preprocess` (evaluate.input_lut) must be
    applied to `pixels[..., channel_order(contract)]`.
    """
    if contract.channels == 1:
        return (0,)
    return (2, 1, 0) if contract.preprocessing == "caffe" else (0, 1, 2)


def _torch(rows: np.ndarray, width: int, contract: ModelContract) -> None:
    rows /= np.float32(255.0)
    rows -= np.tile(np.asarray(contract.channel_mean, np.float32), width)
    rows /= np.tile(np.asarray(contract.channel_std, np.float32), width)


def _tf(rows: np.ndarray, width: int, contract: ModelContract) -> None:
    rows /= np.float32(127.5)
    rows -= np.float32(1.0)


def _caffe(rows: np.ndarray, width: int, contract: ModelContract) -> None:
    rows -= np.tile(np.asarray(CAFFE_BGR_MEAN, np.float32), width)  # channels already BGR


def _unit(rows: np.ndarray, width: int, contract: ModelContract) -> None:
    rows /= np.float32(255.0)


def _raw(rows: np.ndarray, width: int, contract: ModelContract) -> None:
    pass


# One in-place function per types.PREPROCESSING mode, on rows of (width * channels) float32
# values.
_MODES: dict[str, Callable[[np.ndarray, int, ModelContract], None]] = {
    "torch": _torch, "tf": _tf, "caffe": _caffe, "unit": _unit, "raw": _raw,
}


def preprocess(pixels: np.ndarray, contract: ModelContract) -> np.ndarray:
    """uint8 HxWxC (or NxHxWxC) -> float32 NHWC, in the contract's preprocessing mode (C:
    the contract's channels, as `decode` made them).

    The modes are Keras' `imagenet_utils.preprocess_input` ones, to float32 precision:
    `torch` (the lab's) /255 then the contract's mean/std; `tf` /127.5 - 1; `caffe`
    RGB to BGR, then the ImageNet BGR means subtracted; plus `unit` (/255) and `raw`.
    The one preprocessing used by calibration, evaluation, training and live
    classification (the lab's `prepare_input_sample`).
    """
    pixels = np.asarray(pixels)
    if pixels.shape[-1] != contract.channels:
        raise SpecError(f"preprocess: {pixels.shape[-1]}-channel pixels for a "
                        f"{contract.channels}-channel model")
    order = channel_order(contract)
    if order == tuple(range(len(order))):
        x = pixels.astype(np.float32)  # a new C-ordered array, changed in place
    else:  # reorder while converting: twice as fast as converting a reversed view
        x = np.empty(pixels.shape, np.float32)
        for channel, source in enumerate(order):
            x[..., channel] = pixels[..., source]
    width = x.shape[-2]
    rows = x.reshape(-1, width * x.shape[-1])  # channels repeat along a row: long SIMD loops
    _MODES[contract.preprocessing](rows, width, contract)
    return x[None] if x.ndim == 3 else x


def prepare_image(source: Path | str | bytes, contract: ModelContract) -> np.ndarray:
    """File or bytes -> a model-ready batch of one."""
    return preprocess(model_pixels(open_image(source), contract), contract)

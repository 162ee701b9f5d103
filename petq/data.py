"""The Oxford-IIIT Pet layout: list files, splits, image decoding and the one preprocessing."""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from petq.errors import DatasetError, ImageError, SpecError
from petq.types import ModelContract

TEST_SPLIT_SEED = 12345  # the lab's seed for --test-dataset-fraction
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow's decompression-bomb limit (89.5 MP)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Sample:
    image_id: str  # file stem, e.g. "Abyssinian_100"
    label: int  # 0-based class index (CLASS-ID - 1)


def parse_list_file(path: Path) -> list[tuple[Sample, int, int]]:
    """Parse `Image CLASS-ID SPECIES BREED-ID` lines; `#` lines are comments.

    Returns (sample, species, breed_id) per line. A malformed line raises
    DatasetError naming the file and line number.
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
            raise DatasetError(f"{path}:{lineno}: id out of range in {raw!r}")
        rows.append((Sample(fields[0], class_id - 1), species, breed))
    return rows


def class_name_of(image_id: str) -> str:
    return image_id.rsplit("_", 1)[0]


@dataclass(frozen=True)
class PetDataset:
    """An Oxford-IIIT-Pet-layout dataset: `images/` and `annotations/*.txt`."""

    root: Path
    class_names: tuple[str, ...]
    trainval: tuple[Sample, ...]
    test: tuple[Sample, ...]
    fingerprint: str  # hash of the list files: identifies the split contents
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
        for split in ("trainval", "test"):
            path = ann / f"{split}.txt"
            rows = parse_list_file(path)
            if not rows:
                raise DatasetError(f"{path}: no samples listed")
            digest.update(path.read_bytes())
            for sample, _, _ in rows:
                name = class_name_of(sample.image_id)
                known = names.setdefault(sample.label, name)
                if known != name:
                    raise DatasetError(
                        f"{path}: class id {sample.label + 1} is both {known!r} and {name!r}"
                    )
            splits[split] = tuple(r[0] for r in rows)
        marker = root / "SYNTHETIC"  # generator version and parameters of a synthetic set
        if marker.exists():
            digest.update(marker.read_bytes())
        count = max(names) + 1
        missing = sorted(set(range(count)) - set(names))
        if missing:
            raise DatasetError(f"{ann}: class ids {[m + 1 for m in missing]} have no images")
        return cls(
            root=root,
            class_names=tuple(names[i] for i in range(count)),
            trainval=splits["trainval"],
            test=splits["test"],
            fingerprint=digest.hexdigest()[:16],
            synthetic=(root / "SYNTHETIC").exists(),
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def image_path(self, image_id: str) -> Path:
        return self.root / "images" / f"{image_id}.jpg"

    def class_index(self, name_or_index: str | int) -> int:
        """Resolve a breed name (case-insensitive) or index; unknown names raise SpecError."""
        if isinstance(name_or_index, int) or str(name_or_index).isdigit():
            index = int(name_or_index)
            if not 0 <= index < self.num_classes:
                raise SpecError(f"class index {index} out of range 0..{self.num_classes - 1}")
            return index
        lowered = {n.lower(): i for i, n in enumerate(self.class_names)}
        key = str(name_or_index).strip().lower()
        if key not in lowered:
            raise SpecError(f"unknown class name {name_or_index!r}")
        return lowered[key]

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


def stratified_fraction(samples: Sequence[Sample], fraction: float, seed: int) -> list[Sample]:
    """Pick `fraction` of the samples, stratified by label, deterministic for a seed.

    Uses scikit-learn's stratified split as the lab does; when the fraction is too
    small to hold every class, falls back to a plain seeded random pick.
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < fraction <= 1.0:
        raise SpecError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return list(samples)
    labels = [s.label for s in samples]
    n_pick = max(1, int(np.ceil(fraction * len(samples))))
    if n_pick >= len(samples):
        return list(samples)
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


def open_image(source: Path | str | bytes, name: str | None = None) -> Image.Image:
    """Decode an image to RGB: EXIF orientation applied, alpha composited on white.

    Accepts whatever Pillow reads (JPEG, PNG, GIF, WebP, CMYK, grayscale...),
    whatever the file's extension says. Raises ImageError naming the source.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "uploaded image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            image.load()
    except FileNotFoundError:
        raise ImageError(f"{label}: file not found") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"{label}: image too large (over {MAX_IMAGE_PIXELS:,} pixels), refusing to decode"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{label}: cannot decode image ({exc})") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def decode(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Resize to (height, width) with Pillow's default filter, as the lab does: uint8 HxWx3."""
    height, width = size
    return np.asarray(image.resize((width, height)), dtype=np.uint8)


def preprocess(pixels: np.ndarray, contract: ModelContract) -> np.ndarray:
    """uint8 HxWx3 (or NxHxWx3) -> float32 NHWC: /255 then ImageNet-style mean/std.

    The one preprocessing used by calibration, evaluation, training and live
    classification (the lab's `prepare_input_sample`).
    """
    x = np.asarray(pixels).astype(np.float32)  # a new C-ordered array, changed in place
    width = x.shape[-2]
    rows = x.reshape(-1, width * x.shape[-1])  # channels repeat along a row: long SIMD loops
    rows /= np.float32(255.0)
    rows -= np.tile(np.asarray(contract.mean, np.float32), width)
    rows /= np.tile(np.asarray(contract.std, np.float32), width)
    return x[None] if x.ndim == 3 else x


def prepare_image(source: Path | str | bytes, contract: ModelContract) -> np.ndarray:
    """File or bytes -> a model-ready batch of one."""
    return preprocess(decode(open_image(source), contract.input_size), contract)

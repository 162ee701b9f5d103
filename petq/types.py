"""Frozen, hashable types shared by every stage: variant specs and model contracts."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from petq.errors import ModelError, SpecError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAB_IMBALANCED_CLASSES = (5,)  # the lab's tflite-imbint8 task calibrates on class index 5 alone
DEFAULT_CALIBRATION_SEED = 1234  # the lab's calibration seed
LAB_INT8_FRACTIONS = (0.01, 0.08, 0.3, 0.8)
# Input preprocessing modes, named after keras.applications.imagenet_utils.preprocess_input
# plus `unit` and `raw`; `torch` (the lab's) uses the contract's mean and std.
PREPROCESSING = {
    "torch": "/255, then the model's mean/std (ImageNet by default; the lab's)",
    "tf": "scaled to [-1, 1]",
    "caffe": "RGB to BGR, then the ImageNet BGR means subtracted (0-255 scale)",
    "unit": "/255: [0, 1]",
    "raw": "0-255 as float",
}


class VariantKind(str, Enum):
    NATIVE = "native"
    FP32 = "tflite-fp32"
    INT8 = "tflite-int8"
    IMBINT8 = "tflite-imbint8"

    @property
    def precision(self) -> str:
        """Weights/activations precision, in ai-edge-quantizer's naming."""
        return "wi8_ai8" if self in (VariantKind.INT8, VariantKind.IMBINT8) else "wfp32_afp32"

    @property
    def is_tflite(self) -> bool:
        return self is not VariantKind.NATIVE


@dataclass(frozen=True)
class VariantSpec:
    """One model variant. Its `name` matches the lab's report prefixes."""

    kind: VariantKind
    fraction: float | None = None
    classes: tuple[int, ...] = ()
    seed: int = DEFAULT_CALIBRATION_SEED

    def __post_init__(self) -> None:
        kind = VariantKind(self.kind)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "classes", tuple(sorted({int(c) for c in self.classes})))
        if kind is VariantKind.INT8:
            if self.fraction is None or not 0.0 < float(self.fraction) <= 1.0:
                raise SpecError(
                    f"calibration fraction must be in (0, 1], got {self.fraction!r}"
                )
            object.__setattr__(self, "fraction", float(self.fraction))
        elif self.fraction is not None:
            raise SpecError(f"{kind.value} takes no calibration fraction")
        if kind is VariantKind.IMBINT8:
            if not self.classes:
                raise SpecError("tflite-imbint8 needs at least one calibration class")
            if min(self.classes) < 0:
                raise SpecError(f"class indices must be >= 0, got {self.classes}")
        elif self.classes:
            raise SpecError(f"{kind.value} takes no calibration classes")

    @classmethod
    def native(cls) -> VariantSpec:
        return cls(VariantKind.NATIVE)

    @classmethod
    def fp32(cls) -> VariantSpec:
        return cls(VariantKind.FP32)

    @classmethod
    def int8(cls, fraction: float, seed: int = DEFAULT_CALIBRATION_SEED) -> VariantSpec:
        return cls(VariantKind.INT8, fraction=fraction, seed=seed)

    @classmethod
    def imbint8(cls, classes: tuple[int, ...] = LAB_IMBALANCED_CLASSES) -> VariantSpec:
        return cls(VariantKind.IMBINT8, classes=tuple(classes))

    @property
    def uses_seed(self) -> bool:
        return self.kind is VariantKind.INT8

    @property
    def name(self) -> str:
        """Readable, unique name: `native`, `tflite-int8-0.08`, `tflite-imbint8-c3+5`..."""
        if self.kind is VariantKind.INT8:
            name = f"{self.kind.value}-{self.fraction:g}"
            return name if self.seed == DEFAULT_CALIBRATION_SEED else f"{name}-s{self.seed}"
        if self.kind is VariantKind.IMBINT8:
            if self.classes == LAB_IMBALANCED_CLASSES:
                return self.kind.value
            return f"{self.kind.value}-c" + "+".join(str(c) for c in self.classes)
        return self.kind.value

    def describe(self, class_names: tuple[str, ...] | list[str] = ()) -> str:
        """One line for people: what is quantized and what calibrated it."""
        if self.kind is VariantKind.NATIVE:
            return "Keras model, float32 (reference)"
        if self.kind is VariantKind.FP32:
            return "TFLite, float32 weights and activations, no optimization"
        if self.kind is VariantKind.INT8:
            return (
                f"TFLite full INT8, calibrated on {self.fraction:.0%} of trainval "
                f"(stratified, seed {self.seed})"
            )
        names = [
            class_names[c] if c < len(class_names) else str(c) for c in self.classes
        ]
        return f"TFLite full INT8, calibrated only on trainval images of {', '.join(names)}"

    @classmethod
    def from_name(cls, name: str) -> VariantSpec:
        """Parse a name produced by `name` (the lab's task names included)."""
        text = name.strip()
        if text == VariantKind.NATIVE.value:
            return cls.native()
        if text == VariantKind.FP32.value:
            return cls.fp32()
        if text == VariantKind.IMBINT8.value:
            return cls.imbint8()
        m = re.fullmatch(r"tflite-int8-([0-9.eE+-]+?)(?:-s(\d+))?", text)
        if m:
            try:
                fraction = float(m.group(1))
            except ValueError:
                raise SpecError(f"bad calibration fraction in variant name {name!r}") from None
            seed = int(m.group(2)) if m.group(2) else DEFAULT_CALIBRATION_SEED
            return cls.int8(fraction, seed)
        m = re.fullmatch(r"tflite-imbint8-c(\d+(?:\+\d+)*)", text)
        if m:
            return cls.imbint8(tuple(int(c) for c in m.group(1).split("+")))
        raise SpecError(
            f"unknown variant {name!r}: expected native, tflite-fp32, tflite-int8-<fraction>, "
            "tflite-imbint8 or tflite-imbint8-c<i>+<j>"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "fraction": self.fraction,
            "classes": list(self.classes),
            "seed": self.seed,
            "name": self.name,
            "precision": self.kind.precision,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariantSpec:
        return cls(
            VariantKind(data["kind"]),
            fraction=data.get("fraction"),
            classes=tuple(data.get("classes") or ()),
            seed=int(data.get("seed", DEFAULT_CALIBRATION_SEED)),
        )


def lab_tasks() -> list[VariantSpec]:
    """The lab's standard task set, in the lab's order."""
    return [
        VariantSpec.native(),
        VariantSpec.fp32(),
        *(VariantSpec.int8(f) for f in LAB_INT8_FRACTIONS),
        VariantSpec.imbint8(),
    ]


def parse_tasks(tasks: list[str]) -> list[VariantSpec]:
    """Expand the lab's `--tasks` words (`all`, `tflite-int8-all`, names) into specs."""
    specs: list[VariantSpec] = []
    for task in tasks:
        if task == "all":
            expanded = lab_tasks()
        elif task == "tflite-int8-all":
            expanded = [VariantSpec.int8(f) for f in LAB_INT8_FRACTIONS]
        else:
            expanded = [VariantSpec.from_name(task)]
        specs.extend(s for s in expanded if s not in specs)
    return specs


@dataclass(frozen=True)
class ModelContract:
    """What a model expects: input size, normalisation, class names.

    Read from the sidecar JSON next to the model (`model.keras` -> `model.json`);
    without one, the lab's values (224x224, ImageNet mean/std) apply.
    """

    input_size: tuple[int, int] = (224, 224)  # (height, width)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    class_names: tuple[str, ...] = ()
    synthetic: bool = False
    preprocessing: str = "torch"
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.preprocessing not in PREPROCESSING:
            raise ModelError(f"unknown preprocessing {self.preprocessing!r}: expected one of "
                             f"{', '.join(PREPROCESSING)}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        data["class_names"] = list(self.class_names)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelContract:
        size = data.get("input_size", (224, 224))
        if isinstance(size, int):
            size = (size, size)
        return cls(
            input_size=(int(size[0]), int(size[1])),
            mean=tuple(float(v) for v in data.get("mean", IMAGENET_MEAN)),
            std=tuple(float(v) for v in data.get("std", IMAGENET_STD)),
            class_names=tuple(data.get("class_names", ())),
            synthetic=bool(data.get("synthetic", False)),
            preprocessing=str(data.get("preprocessing", "torch")),
            info=dict(data.get("info", {})),
        )


def sidecar_path(model_path: Path) -> Path:
    return Path(model_path).with_suffix(".json")


def load_contract(model_path: Path) -> ModelContract:
    """The model's contract from its sidecar JSON, or the lab's defaults."""
    path = sidecar_path(model_path)
    if not path.exists():
        return ModelContract()
    try:
        return ModelContract.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ModelError(f"{path}: malformed model sidecar JSON ({exc})") from exc


def save_contract(model_path: Path, contract: ModelContract) -> Path:
    path = sidecar_path(model_path)
    path.write_text(json.dumps(contract.to_dict(), indent=2) + "\n")
    return path

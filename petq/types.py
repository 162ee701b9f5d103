"""Frozen, hashable types shared by every stage: variant specs and model contracts."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from petq.errors import ModelError, SpecError, TuneError

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


class Backend(str, Enum):
    """What makes a variant: the source Keras model itself, a source .tflite file as it is,
    TFLite's converter, or AI Edge Quantizer."""

    KERAS = "keras"
    SOURCE = "source"
    TFLITE = "tflite"
    AEQ = "aeq"


class Mode(str, Enum):
    """How a recipe quantizes (AI Edge Quantizer's vocabulary)."""

    FLOAT = "float"  # nothing quantized
    FLOAT16 = "float16"  # weights stored as float16
    DYNAMIC = "dynamic"  # int weights; activations quantized on the fly at run time
    WEIGHT_ONLY = "weight_only"  # int weights dequantized before float compute
    STATIC = "static"  # int weights and activations: needs calibration data


IO_TYPES = ("float", "int8", "int16", "uint8")


class Stage(str, Enum):
    """A step of work that reports progress as `progress(stage, done, total)`: the value is
    what the library passes, the label what the CLI's bars and the dashboard's job panel
    show (written here once). `counted` steps show `done/total`; the others are one step."""

    label: str
    counted: bool

    def __new__(cls, value: str, label: str, counted: bool = True) -> Stage:
        member = str.__new__(cls, value)
        member._value_ = value
        member.label = label
        member.counted = counted
        return member

    WAITING = "waiting", "waiting for another job's worker (one per cache)", False
    START = "start", "starting", False
    DECODE = "decode", "decoding images"
    CALIBRATE = "calibrate", "calibrating"
    CONVERT = "convert", "converting", False
    EVALUATE = "evaluate", "evaluating"
    LATENCY = "latency", "measuring latency", False
    FIGURES = "figures", "drawing the confusion matrix", False
    TIMING = "timing", "timing against the reference (interleaved)", False
    STATISTICS = "statistics", "paired statistics against the reference", False
    LAYERS = "layers", "per-layer statistics", False
    RAY = "ray", "tasks finished on Ray"
    CANDIDATES = "candidates", "candidates built"
    CELLS = "cells", "curve cells finished"
    PROFILE = "profile", "profiling calibration images"

    @classmethod
    def label_of(cls, value: str) -> str:
        """The label of a stage's value; a value no member has (a caller's own step) as is."""
        try:
            return cls(value).label
        except ValueError:
            return value



@dataclass(frozen=True)
class Recipe:
    """How one variant is quantized, as data. `petq.convert` is the one place that turns it
    into a converter configuration or an AI Edge Quantizer recipe.

    `stem` and `tag` make the variant name: `<stem>[-<calibration>][-s<seed>][-<tag>]`.
    """

    stem: str
    backend: Backend
    mode: Mode
    weights: str  # "fp32", "f16", "i8", "i4"
    activations: str  # "fp32", "i8", "i16"
    per_channel: bool = True
    io: str = "float"  # the model's input/output tensor type
    tag: str = ""
    summary: str = ""  # one plain line: what is quantized and what it needs

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", Backend(self.backend))
        object.__setattr__(self, "mode", Mode(self.mode))
        if self.io not in IO_TYPES:
            raise SpecError(f"recipe {self.stem}: io must be one of {IO_TYPES}, got {self.io!r}")

    @property
    def key(self) -> str:
        """Unique recipe id: the stem plus the tag (`tflite-int8-pertensor`)."""
        return f"{self.stem}-{self.tag}" if self.tag else self.stem

    @property
    def scheme(self) -> str:
        """Weights/activations precision, AI Edge Quantizer style: `wi8_ai8`, `wf16_afp32`
        (`read from the file` for the registry's `source`, before a file is read)."""
        if not self.weights:
            return "read from the file"
        return f"w{self.weights}_a{self.activations}"

    @property
    def calibrates(self) -> bool:
        """Needs calibration images to be made (a source file was calibrated already)."""
        return self.mode is Mode.STATIC and self.backend is not Backend.SOURCE

    @property
    def quantized(self) -> bool:
        return self.mode is not Mode.FLOAT

    def to_dict(self) -> dict[str, Any]:
        """What makes the artifact (cache keys use it); the summary is prose, left out."""
        data = asdict(self)
        data.update(backend=self.backend.value, mode=self.mode.value)
        del data["summary"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        recipe = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        known = RECIPES.get(recipe.key)
        if known is not None and known.to_dict() == recipe.to_dict():
            return known
        if recipe.backend is Backend.SOURCE and recipe.weights:  # a file's, read earlier
            return source_recipe(recipe.mode, recipe.weights, recipe.activations, recipe.io,
                                 recipe.per_channel)
        return recipe


def source_recipe(mode: Mode, weights: str, activations: str, io: str = "float",
                  per_channel: bool = True) -> Recipe:
    """The `source` recipe of a .tflite file as it is, with the precision read from its
    tensors (`petq.runtime.read_source_recipe`): its scheme is the file's own."""
    mode = Mode(mode)
    what = {Mode.FLOAT: "float32 throughout", Mode.FLOAT16: "float16 weights, float compute",
            Mode.DYNAMIC: "integer weights, activations quantized at run time",
            Mode.WEIGHT_ONLY: "integer weights dequantized for float compute",
            Mode.STATIC: "integer weights and activations"}[mode]
    io_text = "float" if io == "float" else io
    return Recipe("source", Backend.SOURCE, mode, weights, activations, per_channel, io,
                  summary=f"The source .tflite file as it is: {what} (w{weights}_a"
                          f"{activations}, {io_text} input and output, read from its "
                          "tensors); nothing converted.")


def _recipes(*recipes: Recipe) -> dict[str, Recipe]:
    return {r.key: r for r in recipes}


RECIPES: dict[str, Recipe] = _recipes(
    Recipe("native", Backend.KERAS, Mode.FLOAT, "fp32", "fp32",
           summary="The Keras model itself, float32: the reference."),
    # a .tflite source model run as it is; its precision is read from the file
    # (Workspace.source_recipe), so weights and activations are left blank here
    Recipe("source", Backend.SOURCE, Mode.FLOAT, "", "",
           summary="A .tflite source model as it is, in its own scheme (read from its "
                   "tensors: an already-quantized file stays quantized); nothing converted."),
    Recipe("tflite-fp32", Backend.TFLITE, Mode.FLOAT, "fp32", "fp32",
           summary="TFLite converter, float32 weights and activations, no optimization."),
    Recipe("tflite-fp16", Backend.TFLITE, Mode.FLOAT16, "f16", "fp32",
           summary="TFLite converter, float16 weights (half the size), float compute; "
                   "no calibration."),
    Recipe("tflite-dynamic", Backend.TFLITE, Mode.DYNAMIC, "i8", "fp32",
           summary="TFLite converter dynamic range: int8 weights, activations quantized at "
                   "run time; no calibration."),
    Recipe("tflite-int8", Backend.TFLITE, Mode.STATIC, "i8", "i8", io="int8",
           summary="TFLite converter full INT8: int8 weights (per channel) and activations, "
                   "int8 input and output; needs calibration images."),
    Recipe("tflite-int8", Backend.TFLITE, Mode.STATIC, "i8", "i8", per_channel=False,
           io="int8", tag="pertensor",
           summary="Full INT8 with one scale per weight tensor (older accelerators need it); "
                   "needs calibration images."),
    Recipe("tflite-int8", Backend.TFLITE, Mode.STATIC, "i8", "i8", io="float", tag="floatio",
           summary="Full INT8 inside, float32 input and output (a drop-in for the float "
                   "model); needs calibration images."),
    Recipe("tflite-int16x8", Backend.TFLITE, Mode.STATIC, "i8", "i16", io="int16",
           summary="TFLite converter 16x8: int8 weights, int16 activations and I/O; needs "
                   "calibration images. Slow on x86 CPUs: LiteRT runs 16-bit activations on "
                   "reference kernels (demo: 115 ms per image against 0.7 ms for int8)."),
    Recipe("aeq-wi8-afp32", Backend.AEQ, Mode.DYNAMIC, "i8", "fp32",
           summary="AI Edge Quantizer dynamic_wi8_afp32: int8 weights per channel, "
                   "activations quantized at run time; no calibration."),
    Recipe("aeq-wi4-afp32", Backend.AEQ, Mode.WEIGHT_ONLY, "i4", "fp32",
           summary="AI Edge Quantizer weight_only_wi4_afp32: int4 weights, dequantized for "
                   "float compute on every run (smallest file, slower: demo 14 ms against "
                   "2.5 ms for FP32); no calibration."),
    Recipe("aeq-wi8-ai8", Backend.AEQ, Mode.STATIC, "i8", "i8",
           summary="AI Edge Quantizer static_wi8_ai8: int8 weights and activations, float "
                   "I/O; needs calibration images (fast calibration)."),
    Recipe("aeq-wi8-ai16", Backend.AEQ, Mode.STATIC, "i8", "i16",
           summary="AI Edge Quantizer static_wi8_ai16: int8 weights, int16 activations, "
                   "float I/O; needs calibration images. Slow on x86 CPUs: reference kernels "
                   "for 16-bit activations (demo: 200 ms per image)."),
)
LAB_IMBALANCED_STEM = "tflite-imbint8"  # the lab's name for tflite-int8 calibrated on classes


@dataclass(frozen=True)
class Calibration:
    """Where a static recipe's calibration images come from (trainval only): nothing, a
    stratified seeded fraction, a stratified seeded number of images (`count`), or every
    image of chosen classes; `exclude` drops chosen images from that set (a new source:
    its name and cache key say so)."""

    fraction: float | None = None
    classes: tuple[int, ...] = ()
    seed: int = DEFAULT_CALIBRATION_SEED
    count: int | None = None
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(sorted({int(c) for c in self.classes})))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "exclude", tuple(sorted({str(i) for i in self.exclude})))
        if self.fraction is not None:
            try:
                fraction = float(self.fraction)
            except (TypeError, ValueError):
                raise SpecError(f"calibration fraction must be a number, got "
                                f"{self.fraction!r}") from None
            if not 0.0 < fraction <= 1.0:
                raise SpecError(f"calibration fraction must be in (0, 1], got {self.fraction!r}")
            object.__setattr__(self, "fraction", fraction)
            if self.classes:
                raise SpecError("calibrate on a fraction or on classes, not both")
        if self.count is not None:
            try:
                whole = not isinstance(self.count, bool) and float(self.count).is_integer()
            except (TypeError, ValueError):
                whole = False
            if not whole or int(float(self.count)) < 1:
                raise SpecError(f"calibration image count must be a whole number >= 1, got "
                                f"{self.count!r}")
            object.__setattr__(self, "count", int(float(self.count)))
            if self.fraction is not None or self.classes:
                raise SpecError("calibrate on a fraction, a number of images or classes: "
                                "one of them")
        if self.classes and min(self.classes) < 0:
            raise SpecError(f"class indices must be >= 0, got {self.classes}")
        if self.exclude and self.kind == "none":
            raise SpecError("images can be excluded only from a calibration set")

    @property
    def kind(self) -> str:
        if self.fraction is not None:
            return "fraction"
        if self.count is not None:
            return "count"
        return "classes" if self.classes else "none"

    @property
    def seeded(self) -> bool:
        """Whether the seed picks the images (fractions and counts)."""
        return self.kind in ("fraction", "count")

    @property
    def exclusion_token(self) -> str:
        """`ex<n>-<6 hex>`: how many images are excluded and a digest of which (names stay
        short and unique), or `` with none."""
        if not self.exclude:
            return ""
        digest = hashlib.sha256("\n".join(self.exclude).encode()).hexdigest()[:6]
        return f"ex{len(self.exclude)}-{digest}"

    @property
    def token(self) -> str:
        """The calibration's part of a variant name: `0.08`, `n16`, `c3+5`, or ``."""
        if self.fraction is not None:
            return f"{self.fraction:g}"
        if self.count is not None:
            return f"n{self.count}"
        return "c" + "+".join(str(c) for c in self.classes) if self.classes else ""

    def to_dict(self) -> dict[str, Any]:
        """Cache keys use it: a count and exclusions appear only when set, so the keys of
        fraction and class calibrations are what they were before these existed."""
        data: dict[str, Any] = {"fraction": self.fraction, "classes": list(self.classes),
                                "seed": self.seed}
        if self.count is not None:
            data["count"] = self.count
        if self.exclude:
            data["exclude"] = list(self.exclude)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Calibration:
        data = data or {}
        return cls(data.get("fraction"), tuple(data.get("classes") or ()),
                   int(data.get("seed", DEFAULT_CALIBRATION_SEED)), data.get("count"),
                   tuple(data.get("exclude") or ()))


NO_CALIBRATION = Calibration()
_NAME_TAIL = re.compile(
    r"(?:-(?P<fraction>[0-9.]+(?:e[-+]?\d+)?)|-n(?P<count>\d+)|-c(?P<classes>\d+(?:\+\d+)*))?"
    r"(?:-s(?P<seed>\d+))?(?P<exclude>-ex\d+-[0-9a-f]{6})?(?:-(?P<tag>[a-z]+))?"
    r"(?:-keep(?P<keep>\d+))?"
)


@dataclass(frozen=True)
class VariantSpec:
    """One model variant: a recipe, its calibration source, and the number of worst layers
    kept in float (selective quantization). Its `name` matches the lab's report prefixes."""

    recipe: Recipe
    calibration: Calibration = NO_CALIBRATION
    keep_float: int = 0

    def __post_init__(self) -> None:
        recipe = self.recipe
        if isinstance(recipe, str):
            if recipe not in RECIPES:
                raise SpecError(f"unknown recipe {recipe!r}: expected one of "
                                f"{', '.join(RECIPES)}")
            recipe = RECIPES[recipe]
            object.__setattr__(self, "recipe", recipe)
        if recipe.calibrates and self.calibration.kind == "none":
            raise SpecError(f"{recipe.key} needs calibration: a fraction of trainval (e.g. "
                            f"{recipe.stem}-0.08) or breeds")
        if not recipe.calibrates and self.calibration.kind != "none":
            raise SpecError(f"{recipe.key} takes no calibration (it is not a static recipe)")
        if self.keep_float < 0 or (self.keep_float and not recipe.calibrates):
            raise SpecError(f"{recipe.key}: keeping layers in float needs a static recipe")

    # ---------------------------------------------------------------- constructors

    @classmethod
    def of(cls, recipe: str | Recipe, fraction: float | None = None,
           classes: tuple[int, ...] = (), seed: int = DEFAULT_CALIBRATION_SEED,
           keep_float: int = 0, count: int | None = None,
           exclude: tuple[str, ...] = ()) -> VariantSpec:
        return cls(recipe, Calibration(fraction, tuple(classes), seed, count, tuple(exclude)),
                   keep_float)

    @classmethod
    def native(cls) -> VariantSpec:
        return cls.of("native")

    @classmethod
    def fp32(cls) -> VariantSpec:
        return cls.of("tflite-fp32")

    @classmethod
    def int8(cls, fraction: float, seed: int = DEFAULT_CALIBRATION_SEED) -> VariantSpec:
        return cls.of("tflite-int8", fraction, seed=seed)

    @classmethod
    def imbint8(cls, classes: tuple[int, ...] = LAB_IMBALANCED_CLASSES) -> VariantSpec:
        if not classes:
            raise SpecError("tflite-imbint8 needs at least one calibration class")
        return cls.of("tflite-int8", classes=tuple(classes))

    def with_calibration(self, calibration: Calibration) -> VariantSpec:
        return VariantSpec(self.recipe, calibration, self.keep_float)

    # ---------------------------------------------------------------- views

    @property
    def fraction(self) -> float | None:
        return self.calibration.fraction

    @property
    def classes(self) -> tuple[int, ...]:
        return self.calibration.classes

    @property
    def seed(self) -> int:
        return self.calibration.seed

    @property
    def uses_seed(self) -> bool:
        return self.calibration.seeded

    @property
    def is_native(self) -> bool:
        return self.recipe.backend is Backend.KERAS

    @property
    def reference(self) -> VariantSpec:
        """What this variant is compared against (reports, speed sentences): the FP32
        .tflite; for FP32 itself, the native model."""
        return VariantSpec.native() if self == VariantSpec.fp32() else VariantSpec.fp32()

    @property
    def lab_int8(self) -> bool:
        """The lab's INT8 recipe (`tflite-int8-<fraction>` or `tflite-imbint8`)."""
        return self.recipe.key == "tflite-int8"

    @property
    def name(self) -> str:
        """Readable, unique: `native`, `tflite-int8-0.08`, `tflite-imbint8-c3+5`,
        `aeq-wi8-ai8-0.3-s7`, `tflite-int8-0.8-pertensor`, `tflite-int8-0.8-keep3`."""
        stem, token = self.recipe.stem, self.calibration.token
        if stem == "tflite-int8" and self.calibration.kind == "classes":
            stem = LAB_IMBALANCED_STEM
            if self.classes == LAB_IMBALANCED_CLASSES:
                token = ""
        parts = [stem]
        if token:
            parts.append(token)
        if self.uses_seed and self.seed != DEFAULT_CALIBRATION_SEED:
            parts.append(f"s{self.seed}")
        if self.calibration.exclude:
            parts.append(self.calibration.exclusion_token)
        if self.recipe.tag:
            parts.append(self.recipe.tag)
        if self.keep_float:
            parts.append(f"keep{self.keep_float}")
        return "-".join(parts)

    def describe(self, class_names: tuple[str, ...] | list[str] = ()) -> str:
        """One line for people: what is quantized and what calibrated it."""
        text = self.recipe.summary
        cal = self.calibration
        if cal.kind == "fraction":
            text += f" Calibrated on {cal.fraction:.0%} of trainval (stratified, seed {cal.seed})."
        elif cal.kind == "count":
            text += f" Calibrated on {cal.count} trainval images (stratified, seed {cal.seed})."
        elif cal.kind == "classes":
            names = [class_names[c] if c < len(class_names) else str(c) for c in cal.classes]
            text += f" Calibrated only on trainval images of {', '.join(names)}."
        if cal.exclude:
            text += (f" Without {len(cal.exclude)} chosen image(s): "
                     f"{', '.join(cal.exclude[:5])}{'...' if len(cal.exclude) > 5 else ''}.")
        if self.keep_float:
            text += f" The {self.keep_float} layers with the largest quantization error stay float."
        return text

    @classmethod
    def from_name(cls, name: str) -> VariantSpec:
        """Parse a name produced by `name` (the lab's task names included)."""
        text = name.strip()
        stems = sorted({r.stem for r in RECIPES.values()} | {LAB_IMBALANCED_STEM},
                       key=len, reverse=True)
        for stem in stems:
            if text != stem and not text.startswith(stem + "-"):
                continue
            m = _NAME_TAIL.fullmatch(text[len(stem):])
            if not m:
                continue
            recipe_stem = "tflite-int8" if stem == LAB_IMBALANCED_STEM else stem
            key = f"{recipe_stem}-{m['tag']}" if m["tag"] else recipe_stem
            if key not in RECIPES:
                continue
            classes = tuple(int(c) for c in m["classes"].split("+")) if m["classes"] else ()
            if stem == LAB_IMBALANCED_STEM:
                if m["fraction"]:
                    continue
                classes = classes or LAB_IMBALANCED_CLASSES
            elif classes and recipe_stem == "tflite-int8":
                continue  # the lab's spelling is tflite-imbint8-c<i>
            seed = int(m["seed"]) if m["seed"] else DEFAULT_CALIBRATION_SEED
            if m["seed"] and not (m["fraction"] or m["count"]):
                continue
            if m["count"] and stem == LAB_IMBALANCED_STEM:
                continue
            if m["exclude"]:
                raise SpecError(f"{text}: a name with -ex<n>-<digest> does not list the images "
                                "it excludes; give them as --exclude-images or a file")
            fraction = float(m["fraction"]) if m["fraction"] else None
            spec = cls.of(key, fraction, classes, seed, int(m["keep"] or 0),
                          count=int(m["count"]) if m["count"] else None)
            if spec.name != text and VariantSpec.from_name(spec.name) != spec:
                continue
            return spec
        raise SpecError(
            f"unknown variant {name!r}: expected native, tflite-fp32, tflite-int8-<fraction>, "
            "tflite-imbint8[-c<i>+<j>], or a recipe from `petq recipes` "
            "(e.g. aeq-wi8-ai8-0.08, tflite-int8-0.3-pertensor)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "recipe": self.recipe.to_dict(),
            "calibration": self.calibration.to_dict(),
            "keep_float": self.keep_float,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariantSpec:
        return cls(Recipe.from_dict(data["recipe"]), Calibration.from_dict(data.get("calibration")),
                   int(data.get("keep_float", 0)))


def lab_tasks() -> list[VariantSpec]:
    """The lab's standard task set, in the lab's order."""
    return [
        VariantSpec.native(),
        VariantSpec.fp32(),
        *(VariantSpec.int8(f) for f in LAB_INT8_FRACTIONS),
        VariantSpec.imbint8(),
    ]


def parse_tasks(tasks: list[str]) -> list[VariantSpec]:
    """Expand `--tasks` words (`all`, `tflite-int8-all`, `recipes`, names) into specs.

    `recipes` is every recipe once: calibrating ones on the lab's 0.08 fraction.
    """
    specs: list[VariantSpec] = []
    for task in tasks:
        if task == "all":
            expanded = lab_tasks()
        elif task == "tflite-int8-all":
            expanded = [VariantSpec.int8(f) for f in LAB_INT8_FRACTIONS]
        elif task == "recipes":  # what converts: not `source`, the file itself
            expanded = [VariantSpec.of(r, 0.08 if r.calibrates else None)
                        for r in RECIPES.values() if r.backend is not Backend.SOURCE]
        else:
            expanded = [VariantSpec.from_name(task)]
        specs.extend(s for s in expanded if s not in specs)
    return specs


@dataclass(frozen=True)
class ModelContract:
    """What a model expects: input size, normalisation, class names.

    Read from the sidecar JSON next to the model (`model.keras` -> `model.json`);
    without one, the lab's values (224x224, ImageNet mean/std) apply. `channels`: 3 (RGB)
    or 1 (grayscale: images are decoded to one channel, and `torch` uses the mean of the
    three ImageNet means and stds unless `mean`/`std` give one value each, as timm does
    for one-channel models).
    """

    input_size: tuple[int, int] = (224, 224)  # (height, width)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    class_names: tuple[str, ...] = ()
    synthetic: bool = False
    preprocessing: str = "torch"
    channels: int = 3
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.preprocessing not in PREPROCESSING:
            raise ModelError(f"unknown preprocessing {self.preprocessing!r}: expected one of "
                             f"{', '.join(PREPROCESSING)}")
        if self.channels not in (1, 3):
            raise ModelError(f"a model input has 1 (grayscale) or 3 (RGB) channels, got "
                             f"{self.channels}")
        if self.channels == 1 and self.preprocessing == "caffe":
            raise ModelError("caffe preprocessing reorders RGB to BGR: a one-channel "
                             "(grayscale) model has no colour order; choose torch, tf, unit "
                             "or raw")
        for name in ("mean", "std"):
            if len(getattr(self, name)) not in ({3} if self.channels == 3 else {1, 3}):
                raise ModelError(f"{name} needs {self.channels} value(s) for a "
                                 f"{self.channels}-channel model, got {getattr(self, name)}")

    @property
    def channel_mean(self) -> tuple[float, ...]:
        """`mean` per input channel (one for a grayscale model)."""
        return _per_channel(self.mean, self.channels)

    @property
    def channel_std(self) -> tuple[float, ...]:
        return _per_channel(self.std, self.channels)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        data["class_names"] = list(self.class_names)
        if self.channels == 3:  # the default: RGB contracts keep their cache keys
            del data["channels"]
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
            channels=int(data.get("channels", 3)),
            info=dict(data.get("info", {})),
        )


def _per_channel(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    if len(values) == channels:
        return tuple(values)
    return (sum(values) / len(values),) if channels == 1 else tuple(values) * channels


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


# ---------------------------------------------------------------- what a job runs


class JobKind(str, Enum):
    """What a background job (petq.jobs) runs: variants, a tune, a calibration curve or a
    range profile."""

    VARIANTS = "variants"  # convert and evaluate a list of variant specs
    TUNE = "tune"  # petq.tune.tune on a TuneConfig
    CURVE = "curve"  # petq.curve.calibration_curve on a CurveConfig
    PROFILE = "profile"  # the range profile of a ProfileConfig's calibration images


TUNE_METRICS = ("accuracy", "g-mean")
TUNE_OBJECTIVES = ("size", "latency")
DEFAULT_TUNE_BUDGET = 24
DEFAULT_CERTIFY_TOP = 3


@dataclass(frozen=True)
class TuneConfig:
    """What a tune (petq.tune) is held to. `guard_breeds`: None for no guard, () for every
    breed, else the class indices guarded."""

    max_drop: float
    relative: bool = False
    metric: str = "accuracy"
    confidence: float = 0.95
    objective: str = "size"
    guard_breeds: tuple[int, ...] | None = None
    budget: int = DEFAULT_TUNE_BUDGET
    seed: int = 0
    certify_top: int = DEFAULT_CERTIFY_TOP
    certification_fraction: float = 0.5

    def __post_init__(self) -> None:
        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                raise TuneError(f"{name.replace('_', ' ')} must be a number, got {value!r}")
            return float(value)

        if not 0 < number("max_drop") < 1:
            raise TuneError(f"--max-drop must be in (0, 1) (0.01 = one point), got "
                            f"{self.max_drop}")
        if not 0.5 < number("confidence") < 1:
            raise TuneError(f"--confidence must be in (0.5, 1), got {self.confidence}")
        if not 0 < number("certification_fraction") < 1:
            raise TuneError(f"--certification-fraction must be in (0, 1), got "
                            f"{self.certification_fraction}")
        if self.metric not in TUNE_METRICS:
            raise TuneError(f"--metric must be one of {', '.join(TUNE_METRICS)}, got "
                            f"{self.metric!r}")
        if self.objective not in TUNE_OBJECTIVES:
            raise TuneError(f"--objective must be one of {', '.join(TUNE_OBJECTIVES)}, got "
                            f"{self.objective!r}")
        for name in ("budget", "certify_top"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TuneError(f"--{name.replace('_', '-')} must be a whole number >= 1, "
                                f"got {value!r}")
        if self.guard_breeds is not None:
            object.__setattr__(self, "guard_breeds",
                               tuple(sorted({int(c) for c in self.guard_breeds})))

    @property
    def test_confidence(self) -> float:
        """The level of each certification test (Bonferroni over `certify_top`)."""
        return 1 - (1 - self.confidence) / self.certify_top

    def to_dict(self) -> dict[str, Any]:
        return {"max_drop": self.max_drop, "relative": self.relative, "metric": self.metric,
                "confidence": self.confidence, "objective": self.objective,
                "guard_breeds": None if self.guard_breeds is None else list(self.guard_breeds),
                "budget": self.budget, "seed": self.seed, "certify_top": self.certify_top,
                "certification_fraction": self.certification_fraction,
                "test_confidence": self.test_confidence}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TuneConfig:
        names = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in names}
        if values.get("guard_breeds") is not None:
            values["guard_breeds"] = tuple(values["guard_breeds"])
        return cls(**values)


CURVE_ALL = "all"  # the calibration curve's size word for all of trainval
DEFAULT_CURVE_SIZES = ("1", "4", "16", "64", "256", CURVE_ALL)
DEFAULT_CURVE_SEEDS = (DEFAULT_CALIBRATION_SEED, 1, 2)
MAX_CALIBRATION_SEED = 2**32 - 1  # scikit-learn's random_state range


def parse_sizes(sizes: Any) -> list[int | str]:
    """Calibration curve sizes: whole numbers >= 1 and `all`, deduplicated, ascending,
    `all` last (added when missing: every size is compared with it)."""
    out: set[int] = set()
    for word in sizes:
        text = str(word).strip().lower()
        if text == CURVE_ALL:
            continue
        try:
            number = float(text)
        except ValueError:
            raise SpecError(f"calibration size {word!r}: expected a number of images or "
                            f"`{CURVE_ALL}`") from None
        if not number.is_integer() or number < 1:
            raise SpecError(f"calibration size {word!r}: expected a whole number >= 1")
        out.add(int(number))
    return [*sorted(out), CURVE_ALL]


@dataclass(frozen=True)
class CurveConfig:
    """A calibration curve (petq.curve): static recipes, calibration sizes (None: the
    defaults trainval holds), seeds per size, trainval images left out of every cell.
    Checked here as far as it can be without the dataset (sizes, seeds, recipes)."""

    recipes: tuple[str, ...] = ("tflite-int8",)
    sizes: tuple[str, ...] | None = None
    seeds: tuple[int, ...] = DEFAULT_CURVE_SEEDS
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        recipes = tuple(dict.fromkeys(str(r).strip() for r in self.recipes))
        if not recipes:
            raise SpecError("name at least one static recipe (`petq recipes`)")
        for key in recipes:
            if key not in RECIPES:
                raise SpecError(f"unknown recipe {key!r}: expected one of {', '.join(RECIPES)}")
            if not RECIPES[key].calibrates:
                raise SpecError(f"{key} takes no calibration: a curve needs a static recipe "
                                "(tflite-int8, aeq-wi8-ai8, ...)")
        seeds = tuple(dict.fromkeys(self.seeds))
        if not seeds:
            raise SpecError("give at least one calibration seed")
        for seed in seeds:
            if isinstance(seed, bool) or not isinstance(seed, int) or not (
                    0 <= seed <= MAX_CALIBRATION_SEED):
                raise SpecError(f"calibration seed must be an integer in "
                                f"0..{MAX_CALIBRATION_SEED}, got {seed!r}")
        sizes = None
        if self.sizes is not None:
            sizes = tuple(str(s) for s in parse_sizes(self.sizes))
        object.__setattr__(self, "recipes", recipes)
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "exclude", tuple(dict.fromkeys(self.exclude)))

    def size_list(self, trainval: int) -> list[int | str]:
        """The sizes to run: the given ones, else the defaults `trainval` images hold."""
        if self.sizes is not None:
            return parse_sizes(self.sizes)
        return [s for s in parse_sizes(DEFAULT_CURVE_SIZES) if s == CURVE_ALL or s <= trainval]

    def to_dict(self) -> dict[str, Any]:
        return {"recipes": list(self.recipes),
                "sizes": None if self.sizes is None else list(self.sizes),
                "seeds": list(self.seeds), "exclude": list(self.exclude)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CurveConfig:
        sizes = data.get("sizes")
        return cls(recipes=tuple(data.get("recipes") or ()),
                   sizes=None if sizes is None else tuple(sizes),
                   seeds=tuple(data.get("seeds") or ()), exclude=tuple(data.get("exclude") or ()))


@dataclass(frozen=True)
class ProfileConfig:
    """A range profile (petq.profile) of one static spec's calibration images: each image
    through the recipe's calibrator once, nothing converted or evaluated. What the pages
    start before they show the images that set the spec's ranges."""

    spec: VariantSpec

    def __post_init__(self) -> None:
        if not self.spec.recipe.calibrates or self.spec.keep_float:
            raise SpecError(f"{self.spec.name}: only a static recipe without kept layers has a "
                            "range profile")

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProfileConfig:
        return cls(VariantSpec.from_dict(data["spec"]))

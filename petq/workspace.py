"""A workspace ties one source model, one dataset and one cache together.

Every face of petq (CLI, dashboard, benchmarks) goes through these calls:
`tflite(spec)` converts once per cache key, `evaluate(spec)` evaluates once
per (variant, test set), and `results()` lists what is cached, cheaply.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, replace
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from petq import __version__ as petq_version
from petq.cache import Cache, Entry, key_of, sha256_file, write_bytes_atomic
from petq.calibration import Profiled
from petq.data import (
    ImageCounts,
    PetDataset,
    Sample,
    Split,
    class_index,
    preprocess,
    stratified_count,
)
from petq.errors import ModelDatasetMismatch, ModelError, PetqError, SpecError
from petq.evaluate import QUIET, compute_metrics, measure_latency, predict_all
from petq.results import Details, Result, top_k
from petq.runtime import (
    KerasRunner,
    LiteRTRunner,
    Runner,
    default_threads,
    model_io,
    read_source_recipe,
)
from petq.stats import (
    ClassChange,
    Interval,
    LatencyComparison,
    PairedComparison,
    class_changes_of,
    compare_details,
    interleaved_latency,
)
from petq.store import DecodedStore, load_store
from petq.types import (
    RECIPES,
    Backend,
    Calibration,
    ModelContract,
    Recipe,
    VariantSpec,
    load_contract,
    sidecar_path,
)

RESULT_VERSION = 2  # 2: Result records, per-image top-5 kept
EXPORT_FILE = "prepared.tflite"  # a converter recipe's export, as its calibrator takes it
Stage = Callable[[str, int, int], None]  # progress(stage, done, total)


@functools.cache
def _library_versions() -> tuple[tuple[str, str], ...]:
    versions = []
    for package in ("tensorflow", "keras", "ai-edge-litert", "ai-edge-quantizer"):
        try:
            versions.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            versions.append((package, "none"))
    return (*versions, ("petq", petq_version))  # installed or run from a checkout alike


def library_versions() -> dict[str, str]:
    """Versions that change a converted artifact or its numbers (read once per process)."""
    return dict(_library_versions())


def _stage(progress: Stage | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


class Workspace:
    def __init__(
        self,
        model_path: Path | str,
        dataset_root: Path | str,
        cache_root: Path | str = "cache",
        threads: int | None = None,
        preprocessing: str | None = None,
    ):
        self.model_path = Path(model_path)
        if not self.model_path.exists():
            raise ModelError(f"{self.model_path}: model file not found")
        self.dataset = PetDataset.load(dataset_root)
        self.cache = Cache(cache_root)
        self.threads = threads or default_threads()
        self._stores: dict[Split, DecodedStore] = {}
        self._keras: KerasRunner | None = None
        self._calibrations: dict[Calibration, list[Sample]] = {}
        self._shared = Profiled(self.model_path, self.cache, self._profile_identity,
                                self.calibration_ids, self._inputs, self.fp32_tflite,
                                default_threads(),
                                keras_source=self.model_path.suffix != ".tflite",
                                kept=self._kept_export)
        self._test_digests: dict[float, str] = {}
        self._preprocessing_given = bool(preprocessing)
        self.contract_source = "sidecar" if sidecar_path(self.model_path).exists() else "model"
        self.contract = self._resolve_contract(preprocessing)
        self.label_map = self._label_map()

    def _resolve_contract(self, preprocessing: str | None) -> ModelContract:
        """The sidecar's contract; without one, input size and class count from the model
        itself (class names from the dataset) and the preprocessing the user chose."""
        contract = load_contract(self.model_path)
        if self.contract_source == "model":
            info = self.model_info(check_classes=False)
            height, width, channels = (int(d) for d in info["input_shape"])
            names = self.dataset.class_names
            if len(names) > info["num_classes"]:
                raise ModelDatasetMismatch(
                    f"{self.model_path}: the model outputs {info['num_classes']} classes, the "
                    f"dataset at {self.dataset.root} names {len(names)}; write the model's "
                    f"class names in a sidecar JSON, {sidecar_path(self.model_path)}: "
                    '{"class_names": [...], "preprocessing": "torch"}')
            names += tuple(f"class_{i + 1}" for i in range(len(names), info["num_classes"]))
            contract = replace(contract, input_size=(height, width), class_names=names,
                               channels=channels)
        elif not contract.class_names:
            contract = replace(contract, class_names=self.dataset.class_names)
        if preprocessing:
            contract = replace(contract, preprocessing=preprocessing)
        return contract

    def _label_map(self) -> np.ndarray:
        """Dataset label -> the model's class index, matched by breed name (case-insensitive).

        A dataset may list only some of the model's breeds; a breed the model does not
        know is an error naming it."""
        model_index = {name.lower(): i for i, name in enumerate(self.class_names)}
        present = {s.label for s in self.dataset.trainval + self.dataset.test}
        mapping = np.arange(len(self.dataset.class_names), dtype=np.int64)
        for label in sorted(present):
            name = self.dataset.class_names[label]
            if name.lower() not in model_index:
                raise ModelDatasetMismatch(
                    f"{self.model_path}: the dataset at {self.dataset.root} has breed {name!r}, "
                    f"which the model's {len(self.class_names)} classes do not include")
            mapping[label] = model_index[name.lower()]
        return mapping

    def contract_note(self) -> str:
        """Where the input contract came from, in one line for people."""
        c = self.contract
        size = f"{c.input_size[0]}x{c.input_size[1]}"
        if self.contract_source == "sidecar":
            return (f"contract from {sidecar_path(self.model_path).name}: input {size}, "
                    f"{len(c.class_names)} classes, preprocessing {c.preprocessing}")
        return (f"no sidecar beside {self.model_path.name}: input {size} and "
                f"{len(c.class_names)} classes from the model, class names from the dataset "
                f"(CLASS-ID order), preprocessing {c.preprocessing}"
                + ("" if self._preprocessing_given else " (the default; see --preprocessing)"))

    def class_index(self, name_or_index: str | int) -> int:
        """A breed name (case-insensitive) or index in the model's class space."""
        return class_index(self.class_names, name_or_index)

    def label(self, sample: Sample) -> int:
        """A sample's class index in the model's class space."""
        return int(self.label_map[sample.label])

    # ------------------------------------------------------------ identity

    @cached_property
    def model_sha(self) -> str:
        path = self.model_path
        if path.is_dir():  # a SavedModel folder
            digest = hashlib.sha256()
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                digest.update(str(file.relative_to(path)).encode())
                digest.update(sha256_file(file).encode())
            return digest.hexdigest()
        return sha256_file(path)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.contract.class_names

    def model_info(self, check_classes: bool = True) -> dict[str, Any]:
        """Parameter count, input shape, class count and file size of the source model
        (read once, then cached by the model's hash)."""

        def build(tmp: Path) -> dict[str, Any]:
            info = model_io(self.model_path, self._keras.model if self._keras else None)
            (tmp / "info.json").write_text(json.dumps(info))
            return info

        entry, _ = self.cache.get_or_build("models", self.model_sha[:24], build)
        info = {k: entry.manifest[k] for k in ("param_count", "input_shape", "num_classes",
                                              "file_size_bytes")}
        if check_classes and info["num_classes"] != len(self.class_names):
            raise ModelError(
                f"{self.model_path}: the model outputs {info['num_classes']} classes, its "
                f"contract names {len(self.class_names)}")
        channels = info["input_shape"][-1]
        if check_classes and channels != self.contract.channels:
            raise ModelError(
                f"{self.model_path}: the model takes {channels}-channel images, its sidecar "
                f"{sidecar_path(self.model_path)} says {self.contract.channels}: write "
                f'"channels": {channels} in it')
        return info

    def model_info_cached(self) -> bool:
        """Whether this cache has read the model's facts (`model_info`): every evaluation
        does, so a cache that has not has nothing of the model evaluated."""
        return self.cache.get("models", self.model_sha[:24], verify=False) is not None

    # ------------------------------------------------------------ data

    def store(self, split: Split, progress: Stage | None = None) -> DecodedStore:
        """One split's decoded images: trainval calibrates, test evaluates."""
        if split not in self._stores:
            self._stores[split] = load_store(self.dataset, self.contract.input_size,
                                             self.cache, split, _stage(progress, "decode"),
                                             channels=self.contract.channels)
        return self._stores[split]

    def image_counts(self, test_fraction: float = 1.0) -> dict[Split, ImageCounts]:
        """Listed and skipped images of the splits this workspace has opened: the test
        images of `test_fraction`, and all of trainval (calibration picks from it)."""
        listed = {"test": self.dataset.test_samples(test_fraction),
                  "trainval": self.dataset.trainval}
        return {split: ImageCounts.of(listed[split], store.bad)
                for split, store in self._stores.items()}

    def prepare(self, spec: VariantSpec, progress: Stage | None = None,
                calibration_first: bool = False,
                read: Callable[[], dict[str, Any]] | None = None,
                ) -> tuple[dict[str, Any], DecodedStore]:  # fmt: skip
        """The model's facts and the test images' store, before `spec` is evaluated.

        When a store is still to come (a cold run), the model is read in a thread
        (TensorFlow's import alone takes seconds), and for the native variant its runner
        made, while this thread decodes: with `calibration_first`, the trainval images
        first (a converter process waits for them to calibrate: petq.engine), then the
        test images, counted as one "decode" stage. `read`: what reads the model's facts
        instead (petq.engine has its converter process read them).
        """
        splits: list[Split] = ["trainval", "test"] if calibration_first else ["test"]
        missing = [split for split in splits if split not in self._stores]
        if not missing:
            return self.model_info(), self._stores["test"]
        from concurrent.futures import ThreadPoolExecutor

        def read_here() -> dict[str, Any]:
            if spec.is_native:
                self.keras_runner()  # loaded once: model_info reads this one
            return self.model_info()

        total = sum(len(self.dataset.split(split)) for split in missing)
        before = 0  # images of the splits decoded already

        def decoding(stage: str, done: int, _: int) -> None:
            if info.done() and info.exception() is not None:
                raise info.exception()  # a bad model file: say so now, not after decoding
            if progress:
                progress(stage, before + done, total)

        with ThreadPoolExecutor(1, thread_name_prefix="petq-model") as pool:
            info = pool.submit(read or read_here)
            for split in missing:
                self.store(split, decoding)
                before += len(self.dataset.split(split))
            return info.result(), self._stores["test"]

    def calibration_samples(self, spec: VariantSpec) -> list[Sample]:
        """The trainval images that calibrate a static variant (never test images); picked
        once per calibration source (cache keys ask for them often)."""
        if spec.calibration not in self._calibrations:
            self._calibrations[spec.calibration] = self._pick_calibration(spec)
        return self._calibrations[spec.calibration]

    def _stratified_pick(self, spec: VariantSpec) -> list[Sample]:
        """A fraction's or a count's seeded stratified pick of trainval, kept in the cache
        (`picks`) by the split's definition, the pick and scikit-learn's version: the pick
        is scikit-learn's, whose import alone takes seconds, and every cache key of a
        calibrated variant names its images, so a new process (a dashboard's first page)
        reads the picks instead of importing it."""
        cal = spec.calibration
        trainval = self.dataset.trainval
        if cal.kind == "count" and cal.count > len(trainval):
            raise SpecError(f"{spec.name}: {cal.count} calibration images asked for, "
                            f"trainval has {len(trainval)}")
        try:
            sklearn = metadata.version("scikit-learn")
        except metadata.PackageNotFoundError:
            sklearn = "none"
        key = key_of({"split": self.dataset.fingerprint, "fraction": cal.fraction,
                      "count": cal.count, "seed": cal.seed, "scikit-learn": sklearn})
        by_id = {s.image_id: s for s in trainval}
        entry = self.cache.get("picks", key)
        if entry is not None:
            try:
                return [by_id[i] for i in json.loads(entry.file("ids.json").read_text())]
            except (OSError, ValueError, KeyError):
                pass  # unreadable, or of another split: picked again below
        if cal.kind == "fraction":
            samples = self.dataset.calibration_samples(cal.fraction, cal.seed)
        else:
            samples = stratified_count(trainval, cal.count, cal.seed)

        def build(tmp: Path) -> dict[str, Any]:
            (tmp / "ids.json").write_text(json.dumps([s.image_id for s in samples]))
            return {"fraction": cal.fraction, "count": cal.count, "seed": cal.seed,
                    "images": len(samples)}

        try:
            self.cache.get_or_build("picks", key, build)
        except (OSError, PetqError):
            pass  # a read-only or full cache: the pick stands, unkept
        return samples

    def _pick_calibration(self, spec: VariantSpec) -> list[Sample]:
        cal = spec.calibration
        if cal.kind in ("fraction", "count"):
            samples = self._stratified_pick(spec)
        elif cal.kind == "classes":
            for c in spec.classes:
                self.class_index(c)  # raises SpecError when out of range
            wanted = set(spec.classes)
            samples = [s for s in self.dataset.trainval if self.label(s) in wanted]
            missing = sorted(wanted - {self.label(s) for s in samples})
            if missing:  # each chosen breed must calibrate: none is dropped silently
                raise SpecError(f"{spec.name}: " + "; ".join(
                    f"breed {c} ({self.class_names[c]}) has no trainval images here"
                    for c in missing) + "; choose breeds with --calibration-classes")
        else:
            return []
        if cal.exclude:
            known = {s.image_id for s in self.dataset.trainval}
            unknown = [i for i in cal.exclude if i not in known]
            if unknown:
                raise SpecError(f"{spec.name}: excluded image(s) {', '.join(unknown[:5])} are "
                                f"not trainval images of {self.dataset.root}")
            dropped = set(cal.exclude)
            samples = [s for s in samples if s.image_id not in dropped]
            if not samples:
                raise SpecError(f"{spec.name}: excluding {len(dropped)} image(s) leaves no "
                                "calibration image")
        return samples

    def calibration_histogram(self, spec: VariantSpec) -> dict[str, int]:
        counts = Counter(self.label(s) for s in self.calibration_samples(spec))
        return {name: counts.get(i, 0) for i, name in enumerate(self.class_names)}

    # ------------------------------------------------------------ variants

    def variant_key(self, spec: VariantSpec) -> str:
        spec = self.own_spec(spec)
        ids = [s.image_id for s in self.calibration_samples(spec)]
        return key_of({
            "model": self.model_sha, "spec": spec.to_dict(), "calibration": ids,
            "images": self.dataset.images_stamp if ids else None,  # calibration pixels
            "contract": self.contract.to_dict() | {"info": None},
            "versions": library_versions(),
        })

    def cached_tflite(self, spec: VariantSpec) -> Entry | None:
        return self.cache.get("variants", self.variant_key(spec))

    @property
    def source_is_tflite(self) -> bool:
        return self.model_path.suffix == ".tflite"

    @cached_property
    def source_recipe(self) -> Recipe | None:
        """A .tflite source's own recipe, its precision read from the file (an
        already-quantized file is labelled by its real scheme); None for a Keras model."""
        return read_source_recipe(self.model_path) if self.source_is_tflite else None

    def own_spec(self, spec: VariantSpec) -> VariantSpec:
        """`spec` as this workspace runs it: `source` carries the file's own recipe (keys,
        results and their scheme), every other spec is itself."""
        if spec.recipe.backend is Backend.SOURCE and self.source_recipe is not None:
            return VariantSpec(self.source_recipe)
        return spec

    def check(self, spec: VariantSpec) -> None:
        """Raise SpecError, with its reason, when this source model cannot make `spec`:
        native or the converter's recipes from a .tflite file, recipes that need a float
        model from an already-quantized one, `source` from a Keras model, a chosen
        calibration breed without trainval images, a calibration set this dataset cannot
        give. Cheap: nothing is decoded."""
        path, recipe = self.model_path, spec.recipe
        if self.source_is_tflite:
            own = self.source_recipe
            quantized = own.quantized
            scheme = f"{own.scheme}, {own.io} input and output"
            as_is = "; run it as it is with the task `source`"
            if spec.is_native:
                raise SpecError(f"native: {path} is a .tflite file, not a Keras model: it has "
                                f"no native variant{as_is}")
            if quantized and spec == VariantSpec.fp32():
                raise SpecError(f"tflite-fp32: {path} is already quantized ({scheme}): there "
                                f"is no float32 model to write as tflite-fp32{as_is}")
            if recipe.backend is Backend.TFLITE and spec != VariantSpec.fp32():
                raise SpecError(f"{spec.name}: the TFLite converter takes a Keras model, and "
                                f"{path} is a .tflite file{as_is}"
                                + ("" if quantized else ", or quantize it with an aeq-* recipe"))
            if quantized and recipe.backend is Backend.AEQ:
                raise SpecError(f"{spec.name}: AI Edge Quantizer quantizes a float .tflite, "
                                f"and {path} is already quantized ({scheme}){as_is}")
        elif recipe.backend is Backend.SOURCE:
            raise SpecError(f"source: {path} is a Keras model; the variant that runs it as it "
                            "is is `native`")
        self.calibration_samples(spec)  # e.g. names a chosen breed without trainval images

    def tflite(self, spec: VariantSpec, progress: Stage | None = None) -> tuple[Entry, bool]:
        """The variant's .tflite entry, converting it only when not cached."""
        if spec.is_native:
            raise SpecError("the native variant has no .tflite file")
        spec = self.own_spec(spec)
        self.check(spec)
        samples = self.calibration_samples(spec)
        recipe = spec.recipe

        def build(tmp: Path) -> dict[str, Any]:
            start = time.perf_counter()
            calibration = None
            kept: list[Sample] = []
            if samples:
                store = self.store("trainval", progress)
                rows, kept = store.rows(samples)
                if not kept:
                    raise SpecError(f"{spec.name}: the calibration set is empty")
                calibration = (preprocess(store.pixels[r], self.contract) for r in rows)
            float_tflite = None
            if recipe.backend is Backend.AEQ:
                float_tflite = self.fp32_tflite(progress)
            if progress:
                progress("convert", 0, 1)
            data = None
            if recipe.backend is Backend.SOURCE or (self.source_is_tflite
                                                   and spec == VariantSpec.fp32()):
                data = self.model_path.read_bytes()  # the file itself, as it is
            elif kept:
                data = self._shared.convert(spec, _stage(progress, "calibrate"))
                if data is not None:  # made from the profile: pages can find it now
                    self._remember_profile(spec, self._shared.backend(spec).profile)
            if data is None:
                from petq.convert import convert

                data = convert(self.model_path, spec, calibration, len(kept),
                               _stage(progress, "calibrate"), float_tflite=float_tflite,
                               keep_float_nodes=self.kept_float_layers(spec))
            write_bytes_atomic(tmp / "model.tflite", data)
            (tmp / "recipe.json").write_text(json.dumps(spec.to_dict(), indent=2))
            if progress:
                progress("convert", 1, 1)
            return {
                "spec": spec.to_dict(),
                "model": str(self.model_path), "model_sha": self.model_sha,
                "calibration_count": len(kept),
                "calibration_classes": dict(Counter(self.class_names[self.label(s)] for s in kept)),
                "kept_float_layers": list(self.kept_float_layers(spec)),
                "convert_seconds": time.perf_counter() - start,
                "versions": library_versions(),
            }

        key = self.variant_key(spec)
        if (progress and self.cache.get("variants", key, verify=False) is None
                and self.cache.held("variants", key)):
            progress("convert", 0, 1)  # another process converts it (petq.engine): wait
        return self.cache.get_or_build("variants", key, build)

    def shares_calibration(self, spec: VariantSpec) -> bool:
        """Whether the spec's calibration comes from the range profile (petq.calibration):
        converter static 8-bit recipes of a Keras model and AEQ static recipes, no layers
        kept in float. Same bytes as a plain conversion; each image calibrated once."""
        return spec in self._shared

    def _profile_identity(self) -> dict[str, Any]:
        """What a range profile's numbers depend on besides the calibrator's own model."""
        return {"contract": self.contract.to_dict() | {"info": None},
                "images": self.dataset.images_stamp, "versions": library_versions()}

    def range_profile(self, spec: VariantSpec, ids: Iterable[str] | None = None,
                      progress: Stage | None = None, start: int = 0):
        """The range profile of a static spec's recipe (petq.profile), with the images
        `ids` (default: none more) profiled first; calibrates only those it lacks, walking
        them from `start` (processes given other starts share the work). Recorded for
        `known_profile`, so the pages find it from now on."""
        if spec not in self._shared:
            raise SpecError(f"{spec.recipe.key}: no range profile (a static recipe without "
                            "kept layers; converter recipes need a Keras model)")
        if ids is None:
            profile = self._shared.profile(spec)
        else:
            profile = self._shared.ensure(spec, list(ids), _stage(progress, "calibrate"), start)
        self._remember_profile(spec, profile)
        return profile

    def _profile_pointer(self, spec: VariantSpec) -> str:
        """The key under which a recipe's profile key is recorded: what the profile's key
        depends on besides the calibrator's model, which only an export would give."""
        return key_of({"recipe": spec.recipe.key, "model": self.model_sha,
                       "threads": default_threads() if spec.recipe.backend is Backend.AEQ
                       else None, **self._profile_identity()})

    def _kept_export(self, spec: VariantSpec, make: Callable[[], bytes]) -> bytes:
        """A converter recipe's export as its calibrator takes it, kept in the cache under
        the recipe's profile pointer: made once (`make()`, under the entry's lock, so other
        processes wait for it instead of exporting too), then read by every other process."""
        made: list[bytes] = []

        def build(tmp: Path) -> dict[str, Any]:
            made.append(make())
            (tmp / EXPORT_FILE).write_bytes(made[0])
            return {"recipe": spec.recipe.key}

        entry, built = self.cache.get_or_build("exports", self._profile_pointer(spec), build)
        return made[0] if built else entry.file(EXPORT_FILE).read_bytes()

    def _remember_profile(self, spec: VariantSpec, profile) -> None:
        """Record which profile the spec's recipe calibrates into, in a small `profile-of`
        entry, for `known_profile`: done by `range_profile` and by a conversion through
        the profile, so every command, job and process that profiles records it."""
        def build(tmp: Path) -> dict[str, Any]:
            return {"recipe": spec.recipe.key, "profile": profile.key}

        self.cache.get_or_build("profile-of", self._profile_pointer(spec), build)

    def known_profile(self, spec: VariantSpec):
        """The range profile a static spec's recipe calibrates into, as recorded by a
        conversion or profiling in this cache; None before any. Reads only: no export, no
        calibration (what a dashboard page may call)."""
        if spec not in self._shared:
            return None
        from petq.profile import RangeProfile

        entry = self.cache.get("profile-of", self._profile_pointer(spec), verify=False)
        key = entry.manifest.get("profile") if entry is not None else None
        return RangeProfile(self.cache, key) if isinstance(key, str) else None

    def calibration_ids(self, spec: VariantSpec) -> list[str]:
        """The ids of a spec's decodable calibration images."""
        store = self.store("trainval")
        return [s.image_id for s in store.rows(self.calibration_samples(spec))[1]]

    def _inputs(self, ids: Iterable[str]) -> Iterator[np.ndarray]:
        store = self.store("trainval")
        return (preprocess(store.pixels[store.index[i]], self.contract) for i in ids)

    def fp32_tflite(self, progress: Stage | None = None) -> bytes:
        """The FP32 .tflite that AI Edge Quantizer recipes start from (converted once)."""
        entry, _ = self.tflite(VariantSpec.fp32(), progress)
        return entry.file("model.tflite").read_bytes()

    def kept_float_layers(self, spec: VariantSpec) -> tuple[str, ...]:
        """The layers a `keep<N>` spec leaves in float: the N worst of its base variant."""
        if not spec.keep_float:
            return ()
        from petq.layers import worst_layers

        base = VariantSpec(spec.recipe, spec.calibration)
        return tuple(worst_layers(self.layer_stats(base), spec.keep_float))

    LAYER_SAMPLES = 32  # test images the per-layer statistics run on

    def layer_stats(self, spec: VariantSpec, progress: Stage | None = None) -> list:
        """Per-layer quantization error of a quantized variant (cached), in graph order.

        Converter INT8 recipes: each layer's own error (the debugger runs every quantized
        op beside a float copy on the same inputs), the measure that picks layers worth
        keeping in float. Other recipes: each op's output against the FP32 model's
        (error carried from earlier layers included). On a seeded sample of test images.
        """
        from petq.layers import LayerStat

        key, per_layer, debug_samples = self._layer_key(spec)

        def build(tmp: Path) -> dict[str, Any]:
            from petq.layers import converter_layer_stats, model_layer_stats

            start = time.perf_counter()
            pixels, _ = self.store("test", progress).pixels_of(debug_samples)
            debug = [preprocess(np.asarray(p), self.contract) for p in pixels]
            if progress:
                progress("layers", 0, 1)
            if per_layer:
                store = self.store("trainval", progress)
                rows, _ = store.rows(self.calibration_samples(spec))
                calibration = (preprocess(store.pixels[r], self.contract) for r in rows)
                stats = converter_layer_stats(self.model_path, calibration, debug,
                                              per_channel=spec.recipe.per_channel,
                                              threads=self.threads)
            else:
                entry, _ = self.tflite(spec, progress)
                stats = model_layer_stats(self.fp32_tflite(progress),
                                          entry.file("model.tflite").read_bytes(), debug,
                                          threads=self.threads)
            if progress:
                progress("layers", 1, 1)
            return {"variant": spec.name, "reference": "layer" if per_layer else "model",
                    "samples": len(debug), "seconds": time.perf_counter() - start,
                    "layers": [s.to_dict() for s in stats]}

        entry, _ = self.cache.get_or_build("layers", key, build)
        return [LayerStat.from_dict(d) for d in entry.manifest["layers"]]

    def cached_layer_stats(self, spec: VariantSpec) -> list | None:
        """The per-layer statistics if they are cached (never computes)."""
        from petq.layers import LayerStat

        if spec.is_native or not spec.recipe.quantized:
            return None
        entry = self.cache.get("layers", self._layer_key(spec)[0], verify=False)
        return [LayerStat.from_dict(d) for d in entry.manifest["layers"]] if entry else None

    def _layer_key(self, spec: VariantSpec) -> tuple[str, bool, list[Sample]]:
        spec = self.own_spec(spec)
        if not spec.recipe.quantized or spec.is_native:
            raise SpecError(f"{spec.name} is not quantized: it has no quantization error")
        if spec.recipe.backend is Backend.SOURCE:
            raise SpecError(f"{spec.name}: a quantized source file has no float model beside "
                            "it to measure each layer's error against")
        debug_samples = self._layer_samples()
        per_layer = (spec.recipe.backend is Backend.TFLITE and spec.recipe.activations == "i8"
                     and spec.recipe.calibrates and not spec.keep_float)
        key = key_of({"v": 1, "variant": self.variant_key(spec), "per_layer": per_layer,
                      "debug": [s.image_id for s in debug_samples]})
        return key, per_layer, debug_samples

    def _layer_samples(self) -> list[Sample]:
        """A seeded, stratified sample of test images for the per-layer statistics."""
        test = self.dataset.test
        fraction = min(1.0, self.LAYER_SAMPLES / max(len(test), 1))
        return self.dataset.test_samples(fraction)[: self.LAYER_SAMPLES]

    def keras_runner(self) -> KerasRunner:
        """The source model, loaded once per workspace (for its info and the native variant)."""
        if self._keras is None:
            self._keras = KerasRunner(self.model_path, self.threads)
        return self._keras

    def runner(self, spec: VariantSpec, progress: Stage | None = None,
               threads: int | None = None) -> Runner:
        """The variant's runner: the source model (native), else its .tflite on LiteRT with
        `threads` interpreter threads (default: the workspace's)."""
        if spec.is_native:
            self.check(spec)  # a .tflite source has no native model
            return self.keras_runner()
        entry, _ = self.tflite(spec, progress)
        return LiteRTRunner(entry.file("model.tflite"), threads or self.threads)

    # ------------------------------------------------------------ evaluation

    def result_key(self, spec: VariantSpec, test_fraction: float, threads: int | None = None
                   ) -> str:  # fmt: skip
        """The variant's artifact, the contract (preprocessing, class names: they change a
        native result too), the exact test images with their labels, threads (this
        workspace's unless given), versions."""
        spec = self.own_spec(spec)
        if test_fraction not in self._test_digests:
            test = [f"{s.image_id} {self.label(s)}"
                    for s in self.dataset.test_samples(test_fraction)]
            self._test_digests[test_fraction] = hashlib.sha256("\n".join(test).encode()
                                                               ).hexdigest()
        return key_of({"v": RESULT_VERSION, "variant": self.artifact_key(spec),
                       "spec": spec.to_dict(),
                       "contract": self.contract.to_dict() | {"info": None},
                       "images": self.dataset.images_stamp,
                       "test": self._test_digests[test_fraction],
                       "threads": threads or self.threads, "versions": library_versions()})

    def cached_result(self, spec: VariantSpec, test_fraction: float = 1.0) -> Result | None:
        entry = self.cache.get("results", self.result_key(spec, test_fraction), verify=False)
        return _read_result(entry) if entry else None

    def predictions(self, spec: VariantSpec, test_fraction: float = 1.0,
                    progress: Stage | None = None, threads: int | None = None) -> np.ndarray:
        """The variant's class scores (N, C) on the test split: its accuracy pass, one image
        per invoke, on `threads` interpreter threads. The scores do not depend on the
        thread count (tests/test_evaluate.py checks), so a run may compute two variants'
        side by side and time each alone afterwards (`evaluate(..., scores=)`)."""
        spec = self.own_spec(spec)
        self._check_evaluable(spec, test_fraction)
        _, store = self.prepare(spec, progress)
        pixels, _ = self._test_pixels(store, test_fraction)
        return predict_all(self.runner(spec, progress, threads), pixels, self.contract,
                           _stage(progress, "evaluate"))

    def _check_evaluable(self, spec: VariantSpec, test_fraction: float) -> None:
        if not 0.0 < test_fraction <= 1.0:
            raise SpecError(f"test dataset fraction must be in (0, 1], got {test_fraction}")
        self.check(spec)

    def scored(self, scores: np.ndarray, test_fraction: float = 1.0,
               kept: list[Sample] | None = None) -> tuple[Details, dict[str, Any]]:
        """A pass's per-image details and its metrics, from its scores (N, C) on the test
        images `kept` (default: those of `test_fraction`, in the order a pass scores them).
        `evaluate` caches both; the CLI draws and compares from them as soon as the pass is
        done, before the result is in (petq.report.early_confusion_png, `paired`)."""
        if kept is None:
            _, kept = self.store("test").rows(self.dataset.test_samples(test_fraction))
        if len(scores) != len(kept):
            raise ValueError(f"{len(scores)} scores for {len(kept)} test images")
        labels = np.array([self.label(s) for s in kept], dtype=np.int64)
        metrics = compute_metrics(labels, scores, len(self.class_names))
        top5, top5_scores = top_k(scores)
        details = Details(
            class_names=self.class_names, image_ids=tuple(s.image_id for s in kept),
            labels=labels, top5=top5, top5_scores=top5_scores,
            confusion_matrix=np.asarray(metrics.pop("confusion_matrix")),
            per_class_precision=np.asarray(metrics.pop("per_class_precision"), float),
            per_class_sensitivity=np.asarray(metrics.pop("per_class_sensitivity"), float),
        )
        return details, metrics

    def _test_pixels(self, store: DecodedStore, test_fraction: float
                     ) -> tuple[np.ndarray, list[Sample]]:  # fmt: skip
        pixels, kept = store.pixels_of(self.dataset.test_samples(test_fraction))
        if not kept:
            raise SpecError("the test set is empty")
        return pixels, kept

    def evaluate(
        self,
        spec: VariantSpec,
        test_fraction: float = 1.0,
        progress: Stage | None = None,
        latency_runs: int = 100,
        scores: np.ndarray | None = None,
    ) -> tuple[Result, bool]:
        """Evaluate a variant on the test split (cached). Returns (result, computed).

        `scores`: its `predictions` on this test split, computed already; the accuracy
        pass is then skipped and only the latency is measured here."""
        spec = self.own_spec(spec)
        self._check_evaluable(spec, test_fraction)

        def build(tmp: Path) -> dict[str, Any]:
            info, store = self.prepare(spec, progress)
            pixels, kept = self._test_pixels(store, test_fraction)
            variant: dict[str, Any] = {"calibration_count": 0, "convert_seconds": 0.0,
                                       "file_size_bytes": info["file_size_bytes"]}
            if spec.is_native:
                runner: Runner = self.keras_runner()
            else:
                entry, _ = self.tflite(spec, progress)
                runner = LiteRTRunner(entry.file("model.tflite"), self.threads)
                variant = {
                    "file_size_bytes": entry.file("model.tflite").stat().st_size,
                    "calibration_count": entry.manifest["calibration_count"],
                    "calibration_classes": entry.manifest["calibration_classes"],
                    "convert_seconds": entry.manifest["convert_seconds"],
                    "tflite_key": entry.manifest["key"],
                }
            found = scores if scores is not None else predict_all(
                runner, pixels, self.contract, _stage(progress, "evaluate"))
            details, metrics = self.scored(found, test_fraction, kept)
            if progress:
                progress("latency", 0, 1)
            latency = measure_latency(runner, preprocess(np.asarray(pixels[0]), self.contract),
                                      runs=latency_runs)
            if progress:
                progress("latency", 1, 1)
            (tmp / "details.json").write_text(json.dumps(details.to_json()))
            np.savez(tmp / "predictions.npz", top5=details.top5, top5_scores=details.top5_scores)
            images = ImageCounts.of(self.dataset.test_samples(test_fraction), store.bad)
            result = Result(
                spec=spec, description=spec.describe(self.class_names),
                model=self.model_path.name, model_sha=self.model_sha,
                dataset=str(self.dataset.root), dataset_fingerprint=self.dataset.fingerprint,
                synthetic=self.dataset.synthetic, test_fraction=test_fraction,
                skipped_images=images.skipped_count,
                skipped_by_reason=dict(images.skipped), param_count=info["param_count"],
                threads=self.threads,
                versions=library_versions(), **variant, **metrics, **latency,
            )
            return {"result": result.to_dict()}

        entry, built = self.cache.get_or_build(
            "results", self.result_key(spec, test_fraction), build
        )
        return _read_result(entry), built

    def artifact_key(self, spec: VariantSpec) -> str:
        """What identifies the model a spec runs: the source model's hash or the variant key."""
        return self.model_sha if spec.is_native else self.variant_key(spec)

    def latency_comparison(self, a: VariantSpec, b: VariantSpec) -> LatencyComparison:
        """A and B timed interleaved in one measurement, with an interval on the ratio of
        medians and the machine's load (cached: a report rerun shows the same timing)."""
        key = key_of({"v": 1, "a": self.artifact_key(a), "b": self.artifact_key(b),
                      "threads": self.threads, "versions": library_versions()})

        def build(tmp: Path) -> dict[str, Any]:
            store = self.store("test")
            x = preprocess(np.asarray(store.pixels[0]), self.contract)
            runners = [self.runner(a), self.runner(b)]
            for runner in runners:
                runner.preprocess_input(x)
            rounds = 30 if a.is_native or b.is_native else 100
            with QUIET, runners[0].lock, runners[1].lock:
                timing = interleaved_latency(runners[0].run_inference, runners[1].run_inference,
                                             rounds=rounds)
            return {"a": a.name, "b": b.name, "timing": asdict(timing)}

        entry, _ = self.cache.get_or_build("latency", key, build)
        data = dict(entry.manifest["timing"])
        data["ratio_b_over_a"] = Interval(**data["ratio_b_over_a"])
        for name in ("loadavg_before", "loadavg_after", "times_a_ms", "times_b_ms"):
            data[name] = tuple(data[name])
        return LatencyComparison(**data)

    def time_against_reference(self, spec: VariantSpec) -> LatencyComparison | None:
        """The interleaved timing the report's speed sentences use, measured now when the
        reference is at hand (FP32 for a TFLite variant, native for FP32; never converts
        the reference just for this), so the Report page reads it from the cache."""
        reference = spec.reference
        if spec.is_native or (reference.is_native and self.source_is_tflite) or (
                not reference.is_native and self.cached_tflite(reference) is None):
            return None  # native: FP32 is timed against it already
        return self.latency_comparison(spec, reference)

    def results(self, test_fraction: float | None = None, any_threads: bool = False
                ) -> list[Result]:  # fmt: skip
        """Every cached result for this model and dataset: the dashboard's main query.
        With `any_threads`, also those evaluated with other interpreter thread counts (a
        sweep's tasks run with their own): the same predictions, other latencies."""
        results = []
        for entry in self.cache.entries("results"):
            data = entry.manifest.get("result")
            if (not data or data.get("model_sha") != self.model_sha
                    or data.get("dataset_fingerprint") != self.dataset.fingerprint
                    or (data.get("threads") != self.threads and not any_threads)):
                continue
            if test_fraction is not None and data.get("test_fraction") != test_fraction:
                continue
            try:
                result = _read_result(entry)
                # another preprocessing, other labels or library versions: not this workspace's
                if self.result_key(result.spec, result.test_fraction,
                                   result.threads) != result.result_key:
                    continue
            except (KeyError, TypeError, ValueError, PetqError):  # another petq version
                continue
            results.append(result)
        results.sort(key=variant_order)
        return results

    def paired(self, result_key: str, reference_key: str,
               early: tuple[Details, Details] | None = None,
               ) -> tuple[PairedComparison, list[ClassChange]] | None:  # fmt: skip
        """A result against a reference on the same test images: the paired statistics
        (`compare_details`, 2,000 resamples, 95%) and each breed's change
        (`class_changes_of`), computed once and cached (kind "paired"): jobs compute
        them as they evaluate, so Compare and the report read them. None when the two were
        evaluated on different images. `early`: the two results' details (`scored`), when
        this is computed before the results are cached; else they are read from them."""
        # v2: the accuracy interval is the exact McNemar test inverted
        key = key_of({"v": 2, "result": result_key, "reference": reference_key,
                      "versions": library_versions()})
        entry = self.cache.get("paired", key, verify=False)
        if entry is None:
            mine, reference = early or (self.details(result_key), self.details(reference_key))
            if not mine.same_images(reference):
                return None

            def build(tmp: Path) -> dict[str, Any]:
                return {"paired": asdict(compare_details(mine, reference)),
                        "classes": [asdict(c) for c in class_changes_of(mine, reference)]}

            entry, _ = self.cache.get_or_build("paired", key, build)
        return (PairedComparison.from_dict(entry.manifest["paired"]),
                [ClassChange(**c) for c in entry.manifest["classes"]])

    def details(self, result_key: str) -> Details:
        """Confusion matrix, per-class metrics and per-image top-5 of one cached result."""
        entry = self.cache.get("results", result_key, verify=False)
        if entry is None:
            raise KeyError(f"no cached result {result_key}")
        return Details.read(entry)


def _read_result(entry: Entry) -> Result:
    return Result.from_dict({**entry.manifest["result"], "result_key": entry.manifest["key"],
                             "created": entry.manifest["created"]})


def variant_order(result: Result) -> tuple:
    """Sort key: recipe order of the registry, then calibration, seed and kept layers."""
    spec = result.spec
    keys = list(RECIPES)
    return (keys.index(spec.recipe.key) if spec.recipe.key in keys else len(keys),
            spec.calibration.kind, spec.fraction or 0.0, spec.classes, spec.seed,
            spec.keep_float)

"""Static variants calibrated from the range profile: each image through a calibrator once,
ever, and the same .tflite bytes as a plain conversion.

A static recipe's calibrator runs each representative image through the float model and
keeps statistics of every activation tensor:
- the TFLite converter's calibration logger keeps the plain minimum and maximum of what it
  is fed (`MinMax::Update` in TensorFlow's calibration_logger.cc; no averaging), so a
  set's ranges are the element-wise min/max of its images' own ranges;
- AI Edge Quantizer's `min_max_uniform_quantize` (its static recipes) takes each image's
  minimum and maximum too, but folds them into a moving average in the set's order
  (`qsv_utils.moving_average_update`, smoothing 0.95: every operator of the algorithm is
  registered with that update), not a plain min/max. A set's statistics are still a
  function of its images' own, in order, so petq replays that fold with AEQ's own function.

So each image is calibrated alone, once, and its ranges are kept in a range profile
(petq.profile, in the cache, shared by runs and processes). `SharedStatic` (the converter)
exports the Keras model once per recipe, calibrates the images its sets need that the
profile lacks, writes a variant's ranges (the min/max over its images) into the
calibrator's own output and lets the converter quantize that as usual. `AeqStatic` hands
AI Edge Quantizer the folded statistics instead of calibrating. tests/test_calibration.py
checks the files are byte-identical to plain conversions, and that a second run with new
seeds calibrates only images no run has calibrated before.

Neither backend has a public seam for this: the converter's export is taken where it
hands it to `_optimize_tflite_model`, and the ranges are handed in where `_quantize` asks
its `Calibrator` for them; AEQ's calibrator is driven with the quantizer's own recipe
manager. Anything unexpected there raises `SharedUnavailable`, and the caller converts
the plain way.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from petq.cache import Cache
from petq.errors import ModelError, PetqError
from petq.profile import Layout, Measured, RangeProfile, digest, profile_key
from petq.types import Backend, Mode, VariantSpec

Progress = Callable[[int, int], None]
Ranges = list[tuple[np.ndarray, np.ndarray]]  # (min, max) of each calibrated tensor, in order
Inputs = Callable[[Sequence[str]], Iterable[np.ndarray]]  # image ids -> model inputs
ProfileOf = Callable[[Mapping[str, Any]], RangeProfile]  # what the numbers depend on -> profile
# A recipe's export as the calibrator takes it, kept: `kept(spec, make)` reads the bytes, or
# makes them with `make()` and keeps them (one process exports; the others wait and read).
KeptExport = Callable[[VariantSpec, Callable[[], bytes]], bytes]


class SharedUnavailable(RuntimeError):
    """The converter did not behave as this module expects: convert the plain way."""


def shares(spec: VariantSpec) -> bool:
    """Whether the TFLite converter's calibration of a spec comes from the profile: its
    static recipes with 8-bit activations (the MLIR quantizer; 16-bit activations take
    another path), no layers kept in float."""
    recipe = spec.recipe
    return (recipe.backend is Backend.TFLITE and recipe.mode is Mode.STATIC
            and recipe.activations == "i8" and not spec.keep_float)


def shares_aeq(spec: VariantSpec) -> bool:
    """Whether an AI Edge Quantizer static spec's calibration comes from the profile (no
    layers kept in float)."""
    recipe = spec.recipe
    return recipe.backend is Backend.AEQ and recipe.mode is Mode.STATIC and not spec.keep_float


def profiled(spec: VariantSpec) -> bool:
    return shares(spec) or shares_aeq(spec)


@dataclass(frozen=True)
class _Export:
    converter: object  # the configured tf.lite.TFLiteConverter that exported
    optimize_args: tuple  # what convert() handed to _optimize_tflite_model
    prepared: bytes  # the float model as the calibrator takes it


class SharedStatic:
    """The TFLite converter's static variants of one recipe from one export, their
    ranges from the profile.

    `profile_of(identity)` gives the profile for the export's bytes; `inputs(ids)` yields
    model inputs, float32 (1, H, W, 3), of image ids; `kept` keeps the export's bytes
    between processes, since a process that only profiles needs the bytes, not the
    converter, and exporting is a large share of a conversion (default: each process
    exports its own).
    """

    def __init__(self, model_path: Path | str, spec: VariantSpec, profile_of: ProfileOf,
                 inputs: Inputs, kept: KeptExport | None = None):
        if not shares(spec):
            raise ValueError("SharedStatic takes the converter's static 8-bit recipes")
        self.model_path = Path(model_path)
        self.recipe = spec.recipe
        self._spec = spec
        self._profile_of = profile_of
        self._inputs = inputs
        self._kept = kept or (lambda _spec, make: make())
        self._export: _Export | None = None
        self._prepared: bytes | None = None  # the export's bytes, made here or kept
        self.profile: RangeProfile | None = None
        self._lock = threading.Lock()

    def convert(self, spec: VariantSpec, ids: Sequence[str],
                progress: Progress | None = None) -> bytes:
        """The spec's .tflite bytes, equal to a plain conversion of the images `ids` (in
        any order). Raises SharedUnavailable on any failure: a plain conversion then
        reports it."""
        from petq.runtime import captured_output

        if spec.recipe != self.recipe or not shares(spec):
            raise SharedUnavailable(f"{spec.name} is not of recipe {self.recipe.key}")
        with self._lock, captured_output():
            try:
                profile = self.ready_profile()
                export = self._exported(self._spec)  # the converter that quantizes
                if export.prepared != self._prepared:
                    raise SharedUnavailable("this process's export differs from the kept one")
                profile.ensure(ids, self._inputs, self._measure, progress)
                return self._quantize(export, self._calibrated(profile, profile.merged(ids)))
            except SharedUnavailable:
                raise
            except Exception as exc:  # the plain conversion says what went wrong
                raise SharedUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def ready_profile(self) -> RangeProfile:
        """The profile of this recipe's export (the export's bytes kept, or made once)."""
        if self.profile is None:
            self._prepared = self._kept(self._spec,
                                        lambda: self._exported(self._spec).prepared)
            self.profile = self._profile_of({"calibrator": "tflite-converter",
                                             "export": digest(self._prepared)})
        return self.profile

    # ------------------------------------------------------------ steps

    def _exported(self, spec: VariantSpec) -> _Export:
        if self._export is None:
            from tensorflow.lite.python.optimize import calibrator

            from petq.convert import configured_converter

            converter = configured_converter(self.model_path, spec, _never_read)
            captured = []

            def capture(model, quant_mode, debug_options, quant_io=True):
                captured.append((model, quant_mode, debug_options, quant_io))
                return model

            converter._optimize_tflite_model = capture  # this instance only
            try:
                converter.convert()
            finally:
                del converter._optimize_tflite_model
            if len(captured) != 1:
                raise SharedUnavailable("the converter did not hand over one float model")
            model = captured[0][0]
            self._export = _Export(converter, captured[0],
                                   bytes(calibrator.add_intermediate_tensors(model)))
        return self._export

    def _measure(self, x: np.ndarray) -> Measured:
        """One image through the converter's own calibrator, alone."""
        from tensorflow.lite.python.optimize import calibrator

        calibrated = calibrator.Calibrator(self._prepared).calibrate(
            lambda: iter([[x]]))
        tensors = _range_tensors(calibrated)
        layout = Layout(tuple(name for name, _, _ in tensors),
                        tuple(tuple(lo.shape) for _, lo, _ in tensors),
                        str(tensors[0][1].dtype) if tensors else "float32")
        first = self.profile.layout is None
        return Measured(layout, [(lo.copy(), hi.copy()) for _, lo, hi in tensors],
                        bytes(calibrated) if first else b"")

    def _calibrated(self, profile: RangeProfile, ranges: Ranges) -> bytes:
        """The calibrator's output with each tensor's range set to `ranges`."""
        out = bytearray(profile.template)
        views = _range_views(out)
        if len(views) != len(ranges):
            raise SharedUnavailable("the profile's template differs from its layout")
        for (lo, hi), (new_lo, new_hi) in zip(views, ranges, strict=True):
            lo[:] = new_lo
            hi[:] = new_hi
        return bytes(out)

    def _quantize(self, export: _Export, calibrated: bytes) -> bytes:
        model, quant_mode, debug_options, quant_io = export.optimize_args
        with _calibration_result(export.prepared, calibrated) as used:
            data = export.converter._convert_and_export_metrics(
                lambda converter: converter._optimize_tflite_model(
                    model, quant_mode, debug_options, quant_io=quant_io))
        if used != [True]:
            raise SharedUnavailable("the converter did not ask its calibrator once")
        return bytes(data)


class AeqStatic:
    """AI Edge Quantizer's static variants of one recipe, their statistics folded from the
    profile in each set's order with AEQ's own update function.

    `float_tflite`: the FP32 .tflite AEQ quantizes; `threads`: its calibrator's
    interpreter threads (the plain conversion's count: part of the profile's identity)."""

    def __init__(self, float_tflite: bytes, spec: VariantSpec, profile_of: ProfileOf,
                 inputs: Inputs, threads: int):
        if not shares_aeq(spec):
            raise ValueError("AeqStatic takes AI Edge Quantizer's static recipes")
        from petq.convert import aeq_recipe

        self.recipe = spec.recipe
        self._float = bytes(float_tflite)
        self._aeq_recipe = aeq_recipe(spec)
        self._inputs = inputs
        self._threads = threads
        self.profile = profile_of({"calibrator": "ai-edge-quantizer",
                                   "float_tflite": digest(self._float),
                                   "recipe": self._aeq_recipe, "threads": threads})
        self._calibrator = None
        self._quantizer = None
        self._lock = threading.Lock()

    def convert(self, spec: VariantSpec, ids: Sequence[str],
                progress: Progress | None = None) -> bytes:
        """The spec's .tflite bytes, equal to a plain conversion of the images `ids` in
        this order; SharedUnavailable on any failure."""
        from petq.runtime import captured_output

        if spec.recipe != self.recipe or not shares_aeq(spec):
            raise SharedUnavailable(f"{spec.name} is not of recipe {self.recipe.key}")
        with self._lock, captured_output():
            try:
                self.profile.ensure(ids, self._inputs, self._measure, progress)
                statistics = self._folded(ids)
                quantizer = self._new_quantizer()
                return bytes(quantizer.quantize(statistics, enable_progress_report=False)
                             .quantized_model)
            except SharedUnavailable:
                raise
            except Exception as exc:
                raise SharedUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def _new_quantizer(self):
        from ai_edge_quantizer import quantizer

        return quantizer.Quantizer(bytearray(self._float), self._aeq_recipe)

    def _update(self) -> Callable:
        """AEQ's update of a tensor's statistics across images, checked to be the one
        function every operator of the recipe's algorithms registers."""
        from ai_edge_quantizer import algorithm_manager

        found = set()
        for algorithm in {entry["algorithm_key"] for entry in self._aeq_recipe}:
            if algorithm == algorithm_manager.AlgorithmName.NO_QUANTIZE:
                continue
            for op in algorithm_manager.get_supported_ops(algorithm):
                found.add(algorithm_manager.get_update_qsv_func(algorithm, op))
        if len(found) != 1:
            raise SharedUnavailable(f"the recipe's operators update statistics {len(found)} "
                                    "ways")
        return found.pop()

    def _measure(self, x: np.ndarray) -> Measured:
        """One image through AEQ's own calibrator (one interpreter, statistics reset)."""
        from ai_edge_quantizer import calibrator

        from petq.aeq import aeq_signature

        if self._calibrator is None:
            self._quantizer = self._new_quantizer()
            self._calibrator = calibrator.Calibrator(self._quantizer._float_model_buffer,
                                                     num_threads=self._threads)
            self._signature = aeq_signature(self._float)
        key, name = self._signature
        self._calibrator.reset_model_qsvs()
        self._calibrator.calibrate({key: [{name: x}]}, self._quantizer._recipe_manager)
        qsvs = self._calibrator.get_model_qsvs()
        names = tuple(qsvs)
        for qsv in qsvs.values():
            if set(qsv) != {"min", "max", "num_samples"}:
                raise SharedUnavailable(f"AEQ statistics hold {sorted(qsv)}, not min/max")
        lows = [np.asarray(qsvs[n]["min"]) for n in names]
        layout = Layout(names, tuple(lo.shape for lo in lows),
                        str(lows[0].dtype) if lows else "float32",
                        tuple(int(qsvs[n]["num_samples"]) for n in names))
        return Measured(layout, [(lo, np.asarray(qsvs[n]["max"]))
                                 for lo, n in zip(lows, names, strict=True)])

    def _folded(self, ids: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
        """The statistics AEQ's calibrator would hold after the images `ids` in order."""
        update = self._update()
        layout = self.profile.layout
        table = self.profile.table(list(ids))
        model: dict[str, dict[str, np.ndarray]] = {}
        for row in table:
            for name, lo, hi, n in zip(layout.names, layout.split(row[0]), layout.split(row[1]),
                                       layout.samples, strict=True):
                qsv = {"min": lo, "max": hi, "num_samples": np.array(n)}
                model[name] = qsv if name not in model else update(model[name], qsv)
        return model


class Profiled:
    """A workspace's static conversions through the range profile: one SharedStatic per
    converter recipe and one AeqStatic per AEQ recipe, made on first use.

    `identity()`: what every profile's numbers depend on besides the calibrator's model
    (contract, dataset images, library versions); `calibration_ids(spec)`: a spec's
    decodable calibration image ids, in order (PetqError for a spec that has none);
    `float_tflite()`: the FP32 .tflite; `threads`: AEQ's calibrator threads; `kept`: keeps
    converter recipes' exports between processes (SharedStatic).
    """

    def __init__(self, model_path: Path | str, cache: Cache,
                 identity: Callable[[], Mapping[str, Any]],
                 calibration_ids: Callable[[VariantSpec], Sequence[str]], inputs: Inputs,
                 float_tflite: Callable[[], bytes], threads: int, keras_source: bool = True,
                 kept: KeptExport | None = None):
        self.model_path = Path(model_path)
        self.cache = cache
        self._identity = identity
        self._calibration_ids = calibration_ids
        self._inputs = inputs
        self._float_tflite = float_tflite
        self._threads = threads
        self._keras_source = keras_source
        self._kept = kept
        self._built: dict[str, SharedStatic | AeqStatic] = {}
        self._off: set[str] = set()  # recipes whose backend did not behave: plain conversion
        self.profiles: dict[str, RangeProfile] = {}  # by profile key: one object per profile

    def __contains__(self, spec: VariantSpec) -> bool:
        if spec.recipe.key in self._off:
            return False
        return shares_aeq(spec) or (shares(spec) and self._keras_source)

    def profile_of(self, identity: Mapping[str, Any]) -> RangeProfile:
        full = {**identity, **self._identity()}
        key = profile_key(full)
        if key not in self.profiles:
            self.profiles[key] = RangeProfile(self.cache, key, full)
        return self.profiles[key]

    def backend(self, spec: VariantSpec) -> SharedStatic | AeqStatic:
        """The spec's recipe's converter (made once)."""
        key = spec.recipe.key
        if key not in self._built:
            if shares(spec):
                self._built[key] = SharedStatic(self.model_path, VariantSpec(spec.recipe,
                                                                             spec.calibration),
                                                self.profile_of, self._inputs, self._kept)
            else:
                self._built[key] = AeqStatic(self._float_tflite(), spec, self.profile_of,
                                             self._inputs, self._threads)
        return self._built[key]

    def profile(self, spec: VariantSpec) -> RangeProfile:
        """The range profile a spec's recipe calibrates into (exporting if need be)."""
        return self._profiling(spec, None, None)

    def ensure(self, spec: VariantSpec, ids: Sequence[str],
               progress: Progress | None = None, start: int = 0) -> RangeProfile:
        """Profile the images `ids` in the spec's recipe's profile (those not in it yet),
        walking them from `start` (`RangeProfile.ensure`: processes share the work)."""
        return self._profiling(spec, ids, progress, start)

    def _profiling(self, spec: VariantSpec, ids: Sequence[str] | None,
                   progress: Progress | None, start: int = 0) -> RangeProfile:
        from petq.runtime import captured_output

        try:
            backend = self.backend(spec)
            with backend._lock, captured_output():
                if isinstance(backend, SharedStatic):
                    profile = backend.ready_profile()
                else:
                    profile = backend.profile
                if ids is not None:
                    profile.ensure(ids, self._inputs, backend._measure, progress, start)
            return profile
        except PetqError:
            raise
        except Exception as exc:  # a calibrator that does not behave: say so in one line
            raise ModelError(f"{spec.recipe.key}: the range profile failed: "
                             f"{type(exc).__name__}: {exc}") from None

    def convert(self, spec: VariantSpec, progress: Progress | None = None) -> bytes | None:
        """The spec's bytes from the profile; None when it does not go through one, or when
        the backend did not behave as this module expects (then its recipe is converted the
        plain way from now on, with a warning)."""
        if spec not in self:
            return None
        try:
            ids = self._calibration_ids(spec)
        except PetqError:  # e.g. a class out of range: its own conversion says so
            return None
        if not ids:
            return None
        try:
            return self.backend(spec).convert(spec, ids, progress)
        except SharedUnavailable as exc:
            warnings.warn(f"{spec.name}: calibration from the range profile unavailable "
                          f"({exc}); converting the plain way", stacklevel=2)
            self._off.add(spec.recipe.key)
            self._built.pop(spec.recipe.key, None)
            return None


def _never_read() -> Iterator[list[np.ndarray]]:
    raise SharedUnavailable("the converter read its representative dataset itself")
    yield  # a generator function


def _range_tensors(model: bytes | bytearray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, min view, max view) of each calibrated tensor in a flatbuffer; the views are
    writable on a bytearray, so writing them edits the model in place."""
    from tensorflow.lite.python import schema_py_generated as schema

    root = schema.Model.GetRootAs(model, 0)
    tensors = []
    for s in range(root.SubgraphsLength()):
        graph = root.Subgraphs(s)
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            quant = tensor.Quantization()
            if quant is not None and not quant.MinIsNone():
                name = (tensor.Name() or b"").decode("utf-8", "replace")
                tensors.append((f"{s}:{name}" if s else name, quant.MinAsNumpy(),
                                quant.MaxAsNumpy()))
    return tensors


def _range_views(model: bytes | bytearray) -> Ranges:
    return [(lo, hi) for _, lo, hi in _range_tensors(model)]


_PATCH = threading.Lock()


@contextlib.contextmanager
def _calibration_result(prepared: bytes, calibrated: bytes) -> Iterator[list[bool]]:
    """While open, the converter's calibrator returns `calibrated` instead of calibrating,
    for this thread's calibrator of `prepared` only; yields a list that gets one entry per
    such call."""
    from tensorflow.lite.python.optimize import calibrator

    original = calibrator.Calibrator.calibrate
    owner = threading.get_ident()
    used: list[bool] = []

    def calibrate(self, dataset_gen):
        if threading.get_ident() != owner or getattr(self, "_model_content", None) != prepared:
            return original(self, dataset_gen)
        used.append(True)
        return calibrated

    with _PATCH:
        calibrator.Calibrator.calibrate = calibrate
        try:
            yield used
        finally:
            calibrator.Calibrator.calibrate = original

"""Static INT8 variants of one recipe from one export, each image calibrated once.

The TFLite converter exports the Keras model to a float flatbuffer for every
variant (1.5-2 s here), then calibrates: it runs every representative image
through that float model and keeps each activation tensor's minimum and maximum,
then quantizes. Variants that differ only in their calibration sets (the lab's
four fractions and its one-class set) repeat both: the export is the same bytes
each time, and an image in three sets is run three times.

TFLite's calibration logger keeps the plain minimum and maximum of what it is fed
(no averaging), so a set's ranges are the element-wise min/max of the ranges of
any partition of it. `SharedStatic` exports once, splits the sets into the parts
of their Venn diagram ("pieces"), calibrates each piece once with the converter's
own calibrator, writes a variant's ranges (the min/max over its pieces) into the
calibrator's own output, and lets the converter quantize that as usual.
tests/test_calibration.py checks the files are byte-identical to plain
conversions; benchmarks/README.md (section 5) says what it saves.

The converter has no public seam for this: the export is taken where the
converter hands it to `_optimize_tflite_model`, and the ranges are handed in where
`_quantize` asks its `Calibrator` for them. Anything unexpected there raises
`SharedUnavailable`, and the caller converts the plain way.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from petq.errors import PetqError
from petq.types import Backend, Mode, VariantSpec

Progress = Callable[[int, int], None]
Ranges = list[tuple[np.ndarray, np.ndarray]]  # (min, max) of each calibrated tensor, in order
# A piece costs one calibrator (model parse and prepare) besides its images: on the demo
# model about 4 ms against 5.5 ms per image (`python benchmarks/probe_calibration.py
# --piece-cost`), so about one image's worth.
PIECE_COST_IMAGES = 1


class SharedUnavailable(RuntimeError):
    """The converter did not behave as this module expects: convert the plain way."""


def shares(spec: VariantSpec) -> bool:
    """Whether a spec can join a SharedStatic: the TFLite converter's static recipes with
    8-bit activations (the MLIR quantizer; 16-bit activations take another path)."""
    recipe = spec.recipe
    return (recipe.backend is Backend.TFLITE and recipe.mode is Mode.STATIC
            and recipe.activations == "i8" and not spec.keep_float)


def pieces(sets: Mapping[Hashable, Sequence[str]]) -> dict[frozenset, list[str]]:
    """The parts of the sets' Venn diagram: {the sets an image is in: those images}."""
    owners: dict[str, set] = {}
    for owner, ids in sets.items():
        for image_id in ids:
            owners.setdefault(image_id, set()).add(owner)
    parts: dict[frozenset, list[str]] = {}
    for image_id, members in owners.items():
        parts.setdefault(frozenset(members), []).append(image_id)
    return parts


def worth_sharing(sets: Mapping[Hashable, Sequence[str]],
                  parts: Mapping[frozenset, Sequence[str]] | None = None) -> bool:
    """Whether calibrating the Venn pieces (`parts`, if computed already) costs less than
    calibrating each set whole."""
    parts = pieces(sets) if parts is None else parts
    whole = sum(len(ids) for ids in sets.values())
    return sum(len(ids) for ids in parts.values()) + PIECE_COST_IMAGES * len(parts) < whole


@dataclass(frozen=True)
class _Export:
    converter: object  # the configured tf.lite.TFLiteConverter that exported
    optimize_args: tuple  # what convert() handed to _optimize_tflite_model
    prepared: bytes  # the float model as the calibrator takes it


class SharedStatic:
    """Converts static variants of one recipe from one export, calibrating each image once.

    `sets`: each spec's calibration image ids; `inputs(ids)` yields their model inputs,
    float32 (1, H, W, 3). Specs must all be of one recipe that `shares`. With Venn
    pieces not worth it (`worth_sharing`), each set is calibrated whole, on the one export.
    """

    def __init__(self, model_path: Path | str, sets: Mapping[VariantSpec, Sequence[str]],
                 inputs: Callable[[Sequence[str]], Iterable[np.ndarray]]):
        recipes = {spec.recipe for spec in sets}
        if len(recipes) != 1 or not all(shares(spec) for spec in sets):
            raise ValueError("SharedStatic takes static 8-bit specs of one recipe")
        self.model_path = Path(model_path)
        self.sets = {spec: list(ids) for spec, ids in sets.items()}
        self._inputs = inputs
        parts = pieces(self.sets)
        if worth_sharing(self.sets, parts):
            self._pieces = parts
        else:
            self._pieces = {frozenset([spec]): ids for spec, ids in self.sets.items()}
        self._ranges: dict[frozenset, Ranges] = {}
        self._template: bytes | None = None  # one calibrator output: where ranges are written
        self._export: _Export | None = None
        self._lock = threading.Lock()

    def convert(self, spec: VariantSpec, progress: Progress | None = None) -> bytes:
        """The spec's .tflite bytes, equal to a plain conversion of its calibration set.

        Raises SharedUnavailable on any failure: a plain conversion then reports it."""
        from petq.runtime import captured_output

        if spec not in self.sets:
            raise SharedUnavailable(f"{spec.name} is not in this group")
        with self._lock, captured_output():
            try:
                return self._convert(spec, progress)
            except SharedUnavailable:
                raise
            except Exception as exc:  # the plain conversion says what went wrong
                raise SharedUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def _convert(self, spec: VariantSpec, progress: Progress | None) -> bytes:
        export = self._exported(spec)
        own = [piece for piece in self._pieces if spec in piece]
        total = sum(len(self._pieces[piece]) for piece in own)
        done = sum(len(self._pieces[piece]) for piece in own if piece in self._ranges)
        for piece in own:
            if piece not in self._ranges:
                done = self._calibrate(export, piece, done, total, progress)
        if progress:
            progress(total, total)
        return self._quantize(export, self._calibrated([self._ranges[p] for p in own]))

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

    def _calibrate(self, export: _Export, piece: frozenset, done: int, total: int,
                   progress: Progress | None) -> int:
        from tensorflow.lite.python.optimize import calibrator

        def feed() -> Iterator[list[np.ndarray]]:
            nonlocal done
            for x in self._inputs(self._pieces[piece]):
                yield [np.asarray(x, dtype=np.float32)]
                done += 1
                if progress:
                    progress(done, total)

        calibrated = calibrator.Calibrator(export.prepared).calibrate(feed)
        ranges = [(lo.copy(), hi.copy()) for lo, hi in _range_views(calibrated)]
        if self._template is None:
            self._template = bytes(calibrated)
        elif len(calibrated) != len(self._template) or len(ranges) != len(
                _range_views(self._template)):
            raise SharedUnavailable("calibrated models differ in layout")
        self._ranges[piece] = ranges
        return done

    def _calibrated(self, parts: list[Ranges]) -> bytes:
        """The calibrator's output with each tensor's range the min/max over `parts`."""
        out = bytearray(self._template)
        for i, (lo, hi) in enumerate(_range_views(out)):
            lo[:] = np.minimum.reduce([part[i][0] for part in parts])
            hi[:] = np.maximum.reduce([part[i][1] for part in parts])
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


class SharedGroups:
    """A run's groups: its static 8-bit variants of each recipe, two or more, share one
    export and their calibration. Each group's SharedStatic is made on first use.

    `calibration_ids(spec)` gives a spec's calibration image ids (raising PetqError for
    a spec that has none); `inputs(ids)` yields their model inputs.
    """

    def __init__(self, model_path: Path | str,
                 calibration_ids: Callable[[VariantSpec], Sequence[str]],
                 inputs: Callable[[Sequence[str]], Iterable[np.ndarray]]):
        self.model_path = Path(model_path)
        self._calibration_ids = calibration_ids
        self._inputs = inputs
        self._groups: dict[str, tuple[VariantSpec, ...]] = {}  # recipe key -> specs
        self._built: dict[str, SharedStatic] = {}

    def register(self, specs: Iterable[VariantSpec]) -> None:
        """The run's specs; replaces the groups of an earlier run (same specs: kept)."""
        groups: dict[str, list[VariantSpec]] = {}
        for spec in dict.fromkeys(specs):
            if shares(spec):
                groups.setdefault(spec.recipe.key, []).append(spec)
        wanted = {key: tuple(group) for key, group in groups.items() if len(group) > 1}
        if wanted != self._groups:
            self._groups, self._built = wanted, {}

    def __contains__(self, spec: VariantSpec) -> bool:
        return spec in self._groups.get(spec.recipe.key, ())

    def convert(self, spec: VariantSpec, progress: Progress | None = None) -> bytes | None:
        """The spec's bytes from its group; None when it is in none, or when the converter
        did not behave as this module expects (then the group is dropped, with a warning,
        and its variants are converted the plain way)."""
        if spec not in self:
            return None
        key = spec.recipe.key
        try:
            if key not in self._built:
                self._built[key] = SharedStatic(self.model_path, self._sets(key), self._inputs)
            return self._built[key].convert(spec, progress)
        except SharedUnavailable as exc:
            warnings.warn(f"{spec.name}: shared calibration unavailable ({exc}); converting "
                          "each variant on its own", stacklevel=2)
            self._groups.pop(key, None)
            self._built.pop(key, None)
            return None

    def _sets(self, key: str) -> dict[VariantSpec, Sequence[str]]:
        sets = {}
        for member in self._groups[key]:
            try:
                ids = self._calibration_ids(member)
            except PetqError:  # e.g. a class out of range: its own conversion says so
                continue
            if ids:
                sets[member] = ids
        return sets


def _never_read() -> Iterator[list[np.ndarray]]:
    raise SharedUnavailable("the converter read its representative dataset itself")
    yield  # a generator function


def _range_views(model: bytes | bytearray) -> Ranges:
    """Views of each tensor's calibrated (min, max) in a flatbuffer; writable on a
    bytearray, so writing them edits the model in place."""
    from tensorflow.lite.python import schema_py_generated as schema

    root = schema.Model.GetRootAs(model, 0)
    views = []
    for s in range(root.SubgraphsLength()):
        graph = root.Subgraphs(s)
        for t in range(graph.TensorsLength()):
            quant = graph.Tensors(t).Quantization()
            if quant is not None and not quant.MinIsNone():
                views.append((quant.MinAsNumpy(), quant.MaxAsNumpy()))
    return views


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

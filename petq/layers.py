"""Per-layer quantization error, and selective quantization (chosen layers kept in float).

Two ways to measure a layer's error, both on float32 debug samples and both reported
as `LayerStat` rows in graph order:

- **per layer** (`reference="layer"`, TFLite converter only): the converter's
  `QuantizationDebugger` builds a model in which every quantized op also runs in float
  on the *same* (dequantized) inputs, joined by a `NumericVerify` op. The difference is
  the error that this layer adds, not what earlier layers passed on: the measure to pick
  the layers worth keeping in float.
- **whole model** (`reference="model"`, and every AI Edge Quantizer measure): the float
  model and the quantized model run side by side and each op's output is compared with
  the float model's tensor of the same name. The error grows with depth; AI Edge
  Quantizer's `Quantizer.validate` measures this way.

Every model runs in ai_edge_litert's interpreter as petq evaluates it (XNNPACK on), with
all intermediate tensors preserved (AI Edge Quantizer's validation runs the same way; on a
MobileNetV2 the reference kernels agree within 0.01 quantization steps and are 20x
slower). Statistics are
pooled over all elements of all debug samples (an RMSE over everything, the largest
absolute error anywhere), not averaged per sample as the debugger's own `run()` does.

Layer names are the float graph's op output tensor names, which are also what the
converter's denylist (`denylisted_nodes`) and AI Edge Quantizer's recipe regexes match:
a name from these statistics can be fed straight back to keep that layer in float.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from petq.errors import ModelError, SpecError
from petq.runtime import (
    captured_output,
    default_threads,
    first_line,
    load_keras_model,
    logged_error,
)

Reference = Literal["layer", "model"]

_CONVERSION_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})
_NUMERIC_VERIFY = "NumericVerify"


@dataclass(frozen=True)
class LayerStat:
    """The quantization error of one layer's output tensor on the debug samples.

    `error` is the RMSE in units of the tensor's quantization step (RMSE / scale):
    rounding alone gives about 1/sqrt(12) = 0.29 steps, so values well above 1 mean
    clipping or error carried in from elsewhere. `rmse`, `mean_abs_error` and
    `max_abs_error` are in the tensor's float units. `range_used` is the float range
    the quantized tensor can represent, (scale * (qmin - zp), scale * (qmax - zp));
    `range_observed` is (min, max) of the float model's values of that tensor on the
    debug samples. A layer left in float (no scale) has `error`, `scale`, `zero_point`
    and `range_used` None. `index` is the op's position in the float graph.
    """

    index: int
    name: str
    op: str
    error: float | None
    rmse: float
    mean_abs_error: float
    max_abs_error: float
    scale: float | None
    zero_point: int | None
    range_used: tuple[float, float] | None
    range_observed: tuple[float, float] | None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("range_used", "range_observed"):
            data[key] = list(data[key]) if data[key] is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerStat:
        def pair(value: Any) -> tuple[float, float] | None:
            return None if value is None else (float(value[0]), float(value[1]))

        def number(value: Any) -> float | None:
            return None if value is None else float(value)

        return cls(
            index=int(data["index"]), name=str(data["name"]), op=str(data["op"]),
            error=number(data["error"]), rmse=float(data["rmse"]),
            mean_abs_error=float(data["mean_abs_error"]),
            max_abs_error=float(data["max_abs_error"]),
            scale=number(data["scale"]),
            zero_point=None if data["zero_point"] is None else int(data["zero_point"]),
            range_used=pair(data["range_used"]), range_observed=pair(data["range_observed"]),
        )


def op_output_names(tflite: bytes) -> set[str]:
    """The output tensor names of every op of a .tflite graph: the layer names that
    selective quantization can keep in float."""
    return set(_op_outputs(_interpreter(tflite, 1, preserve=False)))


def worst_layers(stats: Sequence[LayerStat], n: int) -> list[str]:
    """Names of the `n` quantized layers with the largest error (ties: earlier in the graph)."""
    ranked = sorted((s for s in stats if s.error is not None), key=lambda s: (-s.error, s.index))
    if not 0 <= n <= len(ranked):
        raise SpecError(f"cannot pick the {n} worst layers: the model has {len(ranked)} "
                        "quantized layers")
    return [s.name for s in ranked[:n]]


def quantized_ops(tflite: bytes) -> list[tuple[str, str]]:
    """(op, output name) of the ops that compute in integer, in graph order.

    An op counts when its output tensor is an integer tensor with a quantization scale;
    the QUANTIZE/DEQUANTIZE ops that convert between float and integer do not.
    """
    interpreter = _interpreter(tflite, threads=1, preserve=False)
    found = []
    for op in _ops(interpreter):
        detail = interpreter._get_tensor_details(op["outputs"][0], 0)
        if op["op_name"] not in _CONVERSION_OPS and _quant_params(detail) is not None:
            found.append((op["op_name"], detail["name"]))
    return found


# ------------------------------------------------------------------ TFLite converter


class ConverterDebug:
    """One calibration of a Keras model by the TFLite converter's QuantizationDebugger,
    reused for per-layer statistics and for any number of selective INT8 models.

    `source` is a Keras model, its path, or a `tf.lite.TFLiteConverter` already set up
    (its per-channel flag and I/O type are then the defaults; its representative dataset
    is replaced by `calibration`). `calibration` yields float32 (1, H, W, 3) inputs,
    already preprocessed; it is read once. Only int8 activations: the debugger's
    quantizer has no 16x8 mode. With nothing kept in float, `selective_int8()` gives the
    converter's own full-INT8 model (same tensors, scales and outputs; tested). Not
    thread-safe: `selective_int8` changes the debugger's options.
    """

    def __init__(
        self,
        source: Any,
        calibration: Iterable[np.ndarray],
        *,
        per_channel: bool | None = None,
        activations: str = "int8",
    ):
        import tensorflow as tf

        if activations != "int8":
            raise SpecError(f"activations {activations!r}: the TFLite converter's "
                            "quantization debugger quantizes activations to int8 only")
        converter = _converter(source)
        int16 = tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        if int16 in set(converter.target_spec.supported_ops):
            raise SpecError("the TFLite converter's quantization debugger quantizes "
                            "activations to int8 only, not 16x8")
        if per_channel is None:
            per_channel = not getattr(converter, "_experimental_disable_per_channel", False)
        self.per_channel = per_channel
        given = _given_converter(source)
        self.int8_io = converter.inference_input_type != tf.float32 if given else True
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter._experimental_disable_per_channel = not per_channel
        read = [0]

        def representative() -> Iterator[list[np.ndarray]]:
            for x in calibration:
                read[0] += 1
                yield [np.asarray(x, dtype=np.float32)]

        converter.representative_dataset = representative
        with captured_output() as log:
            try:
                self._debugger = tf.lite.experimental.QuantizationDebugger(converter=converter)
                self._debug_model = self._debugger.get_debug_quantized_model()
            except Exception as exc:
                if read[0] == 0:
                    raise SpecError("the calibration set is empty") from None
                raise ModelError(f"{_label(source)}: calibration for the quantization debugger "
                                 f"failed: {first_line(exc)}{logged_error(log)}") from None
        # The converter's float graph with calibration statistics: its tensors carry the
        # names the denylist matches, and it runs in LiteRT as the float reference.
        self.float_model: bytes = self._debugger.calibrated_model
        self._float_ops: dict[str, _FloatOp] | None = None

    @property
    def float_ops(self) -> dict[str, _FloatOp]:
        """Float graph op output name -> where it is made (the names to denylist)."""
        if self._float_ops is None:
            self._float_ops = _op_outputs(_interpreter(self.float_model, 1, preserve=False))
        return self._float_ops

    def selective_int8(self, denylisted_nodes: Sequence[str] = (), *,
                       int8_io: bool | None = None) -> bytes:
        """The INT8 model with `denylisted_nodes` (layer names) kept in float.

        With `int8_io` (default: the given converter's I/O type, else True) the model
        takes and returns int8 like petq's other INT8 variants (the debugger's
        `fully_quantize`); otherwise float I/O, as the debugger gives by default.
        """
        import tensorflow as tf

        nodes = list(dict.fromkeys(denylisted_nodes))
        unknown = [n for n in nodes if n not in self.float_ops]
        if unknown:
            raise SpecError(f"no layer named {unknown[0]!r} in the model's float graph "
                            f"({len(unknown)} unknown of {len(nodes)} names to keep in float)")
        options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=nodes or None,
            fully_quantize=self.int8_io if int8_io is None else int8_io)
        with captured_output() as log:
            try:
                self._debugger.options = options
                model = self._debugger.get_nondebug_quantized_model()
            except ValueError as exc:
                if "debug mode" in str(exc):  # no NumericVerify op left: nothing quantized
                    raise SpecError(f"keeping {len(nodes)} layers in float leaves nothing "
                                    "quantized: that is the FP32 variant") from None
                raise ModelError(f"selective INT8 failed: {first_line(exc)}"
                                 f"{logged_error(log)}") from None
        still = {name: op for op, name in quantized_ops(model)}
        ignored = [n for n in nodes if n in still]
        if ignored:
            raise SpecError(
                f"the converter keeps {ignored[0]!r} ({still[ignored[0]]}) in int8 when it is "
                "denylisted: same-scale ops (pooling, reshape...) follow their input's "
                f"quantization ({len(ignored)} of {len(nodes)} layers not kept in float)")
        return model

    def layer_stats(self, debug: Sequence[np.ndarray], *, reference: Reference = "layer",
                    threads: int | None = None) -> list[LayerStat]:
        """Per-layer statistics on `debug` (float32 (N, H, W, 3) arrays), in graph order."""
        float_interpreter = _interpreter(self.float_model, threads)
        if reference == "layer":
            quant = _interpreter(self._debug_model, threads)
            probes = _verify_probes(quant, self.float_ops)
        elif reference == "model":
            quant = _interpreter(self.selective_int8((), int8_io=True), threads)
            probes = _model_probes(quant, self.float_ops)
        else:
            raise SpecError(f"reference must be 'layer' or 'model', got {reference!r}")
        return _measure(quant, float_interpreter, probes, debug)


def converter_layer_stats(
    source: Any,
    calibration: Iterable[np.ndarray],
    debug: Sequence[np.ndarray],
    *,
    per_channel: bool = True,
    activations: str = "int8",
    reference: Reference = "layer",
    threads: int | None = None,
) -> list[LayerStat]:
    """Per-layer error of the converter's full-INT8 model (see `ConverterDebug`)."""
    session = ConverterDebug(source, calibration, per_channel=per_channel,
                             activations=activations)
    return session.layer_stats(debug, reference=reference, threads=threads)


def selective_int8(
    source: Any,
    calibration: Iterable[np.ndarray],
    denylisted_nodes: Sequence[str],
    *,
    per_channel: bool | None = None,
    int8_io: bool | None = None,
) -> bytes:
    """A full-INT8 converter model with the named layers kept in float (int8 I/O by
    default, or the given converter's I/O type; see `ConverterDebug.selective_int8`)."""
    session = ConverterDebug(source, calibration, per_channel=per_channel)
    return session.selective_int8(denylisted_nodes, int8_io=int8_io)


# ------------------------------------------------------------------ whole model


def model_layer_stats(fp32_tflite: bytes, quantized_tflite: bytes,
                      debug: Sequence[np.ndarray], *, threads: int | None = None
                      ) -> list[LayerStat]:
    """Whole-model comparison of any two .tflite models of one graph (e.g. petq's cached
    FP32 and INT8 variants, or an AEQ result): every op of the quantized model whose
    output name is also an op output of the float model, in graph order."""
    float_interpreter = _interpreter(fp32_tflite, threads)
    quant = _interpreter(quantized_tflite, threads)
    probes = _model_probes(quant, _op_outputs(float_interpreter))
    if not probes:
        raise ModelError("the quantized model shares no op output names with the float model")
    return _measure(quant, float_interpreter, probes, debug)


# ------------------------------------------------------------------ measuring


@dataclass
class _Probe:
    """Where one layer's values live: `quant` in the quantized (or debug) model,
    `reference` in the float model (whole model) or in the debug model (per layer)."""

    index: int
    name: str
    op: str
    quant: int
    reference: int
    reference_in_float: bool
    observed: int | None
    params: tuple[float, int, int, int] | None  # scale, zero point, qmin, qmax
    count: int = 0
    sum_sq: float = 0.0
    sum_abs: float = 0.0
    max_abs: float = 0.0
    low: float = np.inf
    high: float = -np.inf

    def stat(self) -> LayerStat:
        rmse = float(np.sqrt(self.sum_sq / self.count))
        scale, zero, qmin, qmax = self.params or (None, None, 0, 0)
        return LayerStat(
            index=self.index, name=self.name, op=self.op,
            error=None if scale is None else rmse / scale,
            rmse=rmse, mean_abs_error=self.sum_abs / self.count, max_abs_error=self.max_abs,
            scale=scale, zero_point=zero,
            range_used=None if scale is None else (scale * (qmin - zero), scale * (qmax - zero)),
            range_observed=None if self.observed is None else (self.low, self.high),
        )


def _measure(quant: Any, float_interpreter: Any, probes: list[_Probe],
             debug: Sequence[np.ndarray]) -> list[LayerStat]:
    rows = 0
    for x in _rows(debug):
        rows += 1
        for interpreter in (quant, float_interpreter):
            _feed(interpreter, x)
            interpreter.invoke()
        for p in probes:
            values = quant.get_tensor(p.quant).astype(np.float64)
            if p.params is not None:
                values = (values - p.params[1]) * p.params[0]
            source = float_interpreter if p.reference_in_float else quant
            diff = np.abs(values - source.get_tensor(p.reference))
            p.count += diff.size
            p.sum_sq += float(np.dot(diff.ravel(), diff.ravel()))
            p.sum_abs += float(diff.sum())
            p.max_abs = max(p.max_abs, float(diff.max()))
            if p.observed is not None:
                observed = float_interpreter.get_tensor(p.observed)
                p.low = min(p.low, float(observed.min()))
                p.high = max(p.high, float(observed.max()))
    if rows == 0:
        raise SpecError("the debug set is empty")
    return [p.stat() for p in sorted(probes, key=lambda p: p.index)]


def _verify_probes(debug_model: Any, float_ops: dict[str, _FloatOp]) -> list[_Probe]:
    """A probe per NumericVerify op: input 0 is the quantized output, input 1 the float
    op run on the same inputs."""
    ops = _ops(debug_model)
    producer = {int(out): op for op in ops for out in op["outputs"]}
    probes = []
    for op in ops:
        if op["op_name"] != _NUMERIC_VERIFY:
            continue
        quant_index, float_index = (int(i) for i in op["inputs"][:2])
        detail = debug_model._get_tensor_details(quant_index, 0)
        name = _source_name(debug_model, producer.get(float_index), detail["name"], float_ops)
        if name is None:
            raise ModelError(f"cannot match the debugger's tensor {detail['name']!r} to a layer "
                             "of the float graph")
        probes.append(_Probe(
            index=float_ops[name].index, name=name, op=producer[quant_index]["op_name"],
            quant=quant_index, reference=float_index, reference_in_float=False,
            observed=float_ops[name].tensor, params=_quant_params(detail)))
    return probes


def _model_probes(quant: Any, float_ops: dict[str, _FloatOp]) -> list[_Probe]:
    probes = []
    for op in _ops(quant):
        out = int(op["outputs"][0])
        detail = quant._get_tensor_details(out, 0)
        match = float_ops.get(detail["name"])
        if op["op_name"] in _CONVERSION_OPS or match is None:
            continue
        probes.append(_Probe(
            index=match.index, name=detail["name"], op=op["op_name"], quant=out,
            reference=match.tensor, reference_in_float=True, observed=match.tensor,
            params=_quant_params(detail)))
    return probes


def _source_name(debug_model: Any, float_op: dict | None, quant_name: str,
                 known: dict[str, _FloatOp]) -> str | None:
    """The float graph's name of a layer of the debug model.

    The float copy of a layer keeps the layer's name, except for same-scale ops such as
    MAX_POOL_2D, which are checked against a DEQUANTIZE of their int8 output; the
    quantized copy gets the name plus a digit, which the debugger's own report strips.
    """
    if float_op is not None and float_op["op_name"] != "DEQUANTIZE":
        name = debug_model._get_tensor_details(int(float_op["outputs"][0]), 0)["name"]
        if name in known:
            return name
    stripped = quant_name
    while stripped and stripped[-1].isdigit():
        stripped = stripped[:-1]
        if stripped in known:
            return stripped
    return quant_name if quant_name in known else None


# ------------------------------------------------------------------ helpers


@dataclass(frozen=True)
class _FloatOp:
    index: int  # op position in the graph
    op: str
    tensor: int  # output tensor index


def _interpreter(model: bytes, threads: int | None, preserve: bool = True) -> Any:
    """LiteRT as petq evaluates (XNNPACK on), every intermediate tensor kept readable."""
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # preserve_all_tensors' "debugging only" notice
        try:
            interpreter = Interpreter(
                model_content=bytes(model), num_threads=threads or default_threads(),
                experimental_preserve_all_tensors=preserve)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"model bytes: not a valid TFLite model ({exc})") from None
    return interpreter


def _ops(interpreter: Any) -> list[dict[str, Any]]:
    return [op for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]


def _op_outputs(interpreter: Any) -> dict[str, _FloatOp]:
    """Op output name -> where it is made, for every op of the graph."""
    found = {}
    for op in _ops(interpreter):
        for out in op["outputs"]:
            name = interpreter._get_tensor_details(int(out), 0)["name"]
            found.setdefault(name, _FloatOp(int(op["index"]), op["op_name"], int(out)))
    return found


def _quant_params(detail: dict[str, Any]) -> tuple[float, int, int, int] | None:
    """(scale, zero point, qmin, qmax) of an integer tensor with a scale (activations are
    per-tensor; the first scale is taken, as the debugger does)."""
    scales = detail["quantization_parameters"]["scales"]
    if not np.issubdtype(detail["dtype"], np.integer) or len(scales) == 0:
        return None
    info = np.iinfo(detail["dtype"])
    zero = int(detail["quantization_parameters"]["zero_points"][0])
    return float(scales[0]), zero, int(info.min), int(info.max)


def _rows(samples: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Batches of any size -> float32 batches of one."""
    for batch in samples:
        batch = np.asarray(batch, dtype=np.float32)
        for row in batch.reshape((-1, *batch.shape[-3:])):
            yield row[None]


def _feed(interpreter: Any, x: np.ndarray) -> None:
    detail = interpreter.get_input_details()[0]
    if tuple(x.shape) != tuple(detail["shape"]):
        raise SpecError(f"debug input of shape {tuple(x.shape)}, the model takes "
                        f"{tuple(int(d) for d in detail['shape'])}")
    params = _quant_params(detail)
    if params is not None:
        scale, zero, qmin, qmax = params
        x = np.clip(np.round(x / scale + zero), qmin, qmax)
    interpreter.set_tensor(detail["index"], x.astype(detail["dtype"]))


def _given_converter(source: Any) -> bool:
    return callable(getattr(source, "convert", None)) and hasattr(source, "representative_dataset")


def _converter(source: Any) -> Any:
    """A TFLite converter for a Keras model, its path, or the converter itself."""
    import tensorflow as tf

    if _given_converter(source):
        return source
    model = load_keras_model(source) if isinstance(source, (str, Path)) else source
    with captured_output():
        return tf.lite.TFLiteConverter.from_keras_model(model)


def _label(source: Any) -> str:
    return str(source) if isinstance(source, (str, Path)) else type(source).__name__

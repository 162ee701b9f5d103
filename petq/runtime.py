"""Runners: one interface over Keras and LiteRT, keeping the lab's four-step split.

`preprocess_input` does allocation and int8 quantization, `run_inference` only
invokes (it is what latency measures), `postprocess_outputs` dequantizes.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from petq.errors import ModelError
from petq.types import Mode, Recipe, source_recipe


def default_threads() -> int:
    return os.cpu_count() or 1


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Keep native libraries' start-up lines (TensorFlow's oneDNN and CUDA probes, LiteRT's
    delegate notice) off the terminal: they print through C++ logging, which
    TF_CPP_MIN_LOG_LEVEL does not reach before logging is initialised."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def captured_output() -> Iterator[io.TextIOBase]:
    """Send the converter's chatter on stdout and stderr (Python and C++) to a temp file.

    The text is kept for error messages. Progress bars are not lost: the CLI draws them
    on its own copy of the terminal's stderr (`petq.console.terminal`).
    """
    log = tempfile.TemporaryFile(mode="w+")
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    try:
        for fd in saved:
            os.dup2(log.fileno(), fd)
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield log
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        log.seek(0)


def first_line(exc: BaseException) -> str:
    """An exception's first line (at most 300 characters), or its type's name."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def logged_error(log: Any) -> str:
    """` [the last line of a backend's captured chatter that mentions an error]`, if any."""
    log.flush()
    log.seek(0)
    line = next((line for line in reversed(log.read().splitlines()) if "error" in line.lower()),
                "")
    return f" [{line.strip()[:300]}]" if line else ""


_TF_PROBED = threading.Event()


def import_tensorflow():
    """`tensorflow`, imported and its devices probed once with the start-up chatter (oneDNN
    notice, CUDA probes, which print lazily on first use) kept off the terminal."""
    if not _TF_PROBED.is_set():
        with quiet_native_stderr():
            import tensorflow as tf

            tf.config.list_physical_devices()
        _TF_PROBED.set()
    import tensorflow as tf

    return tf


def import_keras():
    """`keras`, with TensorFlow imported quietly first (see `import_tensorflow`)."""
    import_tensorflow()
    import keras

    return keras


class Runner(ABC):
    """Runs one model on float32 NHWC batches of one, as petq.data.preprocess makes them."""

    name: str = "runner"

    def __init__(self) -> None:
        self.lock = threading.Lock()  # interpreters are not safe to share between threads

    @abstractmethod
    def prepare_model(self) -> None: ...

    @abstractmethod
    def preprocess_input(self, x: np.ndarray) -> None: ...

    @abstractmethod
    def run_inference(self) -> Any: ...

    @abstractmethod
    def postprocess_outputs(self, y: Any) -> np.ndarray: ...

    def predict(self, x: np.ndarray) -> np.ndarray:
        """float32 (1, H, W, 3) -> float32 scores (C,)."""
        with self.lock:
            self.preprocess_input(x)
            return self.postprocess_outputs(self.run_inference())

    @property
    @abstractmethod
    def num_classes(self) -> int: ...


class KerasRunner(Runner):
    name = "keras"

    def __init__(self, model_path: Path | str, threads: int | None = None):
        super().__init__()
        self.model_path = Path(model_path)
        self.threads = threads or default_threads()
        self.model = None
        self.prepare_model()

    def prepare_model(self) -> None:
        self.model = load_keras_model(self.model_path)
        self._x = None

    def preprocess_input(self, x: np.ndarray) -> None:
        import tensorflow as tf

        self._x = tf.convert_to_tensor(x, dtype=tf.float32)

    def run_inference(self) -> Any:
        return self.model(self._x, training=False)

    def postprocess_outputs(self, y: Any) -> np.ndarray:
        return np.asarray(y, dtype=np.float32)[0]

    def predict_batch(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Scores for a batch: the accuracy pass for the native model.

        The same numbers as `model.predict(x, batch_size=32)` (a test checks this), in
        about half the time: `predict` builds a dataset and an iterator on every call,
        `predict_on_batch` reuses one traced function."""
        return np.concatenate([
            np.asarray(self.model.predict_on_batch(x[i:i + batch_size]), np.float32)
            for i in range(0, len(x), batch_size)
        ])

    @property
    def num_classes(self) -> int:
        return int(self.model.outputs[0].shape[-1])


MAX_REASON = 300  # characters of a library's error message quoted in ours


def _reason(exc: Exception) -> str:
    """The first line of a library's error, without Keras' dump of the object's config,
    cut at a word boundary when it is still long."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = text.split(" Full object config:")[0].strip()
    if len(text) > MAX_REASON:
        text = text[:MAX_REASON].rsplit(" ", 1)[0].rstrip(" ,;:(") + " ..."
    return text


def _archive_problem(path: Path) -> str | None:
    """Why a `.keras` file is not a Keras archive (a zip holding config.json), or None."""
    import zipfile

    if path.suffix != ".keras" or not path.is_file():
        return None
    if not zipfile.is_zipfile(path):
        return f"{path}: not a valid .keras archive (a .keras model is a zip file; this one is not)"
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        return f"{path}: not a valid .keras archive ({_reason(exc)})"
    if "config.json" not in names:
        return f"{path}: not a valid .keras archive (no config.json inside)"
    return None


def _shapes(tensors) -> str:
    """`name (None, 16, 16, 3), ...`: each Keras tensor by the layer that makes it."""

    def name(t) -> str:
        made_by = getattr(getattr(t, "_keras_history", None), "operation", None)
        return getattr(made_by, "name", None) or getattr(t, "name", "?")

    return ", ".join(f"{name(t)} {tuple(t.shape)}" for t in tensors) or "none"


def load_keras_model(path: Path | str):
    """Load a Keras model (.keras, .h5), with a clear error for anything else."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    problem = _archive_problem(path)
    if problem:
        raise ModelError(problem)
    keras = import_keras()
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a bad file
        custom = "Could not locate" in str(exc) or "Unknown layer" in str(exc)
        raise ModelError(
            f"{path}: not a loadable Keras model ({type(exc).__name__}: {_reason(exc)})"
            + ("; petq cannot import your own classes: save the model as a functional or "
               "Sequential model of Keras layers, or convert it to .tflite yourself and pass "
               "that" if custom else "")) from None
    inputs, outputs = list(getattr(model, "inputs", None) or []), list(
        getattr(model, "outputs", None) or [])
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(f"{path}: expected one image input and one class-score output; "
                         f"found inputs: {_shapes(inputs)}; outputs: {_shapes(outputs)}")
    return model


def model_io(path: Path | str, model: Any = None) -> dict[str, Any]:
    """What a source model says of itself: parameter count, input shape (H, W, C), class
    count, file size. Reads a Keras model or a .tflite file; `model`: the Keras model at
    `path`, when it is loaded already."""
    path = Path(path)
    size = path.stat().st_size if path.is_file() else None
    if path.suffix == ".tflite":
        runner = LiteRTRunner(path, 1)
        params = _constant_elements(runner.interpreter)
        shape = [int(d) for d in runner.input_shape[1:]]
        classes = runner.num_classes
        found = (f"found inputs: {_detail_shapes(runner.interpreter.get_input_details())}; "
                 f"outputs: {_detail_shapes(runner.interpreter.get_output_details())}")
        if (len(runner.interpreter.get_input_details()) != 1
                or len(runner.interpreter.get_output_details()) != 1):
            raise ModelError(f"{path}: expected one image input and one class-score output; "
                             + found)
    else:
        model = model if model is not None else load_keras_model(path)
        params = int(model.count_params())
        shape = [int(d) if d else 0 for d in model.inputs[0].shape[1:]]
        classes = int(model.outputs[0].shape[-1] or 0)
        found = (f"found inputs: {_shapes(model.inputs)}; "
                 f"outputs: {_shapes(model.outputs)}")
    if len(shape) != 3 or shape[-1] not in (1, 3) or not shape[0] or not shape[1]:
        raise ModelError(f"{path}: expected an image input of fixed size, (H, W, 3) for RGB "
                         f"or (H, W, 1) for grayscale; {found}")
    return {"param_count": params, "input_shape": shape, "num_classes": classes,
            "file_size_bytes": size}


def _detail_shapes(details) -> str:
    return ", ".join(f"{d['name']} {tuple(int(v) for v in d['shape_signature'])}"
                     for d in details) or "none"


def _constant_elements(interpreter) -> int:
    """Elements of the tensors baked into a .tflite model (weights, biases): op inputs
    that no op produces and that are not graph inputs."""
    ops = interpreter._get_ops_details()
    produced = {i for op in ops for i in op["outputs"]}
    graph_inputs = {d["index"] for d in interpreter.get_input_details()}
    constants = {i for op in ops for i in op["inputs"]
                 if i >= 0 and i not in produced and i not in graph_inputs}
    shapes = {d["index"]: d["shape"] for d in interpreter.get_tensor_details()}
    return int(sum(np.prod(shapes[i]) for i in constants if i in shapes))


class LiteRTRunner(Runner):
    """A .tflite model on ai_edge_litert's interpreter (XNNPACK on, threads explicit)."""

    name = "litert"

    def __init__(self, model: Path | str | bytes, threads: int | None = None):
        super().__init__()
        self.model_source = model
        self.threads = threads or default_threads()
        self.prepare_model()

    def prepare_model(self) -> None:
        from ai_edge_litert.interpreter import Interpreter

        source = self.model_source
        label = "model bytes" if isinstance(source, bytes) else str(source)
        try:
            if not isinstance(source, bytes) and not Path(source).is_file():
                raise ModelError(f"{source}: model file not found")
            with quiet_native_stderr():
                if isinstance(source, bytes):
                    self.interpreter = Interpreter(model_content=source,
                                                   num_threads=self.threads)
                else:
                    self.interpreter = Interpreter(model_path=str(source),
                                                   num_threads=self.threads)
                self.interpreter.allocate_tensors()
        except ModelError:
            raise
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{label}: not a valid TFLite model ({exc})") from None
        inp = self.interpreter.get_input_details()[0]
        out = self.interpreter.get_output_details()[0]
        self.input_index, self.output_index = inp["index"], out["index"]
        self.input_dtype, self.output_dtype = inp["dtype"], out["dtype"]
        self.input_scale, self.input_zero = inp["quantization"]
        self.output_scale, self.output_zero = out["quantization"]
        self.input_shape = tuple(inp["shape"])
        self._num_classes = int(out["shape"][-1])

    @property
    def quantized_input(self) -> bool:
        return np.issubdtype(self.input_dtype, np.integer)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """float32 -> the input tensor's dtype (int8 uses the tensor's scale and zero point)."""
        if not self.quantized_input:
            return x.astype(self.input_dtype, copy=False)
        info = np.iinfo(self.input_dtype)
        q = np.round(x / self.input_scale + self.input_zero)
        return np.clip(q, info.min, info.max).astype(self.input_dtype)

    def preprocess_input(self, x: np.ndarray) -> None:
        self.interpreter.set_tensor(self.input_index, self.quantize(x))

    def run_inference(self) -> None:
        self.interpreter.invoke()

    def postprocess_outputs(self, y: Any = None) -> np.ndarray:
        return self.dequantize(self.interpreter.get_tensor(self.output_index)[0])

    def dequantize(self, out: np.ndarray) -> np.ndarray:
        """Raw output values (any shape) -> float32 scores."""
        if np.issubdtype(self.output_dtype, np.integer):
            return (out.astype(np.float32) - self.output_zero) * self.output_scale
        return out.astype(np.float32)

    @property
    def num_classes(self) -> int:
        return self._num_classes


def softmax(scores: np.ndarray) -> np.ndarray:
    """Probabilities from logits; scores that already are probabilities pass unchanged."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.min() >= 0 and abs(scores.sum(axis=-1) - 1).max() < 1e-3:
        return scores
    z = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


_PRECISION = {np.dtype(np.float32): "fp32", np.dtype(np.float16): "f16",
              np.dtype(np.int8): "i8", np.dtype(np.int16): "i16", np.dtype(np.uint8): "u8"}
_IO = {np.dtype(np.float32): "float", np.dtype(np.int8): "int8", np.dtype(np.int16): "int16",
       np.dtype(np.uint8): "uint8"}
_NOT_COMPUTE = {"QUANTIZE", "DEQUANTIZE", "DELEGATE"}  # ops that only convert or wrap
_INT4 = 17  # the flatbuffer's TensorType.INT4 (the interpreter reports such tensors as int8)


def read_source_recipe(path: Path | str) -> Recipe:
    """The `source` recipe of a .tflite file: its precision read from the LiteRT
    interpreter's tensor details, so an already-quantized file is labelled by its real
    scheme (`wi8_ai8` with int8 I/O for a full-INT8 file, `wi8_afp32` for dynamic range).

    Weights: the constant tensors of two or more dimensions (filters, not biases).
    Activations: the outputs of compute ops (not QUANTIZE/DEQUANTIZE). Integer weights
    that a DEQUANTIZE op turns to float are weight-only; integer weights read by float
    ops are dynamic range. Per channel when every integer weight tensor has one scale
    per output channel.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    path = Path(path)
    try:
        data = path.read_bytes()
        with quiet_native_stderr():  # the graph as written: no delegate takes ops over
            interpreter = Interpreter(
                model_content=data,
                experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: not a valid TFLite model ({_reason(exc)})") from None
    ops = interpreter._get_ops_details()
    tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
    produced = {i for op in ops for i in op["outputs"]}
    inputs = interpreter.get_input_details()
    graph_inputs = {d["index"] for d in inputs}
    constants = {i for op in ops for i in op["inputs"]
                 if i >= 0 and i not in produced and i not in graph_inputs and i in tensors}
    weights = [tensors[i] for i in sorted(constants) if len(tensors[i]["shape"]) >= 2]
    integer = [w for w in weights if np.issubdtype(w["dtype"], np.integer)]
    int4 = _int4_tensors(data)
    if integer:
        weight = "i4" if all(w["index"] in int4 for w in integer) else _PRECISION.get(
            np.dtype(integer[0]["dtype"]), "i8")
    else:
        weight = "f16" if any(w["dtype"] == np.float16 for w in weights) else "fp32"
    outputs = [tensors[o]["dtype"] for op in ops if op["op_name"] not in _NOT_COMPUTE
               for o in op["outputs"] if o in tensors]
    kinds = {_PRECISION.get(np.dtype(d), "fp32") for d in outputs} or {"fp32"}
    activation = next((k for k in ("i16", "i8", "u8") if k in kinds), "fp32")
    dequantized = {i for op in ops if op["op_name"] == "DEQUANTIZE" for i in op["inputs"]}
    if activation != "fp32":
        mode = Mode.STATIC
    elif integer:
        mode = (Mode.WEIGHT_ONLY if any(w["index"] in dequantized for w in integer)
                else Mode.DYNAMIC)
    else:
        mode = Mode.FLOAT16 if weight == "f16" else Mode.FLOAT
    per_channel = bool(integer) and all(
        len(w["quantization_parameters"]["scales"]) > 1 for w in integer)
    io = _IO.get(np.dtype(inputs[0]["dtype"]), "float") if inputs else "float"
    return source_recipe(mode, weight, activation, io, per_channel or not integer)


def _int4_tensors(data: bytes) -> set[int]:
    """Indices of the first subgraph's INT4 tensors, from the flatbuffer itself."""
    try:
        from ai_edge_litert import schema_py_generated as schema

        graph = schema.Model.GetRootAs(data, 0).Subgraphs(0)
        return {i for i in range(graph.TensorsLength()) if graph.Tensors(i).Type() == _INT4}
    except Exception:  # another schema version: int4 weights then read as int8
        return set()

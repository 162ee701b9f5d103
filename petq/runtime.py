"""Runners: one interface over Keras and LiteRT, keeping the lab's four-step split.

`preprocess_input` does allocation and int8 quantization, `run_inference` only
invokes (it is what latency measures), `postprocess_outputs` dequantizes.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from petq.errors import ModelError


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


def load_keras_model(path: Path | str):
    """Load a Keras model (.keras, .h5), with a clear error for anything else."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    keras = import_keras()
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a bad file
        raise ModelError(f"{path}: not a loadable Keras model ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(f"{path}: expected one image input and one class-score output")
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
    else:
        model = model if model is not None else load_keras_model(path)
        params = int(model.count_params())
        shape = [int(d) if d else 0 for d in model.inputs[0].shape[1:]]
        classes = int(model.outputs[0].shape[-1])
    if len(shape) != 3 or shape[-1] not in (1, 3) or not shape[0] or not shape[1]:
        raise ModelError(f"{path}: expected an image input of fixed size, (H, W, 3) for RGB "
                         f"or (H, W, 1) for grayscale, got {shape}")
    return {"param_count": params, "input_shape": shape, "num_classes": classes,
            "file_size_bytes": size}


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

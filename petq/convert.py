"""Keras -> TensorFlow Lite conversion for every variant kind."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from petq.errors import ModelError, SpecError
from petq.runtime import load_keras_model
from petq.types import VariantKind, VariantSpec

Progress = Callable[[int, int], None]


def convert(
    model_path: Path | str,
    spec: VariantSpec,
    calibration: Iterable[np.ndarray] | None = None,
    calibration_count: int = 0,
    progress: Progress | None = None,
) -> bytes:
    """Convert the Keras model at `model_path` to the variant's .tflite bytes.

    `calibration` yields float32 (1, H, W, 3) inputs (already preprocessed) for
    the INT8 kinds; `progress(done, total)` is called as the calibrator reads them.
    """
    if not spec.kind.is_tflite:
        raise SpecError("the native variant is not converted")
    import tensorflow as tf

    model = load_keras_model(model_path)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if spec.kind in (VariantKind.INT8, VariantKind.IMBINT8):
        if calibration is None or calibration_count <= 0:
            raise SpecError(f"{spec.name}: the calibration set is empty")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(
            calibration, calibration_count, progress
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with captured_output() as log:
        try:
            return converter.convert()
        except Exception as exc:
            tail = log.read()[-2000:]
            raise ModelError(
                f"{model_path}: TFLite conversion of {spec.name} failed: {exc}\n{tail}"
            ) from exc


@contextlib.contextmanager
def captured_output() -> Iterator[io.TextIOBase]:
    """Send the converter's chatter on stdout (Python and C++) to a temp file.

    stderr stays free for progress bars (TF_CPP_MIN_LOG_LEVEL quiets TensorFlow's
    C++ logging there); the text is kept for error messages.
    """
    log = tempfile.TemporaryFile(mode="w+")
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(log.fileno(), 1)
        with contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield log
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        log.seek(0)


def _representative(
    samples: Iterable[np.ndarray], total: int, progress: Progress | None
) -> Callable[[], Iterator[list[np.ndarray]]]:
    def generator() -> Iterator[list[np.ndarray]]:
        for done, x in enumerate(samples, start=1):
            yield [np.asarray(x, dtype=np.float32)]
            if progress:
                progress(done, total)

    return generator

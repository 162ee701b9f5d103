"""Recipes to .tflite bytes: the TFLite converter and AI Edge Quantizer."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from petq.aeq import aeq_quantize, aeq_recipe
from petq.errors import ModelError, PetqError, SpecError
from petq.runtime import captured_output, import_tensorflow, load_keras_model
from petq.types import Backend, Mode, VariantSpec

Progress = Callable[[int, int], None]


def convert(
    model_path: Path | str,
    spec: VariantSpec,
    calibration: Iterable[np.ndarray] | None = None,
    calibration_count: int = 0,
    progress: Progress | None = None,
    *,
    float_tflite: bytes | None = None,
    keep_float_nodes: Sequence[str] = (),
) -> bytes:
    """The variant's .tflite bytes: the one place a recipe becomes a backend configuration.

    `calibration` yields float32 (1, H, W, 3) inputs (already preprocessed) for static
    recipes; `progress(done, total)` is called as the calibrator reads them. AI Edge
    Quantizer recipes quantize `float_tflite` (the FP32 variant's bytes).
    `keep_float_nodes` names layers left in float (selective quantization).
    """
    recipe = spec.recipe
    if recipe.backend is Backend.KERAS:
        raise SpecError("the native variant is not converted")
    if recipe.calibrates and (calibration is None or calibration_count <= 0):
        raise SpecError(f"{spec.name}: the calibration set is empty")
    samples = _counted(calibration, calibration_count, progress) if recipe.calibrates else None
    if recipe.backend is Backend.AEQ:
        if float_tflite is None:
            raise SpecError(f"{spec.name}: AI Edge Quantizer needs the FP32 .tflite")
        return _logged(spec, "the FP32 .tflite", lambda: aeq_quantize(
            float_tflite, aeq_recipe(spec), samples, keep_float=keep_float_nodes))
    if Path(model_path).suffix == ".tflite":
        raise ModelError(f"{model_path}: {spec.name} needs the TFLite converter, which takes a "
                         "Keras model; a .tflite source model takes tflite-fp32 and aeq-* recipes")
    return _tflite(model_path, spec, samples, keep_float_nodes)


def _tflite(model_path: Path | str, spec: VariantSpec, samples: Iterator[np.ndarray] | None,
            keep_float_nodes: Sequence[str]) -> bytes:
    rows = list(samples) if keep_float_nodes and samples is not None else samples
    converter = configured_converter(model_path, spec, _representative(rows)
                                     if spec.recipe.mode is Mode.STATIC else None)
    if keep_float_nodes and spec.recipe.mode is Mode.STATIC:
        from petq.layers import selective_int8

        return _logged(spec, model_path, lambda: selective_int8(converter, rows, keep_float_nodes))
    return _logged(spec, model_path, converter.convert)


def configured_converter(model_path: Path | str, spec: VariantSpec,
                         representative: Callable[[], Iterator[list[np.ndarray]]] | None = None):
    """The TFLite converter set up for the spec's recipe; `representative` is its
    representative dataset (static recipes)."""
    tf = import_tensorflow()

    recipe = spec.recipe
    converter = tf.lite.TFLiteConverter.from_keras_model(load_keras_model(model_path))
    io_types = {"float": tf.float32, "int8": tf.int8, "int16": tf.int16}
    if recipe.mode is Mode.FLOAT16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif recipe.mode is Mode.DYNAMIC:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif recipe.mode is Mode.STATIC:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            if recipe.activations == "i16" else tf.lite.OpsSet.TFLITE_BUILTINS_INT8
        ]
        if not recipe.per_channel:
            converter._experimental_disable_per_channel = True
        converter.inference_input_type = io_types[recipe.io]
        converter.inference_output_type = io_types[recipe.io]
    elif recipe.mode is not Mode.FLOAT:
        raise SpecError(f"{recipe.key}: the TFLite converter has no {recipe.mode.value} mode")
    return converter


def _logged(spec: VariantSpec, source: object, run: Callable[[], bytes]) -> bytes:
    """Run a backend with its chatter captured; a failure becomes one ModelError naming
    the recipe and the backend's own reason (e.g. the op without a kernel)."""
    with captured_output() as log:
        try:
            return run()
        except PetqError as exc:
            if spec.name in str(exc):
                raise
            raise type(exc)(f"{spec.name}: {exc}") from None
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])
            detail = next((line for line in reversed(log.read().splitlines())
                           if "error" in line.lower()), "")
            raise ModelError(
                f"{source}: recipe {spec.recipe.key} ({spec.name}) failed: {reason[0][:300]}"
                + (f" [{detail.strip()[:300]}]" if detail else "")
            ) from None


def _counted(samples: Iterable[np.ndarray], total: int, progress: Progress | None
             ) -> Iterator[np.ndarray]:
    for done, x in enumerate(samples, start=1):
        yield np.asarray(x, dtype=np.float32)
        if progress:
            progress(done, total)


def _representative(samples: Iterable[np.ndarray]) -> Callable[[], Iterator[list[np.ndarray]]]:
    def generator() -> Iterator[list[np.ndarray]]:
        for x in samples:
            yield [x]

    return generator

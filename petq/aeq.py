"""AI Edge Quantizer: petq's recipes as its recipes, and an FP32 .tflite quantized by it.

Its recipes are named by what they quantize (`static_wi8_ai8`, `dynamic_wi8_afp32`...);
`aeq_recipe` maps a petq recipe onto one. It quantizes the FP32 .tflite directly and
calibrates through the model's signature (`aeq_signature`). Layers kept in float are
recipe entries matched on an op's output names (`aeq_keep_float`), the names petq's
per-layer statistics give (petq.layers).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from petq.errors import ModelError, PetqError, SpecError
from petq.layers import LayerStat, model_layer_stats, op_output_names
from petq.runtime import captured_output, default_threads, first_line, logged_error
from petq.types import Mode, VariantSpec

Recipe = Sequence[dict[str, Any]]

AEQ_RECIPES = {  # (mode, weights, activations) -> ai_edge_quantizer.recipe function
    (Mode.DYNAMIC, "i8", "fp32"): "dynamic_wi8_afp32",
    (Mode.DYNAMIC, "i4", "fp32"): "dynamic_wi4_afp32",
    (Mode.WEIGHT_ONLY, "i8", "fp32"): "weight_only_wi8_afp32",
    (Mode.WEIGHT_ONLY, "i4", "fp32"): "weight_only_wi4_afp32",
    (Mode.STATIC, "i8", "i8"): "static_wi8_ai8",
    (Mode.STATIC, "i8", "i16"): "static_wi8_ai16",
}


def aeq_recipe(spec: VariantSpec) -> list[dict]:
    """The AI Edge Quantizer recipe (its JSON-like list of op configs) for a spec."""
    from ai_edge_quantizer import recipe as aeq_recipes

    recipe = spec.recipe
    name = AEQ_RECIPES.get((recipe.mode, recipe.weights, recipe.activations))
    if name is None:
        raise SpecError(f"{recipe.key}: AI Edge Quantizer has no recipe for {recipe.scheme} "
                        f"({recipe.mode.value})")
    return getattr(aeq_recipes, name)()


def aeq_signature(tflite: bytes) -> tuple[str, str]:
    """(signature key, input name) of a one-input .tflite model."""
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_content=tflite).get_signature_list()
    if not signatures:
        raise ModelError("the FP32 .tflite has no signature: AI Edge Quantizer needs one")
    key = next(iter(signatures))
    inputs = signatures[key]["inputs"]
    if len(inputs) != 1:
        raise ModelError(f"the FP32 .tflite signature {key!r} has {len(inputs)} inputs, not 1")
    return key, inputs[0]


def aeq_keep_float(quantizer: Any, nodes: Sequence[str], float_tflite: bytes | None = None
                   ) -> None:
    """Add recipe entries that leave the named layers in float to an AEQ `Quantizer`.

    AEQ matches a recipe's regex against an op's scope, its output names each followed
    by ";"; later entries win. With `float_tflite`, unknown names raise SpecError.
    """
    if float_tflite is not None:
        known = op_output_names(float_tflite)
        unknown = [n for n in nodes if n not in known]
        if unknown:
            raise SpecError(f"no layer named {unknown[0]!r} in the FP32 .tflite "
                            f"({len(unknown)} unknown of {len(nodes)} names to keep in float)")
    for name in dict.fromkeys(nodes):
        quantizer.update_quantization_recipe(
            regex=f"^{re.escape(name)};$", operation_name="*", algorithm_key="no_quantize")


def aeq_quantize(
    fp32_tflite: bytes,
    recipe: Recipe | str,
    calibration: Iterable[np.ndarray] | None = None,
    *,
    keep_float: Sequence[str] = (),
    threads: int | None = None,
) -> bytes:
    """Quantize an FP32 .tflite with an AEQ recipe (a recipe list, or the name of a
    function in `ai_edge_quantizer.recipe`, e.g. "static_wi8_ai8"), `keep_float` layers
    left in float. `calibration` yields float32 (1, H, W, 3) inputs for static recipes."""
    from ai_edge_quantizer import quantizer

    recipe = recipe_list(recipe)
    with captured_output() as log:
        try:
            qt = quantizer.Quantizer(bytearray(fp32_tflite), recipe)
            aeq_keep_float(qt, keep_float, fp32_tflite if keep_float else None)
            result = None
            if qt.need_calibration:
                signature, input_name = aeq_signature(fp32_tflite)
                data = [{input_name: np.asarray(x, dtype=np.float32)} for x in calibration or ()]
                if not data:
                    raise SpecError("the calibration set is empty")
                result = qt.calibrate({signature: data}, num_threads=threads or default_threads())
            return bytes(qt.quantize(result, enable_progress_report=False).quantized_model)
        except PetqError:
            raise
        except Exception as exc:
            raise ModelError(f"AI Edge Quantizer failed: {first_line(exc)}"
                             f"{logged_error(log)}") from None


def aeq_layer_stats(
    fp32_tflite: bytes,
    recipe: Recipe | str,
    calibration: Iterable[np.ndarray] | None,
    debug: Sequence[np.ndarray],
    *,
    threads: int | None = None,
) -> list[LayerStat]:
    """Whole-model per-layer error of an AEQ recipe (see `model_layer_stats`)."""
    quantized = aeq_quantize(fp32_tflite, recipe, calibration, threads=threads)
    return model_layer_stats(fp32_tflite, quantized, debug, threads=threads)


def recipe_list(recipe: Recipe | str) -> list[dict[str, Any]]:
    """A recipe list as given, or the one a function of `ai_edge_quantizer.recipe` makes."""
    if not isinstance(recipe, str):
        return list(recipe)
    from ai_edge_quantizer import recipe as recipes

    make = getattr(recipes, recipe, None)
    if not callable(make) or recipe.startswith("_"):
        raise SpecError(f"ai_edge_quantizer.recipe has no recipe named {recipe!r}")
    return make()

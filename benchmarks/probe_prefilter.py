"""Could a fast FP32 pass find the images that hold each tensor's extremes, so that the
converter's calibrator runs on those only?

On N trainval images of a model (default: the lab-sized MobileNetV2 of
benchmarks/lab_model.py), this compares, per image and per calibrated tensor:
- `calibrator`: the converter's own calibrator, one image at a time (what the range
  profile stores: petq/profile.py);
- `litert`: LiteRT's FP32 interpreter (XNNPACK) on the same float model with every
  calibrated tensor made a model output, its min and max taken in numpy;
- `builtin`: LiteRT's builtin kernels without delegates, every tensor kept
  (experimental_preserve_all_tensors).
It prints images per second for each, and how many per-image (min, max) pairs differ
from the calibrator's, by how much against the tensor's width.

Usage:
  python benchmarks/probe_prefilter.py [--images 24] [--model-path M]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
LAB_MODEL = Path(__file__).resolve().parent / "out" / "lab-mobilenetv2.keras"


def main() -> None:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.python.optimize import calibrator
    from tensorflow.lite.tools import flatbuffer_utils

    from petq.calibration import _range_tensors
    from petq.demo import default_workspace
    from petq.runtime import captured_output
    from petq.types import VariantSpec

    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--model-path", type=Path, default=LAB_MODEL)
    args = parser.parse_args()
    if args.model_path == LAB_MODEL and not LAB_MODEL.exists():
        raise SystemExit("build it first: python benchmarks/lab_model.py")
    ws = default_workspace(model_path=args.model_path)
    spec = VariantSpec.of("tflite-int8", count=args.images, seed=0)
    inputs = [np.asarray(x, dtype=np.float32) for x in ws._inputs(ws.calibration_ids(spec))]
    backend = ws._shared.backend(spec)
    with captured_output():
        backend.ready_profile()
    prepared = backend._prepared  # the kept export, or this process's own

    start = time.perf_counter()
    exact = []
    with captured_output():
        for x in inputs:
            calibrated = calibrator.Calibrator(prepared).calibrate(lambda x=x: iter([[x]]))
            exact.append([(float(lo.min()), float(hi.max()))
                          for _, lo, hi in _range_tensors(calibrated)])
    seconds = {"calibrator": time.perf_counter() - start}
    graph = schema.Model.GetRootAs(calibrated, 0).Subgraphs(0)
    logged = [t for t in range(graph.TensorsLength()) if graph.Tensors(t).Quantization()
              is not None and not graph.Tensors(t).Quantization().MinIsNone()]
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(prepared))
    inputs_at = {int(i) for i in model.subgraphs[0].inputs}
    model.subgraphs[0].outputs = np.array([t for t in logged if t not in inputs_at], np.int32)
    model.signatureDefs = []
    all_out = bytes(flatbuffer_utils.convert_object_to_bytearray(model))

    def ranges(interpreter) -> tuple[list, float]:
        interpreter.allocate_tensors()
        at = interpreter.get_input_details()[0]["index"]
        found, begin = [], time.perf_counter()
        for x in inputs:
            interpreter.set_tensor(at, x)
            interpreter.invoke()
            row = []
            for t in logged:
                value = x if t in inputs_at else interpreter.get_tensor(t)
                row.append((float(value.min()), float(value.max())))
            found.append(row)
        return found, time.perf_counter() - begin

    litert, seconds["litert"] = ranges(Interpreter(model_content=all_out, num_threads=1))
    builtin, seconds["builtin"] = ranges(Interpreter(
        model_content=prepared, num_threads=1, experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
    print(f"{args.model_path.name}: {len(inputs)} images, {len(logged)} calibrated tensors")
    for name, s in seconds.items():
        print(f"  {name:<10} {len(inputs) / s:7.1f} images/s")
    truth = np.array(exact)  # (images, tensors, 2)
    width = truth[:, :, 1].max(0) - truth[:, :, 0].min(0)
    for name, found in (("litert", litert), ("builtin", builtin)):
        diff = np.abs(np.array(found) - truth)
        relative = diff / np.maximum(width, 1e-30)[None, :, None]
        print(f"  {name:<10} {int((diff > 0).sum())} of {diff.size} (min, max) values differ; "
              f"worst {diff.max():.3g} absolute, {relative.max():.3g} of the tensor's width")


if __name__ == "__main__":
    main()

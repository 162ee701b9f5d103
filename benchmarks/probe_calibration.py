"""What would make the converter's INT8 calibration faster without changing its output?

Measured, not asserted. On one calibration set of the lab's (a stratified fraction
of trainval, petq's ids, preprocessed as petq does), converts the model to full
INT8 several ways and reports each one's time and whether its .tflite bytes equal
the per-image reference:
- `per-image`: one image per representative-dataset step (petq and the lab today);
- `reversed`, `with repeats`: the same images reversed, and with every image twice:
  equal bytes mean the calibrator keeps order- and repeat-free statistics
  (its running min/max per tensor);
- `batch-N`: batches of N images, the last one padded with repeats of earlier
  images (a repeat cannot move a min or a max);
- `extremes-k`: only the images that hold one of the k smallest or k largest
  values of some float tensor, found by the FP32 .tflite on XNNPACK with every
  tensor kept (`experimental_preserve_all_tensors`); the time includes that pass.
Also the calibrator's CPU time against its wall time (is it single-threaded?).

Usage: python benchmarks/probe_calibration.py [--dataset-root DIR] [--fraction 0.3]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from petq.cache import Cache  # noqa: E402
from petq.data import PetDataset, preprocess  # noqa: E402
from petq.store import load_store  # noqa: E402
from petq.types import load_contract  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def convert(model_path: Path, steps: list[np.ndarray] | None) -> tuple[bytes, float, float]:
    """.tflite bytes (full INT8, or FP32 when `steps` is None), wall and CPU seconds."""
    import keras
    import tensorflow as tf

    from petq.convert import captured_output

    model = keras.models.load_model(model_path, compile=False)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if steps is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([x] for x in steps)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    wall, cpu = time.perf_counter(), cpu_seconds()
    with captured_output():
        data = converter.convert()
    return data, time.perf_counter() - wall, cpu_seconds() - cpu


def batched(x: np.ndarray, size: int) -> list[np.ndarray]:
    pad = (-len(x)) % size
    padded = np.concatenate([x, x[:pad]]) if pad else x
    return [padded[i:i + size] for i in range(0, len(padded), size)]


def difference(a: bytes, b: bytes) -> str:
    """How two .tflite models differ: tensor shapes, quantization parameters, or elsewhere."""
    from ai_edge_litert.interpreter import Interpreter

    def tensors(data: bytes) -> list[tuple]:
        details = Interpreter(model_content=data).get_tensor_details()
        return [(t["name"], tuple(t["shape"]), tuple(t["shape_signature"]),
                 tuple(np.ravel(t["quantization_parameters"]["scales"])),
                 tuple(np.ravel(t["quantization_parameters"]["zero_points"])))
                for t in sorted(details, key=lambda t: t["name"])]

    ta, tb = tensors(a), tensors(b)
    if len(ta) != len(tb):
        return f"{len(ta)} against {len(tb)} tensors"
    shapes = sum(x[1:3] != y[1:3] for x, y in zip(ta, tb, strict=True))
    quant = sum(x[3:] != y[3:] for x, y in zip(ta, tb, strict=True))
    return f"{shapes} tensor shape(s) and {quant} quantization parameter set(s) differ"


def extreme_rows(fp32: bytes, x: np.ndarray, k: int, reference_kernels: bool) -> list[int]:
    """Rows of `x` holding one of the k lowest or k highest values of some float tensor."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if reference_kernels
                else OpResolverType.AUTO)
    interpreter = Interpreter(model_content=fp32, experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=resolver,
                              num_threads=os.cpu_count())
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    tensors = [t["index"] for t in interpreter.get_tensor_details()
               if t["dtype"] == np.float32 and len(t["shape"]) > 0]
    lows = np.empty((len(x), len(tensors)), np.float32)
    highs = np.empty_like(lows)
    for i in range(len(x)):
        interpreter.set_tensor(index, x[i:i + 1])
        interpreter.invoke()
        for j, t in enumerate(tensors):
            values = interpreter.get_tensor(t)
            lows[i, j], highs[i, j] = values.min(), values.max()
    k = min(k, len(x))
    picked = set(np.argsort(lows, axis=0, kind="stable")[:k].ravel())
    picked |= set(np.argsort(-highs, axis=0, kind="stable")[:k].ravel())
    return sorted(int(r) for r in picked)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset-root", type=Path, default=ROOT / "benchmarks" / "out"
                        / "pets-100x100")
    parser.add_argument("--model-path", type=Path, default=ROOT / "models" / "petq-demo.keras")
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--batch", type=int, nargs="+", default=[32])
    parser.add_argument("--extremes", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--skip-orders", action="store_true",
                        help="skip the reversed / repeated / batched trials")
    args = parser.parse_args()
    dataset = PetDataset.load(args.dataset_root)
    contract = load_contract(args.model_path)
    cache = Cache(ROOT / "benchmarks" / "out" / "probe-cache")
    store = load_store(dataset, contract.input_size, cache)
    pixels, kept = store.pixels_of(dataset.calibration_samples(args.fraction, args.seed))
    x = preprocess(np.asarray(pixels), contract)
    print(f"{len(kept)} calibration images ({args.fraction:g} of {len(dataset.trainval)} "
          f"trainval), model {args.model_path.name}, {os.cpu_count()} cores", flush=True)

    fp32, seconds, _ = convert(args.model_path, None)
    print(f"{'FP32 conversion (no calibration)':34s} {seconds:6.1f} s")
    reference, ref_seconds, ref_cpu = convert(args.model_path, [x[i:i + 1] for i in range(len(x))])
    print(f"{'per-image (reference)':34s} {ref_seconds:6.1f} s   CPU {ref_cpu:6.1f} s")
    one, one_seconds, _ = convert(args.model_path, [x[:1]])
    print(f"{'one image (fixed cost)':34s} {one_seconds:6.1f} s   "
          f"=> {(len(x) - 1) / max(ref_seconds - one_seconds, 1e-9):.0f} images/s calibrating")
    trials = {} if args.skip_orders else {
        "reversed": lambda: [x[i:i + 1] for i in reversed(range(len(x)))],
        "with repeats": lambda: [x[i % len(x):i % len(x) + 1] for i in range(2 * len(x))],
        **{f"batch-{b}": (lambda b=b: batched(x, b)) for b in args.batch},
    }
    for name, steps in trials.items():
        data, seconds, cpu = convert(args.model_path, steps())
        print(f"{name:34s} {seconds:6.1f} s   CPU {cpu:6.1f} s   bytes "
              f"{'identical' if data == reference else 'DIFFERENT'}"
              f"{'' if data == reference else ': ' + difference(reference, data)}", flush=True)
    for k in args.extremes:
        for reference_kernels in (False, True):
            start = time.perf_counter()
            rows = extreme_rows(fp32, x, k, reference_kernels)
            find = time.perf_counter() - start
            data, seconds, _ = convert(args.model_path, [x[r:r + 1] for r in rows])
            label = f"extremes-{k}{'-builtin' if reference_kernels else ''} ({len(rows)} images)"
            print(f"{label:34s} {find + seconds:6.1f} s (find {find:.1f} s)   bytes "
                  f"{'identical' if data == reference else 'DIFFERENT'}"
                  f"{'' if data == reference else ': ' + difference(reference, data)}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

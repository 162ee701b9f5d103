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
  values of some float tensor, found by the FP32 .tflite (XNNPACK, one image or
  a batch per invoke, or the builtin kernels) with every tensor kept
  (`experimental_preserve_all_tensors`); the time includes that pass.
Also the calibrator's CPU time against its wall time (is it single-threaded?).
`--lab-set` instead runs the lab's five INT8 variants both ways: per-image, and
extremes-k picked from one pass over all of trainval.

`--piece-cost` instead times the converter's calibrator on the one export that
petq.calibration shares, on 1 to 200 images: its fixed cost against its cost per image.

Usage:
  python benchmarks/probe_calibration.py [--dataset-root DIR] [--fraction 0.3]
  python benchmarks/probe_calibration.py --piece-cost
  python benchmarks/probe_calibration.py --lab-set --extremes 3 --find-batch 1
The decoded store is kept in benchmarks/out/probe-cache/.
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


def tensor_extremes(fp32: bytes, x: np.ndarray, reference_kernels: bool = False,
                    batch: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the lowest and highest value of every float tensor: two (N, T) arrays.

    Runs the FP32 .tflite with every tensor kept (XNNPACK, or the builtin kernels),
    `batch` images per invoke.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if reference_kernels
                else OpResolverType.AUTO)
    interpreter = Interpreter(model_content=fp32, experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=resolver,
                              num_threads=os.cpu_count())
    index = interpreter.get_input_details()[0]["index"]
    if batch > 1:
        interpreter.resize_tensor_input(index, [batch, *x.shape[1:]])
    interpreter.allocate_tensors()
    tensors = [t["index"] for t in interpreter.get_tensor_details()
               if t["dtype"] == np.float32 and len(t["shape"]) > 0 and t["shape"][0] == batch]
    lows = np.empty((len(x), len(tensors)), np.float32)
    highs = np.empty_like(lows)
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        count = len(chunk)
        if count < batch:  # pad with repeats; their rows are dropped below
            chunk = np.concatenate([chunk, x[:batch - count]])
        interpreter.set_tensor(index, chunk)
        interpreter.invoke()
        for j, t in enumerate(tensors):
            values = interpreter.get_tensor(t).reshape(batch, -1)[:count]
            lows[start:start + count, j] = values.min(axis=1)
            highs[start:start + count, j] = values.max(axis=1)
    return lows, highs


def extreme_rows(lows: np.ndarray, highs: np.ndarray, rows: np.ndarray, k: int) -> list[int]:
    """Of `rows`, those holding one of the k lowest or k highest values of some tensor.

    Tensors whose extreme is the same for every row (weights, a ReLU's 0) need no pick:
    any one row holds it.
    """
    k = min(k, len(rows))
    low, high = lows[rows], highs[rows]
    picked = {int(rows[0])}
    for values, sign in ((low, 1), (high, -1)):
        varying = values.min(axis=0) != values.max(axis=0)
        order = np.argsort(sign * values[:, varying], axis=0, kind="stable")[:k]
        picked |= {int(r) for r in rows[order].ravel()}
    return sorted(picked)


def lab_set(model_path: Path, dataset: PetDataset, contract, store, k: int, batch: int) -> None:
    """The lab's five INT8 variants: per-image calibration against extremes-k from one pass."""
    ids = {s.image_id: i for i, s in enumerate(dataset.trainval)}
    pixels, kept = store.pixels_of(dataset.trainval)
    x = preprocess(np.asarray(pixels), contract)
    fp32, _, _ = convert(model_path, None)
    start = time.perf_counter()
    lows, highs = tensor_extremes(fp32, x, batch=batch)
    find = time.perf_counter() - start
    print(f"per-image tensor extremes of all {len(x)} trainval images ({lows.shape[1]} float "
          f"tensors, batch {batch}): {find:.1f} s")
    sets = {f"tflite-int8-{f:g}": dataset.calibration_samples(f, 1234) for f in (0.01, 0.08,
                                                                               0.3, 0.8)}
    sets["tflite-imbint8"] = dataset.class_samples((5,))
    totals = {"per-image": 0.0, "extremes": find}
    for name, samples in sets.items():
        rows = np.array([ids[s.image_id] for s in samples])
        reference, ref_seconds, _ = convert(model_path, [x[r:r + 1] for r in rows])
        picked = extreme_rows(lows, highs, rows, k)
        in_order = [r for r in rows if r in set(picked)]  # calibration order kept
        data, seconds, _ = convert(model_path, [x[r:r + 1] for r in in_order])
        totals["per-image"] += ref_seconds
        totals["extremes"] += seconds
        same = "identical" if data == reference else "DIFFERENT: " + difference(reference, data)
        print(f"{name:18s} {len(rows):5d} images {ref_seconds:6.1f} s | extremes-{k}: "
              f"{len(picked):3d} images {seconds:5.1f} s  bytes {same}", flush=True)
    print(f"{'total':18s} per-image {totals['per-image']:.1f} s, extremes-{k} "
          f"{totals['extremes']:.1f} s (including the pass over trainval)")


def piece_cost(model_path: Path, x: np.ndarray, counts=(1, 5, 50, 200), repeats: int = 3
               ) -> None:
    """What one calibrator costs besides its images, on the shared export (what the range
    profile pays per image, since it runs each image alone): the best of `repeats`
    calibrations of each count of images, and the line through them."""
    from tensorflow.lite.python.optimize import calibrator

    from petq.calibration import SharedStatic
    from petq.types import VariantSpec

    spec = VariantSpec.int8(0.01)
    prepared = SharedStatic(model_path, spec, None, list)._exported(spec).prepared
    best = []
    for n in counts:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            calibrator.Calibrator(prepared).calibrate(lambda n=n: ([x[i:i + 1]] for i in range(n)))
            times.append(time.perf_counter() - start)
        best.append(min(times))
        print(f"calibrator on {n:4d} image(s): {1000 * best[-1]:8.1f} ms", flush=True)
    per_image = np.polyfit(counts, best, 1)[0]  # the slope: dominated by the large counts
    fixed = best[0] - counts[0] * per_image
    print(f"=> {1000 * per_image:.2f} ms per image, and {1000 * fixed:.1f} ms per calibrator "
          f"besides: a calibrator costs {fixed / per_image:.1f} images' worth")


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
    parser.add_argument("--lab-set", action="store_true",
                        help="the lab's five INT8 variants, per-image against extremes-k")
    parser.add_argument("--piece-cost", action="store_true",
                        help="what one calibrator costs besides its images (shared export)")
    parser.add_argument("--find-batch", type=int, default=32,
                        help="images per invoke when finding tensor extremes")
    args = parser.parse_args()
    dataset = PetDataset.load(args.dataset_root)
    contract = load_contract(args.model_path)
    cache = Cache(ROOT / "benchmarks" / "out" / "probe-cache")
    store = load_store(dataset, contract.input_size, cache, "trainval")
    if args.lab_set:
        lab_set(args.model_path, dataset, contract, store, max(args.extremes), args.find_batch)
        return 0
    pixels, kept = store.pixels_of(dataset.calibration_samples(args.fraction, args.seed))
    x = preprocess(np.asarray(pixels), contract)
    if args.piece_cost:
        piece_cost(args.model_path, x)
        return 0
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
    every = np.arange(len(x))
    for reference_kernels, batch in ((False, 1), (False, args.find_batch), (True, 1)):
        start = time.perf_counter()
        lows, highs = tensor_extremes(fp32, x, reference_kernels, batch)
        find = time.perf_counter() - start
        for k in args.extremes:
            rows = extreme_rows(lows, highs, every, k)
            data, seconds, _ = convert(args.model_path, [x[r:r + 1] for r in rows])
            how = "builtin" if reference_kernels else f"xnnpack, batch {batch}"
            label = f"extremes-{k} {how} ({len(rows)} images)"
            print(f"{label:34s} {find + seconds:6.1f} s (find {find:.1f} s)   bytes "
                  f"{'identical' if data == reference else 'DIFFERENT'}"
                  f"{'' if data == reference else ': ' + difference(reference, data)}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

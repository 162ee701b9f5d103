"""Metrics, the accuracy pass and the latency measurement.

Precision is TP / predicted-as-class and sensitivity (recall) is TP /
truly-class, with the confusion matrix's rows as the truth: the lab's
metrics.py has the two swapped (see FACTS.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from petq.data import channel_order, preprocess
from petq.runtime import KerasRunner, LiteRTRunner, Runner
from petq.types import ModelContract

Progress = Callable[[int, int], None]
CHUNK = 64  # images preprocessed at once in the accuracy pass (Keras: one batch)
LITERT_CHUNK = 16  # LiteRT: images prepared ahead; small enough to stay in the CPU cache


def compute_metrics(labels: np.ndarray, scores: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Quality metrics from true labels (N,) and class scores (N, C).

    Classes absent from the evaluated labels are left out of the per-class
    means; a present class never predicted has precision 0.
    """
    from sklearn.metrics import top_k_accuracy_score  # 2 s to import

    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores)
    classes = np.arange(num_classes)
    predicted = scores.argmax(axis=1)
    cm = confusion(labels, scores, num_classes)
    true_count = cm.sum(axis=1)
    predicted_count = cm.sum(axis=0)
    tp = np.diag(cm).astype(np.float64)
    present = true_count > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(present, tp / np.maximum(true_count, 1), np.nan)
        precision = np.where(predicted_count > 0, tp / np.maximum(predicted_count, 1), 0.0)
    precision = np.where(present | (predicted_count > 0), precision, np.nan)
    present_recall = recall[present]
    g_mean = (
        0.0 if (present_recall == 0).any()
        else float(np.exp(np.mean(np.log(present_recall))))
    )
    if num_classes > 5:
        top5 = float(top_k_accuracy_score(labels, scores, k=5, labels=classes))
    else:  # every class is in the top 5
        top5 = 1.0
    return {
        "n_images": int(len(labels)),
        "accuracy": float((predicted == labels).mean()),
        "mean_precision": float(np.mean(precision[present])),  # over breeds in the test set
        "mean_sensitivity": float(np.nanmean(recall)),
        "g_mean": g_mean,
        "top5": top5,
        "per_class_precision": [None if np.isnan(v) else float(v) for v in precision],
        "per_class_sensitivity": [None if np.isnan(v) else float(v) for v in recall],
        "confusion_matrix": cm.tolist(),
    }


def confusion(labels: np.ndarray, scores: np.ndarray, num_classes: int) -> np.ndarray:
    """The confusion matrix (C, C) of class scores (N, C) against true labels (N,): rows are
    the truth, columns the top-1 prediction."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(np.asarray(labels), np.asarray(scores).argmax(axis=1),
                            labels=np.arange(num_classes))


def predict_all(
    runner: Runner,
    pixels: np.ndarray,
    contract: ModelContract,
    progress: Progress | None = None,
) -> np.ndarray:
    """Scores (N, C) for uint8 images (N, H, W, 3), one image per invoke as deployed.

    For LiteRT the per-image loop is set_tensor + invoke + get_tensor and nothing
    else: a helper thread prepares the next chunk's inputs (`input_maker`) while
    this one runs, and raw outputs are dequantized once at the end.
    """
    n = len(pixels)
    if isinstance(runner, LiteRTRunner):
        return _predict_litert(runner, pixels, contract, progress)
    scores = np.empty((n, runner.num_classes), dtype=np.float32)
    for start in range(0, n, CHUNK):
        x = preprocess(np.asarray(pixels[start:start + CHUNK]), contract)
        if isinstance(runner, KerasRunner):
            with runner.lock:
                scores[start:start + len(x)] = runner.predict_batch(x)
        else:
            for i in range(len(x)):
                scores[start + i] = runner.predict(x[i:i + 1])
        if progress:
            progress(min(start + CHUNK, n), n)
    return scores


def _predict_litert(runner: LiteRTRunner, pixels: np.ndarray, contract: ModelContract,
                    progress: Progress | None) -> np.ndarray:  # fmt: skip
    n = len(pixels)
    make_inputs = input_maker(runner, contract)
    raw = np.empty((n, runner.num_classes), dtype=runner.output_dtype)
    interpreter, index, output = runner.interpreter, runner.input_index, runner.output_index

    def chunk(start: int) -> np.ndarray:
        return make_inputs(np.asarray(pixels[start:start + LITERT_CHUNK]))

    with runner.lock, ThreadPoolExecutor(1, thread_name_prefix="petq-inputs") as helper:
        upcoming = helper.submit(chunk, 0) if n else None
        for start in range(0, n, LITERT_CHUNK):
            inputs = upcoming.result()
            if start + LITERT_CHUNK < n:
                upcoming = helper.submit(chunk, start + LITERT_CHUNK)
            for i in range(len(inputs)):
                interpreter.set_tensor(index, inputs[i:i + 1])
                interpreter.invoke()
                raw[start + i] = interpreter.get_tensor(output)[0]
            if progress:
                progress(min(start + LITERT_CHUNK, n), n)
    return runner.dequantize(raw)


def input_maker(
    runner: LiteRTRunner, contract: ModelContract
) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 images -> exactly `runner.quantize(preprocess(images))`, the fastest exact way.

    Quantized inputs go through a per-channel lookup table; float inputs through
    `preprocess` itself (in-place float math beats a table of floats).
    """
    if not runner.quantized_input:
        return lambda pixels: runner.quantize(preprocess(pixels, contract))
    lut = input_lut(runner, contract)
    order = list(channel_order(contract))  # caffe's input is BGR: table k reads channel order[k]
    if order == [0, 1, 2]:
        return lambda pixels: apply_lut(pixels, lut)
    return lambda pixels: apply_lut(np.ascontiguousarray(pixels[..., order]), lut)


def input_lut(runner: LiteRTRunner, contract: ModelContract) -> np.ndarray:
    """(C, 256) table: uint8 value per channel -> the model's input tensor value (C: the
    contract's channels).

    Exactly `runner.quantize(preprocess(pixel))`, computed once for all 256 values.
    """
    values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], contract.channels,
                       axis=1)[None]  # (1, 256, C)
    return np.ascontiguousarray(runner.quantize(preprocess(values, contract))[0, 0].T)


def apply_lut(pixels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W, C) through a per-channel (C, 256) table `lut` (C: 3 or 1).

    One-byte tables (int8/uint8 inputs) go through Pillow's per-band `point`, a
    plain C loop several times faster than NumPy's fancy indexing; others index.
    """
    if lut.dtype.itemsize == 1 and pixels.size:
        n, h, w, c = pixels.shape
        table = lut.view(np.uint8).reshape(-1).tolist()
        rows = np.ascontiguousarray(pixels).reshape((n * h, w, c) if c == 3 else (n * h, w))
        tall = Image.fromarray(rows)
        mapped = np.asarray(tall.point(table)).reshape(pixels.shape)
        return mapped.view(lut.dtype)
    out = np.empty(pixels.shape, dtype=lut.dtype)
    for channel in range(pixels.shape[-1]):
        out[..., channel] = lut[channel][pixels[..., channel]]
    return out


LATENCY_BUDGET_S = 1.0  # timed calls stop after this long, once MIN_LATENCY_RUNS are in
MIN_LATENCY_RUNS = 20
QUIET = threading.RLock()
"""Held while a latency is timed. Work this process does beside its runs (the CLI's
figures thread) takes it around each piece, so that none of it runs beside a timing."""


def measure_latency(
    runner: Runner, x: np.ndarray, runs: int = 100, warmup: int = 10,
    budget_s: float = LATENCY_BUDGET_S,
) -> dict[str, float]:
    """Time `run_inference` alone on one prepared input: warm-up, then up to `runs` timed
    calls (ms). A slow model stops after `budget_s` seconds of timed calls, with at least
    MIN_LATENCY_RUNS (or `runs`, if fewer) behind it: 16-bit activations on reference
    kernels take 0.1-0.2 s a call, and an eager Keras call 20-40 ms."""
    times = np.empty(runs, dtype=np.float64)
    floor = min(runs, MIN_LATENCY_RUNS)
    done = 0
    with QUIET, runner.lock:
        runner.preprocess_input(x)
        for _ in range(warmup):
            runner.run_inference()
        began = time.perf_counter()
        while done < runs:
            start = time.perf_counter()
            runner.run_inference()
            end = time.perf_counter()
            times[done] = (end - start) * 1000.0
            done += 1
            if done >= floor and end - began > budget_s:
                break
    times = times[:done]
    return {
        "latency_mean_ms": float(times.mean()),
        "latency_p50_ms": float(np.percentile(times, 50)),
        "latency_p95_ms": float(np.percentile(times, 95)),
        "latency_std_ms": float(times.std()),
        "latency_runs": done,
    }


def agreement(top1: np.ndarray, reference_top1: np.ndarray) -> float:
    """Share of images where two variants predict the same top-1 class."""
    top1, reference_top1 = np.asarray(top1), np.asarray(reference_top1)
    if len(top1) != len(reference_top1) or len(top1) == 0:
        return float("nan")
    return float((top1 == reference_top1).mean())

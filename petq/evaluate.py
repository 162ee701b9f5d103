"""Metrics, the accuracy pass and the latency measurement.

Precision is TP / predicted-as-class and sensitivity (recall) is TP /
truly-class, with the confusion matrix's rows as the truth: the lab's
metrics.py has the two swapped (see FACTS.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, top_k_accuracy_score

from petq.data import preprocess
from petq.runtime import KerasRunner, LiteRTRunner, Runner
from petq.types import ModelContract

Progress = Callable[[int, int], None]
CHUNK = 64  # images preprocessed at once in the accuracy pass


def compute_metrics(labels: np.ndarray, scores: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Quality metrics from true labels (N,) and class scores (N, C).

    Classes absent from the evaluated labels are left out of the per-class
    means; a present class never predicted has precision 0.
    """
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores)
    classes = np.arange(num_classes)
    predicted = scores.argmax(axis=1)
    cm = confusion_matrix(labels, predicted, labels=classes)
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
        "mean_precision": float(np.nanmean(precision)),
        "mean_sensitivity": float(np.nanmean(recall)),
        "g_mean": g_mean,
        "top5": top5,
        "per_class_precision": [None if np.isnan(v) else float(v) for v in precision],
        "per_class_sensitivity": [None if np.isnan(v) else float(v) for v in recall],
        "confusion_matrix": cm.tolist(),
    }


def predict_all(
    runner: Runner,
    pixels: np.ndarray,
    contract: ModelContract,
    progress: Progress | None = None,
) -> np.ndarray:
    """Scores (N, C) for uint8 images (N, H, W, 3), one image per invoke as deployed.

    For LiteRT, preprocessing and quantization (both per-channel elementwise maps of
    a uint8 value) are one lookup table applied to a chunk at a time, outside the
    per-image loop, so the loop is set_tensor + invoke + get_tensor.
    """
    n = len(pixels)
    scores = np.empty((n, runner.num_classes), dtype=np.float32)
    lut = input_lut(runner, contract) if isinstance(runner, LiteRTRunner) else None
    with runner.lock:
        for start in range(0, n, CHUNK):
            chunk = np.asarray(pixels[start:start + CHUNK])
            if isinstance(runner, KerasRunner):
                scores[start:start + len(chunk)] = runner.predict_batch(
                    preprocess(chunk, contract)
                )
            elif lut is not None:
                q = np.empty(chunk.shape, dtype=lut.dtype)
                for channel in range(chunk.shape[-1]):
                    q[..., channel] = lut[channel][chunk[..., channel]]
                for i in range(len(q)):
                    runner.set_quantized(q[i:i + 1])
                    runner.run_inference()
                    scores[start + i] = runner.postprocess_outputs()
            else:
                x = preprocess(chunk, contract)
                for i in range(len(x)):
                    runner.preprocess_input(x[i:i + 1])
                    scores[start + i] = runner.postprocess_outputs(runner.run_inference())
            if progress:
                progress(min(start + CHUNK, n), n)
    return scores


def input_lut(runner: LiteRTRunner, contract: ModelContract) -> np.ndarray:
    """(3, 256) table: uint8 value per channel -> the model's input tensor value.

    Exactly `runner.quantize(preprocess(pixel))`, computed once for all 256 values.
    """
    values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)[None]  # (1,256,3)
    return np.ascontiguousarray(runner.quantize(preprocess(values, contract))[0, 0].T)


def measure_latency(
    runner: Runner, x: np.ndarray, runs: int = 100, warmup: int = 10
) -> dict[str, float]:
    """Time `run_inference` alone on one prepared input: warm-up, then `runs` timed calls (ms)."""
    times = np.empty(runs, dtype=np.float64)
    with runner.lock:
        runner.preprocess_input(x)
        for _ in range(warmup):
            runner.run_inference()
        for i in range(runs):
            start = time.perf_counter()
            runner.run_inference()
            times[i] = (time.perf_counter() - start) * 1000.0
    return {
        "latency_mean_ms": float(times.mean()),
        "latency_p50_ms": float(np.percentile(times, 50)),
        "latency_p95_ms": float(np.percentile(times, 95)),
        "latency_std_ms": float(times.std()),
        "latency_runs": runs,
    }


def agreement(top1: np.ndarray, reference_top1: np.ndarray) -> float:
    """Share of images where two variants predict the same top-1 class."""
    top1, reference_top1 = np.asarray(top1), np.asarray(reference_top1)
    if len(top1) != len(reference_top1) or len(top1) == 0:
        return float("nan")
    return float((top1 == reference_top1).mean())

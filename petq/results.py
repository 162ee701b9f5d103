"""One result type and one description of every metric.

`Result` is what evaluating a variant gives: the figures every table shows. `Details`
holds the per-image and per-class arrays behind them (kept in the cache beside the
result, read only when a page or report needs them). `METRICS` describes each metric
once (label, format, which direction is better) for the CLI, the reports and the pages.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from petq.data import ImageCounts
from petq.types import VariantSpec


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    fmt: str  # format spec for one value, e.g. ".4f"
    higher_is_better: bool
    help: str = ""

    def format(self, value: float | None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        return format(value, self.fmt)


_METRICS = (
    Metric("accuracy", "Accuracy", ".4f", True, "Share of test images whose top-1 breed is right"),
    Metric("mean_precision", "Mean precision", ".4f", True,
           "Mean over breeds of TP / images predicted as the breed"),
    Metric("mean_sensitivity", "Mean sensitivity", ".4f", True,
           "Mean over breeds of TP / images of the breed (recall)"),
    Metric("g_mean", "G-Mean", ".4f", True,
           "Geometric mean of the per-breed sensitivities: low when any breed is lost"),
    Metric("top5", "Top-5", ".4f", True, "Share of test images with the right breed in the top 5"),
    Metric("latency_p50_ms", "Latency median (ms)", ".3f", False,
           "Median of one invoke, batch 1, after warm-up"),
    Metric("latency_mean_ms", "Latency mean (ms)", ".3f", False, "Mean of one invoke, batch 1"),
    Metric("latency_p95_ms", "Latency p95 (ms)", ".3f", False, "95th percentile of one invoke"),
    Metric("file_size_bytes", "Size (bytes)", ",d", False, "Model file size on disk"),
    Metric("compression_ratio", "Compression vs FP32", ".2f", True,
           "TFLite FP32 file size over the variant's"),
    Metric("agreement", "Top-1 agreement", ".4f", True,
           "Share of test images where the variant's top-1 breed equals the reference's"),
)
METRICS: dict[str, Metric] = {m.key: m for m in _METRICS}
QUALITY = ("accuracy", "mean_precision", "mean_sensitivity", "g_mean", "top5")
LATENCY = ("latency_p50_ms", "latency_mean_ms", "latency_p95_ms")


@dataclass(frozen=True)
class Result:
    """The evaluation of one variant on one test set (a cache entry's manifest)."""

    spec: VariantSpec
    description: str
    model: str
    model_sha: str
    dataset: str
    dataset_fingerprint: str
    synthetic: bool
    test_fraction: float
    n_images: int  # evaluated
    skipped_images: int  # listed in the evaluated test split (or fraction), not decodable
    param_count: int
    threads: int
    accuracy: float
    mean_precision: float
    mean_sensitivity: float
    g_mean: float
    top5: float
    latency_mean_ms: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_std_ms: float
    latency_runs: int
    file_size_bytes: int | None
    calibration_count: int = 0
    calibration_classes: dict[str, int] = field(default_factory=dict)
    convert_seconds: float = 0.0
    tflite_key: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    result_key: str = ""
    created: float = 0.0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def variant(self) -> str:
        return self.spec.name

    @property
    def images(self) -> ImageCounts:
        """Test images listed, evaluated and skipped (by reason)."""
        reasons = self.skipped_by_reason or (
            {"unreadable": self.skipped_images} if self.skipped_images else {})
        return ImageCounts(self.n_images + self.skipped_images,
                           tuple(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))))

    @property
    def scheme(self) -> str:
        return self.spec.recipe.scheme

    def value(self, metric: str) -> float | None:
        """A metric of this result by its registry key (None for comparison-only metrics)."""
        return getattr(self, metric, None) if metric in METRICS else None

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["spec"] = self.spec.to_dict()
        data["variant"] = self.variant
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["spec"] = VariantSpec.from_dict(data["spec"])
        return cls(**values)


@dataclass(frozen=True)
class Details:
    """Per-class and per-image arrays of one result (the same test images for every variant).

    `top5` holds each image's five best class indices, best first, and `top5_scores`
    their scores (the model's outputs), so any two variants compare without re-running.
    """

    class_names: tuple[str, ...]
    image_ids: tuple[str, ...]
    labels: np.ndarray  # (N,) int
    top5: np.ndarray  # (N, k) int, k = min(5, classes)
    top5_scores: np.ndarray  # (N, k) float32
    confusion_matrix: np.ndarray  # (C, C), rows = truth
    per_class_precision: np.ndarray  # (C,), NaN for a class neither present nor predicted
    per_class_sensitivity: np.ndarray  # (C,), NaN for a class absent from the test images

    @property
    def top1(self) -> np.ndarray:
        return self.top5[:, 0]

    def same_images(self, other: Details) -> bool:
        return self.image_ids == other.image_ids

    def to_json(self) -> dict[str, Any]:
        """The JSON part (arrays of predictions go to an .npz file beside it)."""
        def floats(a: np.ndarray) -> list[float | None]:
            return [None if math.isnan(v) else float(v) for v in a]

        return {"class_names": list(self.class_names), "image_ids": list(self.image_ids),
                "labels": self.labels.tolist(),
                "confusion_matrix": self.confusion_matrix.tolist(),
                "per_class_precision": floats(self.per_class_precision),
                "per_class_sensitivity": floats(self.per_class_sensitivity)}

    @classmethod
    def read(cls, entry) -> Details:
        """The details of a result's cache entry (`details.json`, `predictions.npz`)."""
        with np.load(entry.file("predictions.npz")) as predictions:
            return cls.from_parts(json.loads(entry.file("details.json").read_text()),
                                  predictions["top5"], predictions["top5_scores"])

    @classmethod
    def from_parts(cls, data: dict[str, Any], top5: np.ndarray, top5_scores: np.ndarray
                   ) -> Details:
        def floats(values: list) -> np.ndarray:
            return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

        return cls(
            class_names=tuple(data["class_names"]), image_ids=tuple(data["image_ids"]),
            labels=np.asarray(data["labels"], dtype=np.int64),
            top5=np.asarray(top5, dtype=np.int64), top5_scores=np.asarray(top5_scores),
            confusion_matrix=np.asarray(data["confusion_matrix"], dtype=np.int64),
            per_class_precision=floats(data["per_class_precision"]),
            per_class_sensitivity=floats(data["per_class_sensitivity"]),
        )


def top_k(scores: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Indices (N, k) of the k best classes per row, best first (ties: lower index first),
    and their scores."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order.astype(np.uint16), np.take_along_axis(scores, order, axis=1).astype(np.float32)


__all__ = ["LATENCY", "METRICS", "QUALITY", "Details", "Metric", "Result", "top_k"]

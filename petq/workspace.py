"""A workspace ties one source model, one dataset and one cache together.

Every face of petq (CLI, dashboard, benchmarks) goes through these calls:
`tflite(spec)` converts once per cache key, `evaluate(spec)` evaluates once
per (variant, test set), and `results()` lists what is cached, cheaply.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from petq import __version__ as petq_version
from petq.cache import Cache, Entry, key_of, sha256_file, write_bytes_atomic
from petq.data import PetDataset, Sample, preprocess
from petq.errors import ModelError, SpecError
from petq.evaluate import compute_metrics, measure_latency, predict_all
from petq.runtime import KerasRunner, LiteRTRunner, Runner, default_threads
from petq.store import DecodedStore, load_store
from petq.types import ModelContract, VariantKind, VariantSpec, load_contract

RESULT_VERSION = 1
Stage = Callable[[str, int, int], None]  # progress(stage, done, total)


def library_versions() -> dict[str, str]:
    """Versions that change a converted artifact or its numbers (no heavy imports)."""
    versions = {}
    for package in ("tensorflow", "keras", "ai-edge-litert"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "none"
    versions["petq"] = petq_version  # installed or run from a checkout alike
    return versions


def _stage(progress: Stage | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


class Workspace:
    def __init__(
        self,
        model_path: Path | str,
        dataset_root: Path | str,
        cache_root: Path | str = "cache",
        threads: int | None = None,
    ):
        self.model_path = Path(model_path)
        if not self.model_path.exists():
            raise ModelError(f"{self.model_path}: model file not found")
        self.dataset = PetDataset.load(dataset_root)
        self.cache = Cache(cache_root)
        self.threads = threads or default_threads()
        contract = load_contract(self.model_path)
        if not contract.class_names:
            contract = ModelContract(
                input_size=contract.input_size, mean=contract.mean, std=contract.std,
                class_names=self.dataset.class_names, synthetic=contract.synthetic,
                info=contract.info,
            )
        elif len(contract.class_names) != self.dataset.num_classes:
            raise ModelError(
                f"{self.model_path}: the model has {len(contract.class_names)} classes, the "
                f"dataset at {self.dataset.root} has {self.dataset.num_classes}"
            )
        self.contract = contract
        self._store: DecodedStore | None = None
        self._keras: KerasRunner | None = None

    # ------------------------------------------------------------ identity

    @cached_property
    def model_sha(self) -> str:
        path = self.model_path
        if path.is_dir():  # a SavedModel folder
            digest = hashlib.sha256()
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                digest.update(str(file.relative_to(path)).encode())
                digest.update(sha256_file(file).encode())
            return digest.hexdigest()
        return sha256_file(path)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.contract.class_names

    def model_info(self) -> dict[str, Any]:
        """Parameter count, input and output shapes of the source model (cached)."""

        def build(tmp: Path) -> dict[str, Any]:
            runner = self.keras_runner()
            model = runner.model
            info = {
                "param_count": int(model.count_params()),
                "input_shape": [d for d in model.inputs[0].shape[1:]],
                "num_classes": runner.num_classes,
                "file_size_bytes": self.model_path.stat().st_size
                if self.model_path.is_file() else None,
            }
            (tmp / "info.json").write_text(json.dumps(info))
            return info

        entry, _ = self.cache.get_or_build("models", self.model_sha[:24], build)
        info = {k: entry.manifest[k] for k in ("param_count", "input_shape", "num_classes",
                                              "file_size_bytes")}
        if info["num_classes"] != self.dataset.num_classes:
            raise ModelError(
                f"{self.model_path}: the model outputs {info['num_classes']} classes, the "
                f"dataset at {self.dataset.root} has {self.dataset.num_classes}"
            )
        return info

    # ------------------------------------------------------------ data

    def store(self, progress: Stage | None = None) -> DecodedStore:
        if self._store is None:
            self._store = load_store(
                self.dataset, self.contract.input_size, self.cache, _stage(progress, "decode")
            )
        return self._store

    def calibration_samples(self, spec: VariantSpec) -> list[Sample]:
        """The trainval images that calibrate an INT8 variant (never test images)."""
        if spec.kind is VariantKind.INT8:
            return self.dataset.calibration_samples(spec.fraction, spec.seed)
        if spec.kind is VariantKind.IMBINT8:
            for c in spec.classes:
                self.dataset.class_index(c)  # raises SpecError when out of range
            samples = self.dataset.class_samples(spec.classes)
            if not samples:
                raise SpecError(f"{spec.name}: no trainval images of classes {spec.classes}")
            return samples
        return []

    def calibration_histogram(self, spec: VariantSpec) -> dict[str, int]:
        counts = Counter(s.label for s in self.calibration_samples(spec))
        return {name: counts.get(i, 0) for i, name in enumerate(self.class_names)}

    # ------------------------------------------------------------ variants

    def variant_key(self, spec: VariantSpec) -> str:
        ids = [s.image_id for s in self.calibration_samples(spec)]
        return key_of({
            "model": self.model_sha, "spec": spec.to_dict(), "calibration": ids,
            "contract": self.contract.to_dict() | {"info": None},
            "versions": library_versions(),
        })

    def cached_tflite(self, spec: VariantSpec) -> Entry | None:
        return self.cache.get("variants", self.variant_key(spec))

    def tflite(self, spec: VariantSpec, progress: Stage | None = None) -> tuple[Entry, bool]:
        """The variant's .tflite entry, converting it only when not cached."""
        if not spec.kind.is_tflite:
            raise SpecError("the native variant has no .tflite file")
        samples = self.calibration_samples(spec)

        def build(tmp: Path) -> dict[str, Any]:
            start = time.perf_counter()
            calibration = None
            kept: list[Sample] = []
            if samples:
                store = self.store(progress)
                rows, kept = store.rows(samples)
                if not kept:
                    raise SpecError(f"{spec.name}: the calibration set is empty")
                calibration = (preprocess(store.pixels[r], self.contract) for r in rows)
            if progress:
                progress("convert", 0, 1)
            from petq.convert import convert

            data = convert(self.model_path, spec, calibration, len(kept),
                           _stage(progress, "calibrate"))
            write_bytes_atomic(tmp / "model.tflite", data)
            (tmp / "recipe.json").write_text(json.dumps(spec.to_dict(), indent=2))
            if progress:
                progress("convert", 1, 1)
            return {
                "spec": spec.to_dict(),
                "model": str(self.model_path), "model_sha": self.model_sha,
                "calibration_count": len(kept),
                "calibration_classes": dict(Counter(self.class_names[s.label] for s in kept)),
                "convert_seconds": time.perf_counter() - start,
                "versions": library_versions(),
            }

        return self.cache.get_or_build("variants", self.variant_key(spec), build)

    def keras_runner(self) -> KerasRunner:
        """The source model, loaded once per workspace (for its info and the native variant)."""
        if self._keras is None:
            self._keras = KerasRunner(self.model_path, self.threads)
        return self._keras

    def runner(self, spec: VariantSpec, progress: Stage | None = None) -> Runner:
        if spec.kind is VariantKind.NATIVE:
            return self.keras_runner()
        entry, _ = self.tflite(spec, progress)
        return LiteRTRunner(entry.file("model.tflite"), self.threads)

    # ------------------------------------------------------------ evaluation

    def result_key(self, spec: VariantSpec, test_fraction: float) -> str:
        variant = self.model_sha if spec.kind is VariantKind.NATIVE else self.variant_key(spec)
        ids = [s.image_id for s in self.dataset.test_samples(test_fraction)]
        return key_of({"v": RESULT_VERSION, "variant": variant, "spec": spec.to_dict(),
                       "test": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
                       "threads": self.threads, "versions": library_versions()})

    def cached_result(self, spec: VariantSpec, test_fraction: float = 1.0) -> dict | None:
        entry = self.cache.get("results", self.result_key(spec, test_fraction), verify=False)
        return _read_result(entry) if entry else None

    def evaluate(
        self,
        spec: VariantSpec,
        test_fraction: float = 1.0,
        progress: Stage | None = None,
        latency_runs: int = 100,
    ) -> tuple[dict[str, Any], bool]:
        """Evaluate a variant on the test split (cached). Returns (result, computed)."""
        if not 0.0 < test_fraction <= 1.0:
            raise SpecError(f"test dataset fraction must be in (0, 1], got {test_fraction}")

        def build(tmp: Path) -> dict[str, Any]:
            info = self.model_info()
            store = self.store(progress)
            pixels, kept = store.pixels_of(self.dataset.test_samples(test_fraction))
            if not kept:
                raise SpecError("the test set is empty")
            row: dict[str, Any] = {}
            if spec.kind is VariantKind.NATIVE:
                runner: Runner = self.keras_runner()
                row["file_size_bytes"] = info["file_size_bytes"]
                row["calibration_count"] = 0
                row["convert_seconds"] = 0.0
            else:
                entry, _ = self.tflite(spec, progress)
                runner = LiteRTRunner(entry.file("model.tflite"), self.threads)
                row["file_size_bytes"] = entry.file("model.tflite").stat().st_size
                row["calibration_count"] = entry.manifest["calibration_count"]
                row["calibration_classes"] = entry.manifest["calibration_classes"]
                row["convert_seconds"] = entry.manifest["convert_seconds"]
                row["tflite_key"] = entry.manifest["key"]
            start = time.perf_counter()
            scores = predict_all(runner, pixels, self.contract, _stage(progress, "evaluate"))
            eval_seconds = time.perf_counter() - start
            if progress:
                progress("latency", 0, 1)
            latency = measure_latency(runner, preprocess(np.asarray(pixels[0]), self.contract),
                                      runs=latency_runs)
            if progress:
                progress("latency", 1, 1)
            labels = np.array([s.label for s in kept])
            metrics = compute_metrics(labels, scores, len(self.class_names))
            np.save(tmp / "scores.npy", scores)
            details = {k: metrics.pop(k) for k in
                       ("per_class_precision", "per_class_sensitivity", "confusion_matrix")}
            details["image_ids"] = [s.image_id for s in kept]
            details["labels"] = labels.tolist()
            details["top1"] = scores.argmax(axis=1).tolist()
            details["class_names"] = list(self.class_names)
            (tmp / "details.json").write_text(json.dumps(details))
            row.update({
                "variant": spec.name, "kind": spec.kind.value, "precision": spec.kind.precision,
                "description": spec.describe(self.class_names),
                "spec": spec.to_dict(),
                "model": self.model_path.name, "model_sha": self.model_sha,
                "dataset": str(self.dataset.root), "dataset_fingerprint": self.dataset.fingerprint,
                "synthetic": self.dataset.synthetic,
                "test_fraction": test_fraction, "skipped_images": len(store.bad),
                "param_count": info["param_count"], "threads": self.threads,
                "eval_seconds": eval_seconds, **metrics, **latency,
                "versions": library_versions(),
            })
            return {"row": row}

        entry, built = self.cache.get_or_build(
            "results", self.result_key(spec, test_fraction), build
        )
        return _read_result(entry), built

    def results(self, test_fraction: float | None = None) -> list[dict[str, Any]]:
        """Every cached result row for this model and dataset: the dashboard's main query."""
        rows = []
        for entry in self.cache.entries("results"):
            row = entry.manifest.get("row")
            if (not row or row.get("model_sha") != self.model_sha
                    or row.get("dataset_fingerprint") != self.dataset.fingerprint
                    or row.get("threads") != self.threads):
                continue
            if test_fraction is not None and row.get("test_fraction") != test_fraction:
                continue
            rows.append(_read_result(entry))
        rows.sort(key=_variant_order)
        return rows

    def details(self, result_key: str) -> dict[str, Any]:
        """Confusion matrix, per-class metrics and per-image top-1 of one cached result."""
        entry = self.cache.get("results", result_key, verify=False)
        if entry is None:
            raise KeyError(f"no cached result {result_key}")
        return json.loads(entry.file("details.json").read_text())


def _read_result(entry: Entry) -> dict[str, Any]:
    return {**entry.manifest["row"], "result_key": entry.manifest["key"],
            "created": entry.manifest["created"]}


def _variant_order(row: dict[str, Any]) -> tuple:
    order = [k.value for k in VariantKind]
    spec = row.get("spec", {})
    return (order.index(row["kind"]) if row.get("kind") in order else 9,
            spec.get("fraction") or 0.0, spec.get("classes") or [], spec.get("seed") or 0)

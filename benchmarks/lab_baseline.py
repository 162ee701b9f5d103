"""The lab's harness, completed as the lab text asks: the baseline petq is timed against.

The structure and the work pattern are the lab's (`seed/000_...txt`, and its
reference code's `ModelTester`): every variant is a tester with
`optimize_model` (the TFLite converter), `prepare_model`, `preprocess_input`,
`run_inference` (invoke only), `postprocess_outputs`; every image is opened,
converted to RGB, resized and normalised again for every variant; the
representative dataset yields one preprocessed image at a time; the native
model runs one Keras `predict` per image. The metrics are the correct ones
(FACTS.md: the lab's `metrics.py` swaps precision and sensitivity).

Three departures, each so that the numbers can be compared with petq's:
- the calibration and test images are chosen by `petq.data.PetDataset`
  (`calibration_samples`, `class_samples`, `test_samples`): the same ids,
  in the same order, as petq uses;
- an image is decoded by `petq.data.open_image` + `decode` (Pillow open,
  EXIF orientation, alpha composited on white, RGB, resize with Pillow's default
  filter): the lab's bare `convert("RGB")` drops alpha instead, which changes the
  pixels of the dataset's RGBA and palette files; the cost per image is the same;
- the interpreter is LiteRT's (`ai_edge_litert`), which TF 2.21 names as the
  replacement of the deprecated `tf.lite.Interpreter`, and the Keras progress bar
  of each `predict` call is off (`verbose=0`).
The confusion-matrix figure is a plain one like petq's (the lab's is drawn at
35x35 inches, 216 dpi, which would only make the baseline slower).

Usage:
  python benchmarks/lab_baseline.py --model-path models/petq-demo.keras \
      --dataset-root DIR --results-path OUT [--summary-json OUT/summary.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from petq.data import PetDataset, decode, open_image  # noqa: E402

LAB_FRACTIONS = (0.01, 0.08, 0.3, 0.8)
LAB_SEED = 1234  # the lab's calibration seed (INT8Model.optimize_model)
LAB_IMBALANCED_CLASS = 5  # the lab's ImbalancedINT8Model: "all examples for objects with 5 class"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TASKS = ("native", "tflite-fp32", *(f"tflite-int8-{f}" for f in LAB_FRACTIONS),
         "tflite-imbint8")


class LabDataset:
    """The lab's PetDataset role: file paths and labels, per-image preparation, metrics."""

    def __init__(self, root: Path, model_path: Path, test_fraction: float = 1.0):
        self.pets = PetDataset.load(root)
        sidecar = model_path.with_suffix(".json")
        contract = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        if contract.get("preprocessing", "torch") != "torch":
            raise SystemExit(f"{sidecar}: the lab's harness knows only the lab's /255, mean/std")
        height, width = contract.get("input_size", (224, 224))
        self.size = (int(height), int(width))
        self.mean = np.array(contract.get("mean", IMAGENET_MEAN), dtype=np.float32)
        self.std = np.array(contract.get("std", IMAGENET_STD), dtype=np.float32)
        self.classnames = list(self.pets.class_names)
        self.numclasses = len(self.classnames)
        self.dataX = [self.path(s.image_id) for s in self.pets.trainval]
        self.dataY = [s.label for s in self.pets.trainval]
        test = self.pets.test_samples(test_fraction)
        self.testX = [self.path(s.image_id) for s in test]
        self.testY = [s.label for s in test]
        self.reset_metrics()

    def path(self, image_id: str) -> str:
        return str(self.pets.image_path(image_id))

    def prepare_input_sample(self, sample: str) -> np.ndarray:
        """File -> float32 (1, H, W, 3): the lab's /255, then (x - mean) / std."""
        npimg = decode(open_image(sample), self.size).astype(np.float32) / 255.0
        npimg = (npimg - self.mean) / self.std
        return np.expand_dims(npimg, axis=0)

    def calibration_dataset_generator(self, percentage: float, seed: int) -> Iterator[list]:
        """One preprocessed trainval image per step, as the lab's generator yields them."""
        for s in self.pets.calibration_samples(percentage, seed):
            yield [self.prepare_input_sample(self.path(s.image_id))]

    def class_dataset_generator(self, classes: tuple[int, ...]) -> Iterator[list]:
        """Every trainval image of `classes` (the lab's dataX/dataY filter), one per step."""
        for s in self.pets.class_samples(classes):
            yield [self.prepare_input_sample(self.path(s.image_id))]

    def reset_metrics(self) -> None:
        self.confusion_matrix = np.zeros((self.numclasses, self.numclasses), dtype=np.int64)
        self.top_5_count = 0
        self.total = 0

    def evaluate(self, predictions: np.ndarray, truth: int) -> None:
        """One image's scores (C,) against its label (rows of the matrix = truth).

        INT8 scores tie often; a tie at the fifth place goes to the higher class index,
        as in scikit-learn's top_k_accuracy_score (the lab's unstable argsort would
        break it either way).
        """
        self.confusion_matrix[truth, int(np.argmax(predictions))] += 1
        self.top_5_count += int(truth in np.argsort(predictions, kind="stable")[::-1][:5])
        self.total += 1


def metrics_of(cm: np.ndarray, top5_count: int, total: int) -> dict[str, float]:
    """Accuracy, mean precision (TP / predicted), mean sensitivity (TP / true), G-Mean."""
    from scipy.stats import gmean

    tp = np.diag(cm).astype(np.float64)
    true_count, predicted_count = cm.sum(axis=1), cm.sum(axis=0)
    present = true_count > 0
    recall = tp[present] / true_count[present]
    shown = present | (predicted_count > 0)  # classes neither present nor predicted: left out
    precision = np.where(predicted_count > 0, tp / np.maximum(predicted_count, 1), 0.0)[shown]
    return {
        "accuracy": float(tp.sum() / total),
        "mean_precision": float(precision.mean()),
        "mean_sensitivity": float(recall.mean()),
        "g_mean": 0.0 if (recall == 0).any() else float(gmean(recall)),
        "top5": top5_count / total,
    }


def draw_confusion_matrix(cm: np.ndarray, path: Path, title: str, names: list[str]) -> None:
    from matplotlib.figure import Figure

    totals = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, totals, out=np.zeros(cm.shape), where=totals > 0)
    side = max(6.0, 0.28 * len(names) + 3)
    fig = Figure(figsize=(side, side), dpi=100)
    ax = fig.subplots()
    ax.imshow(share, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("Actual class")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, format="png")


class ModelTester:
    """The lab's abstract tester: optimize (convert) if asked, prepare, then test per image."""

    def __init__(self, dataset: LabDataset, modelpath: Path, originalmodel: Path | None = None,
                 threads: int | None = None):  # fmt: skip
        self.dataset = dataset
        self.modelpath = modelpath
        self.threads = threads or os.cpu_count() or 1
        self.timemeasurements: list[float] = []
        self.optimize_seconds = 0.0
        if originalmodel:
            start = time.perf_counter()
            self.optimize_model(originalmodel)
            self.optimize_seconds = time.perf_counter() - start
        self.prepare_model()

    def _run_inference(self) -> Any:
        start = time.perf_counter()
        result = self.run_inference()
        self.timemeasurements.append((time.perf_counter() - start) * 1000.0)
        return result

    def test_inference(self, resultspath: Path, prefix: str) -> dict[str, Any]:
        """Every test image: prepare, preprocess_input, run_inference, postprocess, evaluate."""
        self.timemeasurements = []
        self.dataset.reset_metrics()
        start = time.perf_counter()
        for X, y in zip(self.dataset.testX, self.dataset.testY, strict=True):
            Xp = self.dataset.prepare_input_sample(X)
            self.preprocess_input(Xp)
            preds = self._run_inference()
            self.dataset.evaluate(self.postprocess_outputs(preds), y)
        test_seconds = time.perf_counter() - start
        cm = self.dataset.confusion_matrix
        metrics = metrics_of(cm, self.dataset.top_5_count, self.dataset.total)
        draw_confusion_matrix(cm, resultspath / f"{prefix}-confusion-matrix.png",
                              "Confusion matrix", self.dataset.classnames)
        mean_ms = float(np.mean(self.timemeasurements[1:]))
        (resultspath / f"{prefix}-metrics.md").write_text("".join([
            f"Model type: {prefix}\n\n",
            f"* Accuracy: {metrics['accuracy']}\n",
            f"* Mean precision: {metrics['mean_precision']}\n",
            f"* Mean sensitivity: {metrics['mean_sensitivity']}\n",
            f"* G-Mean: {metrics['g_mean']}\n",
            f"* Mean inference time: {mean_ms} ms\n",
            f"* Top-5 percentage: {metrics['top5']}\n",
        ]))
        return {"variant": prefix, **metrics, "latency_mean_ms": mean_ms,
                "n_images": self.dataset.total, "optimize_seconds": self.optimize_seconds,
                "test_seconds": test_seconds}

    def optimize_model(self, originalmodel: Path) -> None:
        pass

    def prepare_model(self) -> None:
        raise NotImplementedError

    def preprocess_input(self, X: np.ndarray) -> None:
        raise NotImplementedError

    def run_inference(self) -> Any:
        raise NotImplementedError

    def postprocess_outputs(self, Y: Any) -> np.ndarray:
        return Y


class NativeModel(ModelTester):
    """The Keras model, one `predict` call per image."""

    def prepare_model(self) -> None:
        import keras

        self.model = keras.models.load_model(self.modelpath, compile=False)
        lines: list[str] = []
        self.model.summary(print_fn=lambda line, **_: lines.append(line))
        self.summary = "\n".join(lines)  # the lab's task: print the summary (kept, not shown)

    def preprocess_input(self, X: np.ndarray) -> None:
        self.X = X

    def run_inference(self) -> Any:
        return self.model.predict(self.X, verbose=0)

    def postprocess_outputs(self, Y: Any) -> np.ndarray:
        return np.asarray(Y)[0]


class FP32Model(ModelTester):
    """The converter without optimizations, run in the TFLite interpreter."""

    def optimize_model(self, originalmodel: Path) -> None:
        import keras
        import tensorflow as tf

        model = keras.models.load_model(originalmodel, compile=False)
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        self.modelpath.write_bytes(converter.convert())

    def prepare_model(self) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.model = Interpreter(model_path=str(self.modelpath), num_threads=self.threads)
        self.model.allocate_tensors()

    def preprocess_input(self, X: np.ndarray) -> None:
        self.model.set_tensor(self.model.get_input_details()[0]["index"], X)

    def run_inference(self) -> None:
        self.model.invoke()

    def postprocess_outputs(self, Y: Any) -> np.ndarray:
        return self.model.get_tensor(self.model.get_output_details()[0]["index"])[0]


class INT8Model(FP32Model):
    """Full INT8: Optimize.DEFAULT, the representative dataset, int8 input and output."""

    def __init__(self, dataset: LabDataset, modelpath: Path, originalmodel: Path | None = None,
                 calibrationdatasetpercent: float = 0.5, threads: int | None = None):  # fmt: skip
        self.calibrationdatasetpercent = calibrationdatasetpercent
        super().__init__(dataset, modelpath, originalmodel, threads)

    def calibration_dataset_generator(self) -> Iterator[list]:
        return self.dataset.calibration_dataset_generator(self.calibrationdatasetpercent,
                                                          LAB_SEED)

    def optimize_model(self, originalmodel: Path) -> None:
        import keras
        import tensorflow as tf

        model = keras.models.load_model(originalmodel, compile=False)
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = self.calibration_dataset_generator
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        self.modelpath.write_bytes(converter.convert())

    def preprocess_input(self, X: np.ndarray) -> None:
        details = self.model.get_input_details()[0]
        scale, zero_point = details["quantization"]
        q = np.round(X / scale + zero_point)
        self.model.set_tensor(details["index"], np.clip(q, -128, 127).astype(np.int8))

    def postprocess_outputs(self, Y: Any) -> np.ndarray:
        details = self.model.get_output_details()[0]
        scale, zero_point = details["quantization"]
        raw = self.model.get_tensor(details["index"])[0]
        return (raw.astype(np.float32) - zero_point) * scale


class ImbalancedINT8Model(INT8Model):
    """INT8 calibrated on every trainval image of class 5 alone."""

    def calibration_dataset_generator(self) -> Iterator[list]:
        return self.dataset.class_dataset_generator((LAB_IMBALANCED_CLASS,))


def run(model_path: Path, dataset_root: Path, results_path: Path, test_fraction: float = 1.0,
        tasks: tuple[str, ...] = TASKS, threads: int | None = None) -> dict[str, Any]:  # fmt: skip
    """The lab's main script, every task uncommented; returns one row per task and the times."""
    start = time.perf_counter()
    results_path.mkdir(parents=True, exist_ok=True)
    dataset = LabDataset(dataset_root, model_path, test_fraction)
    rows = []
    for prefix in tasks:
        if prefix == "native":
            tester: ModelTester = NativeModel(dataset, model_path, threads=threads)
        elif prefix == "tflite-fp32":
            tester = FP32Model(dataset, results_path / f"{model_path.stem}.fp32.tflite",
                               model_path, threads=threads)
        elif prefix.startswith("tflite-int8-"):
            calibsize = float(prefix.removeprefix("tflite-int8-"))
            path = results_path / f"{model_path.stem}.int8-{calibsize}.tflite"
            tester = INT8Model(dataset, path, model_path, calibsize, threads=threads)
        elif prefix == "tflite-imbint8":
            path = results_path / f"{model_path.stem}.imbint8.tflite"
            tester = ImbalancedINT8Model(dataset, path, model_path, threads=threads)
        else:
            raise SystemExit(f"unknown task {prefix!r}; known: {', '.join(TASKS)}")
        row = tester.test_inference(results_path, prefix)
        if prefix != "native":
            row["tflite"] = str(tester.modelpath)
        print(f"{prefix:18s} accuracy {row['accuracy']:.4f}  convert "
              f"{row['optimize_seconds']:6.1f} s  test {row['test_seconds']:6.1f} s",
              file=sys.stderr, flush=True)
        rows.append(row)
    return {"rows": rows, "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-path", type=Path, default=ROOT / "models" / "petq-demo.keras")
    parser.add_argument("--dataset-root", type=Path, required=True)
    parser.add_argument("--results-path", type=Path, required=True)
    parser.add_argument("--test-dataset-fraction", type=float, default=1.0)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--summary-json", type=Path, help="write the rows and times here")
    args = parser.parse_args(argv)
    out = run(args.model_path, args.dataset_root, args.results_path, args.test_dataset_fraction,
              tuple(args.tasks), args.threads)
    if args.summary_json:
        args.summary_json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"lab harness: {out['seconds']:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

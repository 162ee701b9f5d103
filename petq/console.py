"""What the commands share: the options naming a model, dataset and cache, the workspace
they open, progress on the terminal and one line per result. `petq experiments`
(petq.cli), `petq sweep` (petq.sweep) and `petq classify` (petq.classify) use them."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from petq.errors import ModelDatasetMismatch
from petq.types import PREPROCESSING, Stage

_TERMINAL: dict[int, object] = {}  # id(sys.stderr) -> its copy


def terminal():
    """A copy of the user's stderr: conversions capture file descriptor 2 for the
    converter's chatter, and progress must still reach the user."""
    key = id(sys.stderr)
    if key not in _TERMINAL:
        _TERMINAL.clear()
        try:
            _TERMINAL[key] = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
        except (OSError, ValueError, AttributeError):  # a stderr without a file descriptor
            _TERMINAL[key] = sys.stderr
    return _TERMINAL[key]


class StageBars:
    """Progress for progress(stage, done, total): a tqdm bar per stage on a terminal; on a
    pipe or a CI log, one plain line per stage instead of thousands of carriage returns."""


    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self.bar = None
        self.stage = None
        self.out = terminal()
        self.interactive = self.out.isatty()

    def __call__(self, stage: str, done: int, total: int) -> None:
        label = f"{self.prefix}{Stage.label_of(stage)}"
        if not self.interactive:
            if stage != self.stage:
                self.stage = stage
                print(label + (f" ({total} images)" if total > 1 else ""), file=self.out)
            return
        from tqdm import tqdm

        if stage != self.stage or self.bar is None:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=label, unit="img" if total > 1 else "step",
                            leave=False, file=self.out, dynamic_ncols=True)
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def open_workspace(args: argparse.Namespace):
    """The workspace the common options name (the demo's model and data by default)."""
    from petq.demo import default_workspace

    if args.download_dataset and args.dataset_root:
        download_dataset(args.dataset_root)
    bars = StageBars()
    try:
        ws = default_workspace(
            args.model_path, args.dataset_root, args.cache_dir, args.threads,
            progress=lambda done, total: bars("generating synthetic pets", done, total),
            preprocessing=args.preprocessing)
    except ModelDatasetMismatch as exc:  # where the dataset can be the cause
        if args.model_path and not args.dataset_root:
            raise ModelDatasetMismatch(f"{exc} (the synthetic demo dataset was used: "
                                       "--dataset-root was not given)") from None
        raise
    finally:
        bars.close()
    if ws.contract_source == "model":
        print(f"petq: {ws.contract_note()}", file=sys.stderr)
    return ws


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", type=Path,
                        help="Keras model (.keras, .h5) or float .tflite (default: the demo model)")
    parser.add_argument("--dataset-root", type=Path,
                        help="Oxford-IIIT Pet layout folder (default: synthetic demo dataset)")
    parser.add_argument("--download-dataset", action="store_true",
                        help="download Oxford-IIIT Pet into --dataset-root first")
    parser.add_argument("--cache-dir", type=Path, help="cache folder (default: ./cache)")
    parser.add_argument("--threads", type=int, help="interpreter threads (default: all cores)")
    parser.add_argument("--preprocessing", choices=list(PREPROCESSING),
                        help="input scaling; overrides the sidecar JSON's (default: the "
                             "sidecar's, else torch: /255 then ImageNet mean/std). "
                             + "; ".join(f"{k}: {v}" for k, v in PREPROCESSING.items()))


def result_line(result) -> str:
    """One line of a result's headline metrics, formatted by the metrics registry."""
    from petq.results import METRICS

    shown = ("accuracy", "g_mean", "top5", "latency_p50_ms", "file_size_bytes")
    return "  ".join(f"{METRICS[k].label.lower()} {METRICS[k].format(result.value(k))}"
                     for k in shown)


def download_dataset(root: Path) -> None:
    """Oxford-IIIT Pet into `root`, with a progress bar per part."""
    from petq import download

    bars = StageBars()
    try:
        download.download_dataset(root, progress=lambda part: lambda done, total: bars(
            f"downloading {part} (bytes)", done, total))
    finally:
        bars.close()

"""Classify your own photos with every chosen variant: the Classify page's answer, as a call.

`classify_files` decodes each photo once (the same decoding and preprocessing as
the dataset), runs every variant on it and yields one `Answer` per (photo,
variant), or one `Failure` per photo that cannot be read. `petq classify
PHOTO... [--tasks ...] [--json]` prints them as text or as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from petq.data import model_pixels, open_image, preprocess
from petq.errors import ImageError
from petq.runtime import Runner, softmax
from petq.types import VariantSpec, parse_tasks

if TYPE_CHECKING:
    from petq.workspace import Stage, Workspace

TOP_K = 5
DEFAULT_TASKS = ("tflite-fp32",)


@dataclass(frozen=True)
class Answer:
    """One variant's top-5 breeds for one photo, most probable first; `latency_ms`: the time
    of its predict call."""

    file: str
    variant: str
    top5: tuple[tuple[str, float], ...]
    latency_ms: float = 0.0

    @property
    def top1(self) -> str:
        return self.top5[0][0]

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "variant": self.variant,
                "top5": [[breed, probability] for breed, probability in self.top5]}


@dataclass(frozen=True)
class Failure:
    """A photo that could not be read; `error` says why (without the file name)."""

    file: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "error": self.error}


def top_k(scores: np.ndarray, class_names: Sequence[str], k: int = TOP_K
          ) -> tuple[tuple[str, float], ...]:  # fmt: skip
    """The k most probable classes with their softmax probabilities (ties in class order)."""
    probabilities = softmax(np.asarray(scores))
    order = np.argsort(-probabilities, kind="stable")[:k]
    return tuple((class_names[i] if i < len(class_names) else str(i), float(probabilities[i]))
                 for i in order)


def classify_files(
    workspace: Workspace,
    specs: Sequence[VariantSpec],
    files: Iterable[Path | str],
    progress: Stage | None = None,
) -> Iterator[Answer | Failure]:
    """Every variant's top-5 for every file, in file order then `specs` order.

    Each file is decoded once with the workspace's contract. The variants are loaded
    (converted when not cached; `progress` reports it) at the first readable file,
    so a run on unreadable files alone converts nothing.
    """
    runners: dict[str, Runner] | None = None
    contract = workspace.contract
    for file in files:
        label = str(file)
        try:
            image = open_image(Path(file), name=label)
        except ImageError as exc:
            yield Failure(label, _without_prefix(str(exc), label))
            continue
        x = preprocess(model_pixels(image, contract), contract)
        if runners is None:
            runners = {spec.name: workspace.runner(spec, progress) for spec in specs}
        yield from classify_image(runners, x, workspace.class_names, label)


def classify_image(runners: Mapping[str, Runner], x: np.ndarray, class_names: Sequence[str],
                   file: str = "", k: int = TOP_K) -> list[Answer]:
    """Every runner's top-k classes for one preprocessed image `x`, in `runners` order,
    each with the time of its predict call (the Classify page shows it)."""
    answers = []
    for name, runner in runners.items():
        start = time.perf_counter()
        scores = runner.predict(x)
        latency_ms = (time.perf_counter() - start) * 1000.0
        answers.append(Answer(file, name, top_k(scores, class_names, k), latency_ms))
    return answers


def disagreement(answers: Sequence[Answer]) -> bool:
    """Whether the variants' top-1 classes differ."""
    return len({a.top1 for a in answers}) > 1


def _without_prefix(message: str, label: str) -> str:
    prefix = f"{label}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def format_text(item: Answer | Failure) -> str:
    """One line for people: `photo.jpg  tflite-fp32  Bengal 91.2%, Birman 5.0%, ...`."""
    if isinstance(item, Failure):
        return f"{item.file}: {item.error}"
    shown = ", ".join(f"{breed} {probability:.1%}" for breed, probability in item.top5)
    return f"{item.file}  {item.variant}  {shown}"


def provenance(workspace: Workspace) -> dict[str, Any]:
    """Where the answers come from, for each JSON line: the model file and whether it was
    trained on synthetic pets (its answers on real photos then mean nothing)."""
    return {"model": str(workspace.model_path),
            "model_trained_on_synthetic_data": bool(workspace.contract.synthetic)}


def format_json(item: Answer | Failure, origin: dict[str, Any] | None = None) -> str:
    """One JSON object per line: {"file", "variant", "top5": [[breed, p], ...]} or
    {"file", "error"}, then `origin`'s fields (`provenance`): every line stands alone."""
    return json.dumps(item.to_dict() | (origin or {}), ensure_ascii=False)


# ---------------------------------------------------------------- command line


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `petq classify` on the CLI's subparsers."""
    from petq.console import add_common_options

    p = subparsers.add_parser("classify", help="top-5 breeds of your photos, by every variant")
    p.add_argument("files", nargs="+", type=Path, metavar="PHOTO",
                   help="image files (JPEG, PNG, GIF, BMP, TIFF, WebP, HEIC...; 16-bit too)")
    p.add_argument("--tasks", nargs="+", default=None,
                   help="variants to run: native tflite-fp32 tflite-int8-<fraction> "
                        "tflite-imbint8 ... | all | tflite-int8-all | source (default: "
                        f"{' '.join(DEFAULT_TASKS)}; for a .tflite source, source)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line and variant, errors included, on stdout; "
                        "each says its model and model_trained_on_synthetic_data")
    add_common_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """`petq classify`: exit status 1 only when no file could be read."""
    from petq.console import StageBars, open_workspace

    if args.tasks is not None:
        parse_tasks(args.tasks)  # a bad name is said before the model is read
    workspace = open_workspace(args)
    tasks = args.tasks or (["source"] if workspace.source_is_tflite else list(DEFAULT_TASKS))
    specs = parse_tasks(tasks)
    for spec in specs:
        workspace.check(spec)  # what this model cannot run, said before anything is decoded
    if workspace.contract.synthetic:
        print("petq: note: this model was trained on synthetic pets; its answers on real "
              "photos mean nothing", file=sys.stderr)
    read: set[str] = set()
    origin = provenance(workspace)
    bars = StageBars()
    try:
        for item in classify_files(workspace, specs, args.files, progress=bars):
            bars.close()
            if isinstance(item, Answer):
                read.add(item.file)
                print(format_json(item, origin) if args.json else format_text(item), flush=True)
            elif args.json:
                print(format_json(item, origin), flush=True)
            else:
                print(f"petq: {format_text(item)}", file=sys.stderr, flush=True)
    finally:
        bars.close()
    return 0 if read else 1

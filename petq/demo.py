"""The embedded default: the shipped demo model and the synthetic pets dataset.

With no arguments, the CLI and the dashboard use these; the synthetic dataset
is generated on first use into the git-ignored `data/` folder. Override the
folders with PETQ_DATA and PETQ_CACHE.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from petq.errors import ModelError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = PROJECT_ROOT / "models" / "petq-demo.keras"
SYNTH_SEED = 0
SYNTH_TRAINVAL_PER_CLASS = 40
SYNTH_TEST_PER_CLASS = 20


def data_dir() -> Path:
    return Path(os.environ.get("PETQ_DATA", PROJECT_ROOT / "data"))


def cache_dir() -> Path:
    return Path(os.environ.get("PETQ_CACHE", PROJECT_ROOT / "cache"))


def demo_dataset_root() -> Path:
    return data_dir() / "synthetic-pets"


def ensure_demo_dataset(
    progress: Callable[[int, int], None] | None = None, workers: int = 1
) -> Path:
    """The synthetic dataset the demo model was trained on, generated if missing.

    In-process by default: spawned workers re-import the caller's `__main__`, which
    inside Streamlit is the dashboard script itself.
    """
    from petq.synth import generate

    return generate(
        demo_dataset_root(),
        trainval_per_class=SYNTH_TRAINVAL_PER_CLASS,
        test_per_class=SYNTH_TEST_PER_CLASS,
        seed=SYNTH_SEED,
        progress=progress,
        workers=workers,
    )


def default_workspace(
    model_path: Path | str | None = None,
    dataset_root: Path | str | None = None,
    cache_root: Path | str | None = None,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    preprocessing: str | None = None,
):
    """A Workspace on the given model/dataset, or on the embedded demo for what is None."""
    from petq.workspace import Workspace

    model = Path(model_path) if model_path else DEMO_MODEL
    if not model.exists():  # said before a minute of generating the demo's images
        raise ModelError(f"{model}: model file not found")
    root = Path(dataset_root) if dataset_root else ensure_demo_dataset(progress)
    return Workspace(model, root, cache_root or cache_dir(), threads=threads,
                     preprocessing=preprocessing)

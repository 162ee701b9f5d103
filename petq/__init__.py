"""petq: post-training quantization experiments for image classifiers.

The library never imports streamlit, and imports TensorFlow only where a step
needs it (conversion, the native Keras runner, training).
"""

from petq.errors import (
    DatasetError,
    DiskFullError,
    DownloadError,
    ImageError,
    ModelError,
    PetqError,
    SpecError,
)
from petq.types import (
    RECIPES,
    Backend,
    Calibration,
    Mode,
    ModelContract,
    Recipe,
    VariantSpec,
    lab_tasks,
    parse_tasks,
)

__version__ = "0.1.0"

__all__ = [
    "RECIPES",
    "Backend",
    "Calibration",
    "Mode",
    "Recipe",
    "DatasetError",
    "DiskFullError",
    "DownloadError",
    "ImageError",
    "ModelContract",
    "ModelError",
    "PetqError",
    "SpecError",
    "VariantSpec",
    "lab_tasks",
    "parse_tasks",
]

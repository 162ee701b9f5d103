"""Errors petq raises for bad input. Each message names the file or value and the problem."""

import warnings


class PetqError(Exception):
    """Base class: a clear, user-facing problem with the input, not a bug."""


class DatasetError(PetqError):
    """The dataset folder, a list file or a list line is missing or malformed."""


class ImageError(PetqError):
    """An image cannot be decoded (not an image, truncated, too large)."""


class ModelError(PetqError):
    """A model file is missing, not a Keras/TFLite model, or breaks its contract."""


class ModelDatasetMismatch(ModelError):
    """The model and the dataset do not fit together (class counts, breed names): the
    dataset may be the cause as much as the model."""


class SpecError(PetqError, ValueError):
    """A variant spec or its parameters are invalid (fraction, classes, name)."""


class TuneError(PetqError):
    """A tune cannot start: its limits, its split or its reference."""


class DownloadError(PetqError):
    """A download failed; nothing half-written was left behind."""


class SweepError(PetqError):
    """A sweep cannot start: its grid, its paths, its cache or its Ray cluster."""


class DiskFullError(PetqError):
    """The cache's disk has no room for an entry: nothing half-written is left. Every
    variant after it would fail alike, so a run stops at the first."""


class PetqWarning(UserWarning):
    """Something the user should know that does not stop the work (skipped images, a
    list line whose CLASS-ID disagrees with its file name). Shown as one
    `petq: warning: ...` line, not with Python's warning source line."""


class SkippedImagesWarning(PetqWarning):
    """Images of a split could not be decoded and are skipped (said when they are decoded;
    the CLI says it once per run instead, with the counts its reports record)."""


def _format_warning(message, category, filename, lineno, line=None) -> str:
    if isinstance(category, type) and issubclass(category, PetqWarning):
        return f"petq: warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


# Every process that imports petq (the CLI, the converter process, workers, the
# dashboard) prints PetqWarning as one plain line; other warnings keep Python's format.
_python_format_warning = warnings.formatwarning
warnings.formatwarning = _format_warning

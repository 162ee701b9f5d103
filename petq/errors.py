"""Errors petq raises for bad input. Each message names the file or value and the problem."""


class PetqError(Exception):
    """Base class: a clear, user-facing problem with the input, not a bug."""


class DatasetError(PetqError):
    """The dataset folder, a list file or a list line is missing or malformed."""


class ImageError(PetqError):
    """An image cannot be decoded (not an image, truncated, too large)."""


class ModelError(PetqError):
    """A model file is missing, not a Keras/TFLite model, or breaks its contract."""


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

"""Downloads for users with internet: Oxford-IIIT Pet and the lab's trained model.

Nothing half-written is left behind: archives stream to a temporary file,
extract into a temporary folder, and only complete folders are moved into place.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from petq.errors import DownloadError
from petq.types import ModelContract, save_contract

OXFORD_BASE_URL = "https://thor.robots.ox.ac.uk/~vgg/data/pets/data"
OXFORD_ARCHIVES = {"images": "images.tar.gz", "annotations": "annotations.tar.gz"}
LAB_MODEL_URL = (
    "https://github.com/antmicro/dl-in-iot-course-models/raw/HEAD/pet-dataset-tensorflow.h5"
)
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
Progress = Callable[[int, int], None]  # (bytes done, bytes total or 0 when unknown)


def fetch(url: str, dest: Path, progress: Progress | None = None, timeout: float = 30) -> Path:
    """Stream a URL to `dest` via a temp file; on any failure nothing is left at `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")[1])
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while block := response.read(1 << 20):
                out.write(block)
                done += len(block)
                if progress:
                    progress(done, total)
        tmp.replace(dest)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot download {url}: {reason} (offline?)") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def download_dataset(
    root: Path | str,
    base_url: str = OXFORD_BASE_URL,
    progress: Callable[[str], Progress] | None = None,
) -> Path:
    """Fetch and extract Oxford-IIIT Pet into `root`, skipping parts already there.

    `progress(part)` returns a byte-progress callback for that part.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for part, archive in OXFORD_ARCHIVES.items():
        target = root / part
        if target.is_dir() and any(target.iterdir()):
            continue
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{part}-download-") as tmp:
            tar_path = fetch(f"{base_url}/{archive}", Path(tmp) / archive,
                             progress(part) if progress else None)
            extracted = Path(tmp) / "extracted"
            try:
                with tarfile.open(tar_path, "r:*") as tar:  # plain tar despite .tar.gz
                    tar.extractall(extracted, filter="data")
            except (tarfile.TarError, OSError) as exc:
                raise DownloadError(f"{url_name(base_url, archive)}: bad archive ({exc})") from None
            source = extracted / part
            if not source.is_dir():
                raise DownloadError(f"{url_name(base_url, archive)}: no '{part}/' folder inside")
            shutil.rmtree(target, ignore_errors=True)
            source.replace(target)
    return root


def url_name(base_url: str, archive: str) -> str:
    return f"{base_url}/{archive}"


def download_model(
    dest: Path | str, url: str = LAB_MODEL_URL, progress: Progress | None = None
) -> Path:
    """Fetch the lab's trained `pet-dataset-tensorflow.h5` and write its sidecar."""
    dest = Path(dest)
    if dest.exists():
        return dest
    with tempfile.TemporaryDirectory(dir=dest.parent if dest.parent.exists() else None) as tmp:
        part = fetch(url, Path(tmp) / dest.name, progress)
        with open(part, "rb") as handle:
            head = handle.read(len(HDF5_MAGIC))
        if head != HDF5_MAGIC:
            raise DownloadError(
                f"{url}: the download is not an HDF5 model (a Git LFS pointer or an error page?)"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(part), dest)
    save_contract(dest, ModelContract(info={"source": url}))
    return dest

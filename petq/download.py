"""Downloads for users with internet: Oxford-IIIT Pet and the lab's trained model.

Files are fetched and verified by pooch (the Oxford archives against their published
MD5s, the ones torchvision pins). Nothing half-written is left behind: pooch streams
to a temporary file and keeps it only when its hash matches; archives extract into a
temporary folder, and only complete folders are moved into place. `file://` URLs (a
local mirror of the archives) are copied the same way.
"""

from __future__ import annotations

import re
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from petq.errors import DownloadError
from petq.types import ModelContract, save_contract

OXFORD_BASE_URL = "https://thor.robots.ox.ac.uk/~vgg/data/pets/data"
OXFORD_ARCHIVES = {"images": "images.tar.gz", "annotations": "annotations.tar.gz"}
# published MD5s of the archives (torchvision.datasets.OxfordIIITPet pins the same)
OXFORD_MD5 = {"images.tar.gz": "5c4f3ee8e5d25df40f4fd59a7f44e54c",
              "annotations.tar.gz": "95a8c909bbe2e81eed6a22bccdf3f68f"}
LAB_MODEL_URL = (
    "https://github.com/antmicro/dl-in-iot-course-models/raw/HEAD/pet-dataset-tensorflow.h5"
)
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
Progress = Callable[[int, int], None]  # (bytes done, bytes total or 0 when unknown)
CHUNK = 1 << 20


class _Bar:
    """What pooch's downloaders call on a progress bar, passed on to a `Progress`."""

    def __init__(self, progress: Progress):
        self.progress, self.total, self.n = progress, 0, 0

    def update(self, count: int) -> None:
        self.n = min(self.n + count, self.total) if self.total else self.n + count
        self.progress(self.n, self.total)

    def reset(self) -> None:
        self.n = 0

    def close(self) -> None:
        pass


def _copy_file_url(progress: Progress | None) -> Callable[[str, str, object], None]:
    """A pooch downloader for `file://` URLs: a plain copy, reporting its progress."""

    def download(url: str, output_file: str, _pooch: object) -> None:
        source = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        total = source.stat().st_size
        done = 0
        with open(source, "rb") as src, open(output_file, "wb") as out:
            while block := src.read(CHUNK):
                out.write(block)
                done += len(block)
                if progress:
                    progress(done, total)

    return download


def fetch(url: str, dest: Path, md5: str | None = None, progress: Progress | None = None,
          timeout: float = 30) -> Path:  # fmt: skip
    """Download `url` to `dest` with pooch, checking its MD5 when one is given (a file
    already at `dest` with that MD5 is kept). On any failure nothing is left at `dest`."""
    import pooch
    import requests

    pooch.get_logger().setLevel("WARNING")  # its "Downloading ..." lines: the bar says it
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("file://"):
        downloader = _copy_file_url(progress)
    else:
        downloader = pooch.HTTPDownloader(progressbar=_Bar(progress) if progress else False,
                                          timeout=timeout)
    try:
        found = pooch.retrieve(url, known_hash=f"md5:{md5}" if md5 else None, fname=dest.name,
                               path=dest.parent, downloader=downloader)
    except ValueError as exc:  # pooch: the hash does not match (the file is deleted)
        got = re.search(r"but got ([0-9a-f]{32})", str(exc))
        raise DownloadError(
            f"{url}: MD5 {got[1] if got else 'of the download'} does not match the published "
            f"{md5}; the download was deleted (a corrupt transfer or a changed file)") from None
    except (requests.exceptions.RequestException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.__class__.__name__
        if isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror
        raise DownloadError(f"cannot download {url}: {reason} (offline?)") from None
    return Path(found)


def download_dataset(
    root: Path | str,
    base_url: str = OXFORD_BASE_URL,
    progress: Callable[[str], Progress] | None = None,
    md5: dict[str, str | None] | None = None,
) -> Path:
    """Fetch, verify and extract Oxford-IIIT Pet into `root`, skipping parts already there.

    `progress(part)` returns a byte-progress callback for that part. `md5`: each
    archive's expected MD5 (default: the published ones; None for an archive skips the
    check, for a mirror of other files).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    hashes = OXFORD_MD5 if md5 is None else md5
    for part, archive in OXFORD_ARCHIVES.items():
        target = root / part
        if target.is_dir() and any(target.iterdir()):
            continue
        url = f"{base_url.rstrip('/')}/{archive}"
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{part}-download-") as tmp:
            tar_path = fetch(url, Path(tmp) / archive, hashes.get(archive),
                             progress(part) if progress else None)
            extracted = Path(tmp) / "extracted"
            try:
                with tarfile.open(tar_path, "r:*") as tar:  # plain tar despite .tar.gz
                    tar.extractall(extracted, filter="data")
            except (tarfile.TarError, OSError) as exc:
                raise DownloadError(f"{url}: bad archive ({exc})") from None
            source = extracted / part
            if not source.is_dir():
                raise DownloadError(f"{url}: no '{part}/' folder inside")
            shutil.rmtree(target, ignore_errors=True)
            source.replace(target)
    return root


def download_model(
    dest: Path | str, url: str = LAB_MODEL_URL, progress: Progress | None = None
) -> Path:
    """Fetch the lab's trained `pet-dataset-tensorflow.h5` and write its sidecar (no
    published checksum: the HDF5 signature is checked instead)."""
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-download-") as tmp:
        part = fetch(url, Path(tmp) / dest.name, progress=progress)
        with open(part, "rb") as handle:
            head = handle.read(len(HDF5_MAGIC))
        if head != HDF5_MAGIC:
            raise DownloadError(
                f"{url}: the download is not an HDF5 model (a Git LFS pointer or an error page?)"
            )
        shutil.move(str(part), dest)
    save_contract(dest, ModelContract(info={"source": url}))
    return dest

"""Downloads: served from a loopback HTTP server; offline gives a clear error, no partial files."""

from __future__ import annotations

import http.server
import io
import socket
import tarfile
import threading
from pathlib import Path

import pytest

from petq.download import HDF5_MAGIC, download_dataset, download_model
from petq.errors import DownloadError


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there: like being offline


def make_tar(folder: str, files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:  # plain tar, as Oxford's are
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture()
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".part"]


def test_offline_dataset_download_fails_clearly_and_leaves_nothing(tmp_path):
    root = tmp_path / "oxford"
    with pytest.raises(DownloadError, match="cannot download .*images.tar.gz"):
        download_dataset(root, base_url=closed_port_url())
    assert not (root / "images").exists() and not leftovers(root)


def test_offline_model_download_fails_clearly(tmp_path):
    dest = tmp_path / "models" / "pet-dataset-tensorflow.h5"
    dest.parent.mkdir()
    with pytest.raises(DownloadError, match="offline"):
        download_model(dest, url=closed_port_url() + "/m.h5")
    assert list(dest.parent.iterdir()) == []


def test_dataset_download_extracts_and_skips_what_is_there(server, tmp_path):
    served, url = server
    (served / "images.tar.gz").write_bytes(make_tar("images", {"Abyssinian_1.jpg": b"x"}))
    (served / "annotations.tar.gz").write_bytes(
        make_tar("annotations", {"trainval.txt": b"Abyssinian_1 1 1 1\n"}))
    root = download_dataset(tmp_path / "oxford", base_url=url)
    assert (root / "images" / "Abyssinian_1.jpg").read_bytes() == b"x"
    assert (root / "annotations" / "trainval.txt").exists()
    (served / "images.tar.gz").unlink()  # a second run must not need the server
    (served / "annotations.tar.gz").unlink()
    download_dataset(root, base_url=url)
    assert not leftovers(root)


def test_bad_archive_leaves_no_half_extracted_dataset(server, tmp_path):
    served, url = server
    (served / "images.tar.gz").write_bytes(b"not a tar file at all")
    root = tmp_path / "oxford"
    with pytest.raises(DownloadError, match="bad archive"):
        download_dataset(root, base_url=url)
    assert not (root / "images").exists() and not leftovers(root)


def test_model_download_checks_hdf5_and_writes_sidecar(server, tmp_path):
    served, url = server
    (served / "pointer.h5").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    (served / "real.h5").write_bytes(HDF5_MAGIC + b"rest")
    with pytest.raises(DownloadError, match="Git LFS pointer"):
        download_model(tmp_path / "a.h5", url=f"{url}/pointer.h5")
    assert not (tmp_path / "a.h5").exists()
    path = download_model(tmp_path / "b.h5", url=f"{url}/real.h5")
    assert path.read_bytes().startswith(HDF5_MAGIC) and path.with_suffix(".json").exists()

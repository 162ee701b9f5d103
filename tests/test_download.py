"""Downloads: served from a loopback HTTP server; offline gives a clear error, no partial files."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import tarfile
import threading
from pathlib import Path

import pytest

from petq.download import HDF5_MAGIC, OXFORD_MD5, download_dataset, download_model
from petq.errors import DownloadError

NO_CHECK = {"images.tar.gz": None, "annotations.tar.gz": None}


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
    md5 = {name: hashlib.md5((served / name).read_bytes()).hexdigest() for name in NO_CHECK}
    seen: list[tuple[str, int, int]] = []
    root = download_dataset(tmp_path / "oxford", base_url=url, md5=md5,
                            progress=lambda part: lambda done, total: seen.append(
                                (part, done, total)))
    assert (root / "images" / "Abyssinian_1.jpg").read_bytes() == b"x"
    sizes = {name.split(".")[0]: (served / name).stat().st_size for name in NO_CHECK}
    assert {(part, done, total) for part, done, total in seen if done == total} == {
        (part, size, size) for part, size in sizes.items()}  # the bar reaches each size
    assert (root / "annotations" / "trainval.txt").exists()
    (served / "images.tar.gz").unlink()  # a second run must not need the server
    (served / "annotations.tar.gz").unlink()
    download_dataset(root, base_url=url, md5=md5)
    assert not leftovers(root)


def test_bad_archive_leaves_no_half_extracted_dataset(server, tmp_path):
    served, url = server
    (served / "images.tar.gz").write_bytes(b"not a tar file at all")
    root = tmp_path / "oxford"
    with pytest.raises(DownloadError, match="bad archive"):
        download_dataset(root, base_url=url, md5=NO_CHECK)
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


def test_file_url_is_verified_against_the_published_md5(tmp_path):
    """Offline: a local mirror (file:// URL) holding archives that are not Oxford's.
    The published MD5 refuses them with one clear error; nothing is left behind."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "images.tar.gz").write_bytes(make_tar("images", {"Abyssinian_1.jpg": b"x"}))
    (mirror / "annotations.tar.gz").write_bytes(
        make_tar("annotations", {"trainval.txt": b"Abyssinian_1 1 1 1\n"}))
    root = tmp_path / "oxford"
    with pytest.raises(DownloadError) as caught:
        download_dataset(root, base_url=mirror.as_uri())
    message = str(caught.value)
    assert message.startswith(f"{mirror.as_uri()}/images.tar.gz: MD5 ")
    assert OXFORD_MD5["images.tar.gz"] in message and "\n" not in message
    got = hashlib.md5((mirror / "images.tar.gz").read_bytes()).hexdigest()
    assert got in message
    assert sorted(p.name for p in root.iterdir()) == []  # no archive, no half-written part
    # the right MD5s: the same mirror downloads and extracts
    md5 = {name: hashlib.md5((mirror / name).read_bytes()).hexdigest() for name in NO_CHECK}
    download_dataset(root, base_url=mirror.as_uri(), md5=md5)
    assert (root / "images" / "Abyssinian_1.jpg").read_bytes() == b"x"
    assert not leftovers(root)


def test_a_wrong_hash_over_http_deletes_the_download(server, tmp_path):
    served, url = server
    (served / "images.tar.gz").write_bytes(make_tar("images", {"a.jpg": b"x"}))
    root = tmp_path / "oxford"
    with pytest.raises(DownloadError, match="does not match the published"):
        download_dataset(root, base_url=url)  # the published MD5s
    assert list(root.iterdir()) == []


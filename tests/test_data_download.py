"""Downloader and cache, against a local HTTP server (no network)."""

import hashlib
import http.server
import io
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from data import (
    DATASETS,
    ChecksumMismatchError,
    DownloadError,
    default_cache_dir,
    download_file,
    fetch_dataset,
    load_dataset,
    read_sasrec_text,
)


def _zip_bytes() -> bytes:
    """ml-1m.zip look-alike: 5 users rate movies 10 and 20; movie 30 is rated once."""
    lines = []
    for user in range(1, 6):
        lines.append(f"{user}::20::3::{user * 10}")
        lines.append(f"{user}::10::3::{user * 10 + 1}")
    lines.append("3::30::1::0")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ml-1m/ratings.dat", "\n".join(lines) + "\n")
        z.writestr("ml-1m/README", "test archive\n")
    return buf.getvalue()


ZIP = _zip_bytes()
ZIP_MD5 = hashlib.md5(ZIP).hexdigest()
# Movie 20 first (t = 10u), then 10 (t = 10u + 1); movie 30 (1 rating) is dropped.
EXPECTED = {u: [1, 2] for u in range(1, 6)}


class _Server:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {"/ml-1m.zip": ZIP}
        self.requests: list[str] = []
        self.truncate = False
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if server.truncate else body)

            def log_message(self, *args: object) -> None:
                pass  # keep test output clean

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Fail fast if anything tries to resolve a host other than the local test server."""
    real = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"test tried to reach {host!r}: tests must not use the network")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    srv = _Server()
    yield srv
    srv.close()


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_fetch_downloads_preprocesses_then_reuses_cache(server, tmp_path):
    kw = {"url": server.url + "/ml-1m.zip", "md5": ZIP_MD5, "progress": False}
    path = fetch_dataset("ml-1m", tmp_path, **kw)
    assert path == tmp_path / "ml-1m" / "ml-1m.txt"
    assert server.requests == ["/ml-1m.zip"]
    assert _files(tmp_path) == ["ml-1m/ml-1m.txt", "ml-1m/ml-1m.zip"]
    assert (tmp_path / "ml-1m" / "ml-1m.zip").read_bytes() == ZIP
    d = read_sasrec_text(path)
    assert d.sequences == EXPECTED
    assert (d.num_users, d.num_items) == (5, 2)

    # Second call: the text file is reused, no request.
    assert fetch_dataset("ml-1m", tmp_path, **kw) == path
    # Text file gone but archive cached with the right md5: preprocess again, no request.
    path.unlink()
    assert fetch_dataset("ml-1m", tmp_path, **kw) == path
    assert read_sasrec_text(path).sequences == EXPECTED
    assert server.requests == ["/ml-1m.zip"]


def test_load_dataset_by_name_uses_cache(server, tmp_path):
    fetch_dataset("ml-1m", tmp_path, url=server.url + "/ml-1m.zip", md5=ZIP_MD5, progress=False)
    # Cached now, so the registered (real) URL is never contacted.
    d = load_dataset("ml-1m", cache_dir=tmp_path)
    assert d.sequences == EXPECTED
    assert server.requests == ["/ml-1m.zip"]


def test_cached_archive_with_wrong_md5_is_downloaded_again(server, tmp_path):
    (tmp_path / "ml-1m").mkdir()
    (tmp_path / "ml-1m" / "ml-1m.zip").write_bytes(b"stale")
    path = fetch_dataset(
        "ml-1m", tmp_path, url=server.url + "/ml-1m.zip", md5=ZIP_MD5, progress=False
    )
    assert read_sasrec_text(path).sequences == EXPECTED
    assert server.requests == ["/ml-1m.zip"]


def test_md5_mismatch_raises_and_leaves_nothing(server, tmp_path):
    with pytest.raises(ChecksumMismatchError) as info:
        fetch_dataset(
            "ml-1m", tmp_path, url=server.url + "/ml-1m.zip", md5="0" * 32, progress=False
        )
    message = str(info.value)
    assert ZIP_MD5 in message and "0" * 32 in message and "deleted" in message
    assert isinstance(info.value, DownloadError)
    assert _files(tmp_path) == []


def test_404_names_url(server, tmp_path):
    url = server.url + "/missing.zip"
    with pytest.raises(DownloadError, match=rf"{url} failed: HTTP 404"):
        download_file(url, tmp_path / "x.zip", md5=None, progress=False)
    assert _files(tmp_path) == []


def test_truncated_transfer(server, tmp_path):
    server.truncate = True
    url = server.url + "/ml-1m.zip"
    with pytest.raises(DownloadError, match=rf"downloading {url} failed"):
        download_file(url, tmp_path / "x.zip", md5=None, progress=False)
    assert _files(tmp_path) == []


def test_connection_refused_names_url(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"http://127.0.0.1:{port}/ml-1m.zip"
    with pytest.raises(DownloadError, match=rf"downloading {url} failed"):
        download_file(url, tmp_path / "x.zip", md5=None, progress=False, timeout=5)
    assert _files(tmp_path) == []


def test_download_file_with_progress_and_file_url(tmp_path):
    src = tmp_path / "src.zip"
    src.write_bytes(ZIP)
    dest = download_file(src.as_uri(), tmp_path / "sub" / "dest.zip", md5=ZIP_MD5.upper())
    assert dest.read_bytes() == ZIP
    assert not (tmp_path / "sub" / "dest.zip.part").exists()


def test_unknown_name_lists_known():
    with pytest.raises(ValueError, match=r"unknown dataset 'ml-100m'; known datasets: ml-1m"):
        fetch_dataset("ml-100m")


def test_registry_and_cache_dir(monkeypatch, tmp_path):
    assert DATASETS["ml-1m"].url.startswith("https://files.grouplens.org/")
    assert len(DATASETS["ml-1m"].md5) == 32
    monkeypatch.setenv("SASREC_QAT_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("SASREC_QAT_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "sasrec-qat"

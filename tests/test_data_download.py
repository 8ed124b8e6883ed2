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
    ITEM_IDS,
    ChecksumMismatchError,
    DownloadError,
    ItemIds,
    default_cache_dir,
    download_file,
    fetch_dataset,
    load_dataset,
    read_sasrec_text,
)
from data import download as download_module


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
    assert _files(tmp_path) == ["ml-1m/item_ids.json", "ml-1m/ml-1m.txt", "ml-1m/ml-1m.zip"]
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


# -- item_ids.json in the cache --------------------------------------------------------------
def _zip_with_movies() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ml-1m/ratings.dat", zipfile.ZipFile(io.BytesIO(ZIP)).read("ml-1m/ratings.dat"))
        z.writestr("ml-1m/movies.dat", "10::Am\xe9lie (2001)::Comedy\n20::Heat (1995)::Action\n"
                   .encode("latin-1"))
    return buf.getvalue()


def _served(server, name: str, body: bytes) -> dict:
    """Serve ``body`` as ``/<name>.zip``; ``fetch_dataset`` keywords that download it."""
    server.files[f"/{name}.zip"] = body
    return {"url": f"{server.url}/{name}.zip", "md5": hashlib.md5(body).hexdigest(),
            "progress": False}


def test_cache_writes_item_ids_and_reloads_them(server, tmp_path):
    kw = _served(server, "ml-1m", _zip_with_movies())
    path = fetch_dataset("ml-1m", tmp_path, **kw)
    ids = ItemIds.load(tmp_path / "ml-1m" / ITEM_IDS)
    assert ids == ItemIds(("20", "10"), ("Heat (1995)", "Amélie (2001)"))  # 20 first: EXPECTED
    d = read_sasrec_text(path)
    assert d.item_ids == ids and d.sequences == EXPECTED
    assert load_dataset("ml-1m", cache_dir=tmp_path).item_ids == ids
    assert server.requests == ["/ml-1m.zip"]


def test_old_cache_without_item_ids_is_rebuilt_from_the_archive(server, tmp_path):
    kw = {"url": server.url + "/ml-1m.zip", "md5": ZIP_MD5, "progress": False}
    path = fetch_dataset("ml-1m", tmp_path, **kw)
    text = path.read_bytes()
    (tmp_path / "ml-1m" / ITEM_IDS).unlink()  # a cache written before item_ids.json existed
    assert read_sasrec_text(path).item_ids is None
    assert fetch_dataset("ml-1m", tmp_path, **kw) == path
    assert server.requests == ["/ml-1m.zip"]  # rebuilt from the cached archive
    assert path.read_bytes() == text
    assert read_sasrec_text(path).item_ids == ItemIds(("20", "10"))

    # Neither map nor archive: downloaded again.
    (tmp_path / "ml-1m" / ITEM_IDS).unlink()
    (tmp_path / "ml-1m" / "ml-1m.zip").unlink()
    assert fetch_dataset("ml-1m", tmp_path, **kw) == path
    assert server.requests == ["/ml-1m.zip", "/ml-1m.zip"]
    assert _files(tmp_path) == ["ml-1m/item_ids.json", "ml-1m/ml-1m.txt", "ml-1m/ml-1m.zip"]

    # An unreadable map is rebuilt too.
    (tmp_path / "ml-1m" / ITEM_IDS).write_text("{broken")
    fetch_dataset("ml-1m", tmp_path, **kw)
    assert read_sasrec_text(path).item_ids == ItemIds(("20", "10"))


def test_a_crash_never_leaves_a_text_file_without_its_map(server, tmp_path, monkeypatch):
    kw = {"url": server.url + "/ml-1m.zip", "md5": ZIP_MD5, "progress": False}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ItemIds, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        fetch_dataset("ml-1m", tmp_path, **kw)
    assert _files(tmp_path) == ["ml-1m/ml-1m.zip"]
    monkeypatch.undo()

    monkeypatch.setattr(download_module, "write_sasrec_text", crash)
    with pytest.raises(KeyboardInterrupt):
        fetch_dataset("ml-1m", tmp_path, **kw)
    assert _files(tmp_path) == ["ml-1m/item_ids.json", "ml-1m/ml-1m.zip"]  # map, no text
    monkeypatch.undo()

    path = fetch_dataset("ml-1m", tmp_path, **kw)
    assert read_sasrec_text(path).sequences == EXPECTED
    assert server.requests == ["/ml-1m.zip"]


def test_named_dataset_with_min_user_interactions(server, tmp_path):
    # Users 1..5 have 2 interactions each: min 3 drops them all, min 2 keeps them.
    fetch_dataset("ml-1m", tmp_path, url=server.url + "/ml-1m.zip", md5=ZIP_MD5, progress=False)
    assert load_dataset("ml-1m", cache_dir=tmp_path, min_user_interactions=2).sequences == EXPECTED
    with pytest.raises(ValueError, match="fewer than 3 interactions"):
        load_dataset("ml-1m", cache_dir=tmp_path, min_user_interactions=3)


# -- ml-20m ----------------------------------------------------------------------------------
def _ml20m_zip() -> bytes:
    """ml-20m.zip look-alike: the users and movies of ZIP, as CSV with a float rating column;
    movie 30 is rated once and dropped."""
    ratings = ["userId,movieId,rating,timestamp"]
    for user in range(1, 6):
        ratings.append(f"{user},20,3.5,{user * 10}")
        ratings.append(f"{user},10,4.0,{user * 10 + 1}")
    ratings.append("3,30,0.5,0")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("ml-20m/ratings.csv", "\n".join(ratings) + "\n")
        z.writestr("ml-20m/movies.csv", 'movieId,title,genres\n10,"Birdcage, The (1996)",Comedy\n'
                                        "20,Heat (1995),Action\n30,Rare,Drama\n")
        z.writestr("ml-20m/links.csv", "movieId,imdbId,tmdbId\n")
    return buf.getvalue()


def test_ml20m_on_loopback(server, tmp_path):
    kw = _served(server, "ml-20m", _ml20m_zip())
    path = fetch_dataset("ml-20m", tmp_path, **kw)
    assert path == tmp_path / "ml-20m" / "ml-20m.txt"
    assert _files(tmp_path) == ["ml-20m/item_ids.json", "ml-20m/ml-20m.txt", "ml-20m/ml-20m.zip"]
    d = load_dataset("ml-20m", cache_dir=tmp_path)
    assert d.sequences == EXPECTED
    assert d.item_ids == ItemIds(("20", "10"), ("Heat (1995)", "Birdcage, The (1996)"))
    assert server.requests == ["/ml-20m.zip"]
    # The same archive given as a path gives the same data.
    direct = load_dataset(tmp_path / "ml-20m" / "ml-20m.zip")
    assert direct.sequences == d.sequences and direct.item_ids == d.item_ids


def test_ml20m_registered():
    remote = DATASETS["ml-20m"]
    assert remote.url == "https://files.grouplens.org/datasets/movielens/ml-20m.zip"
    assert remote.md5 == "cd245b17a1ae2cc31bb14903e1204af3"
    assert remote.filename == "ml-20m.zip"
    with pytest.raises(ValueError, match=r"known datasets: ml-1m, ml-20m"):
        fetch_dataset("ml-100m")

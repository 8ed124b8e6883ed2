"""Download and cache public datasets (GroupLens MovieLens-1M and MovieLens-20M).

Files live in ``default_cache_dir()/<name>/``: the archive as published, the item id map
``item_ids.json`` (raw movie ids and titles, ``data.item_ids``) and the preprocessed SASRec text
file ``<name>.txt``. Both are written atomically, the map first: a text file never lacks its
map. Once both exist no network access happens; a cache from before the map existed (text, no
map) is rebuilt from the cached archive, or downloaded again if the archive is gone.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from data.errors import ChecksumMismatchError, DownloadError
from data.item_ids import ITEM_IDS, ItemIds
from data.movielens import load_movielens_raw
from data.sequences import write_sasrec_text

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteDataset:
    """A published archive.

    Attributes:
        url: where to download it.
        md5: hex md5 of the archive (GroupLens publishes ``<file>.md5`` next to each zip).
        filename: name of the archive in the cache directory.
    """

    url: str
    md5: str
    filename: str


DATASETS: dict[str, RemoteDataset] = {
    # 1,000,209 ratings; 6,040 users; 3,706 rated movies (3,416 with >= 5 ratings).
    "ml-1m": RemoteDataset(
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        "c4d9eecfca2ab87c1945afe126590906",
        "ml-1m.zip",
    ),
    # 198,702,078 bytes; ratings.csv holds 20,000,263 ratings by 138,493 users of 26,744 movies.
    # md5 as GroupLens' ml-20m.zip.md5 sidecar, quoted by several public projects (not fetched
    # here).
    "ml-20m": RemoteDataset(
        "https://files.grouplens.org/datasets/movielens/ml-20m.zip",
        "cd245b17a1ae2cc31bb14903e1204af3",
        "ml-20m.zip",
    ),
}


def default_cache_dir() -> Path:
    """``$SASREC_QAT_CACHE`` if set, else ``~/.cache/sasrec-qat``."""
    env = os.environ.get("SASREC_QAT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sasrec-qat"


def file_md5(path: str | os.PathLike[str]) -> str:
    """Hex md5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    md5: str | None,
    progress: bool = True,
    timeout: float = 60,
) -> Path:
    """Download ``url`` to ``dest``, verifying its md5.

    The body is streamed to ``<dest>.part`` (with a tqdm progress bar), checked, then renamed
    to ``dest`` with ``os.replace``; on any failure the partial file is deleted, so ``dest``
    exists only if it is complete and verified.

    Args:
        url: http(s) or file URL.
        dest: destination file; missing parent directories are created.
        md5: expected hex md5, or None to skip the check.
        progress: show a progress bar.
        timeout: seconds to wait on the connection and on each read.

    Returns:
        ``dest`` as a Path.

    Raises:
        DownloadError: on an HTTP error, a network error or a truncated transfer (the message
            names the URL).
        ChecksumMismatchError: if the md5 differs (message names expected and actual md5).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    logger.info("downloading %s to %s", url, dest)
    try:
        actual = _stream(url, part, timeout=timeout, progress=progress, desc=dest.name)
    except BaseException as e:
        part.unlink(missing_ok=True)
        if isinstance(e, urllib.error.HTTPError):
            raise DownloadError(f"downloading {url} failed: HTTP {e.code} {e.reason}") from e
        if isinstance(e, (OSError, http.client.HTTPException)):
            raise DownloadError(
                f"downloading {url} failed: {e}; check the network"
            ) from e
        raise
    if md5 is not None and actual != md5.lower():
        part.unlink(missing_ok=True)
        raise ChecksumMismatchError(
            f"downloaded {url} has md5 {actual}, expected {md5.lower()}; the file was deleted. "
            "Retry; if it persists the server's file changed: check it (a named dataset's "
            "md5 is registered in data.download.DATASETS)"
        )
    os.replace(part, dest)
    return dest


def fetch_dataset(
    name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
) -> Path:
    """Path of the preprocessed SASRec text file of dataset ``name``, downloading if needed.

    Order: reuse ``<cache>/<name>/<name>.txt`` if it and a readable ``item_ids.json`` beside it
    exist (no network); else reuse the cached archive if its md5 matches (a mismatching one is
    deleted); else download it. Then preprocess it with ``load_movielens_raw`` and write
    ``item_ids.json`` (``ItemIds.save``), then the text file (``write_sasrec_text``), each
    atomically. ``read_sasrec_text`` of the returned path loads the map.

    Args:
        name: a key of ``DATASETS``.
        cache_dir: cache root; default ``default_cache_dir()``.
        url: download from here instead of the registered URL (mirrors, tests).
        md5: expected md5 instead of the registered one.
        progress: show a download progress bar.

    Returns:
        ``<cache>/<name>/<name>.txt``, with ``<cache>/<name>/item_ids.json`` beside it.

    Raises:
        ValueError: for an unknown ``name`` (the message lists the known names).
        DownloadError, ChecksumMismatchError: see ``download_file``.
        DataFormatError: if the archive does not hold valid ratings.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    remote = DATASETS[name]
    url = url if url is not None else remote.url
    md5 = (md5 if md5 is not None else remote.md5).lower()
    directory = Path(cache_dir if cache_dir is not None else default_cache_dir()) / name
    text_path = directory / f"{name}.txt"
    ids_path = directory / ITEM_IDS
    if text_path.is_file():
        if _readable_map(ids_path):
            return text_path
        logger.warning("%s has no readable %s beside it (an older cache); rebuilding it",
                       text_path, ITEM_IDS)
    archive = directory / remote.filename
    if archive.is_file() and file_md5(archive) != md5:
        logger.warning("cached %s has the wrong md5; downloading it again", archive)
        archive.unlink()
    if not archive.is_file():
        try:
            download_file(url, archive, md5=md5, progress=progress)
        except ChecksumMismatchError:
            raise
        except DownloadError as err:
            raise DownloadError(
                f"{err}, or put {remote.filename} (md5 {md5}, from {remote.url}) at {archive}, "
                "or download from a mirror (--mirror URL on the command line, url= in Python)"
            ) from err
    dataset = load_movielens_raw(archive, source=name)
    assert dataset.item_ids is not None  # load_movielens_raw always keeps the raw ids
    dataset.item_ids.save(ids_path)  # first: a crash leaves no text file without its map
    write_sasrec_text(dataset, text_path)
    return text_path


def _readable_map(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        ItemIds.load(path)
    except (OSError, ValueError) as err:
        logger.warning("%s", err)
        return False
    return True


def _stream(url: str, part: Path, *, timeout: float, progress: bool, desc: str) -> str:
    """Write the body of ``url`` to ``part``; return its md5. Raises on a short body."""
    digest = hashlib.md5()
    received = 0
    with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as f:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=desc,
            disable=not progress,
        ) as bar:
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise DownloadError(f"downloading {url} failed: got {received} of {total} bytes; retry")
    return digest.hexdigest()

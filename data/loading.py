"""One entry point for every data source: a dataset name, a SASRec text file, raw MovieLens."""

from __future__ import annotations

import os
from pathlib import Path

from data.download import DATASETS, fetch_dataset
from data.movielens import load_movielens_raw
from data.sequences import SequenceDataset, read_sasrec_text

_SNIFF_BYTES = 1 << 16


def load_dataset(
    path_or_name: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    mirror: str | None = None,
) -> SequenceDataset:
    """Load sequences from a dataset name or a file.

    Dispatch:

    * a string that is a key of ``DATASETS`` (``"ml-1m"``): ``fetch_dataset`` (download and
      preprocess once, then cached) and ``read_sasrec_text``;
    * a file ending in ``.zip``, named ``ratings.dat``, or whose first non-empty line contains
      ``::``: raw MovieLens via ``load_movielens_raw``;
    * any other file: ``read_sasrec_text``.

    Args:
        path_or_name: dataset name or path.
        cache_dir: cache root for named datasets; default ``default_cache_dir()``.
        mirror: download a named dataset from this URL instead of its registered one (the md5
            is still checked); ignored for paths.

    Returns:
        The dataset.

    Raises:
        ValueError: if ``path_or_name`` is neither a known name nor an existing file.
        DataFormatError, DownloadError: from the readers and the downloader.
    """
    if isinstance(path_or_name, str) and path_or_name in DATASETS:
        return read_sasrec_text(fetch_dataset(path_or_name, cache_dir, url=mirror))
    path = Path(path_or_name)
    if not path.exists():
        raise ValueError(
            f"{str(path_or_name)!r}: the path does not exist and it is not a known dataset name "
            f"(known: {', '.join(sorted(DATASETS))})"
        )
    if not path.is_file():
        raise ValueError(
            f"{path}: is a directory; pass a SASRec 'user item' text file, ratings.dat or ml-1m.zip"
        )
    if _is_movielens_raw(path):
        return load_movielens_raw(path)
    return read_sasrec_text(path)


def _is_movielens_raw(path: Path) -> bool:
    if path.suffix.lower() == ".zip" or path.name == "ratings.dat":
        return True
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    first = next((line for line in head.splitlines() if line.strip()), b"")
    return b"::" in first

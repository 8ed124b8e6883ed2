"""One entry point for every data source: a dataset name, a SASRec text file, raw MovieLens, an
interaction log (CSV, TSV, Parquet)."""

from __future__ import annotations

import os
from pathlib import Path

from data._preprocess import drop_short_users
from data.download import DATASETS, fetch_dataset
from data.errors import DataFormatError
from data.interactions import GZIP_SUFFIXES, SUFFIXES, Columns, load_interactions, log_format
from data.movielens import load_movielens_raw
from data.sequences import SequenceDataset, read_sasrec_text

_SNIFF_BYTES = 1 << 16
# Leading bytes of compressed and archive formats: such a file read as text gives nonsense errors.
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"),
               (b"\x28\xb5\x2f\xfd", "zstd"), (b"7z\xbc\xaf\x27\x1c", "7z"),
               (b"PK\x03\x04", "zip"))


def load_dataset(
    path_or_name: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    mirror: str | None = None,
    columns: Columns = None,
    min_user_interactions: int = 1,
    min_item_interactions: int | None = None,
) -> SequenceDataset:
    """Load sequences from a dataset name or a file.

    Dispatch:

    * a string that is a key of ``DATASETS`` (``"ml-1m"``, ``"ml-20m"``): ``fetch_dataset``
      (download and preprocess once, then cached) and ``read_sasrec_text``; ``item_ids`` holds
      the raw movie ids and titles;
    * a file ending in ``.csv``, ``.tsv``, ``.csv.gz``, ``.tsv.gz`` or ``.parquet`` (any
      case): an interaction log, read
      by ``load_interactions`` (``data.interactions``: string or integer ids, timestamps as
      numbers or ISO-8601 dates, the ML-1M preprocessing rules); ``item_ids`` holds the raw item
      ids;
    * a file ending in ``.zip``, named ``ratings.dat``, or whose first non-empty line contains
      ``::``: raw MovieLens via ``load_movielens_raw`` (``ml-1m.zip``, ``ml-20m.zip``,
      ``ratings.dat``); ``item_ids`` holds raw movie ids and titles;
    * any other file: ``read_sasrec_text`` (ids already dense, ``item_ids`` None).

    A compressed file or archive other than those (a ``.gz`` of another name, bzip2, xz, zstd,
    7z, a zip not named ``.zip``, or a ``.csv`` that is compressed) is refused by its leading
    bytes, with a message saying what it is, instead of being parsed as text.

    Every raw source drops items with fewer than 5 interactions, keeps every row as an
    interaction, sorts each user's items by time (stable: ties keep file order) and renumbers
    users and items from 1.

    Args:
        path_or_name: dataset name or path.
        cache_dir: cache root for named datasets; default ``default_cache_dir()``.
        mirror: download a named dataset from this URL instead of its registered one (the md5
            is still checked); ignored for paths.
        columns: for ``.csv``/``.tsv``/``.parquet`` only: the user, item and timestamp columns
            as header names or 0-based positions (``"user_id,sku,ts"``, ``"0,1,2"`` or a
            sequence). Default: the header names ``user``, ``item``, ``timestamp`` if the first
            row holds them, else positions 0, 1, 2 (a first row whose timestamp field is not a
            timestamp is then a header).
        min_user_interactions: drop users with fewer interactions, counted after the item
            filter (one pass). Default 1: no user is dropped, as the SASRec ML-1M data; users
            with 1 or 2 interactions then only train (the leave-one-out split evaluates users
            with at least 3). Applies to named datasets and raw files; a SASRec text file is
            already preprocessed and takes only the default.
        min_item_interactions: raw sources (logs, ``ratings.dat``, zips) drop items with fewer
            interactions; default None: the ML-1M rule, 5. 0 or 1 keeps every item (serving a
            log: ``export.recommend_log``, where an item the model does not know is handled
            there). A SASRec text file or a named dataset's cache is read as it is (already
            filtered when it was written), so it takes only None, 0 or 1.

    Returns:
        The dataset.

    Raises:
        ValueError: if ``path_or_name`` is neither a known name nor an existing file,
            ``columns`` is given for another kind of source, ``min_user_interactions`` is
            negative or given for a SASRec text file, or a Parquet file is given without
            pyarrow installed.
        DataFormatError, DownloadError: from the readers and the downloader.
    """
    if min_user_interactions < 0:
        raise ValueError("min_user_interactions (--min-user-interactions) must be >= 0, "
                         f"got {min_user_interactions}")
    if min_item_interactions is not None and min_item_interactions < 0:
        raise ValueError(f"min_item_interactions must be >= 0, got {min_item_interactions}")
    is_log = log_format(path_or_name) is not None
    is_name = isinstance(path_or_name, str) and path_or_name in DATASETS
    if columns is not None and (is_name or not is_log):
        raise ValueError(
            f"{path_or_name}: columns= (--columns) applies to "
            f"{', '.join([*SUFFIXES, *GZIP_SUFFIXES])} "
            "interaction logs only"
        )
    filters_items = min_item_interactions is not None and min_item_interactions > 1
    if filters_items and not is_log and (is_name or (
            Path(path_or_name).is_file() and not _is_movielens_raw(Path(path_or_name)))):
        raise ValueError(f"{path_or_name}: min_item_interactions applies to raw logs; a SASRec "
                         "text file or a named dataset's cache is already filtered")
    if is_name:
        dataset = read_sasrec_text(fetch_dataset(path_or_name, cache_dir, url=mirror))
        return drop_short_users(dataset, min_user_interactions)
    path = Path(path_or_name)
    if not path.exists():
        raise ValueError(
            f"{str(path_or_name)!r}: the path does not exist and it is not a known dataset name "
            f"(known: {', '.join(sorted(DATASETS))})"
        )
    if not path.is_file():
        raise ValueError(
            f"{path}: is a directory; pass a SASRec 'user item' text file, ratings.dat, "
            "ml-1m.zip or an interaction log (.csv, .tsv, .parquet)"
        )
    _refuse_compressed(path)
    if is_log:
        return load_interactions(path, columns=columns,
                                 min_user_interactions=min_user_interactions,
                                 **({} if min_item_interactions is None else
                                    {"min_item_interactions": min_item_interactions}))
    if _is_movielens_raw(path):
        return load_movielens_raw(path, min_user_interactions=min_user_interactions,
                                  **({} if min_item_interactions is None else
                                     {"min_item_ratings": min_item_interactions}))
    if min_user_interactions > 1:
        raise ValueError(
            f"{path}: min_user_interactions (--min-user-interactions) applies to raw logs; a "
            "SASRec text file is already preprocessed (filter it before writing it, or load the "
            "raw log)"
        )
    return read_sasrec_text(path)


def _refuse_compressed(path: Path) -> None:
    """``DataFormatError`` for a compressed file or archive that no reader here takes as it is
    (by its leading bytes): a ``.csv.gz``/``.tsv.gz`` log and a ``.zip`` are read, the rest
    would be parsed as text and fail with nonsense."""
    with open(path, "rb") as f:
        head = f.read(8)
    kind = next((name for magic, name in _COMPRESSED if head.startswith(magic)), None)
    name = path.name.lower()
    if kind is None or (kind == "gzip" and name.endswith(GZIP_SUFFIXES)) \
            or (kind == "zip" and (name.endswith(".zip") or name == "ratings.dat")) \
            or name.endswith(".parquet"):
        return  # (a zip named ratings.dat: load_movielens_raw reads zips by content)
    fix = ("decompress it (gunzip), or for a CSV or TSV log name it *.csv.gz or *.tsv.gz, which "
           "are read as they are" if kind == "gzip" else "decompress or unpack it first")
    raise DataFormatError(
        f"{path}: a {kind} file, not text; {fix}. Data files are {', '.join(SUFFIXES)} logs "
        f"(also {', '.join(GZIP_SUFFIXES)}), ratings.dat, ml-1m.zip or a SASRec 'user item' "
        "text file")


def _is_movielens_raw(path: Path) -> bool:
    if path.suffix.lower() == ".zip" or path.name == "ratings.dat":
        return True
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    first = next((line for line in head.splitlines() if line.strip()), b"")
    return b"::" in first

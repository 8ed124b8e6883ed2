"""Raw GroupLens MovieLens (``ratings.dat``, ``ml-1m.zip``, ``ml-20m.zip``) and its SASRec
preprocessing.

Two layouts:

* ML-1M (and ML-10M): ``ratings.dat`` lines ``UserID::MovieID::Rating::Timestamp`` and
  ``movies.dat`` lines ``MovieID::Title::Genres``, latin-1 (https://files.grouplens.org/
  datasets/movielens/ml-1m-README.txt);
* ML-20M (and later): ``ratings.csv`` with header ``userId,movieId,rating,timestamp`` and
  ``movies.csv`` with header ``movieId,title,genres`` (UTF-8 CSV, titles quoted when they hold a
  comma) (https://files.grouplens.org/datasets/movielens/ml-20m-README.html).

The preprocessing follows the SASRec paper (Kang & McAuley, "Self-Attentive Sequential
Recommendation", ICDM 2018, https://arxiv.org/abs/1808.09781) and its published ``ml-1m.txt``:
every rating is an interaction, items with fewer than 5 ratings are dropped, each user's items
are ordered by time. The dataset keeps the raw movie ids and, from the movies file, the titles
(``SequenceDataset.item_ids``).
"""

from __future__ import annotations

import csv
import io
import os
import re
import zipfile
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from data._parse import parse_int_table, strip_utf8_bom
from data._preprocess import build_sequences, check_min_counts
from data.errors import DataFormatError
from data.interactions import preprocess_interactions, read_delimited
from data.item_ids import ItemIds
from data.sequences import SequenceDataset

_INT_RE = re.compile(r"[+-]?[0-9]+")
_FIELDS = ("UserID", "MovieID", "Rating", "Timestamp")
CSV_COLUMNS = ("userId", "movieId", "timestamp")  # of ML-20M's ratings.csv
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError)


def read_ratings(path: str | os.PathLike[str]) -> np.ndarray:
    """Read MovieLens ratings from ``ratings.dat`` or from a zip that contains it.

    Args:
        path: a ``ratings.dat`` file (latin-1 or utf-8; only digits and ``::`` are expected), or
            a zip archive with a member whose name ends in ``ratings.dat`` (``ml-1m/ratings.dat``
            in GroupLens' ``ml-1m.zip``).

    Returns:
        int64 array of shape ``(N, 3)``: columns user id, movie id, timestamp, in file order.
        The rating value is not kept.

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        DataFormatError: for a corrupt zip, a zip without ``ratings.dat``, an empty file, or a
            line that is not four ``::``-separated integers (message ``file:line_no: ...``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected ratings.dat or ml-1m.zip)")
    if zipfile.is_zipfile(path) or path.suffix.lower() == ".zip":
        raw, where = _read_zip_member(path)
    else:
        raw, where = path.read_bytes(), str(path)
    raw = strip_utf8_bom(raw)
    table = parse_int_table(raw, 4, sep=b"::")
    if table is None:
        table = _parse_slow(raw, where)
    if table.shape[0] == 0:
        raise DataFormatError(
            f"{where}:1: file is empty; expected lines UserID::MovieID::Rating::Timestamp"
        )
    bad = np.flatnonzero((table[:, :2] <= 0).any(axis=1))
    if bad.size:
        row = int(bad[0])
        raise DataFormatError(
            f"{where}:{row + 1}: UserID and MovieID must be positive, got "
            f"{'::'.join(map(str, table[row].tolist()))}"
        )
    return np.ascontiguousarray(table[:, [0, 1, 3]])


def preprocess_ratings(
    ratings: Any, *, min_item_ratings: int = 5, min_user_interactions: int = 1, source: str = ""
) -> SequenceDataset:
    """Turn raw ratings into SASRec sequences, exactly as the SASRec ``ml-1m.txt`` was made.

    Steps, in order:

    1. Drop every rating of an item with fewer than ``min_item_ratings`` ratings, counted over
       all ratings in one pass (as in the SASRec paper; counts are not recomputed afterwards).
       Then, only if ``min_user_interactions`` > 1, drop users with fewer remaining ratings
       (one pass; the SASRec data filters no users, hence the default 1).
    2. Every remaining rating is an interaction; the rating value is ignored.
    3. Sort each user's interactions by timestamp with a stable sort: equal timestamps keep
       their input (file) order.
    4. Renumber users ``1..U`` in ascending original user id; users left without interactions
       disappear.
    5. Renumber items ``1..I`` in order of first appearance when iterating the new users in
       order and each user's items in time order.

    Args:
        ratings: ``(N, 3)`` integers ``(user, movie, timestamp)`` in file order: the array from
            ``read_ratings`` or any sequence of 3-tuples.
        min_item_ratings: items with fewer ratings are removed; 0 or 1 keeps every item.
        min_user_interactions: users with fewer ratings left are removed; 0 or 1 (default)
            keeps every user. Users with fewer than 3 interactions only train (the split).
        source: recorded in ``SequenceDataset.source``.

    Returns:
        The dataset with ``num_users = U``, ``num_items = I``, ``item_ids`` holding the raw
        movie ids (``"1193"``), without titles (``load_movielens_raw`` adds them), and
        ``user_ids`` the raw user ids.

    Raises:
        ValueError: if ``ratings`` is not ``(N, 3)``, a threshold is negative, or no interaction
            is left.
    """
    check_min_counts(min_item_ratings, min_user_interactions, "min_item_ratings")
    table = np.asarray(ratings, dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 3:
        raise ValueError(
            f"ratings must have shape (N, 3) as (user, movie, timestamp), got {table.shape}"
        )
    raw_users, user_rank = np.unique(table[:, 0], return_inverse=True)
    movies, movie_code = np.unique(table[:, 1], return_inverse=True)
    sequences, num_users, item_order, user_order = build_sequences(
        user_rank.reshape(-1),
        movie_code.reshape(-1),
        table[:, 2],
        min_item=min_item_ratings,
        min_user=min_user_interactions,
        source=source,
        item_noun="ratings",
        item_param="min_item_ratings",
    )
    return SequenceDataset(
        sequences=sequences,
        num_users=num_users,
        num_items=len(item_order),
        source=source,
        item_ids=ItemIds(tuple(str(m) for m in movies[item_order].tolist())),
        user_ids=tuple(str(u) for u in raw_users[user_order].tolist()),
    )


def load_movielens_raw(path: str | os.PathLike[str], **kwargs: Any) -> SequenceDataset:
    """Read and preprocess raw MovieLens ratings, with titles where the movies file is there.

    * ``ratings.dat`` or a zip with a ``*ratings.dat`` member (``ml-1m.zip``): ``read_ratings``
      then ``preprocess_ratings``; titles from ``movies.dat`` in the zip or beside the file.
    * a zip with a ``*ratings.csv`` member and no ``ratings.dat`` (``ml-20m.zip``): columns
      ``userId,movieId,timestamp`` read as an interaction log (``data.interactions``) and
      preprocessed with the same rules (integer ids: same numbering); titles from
      ``movies.csv``.

    Args:
        path: ``ratings.dat``, ``ml-1m.zip`` or ``ml-20m.zip``.
        **kwargs: passed to ``preprocess_ratings`` (``min_item_ratings``,
            ``min_user_interactions``, ``source``); ``source`` defaults to ``str(path)``.

    Returns:
        The preprocessed dataset; ``item_ids`` holds the raw movie ids and the titles (``""``
        for a movie the movies file lacks; ``titles`` None without a movies file).

    Raises:
        FileNotFoundError, DataFormatError, ValueError: see ``read_ratings`` and
            ``preprocess_ratings``; a malformed movies file is a ``DataFormatError`` too.
    """
    kwargs.setdefault("source", str(path))
    path = Path(path)
    if path.is_file() and zipfile.is_zipfile(path):
        csv_member = _csv_ratings_member(path)
        if csv_member is not None:
            return _load_csv_zip(path, csv_member, **kwargs)
    dataset = preprocess_ratings(read_ratings(path), **kwargs)
    titles = _dat_titles(path)
    if titles is None:
        return dataset
    raw = dataset.item_ids.raw
    return replace(dataset, item_ids=ItemIds(raw, tuple(titles.get(r, "") for r in raw)))


def _shortest_member(names: list[str], suffix: str) -> str | None:
    matches = [n for n in names if n.endswith(suffix)]
    return min(matches, key=len) if matches else None  # ml-1m/x before nested copies


def _csv_ratings_member(path: Path) -> str | None:
    """The ``*ratings.csv`` member of a zip without ``*ratings.dat``, else None."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except _ZIP_ERRORS as e:
        raise DataFormatError(
            f"{path}: corrupt or truncated zip archive ({e}); delete it and download it again"
        ) from e
    if _shortest_member(names, "ratings.dat") is not None:
        return None
    return _shortest_member(names, "ratings.csv")


def _load_csv_zip(path: Path, member: str, *, min_item_ratings: int = 5,
                  min_user_interactions: int = 1, source: str = "") -> SequenceDataset:
    """ML-20M layout: ``ratings.csv`` (and ``movies.csv``) inside ``path``."""
    check_min_counts(min_item_ratings, min_user_interactions, "min_item_ratings")
    try:
        with zipfile.ZipFile(path) as archive:
            interactions = read_delimited(lambda: archive.open(member), f"{path}:{member}", ",",
                                          CSV_COLUMNS)
            movies = _shortest_member(archive.namelist(), "movies.csv")
            titles = None
            if movies is not None:
                titles = _csv_titles(archive.read(movies), f"{path}:{movies}")
    except _ZIP_ERRORS as e:
        raise DataFormatError(
            f"{path}: corrupt or truncated zip archive ({e}); delete it and download it again"
        ) from e
    dataset = preprocess_interactions(interactions, min_item_interactions=min_item_ratings,
                                      min_user_interactions=min_user_interactions, titles=titles)
    return replace(dataset, source=source)


def _dat_titles(path: Path) -> dict[str, str] | None:
    """Titles from ``movies.dat`` in the zip ``path`` or beside the file ``path``, else None."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                member = _shortest_member(archive.namelist(), "movies.dat")
                if member is None:
                    return None
                return _dat_titles_from(archive.read(member), f"{path}:{member}")
        except _ZIP_ERRORS as e:
            raise DataFormatError(
                f"{path}: corrupt or truncated zip archive ({e}); delete it and download it "
                "again"
            ) from e
    beside = path.with_name("movies.dat")
    return _dat_titles_from(beside.read_bytes(), str(beside)) if beside.is_file() else None


def _dat_titles_from(raw: bytes, where: str) -> dict[str, str]:
    """``MovieID::Title::Genres`` lines (latin-1) -> {raw movie id: title}."""
    titles: dict[str, str] = {}
    text = strip_utf8_bom(raw).decode("latin-1")
    for line_no, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("::")
        if len(fields) < 3 or not _INT_RE.fullmatch(fields[0].strip()):
            raise DataFormatError(
                f"{where}:{line_no}: expected MovieID::Title::Genres, got {line!r}"
            )
        titles[str(int(fields[0]))] = "::".join(fields[1:-1])
    return titles


def _csv_titles(raw: bytes, where: str) -> dict[str, str]:
    """``movies.csv`` (header ``movieId,title,genres``) -> {movieId: title}."""
    try:
        text = strip_utf8_bom(raw).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{where}: not UTF-8 text ({e})") from e
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [h.strip() for h in next(reader, [])]
        if "movieId" not in header or "title" not in header:
            raise DataFormatError(f"{where}:1: expected the header movieId,title,genres, got "
                                  f"{','.join(header) or 'an empty file'}")
        key, title = header.index("movieId"), header.index("title")
        titles: dict[str, str] = {}
        for row in reader:
            if not row:
                continue
            if len(row) <= max(key, title):
                raise DataFormatError(f"{where}:{reader.line_num}: expected movieId,title,genres, "
                                      f"got {row!r}")
            titles[row[key].strip()] = row[title]
    except csv.Error as e:
        raise DataFormatError(f"{where}:{reader.line_num}: malformed CSV ({e})") from e
    return titles


def _read_zip_member(path: Path) -> tuple[bytes, str]:
    """Bytes of the ``*ratings.dat`` member and a ``zip:member`` name for messages."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("ratings.dat")]
            if not names:
                shown = ", ".join(archive.namelist()[:10]) or "nothing"
                raise DataFormatError(
                    f"{path}: zip archive has no member ending in 'ratings.dat' or "
                    f"'ratings.csv' (it holds {shown}); pass GroupLens' ml-1m.zip, ml-20m.zip "
                    "or the extracted ratings.dat"
                )
            member = min(names, key=len)  # ml-1m/ratings.dat before any nested copies
            return archive.read(member), f"{path}:{member}"
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise DataFormatError(
            f"{path}: corrupt or truncated zip archive ({e}); delete it and download it again"
        ) from e


def _parse_slow(raw: bytes, where: str) -> np.ndarray:
    """Line-by-line parser; raises DataFormatError at the first bad line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    rows: list[tuple[int, ...]] = []
    for line_no, line in enumerate(lines, start=1):
        fields = [f.strip() for f in line.rstrip("\r").split("::")]
        if len(fields) != 4:
            raise DataFormatError(
                f"{where}:{line_no}: expected 4 '::'-separated fields "
                f"UserID::MovieID::Rating::Timestamp, got {len(fields)}: {line!r}"
            )
        for name, field in zip(_FIELDS, fields, strict=True):
            if not _INT_RE.fullmatch(field):
                raise DataFormatError(
                    f"{where}:{line_no}: {name} {field!r} is not an integer in {line!r}"
                )
        values = tuple(int(f) for f in fields)
        if any(abs(v) >= 2**63 for v in values):
            raise DataFormatError(f"{where}:{line_no}: number too large in {line!r}")
        rows.append(values)
    return np.array(rows, dtype=np.int64).reshape(-1, 4)

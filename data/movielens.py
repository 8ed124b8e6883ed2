"""Raw GroupLens MovieLens-1M (``ratings.dat`` or ``ml-1m.zip``) and its SASRec preprocessing.

``ratings.dat`` lines are ``UserID::MovieID::Rating::Timestamp`` (https://files.grouplens.org/
datasets/movielens/ml-1m-README.txt). The preprocessing follows the SASRec paper (Kang & McAuley,
"Self-Attentive Sequential Recommendation", ICDM 2018, https://arxiv.org/abs/1808.09781) and
its published ``ml-1m.txt``: every rating is an interaction, items with fewer than 5 ratings are
dropped, each user's items are ordered by time.
"""

from __future__ import annotations

import os
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from data._parse import parse_int_table, strip_utf8_bom
from data.errors import DataFormatError
from data.sequences import SequenceDataset

_INT_RE = re.compile(r"[+-]?[0-9]+")
_FIELDS = ("UserID", "MovieID", "Rating", "Timestamp")


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
    ratings: Any, *, min_item_ratings: int = 5, source: str = ""
) -> SequenceDataset:
    """Turn raw ratings into SASRec sequences, exactly as the SASRec ``ml-1m.txt`` was made.

    Steps, in order:

    1. Drop every rating of an item with fewer than ``min_item_ratings`` ratings, counted over
       all ratings in one pass (as in the SASRec paper; users are not filtered and counts are
       not recomputed afterwards).
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
        source: recorded in ``SequenceDataset.source``.

    Returns:
        The dataset with ``num_users = U`` and ``num_items = I``.

    Raises:
        ValueError: if ``ratings`` is not ``(N, 3)``, ``min_item_ratings`` is negative, or no
            interaction is left.
    """
    if min_item_ratings < 0:
        raise ValueError(f"min_item_ratings must be >= 0, got {min_item_ratings}")
    table = np.asarray(ratings, dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 3:
        raise ValueError(
            f"ratings must have shape (N, 3) as (user, movie, timestamp), got {table.shape}"
        )
    movies = table[:, 1]
    _, inverse, counts = np.unique(movies, return_inverse=True, return_counts=True)
    table = table[counts[inverse] >= min_item_ratings]
    if table.shape[0] == 0:
        raise ValueError(
            f"{source or 'ratings'}: no interactions left after dropping items with fewer than "
            f"{min_item_ratings} ratings; lower min_item_ratings"
        )
    # Stable sort by timestamp, then stable sort by user: users ascending, each user's items in
    # time order, ties in file order.
    table = table[np.argsort(table[:, 2], kind="stable")]
    table = table[np.argsort(table[:, 0], kind="stable")]
    _, users = np.unique(table[:, 0], return_inverse=True)
    users = users.reshape(-1) + 1
    old_items, first_index, item_inverse = np.unique(
        table[:, 1], return_index=True, return_inverse=True
    )
    new_id = np.empty(len(old_items), dtype=np.int64)
    new_id[np.argsort(first_index, kind="stable")] = np.arange(1, len(old_items) + 1)
    items = new_id[item_inverse.reshape(-1)]

    bounds = (np.flatnonzero(np.diff(users)) + 1).tolist()
    edges = [0, *bounds, len(users)]
    item_list = items.tolist()
    heads = users[edges[:-1]].tolist()
    sequences = {u: item_list[a:b] for u, a, b in zip(heads, edges[:-1], edges[1:], strict=True)}
    return SequenceDataset(
        sequences=sequences,
        num_users=int(users[-1]),
        num_items=len(old_items),
        source=source,
    )


def load_movielens_raw(path: str | os.PathLike[str], **kwargs: Any) -> SequenceDataset:
    """``read_ratings(path)`` then ``preprocess_ratings``.

    Args:
        path: ``ratings.dat`` or ``ml-1m.zip``.
        **kwargs: passed to ``preprocess_ratings`` (``min_item_ratings``, ``source``);
            ``source`` defaults to ``str(path)``.

    Returns:
        The preprocessed dataset.

    Raises:
        FileNotFoundError, DataFormatError, ValueError: see ``read_ratings`` and
            ``preprocess_ratings``.
    """
    kwargs.setdefault("source", str(path))
    return preprocess_ratings(read_ratings(path), **kwargs)


def _read_zip_member(path: Path) -> tuple[bytes, str]:
    """Bytes of the ``*ratings.dat`` member and a ``zip:member`` name for messages."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("ratings.dat")]
            if not names:
                shown = ", ".join(archive.namelist()[:10]) or "nothing"
                raise DataFormatError(
                    f"{path}: zip archive has no member ending in 'ratings.dat' (it holds "
                    f"{shown}); pass GroupLens' ml-1m.zip or the extracted ratings.dat"
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

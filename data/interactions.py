"""Interaction logs (user, item, timestamp) from CSV, TSV or Parquet, with string or integer ids.

A shop's log, one interaction per row::

    user_id,sku,ts
    u17,"SKU,042",2024-03-01T10:15:00
    u17,SKU-7,2024-03-01T10:16:30

``load_interactions`` reads it and preprocesses it with the rules of the SASRec ML-1M data
(``movielens.preprocess_ratings``): items with fewer than ``min_item_interactions`` rows are
dropped, every row is an interaction, each user's items are sorted by timestamp with a stable
sort (ties keep file order) and users and items are renumbered densely from 1. The raw item ids
are kept in ``SequenceDataset.item_ids``.

Columns (``columns``): the user, item and timestamp columns, as header names or 0-based
positions: ``"user_id,sku,ts"``, ``"0,1,2"`` or a sequence such as ``("user_id", "sku", 2)``.
Default: the header names ``user``, ``item``, ``timestamp`` if the first row holds all three,
else positions 0, 1, 2. With positions, the first row is a header when its timestamp field is not
a timestamp. Other columns are ignored.

Values:

* ids: any non-empty text; CSV/TSV fields lose surrounding whitespace, Parquet values are used as
  stored (integer columns become their decimal text). Raw ids are strings: ``"007"`` and ``"7"``
  are two items.
* timestamps: integers, floats (finite), or ISO-8601 date/datetime strings
  (``datetime.fromisoformat``, plus a trailing ``Z``); a date is its midnight, a datetime without
  an offset is taken as UTC. A value that parses as an integer is a number, so ``20240301`` is a
  number, not a date. One column holds numbers or dates, not both. Parquet timestamp and date
  columns are dates.

File formats, by suffix: ``.csv`` (comma), ``.tsv`` (tab): UTF-8 (a byte-order mark is fine),
parsed by the ``csv`` module (quotes as in RFC 4180: ``"a,b"`` is one field; a quote that is
never closed is an error); blank lines are skipped; ``.csv.gz`` and ``.tsv.gz`` are the same,
gzip-compressed (read as a stream, never unpacked to disk). ``.parquet``: read with pyarrow
(``pip install sasrec-qat[parquet]``; its own compression is handled by pyarrow).

Errors are ``DataFormatError`` whose message starts with ``path:line:`` (CSV/TSV; line 1 is the
first line of the file) or ``path: row N:`` (Parquet; rows counted from 0 as in
``pandas.DataFrame.iloc``), or ``path:`` for whole-file problems.
"""

from __future__ import annotations

import codecs
import csv
import gc
import gzip
import io
import math
import os
import re
import zlib
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import chain, count, islice
from operator import itemgetter
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Sequence

import numpy as np

from data._preprocess import build_sequences, check_min_counts
from data.errors import DataFormatError
from data.item_ids import ItemIds
from data.sequences import SequenceDataset

DEFAULT_COLUMNS = ("user", "item", "timestamp")
SUFFIXES = {".csv": ",", ".tsv": "\t", ".parquet": None}
GZIP_SUFFIXES = (".csv.gz", ".tsv.gz")  # gzip-compressed delimited logs
_ROLES = ("user", "item", "timestamp")
_INT_RE = re.compile(r"[+-]?[0-9]+")
# Naive ISO dates and datetimes that numpy's datetime64 parser reads exactly as fromisoformat.
_PLAIN_ISO_RE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)?")
_CHUNK_ROWS = 1 << 14  # rows per chunk: about 5 MB of row lists
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
_PARQUET_HINT = "pip install sasrec-qat[parquet]"

Columns = str | Sequence[str | int] | None


@dataclass(frozen=True)
class Interactions:
    """A raw log as integer codes, in file order.

    Attributes:
        users: distinct raw user ids in order of first appearance; ``user_codes`` index it.
        user_codes: int64, one per row.
        items: distinct raw item ids in order of first appearance; ``item_codes`` index it.
        item_codes: int64, one per row.
        timestamps: one per row: int64 (integer timestamps; ISO dates as microseconds since
            1970-01-01 UTC) or float64 (when any timestamp is a float).
        source: the file, for messages.
    """

    users: list[str]
    user_codes: np.ndarray
    items: list[str]
    item_codes: np.ndarray
    timestamps: np.ndarray
    source: str

    @property
    def num_rows(self) -> int:
        return int(self.item_codes.size)


def load_interactions(
    path: str | os.PathLike[str],
    *,
    columns: Columns = None,
    min_item_interactions: int = 5,
    min_user_interactions: int = 1,
) -> SequenceDataset:
    """``read_interactions(path, columns)`` then ``preprocess_interactions``.

    Args:
        path: a ``.csv``, ``.tsv`` or ``.parquet`` file.
        columns: user, item and timestamp columns (module docstring); default ``user``,
            ``item``, ``timestamp`` by header name if present, else positions 0, 1, 2.
        min_item_interactions: items with fewer rows are dropped (default 5, as ML-1M).
        min_user_interactions: users with fewer rows (after the item filter) are dropped;
            default 1: every user is kept. A user with 1 or 2 interactions only trains (the
            leave-one-out split evaluates users with at least 3).

    Returns:
        The dataset; ``item_ids`` holds the raw item ids (no titles), ``source`` the path.

    Raises:
        FileNotFoundError, ValueError, DataFormatError: see ``read_interactions`` and
            ``preprocess_interactions``.
    """
    interactions = read_interactions(path, columns=columns)
    return preprocess_interactions(
        interactions,
        min_item_interactions=min_item_interactions,
        min_user_interactions=min_user_interactions,
    )


def read_interactions(path: str | os.PathLike[str], *, columns: Columns = None) -> Interactions:
    """Read the user, item and timestamp columns of a CSV, TSV or Parquet file.

    Args:
        path: the file; its suffix (``.csv``, ``.tsv``, ``.parquet``, any case) picks the format.
        columns: see the module docstring.

    Returns:
        The rows as codes, in file order.

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        ValueError: an unknown suffix, a bad ``columns`` argument, or a Parquet file without
            pyarrow installed (the message says ``pip install sasrec-qat[parquet]``).
        DataFormatError: ``path:line: ...`` (``path: row N: ...`` for Parquet) for an empty file,
            missing columns (named, with the header), duplicate header names, a row with too few
            fields, an empty id, an unparseable or non-finite timestamp, numbers and dates mixed
            in the timestamp column, text that is not UTF-8, or broken CSV quoting.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected an interaction log)")
    suffix = log_format(path)
    if suffix is None:
        raise ValueError(f"{path}: unknown interaction log suffix {path.suffix!r}; use "
                         f"{', '.join([*SUFFIXES, *GZIP_SUFFIXES])}")
    spec = parse_columns(columns)
    if suffix == ".parquet":
        return _read_parquet(path, spec)
    if path.name.lower().endswith(".gz"):
        return _read_gzip(path, SUFFIXES[suffix], spec)
    return read_delimited(lambda: open(path, "rb"), str(path), SUFFIXES[suffix], spec)


def log_format(path: str | os.PathLike[str]) -> str | None:
    """The format of an interaction log by its name: ``".csv"``, ``".tsv"`` or ``".parquet"``
    (``x.csv.gz`` is ``".csv"``, gzip-compressed), or None for any other name.

    >>> log_format("events.CSV"), log_format("events.tsv.gz"), log_format("ratings.dat")
    ('.csv', '.tsv', None)
    """
    name = Path(path).name.lower()
    for compressed in GZIP_SUFFIXES:
        if name.endswith(compressed) and len(name) > len(compressed):
            return compressed[:-len(".gz")]
    suffix = Path(name).suffix
    return suffix if suffix in SUFFIXES else None


def _read_gzip(path: Path, delimiter: str, spec: tuple[str | int, ...] | None) -> Interactions:
    """``read_delimited`` of a gzip-compressed file, streamed; a file that is not gzip or whose
    stream is damaged or cut short is a ``DataFormatError`` naming the file."""
    try:
        return read_delimited(lambda: gzip.open(path, "rb"), str(path), delimiter, spec)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        what = ("the compressed data ends early (a truncated download or copy?)"
                if isinstance(err, EOFError) else f"not a valid gzip file ({err})")
        raise DataFormatError(f"{path}: {what}; a .gz log must be one whole gzip stream "
                              "(check it with gzip -t)") from None


def preprocess_interactions(
    interactions: Interactions,
    *,
    min_item_interactions: int = 5,
    min_user_interactions: int = 1,
    titles: dict[str, str] | None = None,
) -> SequenceDataset:
    """Turn a raw log into SASRec sequences with the ML-1M rules.

    Steps: drop items with fewer than ``min_item_interactions`` rows (counted over all rows);
    drop users with fewer than ``min_user_interactions`` remaining rows (one pass); sort each
    user's items by timestamp, stable (ties keep file order); renumber users ``1..U`` in
    ascending raw id (as integers when every user id is an integer, so ML-1M read from a CSV
    gets ML-1M's numbering; else by Unicode code points); renumber items ``1..I`` in order of
    first appearance over the new users in order.

    Args:
        interactions: from ``read_interactions``.
        min_item_interactions: default 5; 0 or 1 keeps every item.
        min_user_interactions: default 1 (no user filter).
        titles: raw item id -> title; items without one get ``""``. None: no titles.

    Returns:
        The dataset with ``item_ids`` (raw ids of items ``1..I``, and titles if given) and
        ``user_ids`` (raw ids of users ``1..U``).

    Raises:
        ValueError: a negative threshold, or no interaction left.
    """
    check_min_counts(min_item_interactions, min_user_interactions, "min_item_interactions")
    users = interactions.users
    if all(map(_INT_RE.fullmatch, users)):
        numbers = list(map(int, users))
        if len(set(numbers)) == len(numbers):
            order = sorted(range(len(users)), key=numbers.__getitem__)
        else:  # "7" and "007": numeric order, then text
            order = sorted(range(len(users)), key=lambda k: (numbers[k], users[k]))
    else:
        order = sorted(range(len(users)), key=users.__getitem__)
    rank = np.empty(len(users), dtype=np.int64)
    rank[np.asarray(order, dtype=np.int64)] = np.arange(len(users), dtype=np.int64)
    sequences, num_users, item_order, user_order = build_sequences(
        rank[interactions.user_codes],
        interactions.item_codes,
        interactions.timestamps,
        min_item=min_item_interactions,
        min_user=min_user_interactions,
        source=interactions.source,
    )
    raw = tuple(interactions.items[c] for c in item_order.tolist())
    item_titles = None if titles is None else tuple(titles.get(r, "") for r in raw)
    return SequenceDataset(
        sequences=sequences,
        num_users=num_users,
        num_items=len(raw),
        source=interactions.source,
        item_ids=ItemIds(raw, item_titles),
        user_ids=tuple(users[order[r]] for r in user_order.tolist()),
    )


# -- columns ---------------------------------------------------------------------------------
def parse_columns(columns: Columns) -> tuple[str | int, ...] | None:
    """``columns`` as a 3-tuple of names (str) and positions (int), or None for the default.

    Raises:
        ValueError: not three entries, an empty name, a negative position, or a repeat.
    """
    if columns is None:
        return None
    entries = columns.split(",") if isinstance(columns, str) else list(columns)
    spec: list[str | int] = []
    for entry in entries:
        if isinstance(entry, bool) or not isinstance(entry, (str, int)):
            raise ValueError(f"columns: {entry!r} is neither a column name nor a position")
        if isinstance(entry, str):
            entry = entry.strip()
            if not entry:
                raise ValueError(f"columns {columns!r}: empty column name")
            if entry.isdigit():
                entry = int(entry)
        if isinstance(entry, int) and entry < 0:
            raise ValueError(f"columns {columns!r}: positions start at 0, got {entry}")
        spec.append(entry)
    if len(spec) != 3:
        raise ValueError(f"columns {columns!r}: expected 3 columns user,item,timestamp (names "
                         f"or 0-based positions), got {len(spec)}")
    if len(set(spec)) != 3:
        raise ValueError(f"columns {columns!r}: a column is named twice")
    return tuple(spec)


def _resolve(spec: tuple[str | int, ...] | None, header: list[str], where: str, *,
             has_header: bool | None = None) -> tuple[tuple[int, int, int], bool]:
    """``(positions, first_row_is_header)`` from the spec and the first row.

    ``where`` is the message prefix for the first row (``path:line`` or ``path``);
    ``has_header`` None: with positions, the first row is a header if its timestamp field is not
    a timestamp (always, with names).
    """
    names = [h.strip() for h in header]
    default = spec is None
    if spec is None:
        if set(DEFAULT_COLUMNS) <= set(names):
            spec = DEFAULT_COLUMNS
        else:
            spec = (0, 1, 2)
            if len(names) > 3 and (has_header or has_header is None
                                   and not _is_timestamp(names[2])):
                # A header that does not name them and more columns than three: positions
                # 0, 1, 2 may well be user, item, rating (MovieLens' ratings.csv).
                raise DataFormatError(
                    f"{where}: the header {','.join(names)} has no columns named "
                    f"{', '.join(DEFAULT_COLUMNS)} and more than 3 columns; say which columns "
                    "hold user, item and timestamp with --columns (columns= in Python): header "
                    "names or 0-based positions, e.g. --columns userId,movieId,timestamp"
                )
    if all(isinstance(s, int) for s in spec):
        positions = tuple(int(s) for s in spec)
        if default and len(names) <= max(positions) and set(DEFAULT_COLUMNS) & set(names):
            missing = [n for n in DEFAULT_COLUMNS if n not in names]
            raise DataFormatError(
                f"{where}: missing column(s) {', '.join(map(repr, missing))}; the header is "
                f"{','.join(names)} (pass --columns, columns= in Python, with header names or "
                "0-based positions)"
            )
        if len(names) <= max(positions):
            raise DataFormatError(
                f"{where}: expected at least {max(positions) + 1} fields for columns "
                f"{','.join(map(str, positions))}, got {len(names)}: {header!r}"
            )
        is_header = (not _is_timestamp(names[positions[2]]) if has_header is None
                     else has_header)
        if default and is_header:
            # a header naming some of user, item, timestamp elsewhere than where positions
            # 0, 1, 2 read them (e.g. item,user,ts): reading by position would swap them
            misplaced = [(role, names.index(role)) for role in DEFAULT_COLUMNS
                         if role in names and names.index(role) != positions[_ROLES.index(role)]]
            if misplaced:
                role, at = misplaced[0]
                raise DataFormatError(
                    f"{where}: the header {','.join(names)} names {role!r} at position {at}, "
                    f"but without all of {', '.join(DEFAULT_COLUMNS)} named the columns are "
                    "read by position (user 0, item 1, timestamp 2); say which columns hold "
                    "user, item and timestamp with --columns (columns= in Python), e.g. "
                    f"--columns {_suggest(names)}"
                )
    else:
        is_header = True
    if is_header:
        seen: set[str] = set()
        dups = [n for n in names if n and (n in seen or seen.add(n))]
        if dups:
            raise DataFormatError(
                f"{where}: duplicate column name(s) {', '.join(map(repr, dict.fromkeys(dups)))} "
                f"in the header {','.join(names)}; give every column its own name"
            )
        missing = [s for s in spec if isinstance(s, str) and s not in names]
        if missing:
            raise DataFormatError(
                f"{where}: missing column(s) {', '.join(map(repr, missing))}; the header is "
                f"{','.join(names)} (pass --columns, columns= in Python, with header names or "
                "0-based positions)"
            )
        too_far = [s for s in spec if isinstance(s, int) and s >= len(names)]
        if too_far:
            raise DataFormatError(f"{where}: column position {too_far[0]} is past the "
                                  f"{len(names)} columns of the header {','.join(names)}")
        positions = tuple(s if isinstance(s, int) else names.index(s) for s in spec)
    if len(set(positions)) != 3:
        raise ValueError(f"columns {spec!r} name the same column twice")
    return positions, is_header


def _suggest(names: list[str]) -> str:
    """A ``columns=`` value for a header naming user and item (and some time column)."""
    rest = [n for n in names if n not in ("user", "item")]
    return ",".join(["user" if "user" in names else names[0],
                     "item" if "item" in names else names[1], rest[0] if rest else "timestamp"])


# -- timestamps ------------------------------------------------------------------------------
def parse_timestamp(text: str) -> tuple[str, int | float]:
    """``(kind, value)``: ``("number", int | float)`` or ``("date", microseconds since 1970 UTC)``.

    Raises:
        ValueError: for anything else, including a non-finite float; the message says why.
    """
    try:
        return "number", int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(f"timestamp {text!r} is not finite")
        return "number", value
    try:
        return "date", _iso_microseconds(text)
    except ValueError:
        raise ValueError(f"timestamp {text!r} is not an integer, a float or an ISO-8601 "
                         "date/datetime (e.g. 2024-03-01 or 2024-03-01T10:15:00+01:00)") from None


def _iso_microseconds(text: str) -> int:
    text = text.strip()
    if text[-1:] in ("Z", "z"):  # Python 3.10's fromisoformat lacks the Z suffix
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - _EPOCH) // _MICROSECOND


def _is_timestamp(text: str) -> bool:
    try:
        parse_timestamp(text)
    except (ValueError, OverflowError):
        return False
    return True


# -- CSV / TSV -------------------------------------------------------------------------------
class _Anomaly(Exception):
    """The fast path met something it does not handle; the checked path names it."""


class _Codes:
    """Dense codes of strings in order of first appearance (the dict lookups run in C: a
    missing key calls the counter)."""

    def __init__(self) -> None:
        self.index: defaultdict[str, int] = defaultdict(count().__next__)

    def add(self, keys: list[str]) -> np.ndarray:
        return np.fromiter(map(self.index.__getitem__, keys), dtype=np.int64, count=len(keys))

    def stripped(self, codes: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Keys without surrounding whitespace and ``codes`` renumbered for them (``" a"`` and
        ``"a"`` become one key). Raises ``_Anomaly`` for an empty key."""
        keys = list(self.index)
        clean = [k.strip() for k in keys]
        if "" in clean:
            raise _Anomaly
        if clean == keys:
            return keys, codes
        merged: dict[str, int] = {}
        remap = np.fromiter((merged.setdefault(k, len(merged)) for k in clean), dtype=np.int64,
                            count=len(clean))
        return list(merged), remap[codes]


class _Builder:
    """Accumulates chunks of (user, item, timestamp) text columns as codes and numbers."""

    def __init__(self) -> None:
        self.users, self.items = _Codes(), _Codes()
        self.user_codes: list[np.ndarray] = []
        self.item_codes: list[np.ndarray] = []
        self.times: list[np.ndarray] = []
        self.kind: str | None = None

    def add(self, users: list[str], items: list[str], times: list[str]) -> None:
        """Raises ``_Anomaly`` on a timestamp the vector path cannot take."""
        kind, values = _vector_timestamps(times)
        if self.kind is not None and kind != self.kind:
            raise _Anomaly
        self.kind = kind
        self.user_codes.append(self.users.add(users))
        self.item_codes.append(self.items.add(items))
        self.times.append(values)

    def result(self, source: str) -> Interactions:
        """Raises ``_Anomaly`` on an empty id."""
        users, user_codes = self.users.stripped(np.concatenate(self.user_codes))
        items, item_codes = self.items.stripped(np.concatenate(self.item_codes))
        times = self.times
        if any(t.dtype == np.float64 for t in times):
            times = [t.astype(np.float64) for t in times]
        return Interactions(users, user_codes, items, item_codes, np.concatenate(times), source)


def _vector_timestamps(times: list[str]) -> tuple[str, np.ndarray]:
    try:
        ints = list(map(int, times))
    except ValueError:
        pass
    else:
        try:
            return "number", np.array(ints, dtype=np.int64)
        except OverflowError:
            raise _Anomaly from None
    try:
        floats = np.array(list(map(float, times)), dtype=np.float64)
    except ValueError:
        pass
    else:
        if not np.isfinite(floats).all():
            raise _Anomaly
        return "number", floats
    if all(map(_PLAIN_ISO_RE.fullmatch, times)):
        try:  # 4x faster than fromisoformat; an invalid date falls through to it
            return "date", np.array(times, dtype="datetime64[us]").astype(np.int64)
        except ValueError:
            pass
    try:
        return "date", np.fromiter(map(_iso_microseconds, times), dtype=np.int64,
                                   count=len(times))
    except (ValueError, IndexError, OverflowError):
        raise _Anomaly from None


def read_delimited(
    open_binary: Callable[[], IO[bytes]],
    where: str,
    delimiter: str,
    spec: tuple[str | int, ...] | None,
) -> Interactions:
    """Read delimited text from ``open_binary()`` (called once or twice; each call a fresh
    stream). ``where`` starts every message (``path`` or ``archive.zip:member``).

    A fast path converts whole chunks of rows with C-level loops; at the first thing it does not
    accept it gives up, and a checked pass reads the stream again row by row to name the first
    bad line.
    """
    # Every row is a new list: the cyclic garbage collector would run thousands of times over
    # the growing heap and take about half the time. Nothing parsed here forms cycles.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        try:
            return _parse_delimited(open_binary, where, delimiter, spec, checked=False)
        except _Anomaly:
            return _parse_delimited(open_binary, where, delimiter, spec, checked=True)
    finally:
        if was_enabled:
            gc.enable()


def _parse_delimited(open_binary: Callable[[], IO[bytes]], where: str, delimiter: str,
                     spec: tuple[str | int, ...] | None, *, checked: bool) -> Interactions:
    line = [0]  # the last physical line read, for messages
    with io.TextIOWrapper(open_binary(), encoding="utf-8-sig", newline="") as text:
        reader = csv.reader(text, delimiter=delimiter, strict=True)
        try:
            numbered = _numbered(reader, line)
            first = next(numbered, None)
            if first is None:
                raise DataFormatError(f"{where}:1: file is empty; expected rows of user, item, "
                                      "timestamp")
            first_line, header = first
            positions, is_header = _resolve(spec, header, f"{where}:{first_line}")
            builder = _Builder()
            if checked:
                _fill_checked(builder, numbered if is_header else chain([first], numbered),
                              positions, where)
            else:  # the rest straight from the reader: no per-row Python code
                _fill_fast(builder, reader if is_header else chain([header], reader), positions)
        except UnicodeDecodeError:
            if not checked:
                raise _Anomaly from None
            _raise_not_utf8(open_binary, where)
        except csv.Error as err:
            if not checked:
                raise _Anomaly from None
            raise DataFormatError(
                f"{where}:{line[0] + 1}: malformed CSV ({err}); check the quotes: a field that "
                'starts with " must end with " and a quote inside it is written ""'
            ) from None
    if not builder.user_codes:
        raise DataFormatError(f"{where}:{first_line}: the file has a header but no rows")
    return builder.result(where)  # the checked pass has seen every id: no _Anomaly here


def _numbered(reader: Iterator[list[str]], line: list[int]) -> Iterator[tuple[int, list[str]]]:
    """Non-blank rows with the number of the line each starts on; ``line[0]`` tracks the last
    line read (a quoted field may span lines)."""
    for row in reader:
        start, line[0] = line[0] + 1, reader.line_num
        if row and (len(row) > 1 or row[0].strip()):
            yield start, row


def _fill_fast(builder: _Builder, rows: Iterable[list[str]],
               positions: tuple[int, int, int]) -> None:
    pu, pi, pt = positions
    need = max(positions) + 1
    rows = iter(rows)
    while chunk := list(islice(rows, _CHUNK_ROWS)):
        if not all(chunk):  # blank lines
            chunk = [r for r in chunk if r]
            if not chunk:
                continue
        if min(map(len, chunk)) < need:
            raise _Anomaly  # too few fields, or a line of spaces (blank for the checked pass)
        builder.add(list(map(itemgetter(pu), chunk)), list(map(itemgetter(pi), chunk)),
                    list(map(itemgetter(pt), chunk)))


def _fill_checked(builder: _Builder, rows: Iterable[tuple[int, list[str]]],
                  positions: tuple[int, int, int], where: str) -> None:
    need = max(positions) + 1
    first_kind: tuple[str, int, str] | None = None

    def checked_rows() -> Iterator[list[str]]:
        nonlocal first_kind
        for line_no, row in rows:
            if len(row) < need:
                raise DataFormatError(
                    f"{where}:{line_no}: expected at least {need} fields (user, item, timestamp "
                    f"in columns {','.join(map(str, positions))}), got {len(row)}: {row!r}"
                )
            values = [row[p].strip() for p in positions]
            for role, value in zip(_ROLES[:2], values[:2], strict=True):
                if not value:
                    raise DataFormatError(f"{where}:{line_no}: empty {role} id in {row!r}")
            try:
                kind, value = parse_timestamp(values[2])
            except (ValueError, OverflowError) as err:
                raise DataFormatError(f"{where}:{line_no}: {err}") from None
            if isinstance(value, int) and abs(value) >= 2**63:
                raise DataFormatError(f"{where}:{line_no}: timestamp {values[2]!r} is too large")
            if first_kind is None:
                first_kind = (kind, line_no, values[2])
            elif kind != first_kind[0]:
                raise DataFormatError(
                    f"{where}:{line_no}: timestamp {values[2]!r} is a {kind} but line "
                    f"{first_kind[1]} has a {first_kind[0]} ({first_kind[2]!r}); one column "
                    "holds numbers or ISO-8601 dates, not both"
                )
            yield values

    _fill_fast(builder, checked_rows(), (0, 1, 2))


def _raise_not_utf8(open_binary: Callable[[], IO[bytes]], where: str) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = 1
    with open_binary() as raw:
        while block := raw.read(1 << 20):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as err:
                lines += block.count(b"\n", 0, max(err.start, 0))
                bad = block[err.start:err.start + 4]
                raise DataFormatError(
                    f"{where}:{lines}: not UTF-8 text (bytes {bad!r}); save the file as UTF-8"
                ) from None
            lines += block.count(b"\n")
    raise DataFormatError(f"{where}: not UTF-8 text; save the file as UTF-8")


# -- Parquet ---------------------------------------------------------------------------------
def _read_parquet(path: Path, spec: tuple[str | int, ...] | None) -> Interactions:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{path}: reading Parquet needs pyarrow: {_PARQUET_HINT}") from None
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise DataFormatError(f"{path}: not a readable Parquet file ({err})") from None
    names = list(schema.names)
    positions, _ = _resolve(spec, names, str(path), has_header=True)
    picked = [names[p] for p in positions]
    try:
        table = pq.read_table(path, columns=picked)
    except (pa.ArrowException, OSError) as err:
        raise DataFormatError(f"{path}: not a readable Parquet file ({err})") from None
    if table.num_rows == 0:
        raise DataFormatError(f"{path}: the file has no rows")
    users, user_codes = _parquet_ids(table.column(0), path, picked[0], "user")
    items, item_codes = _parquet_ids(table.column(1), path, picked[1], "item")
    times = _parquet_timestamps(table.column(2), path, picked[2])
    return Interactions(users, user_codes, items, item_codes, times, str(path))


def _first_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _parquet_ids(column, path: Path, name: str, role: str) -> tuple[list[str], np.ndarray]:
    import pyarrow as pa

    array = column.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    typ = array.type
    textual = pa.types.is_string(typ) or pa.types.is_large_string(typ) or (
        hasattr(pa.types, "is_string_view") and pa.types.is_string_view(typ))
    if not (textual or pa.types.is_integer(typ)):
        raise DataFormatError(f"{path}: {role} column {name!r} has type {typ}; ids must be "
                              "integers or strings")
    if array.null_count:
        row = _first_row(np.asarray(array.is_null()))
        raise DataFormatError(f"{path}: row {row}: empty {role} id (null) in column {name!r}")
    if textual and typ != pa.string():
        array = array.cast(pa.string())
    encoded = array.dictionary_encode()
    keys = [str(k) for k in encoded.dictionary.to_pylist()]
    codes = np.asarray(encoded.indices).astype(np.int64)
    blank = [k for k, key in enumerate(keys) if not key.strip()]
    if blank:
        row = _first_row(np.isin(codes, blank))
        raise DataFormatError(f"{path}: row {row}: empty {role} id in column {name!r}")
    return keys, codes


def _parquet_timestamps(column, path: Path, name: str) -> np.ndarray:
    import pyarrow as pa

    array = column.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    typ = array.type
    if array.null_count:
        row = _first_row(np.asarray(array.is_null()))
        raise DataFormatError(f"{path}: row {row}: missing timestamp (null) in column {name!r}")
    if pa.types.is_integer(typ):
        return np.asarray(array.cast(pa.int64()))
    if pa.types.is_floating(typ):
        values = np.asarray(array.cast(pa.float64()))
        bad = ~np.isfinite(values)
        if bad.any():
            row = _first_row(bad)
            raise DataFormatError(
                f"{path}: row {row}: timestamp {float(values[row])!r} is not finite")
        return values
    if pa.types.is_timestamp(typ) or pa.types.is_date(typ):
        # Timestamps are stored as UTC instants (naive ones taken as UTC); dates as midnight.
        if pa.types.is_date(typ):
            array = array.cast(pa.timestamp("s"))
        array = array.cast(pa.timestamp("us", tz=getattr(array.type, "tz", None)), safe=False)
        return np.asarray(array.cast(pa.int64()))
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        texts = [t.strip() for t in array.to_pylist()]
        try:
            kind, values = _vector_timestamps(texts)
        except _Anomaly:
            pass
        else:
            return values
        first: tuple[str, int, str] | None = None
        for row, text in enumerate(texts):
            try:
                kind, value = parse_timestamp(text)
            except (ValueError, OverflowError) as err:
                raise DataFormatError(f"{path}: row {row}: {err}") from None
            if isinstance(value, int) and abs(value) >= 2**63:
                raise DataFormatError(f"{path}: row {row}: timestamp {text!r} is too large")
            if first is None:
                first = (kind, row, text)
            elif kind != first[0]:
                raise DataFormatError(
                    f"{path}: row {row}: timestamp {text!r} is a {kind} but row {first[1]} has "
                    f"a {first[0]} ({first[2]!r}); one column holds numbers or ISO-8601 dates, "
                    "not both")
        raise DataFormatError(f"{path}: column {name!r}: timestamps out of range")  # unreached
    raise DataFormatError(f"{path}: timestamp column {name!r} has type {typ}; use integers, "
                          "floats, timestamps, dates or ISO-8601 strings")

"""User -> item sequences and the SASRec text format (one ``user item`` line per interaction).

The format, as written by the SASRec reference code (kang205/SASRec, pmixer/SASRec.pytorch)::

    1 1
    1 2
    2 3

Ids are positive integers (item 0 is the padding id). A user's lines are in time order; they
need not be contiguous (later lines of a user are appended in file order).

A cached named dataset (``<cache>/<name>/<name>.txt``, see ``data.download``) has its item id
map ``item_ids.json`` beside it; ``read_sasrec_text`` loads it into ``SequenceDataset.item_ids``.
Any other text file holds ids that are already dense and gets ``item_ids=None``.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

import numpy as np

from data._parse import parse_int_table, strip_utf8_bom
from data.atomic import atomic_write
from data.errors import DataFormatError
from data.item_ids import ITEM_IDS, ItemIds

_INT_RE = re.compile(rb"[+-]?[0-9]+")


@dataclass(frozen=True)
class SequenceDataset:
    """Interaction sequences of every user.

    Attributes:
        sequences: user id -> item ids in time order.
        num_users: largest user id.
        num_items: largest item id; items are ``1..num_items`` and 0 is padding.
        source: where the data came from (a path or a dataset name), for messages and logs.
        item_ids: the raw id (and title, where the source has titles) of every internal item
            ``1..num_items``, or None when the ids are already the source's ids (a SASRec text
            file: use ``ItemIds.identity(num_items)``). Not part of ``fingerprint()``.
        user_ids: the raw id of every user ``1..num_users`` (``user_ids[u - 1]``), or None when
            the ids are the source's (a SASRec text file); ``raw_user_ids()`` gives them either
            way. Not part of ``fingerprint()`` or of equality.

    Raises:
        ValueError: if a user id exceeds ``num_users``, an item id is outside
            ``1..num_items``, ``item_ids`` holds another number of items, or ``user_ids``
            another number of users.
    """

    sequences: dict[int, list[int]]
    num_users: int
    num_items: int
    source: str
    item_ids: ItemIds | None = None
    user_ids: tuple[str, ...] | None = dataclass_field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.user_ids is not None and len(self.user_ids) != self.num_users:
            raise ValueError(f"{self.source}: user_ids names {len(self.user_ids)} users but the "
                             f"dataset has num_users={self.num_users}")
        if self.item_ids is not None and self.item_ids.num_items != self.num_items:
            raise ValueError(
                f"{self.source}: item_ids maps {self.item_ids.num_items} items but the dataset "
                f"has num_items={self.num_items}"
            )
        if self.sequences and max(self.sequences) > self.num_users:
            raise ValueError(
                f"{self.source}: user id {max(self.sequences)} exceeds num_users="
                f"{self.num_users}; num_users must be the largest user id"
            )
        nonempty = [s for s in self.sequences.values() if s]
        if nonempty:
            hi = max(max(s) for s in nonempty)
            lo = min(min(s) for s in nonempty)
            if hi > self.num_items or lo < 1:
                raise ValueError(
                    f"{self.source}: item ids span {lo}..{hi} but must lie in "
                    f"1..num_items={self.num_items} (0 is the padding id)"
                )

    def raw_user_ids(self) -> tuple[str, ...]:
        """The raw id of every user ``1..num_users``: ``user_ids``, or the internal ids as text
        when the source's ids are the internal ones."""
        if self.user_ids is not None:
            return self.user_ids
        return tuple(str(u) for u in range(1, self.num_users + 1))

    @property
    def num_interactions(self) -> int:
        """Total number of (user, item) interactions."""
        return sum(len(s) for s in self.sequences.values())

    def fingerprint(self) -> str:
        """sha256 (hex) of the id-level content: ``num_items`` and every user's item sequence.

        Two datasets with the same fingerprint give a model the same inputs and targets, whatever
        file they were read from; a copy with permuted item ids, a dropped interaction or another
        order of a user's items gets another one. Stored in a run's ``config.json`` and checked
        wherever a model meets a dataset (``--init-from``, ``--resume``, export). ``item_ids``
        and ``source`` are not part of it.
        """
        digest = hashlib.sha256(f"sasrec-qat dataset v1 items={self.num_items}\n".encode())
        for user in sorted(self.sequences):
            items = self.sequences[user]
            digest.update(np.array([user, len(items)], dtype="<i8").tobytes())
            digest.update(np.asarray(items, dtype="<i8").tobytes())
        return digest.hexdigest()


# read_sasrec_text: the largest item id may exceed the distinct items by this many (or 4x):
# gaps from filtered items are fine, ids that would size a table of billions of rows are not
SPARSE_ID_SLACK = 100_000


def read_sasrec_text(path: str | os.PathLike[str]) -> SequenceDataset:
    """Read a SASRec ``user item`` text file.

    Pure-digit files (the normal case) are parsed with numpy in well under a second for 1M
    lines; anything else goes through a line-by-line parser that names the first bad line.
    Trailing blank lines are ignored; any other line must hold exactly two positive integers.

    Args:
        path: the text file.

    Returns:
        The dataset; ``num_users``/``num_items`` are the largest ids seen, ``source`` the path.
        ``item_ids`` is loaded from ``item_ids.json`` beside a cached named dataset (the layout
        ``<dir>/<dir>.txt``, as ``fetch_dataset`` writes it) and is None for any other file.

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        DataFormatError: ``path:line_no: ...`` for an empty file, a line without exactly two
            whitespace-separated fields (including a blank line before the end), a field that is
            not an integer, an id < 1, or item ids far sparser than dense numbering
            (``SPARSE_ID_SLACK``).
        ValueError: the cached ``item_ids.json`` is unreadable or maps another number of items
            than the text file holds (delete the cache directory to rebuild it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a SASRec 'user item' text file)")
    raw = strip_utf8_bom(path.read_bytes())
    pairs = parse_int_table(raw, 2)
    if pairs is None:
        pairs = _parse_slow(raw, path)
    if pairs.size == 0:
        raise DataFormatError(f"{path}:1: file is empty; expected lines 'user item'")
    bad = np.flatnonzero(pairs <= 0)
    if bad.size:
        row, col = divmod(int(bad[0]), 2)
        raise DataFormatError(
            f"{path}:{row + 1}: {('user', 'item')[col]} id {pairs[row, col]} is not positive; "
            "ids start at 1 (0 is the padding item)"
        )
    num_items = int(pairs[:, 1].max())
    # the check needs the distinct ids (a sort) only where it can fail: above the slack
    distinct = int(np.unique(pairs[:, 1]).size) if num_items > SPARSE_ID_SLACK else num_items
    if num_items > max(4 * distinct, distinct + SPARSE_ID_SLACK):
        row = int(np.argmax(pairs[:, 1]))
        raise DataFormatError(
            f"{path}:{row + 1}: item id {num_items} but the file holds {distinct:,} distinct "
            "items: a SASRec text file numbers items 1..I (each id is a row of the model's "
            "item table); renumber them, or give the log as .csv/.tsv (ids of any kind, "
            "renumbered on reading)"
        )
    sequences = _group_by_user(pairs[:, 0], pairs[:, 1])
    item_ids = _cached_item_ids(path, num_items)
    return SequenceDataset(
        sequences=sequences,
        num_users=int(pairs[:, 0].max()),
        num_items=num_items,
        source=str(path),
        item_ids=item_ids,
    )


def _cached_item_ids(path: Path, num_items: int) -> ItemIds | None:
    """The map beside a cached named dataset ``<dir>/<dir>.txt``, else None."""
    map_path = path.parent / ITEM_IDS
    if path.name != f"{path.parent.name}.txt" or not map_path.is_file():
        return None
    item_ids = ItemIds.load(map_path)
    if item_ids.num_items != num_items:
        raise ValueError(
            f"{map_path}: maps {item_ids.num_items} items but {path} has {num_items}; the cache "
            f"is inconsistent: delete {path.parent} to rebuild it"
        )
    return item_ids


def write_sasrec_text(dataset: SequenceDataset, path: str | os.PathLike[str]) -> None:
    """Write ``dataset`` as ``user item`` lines, users in ascending id order.

    Written atomically (``data.atomic.atomic_write``: temp file, fsync, rename), so readers
    never see a half-written file.

    Args:
        dataset: the sequences to write; users with an empty sequence write no lines.
        path: destination file (its directory is created).

    Raises:
        OSError: if the file cannot be written (the temporary file is removed).
    """
    chunks = []
    for user in sorted(dataset.sequences):
        items = dataset.sequences[user]
        if items:
            prefix = f"{user} "
            chunks.append(prefix + f"\n{prefix}".join(map(str, items)) + "\n")
    text = "".join(chunks)
    atomic_write(path, lambda f: f.write(text), mode="w", encoding="ascii")


def _group_by_user(users: np.ndarray, items: np.ndarray) -> dict[int, list[int]]:
    """user -> items in input order (a stable sort by user keeps each user's file order)."""
    order = np.argsort(users, kind="stable")
    sorted_users, sorted_items = users[order], items[order].tolist()
    bounds = (np.flatnonzero(np.diff(sorted_users)) + 1).tolist()
    edges = [0, *bounds, len(sorted_items)]
    heads = sorted_users[edges[:-1]].tolist()
    return {u: sorted_items[a:b] for u, a, b in zip(heads, edges[:-1], edges[1:], strict=True)}


def _parse_slow(raw: bytes, path: Path) -> np.ndarray:
    """Line-by-line parser; raises DataFormatError at the first bad line."""
    lines = raw.split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    values: list[int] = []
    for line_no, line in enumerate(lines, start=1):
        fields = line.split()
        if len(fields) != 2:
            shown = line.decode("utf-8", errors="replace").strip("\r")
            raise DataFormatError(
                f"{path}:{line_no}: expected 2 whitespace-separated fields 'user item', got "
                f"{len(fields)}: {shown!r}; fix or delete this line"
            )
        for name, field in zip(("user", "item"), fields, strict=True):
            if not _INT_RE.fullmatch(field):
                shown = field.decode("utf-8", errors="replace")
                raise DataFormatError(
                    f"{path}:{line_no}: {name} id {shown!r} is not an integer; "
                    "ids must be positive integers"
                )
            value = int(field)
            if value <= 0:
                raise DataFormatError(
                    f"{path}:{line_no}: {name} id {value} is not positive; "
                    "ids start at 1 (0 is the padding item)"
                )
            if value >= 2**63:
                raise DataFormatError(f"{path}:{line_no}: {name} id {value} is too large")
            values.append(value)
    return np.array(values, dtype=np.int64).reshape(-1, 2)

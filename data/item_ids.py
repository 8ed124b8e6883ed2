"""The map between a model's internal item ids (1..N, 0 = padding) and the raw ids of the data.

Preprocessing renumbers items (and users) densely from 1; a model scores internal ids. This
map turns them back into the ids of the user's log (a product SKU, a movie id, any string) and,
where the source has them, titles (ML-1M ``movies.dat``). It is written as ``item_ids.json``
next to the cached dataset, copied into every run folder and carried by every exported ONNX
model (metadata property ``sasrec_qat.item_ids``), so a model file is self-describing.

    ids = ItemIds(raw=("1193", "661", "914"), titles=("One Flew Over ...", ...))
    ids.raw_id(1)            # "1193"
    ids.internal_id("661")   # 2
    ids.save(path); ItemIds.load(path) == ids

JSON layout (``schema`` 1)::

    {"record": "item_ids", "schema": 1, "raw": ["1193", "661", ...], "titles": [...] | null}

``raw[i - 1]`` is the raw id of internal item ``i``. Raw ids are strings (an integer id ``42``
is ``"42"``): ids from a CSV are text, and one type keeps lookups unambiguous.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from data.atomic import atomic_write
from data.errors import quote_some

ITEM_IDS = "item_ids.json"  # the file name, beside a cached dataset and in every run folder
METADATA_KEY = "sasrec_qat.item_ids"  # the ONNX metadata property holding the same JSON
_RECORD, _SCHEMA = "item_ids", 1
TSV_BREAKING = "\t\r\n"  # characters that break a tab-separated line


def tsv_unsafe(values: Iterable[str | None]) -> list[str]:
    """The ``values`` (ids, titles) that hold a tab or line break, which no tab-separated line
    (``scripts/recommend.py``'s output) can carry; None values are skipped.

    >>> tsv_unsafe(["sku-1", "a\\tb", None, "c\\nd"])
    ['a\\tb', 'c\\nd']
    """
    return [v for v in values if v is not None and any(c in v for c in TSV_BREAKING)]


class UnknownItemError(ValueError):
    """Raw item ids the model does not know; ``unknown`` lists them (the message names them)."""

    REASON = ("not in the model's catalogue (items with fewer interactions than the minimum "
              "were dropped at preprocessing)")

    def __init__(self, unknown: Sequence[str]) -> None:
        self.unknown = list(unknown)
        super().__init__(f"unknown item id(s) {quote_some(self.unknown)}: {self.REASON}")


@dataclass(frozen=True)
class ItemIds:
    """Raw ids (and optional titles) of internal items ``1..len(raw)``.

    Raises:
        ValueError: a duplicate raw id (two internal items cannot be the same raw item), or
            ``titles`` of another length.
    """

    raw: tuple[str, ...]
    titles: tuple[str, ...] | None = None
    _index: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "raw", tuple(str(r) for r in self.raw))
        if self.titles is not None:
            object.__setattr__(self, "titles", tuple(str(t) for t in self.titles))
            if len(self.titles) != len(self.raw):
                raise ValueError(f"item_ids: {len(self.titles)} titles for {len(self.raw)} items")
        index: dict[str, int] = {}
        for internal, raw in enumerate(self.raw, start=1):
            if index.setdefault(raw, internal) != internal:
                raise ValueError(f"item_ids: raw id {raw!r} appears twice")
        object.__setattr__(self, "_index", index)

    @classmethod
    def identity(cls, num_items: int) -> ItemIds:
        """Raw id ``"i"`` for internal item ``i``: data whose ids are already dense (a SASRec
        text file)."""
        return cls(tuple(str(i) for i in range(1, num_items + 1)))

    @property
    def num_items(self) -> int:
        return len(self.raw)

    def raw_id(self, internal: int) -> str:
        """The raw id of internal item ``internal`` (1..num_items)."""
        if not 1 <= internal <= len(self.raw):
            raise ValueError(f"internal item id {internal} is outside 1..{len(self.raw)}")
        return self.raw[internal - 1]

    def title(self, internal: int) -> str | None:
        """The title of internal item ``internal``, or None when the source had none."""
        return None if self.titles is None else self.titles[internal - 1]

    @property
    def is_identity(self) -> bool:
        """Whether raw id ``"i"`` is internal item ``i`` for every item (``identity``)."""
        return all(raw == str(i) for i, raw in enumerate(self.raw, start=1))

    def __contains__(self, raw: object) -> bool:
        """Whether raw item ``raw`` (compared as text) is one of the map's items."""
        return str(raw) in self._index

    def internal_id(self, raw: str) -> int:
        """The internal id of raw item ``raw``; ``UnknownItemError`` if the model lacks it."""
        try:
            return self._index[str(raw)]
        except KeyError:
            raise UnknownItemError([str(raw)]) from None

    def internal_ids(self, raw: Iterable[str]) -> list[int]:
        """Internal ids of ``raw`` in order; every unknown id is named in one error."""
        raw = [str(r) for r in raw]
        unknown = [r for r in raw if r not in self._index]
        if unknown:
            raise UnknownItemError(list(dict.fromkeys(unknown)))
        return [self._index[r] for r in raw]

    # -- files -------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"record": _RECORD, "schema": _SCHEMA, "raw": list(self.raw),
                "titles": None if self.titles is None else list(self.titles)}

    @classmethod
    def from_json(cls, obj: Any, *, source: str = "item_ids") -> ItemIds:
        """Raises ``ValueError`` naming ``source`` for anything but a valid item_ids record."""
        if not isinstance(obj, dict) or obj.get("record") != _RECORD:
            raise ValueError(f"{source}: not an item_ids record")
        if obj.get("schema") != _SCHEMA:
            raise ValueError(f"{source}: item_ids schema {obj.get('schema')!r} is not "
                             f"{_SCHEMA}; update sasrec-qat")
        raw, titles = obj.get("raw"), obj.get("titles")
        if not isinstance(raw, list) or not (titles is None or isinstance(titles, list)):
            raise ValueError(f"{source}: item_ids needs a list 'raw' and a list or null 'titles'")
        try:
            return cls(tuple(raw), None if titles is None else tuple(titles))
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from err

    def dumps(self) -> str:
        """Compact JSON (the ONNX metadata value)."""
        return json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":"))

    def sha256(self) -> str:
        """sha256 (hex) of ``dumps()`` in UTF-8: what parity.json records of an embedded map."""
        return hashlib.sha256(self.dumps().encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``item_ids.json`` atomically (temp file, fsync, rename)."""
        text = self.dumps() + "\n"
        atomic_write(path, lambda f: f.write(text), mode="w")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ItemIds:
        """Read ``item_ids.json``; ``FileNotFoundError`` / ``ValueError`` naming the file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no item id map at {path}")
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a readable JSON file ({err})") from err
        return cls.from_json(obj, source=str(path))

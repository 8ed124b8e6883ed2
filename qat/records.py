"""Typed result files: each JSON file a step writes is a versioned dataclass.

Steps pass results to each other through files in the run folder (``metrics.json`` from
training, ``parity.json`` from export, ``bench.json`` from the benchmark). Each is a ``Record``:
a dataclass with a ``KIND`` and a ``SCHEMA`` version (the JSON keys ``record`` and
``schema``), written by ``save`` and read back by
``load``, which refuses another kind, a newer schema or a missing field with a ``ValueError``
that names the file. A record names the files it describes by their sha256 (``file_sha256``),
never by size or modification time: two models of one architecture have the same size, and a
copy has a new mtime.

    record = MetricsRecord(...); record.save(run / "metrics.json")
    again = MetricsRecord.load(run / "metrics.json")      # the same values

Fields are JSON values (numbers, strings, lists, dicts, None) or nested records; a subclass
with nested records overrides ``from_json`` to build them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from qat.checkpoint import save_json

R = TypeVar("R", bound="Record")
RECORD_KEY = "record"  # which record a JSON file holds ("metrics", "parity", ...)
SCHEMA_KEY = "schema"


def file_sha256(path: str | os.PathLike, *, block: int = 1 << 20) -> str:
    """Hex sha256 of the file at ``path``, read in ``block``-byte chunks (1 MiB).

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_or_none(path: str | os.PathLike) -> str | None:
    """``file_sha256(path)``, or None when the file is missing or unreadable."""
    try:
        return file_sha256(path)
    except OSError:
        return None


@dataclasses.dataclass
class Record:
    """Base of every result file. Subclasses set ``KIND`` (the file's role) and ``SCHEMA``.

    ``SCHEMA`` goes up when a field changes meaning or a required field is added; ``load``
    accepts files of the same or an older schema whose fields this class can fill (fields with
    defaults may be absent), and refuses newer ones: an old program must not misread a new file.
    """

    KIND: ClassVar[str] = ""
    SCHEMA: ClassVar[int] = 1

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: ``record`` (the ``KIND``), ``schema``, then every field (nested
        records too)."""
        out: dict[str, Any] = {RECORD_KEY: self.KIND, SCHEMA_KEY: self.SCHEMA}
        for f in dataclasses.fields(self):
            out[f.name] = _to_json(getattr(self, f.name))
        return out

    @classmethod
    def from_json(cls: type[R], obj: Any, *, source: str = "record") -> R:
        """The record in ``obj`` (as ``to_json`` wrote it).

        Raises:
            ValueError: not an object, another ``record`` kind, a newer ``schema``, a missing
                required field or an unknown one; the message starts with ``source``.
        """
        if not isinstance(obj, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(obj).__name__}")
        kind, schema = obj.get(RECORD_KEY), obj.get(SCHEMA_KEY)
        if kind != cls.KIND:
            raise ValueError(f"{source}: is a {kind!r} record, expected {cls.KIND!r}")
        if not isinstance(schema, int) or schema < 1:
            raise ValueError(f"{source}: has no valid schema version ({schema!r})")
        if schema > cls.SCHEMA:
            raise ValueError(f"{source}: schema {schema} is newer than this program's "
                             f"{cls.SCHEMA}; update sasrec-qat")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {k: v for k, v in obj.items() if k not in (RECORD_KEY, SCHEMA_KEY)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {', '.join(unknown)} for a "
                             f"{cls.KIND} record of schema {schema}")
        missing = [name for name, f in fields.items() if name not in values
                   and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"{source}: missing field(s) {', '.join(missing)}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from err

    def save(self, path: str | os.PathLike) -> None:
        """Write ``to_json()`` atomically."""
        save_json(self.to_json(), path)

    @classmethod
    def load(cls: type[R], path: str | os.PathLike) -> R:
        """Read a record file.

        Raises:
            FileNotFoundError: no file.
            ValueError: not JSON, or not a valid record of this kind (names the file).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no {cls.KIND} record at {path}")
        try:
            obj = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a readable JSON file ({err})") from err
        return cls.from_json(obj, source=str(path))

    @classmethod
    def load_or_none(cls: type[R], path: str | os.PathLike) -> R | None:
        """``load(path)``, or None when the file is missing or not a valid record."""
        try:
            return cls.load(path)
        except (OSError, ValueError):
            return None


def _to_json(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value

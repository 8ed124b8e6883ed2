"""Atomic file writes: a crash mid-write never leaves a truncated file (temp file, fsync, rename).

The lowest layer of the project, so every package (data caches, checkpoints, records, ONNX files)
writes through this one function.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Any, *, mode: str = "wb",
                 encoding: str | None = None) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, fsync, then rename over ``path``.

    The temp file is removed on any failure; readers see the old file or the new one, never a
    part. ``mode``/``encoding`` as for ``open`` (text modes default to UTF-8 here).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

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
    part. ``mode``/``encoding`` as for ``open`` (text modes default to UTF-8 here). The file
    gets the permissions ``open`` would give a new file (0666 less the umask), not
    ``mkstemp``'s owner-only 0600, so a run folder shared with a group stays readable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, encoding=encoding) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask: from /proc/self/status on Linux, else by setting it and setting it
    back (Python has no getter)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask

"""Atomic checkpoint and JSON writing: a crash mid-write never leaves a truncated file."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_write(path: str | os.PathLike, write: Any, *, mode: str = "wb") -> None:
    """Call ``write(file)`` on a temp file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` written atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def save_json(obj: Any, path: str | os.PathLike) -> None:
    """Pretty JSON written atomically."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2) + "\n"), mode="w")


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint``, with a clear error when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") \
            from err
    if not isinstance(obj, dict) or "model_config" not in obj:
        raise ValueError(f"{path} is not a sasrec-qat checkpoint (no model_config)")
    return obj

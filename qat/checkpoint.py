"""Checkpoint and JSON files: atomic writes, and a content digest checked at every load.

Atomic: a crash mid-write never leaves a truncated file (temp file, fsync, rename).

Digest: ``save_checkpoint`` stores ``content_sha256``, a sha256 over the checkpoint's content
(every tensor's dtype, shape and bytes, every key and scalar, walked in a fixed order), and
``load_checkpoint`` recomputes it. torch's zip reader does not check the CRCs of its entries, so
bytes flipped inside a weight load silently without it. Files written before the digest existed
(``format`` 1) load unchecked; every file written now has ``format`` 2 and must match.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.atomic import atomic_write

FORMAT = 2  # 2: with content_sha256
DIGEST_KEY = "content_sha256"


def content_digest(obj: Any) -> str:
    """sha256 (hex) of a checkpoint's content, independent of how torch serialises it.

    Dicts are walked in sorted key order (keys compared by ``repr``: optimizer states have int
    keys); tensors contribute dtype, shape and their bytes; numpy arrays likewise; other values
    their type and ``repr``.
    """
    digest = hashlib.sha256()
    _update_digest(digest, obj)
    return digest.hexdigest()


def _update_digest(digest: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.is_quantized:  # real int8 weights: the integers and their qparams
            digest.update(f"q{t.qscheme()}".encode())
            if t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
                digest.update(f"{t.q_scale()!r},{t.q_zero_point()}".encode())
            else:
                _update_digest(digest, t.q_per_channel_scales())
                _update_digest(digest, t.q_per_channel_zero_points())
                digest.update(f"axis{t.q_per_channel_axis()}".encode())
            t = t.int_repr()
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        digest.update(f"N{obj.dtype}{obj.shape}".encode())
        digest.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, dict):
        digest.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            digest.update(f"K{key!r}".encode())
            _update_digest(digest, obj[key])
    elif isinstance(obj, (list, tuple)):
        digest.update(f"L{type(obj).__name__}{len(obj)}".encode())
        for item in obj:
            _update_digest(digest, item)
    else:
        digest.update(f"V{type(obj).__name__}:{obj!r}".encode())


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` of ``obj`` plus its ``content_sha256``, written atomically."""
    record = {**obj, "format": FORMAT}
    record[DIGEST_KEY] = content_digest(record)
    atomic_write(path, lambda f: torch.save(record, f))


def save_json(obj: Any, path: str | os.PathLike) -> None:
    """Pretty JSON written atomically."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2) + "\n"), mode="w")


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a file written by ``save_checkpoint`` and check its content digest.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unreadable (truncated, not a torch file), not a sasrec-qat checkpoint, or its
            content does not match its digest (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__}: "
                         f"{_first_line(err)})") from err
    if not isinstance(obj, dict) or "model_config" not in obj:
        raise ValueError(f"{path} is not a sasrec-qat checkpoint (no model_config)")
    if obj.get("format", 1) != 1:  # anything but a legacy file must carry a matching digest
        stored = obj.pop(DIGEST_KEY, None)
        if stored is None or content_digest(obj) != stored:
            raise ValueError(f"{path} is corrupt: its content does not match the digest it was "
                             "saved with (the file was damaged or edited after it was written); "
                             "restore it from a backup or retrain")
    return obj


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__

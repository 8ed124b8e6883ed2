"""Writing and reading ONNX files: atomic, checked, one clear error when unreadable; the
content hash that ties a parity.json record to the very file it measured."""
from __future__ import annotations

import os
from pathlib import Path

import onnx

from qat.checkpoint import atomic_write
from qat.records import file_sha256  # noqa: F401  (the hash parity.json records)


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike) -> int:
    """``onnx.checker``-check ``model`` and write it atomically (temp file + ``os.replace``).

    Returns:
        The file's size in bytes.
    Raises:
        onnx.checker.ValidationError: the model is invalid (nothing is written).
    """
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    atomic_write(path, lambda f: f.write(data))
    return len(data)


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Read and check an ONNX file.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a valid ONNX model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX model at {path}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:  # protobuf DecodeError, ValidationError, ... depending on damage
        raise ValueError(f"{path} is not a readable ONNX model ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from err
    return model

"""onnxruntime's own post-training quantization (PTQ) of the FP32 SASRec graph: QAT's baselines.

    fp32 = build_sasrec_onnx(fp32_model).SerializeToString()
    dynamic = quantize_dynamic_model(fp32)
    static = quantize_static_model(fp32, calibration_inputs(split, max_len=200, users=512))
    if static.model is None: print(static.error)

``quantize_dynamic``: int8 weights (QInt8, per tensor, onnxruntime's defaults), activations
quantized at run time from their observed range (``DynamicQuantizeLinear`` + ``MatMulInteger``);
its outputs are float, so scores keep full precision.

``quantize_static``: QDQ format, int8 activations and weights (onnxruntime's defaults), MinMax
ranges calibrated on training sequences. Configurations are tried in order until one builds a
model that runs:

1. per-channel weights, the scoring op's output left float;
2. the same with every ``Gather`` left float: the item table feeds both the embedding lookup and
   the scoring Gemm, and per-channel quantization gives the shared table one axis for both, which
   onnxruntime 1.32 rejects at run time (``For per axis quantization, scale must be 1D tensor
   with size 50``);
3. per-tensor weights, the scoring op's output left float.

The scoring output is excluded from quantization because 8-bit scores tie: 256 levels for
thousands of items, and ties rank the target pessimistically (docs/design.md, section 2); the QAT
models keep float scores too. Every attempt and its error are recorded in ``PTQResult.attempts``.
The graph is not pre-processed (``quant_pre_process``): on this graph it changed no metric.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.registry import QDQRegistry

from data import LeaveOneOutSplit
from export.sasrec_graph import INPUT, SCORES

MAX_ERROR_CHARS = 800


@dataclass
class PTQResult:
    """One onnxruntime PTQ baseline.

    Attributes:
        name: ``"quantize_dynamic"`` or ``"quantize_static"``.
        model: the serialized quantized model; None when every attempt failed.
        options: the configuration that produced ``model`` (None if none did).
        attempts: every configuration tried, in order, each with ``"error"`` (None if it worked).
    """

    name: str
    model: bytes | None
    options: dict[str, Any] | None
    attempts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def error(self) -> str | None:
        """The last attempt's error when no model was produced."""
        if self.model is not None or not self.attempts:
            return None
        return self.attempts[-1]["error"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (no model bytes)."""
        return {"name": self.name, "ok": self.model is not None, "options": self.options,
                "attempts": self.attempts, "error": self.error}


class SequenceReader(CalibrationDataReader):
    """Feeds ``inputs`` (N, T) int64 to onnxruntime's calibrator in batches of ``batch_size``."""

    def __init__(self, inputs: np.ndarray, batch_size: int = 64) -> None:
        if len(inputs) == 0 or batch_size < 1:
            raise ValueError("calibration needs at least one sequence and batch_size >= 1")
        self.inputs = np.ascontiguousarray(inputs, dtype=np.int64)
        self.batch_size = batch_size
        self._batches: Iterator[dict[str, np.ndarray]] = iter(())
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = iter([{INPUT: self.inputs[i:i + self.batch_size]}
                              for i in range(0, len(self.inputs), self.batch_size)])


def calibration_inputs(split: LeaveOneOutSplit, *, max_len: int, users: int,
                       seed: int = 0) -> np.ndarray:
    """``(U, max_len)`` int64 training sequences for static calibration.

    ``U = min(users, users with a training item)`` users drawn at random (``seed``), each row the
    last ``max_len`` items of ``split.train[user]``, left-padded with 0 (validation and test items
    are never seen).
    """
    if users < 1 or max_len < 1:
        raise ValueError(f"users and max_len must be >= 1, got {users} and {max_len}")
    eligible = sorted(u for u, items in split.train.items() if items)
    if not eligible:
        raise ValueError("no user has a training item to calibrate on")
    chosen = np.random.default_rng(seed).choice(len(eligible), min(users, len(eligible)),
                                                replace=False)
    rows = np.zeros((len(chosen), max_len), dtype=np.int64)
    for row, index in enumerate(sorted(chosen)):
        items = split.train[eligible[index]][-max_len:]
        rows[row, max_len - len(items):] = items
    return rows


def quantize_dynamic_model(fp32: bytes) -> PTQResult:
    """``onnxruntime.quantization.quantize_dynamic`` of the serialized FP32 graph (QInt8 weights).

    Raises:
        ValueError: onnxruntime could not quantize the graph.
    """
    options = {"weight_type": "QInt8", "per_channel": False, "reduce_range": False}
    with tempfile.TemporaryDirectory(prefix="sasrec_ptq.") as tmp:
        src, dst = _write(fp32, tmp)
        try:
            with _quiet():
                quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=False,
                                 reduce_range=False)
        except Exception as err:  # onnxruntime's quantizer raises many types
            raise ValueError(f"quantize_dynamic failed: {_describe(err)}") from err
        model = dst.read_bytes()
    return PTQResult("quantize_dynamic", model, options, [{"options": options, "error": None}])


def quantize_static_model(fp32: bytes, calibration: np.ndarray, *,
                          batch_size: int = 64) -> PTQResult:
    """``onnxruntime.quantization.quantize_static`` (QDQ, MinMax) calibrated on ``calibration``.

    Tries the configurations of the module docstring in order; a configuration counts as working
    when the quantized model loads and scores one calibration batch with finite scores. Never
    raises for a graph onnxruntime cannot quantize: the result then has ``model=None`` and the
    errors in ``attempts``.
    """
    scoring_op = _scoring_op(fp32)
    configs = [
        {"per_channel": True, "float_output_ops": [scoring_op], "float_ops": []},
        {"per_channel": True, "float_output_ops": [scoring_op], "float_ops": ["Gather"]},
        {"per_channel": False, "float_output_ops": [scoring_op], "float_ops": []},
    ]
    check = calibration[:min(len(calibration), batch_size)]
    attempts = []
    for config in configs:
        options = {"quant_format": "QDQ", "activation_type": "QInt8", "weight_type": "QInt8",
                   "calibrate_method": "MinMax", "calibration_sequences": int(len(calibration)),
                   **config}
        try:
            model = _static(fp32, calibration, config, batch_size)
            _check_runs(model, check)
        except Exception as err:  # quantizer or onnxruntime failure: record it, try the next
            attempts.append({"options": options, "error": _describe(err)})
            continue
        attempts.append({"options": options, "error": None})
        return PTQResult("quantize_static", model, options, attempts)
    return PTQResult("quantize_static", None, None, attempts)


def _static(fp32: bytes, calibration: np.ndarray, config: dict[str, Any],
            batch_size: int) -> bytes:
    with tempfile.TemporaryDirectory(prefix="sasrec_ptq.") as tmp:
        src, dst = _write(fp32, tmp)
        extra = {"OpTypesToExcludeOutputQuantization": config["float_output_ops"]}
        op_types = None  # onnxruntime's default: every op type it can quantize in QDQ
        if config["float_ops"]:
            op_types = sorted(op for op in QDQRegistry if op not in config["float_ops"])
        with _quiet():
            quantize_static(src, dst, SequenceReader(calibration, batch_size),
                            quant_format=QuantFormat.QDQ, per_channel=config["per_channel"],
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            op_types_to_quantize=op_types,
                            extra_options=extra)
        return dst.read_bytes()


def _check_runs(model: bytes, batch: np.ndarray) -> None:
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the failure is reported through the exception
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    scores = session.run([SCORES], {INPUT: batch})[0]
    if not np.isfinite(scores).all():
        raise ValueError("the quantized model produces non-finite scores")


def _scoring_op(fp32: bytes) -> str:
    """The op type that writes the ``scores`` output (Gemm for ``export.float_layers``)."""
    graph = onnx.load_model_from_string(fp32).graph
    for node in graph.node:
        if SCORES in node.output:
            return node.op_type
    raise ValueError(f"the FP32 graph has no node writing {SCORES!r}")


def _write(fp32: bytes, folder: str) -> tuple[Path, Path]:
    """The FP32 model as a file (quantizers given a ModelProto modify it in place)."""
    src = Path(folder) / "fp32.onnx"
    src.write_bytes(fp32)
    return src, Path(folder) / "quantized.onnx"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the quantizer's root-logger advice and numpy warnings while it runs."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _describe(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0] if lines else ''}".strip()
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."

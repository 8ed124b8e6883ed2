"""onnxruntime sessions for exported SASRec models and a scorer for ``qat.evaluate``.

    session = make_session("runs/lsq/model_int8.onnx", threads=2)
    metrics = evaluate(OnnxScorer(session), split, "test", max_len=200)
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export import native_ops
from export.sasrec_graph import EXCLUDE, INPUT, K_INPUT, SCORES, TOP_K_ITEMS, TOP_K_SCORES

OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def make_session(model: str | os.PathLike | bytes | onnx.ModelProto, *, threads: int = 0,
                 optimization: str = "all", optimized_model_path: str | os.PathLike | None = None,
                 deterministic: bool = True, allow_spinning: bool = True,
                 profile_prefix: str | os.PathLike | None = None) -> ort.InferenceSession:
    """A CPU onnxruntime session.

    Args:
        model: a file path, serialized bytes or a ``ModelProto``.
        threads: intra-op threads (0: onnxruntime's default, one per physical core).
        optimization: graph optimisation level, one of ``OPTIMIZATION_LEVELS``
            (``"disable"`` runs the graph exactly as written).
        optimized_model_path: also write the optimised graph there (to inspect fusions).
        deterministic: ``use_deterministic_compute`` (reproducible reductions).
        allow_spinning: intra-op workers busy-wait after a run (onnxruntime's default); see
            ``export.latency.timing_session`` for when to turn it off.
        profile_prefix: turn on onnxruntime's profiler, its JSON file named from this prefix
            (``session.end_profiling()`` returns the path; ``export.op_profile`` reads it).

    Raises:
        ValueError: unknown ``optimization``, negative ``threads`` or a model onnxruntime
            cannot load.
    """
    if optimization not in OPTIMIZATION_LEVELS:
        raise ValueError(f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, "
                         f"got {optimization!r}")
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0 = onnxruntime default), got {threads}")
    options = ort.SessionOptions()
    options.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.use_deterministic_compute = deterministic
    options.log_severity_level = 3  # warnings about serialising ALL-level graphs are expected
    options.add_session_config_entry("session.intra_op.allow_spinning",
                                     "1" if allow_spinning else "0")
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    proto = model
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif not isinstance(model, bytes):
        model = str(Path(model))
    if uses_fused_ops(proto):  # its requantizing ops are our custom ops (NativeBuildError)
        options.register_custom_ops_library(str(native_ops.library_path()))
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/... types
        where = model if isinstance(model, str) else "the model"
        raise ValueError(f"onnxruntime cannot load {where}: {str(err).splitlines()[0]}") \
            from err


def uses_fused_ops(model: str | os.PathLike | bytes | onnx.ModelProto) -> bool:
    """Whether ``model`` imports ``export.native_ops.DOMAIN`` (needs the custom-op library).

    Raises:
        ValueError: a file or bytes that are not an ONNX model.
    """
    if not isinstance(model, onnx.ModelProto):
        try:
            model = (onnx.load_from_string(model) if isinstance(model, bytes)
                     else onnx.load(str(model), load_external_data=False))
        except Exception as err:  # protobuf DecodeError, OSError, ...
            where = "the model" if isinstance(model, bytes) else model
            raise ValueError(f"onnxruntime cannot load {where}: {str(err).splitlines()[0]}") \
                from err
    return any(op.domain == native_ops.DOMAIN for op in model.opset_import)


def serving_kind(session: ort.InferenceSession) -> str:
    """``"scores"`` (a full-score graph, output ``scores``) or ``"top_k"`` (a top-k graph,
    outputs ``top_k_items`` and ``top_k_scores``, inputs ``exclude`` and ``k``).

    Raises:
        ValueError: a graph with neither set of outputs (not a SASRec export).
    """
    outputs = {o.name for o in session.get_outputs()}
    # exclude and k have defaults: onnxruntime lists them as overridable initializers
    inputs = {i.name for i in [*session.get_inputs(), *session.get_overridable_initializers()]}
    if {TOP_K_ITEMS, TOP_K_SCORES} <= outputs and {EXCLUDE, K_INPUT} <= inputs:
        return "top_k"
    if SCORES in outputs:
        return "scores"
    raise ValueError(f"the model has neither a {SCORES!r} output nor the top-k graph's "
                     f"{TOP_K_ITEMS!r}/{TOP_K_SCORES!r}: not a SASRec export")


def model_metadata(session: ort.InferenceSession) -> dict[str, str]:
    """The ``metadata_props`` written by ``export.sasrec_graph`` (``sasrec_qat.*`` keys)."""
    return dict(session.get_modelmeta().custom_metadata_map)


class OnnxScorer:
    """``(B, T) item ids -> (B, num_items + 1) float scores`` through an onnxruntime session.

    Usable wherever ``qat.evaluate`` takes a scorer. Inputs longer than the model's
    ``max_len`` are rejected (the graph would read wrong positions silently).

    Args:
        session: a session of a model written by ``export.sasrec_graph``.
        output: the output to return (``"scores"``; ``"hidden"`` for diagnostics).
    """

    def __init__(self, session: ort.InferenceSession, output: str = SCORES) -> None:
        self.session = session
        self.output = output
        names = [o.name for o in session.get_outputs()]
        if output not in names:
            raise ValueError(f"the model has no output {output!r}; it has {', '.join(names)}")
        max_len = model_metadata(session).get("sasrec_qat.max_len")
        self.max_len = int(max_len) if max_len is not None else None

    def run(self, item_seq: torch.Tensor, outputs: list[str] | None = None) -> list[np.ndarray]:
        """Raw session outputs (``outputs`` names, default ``[self.output]``) for ``item_seq``."""
        if item_seq.dim() != 2:
            raise ValueError(f"item_seq must be (batch, length), got {tuple(item_seq.shape)}")
        if self.max_len is not None and item_seq.shape[1] > self.max_len:
            raise ValueError(f"sequence length {item_seq.shape[1]} exceeds max_len "
                             f"{self.max_len}; keep the last max_len items")
        feed = {INPUT: item_seq.detach().cpu().numpy().astype(np.int64, copy=False)}
        return self.session.run(outputs or [self.output], feed)

    def __call__(self, item_seq: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run(item_seq)[0])

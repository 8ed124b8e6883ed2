"""Deployment: SASRec (FP32 or converted INT8) -> ONNX -> onnxruntime, and parity with torch.

    model = build_sasrec_onnx(int8_model)              # export.sasrec_graph
    save_onnx(model, "model_int8.onnx")                # export.onnx_file (checked, atomic)
    session = make_session("model_int8.onnx")          # export.runtime
    report = check_parity(int8_model, session, split)  # export.parity

Uses ``qat`` (model, metric code, run folders); ``qat`` never imports this package.
"""
from export.onnx_file import load_onnx, save_onnx
from export.parity import ParityReport, ParityThresholds, check_parity
from export.run_folder import RunModel, load_run
from export.runtime import OPTIMIZATION_LEVELS, OnnxScorer, make_session
from export.sasrec_graph import build_sasrec_onnx, model_kind

__all__ = ["build_sasrec_onnx", "model_kind", "save_onnx", "load_onnx", "make_session",
           "OnnxScorer", "OPTIMIZATION_LEVELS", "check_parity", "ParityReport",
           "ParityThresholds", "load_run", "RunModel"]

"""Deployment: SASRec (FP32 or converted INT8) -> ONNX -> onnxruntime; parity with torch, latency.

    model = build_sasrec_onnx(int8_model)              # export.sasrec_graph
    save_onnx(model, "model_int8.onnx")                # export.onnx_file (checked, atomic)
    session = make_session("model_int8.onnx")          # export.runtime
    report = check_parity(int8_model, session, split)  # export.parity
    times = time_interleaved(calls, batches, warmup=10, repeats=100)  # export.latency
    dynamic = quantize_dynamic_model(fp32_bytes)        # export.ort_baselines (PTQ baselines)
    fast = build_sasrec_onnx(int8_model, fused=True)    # fused C++ kernels (export.native_ops)
    session, ids = load_recommender("model_int8.onnx")  # export.recommend: raw-id top-k
    recs = export.recommend.recommend(session, [["1193", "661"]], k=10)

Uses ``qat`` (model, metric code, run folders); ``qat`` never imports this package.
"""
from export.latency import latency_stats, machine_info, round_order, time_interleaved
from export.onnx_file import load_onnx, save_onnx
from export import native_ops
from export.ort_baselines import PTQResult, quantize_dynamic_model, quantize_static_model
from export.parity import ParityReport, ParityThresholds, check_parity
# the function recommend stays in export.recommend: exporting it here would shadow the module
from export.recommend import Recommendation, load_recommender
from export.run_folder import RunModel, load_run
from export.runtime import OPTIMIZATION_LEVELS, OnnxScorer, make_session
from export.sasrec_graph import build_sasrec_onnx, model_kind

__all__ = ["build_sasrec_onnx", "model_kind", "save_onnx", "load_onnx", "make_session",
           "OnnxScorer", "OPTIMIZATION_LEVELS", "check_parity", "ParityReport",
           "ParityThresholds", "load_run", "RunModel", "time_interleaved", "round_order",
           "latency_stats", "machine_info", "quantize_dynamic_model", "quantize_static_model",
           "PTQResult", "native_ops", "load_recommender", "Recommendation"]

"""The results summary: one row per model from the run folders' parity.json and bench.json.

    rows = summary_rows(runs, bench, batches=[1, 256], threads=2)
    write_summary_csv(rows, "runs/all/results_summary.csv", batches=[1, 256])

A row holds the model's quality as torch and onnxruntime measured it (``parity.json``; the
fused-kernel graphs' and the onnxruntime baselines' from bench.json ``"quality"``), whether
parity passed, the ONNX file size, the median latency at each benchmarked batch size for one
thread count, and the speedup over the FP32 ONNX model (FP32 median / model median, same batch
and threads). A fused graph's or baseline's size (and a baseline's method and bits) come from
bench.json ``"models"``. A value that is not known is ``None`` (an empty
CSV cell).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from qat.checkpoint import atomic_write

FP32_MODEL = "fp32"
FUSED_SUFFIX = "_fused"  # bench.json name of a run's fused-kernel INT8 graph: <model>_fused
# bench.json model name -> method shown in the summary (torch_eager_fp32 is left out: the
# summary compares ONNX deployments)
BASELINES = {"ort_quantize_dynamic": "quantize_dynamic", "ort_quantize_static": "quantize_static"}
METRICS = ("ndcg@10", "hit@10")
ENGINES = ("torch", "onnxruntime")


@dataclass(frozen=True)
class RunResult:
    """One trained and exported run folder.

    Attributes:
        model: its bench.json name (``"fp32"`` or ``"<method>_w<bits>"``).
        method: the ``--qconfig`` it was trained with.
        bits: weight bits (32 for FP32).
        parity: the folder's ``parity.json`` (None when it has none).
    """

    model: str
    method: str
    bits: int
    parity: dict[str, Any] | None


def model_name(method: str, bits: int) -> str:
    """The name of a run folder and of its bench.json model: ``fp32`` or ``<method>_w<bits>``."""
    return FP32_MODEL if method == FP32_MODEL else f"{method}_w{bits}"


def summary_columns(batches: Sequence[int]) -> list[str]:
    """CSV header: identity, quality per engine, parity, size, latency and speedup per batch."""
    quality = [f"{metric}_{engine}" for engine in ENGINES for metric in METRICS]
    return (["model", "method", "bits", *quality, "parity_passed", "onnx_bytes"]
            + [f"latency_b{b}_ms" for b in batches] + [f"speedup_b{b}" for b in batches])


def median_latency(bench: dict[str, Any] | None, model: str, batch: int,
                   threads: int) -> float | None:
    """``median_ms`` of ``model`` at ``batch`` and ``threads`` in bench.json, or None."""
    for record in (bench or {}).get("records", []):
        if (record.get("model") == model and record.get("batch") == batch
                and record.get("threads") == threads):
            return record.get("median_ms")
    return None


def summary_rows(runs: Sequence[RunResult], bench: dict[str, Any] | None,
                 batches: Sequence[int], threads: int) -> list[dict[str, Any]]:
    """One row per run (in the given order; an INT8 run's fused-kernel graph in ``bench``,
    ``<model>_fused``, right after it), then one per onnxruntime baseline in ``bench``."""
    quality = {q.get("model"): q for q in (bench or {}).get("quality", [])}
    models = {m.get("model"): m for m in (bench or {}).get("models", [])}
    benchmarked = {r.get("model") for r in (bench or {}).get("records", [])}
    rows = []
    for run in runs:
        rows.append(_run_row(run))
        fused = f"{run.model}{FUSED_SUFFIX}"
        if fused in benchmarked or fused in quality:
            measured = quality.get(fused, {})
            row = {"model": fused, "method": run.method, "bits": run.bits,
                   "parity_passed": measured.get("parity_passed"),
                   "onnx_bytes": models.get(fused, {}).get("onnx_bytes")}
            for metric in METRICS:
                row[f"{metric}_onnxruntime"] = measured.get(metric)
            rows.append(row)
    for name, method in BASELINES.items():
        if name not in benchmarked and name not in quality:
            continue
        described = models.get(name, {})
        row: dict[str, Any] = {"model": name, "method": described.get("method", method),
                               "bits": described.get("bits", 8),
                               "onnx_bytes": described.get("onnx_bytes")}
        for metric in METRICS:
            row[f"{metric}_onnxruntime"] = quality.get(name, {}).get(metric)
        rows.append(row)
    for row in rows:
        for batch in batches:
            ms = median_latency(bench, row["model"], batch, threads)
            fp32_ms = median_latency(bench, FP32_MODEL, batch, threads)
            row[f"latency_b{batch}_ms"] = ms
            row[f"speedup_b{batch}"] = fp32_ms / ms if ms and fp32_ms else None
    columns = summary_columns(batches)
    return [{column: row.get(column) for column in columns} for row in rows]


def write_summary_csv(rows: Sequence[dict[str, Any]], path: str | Path,
                      batches: Sequence[int]) -> None:
    """Write ``rows`` as CSV atomically (floats with 6 significant digits, None as empty)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=summary_columns(batches), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    atomic_write(path, lambda f: f.write(buffer.getvalue()), mode="w")


def _run_row(run: RunResult) -> dict[str, Any]:
    row: dict[str, Any] = {"model": run.model, "method": run.method, "bits": run.bits}
    parity = run.parity or {}
    for metric in METRICS:
        for engine in ENGINES:
            row[f"{metric}_{engine}"] = parity.get(metric, {}).get(engine)
    row["parity_passed"] = parity.get("passed")
    row["onnx_bytes"] = parity.get("onnx_bytes")
    return row


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value

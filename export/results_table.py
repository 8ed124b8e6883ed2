"""The results summary: one row per model from the run folders' parity.json and bench.json.

    bench = BenchRecord.load_or_none("runs/all/bench.json")   # export.bench_record
    rows = summary_rows(runs, bench, batches=[1, 256], threads=2)
    write_summary_csv(rows, "runs/all/results_summary.csv", batches=[1, 256])

A row holds the model's quality as torch and onnxruntime measured it (``parity.json``; the
fused-kernel graphs' and the onnxruntime baselines' from the bench record's ``quality``), whether
parity passed, the ONNX file size, the median latency at each benchmarked batch size for one
thread count, and the speedup over the FP32 ONNX model (FP32 median / model median, same batch
and threads). A fused graph's or baseline's size (and a baseline's method and bits) come from
the bench record's ``models``. A value that is not known is ``None`` (an empty CSV cell).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from export.bench_record import FP32_MODEL, FUSED_SUFFIX, BenchRecord, Quality
from export.parity_record import ParityRecord
from qat.checkpoint import atomic_write


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
    parity: ParityRecord | None


def model_name(method: str, bits: int) -> str:
    """The name of a run folder and of its bench.json model: ``fp32`` or ``<method>_w<bits>``."""
    return FP32_MODEL if method == FP32_MODEL else f"{method}_w{bits}"


def summary_columns(batches: Sequence[int]) -> list[str]:
    """CSV header: identity, quality per engine, parity, size, latency and speedup per batch."""
    quality = [f"{metric}_{engine}" for engine in ENGINES for metric in METRICS]
    return (["model", "method", "bits", *quality, "parity_passed", "onnx_bytes"]
            + [f"latency_b{b}_ms" for b in batches] + [f"speedup_b{b}" for b in batches])


def median_latency(bench: BenchRecord | None, model: str, batch: int,
                   threads: int) -> float | None:
    """``median_ms`` of ``model`` at ``batch`` and ``threads`` in ``bench``, or None."""
    return None if bench is None else bench.median_ms(model, batch, threads)


def summary_rows(runs: Sequence[RunResult], bench: BenchRecord | None,
                 batches: Sequence[int], threads: int) -> list[dict[str, Any]]:
    """One row per run (in the given order; an INT8 run's fused-kernel graph in ``bench``,
    ``<model>_fused``, right after it), then one per onnxruntime baseline in ``bench``.

    ``bench`` is the bench record (None: not benchmarked, latency cells empty).
    """
    rows = []
    for run in runs:
        rows.append(_run_row(run))
        fused = f"{run.model}{FUSED_SUFFIX}"
        if bench is not None and (bench.timed(fused) or bench.quality_of(fused) is not None):
            measured, described = bench.quality_of(fused), bench.model(fused)
            row = {"model": fused, "method": run.method, "bits": run.bits,
                   "parity_passed": None if measured is None else measured.parity_passed,
                   "onnx_bytes": None if described is None else described.onnx_bytes}
            row.update(_quality_cells(measured))
            rows.append(row)
    for name, method in BASELINES.items():
        if bench is None or (not bench.timed(name) and bench.quality_of(name) is None):
            continue
        described = bench.model(name)
        row = {"model": name, "method": method if described is None else described.method,
               "bits": 8 if described is None else described.bits,
               "onnx_bytes": None if described is None else described.onnx_bytes}
        row.update(_quality_cells(bench.quality_of(name)))
        rows.append(row)
    for row in rows:
        for batch in batches:
            ms = median_latency(bench, row["model"], batch, threads)
            fp32_ms = median_latency(bench, FP32_MODEL, batch, threads)
            row[f"latency_b{batch}_ms"] = ms
            row[f"speedup_b{batch}"] = fp32_ms / ms if ms and fp32_ms else None
    columns = summary_columns(batches)
    return [{column: row.get(column) for column in columns} for row in rows]


def _quality_cells(measured: Quality | None) -> dict[str, float | None]:
    """The onnxruntime nDCG@10 / Hit@10 cells of a model measured in the benchmark."""
    return {"ndcg@10_onnxruntime": None if measured is None else measured.ndcg,
            "hit@10_onnxruntime": None if measured is None else measured.hit}


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
    graph = run.parity.graph if run.parity is not None else None
    for engine in ENGINES:
        row[f"ndcg@10_{engine}"] = None if graph is None else graph.ndcg.get(engine)
        row[f"hit@10_{engine}"] = None if graph is None else graph.hit.get(engine)
    row["parity_passed"] = None if graph is None else graph.passed
    row["onnx_bytes"] = None if graph is None else graph.onnx_bytes
    return row


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value

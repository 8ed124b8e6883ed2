"""export.results_table and export.results_plot: the summary rows, CSV and figure from the run
folders' parity records and the bench record (built by hand here: no training, no timing)."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from export.bench_record import BenchRecord, BenchSetup, Quality, TimedModel, Timing
from export.parity_record import GraphParity, ParityRecord
from export.results_plot import plot_comparison
from export.results_table import RunResult, summary_columns, summary_rows, write_summary_csv

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def parity(method: str, bits: int, ndcg: float, passed: bool = True) -> ParityRecord:
    graph = GraphParity(
        onnx_file="model.onnx", onnx_bytes=1000 + bits, onnx_sha256="0" * 64,
        ndcg={"torch": ndcg, "onnxruntime": ndcg + 1e-4},
        hit={"torch": 2 * ndcg, "onnxruntime": 2 * ndcg}, ndcg_delta=1e-4, hit_delta=0.0,
        top10_agreement=1.0, top10_mean_overlap=1.0, max_abs_score_diff=0.0, users=10,
        seconds={}, thresholds={}, passed=passed, failures=[] if passed else ["made up"])
    return ParityRecord(method, bits, "int8", "model_int8.pt", "0" * 64, "data", None, "test",
                        "all", 1, None, graph)


def timing(model: str, batch: int, threads: int, median: float) -> Timing:
    return Timing(model=model, kind="x", run=None, method="x", bits=8, batch=batch,
                  threads=threads, median_ms=median, p90_ms=median * 1.1, min_ms=median,
                  repeats=3, ratio_to_fp32=None)


def described(model: str, method: str, onnx_bytes: int) -> TimedModel:
    return TimedModel(model=model, kind="ort_ptq", run="runs/fp32", method=method, bits=8,
                      source="made up", onnx_bytes=onnx_bytes, onnx_sha256="1" * 64,
                      onnx_file=None, model_file="checkpoint.pt", model_sha256="2" * 64)


def bench_record(records: list[Timing], quality: list[Quality],
                 models: list[TimedModel]) -> BenchRecord:
    setup = BenchSetup(
        runs=[], data="d", split="test", test_users=10, num_items=20, max_len=10,
        batches=[1, 256], threads=[1, 2], repeats=3, warmup=0, baselines=True,
        baseline_source=None, calibration_users=16, sweep_hidden=[], fused=True,
        int8_fast=False, torch_int8=False, onnxruntime={}, inputs="", schedule="", timer="",
        torch_eager="", sweep_quantization="")
    return BenchRecord(machine={}, settings=setup, models=models, baselines=[], records=records,
                       quality=quality, sweep=[], notes=[])


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def test_summary_rows_csv_and_figure(tmp_path):
    runs = [RunResult("fp32", "fp32", 32, parity("fp32", 32, 0.15)),
            RunResult("ste_w8", "ste", 8, parity("ste", 8, 0.14, passed=False)),
            RunResult("lsq_w4", "lsq", 4, None)]  # not exported: empty cells, no crash
    records = [timing("fp32", 1, 1, 9.0), timing("fp32", 1, 2, 4.0), timing("fp32", 256, 2, 80.0),
               timing("ste_w8", 1, 2, 2.0), timing("ste_w8", 256, 2, 20.0),
               timing("ste_w8_fused", 1, 2, 1.0),
               timing("ort_quantize_dynamic", 1, 2, 8.0),
               timing("torch_eager_fp32", 1, 2, 16.0)]  # not an ONNX deployment: no row
    quality = [Quality(model="ort_quantize_dynamic", kind="ort_ptq", ndcg=0.12, hit=0.25,
                       users=10, source="computed (onnxruntime)"),
               Quality(model="ste_w8_fused", kind="onnx_int8_fused", ndcg=0.14, hit=0.3,
                       users=10, source="computed", top10_agreement=1.0, ndcg_delta=0.0,
                       parity_passed=True)]
    models = [described("ort_quantize_dynamic", "quantize_dynamic", 600),
              described("ste_w8_fused", "ste", 900)]
    bench = bench_record(records, quality, models)
    rows = summary_rows(runs, bench, batches=[1, 256], threads=2)
    assert [r["model"] for r in rows] == ["fp32", "ste_w8", "ste_w8_fused", "lsq_w4",
                                          "ort_quantize_dynamic"]
    fp32, ste, fused, lsq, dynamic = rows
    assert ste["method"] == "ste" and ste["bits"] == 8 and ste["parity_passed"] is False
    assert ste["ndcg@10_onnxruntime"] == pytest.approx(0.1401) and ste["onnx_bytes"] == 1008
    assert (fp32["latency_b1_ms"], fp32["latency_b256_ms"]) == (4.0, 80.0)  # the 2-thread ones
    assert (ste["speedup_b1"], ste["speedup_b256"]) == (2.0, 4.0)
    assert fp32["speedup_b1"] == 1.0
    assert (fused["method"], fused["bits"], fused["parity_passed"]) == ("ste", 8, True)
    assert (fused["ndcg@10_onnxruntime"], fused["hit@10_onnxruntime"]) == (0.14, 0.3)
    assert fused["ndcg@10_torch"] is None and fused["onnx_bytes"] == 900
    assert fused["speedup_b1"] == 4.0 and fused["latency_b256_ms"] is None
    assert lsq["ndcg@10_torch"] is None and lsq["latency_b1_ms"] is None
    assert lsq["speedup_b1"] is None
    assert dynamic["method"] == "quantize_dynamic" and dynamic["ndcg@10_onnxruntime"] == 0.12
    assert dynamic["ndcg@10_torch"] is None and dynamic["speedup_b1"] == 0.5
    assert dynamic["onnx_bytes"] == 600 and dynamic["bits"] == 8
    assert dynamic["latency_b256_ms"] is None and dynamic["speedup_b256"] is None

    path = tmp_path / "summary.csv"
    write_summary_csv(rows, path, batches=[1, 256])
    columns, table = read_csv(path)
    assert columns == summary_columns([1, 256]) == [
        "model", "method", "bits", "ndcg@10_torch", "hit@10_torch", "ndcg@10_onnxruntime",
        "hit@10_onnxruntime", "parity_passed", "onnx_bytes", "latency_b1_ms", "latency_b256_ms",
        "speedup_b1", "speedup_b256"]
    assert table[1]["parity_passed"] == "False" and table[1]["speedup_b256"] == "4"
    assert table[3]["ndcg@10_torch"] == "" and table[4]["parity_passed"] == ""

    png = tmp_path / "figure.png"
    plot_comparison(rows, png, batches=[1, 256], threads=2)
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png", "summary.csv"]  # no .tmp


def test_summary_without_a_bench_record_has_empty_latency_and_no_extra_rows():
    runs = [RunResult("fp32", "fp32", 32, parity("fp32", 32, 0.15))]
    [row] = summary_rows(runs, None, batches=[1], threads=1)
    assert row["ndcg@10_torch"] == 0.15 and row["latency_b1_ms"] is None
    assert row["speedup_b1"] is None
    # a baseline measured but not timed still gets its row; one neither timed nor measured not
    quality = [Quality(model="ort_quantize_static", kind="ort_ptq", ndcg=0.1, hit=0.2, users=10,
                       source="computed (onnxruntime)")]
    rows = summary_rows(runs, bench_record([], quality, []), batches=[1], threads=1)
    assert [r["model"] for r in rows] == ["fp32", "ort_quantize_static"]
    assert (rows[1]["method"], rows[1]["bits"], rows[1]["onnx_bytes"]) == (
        "quantize_static", 8, None)

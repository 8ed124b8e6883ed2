"""Export a run folder's model to ONNX, score it in onnxruntime, and record the parity.

    result = export_run("runs/lsq", fused=True)     # writes the ONNX file(s) and parity.json
    print_parity(result)

A QAT run folder (``model_int8.pt``) gives ``model_int8.onnx`` (and with ``fused``
``model_int8_fused.onnx``: the same model with the fused custom-op kernels of export/native);
an FP32 run folder gives ``model_fp32.onnx``. Each graph scores the test users (full ranking)
and is compared with the torch model (``export.parity.check_parity``); ``parity.json``
(``ParityRecord``) names the exported model file and each ONNX file by sha256.

Everything is computed in memory first: bad input raises before any file is written, and the
ONNX files and parity.json are written together (an ONNX file never lies there without the
record that describes it).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import onnx

from data import LeaveOneOutSplit
from export import native_ops
from export.onnx_file import save_onnx
from export.parity import ParityReport, check_parity
from export.parity_record import GraphParity, ParityRecord
from export.run_folder import (
    PARITY,
    RunModel,
    load_run,
    load_run_split,
    onnx_file_name,
    recorded_fingerprint,
)
from export.runtime import make_session
from export.sasrec_graph import build_sasrec_onnx
from qat.records import file_sha256

WHICH = "test"
FUSED_KIND = "int8_fused"  # model_int8_fused.onnx
SATURATION_SAFE = 64  # 2 * 255 * 64 <= 32767: exact in vpmaddubsw's int16 pairs


@dataclass
class ExportResult:
    """What ``export_run`` wrote: the run, its parity record and the reports behind it."""

    run: RunModel
    record: ParityRecord
    report: ParityReport
    fused_report: ParityReport | None = None


def _export_one(run: RunModel, split: LeaveOneOutSplit, *, fused: bool, top_k: int | None,
                threads: int, batch_size: int,
                optimization: str) -> tuple[onnx.ModelProto, ParityReport]:
    """Build one graph of ``run`` (exact or fused) and compare it with the torch model."""
    meta = {"sasrec_qat.method": run.method, "sasrec_qat.bits": run.bits}
    onnx_model = build_sasrec_onnx(run.model, top_k=top_k, metadata=meta, fused=fused)
    session = make_session(onnx_model.SerializeToString(), threads=threads,
                           optimization=optimization)
    hidden_session = None
    if run.kind == "int8":
        hidden_session = make_session(
            build_sasrec_onnx(run.model, hidden_output=True, metadata=meta, fused=fused),
            threads=threads, optimization=optimization)
    report = check_parity(run.model, session, split, WHICH, batch_size=batch_size,
                          hidden_session=hidden_session)
    return onnx_model, report


def export_run(run_dir: str | Path, *, data: str | None = None, cache_dir: Path | None = None,
               mirror: str | None = None, threads: int = 0, batch_size: int = 256,
               top_k: int | None = None, fused: bool = False,
               optimization: str = "all") -> ExportResult:
    """Export ``run_dir``'s model, check its parity, write the ONNX file(s) and parity.json.

    Args:
        run_dir: a ``scripts/train_qat.py`` run folder.
        data: dataset for the parity check (default: the one in ``config.json``); its
            fingerprint must match the run's.
        cache_dir, mirror: for a dataset name (``data.load_dataset``).
        threads: onnxruntime intra-op threads (0 = library default).
        batch_size: users per evaluation batch.
        top_k: also output the ``top_k`` best item ids and scores.
        fused: INT8 runs: also write and check the fused-kernel graph.
        optimization: onnxruntime graph optimisation level of the parity sessions.

    Raises:
        FileNotFoundError, ValueError: unusable run folder or data (nothing is written).
        export.native_ops.NativeBuildError: ``fused`` without a working C++ compiler.
        OSError: the folder cannot be written (no ONNX file is left without its record).
    """
    if threads < 0 or batch_size < 1:
        raise ValueError("--threads must be >= 0 and --batch-size >= 1")
    run = load_run(run_dir)
    if fused and run.kind != "int8":
        raise ValueError(f"--fused applies to INT8 runs; {run_dir} is an FP32 run")
    if fused:
        native_ops.library_path()  # a missing compiler is bad input: fail before the work
    dataset, split = load_run_split(run_dir, run.model.config.num_items, data,
                                    cache_dir=cache_dir, mirror=mirror)
    settings = dict(top_k=top_k, threads=threads, batch_size=batch_size,
                    optimization=optimization)
    graphs = [(run.onnx_path, *_export_one(run, split, fused=False, **settings))]
    if fused:
        graphs.append((run.run_dir / onnx_file_name(FUSED_KIND),
                       *_export_one(run, split, fused=True, **settings)))
    props = {p.key: p.value for p in graphs[0][1].metadata_props}
    max_weight = props.get("sasrec_qat.max_abs_weight_int")
    records = _write(graphs)
    record = ParityRecord(
        method=run.method, bits=run.bits, kind=run.kind, model_file=run.model_path.name,
        model_sha256=file_sha256(run.model_path), dataset=str(dataset),
        data_fingerprint=recorded_fingerprint(run.run_dir), split=WHICH,
        optimization=optimization, threads=threads,
        max_abs_weight_int=None if max_weight is None else int(max_weight),
        graph=records[0], fused=records[1] if fused else None)
    try:
        record.save(run.run_dir / PARITY)
    except BaseException:
        for path, _, _ in graphs:  # no ONNX file without its parity record
            path.unlink(missing_ok=True)
        raise
    return ExportResult(run, record, graphs[0][2], graphs[1][2] if fused else None)


def _write(graphs: list[tuple[Path, onnx.ModelProto, ParityReport]]) -> list[GraphParity]:
    """Write each graph; its record holds the sha256 of the bytes on disk."""
    records = []
    try:
        for path, model, report in graphs:
            size = save_onnx(model, path)
            records.append(GraphParity.of(report, onnx_file=path.name, onnx_bytes=size,
                                          onnx_sha256=file_sha256(path)))
    except BaseException:
        for path, _, _ in graphs:
            path.unlink(missing_ok=True)
        raise
    return records


def print_parity(result: ExportResult) -> None:
    """The parity table(s) on stdout; a saturation note on stderr when weights exceed 64."""
    record = result.record
    print(f"{record.graph.onnx_file}: {record.method}, {record.bits}-bit weights, "
          f"{record.graph.onnx_bytes:,} bytes; {result.report.users} {WHICH} users")
    _print_report(result.report)
    if record.fused is not None and result.fused_report is not None:
        print(f"\n{record.fused.onnx_file}: fused kernels, {record.fused.onnx_bytes:,} bytes")
        _print_report(result.fused_report)
    if (record.max_abs_weight_int or 0) > SATURATION_SAFE:
        print(f"note: integer weights reach {record.max_abs_weight_int} > {SATURATION_SAFE}; "
              "u8 x s8 kernels can saturate on AVX2 CPUs without VNNI", file=sys.stderr)


def _print_report(report: ParityReport) -> None:
    print(f"{'':18s}{'torch':>10s}{'onnxruntime':>13s}{'|delta|':>10s}")
    for name, pair, delta in (("nDCG@10", report.ndcg, report.ndcg_delta),
                              ("Hit@10", report.hit, report.hit_delta)):
        print(f"{name:18s}{pair['torch']:10.4f}{pair['onnxruntime']:13.4f}{delta:10.4f}")
    print(f"top-10 agreement  {report.top10_agreement:.4f} (mean overlap "
          f"{report.top10_mean_overlap:.4f}); max |score diff| {report.max_abs_score_diff:.3g}")
    if report.hidden_steps is not None:
        h = report.hidden_steps
        print(f"final hidden      max {h['max']} step(s), {100 * h['fraction_differing']:.3f}% "
              "of elements differ")
    print("parity: PASSED" if report.passed else "parity: FAILED (" + "; ".join(report.failures)
          + ")")

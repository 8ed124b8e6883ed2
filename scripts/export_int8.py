#!/usr/bin/env python
"""Export a run folder's model to ONNX, run it in onnxruntime and check parity with torch.

Examples:
    python scripts/export_int8.py --run runs/lsq             # QAT run -> runs/lsq/model_int8.onnx
    python scripts/export_int8.py --run runs/fp32 --threads 2  # FP32 run -> model_fp32.onnx

A QAT run folder (with model_int8.pt) gives DIR/model_int8.onnx, an FP32 run folder
DIR/model_fp32.onnx. Both models score the test users (full ranking, qat.evaluate) and
DIR/parity.json records nDCG@10/Hit@10 of torch and onnxruntime, top-10 agreement, the largest
score difference, and the file's size and sha256 ("onnx_bytes", "onnx_sha256": the sha256 of the
file as written is what scripts/benchmark.py matches before it reuses these numbers; two graphs
of one architecture have the same size).

--fused (INT8 runs): also write DIR/model_int8_fused.onnx, the same model with the fused
custom-op kernels (export/native: the same uint8 results, several times faster in onnxruntime;
it loads only where the kernels' library is registered, as export.make_session does), check its
parity the same way and record it (with its own "onnx_sha256") in parity.json under "fused".
Builds the kernels with the machine's C++ compiler the first time.

Exit status: 0 parity passed; 1 parity failed (|delta nDCG@10| or |delta Hit@10| > 0.002, or
top-10 agreement < 0.99; the files are still written); 2 bad input (nothing is written).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch

from data import LeaveOneOutSplit
from export import (
    OPTIMIZATION_LEVELS,
    ParityReport,
    RunModel,
    build_sasrec_onnx,
    check_parity,
    load_run,
    make_session,
    native_ops,
    save_onnx,
)
from export.onnx_file import file_sha256
from export.run_folder import PARITY, load_run_split, onnx_file_name
from qat.checkpoint import save_json
from qat.cli import ArgumentParser, run_cli
from qat.quantize import ignore_torch_quantization_warnings

WHICH = "test"
FUSED_KIND = "int8_fused"  # model_int8_fused.onnx
SATURATION_SAFE = 64  # 2 * 255 * 64 <= 32767: exact in vpmaddubsw's int16 pairs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, metavar="DIR",
                   help="a train_qat.py run folder (QAT: model_int8.pt; FP32: checkpoint.pt)")
    p.add_argument("--data", default=None, metavar="PATH_OR_NAME",
                   help="dataset for the parity check (default: the one in DIR/config.json)")
    p.add_argument("--mirror", default=None, metavar="URL",
                   help="download a named dataset from this URL (as train_qat.py --mirror)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="download cache for named datasets (default $SASREC_QAT_CACHE or "
                        "~/.cache/sasrec-qat)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch and onnxruntime intra-op threads (0 = library default)")
    p.add_argument("--batch-size", type=int, default=256, help="users per evaluation batch")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="also output the K best item ids (top_k_items) and scores")
    p.add_argument("--fused", action="store_true",
                   help="INT8 runs: also write model_int8_fused.onnx (fused custom-op kernels) "
                        "and check its parity")
    p.add_argument("--optimization", choices=list(OPTIMIZATION_LEVELS), default="all",
                   help="onnxruntime graph optimisation level for the parity run (default all)")
    return p.parse_args(argv)


@dataclass
class Export:
    """What main writes: the graph(s), their parity reports and the parity.json record (its
    ``onnx_sha256`` fields are None until main has written the files and hashed them)."""

    run: RunModel
    onnx_model: onnx.ModelProto
    report: ParityReport
    record: dict[str, Any]
    fused_model: onnx.ModelProto | None = None
    fused_report: ParityReport | None = None


def _export_one(run: RunModel, split: LeaveOneOutSplit, args: argparse.Namespace,
                fused: bool) -> tuple[onnx.ModelProto, ParityReport]:
    """Build one graph of ``run`` (exact or fused) and compare it with the torch model."""
    meta = {"sasrec_qat.method": run.method, "sasrec_qat.bits": run.bits}
    onnx_model = build_sasrec_onnx(run.model, top_k=args.top_k, metadata=meta, fused=fused)
    session = make_session(onnx_model.SerializeToString(), threads=args.threads,
                           optimization=args.optimization)
    hidden_session = None
    if run.kind == "int8":
        hidden_session = make_session(
            build_sasrec_onnx(run.model, hidden_output=True, metadata=meta, fused=fused),
            threads=args.threads, optimization=args.optimization)
    report = check_parity(run.model, session, split, WHICH, batch_size=args.batch_size,
                          hidden_session=hidden_session)
    return onnx_model, report


def export_and_check(args: argparse.Namespace) -> Export:
    """Load, export and compare, in memory (nothing is written). Raises on bad input."""
    if args.threads < 0 or args.batch_size < 1:
        raise ValueError("--threads must be >= 0 and --batch-size >= 1")
    run = load_run(args.run)
    if args.fused and run.kind != "int8":
        raise ValueError(f"--fused applies to INT8 runs; {args.run} is an FP32 run")
    if args.fused:
        native_ops.library_path()  # a missing compiler is bad input: fail before the work
    data, split = load_run_split(args.run, run.model.config.num_items, args.data,
                                 cache_dir=args.cache_dir, mirror=args.mirror)
    onnx_model, report = _export_one(run, split, args, fused=False)
    props = {p.key: p.value for p in onnx_model.metadata_props}
    max_weight = props.get("sasrec_qat.max_abs_weight_int")
    record = {
        "method": run.method, "bits": run.bits, "kind": run.kind,
        "onnx_file": run.onnx_path.name, "onnx_bytes": onnx_model.ByteSize(),
        "onnx_sha256": None,  # main hashes the file it writes
        "dataset": str(data), "split": WHICH, "optimization": args.optimization,
        "threads": args.threads,
        "max_abs_weight_int": None if max_weight is None else int(max_weight),
        **report.to_dict(),
    }
    result = Export(run, onnx_model, report, record)
    if args.fused:
        result.fused_model, result.fused_report = _export_one(run, split, args, fused=True)
        record["fused"] = {"onnx_file": onnx_file_name(FUSED_KIND),
                           "onnx_bytes": result.fused_model.ByteSize(), "onnx_sha256": None,
                           **result.fused_report.to_dict()}
    return result


def print_table(record: dict[str, Any], report: ParityReport,
                fused_report: ParityReport | None = None) -> None:
    print(f"{record['onnx_file']}: {record['method']}, {record['bits']}-bit weights, "
          f"{record['onnx_bytes']:,} bytes; {report.users} {WHICH} users")
    _print_report(record, report)
    if fused_report is not None:
        fused = record["fused"]
        print(f"\n{fused['onnx_file']}: fused kernels, {fused['onnx_bytes']:,} bytes")
        _print_report(record, fused_report)


def _print_report(record: dict[str, Any], report: ParityReport) -> None:
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
    if (record["max_abs_weight_int"] or 0) > SATURATION_SAFE:
        print(f"note: integer weights reach {record['max_abs_weight_int']} > {SATURATION_SAFE}; "
              "u8 x s8 kernels can saturate on AVX2 CPUs without VNNI", file=sys.stderr)
    print("parity: PASSED" if report.passed else "parity: FAILED (" + "; ".join(report.failures)
          + ")")


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 parity passed, 1 parity failed (files written), 2 bad input (one
    ``error:`` line)."""
    return run_cli(_main, argv, extra=(native_ops.NativeBuildError,))


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    ignore_torch_quantization_warnings()
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0 (0 = library default), got {args.threads}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    done = export_and_check(args)
    run = done.run
    # (graph, file, the record that describes it); each record names its file's sha256
    written = [(done.onnx_model, run.onnx_path, done.record)]
    if done.fused_model is not None:
        written.append((done.fused_model, run.run_dir / onnx_file_name(FUSED_KIND),
                        done.record["fused"]))
    try:
        try:
            for model, path, record in written:
                save_onnx(model, path)
                record["onnx_sha256"] = file_sha256(path)  # of the bytes on disk
            save_json(done.record, run.run_dir / PARITY)
        except BaseException:
            for _, path, _ in written:  # no ONNX file without its parity record
                path.unlink(missing_ok=True)
            raise
    except OSError as err:
        raise OSError(f"cannot write to {run.run_dir}: {err}") from err
    print_table(done.record, done.report, done.fused_report)
    passed = done.report.passed and (done.fused_report is None or done.fused_report.passed)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Latency of exported SASRec models (INT8 vs FP32) in onnxruntime on the CPU, with PTQ baselines.

Examples:
    python scripts/benchmark.py --runs runs/fp32 runs/lsq --out bench.json
    python scripts/benchmark.py --runs runs/fp32 runs/lsq runs/ste --batches 1 256 --threads 1 2 \
        --repeats 100 --sweep-hidden 50 128 256 --out bench.json

What is measured: the wall-clock time of one onnxruntime ``session.run`` of every run folder's
ONNX model (DIR/model_int8.onnx or DIR/model_fp32.onnx; built in memory from the run's model when
the file is missing) on a batch of real test-user sequences (``item_seq`` (B, max_len), the last
max_len history items left-padded as in evaluation; batch 1 cycles through users), at every
--batches size and --threads count (intra-op threads; one inter-op thread, sequential execution,
full graph optimisation). After --warmup untimed rounds, --repeats rounds each time one call of
every model, in a rotated order, on the same batch, so machine drift hits all models alike.
Reported: median and p90 in ms, and the ratio to the FP32 ONNX model in the same case.

Baselines (when an FP32 run is among --runs, unless --no-baselines), timed in the same loop:
``torch_eager_fp32`` (``model.score_last`` under ``torch.inference_mode``,
``torch.set_num_threads(threads)``), ``ort_quantize_dynamic`` and ``ort_quantize_static``
(onnxruntime's post-training quantization of the FP32 graph, static calibrated on
--calibration-users training sequences; see export/ort_baselines.py). Test nDCG@10/Hit@10 (full
ranking) of every timed model: from DIR/parity.json when it was measured on the same dataset and
on this very ONNX file (its sha256 is parity.json's "onnx_sha256"; the size alone proves nothing,
two graphs of one architecture have the same), else computed with qat.evaluate.

Fused INT8 graphs (unless --no-fused): every INT8 run's graph with the fused custom-op kernels
(``build_sasrec_onnx(fused=True)``, export/native: the same uint8 results as the exact graph,
one pass per op), named ``<model>_fused``, built in memory; its parity with the torch INT8
model is measured and recorded in "quality". The sweep times a fused INT8 model too
(``sweep_int8_fused_d<D>``). Needs a C++ compiler the first time (export/native_ops.py); without
one the fused graphs are skipped with a note.

--int8-fast: also time every INT8 run's plain-op graph (``build_sasrec_onnx(torch_exact=False)``:
QuantizeLinear/LayerNormalization/QLinearAdd instead of the ops that round exactly like torch),
named ``<model>_fast``; its parity with the torch INT8 model (nDCG@10, Hit@10, top-10 agreement,
pass/fail at export/parity.py's thresholds) is measured and recorded in "quality".

--torch-int8: also time every INT8 run's converted torch model in eager mode
(``torch_eager_<model>``: torch's own fbgemm INT8 kernels, the reference the exact ONNX graph
reproduces).

--top-k K: also time the top-k serving graph of every run's FP32, INT8 and fused INT8 graph
(``build_sasrec_onnx(top_k=K)`` built in memory, named ``<model>_top_k``, the batch's history
masked and the K best selected in the graph), each INT8 one against the FP32 run's top-k graph.
They have no quality entry (their lists are the full graphs': parity.json's ``top_k``).

--sweep-hidden D...: for each width D, a randomly initialised SASRec (the runs' num_items and
max_len, the first run's blocks and heads) in FP32 and converted to INT8 the project's way (STE,
8 bits, calibrated on random sequences), both timed at every batch/threads case.

--items N...: for each catalogue size N, a random SASRec of N items (the first run's width,
depth, heads and max_len) in FP32 and INT8 (fused kernels, the scoring path the probe picks on
this machine, export/scoring_probe.py), each as the full-score graph and the top-k serving graph
(k = 10, history masked in the graph), timed on the test sequences with ids redrawn from the
catalogue; "catalogue" in bench.json, each INT8 graph's ratio against the FP32 graph of the same
kind (export/bench_catalogue.py).

Output: --out JSON, written atomically: a bench record (export/bench_record.py, schema 1) with
"machine", "settings", "models" (each run-derived model with the sha256 of the ONNX bytes timed
and of the run's model file), "baselines", "records", "quality", "sweep" and "notes". The harness
is export/bench.py (run_benchmark); this script is its command line.

Exit status: 0 done; 2 bad input, e.g. a run's model or ONNX file that cannot be loaded (one
"error: <file>: <reason>" line; nothing is written).
"""
from __future__ import annotations

import argparse
import sys

from export import native_ops
from export.bench import (
    DEFAULT_BATCHES,
    DEFAULT_CALIBRATION_USERS,
    DEFAULT_REPEATS,
    DEFAULT_THREADS,
    DEFAULT_WARMUP,
    BenchSettings,
    benchmark_to_file,
)
from qat.cli import ArgumentParser, path_arg, run_cli, threads_arg
from qat.quantize import ignore_torch_quantization_warnings


def _words(values: tuple[int, ...]) -> str:
    return " ".join(map(str, values))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (usage errors: one ``error:`` line, exit 2)."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=path_arg, nargs="+", required=True, metavar="RUN_DIR",
                   help="train_qat.py run folders (FP32: checkpoint.pt; QAT: model_int8.pt), "
                        "exported with export_int8.py or not")
    p.add_argument("--out", type=path_arg, required=True, help="JSON file to write")
    p.add_argument("--batches", type=int, nargs="+", default=list(DEFAULT_BATCHES), metavar="B",
                   help=f"batch sizes (default {_words(DEFAULT_BATCHES)})")
    p.add_argument("--threads", type=threads_arg, nargs="+", default=list(DEFAULT_THREADS),
                   metavar="N",
                   help=f"intra-op thread counts (default {_words(DEFAULT_THREADS)})")
    p.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                   help="timed calls per model and case (default %(default)s)")
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                   help="untimed calls per model and case first (default %(default)s)")
    p.add_argument("--data", default=None, metavar="PATH_OR_NAME",
                   help="dataset (default: the one in the first run's config.json)")
    p.add_argument("--mirror", default=None, metavar="URL",
                   help="download a named dataset from this URL (as train_qat.py --mirror)")
    p.add_argument("--cache-dir", type=path_arg, default=None,
                   help="download cache for named datasets")
    p.add_argument("--no-baselines", dest="baselines", action="store_false",
                   help="skip torch eager and onnxruntime PTQ baselines")
    p.add_argument("--calibration-users", type=int, default=DEFAULT_CALIBRATION_USERS,
                   help="training sequences calibrating ort quantize_static (default "
                        "%(default)s)")
    p.add_argument("--no-fused", dest="fused", action="store_false",
                   help="skip the INT8 graphs with fused custom-op kernels (timed by default)")
    p.add_argument("--int8-fast", action="store_true",
                   help="also time each INT8 run's plain-op graph (not bit-exact with torch) "
                        "and measure its parity")
    p.add_argument("--torch-int8", action="store_true",
                   help="also time each INT8 run's converted torch model (eager, fbgemm)")
    p.add_argument("--items", type=int, nargs="+", default=[], metavar="N",
                   help="also time random FP32/INT8 models of N items (e.g. 20000 100000), "
                        "full-score and top-k graphs: how latency scales with the catalogue")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="also time every run's top-k serving graph (k = K, history masked in "
                        "the graph): FP32, INT8 and fused INT8, each against the FP32 run's")
    p.add_argument("--sweep-hidden", type=int, nargs="+", default=[], metavar="D",
                   help="also time random FP32/INT8 SASRec at these hidden sizes")
    p.add_argument("--ort-spinning", action="store_true",
                   help="let onnxruntime worker threads spin between runs (its default; off "
                        "here because interleaved sessions would compete with spinning workers)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with one ``error:`` line for bad input)."""
    return run_cli(_main, argv, extra=(native_ops.NativeBuildError,))


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    ignore_torch_quantization_warnings()
    settings = BenchSettings(
        runs=args.runs, batches=args.batches, threads=args.threads, repeats=args.repeats,
        warmup=args.warmup, data=args.data, mirror=args.mirror, cache_dir=args.cache_dir,
        baselines=args.baselines, calibration_users=args.calibration_users, fused=args.fused,
        int8_fast=args.int8_fast, torch_int8=args.torch_int8, sweep_hidden=args.sweep_hidden,
        sweep_items=args.items, top_k=args.top_k, ort_spinning=args.ort_spinning)
    benchmark_to_file(settings, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

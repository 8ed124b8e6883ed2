#!/usr/bin/env python
"""The whole study in one command: train FP32 and every QAT method, export, check, benchmark.

Reproduce the README results (MovieLens-1M, max length 50, 8- and 4-bit weights):
    python scripts/run_all.py --data ml-1m --out runs/all --max-len 50 --bits 8 4 --threads 1

Steps, each a subprocess of a scripts/ entry point whose output goes to the console and to
OUT/logs/<step>.log:
  1. train fp32          train_qat.py --qconfig fp32 --out OUT/fp32
  2. train <M>_w<B>      train_qat.py --qconfig M --bits B --init-from OUT/fp32 --out OUT/<M>_w<B>
                         (for every --methods M and --bits B; --qat-epochs is its --epochs)
  3. export <run>        export_int8.py --run OUT/<run>: ONNX file + parity.json per run folder
  4. benchmark           benchmark.py --runs OUT/fp32 OUT/<M>_w<B>... --out OUT/bench.json
                         (also times each INT8 run's fused-kernel graph, <M>_w<B>_fused)
  5. summary             OUT/results_summary.csv and OUT/results_comparison.png (always rewritten;
                         a fused graph's row follows its run's)

Rerunning the same command skips what is finished: a training run whose metrics.json holds test
results (and, for QAT, the INT8 model), an export whose parity.json describes the model file and
its ONNX files as they are, and a bench.json that timed every run's current files (all matched by
sha256, not modification time) at every batch size and thread count, made with the same
--bench-repeats (and with baselines unless --no-baselines) on this CPU. A
run folder with checkpoint.pt but no final metrics (an interrupted run) is continued with
--resume. A finished training run is never retrained: delete its folder to redo it. A finished
run of another dataset (config.json's fingerprint), of another --max-len/--hidden/--blocks/
--heads/--seed/--batch-size than given, or a QAT run fine-tuned from another FP32 checkpoint
than OUT/fp32's stops the pipeline with an error instead of being reported as this
command's.

Exit status: 0 every step done (an export whose parity check failed is reported, marked
parity_passed=False in the CSV, and does not stop the pipeline); 2 bad arguments or a failed
step (one ``error:`` line naming the step, its own error line and its log; fix the cause and
rerun the same command to resume); 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.pipeline import QAT_METHODS, PipelineSettings, run_pipeline
from qat.cli import ArgumentParser, folder_arg, run_cli, seed_arg, threads_arg
from qat.quantize import ignore_torch_quantization_warnings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; an impossible combination (e.g. apot --bits 6) exits 2 at once."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="PATH_OR_NAME",
                   help="dataset for every step (ml-1m, or a file: see train_qat.py --help)")
    p.add_argument("--mirror", default=None, metavar="URL",
                   help="download a named dataset from this URL (train_qat.py --mirror)")
    p.add_argument("--out", type=folder_arg, default=Path("runs/all"),
                   help="study folder: one run folder per model, logs/, bench.json, summary "
                        "(default runs/all)")
    p.add_argument("--methods", nargs="+", choices=QAT_METHODS, default=QAT_METHODS,
                   metavar="METHOD",
                   help="QAT methods to train (default all: " + " ".join(QAT_METHODS) + ")")
    p.add_argument("--bits", nargs="+", type=int, default=[8],
                   help="weight bits, one QAT run per method and value (default 8)")
    train = p.add_argument_group(
        "model and training (default: train_qat.py's own default; the architecture flags go to "
        "the FP32 run, QAT runs inherit its architecture)")
    train.add_argument("--columns", default=None, metavar="USER,ITEM,TIMESTAMP",
                       help="train_qat.py --columns: the user, item and timestamp columns of a "
                            "CSV/TSV/parquet log")
    train.add_argument("--min-user-interactions", type=int, default=None, metavar="N",
                       help="train_qat.py --min-user-interactions (1)")
    train.add_argument("--max-len", type=int, help="longest history the model reads (200)")
    train.add_argument("--hidden", type=int, help="embedding/hidden width d (50)")
    train.add_argument("--blocks", type=int, help="self-attention blocks (2)")
    train.add_argument("--heads", type=int, help="attention heads (1)")
    train.add_argument("--epochs", type=int, help="maximum FP32 epochs (200)")
    train.add_argument("--qat-epochs", type=int, help="maximum QAT fine-tuning epochs (30)")
    train.add_argument("--patience", type=int,
                       help="early-stopping patience of every training run (20 FP32, 5 QAT)")
    train.add_argument("--batch-size", type=int, help="users per training batch (128)")
    train.add_argument("--seed", type=seed_arg, help="random seed of every training run (42)")
    train.add_argument("--device", default=None,
                       help="training device of every run: auto (CUDA when available; the "
                            "default), cpu, cuda, cuda:N; export, parity and latency stay on "
                            "the CPU")
    train.add_argument("--threads", type=threads_arg,
                       help="torch/onnxruntime threads for training, evaluation and the parity "
                            "check (library default)")
    bench = p.add_argument_group("benchmark and summary")
    bench.add_argument("--bench-batches", nargs="+", type=int, default=[1, 256], metavar="B",
                       help="batch sizes to time (default 1 256)")
    bench.add_argument("--bench-threads", nargs="+", type=threads_arg, default=[1, 2], metavar="T",
                       help="onnxruntime intra-op thread counts to time (default 1 2)")
    bench.add_argument("--bench-repeats", type=int, default=100, metavar="N",
                       help="timed runs per model, batch size and thread count (default 100)")
    bench.add_argument("--no-baselines", action="store_true",
                       help="do not benchmark torch eager FP32 and onnxruntime "
                            "quantize_dynamic/quantize_static")
    bench.add_argument("--int8-fast", action="store_true",
                       help="benchmark.py --int8-fast: also time each INT8 run's plain-op "
                            "graph (not bit-exact) and record its parity")
    bench.add_argument("--torch-int8", action="store_true",
                       help="benchmark.py --torch-int8: also time the converted torch models")
    bench.add_argument("--sweep-hidden", nargs="+", type=int, default=[], metavar="D",
                       help="benchmark.py --sweep-hidden: INT8/FP32 latency of random models "
                            "of these widths")
    bench.add_argument("--bench-top-k", type=int, default=None, metavar="K",
                       help="benchmark.py --top-k: also time every run's top-k serving graph "
                            "(k = K, history masked in the graph)")
    bench.add_argument("--summary-threads", type=int, default=None, metavar="T",
                       help="thread count whose latencies the summary shows (default the largest "
                            "--bench-threads)")
    shown = p.add_argument_group("console")
    shown.add_argument("--quiet", action="store_true",
                       help="write the steps' output only to OUT/logs/, not to the console")
    shown.add_argument("--no-progress", dest="progress", action="store_false",
                       help="hide the progress bar over the steps")
    args = p.parse_args(argv)
    try:
        settings_from_args(args)  # PipelineSettings validates: one usage error line, exit 2
    except ValueError as err:
        p.error(str(err))
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    ignore_torch_quantization_warnings()  # reading INT8 runs to check bench.json repeats them
    settings = settings_from_args(parse_args(argv))
    settings.out.mkdir(parents=True, exist_ok=True)
    return run_pipeline(settings)


def settings_from_args(args: argparse.Namespace) -> PipelineSettings:
    """The flags as ``PipelineSettings`` (which validates them: ``ValueError``, exit 2)."""
    return PipelineSettings(**vars(args))


if __name__ == "__main__":
    sys.exit(main())

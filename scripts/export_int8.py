#!/usr/bin/env python
"""Export a run folder's model to ONNX, run it in onnxruntime and check parity with torch.

Examples:
    python scripts/export_int8.py --run runs/lsq             # QAT run -> runs/lsq/model_int8.onnx
    python scripts/export_int8.py --run runs/fp32 --threads 2  # FP32 run -> model_fp32.onnx

A QAT run folder (with model_int8.pt) gives DIR/model_int8.onnx, an FP32 run folder
DIR/model_fp32.onnx. Both models score the test users (full ranking, qat.evaluate) and
DIR/parity.json (export.parity_record.ParityRecord) records nDCG@10/Hit@10 of torch and
onnxruntime, top-10 agreement, the largest score difference, the file's size and sha256 (what
scripts/benchmark.py matches before it reuses these numbers; two graphs of one architecture have
the same size) and the sha256 of the model file exported.

--fused (INT8 runs): also write DIR/model_int8_fused.onnx, the same model with the fused
custom-op kernels (export/native: the same uint8 results, several times faster in onnxruntime;
it loads only where the kernels' library is registered, as export.make_session does), check its
parity the same way and record it (with its own sha256) in parity.json under "fused".
Builds the kernels with the machine's C++ compiler the first time.

Beside each full-score graph goes its top-k serving graph (DIR/model_<kind>_top_k.onnx,
model_int8_fused_top_k.onnx): inputs item_seq, exclude (ids never to recommend, e.g. the rest
of a long history) and k (default --top-k), outputs top_k_items and top_k_scores, the history
masked inside the graph; its lists are checked against the full graph's ranked scores
("top_k" in parity.json). INT8 graphs take the scoring path that --scoring names; auto (the
the backend default otherwise) times the paths on this machine (export/scoring_probe.py) and
records the choice in the graph's metadata.

Every graph carries the run's item id map (DIR/item_ids.json, or identity ids when the folder
has none) in its metadata, for scripts/recommend.py.

--eval-negatives N: also rank each test target against N sampled unseen items (the SASRec
paper's protocol; N = 100 there) with torch and onnxruntime, print the metrics beside the
full-ranking ones and record them in parity.json ("sampled" of each graph; not gated).

Exit status: 0 parity passed; 1 parity failed (|delta nDCG@10| or |delta Hit@10| > 0.002, or
top-10 agreement < 0.99; the files are still written); 2 bad input (nothing is written).
"""
from __future__ import annotations

import argparse
import sys

import torch

from export import OPTIMIZATION_LEVELS, native_ops
from export.export_run import export_run, print_parity
from export.sasrec_graph import SCORING_PATHS
from qat.cli import ArgumentParser, path_arg, run_cli, seed_arg, threads_arg
from qat.quantize import ignore_torch_quantization_warnings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=path_arg, required=True, metavar="DIR",
                   help="a train_qat.py run folder (QAT: model_int8.pt; FP32: checkpoint.pt)")
    p.add_argument("--data", default=None, metavar="PATH_OR_NAME",
                   help="dataset for the parity check (default: the one in DIR/config.json)")
    p.add_argument("--mirror", default=None, metavar="URL",
                   help="download a named dataset from this URL (as train_qat.py --mirror)")
    p.add_argument("--cache-dir", type=path_arg, default=None,
                   help="download cache for named datasets (default $SASREC_QAT_CACHE or "
                        "~/.cache/sasrec-qat)")
    p.add_argument("--threads", type=threads_arg, default=0,
                   help="torch and onnxruntime intra-op threads (0 = library default)")
    p.add_argument("--batch-size", type=int, default=256, help="users per evaluation batch")
    p.add_argument("--top-k", type=int, default=10, metavar="K",
                   help="default k of the top-k serving graphs written beside the full-score "
                        "ones (model_<kind>_top_k.onnx; k is also an input; default 10)")
    p.add_argument("--scoring", choices=["auto", *SCORING_PATHS], default=None,
                   help="INT8: how the item table is scored: auto times the paths on this "
                        "machine and takes the fastest that is never slower than float32 "
                        "scoring (recorded in the metadata); int8, float, or fused (the fused "
                        "graph); default: int8, fused for the fused graph (reproducible bytes)")
    p.add_argument("--fused", action="store_true",
                   help="INT8 runs: also write model_int8_fused.onnx (fused custom-op kernels) "
                        "and check its parity")
    p.add_argument("--optimization", choices=list(OPTIMIZATION_LEVELS), default="all",
                   help="onnxruntime graph optimisation level for the parity run (default all)")
    p.add_argument("--eval-negatives", type=int, default=0, metavar="N",
                   help="also compute the sampled metrics (target + N sampled negatives, the "
                        "paper's protocol) for torch and onnxruntime (default 0 = off)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="hide the progress bars of the evaluations (stderr)")
    p.add_argument("--eval-seed", type=seed_arg, default=0, metavar="SEED",
                   help="seed of the sampled negatives (default 0)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 parity passed, 1 parity failed (files written), 2 bad input (one
    ``error:`` line)."""
    return run_cli(_main, argv, extra=(native_ops.NativeBuildError,))


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    ignore_torch_quantization_warnings()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    result = export_run(args.run, data=args.data, cache_dir=args.cache_dir, mirror=args.mirror,
                        threads=args.threads, batch_size=args.batch_size, top_k=args.top_k,
                        scoring=args.scoring,
                        fused=args.fused, optimization=args.optimization,
                        eval_negatives=args.eval_negatives, eval_seed=args.eval_seed,
                        progress=args.progress)
    print_parity(result)
    if result.run.unfinished:
        print(f"note: {result.run.unfinished}", file=sys.stderr)
    return 0 if result.record.passed else 1


if __name__ == "__main__":
    sys.exit(main())

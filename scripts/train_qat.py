#!/usr/bin/env python
"""Train SASRec in FP32, or fine-tune it with quantization-aware training and convert to INT8.

Examples:
    python scripts/train_qat.py --qconfig fp32 --data ml-1m --out runs/fp32
    python scripts/train_qat.py --qconfig dorefa --init-from runs/fp32 --data ml-1m \
        --out runs/dorefa

On several processes (DDP; gloo on CPU, nccl on CUDA), the same command under torchrun:
    torchrun --nproc-per-node 2 scripts/train_qat.py --qconfig fp32 --data ml-1m --out runs/fp32

Writes OUT/checkpoint.pt, OUT/config.json, OUT/metrics.json and, for a QAT method,
OUT/model_int8.pt (the converted INT8 model) with its metrics under "int8" in metrics.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from qat import METHODS
from qat.cli import ArgumentParser, folder_arg, path_arg, run_cli, seed_arg, threads_arg
from qat.quantize import ignore_torch_quantization_warnings
from qat.config import LOSSES, NEGATIVE_SAMPLING
from qat.distributed import launched_by_torchrun
from qat.train_run import TrainRunOptions, train_run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--qconfig", default="fp32", choices=list(METHODS), metavar="METHOD",
                   help="one of: " + "; ".join(f"{m.name}: {m.description}"
                                               for m in METHODS.values()))
    p.add_argument("--bits", type=int, default=None,
                   help="weight bits for QAT methods (default 8: int8 storage; 4 for all "
                        "methods); not for --qconfig fp32")
    p.add_argument("--init-from", type=path_arg, default=None, metavar="FP32_RUN",
                   help="start from the best model of this fp32 run folder (architecture flags "
                        "then default to that run's); with a QAT method, the fine-tuning "
                        "defaults of --epochs, --patience and --lr apply")
    p.add_argument("--data", required=True,
                   help="dataset name (ml-1m, ml-20m: downloaded from GroupLens and cached) or "
                        "a path: a SASRec 'user item' text file, a ratings.dat or "
                        "ml-1m/ml-20m zip, or an interaction log .csv/.tsv/.parquet, also "
                        ".csv.gz/.tsv.gz (see --columns)")
    p.add_argument("--cache-dir", type=path_arg, default=None,
                   help="download cache (default $SASREC_QAT_CACHE or ~/.cache/sasrec-qat)")
    p.add_argument("--mirror", default=None, metavar="URL",
                   help="download a named dataset from this URL instead of GroupLens (the md5 "
                        "is still checked); http(s):// or file://")
    p.add_argument("--out", type=folder_arg, required=True, help="run folder to write")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    p.add_argument("--epochs", type=int, default=None,
                   help="maximum epochs (default 200; 30 for a QAT method with --init-from)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop after this many evaluations without a better valid nDCG@10 "
                        "(default 20; 5 for a QAT method with --init-from)")
    p.add_argument("--eval-every", type=int, default=1, help="epochs between validations")
    p.add_argument("--max-len", type=int, default=None,
                   help="longest history the model reads (default 200 for ML-1M; 50 is faster)")
    p.add_argument("--hidden", type=int, default=None, help="embedding/hidden width d (50)")
    p.add_argument("--blocks", type=int, default=None, help="self-attention blocks (2)")
    p.add_argument("--heads", type=int, default=None, help="attention heads (1)")
    p.add_argument("--dropout", type=float, default=None, help="dropout rate (0.2)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="users per optimizer step (128); under torchrun the global batch, split "
                        "evenly over the processes (a multiple of their number)")
    p.add_argument("--batch-size-per-rank", type=int, default=None, metavar="N",
                   help="under torchrun: N users per process per step instead of --batch-size "
                        "(global batch = N x processes)")
    p.add_argument("--device", default="auto",
                   help="training device: auto (CUDA when available, default), cpu, cuda, cuda:N. "
                        "Conversion and INT8 evaluation run on the CPU")
    p.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate of the model weights (1e-3; 1e-4 for a QAT method "
                        "with --init-from)")
    p.add_argument("--quant-lr", type=float, default=None,
                   help="learning rate of quantizer parameters (default per method)")
    p.add_argument("--loss", choices=list(LOSSES), default="ce",
                   help="ce: full softmax cross-entropy (default); bce: one sampled negative; "
                        "sampled-ce: softmax over the target and --negatives items sampled per "
                        "batch (for large catalogues)")
    p.add_argument("--negatives", type=int, default=None, metavar="N",
                   help="--loss sampled-ce: negatives per batch, shared by every position "
                        "(default 3000; uniform: at most the number of items)")
    p.add_argument("--negative-sampling", choices=list(NEGATIVE_SAMPLING), default=None,
                   help="--loss sampled-ce: uniform (default), or popularity: (count + 1)^0.75 "
                        "of the training sequences, with the logQ correction")
    p.add_argument("--seed", type=seed_arg, default=42, help="random seed (init, batches, dropout)")
    p.add_argument("--columns", default=None, metavar="USER,ITEM,TIMESTAMP",
                   help="CSV/TSV/parquet logs: the user, item and timestamp columns, by header "
                        "name or 0-based position (default: user,item,timestamp if the header "
                        "has them, else 0,1,2)")
    p.add_argument("--min-user-interactions", type=int, default=1, metavar="N",
                   help="drop users with fewer interactions (after dropping items with fewer "
                        "than 5); default 1 keeps everyone (users with 1-2 only train)")
    p.add_argument("--eval-negatives", type=int, default=0, metavar="N",
                   help="also report the paper's sampled metrics: the target ranked among N "
                        "sampled unseen items (100 in Kang & McAuley 2018); 0: off")
    p.add_argument("--threads", type=threads_arg, default=0,
                   help="torch intra-op threads (0 = torch default)")
    p.add_argument("--bucket", action="store_true",
                   help="batch users of similar length together and trim padding: 2-3x faster "
                        "epochs at max length 200, but it learned less per epoch on ML-1M "
                        "(README, Results: FP32); off by default")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="hide progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with one ``error:`` line for bad input)."""
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    ignore_torch_quantization_warnings()  # converting the QAT model repeats them
    metrics = train_run(TrainRunOptions(**vars(parse_args(argv)))).to_json()
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 reports
        return 0
    shown = ("valid", "test", "int8", "best_epoch", "epochs_run", "seconds_per_epoch",
             "peak_rss_mb")
    print(json.dumps({k: metrics[k] for k in shown if metrics.get(k) is not None}, indent=2))
    return 0


if __name__ == "__main__":
    status = main()
    if launched_by_torchrun():
        # A gloo worker thread kept alive by DDP (destroy_process_group does not stop it) can
        # still be releasing a tensor when Python finalizes, and C++ aborts the process
        # (SIGABRT in ~3% of torchrun runs, seen in a core dump). Everything is written and
        # flushed by now, so leave without finalizing.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)

#!/usr/bin/env python
"""Train SASRec in FP32 or with quantization-aware training.

Example:
    python scripts/train_qat.py --qconfig fp32 --data ml-1m --out runs/fp32

Writes OUT/checkpoint.pt, OUT/config.json and OUT/metrics.json (see qat/train.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from data import leave_one_out, load_dataset
from qat import METHODS, SASRec, SASRecConfig, Trainer, TrainConfig, get_method


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--qconfig", default="fp32", choices=list(METHODS),
                   help="quantization method: " + "; ".join(
                       f"{m.name}: {m.description}" for m in METHODS.values()))
    p.add_argument("--data", required=True,
                   help="dataset name (ml-1m: downloaded from GroupLens and cached) or a path to "
                        "a SASRec 'user item' text file, a ratings.dat or an ml-1m.zip")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="download cache (default $SASREC_QAT_CACHE or ~/.cache/sasrec-qat)")
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    p.add_argument("--epochs", type=int, default=200, help="maximum epochs (default 200)")
    p.add_argument("--patience", type=int, default=20,
                   help="stop after this many evaluations without a better valid nDCG@10")
    p.add_argument("--eval-every", type=int, default=1, help="epochs between validations")
    p.add_argument("--max-len", type=int, default=200,
                   help="longest history the model reads (200 for ML-1M; 50 is faster)")
    p.add_argument("--hidden", type=int, default=50, help="embedding/hidden width d")
    p.add_argument("--blocks", type=int, default=2, help="self-attention blocks")
    p.add_argument("--heads", type=int, default=1, help="attention heads")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout rate")
    p.add_argument("--batch-size", type=int, default=128, help="users per training batch")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--loss", choices=["ce", "bce"], default="ce",
                   help="ce: full softmax cross-entropy (default); bce: one sampled negative")
    p.add_argument("--seed", type=int, default=42, help="random seed (init, batches, dropout)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0 = torch default)")
    p.add_argument("--no-bucket", dest="bucket", action="store_false",
                   help="plain random batches padded to --max-len (slower, same model)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="hide progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        method = get_method(args.qconfig)
        train_config = TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, loss=args.loss,
            patience=args.patience, eval_every=args.eval_every, seed=args.seed,
            threads=args.threads, bucket=args.bucket, progress=args.progress)
        if args.threads:
            torch.set_num_threads(args.threads)
        dataset = load_dataset(args.data, cache_dir=args.cache_dir)
        split = leave_one_out(dataset)
        model_config = SASRecConfig(
            num_items=dataset.num_items, max_len=args.max_len, hidden=args.hidden,
            blocks=args.blocks, heads=args.heads, dropout=args.dropout)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if method.is_quantized:
        print(f"error: --qconfig {method.name} needs the QAT pipeline, which is not wired into "
              "this script yet", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    model = SASRec(model_config)
    print(f"{dataset.source}: {dataset.num_users} users, {dataset.num_items} items; "
          f"{sum(p.numel() for p in model.parameters()):,} parameters; "
          f"{torch.get_num_threads()} thread(s)", file=sys.stderr)
    trainer = Trainer(model, split, model_config, train_config, args.out, method=method.name,
                      run_info={"data": str(dataset.source)})
    try:
        metrics = trainer.fit(resume=args.resume)
    except (FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({k: metrics[k] for k in ("valid", "test", "best_epoch", "epochs_run",
                                              "seconds_per_epoch", "peak_rss_mb")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Train SASRec in FP32, or fine-tune it with quantization-aware training and convert to INT8.

Examples:
    python scripts/train_qat.py --qconfig fp32 --data ml-1m --out runs/fp32
    python scripts/train_qat.py --qconfig dorefa --init-from runs/fp32 --data ml-1m \
        --out runs/dorefa

Writes OUT/checkpoint.pt, OUT/config.json, OUT/metrics.json and, for a QAT method,
OUT/model_int8.pt (the converted INT8 model) with its metrics under "int8" in metrics.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data import TrainBatcher, leave_one_out, load_dataset
from qat import METHODS, SASRec, SASRecConfig, Trainer, TrainConfig, evaluate, get_method
from qat.checkpoint import save_json
from qat.finetune import load_float_model, prepare_for_method, qat_hooks, save_int8_model
from qat.train import METRICS

ARCHITECTURE_DEFAULTS = {"max_len": 200, "hidden": 50, "blocks": 2, "heads": 1, "dropout": 0.2}
# (from scratch, QAT fine-tuning from an FP32 run)
SCHEDULE_DEFAULTS = {"epochs": (200, 30), "patience": (20, 5), "lr": (1e-3, 1e-4)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--qconfig", default="fp32", choices=list(METHODS), metavar="METHOD",
                   help="one of: " + "; ".join(f"{m.name}: {m.description}"
                                               for m in METHODS.values()))
    p.add_argument("--bits", type=int, default=8,
                   help="weight bits for QAT methods (default 8: int8 storage; 4 for all methods)")
    p.add_argument("--init-from", type=Path, default=None, metavar="FP32_RUN",
                   help="fine-tune from the best model of this fp32 run folder (architecture "
                        "flags then default to that run's)")
    p.add_argument("--data", required=True,
                   help="dataset name (ml-1m: downloaded from GroupLens and cached) or a path to "
                        "a SASRec 'user item' text file, a ratings.dat or an ml-1m.zip")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="download cache (default $SASREC_QAT_CACHE or ~/.cache/sasrec-qat)")
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    p.add_argument("--epochs", type=int, default=None,
                   help="maximum epochs (default 200; 30 when fine-tuning with --init-from)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop after this many evaluations without a better valid nDCG@10 "
                        "(default 20; 5 when fine-tuning)")
    p.add_argument("--eval-every", type=int, default=1, help="epochs between validations")
    p.add_argument("--max-len", type=int, default=None,
                   help="longest history the model reads (default 200 for ML-1M; 50 is faster)")
    p.add_argument("--hidden", type=int, default=None, help="embedding/hidden width d (50)")
    p.add_argument("--blocks", type=int, default=None, help="self-attention blocks (2)")
    p.add_argument("--heads", type=int, default=None, help="attention heads (1)")
    p.add_argument("--dropout", type=float, default=None, help="dropout rate (0.2)")
    p.add_argument("--batch-size", type=int, default=128, help="users per training batch")
    p.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate of the model weights (1e-3; 1e-4 when fine-tuning)")
    p.add_argument("--quant-lr", type=float, default=None,
                   help="learning rate of quantizer parameters (default per method)")
    p.add_argument("--loss", choices=["ce", "bce"], default="ce",
                   help="ce: full softmax cross-entropy (default); bce: one sampled negative")
    p.add_argument("--seed", type=int, default=42, help="random seed (init, batches, dropout)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0 = torch default)")
    p.add_argument("--bucket", action="store_true",
                   help="batch users of similar length together and trim padding: 2-3x faster "
                        "epochs at max length 200, but it learned less per epoch on ML-1M "
                        "(README, Results: FP32); off by default")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="hide progress bars")
    return p.parse_args(argv)


def resolve_architecture(args: argparse.Namespace, num_items: int,
                         init_config: SASRecConfig | None) -> SASRecConfig:
    """Flags given explicitly win; otherwise the --init-from run's value, else the default.

    Raises ValueError when an explicit flag contradicts the --init-from run.
    """
    values: dict[str, Any] = {}
    for name, default in ARCHITECTURE_DEFAULTS.items():
        given = getattr(args, name)
        if init_config is not None:
            expected = getattr(init_config, name)
            if given is not None and given != expected and name != "dropout":
                raise ValueError(f"--init-from {args.init_from} has {name}={expected}, but "
                                 f"--{name.replace('_', '-')} {given} was given; drop the flag "
                                 "or pick a run of that architecture")
            values[name] = expected if given is None else given
        else:
            values[name] = default if given is None else given
    if init_config is not None and init_config.num_items != num_items:
        raise ValueError(f"--init-from {args.init_from} was trained on {init_config.num_items} "
                         f"items, --data has {num_items}: use the same dataset")
    return SASRecConfig(num_items=num_items, **values)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        method = get_method(args.qconfig)
        if method.is_quantized:
            method.mapping(args.bits)  # validates --bits for this method
        init_model, init_config = None, None
        if args.init_from is not None:
            init_model, _ = load_float_model(args.init_from)
            init_config = init_model.config
        finetune = method.is_quantized and init_model is not None
        schedule = {k: getattr(args, k) if getattr(args, k) is not None else v[int(finetune)]
                    for k, v in SCHEDULE_DEFAULTS.items()}
        train_config = TrainConfig(
            epochs=schedule["epochs"], batch_size=args.batch_size, lr=schedule["lr"],
            loss=args.loss, patience=schedule["patience"], eval_every=args.eval_every,
            seed=args.seed, threads=args.threads, bucket=args.bucket, progress=args.progress)
        dataset = load_dataset(args.data, cache_dir=args.cache_dir)
        split = leave_one_out(dataset)
        model_config = resolve_architecture(args, dataset.num_items, init_config)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    torch.manual_seed(args.seed)
    model = SASRec(model_config)
    if init_model is not None:
        model.load_state_dict(init_model.state_dict())
    hooks = None
    quant_lr = args.quant_lr if args.quant_lr is not None else method.quant_lr
    if method.is_quantized:
        batcher = TrainBatcher(split, max_len=model_config.max_len, batch_size=args.batch_size)
        calibration = next(iter(batcher.epoch(np.random.default_rng(args.seed))))
        model = prepare_for_method(model, method, args.bits, calibration.inputs)
        hooks = qat_hooks(model, method, lr=train_config.lr, quant_lr=quant_lr)
    print(f"{dataset.source}: {dataset.num_users} users, {dataset.num_items} items; "
          f"method {method.name}" + (f" ({args.bits}-bit weights)" if method.is_quantized else "")
          + (f", from {args.init_from}" if init_model is not None else "")
          + f"; {torch.get_num_threads()} thread(s)", file=sys.stderr)
    run_info = {"data": str(dataset.source), "bits": args.bits if method.is_quantized else 32,
                "init_from": str(args.init_from) if args.init_from else None,
                "quant_lr": quant_lr if method.is_quantized else None}
    trainer = Trainer(model, split, model_config, train_config, args.out, method=method.name,
                      hooks=hooks, run_info=run_info)
    try:
        metrics = trainer.fit(resume=args.resume)
    except (FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if method.is_quantized:
        int8 = save_int8_model(trainer.model, method, args.bits, args.out)
        metrics["int8"] = {
            which: evaluate(int8.score_last, split, which, max_len=model_config.max_len,
                            batch_size=train_config.eval_batch_size)
            for which in ("valid", "test")}
        save_json(metrics, args.out / METRICS)
    shown = ("valid", "test", "int8", "best_epoch", "epochs_run", "seconds_per_epoch",
             "peak_rss_mb")
    print(json.dumps({k: metrics[k] for k in shown if k in metrics}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
from qat.cli import ArgumentParser, run_cli
from qat.finetune import load_float_model, prepare_for_method, qat_hooks, save_int8_model
from qat.records import file_sha256
from qat.run_files import INT8_MODEL, METRICS

ARCHITECTURE_DEFAULTS = {"max_len": 200, "hidden": 50, "blocks": 2, "heads": 1, "dropout": 0.2}
# (from scratch, QAT fine-tuning from an FP32 run)
SCHEDULE_DEFAULTS = {"epochs": (200, 30), "patience": (20, 5), "lr": (1e-3, 1e-4)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--qconfig", default="fp32", choices=list(METHODS), metavar="METHOD",
                   help="one of: " + "; ".join(f"{m.name}: {m.description}"
                                               for m in METHODS.values()))
    p.add_argument("--bits", type=int, default=None,
                   help="weight bits for QAT methods (default 8: int8 storage; 4 for all "
                        "methods); not for --qconfig fp32")
    p.add_argument("--init-from", type=Path, default=None, metavar="FP32_RUN",
                   help="fine-tune from the best model of this fp32 run folder (architecture "
                        "flags then default to that run's)")
    p.add_argument("--data", required=True,
                   help="dataset name (ml-1m: downloaded from GroupLens and cached) or a path to "
                        "a SASRec 'user item' text file, a ratings.dat or an ml-1m.zip")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="download cache (default $SASREC_QAT_CACHE or ~/.cache/sasrec-qat)")
    p.add_argument("--mirror", default=None, metavar="URL",
                   help="download a named dataset from this URL instead of GroupLens (the md5 "
                        "is still checked); http(s):// or file://")
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


def check_same_dataset(init_from: Path, init_info: dict[str, Any], fingerprint: str) -> None:
    """Refuse to fine-tune a model on another dataset than the one it was trained on.

    Compares dataset fingerprints (``SequenceDataset.fingerprint``): a copy of the data with
    permuted item ids has the same item count but another fingerprint. Runs written before
    fingerprints were recorded are checked by item count only (``resolve_architecture``).
    """
    recorded = init_info.get("data_fingerprint")
    if recorded is not None and recorded != fingerprint:
        raise ValueError(f"--init-from {init_from} was trained on {init_info.get('data')} "
                         f"(dataset fingerprint {recorded[:12]}), but --data has fingerprint "
                         f"{fingerprint[:12]}: the same item ids must mean the same items; use "
                         "that run's dataset")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with one ``error:`` line for bad input)."""
    return run_cli(train, argv)


def train(argv: list[str] | None = None) -> int:
    """Parse, check everything, then train (and for a QAT method convert) one run."""
    args = parse_args(argv)
    method = get_method(args.qconfig)
    if not method.is_quantized and args.bits is not None:
        raise ValueError(f"--bits applies to QAT methods; --qconfig {method.name} keeps 32-bit "
                         "float weights: drop --bits")
    bits = 8 if args.bits is None else args.bits
    if method.is_quantized:
        method.mapping(bits)  # validates --bits for this method
    init_model, init_config, init_info = None, None, {}
    if args.init_from is not None:
        init_model, init_ckpt = load_float_model(args.init_from)
        init_config, init_info = init_model.config, init_ckpt.get("run_info") or {}
    finetune = method.is_quantized and init_model is not None
    schedule = {k: getattr(args, k) if getattr(args, k) is not None else v[int(finetune)]
                for k, v in SCHEDULE_DEFAULTS.items()}
    train_config = TrainConfig(
        epochs=schedule["epochs"], batch_size=args.batch_size, lr=schedule["lr"],
        loss=args.loss, patience=schedule["patience"], eval_every=args.eval_every,
        seed=args.seed, threads=args.threads, bucket=args.bucket, progress=args.progress)
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data, cache_dir=args.cache_dir, mirror=args.mirror)
    fingerprint = dataset.fingerprint()
    if init_model is not None:
        check_same_dataset(args.init_from, init_info, fingerprint)
    split = leave_one_out(dataset)
    model_config = resolve_architecture(args, dataset.num_items, init_config)

    torch.manual_seed(args.seed)
    model = SASRec(model_config)
    if init_model is not None:
        model.load_state_dict(init_model.state_dict())
    hooks = None
    quant_lr = args.quant_lr if args.quant_lr is not None else method.quant_lr
    if method.is_quantized:
        batcher = TrainBatcher(split, max_len=model_config.max_len, batch_size=args.batch_size)
        calibration = next(iter(batcher.epoch(np.random.default_rng(args.seed))))
        model = prepare_for_method(model, method, bits, calibration.inputs)
        hooks = qat_hooks(model, method, lr=train_config.lr, quant_lr=quant_lr)
    print(f"{dataset.source}: {dataset.num_users} users, {dataset.num_items} items; "
          f"method {method.name}" + (f" ({bits}-bit weights)" if method.is_quantized else "")
          + (f", from {args.init_from}" if init_model is not None else "")
          + f"; {torch.get_num_threads()} thread(s)", file=sys.stderr)
    run_info = {"data": str(dataset.source), "data_fingerprint": fingerprint,
                "bits": bits if method.is_quantized else 32,
                "init_from": str(args.init_from) if args.init_from else None,
                "quant_lr": quant_lr if method.is_quantized else None}
    trainer = Trainer(model, split, model_config, train_config, args.out, method=method.name,
                      hooks=hooks, run_info=run_info)
    metrics = trainer.fit(resume=args.resume)
    if method.is_quantized:
        int8 = save_int8_model(trainer.model, method, bits, args.out)
        metrics.int8 = {
            which: evaluate(int8.score_last, split, which, max_len=model_config.max_len,
                            batch_size=train_config.eval_batch_size)
            for which in ("valid", "test")}
        metrics.int8_model_sha256 = file_sha256(args.out / INT8_MODEL)
        metrics.save(args.out / METRICS)
    shown = ("valid", "test", "int8", "best_epoch", "epochs_run", "seconds_per_epoch",
             "peak_rss_mb")
    record = metrics.to_json()
    print(json.dumps({k: record[k] for k in shown if record.get(k) is not None}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Seconds per training step (and per epoch) of FP32 and every QAT method, measured together.

Examples:
    python scripts/bench_train_step.py --init-from runs/fp32_len50 --threads 1
    python scripts/bench_train_step.py --init-from runs/fp32 --methods ste lsq --bits 4 \
        --steps 50 --out train_steps.json

What is measured: the wall-clock time of ``Trainer.step`` (forward, loss, regularizer, backward,
Adam step) on the same real training batches (``data.TrainBatcher``, the training defaults) for
the FP32 model of ``--init-from`` and for its QAT copy under every ``--methods`` entry (prepared
and calibrated as ``scripts/train_qat.py`` does). After ``--warmup`` untimed rounds, each of
``--steps`` rounds times one step of every model on the same batch, in a rotated order
(``export.latency.round_order``), so machine drift hits all alike. Reported: median and p90 ms
per step, the ratio to FP32, and the median times the batches per epoch (evaluation excluded).
Epoch times in metrics.json come from runs taken at different moments, on a shared machine;
this is the like-for-like comparison.

Exit status: 0 done; 2 bad input.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data import DataFormatError, DownloadError, TrainBatcher
from export.latency import latency_stats, machine_info, round_order
from export.run_folder import load_run_split
from qat.checkpoint import save_json
from qat.cli import path_arg, seed_arg, threads_arg
from qat.config import TrainConfig
from qat.finetune import load_float_model, prepare_for_method, qat_hooks
from qat.quantize import ignore_torch_quantization_warnings
from qat.registry import METHODS, get_method
from qat.train import Trainer

FINETUNE_LR = 1e-4  # scripts/train_qat.py's fine-tuning default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init-from", type=path_arg, required=True, metavar="FP32_RUN",
                   help="an FP32 run folder of scripts/train_qat.py (weights and architecture)")
    p.add_argument("--data", default=None, metavar="PATH_OR_NAME",
                   help="dataset (default: the one recorded in FP32_RUN/config.json)")
    p.add_argument("--cache-dir", type=path_arg, default=None, help="download cache for names")
    quantized = [name for name, m in METHODS.items() if m.is_quantized]
    p.add_argument("--methods", nargs="+", default=quantized, choices=quantized,
                   help="QAT methods to time next to FP32 (default: all)")
    p.add_argument("--bits", type=int, default=8, help="weight bits of the QAT methods")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=30, help="timed steps per model (>= 1)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model first")
    p.add_argument("--threads", type=threads_arg, default=1, help="torch intra-op threads")
    p.add_argument("--seed", type=seed_arg, default=42)
    p.add_argument("--out", type=path_arg, default=None, help="also write the figures as JSON")
    return p.parse_args(argv)


def build_trainers(args: argparse.Namespace, out_dir: Path) -> tuple[dict[str, Trainer], Any]:
    """FP32 and one QAT trainer per method, all from the same FP32 weights."""
    fp32, _ = load_float_model(args.init_from)
    _, split = load_run_split(args.init_from, fp32.config.num_items, args.data,
                              cache_dir=args.cache_dir)
    config = TrainConfig(epochs=1, batch_size=args.batch_size, lr=FINETUNE_LR, seed=args.seed,
                         threads=args.threads, progress=False)
    batcher = TrainBatcher(split, max_len=fp32.config.max_len, batch_size=args.batch_size)
    calibration = next(iter(batcher.epoch(np.random.default_rng(args.seed)))).inputs
    trainers = {"fp32": Trainer(fp32.train(), split, fp32.config, config, out_dir / "fp32")}
    for name in args.methods:
        method = get_method(name)
        method.mapping(args.bits)  # validates the bits for this method
        model = prepare_for_method(fp32, method, args.bits, calibration).train()
        hooks = qat_hooks(model, method, lr=FINETUNE_LR, quant_lr=method.quant_lr)
        trainers[f"{name}_w{args.bits}"] = Trainer(model, split, fp32.config, config,
                                                   out_dir / name, method=name, hooks=hooks)
    return trainers, batcher


def time_steps(trainers: dict[str, Trainer], batches: list[Any], warmup: int,
               steps: int) -> dict[str, list[float]]:
    """Interleaved ms per ``Trainer.step`` of every trainer; round r uses ``batches[r]``."""
    names = list(trainers)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + steps):
        for i in round_order(len(names), r):
            trainer = trainers[names[i]]
            start = time.perf_counter_ns()
            loss = trainer.step(batches[r], progress=0.5)
            elapsed = (time.perf_counter_ns() - start) / 1e6
            if not np.isfinite(loss):
                raise FloatingPointError(f"{names[i]}: loss {loss} at round {r}")
            if r >= warmup:
                times[names[i]].append(elapsed)
    return times


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ignore_torch_quantization_warnings()
    if args.steps < 1 or args.warmup < 0 or args.threads < 1 or args.batch_size < 1:
        print("error: --steps, --threads and --batch-size must be >= 1, --warmup >= 0",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            trainers, batcher = build_trainers(args, Path(tmp))
        except (FileNotFoundError, ValueError, DataFormatError, DownloadError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        epoch = batcher.epoch(np.random.default_rng(args.seed))
        batches = [next(epoch) for _ in range(min(args.warmup + args.steps, len(batcher)))]
        while len(batches) < args.warmup + args.steps:  # more rounds than one epoch has
            batches += batches[: args.warmup + args.steps - len(batches)]
        times = time_steps(trainers, batches, args.warmup, args.steps)
    stats = {name: latency_stats(t) for name, t in times.items()}
    base = stats["fp32"]["median_ms"]
    print(f"{'model':14s}{'median ms':>11s}{'p90 ms':>9s}{'vs fp32':>9s}{'s/epoch':>9s}")
    records = []
    for name, s in stats.items():
        per_epoch = s["median_ms"] * len(batcher) / 1000
        records.append({"model": name, **s, "ratio_to_fp32": s["median_ms"] / base,
                        "seconds_per_epoch": per_epoch})
        print(f"{name:14s}{s['median_ms']:11.1f}{s['p90_ms']:9.1f}"
              f"{s['median_ms'] / base:8.2f}x{per_epoch:9.1f}")
    if args.out is not None:
        save_json({"machine": machine_info(), "settings": {
            "init_from": str(args.init_from), "bits": args.bits, "batch_size": args.batch_size,
            "max_len": trainers["fp32"].model_config.max_len, "threads": args.threads,
            "steps": args.steps, "warmup": args.warmup, "batches_per_epoch": len(batcher)},
            "records": records}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

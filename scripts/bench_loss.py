#!/usr/bin/env python
"""Full softmax CE vs sampled softmax CE: seconds per training step, s/epoch and peak memory on a
synthetic catalogue (no dataset needed).

Examples:
    python scripts/bench_loss.py --threads 1
    python scripts/bench_loss.py --items 200000 --max-len 50 200 --negatives 256 1024 3000 \
        --steps 3 --out bench_loss.json

What is measured: ``Trainer.step`` (forward, loss, backward, Adam step) of a SASRec (``--hidden``
50, 2 blocks, batch ``--batch-size`` 128) over ``--items`` items, on random training sequences
of ``max_len + 1`` items each, so every position is a target (the worst case: M = batch x
max_len logits rows). ``--loss ce`` is the full softmax (M x items logits), ``sampled-ce`` the
target plus ``N`` shared negatives (M x (N + 1)). Each configuration (max length, loss, N) runs
in a fresh Python process, so its peak RSS (``getrusage`` ``ru_maxrss``) is its own; "step RSS"
is that peak minus the peak before the first step (model, Adam state and batches built), a lower
bound of what the training step itself allocates. "CPU s/step" is the process's CPU time per
step (user + system, ``time.process_time``): on one thread it equals the wall time on an idle
core, and it stays put when other jobs take the core away. s/epoch = median step seconds x
ceil(``--epoch-users`` / batch) batches (default 6,040 users, ML-1M's count; it scales
linearly), evaluation excluded.

Memory guard: the loss's own activations are estimated before a configuration runs (full CE: 3
float32 M x items tensors at the backward's peak: the log-softmax output kept for backward, the
gradient arriving from the NLL and the gradient it passes to the logits; sampled: 2 M x N
tensors, the probabilities kept for backward and the weighted gradient made from them). A
configuration whose estimate exceeds ``--memory-limit-gb`` is not run at that batch size: it is
measured at the largest batch ``batch_size / 2^k`` that fits, and its step seconds are scaled by
``2^k`` (both the model and the loss are linear in the batch's positions; Adam's
step over the item table is not, so this slightly overstates). Such rows say "extrapolated"
and show the estimate instead of a measured peak. Each worker's address space is capped at the
limit (``RLIMIT_AS``), so an underestimate ends that worker with an allocation error instead of
waking the kernel's OOM killer on a shared machine (cap: the limit plus 4 GiB for the
interpreter, libraries, model and optimizer).

Exit status: 0 done (rows that failed say why); 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data import LeaveOneOutSplit
from export.latency import machine_info
from qat.checkpoint import save_json
from qat.cli import path_arg, seed_arg, threads_arg
from qat.config import NEGATIVE_SAMPLING, SASRecConfig, TrainConfig
from qat.model import SASRec
from qat.train import Trainer

BYTES = 4  # float32
# float32 (M, C) tensors alive at the loss's peak (see the module docstring)
LOSS_TENSORS = {"ce": 3, "sampled-ce": 2}
GIB = 1024 ** 3
# address space a worker needs besides the loss: interpreter, torch's libraries and thread
# stacks, model, Adam state, batches (about 1 GiB at 200,000 items); RLIMIT_AS = limit + this
ADDRESS_SPACE_MARGIN_GB = 4.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=200_000, help="catalogue size")
    p.add_argument("--max-len", type=int, nargs="+", default=[50, 200],
                   help="sequence lengths to measure")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", type=int, default=50)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--losses", nargs="+", choices=["ce", "sampled-ce"],
                   default=["ce", "sampled-ce"])
    p.add_argument("--negatives", type=int, nargs="+", default=[256, 1024, 3000],
                   help="N for sampled-ce, one row each")
    p.add_argument("--negative-sampling", choices=list(NEGATIVE_SAMPLING), default="uniform")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration (>= 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--threads", type=threads_arg, default=1, help="torch intra-op threads")
    p.add_argument("--epoch-users", type=int, default=6040,
                   help="users per epoch for the derived s/epoch (default: ML-1M's 6,040)")
    p.add_argument("--memory-limit-gb", type=float, default=8.0,
                   help="largest estimated loss memory to run at full batch, and each worker's "
                        "address-space cap (GiB)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds before a configuration's worker is stopped")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--out", type=path_arg, default=None, help="also write the figures as JSON")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one config
    args = p.parse_args(argv)
    for name in ("items", "batch_size", "hidden", "blocks", "steps", "threads", "epoch_users"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    if min(args.max_len) < 1 or min(args.negatives) < 1:
        p.error("--max-len and --negatives must be >= 1")
    if not args.memory_limit_gb > 0:
        p.error(f"--memory-limit-gb must be positive, got {args.memory_limit_gb}")
    return args


def loss_memory_bytes(loss: str, positions: int, items: int, negatives: int) -> int:
    """Estimated bytes of the loss's float32 activations at its peak for ``positions`` targets."""
    columns = items if loss == "ce" else negatives
    return LOSS_TENSORS[loss] * positions * columns * BYTES


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Configurations to run: every max length x (ce, sampled-ce x N), each with the batch it
    is measured at (halved until the loss estimate fits ``--memory-limit-gb``)."""
    configs = []
    for max_len in args.max_len:
        for loss in args.losses:
            for negatives in (args.negatives if loss == "sampled-ce" else [0]):
                batch = args.batch_size
                estimate = loss_memory_bytes(loss, batch * max_len, args.items, negatives)
                while batch > 1 and loss_memory_bytes(loss, batch * max_len, args.items,
                                                      negatives) > args.memory_limit_gb * GIB:
                    batch //= 2
                configs.append({
                    "max_len": max_len, "loss": loss, "negatives": negatives,
                    "batch_size": args.batch_size, "measured_batch": batch,
                    "loss_memory_estimate_gb": estimate / GIB,
                    "items": args.items, "hidden": args.hidden, "blocks": args.blocks,
                    "negative_sampling": args.negative_sampling, "steps": args.steps,
                    "warmup": args.warmup, "threads": args.threads, "seed": args.seed,
                    "memory_limit_gb": args.memory_limit_gb})
    return configs


def synthetic_split(items: int, users: int, length: int, seed: int) -> LeaveOneOutSplit:
    """``users`` random training sequences of ``length`` items uniform over ``1..items``."""
    rng = np.random.default_rng(seed)
    seqs = rng.integers(1, items + 1, size=(users, length))
    return LeaveOneOutSplit(train={u + 1: seqs[u].tolist() for u in range(users)}, valid={},
                            test={}, num_items=items)


def run_config(config: dict[str, Any]) -> dict[str, Any]:
    """Time ``config["steps"]`` training steps in this process; return seconds and memory."""
    torch.set_num_threads(config["threads"])
    torch.manual_seed(config["seed"])
    batch, rounds = config["measured_batch"], config["warmup"] + config["steps"]
    split = synthetic_split(config["items"], batch * rounds, config["max_len"] + 1,
                            config["seed"])
    model_config = SASRecConfig(num_items=config["items"], max_len=config["max_len"],
                                hidden=config["hidden"], blocks=config["blocks"], heads=1)
    sampled = config["loss"] == "sampled-ce"
    train_config = TrainConfig(
        epochs=1, batch_size=batch, loss=config["loss"], seed=config["seed"], progress=False,
        threads=config["threads"], negatives=config["negatives"] if sampled else 256,
        negative_sampling=config["negative_sampling"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(SASRec(model_config).train(), split, model_config, train_config, tmp)
        batches = list(trainer.batcher.epoch(np.random.default_rng(config["seed"])))[:rounds]
        before = _peak_rss_mb()
        seconds, cpu_seconds = [], []
        for i, b in enumerate(batches):
            start, cpu_start = time.perf_counter(), time.process_time()
            loss = trainer.step(b, 0.0)
            if i >= config["warmup"]:
                seconds.append(time.perf_counter() - start)
                cpu_seconds.append(time.process_time() - cpu_start)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at step {i + 1}")
    peak = _peak_rss_mb()
    return {**config, "step_seconds": seconds, "median_step_seconds": statistics.median(seconds),
            "step_cpu_seconds": cpu_seconds,
            "median_step_cpu_seconds": statistics.median(cpu_seconds),
            "positions_per_step": batch * config["max_len"], "rss_before_steps_mb": before,
            "peak_rss_mb": peak, "step_rss_mb": peak - before,
            "torch_threads": torch.get_num_threads()}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_worker(config: dict[str, Any], timeout: float) -> dict[str, Any]:
    """``run_config`` in a fresh Python process (its own peak RSS), capped in memory and time."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(config)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**config, "error": f"stopped after {timeout:.0f} s"}
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {done.returncode}"
        if "can't allocate memory" in done.stderr or "MemoryError" in done.stderr:
            last = ("out of memory under the "
                    f"{config['memory_limit_gb'] + ADDRESS_SPACE_MARGIN_GB:g} GiB cap")
        return {**config, "error": last[:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _worker_main(text: str) -> int:
    config = json.loads(text)
    limit = int((config["memory_limit_gb"] + ADDRESS_SPACE_MARGIN_GB) * GIB)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    print(json.dumps(run_config(config)))
    return 0


def machine_line(threads: int) -> str:
    """CPU model, logical cores, SIMD/int8 flags, torch version and the threads used."""
    info = machine_info()
    flags = " ".join(f for f, present in info["flags"].items() if present) or "-"
    load = info["load_average"]
    return (f"machine: {info['cpu']}, {info['logical_cores']} logical cores, flags {flags}; "
            f"torch {info['torch']}, {threads} thread(s); load average "
            f"{'/'.join(f'{x:g}' for x in load) if load else 'unknown'} (1/5/15 min)")


def table(records: list[dict[str, Any]], epoch_users: int) -> str:
    """The results as a Markdown table."""
    lines = [f"| max len | loss | N | batch | median s/step | CPU s/step "
             f"| s/epoch ({epoch_users:,} users) | peak RSS MB | step RSS MB "
             "| loss memory est. GB | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        loss = r["loss"] + (f" ({r['negative_sampling']})" if r["loss"] == "sampled-ce" else "")
        n = str(r["negatives"]) if r["loss"] == "sampled-ce" else "all"
        est = f"{r['loss_memory_estimate_gb']:.2f}"
        if "error" in r:
            lines.append(f"| {r['max_len']} | {loss} | {n} | {r['batch_size']} | - | - | - | - "
                         f"| - | {est} | failed: {r['error']} |")
            continue
        scale = r["batch_size"] / r["measured_batch"]
        step = r["median_step_seconds"] * scale
        per_epoch = step * math.ceil(epoch_users / r["batch_size"])
        note = ("" if scale == 1 else
                f"extrapolated: measured at batch {r['measured_batch']} "
                f"({r['median_step_seconds']:.2f} s/step, peak RSS {r['peak_rss_mb']:.0f} MB) "
                f"x {scale:g}")
        peak = "-" if scale != 1 else f"{r['peak_rss_mb']:.0f}"
        step_rss = "-" if scale != 1 else f"{r['step_rss_mb']:.0f}"
        cpu = r["median_step_cpu_seconds"] * scale
        lines.append(f"| {r['max_len']} | {loss} | {n} | {r['batch_size']} | {step:.3f} | "
                     f"{cpu:.3f} | {per_epoch:.1f} | {peak} | {step_rss} | {est} | {note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point; 0 when done, 2 on bad input (argparse)."""
    args = parse_args(argv)
    if args.worker is not None:
        return _worker_main(args.worker)
    records = []
    for config in plan(args):
        record = run_worker(config, args.timeout)
        records.append(record)
        status = record.get("error") or f"{record['median_step_seconds']:.3f} s/step"
        print(f"max_len {config['max_len']} {config['loss']} N={config['negatives'] or 'all'} "
              f"batch {config['measured_batch']}: {status}", file=sys.stderr, flush=True)
    machine = machine_line(args.threads)
    print(machine)
    print(f"items {args.items:,}, d={args.hidden}, {args.blocks} blocks, batch "
          f"{args.batch_size}, every position a target, {args.steps} timed step(s) after "
          f"{args.warmup} warm-up, negatives {args.negative_sampling}")
    print(table(records, args.epoch_users))
    if args.out is not None:
        save_json({"machine": machine, "settings": {k: v for k, v in vars(args).items()
                                                    if k not in ("out", "worker")},
                   "records": records}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

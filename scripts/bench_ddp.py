#!/usr/bin/env python
"""Benchmark: training throughput of 1 process against N DDP processes (torchrun) on the CPU.

    python scripts/bench_ddp.py --data ml-1m --max-len 50 200 --processes 2

For each max length: ``train_qat.py`` in one process, then the same command under ``torchrun
--nproc-per-node N`` (same global batch, so the same optimisation), each process with
``--threads`` intra-op threads (default 1: N processes on N cores against 1 process on 1 core).
Validation is left out of the timing (``train_seconds`` per epoch in the checkpoint history);
the figure is the median epoch after the first and the throughput ratio (1-process seconds /
N-process seconds). Prints a table and writes OUT/bench_ddp.json with the CPU flags.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from qat.checkpoint import load_checkpoint
from qat.cli import ArgumentParser, folder_arg, run_cli, threads_arg
from qat.run_files import CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset (train_qat.py --data)")
    p.add_argument("--max-len", type=int, nargs="+", default=[50, 200], help="max lengths")
    p.add_argument("--processes", type=int, default=2, help="DDP processes (default 2)")
    p.add_argument("--threads", type=threads_arg, default=1, help="intra-op threads per process")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is warm-up)")
    p.add_argument("--batch-size", type=int, default=128, help="global batch")
    p.add_argument("--out", type=folder_arg, default=Path("runs/bench_ddp"), help="output folder")
    return p.parse_args(argv)


def cpu_flags() -> str:
    """The AVX/VNNI flags of this CPU (the figures depend on them), from /proc/cpuinfo."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return platform.processor()
    return " ".join(sorted(f for f in flags if f.startswith(("avx", "fma", "amx"))))


def epoch_seconds(run: Path) -> list[float]:
    history = load_checkpoint(run / CHECKPOINT)["history"]
    return [record["train_seconds"] for record in history]


def train(args: argparse.Namespace, max_len: int, processes: int) -> dict[str, Any]:
    out = args.out / f"len{max_len}_p{processes}"
    flags = [str(ROOT / "scripts" / "train_qat.py"), "--data", args.data, "--out", str(out),
             "--max-len", str(max_len), "--epochs", str(args.epochs), "--patience",
             str(args.epochs), "--eval-every", str(args.epochs), "--threads", str(args.threads),
             "--batch-size", str(args.batch_size), "--device", "cpu", "--no-progress"]
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={processes}"]
    start = time.perf_counter()
    # run from the caller's folder, as --data and --out are relative to it
    done = subprocess.run([*launcher, *flags], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if done.returncode != 0:
        raise ValueError(f"training with {processes} process(es) failed: "
                         + " ".join(done.stderr.strip().splitlines()[-3:]))
    seconds = epoch_seconds(out)
    return {"processes": processes, "epoch_seconds": [round(s, 2) for s in seconds],
            "median_after_first": round(statistics.median(seconds[1:] or seconds), 2),
            "wall_seconds": round(time.perf_counter() - start, 1)}


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        raise FileExistsError(f"{args.out} is not empty: choose another --out")
    results: dict[str, Any] = {"cpu_flags": cpu_flags(), "threads_per_process": args.threads,
                               "batch_size": args.batch_size, "runs": []}
    print(f"CPU flags: {results['cpu_flags']}")
    print(f"{'max len':>8} {'1 process s/epoch':>18} {f'{args.processes} processes':>14} "
          f"{'throughput ratio':>17}")
    for max_len in args.max_len:
        one = train(args, max_len, 1)
        many = train(args, max_len, args.processes)
        ratio = one["median_after_first"] / many["median_after_first"]
        results["runs"].append({"max_len": max_len, "one": one, "many": many,
                                "throughput_ratio": round(ratio, 2)})
        print(f"{max_len:>8} {one['median_after_first']:>18.2f} "
              f"{many['median_after_first']:>14.2f} {ratio:>16.2f}x", flush=True)
    (args.out / "bench_ddp.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())

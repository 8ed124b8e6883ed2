#!/usr/bin/env python
"""Where exported graphs spend their time, per op type (onnxruntime's profiler), side by side.

    python scripts/profile_ops.py --models runs/fp32/model_fp32.onnx \\
        runs/lsq/model_int8_fused.onnx --batch 256 --threads 1

For each model: mean microseconds per run of every op type (summed over its nodes), its share of
the kernel time, and the sum and the median wall time of a profiled run (export/op_profile.py).
All models get the same input: ``--batch`` random histories of the first model's ``max_len``
(metadata ``sasrec_qat.max_len``) with ids drawn from its catalogue, each of a random length
left-padded with 0 as in evaluation (``--seed``). The profiler slows small kernels down a little:
compare models profiled together, and quote benchmark.py for latency.

Exit status: 0 done; 2 bad input (one error: line: a missing or unloadable model, models of
different catalogues or lengths, a number out of range).
"""
from __future__ import annotations

import argparse
import sys


from export import native_ops
from export.latency import machine_info
from export.op_profile import OpProfile, profile_ops, random_histories
from export.recommend import model_max_len, model_num_items
from export.runtime import make_session
from qat.cli import ArgumentParser, path_arg, run_cli, seed_arg, threads_arg


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=path_arg, nargs="+", required=True, metavar="FILE",
                   help="exported graphs (model_fp32.onnx, model_int8_fused.onnx, ...)")
    p.add_argument("--batch", type=int, default=256, help="rows per run (default 256)")
    p.add_argument("--threads", type=threads_arg, default=1, help="intra-op threads (default 1)")
    p.add_argument("--runs", type=int, default=50, help="profiled runs (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="runs before profiling (default 5)")
    p.add_argument("--top", type=int, default=15, help="op types listed per model (default 15)")
    p.add_argument("--seed", type=seed_arg, default=0, help="of the random histories (default 0)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 done, 2 bad input (one ``error:`` line)."""
    return run_cli(_main, argv, extra=(native_ops.NativeBuildError,))


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    for flag, value, low in (("--batch", args.batch, 1), ("--threads", args.threads, 1),
                             ("--runs", args.runs, 1), ("--top", args.top, 1),
                             ("--warmup", args.warmup, 0)):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    shapes = []
    for path in args.models:
        if not path.is_file():
            raise FileNotFoundError(f"no model file at {path}")
        session = make_session(path, threads=1)
        shapes.append((model_num_items(session), model_max_len(session)))
    if len(set(shapes)) > 1:
        raise ValueError("the models score different catalogues or lengths: "
                         + ", ".join(f"{p}: {n} items, max_len {t}"
                                     for p, (n, t) in zip(args.models, shapes)))
    num_items, max_len = shapes[0]
    inputs = random_histories(num_items, max_len, args.batch, args.seed)
    machine = machine_info()
    flags = " ".join(f for f, present in machine["flags"].items() if present) or "none listed"
    print(f"{machine['cpu']}; flags: {flags}; onnxruntime {machine['onnxruntime']}")
    print(f"batch {args.batch}, {args.threads} thread(s), {args.runs} profiled runs, "
          f"{num_items} items, max_len {max_len}")
    profiles = [profile_ops(path, inputs, threads=args.threads, runs=args.runs,
                            warmup=args.warmup) for path in args.models]
    for path, profile in zip(args.models, profiles):
        print_profile(str(path), profile, args.top)
    return 0


def print_profile(name: str, profile: OpProfile, top: int) -> None:
    """One model's table: op type, us per run, share of the kernel time."""
    print(f"\n{name}: kernels {profile.kernel_us / 1e3:.3f} ms per run, wall (median) "
          f"{profile.wall_us / 1e3:.3f} ms")
    for op, us in profile.top(top):
        print(f"  {op:28s} {us:10.1f} us  {us / profile.kernel_us:6.1%}")
    rest = profile.top()[top:]
    if rest:
        print(f"  {f'({len(rest)} more)':28s} {sum(us for _, us in rest):10.1f} us")


if __name__ == "__main__":
    sys.exit(main())

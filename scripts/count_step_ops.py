#!/usr/bin/env python
"""Operators (and, on CUDA, kernels) one QAT training step launches, per method: the measure
behind "QAT on a GPU is bound by launching small kernels" (issue 12).

    python scripts/count_step_ops.py                       # CPU, FP32 and the six methods
    python scripts/count_step_ops.py --device cuda --methods ste lsq

One training step of a random SASRec (``--num-items``, ``--max-len``, ``--hidden``,
``--blocks``; the counts depend on the architecture, not the weights): forward, full-softmax
cross-entropy (``qat.losses.softmax_ce``), the method's regularizer, backward and Adam (the
trainer's, ``qat.train.make_adam``: fused; ``--adam foreach`` or ``loop`` for torch's others), after
``--warmup`` untimed steps (lazy initialisation, probes), under ``torch.profiler``. Printed per
method: aten operators (all, and leaves: those calling no other aten operator, about one kernel
each), host reads of device scalars (``aten::_local_scalar_dense``: a device sync each on CUDA),
copies (``aten::copy_``) and, on CUDA, the kernels launched; then each method's ratio of leaf
operators to FP32's. Every operator costs host time, which is what bounds a QAT step on a GPU;
not every one launches a kernel (the quantizers' flags are host tensors, observers.grid
HOST_BUFFERS), so on a GPU read the kernel column for launches.

``--adam fused foreach`` counts (and times) every method with each Adam, so the effect of the
optimizer is measured in one run.

``--time-rounds N`` then times the same steps: N rounds of one step of every model, in a balanced
order (``export.latency.time_interleaved``), median ms per step and its ratio to FP32's. On a tiny
model on the CPU with ``--threads 1`` this is a host-bound proxy of the GPU step, where time is
the host's per-operator cost too::

    python scripts/count_step_ops.py --num-items 200 --max-len 20 --hidden 16 \
        --threads 1 --time-rounds 80

Exit status: 0 done; 2 bad input (one error: line).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from export.latency import time_interleaved
from qat.cli import ArgumentParser, run_cli, threads_arg
from qat.config import SASRecConfig
from qat.distributed import resolve_device
from qat.finetune import prepare_for_method, qat_hooks
from qat.losses import softmax_ce
from qat.model import SASRec
from qat.quantize import ignore_torch_quantization_warnings
from qat.registry import METHODS, get_method
from qat.train import make_adam

ADAM_KINDS = ("fused", "foreach", "loop")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=[m for m in METHODS if m != "fp32"],
                   choices=[m for m in METHODS if m != "fp32"], help="QAT methods (FP32 always)")
    p.add_argument("--bits", type=int, default=8, help="weight bits (default 8)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--num-items", type=int, default=3416)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--hidden", type=int, default=50)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--adam", choices=ADAM_KINDS, nargs="+", default=["fused"],
                   help="Adam's implementation: fused (the trainer's, qat.train.make_adam; "
                        "default), foreach (multi-tensor lists, torch's default on CUDA) or loop "
                        "(per parameter, torch's default on the CPU); several: every method with "
                        "each, rows METHOD/KIND, each against FP32 with the same kind, all timed "
                        "in the same rounds")
    p.add_argument("--time-rounds", type=int, default=0,
                   help="also time this many interleaved rounds of one step per model (default "
                        "0: count only)")
    p.add_argument("--threads", type=threads_arg, default=None,
                   help="torch intra-op threads (default: torch's)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 done, 2 bad input (one ``error:`` line)."""
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    for flag in ("num_items", "max_len", "hidden", "blocks", "batch_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.time_rounds < 0:
        raise ValueError("--warmup and --time-rounds must be >= 0")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    ignore_torch_quantization_warnings()
    config = SASRecConfig(num_items=args.num_items, max_len=args.max_len, hidden=args.hidden,
                          blocks=args.blocks, heads=1, dropout=0.2)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randint(1, args.num_items + 1, (args.batch_size, args.max_len),
                           generator=generator)
    targets = torch.randint(1, args.num_items + 1, (args.batch_size, args.max_len),
                            generator=generator)
    print(f"device {device}, torch {torch.__version__}, {config}")
    kinds = list(dict.fromkeys(args.adam))
    label = (lambda name, kind: name) if len(kinds) == 1 else \
        (lambda name, kind: f"{name}/{kind}")
    width = max(10, *(len(label(name, kind)) for name in METHODS for kind in kinds))
    print(f"{'method':{width}s} {'aten ops':>9s} {'leaf ops':>9s} {'x FP32':>7s} "
          f"{'scalar reads':>13s} {'copies':>7s} {'kernels':>8s}")
    steps, fp32_of = {}, {}
    for kind in kinds:
        baseline = None
        for name in ["fp32", *args.methods]:
            row = label(name, kind)
            fp32_of[row] = label("fp32", kind)
            steps[row] = training_step(name, config, args.bits, inputs.to(device),
                                       targets.to(device), device, kind)
            counts = count_step(steps[row], device, args.warmup)
            baseline = baseline or counts["leaf"]
            kernels = "-" if counts["kernels"] is None else str(counts["kernels"])
            print(f"{row:{width}s} {counts['aten']:9d} {counts['leaf']:9d} "
                  f"{counts['leaf'] / baseline:6.2f}x {counts['scalar_reads']:13d} "
                  f"{counts['copies']:7d} {kernels:>8s}")
    if args.time_rounds:
        medians = time_steps(steps, args.time_rounds, device)
        print(f"\n{'method':{width}s} {'median ms':>10s} {'x FP32':>7s}   "
              f"({args.time_rounds} interleaved rounds, {torch.get_num_threads()} threads)")
        for row, ms in medians.items():
            print(f"{row:{width}s} {ms:10.2f} {ms / medians[fp32_of[row]]:6.2f}x")
    return 0


def training_step(name: str, config: SASRecConfig, bits: int, inputs: torch.Tensor,
                  targets: torch.Tensor, device: torch.device,
                  adam: str = "fused") -> Callable[[], None]:
    """One training step of a fresh ``name`` model (``"fp32"`` or a QAT method), as a closure:
    forward, loss, regularizer, backward, Adam (``adam``: one of ``ADAM_KINDS``)."""
    torch.manual_seed(0)
    model = SASRec(config).to(device).train()
    regularizer = None
    if name == "fp32":
        groups = [{"params": list(model.parameters())}]
    else:
        method = get_method(name)
        model = prepare_for_method(model, method, bits, inputs).to(device).train()
        hooks = qat_hooks(model, method, lr=1e-3, quant_lr=method.quant_lr)
        groups = hooks.param_groups
        regularizer = hooks.regularizer
    optimizer = (make_adam(groups, lr=1e-3, weight_decay=0.0) if adam == "fused" else
                 torch.optim.Adam(groups, lr=1e-3, betas=(0.9, 0.98),  # as make_adam's
                                  foreach=adam == "foreach"))

    def step() -> None:
        loss = softmax_ce(model(inputs), targets, model.item_table())
        if regularizer is not None:
            loss = loss + regularizer(0.5)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def time_steps(steps: dict[str, Callable[[], None]], rounds: int,
               device: torch.device) -> dict[str, float]:
    """Median ms per step of each model over ``rounds`` rounds, one step of every model per
    round in a balanced order (``export.latency.time_interleaved``: drift hits all alike); on
    CUDA each timed step ends with a synchronize."""
    def timed(step: Callable[[], None]) -> Callable[[object], None]:
        def call(_batch: object) -> None:
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
        return call
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = time_interleaved([timed(step) for step in steps.values()], [None], warmup=0,
                             repeats=rounds)
    return {name: statistics.median(t) for name, t in zip(steps, times)}


def count_step(step: Callable[[], None], device: torch.device, warmup: int) -> dict:
    """Operator counts of one ``step()``, after ``warmup`` uncounted ones."""
    for _ in range(warmup):
        step()
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    aten = [e for e in events if e.name.startswith("aten::")]
    leaf = [e for e in aten if not any(c.name.startswith("aten::") for c in e.cpu_children)]
    names = Counter(e.name for e in aten)
    kernels = None
    if device.type == "cuda":
        kernels = sum(1 for e in events if str(e.device_type).endswith("CUDA"))
    return {"aten": len(aten), "leaf": len(leaf), "kernels": kernels,
            "scalar_reads": names["aten::_local_scalar_dense"], "copies": names["aten::copy_"]}


if __name__ == "__main__":
    sys.exit(main())

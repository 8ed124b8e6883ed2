#!/usr/bin/env python
"""Is an INT8 model's nDCG@10 really below FP32's? A paired comparison over the same users.

Example:
    python scripts/paired_ndcg.py --reference runs/all/fp32 --runs runs/all/*_w8

For every run folder (its converted INT8 torch model, or the FP32 model of an FP32 run) the
per-user test nDCG@10 is computed on the same users as the reference (full ranking,
``qat.evaluate.compute_ranks``), and the per-user differences ``d_u = nDCG_u(run) -
nDCG_u(reference)`` summarise the comparison: mean (the difference of the two nDCG@10),
a 95% confidence interval ``mean +- 1.96 * std(d) / sqrt(n)``, and how many users' nDCG changed.
Both models rank the same users, so this interval is far narrower than the ~0.004 standard
error of one nDCG@10 on 6,040 ML-1M users, and it tells whether a ratio such as 0.989 is below
a 0.99 target or within noise of it.

Exit status: 0 done; 2 bad input.
"""
from __future__ import annotations

import argparse
import math
import sys

import torch

from data import DataFormatError, DownloadError, LeaveOneOutSplit
from export import RunModel, load_run
from export.run_folder import load_run_split
from qat.checkpoint import save_json
from qat.cli import ArgumentParser, check_output_file, path_arg, run_cli
from qat.evaluate import compute_ranks
from qat.metrics import ndcg_at_k
from qat.quantize import ignore_torch_quantization_warnings

Z_95 = 1.959964


def paired_difference(run: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Mean and 95% confidence half-width of ``run - reference`` (per-user values, paired)."""
    if run.shape != reference.shape or run.numel() < 2:
        raise ValueError("paired values need the same users, at least 2")
    diff = run.double() - reference.double()
    half_width = Z_95 * float(diff.std(unbiased=True)) / math.sqrt(diff.numel())
    return {"mean": float(diff.mean()), "ci95": half_width,
            "changed_users": int((diff != 0).sum())}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", type=path_arg, required=True, metavar="RUN",
                   help="the run to compare against (usually the FP32 run)")
    p.add_argument("--runs", type=path_arg, nargs="+", required=True, metavar="RUN")
    p.add_argument("--data", default=None, metavar="PATH_OR_NAME",
                   help="dataset (default: the one in the reference's config.json)")
    p.add_argument("--cache-dir", type=path_arg, default=None, help="download cache for names")
    p.add_argument("--which", choices=["valid", "test"], default="test")
    p.add_argument("--k", type=int, default=10, help="cut-off of nDCG")
    p.add_argument("--out", type=path_arg, default=None, help="also write the table as JSON")
    return p.parse_args(argv)


def per_user_ndcg(run: RunModel, split: LeaveOneOutSplit, which: str, k: int) -> torch.Tensor:
    """nDCG@k of every ``which`` user, ranked by the run's torch model."""
    if run.model.config.num_items != split.num_items:
        raise ValueError(f"{run.run_dir} scores {run.model.config.num_items} items, the data has "
                         f"{split.num_items}")
    ranks = compute_ranks(run.model.score_last, split, which, max_len=run.model.config.max_len,
                          batch_size=512)
    return ndcg_at_k(ranks, k).double()


def main(argv: list[str] | None = None) -> int:
    """Exit status 0; 2 with one ``error:`` line for bad input (``qat.cli.run_cli``); 130 on
    Ctrl-C."""
    return run_cli(_main, argv, extra=(DataFormatError, DownloadError))


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    ignore_torch_quantization_warnings()
    check_output_file(args.out)
    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    reference_run = load_run(args.reference)
    _, split = load_run_split(args.reference, reference_run.model.config.num_items,
                              args.data, cache_dir=args.cache_dir, shared=True,
                              also=args.runs)  # every run's recorded dataset is checked
    reference = per_user_ndcg(reference_run, split, args.which, args.k)
    rows = []
    for run_dir in args.runs:
        values = per_user_ndcg(load_run(run_dir), split, args.which, args.k)
        rows.append({"run": str(run_dir), f"ndcg@{args.k}": float(values.mean()),
                     "ratio": float(values.mean() / reference.mean()),
                     "difference": paired_difference(values, reference)})
    base = float(reference.mean())
    print(f"reference {args.reference}: {args.which} nDCG@{args.k} {base:.4f} "
          f"({reference.numel()} users)")
    print(f"{'run':34s}{'nDCG':>8s}{'ratio':>7s}{'difference (95% CI)':>24s}{'changed':>9s}")
    for row in rows:
        d = row["difference"]
        print(f"{row['run']:34s}{row[f'ndcg@{args.k}']:8.4f}{row['ratio']:7.3f}"
              f"{d['mean']:+13.4f} +- {d['ci95']:.4f}{d['changed_users']:9d}")
    if args.out is not None:
        save_json({"reference": str(args.reference), f"reference_ndcg@{args.k}": base,
                   "which": args.which, "users": reference.numel(), "runs": rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

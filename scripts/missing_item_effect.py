#!/usr/bin/env python
"""What do ml-1m.txt's missing interactions cost a model's test nDCG@10? A simulation on valid.

Example:
    python scripts/missing_item_effect.py --run runs/fp32_len200_d64

``../shared/data/ml-1m.txt`` is canonical ML-1M except that 2,587 of its 6,040 users lack their
second-to-last interaction. Their test item is the canonical one, but the history the model
reads before it misses the item just before it, the most informative one for a next-item
model, so test metrics on this file sit below published (canonical) ones. The validation task
is untouched: its histories are complete.

This script replays the damage on the validation task: it removes the item right before the
validation item from ``--users`` random evaluated users' histories
(``data.drop_item_before_valid``) and evaluates the run's model again (full ranking, the
user's history masked). Valid intact vs. valid damaged estimates what the damage costs on
test; valid intact estimates what the model would score on canonical test. Every ``--seeds``
value draws another set of users.

Exit status: 0 done; 2 bad input.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from data import DataFormatError, DownloadError, LeaveOneOutSplit, drop_item_before_valid
from export import load_run
from export.run_folder import load_run_split
from qat.checkpoint import save_json
from qat.cli import ArgumentParser, check_output_file, path_arg, run_cli, seed_arg
from qat.evaluate import compute_ranks
from qat.metrics import hit_at_k, ndcg_at_k
from qat.quantize import ignore_torch_quantization_warnings

ML1M_USERS_MISSING_AN_ITEM = 2587


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=path_arg, required=True, metavar="RUN",
                   help="a train_qat.py run folder (FP32 or converted INT8 model)")
    p.add_argument("--data", default=None, metavar="PATH_OR_NAME",
                   help="dataset (default: the one in the run's config.json)")
    p.add_argument("--cache-dir", type=path_arg, default=None, help="download cache for names")
    p.add_argument("--users", type=int, default=ML1M_USERS_MISSING_AN_ITEM,
                   help="users who lose the item before their valid item (default 2587, as "
                        "many as ml-1m.txt lacks)")
    p.add_argument("--seeds", type=seed_arg, nargs="+", default=[0, 1, 2],
                   help="one random draw of users per seed")
    p.add_argument("--k", type=int, default=10, help="cut-off of nDCG and Hit")
    p.add_argument("--out", type=path_arg, default=None, help="also write the results as JSON")
    return p.parse_args(argv)


def damaged_valid_metrics(score_last, split: LeaveOneOutSplit, users: list[int], *,
                          max_len: int, k: int = 10) -> dict[str, float]:
    """Valid nDCG@k / Hit@k when ``users`` lack the item before their valid item.

    Also reports nDCG@k over the damaged users and over the others (``-1`` for an empty group).
    """
    damaged = drop_item_before_valid(split, users)
    ranks = compute_ranks(score_last, damaged, "valid", max_len=max_len)
    ndcg = ndcg_at_k(ranks, k).double()
    hit = hit_at_k(ranks, k).double()
    chosen = set(users)
    mask = np.array([u in chosen for u in sorted(split.valid)])

    def group_mean(m: np.ndarray) -> float:
        return float(ndcg[m].mean()) if m.any() else -1.0

    return {f"ndcg@{k}": float(ndcg.mean()), f"hit@{k}": float(hit.mean()),
            f"ndcg@{k}_damaged_users": group_mean(mask),
            f"ndcg@{k}_other_users": group_mean(~mask)}


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
    run = load_run(args.run)
    model = run.model
    _, split = load_run_split(args.run, model.config.num_items, args.data,
                              cache_dir=args.cache_dir)
    evaluated = sorted(split.valid)
    if not 1 <= args.users <= len(evaluated):
        raise ValueError(f"--users must lie in 1..{len(evaluated)} (the evaluated users), "
                         f"got {args.users}")
    intact = {}
    for which in ("valid", "test"):
        ranks = compute_ranks(model.score_last, split, which, max_len=model.config.max_len)
        intact[which] = {f"ndcg@{args.k}": float(ndcg_at_k(ranks, args.k).mean()),
                         f"hit@{args.k}": float(hit_at_k(ranks, args.k).mean())}
    draws = []
    for seed in args.seeds:
        users = np.random.default_rng(seed).choice(evaluated, args.users, replace=False)
        metrics = damaged_valid_metrics(model.score_last, split, sorted(users.tolist()),
                                        max_len=model.config.max_len, k=args.k)
        draws.append({"seed": seed, **metrics})
    nd, hit = f"ndcg@{args.k}", f"hit@{args.k}"
    mean = {key: float(np.mean([d[key] for d in draws])) for key in (nd, hit)}
    print(f"{args.run}: {len(evaluated)} evaluated users, {args.users} lose the item before "
          f"their valid item")
    print(f"{'evaluation':44s}{'nDCG@' + str(args.k):>10s}{'Hit@' + str(args.k):>9s}")
    print(f"{'valid, histories intact':44s}{intact['valid'][nd]:10.4f}{intact['valid'][hit]:9.4f}")
    for d in draws:
        print(f"{'valid, damaged (seed ' + str(d['seed']) + ')':44s}{d[nd]:10.4f}{d[hit]:9.4f}"
              f"   damaged users {d[nd + '_damaged_users']:.4f}, others "
              f"{d[nd + '_other_users']:.4f}")
    print(f"{'valid, damaged (mean of draws)':44s}{mean[nd]:10.4f}{mean[hit]:9.4f}")
    print(f"{'test (the file as it is)':44s}{intact['test'][nd]:10.4f}{intact['test'][hit]:9.4f}")
    if args.out is not None:
        save_json({"run": str(args.run), "users_damaged": args.users, "intact": intact,
                   "damaged_valid": draws, "damaged_valid_mean": mean}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

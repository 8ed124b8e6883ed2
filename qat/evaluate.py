"""Leave-one-out evaluation: full ranking over the catalogue (default) or 100 sampled negatives.

``evaluate`` takes any scorer ``(B, T) item ids -> (B, num_items + 1) scores``: the FP32 or
fake-quant torch model, the converted INT8 model or an onnxruntime session.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from data import LeaveOneOutSplit, eval_batches, eval_users, sample_negatives_for_eval
from qat.metrics import hit_at_k, mask_scores, ndcg_at_k, sampled_scores, target_ranks

Scorer = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def evaluate(scorer: Scorer, split: LeaveOneOutSplit, which: str, *, max_len: int,
             batch_size: int = 512, k: int = 10, sampled_negatives: int = 0,
             seed: int = 0, progress: bool = False,
             desc: str | None = None) -> dict[str, float]:
    """nDCG@k and Hit@k of ``scorer`` on the validation or test items.

    Full ranking ranks the target against every item the user has not interacted with
    (their input history is masked, the target excepted). With ``sampled_negatives=100`` it
    ranks the target against 100 random unseen items instead (the SASRec paper's protocol).

    Returns:
        ``{"ndcg@10": .., "hit@10": .., "users": N, "seconds": ..}`` (keys follow ``k``).
    """
    start = time.perf_counter()
    ranks = compute_ranks(scorer, split, which, max_len=max_len, batch_size=batch_size,
                          sampled_negatives=sampled_negatives, seed=seed, progress=progress,
                          desc=desc)
    return rank_metrics(ranks, k, time.perf_counter() - start)


def rank_metrics(ranks: torch.Tensor, k: int = 10, seconds: float = 0.0) -> dict[str, float]:
    """``evaluate``'s dict from the targets' 0-based ranks (``compute_ranks``)."""
    return {
        f"ndcg@{k}": float(ndcg_at_k(ranks, k).mean()),
        f"hit@{k}": float(hit_at_k(ranks, k).mean()),
        "users": int(ranks.numel()),
        "seconds": seconds,
    }


@torch.no_grad()
def compute_ranks(scorer: Scorer, split: LeaveOneOutSplit, which: str, *, max_len: int,
                  batch_size: int = 512, sampled_negatives: int = 0, seed: int = 0,
                  progress: bool = False, users: range | None = None,
                  desc: str | None = None) -> torch.Tensor:
    """0-based pessimistic rank of every evaluated user's target, in user-id order, on the CPU.

    ``users``: only the users at these positions of ``eval_users(split, which)`` (a shard for
    data-parallel evaluation); their sampled negatives are the rows they get in a full run, so
    concatenating every shard's ranks gives the full run's ranks exactly. The scorer's output
    may live on any device; masking and ranking happen there.
    """
    negatives = None
    if sampled_negatives:
        negatives = sample_negatives_for_eval(split, which, sampled_negatives,
                                              np.random.default_rng(seed))
    selected = None
    if users is not None:
        selected = eval_users(split, which)[users.start:users.stop]
        if negatives is not None:
            negatives = negatives[users.start:users.stop]
        if not selected:
            return torch.zeros(0, dtype=torch.int64)
    all_ranks = []
    offset = 0
    batches = eval_batches(split, which, max_len=max_len, batch_size=batch_size, users=selected)
    total = None  # batches, for the bar
    if progress:
        total = -(-len(selected if selected is not None else eval_users(split, which))
                  // batch_size)
    for batch in tqdm(batches, desc=desc or f"eval {which}", total=total, unit="batch",
                      disable=not progress, leave=False):
        scores = scorer(batch.inputs).float()
        device = scores.device
        targets = batch.targets.to(device)
        if negatives is None:
            scores = mask_scores(scores, batch.history.to(device), targets)
        else:
            rows = negatives[offset:offset + len(batch.targets)].to(device)
            scores, targets = sampled_scores(scores, targets, rows)
        offset += len(batch.targets)
        all_ranks.append(target_ranks(scores, targets).cpu())
    return torch.cat(all_ranks)

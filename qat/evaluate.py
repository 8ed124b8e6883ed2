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

from data import LeaveOneOutSplit, eval_batches, sample_negatives_for_eval
from qat.metrics import hit_at_k, mask_scores, ndcg_at_k, sampled_scores, target_ranks

Scorer = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def evaluate(scorer: Scorer, split: LeaveOneOutSplit, which: str, *, max_len: int,
             batch_size: int = 512, k: int = 10, sampled_negatives: int = 0,
             seed: int = 0, progress: bool = False) -> dict[str, float]:
    """nDCG@k and Hit@k of ``scorer`` on the validation or test items.

    Full ranking ranks the target against every item the user has not interacted with
    (their input history is masked, the target excepted). With ``sampled_negatives=100`` it
    ranks the target against 100 random unseen items instead (the SASRec paper's protocol).

    Returns:
        ``{"ndcg@10": .., "hit@10": .., "users": N, "seconds": ..}`` (keys follow ``k``).
    """
    start = time.perf_counter()
    ranks = compute_ranks(scorer, split, which, max_len=max_len, batch_size=batch_size,
                          sampled_negatives=sampled_negatives, seed=seed, progress=progress)
    return {
        f"ndcg@{k}": float(ndcg_at_k(ranks, k).mean()),
        f"hit@{k}": float(hit_at_k(ranks, k).mean()),
        "users": int(ranks.numel()),
        "seconds": time.perf_counter() - start,
    }


@torch.no_grad()
def compute_ranks(scorer: Scorer, split: LeaveOneOutSplit, which: str, *, max_len: int,
                  batch_size: int = 512, sampled_negatives: int = 0, seed: int = 0,
                  progress: bool = False) -> torch.Tensor:
    """0-based pessimistic rank of every evaluated user's target, in user-id order."""
    negatives = None
    if sampled_negatives:
        negatives = sample_negatives_for_eval(split, which, sampled_negatives,
                                              np.random.default_rng(seed))
    all_ranks = []
    offset = 0
    batches = eval_batches(split, which, max_len=max_len, batch_size=batch_size)
    for batch in tqdm(batches, desc=f"eval {which}", disable=not progress, leave=False):
        scores = scorer(batch.inputs).float()
        if negatives is None:
            scores, targets = mask_scores(scores, batch.history, batch.targets), batch.targets
        else:
            rows = negatives[offset:offset + len(batch.targets)]
            scores, targets = sampled_scores(scores, batch.targets, rows)
        offset += len(batch.targets)
        all_ranks.append(target_ranks(scores, targets))
    return torch.cat(all_ranks)

"""Ranking metrics for leave-one-out evaluation: nDCG@k and Hit@k of one target per user.

One implementation serves the torch and the onnxruntime models alike: both hand this module a
(B, num_items + 1) score matrix.

Ranking is pessimistic: every candidate whose score is >= the target's counts as ranked above
it, so a scorer that ties everything (a constant) earns rank ``num_candidates - 1`` and metric 0,
never a lucky rank 0. With one relevant item the ideal DCG is 1, so

    nDCG@k = 1 / log2(rank + 2)  if rank < k else 0,      Hit@k = [rank < k]

with ``rank`` 0-based (Kang & McAuley 2018, section IV-C).
"""
from __future__ import annotations

import torch

PADDING_ITEM = 0


def mask_scores(scores: torch.Tensor, history: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Scores with the padding item and each user's history set to -inf, the target kept.

    Args:
        scores: (B, num_items + 1) float scores; column 0 is the padding item.
        history: (B, H) item ids to exclude, padded with 0.
        targets: (B,) item id to rank.
    Returns:
        A new (B, num_items + 1) tensor.
    """
    masked = scores.clone()
    masked.scatter_(1, history, float("-inf"))  # padding 0 is masked here too
    masked[:, PADDING_ITEM] = float("-inf")
    rows = torch.arange(scores.shape[0], device=scores.device)
    masked[rows, targets] = scores[rows, targets]  # the target competes even if seen before
    return masked


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based pessimistic rank of each target among the unmasked candidates.

    A candidate is unmasked when its score is not -inf (``mask_scores`` sets history and padding
    to -inf). With the target's score finite,

        rank = #{j != target unmasked : score_j >= score_target or score_j is NaN}

    (a NaN candidate cannot be ordered, so it counts against the target). A target with a
    non-finite score (NaN, +inf or -inf) is unranked: its rank is the number of columns, behind
    every candidate, masked ones included, so a model that outputs NaN scores 0 at any k a
    ranking can reach, however short the candidate list a user's history leaves.
    """
    rows = torch.arange(scores.shape[0], device=scores.device)
    target_scores = scores[rows, targets]  # (B,)
    unmasked = scores != float("-inf")
    unmasked[rows, targets] = False  # the target does not compete with itself
    above = unmasked & ((scores >= target_scores.unsqueeze(1)) | torch.isnan(scores))
    unranked = torch.full_like(targets, scores.shape[1])
    return torch.where(torch.isfinite(target_scores), above.sum(dim=1), unranked)


def ndcg_at_k(ranks: torch.Tensor, k: int = 10) -> torch.Tensor:
    """Per-user nDCG@k for 0-based ranks (one relevant item)."""
    gains = 1.0 / torch.log2(ranks.double() + 2.0)
    return torch.where(ranks < k, gains, torch.zeros_like(gains))


def hit_at_k(ranks: torch.Tensor, k: int = 10) -> torch.Tensor:
    """Per-user Hit@k (a.k.a. HR@k, Recall@k with one target) for 0-based ranks."""
    return (ranks < k).double()


def sampled_scores(scores: torch.Tensor, targets: torch.Tensor,
                   negatives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores restricted to [target, negatives...] for the sampled protocol of the paper.

    Returns (B, 1 + n) scores and targets that are all 0 (the target sits in column 0).
    """
    candidates = torch.cat([targets.unsqueeze(1), negatives], dim=1)
    return scores.gather(1, candidates), torch.zeros_like(targets)

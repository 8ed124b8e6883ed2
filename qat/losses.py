"""Training losses for next-item prediction.

* ``softmax_ce``: full softmax cross-entropy over all items at every non-padding position,
  the SASRec+ setup of Klenitskiy & Vasilev 2023 (arXiv:2309.07602), far stronger than BCE.
* ``sampled_bce``: the SASRec paper's binary cross-entropy with one (or more) uniformly sampled
  negatives per position (Kang & McAuley 2018, eq. 8).

Both compute logits only at positions whose target is an item, so padding costs nothing.
Both average over those positions by default; ``normalizer`` replaces the batch's own target
count with a constant, so that every position weighs the same across batches of different
sizes (``data.TrainBatcher.mean_targets_per_batch``; see ``qat.train.Trainer``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _reduce(per_position: torch.Tensor, normalizer: float | None) -> torch.Tensor:
    if normalizer is None:
        return per_position.mean()
    if not normalizer > 0:
        raise ValueError(f"normalizer must be positive, got {normalizer}")
    return per_position.sum() / normalizer


def softmax_ce(hidden: torch.Tensor, targets: torch.Tensor, item_table: torch.Tensor,
               normalizer: float | None = None) -> torch.Tensor:
    """-sum log softmax(h_t . E^T)[target_t] over positions with a target, divided by their
    count M (default) or by ``normalizer``.

    Args:
        hidden: (B, T, d) hidden states.
        targets: (B, T) next item ids, 0 at padding.
        item_table: (num_items + 1, d); row 0 (padding) is never a candidate.
        normalizer: divide the summed loss by this instead of M.
    """
    keep = targets != 0
    logits = hidden[keep] @ item_table[1:].t()  # (M, num_items)
    return _reduce(F.cross_entropy(logits, targets[keep] - 1, reduction="none"), normalizer)


def sampled_bce(hidden: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor,
                item_table: torch.Tensor, normalizer: float | None = None) -> torch.Tensor:
    """BCE of the target (label 1) and sampled negatives (label 0) at positions with a target.

    Per position: ``-log s(h.e_target) - mean_j log(1 - s(h.e_neg_j))``, then averaged over
    the M positions (default) or summed and divided by ``normalizer``.

    Args:
        negatives: (B, T, n) sampled item ids, as ``data.TrainBatcher`` yields them.
        normalizer: divide the summed loss by this instead of M.
    """
    keep = targets != 0
    h = hidden[keep]  # (M, d)
    pos = (h * item_table[targets[keep]]).sum(-1)  # (M,)
    neg = torch.einsum("md,mnd->mn", h, item_table[negatives[keep]])  # (M, n)
    per_position = (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos), reduction="none")
                    + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg),
                                                         reduction="none").mean(-1))
    return _reduce(per_position, normalizer)

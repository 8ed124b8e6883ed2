"""Training losses for next-item prediction.

* ``softmax_ce``: full softmax cross-entropy over all items at every non-padding position,
  the SASRec+ setup of Klenitskiy & Vasilev 2023 (arXiv:2309.07602), far stronger than BCE.
* ``sampled_bce``: the SASRec paper's binary cross-entropy with one (or more) uniformly sampled
  negatives per position (Kang & McAuley 2018, eq. 8).

Both compute logits only at positions whose target is an item, so padding costs nothing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def softmax_ce(hidden: torch.Tensor, targets: torch.Tensor,
               item_table: torch.Tensor) -> torch.Tensor:
    """-mean log softmax(h_t . E^T)[target_t] over positions with a target.

    Args:
        hidden: (B, T, d) hidden states.
        targets: (B, T) next item ids, 0 at padding.
        item_table: (num_items + 1, d); row 0 (padding) is never a candidate.
    """
    keep = targets != 0
    logits = hidden[keep] @ item_table[1:].t()  # (M, num_items)
    return F.cross_entropy(logits, targets[keep] - 1)


def sampled_bce(hidden: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor,
                item_table: torch.Tensor) -> torch.Tensor:
    """BCE of the target (label 1) and sampled negatives (label 0) at positions with a target.

    Args:
        negatives: (B, T, n) sampled item ids, as ``data.TrainBatcher`` yields them.
    """
    keep = targets != 0
    h = hidden[keep]  # (M, d)
    pos = (h * item_table[targets[keep]]).sum(-1)  # (M,)
    neg = torch.einsum("md,mnd->mn", h, item_table[negatives[keep]])  # (M, n)
    return (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
            + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg)))

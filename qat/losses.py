"""Training losses for next-item prediction.

* ``softmax_ce``: full softmax cross-entropy over all items at every non-padding position,
  the SASRec+ setup of Klenitskiy & Vasilev 2023 (arXiv:2309.07602), far stronger than BCE.
* ``sampled_bce``: the SASRec paper's binary cross-entropy with one (or more) uniformly sampled
  negatives per position (Kang & McAuley 2018, eq. 8).
* ``sampled_softmax_ce``: softmax cross-entropy over the target and ``N`` negatives shared by
  the whole batch, with the logQ correction for non-uniform proposals (sampled softmax; the
  "SASRec+ 3000" of Klenitskiy & Vasilev 2023). Negatives come from
  ``qat.negative_sampling.NegativeSampler``.

All compute logits only at positions whose target is an item, so padding costs nothing.
All average over those positions by default; ``normalizer`` replaces the batch's own target
count with a constant, so that every position weighs the same across batches of different
sizes (``data.TrainBatcher.mean_targets_per_batch``; see ``qat.train.Trainer``).
"""
from __future__ import annotations

from typing import Any

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


def sampled_softmax_ce(hidden: torch.Tensor, targets: torch.Tensor, item_table: torch.Tensor,
                       negatives: torch.Tensor, log_q: torch.Tensor | None = None,
                       normalizer: float | None = None) -> torch.Tensor:
    r"""Sampled softmax cross-entropy with ``N`` negatives shared by every position of a batch.

    For a target position p with hidden state h_p and target t_p, let o_{p,i} = h_p . e_i be the
    score of item i, S = (s_1, ..., s_N) the negatives drawn from a proposal Q (the same S for
    the whole batch), and c_i = log(N Q(i)) the log expected count of item i in S (``log_q``).
    With corrected logits o'_{p,i} = o_{p,i} - c_i,

    .. math::

        \ell_p = -o'_{p,t_p} + \log\Big(e^{o'_{p,t_p}} +
                  \sum_{j:\, s_j \ne t_p} e^{o'_{p,s_j}}\Big),
        \qquad L = \frac{1}{Z} \sum_p \ell_p,

    Z = the number of target positions M (default) or ``normalizer``. The negatives' sum is an
    importance-sampling estimate of the full softmax's: E_S[sum_{j: s_j != t} exp(o_{s_j}) /
    (N Q(s_j))] = sum_{i != t} exp(o_i) whenever N Q(i) is item i's expected count in S (i.i.d.
    draws, or distinct uniform ones) (Bengio & Senecal 2008, IEEE Trans. Neural Networks
    19(4); Jean et al. 2015, arXiv:1412.2007). Subtracting log(N Q) from every candidate's
    logit, the target's included, is the "logQ correction" of Yi et al. 2019 (RecSys,
    "Sampling-bias-corrected neural modeling for large corpus item recommendations"), as
    ``tf.nn.sampled_softmax_loss`` applies it.

    * Negatives equal to the position's target are masked out (their logit is -inf): the
      target is counted once, by its own term ("remove accidental hits").
    * Negatives equal to other items of the user's history (or to other positions' targets)
      are kept as negatives, as the full softmax (``softmax_ce``) keeps them, and as sampled
      SASRec+ / gSASRec implementations do.
    * Uniform Q (with or without replacement): c_i = log(N / I) is one constant for every
      logit and cancels in the softmax, so pass ``log_q=None``.
    * Identity: with S = every item once and uniform Q this equals ``softmax_ce`` exactly (up
      to float rounding), the known answer the tests check.

    Args:
        hidden: (B, T, d) hidden states.
        targets: (B, T) next item ids, 0 at padding.
        item_table: (num_items + 1, d) item embeddings (fake-quantized under QAT).
        negatives: (N,) item ids in 1..num_items, shared by every position; duplicates allowed
            (each draw is one term of the sum).
        log_q: (num_items + 1,) log(N Q(i)) per item id, or None (uniform Q: no correction).
        normalizer: divide the summed loss by this instead of M.
    """
    if negatives.dim() != 1:
        raise ValueError(f"negatives must be a 1-d tensor of item ids shared by the batch, got "
                         f"shape {tuple(negatives.shape)}")
    keep = targets != 0
    h = hidden[keep]  # (M, d)
    positives = targets[keep]  # (M,)
    pos = (h * item_table[positives]).sum(-1)  # (M,) target logits
    bias = None
    if log_q is not None:
        pos = pos - log_q[positives].to(pos.dtype)
        bias = -log_q[negatives].to(pos.dtype)  # (N,)
    rows, cols = accidental_hits(positives, negatives)
    per_position = _SharedNegativesCE.apply(h, item_table[negatives], pos, bias, rows, cols)
    return _reduce(per_position, normalizer)


def accidental_hits(positives: torch.Tensor, negatives: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, cols)`` with ``negatives[cols] == positives[rows]``: every (position, draw) pair
    where a drawn negative is the position's own target, found by binary search in
    O((M + hits) log N) without an (M, N) comparison."""
    sorted_negatives, order = torch.sort(negatives)
    first = torch.searchsorted(sorted_negatives, positives)
    counts = torch.searchsorted(sorted_negatives, positives, right=True) - first  # (M,)
    rows = torch.repeat_interleave(torch.arange(len(positives), device=positives.device), counts)
    # the k-th hit of a row sits at sorted index first[row] + k
    starts = torch.repeat_interleave(first, counts)
    within = torch.arange(len(rows), device=positives.device) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts)
    return rows, order[starts + within]


class _SharedNegativesCE(torch.autograd.Function):
    """Per-position sampled CE, ``logsumexp([pos, h S^T + bias]) - pos``, with hits masked.

    Written out so that the (M, N) logits are one buffer turned into probabilities in place
    (autograd over matmul, bias, mask, concatenation and logsumexp keeps about six (M, N)
    tensors). Backward, with p the softmax over [target, negatives] and g the upstream gradient:
    dL/dpos = (p_target - 1) g, dL/dh = (p_neg g) S, dL/dS = (p_neg g)^T h.
    """

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, candidates: torch.Tensor, pos: torch.Tensor,
                bias: torch.Tensor | None, rows: torch.Tensor, cols: torch.Tensor
                ) -> torch.Tensor:
        logits = h @ candidates.t()  # (M, N)
        if bias is not None:
            logits += bias
        logits[rows, cols] = float("-inf")
        top = torch.maximum(logits.amax(dim=1), pos) if logits.shape[1] else pos  # (M,)
        probs = logits.sub_(top.unsqueeze(1)).exp_()  # unnormalised, in place
        pos_exp = torch.exp(pos - top)
        total = probs.sum(dim=1) + pos_exp
        probs.div_(total.unsqueeze(1))
        ctx.save_for_backward(h, candidates, probs, pos_exp / total)
        return top + torch.log(total) - pos

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, candidates, probs, p_target = ctx.saved_tensors
        weighted = probs * grad.unsqueeze(1)  # (M, N)
        return (weighted @ candidates, weighted.t() @ h, (p_target - 1) * grad, None, None, None)

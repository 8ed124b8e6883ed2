"""Negatives for the sampled softmax (``--loss sampled-ce``): one set of items per batch.

``NegativeSampler.sample()`` draws ``N`` item ids from a proposal distribution ``Q`` over
``1..num_items``; ``qat.losses.sampled_softmax_ce`` scores every target position of the batch
against the same ``N`` items (one ``(M, d) x (d, N)`` product). Klenitskiy & Vasilev's
"SASRec+ 3000" (arXiv:2309.07602) draws 3000 distinct items per sequence instead; one set per
batch costs one matrix product instead of B.

Proposals (``--negative-sampling``):

* ``uniform``: ``min(N, I)`` distinct items, uniformly without replacement (``N >= I``: the
  whole catalogue, i.e. the full softmax). Every item is drawn with probability ``N / I``, so
  its expected count ``N Q(i) = N / I`` is the same for every logit: the logQ correction
  cancels in the softmax and ``log_q`` is None. Without replacement matters when ``N`` is close
  to ``I``: 3000 draws with replacement from ML-1M's 3,416 items hit only 1 - exp(-3000/3416)
  = 58% of them, 3000 distinct draws 88%.
* ``popularity``: ``N`` i.i.d. draws with replacement (so ``N Q(i)`` is exactly the expected
  count; duplicates are separate terms of the sum) from a smoothed unigram distribution of the
  training sequences,

      Q(i) = (c_i + 1)^alpha / sum_k (c_k + 1)^alpha,   alpha = 0.75,

  where ``c_i`` is how often item ``i`` occurs in ``split.train``. The exponent 3/4 is
  word2vec's unigram^(3/4) noise distribution (Mikolov et al. 2013, "Distributed
  representations of words and phrases", arXiv:1310.4546): it flattens the head, so the tail is
  still sampled. The ``+ 1`` (add-one) keeps every item drawable, including items that occur
  only in validation or test: an item never drawn would never be pushed down. ``log_q[i] =
  log(N Q(i))`` is the expected number of copies of ``i`` among the ``N`` draws, subtracted
  from every logit, target included (Bengio & Senecal 2008; Jean et al. 2015, arXiv:1412.2007;
  Yi et al. 2019, "Sampling-bias-corrected neural modeling", RecSys).

Randomness comes from the sampler's own ``torch.Generator`` (seeded by ``TrainConfig.seed``),
not from torch's global generator or the batcher's numpy generator, so a ``ce`` and a
``sampled-ce`` run with the same seed see the same batches and dropout masks. ``get_state`` /
``set_state`` let ``qat.train.Trainer`` checkpoint it, so ``--resume`` is bit-exact.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from qat.config import NEGATIVE_SAMPLING

POPULARITY_ALPHA = 0.75  # word2vec's unigram^(3/4) (Mikolov et al. 2013)


def item_counts(sequences: Iterable[Iterable[int]], num_items: int) -> torch.Tensor:
    """(num_items + 1,) int64 occurrences of every item id in ``sequences`` (index 0 unused).

    Raises:
        ValueError: an id outside ``1..num_items``.
    """
    flat = torch.tensor([item for seq in sequences for item in seq], dtype=torch.int64)
    if flat.numel() and (int(flat.min()) < 1 or int(flat.max()) > num_items):
        raise ValueError(f"item ids must lie in 1..{num_items}, got {int(flat.min())}.."
                         f"{int(flat.max())}")
    return torch.bincount(flat, minlength=num_items + 1)


def popularity_distribution(counts: torch.Tensor, alpha: float = POPULARITY_ALPHA
                            ) -> torch.Tensor:
    """``Q(i) = (c_i + 1)^alpha / sum_k (c_k + 1)^alpha`` over ``i >= 1``; ``Q(0) = 0``.

    Args:
        counts: (num_items + 1,) item counts, index 0 (padding) ignored.
        alpha: smoothing exponent (0: uniform, 1: add-one unigram).
    Returns:
        (num_items + 1,) float64 probabilities summing to 1.
    """
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    weights = (counts.to(torch.float64) + 1.0) ** alpha
    weights[0] = 0.0
    return weights / weights.sum()


class NegativeSampler:
    """``N`` negatives per batch from ``uniform`` or ``popularity`` (see the module docstring).

    Attributes:
        num_items: items are ``1..num_items``.
        negatives: ``N``, items drawn per call of ``sample`` (``uniform``: at most
            ``num_items``, all distinct).
        distribution: ``"uniform"`` or ``"popularity"``.
        probs: (num_items + 1,) float64 ``Q`` (``probs[0] = 0``).
        log_q: (num_items + 1,) float32 ``log(N Q(i))``, the logQ correction; None for
            ``uniform``, where it is the constant ``log(N / num_items)`` and cancels.
        generator: the CPU ``torch.Generator`` every draw uses.

    Example::

        sampler = NegativeSampler(1000, 256, "uniform", seed=42)
        ids = sampler.sample()  # (256,) distinct int64 ids in 1..1000
    """

    def __init__(self, num_items: int, negatives: int, distribution: str = "uniform", *,
                 counts: torch.Tensor | None = None, alpha: float = POPULARITY_ALPHA,
                 seed: int = 0) -> None:
        if not isinstance(num_items, int) or num_items < 1:
            raise ValueError(f"num_items must be a positive integer, got {num_items!r}")
        if not isinstance(negatives, int) or negatives < 1:
            raise ValueError(f"--negatives must be a positive integer, got {negatives!r}")
        if distribution not in NEGATIVE_SAMPLING:
            raise ValueError(f"--negative-sampling must be one of {NEGATIVE_SAMPLING}, got "
                             f"{distribution!r}")
        self.num_items = num_items
        self.negatives = min(negatives, num_items) if distribution == "uniform" else negatives
        self.distribution = distribution
        self.generator = torch.Generator().manual_seed(seed)
        if distribution == "uniform":
            self.probs = torch.full((num_items + 1,), 1.0 / num_items, dtype=torch.float64)
            self.probs[0] = 0.0
            self.log_q: torch.Tensor | None = None
        else:
            if counts is None or counts.shape != (num_items + 1,):
                raise ValueError(f"popularity sampling needs counts of shape ({num_items + 1},)")
            self.probs = popularity_distribution(counts, alpha)
            log_q = torch.log(self.probs) + math.log(negatives)
            log_q[0] = 0.0  # padding: never a target nor a negative
            self.log_q = log_q.to(torch.float32)

    @classmethod
    def from_sequences(cls, sequences: Iterable[Iterable[int]], num_items: int, negatives: int,
                       distribution: str = "uniform", *, alpha: float = POPULARITY_ALPHA,
                       seed: int = 0) -> NegativeSampler:
        """A sampler whose popularity counts come from ``sequences`` (the training sequences)."""
        counts = item_counts(sequences, num_items) if distribution == "popularity" else None
        return cls(num_items, negatives, distribution, counts=counts, alpha=alpha, seed=seed)

    def sample(self) -> torch.Tensor:
        """(N,) int64 item ids in ``1..num_items``: distinct (``uniform``) or i.i.d. from ``Q``
        with replacement (``popularity``)."""
        if self.distribution == "uniform":
            return torch.randperm(self.num_items, generator=self.generator)[:self.negatives] + 1
        return torch.multinomial(self.probs, self.negatives, replacement=True,
                                 generator=self.generator)

    def get_state(self) -> torch.Tensor:
        """The generator's state, for a checkpoint."""
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        """Restore a state from ``get_state``."""
        self.generator.set_state(state)

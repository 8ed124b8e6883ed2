"""softmax_ce and sampled_bce against formulas written out per position, and their normalizer."""

import math

import numpy as np
import pytest
import torch

from data import LeaveOneOutSplit, TrainBatcher
from qat.losses import sampled_bce, softmax_ce


def _case(seed=0, b=3, t=4, d=5, items=7):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, d, generator=g, dtype=torch.float64)
    table = torch.randn(items + 1, d, generator=g, dtype=torch.float64)
    targets = torch.tensor([[0, 0, 3, 1], [2, 5, 7, 4], [0, 0, 0, 6]])
    negatives = torch.randint(1, items + 1, (b, t, 2), generator=g) * (targets != 0)[..., None]
    return hidden, table, targets, negatives


def _ce_terms(hidden, table, targets):
    terms = []
    for i, j in zip(*np.nonzero(targets.numpy()), strict=True):
        logits = [float(hidden[i, j] @ table[k]) for k in range(1, table.shape[0])]
        top = max(logits)
        log_z = top + math.log(sum(math.exp(v - top) for v in logits))
        terms.append(log_z - logits[int(targets[i, j]) - 1])
    return terms


def _bce_terms(hidden, table, targets, negatives):
    def log_sigmoid(x):
        return -math.log1p(math.exp(-x))

    terms = []
    for i, j in zip(*np.nonzero(targets.numpy()), strict=True):
        h = hidden[i, j]
        pos = float(h @ table[targets[i, j]])
        negs = [float(h @ table[n]) for n in negatives[i, j]]
        terms.append(-log_sigmoid(pos) - sum(log_sigmoid(-v) for v in negs) / len(negs))
    return terms


def test_softmax_ce_matches_per_position_formula():
    hidden, table, targets, _ = _case()
    terms = _ce_terms(hidden, table, targets)
    assert len(terms) == 7
    assert softmax_ce(hidden, targets, table).item() == pytest.approx(sum(terms) / 7, rel=1e-12)
    assert softmax_ce(hidden, targets, table, normalizer=20.0).item() == pytest.approx(
        sum(terms) / 20, rel=1e-12)


def test_sampled_bce_matches_per_position_formula():
    hidden, table, targets, negatives = _case(seed=1)
    terms = _bce_terms(hidden, table, targets, negatives)
    got = sampled_bce(hidden, targets, negatives, table).item()
    assert got == pytest.approx(sum(terms) / len(terms), rel=1e-12)
    got = sampled_bce(hidden, targets, negatives, table, normalizer=3.0).item()
    assert got == pytest.approx(sum(terms) / 3, rel=1e-12)


def test_padding_positions_get_no_gradient():
    hidden, table, targets, negatives = _case(seed=2)
    hidden.requires_grad_(True)
    (softmax_ce(hidden, targets, table, 5.0)
     + sampled_bce(hidden, targets, negatives, table, 5.0)).backward()
    pad = targets == 0
    assert torch.all(hidden.grad[pad] == 0)
    assert torch.all(hidden.grad[~pad].abs().sum(-1) > 0)


@pytest.mark.parametrize("normalizer", [0.0, -1.0, float("nan")])
def test_normalizer_must_be_positive(normalizer):
    hidden, table, targets, _ = _case()
    with pytest.raises(ValueError, match="normalizer"):
        softmax_ce(hidden, targets, table, normalizer)


def test_summed_loss_weights_positions_not_batches():
    """Two batches with 7 and 2 targets: with the shared normalizer every target counts the
    same, so the sum equals the mean over all 9 targets times the number of batches."""
    hidden, table, targets, _ = _case(seed=3)
    small = torch.zeros_like(targets)
    small[0, 3], small[2, 3] = 1, 6
    normalizer = (7 + 2) / 2
    total = (softmax_ce(hidden, targets, table, normalizer)
             + softmax_ce(hidden, small, table, normalizer)).item()
    terms = _ce_terms(hidden, table, targets) + _ce_terms(hidden, table, small)
    assert total == pytest.approx(2 * sum(terms) / 9, rel=1e-12)


def test_mean_targets_per_batch():
    # windows (targets per user): 5, 1, 2 (user 3 has one item: not trained on); max_len 4
    # caps user 1 at 4 -> 7 targets over ceil(3 / 2) = 2 batches
    split = LeaveOneOutSplit(train={1: [1, 2, 3, 4, 5, 6], 2: [7, 8], 3: [9], 4: [2, 3, 4]},
                             valid={}, test={}, num_items=9)
    batcher = TrainBatcher(split, max_len=4, batch_size=2)
    assert batcher.mean_targets_per_batch == 3.5
    targets = sum(int((b.targets != 0).sum()) for b in batcher.epoch(np.random.default_rng(0)))
    assert targets / len(batcher) == batcher.mean_targets_per_batch

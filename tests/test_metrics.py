"""Ranking metrics on score matrices with hand-computed answers."""
import math

import torch

from qat.metrics import hit_at_k, mask_scores, ndcg_at_k, sampled_scores, target_ranks


def test_ranks_ndcg_and_hit_match_hand_computation():
    # 6 items + padding column 0. User 0: target 3 has the 3rd highest score -> rank 2.
    # User 1: target 1 has the highest score -> rank 0. User 2: target is last of 6 -> rank 5.
    scores = torch.tensor([
        [9.0, 0.5, 0.9, 0.7, 0.1, 0.8, 0.2],
        [9.0, 0.9, 0.1, 0.2, 0.3, 0.4, 0.5],
        [9.0, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
    ])
    targets = torch.tensor([3, 1, 6])
    history = torch.zeros(3, 1, dtype=torch.long)
    ranks = target_ranks(mask_scores(scores, history, targets), targets)
    assert ranks.tolist() == [2, 0, 5]
    ndcg = ndcg_at_k(ranks, k=3)
    assert torch.allclose(ndcg, torch.tensor([1 / math.log2(4), 1.0, 0.0], dtype=torch.double))
    assert hit_at_k(ranks, k=3).tolist() == [1.0, 1.0, 0.0]
    assert hit_at_k(ranks, k=10).tolist() == [1.0, 1.0, 1.0]


def test_history_is_masked_but_target_is_not():
    scores = torch.tensor([[0.0, 0.9, 0.8, 0.7, 0.6]])
    targets = torch.tensor([3])
    # items 1 and 2 were seen: they no longer outrank the target; 3 is in history too (a repeat)
    history = torch.tensor([[1, 2, 3]])
    masked = mask_scores(scores, history, targets)
    assert masked[0, 3] == 0.7
    assert target_ranks(masked, targets).tolist() == [0]
    assert torch.isinf(masked[0, [0, 1, 2]]).all()


def test_constant_scorer_earns_nothing():
    scores = torch.ones(4, 101)
    targets = torch.tensor([1, 7, 50, 100])
    ranks = target_ranks(mask_scores(scores, torch.zeros(4, 1, dtype=torch.long), targets), targets)
    assert ranks.tolist() == [99, 99, 99, 99]  # every other item ties and counts as above
    assert ndcg_at_k(ranks).sum() == 0 and hit_at_k(ranks).sum() == 0


def test_ties_rank_pessimistically():
    scores = torch.tensor([[0.0, 0.5, 0.5, 0.5, 0.1]])
    ranks = target_ranks(scores.clone().index_fill_(1, torch.tensor([0]), float("-inf")),
                         torch.tensor([2]))
    assert ranks.tolist() == [2]


def test_nan_target_ranks_last():
    scores = torch.tensor([[float("-inf"), 0.3, float("nan"), 0.1]])
    assert target_ranks(scores, torch.tensor([2])).tolist() == [4]


def test_all_nan_scores_rank_every_target_last():
    # A model with NaN weights outputs NaN everywhere: it must score 0, not a perfect 1.
    scores = torch.full((3, 6), float("nan"))
    targets = torch.tensor([1, 4, 5])
    history = torch.tensor([[2, 0], [0, 0], [1, 3]])
    ranks = target_ranks(mask_scores(scores, history, targets), targets)
    # unranked: behind all 6 columns, although user 2 has only 2 unmasked other items
    assert ranks.tolist() == [6, 6, 6]
    assert ndcg_at_k(ranks, k=5).tolist() == [0.0, 0.0, 0.0]
    assert hit_at_k(ranks, k=5).tolist() == [0.0, 0.0, 0.0]


def test_nan_candidate_counts_above_a_finite_target():
    scores = torch.tensor([[float("-inf"), 0.9, float("nan"), 0.1, float("inf")]])
    assert target_ranks(scores, torch.tensor([3])).tolist() == [3]  # 0.9, NaN and +inf
    assert target_ranks(scores, torch.tensor([4])).tolist() == [5]  # +inf target: unranked


def test_sampled_scores_put_target_first():
    scores = torch.arange(10.0).unsqueeze(0)
    s, t = sampled_scores(scores, torch.tensor([5]), torch.tensor([[1, 9, 2]]))
    assert s.tolist() == [[5.0, 1.0, 9.0, 2.0]] and t.tolist() == [0]
    assert target_ranks(s, t).tolist() == [1]

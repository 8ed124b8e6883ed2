"""TrainBatcher, eval_batches and sample_negatives_for_eval."""

import numpy as np
import pytest
import torch

from data import (
    LeaveOneOutSplit,
    TrainBatch,
    TrainBatcher,
    eval_batches,
    num_eval_users,
    sample_negatives_for_eval,
)


def _split(train, valid=None, test=None, num_items=9):
    return LeaveOneOutSplit(train=train, valid=valid or {}, test=test or {}, num_items=num_items)


HAND = _split({1: [1, 2, 3, 4, 5, 6], 2: [7, 8], 3: [9], 4: [2, 3, 4]})


def _random_split(seed=0, num_users=50, num_items=20):
    rng = np.random.default_rng(seed)
    train = {
        u: rng.integers(1, num_items + 1, size=int(rng.integers(1, 16))).tolist()
        for u in range(1, num_users + 1)
    }
    return _split(train, num_items=num_items)


def _by_user(batches):
    """user -> (inputs row, targets row) over all batches, asserting each user appears once."""
    rows = {}
    for b in batches:
        for u, x, y in zip(b.users.tolist(), b.inputs.tolist(), b.targets.tolist(), strict=True):
            assert u not in rows, f"user {u} twice in one epoch"
            rows[u] = (x, y)
    return rows


@pytest.mark.parametrize("bucket", [False, True])
def test_hand_example_truncates_from_the_end_and_left_pads(bucket):
    batcher = TrainBatcher(HAND, max_len=3, batch_size=10, bucket=bucket)
    batches = list(batcher.epoch(np.random.default_rng(0)))
    assert len(batches) == len(batcher) == 1
    b = batches[0]
    assert b.inputs.dtype == b.targets.dtype == b.users.dtype == torch.int64
    assert b.negatives is None
    assert _by_user(batches) == {  # user 3 (one train item) is not trained on
        1: ([3, 4, 5], [4, 5, 6]),
        2: ([0, 0, 7], [0, 0, 8]),
        4: ([0, 2, 3], [0, 3, 4]),
    }


def test_bucketed_batch_is_trimmed_to_longest_sequence():
    batcher = TrainBatcher(HAND, max_len=10, batch_size=10, bucket=True)
    assert _by_user(batcher.epoch(np.random.default_rng(0))) == {
        1: ([1, 2, 3, 4, 5], [2, 3, 4, 5, 6]),
        2: ([0, 0, 0, 0, 7], [0, 0, 0, 0, 8]),
        4: ([0, 0, 0, 2, 3], [0, 0, 0, 3, 4]),
    }
    unbucketed = TrainBatcher(HAND, max_len=10, batch_size=10, bucket=False)
    (b,) = unbucketed.epoch(np.random.default_rng(0))
    assert b.inputs.shape == (3, 10)


@pytest.mark.parametrize("bucket", [False, True])
@pytest.mark.parametrize("max_len", [1, 4, 50])
def test_epoch_visits_every_eligible_user_once(bucket, max_len):
    split = _random_split()
    batcher = TrainBatcher(split, max_len=max_len, batch_size=7, bucket=bucket, bucket_size=2)
    batches = list(batcher.epoch(np.random.default_rng(1)))
    eligible = {u for u, s in split.train.items() if len(s) >= 2}
    assert batcher.num_users == len(eligible)
    assert len(batches) == len(batcher) == -(-len(eligible) // 7)
    rows = _by_user(batches)
    assert set(rows) == eligible
    for u, (x, y) in rows.items():  # padding stripped, each row is the window's tail
        seq = split.train[u]
        n = min(len(seq) - 1, max_len)
        assert [i for i in x if i] == seq[:-1][-n:]
        assert [i for i in y if i] == seq[1:][-n:]
    for b in batches:
        assert ((b.inputs == 0) == (b.targets == 0)).all()
        width = b.inputs.shape[1]
        assert width <= max_len
        if bucket:  # T = longest window: the leftmost column is not all padding
            assert (b.inputs[:, 0] != 0).any()
        else:
            assert width == max_len


def test_bucketing_groups_similar_lengths():
    split = _random_split(num_users=200)
    batcher = TrainBatcher(split, max_len=50, batch_size=10, bucket=True, bucket_size=20)
    batches = list(batcher.epoch(np.random.default_rng(2)))
    padding = sum(int((b.inputs == 0).sum()) for b in batches)
    plain = TrainBatcher(split, max_len=50, batch_size=10, bucket=False)
    plain_padding = sum(int((b.inputs == 0).sum()) for b in plain.epoch(np.random.default_rng(2)))
    assert padding < plain_padding / 4


@pytest.mark.parametrize("bucket", [False, True])
def test_negatives_avoid_history_and_are_zero_on_padding(bucket):
    split = _random_split(num_items=20)
    batcher = TrainBatcher(split, max_len=8, batch_size=16, num_negatives=3, bucket=bucket)
    for b in batcher.epoch(np.random.default_rng(3)):
        assert b.negatives.shape == (*b.inputs.shape, 3)
        assert b.negatives.dtype == torch.int64
        pad = b.inputs == 0
        assert (b.negatives[pad] == 0).all()
        assert ((b.negatives[~pad] >= 1) & (b.negatives[~pad] <= 20)).all()
        for u, negs, real in zip(b.users.tolist(), b.negatives, ~pad, strict=True):
            assert not set(negs[real].flatten().tolist()) & set(split.train[u])


def test_negatives_with_crowded_histories():
    # Each user has seen 9 of 10 items: the only allowed negative is the missing one.
    train = {u: [i for i in range(1, 11) if i != u] for u in range(1, 11)}
    batcher = TrainBatcher(_split(train, num_items=10), max_len=9, batch_size=4, num_negatives=5)
    for b in batcher.epoch(np.random.default_rng(0)):
        for u, negs in zip(b.users.tolist(), b.negatives, strict=True):
            assert set(negs.flatten().tolist()) - {0} == {u}


def test_same_seed_same_batches():
    split = _random_split()
    batcher = TrainBatcher(split, max_len=6, batch_size=8, num_negatives=2)

    def run(seed):
        return [
            (b.users, b.inputs, b.targets, b.negatives)
            for b in batcher.epoch(np.random.default_rng(seed))
        ]

    first, second, other = run(5), run(5), run(6)
    for a, b in zip(first, second, strict=True):
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, atol=0, rtol=0)
    assert [a[0].tolist() for a in first] != [a[0].tolist() for a in other]


def test_batch_to_device():
    (b,) = TrainBatcher(HAND, max_len=3, batch_size=10).epoch(np.random.default_rng(0))
    moved = b.to("cpu")
    assert isinstance(moved, TrainBatch) and moved.negatives is None
    torch.testing.assert_close(moved.inputs, b.inputs, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"max_len": 0, "batch_size": 1}, "max_len must be >= 1, got 0"),
        ({"max_len": 2, "batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"max_len": 2, "batch_size": 1, "num_negatives": -1}, "num_negatives must be >= 0"),
        ({"max_len": 2, "batch_size": 1, "bucket_size": 0}, "bucket_size must be >= 1"),
    ],
)
def test_train_batcher_validates_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        TrainBatcher(HAND, **kwargs)


def test_train_batcher_needs_an_eligible_user():
    with pytest.raises(ValueError, match="no user has at least 2 train items"):
        TrainBatcher(_split({1: [1], 2: [2]}), max_len=5, batch_size=2)


def test_train_batcher_user_with_every_item():
    with pytest.raises(ValueError, match="user 2 has interacted with all 3 items"):
        TrainBatcher(
            _split({1: [1, 2], 2: [3, 1, 2]}, num_items=3), max_len=5, batch_size=2, num_negatives=1
        )


# Eval hand example: user 3 had only 2 interactions (train only); user 4's test item repeats a
# train item.
EVAL = _split(
    {1: [1, 2, 3], 2: [6], 3: [1, 2], 4: [3, 1]},
    valid={1: 4, 2: 7, 4: 2},
    test={1: 5, 2: 8, 4: 3},
    num_items=8,
)


def _cat(batches, name):
    return [row for b in batches for row in getattr(b, name).tolist()]


def test_eval_valid_exact():
    batches = list(eval_batches(EVAL, "valid", max_len=3))
    assert len(batches) == 1
    (b,) = batches
    assert b.users.tolist() == [1, 2, 4]
    assert b.inputs.tolist() == [[1, 2, 3], [0, 0, 6], [0, 3, 1]]
    assert b.targets.tolist() == [4, 7, 2]
    assert b.history.tolist() == [[1, 2, 3], [6, 0, 0], [3, 1, 0]]
    assert num_eval_users(EVAL, "valid") == 3


def test_eval_test_exact_history_includes_valid_item():
    batches = list(eval_batches(EVAL, "test", max_len=3, batch_size=2))
    assert [b.users.tolist() for b in batches] == [[1, 2], [4]]
    assert _cat(batches, "inputs") == [[2, 3, 4], [0, 6, 7], [3, 1, 2]]
    assert _cat(batches, "targets") == [5, 8, 3]
    # Not cut to max_len; padded at the end to the batch's longest history.
    assert batches[0].history.tolist() == [[1, 2, 3, 4], [6, 7, 0, 0]]
    assert batches[1].history.tolist() == [[3, 1, 2]]  # holds the target 3: seen before
    assert num_eval_users(EVAL, "test") == 3


def test_eval_rows_do_not_depend_on_batching():
    one = list(eval_batches(EVAL, "test", max_len=5, batch_size=1))
    assert all(b.inputs.shape == (1, 5) for b in one)
    (whole,) = eval_batches(EVAL, "test", max_len=5)
    assert _cat(one, "inputs") == whole.inputs.tolist()


def test_eval_user_subset():
    (b,) = eval_batches(EVAL, "test", max_len=3, users=[4, 2, 4])
    assert b.users.tolist() == [2, 4]
    with pytest.raises(ValueError, match=r"users \[3\] have no valid item"):
        eval_batches(EVAL, "valid", max_len=3, users=[1, 3])


def test_eval_bad_arguments():
    with pytest.raises(ValueError, match=r"which must be one of \('valid', 'test'\), got 'train'"):
        eval_batches(EVAL, "train", max_len=3)
    with pytest.raises(ValueError, match="which must be one of"):
        num_eval_users(EVAL, "Test")
    with pytest.raises(ValueError, match="max_len and batch_size must be >= 1"):
        eval_batches(EVAL, "test", max_len=0)


def test_sampled_eval_negatives():
    split = _split(
        {u: list(range(1, u + 1)) for u in range(1, 9)},
        valid={u: u + 1 for u in range(1, 9)},
        test={u: u + 2 for u in range(1, 9)},
        num_items=12,
    )
    for which in ("valid", "test"):
        negs = sample_negatives_for_eval(split, which, 100, np.random.default_rng(0))
        assert negs.shape == (8, 100) and negs.dtype == torch.int64
        for u, row in zip(range(1, 9), negs.tolist(), strict=True):
            history = split.train[u] + ([split.valid[u]] if which == "test" else [])
            target = split.valid[u] if which == "valid" else split.test[u]
            allowed = set(range(1, 13)) - set(history) - {target}
            assert set(row) <= allowed
            assert len(set(row)) > 1  # uniform with replacement, not a constant
    again = sample_negatives_for_eval(split, "test", 100, rng=np.random.default_rng(0))
    torch.testing.assert_close(again, negs, atol=0, rtol=0)
    sub = sample_negatives_for_eval(split, "test", 7, rng=np.random.default_rng(0), users=[3])
    assert sub.shape == (1, 7) and not set(sub.flatten().tolist()) & {1, 2, 3, 4, 5}


def test_sampled_eval_negatives_errors():
    with pytest.raises(ValueError, match="pass rng=np.random.default_rng"):
        sample_negatives_for_eval(EVAL, "test")
    with pytest.raises(ValueError, match="num_negatives must be >= 1"):
        sample_negatives_for_eval(EVAL, "test", 0, np.random.default_rng(0))
    full = _split({1: [1, 2]}, valid={1: 3}, test={1: 1}, num_items=3)
    with pytest.raises(ValueError, match="user 1: history and target cover all 3 items"):
        sample_negatives_for_eval(full, "test", 5, np.random.default_rng(0))

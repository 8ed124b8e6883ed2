"""Leave-one-out split boundaries (pmixer/SASRec.pytorch ``data_partition``)."""

from data import SequenceDataset, leave_one_out


def test_boundaries():
    d = SequenceDataset(
        {1: [7], 2: [7, 8], 3: [1, 2, 3], 5: [5, 4, 3, 2, 1]},
        num_users=5,
        num_items=8,
        source="t",
    )
    split = leave_one_out(d)
    assert split.train == {1: [7], 2: [7, 8], 3: [1], 5: [5, 4, 3]}
    assert split.valid == {3: 2, 5: 2}
    assert split.test == {3: 3, 5: 1}
    assert split.num_items == 8
    assert list(split.train) == [1, 2, 3, 5]


def test_does_not_alias_dataset():
    seq = [1, 2]
    split = leave_one_out(SequenceDataset({1: seq}, 1, 2, "t"))
    split.train[1].append(9)
    assert seq == [1, 2]

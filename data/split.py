"""Leave-one-out split: last item for test, second-to-last for validation, the rest for training.

The split of the SASRec paper and of its PyTorch port (pmixer/SASRec.pytorch ``utils.py``
``data_partition``): users with fewer than 3 interactions keep everything in training and are
not evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from data.sequences import SequenceDataset


@dataclass(frozen=True)
class LeaveOneOutSplit:
    """Per-user train sequences and held-out items.

    Attributes:
        train: every user -> all but the last two items (all items if the user has < 3).
        valid: user -> second-to-last item, only users with >= 3 interactions.
        test: user -> last item, only users with >= 3 interactions.
        num_items: largest item id (items ``1..num_items``, 0 = padding).
    """

    train: dict[int, list[int]]
    valid: dict[int, int]
    test: dict[int, int]
    num_items: int


def leave_one_out(dataset: SequenceDataset) -> LeaveOneOutSplit:
    """Split every user's sequence into train / valid / test.

    Args:
        dataset: time-ordered sequences.

    Returns:
        The split; ``train`` holds every user of ``dataset`` (new lists, the dataset is not
        modified), ``valid`` and ``test`` hold users with at least 3 interactions.
    """
    train: dict[int, list[int]] = {}
    valid: dict[int, int] = {}
    test: dict[int, int] = {}
    for user in sorted(dataset.sequences):
        items = dataset.sequences[user]
        if len(items) < 3:
            train[user] = list(items)
        else:
            train[user] = items[:-2]
            valid[user] = items[-2]
            test[user] = items[-1]
    return LeaveOneOutSplit(train=train, valid=valid, test=test, num_items=dataset.num_items)


def drop_item_before_valid(split: LeaveOneOutSplit, users: Iterable[int]) -> LeaveOneOutSplit:
    """A copy of ``split`` whose ``users`` lack the interaction right before their valid item.

    Simulates, on the validation task, the damage of ``ml-1m.txt`` (it lacks 2,587 users'
    second-to-last interaction, so their test histories miss the item just before the test
    item): each listed user loses the last item of their training sequence. Held-out items are
    unchanged; users without a training item are left as they are.

    Raises:
        KeyError: a listed user is not in the split.
    """
    train = dict(split.train)
    for user in users:
        items = train[user]  # KeyError for an unknown user
        if items:
            train[user] = items[:-1]
    return LeaveOneOutSplit(train=train, valid=split.valid, test=split.test,
                            num_items=split.num_items)

"""Training and evaluation batches as tensors (models receive tensors only).

Windows follow the SASRec port (pmixer/SASRec.pytorch ``utils.py`` ``sample_function`` and
``evaluate``): a sequence is cut from its end to at most ``max_len`` items, right-aligned and
left-padded with the padding item 0.

Example::

    batcher = TrainBatcher(split, max_len=200, batch_size=128, num_negatives=1)
    rng = np.random.default_rng(0)
    for epoch in range(num_epochs):
        for batch in batcher.epoch(rng):
            logits = model(batch.inputs)        # (B, T, num_items + 1)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import TypeVar

import numpy as np
import torch

from data._sampling import ExcludedItems
from data.split import LeaveOneOutSplit

_WHICH = ("valid", "test")


@dataclass
class TrainBatch:
    """One training batch.

    Attributes:
        users: ``(B,)`` user ids.
        inputs: ``(B, T)`` item ids, left-padded with 0.
        targets: ``(B, T)`` the next item at each position; 0 where ``inputs`` is padding.
        negatives: ``(B, T, num_negatives)`` uniform items outside the user's train history,
            0 where ``inputs`` is padding; None when ``num_negatives == 0``.
    """

    users: torch.Tensor
    inputs: torch.Tensor
    targets: torch.Tensor
    negatives: torch.Tensor | None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TrainBatch:
        """A copy with every tensor on ``device``."""
        return _move(self, device, non_blocking)


@dataclass
class EvalBatch:
    """One evaluation batch.

    Attributes:
        users: ``(B,)`` user ids.
        inputs: ``(B, max_len)`` the last ``max_len`` history items, left-padded with 0.
        targets: ``(B,)`` the held-out item to rank.
        history: ``(B, H)`` the user's whole history (not cut to ``max_len``), padded with 0 at
            the end, ``H`` = longest history in the batch. Items to exclude from ranking; it
            contains the target only if the user interacted with the target before.
    """

    users: torch.Tensor
    inputs: torch.Tensor
    targets: torch.Tensor
    history: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> EvalBatch:
        """A copy with every tensor on ``device``."""
        return _move(self, device, non_blocking)


class TrainBatcher:
    """Epochs of next-item training batches over the users with at least 2 train items.

    For a user with train sequence ``seq``: ``inputs = seq[:-1][-max_len:]`` and
    ``targets = seq[1:][-max_len:]``, right-aligned and left-padded with 0.

    An epoch visits every eligible user once, in an order drawn from ``rng``. With ``bucket``
    the permutation is cut into chunks of ``batch_size * bucket_size`` users, each chunk is
    sorted by window length (stable) and cut into batches, the batch order is shuffled, and
    each batch is trimmed to ``T`` = its longest window, so little compute goes to padding.
    Without ``bucket`` batches are consecutive slices of the permutation and ``T = max_len``.

    Args:
        split: the leave-one-out split; only ``split.train`` is used.
        max_len: longest window (the model's maximum sequence length).
        batch_size: users per batch (the last batch of an epoch may be smaller).
        num_negatives: negatives per position for sampled losses (BCE); 0 for none.
        bucket: group users of similar length and trim padding (see above).
        bucket_size: batches per sorting chunk.

    Raises:
        ValueError: if ``max_len``, ``batch_size`` or ``bucket_size`` is < 1,
            ``num_negatives`` < 0, no user has 2 train items, or (with negatives) a user's
            history contains every item.
    """

    def __init__(
        self,
        split: LeaveOneOutSplit,
        *,
        max_len: int,
        batch_size: int,
        num_negatives: int = 0,
        bucket: bool = False,
        bucket_size: int = 32,
    ) -> None:
        for name, value, low in (
            ("max_len", max_len, 1),
            ("batch_size", batch_size, 1),
            ("bucket_size", bucket_size, 1),
            ("num_negatives", num_negatives, 0),
        ):
            if value < low:
                raise ValueError(f"TrainBatcher: {name} must be >= {low}, got {value}")
        users = sorted(u for u, seq in split.train.items() if len(seq) >= 2)
        if not users:
            raise ValueError(
                "TrainBatcher: no user has at least 2 train items, so there is nothing to "
                "train on; check the dataset (each user needs >= 4 interactions after the "
                "leave-one-out split to be both trained on and evaluated)"
            )
        self.max_len = max_len
        self.batch_size = batch_size
        self.num_negatives = num_negatives
        self.bucket = bucket
        self.bucket_size = bucket_size
        self._users = np.array(users, dtype=np.int64)
        n = len(users)
        self._lengths = np.empty(n, dtype=np.int64)
        self._inputs = np.zeros((n, max_len), dtype=np.int64)
        self._targets = np.zeros((n, max_len), dtype=np.int64)
        for row, user in enumerate(users):
            seq = split.train[user]
            length = min(len(seq) - 1, max_len)
            self._lengths[row] = length
            self._inputs[row, max_len - length :] = seq[-length - 1 : -1]
            self._targets[row, max_len - length :] = seq[-length:]
        self._excluded: ExcludedItems | None = None
        if num_negatives:
            histories = [split.train[u] for u in users]
            self._excluded = ExcludedItems(histories, split.num_items)
            full = np.flatnonzero(self._excluded.num_excluded >= split.num_items)
            if full.size:
                raise ValueError(
                    f"TrainBatcher: user {users[full[0]]} has interacted with all "
                    f"{split.num_items} items, so no negative can be sampled; use "
                    "num_negatives=0 (full softmax) or drop that user"
                )

    @property
    def num_users(self) -> int:
        """Users visited per epoch (those with at least 2 train items)."""
        return len(self._users)

    @property
    def mean_targets_per_batch(self) -> float:
        """Target positions per epoch divided by batches per epoch.

        Dividing a batch's summed loss by this constant (instead of by the batch's own target
        count) weights every target position equally across the epoch, whatever the batch
        composition. Bucketing needs that: with per-batch means a batch of 128 short users
        (~3k targets) would pull as hard as one of 128 long users (~25k targets).
        """
        return float(self._lengths.sum()) / len(self)

    def __len__(self) -> int:
        """Batches per epoch."""
        return math.ceil(len(self._users) / self.batch_size)

    def epoch(
        self, rng: np.random.Generator, *, rank: int = 0, world_size: int = 1
    ) -> Iterator[TrainBatch]:
        """The batches of one epoch (this process's shard of them, with ``world_size > 1``).

        The user order and batch order are drawn from ``rng`` when this is called, then one
        seed for the negatives, which are drawn from a generator of that seed and ``rank`` as
        the batches are produced. The same ``rng`` state gives the same batches.

        Data-parallel training (``world_size`` processes, each passing the same ``rng`` state
        and its ``rank``): every process draws the same plan of global batches of
        ``batch_size`` users and keeps rows ``rank, rank + world_size, ...`` of each, which is
        ``torch.utils.data.DistributedSampler``'s split of the permutation. ``batch_size`` must
        be a multiple of ``world_size``; a shorter batch (the epoch's last, or a bucket's) is
        padded to a multiple of ``world_size`` with *ghost* rows: copies of its own first rows
        with every target zeroed (``users`` 0). A ghost adds nothing to the loss, and, being a
        copy of a row of the same batch, nothing to a batch's activation min/max either, so the
        processes together compute exactly the one-process batches (DistributedSampler instead
        repeats users, which trains them twice per epoch). Each process has its own stream of
        negatives, and ``rng`` itself advances identically on every process, so the next
        epoch's plan agrees too.

        Args:
            rng: random generator, e.g. ``np.random.default_rng(seed)``.
            rank: this process's index in ``[0, world_size)``.
            world_size: number of processes sharing each batch.

        Returns:
            An iterator over ``len(self)`` batches.

        Raises:
            ValueError: bad ``rank``/``world_size``, ``batch_size`` not a multiple of
                ``world_size``, or fewer users than processes.
        """
        self.check_shardable(world_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"TrainBatcher: rank must be in [0, {world_size}), got {rank}")
        perm = rng.permutation(len(self._users))
        if not self.bucket:
            plan = [perm[i : i + self.batch_size] for i in range(0, len(perm), self.batch_size)]
        else:
            chunk = self.batch_size * self.bucket_size
            plan = []
            for start in range(0, len(perm), chunk):
                part = perm[start : start + chunk]
                part = part[np.argsort(self._lengths[part], kind="stable")]
                plan.extend(
                    part[i : i + self.batch_size] for i in range(0, len(part), self.batch_size)
                )
            plan = [plan[i] for i in rng.permutation(len(plan))]
        # one draw whatever the world size, so rng advances alike on every process and the
        # next epoch's plan does not depend on how many processes share it
        negatives_rng = np.random.default_rng([int(rng.integers(2**63)), rank])
        if world_size > 1:
            plan = [with_ghost_rows(rows, world_size)[rank::world_size] for rows in plan]
        return self._batches(plan, negatives_rng)

    def check_shardable(self, world_size: int) -> None:
        """Raise ``ValueError`` unless ``world_size`` processes can share this batcher's batches
        (see ``epoch``)."""
        if world_size < 1:
            raise ValueError(f"TrainBatcher: world_size must be >= 1, got {world_size}")
        if world_size > len(self._users):
            raise ValueError(
                f"{world_size} processes but only {len(self._users)} training users (users with "
                f">= 2 train items): every process needs at least one; start at most "
                f"{len(self._users)} processes"
            )
        if self.batch_size % world_size:
            raise ValueError(
                f"--batch-size {self.batch_size} is the global batch and must be a multiple of "
                f"the {world_size} processes; choose another, or give --batch-size-per-rank"
            )

    def _batches(self, plan: list[np.ndarray], rng: np.random.Generator) -> Iterator[TrainBatch]:
        for rows in plan:
            yield self._batch(rows, rng)

    def _batch(self, rows: np.ndarray, rng: np.random.Generator) -> TrainBatch:
        ghost = rows < 0  # with_ghost_rows: -(r + 1) is a target-less copy of row r
        rows = np.where(ghost, -rows - 1, rows)
        width = int(self._lengths[rows].max()) if self.bucket else self.max_len
        inputs = self._inputs[rows, self.max_len - width :]
        targets = self._targets[rows, self.max_len - width :]
        users = self._users[rows]
        if ghost.any():
            targets = np.where(ghost[:, None], 0, targets)
            users = np.where(ghost, 0, users)
        negatives = None
        if self._excluded is not None:
            real = targets != 0
            owner = np.broadcast_to(rows[:, None], targets.shape)[real]
            sampled = np.zeros((*targets.shape, self.num_negatives), dtype=np.int64)
            sampled[real] = self._excluded.sample(rng, owner, (self.num_negatives,))
            negatives = torch.from_numpy(sampled)
        return TrainBatch(
            users=torch.from_numpy(np.ascontiguousarray(users)),
            inputs=torch.from_numpy(np.ascontiguousarray(inputs)),
            targets=torch.from_numpy(np.ascontiguousarray(targets)),
            negatives=negatives,
        )


def with_ghost_rows(rows: np.ndarray, world_size: int) -> np.ndarray:
    """``rows`` padded to a multiple of ``world_size`` with ghost rows ``-(r + 1)`` for its own
    first rows ``r`` (``TrainBatcher.epoch``: copies without targets).

    >>> with_ghost_rows(np.array([7, 3, 5]), 2).tolist()
    [7, 3, 5, -8]
    >>> with_ghost_rows(np.array([7]), 4).tolist()
    [7, -8, -8, -8]
    """
    missing = -len(rows) % world_size
    if not missing:
        return rows
    return np.concatenate([rows, -np.resize(rows, missing) - 1])


def eval_users(split: LeaveOneOutSplit, which: str) -> list[int]:
    """The users evaluated on ``which``, ascending: the order of ``eval_batches`` rows.

    Raises:
        ValueError: if ``which`` is neither ``"valid"`` nor ``"test"``.
    """
    return sorted(_held_out(split, which))


def num_eval_users(split: LeaveOneOutSplit, which: str) -> int:
    """Number of users evaluated on ``which`` (``"valid"`` or ``"test"``).

    Raises:
        ValueError: if ``which`` is neither ``"valid"`` nor ``"test"``.
    """
    return len(_held_out(split, which))


def eval_batches(
    split: LeaveOneOutSplit,
    which: str,
    *,
    max_len: int,
    batch_size: int = 256,
    users: Sequence[int] | None = None,
) -> Iterator[EvalBatch]:
    """Evaluation batches for full ranking (or, with ``sample_negatives_for_eval``, sampled).

    ``which="valid"``: history ``train[u]``, target ``valid[u]``. ``which="test"``: history
    ``train[u] + [valid[u]]``, target ``test[u]`` (as the SASRec port's ``evaluate``). Inputs
    are the last ``max_len`` history items, left-padded to exactly ``max_len``, so a user's
    row does not depend on the batch it lands in.

    Args:
        split: the leave-one-out split.
        which: ``"valid"`` or ``"test"``.
        max_len: input window (the model's maximum sequence length).
        batch_size: users per batch.
        users: evaluate only these users (duplicates ignored); default: every user in
            ``split.valid`` / ``split.test``. Users are always produced in ascending id order.

    Returns:
        An iterator of batches (arguments are checked when this is called).

    Raises:
        ValueError: for an unknown ``which``, ``max_len`` or ``batch_size`` < 1, or a user in
            ``users`` that has no ``which`` item.
    """
    if max_len < 1 or batch_size < 1:
        raise ValueError(
            f"eval_batches: max_len and batch_size must be >= 1, got {max_len} and {batch_size}"
        )
    ids, histories, targets = _eval_rows(split, which, users)
    return _eval_iter(ids, histories, targets, max_len, batch_size)


def check_eval_negatives(num_negatives: int, num_items: int) -> None:
    """Refuse a sampled evaluation with at least as many negatives as the catalogue has items:
    drawn with replacement they repeat items, and ranking among them no longer means "among N
    other items" (with 1,000 negatives of 30 items nDCG fell below the full ranking's).

    Raises:
        ValueError: ``num_negatives >= num_items``.
    """
    if num_negatives >= num_items:
        raise ValueError(f"--eval-negatives {num_negatives} is not below the catalogue's "
                         f"{num_items} items: sampled evaluation ranks the target among that "
                         "many other items; the full ranking (always reported) covers them all")


def sample_negatives_for_eval(
    split: LeaveOneOutSplit,
    which: str,
    num_negatives: int = 100,
    rng: np.random.Generator | None = None,
    *,
    users: Sequence[int] | None = None,
) -> torch.Tensor:
    """Negatives for sampled evaluation (the paper's protocol: rank the target among 100).

    Row ``i`` belongs to the ``i``-th user of ``eval_batches(split, which, users=users)``
    (ascending user id). Items are uniform over ``1..num_items`` excluding the user's history
    (as defined in ``eval_batches``, so for ``"test"`` it includes the valid item) and the
    target. They are drawn with replacement, as in the SASRec port's ``evaluate``, so a row
    may repeat an item. (The port excludes only ``train[u]``, even for test, so its negatives
    can include the valid item or the target; excluding both makes every negative a true
    negative. The paper says only "randomly sample 100 negative items".)

    Args:
        split: the leave-one-out split.
        which: ``"valid"`` or ``"test"``.
        num_negatives: negatives per user.
        rng: random generator (required; ``np.random.default_rng(seed)``).
        users: restrict to these users, as in ``eval_batches``.

    Returns:
        int64 tensor of shape ``(num_users, num_negatives)``.

    Raises:
        ValueError: for an unknown ``which``, ``num_negatives`` < 1, a missing ``rng``, or a
            user whose history and target cover every item.
    """
    if rng is None:
        raise ValueError("sample_negatives_for_eval: pass rng=np.random.default_rng(seed)")
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    ids, histories, targets = _eval_rows(split, which, users)
    rows = [h + [t] for h, t in zip(histories, targets, strict=True)]
    excluded = ExcludedItems(rows, split.num_items)
    full = np.flatnonzero(excluded.num_excluded >= split.num_items)
    if full.size:
        raise ValueError(
            f"user {ids[full[0]]}: history and target cover all {split.num_items} items, so no "
            "negative can be sampled; use full-ranking evaluation"
        )
    row_ids = np.arange(len(ids), dtype=np.int64)
    return torch.from_numpy(excluded.sample(rng, row_ids, (num_negatives,)))


def _held_out(split: LeaveOneOutSplit, which: str) -> dict[int, int]:
    if which == "valid":
        return split.valid
    if which == "test":
        return split.test
    raise ValueError(f"which must be one of {_WHICH}, got {which!r}")


def _eval_rows(
    split: LeaveOneOutSplit, which: str, users: Sequence[int] | None
) -> tuple[list[int], list[list[int]], list[int]]:
    """(user ids ascending, histories, targets) for ``which``."""
    held = _held_out(split, which)
    if users is None:
        ids = sorted(held)
    else:
        ids = sorted(set(users))
        missing = [u for u in ids if u not in held]
        if missing:
            raise ValueError(
                f"users {missing[:10]} have no {which} item (only users with >= 3 "
                f"interactions are evaluated); pick users from split.{which}"
            )
    if which == "valid":
        histories = [split.train[u] for u in ids]
    else:
        histories = [split.train[u] + [split.valid[u]] for u in ids]
    return ids, histories, [held[u] for u in ids]


def _eval_iter(
    ids: list[int],
    histories: list[list[int]],
    targets: list[int],
    max_len: int,
    batch_size: int,
) -> Iterator[EvalBatch]:
    for start in range(0, len(ids), batch_size):
        rows = range(start, min(start + batch_size, len(ids)))
        width = max(1, max(len(histories[r]) for r in rows))
        inputs = np.zeros((len(rows), max_len), dtype=np.int64)
        history = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            seq = histories[r]
            window = seq[-max_len:]
            if window:
                inputs[i, max_len - len(window) :] = window
                history[i, : len(seq)] = seq
        yield EvalBatch(
            users=torch.tensor(ids[start : rows.stop], dtype=torch.int64),
            inputs=torch.from_numpy(inputs),
            targets=torch.tensor(targets[start : rows.stop], dtype=torch.int64),
            history=torch.from_numpy(history),
        )


_Batch = TypeVar("_Batch", TrainBatch, EvalBatch)


def _move(batch: _Batch, device: torch.device | str, non_blocking: bool) -> _Batch:
    moved = {}
    for f in fields(batch):
        value = getattr(batch, f.name)
        moved[f.name] = None if value is None else value.to(device, non_blocking=non_blocking)
    return type(batch)(**moved)

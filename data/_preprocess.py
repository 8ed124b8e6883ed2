"""The SASRec preprocessing on integer-coded columns (private helper).

``movielens.preprocess_ratings`` and ``interactions.preprocess_interactions`` turn their raw ids
into codes and call ``build_sequences``; ``drop_short_users`` applies the user threshold to an
already preprocessed dataset (a cached named dataset) with the same result as preprocessing the
raw log with it.
"""

from __future__ import annotations

import numpy as np

from data.item_ids import ItemIds
from data.sequences import SequenceDataset


def check_min_counts(min_item: int, min_user: int, item_param: str) -> None:
    """``ValueError`` for a negative threshold, naming the argument."""
    if min_item < 0:
        raise ValueError(f"{item_param} must be >= 0, got {min_item}")
    if min_user < 0:
        raise ValueError("min_user_interactions (--min-user-interactions) must be >= 0, "
                         f"got {min_user}")


def build_sequences(
    user_rank: np.ndarray,
    item_code: np.ndarray,
    timestamp: np.ndarray,
    *,
    min_item: int,
    min_user: int,
    source: str,
    item_noun: str = "interactions",
    item_param: str = "min_item_interactions",
) -> tuple[dict[int, list[int]], int, np.ndarray, np.ndarray]:
    """Filter, time-sort and renumber rows given as integer codes.

    Steps, in order:

    1. Drop every row of an item with fewer than ``min_item`` rows, counted over all rows in one
       pass.
    2. Drop every row of a user with fewer than ``min_user`` of the remaining rows (one pass,
       not repeated until both thresholds hold: not a k-core).
    3. Sort each user's rows by timestamp with a stable sort: ties keep their input order.
    4. Renumber users ``1..U`` in ascending ``user_rank``.
    5. Renumber items ``1..I`` in order of first appearance when iterating the new users in
       order and each user's items in time order.

    Args:
        user_rank: per row, a non-negative integer whose ascending order is the user order.
        item_code: per row, a non-negative integer code of the item.
        timestamp: per row, int64 or float64 (no NaN).
        min_item, min_user: thresholds; 0 or 1 keeps everything.
        source: names the data in messages.
        item_noun, item_param: words for the item threshold in messages.

    Returns:
        ``(sequences, U, item_order, user_order)``: ``item_order[i - 1]`` is the code of new
        item ``i``, ``user_order[u - 1]`` the ``user_rank`` of new user ``u``.

    Raises:
        ValueError: if no row is left.
    """
    rows = (user_rank, item_code, timestamp)
    rows = _drop_rare(rows, rows[1], min_item, f"items with fewer than {min_item} {item_noun}",
                      item_param, source)
    if min_user > 1:
        rows = _drop_rare(rows, rows[0], min_user, f"users with fewer than {min_user} "
                          "interactions", "min_user_interactions", source)
    user_rank, item_code, timestamp = rows
    # Stable sort by timestamp, then stable sort by user: users ascending, each user's items in
    # time order, ties in input order.
    order = np.argsort(timestamp, kind="stable")
    user_rank, item_code = user_rank[order], item_code[order]
    order = np.argsort(user_rank, kind="stable")
    user_rank, item_code = user_rank[order], item_code[order]
    user_order, users = np.unique(user_rank, return_inverse=True)
    users = users.reshape(-1) + 1
    old_items, first_index, item_inverse = np.unique(
        item_code, return_index=True, return_inverse=True
    )
    by_appearance = np.argsort(first_index, kind="stable")
    new_id = np.empty(len(old_items), dtype=np.int64)
    new_id[by_appearance] = np.arange(1, len(old_items) + 1)
    items = new_id[item_inverse.reshape(-1)]

    bounds = (np.flatnonzero(np.diff(users)) + 1).tolist()
    edges = [0, *bounds, len(users)]
    item_list = items.tolist()
    heads = users[edges[:-1]].tolist()
    sequences = {u: item_list[a:b] for u, a, b in zip(heads, edges[:-1], edges[1:], strict=True)}
    return sequences, int(users[-1]), old_items[by_appearance], user_order


def drop_short_users(dataset: SequenceDataset, min_user: int) -> SequenceDataset:
    """``dataset`` without users of fewer than ``min_user`` interactions, renumbered.

    Users and items are renumbered as preprocessing does (users in ascending old id, items by
    first appearance), so on a preprocessed dataset this equals preprocessing the raw log with
    ``min_user_interactions=min_user``: the item threshold is applied first either way. The
    item id map, if any, follows the new item ids, and the raw user ids the new user ids.
    """
    if min_user <= 1:
        return dataset
    users = sorted(dataset.sequences)
    lengths = np.array([len(dataset.sequences[u]) for u in users], dtype=np.int64)
    user_rank = np.repeat(np.arange(len(users), dtype=np.int64), lengths)
    items = np.fromiter((i for u in users for i in dataset.sequences[u]), dtype=np.int64,
                        count=int(lengths.sum()))
    position = np.arange(items.size, dtype=np.int64)  # keeps every user's order
    sequences, num_users, item_order, user_order = build_sequences(
        user_rank, items, position, min_item=0, min_user=min_user, source=dataset.source
    )
    old_users = dataset.raw_user_ids()
    user_ids = tuple(old_users[users[r] - 1] for r in user_order.tolist())
    item_ids = None
    if dataset.item_ids is not None:
        old = dataset.item_ids
        picked = (item_order - 1).tolist()
        item_ids = ItemIds(tuple(old.raw[i] for i in picked),
                           None if old.titles is None else tuple(old.titles[i] for i in picked))
    return SequenceDataset(sequences=sequences, num_users=num_users, num_items=len(item_order),
                           source=dataset.source, item_ids=item_ids, user_ids=user_ids)


def _drop_rare(rows: tuple[np.ndarray, ...], codes: np.ndarray, minimum: int, what: str,
               param: str, source: str | None) -> tuple[np.ndarray, ...]:
    """``rows`` (parallel arrays) without those whose ``codes`` value occurs fewer than
    ``minimum`` times. Raises ValueError naming ``what`` was dropped when no row is left."""
    keep = np.bincount(codes)[codes] >= minimum
    if not keep.all():
        rows = tuple(column[keep] for column in rows)
    if rows[0].size == 0:
        fix = ("lower --min-user-interactions (data.load_dataset's min_user_interactions)"
               if param == "min_user_interactions"
               else f"the log needs items seen at least {minimum} times (the ML-1M "
                    "preprocessing rule, which the training scripts always apply; in Python "
                    f"the loader's {param}= sets it)")
        raise ValueError(f"{source or 'ratings'}: no interactions left after dropping {what}; "
                         f"{fix}")
    return rows

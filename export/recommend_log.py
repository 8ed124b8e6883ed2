"""Top-k recommendations for every user of an interaction log, by raw user and item ids.

    session, item_ids = load_recommender("runs/lsq")               # export.recommend
    dataset = load_dataset("my_log.csv", **SERVING_LOAD)           # no rare-item filter
    histories = user_histories(dataset, item_ids)
    for users, lists in recommend_in_batches(session, histories, k=10, item_ids=item_ids):
        ...

A user's history is their whole sequence in the log, all of it, the test item included: a
recommendation is for what comes after everything seen. Read the log with
``load_dataset(..., min_item_interactions=0)`` (``SERVING_LOAD``): training's rule that drops
rare items must not apply here, or a rare item the model knows would leave the history and
could be recommended back. Items go through raw ids (the dataset's ``item_ids``, identity ids
for a SASRec text file) into the model's map, so the log may be read another way than at
training or be a newer one. Users are named by raw id (``SequenceDataset.raw_user_ids``).

Rules (tests/test_recommend_log.py):

* **Unknown items** (in the log, not in the model's catalogue: new items, or items too rare for
  training) cannot be read or recommended by the model. ``unknown_items="drop"`` (the default)
  leaves them out of the histories, counted in ``UserHistories.dropped_items`` and named in
  ``unknown_item_ids``; a user left with no item gets no list and is named in
  ``skipped_users``. ``"error"``: ``data.UnknownItemError`` naming them, before anything is
  scored. No user left to serve is a ``ValueError``.
* **Users** (``users``): raw ids to serve, in the order given, once each; an id the log lacks is
  an error naming every such id. Default: every user of the log in internal order (ascending
  raw id, as the loader numbers them).
* The lists are ``export.recommend.recommend``'s (seen items excluded, ties to the lower
  internal id), computed ``batch_size`` users per onnxruntime run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import onnxruntime as ort

from data import ItemIds, SequenceDataset, UnknownItemError
from data.errors import quote_some
from export.recommend import Recommendation, recommend

DEFAULT_BATCH_SIZE = 256
UNKNOWN_ITEMS = ("drop", "error")
SERVING_LOAD = {"min_item_interactions": 0}  # data.load_dataset options for a log to serve


@dataclass
class UserHistories:
    """What ``user_histories`` prepared: the users to serve and their raw-id histories.

    Attributes:
        users: raw user ids, in serving order.
        histories: ``histories[i]``: ``users[i]``'s raw item ids, oldest first.
        dropped_items: interactions left out as unknown to the model.
        unknown_item_ids: those items' raw ids, each once, in order of first appearance.
        skipped_users: users left without a known item (no list for them).
    """

    users: list[str]
    histories: list[list[str]]
    dropped_items: int = 0
    unknown_item_ids: list[str] = field(default_factory=list)
    skipped_users: list[str] = field(default_factory=list)


def user_histories(dataset: SequenceDataset, model_items: ItemIds, *,
                   users: Sequence[str] | None = None,
                   unknown_items: str = "drop") -> UserHistories:
    """Each served user's history in raw item ids, checked against the model's map.

    Args:
        dataset: the log, as ``data.load_dataset`` read it.
        model_items: the model's item map (``export.recommend.load_recommender``).
        users: raw user ids to serve, each once (default: all, in internal order).
        unknown_items: ``"drop"`` items the model does not know from the histories, or raise
            (``"error"``); see the module docstring.

    Raises:
        ValueError: ``users`` names ids the log lacks (all named) or is empty; a bad
            ``unknown_items``; no served user has an item the model knows.
        data.UnknownItemError: items of the served histories the model lacks (all named), with
            ``unknown_items="error"``.
    """
    if unknown_items not in UNKNOWN_ITEMS:
        raise ValueError(f"unknown_items must be one of {', '.join(UNKNOWN_ITEMS)}, got "
                         f"{unknown_items!r}")
    raw_users = dataset.raw_user_ids()
    if users is None:
        picked = [u for u in range(1, dataset.num_users + 1) if dataset.sequences.get(u)]
    else:
        if not users:
            raise ValueError("users is empty: name at least one user, or serve them all")
        index = {raw: internal for internal, raw in enumerate(raw_users, start=1)}
        wanted = list(dict.fromkeys(str(u) for u in users))
        missing = [u for u in wanted if u not in index or not dataset.sequences.get(index[u])]
        if missing:
            raise ValueError(f"user id(s) {quote_some(missing)} not in {dataset.source} (users "
                             "without an interaction left after preprocessing are not in it "
                             "either)")
        picked = [index[u] for u in wanted]
    log_items = dataset.item_ids or ItemIds.identity(dataset.num_items)
    raw_item = log_items.raw
    out = UserHistories(users=[], histories=[])
    unknown: dict[str, None] = {}
    for user in picked:
        history = [raw_item[i - 1] for i in dataset.sequences[user]]
        known = [item for item in history if item in model_items]
        if len(known) < len(history):
            unknown.update((item, None) for item in history if item not in model_items)
            if unknown_items == "error":
                continue
            out.dropped_items += len(history) - len(known)
            if not known:
                out.skipped_users.append(raw_users[user - 1])
                continue
        out.users.append(raw_users[user - 1])
        out.histories.append(known)
    if unknown and unknown_items == "error":
        raise UnknownItemError(list(unknown))
    out.unknown_item_ids = list(unknown)
    if not out.users:
        raise ValueError(f"no user to serve in {dataset.source}: the {len(out.skipped_users)} "
                         f"user(s) asked for have no item the model knows "
                         f"({out.dropped_items} interaction(s) with unknown items)")
    return out


def recommend_in_batches(session: ort.InferenceSession, histories: UserHistories, k: int = 10, *,
                         item_ids: ItemIds | None = None,
                         batch_size: int = DEFAULT_BATCH_SIZE,
                         ) -> Iterator[tuple[list[str], list[list[Recommendation]]]]:
    """``(users, lists)`` for each run of ``batch_size`` users, in serving order
    (``export.recommend.recommend`` on each batch).

    Raises:
        ValueError: ``batch_size`` < 1, and what ``recommend`` raises.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(histories.users), batch_size):
        stop = start + batch_size
        yield (histories.users[start:stop],
               recommend(session, histories.histories[start:stop], k, item_ids=item_ids))

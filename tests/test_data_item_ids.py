"""SequenceDataset.item_ids: the map from internal item ids back to the raw ids of the data."""

import random
from dataclasses import replace
from pathlib import Path

import pytest

from data import (
    ITEM_IDS,
    ItemIds,
    SequenceDataset,
    load_interactions,
    read_sasrec_text,
    write_sasrec_text,
)
from data._preprocess import drop_short_users

# Computed by the code before item_ids existed (commit f60bb0f): the fingerprint must not move.
PINNED = "c5dafa8182ee4673e55b404874c3afb0d53a72ae815f57c3d34259beed26fd18"


def _tiny(**kw) -> SequenceDataset:
    return SequenceDataset({1: [1, 2, 3], 2: [3, 1], 4: [2]}, num_users=4, num_items=3,
                           source="x", **kw)


def _log(num_users: int = 30, num_items: int = 12, seed: int = 0) -> list[tuple[str, str, int]]:
    """A random log with string ids and distinct timestamps."""
    rng = random.Random(seed)
    rows = []
    stamps = rng.sample(range(10**6), num_users * 8)
    for k, stamp in enumerate(stamps):
        rows.append((f"user-{k % num_users}", f"sku-{rng.randrange(num_items):03d}", stamp))
    return rows


def _write(path: Path, rows) -> Path:
    path.write_text("user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    return path


def _raw_sequences(dataset: SequenceDataset) -> dict[int, list[str]]:
    return {u: [dataset.item_ids.raw_id(i) for i in s] for u, s in dataset.sequences.items()}


def test_fingerprint_unchanged_and_ignores_item_ids():
    assert _tiny().fingerprint() == PINNED
    assert _tiny(item_ids=ItemIds(("a", "b", "c"))).fingerprint() == PINNED
    assert _tiny(item_ids=ItemIds(("c", "b", "a"), ("C", "B", "A"))).fingerprint() == PINNED


def test_item_ids_default_and_size_check():
    assert _tiny().item_ids is None
    with pytest.raises(ValueError, match="item_ids maps 2 items but the dataset has num_items=3"):
        _tiny(item_ids=ItemIds(("a", "b")))


def test_internal_to_raw_matches_the_log(tmp_path):
    rows = _log()
    d = load_interactions(_write(tmp_path / "log.csv", rows), min_item_interactions=1)
    # Reference: each user's raw items in time order, users in text order.
    by_user: dict[str, list[tuple[int, str]]] = {}
    for user, item, stamp in rows:
        by_user.setdefault(user, []).append((stamp, item))
    expected = [[item for _, item in sorted(v)] for _, v in sorted(by_user.items())]
    assert list(_raw_sequences(d).values()) == expected
    # And back: raw ids -> internal ids give the sequences.
    for user, items in _raw_sequences(d).items():
        assert d.item_ids.internal_ids(items) == d.sequences[user]


def test_shuffled_id_copy_gives_the_same_raw_sequences(tmp_path):
    rows = _log(seed=1)
    items = sorted({i for _, i, _ in rows})
    new_names = random.Random(2).sample([f"X{k}" for k in range(len(items))], len(items))
    renamed = dict(zip(items, new_names))
    back = {v: k for k, v in renamed.items()}
    copy = [(u, renamed[i], t) for u, i, t in rows]
    random.Random(3).shuffle(copy)  # another file order too (timestamps are distinct)
    a = load_interactions(_write(tmp_path / "a.csv", rows), min_item_interactions=3)
    b = load_interactions(_write(tmp_path / "b.csv", copy), min_item_interactions=3)
    assert {u: [back[i] for i in s] for u, s in _raw_sequences(b).items()} == _raw_sequences(a)
    # Items are numbered by first appearance, not by raw id: the internal data is identical.
    assert b.sequences == a.sequences and b.fingerprint() == a.fingerprint()
    assert [back[r] for r in b.item_ids.raw] == list(a.item_ids.raw)


def test_sasrec_text_has_no_map_unless_it_is_a_cached_dataset(tmp_path):
    d = _tiny(item_ids=ItemIds(("a", "b", "c"), ("A", "B", "C")))
    plain = tmp_path / "plain.txt"
    write_sasrec_text(d, plain)
    ItemIds(("p", "q", "r")).save(tmp_path / ITEM_IDS)  # beside it, but not the cache layout
    assert read_sasrec_text(plain).item_ids is None

    cache = tmp_path / "shop"
    cache.mkdir()
    write_sasrec_text(d, cache / "shop.txt")
    assert read_sasrec_text(cache / "shop.txt").item_ids is None  # no map yet
    d.item_ids.save(cache / ITEM_IDS)
    loaded = read_sasrec_text(cache / "shop.txt")
    assert loaded.item_ids == d.item_ids
    assert loaded.fingerprint() == d.fingerprint()

    ItemIds(("a", "b")).save(cache / ITEM_IDS)
    with pytest.raises(ValueError, match=r"maps 2 items but .*shop\.txt has 3; .* delete"):
        read_sasrec_text(cache / "shop.txt")
    (cache / ITEM_IDS).write_text("{not json")
    with pytest.raises(ValueError, match="not a readable JSON file"):
        read_sasrec_text(cache / "shop.txt")


def test_drop_short_users_equals_filtering_the_raw_log(tmp_path):
    rows = _log(num_users=40, seed=4)
    rows = [r for r in rows if not (r[0].endswith("7") and r[2] % 3)]  # some short users
    path = _write(tmp_path / "log.csv", rows)
    full = load_interactions(path, min_item_interactions=3)
    titled = replace(full, item_ids=ItemIds(full.item_ids.raw,
                                            tuple(f"t{r}" for r in full.item_ids.raw)))
    for k in (0, 1, 4, 6, 8):  # every user has at most 8 rows
        direct = load_interactions(path, min_item_interactions=3, min_user_interactions=k)
        after = drop_short_users(titled, k)
        assert after.sequences == direct.sequences
        assert after.item_ids.raw == direct.item_ids.raw
        assert after.item_ids.titles == tuple(f"t{r}" for r in direct.item_ids.raw)
        assert after.fingerprint() == direct.fingerprint()
    assert drop_short_users(full, 1) is full
    no_map = replace(full, item_ids=None)
    assert drop_short_users(no_map, 7).item_ids is None

"""Vectorised negative sampling: uniform items that avoid a per-row item set (private helper).

Membership is tested against one sorted int64 array of keys ``row * (num_items + 1) + item``
(memory linear in the number of interactions, unlike a dense rows x items matrix).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import numpy as np


class ExcludedItems:
    """For each row ``r``, the set of items that negatives of row ``r`` must avoid.

    Args:
        rows: ``rows[r]`` = items to exclude for row ``r`` (duplicates allowed).
        num_items: items are ``1..num_items``.
    """

    def __init__(self, rows: Sequence[Sequence[int]], num_items: int) -> None:
        self.num_items = num_items
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
        keys = np.repeat(np.arange(len(rows), dtype=np.int64), lengths) * (num_items + 1) + flat
        keys.sort()
        self._keys = keys[np.r_[True, keys[1:] != keys[:-1]]] if keys.size else keys
        row_of_key = self._keys // (num_items + 1)
        # Distinct excluded items per row; a row excluding all items cannot be sampled for.
        self.num_excluded = np.bincount(row_of_key, minlength=len(rows))

    def contains(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Boolean array: ``items[...]`` is excluded for ``rows`` (broadcast against items)."""
        if self._keys.size == 0:
            return np.zeros(np.broadcast(rows, items).shape, dtype=bool)
        query = rows * (self.num_items + 1) + items
        pos = np.minimum(np.searchsorted(self._keys, query), self._keys.size - 1)
        return self._keys[pos] == query

    def sample(
        self, rng: np.random.Generator, rows: np.ndarray, shape: tuple[int, ...]
    ) -> np.ndarray:
        """Uniform items in ``1..num_items`` avoiding each row's excluded set.

        Args:
            rng: random generator.
            rows: ``(B,)`` row indices.
            shape: trailing shape per row; the result has shape ``(B, *shape)``.

        Returns:
            int64 array; entries are drawn with replacement (duplicates within a row possible),
            rejected draws are redrawn until none is excluded.
        """
        full = self.num_excluded[rows] >= self.num_items
        if full.any():
            raise ValueError(
                f"row {int(rows[full][0])} excludes every item 1..{self.num_items}; "
                "no negative can be sampled for it"
            )
        rows = rows.reshape((-1,) + (1,) * len(shape))
        out = rng.integers(1, self.num_items + 1, size=(rows.shape[0], *shape))
        hit = self.contains(rows, out)
        while hit.any():
            out[hit] = rng.integers(1, self.num_items + 1, size=int(hit.sum()))
            hit[hit] = self.contains(np.broadcast_to(rows, out.shape)[hit], out[hit])
        return out

"""The top-k serving tail of the SASRec graph in standard ONNX ops: history masking, then TopK.

    values, items = masked_top_k(g, scores, item_seq, exclude, k)   # (B, k) float32, int64

Rules (``export.recommend`` ranks the same way from full scores, and the fused kernel
``ScoreTopK`` of ``export/native/score_top_k.cc`` computes the same lists in one pass):

* the padding item 0, every id in the row's ``item_seq`` and every id in its ``exclude`` row
  (or the one shared row, ``exclude`` of shape (1, E)) get score -inf before the selection;
* ``TopK(largest=1, sorted=1)`` over the (B, num_items + 1) masked scores: best first, equal
  scores by lower item id first (ONNX's TopK tie rule, the project's rule);
* a row with fewer than k admissible items ends with item id 0 and score -inf;
* ids in ``exclude`` must lie in 0..num_items, else the run fails (onnxruntime's
  ScatterElements refuses ids past the table; it would read a negative id from the end, so
  negative ids are moved past the table first; the fused kernel checks both itself); ``k``
  is at most num_items + 1 (the score columns; the padding item's slot is always id 0 / -inf),
  above is an error; ``k = 0`` gives empty (B, 0) lists.

The full score matrix is written once (the scoring op) and masked in place by
``ScatterElements``, so the graph costs a (B, num_items + 1) write and read that the fused
kernel avoids. ``rank_masked`` applies the same rules to full scores in numpy (the export's
list check and ``export.recommend``'s full-score path use it).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from export.graph_builder import GraphBuilder


def masked_top_k(g: GraphBuilder, scores: str, item_seq: str, exclude: str,
                 k: str) -> tuple[str, str]:
    """``(top_k_scores, top_k_items)`` of ``scores`` (B, N + 1) after masking (see module).

    Args:
        g: the graph being written.
        scores: float32 (B, num_items + 1) scores, column 0 the padding item.
        item_seq: the (B, T) int64 input sequence (its ids are masked).
        exclude: (B, E) or (1, E) int64 ids also masked (0 entries are padding).
        k: a 1-element int64 tensor, the list length (0 <= k <= num_items + 1).
    """
    batch = g.node("Gather", [g.node("Shape", [item_seq], name="top_k.seq_shape"),
                              g.ints([0], "first_axis")], name="top_k.batch", axis=0)
    exclude_rows = g.node("Expand", [exclude, g.node("Concat", [batch, g.ints([1], "one_1d")],
                                                     name="top_k.exclude_shape", axis=0)],
                          name="top_k.exclude_rows")  # (B, E), also from a shared (1, E) row
    width = g.node("Gather", [g.node("Shape", [scores], name="top_k.scores_shape"),
                              g.ints([1], "second_axis")], name="top_k.width", axis=0)
    exclude_rows = g.node("Where", [g.node("Less", [exclude_rows, g.scalar(0, np.int64, "zero")],
                                           name="top_k.negative"),
                                    width, exclude_rows],
                          name="top_k.negative_refused")  # N + 1: out of range, an error
    padding = g.node("Mul", [g.node("Slice", [item_seq, g.ints([0], "zero_1d"),
                                              g.ints([1], "one_1d"), g.ints([1], "one_1d")],
                                    name="top_k.first_column"),
                             g.scalar(0, np.int64, "zero")], name="top_k.padding_id")  # (B, 1)
    masked_ids = g.node("Concat", [padding, item_seq, exclude_rows], name="top_k.masked_ids",
                        axis=1)
    minus_inf = g.node("Expand", [g.scalar(-np.inf, np.float32, "minus_inf"),
                                  g.node("Shape", [masked_ids], name="top_k.masked_shape")],
                       name="top_k.minus_inf")
    masked = g.node("ScatterElements", [scores, masked_ids, minus_inf], name="top_k.masked",
                    axis=1)
    values, indices = g.node("TopK", [masked, k], name="top_k.select", num_outputs=2, axis=-1,
                             largest=1, sorted=1)
    unfilled = g.node("Equal", [values, g.scalar(-np.inf, np.float32, "minus_inf")],
                      name="top_k.unfilled")
    items = g.node("Where", [unfilled, g.scalar(0, np.int64, "zero"), indices],
                   name="top_k.items")
    return values, items


def rank_masked(scores: np.ndarray, masked: np.ndarray | Sequence[Sequence[int]],
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(items, values)`` (B, k) of full ``scores`` (B, num_items + 1) by the module's rules:
    the padding item and row r's ``masked[r]`` ids get -inf, a stable descending sort ranks
    (equal scores: lower id first), and slots past the admissible items hold id 0 and -inf.

    ``masked`` is a (B, E) id array (0 entries are padding) or one id sequence per row; ``k``
    is at most num_items + 1. An admissible item scored -inf counts as not admissible.
    """
    out = np.array(scores, dtype=np.float32, copy=True)
    out[:, 0] = -np.inf
    if isinstance(masked, np.ndarray) and masked.ndim == 2:
        np.put_along_axis(out, masked, -np.inf, axis=1)
    else:
        for row, ids in enumerate(masked):
            out[row, np.asarray(ids, dtype=np.int64)] = -np.inf
    order = np.argsort(-out, axis=1, kind="stable")[:, :k]  # negation is exact
    values = np.take_along_axis(out, order, axis=1)
    return np.where(values == -np.inf, 0, order), values

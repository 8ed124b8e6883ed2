"""Top-k recommendations in raw item ids from an exported model, in onnxruntime.

    session, item_ids = load_recommender("runs/lsq/model_int8_fused.onnx")
    for rec in recommend(session, [["1193", "661", "914"]], k=10)[0]:
        print(rec.rank, rec.item, rec.score, rec.title)

A history is a user's raw item ids (as in their log: ``data.ItemIds`` maps them to the model's
internal ids 1..N), oldest first. ``recommend`` maps every history to internal ids, keeps its
last ``max_len`` items, left-pads it with 0 to ``max_len`` and runs the whole batch in one
session run. Both kinds of exported graph serve (``export.runtime.serving_kind`` tells them
apart):

* a full-score graph (``model_<kind>.onnx``, output ``scores`` (B, num_items + 1)): every row is
  ranked here, in numpy;
* a top-k graph (``model_<kind>_top_k.onnx``, ``export.top_k``): the graph masks and selects
  itself; ``recommend`` feeds the whole history as its ``exclude`` row and ``k`` as its input,
  and only (B, k) ids and scores come back. Same rules, same lists (tests/test_recommend.py
  checks both kinds against the torch model); with a large catalogue it is the faster one.

Rules (each has a test in tests/test_recommend.py):

* **Seen items are not recommended.** Every item of the history is excluded, all of it, not only
  the last ``max_len`` items the model reads, and the padding item 0. A recommender suggests what
  the user has not interacted with yet; this is also what the full-ranking evaluation ranks
  against (``qat.metrics.mask_scores``).
* **Order:** score descending; equal scores rank the lower internal id first (a stable sort over
  the items in internal-id order), so the answer is deterministic for a given model and input.
  ``rank`` is 1-based.
* **k:** at most ``k`` per history; when fewer than ``k`` items are unseen, all of them, ranked.
* **Unknown raw ids:** ``data.UnknownItemError`` (a ``ValueError``) naming every unknown id of the
  whole batch, in order of first appearance; nothing is scored.
* **Empty history:** ``ValueError`` ("a history needs at least one item known to the model").
  An all-padding sequence does give finite scores (the same in torch and the FP32, INT8 and
  fused INT8 graphs, whatever the padding length), but the model was never trained to predict
  from it: training targets start at a sequence's second item and padding positions carry no
  loss, so the scores are an unsupervised by-product of bias terms, not a prediction.
* **max_len:** the exported graph's input is ``(batch, length)`` with a dynamic length, so the
  model's ``max_len`` comes from its metadata (``sasrec_qat.max_len``, written by
  ``build_sasrec_onnx``), or from a fixed input length if a graph has one; an explicit
  ``max_len`` may shorten it, never exceed it.
* **Non-finite scores** (a broken model): ``FloatingPointError`` naming the history.

The item id map defaults to the one in the model's metadata (``data.item_ids.METADATA_KEY``,
written by ``export.export_run``); a model exported before the map was embedded falls back to
``ItemIds.identity(num_items)``: raw id ``"i"`` is internal item ``i`` (``embedded_item_ids``
tells the two apart).

``read_history_file`` and ``format_recommendations`` are scripts/recommend.py's input and output.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnxruntime as ort

from data import ItemIds, UnknownItemError
from data.errors import quote_some
from data.item_ids import METADATA_KEY, tsv_unsafe
from export.parity_record import exported_graphs
from export.runtime import make_session, model_metadata, serving_kind
from export.sasrec_graph import EXCLUDE, INPUT, K_INPUT, SCORES, TOP_K_ITEMS, TOP_K_SCORES
from export.top_k import rank_masked

EMPTY_HISTORY = "a history needs at least one item known to the model"


@dataclass(frozen=True)
class Recommendation:
    """One recommended item.

    Attributes:
        item: its raw id (``ItemIds.raw_id``).
        score: the model's score (float32 widened to float).
        title: its title when the map has titles, else None.
        rank: 1-based position in the list.
    """

    item: str
    score: float
    title: str | None
    rank: int


def embedded_item_ids(session: ort.InferenceSession) -> ItemIds | None:
    """The item id map in the model's metadata, or None when the model carries none.

    Raises:
        ValueError: the metadata holds a value that is not a valid item_ids record.
    """
    text = model_metadata(session).get(METADATA_KEY)
    if text is None:
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"the model's {METADATA_KEY} metadata is not JSON ({err})") from err
    return ItemIds.from_json(obj, source=f"the model's {METADATA_KEY} metadata")


def model_num_items(session: ort.InferenceSession) -> int:
    """Items the model scores: metadata ``sasrec_qat.num_items``, else the width of ``scores``
    minus the padding column.

    Raises:
        ValueError: a model without a ``scores`` output, or whose item count is unknown.
    """
    recorded = model_metadata(session).get("sasrec_qat.num_items")
    if recorded is not None:
        return int(recorded)
    outputs = {o.name: o for o in session.get_outputs()}
    if SCORES not in outputs:
        raise ValueError(f"the model has no output {SCORES!r}: not a SASRec export")
    width = outputs[SCORES].shape[-1]
    if not isinstance(width, int):
        raise ValueError("the model records no sasrec_qat.num_items and its scores have no "
                         "fixed width")
    return width - 1


def model_max_len(session: ort.InferenceSession) -> int:
    """The longest history the model reads: metadata ``sasrec_qat.max_len`` (the exported
    graph's input length is dynamic), else a fixed input length.

    Raises:
        ValueError: neither is there (pass ``max_len`` to ``recommend``).
    """
    recorded = model_metadata(session).get("sasrec_qat.max_len")
    if recorded is not None:
        return int(recorded)
    inputs = {i.name: i for i in session.get_inputs()}
    length = inputs[INPUT].shape[-1] if INPUT in inputs else None
    if isinstance(length, int):
        return length
    raise ValueError("the model records no sasrec_qat.max_len and its input length is "
                     "dynamic: pass max_len")


# A run folder's exported graphs, the one to serve first: top-k graphs (the selection runs in
# the graph), fused INT8 before exact INT8, INT8 before FP32 (export_int8.py writes them).
SERVING_PREFERENCE = ("model_int8_fused_top_k.onnx", "model_int8_top_k.onnx",
                      "model_int8_fused.onnx", "model_int8.onnx", "model_fp32_top_k.onnx",
                      "model_fp32.onnx")


def serving_model_path(path: str | os.PathLike) -> Path:
    """``path`` itself for a file; for a run folder its first graph in ``SERVING_PREFERENCE``.

    A folder with ``parity.json`` (what ``export_int8.py`` writes) serves only the graphs that
    record describes, byte for byte: a graph left by an earlier export (say a fused graph of the
    model before it was trained further) is not served. When the folder also holds the model
    file the record was made from, that file must be the one recorded, else the graphs are of
    another model and the folder must be exported again. A folder without ``parity.json`` (graphs
    copied for serving) serves any graph it holds.

    Raises:
        FileNotFoundError: nothing at ``path``, or a folder without a graph it may serve.
        ValueError: the folder's graphs were exported from another model file than its own, or
            its ``parity.json`` cannot be read.
    """
    path = Path(path)
    if path.is_dir():
        servable = exported_graphs(path)  # ValueError: graphs of another model file
        for name in SERVING_PREFERENCE:
            if (path / name).is_file() and (servable is None or name in servable):
                return path / name
        raise FileNotFoundError(f"{path} holds no exported model ({', '.join(SERVING_PREFERENCE)})"
                                f": export it first, scripts/export_int8.py --run {path}")
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    return path


def load_recommender(path: str | os.PathLike, *,
                     threads: int = 0) -> tuple[ort.InferenceSession, ItemIds]:
    """``(session, item id map)`` of an exported model file (FP32, INT8 or fused INT8, full-score
    or top-k graph), or of a run folder's preferred graph (``serving_model_path``).

    The map is the model's embedded one, or ``ItemIds.identity(num_items)`` for a model that
    carries none (``embedded_item_ids(session) is None`` tells).

    Raises:
        FileNotFoundError: no file at ``path``, or a folder without an exported graph.
        ValueError: a file onnxruntime cannot load, or a bad embedded map.
        export.native_ops.NativeBuildError: a fused model where the kernels cannot be built.
    """
    path = serving_model_path(path)
    session = make_session(path, threads=threads)
    return session, _item_ids(session, None)


def recommend(session: ort.InferenceSession, histories: Sequence[Sequence[str | int]],
              k: int = 10, *, item_ids: ItemIds | None = None,
              max_len: int | None = None) -> list[list[Recommendation]]:
    """The top ``k`` unseen items for each history, as raw ids (see the module's rules).

    Args:
        session: an onnxruntime session of an exported SASRec, full-score or top-k graph
            (``make_session`` or ``load_recommender``: a fused model needs the kernels
            registered).
        histories: a batch: one list of raw item ids per user, oldest first (``[history]`` for
            one user). Ids are compared as strings (``42`` is ``"42"``).
        k: recommendations per history (>= 1).
        item_ids: the map raw <-> internal ids (default: the model's embedded map, else
            identity ids).
        max_len: items of each history the model reads, from the end (default: the model's
            ``max_len``, ``model_max_len``; may not exceed it; required for a graph that
            records none).

    Returns:
        One list per history, best first, ``min(k, unseen items)`` long.

    Raises:
        data.UnknownItemError: raw ids the map lacks (every one of the batch named).
        ValueError: an empty history, ``k`` < 1, a bad ``max_len``, a map of another size
            than the model's, histories that are not a batch of lists.
        FloatingPointError: the model gave a non-finite score to an unseen item (a top-k
            graph: to a recommended item, or fewer items came back than are unseen).
    """
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    histories = _as_batch(histories)
    num_items = model_num_items(session)
    ids = _item_ids(session, item_ids)
    if ids.num_items != num_items:
        raise ValueError(f"the item id map has {ids.num_items} items but the model scores "
                         f"{num_items}: it is not this model's map")
    try:
        longest = model_max_len(session)
    except ValueError:
        if max_len is None:
            raise
        longest = max_len  # a graph that records none: the caller's word
    if max_len is None:
        max_len = longest
    elif not 1 <= max_len <= longest:
        raise ValueError(f"max_len must be in [1, {longest}] (the model's max_len), got "
                         f"{max_len}")
    empty = [i for i, h in enumerate(histories) if not h]
    if empty:
        which = ", ".join(f"histories[{i}]" for i in empty)
        raise ValueError(f"{which} {'is' if len(empty) == 1 else 'are'} empty: {EMPTY_HISTORY}")
    internal = _internal_ids(ids, histories)
    if not internal:
        return []
    seqs = np.zeros((len(internal), max_len), dtype=np.int64)
    for row, items in enumerate(internal):
        tail = items[-max_len:]
        seqs[row, max_len - len(tail):] = tail
    if serving_kind(session) == "top_k":
        return _run_top_k(session, seqs, internal, ids, k)
    scores = session.run([SCORES], {INPUT: seqs})[0]
    if scores.shape != (len(internal), num_items + 1):
        raise ValueError(f"the model's scores have shape {scores.shape}, expected "
                         f"{(len(internal), num_items + 1)}")
    return [_rank(row, scores[row], items, ids, k) for row, items in enumerate(internal)]


def _as_batch(histories: Sequence[Sequence[str | int]]) -> list[list[str]]:
    """Histories as lists of strings; a flat list of ids is refused (it would be read as a
    batch of one-character histories)."""
    if isinstance(histories, (str, bytes)) or not isinstance(histories, Iterable):
        raise ValueError("histories must be a list of histories (lists of raw item ids); for "
                         "one user pass [history]")
    out = []
    for history in histories:
        flat = isinstance(history, (str, bytes, int, np.integer))
        if flat or not isinstance(history, Iterable):
            raise ValueError("histories must be a list of histories (lists of raw item ids), "
                             f"got an element {history!r}; for one user pass [history]")
        out.append([str(item) for item in history])
    return out


def _item_ids(session: ort.InferenceSession, item_ids: ItemIds | None) -> ItemIds:
    if item_ids is not None:
        return item_ids
    embedded = embedded_item_ids(session)
    return embedded if embedded is not None else ItemIds.identity(model_num_items(session))


def _internal_ids(ids: ItemIds, histories: list[list[str]]) -> list[list[int]]:
    """Internal ids of every history; one ``UnknownItemError`` names the batch's unknown ids."""
    internal, unknown = [], []
    for history in histories:
        try:
            internal.append(ids.internal_ids(history))
        except UnknownItemError as err:
            unknown.extend(err.unknown)
    if unknown:
        raise UnknownItemError(list(dict.fromkeys(unknown)))
    return internal


def _rank(row: int, scores: np.ndarray, history: list[int], ids: ItemIds,
          k: int) -> list[Recommendation]:
    """Top ``k`` of one score row, the padding item and the whole history excluded."""
    unseen = np.ones(scores.shape[0], dtype=bool)
    unseen[0] = False
    unseen[history] = False
    if not np.isfinite(scores[unseen]).all():
        raise FloatingPointError(f"the model's scores for histories[{row}] are not finite: "
                                 "the model file is broken")
    # the top-k graph's rules in numpy (equal scores: lower internal id first)
    items, values = rank_masked(scores[None], [history], min(k, int(unseen.sum())))
    return [Recommendation(item=ids.raw_id(int(i)), score=float(v), title=ids.title(int(i)),
                           rank=rank)
            for rank, (i, v) in enumerate(zip(items[0], values[0]), start=1)]


def _run_top_k(session: ort.InferenceSession, seqs: np.ndarray, internal: list[list[int]],
               ids: ItemIds, k: int) -> list[list[Recommendation]]:
    """Lists from a top-k graph: ``exclude`` is each whole history (also the items before the
    last ``max_len``), 0-padded to the longest; ``k`` at most the catalogue (the graph's bound).

    The graph fills a row's slots past its admissible items with id 0; a row must come back
    with exactly ``min(k, unseen items)`` real ids and finite scores, else the model is broken
    (an unseen item scored -inf or NaN drops out or shows up non-finite).
    """
    exclude = np.zeros((len(internal), max(len(h) for h in internal)), dtype=np.int64)
    for row, items in enumerate(internal):
        exclude[row, :len(items)] = items
    k_graph = min(k, ids.num_items)
    values, items = session.run([TOP_K_SCORES, TOP_K_ITEMS],
                                {INPUT: seqs, EXCLUDE: exclude,
                                 K_INPUT: np.array([k_graph], dtype=np.int64)})
    if items.shape != (len(internal), k_graph) or values.shape != items.shape:
        raise ValueError(f"the model's top-k outputs have shapes {values.shape} and "
                         f"{items.shape}, expected {(len(internal), k_graph)}")
    out = []
    for row, history in enumerate(internal):
        expected = min(k, ids.num_items - len(set(history)))
        real = items[row] != 0
        if int(real.sum()) != expected or not real[:expected].all() or \
                not np.isfinite(values[row, :expected]).all():
            raise FloatingPointError(f"the model's scores for histories[{row}] are not finite: "
                                     "the model file is broken")
        out.append([Recommendation(item=ids.raw_id(int(i)), score=float(v),
                                   title=ids.title(int(i)), rank=rank)
                    for rank, (i, v) in enumerate(zip(items[row, :expected],
                                                      values[row, :expected]), start=1)])
    return out


def read_history_file(path: str | os.PathLike) -> tuple[list[int], list[list[str]]]:
    """``(line numbers, histories)`` of a history file (scripts/recommend.py --history-file):
    one user per line, raw ids separated by spaces or commas; blank lines are skipped; UTF-8,
    with or without a byte-order mark.

    Raises:
        FileNotFoundError, OSError: the file cannot be read.
        ValueError: it is not UTF-8 text, or holds no history.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no history file at {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Notepad) is fine
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from err
    lines, histories = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        ids = [token for token in re.split(r"[\s,]+", line) if token]
        if ids:
            lines.append(number)
            histories.append(ids)
    if not histories:
        raise ValueError(f"{path} holds no history (one user per line: raw item ids separated "
                         "by spaces or commas)")
    return lines, histories


def refuse_tsv_unsafe(values: Iterable[str | None], what: str, fix: str = "") -> None:
    """``ValueError`` naming the ``values`` (``what``: "user ids", ...) that hold a tab or line
    break (``data.item_ids.tsv_unsafe``), which no tab-separated line can carry."""
    bad = tsv_unsafe(values)
    if bad:
        raise ValueError(f"{what} {quote_some(bad, 3)} hold a tab or line break: a "
                         f"tab-separated line cannot carry them{fix}")


def format_recommendations(results: list[list[Recommendation]],
                           lines: Sequence[int | str] | None = None) -> list[str]:
    """``rank<TAB>raw id<TAB>score[<TAB>title]`` per recommendation (score to 6 decimals, the
    title when there is one), prefixed with ``lines[i]<TAB>`` (the user's line number in a
    history file, or their raw user id) when ``lines`` is given.

    Raises:
        ValueError: a recommended item's raw id or title, or a user id, holds a tab or line
            break (``data.item_ids.tsv_unsafe``): no tab-separated line can carry it. Nothing
            is returned then, so a caller prints all of a batch or none of it.
    """
    refuse_tsv_unsafe((value for recs in results for rec in recs
                       for value in (rec.item, rec.title)), "recommended item id(s) or title(s)",
                      " (rename them in the log, or serve from Python: "
                      "export.recommend.recommend)")
    refuse_tsv_unsafe((str(line) for line in lines or ()), "user id(s)")
    out = []
    for i, recs in enumerate(results):
        prefix = f"{lines[i]}\t" if lines is not None else ""
        for rec in recs:
            title = "" if rec.title is None else f"\t{rec.title}"
            out.append(f"{prefix}{rec.rank}\t{rec.item}\t{rec.score:.6f}{title}")
    return out

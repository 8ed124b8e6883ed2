"""The top-k serving graph (``build_sasrec_onnx(top_k=k)``) and the INT8 scoring paths.

The reference for a top-k graph is the full-score graph of the same model, backend and scoring
path, ranked in numpy by the project's rules (padding item, history and ``exclude`` masked;
score descending, equal scores by lower id; id 0 / -inf past the admissible items): lists and
scores must be equal exactly, ties included. The fused ``Score`` op must give the ``"int8"``
path's scores bit for bit.
"""
from __future__ import annotations

import functools
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export import build_sasrec_onnx, make_session
from export.int8_emitters import EMITTERS
from export.scoring_probe import candidate_paths, choose_scoring, pick_path
from export.top_k import rank_masked
from qat import SASRec, SASRecConfig
from tests.test_export_models import one_torch_thread, tiny_model  # noqa: F401 (fixture)

ORT_ERRORS = (ort.capi.onnxruntime_pybind11_state.Fail,
              ort.capi.onnxruntime_pybind11_state.InvalidArgument,
              ort.capi.onnxruntime_pybind11_state.RuntimeException)
# odd width: the fused kernel pairs columns, the last pair half empty
CONFIG = SASRecConfig(num_items=40, max_len=10, hidden=15, blocks=2, heads=3, dropout=0.1)
TIED = (7, 8, 9, 30)  # items given the same embedding row as item 6: exact score ties
# (name, model kind, build options)
GRAPHS = [("fp32", "fp32", {}),
          ("int8_int8", "lsq", {"scoring": "int8"}),
          ("int8_float", "lsq", {"scoring": "float"}),
          ("fused_fused", "lsq", {"fused": True}),
          ("fused_int8", "lsq", {"fused": True, "scoring": "int8"}),
          ("fused_float", "lsq", {"fused": True, "scoring": "float"})]


@functools.lru_cache(maxsize=None)
def tied_model(kind: str) -> SASRec:
    """A tiny model whose items 7, 8, 9 and 30 repeat item 6's embedding row (their scores tie
    exactly in FP32 and INT8: same row, same per-row scale)."""
    torch.manual_seed(0)
    fp32 = SASRec(CONFIG).eval()
    with torch.no_grad():
        for item in TIED:
            fp32.item_emb.weight[item] = fp32.item_emb.weight[6]
    if kind == "fp32":
        return fp32
    model = tiny_model(kind, config=CONFIG)
    table = model.item_emb.weight()  # a quantized copy: rebuild the embedding from the tied one
    ints, scales = table.int_repr().clone(), table.q_per_channel_scales().clone()
    for item in TIED:
        ints[item], scales[item] = ints[6], scales[6]
    tied = torch._make_per_channel_quantized_tensor(ints, scales, table.q_per_channel_zero_points(),
                                                    0)
    model.item_emb.set_weight(tied)
    return model


def sequences(seed: int, rows: int = 9) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(1, CONFIG.num_items + 1, (rows, CONFIG.max_len))
    x[:3, :6] = 0
    x[0, -1] = 6  # item 6 seen: its tied twins must still come out, in id order
    return x


def reference_top_k(scores: np.ndarray, item_seq: np.ndarray, exclude: np.ndarray,
                    k: int) -> tuple[np.ndarray, np.ndarray]:
    """The rules of export.top_k applied to full scores in numpy."""
    items = np.zeros((len(scores), k), np.int64)
    values = np.full((len(scores), k), -np.inf, np.float32)
    for r, row in enumerate(scores):
        admissible = np.ones(row.shape[0], bool)
        admissible[0] = False
        admissible[item_seq[r]] = False
        admissible[exclude[r if len(exclude) > 1 else 0]] = False
        candidates = np.flatnonzero(admissible)
        best = candidates[np.argsort(-row[candidates], kind="stable")[:k]]
        items[r, :len(best)], values[r, :len(best)] = best, row[best]
    return items, values


@pytest.mark.parametrize("name,kind,options", GRAPHS, ids=[g[0] for g in GRAPHS])
def test_top_k_graph_equals_the_ranked_full_scores(name, kind, options):
    model = tied_model(kind)
    full = make_session(build_sasrec_onnx(model, **options), threads=1)
    top = make_session(build_sasrec_onnx(model, top_k=10, **options), threads=1)
    x = sequences(1)
    scores = full.run(["scores"], {"item_seq": x})[0]
    rng = np.random.default_rng(2)
    cases = [(np.zeros((1, 1), np.int64), 10, False),                # the defaults
             (rng.integers(0, CONFIG.num_items + 1, (len(x), 6)), 10, True),  # per row
             (np.array([[6, 11, 0, 12]]), 5, True),                  # one row for all, k=5
             (np.arange(1, 33).reshape(1, -1), 10, True)]   # 8 or fewer unseen: fewer than k
    for exclude, k, feed in cases:
        inputs = {"item_seq": x, "exclude": exclude, "k": np.array([k])} if feed else {
            "item_seq": x}
        values, items = top.run(["top_k_scores", "top_k_items"], inputs)
        want_items, want_values = reference_top_k(scores, x, exclude, k)
        np.testing.assert_array_equal(items, want_items)
        np.testing.assert_array_equal(values, want_values)
    # ties happened and were kept in id order: user 0 saw item 6, its twins are ranked together
    ranked = list(reference_top_k(scores, x, np.zeros((1, 1), np.int64), 40)[0][0])
    twins = [i for i in ranked if i in TIED]
    assert twins == sorted(TIED) and ranked.index(twins[-1]) - ranked.index(twins[0]) == 3
    assert np.all(items[:, -1] == 0)  # the fewer-than-k case leaves id 0 ...
    assert np.all(values[:, -1] == -np.inf)  # ... and -inf


# a catalogue the fused ScoreTopK splits into item ranges for small batches (ort_ops.cc: ranges
# of at least kTopKMinItemsPerTask = 8192 items, here 3; below kTopKSplitBelow = 4 tasks of 16
# users; k <= 256)
WIDE = SASRecConfig(num_items=25000, max_len=6, hidden=8, blocks=1, heads=2, dropout=0.1)
PERIOD = 4000  # item i > PERIOD repeats item ((i - 1) % PERIOD + 1)'s row: ties across ranges


def test_fused_top_k_split_over_item_ranges_equals_the_ranked_full_scores():
    """Small batches (one user task up to 48 users) are split over item ranges and merged: the
    lists must be those of one pass, ties across range borders by lower id included."""
    model = tiny_model("lsq", config=WIDE)
    table = model.item_emb.weight()
    ints, scales = table.int_repr().clone(), table.q_per_channel_scales().clone()
    twin = (torch.arange(PERIOD + 1, WIDE.num_items + 1) - 1) % PERIOD + 1
    ints[PERIOD + 1:], scales[PERIOD + 1:] = ints[twin], scales[twin]
    model.item_emb.set_weight(torch._make_per_channel_quantized_tensor(
        ints, scales, table.q_per_channel_zero_points(), 0))
    full = make_session(build_sasrec_onnx(model, scoring="int8"), threads=1)
    rng = np.random.default_rng(7)
    x = rng.integers(1, WIDE.num_items + 1, (50, WIDE.max_len))
    scores = full.run(["scores"], {"item_seq": x})[0]
    fused = build_sasrec_onnx(model, fused=True, top_k=10)
    twins_ranked = 0
    for threads in (1, 2):
        top = make_session(fused, threads=threads)
        for rows, k in ((1, 10), (3, 25), (40, 10), (50, 10), (2, 300)):
            # split: 1, 3 and 40 users (1 to 3 user tasks), k <= 256; one pass: 50 users, k=300
            exclude = rng.integers(0, WIDE.num_items + 1, (rows, 30))
            values, items = top.run(None, {"item_seq": x[:rows], "exclude": exclude,
                                           "k": np.array([k])})
            want_items, want_values = reference_top_k(scores[:rows], x[:rows], exclude, k)
            np.testing.assert_array_equal(items, want_items)
            np.testing.assert_array_equal(values, want_values)
            twins_ranked += int(np.sum(np.diff(values, axis=1) == 0))
    assert twins_ranked > 100  # equal scores side by side, from rows in different ranges


def test_rank_masked_is_the_reference_rule_in_numpy():
    """export.top_k.rank_masked (the export's list check, recommend's full-score path) against
    the tests' own reference, ties and fewer-than-k rows included, both forms of ``masked``."""
    scores = make_session(build_sasrec_onnx(tied_model("lsq")), threads=1).run(
        ["scores"], {"item_seq": sequences(1)})[0]
    x = sequences(1)
    wide = np.concatenate([x, np.tile(np.arange(1, 33), (len(x), 1))], axis=1)  # <= 8 unseen
    for masked in (x, wide):
        for k in (1, 10, 40):
            want_items, want_values = reference_top_k(scores, masked, np.zeros((1, 1), np.int64),
                                                      k)
            for form in (masked, [list(row) for row in masked]):
                items, values = rank_masked(scores, form, k)
                np.testing.assert_array_equal(items, want_items)
                np.testing.assert_array_equal(values, want_values)
    assert np.all(rank_masked(scores, wide, 10)[0][:, -1] == 0)


def test_top_k_graph_interface_and_metadata():
    model = tied_model("lsq")
    proto = build_sasrec_onnx(model, top_k=7, fused=True)
    assert [o.name for o in proto.graph.output] == ["top_k_scores", "top_k_items"]
    assert [i.name for i in proto.graph.input] == ["item_seq", "exclude", "k"]
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["sasrec_qat.serving"] == "top_k" and props["sasrec_qat.top_k"] == "7"
    assert props["sasrec_qat.scoring"] == "fused"
    assert [n.op_type for n in proto.graph.node if n.op_type.startswith("Score")] == ["ScoreTopK"]
    full = {p.key: p.value for p in build_sasrec_onnx(model).metadata_props}
    assert full["sasrec_qat.serving"] == "scores" and full["sasrec_qat.scoring"] == "int8"
    values, items = make_session(proto, threads=1).run(None, {"item_seq": sequences(3)})
    assert items.shape == values.shape == (9, 7)


def test_fused_score_op_is_the_int8_path_bit_for_bit():
    model = tiny_model("dorefa", config=CONFIG)
    x = sequences(4, rows=33)  # a batch that is not a multiple of the kernel's 4-user blocks
    exact = make_session(build_sasrec_onnx(model, scoring="int8"), threads=1)
    fused = build_sasrec_onnx(model, fused=True)
    assert "Score" in {n.op_type for n in fused.graph.node}
    for threads in (1, 2):
        got = make_session(fused, threads=threads).run(["scores"], {"item_seq": x})[0]
        np.testing.assert_array_equal(got, exact.run(["scores"], {"item_seq": x})[0])


def test_float_scoring_is_torchs_formula_and_stores_the_int8_table():
    model = tiny_model("lsq", config=CONFIG)
    proto = build_sasrec_onnx(model, scoring="float")
    tables = [t for t in proto.graph.initializer if t.name.startswith("item_emb.weight")]
    assert [t.data_type for t in tables] == [3]  # int8 in the file
    x = sequences(5)
    got = make_session(proto, threads=1).run(["scores"], {"item_seq": x})[0]
    with torch.no_grad():
        want = model.score_last(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


@pytest.mark.parametrize("fused", [False, True])
def test_bad_top_k_inputs_are_errors(fused):
    model = tied_model("lsq")
    session = make_session(build_sasrec_onnx(model, top_k=5, fused=fused, scoring=None),
                           threads=1)
    x = sequences(6)
    nothing = np.zeros((1, 1), np.int64)
    for exclude, k in ((np.array([[CONFIG.num_items + 1]]), 5), (np.array([[3, -1]]), 5),
                       (nothing, CONFIG.num_items + 2)):
        with pytest.raises(ORT_ERRORS):
            session.run(None, {"item_seq": x, "exclude": exclude, "k": np.array([k])})
    values, items = session.run(None, {"item_seq": x, "exclude": nothing, "k": np.array([0])})
    assert values.shape == items.shape == (len(x), 0)  # k = 0: empty lists (ONNX TopK's rule)
    # k = num_items + 1 (every score column): the padding item's slot ends each list, in both
    values, items = session.run(None, {"item_seq": x, "exclude": nothing,
                                       "k": np.array([CONFIG.num_items + 1])})
    assert np.all(items[:, -1] == 0) and np.all(values[:, -1] == -np.inf)
    for bad in (0, CONFIG.num_items + 1):
        with pytest.raises(ValueError, match="top_k must be in"):
            build_sasrec_onnx(model, top_k=bad)
    with pytest.raises(ValueError, match="scoring must be one of"):
        build_sasrec_onnx(model, scoring="int4")
    with pytest.raises(ValueError, match="scores by"):
        build_sasrec_onnx(model, scoring="fused")  # the exact backend has no fused op


def test_scoring_paths_per_backend():
    assert candidate_paths(fused=True) == ("fused", "int8", "float")
    assert candidate_paths(fused=False) == ("int8", "float")
    assert EMITTERS["plain"].scoring_paths == ("int8", "float")


@pytest.mark.parametrize("worst,chosen", [
    ({"fused": 0.7, "int8": 0.9, "float": 1.0}, "fused"),
    ({"fused": 1.3, "int8": 1.1, "float": 1.0}, "float"),     # slower somewhere: not chosen
    ({"fused": 1.01, "int8": 0.97, "float": 1.0}, "int8"),    # 1.01 > 0.97 x 1.02
    ({"fused": 0.98, "int8": 0.97, "float": 1.0}, "fused"),   # within the tolerance: exact first
])
def test_pick_path_takes_the_lowest_worst_ratio_exact_paths_first(worst, chosen):
    assert pick_path(worst, ("fused", "int8", "float")) == chosen


def test_choose_scoring_times_every_path_and_records_it():
    model = tiny_model("lsq", config=CONFIG)
    choice = choose_scoring(model, fused=True, top_k=10, batches=(1, 8), repeats=3, warmup=1)
    assert set(choice.median_ms) == {"fused", "int8", "float"}
    assert all(set(by_batch) == {1, 8} for by_batch in choice.median_ms.values())
    assert choice.worst_ratio["float"] == 1.0
    assert choice.path == pick_path(choice.worst_ratio, ("fused", "int8", "float"))
    record = json.loads(choice.metadata()["sasrec_qat.scoring_probe"])
    assert record["chosen"] == choice.path and record["top_k"] == 10
    assert set(record["cpu_flags"]) >= {"avx2", "avx512_vnni"}
    with pytest.raises(ValueError, match="INT8"):
        choose_scoring(tiny_model("fp32", config=CONFIG), fused=False)

"""export.recommend and scripts/recommend.py: raw-id top-k from exported models (FP32, INT8,
fused INT8) on tiny models trained in process."""
from __future__ import annotations

import copy
import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from conftest import cyclic_dataset, run_in_process, train_tiny_runs

from data import ITEM_IDS, ItemIds, UnknownItemError
from data.item_ids import METADATA_KEY
from export import build_sasrec_onnx, load_run, make_session
from export.export_run import export_run
from export.onnx_file import save_onnx
from export.parity_record import ParityRecord
from export.recommend import (
    EMPTY_HISTORY,
    SERVING_PREFERENCE,
    Recommendation,
    embedded_item_ids,
    load_recommender,
    model_max_len,
    recommend,
    serving_model_path,
)
from qat.config import SASRecConfig
from qat.model import SASRec

NUM_ITEMS, MAX_LEN = 20, 10  # the tiny runs' (conftest.TINY_TRAIN, cyclic_dataset)
KINDS = ["fp32", "int8", "int8_fused"]
TOP_K_KINDS = [f"{kind}_top_k" for kind in KINDS]  # the same models' top-k graphs
SERVED = KINDS + TOP_K_KINDS


def shuffled_ids(num_items: int = NUM_ITEMS, seed: int = 0) -> ItemIds:
    """A map whose raw ids are not the internal ones (and not in their order), with titles."""
    rng = np.random.default_rng(seed)
    codes = rng.permutation(np.arange(100, 100 + num_items))
    return ItemIds(tuple(f"sku{c}" for c in codes), tuple(f"Title of sku{c}" for c in codes))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(data file, fp32 run, lsq run), trained once in process."""
    data, fp32, qat = train_tiny_runs(tmp_path_factory.mktemp("runs"), ["lsq"])
    return data, fp32, qat["lsq"]


@pytest.fixture(scope="module")
def models(runs):
    """{kind: torch model}: the FP32 model and the converted INT8 model (also behind fused)."""
    fp32, int8 = load_run(runs[1]).model, load_run(runs[2]).model
    by_kind = {"fp32": fp32, "int8": int8, "int8_fused": int8}
    return {**by_kind, **{f"{kind}_top_k": model for kind, model in by_kind.items()}}


def session_of(model: SASRec, kind: str, ids: ItemIds | None):
    """A session of ``kind`` (``SERVED``): the full-score graph, or with ``_top_k`` the top-k
    graph (default k 10 or the catalogue, fed by ``recommend`` with its own k)."""
    meta = None if ids is None else {METADATA_KEY: ids.dumps()}
    top_k = min(10, model.config.num_items) if kind.endswith("_top_k") else None
    proto = build_sasrec_onnx(model, metadata=meta, fused=kind.startswith("int8_fused"),
                              top_k=top_k)
    return make_session(proto.SerializeToString(), threads=1)


@pytest.fixture(scope="module")
def sessions(models):
    """{kind: session} of graphs (``SERVED``) carrying ``shuffled_ids()`` in their metadata."""
    return {kind: session_of(models[kind], kind, shuffled_ids()) for kind in SERVED}


def histories(ids: ItemIds) -> list[list[str]]:
    """Raw-id histories of several lengths, some longer than max_len, some with repeats."""
    seqs = cyclic_dataset().sequences
    internal = [seqs[1][:1], seqs[2][:3], seqs[3][:7], seqs[4], seqs[5] + seqs[5][:4],
                [3, 3, 9, 3], seqs[7][:10], seqs[8][:11]]
    return [[ids.raw_id(i) for i in h] for h in internal]


@torch.no_grad()
def torch_top_k(model: SASRec, ids: ItemIds, history: list[str],
                k: int) -> list[tuple[str, float]]:
    """The reference: the torch model's scores of the left-padded last max_len items, the
    padding item and every history item excluded, sorted by (score desc, internal id)."""
    internal = ids.internal_ids(history)
    seq = torch.zeros(1, MAX_LEN, dtype=torch.long)
    tail = internal[-MAX_LEN:]
    seq[0, MAX_LEN - len(tail):] = torch.tensor(tail)
    scores = model.score_last(seq)[0]
    candidates = [i for i in range(1, ids.num_items + 1) if i not in set(internal)]
    best = sorted(candidates, key=lambda i: (-float(scores[i]), i))[:k]
    return [(ids.raw_id(i), float(scores[i])) for i in best]


# -- known answers ---------------------------------------------------------------------------
def constant_scorer(scores: list[float]) -> SASRec:
    """An FP32 SASRec whose scores are ``scores`` (items 1..N) whatever the history: the final
    LayerNorm has weight 0 and bias e_0, so the hidden state is e_0 and an item's score is
    column 0 of its embedding row, exactly."""
    model = SASRec(SASRecConfig(num_items=len(scores), max_len=5, hidden=4, blocks=1,
                                dropout=0.0)).eval()
    with torch.no_grad():
        model.final_norm.weight.zero_()
        model.final_norm.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        model.item_emb.weight[1:, 0] = torch.tensor(scores)
    return model


@pytest.mark.parametrize("kind", ["fp32", "fp32_top_k"])
def test_known_answer_history_excluded_and_ties_by_lower_internal_id(kind):
    ids = ItemIds(tuple("abcdefgh"), tuple(f"Film {c.upper()}" for c in "abcdefgh"))
    model = constant_scorer([2.0, 5.0, 1.0, 5.0, 3.0, 5.0, 4.0, -1.0])
    session = session_of(model, kind, ids)
    got = recommend(session, [["c", "f"], ["b"]], k=4)
    # c (3) and f (6) are seen; b, d, f tie at 5: b (2) before d (4), f excluded
    assert got[0] == [Recommendation("b", 5.0, "Film B", 1), Recommendation("d", 5.0, "Film D", 2),
                      Recommendation("g", 4.0, "Film G", 3), Recommendation("e", 3.0, "Film E", 4)]
    assert [r.item for r in got[1]] == ["d", "f", "g", "e"]
    # the same scores under a map listing the raw ids in reverse: ties now follow that order
    reverse = ItemIds(tuple("hgfedcba"))
    assert [r.item for r in recommend(session, [["f"]], k=3, item_ids=reverse)[0]] == \
        ["g", "e", "c"]  # internal 2, 4, 6 tie at 5; f is internal 3 (score 1), seen


@pytest.mark.parametrize("kind", ["fp32", "fp32_top_k"])
@pytest.mark.parametrize("broken", [float("nan"), float("-inf"), float("inf")])
def test_non_finite_scores_raise(kind, broken):
    session = session_of(constant_scorer([1.0, broken, 2.0, 0.5]), kind, None)
    with pytest.raises(FloatingPointError, match=r"histories\[0\] are not finite"):
        recommend(session, [["3"], ["1"]], k=3)  # every unseen item, item 2 among them


@pytest.mark.parametrize("kind", SERVED)
def test_matches_the_torch_models_masked_top_k(kind, models, sessions):
    """Items and order exactly those of the torch model's masked scores, mapped to raw ids."""
    ids = shuffled_ids()
    batch = histories(ids)
    got = recommend(sessions[kind], batch, k=10)
    assert len(got) == len(batch)
    for history, recs in zip(batch, got):
        want = torch_top_k(models[kind], ids, history, 10)
        assert [r.item for r in recs] == [item for item, _ in want]
        assert [r.score for r in recs] == pytest.approx([s for _, s in want], abs=1e-5)
        assert len(recs) == min(10, NUM_ITEMS - len(set(history)))
        assert [r.rank for r in recs] == list(range(1, len(recs) + 1))
        assert all(r.title == f"Title of {r.item}" for r in recs)


@pytest.mark.parametrize("kind", SERVED)
def test_history_items_are_never_recommended(kind, sessions):
    ids = shuffled_ids()
    batch = histories(ids)
    for history, recs in zip(batch, recommend(sessions[kind], batch, k=NUM_ITEMS)):
        items = [r.item for r in recs]
        assert not set(items) & set(history)  # also the items before the last max_len
        assert sorted(items) == sorted(set(ids.raw) - set(history))  # every unseen item
        assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)


@pytest.mark.parametrize("kind", ["int8", "int8_top_k", "int8_fused_top_k"])
def test_k_larger_than_the_catalogue_returns_every_unseen_item(kind, sessions):
    ids = shuffled_ids()
    history = [ids.raw_id(i) for i in (4, 5, 6)]
    recs = recommend(sessions[kind], [history], k=1000)[0]
    assert len(recs) == NUM_ITEMS - 3 and [r.rank for r in recs] == list(range(1, 18))
    assert recs == recommend(sessions["int8"], [history], k=1000)[0]
    full = recommend(sessions[kind], [ids.raw[:-1]], k=5)[0]  # one unseen item left
    assert [r.item for r in full] == [ids.raw[-1]]


def test_unknown_ids_raise_naming_every_one_of_the_batch(sessions):
    ids = shuffled_ids()
    batch = [[ids.raw_id(1), "nope", ids.raw_id(2)], ["x9", "nope", ids.raw_id(3)], ["42"]]
    with pytest.raises(UnknownItemError) as err:
        recommend(sessions["fp32"], batch)
    assert err.value.unknown == ["nope", "x9", "42"]
    assert all(repr(u) in str(err.value) for u in ("nope", "x9", "42"))
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("kind", KINDS)
def test_empty_history_is_refused_though_all_padding_scores_are_finite(kind, models, sessions):
    """The evidence behind the rule: an all-padding input gives finite scores, the same for
    any padding length and in torch, but no training target ever follows an empty context."""
    session = sessions[kind]
    rows = [session.run(["scores"], {"item_seq": np.zeros((2, t), np.int64)})[0]
            for t in (1, 4, MAX_LEN)]
    assert all(np.isfinite(r).all() for r in rows)
    assert all(np.array_equal(rows[0][0], r[i]) for r in rows for i in range(2))
    with torch.no_grad():
        ref = models[kind].score_last(torch.zeros(1, MAX_LEN, dtype=torch.long))[0].numpy()
    np.testing.assert_allclose(rows[0][0], ref, atol=1e-5)
    ids = shuffled_ids()
    with pytest.raises(ValueError, match=EMPTY_HISTORY) as err:
        recommend(session, [[ids.raw_id(1)], [], [ids.raw_id(2)], []])
    assert "histories[1], histories[3] are empty" in str(err.value)


def permuted(model: SASRec, perm: torch.Tensor) -> SASRec:
    """``model`` whose new internal item ``j`` is the old item ``perm[j]`` (``perm[0] == 0``):
    item table rows permuted (FP32 weight or the INT8 rows with their per-row qparams)."""
    out = copy.deepcopy(model)
    emb = out.item_emb
    if isinstance(emb, torch.nn.Embedding):
        with torch.no_grad():
            emb.weight.copy_(model.item_emb.weight[perm])
    else:  # torch.ao.nn.quantized.Embedding: per-row float qparams travel with their rows
        w = model.item_emb.weight()
        emb.set_weight(torch._make_per_channel_quantized_tensor(
            w.int_repr()[perm], w.q_per_channel_scales()[perm],
            w.q_per_channel_zero_points()[perm], 0))
    return out


@pytest.mark.parametrize("kind", SERVED)
def test_permuted_model_gives_identical_raw_id_recommendations(kind, models, sessions):
    """The shuffled-id copy: item rows and the map permuted alike recommend the same raw ids in
    the same order with the same scores."""
    ids = shuffled_ids()
    perm = torch.cat([torch.zeros(1, dtype=torch.long),
                      torch.from_numpy(np.random.default_rng(5).permutation(NUM_ITEMS)) + 1])
    moved = ItemIds(tuple(ids.raw_id(int(p)) for p in perm[1:]),
                    tuple(ids.title(int(p)) for p in perm[1:]))
    assert moved != ids
    session = session_of(permuted(models[kind], perm), kind, moved)
    batch = histories(ids)
    want = recommend(sessions[kind], batch, k=10)
    got = recommend(session, batch, k=10)
    for a, b in zip(want, got):
        assert [(r.item, r.title, r.rank) for r in b] == [(r.item, r.title, r.rank) for r in a]
        assert [r.score for r in b] == pytest.approx([r.score for r in a], abs=1e-6)


@pytest.mark.parametrize("kind", ["int8_fused", "int8_fused_top_k", "fp32_top_k"])
def test_batch_composition_and_truncation(kind, sessions):
    """A user's list does not depend on the rest of the batch; a history longer than max_len
    (read from the model's metadata) scores its last max_len items and excludes all."""
    ids = shuffled_ids()
    session = sessions[kind]
    full_scores = sessions[kind.removesuffix("_top_k")]
    assert model_max_len(session) == MAX_LEN
    assert session.get_inputs()[0].shape == ["batch", "length"]  # why: dynamic length
    batch = histories(ids)
    together = recommend(session, batch, k=7)
    assert together == [recommend(session, [h], k=7)[0] for h in batch]
    long = [ids.raw_id(i) for i in range(1, 16)]  # 15 items
    recs = recommend(session, [long], k=NUM_ITEMS)[0]
    assert {r.item for r in recs} == set(ids.raw[15:])
    seq = np.zeros((1, MAX_LEN), np.int64)
    seq[0, -4:] = ids.internal_ids(long[-4:])
    scores = full_scores.run(["scores"], {"item_seq": seq})[0][0]
    unseen = sorted(set(range(1, NUM_ITEMS + 1)) - set(ids.internal_ids(long)),
                    key=lambda i: (-scores[i], i))
    shorter = recommend(session, [long], k=3, max_len=4)[0]  # reads the last 4, excludes all
    assert [r.item for r in shorter] == [ids.raw_id(i) for i in unseen[:3]]
    with pytest.raises(ValueError, match=r"max_len must be in \[1, 10\]"):
        recommend(session, [long], max_len=11)


def test_bad_arguments(sessions):
    ids = shuffled_ids()
    session = sessions["fp32"]
    with pytest.raises(ValueError, match="for one user pass"):
        recommend(session, [ids.raw_id(1), ids.raw_id(2)])  # a flat list
    with pytest.raises(ValueError, match="k must be a positive integer"):
        recommend(session, [[ids.raw_id(1)]], k=0)
    with pytest.raises(ValueError, match="has 5 items but the model scores 20"):
        recommend(session, [["1"]], item_ids=ItemIds.identity(5))
    assert recommend(session, []) == []


def test_model_without_map_uses_identity_ids(models):
    session = session_of(models["fp32"], "fp32", None)
    assert embedded_item_ids(session) is None
    recs = recommend(session, [["3", "4"]], k=NUM_ITEMS)[0]
    assert {r.item for r in recs} == {str(i) for i in range(1, 21)} - {"3", "4"}
    assert all(r.title is None for r in recs)


# -- export_run embeds the map -----------------------------------------------------------------
def copy_run(src, dst):
    shutil.copytree(src, dst)
    for name in ("model_int8.onnx", "model_int8_fused.onnx", "model_fp32.onnx", "parity.json"):
        (dst / name).unlink(missing_ok=True)
    return dst


def test_export_run_embeds_the_run_folders_map_in_every_graph(runs, tmp_path):
    folder = copy_run(runs[2], tmp_path / "lsq")
    ids = shuffled_ids()
    ids.save(folder / ITEM_IDS)
    result = export_run(folder, threads=1, fused=True)
    record = ParityRecord.load(folder / "parity.json")
    assert record == result.record
    assert record.item_ids_source == ITEM_IDS
    assert record.item_ids_sha256 == hashlib.sha256(ids.dumps().encode()).hexdigest()
    for name in ("model_int8.onnx", "model_int8_fused.onnx"):
        props = {p.key: p.value for p in onnx.load(str(folder / name)).metadata_props}
        assert ItemIds.from_json(json.loads(props[METADATA_KEY])) == ids
        session, loaded = load_recommender(folder / name)
        assert loaded == ids == embedded_item_ids(session)
        history = histories(ids)[3]
        want = torch_top_k(result.run.model, ids, history, 5)
        assert [r.item for r in recommend(session, [history], k=5)[0]] == [i for i, _ in want]


def test_export_run_without_map_embeds_identity_and_refuses_a_wrong_map(runs, tmp_path):
    folder = copy_run(runs[1], tmp_path / "fp32")
    (folder / ITEM_IDS).unlink(missing_ok=True)  # an older run folder, a SASRec text file
    record = export_run(folder, threads=1).record
    assert record.item_ids_source == "identity"
    identity = ItemIds.identity(NUM_ITEMS)
    assert record.item_ids_sha256 == hashlib.sha256(identity.dumps().encode()).hexdigest()
    session, loaded = load_recommender(folder / "model_fp32.onnx")
    assert loaded == identity == embedded_item_ids(session)  # embedded, not a fallback

    other = copy_run(runs[1], tmp_path / "wrong")
    ItemIds.identity(NUM_ITEMS + 1).save(other / ITEM_IDS)
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    with pytest.raises(ValueError, match=f"{other / ITEM_IDS} maps 21 items but the model "
                                         "scores 20"):
        export_run(other, threads=1)
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before


# -- scripts/recommend.py ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_files(models, tmp_path_factory):
    """{name: path}: the fused INT8 graph with the titled map, the FP32 graph without a map."""
    root = tmp_path_factory.mktemp("models")
    with_map = root / "model_int8_fused.onnx"
    save_onnx(build_sasrec_onnx(models["int8"], fused=True,
                                metadata={METADATA_KEY: shuffled_ids().dumps()}), with_map)
    bare = root / "model_fp32.onnx"
    save_onnx(build_sasrec_onnx(models["fp32"]), bare)
    top_k = root / "model_int8_fused_top_k.onnx"
    save_onnx(build_sasrec_onnx(models["int8"], fused=True, top_k=10,
                                metadata={METADATA_KEY: shuffled_ids().dumps()}), top_k)
    return {"with_map": with_map, "bare": bare, "top_k": top_k}


def error_line(result):
    """Exit 2 with one ``error:`` line and no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


@pytest.mark.parametrize("file", ["with_map", "top_k"])
def test_cli_prints_rank_raw_id_score_and_title(file, model_files, sessions):
    ids = shuffled_ids()
    history = histories(ids)[2]
    result = run_in_process("recommend", "--model", model_files[file], "--history",
                            *history, "--k", 4)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    want = recommend(sessions["int8_fused"], [history], k=4)[0]
    assert result.stdout.splitlines() == [
        f"{r.rank}\t{r.item}\t{r.score:.6f}\tTitle of {r.item}" for r in want]


def test_cli_says_when_the_history_leaves_fewer_than_k_items(model_files):
    """A history covering all but 2 items: those 2 printed, and a note that k was not met."""
    ids = shuffled_ids()
    history = [ids.raw[i] for i in range(2, NUM_ITEMS)]  # all but the first two items
    result = run_in_process("recommend", "--model", model_files["with_map"], "--history",
                            *history, "--k", 5)
    assert result.returncode == 0, result.stderr
    assert sorted(line.split("\t")[1] for line in result.stdout.splitlines()) == \
        sorted(ids.raw[:2])
    assert (f"note: the history: 2 of the 5 asked for; the history covers the rest of the "
            f"{NUM_ITEMS} items") in result.stderr


def test_a_run_folder_serves_its_fastest_exported_graph(model_files, tmp_path):
    """--model DIR: the first of SERVING_PREFERENCE there (top-k, fused INT8 first), named on
    stderr; a folder without an exported graph is one error line naming the export command."""
    root = model_files["top_k"].parent  # model_int8_fused_top_k.onnx, model_int8_fused.onnx, ...
    assert serving_model_path(root) == model_files["top_k"]
    assert serving_model_path(model_files["bare"]) == model_files["bare"]  # a file: itself
    history = histories(shuffled_ids())[2]
    by_folder = run_in_process("recommend", "--model", root, "--history", *history, "--k", 4)
    by_file = run_in_process("recommend", "--model", model_files["top_k"], "--history",
                             *history, "--k", 4)
    assert by_folder.returncode == 0 and by_folder.stdout == by_file.stdout
    assert by_folder.stderr == f"note: serving {model_files['top_k']}\n"
    fp32_only = tmp_path / "fp32"
    fp32_only.mkdir()
    shutil.copy(model_files["bare"], fp32_only / "model_fp32.onnx")
    assert serving_model_path(fp32_only) == fp32_only / "model_fp32.onnx"
    empty = tmp_path / "empty"
    empty.mkdir()
    message = error_line(run_in_process("recommend", "--model", empty, "--history", "1"))
    assert "holds no exported model" in message and f"export_int8.py --run {empty}" in message
    assert list(SERVING_PREFERENCE) == sorted(SERVING_PREFERENCE, key=lambda n: (
        "fp32" in n, "top_k" not in n, "fused" not in n))


def test_a_run_folder_serves_only_graphs_of_its_current_export(runs, tmp_path):
    """With parity.json (export_int8.py's record) a folder serves only the graphs it describes,
    byte for byte, and refuses graphs exported from another model file than the one there."""
    folder = copy_run(runs[2], tmp_path / "lsq")
    export_run(folder, threads=1, fused=True)
    assert serving_model_path(folder) == folder / "model_int8_fused_top_k.onnx"
    export_run(folder, threads=1)  # again without --fused: the fused graphs are not recorded
    assert (folder / "model_int8_fused_top_k.onnx").is_file()
    assert serving_model_path(folder) == folder / "model_int8_top_k.onnx"
    graph = folder / "model_int8_top_k.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")  # not the recorded bytes: skipped
    assert serving_model_path(folder) == folder / "model_int8.onnx"

    served = tmp_path / "serving"  # graphs and parity.json copied without the model file
    served.mkdir()
    for name in ("model_int8.onnx", "parity.json"):
        shutil.copy(folder / name, served / name)
    assert serving_model_path(served) == served / "model_int8.onnx"

    model = folder / "model_int8.pt"  # the run trained further, not exported again
    model.write_bytes(model.read_bytes() + b"\0")
    message = error_line(run_in_process("recommend", "--model", folder, "--history", "1"))
    assert message == (f"error: {folder}: its graphs were exported from another model_int8.pt "
                       "than the one there now (parity.json): export it again, "
                       f"scripts/export_int8.py --run {folder}")


def test_cli_history_file_and_model_without_map(model_files, models, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("1 2,3\n\n  5 , 6\n")
    result = run_in_process("recommend", "--model", model_files["bare"], "--history-file",
                            users, "--k", 3)
    assert result.returncode == 0, result.stderr
    assert "note:" in result.stderr and "carries no item id map" in result.stderr
    want = recommend(session_of(models["fp32"], "fp32", None), [["1", "2", "3"], ["5", "6"]],
                     k=3)
    assert result.stdout.splitlines() == [
        f"{line}\t{r.rank}\t{r.item}\t{r.score:.6f}" for line, recs in zip((1, 3), want)
        for r in recs]  # the user's line number first; the blank line 2 skipped
    batched = run_in_process("recommend", "--model", model_files["bare"], "--history-file",
                             users, "--k", 3, "--batch-size", 1)
    assert batched.returncode == 0 and batched.stdout == result.stdout


def test_cli_history_file_batches_print_nothing_when_a_later_one_fails(model_files, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("sku100 sku101\nsku102\nsku101 zz\n")  # the unknown id on line 3
    result = run_in_process("recommend", "--model", model_files["with_map"], "--history-file",
                            users, "--batch-size", 1)
    assert result.returncode == 2 and result.stdout == ""
    assert f"error: {users}:3: unknown item id(s) 'zz'" in result.stderr
    users.write_text("sku100 aa\nsku102\nsku101 zz aa\n")  # two batches: all named at once,
    result = run_in_process("recommend", "--model", model_files["with_map"], "--history-file",
                            users, "--batch-size", 1)  # each with the first line it is on
    assert f"error: {users}: unknown item id(s) 'aa' (line 1), 'zz' (line 3): not in the " \
           "model's catalogue" in result.stderr
    assert "--batch-size must be >= 1" in run_in_process(
        "recommend", "--model", model_files["with_map"], "--history", "sku100",
        "--batch-size", 0).stderr


def test_cli_history_file_may_start_with_a_byte_order_mark(model_files, tmp_path):
    plain, marked = tmp_path / "plain.txt", tmp_path / "marked.txt"
    plain.write_text("sku100 sku101\nsku102\n", encoding="utf-8")
    marked.write_text("sku100 sku101\nsku102\n", encoding="utf-8-sig")  # as Notepad saves it
    assert marked.read_bytes().startswith(b"\xef\xbb\xbf")
    want = run_in_process("recommend", "--model", model_files["with_map"], "--history-file",
                          plain, "--k", 3)
    got = run_in_process("recommend", "--model", model_files["with_map"], "--history-file",
                         marked, "--k", 3)
    assert want.returncode == 0 and got.returncode == 0, got.stderr
    assert got.stdout == want.stdout and len(want.stdout.splitlines()) == 6


def test_cli_refuses_only_the_lists_that_hold_an_id_a_tsv_line_cannot_carry(models, tmp_path):
    """Items 1 and 2 have ids with a tab and a line break; item 3 scores highest, 1 and 2 next:
    a list of one item is printed, a longer one is refused (nothing printed)."""
    scores = [5.0, 4.0, 9.0] + [1.0] * 7
    raw = ("tab\there", "line\nbreak", *(f"i{n}" for n in range(3, 11)))
    model = tmp_path / "model.onnx"
    save_onnx(build_sasrec_onnx(constant_scorer(scores),
                                metadata={METADATA_KEY: ItemIds(raw).dumps()}), model)
    top = run_in_process("recommend", "--model", model, "--history", "i5", "--k", 1)
    assert top.returncode == 0 and top.stdout == "1\ti3\t9.000000\n", top.stderr
    message = error_line(run_in_process("recommend", "--model", model, "--history", "i5",
                                        "--k", 3))
    assert "'tab\\there', 'line\\nbreak' hold a tab or line break" in message


def test_cli_bad_input_is_one_error_line(model_files, tmp_path):
    model = model_files["with_map"]
    message = error_line(run_in_process("recommend", "--model", model, "--history", "sku100",
                                        "zz", "sku101", "yy"))
    assert "'zz', 'yy'" in message and "unknown item id" in message
    assert "no model file at" in error_line(run_in_process(
        "recommend", "--model", tmp_path / "none.onnx", "--history", "1"))
    assert "--history" in error_line(run_in_process("recommend", "--model", model))
    users = tmp_path / "users.txt"
    users.write_text("sku100 sku101\n\nsku101 zz\n")  # the unknown id on line 3
    message = error_line(run_in_process("recommend", "--model", model, "--history-file", users))
    assert message.startswith(f"error: {users}:3: unknown item id(s) 'zz'"), message
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert "holds no history" in error_line(run_in_process(
        "recommend", "--model", model, "--history-file", empty))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not onnx")
    assert "cannot load" in error_line(run_in_process(
        "recommend", "--model", garbage, "--history", "1"))


def test_cli_history_file_names_the_lines_of_a_batch_with_non_finite_scores(tmp_path):
    model = tmp_path / "broken.onnx"
    save_onnx(build_sasrec_onnx(constant_scorer([1.0, float("nan"), 2.0, 0.5])), model)
    users = tmp_path / "users.txt"
    users.write_text("3\n\n2 4\n1\n")  # lines 1, 3, 4; batches of 2: lines 1-3, then 4
    result = run_in_process("recommend", "--model", model, "--history-file", users,
                            "--batch-size", 2)
    assert result.returncode == 2 and result.stdout == ""
    assert f"error: {users}: lines 1-3 (histories[0] is line 1): the model's scores for " \
           "histories[0] are not finite" in result.stderr

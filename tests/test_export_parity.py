"""onnxruntime sessions, the scorer for qat.evaluate, ONNX file errors and the parity report."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from test_export_models import one_torch_thread  # noqa: F401  (autouse fixture)
from test_export_models import CONFIG, tiny_model

from data import SequenceDataset, leave_one_out
from export import (
    OnnxScorer,
    ParityThresholds,
    build_sasrec_onnx,
    check_parity,
    load_onnx,
    make_session,
    save_onnx,
)
from export.onnx_file import file_sha256
from export.parity import top_k_sets_agree
from qat import evaluate


@pytest.fixture(scope="module")
def split():
    """Random sequences over CONFIG's 40 items (the tiny models are untrained on them)."""
    rng = np.random.default_rng(0)
    sequences = {u: rng.integers(1, CONFIG.num_items + 1, size=int(rng.integers(4, 16))).tolist()
                 for u in range(1, 61)}
    return leave_one_out(SequenceDataset(sequences=sequences, num_users=60,
                                         num_items=CONFIG.num_items, source="random"))


def test_session_options_and_errors():
    proto = build_sasrec_onnx(tiny_model("ste"))
    session = make_session(proto, threads=1, optimization="extended")
    assert session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="optimization must be one of disable, basic"):
        make_session(proto, optimization="max")
    with pytest.raises(ValueError, match="threads must be >= 0"):
        make_session(proto, threads=-1)
    with pytest.raises(ValueError, match="onnxruntime cannot load"):
        make_session(b"not an onnx model")
    with pytest.raises(ValueError, match="no output 'logits'"):
        OnnxScorer(session, output="logits")


def test_load_onnx_round_trip_and_clear_errors(tmp_path):
    path = tmp_path / "model.onnx"
    save_onnx(build_sasrec_onnx(tiny_model("fp32")), path)
    assert load_onnx(path).graph.input[0].name == "item_seq"
    with pytest.raises(FileNotFoundError, match="no ONNX model at"):
        load_onnx(tmp_path / "missing.onnx")
    path.write_bytes(path.read_bytes()[:200])  # truncated
    with pytest.raises(ValueError, match="is not a readable ONNX model"):
        load_onnx(path)


def test_file_sha256_hashes_the_whole_file_in_blocks(tmp_path):
    """parity.json's onnx_sha256: the bytes' sha256 whatever the block size (several blocks,
    a partial last one); one flipped bit, same size, gives another digest."""
    path = tmp_path / "model.onnx"
    size = save_onnx(build_sasrec_onnx(tiny_model("fp32")), path)
    payload = path.read_bytes()
    expected = hashlib.sha256(payload).hexdigest()
    assert file_sha256(path) == file_sha256(path, block=1000) == expected
    assert size % 1000 and size > 2000  # several blocks, a partial last one
    path.write_bytes(payload[:-1] + bytes([payload[-1] ^ 1]))
    assert path.stat().st_size == size and file_sha256(path) != expected


@pytest.mark.parametrize("name", ["fp32", "dorefa"])
def test_onnx_scorer_gives_the_torch_metrics_through_qat_evaluate(name, split):
    model = tiny_model(name)
    scorer = OnnxScorer(make_session(build_sasrec_onnx(model), threads=1))
    with torch.no_grad():
        expected = evaluate(model.score_last, split, "test", max_len=CONFIG.max_len, batch_size=16)
    got = evaluate(scorer, split, "test", max_len=CONFIG.max_len, batch_size=16)
    assert got["users"] == expected["users"] == 60
    assert got["ndcg@10"] == pytest.approx(expected["ndcg@10"], abs=1e-12)
    assert got["hit@10"] == pytest.approx(expected["hit@10"], abs=1e-12)


def test_top_k_sets_agree_ignores_order_and_the_padding_column():
    a = torch.tensor([[9.0, 1, 2, 3, 4], [9.0, 1, 2, 3, 4]])
    b = torch.tensor([[0.0, 1, 2, 4, 3], [0.0, 4, 2, 3, 1]])
    same, overlap = top_k_sets_agree(a, b, k=2)
    assert same.tolist() == [True, False]  # {3, 4} == {4, 3}; {3, 4} vs {1, 3}
    assert overlap.tolist() == [1.0, 0.5]


@pytest.mark.parametrize("name", ["fp32", "lsq"])
def test_check_parity_of_a_faithful_export_passes(name, split):
    model = tiny_model(name)
    hidden = None
    if name != "fp32":
        hidden = make_session(build_sasrec_onnx(model, hidden_output=True), threads=1)
    report = check_parity(model, make_session(build_sasrec_onnx(model), threads=1), split,
                          batch_size=16, hidden_session=hidden)
    assert report.passed and report.failures == []
    assert report.users == 60
    assert report.ndcg["torch"] == report.ndcg["onnxruntime"]
    assert report.top10_agreement == report.top10_mean_overlap == 1.0
    assert report.max_abs_score_diff < 1e-4
    record = report.to_dict()
    assert set(record) >= {"ndcg@10", "hit@10", "top10_agreement", "max_abs_score_diff",
                           "passed", "thresholds"}
    assert (record["hidden_steps"] is None) == (name == "fp32")
    if name != "fp32":
        assert record["hidden_steps"]["max"] == 0


def test_check_parity_fails_on_another_model(split):
    """An export of a different model (here: the same weights, one bias changed) is caught."""
    model = tiny_model("fp32")
    other = type(model)(model.config)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.final_norm.bias += 0.5 * torch.randn_like(other.final_norm.bias)
    report = check_parity(model, make_session(build_sasrec_onnx(other.eval()), threads=1), split,
                          batch_size=16)
    assert not report.passed
    assert any("top-10 agreement" in f for f in report.failures)
    strict = check_parity(model, make_session(build_sasrec_onnx(model), threads=1), split,
                          batch_size=16, thresholds=ParityThresholds(min_top10_agreement=1.01))
    assert strict.failures == ["top-10 agreement 1.0000 < 1.01"]


def test_hidden_session_needs_an_int8_model(split):
    model = tiny_model("fp32")
    session = make_session(build_sasrec_onnx(model, hidden_output=True), threads=1)
    with pytest.raises(ValueError, match="INT8 models only"):
        check_parity(model, session, split, hidden_session=session)

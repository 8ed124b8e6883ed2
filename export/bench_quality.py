"""Test nDCG@10 / Hit@10 of every timed model: reused from parity.json only for the very files
it measured, else computed.

    scores = quality(candidates, runs, data, split)      # [export.bench_record.Quality]

A run's exported graph (and its torch model, parity.json's torch side) reuses the numbers
``scripts/export_int8.py`` recorded when parity.json (``ParityRecord``) was measured on the same
dataset, on the model file now in the folder (its sha256) and on the ONNX bytes timed (their
sha256; the size alone proves nothing, two graphs of one architecture have the same). The fused
and plain-op INT8 graphs are compared with the torch INT8 model (``check_parity``); everything
else is evaluated (``qat.evaluate``). Top-k serving graphs (``serving == "top_k"``) have no
entry: they output k items, not the full ranking the metrics need, and their lists equal their
full-score twin's (parity.json's ``top_k``, tests/test_export_top_k.py).
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from data import LeaveOneOutSplit
from export.bench_candidates import BenchRun, Candidate
from export.bench_record import Quality
from export.parity import check_parity
from export.parity_record import ParityRecord
from export.run_folder import PARITY, RunModel
from export.runtime import OnnxScorer, make_session
from qat.evaluate import evaluate
from qat.records import sha256_or_none

WHICH = "test"
EVAL_BATCH = 512
PARITY_CHECKED = ("onnx_int8_fast", "onnx_int8_fused")  # kinds compared with the torch model


def quality(candidates: Sequence[Candidate], runs: Sequence[BenchRun], data: str,
            split: LeaveOneOutSplit) -> list[Quality]:
    """Test nDCG@10/Hit@10 of every full-score candidate (parity.json when it matches, else
    computed)."""
    by_dir = {str(r.run.run_dir): r.run for r in runs}
    max_len = runs[0].run.model.config.max_len
    out = []
    for c in candidates:
        if c.serving != "scores":
            continue
        if c.kind in PARITY_CHECKED:
            assert c.onnx is not None
            report = check_parity(by_dir[c.run or ""].model, make_session(c.onnx), split, WHICH,
                                  batch_size=EVAL_BATCH)
            out.append(Quality(model=c.name, kind=c.kind, ndcg=report.ndcg["onnxruntime"],
                               hit=report.hit["onnxruntime"], users=report.users,
                               source="computed (onnxruntime), parity vs the torch INT8 model",
                               top10_agreement=report.top10_agreement,
                               ndcg_delta=report.ndcg_delta, parity_passed=report.passed))
            continue
        recorded = parity_quality(c, by_dir.get(c.run or ""), data)
        if recorded is not None:
            out.append(recorded)
            continue
        if c.onnx is not None:
            scorer, source = OnnxScorer(make_session(c.onnx)), "computed (onnxruntime)"
        else:
            assert c.torch_model is not None
            scorer, source = c.torch_model.score_last, "computed (torch)"
        metrics = evaluate(scorer, split, WHICH, max_len=max_len, batch_size=EVAL_BATCH)
        out.append(Quality(model=c.name, kind=c.kind, ndcg=metrics["ndcg@10"],
                           hit=metrics["hit@10"], users=metrics["users"], source=source))
    return out


def parity_quality(c: Candidate, run: RunModel | None, data: str) -> Quality | None:
    """The run's parity.json numbers if they were measured on this very ONNX file, model file
    and data; None otherwise.

    "This very file" is the record's sha256: for the run's ONNX candidate the sha256 of the
    bytes timed, for its torch eager model (parity.json's torch side) that of the run's ONNX
    file; and the model file the record exported must still be the run's (same sha256).
    """
    if run is None or c.kind not in ("onnx_fp32", "onnx_int8", "torch_eager"):
        return None
    path = run.run_dir / PARITY
    record = ParityRecord.load_or_none(path)
    if (record is None or record.split != WHICH or record.kind != run.kind
            or not _same_data(record.dataset, data)
            or sha256_or_none(run.model_path) != record.model_sha256
            or (c.kind != "torch_eager" and c.source != str(run.onnx_path))):
        return None
    actual = (sha256_or_none(run.onnx_path) if c.onnx is None
              else hashlib.sha256(c.onnx).hexdigest())  # the bytes timed, read once
    if record.graph.onnx_file != run.onnx_path.name or record.graph.onnx_sha256 != actual:
        return None
    which = "torch" if c.kind == "torch_eager" else "onnxruntime"
    return Quality(model=c.name, kind=c.kind, ndcg=float(record.graph.ndcg[which]),
                   hit=float(record.graph.hit[which]), users=record.graph.users,
                   source=f"{path} ({which})")


def _same_data(a: str, b: str) -> bool:
    """The same dataset name, or paths to the same file."""
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()

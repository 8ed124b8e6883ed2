"""Parity of an exported model with the torch model it came from.

    report = check_parity(int8_model, session, split, hidden_session=diagnostic_session)
    report.passed      # the gate: metrics within 0.002, top-10 agreement >= 0.99

Both sides are evaluated by the one metric implementation (``qat.evaluate``, full ranking,
pessimistic ties) on the same batches. One pass over the data scores every batch with torch and
onnxruntime; the onnxruntime scores are kept and replayed into a second ``evaluate`` call, so
each model runs once.

Definitions (per evaluated user, ``k = 10``):

* ``top10_agreement``: fraction of users whose top-10 item *sets* are identical (raw scores
  over the real items, padding excluded, history not masked). Sets, not ordered lists: the order
  of two near-equal scores inside the list can swap on float rounding without changing any
  metric; what ranks in or out of the top 10 is what a user sees.
* ``top10_mean_overlap``: mean of ``|top10_torch & top10_onnx| / 10``.
* ``max_abs_score_diff``: max over users and items of ``|s_torch - s_onnx|``.
* ``hidden_steps`` (INT8 with a diagnostic session): the final LayerNorm output compared in
  integer steps of its uint8 grid: max difference and fraction of differing elements.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import onnxruntime as ort
import torch

from data import LeaveOneOutSplit
from export.runtime import OnnxScorer
from export.sasrec_graph import HIDDEN, model_kind
from qat.evaluate import Scorer, evaluate
from qat.model import SASRec

K = 10


@dataclass(frozen=True)
class ParityThresholds:
    """The gate: an export passes when every condition holds."""

    max_ndcg_delta: float = 0.002  # |nDCG@10 torch - nDCG@10 onnxruntime|
    max_hit_delta: float = 0.002  # |Hit@10 torch - Hit@10 onnxruntime|
    min_top10_agreement: float = 0.99  # fraction of users with identical top-10 sets


@dataclass
class ParityReport:
    """What ``check_parity`` measured; ``to_dict`` gives the ``parity.json`` layout."""

    ndcg: dict[str, float]  # {"torch": .., "onnxruntime": ..}
    hit: dict[str, float]
    top10_agreement: float
    top10_mean_overlap: float
    max_abs_score_diff: float
    users: int
    seconds: dict[str, float]  # scoring time of each side
    hidden_steps: dict[str, float] | None = None
    thresholds: ParityThresholds = field(default_factory=ParityThresholds)

    @property
    def ndcg_delta(self) -> float:
        return abs(self.ndcg["torch"] - self.ndcg["onnxruntime"])

    @property
    def hit_delta(self) -> float:
        return abs(self.hit["torch"] - self.hit["onnxruntime"])

    @property
    def failures(self) -> list[str]:
        """Human-readable reasons the gate fails (empty when it passes)."""
        t = self.thresholds
        out = []
        if not self.ndcg_delta <= t.max_ndcg_delta:
            out.append(f"|delta nDCG@10| = {self.ndcg_delta:.4f} > {t.max_ndcg_delta}")
        if not self.hit_delta <= t.max_hit_delta:
            out.append(f"|delta Hit@10| = {self.hit_delta:.4f} > {t.max_hit_delta}")
        if not self.top10_agreement >= t.min_top10_agreement:
            out.append(f"top-10 agreement {self.top10_agreement:.4f} < {t.min_top10_agreement}")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "ndcg@10": self.ndcg, "hit@10": self.hit,
            "ndcg@10_delta": self.ndcg_delta, "hit@10_delta": self.hit_delta,
            "top10_agreement": self.top10_agreement,
            "top10_mean_overlap": self.top10_mean_overlap,
            "max_abs_score_diff": self.max_abs_score_diff,
            "hidden_steps": self.hidden_steps, "users": self.users, "seconds": self.seconds,
            "thresholds": asdict(self.thresholds), "passed": self.passed,
            "failures": self.failures,
        }


def top_k_sets_agree(a: torch.Tensor, b: torch.Tensor,
                     k: int = K) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (top-k sets identical, overlap fraction) of two (B, num_items + 1) score
    matrices, over the real items (column 0, the padding item, excluded)."""
    k = min(k, a.shape[1] - 1)
    top_a = a[:, 1:].topk(k, dim=1).indices
    top_b = b[:, 1:].topk(k, dim=1).indices
    overlap = (top_a.unsqueeze(2) == top_b.unsqueeze(1)).any(dim=2).sum(dim=1)
    return overlap == k, overlap.double() / k


class _PairedPass:
    """A scorer for ``evaluate`` that scores each batch with torch and onnxruntime.

    Returns the torch scores, accumulates the comparison, and keeps the onnxruntime scores so
    ``replay()`` can hand them to a second ``evaluate`` over the same batches.
    """

    def __init__(self, model: SASRec, onnx: OnnxScorer, hidden: OnnxScorer | None) -> None:
        self.model, self.onnx, self.hidden = model, onnx, hidden
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.same, self.overlap = [], []
        self.max_diff = 0.0
        self.hidden_max, self.hidden_differing, self.hidden_total = 0, 0, 0
        self.seconds = {"torch": 0.0, "onnxruntime": 0.0}

    @torch.no_grad()
    def __call__(self, item_seq: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        hidden = self.model.last_hidden(item_seq)
        ref = self.model.score(hidden)
        self.seconds["torch"] += time.perf_counter() - start
        start = time.perf_counter()
        got = self.onnx(item_seq)
        self.seconds["onnxruntime"] += time.perf_counter() - start
        if got.shape != ref.shape:
            raise ValueError(f"onnxruntime scores have shape {tuple(got.shape)}, torch "
                             f"{tuple(ref.shape)}: the ONNX file is not this model's")
        self.max_diff = max(self.max_diff, float((ref - got).abs().max()))
        same, overlap = top_k_sets_agree(ref, got)
        self.same.append(same)
        self.overlap.append(overlap)
        if self.hidden is not None:
            norm = self.model.final_norm
            ref_u8 = torch.round(hidden / norm.scale).long() + int(norm.zero_point)
            steps = (ref_u8 - self.hidden(item_seq).long()).abs()
            self.hidden_max = max(self.hidden_max, int(steps.max()))
            self.hidden_differing += int((steps > 0).sum())
            self.hidden_total += steps.numel()
        self.kept.append((item_seq, got))
        return ref

    def replay(self) -> Scorer:
        """A scorer returning the kept onnxruntime scores, batch by batch, in order."""
        kept = iter(self.kept)

        def scorer(item_seq: torch.Tensor) -> torch.Tensor:
            seen, scores = next(kept)
            assert torch.equal(seen, item_seq), "replay must see the batches in the same order"
            return scores
        return scorer


def check_parity(model: SASRec, session: ort.InferenceSession, split: LeaveOneOutSplit,
                 which: str = "test", *, batch_size: int = 256,
                 hidden_session: ort.InferenceSession | None = None,
                 thresholds: ParityThresholds = ParityThresholds(),
                 progress: str | None = None) -> ParityReport:
    """Compare ``model`` (torch, FP32 or INT8) with its ONNX export running in ``session``.

    Args:
        model: the torch model the ONNX file was written from (put in eval mode here).
        session: onnxruntime session of the exported file (output ``scores``).
        split: the data; every user of ``which`` is evaluated (full ranking).
        which: ``"test"`` or ``"valid"``.
        batch_size: users per batch.
        hidden_session: a session of the same export with ``hidden_output=True``; INT8 only,
            adds ``hidden_steps`` to the report.
        thresholds: the gate.
        progress: a progress bar over the batches on stderr, with this description.
    """
    model.eval()
    hidden = None
    if hidden_session is not None:
        if model_kind(model) != "int8":
            raise ValueError("hidden_session compares uint8 hidden states: INT8 models only")
        hidden = OnnxScorer(hidden_session, output=HIDDEN)
    paired = _PairedPass(model, OnnxScorer(session), hidden)
    max_len = model.config.max_len
    ref = evaluate(paired, split, which, max_len=max_len, batch_size=batch_size, k=K,
                   progress=progress is not None, desc=progress)
    got = evaluate(paired.replay(), split, which, max_len=max_len, batch_size=batch_size, k=K)
    same, overlap = torch.cat(paired.same), torch.cat(paired.overlap)
    hidden_steps = None
    if hidden is not None:
        hidden_steps = {"max": paired.hidden_max,
                        "fraction_differing": paired.hidden_differing / max(paired.hidden_total, 1),
                        "step": float(model.final_norm.scale)}
    return ParityReport(
        ndcg={"torch": ref[f"ndcg@{K}"], "onnxruntime": got[f"ndcg@{K}"]},
        hit={"torch": ref[f"hit@{K}"], "onnxruntime": got[f"hit@{K}"]},
        top10_agreement=float(same.double().mean()),
        top10_mean_overlap=float(overlap.mean()),
        max_abs_score_diff=paired.max_diff, users=ref["users"], seconds=paired.seconds,
        hidden_steps=hidden_steps, thresholds=thresholds)

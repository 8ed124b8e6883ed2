"""``metrics.json``: what a training run measured, and which model files it measured.

Written by ``qat.train.Trainer`` when a run ends (and again by ``scripts/train_qat.py`` after a
QAT run's INT8 conversion, with ``int8`` filled in); read by the pipeline to decide whether the
run is finished (``is_current``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qat.records import Record, sha256_or_none
from qat.run_files import CHECKPOINT, INT8_MODEL


@dataclass
class MetricsRecord(Record):
    """Metrics of a run's best model.

    Attributes:
        method: the ``--qconfig`` it was trained with.
        valid, test: ``{"ndcg@10", "hit@10", "users", "seconds"}`` of the best model (for QAT:
            the fake-quant model as it will be converted).
        best_epoch, epochs_run: the kept epoch and the last one trained.
        seconds_per_epoch: median training seconds per epoch (None if no epoch ran).
        train_seconds_to_best, train_seconds: training time up to the best epoch, in all.
        eval_seconds_all_users: valid + test evaluation time.
        peak_rss_mb: peak resident memory of the process (MiB).
        threads: torch intra-op threads.
        checkpoint_sha256: sha256 of the ``checkpoint.pt`` these numbers come from.
        int8: QAT only, ``{"valid": {...}, "test": {...}}`` of the converted INT8 model.
        int8_model_sha256: QAT only, sha256 of the ``model_int8.pt`` ``int8`` was measured on.
        sampled: with ``--eval-negatives N``, the paper's sampled protocol (target + N sampled
            unseen items): ``{"negatives", "seed", "valid": {...}, "test": {...}}`` of the best
            model (for QAT: the fake-quant model as it will be converted).
        device: where it trained (``cpu``, ``cuda:0``; None in files written before).
        processes: data-parallel processes it trained on (torchrun's world size).
    """

    KIND = "metrics"
    SCHEMA = 1

    method: str
    valid: dict[str, Any]
    test: dict[str, Any]
    best_epoch: int
    epochs_run: int
    seconds_per_epoch: float | None
    train_seconds_to_best: float
    train_seconds: float
    eval_seconds_all_users: float
    peak_rss_mb: float
    threads: int
    checkpoint_sha256: str
    int8: dict[str, dict[str, Any]] | None = None
    int8_model_sha256: str | None = None
    sampled: dict[str, Any] | None = None
    device: str | None = None
    processes: int = 1

    def is_current(self, run_dir: str | Path, *, quantized: bool) -> bool:
        """True when these metrics describe the model files now in ``run_dir``: the checkpoint
        (and, for a QAT run, ``model_int8.pt`` with its INT8 metrics) by sha256."""
        run_dir = Path(run_dir)
        if sha256_or_none(run_dir / CHECKPOINT) != self.checkpoint_sha256:
            return False
        if quantized:
            return (self.int8 is not None and self.int8_model_sha256 is not None
                    and sha256_or_none(run_dir / INT8_MODEL) == self.int8_model_sha256)
        return True

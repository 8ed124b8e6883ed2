"""The training loop: Adam, early stopping on validation nDCG@10, atomic checkpoints, resume.

One loop serves FP32 training and QAT fine-tuning: a QAT method passes its extra parameter groups
(quantizer parameters with their own learning rate) and a regulariser (PACT's L2 on alpha,
AdaRound's rounding term) through ``TrainHooks``.

Run folder layout (each file written atomically, so a crash never leaves a truncated file):

* ``checkpoint.pt`` -- ``model``: the best weights so far (what users load); ``state``: the last
  epoch's weights, optimizer, RNG states and early-stopping counters (what ``--resume`` needs).
* ``config.json`` -- model and training configuration.
* ``metrics.json`` -- validation and test nDCG@10/Hit@10 of the best model, timings, memory.
"""
from __future__ import annotations

import copy
import math
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from data import LeaveOneOutSplit, TrainBatcher
from qat.checkpoint import load_checkpoint, save_checkpoint, save_json
from qat.config import SASRecConfig, TrainConfig, to_dict
from qat.evaluate import evaluate
from qat.losses import sampled_bce, softmax_ce

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.json"
SELECTION_METRIC = "ndcg@10"


@dataclass
class TrainHooks:
    """What a QAT method adds to the plain loop.

    Attributes:
        param_groups: optimizer groups replacing the default single group (e.g. quantizer
            parameters with their own learning rate). Every trainable parameter must be in one.
        regularizer: ``f(progress) -> loss term`` added to the task loss; ``progress`` runs from 0
            at the first step to 1 at the last possible step (``epochs * batches``).
        extra_state: ``name -> (get, set)`` pairs for state outside ``model.state_dict()`` that a
            resume must restore.
        eval_model: ``f(model) -> model to evaluate``, e.g. a copy with observers frozen and
            soft rounding hardened, so validation sees what deployment will run.
    """

    param_groups: list[dict[str, Any]] | None = None
    regularizer: Callable[[float], torch.Tensor] | None = None
    eval_model: Callable[[nn.Module], nn.Module] | None = None
    extra_state: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = field(
        default_factory=dict)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the message says where and which checkpoint is kept."""


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Trainer:
    """Trains ``model`` on ``split`` and writes the run folder ``out_dir``.

    ``model`` must map (B, T) item ids to (B, T, d) hidden states and expose ``item_table()`` and
    ``score_last(item_seq)`` (``qat.model.SASRec`` and its QAT-prepared form do).
    """

    def __init__(self, model: nn.Module, split: LeaveOneOutSplit, model_config: SASRecConfig,
                 train_config: TrainConfig, out_dir: str | Path, *, method: str = "fp32",
                 hooks: TrainHooks | None = None, run_info: dict[str, Any] | None = None) -> None:
        self.model = model
        self.split = split
        self.model_config = model_config
        self.config = train_config
        self.out_dir = Path(out_dir)
        self.method = method
        self.hooks = hooks or TrainHooks()
        self.run_info = run_info or {}
        self.batcher = TrainBatcher(
            split, max_len=model_config.max_len, batch_size=train_config.batch_size,
            num_negatives=1 if train_config.loss == "bce" else 0, bucket=train_config.bucket)
        # Every target position weighs the same, whatever the batch: see
        # TrainBatcher.mean_targets_per_batch. Per-batch means under bucketing up-weight short
        # users several-fold.
        self._normalizer = self.batcher.mean_targets_per_batch
        groups = self.hooks.param_groups or [
            {"params": [p for p in model.parameters() if p.requires_grad]}]
        self.optimizer = torch.optim.Adam(groups, lr=train_config.lr, betas=(0.9, 0.98),
                                          weight_decay=train_config.weight_decay)
        self.rng = np.random.default_rng(train_config.seed)

    # -- public -----------------------------------------------------------------------------
    def fit(self, *, resume: bool = False) -> dict[str, Any]:
        """Train until early stopping or ``epochs``; return (and write) ``metrics.json``.

        Raises:
            FileExistsError: the folder already holds a run and ``resume`` is False.
            NonFiniteLossError: the loss became NaN/Inf (the last good checkpoint is kept).
        """
        path = self.out_dir / CHECKPOINT
        if path.exists() and not resume:
            raise FileExistsError(f"{path} exists: pass --resume to continue that run, or choose "
                                  "another --out")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_json(self._config_record(), self.out_dir / CONFIG)
        if self.config.threads:
            torch.set_num_threads(self.config.threads)

        run = self._fresh_run()
        if resume and path.exists():
            run = self._restore(load_checkpoint(path))
            if run["stopped_early"] or run["epoch"] >= self.config.epochs:
                return self._finish(run)  # nothing left to train: recompute the metrics only
        if run["best_model"] is None:  # the starting point is the first "best" model
            run["best_model"] = copy.deepcopy(self.model.state_dict())

        total_steps = self.config.epochs * len(self.batcher)
        for epoch in range(run["epoch"] + 1, self.config.epochs + 1):
            self.model.train()
            start = time.perf_counter()
            losses = []
            batches = tqdm(self.batcher.epoch(self.rng), total=len(self.batcher), leave=False,
                           desc=f"epoch {epoch}", disable=not self.config.progress)
            for step, batch in enumerate(batches):
                progress = ((epoch - 1) * len(self.batcher) + step) / max(total_steps - 1, 1)
                loss = self.step(batch, progress)
                if not math.isfinite(loss):
                    raise NonFiniteLossError(
                        f"loss is {loss} at epoch {epoch}, step {step + 1}/"
                        f"{len(self.batcher)} (method {self.method}); training stopped, the last "
                        f"good checkpoint is kept at {path}"
                        + (" (epoch %d)" % run["epoch"] if run["epoch"] else " (none written yet)"))
                losses.append(loss)
                batches.set_postfix(loss=f"{losses[-1]:.4f}")
            record: dict[str, Any] = {"epoch": epoch, "loss": statistics.fmean(losses),
                                      "train_seconds": time.perf_counter() - start}
            run["epoch"] = epoch
            if epoch % self.config.eval_every == 0 or epoch == self.config.epochs:
                valid = self.evaluate("valid")
                record["valid"] = valid
                if valid[SELECTION_METRIC] > run["best_valid"].get(SELECTION_METRIC, -1.0):
                    run.update(best_valid=valid, best_epoch=epoch, bad_evals=0,
                               best_model=copy.deepcopy(self.model.state_dict()))
                else:
                    run["bad_evals"] += 1
            run["history"].append(record)
            self._log(record, run)
            run["stopped_early"] = run["bad_evals"] >= self.config.patience
            run["finished"] = run["stopped_early"] or epoch == self.config.epochs
            self._save(run)
            if run["stopped_early"]:
                break
        return self._finish(run)

    def evaluate(self, which: str, **kwargs: Any) -> dict[str, float]:
        """Full-ranking metrics of the current model on ``"valid"`` or ``"test"``."""
        model = self.model if self.hooks.eval_model is None else self.hooks.eval_model(self.model)
        was_training = model.training
        model.eval()
        try:
            return evaluate(model.score_last, self.split, which, max_len=self.model_config.max_len,
                            batch_size=self.config.eval_batch_size, **kwargs)
        finally:
            model.train(was_training)

    def step(self, batch: Any, progress: float) -> float:
        """One optimiser step on ``batch``; returns its loss.

        ``progress`` in [0, 1] is how far training is (the regularizer's schedule). A NaN/Inf
        loss is returned without touching the weights.
        """
        loss = self._loss(batch, progress)
        if not torch.isfinite(loss):
            return loss.item()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    # -- internals --------------------------------------------------------------------------
    def _loss(self, batch: Any, progress: float) -> torch.Tensor:
        hidden = self.model(batch.inputs)
        table = self.model.item_table()
        if self.config.loss == "ce":
            loss = softmax_ce(hidden, batch.targets, table, self._normalizer)
        else:
            loss = sampled_bce(hidden, batch.targets, batch.negatives, table, self._normalizer)
        if self.hooks.regularizer is not None:
            loss = loss + self.hooks.regularizer(progress)
        return loss

    def _fresh_run(self) -> dict[str, Any]:
        return {"epoch": 0, "best_epoch": 0, "best_valid": {}, "bad_evals": 0, "history": [],
                "best_model": None, "finished": False, "stopped_early": False}

    def _config_record(self) -> dict[str, Any]:
        return {"method": self.method, "model": to_dict(self.model_config),
                "train": to_dict(self.config), **self.run_info}

    def _save(self, run: dict[str, Any]) -> None:
        save_checkpoint({
            "format": 1,
            "method": self.method,
            "model_config": to_dict(self.model_config),
            "train_config": to_dict(self.config),
            "run_info": self.run_info,
            "model": run["best_model"],
            "best_epoch": run["best_epoch"],
            "best_valid": run["best_valid"],
            "history": run["history"],
            "finished": run["finished"],
            "stopped_early": run["stopped_early"],
            "state": {
                "epoch": run["epoch"],
                "bad_evals": run["bad_evals"],
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "numpy_rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "extra": {name: get() for name, (get, _) in self.hooks.extra_state.items()},
            },
        }, self.out_dir / CHECKPOINT)

    def _restore(self, ckpt: dict[str, Any]) -> dict[str, Any]:
        saved = SASRecConfig(**ckpt["model_config"])
        if saved != self.model_config:
            raise ValueError(f"cannot resume: {self.out_dir / CHECKPOINT} holds a model {saved}, "
                             f"this run asks for {self.model_config}")
        if ckpt.get("method") != self.method:
            raise ValueError(f"cannot resume: {self.out_dir / CHECKPOINT} was trained with "
                             f"--qconfig {ckpt.get('method')}, not {self.method}")
        state = ckpt["state"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        for name, (_, set_state) in self.hooks.extra_state.items():
            set_state(state["extra"][name])
        return {"epoch": state["epoch"], "best_epoch": ckpt["best_epoch"],
                "best_valid": ckpt["best_valid"], "bad_evals": state["bad_evals"],
                "history": ckpt["history"], "best_model": ckpt["model"],
                "finished": ckpt["finished"],
                "stopped_early": ckpt.get("stopped_early", False)}

    def _finish(self, run: dict[str, Any]) -> dict[str, Any]:
        self.model.load_state_dict(run["best_model"])
        valid = self.evaluate("valid")
        test = self.evaluate("test")
        epoch_seconds = [r["train_seconds"] for r in run["history"]]
        to_best = [r["train_seconds"] for r in run["history"] if r["epoch"] <= run["best_epoch"]]
        metrics = {
            "method": self.method,
            "valid": valid,
            "test": test,
            "best_epoch": run["best_epoch"],
            "epochs_run": run["epoch"],
            "seconds_per_epoch": statistics.median(epoch_seconds) if epoch_seconds else None,
            "train_seconds_to_best": sum(to_best),
            "train_seconds": sum(epoch_seconds),
            "eval_seconds_all_users": valid["seconds"] + test["seconds"],
            "peak_rss_mb": peak_rss_mb(),
            "threads": torch.get_num_threads(),
        }
        save_json(metrics, self.out_dir / METRICS)
        return metrics

    def _log(self, record: dict[str, Any], run: dict[str, Any]) -> None:
        line = f"epoch {record['epoch']:4d}  loss {record['loss']:.4f}  " \
               f"{record['train_seconds']:.1f}s"
        if "valid" in record:
            v = record["valid"]
            line += f"  valid ndcg@10 {v['ndcg@10']:.4f} hit@10 {v['hit@10']:.4f}" \
                    f"  (best {run['best_valid'][SELECTION_METRIC]:.4f} @ {run['best_epoch']})"
        tqdm.write(line)

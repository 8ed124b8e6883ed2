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
import dataclasses
import inspect
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
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from data import ITEM_IDS, ItemIds, LeaveOneOutSplit, TrainBatcher, num_eval_users
from data.batching import TrainBatch
from qat.checkpoint import load_checkpoint, save_checkpoint, save_json
from qat.config import SASRecConfig, TrainConfig, to_dict
from qat.distributed import DistributedContext, shard_bounds
from qat.evaluate import compute_ranks, rank_metrics
from qat.losses import sampled_bce, sampled_softmax_ce, softmax_ce
from qat.metrics_record import MetricsRecord
from qat.negative_sampling import NegativeSampler
from qat.records import file_sha256
from qat.run_files import CHECKPOINT, CONFIG, METRICS

SELECTION_METRIC = "ndcg@10"


@dataclass
class TrainHooks:
    """What a QAT method adds to the plain loop.

    Attributes:
        param_groups: optimizer groups replacing the default single group (e.g. quantizer
            parameters with their own learning rate). Every trainable parameter must be in one.
        regularizer: ``f(progress) -> loss term`` added to the task loss; ``progress`` runs from 0
            at the first step to 1 at the last possible step (``epochs * batches``).
        progress_schedule: the regularizer depends on ``progress`` (AdaRound's annealing), so
            ``epochs`` is part of the schedule and a resume may not change it.
        extra_state: ``name -> (get, set)`` pairs for state outside ``model.state_dict()`` that a
            resume must restore.
        eval_model: ``f(model) -> model to evaluate``, e.g. a copy with observers frozen and
            soft rounding hardened, so validation sees what deployment will run.
    """

    param_groups: list[dict[str, Any]] | None = None
    regularizer: Callable[[float], torch.Tensor] | None = None
    progress_schedule: bool = False
    eval_model: Callable[[nn.Module], nn.Module] | None = None
    extra_state: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = field(
        default_factory=dict)


class NonFiniteError(FloatingPointError):
    """The loss or the weights became NaN/Inf; the message says where and what is kept."""


# TrainConfig fields a resumed run may change (they do not alter what has been trained so far);
# any other difference from the checkpoint is refused, since the restored optimizer and RNG
# states would silently ignore it.
RESUMABLE_CHANGES = frozenset({"epochs", "patience", "eval_every", "threads", "progress",
                               "eval_batch_size"})
# run_info entries that may differ on resume: where the data file lies (its fingerprint must
# match), the run a QAT model started from (used only at the start), and where it trains (the
# global batch is what the optimizer sees, whatever the device or number of processes).
RUN_INFO_MAY_CHANGE = frozenset({"data", "data_options", "init_from", "device", "processes"})
RUN_INFO_LABELS = {"data_fingerprint": "dataset fingerprint",
                   "init_from_sha256": "--init-from checkpoint sha256"}


def all_finite(tensors: Any) -> bool:
    """True when every floating-point tensor in ``tensors`` holds only finite values."""
    checks = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def epoch_torch_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed (dropout) of one process's epoch: independent streams per epoch and rank,
    and a resumed run (which restarts at an epoch boundary) draws what the uninterrupted run
    drew, on any device (CUDA's generator is not in ``torch.get_rng_state()``)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0])


FUSED_ADAM_DEVICES = ("cpu", "cuda")  # where torch.optim.Adam(fused=True) has a kernel


def make_adam(groups: list[dict[str, Any]], *, lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam (Kingma & Ba 2015; betas (0.9, 0.98) as the SASRec port) over ``groups``, fused
    where torch has the kernel: every parameter a floating tensor on the CPU or CUDA.

    The fused implementation updates all parameters of a group (and device) in one kernel,
    where the default runs about a dozen operators per parameter (a loop on the CPU) or per
    group (``foreach`` lists on CUDA). A quantized SASRec has ~60 small quantizer parameters
    beside the weights, and a QAT step on a GPU is bound by the host's per-operator cost
    (README, "Training on a GPU"), so this matters most there. The update is Adam's formula
    either way; the roundings differ from the loop's in the last bits. Checkpoints of either
    load (``load_optimizer_state``).
    """
    params = [p for group in groups for p in group["params"]]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in FUSED_ADAM_DEVICES
                                 for p in params)
    return torch.optim.Adam(groups, lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay,
                            fused=fused or None)


IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable", "differentiable")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, keeping ``optimizer``'s implementation.

    torch takes every group option from the saved state, the implementation flags included:
    a checkpoint of the per-parameter loop would silently turn the fused Adam back into the
    loop, and one written with ``fused=True`` would fail on a device without the kernel. The
    implementation is this machine's choice (``make_adam``), not part of the run's state. The
    saved groups get this optimizer's flags *before* torch reads them, because torch also
    decides from them where each ``step`` tensor goes: a fused or capturable group needs its
    steps as float32 on the parameter's device (a loop-Adam checkpoint written on a GPU keeps
    them on the CPU, which the fused CUDA kernel refuses).
    """
    saved = dict(state)
    saved["param_groups"] = [
        {**group, **{key: live[key] for key in IMPLEMENTATION_KEYS if key in live}}
        for group, live in zip(state["param_groups"], optimizer.param_groups)]
    optimizer.load_state_dict(saved)


class Trainer:
    """Trains ``model`` on ``split`` and writes the run folder ``out_dir``.

    ``model`` must map (B, T) item ids to (B, T, d) hidden states and expose ``item_table()`` and
    ``score_last(item_seq)`` (``qat.model.SASRec`` and its QAT-prepared form do).

    ``context`` says where: the device (the model is moved there) and, under torchrun, this
    process's rank. With several processes the model trains under ``DistributedDataParallel``:
    every process takes its rows of each global batch of ``train_config.batch_size`` users
    (``TrainBatcher.epoch``), each scales its loss so that the averaged gradient is the global
    batch's, validation is sharded by users and gathered (the same metrics as one process), and
    only rank 0 reads and writes the run folder (``DistributedContext.on_main``).
    """

    def __init__(self, model: nn.Module, split: LeaveOneOutSplit, model_config: SASRecConfig,
                 train_config: TrainConfig, out_dir: str | Path, *, method: str = "fp32",
                 hooks: TrainHooks | None = None, run_info: dict[str, Any] | None = None,
                 item_ids: ItemIds | None = None,
                 context: DistributedContext | None = None) -> None:
        self.ctx = context or DistributedContext(device=_device_of(model))
        self.model = model.to(self.ctx.device)
        self.split = split
        self.model_config = model_config
        self.config = train_config
        self.out_dir = Path(out_dir)
        self.method = method
        self.hooks = hooks or TrainHooks()
        self.item_ids = item_ids
        self.run_info = run_info or {}
        self.batcher = TrainBatcher(
            split, max_len=model_config.max_len, batch_size=train_config.batch_size,
            num_negatives=1 if train_config.loss == "bce" else 0, bucket=train_config.bucket)
        self.batcher.check_shardable(self.ctx.world_size)
        # Every target position weighs the same, whatever the batch: see
        # TrainBatcher.mean_targets_per_batch. Per-batch means under bucketing up-weight short
        # users several-fold. Under DDP each process's loss covers its shard and DDP averages the
        # gradients over the processes, so each divides by normalizer / world_size: the mean of
        # their gradients is then the gradient of the global batch's loss.
        self._normalizer = self.batcher.mean_targets_per_batch / self.ctx.world_size
        groups = self.hooks.param_groups or [
            {"params": [p for p in model.parameters() if p.requires_grad]}]
        self.optimizer = make_adam(groups, lr=train_config.lr,
                                   weight_decay=train_config.weight_decay)
        self.rng = np.random.default_rng(train_config.seed)
        # sampled-ce: N negatives per batch from the sampler's own torch.Generator, checkpointed
        # with the other RNG states (state "sampler_rng") so a resume draws the same negatives
        self.sampler: NegativeSampler | None = None
        if train_config.loss == "sampled-ce":
            self.sampler = NegativeSampler.from_sequences(
                split.train.values(), split.num_items, train_config.negatives,
                train_config.negative_sampling, seed=train_config.seed)
        # the module the training forward goes through (DDP all-reduces gradients in backward;
        # buffers are not broadcast: observers synchronise their own, see observers/sync.py)
        self.train_model: nn.Module = self.model
        if self.ctx.is_distributed:
            cuda = self.ctx.device.type == "cuda"
            # quantizer flags stay in host memory (observers.grid HOST_BUFFERS) and evolve alike
            # on every rank; nccl cannot broadcast host tensors, so DDP leaves them alone
            host = [name for name, buffer in self.model.named_buffers()
                    if buffer.device != self.ctx.device]
            if host:
                DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                    self.model, host)
            # buffers: synced from rank 0 when wrapped, not before every forward (torch 2.13
            # renamed broadcast_buffers=False to forward_sync_buffers=False)
            no_forward_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                               inspect.signature(DistributedDataParallel).parameters
                               else {"broadcast_buffers": False})
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.ctx.device] if cuda else None, **no_forward_sync)

    # -- public -----------------------------------------------------------------------------
    def fit(self, *, resume: bool = False) -> MetricsRecord:
        """Train until early stopping or ``epochs``; return (and write) ``metrics.json``.

        Nothing is written before every check has passed: a refused resume leaves the folder as
        it was. ``config.json`` then records the configuration this run actually uses.

        Raises:
            FileExistsError: the folder already holds a run and ``resume`` is False.
            ValueError: ``resume`` with a checkpoint of another model, method, dataset or
                training setting (see ``RESUMABLE_CHANGES``).
            NonFiniteError: the loss or, after a step, a weight became NaN/Inf. The step is
                undone (the model is reset to the last checkpointed state) and the checkpoint on
                disk is the last finite one.
        """
        path = self.out_dir / CHECKPOINT

        def read_checkpoint() -> dict[str, Any] | None:
            if path.exists() and not resume:
                raise FileExistsError(f"{path} exists: pass --resume to continue that run, or "
                                      "choose another --out")
            return load_checkpoint(path) if resume and path.exists() else None

        def start_folder() -> None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_json(self._config_record(), self.out_dir / CONFIG)
            if self.item_ids is not None:  # the run folder speaks the raw ids of its data
                self.item_ids.save(self.out_dir / ITEM_IDS)

        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ValueError(f"--out {self.out_dir} is a file; give a folder for the run")
        # rank 0 reads (other nodes need not see the folder) and sends it to every rank
        ckpt = self.ctx.on_main(read_checkpoint)
        if resume and ckpt is None and self.ctx.is_main:  # e.g. killed before the first epoch
            tqdm.write(f"--resume: no checkpoint in {self.out_dir} yet; starting the run")
        if ckpt is not None:
            self._check_resumable(ckpt)
        self.ctx.on_main(start_folder)
        if self.config.threads:
            torch.set_num_threads(self.config.threads)

        run = self._fresh_run() if ckpt is None else self._restore(ckpt)
        if ckpt is not None:
            self._decide_stop_on_resume(run)
        if ckpt is not None and (run["stopped_early"] or run["epoch"] >= self.config.epochs):
            return self._finish(run)  # nothing left to train: recompute the metrics only
        if run["best_model"] is None:  # the starting point is the first "best" model
            run["best_model"] = copy.deepcopy(self.model.state_dict())
        last_good = self._snapshot()

        total_steps = self.config.epochs * len(self.batcher)
        for epoch in range(run["epoch"] + 1, self.config.epochs + 1):
            self.model.train()
            torch.manual_seed(epoch_torch_seed(self.config.seed, epoch, self.ctx.rank))
            start = time.perf_counter()
            losses = []
            epoch_batches = self.batcher.epoch(self.rng, rank=self.ctx.rank,
                                               world_size=self.ctx.world_size)
            batches = tqdm(epoch_batches, total=len(self.batcher), leave=False,
                           desc=f"epoch {epoch}",
                           disable=not (self.config.progress and self.ctx.is_main))
            for step, batch in enumerate(batches):
                progress = ((epoch - 1) * len(self.batcher) + step) / max(total_steps - 1, 1)
                loss = self.step(batch, progress)
                what = (f"loss is {loss}" if not math.isfinite(loss) else
                        None if all_finite(self.model.parameters()) else
                        f"a weight became non-finite (loss {loss:.4g})")
                if what is not None:
                    batches.close()
                    self._load_snapshot(last_good)
                    kept = (f"epoch {run['epoch']}" if path.exists() and run["epoch"]
                            else "none written yet")
                    raise NonFiniteError(
                        f"{what} at epoch {epoch}, step {step + 1}/{len(self.batcher)} (method "
                        f"{self.method}, lr {self.config.lr:g}); training stopped, the last good "
                        f"checkpoint is kept at {path} ({kept}); lower --lr and start a new "
                        "--out, or --resume to retry from the checkpoint")
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
            self.ctx.on_main(lambda: self._save(run))
            last_good = self._snapshot()
            if run["stopped_early"]:
                break
        return self._finish(run)

    def evaluate(self, which: str, *, k: int = 10, sampled_negatives: int = 0,
                 seed: int = 0) -> dict[str, float]:
        """Full-ranking (or ``sampled_negatives``) metrics of the current model on ``"valid"``
        or ``"test"``, on the training device. With several processes each ranks its share of
        the users and the ranks are gathered: every process returns the one-process metrics.
        """
        model = self.model if self.hooks.eval_model is None else self.hooks.eval_model(self.model)
        was_training = model.training
        model.eval()
        device = self.ctx.device
        start = time.perf_counter()
        shard = None
        if self.ctx.is_distributed:
            shard = range(*shard_bounds(num_eval_users(self.split, which), self.ctx.rank,
                                        self.ctx.world_size))
        try:
            ranks = compute_ranks(lambda inputs: model.score_last(inputs.to(device)), self.split,
                                  which, max_len=self.model_config.max_len,
                                  batch_size=self.config.eval_batch_size,
                                  sampled_negatives=sampled_negatives, seed=seed, users=shard)
        finally:
            model.train(was_training)
        if shard is not None:
            ranks = torch.cat(self.ctx.all_gather_objects(ranks))
        return rank_metrics(ranks, k, time.perf_counter() - start)

    def step(self, batch: TrainBatch, progress: float) -> float:
        """One optimiser step on ``batch`` (this process's shard of it); returns the loss of
        the global batch (the mean over processes).

        ``progress`` in [0, 1] is how far training is (the regularizer's schedule). A NaN/Inf
        loss (on any process) is returned without touching the weights.
        """
        loss = self._loss(self._to_device(batch), progress)
        value = self.ctx.mean(loss.item())  # every rank decides alike
        if not math.isfinite(value):
            return value
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return value

    # -- internals --------------------------------------------------------------------------
    def _to_device(self, batch: TrainBatch) -> TrainBatch:
        device = self.ctx.device
        if device.type == "cpu":
            return batch
        return dataclasses.replace(batch, **{
            name: None if value is None else value.to(device, non_blocking=True)
            for name, value in vars(batch).items()})

    def _loss(self, batch: TrainBatch, progress: float) -> torch.Tensor:
        hidden = self.train_model(batch.inputs)
        table = self.model.item_table()
        if self.config.loss == "ce":
            loss = softmax_ce(hidden, batch.targets, table, self._normalizer)
        elif self.config.loss == "sampled-ce":
            negatives = self.sampler.sample().to(table.device)
            log_q = None if self.sampler.log_q is None else self.sampler.log_q.to(table.device)
            loss = sampled_softmax_ce(hidden, batch.targets, table, negatives, log_q,
                                      self._normalizer)
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
                "sampler_rng": None if self.sampler is None else self.sampler.get_state(),
                "extra": {name: get() for name, (get, _) in self.hooks.extra_state.items()},
            },
        }, self.out_dir / CHECKPOINT)

    def _snapshot(self) -> dict[str, Any]:
        """The model's and optimizer's state now, to undo a step that made a weight non-finite."""
        return copy.deepcopy({"model": self.model.state_dict(),
                              "optimizer": self.optimizer.state_dict()})

    def _load_snapshot(self, snapshot: dict[str, Any]) -> None:
        self.model.load_state_dict(snapshot["model"])
        load_optimizer_state(self.optimizer, snapshot["optimizer"])

    def _check_resumable(self, ckpt: dict[str, Any]) -> None:
        """Refuse (``ValueError``) a resume whose settings differ from the checkpoint's."""
        where = self.out_dir / CHECKPOINT
        try:
            saved = SASRecConfig(**ckpt["model_config"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"cannot resume: {where} holds an unusable model_config ({err})") \
                from err
        if saved != self.model_config:
            raise ValueError(f"cannot resume: {where} holds a model {saved}, this run asks for "
                             f"{self.model_config}; give the architecture flags it was trained "
                             "with (the same command plus --resume), or choose another --out")
        if ckpt.get("method") != self.method:
            raise ValueError(f"cannot resume: {where} was trained with --qconfig "
                             f"{ckpt.get('method')}, not {self.method}")
        differences = []
        saved_train = ckpt.get("train_config") or {}
        for name, value in to_dict(self.config).items():
            if name not in RESUMABLE_CHANGES and name in saved_train \
                    and saved_train[name] != value:
                differences.append(f"{name} {saved_train[name]!r} (asked: {value!r})")
        saved_info = ckpt.get("run_info") or {}
        for name, value in self.run_info.items():
            if name not in RUN_INFO_MAY_CHANGE and name in saved_info \
                    and saved_info[name] != value:
                label = RUN_INFO_LABELS.get(name, name)
                differences.append(f"{label} {saved_info[name]!r} (asked: {value!r})")
        if differences:
            raise ValueError(f"cannot resume: {where} was trained with " + ", ".join(differences)
                             + "; a resumed run keeps its settings (only "
                             + ", ".join(sorted(RESUMABLE_CHANGES)) + " may change): give "
                             "the flags it was trained with (the same command plus --resume), "
                             "or start a new --out")
        if not isinstance(ckpt.get("state"), dict):
            raise ValueError(f"cannot resume: {where} has no training state")
        saved_epochs = saved_train.get("epochs")
        if self.hooks.progress_schedule and saved_epochs not in (None, self.config.epochs):
            raise ValueError(f"cannot resume: {where} was trained with --epochs {saved_epochs}, "
                             f"and --qconfig {self.method} anneals its rounding regulariser over "
                             "the run's epochs x steps, so a resume cannot change --epochs: give "
                             f"--epochs {saved_epochs}")
        trained = ckpt["state"].get("epoch")
        if isinstance(trained, int) and trained > self.config.epochs:
            raise ValueError(f"cannot resume: {where} has trained {trained} epochs, more than "
                             f"--epochs {self.config.epochs}: give --epochs {trained} or more "
                             "(the same command plus --resume)")

    def _restore(self, ckpt: dict[str, Any]) -> dict[str, Any]:
        state = ckpt["state"]
        self.model.load_state_dict(state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.rng.bit_generator.state = state["numpy_rng"]
        if self.sampler is not None:
            self.sampler.set_state(state["sampler_rng"])
        for name, (_, set_state) in self.hooks.extra_state.items():
            set_state(state["extra"][name])
        return {"epoch": state["epoch"], "best_epoch": ckpt["best_epoch"],
                "best_valid": ckpt["best_valid"], "bad_evals": state["bad_evals"],
                "history": ckpt["history"], "best_model": ckpt["model"],
                "finished": ckpt["finished"],
                "stopped_early": ckpt.get("stopped_early", False)}

    def _decide_stop_on_resume(self, run: dict[str, Any]) -> None:
        """Whether a resumed run has stopped early, decided under this run's ``patience`` (a
        resume may change it): a run that stopped after N evaluations without improvement
        continues when ``patience`` is now above N, as an uninterrupted run with that patience
        would have (the checkpoint holds the state after its last epoch); one that is now past
        a lower patience stops."""
        stopped = run["bad_evals"] >= self.config.patience
        if run["stopped_early"] and not stopped and run["epoch"] < self.config.epochs \
                and self.ctx.is_main:
            tqdm.write(f"continuing a run that stopped early at epoch {run['epoch']} "
                       f"({run['bad_evals']} evaluation{'s' * (run['bad_evals'] != 1)} "
                       "without a better valid "
                       f"{SELECTION_METRIC}): --patience is now {self.config.patience}")
        run["stopped_early"] = stopped

    def _finish(self, run: dict[str, Any]) -> MetricsRecord:
        self.model.load_state_dict(run["best_model"])
        valid = self.evaluate("valid")
        test = self.evaluate("test")
        epoch_seconds = [r["train_seconds"] for r in run["history"]]
        to_best = [r["train_seconds"] for r in run["history"] if r["epoch"] <= run["best_epoch"]]
        metrics = MetricsRecord(
            method=self.method,
            valid=valid,
            test=test,
            best_epoch=run["best_epoch"],
            epochs_run=run["epoch"],
            seconds_per_epoch=statistics.median(epoch_seconds) if epoch_seconds else None,
            train_seconds_to_best=sum(to_best),
            train_seconds=sum(epoch_seconds),
            eval_seconds_all_users=valid["seconds"] + test["seconds"],
            peak_rss_mb=peak_rss_mb(),
            threads=torch.get_num_threads(),
            checkpoint_sha256="",
            device=str(self.ctx.device),
            processes=self.ctx.world_size,
        )

        def write() -> str:
            metrics.checkpoint_sha256 = file_sha256(self.out_dir / CHECKPOINT)
            metrics.save(self.out_dir / METRICS)
            return metrics.checkpoint_sha256
        metrics.checkpoint_sha256 = self.ctx.on_main(write)
        return metrics

    def _log(self, record: dict[str, Any], run: dict[str, Any]) -> None:
        if not self.ctx.is_main:
            return
        line = f"epoch {record['epoch']:4d}  loss {record['loss']:.4f}  " \
               f"{record['train_seconds']:.1f}s"
        if "valid" in record:
            v = record["valid"]
            line += f"  valid ndcg@10 {v['ndcg@10']:.4f} hit@10 {v['hit@10']:.4f}" \
                    f"  (best {run['best_valid'][SELECTION_METRIC]:.4f} @ {run['best_epoch']})"
        tqdm.write(line)


def _device_of(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))

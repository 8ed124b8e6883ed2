"""One training run, as ``scripts/train_qat.py`` runs it: FP32 from scratch, or QAT fine-tuning
of an FP32 run followed by conversion to INT8.

    metrics = train_run(TrainRunOptions(data="ml-1m", out=Path("runs/fp32")))
    metrics = train_run(TrainRunOptions(data="ml-1m", out=Path("runs/lsq"), qconfig="lsq",
                                        init_from=Path("runs/fp32")))

Every check (method and bits, the --init-from run and its dataset fingerprint, the architecture,
the training settings) runs before anything is written; ``Trainer.fit`` adds the resume checks.
A QAT run ends by folding, converting and saving ``model_int8.pt`` and its INT8 metrics in
``metrics.json``.
"""
from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data import ItemIds, LeaveOneOutSplit, leave_one_out, load_dataset
from data.batching import check_eval_negatives
from data.errors import quote_some
from data.item_ids import tsv_unsafe
from qat.config import SASRecConfig, TrainConfig
from qat.distributed import DistributedContext, setup_distributed
from qat.evaluate import evaluate
from qat.finetune import (calibration_inputs, load_float_model, prepare_for_method, qat_hooks,
                          save_int8_model)
from qat.metrics_record import MetricsRecord
from qat.model import SASRec
from qat.records import file_sha256
from qat.registry import QuantMethod, get_method
from qat.run_files import CHECKPOINT, INT8_MODEL, METRICS
from qat.run_lock import run_folder_lock
from qat.train import Trainer

ARCHITECTURE_DEFAULTS = {"max_len": 200, "hidden": 50, "blocks": 2, "heads": 1, "dropout": 0.2}
EVAL_SEED = 0  # negatives of --eval-negatives (export_int8.py --eval-seed defaults to the same)
# (from scratch, QAT fine-tuning from an FP32 run)
SCHEDULE_DEFAULTS = {"epochs": (200, 30), "patience": (20, 5), "lr": (1e-3, 1e-4)}
DEFAULT_BATCH_SIZE = 128  # users per optimizer step (the global batch under torchrun)


@dataclass(frozen=True)
class TrainRunOptions:
    """What ``scripts/train_qat.py`` was asked for (its flags; None: the default, which may
    depend on ``init_from``: see ``ARCHITECTURE_DEFAULTS`` and ``SCHEDULE_DEFAULTS``).

    Validation happens in ``train_run`` (it needs the method registry and the data), with a
    ``ValueError`` that names the flag.
    """

    data: str
    out: Path
    qconfig: str = "fp32"
    bits: int | None = None
    init_from: Path | None = None
    cache_dir: Path | None = None
    mirror: str | None = None
    resume: bool = False
    epochs: int | None = None
    patience: int | None = None
    eval_every: int = 1
    max_len: int | None = None
    hidden: int | None = None
    blocks: int | None = None
    heads: int | None = None
    dropout: float | None = None
    batch_size: int | None = None  # None: 128 (DEFAULT_BATCH_SIZE)
    lr: float | None = None
    quant_lr: float | None = None
    loss: str = "ce"
    negatives: int | None = None  # --loss sampled-ce only; None: TrainConfig's default (3000)
    negative_sampling: str | None = None  # --loss sampled-ce only; None: "uniform"
    seed: int = 42
    columns: str | None = None  # own logs: user,item,timestamp columns (data.load_dataset)
    min_user_interactions: int = 1
    eval_negatives: int = 0  # also report the sampled-N metrics (Kang & McAuley's protocol)
    threads: int = 0
    bucket: bool = False
    progress: bool = True
    device: str = "auto"  # training device: auto (CUDA when available), cpu, cuda, cuda:N
    batch_size_per_rank: int | None = None  # torchrun: users per process per step (overrides
    # batch_size: the global batch is then this times the number of processes)


def resolve_architecture(options: TrainRunOptions, num_items: int,
                         init_config: SASRecConfig | None) -> SASRecConfig:
    """Flags given explicitly win; otherwise the --init-from run's value, else the default.

    Raises ValueError when an explicit flag contradicts the --init-from run.
    """
    values: dict[str, Any] = {}
    for name, default in ARCHITECTURE_DEFAULTS.items():
        given = getattr(options, name)
        if init_config is not None:
            expected = getattr(init_config, name)
            if given is not None and given != expected and name != "dropout":
                raise ValueError(f"--init-from {options.init_from} has {name}={expected}, but "
                                 f"--{name.replace('_', '-')} {given} was given; drop the flag "
                                 "or pick a run of that architecture")
            values[name] = expected if given is None else given
        else:
            values[name] = default if given is None else given
    if init_config is not None and init_config.num_items != num_items:
        raise ValueError(f"--init-from {options.init_from} was trained on {init_config.num_items} "
                         f"items, --data has {num_items}: use the same dataset")
    return SASRecConfig(num_items=num_items, **values)


def data_options(columns: str | None, min_user_interactions: int | None) -> dict[str, Any]:
    """The ``data.load_dataset`` options that say how ``--data`` is read (``--columns``,
    ``--min-user-interactions``, None: its default 1), as the run's config.json records them
    (``data_options``); run_all's settings build theirs here too."""
    return {"columns": columns,
            "min_user_interactions": 1 if min_user_interactions is None
            else min_user_interactions}


def data_option_flags(recorded: dict[str, Any]) -> str:
    """``recorded`` data options as the command-line flags that give them, both named (a
    default too), so the message says which to change.

    >>> data_option_flags({"columns": None, "min_user_interactions": 1})
    'no --columns and --min-user-interactions 1'
    """
    columns = recorded.get("columns")
    return (f"--columns {columns}" if columns is not None else "no --columns") + \
        (" and" if columns is None else "") + \
        f" --min-user-interactions {recorded.get('min_user_interactions', 1)}"


def check_same_dataset(init_from: Path, init_info: dict[str, Any], fingerprint: str,
                       options: dict[str, Any] | None = None) -> None:
    """Refuse to fine-tune a model on another dataset than the one it was trained on.

    Compares dataset fingerprints (``SequenceDataset.fingerprint``): a copy of the data with
    permuted item ids has the same item count but another fingerprint. Runs written before
    fingerprints were recorded are checked by item count only (``resolve_architecture``).
    """
    recorded = init_info.get("data_fingerprint")
    if recorded is not None and recorded != fingerprint:
        read = init_info.get("data_options")
        how = ("" if read is None or options is None or read == options else
               f"; it read the file with {data_option_flags(read)}: give the same")
        raise ValueError(f"--init-from {init_from} was trained on {init_info.get('data')} "
                         f"(dataset fingerprint {recorded[:12]}), but --data has fingerprint "
                         f"{fingerprint[:12]}: the same item ids must mean the same items; use "
                         f"that run's dataset{how}")


def global_batch_size(options: TrainRunOptions, world_size: int) -> int:
    """The users per optimizer step: ``--batch-size``, or ``--batch-size-per-rank`` times the
    number of processes. Raises ValueError for a non-positive size."""
    if options.batch_size_per_rank is None:
        batch_size = DEFAULT_BATCH_SIZE if options.batch_size is None else options.batch_size
        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
        return batch_size
    if options.batch_size_per_rank < 1:
        raise ValueError(f"--batch-size-per-rank must be >= 1, got {options.batch_size_per_rank}")
    if options.batch_size is not None:
        raise ValueError(f"--batch-size {options.batch_size} and --batch-size-per-rank "
                         f"{options.batch_size_per_rank} both set the batch: give one (the "
                         "global batch, or the users per process)")
    return options.batch_size_per_rank * world_size


def train_run(options: TrainRunOptions, context: DistributedContext | None = None
              ) -> MetricsRecord:
    """Train (and for a QAT method convert) one run into ``options.out``; returns its metrics.

    ``context``: the device and process group (default: ``setup_distributed(options.device)``,
    which joins torchrun's group when launched by torchrun and leaves it at the end). Every
    process calls this; rank 0 writes the folder, converts the QAT model and evaluates it in
    INT8 (on the CPU, where INT8 is deployed).

    Raises:
        ValueError, OSError, data.DownloadError: bad options, data or run folders (nothing
            written); qat.train.NonFiniteError: training diverged.
    """
    own_context = context is None
    context = setup_distributed(options.device) if context is None else context
    try:
        return _train_run(options, context)
    finally:
        if own_context:
            context.shutdown()


def _train_run(options: TrainRunOptions, ctx: DistributedContext) -> MetricsRecord:
    method = get_method(options.qconfig)
    if not method.is_quantized and options.bits is not None:
        raise ValueError(f"--bits applies to QAT methods; --qconfig {method.name} keeps 32-bit "
                         "float weights: drop --bits")
    if not method.is_quantized and options.quant_lr is not None:
        raise ValueError(f"--quant-lr applies to QAT methods; --qconfig {method.name} has no "
                         "quantizer parameters: drop --quant-lr")
    bits = 8 if options.bits is None else options.bits
    if method.is_quantized:
        method.mapping(bits)  # validates --bits for this method
    init_model, init_config, init_info, init_sha256 = None, None, {}, None
    if options.init_from is not None:  # read on rank 0, sent to every process
        def read_init() -> tuple[SASRec, dict[str, Any], str]:
            model, ckpt = load_float_model(options.init_from)
            return model, ckpt, file_sha256(Path(options.init_from) / CHECKPOINT)
        init_model, init_ckpt, init_sha256 = ctx.on_main(read_init)
        init_config, init_info = init_model.config, init_ckpt.get("run_info") or {}
        if ctx.is_main and not init_ckpt.get("finished", True):
            print(f"note: --init-from {options.init_from} has not finished training (epoch "
                  f"{(init_ckpt.get('state') or {}).get('epoch', '?')}); fine-tuning starts from "
                  f"its best model so far (epoch {init_ckpt.get('best_epoch')})",
                  file=sys.stderr)
    finetune = method.is_quantized and init_model is not None
    schedule = {k: getattr(options, k) if getattr(options, k) is not None else v[int(finetune)]
                for k, v in SCHEDULE_DEFAULTS.items()}
    sampling = {k: getattr(options, k) for k in ("negatives", "negative_sampling")
                if getattr(options, k) is not None}
    if sampling and options.loss != "sampled-ce":
        flags = " and ".join("--" + k.replace("_", "-") for k in sampling)
        raise ValueError(f"{flags} applies to --loss sampled-ce, not --loss {options.loss}: drop "
                         "it or add --loss sampled-ce")
    batch_size = global_batch_size(options, ctx.world_size)
    train_config = TrainConfig(
        epochs=schedule["epochs"], batch_size=batch_size, lr=schedule["lr"],
        loss=options.loss, patience=schedule["patience"], eval_every=options.eval_every,
        seed=options.seed, threads=options.threads, bucket=options.bucket,
        progress=options.progress, **sampling)
    if options.threads:
        torch.set_num_threads(options.threads)
    if options.quant_lr is not None and not (math.isfinite(options.quant_lr)
                                             and options.quant_lr > 0):
        raise ValueError(f"--quant-lr must be a positive finite learning rate, got "
                         f"{options.quant_lr}")
    if options.eval_negatives < 0:
        raise ValueError(f"--eval-negatives must be >= 0 (0: off), got {options.eval_negatives}")

    read_options = data_options(options.columns, options.min_user_interactions)

    def load() -> Any:
        return load_dataset(options.data, cache_dir=options.cache_dir, mirror=options.mirror,
                            **read_options)

    def cache() -> None:
        load()
    if ctx.is_distributed:  # rank 0 downloads and caches first; the others then read the cache
        ctx.on_main(cache)
    dataset = load()
    fingerprint = dataset.fingerprint()
    fingerprints = ctx.all_gather_objects(fingerprint)
    if len(set(fingerprints)) > 1:
        raise ValueError("the processes read different data (dataset fingerprints by rank: "
                         + ", ".join(f[:12] for f in fingerprints) + "): give every node the "
                         "same --data file")
    if init_model is not None:
        check_same_dataset(options.init_from, init_info, fingerprint, read_options)
    split = leave_one_out(dataset)
    if options.eval_negatives:
        check_eval_negatives(options.eval_negatives, dataset.num_items)
    if not split.valid:
        longest = max((len(items) for items in dataset.sequences.values()), default=0)
        raise ValueError(f"{options.data}: no user has the 3 interactions the leave-one-out "
                         f"split needs (train, validate, test; the longest of "
                         f"{dataset.num_users} users has {longest}): nothing to validate or "
                         "test on")
    model_config = resolve_architecture(options, dataset.num_items, init_config)

    torch.manual_seed(options.seed)
    model = SASRec(model_config)
    if init_model is not None:
        model.load_state_dict(init_model.state_dict())
    model.to(ctx.device)
    hooks = None
    quant_lr = options.quant_lr if options.quant_lr is not None else method.quant_lr
    if method.is_quantized:
        # the same batch on every process (DDP also broadcasts rank 0's state)
        calibration = calibration_inputs(split, model_config.max_len, batch_size, options.seed)
        model = prepare_for_method(model, method, bits, calibration.to(ctx.device))
        hooks = qat_hooks(model, method, lr=train_config.lr, quant_lr=quant_lr)
    if ctx.is_main:
        where = f"{ctx.device}" + (f", {ctx.world_size} processes (global batch {batch_size})"
                                   if ctx.is_distributed else "")
        print(f"{dataset.source}: {dataset.num_users} users, {dataset.num_items} items; "
              f"method {method.name}" + (f" ({bits}-bit weights)" if method.is_quantized else "")
              + (f", from {options.init_from}" if init_model is not None else "")
              + f"; {where}; {torch.get_num_threads()} thread(s)", file=sys.stderr)
        unprintable = tsv_unsafe(dataset.item_ids.raw) if dataset.item_ids is not None else []
        if unprintable:
            print(f"note: item id(s) {quote_some(unprintable, 3)} hold a tab or line break: "
                  "scripts/recommend.py cannot print them in its tab-separated lines and "
                  "refuses a list that holds one (export.recommend.recommend returns them as "
                  "they are)", file=sys.stderr)
    run_info = {"data": str(dataset.source), "data_fingerprint": fingerprint,
                # how the file was read: later steps (export, benchmark) read it the same way
                "data_options": read_options,
                "bits": bits if method.is_quantized else 32,
                "init_from": str(options.init_from) if options.init_from else None,
                # the FP32 checkpoint it started from: run_all tells a stale QAT run by it
                "init_from_sha256": init_sha256,
                "quant_lr": quant_lr if method.is_quantized else None,
                "device": str(ctx.device), "processes": ctx.world_size}
    item_ids = dataset.item_ids or ItemIds.identity(dataset.num_items)
    trainer = Trainer(model, split, model_config, train_config, options.out, method=method.name,
                      hooks=hooks, run_info=run_info, item_ids=item_ids, context=ctx)
    # rank 0 writes the folder: it holds the folder's lock until the run is written (a busy
    # folder fails rank 0 and stops every rank: on_main)
    with contextlib.ExitStack() as lock:
        ctx.on_main(lambda: lock.enter_context(run_folder_lock(options.out)))
        return _fit_and_convert(options, ctx, trainer, method, bits, split, model_config,
                                train_config)


def _fit_and_convert(options: TrainRunOptions, ctx: DistributedContext, trainer: Trainer,
                     method: QuantMethod, bits: int, split: LeaveOneOutSplit,
                     model_config: SASRecConfig,
                     train_config: TrainConfig) -> MetricsRecord:
    """Train, then (QAT) convert on rank 0 and evaluate the INT8 model on the CPU."""
    metrics = trainer.fit(resume=options.resume)
    if options.eval_negatives:
        metrics.sampled = {"negatives": options.eval_negatives, "seed": EVAL_SEED, **{
            which: trainer.evaluate(which, sampled_negatives=options.eval_negatives,
                                    seed=EVAL_SEED) for which in ("valid", "test")}}
        ctx.on_main(lambda: metrics.save(options.out / METRICS))
    if method.is_quantized:
        def convert_and_measure() -> MetricsRecord:
            # on the CPU, where the INT8 model is deployed (quantized kernels are CPU kernels)
            int8 = save_int8_model(trainer.model, method, bits, options.out)
            metrics.int8 = {
                which: evaluate(int8.score_last, split, which, max_len=model_config.max_len,
                                batch_size=train_config.eval_batch_size)
                for which in ("valid", "test")}
            metrics.int8_model_sha256 = file_sha256(options.out / INT8_MODEL)
            metrics.save(options.out / METRICS)
            return metrics
        metrics = ctx.on_main(convert_and_measure)
    return metrics

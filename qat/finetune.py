"""QAT fine-tuning set-up and the INT8 artifacts of a run.

    model = load_float_model(fp32_run_dir)                   # or a fresh SASRec
    qat_model = prepare_for_method(model, method, bits, calibration_inputs)
    hooks = qat_hooks(qat_model, method, quant_lr=1e-5)
    Trainer(qat_model, ..., hooks=hooks).fit()
    save_int8_model(qat_model, method, bits, run_dir)     # fold + convert + save
    int8 = load_int8_model(run_dir)

Validation during QAT runs on a copy of the fake-quant model with its activation observers
frozen and AdaRound's soft rounding hardened (``deployment_view``): the numbers it reports are
those of the model ``convert`` will produce.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.ao.quantization import FakeQuantizeBase

from data import LeaveOneOutSplit, TrainBatcher
from qat.checkpoint import load_checkpoint, save_checkpoint
from qat.config import SASRecConfig, to_dict
from qat.model import SASRec
from qat.quantize import calibrate, convert_model, prepare_qat_model
from qat.registry import QuantMethod, get_method
from qat.run_files import CHECKPOINT, INT8_MODEL
from qat.train import TrainHooks


def load_float_model(run_dir: str | Path) -> tuple[SASRec, dict[str, Any]]:
    """The best FP32 model of a ``train_qat.py --qconfig fp32`` run folder, and its checkpoint.

    Raises:
        FileNotFoundError / ValueError: no readable checkpoint, or it is not an FP32 run.
    """
    ckpt = load_checkpoint(Path(run_dir) / CHECKPOINT)
    if ckpt.get("method") != "fp32":
        raise ValueError(f"{run_dir} is a {ckpt.get('method')} run; --init-from needs an fp32 run")
    model = SASRec(SASRecConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def prepare_for_method(model: SASRec, method: QuantMethod, bits: int,
                       calibration_inputs: torch.Tensor) -> SASRec:
    """A QAT copy of ``model`` with every quantizer initialised from one calibration batch."""
    qat_model = prepare_qat_model(model, method.mapping(bits))
    calibrate(qat_model, calibration_inputs)
    return qat_model


def calibration_inputs(split: LeaveOneOutSplit, max_len: int, batch_size: int,
                       seed: int) -> torch.Tensor:
    """The inputs of the first global training batch of an epoch drawn with ``seed``: the
    calibration batch of ``prepare_for_method``, the same on every DDP process."""
    batcher = TrainBatcher(split, max_len=max_len, batch_size=batch_size)
    return next(iter(batcher.epoch(np.random.default_rng(seed)))).inputs


def qat_hooks(model: nn.Module, method: QuantMethod, *, lr: float, quant_lr: float) -> TrainHooks:
    """Optimizer groups, regulariser and validation view for QAT with ``method``.

    Quantizer parameters (LSQ steps, PACT/APoT clips, AdaRound V) get their own learning rate
    ``quant_lr`` and no weight decay: Adam at 1e-3 on LSQ steps wrecked Hit@10 in a probe
    (docs/design.md, section 3). For AdaRound the float weights of quantized layers are frozen.
    """
    quantizer_params = {id(p) for m in model.modules() if isinstance(m, FakeQuantizeBase)
                        for p in m.parameters()}
    if method.freeze_float_weights:
        for module in model.modules():
            if hasattr(module, "weight_fake_quant"):
                module.weight.requires_grad_(False)
    quant = [p for p in model.parameters() if id(p) in quantizer_params and p.requires_grad]
    float_ = [p for p in model.parameters() if id(p) not in quantizer_params and p.requires_grad]
    groups = [{"params": float_, "lr": lr}]
    if quant:
        groups.append({"params": quant, "lr": quant_lr, "weight_decay": 0.0})
    method_regularizer = method.regularizer

    def regularizer(progress: float) -> torch.Tensor:
        return method_regularizer(model, progress)
    return TrainHooks(param_groups=groups,
                      regularizer=None if method_regularizer is None else regularizer,
                      progress_schedule=method.regularizer_follows_progress,
                      eval_model=deployment_view)


def freeze_activation_observers(model: nn.Module) -> None:
    """Stop every activation quantizer's statistics (ranges stay as trained).

    Weight quantizers keep theirs: for STE/DoReFa the weight scale is a function of the current
    weight, which ``convert`` recomputes the same way.
    """
    for name, module in model.named_modules():
        if isinstance(module, FakeQuantizeBase) and not name.endswith("weight_fake_quant"):
            module.disable_observer()


def deployment_view(model: nn.Module) -> nn.Module:
    """A copy of a QAT model that computes what its converted INT8 model computes."""
    view = copy.deepcopy(model).eval()
    freeze_activation_observers(view)
    for module in view.modules():
        if hasattr(module, "harden"):
            module.harden()
    return view


def to_int8(qat_model: nn.Module) -> SASRec:
    """Fold and convert a copy of ``qat_model`` (see ``qat.quantize.convert_model``), on the CPU
    whatever device ``qat_model`` trained on: torch's quantized kernels are CPU kernels."""
    view = deployment_view(qat_model).cpu()
    return convert_model(view, inplace=True)


def save_int8_model(qat_model: nn.Module, method: QuantMethod, bits: int,
                    run_dir: str | Path) -> SASRec:
    """Convert ``qat_model`` and write ``run_dir/model_int8.pt``; returns the INT8 model.

    The file holds the QAT state (from which conversion is deterministic) and the converted
    state dict, so ``load_int8_model`` rebuilds the structure and checks both agree.
    """
    int8 = to_int8(qat_model)
    save_checkpoint({
        "method": method.name,
        "bits": bits,
        "model_config": to_dict(qat_model.config),
        "qat_state": {k: v.cpu() for k, v in qat_model.state_dict().items()},
        "int8_state": int8.state_dict(),
    }, Path(run_dir) / INT8_MODEL)
    return int8


def load_int8_model(run_dir: str | Path) -> tuple[SASRec, dict[str, Any]]:
    """The converted INT8 model saved in ``run_dir`` and the file's metadata."""
    path = Path(run_dir) / INT8_MODEL
    if not path.is_file():
        raise FileNotFoundError(f"no INT8 model at {path}: train with --qconfig METHOD first")
    saved = load_checkpoint(path)  # raises ValueError naming the file if damaged
    try:
        method = get_method(saved["method"])
        config = SASRecConfig(**saved["model_config"])
        qat_model = prepare_qat_model(SASRec(config), method.mapping(saved["bits"]))
        qat_model.load_state_dict(saved["qat_state"])
        int8 = to_int8(qat_model)
        int8.load_state_dict(saved["int8_state"])
    except Exception as err:  # missing keys, unknown method, shape mismatch
        raise ValueError(f"{path} is not a readable INT8 model ({type(err).__name__}: {err})") \
            from err
    return int8, saved

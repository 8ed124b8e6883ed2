"""Eager ``torch.ao.quantization`` flow for SASRec: prepare for QAT, fold, convert to INT8.

    model = SASRec(config)                       # FP32, possibly loaded from a checkpoint
    qat_model = prepare_qat_model(model, mapping)  # fuse Linear+ReLU, attach fake-quants
    ... train qat_model ...
    int8_model = convert_model(qat_model)          # fold learned rounding, then convert

What is quantized (see docs/design.md, section 3, for why):

* every ``nn.Linear`` (Q/K/V/O projections, FFN) -> ``nnq.Linear`` with per-row int8 weights and
  8-bit activations; FFN ``fc1``+ReLU are fused, so its output quantizer sees post-ReLU values;
* LayerNorms and the residual ``FloatFunctional`` adds -> ``nnq.LayerNorm``/``quantized::add``;
* item and position embeddings -> weight-only ``nnq.Embedding``; they are fake-quantized during
  QAT too (torch's ``prepare_qat`` would otherwise train them in float although ``convert``
  quantizes them);
* the attention core (scores, causal mask, softmax) and dropout stay float (qconfig ``None``);
* scoring uses the dequantized final hidden state and the dequantized item table, so scores
  keep full precision (no 8-bit requantization of the ranking scores).

``convert`` ignores the fake-quant forward and re-quantizes the raw weight with round-to-nearest
from ``calculate_qparams()``; ``convert_model`` therefore folds every fake-quantized weight into
the float weight first (``observers.grid.fold_weights_``) and disables observers, so the INT8
weights are exactly the trained fake-quantized ones. Activation fake-quants round as
``torch.quantize_per_tensor`` does, so the QuantStubs (``nnq.Quantize``) are bit-exact; the
requantizing ``nnq.Linear``/``LayerNorm``/add round ``rint(t) + z`` from integer arithmetic and
can differ by one step on near-ties, and at exact ties when ``z`` is odd (``observers.grid``).
"""
from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn
from torch.ao.nn import intrinsic as nni
from torch.ao.nn import qat as nnqat
from torch.ao.nn import quantized as nnq
from torch.ao.quantization import (
    QConfig,
    QConfigMapping,
    convert,
    disable_observer,
    fuse_modules_qat,
    prepare_qat,
    propagate_qconfig_,
)
from torch.ao.quantization.quantization_mappings import (
    get_default_qat_module_mappings,
    get_default_static_quant_module_mappings,
)
from torch.ao.quantization.observer import NoopObserver

from observers.grid import fold_weights_
from qat.model import AttentionCore, SASRec

# Unquantized regions: float in QAT and after convert.
FLOAT_MODULE_TYPES = (AttentionCore, nn.Dropout)


# torch 2.13's warnings about its own quantization internals, as (message regex, category):
# the eager flow (deprecated, kept by the exact torch pin) on every prepare_qat/convert, the
# quantized tensors of every converted model, and torch.load of those models. setup.cfg's
# [tool:pytest] filterwarnings lists the same entries for the tests (tests/test_warning_filters.py).
TORCH_QUANTIZATION_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r"torch\.ao\.quantization is deprecated", DeprecationWarning),
    (r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor "
     r"creation functions", UserWarning),
    (r"TypedStorage is deprecated", UserWarning),
)


def ignore_torch_quantization_warnings() -> None:
    """Silence :data:`TORCH_QUANTIZATION_WARNINGS` (scripts call this once; every
    converted-model operation would repeat them). The only place library code filters
    warnings."""
    for message, category in TORCH_QUANTIZATION_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def qat_module_mappings() -> dict[type, type]:
    """torch's QAT module swaps plus ``nn.Embedding -> nnqat.Embedding``.

    torch 2.13's default QAT mapping leaves embeddings float during training while ``convert``
    quantizes them; swapping them here makes training see exactly what deployment stores.
    """
    return {**get_default_qat_module_mappings(), nn.Embedding: nnqat.Embedding}


def convert_module_mappings() -> dict[type, type]:
    """torch's convert swaps plus ``nnqat.Embedding -> nnq.Embedding`` (missing in 2.13)."""
    return {**get_default_static_quant_module_mappings(), nnqat.Embedding: nnq.Embedding}


def build_qconfig_mapping(*, weight: Any, activation: Any, embedding_weight: Any,
                          relu_activation: Any | None = None) -> QConfigMapping:
    """The QConfigMapping every method shares; methods differ only in the classes passed in.

    Args:
        weight: fake-quant factory (``Cls.with_args(...)``) for Linear weights.
        activation: fake-quant factory for activations (Linear/LayerNorm/add outputs, stubs).
        embedding_weight: fake-quant factory for embedding tables (float-qparams qscheme).
        relu_activation: factory for the fused Linear+ReLU output (unsigned values), e.g. PACT's
            one-sided clipping; ``activation`` when None.
    """
    linear = QConfig(activation=activation, weight=weight)
    mapping = (QConfigMapping()
               .set_global(linear)
               .set_object_type(nn.Embedding, QConfig(
                   activation=NoopObserver.with_args(dtype=torch.float32),
                   weight=embedding_weight))
               .set_object_type(nni.LinearReLU, QConfig(
                   activation=relu_activation or activation, weight=weight)))
    for module_type in FLOAT_MODULE_TYPES:
        mapping.set_object_type(module_type, None)
    return mapping


def fuse_for_qat(model: SASRec) -> SASRec:
    """Fuse each FFN's fc1 + ReLU in place (quantized output is taken after the ReLU)."""
    for block in model.blocks:
        if isinstance(block.ffn.fc1, nn.Linear) and isinstance(block.ffn.relu, nn.ReLU):
            fuse_modules_qat(block.ffn, [["fc1", "relu"]], inplace=True)
    return model


def prepare_qat_model(model: SASRec, mapping: QConfigMapping, *, inplace: bool = False) -> SASRec:
    """Fuse, assign qconfigs from ``mapping`` and swap in QAT modules (eager flow).

    The model is put in train mode (``prepare_qat`` requires it). Quantizers whose state depends
    on data initialise on their first forward: run a batch through the model before building
    the optimizer (``calibrate``). A model on a GPU is prepared on the CPU and moved back (torch's
    ``prepare`` refuses a module on two devices, and the quantizers keep their flags in host
    memory: ``observers.grid`` HOST_BUFFERS).
    """
    if not inplace:
        model = copy.deepcopy(model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.cpu()
    model.train()
    fuse_for_qat(model)
    qconfig_dict: dict[Any, Any] = dict(mapping.object_type_qconfigs)
    qconfig_dict.update(mapping.module_name_qconfigs)
    model.qconfig = mapping.global_qconfig
    propagate_qconfig_(model, qconfig_dict)
    prepare_qat(model, mapping=qat_module_mappings(), inplace=True)
    return model.to(device)


@torch.no_grad()
def calibrate(model: nn.Module, inputs: torch.Tensor) -> None:
    """One forward pass in train mode so every quantizer initialises from real data."""
    was_training = model.training
    model.train()
    model(inputs)
    model.train(was_training)


def set_observers(model: nn.Module, *, enabled: bool) -> None:
    """Enable or freeze every quantizer's observer (learned parameters keep learning)."""
    model.apply(torch.ao.quantization.enable_observer if enabled else disable_observer)


def convert_model(qat_model: SASRec, *, inplace: bool = False) -> SASRec:
    """Fold fake-quantized weights into the float weights, freeze observers, ``convert``.

    Returns the INT8 model in eval mode: ``nnq.Linear``/``nnq.LayerNorm``/``nnq.Embedding``
    modules holding integer weights and the trained qparams.
    """
    model = qat_model if inplace else copy.deepcopy(qat_model)
    model.eval()
    fold_weights_(model)
    set_observers(model, enabled=False)
    convert(model, mapping=convert_module_mappings(), inplace=True)
    return model


def quantized_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """``name -> quantized weight tensor`` of every INT8 module (for checks and export)."""
    out = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if callable(weight) and not isinstance(weight, nn.Parameter):
            w = weight()
            if isinstance(w, torch.Tensor) and w.is_quantized:
                out[name] = w
    return out

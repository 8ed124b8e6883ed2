"""The six QAT methods as registry entries: which fake-quant classes go where.

Every method quantizes the same places (``qat.quantize.build_qconfig_mapping``); they differ in
the quantizer classes from ``observers/`` and in what the training loop adds:

* ``ste``: weights per-row absmax with straight-through rounding; activations moving-average
  min/max.
* ``lsq``: learnable step sizes (LSQ) for weights; learnable step and zero point (LSQ+) for
  activations.
* ``pact``: STE weights; learnable clip alpha for activations, symmetric for signed tensors and
  one-sided after the fused ReLU; the loop adds L2 on alpha.
* ``adaround``: learnable rounding V of frozen float weights; STE activations; the loop adds the
  rounding regulariser with beta annealed 20 -> 2.
* ``apot``: additive powers-of-two weight levels with a learnable clip; LSQ activations.
* ``dorefa``: tanh-normalised weights on the symmetric grid; activation range calibrated on the
  first batches, then fixed.

Weight bits: ``--bits`` (8 by default: int8 storage with the saturation-safe integer range
[-64, 64], see ``observers/grid.py``); activations are always 8-bit (uint8 [0, 255]).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.ao.quantization import FakeQuantizeBase, QConfigMapping

from observers.adaround import (
    AdaRoundFakeQuantize,
    beta_schedule,
    regularization_weight,
)
from observers.apot import APOT_BITS, ApotWeightFakeQuantize
from observers.dorefa import DorefaActivationFakeQuantize, DorefaWeightFakeQuantize
from observers.grid import WEIGHT_BITS
from observers.lsq import LsqActivationFakeQuantize, LsqWeightFakeQuantize
from observers.pact import PactActivationFakeQuantize
from observers.ste import SteActivationFakeQuantize, SteWeightFakeQuantize
from qat.quantize import build_qconfig_mapping
from qat.registry import QuantMethod, register_method


def _mapping(weight_cls: type, activation: Any, *, bits: int,
             relu_activation: Any | None = None, **weight_kwargs: Any) -> QConfigMapping:
    return build_qconfig_mapping(
        weight=weight_cls.with_args(bits=bits, **weight_kwargs),
        embedding_weight=weight_cls.with_args(bits=bits, embedding=True, **weight_kwargs),
        activation=activation,
        relu_activation=relu_activation)


def quantizers(model: nn.Module, cls: type) -> list[FakeQuantizeBase]:
    """Every fake-quant module of class ``cls`` in ``model``."""
    return [m for m in model.modules() if isinstance(m, cls)]


# -- regularisers: f(model, progress in [0, 1]) -> loss term --------------------------------
def pact_regularizer(model: nn.Module, progress: float) -> torch.Tensor:
    """PACT's L2 decay on every clip level alpha (Choi et al. 2018, sec. 2)."""
    terms = [fq.regularization() for fq in quantizers(model, PactActivationFakeQuantize)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


ADAROUND_STEPS = 10_000  # resolution of the progress -> step mapping of the beta schedule


def adaround_regularizer(model: nn.Module, progress: float) -> torch.Tensor:
    """lambda(t) * sum_layers sum(1 - |2 h(V) - 1|^beta(t)) (Nagel et al. 2020, eq. 24).

    ``beta`` anneals from 20 to 2 after a warm-up of 20% of the run during which the term is
    off, as in the paper; ``lambda = 0.01`` (AIMET/BRECQ default), divided by the number of
    rounding variables so the term is on the scale of the per-example task loss.
    """
    step = round(progress * ADAROUND_STEPS)
    lam = regularization_weight(step, ADAROUND_STEPS)
    if lam == 0.0:
        return torch.zeros(())
    beta = beta_schedule(step, ADAROUND_STEPS)
    fqs = quantizers(model, AdaRoundFakeQuantize)
    total = sum(fq.v.numel() for fq in fqs)
    return lam * torch.stack([fq.regularization(beta) for fq in fqs]).sum() / total


register_method(QuantMethod(
    "ste", "STE: observer-driven min/max scales, straight-through rounding (Jacob et al. 2018)",
    lambda bits: _mapping(SteWeightFakeQuantize, SteActivationFakeQuantize.with_args(), bits=bits),
    WEIGHT_BITS))
register_method(QuantMethod(
    "lsq", "LSQ: learned step sizes (Esser et al. 2019), LSQ+ offsets for activations",
    lambda bits: _mapping(LsqWeightFakeQuantize, LsqActivationFakeQuantize.with_args(), bits=bits),
    WEIGHT_BITS))
register_method(QuantMethod(
    "pact", "PACT: learned activation clipping alpha (Choi et al. 2018), STE weights",
    lambda bits: _mapping(
        SteWeightFakeQuantize, PactActivationFakeQuantize.with_args(signed=True), bits=bits,
        relu_activation=PactActivationFakeQuantize.with_args(signed=False)),
    WEIGHT_BITS, regularizer=pact_regularizer, quant_lr=1e-3))
register_method(QuantMethod(
    "adaround", "AdaRound: learned up/down rounding of frozen weights (Nagel et al. 2020)",
    lambda bits: _mapping(AdaRoundFakeQuantize, SteActivationFakeQuantize.with_args(), bits=bits),
    WEIGHT_BITS, regularizer=adaround_regularizer, freeze_float_weights=True, quant_lr=1e-3))
register_method(QuantMethod(
    "apot", "APoT: additive powers-of-two weight levels (Li et al. 2020), LSQ activations",
    lambda bits: _mapping(ApotWeightFakeQuantize, LsqActivationFakeQuantize.with_args(),
                          bits=bits),
    APOT_BITS, quant_lr=1e-4))
register_method(QuantMethod(
    "dorefa", "DoReFa: tanh-normalised weights (Zhou et al. 2016), calibrated activation range",
    lambda bits: _mapping(DorefaWeightFakeQuantize, DorefaActivationFakeQuantize.with_args(),
                          bits=bits),
    WEIGHT_BITS))

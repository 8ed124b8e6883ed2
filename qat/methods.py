"""The QAT methods as registry entries, built from ``observers.METHOD_FAKE_QUANTS``.

Which fake-quant classes quantize a method's weights and activations is written once, in
``observers.METHOD_FAKE_QUANTS``; every method quantizes the same places
(``qat.quantize.build_qconfig_mapping``). This file adds only what training knows
(:data:`TRAINING`):

* ``pact``: the activation clip is symmetric for signed tensors and one-sided after the fused
  ReLU; the loop adds L2 on alpha.
* ``adaround``: the float weights are frozen (only the rounding V learns); the loop adds the
  rounding regulariser with beta annealed 20 -> 2.
* ``dorefa``: the activation range is calibrated on the first batches, then fixed (in the class).
* learning rates of the quantizer parameters (``quant_lr``), and the ``--help`` lines.

Weight bits: those the weight class supports (``supported_bits``; 8 by default: int8 storage
with the saturation-safe integer range [-64, 64], see ``observers/grid.py``); activations are
always 8-bit (uint8 [0, 255]).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.ao.quantization import FakeQuantizeBase

from observers import (
    METHOD_FAKE_QUANTS,
    AdaRoundFakeQuantize,
    PactActivationFakeQuantize,
    beta_schedule,
    regularization_weight,
)
from observers.adaround import adaround_regularization
from observers.pact import pact_regularization
from qat.registry import FakeQuants, QuantMethod, register_method


def quantizers(model: nn.Module, cls: type) -> list[FakeQuantizeBase]:
    """Every fake-quant module of class ``cls`` in ``model``."""
    return [m for m in model.modules() if isinstance(m, cls)]


# -- regularisers: f(model, progress in [0, 1]) -> loss term --------------------------------
def pact_regularizer(model: nn.Module, progress: float) -> torch.Tensor:
    """PACT's L2 decay on every clip level alpha (Choi et al. 2018, sec. 2)."""
    # Equal to summing every module's ``regularization()``, in one term per lambda: the same
    # few kernels whatever the number of quantizers (a GPU step is bound by kernel launches).
    alphas: dict[float, list[torch.Tensor]] = {}
    for fq in quantizers(model, PactActivationFakeQuantize):
        alphas.setdefault(fq.alpha_l2, []).append(fq.alpha)
    terms = [pact_regularization(torch.cat(group), weight) for weight, group in alphas.items()]
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
    if not fqs:
        return torch.zeros(())
    # Every module's ``regularization(beta)`` summed, computed on all V at once (one set of
    # kernels instead of one per layer).
    v = torch.cat([fq.v.reshape(-1) for fq in fqs])
    return lam * adaround_regularization(v, beta) / v.numel()


# What training adds to each pairing of observers.METHOD_FAKE_QUANTS: QuantMethod keywords
# (description, activation_kwargs, relu_activation_kwargs, regularizer, freeze_float_weights,
# quant_lr). A pairing without an entry trains with QuantMethod's defaults.
TRAINING: dict[str, dict[str, Any]] = {
    "ste": dict(
        description="STE: observer-driven min/max scales, straight-through rounding "
                    "(Jacob et al. 2018)"),
    "lsq": dict(
        description="LSQ: learned step sizes (Esser et al. 2019), LSQ+ offsets for activations"),
    "pact": dict(
        description="PACT: learned activation clipping alpha (Choi et al. 2018)",
        activation_kwargs={"signed": True}, relu_activation_kwargs={"signed": False},
        regularizer=pact_regularizer, quant_lr=1e-3),
    "adaround": dict(
        description="AdaRound: learned up/down rounding of frozen weights (Nagel et al. 2020)",
        regularizer=adaround_regularizer, regularizer_follows_progress=True,
        freeze_float_weights=True, quant_lr=1e-3),
    "apot": dict(
        description="APoT: additive powers-of-two weight levels (Li et al. 2020)",
        quant_lr=1e-4),
    "dorefa": dict(
        description="DoReFa: tanh-normalised weights (Zhou et al. 2016), calibrated activation "
                    "range"),
}


def build_methods(fake_quants: Mapping[str, FakeQuants],
                  training: Mapping[str, Mapping[str, Any]]) -> list[QuantMethod]:
    """One ``QuantMethod`` per ``fake_quants`` entry (in its order), with ``training[name]``.

    The ``--help`` line ends with the classes, so it cannot disagree with them. Training
    settings for a name without a pairing raise ``ValueError``.
    """
    orphans = [name for name in training if name not in fake_quants]
    if orphans:
        raise ValueError(f"training settings for {', '.join(orphans)} but no fake-quant pairing: "
                         "add it to observers.METHOD_FAKE_QUANTS")
    methods = []
    for name, (weight_cls, activation_cls) in fake_quants.items():
        settings = dict(training.get(name, {}))
        description = settings.pop("description", name)
        description += f" [{weight_cls.__name__} + {activation_cls.__name__}]"
        methods.append(QuantMethod(name, description, fake_quants=(weight_cls, activation_cls),
                                   **settings))
    return methods


for _method in build_methods(METHOD_FAKE_QUANTS, TRAINING):
    register_method(_method)

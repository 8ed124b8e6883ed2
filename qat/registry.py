"""Registry of quantization methods: ``--qconfig NAME`` -> how to quantize a SASRec model.

``METHODS`` is filled by :func:`register_method`; scripts take their choices from it. Which
fake-quant classes a method uses is not written here: the pairing lives only in
``observers.METHOD_FAKE_QUANTS`` and ``qat/methods.py`` builds one ``QuantMethod`` per entry,
adding what only training knows. A new method is one entry there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.ao.quantization import QConfigMapping

from observers import METHOD_FAKE_QUANTS, ActivationFakeQuantize, WeightFakeQuantize
from qat.quantize import build_qconfig_mapping

FakeQuants = tuple[type[WeightFakeQuantize], type[ActivationFakeQuantize]]


@dataclass(frozen=True)
class QuantMethod:
    """A named way to train (and later convert) a model.

    Attributes:
        name: the ``--qconfig`` value.
        description: one line for ``--help``.
        fake_quants: ``(weight class, activation class)``, exactly
            ``observers.METHOD_FAKE_QUANTS[name]``; None for a float model.
        activation_kwargs: keywords for the activation class (``with_args``).
        relu_activation_kwargs: keywords for the activation class at the fused Linear+ReLU
            output (PACT's one-sided clip); None: the same quantizer as every other activation.
        regularizer: ``f(model, progress) -> loss term`` added during QAT (progress in [0, 1]).
        regularizer_follows_progress: the regularizer changes with ``progress`` (AdaRound's
            annealed beta), so the run's length (epochs x steps) is part of its schedule and a
            resume cannot change ``--epochs``; False for a constant term (PACT's L2 on alpha).
        freeze_float_weights: train the quantizers, not the float weights of quantized layers
            (AdaRound learns only how to round the weights it was given).
        quant_lr: default learning rate of the quantizer parameters (their own Adam group).
    """

    name: str
    description: str
    fake_quants: FakeQuants | None = None
    activation_kwargs: Mapping[str, Any] = field(default_factory=dict)
    relu_activation_kwargs: Mapping[str, Any] | None = None
    regularizer: Callable[[nn.Module, float], torch.Tensor] | None = None
    regularizer_follows_progress: bool = False
    freeze_float_weights: bool = False
    quant_lr: float = 1e-5

    @property
    def is_quantized(self) -> bool:
        return self.fake_quants is not None

    @property
    def supported_bits(self) -> tuple[int, ...]:
        """Weight bit widths, as the weight class accepts them; ``()`` for a float model."""
        return () if self.fake_quants is None else tuple(self.fake_quants[0].supported_bits)

    def mapping(self, bits: int) -> QConfigMapping:
        """The QConfigMapping at ``bits`` weight bits; unsupported bits raise ``ValueError``."""
        if self.fake_quants is None:
            raise ValueError(f"{self.name} is not a quantization method")
        if bits not in self.supported_bits:
            choices = ", ".join(map(str, self.supported_bits))
            raise ValueError(f"{self.name} supports --bits {choices}, not {bits}")
        weight_cls, activation_cls = self.fake_quants
        relu_activation = (None if self.relu_activation_kwargs is None
                           else activation_cls.with_args(**self.relu_activation_kwargs))
        return build_qconfig_mapping(
            weight=weight_cls.with_args(bits=bits),
            embedding_weight=weight_cls.with_args(bits=bits, embedding=True),
            activation=activation_cls.with_args(**self.activation_kwargs),
            relu_activation=relu_activation)


METHODS: dict[str, QuantMethod] = {}


def register_method(method: QuantMethod) -> QuantMethod:
    """Add ``method`` to ``METHODS``; names are unique, and a quantized method's classes are
    ``observers.METHOD_FAKE_QUANTS[name]`` (the one place the pairing is written)."""
    if method.name in METHODS:
        raise ValueError(f"quantization method {method.name!r} is already registered")
    if method.is_quantized and METHOD_FAKE_QUANTS.get(method.name) != method.fake_quants:
        raise ValueError(f"quantization method {method.name!r}: its fake-quant classes must be "
                         f"observers.METHOD_FAKE_QUANTS[{method.name!r}]; add the pairing there")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> QuantMethod:
    """The method called ``name``; an unknown name raises ``ValueError`` listing the choices."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown quantization method {name!r}; choose one of "
                         f"{', '.join(METHODS)}") from None


register_method(QuantMethod("fp32", "full-precision baseline, no quantization"))

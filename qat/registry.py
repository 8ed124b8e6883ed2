"""Registry of quantization methods: ``--qconfig NAME`` -> how to quantize a SASRec model.

A method registers itself with ``@register_method("name")``; scripts take their choices from
``METHODS`` so a new method is one new entry, never an edit of the CLI.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.ao.quantization import QConfigMapping


@dataclass(frozen=True)
class QuantMethod:
    """A named way to train (and later convert) a model.

    Attributes:
        name: the ``--qconfig`` value.
        description: one line for ``--help``.
        qconfig_mapping: ``bits -> QConfigMapping``, or None for a float model.
        supported_bits: weight bit widths the method accepts.
        regularizer: ``f(model, progress) -> loss term`` added during QAT (progress in [0, 1]).
        freeze_float_weights: train the quantizers, not the float weights of quantized layers
            (AdaRound learns only how to round the weights it was given).
        quant_lr: default learning rate of the quantizer parameters (their own Adam group).
    """

    name: str
    description: str
    qconfig_mapping: Callable[[int], QConfigMapping] | None
    supported_bits: tuple[int, ...] = ()
    regularizer: Callable[[nn.Module, float], torch.Tensor] | None = None
    freeze_float_weights: bool = False
    quant_lr: float = 1e-5

    @property
    def is_quantized(self) -> bool:
        return self.qconfig_mapping is not None

    def mapping(self, bits: int) -> QConfigMapping:
        """The QConfigMapping at ``bits`` weight bits; unsupported bits raise ``ValueError``."""
        if self.qconfig_mapping is None:
            raise ValueError(f"{self.name} is not a quantization method")
        if bits not in self.supported_bits:
            choices = ", ".join(map(str, self.supported_bits))
            raise ValueError(f"{self.name} supports --bits {choices}, not {bits}")
        return self.qconfig_mapping(bits)


METHODS: dict[str, QuantMethod] = {}


def register_method(method: QuantMethod) -> QuantMethod:
    """Add ``method`` to ``METHODS``; names are unique."""
    if method.name in METHODS:
        raise ValueError(f"quantization method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> QuantMethod:
    """The method called ``name``; an unknown name raises ``ValueError`` listing the choices."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown quantization method {name!r}; choose one of "
                         f"{', '.join(METHODS)}") from None


register_method(QuantMethod("fp32", "full-precision baseline, no quantization", None))

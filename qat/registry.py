"""Registry of quantization methods: ``--qconfig NAME`` -> how to quantize a SASRec model.

A method registers itself with ``@register_method("name")``; scripts take their choices from
``METHODS`` so a new method is one new entry, never an edit of the CLI.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch.ao.quantization import QConfigMapping


@dataclass(frozen=True)
class QuantMethod:
    """A named way to train (and later convert) a model.

    Attributes:
        name: the ``--qconfig`` value.
        description: one line for ``--help``.
        qconfig_mapping: ``bits -> QConfigMapping``, or None for a float model.
        supported_bits: weight bit widths the method accepts.
    """

    name: str
    description: str
    qconfig_mapping: Callable[[int], QConfigMapping] | None
    supported_bits: tuple[int, ...] = ()

    @property
    def is_quantized(self) -> bool:
        return self.qconfig_mapping is not None


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

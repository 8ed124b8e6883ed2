"""The INT8 backends by name: ``"plain"``, ``"torch_exact"``, ``"fused"`` -> emitter class.

    cls = get_emitter(backend_name(torch_exact=True, fused=False))   # TorchExactEmitter
    layers = cls(graph_builder)

A dict filled by a class decorator, as onnxruntime's quantization tool maps op types to classes
(``registry.py``: ``QLinearOpsRegistry = {"Conv": QLinearConv, ...}``): a new backend is a new
``Int8Emitter`` subclass with ``@register_emitter("name")``, and nothing else changes. Each
class declares the ``torch_exact``/``fused`` flags it stands for, which ``backend_name``
matches against (the flags of ``build_sasrec_onnx`` and the ``sasrec_qat.*`` metadata).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from export.int8_emitters.common import Int8Emitter

EMITTERS: dict[str, type[Int8Emitter]] = {}
Emitter = TypeVar("Emitter", bound=type[Int8Emitter])


def register_emitter(name: str) -> Callable[[Emitter], Emitter]:
    """Class decorator: register an ``Int8Emitter`` subclass as backend ``name``.

    Raises:
        ValueError: ``name`` is taken, or another backend already declares the same flags.
    """
    def register(cls: Emitter) -> Emitter:
        if name in EMITTERS:
            raise ValueError(f"INT8 backend {name!r} is already registered "
                             f"({EMITTERS[name].__name__})")
        same = [n for n, c in EMITTERS.items() if (c.torch_exact, c.fused) ==
                (cls.torch_exact, cls.fused)]
        if same:
            raise ValueError(f"{cls.__name__} declares the flags of backend {same[0]!r}")
        cls.name = name
        EMITTERS[name] = cls
        return cls
    return register


def get_emitter(name: str) -> type[Int8Emitter]:
    """The emitter class registered as ``name``.

    Raises:
        ValueError: no such backend (the message lists the registered ones).
    """
    if name not in EMITTERS:
        raise ValueError(f"unknown INT8 backend {name!r}: choose one of {sorted(EMITTERS)}")
    return EMITTERS[name]


def backend_name(*, torch_exact: bool = True, fused: bool = False) -> str:
    """The backend that ``build_sasrec_onnx(torch_exact=..., fused=...)`` selects.

    Raises:
        ValueError: ``fused`` without ``torch_exact`` (the fused kernels round like torch).
    """
    if fused and not torch_exact:
        raise ValueError("fused kernels round like torch: fused=True needs torch_exact=True")
    for name, cls in EMITTERS.items():
        if (cls.torch_exact, cls.fused) == (bool(torch_exact), bool(fused)):
            return name
    raise ValueError(f"no INT8 backend is registered for torch_exact={torch_exact}, "
                     f"fused={fused}: registered are {sorted(EMITTERS)}")

"""The INT8 layer backend selected by the ``torch_exact``/``fused`` flags.

    layers = Int8Layers(g, torch_exact=True, fused=False)    # a TorchExactEmitter

The ops themselves are written by the emitters of ``export.int8_emitters`` (one class per
backend: ``"plain"`` for ``torch_exact=False``, ``"torch_exact"``, ``"fused"`` for
``fused=True``; the math of each is in its module: ``common`` for what they share,
``plain``, ``torch_exact``, ``fused``), the LayerNorm folding of the fused backend in
``export.fusion``. This module keeps the flag-based entry point and the old names.
"""
from __future__ import annotations

from export.graph_builder import GraphBuilder
from export.int8_emitters import (
    EMBEDDING_ZERO_POINT,
    Int8Emitter,
    QTensor,
    backend_name,
    get_emitter,
    per_row_int8,
)

__all__ = ["Int8Layers", "QTensor", "per_row_int8", "EMBEDDING_ZERO_POINT"]


def Int8Layers(g: GraphBuilder, *, torch_exact: bool = True,  # noqa: N802  (was a class)
               fused: bool = False) -> Int8Emitter:
    """The emitter of the backend ``build_sasrec_onnx(torch_exact=..., fused=...)`` uses.

    Args:
        g: the graph being written.
        torch_exact: round exactly like torch (``export.torch_kernels`` functions); False
            writes plain ONNX ops.
        fused: with ``torch_exact``, write each requantizing op as one node of the custom
            domain ``export.native_ops.DOMAIN`` (the session needs the custom-op library, which
            ``make_session`` registers; the LayerNorm folding is a separate pass,
            ``export.fusion.fold_layer_norms``, run by ``build_sasrec_onnx``).

    Raises:
        ValueError: ``fused`` without ``torch_exact``.
    """
    return get_emitter(backend_name(torch_exact=torch_exact, fused=fused))(g)

"""The INT8 layer backends of the ONNX export: one emitter class per backend, by name.

    layers = get_emitter("fused")(graph_builder)     # or backend_name(torch_exact=, fused=)
    x = layers.quantize(x_float, model.quant_input, "quant_input")   # a QTensor

* ``"plain"``: ``plain.PlainEmitter``, standard ONNX ops (QuantizeLinear, ...);
* ``"torch_exact"``: ``torch_exact.TorchExactEmitter``, the functions of
  ``export.torch_kernels``;
* ``"fused"``: ``fused.FusedEmitter``, the custom ops of ``export.native_ops``, then the graph
  pass ``export.fusion.fold_layer_norms``.

All write the same structure from a converted SASRec (``common.Int8Emitter``: int8 weights
and tables, ``MatMulInteger``, int8 scoring) and implement
``export.layer_emitter.LayerEmitter``; they differ in how a float or int32 value is rounded to
uint8. Numerics:
``"torch_exact"`` and ``"fused"`` give torch's uint8 tensors bit for bit; ``"plain"`` is within
one step of torch per op (a flipped step then propagates). ``"fused"`` is the fastest and needs
the custom-op library in the session.

Importing this package registers the three (``registry.EMITTERS``).
"""
from export.int8_emitters.common import (
    EMBEDDING_ZERO_POINT,
    Int8Emitter,
    LinearParts,
    QParams,
    QTensor,
    per_row_int8,
)
from export.int8_emitters.registry import EMITTERS, backend_name, get_emitter, register_emitter
from export.int8_emitters.plain import PlainEmitter  # each registers itself on import
from export.int8_emitters.torch_exact import TorchExactEmitter
from export.int8_emitters.fused import FusedEmitter

__all__ = ["EMITTERS", "register_emitter", "get_emitter", "backend_name", "Int8Emitter",
           "PlainEmitter", "TorchExactEmitter", "FusedEmitter", "QTensor", "QParams",
           "LinearParts", "per_row_int8", "EMBEDDING_ZERO_POINT"]

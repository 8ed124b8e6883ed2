"""INT8 backend ``"plain"`` (``build_sasrec_onnx(torch_exact=False)``): standard ONNX ops only.

Each requantizing op is a standard ONNX op within one step of torch: faster in onnxruntime
than the torch-exact functions and needing nothing but onnxruntime, but a step flipped early
moves later layers by several (on ML-1M 94-96% top-10 agreement with torch; README, "ONNX
export and parity")::

    QuantStub   u = QuantizeLinear(x, s, z)
    Linear      u = QuantizeLinear([Relu](Cast(acc) * (s_x * s_w) + b), s_out, z_out)
    LayerNorm   u = QuantizeLinear(LayerNormalization(DequantizeLinear(x)), s, z)
    add         u = QuantizeLinear(DequantizeLinear(a) + DequantizeLinear(b), s, z)
                    (onnxruntime fuses this into ``QLinearAdd``)

``acc`` is the Linear's ``MatMulInteger`` (``export.int8_emitters.common``). ``Relu`` before
rounding equals torch's fused clamp at the output zero point: ``Q(max(y, 0)) == max(Q(y), z_out)``.
"""
from __future__ import annotations

from torch import nn

from export.graph_builder import FLOAT
from export.int8_emitters.common import Int8Emitter, LinearParts, QParams, QTensor
from export.int8_emitters.registry import register_emitter


@register_emitter("plain")
class PlainEmitter(Int8Emitter):
    """QuantizeLinear / LayerNormalization / DequantizeLinear + Add (see the module docstring).

    Args:
        g: the graph being written.
    """

    torch_exact = False
    fused = False

    def _write_quantize(self, x: str, out: QParams, hint: str) -> str:
        return self.g.node("QuantizeLinear", [x, out.scale_name, out.zero_point_name], name=hint)

    def _write_linear(self, x: QTensor, parts: LinearParts, hint: str, *, relu: bool) -> str:
        g = self.g
        acc, w_scale, bias = self._matmul_scale_bias(x, parts, hint)
        y = g.node("Mul", [g.node("Cast", [acc], name=f"{hint}.acc_f32", to=FLOAT),
                           g.node("Mul", [x.scale_name, w_scale], name=f"{hint}.acc_scale")],
                   name=f"{hint}.rescaled")
        y = g.node("Add", [y, bias], name=f"{hint}.float")
        if relu:
            y = g.node("Relu", [y], name=f"{hint}.relu")
        return self._write_quantize(y, parts.out, hint)

    def _write_layer_norm(self, x: QTensor, gamma: str, beta: str, module: nn.Module,
                          out: QParams, hint: str) -> str:
        y = self.g.node("LayerNormalization", [self.dequantize(x, f"{hint}.input"), gamma, beta],
                        name=f"{hint}.float", axis=-1, epsilon=float(module.eps))
        return self._write_quantize(y, out, hint)

    def _write_add(self, a: QTensor, b: QTensor, out: QParams, hint: str) -> str:
        y = self.g.node("Add", [self.dequantize(a, f"{hint}.a"), self.dequantize(b, f"{hint}.b")],
                        name=f"{hint}.float")
        return self._write_quantize(y, out, hint)

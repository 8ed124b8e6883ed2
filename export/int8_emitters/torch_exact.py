"""INT8 backend ``"torch_exact"`` (the default of ``build_sasrec_onnx``): torch's rounding.

The requantizing ops call the ONNX local functions of ``export.torch_kernels``, which spell out
torch's x86 kernels' float32 arithmetic op for op, so every uint8 tensor is torch's bit for bit
(only the float attention core can differ in the last float bit, and then flip a step).
onnxruntime inlines the functions at load time::

    QuantStub   u = QuantizePerTensor(x, 1/s, z)
    Linear      u = Requantize[Relu](acc, s_x, s_w, b, s_out, z_out)
    LayerNorm   u = LayerNorm[Vector](x, s_x, z_x, gamma, beta, eps, 1/s, z)
    add         u = Add(a, s_a, z_a, b, s_b, z_b, 1/s, z)

``acc`` is the Linear's ``MatMulInteger`` (``export.int8_emitters.common``); ``1/s`` is the
float32 constant ``torch_kernels.inverse_scale(s)``; ``eps`` a float64 constant (torch adds it
to the float64 variance). ``LayerNormVector`` (no scalar-remainder rounding) when the width is a
multiple of ``torch_kernels.LAYER_NORM_VECTOR``.
"""
from __future__ import annotations

import numpy as np
from torch import nn

from export import torch_kernels
from export.int8_emitters.common import Int8Emitter, LinearParts, QParams, QTensor
from export.int8_emitters.registry import register_emitter


@register_emitter("torch_exact")
class TorchExactEmitter(Int8Emitter):
    """Calls of the ``export.torch_kernels`` functions (see the module docstring).

    Args:
        g: the graph being written.
    """

    torch_exact = True
    fused = False

    def _inverse_scale(self, scale: float) -> str:
        """The float32 ``1/scale`` constant the exact functions multiply by."""
        return self.g.scalar(torch_kernels.inverse_scale(scale), np.float32, "inv_scale")

    def _write_quantize(self, x: str, out: QParams, hint: str) -> str:
        return self.g.call(torch_kernels.quantize_per_tensor(),
                           [x, self._inverse_scale(out.scale), out.zero_point_name], name=hint)

    def _write_linear(self, x: QTensor, parts: LinearParts, hint: str, *, relu: bool) -> str:
        acc, w_scale, bias = self._matmul_scale_bias(x, parts, hint)
        return self.g.call(torch_kernels.requantize(relu),
                           [acc, x.scale_name, w_scale, bias, parts.out.scale_name,
                            parts.out.zero_point_name], name=hint)

    def _write_layer_norm(self, x: QTensor, gamma: str, beta: str, module: nn.Module,
                          out: QParams, hint: str) -> str:
        g = self.g
        eps = g.scalar(float(module.eps), np.float64, "eps")
        function = torch_kernels.layer_norm(
            scalar_tail=module.normalized_shape[-1] % torch_kernels.LAYER_NORM_VECTOR != 0)
        return g.call(function, [x.name, x.scale_name, x.zero_point_name, gamma, beta, eps,
                                 self._inverse_scale(out.scale), out.zero_point_name], name=hint)

    def _write_add(self, a: QTensor, b: QTensor, out: QParams, hint: str) -> str:
        return self.g.call(torch_kernels.add(),
                           [a.name, a.scale_name, a.zero_point_name, b.name, b.scale_name,
                            b.zero_point_name, self._inverse_scale(out.scale),
                            out.zero_point_name], name=hint)

"""ONNX ops for the layers of a converted INT8 SASRec (``torch.ao`` eager ``convert``).

Each method reproduces the arithmetic of the torch quantized module it is given; the weights
are stored as INT8 initializers with float per-row scales. Activations between ops are uint8
tensors (``QTensor``: name + scale + zero point), exactly the ``torch.quint8`` tensors of the
torch model.

Numerics: with ``torch_exact`` (the default) the requantizing ops call the ONNX functions of
``export.torch_kernels``, which round exactly like torch's x86 kernels, so every uint8 tensor
is torch's bit for bit (only the float attention core can differ in the last float bit, and then
flip a step). ``torch_exact=False`` writes plain ONNX ops (QuantizeLinear, LayerNormalization,
DequantizeLinear + Add), each within one step of torch: faster in onnxruntime, but a step
flipped early moves later layers by several.

Linear (``nnq.Linear``, ``nniq.LinearReLU``), input ``x_u8`` (scale ``s_x``, zero point ``z_x``),
weight ``W_s8`` (per-row scales ``s_w``, zero point 0)::

    acc = MatMulInteger(x_u8, W_s8^T, z_x)      # exact int32 accumulation, an INT8 kernel
    u   = Requantize[Relu](acc, s_x, s_w, b, s_out, z_out)                    # torch_exact
    u   = QuantizeLinear([Relu](Cast(acc) * (s_x * s_w) + b), s_out, z_out)  # otherwise

``MatMulInteger`` runs as an INT8 kernel at every onnxruntime optimisation level. Q/DQ around
a float ``MatMul`` would be the usual QDQ form, but onnxruntime then folds ``MatMul + Add``
into ``Gemm``, quantizes the float bias to int32 and runs ``QGemm``, which is no longer what
torch computes (one step off in ~0.07% of outputs in a probe). ``Relu`` before rounding equals
torch's fused clamp at the output zero point: ``Q(max(y, 0)) == max(Q(y), z_out)``.

QuantStub, LayerNorm, residual add: ``QuantizePerTensor``, ``LayerNorm``, ``Add`` functions
(or QuantizeLinear; DequantizeLinear -> LayerNormalization -> QuantizeLinear; DequantizeLinear
x2 -> Add -> QuantizeLinear, which onnxruntime fuses into ``QLinearAdd``). DeQuantStub:
``DequantizeLinear``, ``(u - z) * s`` with one rounding, as torch.

Embeddings (weight-only ``nnq.Embedding``, ``per_channel_affine_float_qparams`` with zero point
128 per row): ``Cast(Gather(table_s8, ids)) * Gather(row_scale, ids)``, bit-identical to torch's
``(u - 128) * scale``.

Scoring: ``Cast(MatMulInteger(h_u8, Transpose(table_s8), z_h)) * (s_h * row_scale)``: full
precision float scores, never requantized (DESIGN.md, "Ranking ties").

Fused kernels (``fused=True``, with ``torch_exact``): the same arithmetic, each requantizing op
one node of the custom domain ``export.native_ops.DOMAIN`` (C++ in export/native, one pass per
op instead of a dozen element-wise onnxruntime nodes with float64 intermediates)::

    QuantStub                          QuantizePerTensor(x)
    embeddings + QuantStub             EmbedQuantize(ids, positions, tables, row scales)
    Linear [+ ReLU]                    MatMulInteger -> Requantize[Relu](acc, bias_acc, multiplier)
    Linear -> DeQuantStub (q, k, v)    MatMulInteger -> RequantizeDequantize(...)  (float out)
    residual + Linear                  MatMulInteger -> RequantizeAdd(acc, ..., residual)
    LayerNorm                          LayerNorm(u, gamma, beta), or folded into the op that
                                       wrote u (RequantizeAddNorm, EmbedQuantizeNorm: a second
                                       output, each row normalised right after it is written)

Per-column constants are inputs (``bias_acc = b / (s_x s_w)`` and ``multiplier = s_x s_w / s``
computed here in float32, as the functions compute them); scales and zero points attributes.
The uint8 tensors are the function graph's bit for bit (tests/test_export_fused.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn
from torch.ao.nn import quantized as nnq
from torch.ao.nn.intrinsic import quantized as nniq

from export import native_ops, torch_kernels
from export.graph_builder import FLOAT, UINT8, GraphBuilder

EMBEDDING_ZERO_POINT = 128  # uint8 storage of the int8 grid: q = u - 128


@dataclass(frozen=True)
class QTensor:
    """A uint8 tensor of the graph and its affine quantization: ``x = (u - zero_point) * scale``.

    ``scale_name``/``zero_point_name`` are the initializers holding the same values.
    """

    name: str
    scale: float
    zero_point: int
    scale_name: str
    zero_point_name: str


def per_row_int8(weight: torch.Tensor, *, zero_point: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(int8 values (rows, cols), float32 scales (rows,))`` of a quantized weight.

    Accepts per-tensor or per-channel (axis 0) qparams whose zero point is ``zero_point`` in
    every row, so that ``w = int8 * scale`` row by row.

    Raises:
        ValueError: other axes, zero points or integer values outside int8.
    """
    scheme = weight.qscheme()
    if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        scales = np.full(weight.shape[0], weight.q_scale(), dtype=np.float32)
        zero_points = np.full(weight.shape[0], weight.q_zero_point(), dtype=np.float64)
    else:
        if weight.q_per_channel_axis() != 0:
            raise ValueError(f"per-channel weights must be quantized per row (axis 0), got axis "
                             f"{weight.q_per_channel_axis()}")
        scales = weight.q_per_channel_scales().float().numpy()
        zero_points = weight.q_per_channel_zero_points().double().numpy()
    if not np.all(zero_points == zero_point):
        raise ValueError(f"weight zero points must all be {zero_point} (symmetric int8 grid), got "
                         f"{sorted(set(zero_points.tolist()))[:5]}")
    ints = weight.int_repr().numpy().astype(np.int32) - zero_point
    if ints.min() < -128 or ints.max() > 127:
        raise ValueError(f"weight integers span [{ints.min()}, {ints.max()}], outside int8")
    return ints.astype(np.int8), scales


@dataclass(frozen=True)
class _LinearParts:
    """A quantized Linear's arrays: int8 weight transposed (in, out), float32 per-column
    weight scales and bias, and its output qparams."""

    weight_t: np.ndarray
    weight_scale: np.ndarray
    bias: np.ndarray
    scale: float
    zero_point: int


class Int8Layers:
    """INT8 ONNX ops from the modules of a converted SASRec.

    Args:
        g: the graph being written.
        torch_exact: round exactly like torch (``export.torch_kernels`` functions); False
            writes plain ONNX ops (see the module docstring).
        fused: with ``torch_exact``, write each requantizing op as one node of the custom
            domain ``export.native_ops.DOMAIN`` (same uint8 results, one pass each; the
            session needs the custom-op library, which ``make_session`` registers).
    """

    kind = "int8"
    hidden_type = UINT8

    def __init__(self, g: GraphBuilder, *, torch_exact: bool = True, fused: bool = False) -> None:
        if fused and not torch_exact:
            raise ValueError("fused kernels round like torch: fused=True needs torch_exact=True")
        self.g = g
        self.torch_exact = torch_exact
        self.fused = fused
        self._tables: dict[int, tuple[str, str]] = {}
        # fused only: RequantizeAdd / EmbedQuantize nodes by output name, whose output has not
        # been layer-normed yet (layer_norm turns such a node into its *Norm twin)
        self._normable: dict[str, onnx.NodeProto] = {}
        self.max_abs_weight = 0  # largest |int8| of any Linear weight or table (saturation check)

    # -- helpers ----------------------------------------------------------------------------
    def _qparams(self, scale: float, zero_point: int) -> tuple[str, str]:
        if not 0 <= zero_point <= 255:
            raise ValueError(f"activation zero point {zero_point} is outside uint8")
        return (self.g.scalar(np.float32(scale), np.float32, "scale"),
                self.g.scalar(zero_point, np.uint8, "zero_point"))

    def _inverse_scale(self, scale: float) -> str:
        """The float32 ``1/scale`` constant the exact functions multiply by."""
        return self.g.scalar(torch_kernels.inverse_scale(scale), np.float32, "inv_scale")

    @staticmethod
    def _fused_attrs(attrs: dict[str, object]) -> dict[str, object]:
        """Attribute values for a fused op: floats rounded to the float32 constants they are."""
        return {k: (float(np.float32(v)) if isinstance(v, (float, np.floating)) else v)
                for k, v in attrs.items()}

    def _fused(self, op_type: str, inputs: list[str], hint: str, **attrs: object) -> str:
        """A node of the fused custom-op domain (see ``_fused_attrs``)."""
        return self.g.node(op_type, inputs, name=hint, domain=native_ops.DOMAIN,
                           **self._fused_attrs(attrs))

    def _output(self, module: nn.Module) -> tuple[float, int, str, str]:
        """(scale, zero point, their constants) of a module's quantized output."""
        scale = float(np.float32(torch.as_tensor(module.scale).reshape(-1)[0]))
        zero_point = int(torch.as_tensor(module.zero_point).reshape(-1)[0])
        return (scale, zero_point, *self._qparams(scale, zero_point))

    def _quantize_linear(self, x: str, module: nn.Module, hint: str) -> QTensor:
        """float -> uint8 with plain QuantizeLinear (``torch_exact=False``)."""
        scale, zero_point, scale_name, zp_name = self._output(module)
        q = self.g.node("QuantizeLinear", [x, scale_name, zp_name], name=hint)
        return QTensor(q, scale, zero_point, scale_name, zp_name)

    def _table(self, module: nn.Module, hint: str) -> tuple[str, str]:
        """(int8 table, float row scales) initializers of a quantized embedding, cached so the
        item table is stored once for the lookup and scoring."""
        if id(module) not in self._tables:
            if not isinstance(module, nnq.Embedding):
                raise ValueError(f"{hint}: expected a quantized nnq.Embedding, got "
                                 f"{type(module).__name__}")
            ints, scales = per_row_int8(module.weight(), zero_point=EMBEDDING_ZERO_POINT)
            self.max_abs_weight = max(self.max_abs_weight, int(np.abs(ints).max(initial=0)))
            self._tables[id(module)] = (self.g.initializer(ints, f"{hint}.weight_int8"),
                                        self.g.initializer(scales, f"{hint}.row_scale"))
        return self._tables[id(module)]

    # -- layers -----------------------------------------------------------------------------
    def embed(self, ids: str, module: nn.Module, hint: str) -> str:
        """``int8_table[ids] * row_scale[ids]``: (B, T) int64 -> (B, T, d) float."""
        g = self.g
        table, scales = self._table(module, hint)
        rows = g.node("Cast", [g.node("Gather", [table, ids], name=f"{hint}.rows")],
                      name=f"{hint}.rows_f32", to=FLOAT)
        row_scale = g.node("Unsqueeze", [g.node("Gather", [scales, ids], name=f"{hint}.scale"),
                                         g.ints([-1], "axes_last")], name=f"{hint}.scale_b")
        return g.node("Mul", [rows, row_scale], name=hint)

    def quantize(self, x: str, stub: nn.Module, hint: str) -> QTensor:
        """``nnq.Quantize`` (a QuantStub after convert): float -> uint8."""
        if not isinstance(stub, nnq.Quantize):
            raise ValueError(f"{hint}: expected nnq.Quantize, got {type(stub).__name__}")
        if stub.dtype != torch.quint8:
            raise ValueError(f"{hint}: activations must be quint8, got {stub.dtype}")
        if not self.torch_exact:
            return self._quantize_linear(x, stub, hint)
        scale, zero_point, scale_name, zp_name = self._output(stub)
        if self.fused:
            q = self._fused("QuantizePerTensor", [x], hint,
                            inv_s=torch_kernels.inverse_scale(scale), z=zero_point)
        else:
            q = self.g.call(torch_kernels.quantize_per_tensor(),
                            [x, self._inverse_scale(scale), zp_name], name=hint)
        return QTensor(q, scale, zero_point, scale_name, zp_name)

    def embed_quantized(self, ids: str, positions: str, items: nn.Module, pos: nn.Module,
                        emb_scale: float, stub: nn.Module, hint: str) -> QTensor:
        """Fused only: ``quantize(item_emb[ids] * emb_scale + pos_emb[positions])`` as one
        ``EmbedQuantize`` node, the same float32 steps as ``embed``/Mul/Add/``quantize``."""
        if not self.fused:
            raise ValueError("embed_quantized needs fused=True")
        if not isinstance(stub, nnq.Quantize) or stub.dtype != torch.quint8:
            raise ValueError(f"{hint}: expected a quint8 nnq.Quantize, got {type(stub).__name__}")
        item_table, item_scale = self._table(items, "item_emb")
        pos_table, pos_scale = self._table(pos, "pos_emb")
        scale, zero_point, scale_name, zp_name = self._output(stub)
        q = self._fused("EmbedQuantize",
                        [ids, positions, item_table, item_scale, pos_table, pos_scale], hint,
                        emb_scale=np.float32(emb_scale),
                        inv_s=torch_kernels.inverse_scale(scale), z=zero_point)
        self._normable[q] = self.g.nodes[-1]
        return QTensor(q, scale, zero_point, scale_name, zp_name)

    def linears_dequantized(self, x: QTensor, modules: list[nn.Module],
                            hints: list[str]) -> list[str]:
        """``[dequantize(linear(x)) for each module]`` (the attention's q, k, v). Fused: one
        ``RequantizeDequantize`` node per module after its MatMulInteger, giving
        DequantizeLinear's floats. (One matmul over q, k, v side by side was tried: the split
        of its output cost more than the two matmuls it saved.)"""
        if not self.fused:
            return [self.dequantize(self.linear(x, m, h), f"{h}.float")
                    for m, h in zip(modules, hints)]
        outputs = []
        for module, hint in zip(modules, hints):
            parts = self._linear_parts(x, module, hint)
            outputs.append(self._fused("RequantizeDequantize", self._fused_matmul(x, parts, hint),
                                       f"{hint}.float", z=parts.zero_point,
                                       s=np.float32(parts.scale)))
        return outputs

    def dequantize(self, x: QTensor, hint: str) -> str:
        """uint8 -> float (``nnq.DeQuantize``)."""
        return self.g.node("DequantizeLinear", [x.name, x.scale_name, x.zero_point_name],
                           name=hint)

    def _fused_matmul(self, x: QTensor, parts: _LinearParts, hint: str) -> list[str]:
        """``[acc, bias_acc, multiplier]``: the MatMulInteger of a fused Linear and its
        per-column float32 constants ``b / m`` and ``m / s`` with ``m = s_x * s_w`` (numpy
        float32 arithmetic is IEEE, the same roundings as the functions' graph ops)."""
        g = self.g
        weight = g.initializer(parts.weight_t, f"{hint}.weight_int8_t")  # (in, out)
        acc = g.node("MatMulInteger", [x.name, weight, x.zero_point_name], name=f"{hint}.acc")
        m = np.float32(x.scale) * parts.weight_scale
        return [acc, g.initializer(parts.bias / m, f"{hint}.bias_acc"),
                g.initializer(m / np.float32(parts.scale), f"{hint}.multiplier")]

    def _linear_parts(self, x: QTensor, module: nn.Module, hint: str) -> _LinearParts:
        """The arrays of ``module`` (checked to be a converted quantized Linear)."""
        if not isinstance(module, nnq.Linear):  # nniq.LinearReLU subclasses nnq.Linear
            raise ValueError(f"{hint}: expected a quantized nnq.Linear, got "
                             f"{type(module).__name__}; convert the QAT model first")
        ints, w_scale = per_row_int8(module.weight())  # (out, in), (out,)
        self.max_abs_weight = max(self.max_abs_weight, int(np.abs(ints).max(initial=0)))
        bias = module.bias()
        bias = (np.zeros(ints.shape[0], np.float32) if bias is None
                else bias.detach().float().numpy())
        scale, zero_point, _, _ = self._output(module)
        return _LinearParts(np.ascontiguousarray(ints.T), w_scale, bias, scale, zero_point)

    def linear(self, x: QTensor, module: nn.Module, hint: str, *, relu: bool = False) -> QTensor:
        """``nnq.Linear`` / fused ``LinearReLU`` (see the module docstring for the ops)."""
        g = self.g
        parts = self._linear_parts(x, module, hint)
        relu = relu or isinstance(module, nniq.LinearReLU)
        scale, zero_point, scale_name, zp_name = self._output(module)
        if self.fused:
            q = self._fused("RequantizeRelu" if relu else "Requantize",
                            self._fused_matmul(x, parts, hint), hint, z=zero_point)
            return QTensor(q, scale, zero_point, scale_name, zp_name)
        weight = g.initializer(parts.weight_t, f"{hint}.weight_int8_t")  # (in, out)
        acc = g.node("MatMulInteger", [x.name, weight, x.zero_point_name], name=f"{hint}.acc")
        w_scale = g.initializer(parts.weight_scale, f"{hint}.weight_scale")
        bias = g.initializer(parts.bias, f"{hint}.bias")
        if self.torch_exact:
            q = g.call(torch_kernels.requantize(relu), [acc, x.scale_name, w_scale, bias,
                                                        scale_name, zp_name], name=hint)
            return QTensor(q, scale, zero_point, scale_name, zp_name)
        y = g.node("Mul", [g.node("Cast", [acc], name=f"{hint}.acc_f32", to=FLOAT),
                           g.node("Mul", [x.scale_name, w_scale], name=f"{hint}.acc_scale")],
                   name=f"{hint}.rescaled")
        y = g.node("Add", [y, bias], name=f"{hint}.float")
        if relu:
            y = g.node("Relu", [y], name=f"{hint}.relu")
        return self._quantize_linear(y, module, hint)

    def layer_norm(self, x: QTensor, module: nn.Module, hint: str) -> QTensor:
        """``nnq.LayerNorm`` over the last axis."""
        if not isinstance(module, nnq.LayerNorm):
            raise ValueError(f"{hint}: expected nnq.LayerNorm, got {type(module).__name__}")
        g = self.g
        gamma = g.initializer(module.weight.detach().float().numpy(), f"{hint}.weight")
        beta = g.initializer(module.bias.detach().float().numpy(), f"{hint}.bias")
        if not self.torch_exact:
            y = g.node("LayerNormalization", [self.dequantize(x, f"{hint}.input"), gamma, beta],
                       name=f"{hint}.float", axis=-1, epsilon=float(module.eps))
            return self._quantize_linear(y, module, hint)
        scale, zero_point, scale_name, zp_name = self._output(module)
        if self.fused:  # eps as text: a float attribute would round it to float32
            norm = dict(s_x=np.float32(x.scale), z_x=x.zero_point, eps=repr(float(module.eps)),
                        inv_s=torch_kernels.inverse_scale(scale), z=zero_point)
            producer = self._normable.pop(x.name, None)
            if producer is None:
                q = self._fused("LayerNorm", [x.name, gamma, beta], hint, **norm)
            else:  # the op that wrote x also normalises each row right after writing it
                q = g.unique(hint)
                producer.op_type += "Norm"
                producer.input.extend([gamma, beta])
                producer.output.append(q)
                producer.attribute.extend(onnx.helper.make_attribute(f"norm_{k}", v)
                                          for k, v in self._fused_attrs(norm).items())
            return QTensor(q, scale, zero_point, scale_name, zp_name)
        eps = g.scalar(float(module.eps), np.float64, "eps")
        function = torch_kernels.layer_norm(
            scalar_tail=module.normalized_shape[-1] % torch_kernels.LAYER_NORM_VECTOR != 0)
        q = g.call(function, [x.name, x.scale_name, x.zero_point_name, gamma, beta, eps,
                              self._inverse_scale(scale), zp_name], name=hint)
        return QTensor(q, scale, zero_point, scale_name, zp_name)

    def add(self, a: QTensor, b: QTensor, module: nn.Module, hint: str) -> QTensor:
        """``QFunctional.add`` (``quantized::add``): dequantize both, add, requantize."""
        if not isinstance(module, nnq.QFunctional):
            raise ValueError(f"{hint}: expected QFunctional, got {type(module).__name__}")
        g = self.g
        if not self.torch_exact:
            y = g.node("Add", [self.dequantize(a, f"{hint}.a"), self.dequantize(b, f"{hint}.b")],
                       name=f"{hint}.float")
            return self._quantize_linear(y, module, hint)
        scale, zero_point, scale_name, zp_name = self._output(module)
        if self.fused:
            q = self._fused("Add", [a.name, b.name], hint, s_a=np.float32(a.scale),
                            z_a=a.zero_point, s_b=np.float32(b.scale), z_b=b.zero_point,
                            inv_s=torch_kernels.inverse_scale(scale), z=zero_point)
            return QTensor(q, scale, zero_point, scale_name, zp_name)
        q = g.call(torch_kernels.add(), [a.name, a.scale_name, a.zero_point_name, b.name,
                                         b.scale_name, b.zero_point_name,
                                         self._inverse_scale(scale), zp_name], name=hint)
        return QTensor(q, scale, zero_point, scale_name, zp_name)

    def add_linear(self, residual: QTensor, x: QTensor, linear: nn.Module, add: nn.Module,
                   linear_hint: str, add_hint: str) -> QTensor:
        """``add(residual, linear(x))`` (a residual connection). Fused: MatMulInteger and one
        ``RequantizeAdd`` node, which requantizes the Linear's output to its uint8 grid and
        adds it to the residual exactly as ``add`` does, in one pass."""
        if not self.fused:
            return self.add(residual, self.linear(x, linear, linear_hint), add, add_hint)
        if not isinstance(add, nnq.QFunctional):
            raise ValueError(f"{add_hint}: expected QFunctional, got {type(add).__name__}")
        if isinstance(linear, nniq.LinearReLU):
            raise ValueError(f"{linear_hint}: a residual branch ends in a plain Linear")
        parts = self._linear_parts(x, linear, linear_hint)
        inputs = [*self._fused_matmul(x, parts, linear_hint), residual.name]
        scale, zero_point, scale_name, zp_name = self._output(add)
        q = self._fused("RequantizeAdd", inputs, add_hint, s_a=np.float32(residual.scale),
                        z_a=residual.zero_point, s_b=np.float32(parts.scale),
                        z_b=parts.zero_point, inv_s=torch_kernels.inverse_scale(scale),
                        z=zero_point)
        self._normable[q] = self.g.nodes[-1]
        return QTensor(q, scale, zero_point, scale_name, zp_name)

    def last_position(self, x: QTensor, hint: str) -> QTensor:
        """(B, T, d) -> (B, d): the last column, qparams unchanged."""
        name = self.g.node("Gather", [x.name, self.g.scalar(-1, np.int64, "last")], name=hint,
                           axis=1)
        return QTensor(name, x.scale, x.zero_point, x.scale_name, x.zero_point_name)

    def score(self, hidden: QTensor, items: nn.Module, hint: str) -> str:
        """(B, d) uint8 hidden x int8 item table -> (B, num_items + 1) float32 scores."""
        g = self.g
        table, row_scale = self._table(items, "item_emb")
        table_t = g.node("Transpose", [table], name=f"{hint}.table_t", perm=[1, 0])  # (d, N+1)
        acc = g.node("MatMulInteger", [hidden.name, table_t, hidden.zero_point_name],
                     name=f"{hint}.acc")
        scale = g.node("Mul", [hidden.scale_name, row_scale], name=f"{hint}.acc_scale")
        return g.node("Mul", [g.node("Cast", [acc], name=f"{hint}.acc_f32", to=FLOAT), scale],
                      name=hint)

    def hidden_value(self, hidden: QTensor) -> str:
        """The final hidden state as exposed by the diagnostic output (uint8)."""
        return hidden.name

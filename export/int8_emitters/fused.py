"""INT8 backend ``"fused"`` (``build_sasrec_onnx(fused=True)``): one custom op per requantization.

The same arithmetic as the ``"torch_exact"`` backend, each requantizing op one node of the
custom domain ``export.native_ops.DOMAIN`` (C++ in export/native, one pass per op instead of a
dozen element-wise onnxruntime nodes with float64 intermediates)::

    QuantStub                          QuantizePerTensor(x)
    embeddings + QuantStub             EmbedQuantize(ids, positions, tables, row scales)
    Linear [+ ReLU]                    MatMulInteger -> Requantize[Relu](acc, bias_acc, multiplier)
    Linear -> DeQuantStub (q, k, v)    MatMulInteger -> RequantizeDequantize(...)  (float out)
    residual + Linear                  MatMulInteger -> RequantizeAdd(acc, ..., residual)
    LayerNorm                          LayerNorm(u, gamma, beta)
    add                                Add(a, b)
    scores (scoring "fused")           Score(h, table, row_scale)
    top-k graph (scoring "fused")      ScoreTopK(h, table, row_scale, item_seq, exclude, k)

``Score`` gives the ``"int8"`` scoring path's scores bit for bit in one pass (int16 pair
products, no int32 matrix, no Cast and Mul passes); ``ScoreTopK`` the same scores' top-k with
``export.top_k``'s rules without writing the (B, num_items + 1) matrix at all
(export/native/score_top_k.cc).

After the graph is built, ``export.fusion.fold_layer_norms`` (this backend's graph pass) folds
each LayerNorm into the RequantizeAdd or EmbedQuantize that wrote its input
(RequantizeAddNorm, EmbedQuantizeNorm: a second output, each row normalised right after it is
written).

Per-column constants are inputs (``bias_acc = b / (s_x s_w)`` and ``multiplier = s_x s_w / s``
computed here in float32, as the functions compute them); scales and zero points attributes
(floats rounded to the float32 constants they are; LayerNorm's ``eps`` as text, parsed by the
kernel to the float64 it was written from). The uint8 tensors are the function graph's bit for
bit (tests/test_export_fused.py). The session needs the custom-op library, which
``export.runtime.make_session`` registers.
"""
from __future__ import annotations

import numpy as np
from torch import nn
from torch.ao.nn.intrinsic import quantized as nniq

from export import native_ops, torch_kernels
from export.fusion import fold_layer_norms
from export.int8_emitters.common import (
    Int8Emitter,
    LinearParts,
    QParams,
    QTensor,
    check_add,
    check_quant_stub,
)
from export.int8_emitters.registry import register_emitter


def fused_attrs(attrs: dict[str, object]) -> dict[str, object]:
    """Attribute values for a fused op: floats rounded to the float32 constants they are."""
    return {k: (float(np.float32(v)) if isinstance(v, (float, np.floating)) else v)
            for k, v in attrs.items()}


@register_emitter("fused")
class FusedEmitter(Int8Emitter):
    """Nodes of the custom domain ``export.native_ops.DOMAIN`` (see the module docstring).

    Args:
        g: the graph being written.
    """

    torch_exact = True
    fused = True
    scoring_paths = ("fused", "int8", "float")
    default_scoring = "fused"
    graph_passes = (fold_layer_norms,)

    def _fused(self, op_type: str, inputs: list[str], hint: str, *, num_outputs: int = 1,
               **attrs: object) -> str | list[str]:
        """A node of the fused custom-op domain (see ``fused_attrs``); its output's name, or
        the list of them with ``num_outputs > 1``."""
        return self.g.node(op_type, inputs, name=hint, domain=native_ops.DOMAIN,
                           num_outputs=num_outputs, **fused_attrs(attrs))

    def _fused_matmul(self, x: QTensor, parts: LinearParts, hint: str) -> list[str]:
        """``[acc, bias_acc, multiplier]``: the MatMulInteger of a fused Linear and its
        per-column float32 constants ``b / m`` and ``m / s`` with ``m = s_x * s_w`` (numpy
        float32 arithmetic is IEEE, the same roundings as the functions' graph ops)."""
        g = self.g
        acc = self._matmul_integer(x, parts, hint)
        m = np.float32(x.scale) * parts.weight_scale
        return [acc, g.initializer(parts.bias / m, f"{hint}.bias_acc"),
                g.initializer(m / np.float32(parts.out.scale), f"{hint}.multiplier")]

    def _write_quantize(self, x: str, out: QParams, hint: str) -> str:
        return self._fused("QuantizePerTensor", [x], hint,
                           inv_s=torch_kernels.inverse_scale(out.scale), z=out.zero_point)

    def _write_linear(self, x: QTensor, parts: LinearParts, hint: str, *, relu: bool) -> str:
        return self._fused("RequantizeRelu" if relu else "Requantize",
                           self._fused_matmul(x, parts, hint), hint, z=parts.out.zero_point)

    def _write_layer_norm(self, x: QTensor, gamma: str, beta: str, module: nn.Module,
                          out: QParams, hint: str) -> str:
        # eps as text: a float attribute would round it to float32
        return self._fused("LayerNorm", [x.name, gamma, beta], hint, s_x=np.float32(x.scale),
                           z_x=x.zero_point, eps=repr(float(module.eps)),
                           inv_s=torch_kernels.inverse_scale(out.scale), z=out.zero_point)

    def _write_add(self, a: QTensor, b: QTensor, out: QParams, hint: str) -> str:
        return self._fused("Add", [a.name, b.name], hint, s_a=np.float32(a.scale),
                           z_a=a.zero_point, s_b=np.float32(b.scale), z_b=b.zero_point,
                           inv_s=torch_kernels.inverse_scale(out.scale), z=out.zero_point)

    def embed_quantized(self, ids: str, positions: str, items: nn.Module, pos: nn.Module,
                        emb_scale: float, stub: nn.Module, hint: str) -> QTensor:
        """``quantize(item_emb[ids] * emb_scale + pos_emb[positions])`` as one
        ``EmbedQuantize`` node, the same float32 steps as ``embed``/Mul/Add/``quantize``."""
        check_quant_stub(stub, hint)
        item_table, item_scale = self._table(items, "item_emb")
        pos_table, pos_scale = self._table(pos, "pos_emb")
        out = self._output(stub)
        return out.of(self._fused(
            "EmbedQuantize", [ids, positions, item_table, item_scale, pos_table, pos_scale],
            hint, emb_scale=np.float32(emb_scale), inv_s=torch_kernels.inverse_scale(out.scale),
            z=out.zero_point))

    def linears_dequantized(self, x: QTensor, modules: list[nn.Module],
                            hints: list[str]) -> list[str]:
        """``[dequantize(linear(x)) for each module]`` (the attention's q, k, v): one
        ``RequantizeDequantize`` node per module after its MatMulInteger, giving
        DequantizeLinear's floats. (One matmul over q, k, v side by side was tried twice: with
        onnxruntime's Split after it, the split cost more than the two matmuls it saved; with a
        custom op requantizing each Linear's columns straight into its own output, ML-1M
        d=50 on a 2-core AVX2 EPYC, 1 thread: batch 1 3% faster, batch 256 1% slower, since
        the merged MatMulInteger saves ~3% at 12,800 rows and the per-row split loop took
        1.98 ms against 1.01 ms for three flat RequantizeDequantize passes.)"""
        outputs = []
        for module, hint in zip(modules, hints):
            parts = self._linear_parts(module, hint)
            outputs.append(self._fused("RequantizeDequantize", self._fused_matmul(x, parts, hint),
                                       f"{hint}.float", z=parts.out.zero_point,
                                       s=np.float32(parts.out.scale)))
        return outputs

    def score(self, hidden: QTensor, items: nn.Module, hint: str) -> str:
        """Scoring ``"fused"``: one ``Score`` node (the ``"int8"`` path's scores, bit for bit);
        the other paths as every INT8 backend writes them."""
        if self.scoring != "fused":
            return super().score(hidden, items, hint)
        table, row_scale = self._table(items, "item_emb")
        return self._fused("Score", [hidden.name, table, row_scale], hint,
                           s_h=np.float32(hidden.scale), z=hidden.zero_point)

    def score_top_k(self, hidden: QTensor, items: nn.Module, item_seq: str, exclude: str, k: str,
                    hint: str) -> tuple[str, str]:
        """Scoring ``"fused"``: one ``ScoreTopK`` node, the ``"int8"`` path's scores (bit for
        bit) and ``export.top_k``'s masking and tie rules without the (B, num_items + 1)
        matrix. Other paths: the shared composition (``score``, then ``masked_top_k``)."""
        if self.scoring != "fused":
            return super().score_top_k(hidden, items, item_seq, exclude, k, hint)
        table, row_scale = self._table(items, "item_emb")
        values, ids = self._fused("ScoreTopK", [hidden.name, table, row_scale, item_seq, exclude,
                                                k], hint, num_outputs=2,
                                  s_h=np.float32(hidden.scale), z=hidden.zero_point)
        return values, ids

    def add_linear(self, residual: QTensor, x: QTensor, linear: nn.Module, add: nn.Module,
                   linear_hint: str, add_hint: str) -> QTensor:
        """``add(residual, linear(x))`` (a residual connection): MatMulInteger and one
        ``RequantizeAdd`` node, which requantizes the Linear's output to its uint8 grid and
        adds it to the residual exactly as ``add`` does, in one pass."""
        check_add(add, add_hint)
        if isinstance(linear, nniq.LinearReLU):
            raise ValueError(f"{linear_hint}: a residual branch ends in a plain Linear")
        parts = self._linear_parts(linear, linear_hint)
        inputs = [*self._fused_matmul(x, parts, linear_hint), residual.name]
        out = self._output(add)
        return out.of(self._fused(
            "RequantizeAdd", inputs, add_hint, s_a=np.float32(residual.scale),
            z_a=residual.zero_point, s_b=np.float32(parts.out.scale), z_b=parts.out.zero_point,
            inv_s=torch_kernels.inverse_scale(out.scale), z=out.zero_point))

"""ONNX ops for the layers of an FP32 SASRec (``qat.model.SASRec`` before quantization).

``FloatLayers`` implements ``export.layer_emitter.LayerEmitter``, the interface the INT8
emitters (``export.int8_emitters``) implement too, so ``export.sasrec_graph`` writes the model's
structure once and both exports stay comparable. Activations are plain float tensor names; the
stubs of the quantized region are identities (so the interface's default compositions,
``linears_dequantized`` and ``add_linear``, are plain Linears and Adds here).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from export.graph_builder import FLOAT, GraphBuilder
from export.layer_emitter import LayerEmitter


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy()


class FloatLayers(LayerEmitter[str]):
    """Float32 MatMul/Add/LayerNormalization/Gather ops from ``nn.Linear``/``nn.LayerNorm``/
    ``nn.Embedding`` modules.

    Args:
        g: the graph being written.
    """

    kind = "fp32"
    hidden_type = FLOAT

    def __init__(self, g: GraphBuilder) -> None:
        super().__init__(g)
        self._tables: dict[int, str] = {}

    def _table(self, module: nn.Embedding, hint: str) -> str:
        if id(module) not in self._tables:  # the item table serves the lookup and scoring
            self._tables[id(module)] = self.g.initializer(_array(module.weight), hint)
        return self._tables[id(module)]

    def embed(self, ids: str, module: nn.Embedding, hint: str) -> str:
        """``table[ids]``: (B, T) int64 -> (B, T, d) float."""
        return self.g.node("Gather", [self._table(module, f"{hint}.weight"), ids], name=hint)

    def quantize(self, x: str, stub: nn.Module, hint: str) -> str:
        """QuantStub: identity in a float model."""
        return x

    def dequantize(self, x: str, hint: str) -> str:
        """DeQuantStub: identity in a float model."""
        return x

    def linear(self, x: str, module: nn.Linear, hint: str, *, relu: bool = False) -> str:
        """``x @ W^T + b`` (then ReLU): (..., in) -> (..., out)."""
        g = self.g
        weight = g.initializer(_array(module.weight).T, f"{hint}.weight_t")  # (in, out)
        y = g.node("MatMul", [x, weight], name=f"{hint}.matmul")
        if module.bias is not None:
            y = g.node("Add", [y, g.initializer(_array(module.bias), f"{hint}.bias")],
                       name=f"{hint}.bias_add")
        return g.node("Relu", [y], name=f"{hint}.relu") if relu else y

    def layer_norm(self, x: str, module: nn.LayerNorm, hint: str) -> str:
        """LayerNormalization over the last axis with the module's affine parameters."""
        g = self.g
        return g.node("LayerNormalization",
                      [x, g.initializer(_array(module.weight), f"{hint}.weight"),
                       g.initializer(_array(module.bias), f"{hint}.bias")],
                      name=hint, axis=-1, epsilon=float(module.eps))

    def add(self, a: str, b: str, module: nn.Module, hint: str) -> str:
        """Residual addition (``FloatFunctional.add``)."""
        return self.g.node("Add", [a, b], name=hint)

    def last_position(self, x: str, hint: str) -> str:
        """(B, T, d) -> (B, d): the last column."""
        return self.g.node("Gather", [x, self.g.scalar(-1, np.int64, "last")], name=hint, axis=1)

    def score(self, hidden: str, items: nn.Embedding, hint: str) -> str:
        """``hidden @ item_table^T``: (B, d) -> (B, num_items + 1), the table shared with the
        lookup (``Gemm`` with ``transB``)."""
        return self.g.node("Gemm", [hidden, self._table(items, "item_emb.weight")], name=hint,
                           transB=1)

    def hidden_value(self, hidden: str) -> str:
        """The final hidden state as exposed by the diagnostic output."""
        return hidden

    def metadata(self) -> dict[str, object]:
        """``sasrec_qat.scoring``: always ``"float"`` (a float32 Gemm)."""
        return {"sasrec_qat.scoring": "float"}

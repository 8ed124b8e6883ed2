"""The interface between the SASRec graph writer and a layer backend.

``export.sasrec_graph`` writes the model's structure once (embeddings, blocks, attention core,
scoring) and asks a ``LayerEmitter`` for the ops of each layer. A backend is one subclass that
writes only its own ops:

* FP32: ``export.float_layers.FloatLayers``; activations are float tensor names.
* INT8 (activations are ``export.int8_emitters.QTensor``, uint8 tensors with their qparams):
  ``PlainEmitter`` (plain ONNX ops), ``TorchExactEmitter`` (ONNX functions that round like
  torch) and ``FusedEmitter`` (custom ops of ``export.native_ops``), in
  ``export/int8_emitters/{plain,torch_exact,fused}.py``.

The INT8 ones are picked by name from ``export.int8_emitters.EMITTERS`` (a registry, as
onnxruntime's quantization tool maps op types to classes in ``registry.py``).

Four methods have a default here that composes the others (``embed_quantized``,
``linears_dequantized``, ``add_linear``,
``score_top_k``): a backend with a single op for the whole composition
(the fused kernels) overrides them; the others inherit them, so the graph writer calls the
same methods whatever the backend.

Rewrites that need the finished graph (an op folded into the op that wrote its input) are not
done while writing: a backend lists them in ``graph_passes``, functions that
``build_sasrec_onnx`` runs over the built model, in order (``export.fusion``).
"""
from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import onnx
from torch import nn

from export.graph_builder import GraphBuilder
from export.top_k import masked_top_k

Value = TypeVar("Value")  # what a backend passes between layers: a tensor name, or a QTensor
GraphPass = Callable[[onnx.ModelProto], Any]  # rewrites a built model in place


class LayerEmitter(abc.ABC, Generic[Value]):
    """Writes the ONNX ops of SASRec's layers into ``g``, for one backend.

    Args:
        g: the graph being written.

    Attributes:
        kind: the model kind written (``"fp32"`` or ``"int8"``, ``sasrec_qat.kind``).
        hidden_type: the ONNX element type of the final hidden state (``hidden_value``).
        graph_passes: functions run over the built model, in order (see the module docstring).
    """

    kind: ClassVar[str]
    hidden_type: ClassVar[int]
    graph_passes: ClassVar[tuple[GraphPass, ...]] = ()

    def __init__(self, g: GraphBuilder) -> None:
        self.g = g

    # -- what every backend writes ----------------------------------------------------------
    @abc.abstractmethod
    def embed(self, ids: str, module: nn.Module, hint: str) -> str:
        """Embedding lookup: (B, T) int64 ids -> (B, T, d) float rows."""

    @abc.abstractmethod
    def quantize(self, x: str, stub: nn.Module, hint: str) -> Value:
        """QuantStub: float -> the backend's activation."""

    @abc.abstractmethod
    def dequantize(self, x: Value, hint: str) -> str:
        """DeQuantStub: the backend's activation -> float."""

    @abc.abstractmethod
    def linear(self, x: Value, module: nn.Module, hint: str, *, relu: bool = False) -> Value:
        """``x @ W^T + b`` (then ReLU): (..., in) -> (..., out)."""

    @abc.abstractmethod
    def add(self, a: Value, b: Value, module: nn.Module, hint: str) -> Value:
        """Residual addition (``FloatFunctional.add`` / ``QFunctional.add``)."""

    @abc.abstractmethod
    def layer_norm(self, x: Value, module: nn.Module, hint: str) -> Value:
        """LayerNorm over the last axis with the module's affine parameters."""

    @abc.abstractmethod
    def last_position(self, x: Value, hint: str) -> Value:
        """(B, T, d) -> (B, d): the last column."""

    @abc.abstractmethod
    def score(self, hidden: Value, items: nn.Module, hint: str) -> str:
        """``hidden . item_table^T``: (B, d) -> (B, num_items + 1) float32 scores, the table
        shared with the item lookup."""

    @abc.abstractmethod
    def hidden_value(self, hidden: Value) -> str:
        """The final hidden state as exposed by the diagnostic output (of ``hidden_type``)."""

    def metadata(self) -> dict[str, object]:
        """Backend-specific ``metadata_props`` of the model (none by default)."""
        return {}

    # -- compositions a backend may write as one op -----------------------------------------
    def embed_quantized(self, ids: str, positions: str, items: nn.Module, pos: nn.Module,
                        emb_scale: float, stub: nn.Module, hint: str) -> Value:
        """``quantize(embed(ids) * emb_scale + embed(positions))``: the model's input.

        ``emb_scale`` is multiplied as the float32 constant it is in torch (``sqrt(d)`` as
        float32 times a float32 tensor).
        """
        g = self.g
        rows = self.embed(ids, items, "item_emb")
        rows = g.node("Mul", [rows, g.scalar(np.float32(emb_scale), np.float32, "emb_scale")],
                      name="item_emb.scaled")
        x = g.node("Add", [rows, self.embed(positions, pos, "pos_emb")], name="embedding")
        return self.quantize(x, stub, hint)

    def linears_dequantized(self, x: Value, modules: list[nn.Module],
                            hints: list[str]) -> list[str]:
        """``[dequantize(linear(x)) for each module]``: the attention's q, k, v, in float."""
        return [self.dequantize(self.linear(x, m, h), f"{h}.float")
                for m, h in zip(modules, hints)]

    def add_linear(self, residual: Value, x: Value, linear: nn.Module, add: nn.Module,
                   linear_hint: str, add_hint: str) -> Value:
        """``add(residual, linear(x))``: a residual connection."""
        return self.add(residual, self.linear(x, linear, linear_hint), add, add_hint)

    def score_top_k(self, hidden: Value, items: nn.Module, item_seq: str, exclude: str, k: str,
                    hint: str) -> tuple[str, str]:
        """``(top_k_scores, top_k_items)``, (B, k) float32 and int64: ``score`` then
        ``export.top_k.masked_top_k`` (its rules: history and ``exclude`` masked, ties by
        lower id)."""
        return masked_top_k(self.g, self.score(hidden, items, f"{hint}.scores"), item_seq,
                            exclude, k)

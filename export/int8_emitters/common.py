"""What every INT8 emitter shares: uint8 activations, int8 weights and tables, the base class.

Each emitter reproduces the arithmetic of the torch quantized module it is given (``torch.ao``
eager ``convert``); the weights are stored as INT8 initializers with float per-row scales.
Activations between ops are uint8 tensors (``QTensor``: name + scale + zero point), exactly the
``torch.quint8`` tensors of the torch model.

Written the same way by every backend (``Int8Emitter``):

Linear (``nnq.Linear``, ``nniq.LinearReLU``), input ``x_u8`` (scale ``s_x``, zero point ``z_x``),
weight ``W_s8`` (per-row scales ``s_w``, zero point 0), starts with::

    acc = MatMulInteger(x_u8, W_s8^T, z_x)      # exact int32 accumulation, an INT8 kernel

and each backend requantizes ``acc`` its own way. ``MatMulInteger`` runs as an INT8 kernel at
every onnxruntime optimisation level. Q/DQ around a float ``MatMul`` would be the usual QDQ
form, but onnxruntime then folds ``MatMul + Add`` into ``Gemm``, quantizes the float bias to
int32 and runs ``QGemm``, which is no longer what torch computes (one step off in ~0.07% of
outputs in a probe).

DeQuantStub: ``DequantizeLinear``, ``(u - z) * s`` with one rounding, as torch.

Embeddings (weight-only ``nnq.Embedding``, ``per_channel_affine_float_qparams`` with zero point
128 per row): ``Cast(Gather(table_s8, ids)) * Gather(row_scale, ids)``, bit-identical to torch's
``(u - 128) * scale``.

Scoring (``scoring``), full-precision float scores, never requantized (docs/design.md,
section 2), by one of three paths:

* ``"int8"``: ``Cast(MatMulInteger(h_u8, Transpose(table_s8), z_h)) * (s_h * row_scale)``, exact
  int32 products, then one float32 rounding per score;
* ``"float"``: ``Gemm(DequantizeLinear(h_u8), Cast(table_s8) * row_scale, transB=1)``: torch's
  own formula for the converted model (``SASRec.score``: dequantized hidden times the dequantized
  table). The file stores the int8 table; onnxruntime folds ``Cast * row_scale`` into a float32
  constant when it creates the session (4x the table's memory), and the product runs as a
  float32 GEMM. Where int8 GEMMs gain nothing (x86 without VNNI: u8 x s8 products go through
  16-bit pair sums, at most the float32 FMA rate) while the int8 path adds a Cast and a Mul over
  the (B, num_items + 1) output, this path is faster at large catalogues. Scores differ from the
  int8 path in the last float bits (a different summation), so near-ties may order differently.
* ``"fused"`` (the fused backend only, its default): the ``"int8"`` path's scores in one custom
  op (``FusedEmitter``).

What differs between backends (``_write_quantize``, ``_write_linear``, ``_write_layer_norm``,
``_write_add``) is in ``plain.py``, ``torch_exact.py`` and ``fused.py`` next to this file.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.ao.nn import quantized as nnq
from torch.ao.nn.intrinsic import quantized as nniq

from export.graph_builder import FLOAT, UINT8, GraphBuilder
from export.layer_emitter import LayerEmitter

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


@dataclass(frozen=True)
class QParams:
    """A quantized module's output qparams (float32 scale, uint8 zero point) and the
    initializers holding them: what a ``QTensor`` is, but its name."""

    scale: float
    zero_point: int
    scale_name: str
    zero_point_name: str

    def of(self, name: str) -> QTensor:
        """The tensor ``name`` quantized with these qparams."""
        return QTensor(name, self.scale, self.zero_point, self.scale_name, self.zero_point_name)


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
class LinearParts:
    """A quantized Linear's arrays: int8 weight transposed (in, out), float32 per-column
    weight scales and bias, and its output qparams."""

    weight_t: np.ndarray
    weight_scale: np.ndarray
    bias: np.ndarray
    out: QParams


class Int8Emitter(LayerEmitter[QTensor]):
    """INT8 ONNX ops from the modules of a converted SASRec: the part every backend shares.

    The public layer methods check the module, read its constants and output qparams, and hand
    them to the backend's ``_write_*`` method, which writes that backend's ops and returns the
    uint8 output's name.

    Args:
        g: the graph being written.

    Attributes:
        name: the registry name (``export.int8_emitters.EMITTERS``), set on registration.
        torch_exact: the backend rounds exactly like torch (``sasrec_qat.torch_exact``).
        fused: the backend writes the custom ops of ``export.native_ops`` (``sasrec_qat.fused``).
        scoring: the scoring path, one of the class's ``scoring_paths`` (module docstring;
            ``sasrec_qat.scoring``); the backend's ``default_scoring`` when not given.
        max_abs_weight: the largest |int8| of any Linear weight or table written so far
            (``sasrec_qat.max_abs_weight_int``: above 64, u8 x s8 kernels on AVX2 without VNNI
            can saturate).
    """

    kind = "int8"
    hidden_type = UINT8
    name: ClassVar[str]
    torch_exact: ClassVar[bool]
    fused: ClassVar[bool]
    scoring_paths: ClassVar[tuple[str, ...]] = ("int8", "float")
    default_scoring: ClassVar[str] = "int8"

    def __init__(self, g: GraphBuilder, *, scoring: str | None = None) -> None:
        super().__init__(g)
        scoring = scoring or self.default_scoring
        if scoring not in self.scoring_paths:
            raise ValueError(f"the {self.name!r} INT8 backend scores by "
                             f"{' or '.join(repr(p) for p in self.scoring_paths)}, not "
                             f"{scoring!r}")
        self.scoring = scoring
        self._tables: dict[int, tuple[str, str]] = {}
        self.max_abs_weight = 0

    # -- what each backend writes -----------------------------------------------------------
    @abc.abstractmethod
    def _write_quantize(self, x: str, out: QParams, hint: str) -> str:
        """float ``x`` -> uint8 with ``out``'s qparams (torch's ``quantize_per_tensor``)."""

    @abc.abstractmethod
    def _write_linear(self, x: QTensor, parts: LinearParts, hint: str, *, relu: bool) -> str:
        """uint8 ``x`` -> uint8 ``[relu](x W^T + b)`` requantized to ``parts.out``."""

    @abc.abstractmethod
    def _write_layer_norm(self, x: QTensor, gamma: str, beta: str, module: nn.Module,
                          out: QParams, hint: str) -> str:
        """uint8 ``x`` -> uint8 LayerNorm over the last axis (``quantized::layer_norm``)."""

    @abc.abstractmethod
    def _write_add(self, a: QTensor, b: QTensor, out: QParams, hint: str) -> str:
        """uint8 ``a``, ``b`` -> uint8 ``a + b`` (``quantized::add``)."""

    # -- helpers ----------------------------------------------------------------------------
    def _qparams(self, scale: float, zero_point: int) -> tuple[str, str]:
        if not 0 <= zero_point <= 255:
            raise ValueError(f"activation zero point {zero_point} is outside uint8")
        return (self.g.scalar(np.float32(scale), np.float32, "scale"),
                self.g.scalar(zero_point, np.uint8, "zero_point"))

    def _output(self, module: nn.Module) -> QParams:
        """The qparams of a module's quantized output, and their constants."""
        scale = float(np.float32(torch.as_tensor(module.scale).reshape(-1)[0]))
        zero_point = int(torch.as_tensor(module.zero_point).reshape(-1)[0])
        return QParams(scale, zero_point, *self._qparams(scale, zero_point))

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

    def _linear_parts(self, module: nn.Module, hint: str) -> LinearParts:
        """The arrays of ``module`` (checked to be a converted quantized Linear)."""
        if not isinstance(module, nnq.Linear):  # nniq.LinearReLU subclasses nnq.Linear
            raise ValueError(f"{hint}: expected a quantized nnq.Linear, got "
                             f"{type(module).__name__}; convert the QAT model first")
        ints, w_scale = per_row_int8(module.weight())  # (out, in), (out,)
        self.max_abs_weight = max(self.max_abs_weight, int(np.abs(ints).max(initial=0)))
        bias = module.bias()
        bias = (np.zeros(ints.shape[0], np.float32) if bias is None
                else bias.detach().float().numpy())
        return LinearParts(np.ascontiguousarray(ints.T), w_scale, bias, self._output(module))

    def _matmul_integer(self, x: QTensor, parts: LinearParts, hint: str) -> str:
        """``MatMulInteger(x_u8, W_s8^T, z_x)``: the Linear's exact int32 accumulator."""
        weight = self.g.initializer(parts.weight_t, f"{hint}.weight_int8_t")  # (in, out)
        return self.g.node("MatMulInteger", [x.name, weight, x.zero_point_name],
                           name=f"{hint}.acc")

    def _matmul_scale_bias(self, x: QTensor, parts: LinearParts,
                           hint: str) -> tuple[str, str, str]:
        """``(acc, s_w, b)``: the accumulator and the float32 per-column weight scale and bias
        initializers, which the plain and torch-exact requantizations take as they are."""
        acc = self._matmul_integer(x, parts, hint)
        return (acc, self.g.initializer(parts.weight_scale, f"{hint}.weight_scale"),
                self.g.initializer(parts.bias, f"{hint}.bias"))

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
        check_quant_stub(stub, hint)
        out = self._output(stub)
        return out.of(self._write_quantize(x, out, hint))

    def dequantize(self, x: QTensor, hint: str) -> str:
        """uint8 -> float (``nnq.DeQuantize``)."""
        return self.g.node("DequantizeLinear", [x.name, x.scale_name, x.zero_point_name],
                           name=hint)

    def linear(self, x: QTensor, module: nn.Module, hint: str, *, relu: bool = False) -> QTensor:
        """``nnq.Linear`` / fused ``LinearReLU``: ``acc`` as in the module docstring, then the
        backend's requantization (with ReLU for ``relu`` or a ``LinearReLU``)."""
        parts = self._linear_parts(module, hint)
        relu = relu or isinstance(module, nniq.LinearReLU)
        return parts.out.of(self._write_linear(x, parts, hint, relu=relu))

    def layer_norm(self, x: QTensor, module: nn.Module, hint: str) -> QTensor:
        """``nnq.LayerNorm`` over the last axis."""
        if not isinstance(module, nnq.LayerNorm):
            raise ValueError(f"{hint}: expected nnq.LayerNorm, got {type(module).__name__}")
        g = self.g
        gamma = g.initializer(module.weight.detach().float().numpy(), f"{hint}.weight")
        beta = g.initializer(module.bias.detach().float().numpy(), f"{hint}.bias")
        out = self._output(module)
        return out.of(self._write_layer_norm(x, gamma, beta, module, out, hint))

    def add(self, a: QTensor, b: QTensor, module: nn.Module, hint: str) -> QTensor:
        """``QFunctional.add`` (``quantized::add``): dequantize both, add, requantize."""
        check_add(module, hint)
        out = self._output(module)
        return out.of(self._write_add(a, b, out, hint))

    def last_position(self, x: QTensor, hint: str) -> QTensor:
        """(B, T, d) -> (B, d): the last column, qparams unchanged."""
        name = self.g.node("Gather", [x.name, self.g.scalar(-1, np.int64, "last")], name=hint,
                           axis=1)
        return QTensor(name, x.scale, x.zero_point, x.scale_name, x.zero_point_name)

    def score(self, hidden: QTensor, items: nn.Module, hint: str) -> str:
        """(B, d) uint8 hidden x int8 item table -> (B, num_items + 1) float32 scores, by the
        ``scoring`` path (module docstring)."""
        g = self.g
        table, row_scale = self._table(items, "item_emb")
        if self.scoring == "float":  # Cast * row_scale: constants, folded by onnxruntime
            scale = g.node("Unsqueeze", [row_scale, g.ints([-1], "axes_last")],
                           name=f"{hint}.row_scale")
            table_f = g.node("Mul", [g.node("Cast", [table], name=f"{hint}.table_f32", to=FLOAT),
                                     scale], name=f"{hint}.table_dequantized")
            return g.node("Gemm", [self.dequantize(hidden, f"{hint}.hidden_float"), table_f],
                          name=hint, transB=1)
        table_t = g.node("Transpose", [table], name=f"{hint}.table_t", perm=[1, 0])  # (d, N+1)
        acc = g.node("MatMulInteger", [hidden.name, table_t, hidden.zero_point_name],
                     name=f"{hint}.acc")
        scale = g.node("Mul", [hidden.scale_name, row_scale], name=f"{hint}.acc_scale")
        return g.node("Mul", [g.node("Cast", [acc], name=f"{hint}.acc_f32", to=FLOAT), scale],
                      name=hint)

    def hidden_value(self, hidden: QTensor) -> str:
        """The final hidden state as exposed by the diagnostic output (uint8)."""
        return hidden.name

    def metadata(self) -> dict[str, object]:
        """``sasrec_qat.max_abs_weight_int``, ``.torch_exact``, ``.fused`` and ``.scoring``."""
        return {"sasrec_qat.max_abs_weight_int": self.max_abs_weight,
                "sasrec_qat.torch_exact": int(self.torch_exact),
                "sasrec_qat.fused": int(self.fused), "sasrec_qat.scoring": self.scoring}


def check_quant_stub(stub: nn.Module, hint: str) -> None:
    """``stub`` is a converted QuantStub with uint8 output."""
    if not isinstance(stub, nnq.Quantize):
        raise ValueError(f"{hint}: expected nnq.Quantize, got {type(stub).__name__}")
    if stub.dtype != torch.quint8:
        raise ValueError(f"{hint}: activations must be quint8, got {stub.dtype}")


def check_add(module: nn.Module, hint: str) -> None:
    """``module`` is a converted residual add (``FloatFunctional`` -> ``QFunctional``)."""
    if not isinstance(module, nnq.QFunctional):
        raise ValueError(f"{hint}: expected QFunctional, got {type(module).__name__}")

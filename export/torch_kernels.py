"""ONNX local functions that round exactly like torch's x86 quantized CPU kernels.

onnxruntime's ``QuantizeLinear``/``LayerNormalization`` compute the same math as torch's
``quantize_per_tensor``/``quantized::layer_norm``/``quantized::add``/``quantized::linear`` but
round differently in a few elements per 10^5. One flipped step early in SASRec moves later
layers by several steps (on ML-1M 4% of users' top-10 lists changed). These functions spell out
torch's float32 arithmetic op for op, so the uint8 outputs are torch's bit for bit (checked
layer by layer on ML-1M: 0 differing elements). onnxruntime inlines them at load time.

``fma(a, b, c)`` (a float32 fused multiply-add, one rounding, as the compiled kernels use) is
computed in float64, where the product of two float32 is exact, then cast back; a double
rounding would need the float64 sum to land exactly on a float32 midpoint.

Functions (domain ``DOMAIN``; ``s``/``z`` are float32 scales and uint8 zero points; ``1/s`` is
passed in as ``inv_s = inverse_scale(s)``, a float32 constant):

* ``QuantizePerTensor(x, inv_s, z)``: fbgemm ``Quantize``: ``sat(rint(fma(x, 1/s, z)))``.
* ``Requantize(acc, s_x, s_w, b, s, z)`` and ``RequantizeRelu``: fbgemm's float-bias output
  pipeline of ``quantized::linear``: ``m = s_x * s_w``,
  ``sat(rint([relu]((acc + b / m) * (m / s))) + z)``.
* ``LayerNorm(u, s_x, z_x, gamma, beta, eps, inv_s, z)``: ``mean = sum(u) / N``,
  ``var = max(fma(-mean, mean, sum(u^2) / N), 0)`` (integer sums),
  ``r = f32(s_x / sqrt(f64(var * s_x * s_x) + eps))``,
  ``y = fma(((u - z_x) - (mean - z_x)) * r, gamma, beta)``; rounded
  ``sat(rint(y * (1/s)) + z)`` in the first ``32 * floor(N / 32)`` columns (the vectorised
  part) and ``sat(rint(y * (1/s) + z))`` in the others (the scalar remainder);
  ``LayerNormVector`` when N is a multiple of 32 (no remainder).
* ``Add(a, s_a, z_a, b, s_b, z_b, inv_s, z)``: the vectorised ``quantized::add``:
  ``c = fma(a, s_a, s_a * -z_a) + fma(b, s_b, s_b * -z_b)``, ``sat(rint(c * (1/s)) + z)``.
  (The last ``numel % 64`` elements of each thread's range take torch's scalar path, which can
  differ on a near-tie.)

Measured on torch 2.13 (CPU capability AVX512, i.e. torch's AVX2/AVX512 kernels); other builds
(ARM, no FBGEMM) round differently and then agree within one step per op.
"""
from __future__ import annotations

import functools

import numpy as np
import onnx

from export.graph_builder import DOUBLE, FLOAT, INT32, GraphBuilder

DOMAIN = "sasrec_qat.torch"
LAYER_NORM_VECTOR = 32  # columns per vectorised chunk of torch's quantized LayerNorm (x86)


def _cast(g: GraphBuilder, x: str, to: int, hint: str) -> str:
    return g.node("Cast", [x], name=hint, to=to)


def _f32(g: GraphBuilder, value: float) -> str:
    return g.scalar(np.float32(value), np.float32, "c")


def fma(g: GraphBuilder, a: str, b: str, c: str, hint: str) -> str:
    """float32 ``a * b + c`` with a single rounding (computed in float64)."""
    wide = [_cast(g, t, DOUBLE, f"{hint}_{n}64") for t, n in ((a, "a"), (b, "b"), (c, "c"))]
    y = g.node("Add", [g.node("Mul", wide[:2], name=f"{hint}_mul64"), wide[2]],
               name=f"{hint}_add64")
    return _cast(g, y, FLOAT, hint)


def _round_to_u8(g: GraphBuilder, steps: str, zero_point: str, hint: str) -> str:
    """``sat(rint(steps) + zero_point)``: QuantizeLinear with scale 1."""
    return g.node("QuantizeLinear", [steps, _f32(g, 1.0), zero_point], name=hint)


def inverse_scale(scale: float) -> np.float32:
    """float32 ``1 / s``, as the kernels compute it; pass it to the functions as ``inv_s``.

    Computed here, not in the graph: onnxruntime's DivMulFusion rewrites ``Mul(y, Div(1, s))``
    into ``Div(y, s)``, which is not torch's arithmetic (``y / s`` and ``y * f32(1/s)`` can differ
    in the last bit; no rounded step flipped in the 10^6-value tests, but nothing rules it out).
    """
    return np.float32(1.0) / np.float32(scale)


def _function(name: str, inputs: list[str]) -> GraphBuilder:
    g = GraphBuilder(name, function=True)
    for i in inputs:
        g.add_input(i)
    return g


def _finish(g: GraphBuilder, output: str, doc: str) -> onnx.FunctionProto:
    g.add_output(output)
    return g.build_function(DOMAIN, doc)


@functools.lru_cache(maxsize=None)
def quantize_per_tensor() -> onnx.FunctionProto:
    """``QuantizePerTensor(x, inv_s, z) -> u8``: ``sat(rint(fma(x, inv_s, z)))``."""
    g = _function("QuantizePerTensor", ["x", "inv_s", "z"])
    steps = fma(g, "x", "inv_s", _cast(g, "z", FLOAT, "z_f32"), "steps")
    return _finish(g, _round_to_u8(g, steps, g.scalar(0, np.uint8, "zero"), "y"),
                   "torch.quantize_per_tensor (fbgemm), quint8")


@functools.lru_cache(maxsize=None)
def requantize(relu: bool) -> onnx.FunctionProto:
    """``Requantize[Relu](acc, s_x, s_w, b, s, z) -> u8``: fbgemm's float-bias output stage."""
    g = _function("RequantizeRelu" if relu else "Requantize", ["acc", "s_x", "s_w", "b", "s", "z"])
    m = g.node("Mul", ["s_x", "s_w"], name="acc_scale")  # per output column
    acc = g.node("Add", [_cast(g, "acc", FLOAT, "acc_f32"), g.node("Div", ["b", m], name="b_acc")],
                 name="acc_b")
    steps = g.node("Mul", [acc, g.node("Div", [m, "s"], name="multiplier")], name="steps")
    if relu:
        steps = g.node("Relu", [steps], name="steps_relu")
    doc = "quantized::linear requantization (fbgemm, float bias)" + (" + ReLU" if relu else "")
    return _finish(g, _round_to_u8(g, steps, "z", "y"), doc)


@functools.lru_cache(maxsize=None)
def layer_norm(scalar_tail: bool = True) -> onnx.FunctionProto:
    """``LayerNorm(u, s_x, z_x, gamma, beta, eps, inv_s, z) -> u8`` over the last axis.

    ``scalar_tail=False`` (``LayerNormVector``) may be used only when the width is a multiple
    of ``LAYER_NORM_VECTOR``: every column then takes the vectorised rounding, and the function
    skips computing the scalar remainder's.
    """
    g = _function("LayerNorm" if scalar_tail else "LayerNormVector",
                  ["u", "s_x", "z_x", "gamma", "beta", "eps", "inv_s", "z"])
    axes = g.ints([-1], "axes")
    ints = _cast(g, "u", INT32, "u_i32")
    width = g.node("Gather", [g.node("Shape", ["u"], name="shape"), g.scalar(-1, np.int64, "last")],
                   name="width")
    n = _cast(g, width, FLOAT, "n")
    row_sum = _cast(g, g.node("ReduceSum", [ints, axes], name="sum_i32", keepdims=1), FLOAT, "sum")
    row_sq = _cast(g, g.node("ReduceSum", [g.node("Mul", [ints, ints], name="sq"), axes],
                             name="sum_sq_i32", keepdims=1), FLOAT, "sum_sq")
    mean = g.node("Div", [row_sum, n], name="mean")
    z_x = _cast(g, "z_x", FLOAT, "z_x_f32")
    mean_centred = g.node("Sub", [mean, z_x], name="mean_centred")
    var = fma(g, g.node("Neg", [mean], name="neg_mean"), mean,
              g.node("Div", [row_sq, n], name="mean_sq"), "var_raw")
    var = g.node("Max", [var, _f32(g, 0.0)], name="var")
    var_x = g.node("Mul", [g.node("Mul", [var, "s_x"], name="var_s"), "s_x"], name="var_x")
    std = g.node("Sqrt", [g.node("Add", [_cast(g, var_x, DOUBLE, "var_x64"), "eps"],
                                 name="var_eps")], name="std64")
    ratio = _cast(g, g.node("Div", [_cast(g, "s_x", DOUBLE, "s_x64"), std], name="ratio64"), FLOAT,
                  "ratio")
    centred = g.node("Sub", [g.node("Sub", [_cast(g, "u", FLOAT, "u_f32"), z_x], name="dq"),
                             mean_centred], name="centred")
    y = fma(g, g.node("Mul", [centred, ratio], name="normed"), "gamma", "beta", "affine")
    steps = g.node("Mul", [y, "inv_s"], name="steps")
    if not scalar_tail:
        return _finish(g, _round_to_u8(g, steps, "z", "y"),
                       "quantized::layer_norm (x86 kernel), width % 32 == 0")
    chunk = g.scalar(LAYER_NORM_VECTOR, np.int64, "chunk")
    vector_end = g.node("Unsqueeze", [g.node("Mul", [g.node("Div", [width, chunk], name="chunks"),
                                                     chunk], name="vector_end_0d"),
                                      g.ints([0], "axis0")], name="vector_end")  # truncating Div
    last = g.ints([-1], "last_axis")
    head = g.node("Slice", [steps, g.ints([0], "start"), vector_end, last], name="steps_vector")
    tail = g.node("Slice", [steps, vector_end, g.ints([np.iinfo(np.int64).max], "end"), last],
                  name="steps_tail")
    vector = _round_to_u8(g, head, "z", "y_vector")
    tail = _round_to_u8(g, g.node("Add", [tail, _cast(g, "z", FLOAT, "z_f32")], name="steps_z"),
                        g.scalar(0, np.uint8, "zero"), "y_tail")
    return _finish(g, g.node("Concat", [vector, tail], name="y", axis=-1),
                   "quantized::layer_norm (x86 kernel)")


@functools.lru_cache(maxsize=None)
def add() -> onnx.FunctionProto:
    """``Add(a, s_a, z_a, b, s_b, z_b, inv_s, z) -> u8``: vectorised ``quantized::add``."""
    g = _function("Add", ["a", "s_a", "z_a", "b", "s_b", "z_b", "inv_s", "z"])
    terms = []
    for t in ("a", "b"):
        neg_z = g.node("Neg", [_cast(g, f"z_{t}", FLOAT, f"z_{t}_f32")], name=f"neg_z_{t}")
        offset = g.node("Mul", [f"s_{t}", neg_z], name=f"offset_{t}")  # float32 s * -z
        terms.append(fma(g, _cast(g, t, FLOAT, f"{t}_f32"), f"s_{t}", offset, f"dq_{t}"))
    steps = g.node("Mul", [g.node("Add", terms, name="sum"), "inv_s"], name="steps")
    return _finish(g, _round_to_u8(g, steps, "z", "y"), "quantized::add (vectorised kernel)")

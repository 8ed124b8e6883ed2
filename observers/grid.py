"""Integer grids shared by every quantizer, the straight-through estimator, and the base classes.

Every method in this package quantizes onto one of two integer grids, chosen so that the INT8
model produced by ``torch.ao.quantization.convert`` computes exactly what the fake-quant model
computed during training.

Weights: signed, symmetric, zero point 0, one scale per output row (``ch_axis=0``)::

    w_q = q * scale,    q integer in [-Qw, Qw]

with ``Qw = 64`` at 8 bits and ``Qw = 2**(bits - 1) - 1`` below. 64 rather than 127 because on
AVX2 without VNNI the x86/fbgemm kernels add u8 x s8 products pairwise in saturating int16
(``vpmaddubsw``): exact only if ``2 * 255 * max|q| <= 32767``, i.e. ``|q| <= 64``
("8-bit storage, saturation-safe range"). ``full_range=True`` gives ``Qw = 127`` for machines
with VNNI. Linear weights report ``torch.qint8`` / ``torch.per_channel_symmetric``; embedding
tables (``embedding=True``) report the same values as ``torch.quint8`` /
``torch.per_channel_affine_float_qparams`` with a per-row float zero point of 128
(``u = q + 128`` in ``[128 - Qw, 128 + Qw]``), which is what ``nnqat.Embedding`` and
``nnq.Embedding.from_float`` require.

Activations: unsigned, per tensor, affine, ``torch.quint8``, integer zero point::

    x_q = (clamp(rint(fma(x, 1 / scale, zp)), 0, 255) - zp) * scale

rounded exactly as ``torch.quantize_per_tensor`` (fbgemm) rounds: ``1 / scale`` in float32, one
float32 fused multiply-add, the zero point added *before* rounding half to even
(:func:`quantize_per_tensor_rint`). The clamp is the full dtype range, the same clamp the
converted model's requantization applies. Where the converted model quantizes a float tensor
(``nnq.Quantize``, the QuantStubs) the fake-quant output is therefore its dequantized output bit
for bit. Its requantizing ops round their own integer arithmetic instead: ``quantized::linear``
``rint(acc * M) + zp``, ``quantized::layer_norm``/``add`` ``rint(y * (1 / scale)) + zp`` in
their vectorised part; the fake-quant sees the float value, not those, so there the two can
differ by one step on near-ties, and with an odd ``zp`` at exact ties (``rint(k + 1/2 + zp)`` and
``rint(k + 1/2) + zp`` are then different neighbours); tests/test_observers_convert.py checks
both cases.

Exactness contract (``convert`` ignores the fake-quant forward; it re-quantizes the raw float
weight with round-to-nearest using ``calculate_qparams()``):

* ``calculate_qparams()`` returns exactly the float32 scale tensor the forward multiplies by.
* Weight forwards return ``q * scale`` with ``q`` an integer in range, so
  ``dequantize(quantize(w_q)) == w_q`` bit for bit.
* Every weight quantizer has ``fold(weight)``: it returns the grid values of the current
  forward (hard-rounded where the method is soft), disables the observer and switches the
  module to round-to-nearest on its frozen grid. The trainer assigns
  ``weight.data = fq.fold(weight)`` (or calls :func:`fold_weights_`) before ``convert``; convert's
  own round-to-nearest then reproduces the same integers, and the fake-quant model keeps
  computing what the INT8 model computes.

Initialisation: quantizers whose state depends on data initialise it on the first forward with
the observer enabled (an ``initialized`` buffer records it, so a loaded state dict is not
re-initialised). Per-channel state has unknown length until then; it starts with one element
and is resized in place (Parameters keep their identity, so an optimizer built right after
``prepare_qat`` stays valid as long as its first ``step()`` follows the first forward).
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch.ao.quantization import FakeQuantizeBase

__all__ = [
    "ACT_QUANT_MAX",
    "ACT_QUANT_MIN",
    "ACTIVATION_BITS",
    "EMBEDDING_ZERO_POINT",
    "EPS",
    "WEIGHT_BITS",
    "ActivationFakeQuantize",
    "StraightThrough",
    "WeightFakeQuantize",
    "absmax_scale",
    "affine_qparams",
    "channel_view",
    "check_bits",
    "fake_quant_affine",
    "fake_quant_per_tensor",
    "fixed_grid_fake_quant",
    "fma_float32_exact",
    "fold_weights_",
    "quantize_per_tensor_rint",
    "round_ste",
    "straight_through",
    "sum_to_channels",
    "weight_qmax",
]

ACT_QUANT_MIN = 0
ACT_QUANT_MAX = 255
ACTIVATION_BITS = (8,)
EMBEDDING_ZERO_POINT = 128
WEIGHT_BITS = (2, 3, 4, 5, 6, 7, 8)
SATURATION_SAFE_QMAX = 64  # 2 * 255 * 64 = 32640 <= 32767 (int16 pair sums of u8 x s8)
EPS = torch.finfo(torch.float32).eps


# --------------------------------------------------------------------------------------------
# Grid definitions (pure functions)
# --------------------------------------------------------------------------------------------


def check_bits(bits: int, supported: Sequence[int], what: str) -> int:
    """Return ``bits`` if ``what`` supports it, else raise ``ValueError`` listing the choices.

    >>> check_bits(4, (4, 8), "APoT weights")
    4
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in supported:
        raise ValueError(
            f"{what}: bits={bits!r} is not supported; supported bits are {tuple(supported)}"
        )
    return bits


def weight_qmax(bits: int, *, full_range: bool = False) -> int:
    """Largest weight integer ``Qw`` of the symmetric grid ``[-Qw, Qw]``.

    ``Qw = 64`` at 8 bits (saturation-safe on AVX2 without VNNI, see the module docstring),
    127 with ``full_range=True``; ``Qw = 2**(bits - 1) - 1`` for 2..7 bits (``full_range`` has
    no effect there: those grids are already within +-64).

    >>> [weight_qmax(b) for b in (2, 4, 8)], weight_qmax(8, full_range=True)
    ([1, 7, 64], 127)
    """
    check_bits(bits, WEIGHT_BITS, "weight quantization")
    if bits == 8:
        return 127 if full_range else SATURATION_SAFE_QMAX
    return 2 ** (bits - 1) - 1


class StraightThrough(torch.autograd.Function):
    """Apply a piecewise-constant ``fn`` forward; pass the gradient through unchanged.

    Forward ``y = fn(x)``, backward ``dL/dx = dL/dy`` (the straight-through estimator, Bengio et
    al. 2013, https://arxiv.org/abs/1308.3432). Written once and used for rounding
    (:func:`round_ste`) and for APoT's nearest-level projection. The forward value is exactly
    ``fn(x)``; the ``x + (fn(x) - x).detach()`` idiom can be an ulp off.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return fn(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output, None


def straight_through(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``fn(x)`` forward, identity gradient backward (see :class:`StraightThrough`)."""
    return StraightThrough.apply(x, fn)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even (``torch.round``, like ``nearbyint`` in torch's kernels) with STE.

    >>> x = torch.tensor([0.4, 0.5, 1.5, 2.6], requires_grad=True)
    >>> round_ste(x).sum().backward(); x.grad
    tensor([1., 1., 1., 1.])
    """
    return StraightThrough.apply(x, torch.round)


def flag(buffer: torch.Tensor) -> bool:
    """A one-element 0/1 flag buffer (``observer_enabled``, ``initialized``...) as a bool.

    One operator (``item``) where ``buffer[0] == 1`` costs three (select, eq, item): a quantized
    SASRec reads ~80 flags per training step, and on a GPU the step is bound by host time per
    operator. The flags are host tensors (``_GridFakeQuantize.HOST_BUFFERS``): no device sync.

    >>> flag(torch.tensor([1], dtype=torch.uint8)), flag(torch.tensor([0], dtype=torch.uint8))
    (True, False)
    """
    return bool(buffer.item())


def channel_view(t: torch.Tensor, x: torch.Tensor, ch_axis: int = 0) -> torch.Tensor:
    """Reshape a per-channel vector ``t`` so it broadcasts against ``x`` along ``ch_axis``."""
    if t.numel() == 1:
        return t.reshape([1] * x.dim())
    shape = [1] * x.dim()
    shape[ch_axis] = -1
    return t.reshape(shape)


def sum_to_channels(term: torch.Tensor, param: torch.Tensor, ch_axis: int = 0) -> torch.Tensor:
    """``term`` (shaped like the quantized tensor) summed onto ``param``'s shape: per channel
    for a per-channel parameter, over everything for a one-element one (also a per-channel
    parameter not yet initialised). What autograd does to the gradient of a broadcast
    parameter, for hand-written backwards.

    >>> sum_to_channels(torch.ones(2, 3), torch.zeros(2)), sum_to_channels(torch.ones(2, 3),
    ...                                                                     torch.zeros(1))
    (tensor([3., 3.]), tensor([6.]))
    """
    return term.sum_to_size(channel_view(param, term, ch_axis).shape).reshape(param.shape)


def fake_quant_affine(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | float,
    quant_min: int,
    quant_max: int,
    ch_axis: Optional[int] = None,
) -> torch.Tensor:
    """Quantize-dequantize with straight-through rounding (Jacob et al. 2018, arXiv:1712.05877).

    .. math::
        x_{out} = (\\mathrm{clamp}(\\mathrm{round}(x / s) + z, q_{min}, q_{max}) - z) \\cdot s

    Gradient w.r.t. ``x``: 1 where ``q_min <= round(x/s) + z <= q_max`` (inclusive, torch's
    fake-quantize STE mask), 0 outside; gradients also flow to ``scale`` / ``zero_point`` if they
    require grad (LSQ). ``ch_axis`` set: ``scale``/``zero_point`` are per-channel vectors.
    ``zero_point`` must already be integer-valued. Rounds ``x / s`` (the weight grids; zero point
    0); activations use :func:`fake_quant_per_tensor`, which rounds like
    ``torch.quantize_per_tensor``.

    >>> fake_quant_affine(torch.tensor([-1.0, 0.26, 9.0]), torch.tensor([0.5]), 2.0, 0, 7)
    tensor([-1.0000,  0.5000,  2.5000])
    """
    if ch_axis is not None:
        scale = channel_view(scale, x, ch_axis)
        if isinstance(zero_point, torch.Tensor):
            zero_point = channel_view(zero_point, x, ch_axis)
    if not _learnable(scale, zero_point):  # fixed grid: one autograd node, same values
        with torch.no_grad():
            q = torch.round(x / scale).add_(zero_point)
        return fixed_grid_fake_quant(x, q, scale, zero_point, quant_min, quant_max)
    q = torch.clamp(round_ste(x / scale) + zero_point, quant_min, quant_max)
    return (q - zero_point) * scale


def _learnable(*qparams: torch.Tensor | float) -> bool:
    """Whether gradients must reach any of ``qparams`` (a learned scale or zero point)."""
    return torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in qparams)


class FixedGridFakeQuant(torch.autograd.Function):
    """Fake quantization on a grid that gets no gradient, as one autograd node.

    Forward, from the integers ``q`` the caller rounded (no grad)::

        x_out = (clamp(q, q_min, q_max) - z) * s

    Backward, the straight-through estimator of :func:`fake_quant_affine`:
    ``dL/dx = dL/dx_out * [q_min <= q <= q_max]``. The same values and gradients as the
    composed ops (``x / s``, rounding, ``+ z``, clamp, ``- z``, ``* s``, each with its own
    backward node), in 3 forward and 1 backward operators instead of about 20: a QAT step on a
    GPU is bound by the number of small kernels it launches (issue 12), and a quantized SASRec
    runs this for every weight and activation. ``s`` and ``z`` broadcast against ``q``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, q: torch.Tensor,  # type: ignore[override]
                scale: torch.Tensor, zero_point: torch.Tensor | float, quant_min: int,
                quant_max: int) -> torch.Tensor:
        clamped = torch.clamp(q, quant_min, quant_max)
        ctx.save_for_backward(clamped == q)
        ctx.x_dtype = x.dtype
        return clamped.sub_(zero_point).mul_(scale)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return (grad_output * inside).to(ctx.x_dtype), None, None, None, None, None


def fixed_grid_fake_quant(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
                          zero_point: torch.Tensor | float, quant_min: int,
                          quant_max: int) -> torch.Tensor:
    """``(clamp(q, q_min, q_max) - z) * s`` with the STE gradient to ``x`` (see
    :class:`FixedGridFakeQuant`); ``q`` are ``x``'s integers, ``scale``/``zero_point`` fixed."""
    if torch.is_grad_enabled() and x.requires_grad:
        return FixedGridFakeQuant.apply(x, q, scale.detach(), zero_point, quant_min, quant_max)
    return torch.clamp(q, quant_min, quant_max).sub_(zero_point).mul_(scale)


_F64_ODD = 1  # lowest significand bit of a float64, as an int64 mask

# float32 bit patterns (x, s) with x * f32(1/s) = 1/2 + 2**-17 + 2**-47 exactly: fma(x, 1/s, 128)
# is just above the float32 midpoint 128.5 + 2**-17, so one rounding gives 128.5 + 2**-16 and
# rint 129, while two roundings (float32 product then sum, or a float64 sum then the float32
# cast) land on 128.5 and rint 128.
_FMA_PROBE = (0x3D31B7B1, 0x3DB1B6FF)


def fma_float32_exact(x: torch.Tensor, inv_s: torch.Tensor, z: float) -> torch.Tensor:
    """float32 ``fma(x, inv_s, z)`` (one rounding) for float32 ``x`` and ``inv_s`` and an integer
    ``z``, computed in float64 on any device.

    The product of two float32 is exact in float64; the float64 sum with ``z`` can be rounded,
    and the cast to float32 would then round twice. That can change ``rint`` of the result only
    where the cast lands on a half-integer and ``z >= 16`` (a float64 sum is inexact only if
    ``|x * inv_s| < |x * inv_s + z| / 32``), so those few elements are redone exactly: TwoSum
    gives the sum's error, and rounding to odd in float64 makes the cast a single rounding.
    Elsewhere the result can differ from the fma in the last bit but not in its ``rint``.
    """
    inv64 = inv_s.double().reshape(())
    s = x.to(torch.float64, copy=True).mul_(inv64).add_(z)  # x * inv_s exact, + z rounds
    y = s.float()
    if z < 16 or x.numel() == 0:
        return y
    off = torch.sub(y, torch.round(y)).abs_()  # 0.5 where the cast gave a half-integer
    if bool(off.max() == 0.5):
        idx = off.eq_(0.5).reshape(-1).nonzero().squeeze(1)
        p = x.reshape(-1)[idx].double() * inv64
        s = s.reshape(-1)[idx]
        b = s - p  # TwoSum: s + err == p + z exactly
        err = (p - (s - b)) + (z - b)
        even = (s.view(torch.int64) & _F64_ODD) == 0
        towards = torch.copysign(torch.full_like(s, float("inf")), err)
        s = torch.where((err != 0) & even, torch.nextafter(s, towards), s)  # round to odd
        y.reshape(-1)[idx] = s.float()
    return y


@functools.lru_cache(maxsize=None)
def _add_alpha_is_fma(device: str) -> bool:
    """Whether ``torch.add(z, x, alpha=a)`` rounds ``z + a * x`` once on ``device`` (ATen's
    vectorised add uses ``fmadd``; x86 CPUs with AVX2 and CUDA do). Probed on the vectorised
    lanes, the scalar remainder and a strided tensor."""
    x_bits, s_bits = _FMA_PROBE
    x = torch.tensor([x_bits], dtype=torch.int32).view(torch.float32).to(device)
    inv_s = torch.reciprocal(torch.tensor([s_bits], dtype=torch.int32).view(torch.float32))
    z = torch.tensor(128.0, device=device)
    for probe in (x.expand(37).contiguous(), x.expand(74).contiguous()[::2]):
        if not bool((torch.round(torch.add(z, probe, alpha=inv_s.item())) == 129).all()):
            return False
    return True


@functools.lru_cache(maxsize=None)
def _addcmul_is_fma(device: str) -> bool:
    """Whether ``torch.addcmul(z, x, inv_s)`` with device tensors rounds ``z + x * inv_s`` once
    on ``device`` (CUDA compiles it to an fma), probed like :func:`_add_alpha_is_fma`. The CPU is
    not probed: there ``torch.add(alpha=)`` is, and reading scalars costs nothing."""
    x_bits, s_bits = _FMA_PROBE
    x = torch.tensor([x_bits], dtype=torch.int32).view(torch.float32).to(device)
    inv_s = torch.reciprocal(torch.tensor([s_bits], dtype=torch.int32).view(torch.float32))
    inv_s, z = inv_s.to(device).reshape(()), torch.full((), 128.0, device=device)
    for probe in (x.expand(37).contiguous(), x.expand(74).contiguous()[::2]):
        if not bool((torch.round(torch.addcmul(z, probe, inv_s)) == 129).all()):
            return False
    return True


def quantize_per_tensor_rint(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | float
) -> torch.Tensor:
    """The integers ``torch.quantize_per_tensor`` (x86, fbgemm) computes, before saturation.

    ``rint(fma(x, inv_s, z))`` with ``inv_s = float32(1 / s)``, a float32 fused multiply-add
    (one rounding) and round half to even: the zero point is added *before* rounding (fbgemm's
    ``Quantize``; torch's ``fake_quantize_per_tensor_affine`` and the old ``round(x / s) + z``
    differ from it at exact ties when ``z`` is odd, and on near-ties because of ``x / s`` or
    of the rounding of ``x / s`` before adding ``z``). Measured on torch 2.13 for every tensor
    length and thread count (tests/test_observers_grid.py).

    The fma is, off the CPU, ``torch.addcmul(z, x, inv_s)`` with ``z`` and ``inv_s`` left on
    the device (no host sync), where that is one; else ``torch.add(z, x, alpha=inv_s)`` where
    that is one (each probed once per device type); else :func:`fma_float32_exact`. ``scale``
    and ``zero_point`` are per tensor (one element); returns float32 integers (no ``-0.0``), no
    grad; clamp them to ``[0, 255]`` for the quantized value.

    >>> quantize_per_tensor_rint(torch.tensor([0.25, 0.75, -0.25]), torch.tensor([0.5]), 3.0)
    tensor([4., 4., 2.])
    """
    with torch.no_grad():
        x = x.detach()
        inv_s = torch.reciprocal(scale.detach().float()).reshape(())  # float32 1/s
        if x.dtype == torch.float32 and x.device.type != "cpu" \
                and _addcmul_is_fma(x.device.type):  # no host sync: inv_s and z stay on device
            if isinstance(zero_point, torch.Tensor):
                z_dev = zero_point.detach().to(x.device, torch.float32).reshape(())
            else:
                z_dev = torch.full((), float(zero_point), device=x.device)
            y = torch.addcmul(z_dev, x, inv_s)
        elif x.dtype == torch.float32 and _add_alpha_is_fma(x.device.type):
            z = float(zero_point)
            y = torch.add(torch.tensor(z, device=x.device), x, alpha=inv_s.item())
        else:
            y = fma_float32_exact(x.float(), inv_s, float(zero_point))
        return torch.round(y).add_(0.0)  # + 0.0: -0.0 -> 0.0, as the integer 0 dequantizes


def fake_quant_per_tensor(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | float,
    quant_min: int = ACT_QUANT_MIN,
    quant_max: int = ACT_QUANT_MAX,
) -> torch.Tensor:
    """Activation quantize-dequantize, rounded exactly as ``torch.quantize_per_tensor``.

    .. math::
        x_{out} = (\\mathrm{clamp}(q, q_{min}, q_{max}) - z) \\cdot s,\\qquad
        q = \\mathrm{rint}(\\mathrm{fma}(x, 1/s, z))

    (:func:`quantize_per_tensor_rint`), so the output equals
    ``torch.quantize_per_tensor(x, s, z, torch.quint8).dequantize()`` bit for bit. Gradients are
    those of :func:`fake_quant_affine` (straight-through rounding of ``x / s + z``): 1 w.r.t.
    ``x`` where ``q_min <= q <= q_max``, 0 outside; ``scale`` / ``zero_point`` get theirs if they
    require grad (LSQ). ``scale``/``zero_point``: one element, ``zero_point`` integer-valued.

    >>> fake_quant_per_tensor(torch.tensor([0.25, 0.75, 9.0]), torch.tensor([0.5]), 3.0, 0, 7)
    tensor([0.5000, 0.5000, 2.0000])
    """
    q = quantize_per_tensor_rint(x, scale, zero_point)
    if not _learnable(scale, zero_point):
        return fixed_grid_fake_quant(x, q, scale, zero_point, quant_min, quant_max)
    q_exact = q
    q = straight_through(x / scale + zero_point, lambda _: q_exact)
    return (torch.clamp(q, quant_min, quant_max) - zero_point) * scale


def absmax_scale(w: torch.Tensor, qmax: int, *, ch_axis: int = 0, eps: float = EPS) -> torch.Tensor:
    """Per-channel symmetric scale ``max(|w_c|) / Qw``, clamped below at ``eps``.

    Returns a float32 vector with one entry per index of ``ch_axis``.

    >>> absmax_scale(torch.tensor([[1.0, -2.0], [0.0, 0.0]]), 4)
    tensor([5.0000e-01, 1.1921e-07])
    """
    dims = [d for d in range(w.dim()) if d != ch_axis]
    if w.requires_grad:  # (an observer's input is already detached: no operator then)
        w = w.detach()
    # max|w| per channel in one kernel (the infinity norm), not abs then amax
    amax = torch.linalg.vector_norm(w, float("inf"), dim=dims) if dims else w.abs()
    return amax.float().div_(qmax).clamp_(min=eps)


def affine_qparams(
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    quant_min: int = ACT_QUANT_MIN,
    quant_max: int = ACT_QUANT_MAX,
    *,
    eps: float = EPS,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine ``(scale, zero_point)`` covering ``[min(min_val, 0), max(max_val, 0)]``.

    As torch's ``MinMaxObserver`` for ``per_tensor_affine``: the range always contains 0 (so 0
    is exactly representable),

    .. math::
        s = \\max\\left(\\frac{\\max(x_{max},0) - \\min(x_{min},0)}{q_{max} - q_{min}},
        \\epsilon\\right),\\quad
        z = \\mathrm{clamp}(q_{min} - \\mathrm{round}(\\min(x_{min},0) / s), q_{min}, q_{max})

    Returns float32 scale and int64 zero point; with ``out``, written into those two tensors
    (an observer's buffers: no temporaries copied in afterwards) and returned. The zero point is
    computed from the scale as stored in ``out[0]``: keep that float32.

    >>> affine_qparams(torch.tensor([-1.0]), torch.tensor([3.0]), 0, 255)
    (tensor([0.0157]), tensor([64]))
    """
    lo = torch.clamp(min_val.float(), max=0.0)
    hi = torch.clamp(max_val.float(), min=0.0)
    scale = torch.clamp((hi - lo) / float(quant_max - quant_min), min=eps,
                        out=None if out is None else out[0])
    zero_point = torch.clamp(quant_min - torch.round(lo / scale), quant_min, quant_max)
    if out is None:
        return scale, zero_point.to(torch.int64)
    return scale, out[1].copy_(zero_point)  # integral values: the int64 cast is exact


def fold_weights_(model: nn.Module) -> list[str]:
    """Fold every ``weight_fake_quant`` that has ``fold`` into its module's weight, in place.

    ``module.weight.data = module.weight_fake_quant.fold(module.weight)`` for every submodule
    (``nnqat.Linear``, ``nnqat.Embedding``...); returns the folded module names. Call it after
    QAT and before ``torch.ao.quantization.convert``. A weight shared by two modules is folded
    once per module; folding is idempotent, so that is harmless.
    """
    folded = []
    for name, module in model.named_modules():
        fq = getattr(module, "weight_fake_quant", None)
        if fq is not None and hasattr(fq, "fold") and isinstance(module.weight, torch.Tensor):
            module.weight.data = fq.fold(module.weight)
            folded.append(name)
    return folded


# --------------------------------------------------------------------------------------------
# Base classes: the FakeQuantizeBase contract, written once
# --------------------------------------------------------------------------------------------


def _device(factory_kwargs: Optional[dict]) -> Optional[torch.device]:
    if factory_kwargs is None:
        return None
    if not isinstance(factory_kwargs, dict):
        raise ValueError(
            f"factory_kwargs must be a dict like {{'device': None, 'dtype': None}} "
            f"(what nnqat modules pass), got {type(factory_kwargs).__name__}"
        )
    return factory_kwargs.get("device")


class _GridFakeQuantize(FakeQuantizeBase):
    """Shared forward template, lazily-shaped state and state-dict handling.

    ``forward(x)``: run the observer (``_observe``) if enabled, then return ``x`` unchanged if
    fake quant is disabled, else ``_quantize(x)``. Subclasses list per-channel state whose
    length is only known after the first forward in ``_lazy_state``.
    """

    _lazy_state: tuple[str, ...] = ()
    initialized: torch.Tensor
    # Flags and counters the forward branches on. They stay in host memory when the module moves
    # to a GPU (``_apply``): reading a CUDA tensor in an ``if`` waits for every queued kernel,
    # and a quantized SASRec has ~30 quantizers reading several flags per forward.
    HOST_BUFFERS = ("fake_quant_enabled", "observer_enabled", "initialized", "folded", "hard",
                    "steps")

    def __init__(self, factory_kwargs: Optional[dict] = None) -> None:
        super().__init__()
        self._factory_device = _device(factory_kwargs)
        self.is_dynamic = False
        # 1 once the data-dependent state was set from a batch (or loaded from a state dict).
        self.register_buffer("initialized", torch.tensor([0], dtype=torch.uint8))

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        """``nn.Module._apply`` (``.to``, ``.cuda``...), keeping ``HOST_BUFFERS`` on the CPU
        (the same tensors: nothing is copied back)."""
        kept = {name: buffer for name in self.HOST_BUFFERS
                if (buffer := self._buffers.get(name)) is not None and buffer.device.type == "cpu"}
        module = super()._apply(fn, recurse)
        self._buffers.update(kept)
        return module

    # -- template -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if flag(self.observer_enabled):
            with torch.no_grad():
                self._observe(x.detach())
        if not flag(self.fake_quant_enabled):
            return x
        return self._quantize(x)

    def _observe(self, x: torch.Tensor) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- lazily shaped state ------------------------------------------------------------------
    def _set_lazy(self, name: str, value: torch.Tensor) -> None:
        """Replace ``self.<name>``'s data (any shape), keeping the Parameter/buffer object."""
        getattr(self, name).data = value.detach().to(getattr(self, name).dtype).clone()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # Per-channel state starts with one element and gets its length on the first forward;
        # resize it to the saved shape so the default loader can copy (torch's FakeQuantize does
        # the same for its scale/zero_point).
        for name in self._lazy_state:
            key = prefix + name
            if key in state_dict:
                current = getattr(self, name)
                if current.shape != state_dict[key].shape:
                    current.data = torch.empty(
                        state_dict[key].shape, dtype=current.dtype, device=current.device
                    )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class WeightFakeQuantize(_GridFakeQuantize):
    """Base of the weight quantizers: symmetric per-row grid ``q * scale``, ``|q| <= Qw``.

    Reports what ``prepare_qat``/``convert`` read: ``dtype``, ``qscheme``, ``ch_axis=0``,
    ``quant_min``/``quant_max`` (in the reported dtype's integer domain, used by convert's
    weight clamp), ``is_dynamic=False``. Subclasses implement ``_observe``, ``_quantize`` and
    ``_scale`` (the float32 per-row scale the forward multiplies by).

    Args:
        method: name used in error messages.
        bits: weight bits; must be in ``supported_bits``.
        supported_bits: the bits the method supports.
        full_range: at 8 bits use ``Qw = 127`` instead of the saturation-safe 64.
        embedding: report the grid as ``quint8``/``per_channel_affine_float_qparams`` with float
            zero point 128 (``nn.Embedding`` tables); values are identical.
        factory_kwargs: ``{"device": ..., "dtype": ...}`` as ``nnqat`` modules pass it; only the
            device is used (quantizer state stays float32).
    """

    folded: torch.Tensor

    def __init__(
        self,
        *,
        method: str,
        bits: int,
        supported_bits: Sequence[int],
        full_range: bool = False,
        embedding: bool = False,
        factory_kwargs: Optional[dict] = None,
    ) -> None:
        super().__init__(factory_kwargs)
        check_bits(bits, supported_bits, f"{method} weights")
        self.method = method
        self.bits = bits
        self.full_range = bool(full_range)
        self.embedding = bool(embedding)
        self.int_max = self._int_max(bits, self.full_range)  # Qw: integers live in [-Qw, Qw]
        self.ch_axis = 0
        if self.embedding:
            self.dtype = torch.quint8
            self.qscheme = torch.per_channel_affine_float_qparams
            self.quant_min = EMBEDDING_ZERO_POINT - self.int_max
            self.quant_max = EMBEDDING_ZERO_POINT + self.int_max
        else:
            self.dtype = torch.qint8
            self.qscheme = torch.per_channel_symmetric
            self.quant_min = -self.int_max
            self.quant_max = self.int_max
        # 1 after fold(): observer ignored, forward = round-to-nearest on the frozen grid.
        self.register_buffer("folded", torch.tensor([0], dtype=torch.uint8))

    def _int_max(self, bits: int, full_range: bool) -> int:
        return weight_qmax(bits, full_range=full_range)

    # -- grid ---------------------------------------------------------------------------------
    def _scale(self) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """``(scale, zero_point)`` of the grid the forward uses, as ``convert`` expects.

        ``scale``: float32, one entry per row. ``zero_point``: int64 zeros (``qint8``) or float32
        128.0 (embedding variant, ``per_channel_affine_float_qparams``).
        """
        scale = self._scale().detach().float().clone()
        if self.embedding:
            zero_point = torch.full_like(scale, float(EMBEDDING_ZERO_POINT))
        else:
            zero_point = torch.zeros(scale.shape, dtype=torch.int64, device=scale.device)
        return scale, zero_point

    def _rtn(self, w: torch.Tensor) -> torch.Tensor:
        """Round-to-nearest on the current grid (what ``convert`` does), with STE."""
        return fake_quant_affine(w, self._scale(), 0.0, -self.int_max, self.int_max, ch_axis=0)

    # -- forward / fold -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if flag(self.folded):  # frozen: no observer, round-to-nearest on the fixed grid
            return x if not flag(self.fake_quant_enabled) else self._rtn(x)
        return super().forward(x)

    def _fold_values(self, w: torch.Tensor) -> torch.Tensor:
        """The forward's grid values for ``w`` (hard-rounded where the method is soft)."""
        return self._quantize(w)

    def fold(self, weight: torch.Tensor) -> torch.Tensor:
        """Fake-quantized ``weight`` as exact grid values ``q * scale``; freezes this quantizer.

        Runs the observer first if it is enabled (as the next forward would), computes the
        values, then disables the observer and marks the module folded: from then on the
        forward is round-to-nearest on the frozen grid, which maps the folded weight onto
        itself. Assign the result to ``weight.data`` before ``convert``. Returns a detached
        tensor; ``fold`` of an already folded module is round-to-nearest (idempotent).
        """
        with torch.no_grad():
            if flag(self.folded):
                return self._rtn(weight).detach()
            if flag(self.observer_enabled):
                self._observe(weight.detach())
            values = self._fold_values(weight.detach()).detach()
            self.disable_observer()
            self.folded.fill_(1)
        return values

    def extra_repr(self) -> str:
        return (
            f"bits={self.bits}, int_range=[-{self.int_max}, {self.int_max}], "
            f"embedding={self.embedding}, dtype={self.dtype}, qscheme={self.qscheme}, "
            f"fake_quant_enabled={int(self.fake_quant_enabled[0])}, "
            f"observer_enabled={int(self.observer_enabled[0])}, folded={int(self.folded[0])}"
        )


class ActivationFakeQuantize(_GridFakeQuantize):
    """Base of the activation quantizers: per-tensor affine ``quint8`` on ``[0, 255]``.

    Subclasses implement ``_observe``, ``_quantize``, ``_scale`` (float32, shape ``[1]``) and
    ``_zero_point`` (integer-valued, shape ``[1]``). Activations are 8-bit whatever the weight
    bits (``bits`` other than 8 raises ``ValueError``).
    """

    def __init__(
        self, *, method: str, bits: int = 8, factory_kwargs: Optional[dict] = None
    ) -> None:
        super().__init__(factory_kwargs)
        check_bits(bits, ACTIVATION_BITS, f"{method} activations (8-bit only)")
        self.method = method
        self.bits = bits
        self.dtype = torch.quint8
        self.qscheme = torch.per_tensor_affine
        self.ch_axis = -1
        self.quant_min = ACT_QUANT_MIN
        self.quant_max = ACT_QUANT_MAX

    def _scale(self) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def _zero_point(self) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """``(scale, zero_point)``: float32 ``[1]`` and int64 ``[1]`` in ``[0, 255]``."""
        scale = self._scale().detach().float().reshape(1).clone()
        zero_point = self._zero_point().detach().round().to(torch.int64).reshape(1).clone()
        return scale, zero_point

    def extra_repr(self) -> str:
        scale, zero_point = self.calculate_qparams()
        return (
            f"scale={scale.item():.6g}, zero_point={int(zero_point.item())}, "
            f"fake_quant_enabled={int(self.fake_quant_enabled[0])}, "
            f"observer_enabled={int(self.observer_enabled[0])}"
        )

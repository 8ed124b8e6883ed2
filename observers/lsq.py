"""LSQ: learned step size quantization (Esser et al. 2019, https://arxiv.org/abs/1902.08153).

The step size ``s`` is a trained parameter; its gradient is scaled by
``g = 1 / sqrt(N * Q_p)`` (``N`` = number of elements sharing that step, ``Q_p`` = largest
positive integer; the paper's grad-scale trick, applied in the closed-form backward of
:class:`LsqFakeQuant`), and the rounding is straight-through:

.. math::
    \\hat x = (\\mathrm{clamp}(\\lfloor x / s \\rceil + z, q_{min}, q_{max}) - z)\\, s

.. math::
    \\frac{\\partial \\hat x}{\\partial s} = g \\cdot \\begin{cases}
        -x/s + \\lfloor x/s \\rceil & q_{min} \\le \\lfloor x/s \\rceil + z \\le q_{max}\\\\
        q_{min} - z & \\text{below} \\\\
        q_{max} - z & \\text{above} \\end{cases}

(the paper's eq. 3, with ``z = 0`` for weights). The forward uses ``max(|s|, eps)`` so the step
stays positive whatever the optimizer does; ``calculate_qparams`` returns the same value.
Activations round ``x / s + z`` as ``torch.quantize_per_tensor`` does (``rint(fma(x, 1/s, z))``,
:func:`observers.grid.fake_quant_per_tensor`); the rounded ``x/s`` plus ``z`` above is that
integer.

Activations here are signed (LayerNorm/Linear outputs), so the activation quantizer is affine
with a learnable float zero point ``z`` (LSQ+, Bhalgat et al. 2020,
https://arxiv.org/abs/2004.09576; torch's ``_LearnableFakeQuantize``). The forward uses the
integer ``round(clamp(z, 0, 255))`` with straight-through rounding (gradient ``-s * g`` where
the input is clipped, 0 inside), the same integer ``calculate_qparams`` returns.

Initialisation (first forward with the observer enabled; afterwards the observer does nothing):

* ``init="max"`` (default) weights: ``s_c = max|w_c| / Q_w`` per row; activations
  (``init="minmax"``): ``(s, z)`` from the first batch's min/max on ``[0, 255]``.
* ``init="paper"``: ``s = 2 * mean|x| / sqrt(Q_p)``. For a Gaussian row ``mean|w| ~ 0.8 sigma``,
  so at ``Q_p = 64`` the clip point ``64 s ~ 12.8 sigma`` while ``max|w| ~ 3-4 sigma``: only
  about +-18 of the +-64 integers are used (~5 of 8 bits). The paper targets 2-4 bits, trains
  from scratch-like schedules and lets ``s`` grow; fine-tuning an FP32 checkpoint at 8 bits
  with a small learning rate on ``s`` (docs/design.md, section 3) would start, and likely
  stay, far from the FP32 model. ``"max"``/``"minmax"`` start at the RTN/min-max grid
  instead: no clipping, all integers used, zero initial change beyond rounding. For signed
  activations ``"paper"`` uses ``z = 128`` and ``Q_p = 127`` (the symmetric analogue);
  ``z = 0``, ``Q_p = 255`` if the first batch is non-negative.

Learning rate: the DESIGN notes that Adam at 1e-3 on LSQ scales wrecked accuracy; put
``scale``/``zero_point`` in their own param group with a small learning rate.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from observers.grid import (
    EPS,
    WEIGHT_BITS,
    ActivationFakeQuantize,
    WeightFakeQuantize,
    absmax_scale,
    affine_qparams,
    channel_view,
    flag,
    quantize_per_tensor_rint,
    sum_to_channels,
)

__all__ = [
    "LsqFakeQuant",
    "LsqActivationFakeQuantize",
    "LsqWeightFakeQuantize",
    "lsq_fake_quant",
    "lsq_grad_factor",
    "lsq_paper_init",
]

WEIGHT_INITS = ("max", "paper")
ACTIVATION_INITS = ("minmax", "paper")


def lsq_grad_factor(n_per_scale: int, q_positive: int) -> float:
    """LSQ gradient scale ``g = 1 / sqrt(N * Q_p)``.

    >>> lsq_grad_factor(8, 2)
    0.25
    """
    return 1.0 / math.sqrt(max(n_per_scale, 1) * q_positive)


def lsq_paper_init(
    x: torch.Tensor, q_positive: int, *, ch_axis: Optional[int] = None
) -> torch.Tensor:
    """The paper's step initialisation ``2 * mean|x| / sqrt(Q_p)`` (per channel if ``ch_axis``)."""
    a = x.detach().abs().float()
    if ch_axis is None:
        mean = a.mean().reshape(1)
    else:
        mean = a.mean(dim=[d for d in range(x.dim()) if d != ch_axis])
    return (2.0 * mean / math.sqrt(q_positive)).clamp(min=EPS)


def lsq_fake_quant(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: Optional[torch.Tensor],
    quant_min: int,
    quant_max: int,
    grad_factor: float,
    *,
    ch_axis: Optional[int] = None,
    eps: float = EPS,
) -> torch.Tensor:
    """LSQ / LSQ+ fake quantization (formula and gradients in the module docstring).

    ``scale`` (and ``zero_point``, if not ``None``) are learnable tensors; the forward uses
    ``max(|scale|, eps)`` and ``round(clamp(zero_point, quant_min, quant_max))``, both with their
    gradients multiplied by ``grad_factor``. With a zero point and no ``ch_axis`` (activations)
    the rounding is ``torch.quantize_per_tensor``'s (:func:`observers.grid.fake_quant_per_tensor`).
    ``ch_axis`` may only be 0 (weights, one step per row) or ``None``.

    One autograd node (:class:`LsqFakeQuant`) with the closed-form gradients: the same values,
    to rounding, as differentiating the composed ops, in a tenth of the operators.
    """
    if ch_axis not in (None, 0):
        raise ValueError(f"lsq_fake_quant: ch_axis must be 0 or None, got {ch_axis}")
    if zero_point is not None and ch_axis is not None:
        raise ValueError("lsq_fake_quant: a learned zero point is per tensor (ch_axis=None)")
    return LsqFakeQuant.apply(x, scale, zero_point, quant_min, quant_max, grad_factor,
                              ch_axis == 0, eps)


class LsqFakeQuant(torch.autograd.Function):
    """LSQ / LSQ+ forward and its gradients as one autograd node.

    Forward, with ``s = max(|scale|, eps)`` (per row when ``per_row``), ``z`` the rounded
    clamped zero point (0 without one) and ``q`` the integers (``round(x / s)`` for weights,
    ``rint(fma(x, 1/s, z))`` for activations)::

        c = clamp(q, q_min, q_max) - z,    x_out = c * s

    Backward (LSQ eq. 3 and LSQ+; ``m = [q_min <= q <= q_max]``, ``g`` the grad factor)::

        dL/dx     = dL/dx_out * m
        dL/dscale = g * sgn(scale) * [|scale| >= eps] * sum(dL/dx_out * (c - m * x / s))
        dL/dzp    = g * [q_min <= zp <= q_max] * (-s) * sum(dL/dx_out * (1 - m))

    summed over each row (``per_row``) or the whole tensor. These are the derivatives of the
    composed straight-through graph (``x / s``, rounding, ``+ z``, clamp, ``- z``, ``* s``,
    grad-scale, ``abs``, clamps): ``s * (-x / s**2) * m + c`` is the step's element term, and
    ``z`` enters ``c`` once directly and once through ``q`` (straight-through), which cancel
    inside the range.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor,  # type: ignore[override]
                zero_point: Optional[torch.Tensor], quant_min: int, quant_max: int,
                grad_factor: float, per_row: bool, eps: float) -> torch.Tensor:
        abs_scale = scale.detach().abs()
        s = torch.clamp(abs_scale, min=eps)
        s_x = channel_view(s, x, 0) if per_row else s
        ratio = z_in_range = None
        if zero_point is None:
            z: torch.Tensor | float = 0.0
            ratio = torch.div(x, s_x)  # kept: the step's gradient needs x / s
            q = torch.round(ratio).add_(0.0)  # + 0.0: -0.0 -> 0.0
        else:
            z_clamped = torch.clamp(zero_point.detach(), quant_min, quant_max)
            z_in_range = z_clamped == zero_point  # [q_min <= zp <= q_max]
            z = torch.round(z_clamped)
            q = quantize_per_tensor_rint(x, s, z)
        c = torch.clamp(q, quant_min, quant_max)
        inside = c == q
        c.sub_(z)
        step_in_range = s == abs_scale  # [|scale| >= eps]: the clamp left it as it was
        ctx.save_for_backward(x, ratio, c, inside, s_x, scale, step_in_range, z_in_range)
        ctx.config = (grad_factor, x.dtype)
        return c * s_x

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        x, ratio, c, inside, s_x, scale, step_in_range, z_in_range = ctx.saved_tensors
        grad_factor, x_dtype = ctx.config
        grad_x = grad_output * inside
        grad_scale = grad_zero_point = None
        if ctx.needs_input_grad[1]:
            term = torch.mul(ratio, inside) if ratio is not None else torch.div(x, s_x).mul_(inside)
            term = torch.sub(c, term).mul_(grad_output)
            total = sum_to_channels(term, scale)
            slope = torch.where(step_in_range, scale.sgn() * grad_factor, 0.0)
            grad_scale = total.mul_(slope)
        if z_in_range is not None and ctx.needs_input_grad[2]:
            outside_sum = torch.sub(grad_output, grad_x).sum()
            grad_zero_point = torch.where(z_in_range, outside_sum * (-grad_factor) * s_x, 0.0)
        return grad_x.to(x_dtype), grad_scale, grad_zero_point, None, None, None, None, None


class LsqWeightFakeQuantize(WeightFakeQuantize):
    """LSQ weight fake-quant: a learnable step per output row on the symmetric grid.

    Forward ``clamp(round(w / s_c), -Qw, Qw) * s_c`` with ``s_c = max(|scale_c|, eps)`` and the
    step's gradient scaled by ``1 / sqrt(in_features * Qw)``. ``scale`` is an ``nn.Parameter``
    (one element until the first observed forward, then one per row, same Parameter object).

    Args:
        bits: 2..8.
        full_range: ``Qw = 127`` at 8 bits.
        embedding: report the ``nn.Embedding`` qscheme.
        init: ``"max"`` (``max|w_c| / Qw``, default) or ``"paper"`` (``2 mean|w_c| / sqrt(Qw)``);
            see the module docstring for why ``"max"`` is the default at 8 bits.
        factory_kwargs: only the device is used.
    """

    supported_bits = WEIGHT_BITS
    _lazy_state = ("scale",)

    def __init__(
        self,
        *,
        bits: int = 8,
        full_range: bool = False,
        embedding: bool = False,
        init: str = "max",
        factory_kwargs: Optional[dict] = None,
    ) -> None:
        super().__init__(
            method="LSQ",
            bits=bits,
            supported_bits=self.supported_bits,
            full_range=full_range,
            embedding=embedding,
            factory_kwargs=factory_kwargs,
        )
        if init not in WEIGHT_INITS:
            raise ValueError(f"LSQ weights: init={init!r} is not one of {WEIGHT_INITS}")
        self.init = init
        self.scale = nn.Parameter(torch.ones(1, device=self._factory_device))

    def _observe(self, w: torch.Tensor) -> None:
        if flag(self.initialized):
            return
        if self.init == "max":
            scale = absmax_scale(w, self.int_max, ch_axis=0)
        else:
            scale = lsq_paper_init(w, self.int_max, ch_axis=0)
        self._set_lazy("scale", scale)
        self.initialized.fill_(1)

    def _scale(self) -> torch.Tensor:
        return torch.clamp(self.scale.detach().abs(), min=EPS)

    def grad_factor(self, w: torch.Tensor) -> float:
        """``1 / sqrt(N * Qw)`` with ``N`` = elements per row."""
        return lsq_grad_factor(w.numel() // max(w.shape[0], 1), self.int_max)

    def _quantize(self, w: torch.Tensor) -> torch.Tensor:
        return lsq_fake_quant(
            w, self.scale, None, -self.int_max, self.int_max, self.grad_factor(w), ch_axis=0
        )


class LsqActivationFakeQuantize(ActivationFakeQuantize):
    """LSQ+ activation fake-quant: learnable step and zero point, per tensor, ``[0, 255]``.

    Forward ``(clamp(rint(fma(x, 1/s, z)), 0, 255) - z) * s`` with ``s = max(|scale|, eps)``,
    ``z = round(clamp(zero_point, 0, 255))``; both gradients scaled by
    ``1 / sqrt(x.numel() * 255)`` (``N`` = elements of the batch, as torch's
    ``_LearnableFakeQuantize``).

    Args:
        init: ``"minmax"`` (first batch's min/max, default) or ``"paper"``.
        bits: must be 8.
        factory_kwargs: only the device is used.
    """

    def __init__(
        self, *, init: str = "minmax", bits: int = 8, factory_kwargs: Optional[dict] = None
    ) -> None:
        super().__init__(method="LSQ", bits=bits, factory_kwargs=factory_kwargs)
        if init not in ACTIVATION_INITS:
            raise ValueError(f"LSQ activations: init={init!r} is not one of {ACTIVATION_INITS}")
        self.init = init
        self.scale = nn.Parameter(torch.ones(1, device=self._factory_device))
        self.zero_point = nn.Parameter(torch.zeros(1, device=self._factory_device))

    def _observe(self, x: torch.Tensor) -> None:
        if flag(self.initialized) or x.numel() == 0:
            return
        if self.init == "minmax":
            scale, zero_point = affine_qparams(
                x.min().reshape(1), x.max().reshape(1), self.quant_min, self.quant_max
            )
        else:
            signed = bool(x.min() < 0)
            q_positive = 127 if signed else self.quant_max
            scale = lsq_paper_init(x, q_positive)
            zero_point = torch.tensor([128.0 if signed else 0.0])
        self.scale.data.copy_(scale)
        self.zero_point.data.copy_(zero_point.float())
        self.initialized.fill_(1)

    def _scale(self) -> torch.Tensor:
        return torch.clamp(self.scale.detach().abs(), min=EPS)

    def _zero_point(self) -> torch.Tensor:
        return torch.round(torch.clamp(self.zero_point.detach(), self.quant_min, self.quant_max))

    def grad_factor(self, x: torch.Tensor) -> float:
        """``1 / sqrt(x.numel() * 255)``."""
        return lsq_grad_factor(x.numel(), self.quant_max)

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        return lsq_fake_quant(
            x, self.scale, self.zero_point, self.quant_min, self.quant_max, self.grad_factor(x)
        )

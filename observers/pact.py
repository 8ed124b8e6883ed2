"""PACT: parameterized clipping activation (Choi et al. 2018, https://arxiv.org/abs/1805.06085).

A learnable clip level ``alpha`` replaces ReLU's unbounded range; the clipped value is quantized
uniformly with straight-through rounding.

One-sided (post-ReLU, ``signed=False``): scale ``s = alpha / 255``, zero point 0,

.. math::
    y = \\mathrm{clip}(x, 0, \\alpha),\\qquad y_q = \\lfloor y / s \\rceil \\, s

Symmetric (signed activations, ``signed=True``, the default here because SASRec's quantized
activations are LayerNorm/Linear outputs): ``s = alpha / 127``, zero point 128, integers
``[0, 255]``, so the effective clip range is ``[-128/127 alpha, alpha]`` (one more step below
zero than above, the price of an integer zero point on a 256-level grid):

.. math::
    y = \\mathrm{clip}(x, -\\tfrac{128}{127}\\alpha, \\alpha),\\qquad
    y_q = \\lfloor y / s \\rceil \\, s

Gradients (the paper's eq. 3, STE on the rounding, so the quantization residue is ignored):

.. math::
    \\frac{\\partial y_q}{\\partial \\alpha} = \\begin{cases} 1 & x \\ge \\alpha \\\\
    -\\tfrac{128}{127} & x \\le -\\tfrac{128}{127}\\alpha \\ (\\text{signed}) \\\\
    0 & \\text{otherwise} \\end{cases},\\qquad
    \\frac{\\partial y_q}{\\partial x} = 1 \\text{ strictly inside the clip range, else } 0.

The output is computed as ``(u - z) * s`` with ``u = rint(fma(y, 1/s, z))`` rounded as
``torch.quantize_per_tensor`` rounds (:func:`observers.grid.fake_quant_per_tensor`; ``z`` = 128
or 0) and ``s`` the same float32 scale ``calculate_qparams`` returns, so it equals the converted
model's quantize bit for bit. ``alpha`` is used as ``max(|alpha|, eps)``.

L2 regularisation of ``alpha``: the paper adds ``lambda_alpha * alpha^2`` to the loss (its
CIFAR-10 runs use ``lambda_alpha = 0.0002``, the same value as the weight decay);
:meth:`PactActivationFakeQuantize.regularization` returns that term for the trainer to add.

Weights in PACT models: the paper quantizes weights with DoReFa; this project pairs PACT
activations with the STE per-row weight quantizer (``observers.METHOD_FAKE_QUANTS["pact"]``),
so the PACT comparison isolates the activation clipping.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from observers.grid import (EPS, ActivationFakeQuantize, flag,
                            quantize_per_tensor_rint)

__all__ = [
    "PactActivationFakeQuantize",
    "PactFakeQuant",
    "pact_fake_quant",
    "pact_regularization",
    "pact_scale",
]

SIGNED_ZERO_POINT = 128  # integer 128 <-> real 0 in the symmetric variant


def pact_scale(alpha: torch.Tensor, *, signed: bool, eps: float = EPS) -> torch.Tensor:
    """Grid step ``max(|alpha|, eps) / 127`` (signed) or ``/ 255`` (one-sided)."""
    return torch.clamp(alpha.abs(), min=eps) / (127.0 if signed else 255.0)


def pact_fake_quant(
    x: torch.Tensor, alpha: torch.Tensor, *, signed: bool, eps: float = EPS
) -> torch.Tensor:
    """PACT clip + uniform quantization (formula and gradients in the module docstring).

    One autograd node (:class:`PactFakeQuant`).

    >>> pact_fake_quant(torch.tensor([-1.0, 0.3, 2.0]), torch.tensor([1.0]), signed=False)
    tensor([0.0000, 0.2980, 1.0000])
    """
    return PactFakeQuant.apply(x, alpha, signed, eps)


class PactFakeQuant(torch.autograd.Function):
    """PACT's clip and quantization with its gradients, as one autograd node.

    Forward, with ``a = max(|alpha|, eps)``, ``lo = -128/127 a`` (signed) or 0, ``s`` and ``z``
    as in :func:`pact_scale`::

        y = clamp(x, lo, a),    x_out = (clamp(rint(fma(y, 1/s, z)), 0, 255) - z) * s

    Backward (the paper's eq. 3 with the straight-through rounding; ``m`` the grid's
    ``[0 <= q <= 255]``)::

        dL/dx     = dL/dx_out * m * [lo < x < a]
        dL/dalpha = sgn(alpha) [|alpha| >= eps] (sum(dL/dx_out m [x >= a])
                    - 128/127 sum(dL/dx_out m [x <= lo]))     (second term signed only)

    the derivatives of ``where(x >= a, a, x)``, ``where(x <= lo, lo, y)`` and the fixed-grid
    fake quantization, composed.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor,  # type: ignore[override]
                signed: bool, eps: float) -> torch.Tensor:
        alpha_abs = alpha.detach().abs()
        a = torch.clamp(alpha_abs, min=eps)
        step = a / (127.0 if signed else 255.0)  # == pact_scale(alpha)
        lo = a * (-128.0 / 127.0) if signed else torch.zeros_like(a)
        zero_point = float(SIGNED_ZERO_POINT if signed else 0)
        q = quantize_per_tensor_rint(torch.clamp(x, lo, a), step, zero_point)
        clamped = torch.clamp(q, 0, 255)
        grid_inside = clamped == q
        ctx.save_for_backward(x, a, lo, grid_inside, alpha, a == alpha_abs)  # |alpha| >= eps
        ctx.config = (signed, x.dtype)
        return clamped.sub_(zero_point).mul_(step)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        x, a, lo, grid_inside, alpha, alpha_in_range = ctx.saved_tensors
        signed, x_dtype = ctx.config
        grad = grad_output * grid_inside
        above = x >= a
        below = x <= lo
        grad_x = grad.masked_fill(above | below, 0.0)
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            grad_a = torch.mul(grad, above).sum()
            if signed:
                grad_a = grad_a - (128.0 / 127.0) * torch.mul(grad, below).sum()
            slope = torch.where(alpha_in_range, alpha.sgn(), 0.0)
            grad_alpha = grad_a * slope
        return grad_x.to(x_dtype), grad_alpha, None, None


def pact_regularization(alpha: torch.Tensor, weight: float) -> torch.Tensor:
    """The paper's L2 term ``lambda_alpha * alpha^2`` (summed if ``alpha`` has several entries)."""
    return weight * alpha.pow(2).sum()


class PactActivationFakeQuantize(ActivationFakeQuantize):
    """PACT activation fake-quant with a learnable clip level ``alpha``, per tensor.

    ``signed=True``: ``scale = alpha/127``, zero point 128, clip ``[-128/127 alpha, alpha]``.
    ``signed=False``: ``scale = alpha/255``, zero point 0, clip ``[0, alpha]``.

    Initialisation: if ``alpha`` is given it is used as is; otherwise the first forward with the
    observer enabled sets ``alpha`` so that nothing is clipped: ``max(x)`` one-sided,
    ``max(max(x), -min(x) * 127/128)`` symmetric. (The paper initialises to 10 and trains from
    scratch; fine-tuning from FP32 starts better without clipping, and the trained ``alpha``
    then trades clipping for resolution.) Before that ``alpha = 1``.

    Args:
        signed: symmetric variant for signed activations (default) or one-sided.
        alpha: initial clip level; ``None`` = from the first observed batch.
        alpha_l2: ``lambda_alpha`` of :meth:`regularization` (paper: 0.0002).
        bits: must be 8.
        factory_kwargs: only the device is used.
    """

    def __init__(
        self,
        *,
        signed: bool = True,
        alpha: Optional[float] = None,
        alpha_l2: float = 2e-4,
        bits: int = 8,
        factory_kwargs: Optional[dict] = None,
    ) -> None:
        super().__init__(method="PACT", bits=bits, factory_kwargs=factory_kwargs)
        if alpha is not None and not alpha > 0:
            raise ValueError(
                f"PACT alpha must be > 0 (or None to initialise from data), got {alpha}"
            )
        if alpha_l2 < 0:
            raise ValueError(f"PACT alpha_l2 must be >= 0 (paper: 2e-4), got {alpha_l2}")
        self.signed = bool(signed)
        self.alpha_l2 = float(alpha_l2)
        self.alpha = nn.Parameter(
            torch.tensor([1.0 if alpha is None else float(alpha)], device=self._factory_device)
        )
        if alpha is not None:
            self.initialized.fill_(1)

    def _observe(self, x: torch.Tensor) -> None:
        if flag(self.initialized) or x.numel() == 0:
            return
        hi = x.max().float()
        if self.signed:
            hi = torch.maximum(hi, -x.min().float() * (127.0 / 128.0))
        self.alpha.data.copy_(torch.clamp(hi, min=EPS).reshape(1))
        self.initialized.fill_(1)

    def _scale(self) -> torch.Tensor:
        return pact_scale(self.alpha.detach(), signed=self.signed)

    def _zero_point(self) -> torch.Tensor:
        return torch.tensor([SIGNED_ZERO_POINT if self.signed else 0], device=self.alpha.device)

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        return pact_fake_quant(x, self.alpha, signed=self.signed)

    def regularization(self) -> torch.Tensor:
        """``alpha_l2 * alpha^2``: add it to the loss (PACT's L2 regularisation of alpha)."""
        return pact_regularization(self.alpha, self.alpha_l2)

"""AdaRound: learned up/down rounding of weights.

Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization",
https://arxiv.org/abs/2004.10568.

Each weight is rounded down or up on a fixed grid; the choice is relaxed to a continuous
``h(V) in [0, 1]`` per weight (the rectified sigmoid) and learned:

.. math::
    h(V) = \\mathrm{clip}(\\sigma(V)(\\zeta - \\gamma) + \\gamma, 0, 1),\\quad
    \\zeta = 1.1,\\ \\gamma = -0.1

.. math::
    \\tilde w = s \\cdot \\mathrm{clamp}(\\lfloor w / s \\rfloor + h(V), -Q_w, Q_w)
    \\quad\\text{(soft)},\\qquad
    \\hat w = s \\cdot \\mathrm{clamp}(\\lfloor w / s \\rfloor + [V \\ge 0], -Q_w, Q_w)
    \\quad\\text{(hard)}

with the regulariser that pushes every ``h(V)`` to 0 or 1 as ``beta`` is annealed from 20 to 2,

.. math::
    f_{reg}(V) = \\sum_{i} 1 - |2 h(V_i) - 1|^{\\beta}.

``V`` starts at the value that reproduces the FP32 weight, ``h(V) = w/s - floor(w/s)``, i.e.
``V = -log((zeta - gamma) / (frac - gamma) - 1)``. Gradient of the soft forward:
``d w~/dV = s * sigma(V)(1 - sigma(V))(zeta - gamma)`` where ``0 < h < 1`` and the clamp is
inactive, else 0. The weight itself gets no gradient from this quantizer.

Adaptation, a PTQ method run during QAT fine-tuning: the paper optimises ``V`` after training,
layer by layer, against each layer's FP32 output (local MSE) on calibration data. Here it runs
during QAT fine-tuning instead: the FP32 weight ``w`` is frozen (setting
``requires_grad=False`` is the trainer's job) and ``V`` is learned end to end with the task loss
plus ``lambda * regularization(beta)`` with ``beta`` from :func:`beta_schedule`
and ``lambda`` from :func:`regularization_weight` (0 during the warm-up, as in the paper's and
BRECQ's schedules). After training call :meth:`AdaRoundFakeQuantize.harden` (or ``fold``,
which hardens): the forward becomes the hard rounding, exactly on the grid.

The grid scale is fixed at initialisation, one per row: ``scale_init="mse"`` (default) picks
``r * max|w_row| / Q_w`` minimising the row's round-to-nearest squared error over
``r in {1.00, 0.99, ..., 0.20}`` (the clipping search BRECQ's AdaRound uses), ``"max"`` takes
``r = 1``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from observers.grid import EPS, WEIGHT_BITS, WeightFakeQuantize, absmax_scale, channel_view, flag

__all__ = [
    "AdaRoundFakeQuantize",
    "AdaRoundSoftQuant",
    "adaround_hard_quant",
    "adaround_regularization",
    "adaround_soft_quant",
    "beta_schedule",
    "inverse_rectified_sigmoid",
    "mse_scale",
    "rectified_sigmoid",
    "regularization_weight",
]

ZETA = 1.1
GAMMA = -0.1
SCALE_INITS = ("mse", "max")
MSE_RATIOS = tuple(round(1.0 - 0.01 * i, 2) for i in range(81))  # 1.00 ... 0.20


def rectified_sigmoid(v: torch.Tensor, zeta: float = ZETA, gamma: float = GAMMA) -> torch.Tensor:
    """``h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)``.

    >>> rectified_sigmoid(torch.tensor([-10.0, 0.0, 10.0]))
    tensor([0.0000, 0.5000, 1.0000])
    """
    return torch.clamp(torch.sigmoid(v) * (zeta - gamma) + gamma, 0.0, 1.0)


def inverse_rectified_sigmoid(
    h: torch.Tensor, zeta: float = ZETA, gamma: float = GAMMA
) -> torch.Tensor:
    """``V`` with ``h(V) = h`` for ``h`` in ``[0, 1)``: ``-log((zeta - gamma)/(h - gamma) - 1)``."""
    return -torch.log((zeta - gamma) / (h - gamma) - 1.0)


def adaround_soft_quant(
    w: torch.Tensor, scale: torch.Tensor, v: torch.Tensor, qmax: int, *, ch_axis: int = 0
) -> torch.Tensor:
    """Soft AdaRound ``s * clamp(floor(w/s) + h(V), -Qw, Qw)`` (gradient to ``V`` only)."""
    if ch_axis != 0:
        raise ValueError(f"adaround_soft_quant: ch_axis must be 0 (per row), got {ch_axis}")
    return AdaRoundSoftQuant.apply(w, scale, v, qmax)


class AdaRoundSoftQuant(torch.autograd.Function):
    """Soft AdaRound forward and its gradient to ``V``, as one autograd node.

    Forward (``s`` per row, ``w`` and ``s`` detached; Nagel et al. 2020, eq. 22)::

        p = sigmoid(V) (zeta - gamma) + gamma,  h = clamp(p, 0, 1),
        w_soft = clamp(floor(w / s) + h, -Q_w, Q_w) * s

    Backward: ``dL/dV = dL/dw_soft * s * [-Q_w <= floor(w/s) + h <= Q_w] * [0 <= p <= 1]
    * (zeta - gamma) * sigmoid(V) (1 - sigmoid(V))``; no gradient to ``w`` (AdaRound learns
    the rounding, the float weight is frozen). The derivative of the composed ops, in fewer.
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, scale: torch.Tensor,  # type: ignore[override]
                v: torch.Tensor, qmax: int) -> torch.Tensor:
        s = channel_view(scale.detach(), w, 0)
        sig = torch.sigmoid(v.detach())
        p = torch.mul(sig, ZETA - GAMMA).add_(GAMMA)
        h = torch.clamp(p, 0.0, 1.0)
        total = torch.floor(w.detach() / s).add_(h)
        out = torch.clamp(total, -qmax, qmax)
        ctx.save_for_backward(sig, (out == total).logical_and_(h == p), s)
        return out.mul_(s)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        sig, inside, s = ctx.saved_tensors
        slope = torch.sub(1.0, sig).mul_(sig).mul_(ZETA - GAMMA)  # dh/dV inside the clamp
        return None, None, (grad_output * s).mul_(inside).mul_(slope), None


def adaround_hard_quant(
    w: torch.Tensor, scale: torch.Tensor, v: torch.Tensor, qmax: int, *, ch_axis: int = 0
) -> torch.Tensor:
    """Hard AdaRound ``s * clamp(floor(w/s) + [V >= 0], -Qw, Qw)``: integers times the scale."""
    s = channel_view(scale, w, ch_axis)
    q = torch.clamp(torch.floor(w.detach() / s) + (v.detach() >= 0).to(w.dtype), -qmax, qmax)
    return q * s


def adaround_regularization(v: torch.Tensor, beta: float) -> torch.Tensor:
    """``sum(1 - |2 h(V) - 1|^beta)``: 0 when every ``h`` is 0 or 1.

    >>> adaround_regularization(torch.tensor([-10.0, 0.0, 10.0]), 2.0)
    tensor(1.)
    """
    return (1.0 - (2.0 * rectified_sigmoid(v) - 1.0).abs().pow(beta)).sum()


def beta_schedule(
    step: int, total_steps: int, warmup: float = 0.2, start: float = 20.0, end: float = 2.0
) -> float:
    """Annealed ``beta``: ``start`` during the warm-up, then linear decay to ``end``.

    The regulariser is off during the first ``warmup * total_steps`` steps (see
    :func:`regularization_weight`); afterwards ``beta`` decays linearly from ``start`` to ``end``
    at the last step (the paper's 20 -> 2; BRECQ's ``LinearTempDecay``).

    >>> [beta_schedule(s, 10) for s in (0, 2, 6, 10)]
    [20.0, 20.0, 11.0, 2.0]
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup is a fraction of total_steps in [0, 1), got {warmup}")
    decay_start = warmup * total_steps
    if step <= decay_start:
        return float(start)
    progress = min((step - decay_start) / (total_steps - decay_start), 1.0)
    return float(end + (start - end) * (1.0 - progress))


def regularization_weight(
    step: int, total_steps: int, warmup: float = 0.2, weight: float = 0.01
) -> float:
    """``lambda`` for ``lambda * regularization(beta)``: 0 during the warm-up, ``weight`` after.

    (0.01 is the default of AIMET's and BRECQ's AdaRound.)

    >>> regularization_weight(1, 10), regularization_weight(5, 10)
    (0.0, 0.01)
    """
    return 0.0 if step < warmup * total_steps else float(weight)


def mse_scale(
    w: torch.Tensor,
    qmax: int,
    ratios: Sequence[float] = MSE_RATIOS,
    *,
    ch_axis: int = 0,
    eps: float = EPS,
) -> torch.Tensor:
    """Per-channel scale ``r * max|w_c| / Qw`` minimising the round-to-nearest squared error."""
    w = w.detach().float()
    base = absmax_scale(w, qmax, ch_axis=ch_axis, eps=eps)
    dims = [d for d in range(w.dim()) if d != ch_axis]
    best_err = torch.full_like(base, math.inf)
    best = base.clone()
    for r in ratios:
        s = torch.clamp(base * r, min=eps)
        sv = channel_view(s, w, ch_axis)
        err = (torch.clamp(torch.round(w / sv), -qmax, qmax) * sv - w).pow(2)
        err = err.sum(dim=dims) if dims else err
        better = err < best_err
        best = torch.where(better, s, best)
        best_err = torch.where(better, err, best_err)
    return best


class AdaRoundFakeQuantize(WeightFakeQuantize):
    """AdaRound weight fake-quant: fixed per-row grid, learnable rounding ``V`` per weight.

    The first forward with the observer enabled sets the per-row ``scale`` (``scale_init``) and
    ``V`` (``h(V) = frac(w/s)``, so the soft forward reproduces ``w`` up to clipping). Both stay
    fixed by the observer afterwards; only the optimizer changes ``V``. A forward before that
    raises ``ValueError`` (``V`` needs the weight's shape).

    Args:
        bits: 2..8.
        full_range: ``Qw = 127`` at 8 bits.
        embedding: report the ``nn.Embedding`` qscheme.
        scale_init: ``"mse"`` (default) or ``"max"``.
        factory_kwargs: only the device is used.

    Use: freeze the layer's weight, train ``v`` with ``loss + lam * fq.regularization(beta)``,
    then :meth:`harden` / ``fold``.
    """

    supported_bits = WEIGHT_BITS
    _lazy_state = ("scale", "v")

    def __init__(
        self,
        *,
        bits: int = 8,
        full_range: bool = False,
        embedding: bool = False,
        scale_init: str = "mse",
        factory_kwargs: Optional[dict] = None,
    ) -> None:
        super().__init__(
            method="AdaRound",
            bits=bits,
            supported_bits=self.supported_bits,
            full_range=full_range,
            embedding=embedding,
            factory_kwargs=factory_kwargs,
        )
        if scale_init not in SCALE_INITS:
            raise ValueError(f"AdaRound: scale_init={scale_init!r} is not one of {SCALE_INITS}")
        self.scale_init = scale_init
        device = self._factory_device
        self.register_buffer("scale", torch.ones(1, device=device))
        self.v = nn.Parameter(torch.zeros(1, device=device))
        # 1 after harden(): forward = hard rounding floor(w/s) + [V >= 0].
        self.register_buffer("hard", torch.tensor([0], dtype=torch.uint8))  # host flag

    def _observe(self, w: torch.Tensor) -> None:
        if flag(self.initialized):
            return
        if self.scale_init == "mse":
            scale = mse_scale(w, self.int_max, ch_axis=0)
        else:
            scale = absmax_scale(w, self.int_max, ch_axis=0)
        s = channel_view(scale, w, 0)
        frac = w.float() / s - torch.floor(w.float() / s)
        self._set_lazy("scale", scale)
        self._set_lazy("v", inverse_rectified_sigmoid(frac))
        self.initialized.fill_(1)

    def _check_ready(self, w: torch.Tensor) -> None:
        if not flag(self.initialized):
            raise ValueError(
                "AdaRound is not initialised: run one forward with the observer enabled "
                "(enable_observer()) or load a state_dict before using it"
            )
        if self.v.shape != w.shape:
            raise ValueError(
                f"AdaRound V was initialised for a weight of shape {tuple(self.v.shape)}, got "
                f"{tuple(w.shape)}: one AdaRoundFakeQuantize belongs to one weight"
            )

    def _scale(self) -> torch.Tensor:
        return self.scale

    def _quantize(self, w: torch.Tensor) -> torch.Tensor:
        self._check_ready(w)
        if flag(self.hard):
            return adaround_hard_quant(w, self.scale, self.v, self.int_max)
        return adaround_soft_quant(w, self.scale, self.v, self.int_max)

    def _fold_values(self, w: torch.Tensor) -> torch.Tensor:
        self._check_ready(w)
        self.harden()
        return adaround_hard_quant(w, self.scale, self.v, self.int_max)

    def harden(self) -> None:
        """Switch the forward to hard rounding ``floor(w/s) + [V >= 0]`` (exact grid values)."""
        self.hard.fill_(1)

    def regularization(self, beta: float) -> torch.Tensor:
        """``sum(1 - |2 h(V) - 1|^beta)`` over this weight (see :func:`beta_schedule`)."""
        return adaround_regularization(self.v, beta)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scale_init={self.scale_init}, hard={int(self.hard[0])}"

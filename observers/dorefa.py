"""DoReFa-Net quantizers (Zhou et al. 2016, https://arxiv.org/abs/1606.06160).

Weights. The paper maps ``tanh(w)`` to ``[-1, 1]`` and quantizes it with ``2^k - 1`` levels:
``w_q = 2 quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1``. ``2^k - 1`` levels on ``[-1, 1]``
have their zero point at 127.5 (8 bits), which no integer grid can hold, so here the same
transform is quantized on the symmetric grid with ``2 Q_w`` steps (an even count, zero point
0)::

    t = tanh(w);  u = t / max_row |t|;  q = round(Q_w * u) in [-Q_w, Q_w];  w_q = q / Q_w

i.e. the paper's formula with ``quantize`` having ``2 Q_w`` steps instead of ``2^k - 1``.

Deviations, both documented choices:

* **Per row, not per tensor**: ``max|t|`` is taken per output row, matching the per-row INT8
  grid every method here uses. The max is *not* detached (as in the reference TensorFlow
  implementation, gradients flow through the normalisation, reaching the row's arg-max).
* **Rescaled to the weight's magnitude**: the paper trains with ``w_q`` in ``[-1, 1]`` (batch
  norm after each layer absorbs the scale). SASRec's linears have no such normalisation and
  fine-tuning starts from an FP32 checkpoint with small weights, so the output is
  ``c * w_q`` with ``c = max_row |w|`` (a detached statistic, updated while the observer is
  enabled). The forward is therefore ``q * scale`` with ``scale = c / Q_w`` per row, the value
  ``calculate_qparams`` returns. For small weights ``tanh(w) ~ w`` and this is close to plain
  round-to-nearest; larger weights get tanh's compression.

Gradient: straight-through on the rounding, then through the tanh and the row normalisation:
``dL/dw = c * d(t/m)/dw^T dL/dw_q`` (``m = max|t|``).

Activations. DoReFa clips activations to a fixed range ``[0, 1]`` (after a bounded
nonlinearity) and quantizes uniformly. SASRec's quantized activations are signed and unbounded,
so :class:`DorefaActivationFakeQuantize` uses a fixed range calibrated from data: the running
min/max of the first ``calibration_steps`` observed batches (the union of their ranges, not a
moving average), after which the observer switches itself off and the range stays fixed;
values are clipped to it and quantized uniformly (affine ``quint8``) with straight-through
rounding, gradient 0 outside the range as for DoReFa's clip.
"""

from __future__ import annotations

from typing import Optional

import torch

from observers.grid import (
    EPS,
    channel_view,
)
from observers.ste import SteActivationFakeQuantize, SteWeightFakeQuantize

__all__ = [
    "DorefaActivationFakeQuantize",
    "DorefaWeightFakeQuant",
    "DorefaWeightFakeQuantize",
    "dorefa_normalize",
    "dorefa_weight_fake_quant",
]


def dorefa_normalize(w: torch.Tensor, *, ch_axis: int = 0, eps: float = EPS) -> torch.Tensor:
    """``tanh(w) / max|tanh(w)|`` per channel (gradient flows through the max).

    >>> dorefa_normalize(torch.tensor([[0.5, -1.0], [0.0, 0.0]]))
    tensor([[ 0.6068, -1.0000],
            [ 0.0000,  0.0000]])
    """
    t = torch.tanh(w)
    dims = [d for d in range(w.dim()) if d != ch_axis]
    m = t.abs().amax(dim=dims, keepdim=True) if dims else t.abs()
    return t / torch.clamp(m, min=eps)


def dorefa_weight_fake_quant(
    w: torch.Tensor, scale: torch.Tensor, qmax: int, *, ch_axis: int = 0
) -> torch.Tensor:
    """``round(Qw * tanh(w) / max|tanh(w)|) * scale`` per channel, straight-through rounding.

    ``scale`` is the per-channel grid step (``max|w| / Qw`` in :class:`DorefaWeightFakeQuantize`).
    """
    if ch_axis != 0:
        raise ValueError(f"dorefa_weight_fake_quant: ch_axis must be 0 (per row), got {ch_axis}")
    return DorefaWeightFakeQuant.apply(w, scale, qmax, EPS)


class DorefaWeightFakeQuant(torch.autograd.Function):
    """DoReFa's weight transform, rounding and their gradients, as one autograd node.

    Forward, per row (``dorefa_normalize``; ``s`` the detached per-row scale)::

        t = tanh(w),  m = max_row |t|,  u = t / max(m, eps),
        q = round(Q_w u),  w_q = q * s

    ``|t| <= m`` makes ``|u| <= 1`` and ``|q| <= Q_w`` (float division and products are
    monotonic), so the clamp to ``[-Q_w, Q_w]`` of :func:`dorefa_weight_fake_quant`'s formula is
    never active and its straight-through mask is all ones: neither is computed.

    Backward (straight-through rounding)::

        g      = dL/dw_q * s * Q_w                           (dL/du)
        dL/dm  = -sum_row(g * t) / max(m, eps)**2 * [m >= eps]
        dL/dt  = g / max(m, eps) + dL/dm * sgn(t) * [|t| = m] / #{|t| = m}
        dL/dw  = dL/dt * (1 - t**2)

    the derivatives autograd takes of the composed ops (the row max passes its gradient to the
    row's arg-max elements, split evenly between ties), in about half of their operators.
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, scale: torch.Tensor,  # type: ignore[override]
                qmax: int, eps: float) -> torch.Tensor:
        t = torch.tanh(w)
        dims = tuple(range(1, w.dim()))
        m = t.abs().amax(dim=dims, keepdim=True) if dims else t.abs()
        m_clamped = torch.clamp(m, min=eps)
        q = torch.div(t, m_clamped).mul_(qmax).round_()
        s = channel_view(scale.detach(), w, 0)
        ctx.save_for_backward(t, m, m_clamped, s)
        ctx.config = (qmax, eps, dims, w.dtype)
        return q.mul_(s)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        t, m, m_clamped, s = ctx.saved_tensors
        qmax, eps, dims, w_dtype = ctx.config
        g = (grad_output * s).mul_(qmax)
        grad_m = torch.mul(g, t)
        if dims:
            grad_m = grad_m.sum(dim=dims, keepdim=True)
        grad_m = grad_m.neg_().div_(m_clamped * m_clamped).mul_(m >= eps)
        abs_t = t.abs()
        if dims:
            at_max = abs_t == m
            grad_m = grad_m / at_max.sum(dim=dims, keepdim=True)
            grad_abs = torch.mul(at_max, grad_m)
        else:
            grad_abs = grad_m
        grad_t = g.div_(m_clamped).add_(grad_abs.mul_(t.sgn()))
        grad_w = grad_t.mul_(1.0 - t * t)
        return grad_w.to(w_dtype), None, None, None


class DorefaWeightFakeQuantize(SteWeightFakeQuantize):
    """DoReFa weight fake-quant on the symmetric per-row grid, rescaled to ``max|w|``.

    Forward ``round(Qw * tanh(w) / max_row|tanh(w)|) * scale`` with ``scale = max_row|w| / Qw``
    (recomputed while the observer is enabled, frozen otherwise; 1.0 before the first observed
    forward). See the module docstring for the deviations from the paper.

    Args:
        bits: 2..8.
        full_range: ``Qw = 127`` at 8 bits.
        embedding: report the ``nn.Embedding`` qscheme.
        factory_kwargs: only the device is used.
    """

    method_name = "DoReFa"  # grid and observer are STE's (absmax per row); the forward differs

    def _quantize(self, w: torch.Tensor) -> torch.Tensor:
        return dorefa_weight_fake_quant(w, self.scale, self.int_max)


class DorefaActivationFakeQuantize(SteActivationFakeQuantize):
    """Fixed-range activation fake-quant, range calibrated on the first batches (DoReFa).

    While the observer is enabled, ``min_val``/``max_val`` track the running min/max of all
    observed batches; after ``calibration_steps`` observed batches the observer disables itself
    (``calibration_steps=None``: observe until ``disable_observer()``). Grid, qparams and forward
    are STE's: ``(clamp(rint(fma(x, 1/s, z)), 0, 255) - z) * s`` with ``(s, z)`` from the range
    (widened to contain 0). Before any observed batch ``s = 1, z = 0``.

    Args:
        calibration_steps: observed batches before the range is frozen (default 100).
        bits: must be 8.
        factory_kwargs: only the device is used.
    """

    method_name = "DoReFa"

    def __init__(
        self,
        *,
        calibration_steps: Optional[int] = 100,
        bits: int = 8,
        factory_kwargs: Optional[dict] = None,
    ) -> None:
        super().__init__(bits=bits, factory_kwargs=factory_kwargs)
        if calibration_steps is not None and (
            isinstance(calibration_steps, bool)
            or not isinstance(calibration_steps, int)
            or calibration_steps < 1
        ):
            raise ValueError(
                f"calibration_steps must be a positive int (or None to calibrate until "
                f"disable_observer()), got {calibration_steps!r}"
            )
        self.calibration_steps = calibration_steps
        self.register_buffer("steps", torch.zeros(1, dtype=torch.int64))  # host flag

    def _update_range(self, batch_min: torch.Tensor, batch_max: torch.Tensor,
                      initialized: bool) -> None:
        if initialized:  # running min/max instead of STE's moving average
            batch_min = torch.minimum(batch_min, self.min_val)
            batch_max = torch.maximum(batch_max, self.max_val)
        self.min_val.copy_(batch_min)
        self.max_val.copy_(batch_max)

    def _observe(self, x: torch.Tensor) -> bool:
        if not super()._observe(x):
            return False
        self.steps += 1
        if self.calibration_steps is not None and self.steps.item() >= self.calibration_steps:
            self.disable_observer()
        return True

"""STE: observer-driven quantization parameters with straight-through rounding.

Straight-through estimator: Bengio, Leonard & Courville 2013, https://arxiv.org/abs/1308.3432;
integer-arithmetic QAT with min/max observers: Jacob et al. 2018, https://arxiv.org/abs/1712.05877.

Weights (:class:`SteWeightFakeQuantize`): one symmetric scale per output row from the current
weight, every step while the observer is enabled,

.. math::
    s_c = \\max(\\max_j |w_{cj}| / Q_w, \\epsilon),\\qquad
    w_q = \\mathrm{clamp}(\\mathrm{round}(w / s_c), -Q_w, Q_w) \\cdot s_c

Activations (:class:`SteActivationFakeQuantize`): exponential moving average of the batch
min/max (averaging constant 0.01; the first batch initialises), affine ``quint8`` grid from
:func:`observers.grid.affine_qparams`, rounded as ``torch.quantize_per_tensor`` rounds
(:func:`observers.grid.fake_quant_per_tensor`: ``rint(fma(x, 1/s, z))``, zero point added
before rounding).

Gradient (both): identity where the rounded integer (``round(w/s)``; activations
``rint(fma(x, 1/s, z))``) lies in ``[q_min, q_max]``, 0 outside (the STE mask of
``torch.fake_quantize_per_tensor_affine``).
"""

from __future__ import annotations

from typing import Optional

import torch

from observers.grid import (
    WEIGHT_BITS,
    ActivationFakeQuantize,
    WeightFakeQuantize,
    absmax_scale,
    affine_qparams,
    fake_quant_affine,
    fake_quant_per_tensor,
    flag,
)
from observers.sync import global_min_max, world_size

__all__ = ["SteActivationFakeQuantize", "SteWeightFakeQuantize", "moving_average_"]


def moving_average_(old: torch.Tensor, new: torch.Tensor,
                    averaging_constant: float) -> torch.Tensor:
    """``old + c * (new - old)`` written into ``old`` (torch's ``MovingAverageMinMaxObserver``
    update, the same float32 operations; in place: three operators, no copy back).

    >>> moving_average_(torch.tensor([1.0]), torch.tensor([3.0]), 0.25)
    tensor([1.5000])
    """
    return old.add_(torch.sub(new, old).mul_(averaging_constant))


class SteWeightFakeQuantize(WeightFakeQuantize):
    """Per-row symmetric weight fake-quant, scale from the current ``max|w|`` (STE).

    Forward: ``clamp(round(w / s), -Qw, Qw) * s`` per row, ``s = max|w_row| / Qw``; the scale is
    recomputed on every forward while the observer is enabled and frozen when it is disabled.
    Before any observed forward the scale is 1.0 (torch's ``FakeQuantize`` default).

    Args:
        bits: 2..8 (``Qw`` = 64 at 8 bits, ``2**(bits-1) - 1`` below).
        full_range: ``Qw = 127`` at 8 bits (only for CPUs with VNNI).
        embedding: report the ``nn.Embedding`` qscheme (``quint8``, float zero point 128).
        factory_kwargs: passed by ``nnqat`` modules; only the device is used.

    Example::

        >>> fq = SteWeightFakeQuantize(bits=4)
        >>> fq(torch.tensor([[0.7, -0.1, 0.33]]))
        tensor([[ 0.7000, -0.1000,  0.3000]])
    """

    supported_bits = WEIGHT_BITS
    method_name = "STE"  # subclasses that only change the forward rename it
    _lazy_state = ("scale",)

    def __init__(
        self,
        *,
        bits: int = 8,
        full_range: bool = False,
        embedding: bool = False,
        factory_kwargs: Optional[dict] = None,
    ) -> None:
        super().__init__(
            method=self.method_name,
            bits=bits,
            supported_bits=self.supported_bits,
            full_range=full_range,
            embedding=embedding,
            factory_kwargs=factory_kwargs,
        )
        self.register_buffer("scale", torch.ones(1, device=self._factory_device))

    def _observe(self, w: torch.Tensor) -> None:
        # a new tensor each step, swapped in (no copy): not written in place, since the tied
        # item table is quantized twice per forward and the first use saved the old scale for
        # backward
        self.scale.data = absmax_scale(w, self.int_max, ch_axis=0)
        self.initialized.fill_(1)

    def _scale(self) -> torch.Tensor:
        return self.scale

    def _quantize(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quant_affine(w, self.scale, 0.0, -self.int_max, self.int_max, ch_axis=0)


class SteActivationFakeQuantize(ActivationFakeQuantize):
    """Per-tensor affine ``quint8`` activation fake-quant from moving-average min/max (STE).

    Observer: ``min <- min + c (batch_min - min)``, same for max (the first observed batch sets
    them); ``(scale, zero_point)`` from :func:`observers.grid.affine_qparams` (range widened to
    contain 0, integer zero point in ``[0, 255]``). Forward:
    ``(clamp(rint(fma(x, 1/s, z)), 0, 255) - z) * s``, bit for bit
    ``torch.quantize_per_tensor(x, s, z, quint8).dequantize()``. Before any observed batch:
    ``s = 1, z = 0``.

    Args:
        averaging_constant: ``c`` in the moving average, in ``(0, 1]``.
        bits: must be 8 (activations are 8-bit whatever the weight bits).
        factory_kwargs: only the device is used.

    Note:
        The constant is stored as ``avg_constant``, not ``averaging_constant``: torch's
        ``prepare`` treats an activation with ``averaging_constant == 1`` as "memoryless" and
        moves it to a forward *pre*-hook, observing the module's input instead of its output.
    """

    method_name = "STE"  # subclasses that only change how the range is tracked rename it

    def __init__(
        self,
        *,
        averaging_constant: float = 0.01,
        bits: int = 8,
        factory_kwargs: Optional[dict] = None,
    ) -> None:
        super().__init__(method=self.method_name, bits=bits, factory_kwargs=factory_kwargs)
        if not 0.0 < averaging_constant <= 1.0:
            raise ValueError(
                f"averaging_constant must be in (0, 1] (0.01 is the default), "
                f"got {averaging_constant}"
            )
        self.avg_constant = float(averaging_constant)
        device = self._factory_device
        self.register_buffer("min_val", torch.zeros(1, device=device))
        self.register_buffer("max_val", torch.zeros(1, device=device))
        self.register_buffer("scale", torch.ones(1, device=device))
        self.register_buffer("zero_point", torch.zeros(1, dtype=torch.int64, device=device))

    def _update_range(self, batch_min: torch.Tensor, batch_max: torch.Tensor,
                      initialized: bool) -> None:
        """Fold the batch range into ``min_val``/``max_val`` (``initialized``: a range was
        observed before)."""
        if not initialized:
            self.min_val.copy_(batch_min)
            self.max_val.copy_(batch_max)
        else:
            moving_average_(self.min_val, batch_min, self.avg_constant)
            moving_average_(self.max_val, batch_max, self.avg_constant)

    def _observe(self, x: torch.Tensor) -> bool:
        """Update the range from ``x`` (all processes' ``x`` under DDP: ``global_min_max``);
        returns False, changing nothing, when the (global) batch is empty."""
        empty = x.numel() == 0
        if empty:
            inf = torch.full((1,), float("inf"), device=self.min_val.device)
            batch_min, batch_max = inf, -inf
        else:
            lo, hi = torch.aminmax(x)  # one pass over x (min() and max() took two)
            batch_min, batch_max = lo.float(), hi.float()  # 0-d: broadcast into the buffers
        if world_size() > 1:
            batch_min, batch_max = global_min_max(batch_min, batch_max)
            empty = bool(batch_min > batch_max)  # every shard was empty
        if empty:
            return False
        initialized = flag(self.initialized)
        self._update_range(batch_min, batch_max, initialized)
        affine_qparams(self.min_val, self.max_val, self.quant_min, self.quant_max,
                       out=(self.scale, self.zero_point))
        if not initialized:
            self.initialized.fill_(1)
        return True

    def _scale(self) -> torch.Tensor:
        return self.scale

    def _zero_point(self) -> torch.Tensor:
        return self.zero_point

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quant_per_tensor(
            x, self.scale, self.zero_point, self.quant_min, self.quant_max
        )

"""APoT: additive powers-of-two weight quantization (Li, Dong & Wang, ICLR 2020,
https://arxiv.org/abs/1909.13144).

Levels are sums of powers of two, dense near zero like the bell-shaped weight distribution.
With ``k = 2`` and ``B = bits - 1`` magnitude bits, the paper's set (its reference code's
``build_power_value``) is ``{sum_i p_i}`` normalised to a maximum of 1, with each term ``p_i``
drawn from ``{0}`` plus its own three powers of two (``n = ceil(B/2)`` terms; for odd ``B`` the
last term has a single power). A weight is clipped at ``alpha`` and projected onto the nearest
level (straight-through):

.. math::
    w_q = \\alpha \\, \\Pi_{Q}(\\mathrm{clip}(w / \\alpha, -1, 1)),\\qquad
    \\frac{\\partial w_q}{\\partial \\alpha} = \\begin{cases}
        \\Pi_Q(w/\\alpha) - w/\\alpha & |w| \\le \\alpha \\\\ \\mathrm{sign}(w) & |w| > \\alpha
    \\end{cases}

(the paper's clipping gradient; ``dw_q/dw`` = 1 inside, 0 outside).

Exactness on the INT8 grid. Every level must be an integer multiple ``m / D`` with
``|m| <= D <= Q_w`` so that ``scale = alpha / D`` and the integers ``m`` are exact:

* **4 bits** (``B = 3``): the paper's set is ``{0, 1, 2, 3, 4, 6, 8, 10} / 10`` exactly, so
  ``D = 10`` and the integers are ``+-{0, 1, 2, 3, 4, 6, 8, 10}``: **15 levels**, a subset of
  the int8 grid, stored as int8 values in ``[-10, 10]``.
* **8 bits** (``B = 7``, the odd-``B`` construction of the reference code extended to four
  terms: ``{1/2, 1/16, 1/256}``, ``{1/4, 1/32, 1/512}``, ``{1/8, 1/64, 1/1024}``, ``{1/128}``,
  128 magnitudes): exact integers would need ``D = 904``, far beyond int8. The set is snapped
  onto the saturation-safe grid, ``m = round(64 * level)``, and de-duplicated: **36 magnitudes,
  71 levels** in ``[-64, 64]`` (with ``full_range=True``, ``D = 127``: 61 magnitudes, 121
  levels). The result keeps APoT's shape (every integer up to 12, then gaps widening to 7) but
  has fewer levels than the 129 of uniform 8-bit: an "8-bit APoT" INT8 model is coarser than
  uniform 8-bit. That is the price of storing it as plain INT8 without re-rounding.

Other bit widths raise ``ValueError``.

Weight normalisation. The paper normalises each layer's weight to zero mean and unit standard
deviation before quantizing (``alpha`` then lives in units of sigma, initial value 3) and uses
the quantized normalised weight directly, which is fine in front of batch norm. Here the
quantized weight must stay on the original weight's scale (no normalisation layer follows
SASRec's linears), and a mean shift would break the symmetric zero-point-0 grid (``mu + level``
is not ``integer * scale``; ``mu`` times the input sum cannot be folded into a bias). So:

* only the standard deviation is used, per output row: ``sigma_c = std(w_c)`` (population std,
  detached; recomputed while the observer is enabled, like the paper's per-step normalisation,
  frozen when it is disabled);
* ``alpha_c`` is learnable, per row, in units of ``sigma_c`` (the paper's parametrisation, so
  its learning rate means the same for every layer); the effective clip is ``alpha_c sigma_c``
  on the original scale and the grid step is ``scale_c = |alpha_c| sigma_c / D``;
* the output is ``m * scale_c`` with ``m`` an integer level, the value ``calculate_qparams``
  describes. Its gradient w.r.t. ``alpha_c`` is the paper's, times ``sigma_c``.

Initialisation (first forward with the observer enabled): ``init="max"`` (default)
``alpha_c = max|w_c| / sigma_c`` (no clipping: the FP32 model's largest weight of each row is a
level); ``init="paper"`` ``alpha_c = 3`` (clip at 3 sigma, the reference code's value).

Activations of APoT models use the uniform LSQ activation quantizer
(``observers.METHOD_FAKE_QUANTS["apot"]``): the paper also learns the activation clip with the
same gradient as LSQ's step; a uniform grid is what the INT8 kernels run.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from typing import Optional

import torch
from torch import nn

from observers.grid import (
    EPS,
    WeightFakeQuantize,
    channel_view,
    check_bits,
    flag,
    sum_to_channels,
    weight_qmax,
)

__all__ = [
    "APOT_BITS",
    "ApotFakeQuant",
    "ApotWeightFakeQuantize",
    "apot_fake_quant",
    "apot_levels",
    "apot_magnitudes",
    "apot_scale",
    "level_midpoints",
    "project_to_levels",
]

APOT_BITS = (4, 8)
INITS = ("max", "paper")


def _apot_terms(magnitude_bits: int) -> list[list[Fraction]]:
    """The additive terms' power sets (k = 2), as the reference code builds them."""
    if magnitude_bits % 2 == 0:
        n = magnitude_bits // 2
        return [[Fraction(1, 2 ** (i + 1 + j * n)) for j in range(3)] for i in range(n)]
    n = (magnitude_bits + 1) // 2  # n - 1 terms with three powers, one with a single power
    terms: list[list[Fraction]] = [[] for _ in range(n)]
    power = 1
    for _ in range(2):
        for i in range(n - 1):
            terms[i].append(Fraction(1, 2**power))
            power += 1
    terms[n - 1].append(Fraction(1, 2**power))
    power += 1
    for i in range(n - 1):
        terms[i].append(Fraction(1, 2**power))
        power += 1
    return terms


def apot_magnitudes(bits: int) -> list[Fraction]:
    """The paper's non-negative APoT levels for ``bits`` (sign included), max normalised to 1.

    >>> [str(f) for f in apot_magnitudes(4)]
    ['0', '1/10', '1/5', '3/10', '2/5', '3/5', '4/5', '1']
    """
    terms = _apot_terms(bits - 1)
    sums = {
        sum(combo, Fraction(0)) for combo in itertools.product(*[[Fraction(0)] + t for t in terms])
    }
    top = max(sums)
    return sorted(s / top for s in sums)


def apot_levels(bits: int, *, full_range: bool = False) -> tuple[torch.Tensor, int]:
    """Integer magnitudes ``m`` (sorted, float32) and denominator ``D``: levels are ``+-m / D``.

    Exact (``D`` = common denominator) when that fits in ``[0, Qw]`` of the 8-bit grid, else
    snapped onto ``D = Qw`` (``round(D * level)``, de-duplicated).

    >>> apot_levels(4)
    (tensor([ 0.,  1.,  2.,  3.,  4.,  6.,  8., 10.]), 10)
    >>> m, d = apot_levels(8); (len(m), d)
    (36, 64)
    """
    check_bits(bits, APOT_BITS, "APoT weights")
    mags = apot_magnitudes(bits)
    limit = weight_qmax(8, full_range=full_range)
    exact = math.lcm(*[f.denominator for f in mags])
    if exact <= limit:
        denominator = exact
        ints = sorted({int(f * exact) for f in mags})
    else:
        denominator = limit
        ints = sorted({round(f * limit) for f in mags})
    return torch.tensor(ints, dtype=torch.float32), denominator


def level_midpoints(magnitudes: torch.Tensor) -> torch.Tensor:
    """The decision points of :func:`project_to_levels`: midpoints of consecutive magnitudes."""
    return (magnitudes[1:] + magnitudes[:-1]) / 2


def project_to_levels(x: torch.Tensor, magnitudes: torch.Tensor,
                      mids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Nearest signed level ``sign(x) * m_j`` (ties toward zero); ``magnitudes`` sorted, from 0.
    ``mids``: :func:`level_midpoints` of ``magnitudes``, if the caller keeps them.

    >>> project_to_levels(torch.tensor([-4.9, 5.0, 5.1, 9.5]), torch.tensor([0.0, 4.0, 6.0, 10.0]))
    tensor([-4.,  4.,  6., 10.])
    """
    if mids is None:
        mids = level_midpoints(magnitudes)
    idx = torch.bucketize(x.abs(), mids)
    return torch.sign(x) * magnitudes[idx]


def apot_scale(
    alpha: torch.Tensor, sigma: torch.Tensor, denominator: int, *, eps: float = EPS
) -> torch.Tensor:
    """Grid step ``max(|alpha| * sigma / D, eps)`` (per channel)."""
    return torch.clamp(alpha.abs() * sigma / denominator, min=eps)


def apot_fake_quant(
    w: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    magnitudes: torch.Tensor,
    denominator: int,
    *,
    ch_axis: int = 0,
    mids: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``m * scale`` with ``m = project(clamp(w / scale, -D, D))``, ``scale = |alpha| sigma / D``.

    Straight-through projection; gradients as in the module docstring (times ``sigma``).
    ``mids``: :func:`level_midpoints` of ``magnitudes``, if the caller keeps them.
    """
    if ch_axis != 0:
        raise ValueError(f"apot_fake_quant: ch_axis must be 0 (one clip per row), got {ch_axis}")
    if mids is None:
        mids = level_midpoints(magnitudes)
    return ApotFakeQuant.apply(w, alpha, sigma, magnitudes, mids, denominator, EPS)


class ApotFakeQuant(torch.autograd.Function):
    """APoT's clip, projection and their gradients, as one autograd node.

    Forward, per row ``c`` (``raw_c = |alpha_c| sigma_c / D``, ``s_c = max(raw_c, eps)``)::

        x = clamp(w / s_c, -D, D),    w_q = project(x) * s_c

    Backward (straight-through projection; ``m = [-D <= w / s_c <= D]``)::

        dL/dw       = dL/dw_q * m
        dL/dalpha_c = sgn(alpha_c) sigma_c / D [raw_c >= eps]
                      * sum_row(dL/dw_q (project(x) - m w / s_c))

    i.e. the module docstring's clipping gradient times ``sigma_c``: ``project(x) - x`` inside
    the clip, ``+-D`` (the clipped level) outside. The derivatives of the composed ops, in
    about a third of their operators.
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, alpha: torch.Tensor,  # type: ignore[override]
                sigma: torch.Tensor, magnitudes: torch.Tensor, mids: torch.Tensor,
                denominator: int, eps: float) -> torch.Tensor:
        raw = alpha.detach().abs() * sigma / denominator
        s = channel_view(torch.clamp(raw, min=eps), w, 0)
        ratio = w / s
        x = torch.clamp(ratio, -denominator, denominator)
        inside = x == ratio
        q = project_to_levels(x, magnitudes, mids)
        ctx.save_for_backward(ratio, q, inside, alpha, sigma, raw)
        ctx.config = (denominator, eps, w.dtype)
        return q * s

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        ratio, q, inside, alpha, sigma, raw = ctx.saved_tensors
        denominator, eps, w_dtype = ctx.config
        grad_w = grad_output * inside
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            term = torch.mul(ratio, inside)
            term = torch.sub(q, term).mul_(grad_output)
            total = sum_to_channels(term, alpha)
            slope = torch.where(raw >= eps, alpha.sgn() * sigma / denominator, 0.0)
            grad_alpha = total.mul_(slope)
        return grad_w.to(w_dtype), grad_alpha, None, None, None, None, None


class ApotWeightFakeQuantize(WeightFakeQuantize):
    """APoT weight fake-quant: per-row learnable clip ``alpha`` (in row std units), APoT levels.

    Forward ``m * scale_c`` with ``scale_c = |alpha_c| sigma_c / D`` and ``m`` the nearest level
    of ``clamp(w / scale_c, -D, D)``; ``D = 10`` at 4 bits, 64 at 8 bits (127 with
    ``full_range``). ``quant_min``/``quant_max`` are ``-+D``.

    Args:
        bits: 4 or 8.
        full_range: at 8 bits snap the levels onto ``[-127, 127]`` instead of ``[-64, 64]``.
        embedding: report the ``nn.Embedding`` qscheme.
        init: ``"max"`` (``alpha_c = max|w_c| / sigma_c``, default) or ``"paper"`` (3.0).
        factory_kwargs: only the device is used.
    """

    supported_bits = APOT_BITS
    _lazy_state = ("alpha", "sigma")

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
            method="APoT",
            bits=bits,
            supported_bits=self.supported_bits,
            full_range=full_range,
            embedding=embedding,
            factory_kwargs=factory_kwargs,
        )
        if init not in INITS:
            raise ValueError(f"APoT: init={init!r} is not one of {INITS}")
        self.init = init
        magnitudes, denominator = apot_levels(bits, full_range=full_range)
        assert denominator == self.int_max
        device = self._factory_device
        self.register_buffer("magnitudes", magnitudes.to(device), persistent=False)
        self.register_buffer("mids", level_midpoints(self.magnitudes), persistent=False)
        self.alpha = nn.Parameter(torch.ones(1, device=device))
        self.register_buffer("sigma", torch.ones(1, device=device))

    def _int_max(self, bits: int, full_range: bool) -> int:
        return apot_levels(bits, full_range=full_range)[1]

    def _observe(self, w: torch.Tensor) -> None:
        w = w.float()
        dims = list(range(1, w.dim()))
        sigma = torch.clamp(w.std(dim=dims, correction=0) if dims else w.abs(), min=EPS)
        self.sigma.data = sigma  # a new tensor each step, swapped in (see SteWeightFakeQuantize)
        if not flag(self.initialized):
            if self.init == "max":
                alpha = w.abs().amax(dim=dims) / sigma if dims else w.abs() / sigma
            else:
                alpha = torch.full_like(sigma, 3.0)
            self._set_lazy("alpha", alpha)
            self.initialized.fill_(1)

    def _scale(self) -> torch.Tensor:
        return apot_scale(self.alpha.detach(), self.sigma, self.int_max)

    def _quantize(self, w: torch.Tensor) -> torch.Tensor:
        return apot_fake_quant(w, self.alpha, self.sigma, self.magnitudes, self.int_max,
                               mids=self.mids)

    def extra_repr(self) -> str:
        return (
            super().extra_repr() + f", levels={2 * self.magnitudes.numel() - 1}, init={self.init}"
        )

"""One-node quantizer functions against the composed autograd graphs they replace.

Each fake quantizer runs as one ``torch.autograd.Function`` with a hand-written backward (fewer
kernels per training step, issue 12). The references below are the composed ops the project
used before, differentiated by autograd: forwards must agree bit for bit, gradients to float
rounding, on data that exercises every branch (clipping on both sides, ties, the eps floor,
negative learned parameters).
"""

from functools import partial

import pytest
import torch

from observers.adaround import (
    GAMMA,
    ZETA,
    adaround_regularization,
    adaround_soft_quant,
    rectified_sigmoid,
)
from observers.apot import apot_fake_quant, apot_levels, apot_scale, project_to_levels
from observers.dorefa import dorefa_normalize, dorefa_weight_fake_quant
from observers.grid import (
    EPS,
    channel_view,
    fake_quant_affine,
    fake_quant_per_tensor,
    quantize_per_tensor_rint,
    round_ste,
    straight_through,
)
from observers.lsq import lsq_fake_quant
from observers.pact import pact_fake_quant, pact_regularization


class GradScale(torch.autograd.Function):
    """Identity forward, gradient times ``factor`` backward: LSQ's grad-scale trick as the
    composed graph wrote it (``LsqFakeQuant`` now applies the factor in closed form)."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.clone()

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output * ctx.factor, None


def grad_scale(x, factor):
    return GradScale.apply(x, factor)


def composed_fixed_affine(x, scale, zero_point, qmin, qmax, ch_axis=None):
    if ch_axis is not None:
        scale = channel_view(scale, x, ch_axis)
    q = torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def composed_fixed_per_tensor(x, scale, zero_point, qmin, qmax):
    q_exact = quantize_per_tensor_rint(x, scale, zero_point)
    q = straight_through(x / scale + zero_point, lambda _: q_exact)
    return (torch.clamp(q, qmin, qmax) - zero_point) * scale


def composed_lsq(x, scale, zero_point, qmin, qmax, grad_factor, ch_axis=None):
    s = torch.clamp(grad_scale(scale, grad_factor).abs(), min=EPS)
    if zero_point is None:
        return composed_fixed_affine(x, s, 0.0, qmin, qmax, ch_axis)
    z = round_ste(torch.clamp(grad_scale(zero_point, grad_factor), qmin, qmax))
    q_exact = quantize_per_tensor_rint(x, s, z)
    q = straight_through(x / s + z, lambda _: q_exact)
    return (torch.clamp(q, qmin, qmax) - z) * s


def composed_pact(x, alpha, signed):
    a = torch.clamp(alpha.abs(), min=EPS)
    step = (a / (127.0 if signed else 255.0)).detach()
    y = torch.where(x >= a, a, x)
    if signed:
        lo = a * (-128.0 / 127.0)
        y = torch.where(x <= lo, lo, y)
    else:
        y = torch.where(x <= 0, torch.zeros_like(x), y)
    return composed_fixed_per_tensor(y, step, float(128 if signed else 0), 0, 255)


def composed_apot(w, alpha, sigma, magnitudes, denominator):
    s = channel_view(apot_scale(alpha, sigma, denominator), w, 0)
    x = torch.clamp(w / s, -denominator, denominator)
    return straight_through(x, partial(project_to_levels, magnitudes=magnitudes)) * s


def composed_dorefa(w, scale, qmax):
    q = torch.clamp(round_ste(qmax * dorefa_normalize(w)), -qmax, qmax)
    return q * channel_view(scale, w, 0)


def composed_adaround(w, scale, v, qmax):
    s = channel_view(scale, w, 0)
    return torch.clamp(torch.floor(w.detach() / s) + rectified_sigmoid(v), -qmax, qmax) * s


def run(fn, tensors, grad_out_seed=0):
    """Forward ``fn`` on fresh leaf copies of ``tensors`` and backward a random gradient."""
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in tensors]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_out_seed))
    out.backward(g)
    return out.detach(), [t.grad for t in leaves]


def assert_same(fused, composed, tensors, *, rtol=1e-5, atol=1e-6):
    out_f, grads_f = run(fused, tensors)
    out_c, grads_c = run(composed, tensors)
    assert torch.equal(out_f.view(torch.int32), out_c.view(torch.int32))  # also +-0.0
    for new, old in zip(grads_f, grads_c):
        if old is None:
            assert new is None or not new.any()
        else:
            torch.testing.assert_close(new, old, rtol=rtol, atol=atol)
    return grads_f


def test_fixed_grid_per_tensor_and_per_row_match_the_composed_ste():
    torch.manual_seed(0)
    x = (torch.randn(64, 30) * 4).requires_grad_()
    s, z = torch.tensor([0.02]), torch.tensor([131.0])
    grads = assert_same(lambda x: fake_quant_per_tensor(x, s, z, 0, 255),
                        lambda x: composed_fixed_per_tensor(x, s, z, 0, 255), [x])
    assert 0 < (grads[0] == 0).sum() < x.numel()  # both sides of the clamp exercised
    w = (torch.randn(16, 8) * 0.1).requires_grad_()
    s_row = w.detach().abs().amax(dim=1) / 90  # rows clip: their max maps to 90 > 64
    grads = assert_same(lambda w: fake_quant_affine(w, s_row, 0.0, -64, 64, ch_axis=0),
                        lambda w: composed_fixed_affine(w, s_row, 0.0, -64, 64, 0), [w])
    assert 0 < (grads[0] == 0).sum() < w.numel()


@pytest.mark.parametrize("qmax", [64, 7])
def test_lsq_weight_matches_the_composed_graph(qmax):
    torch.manual_seed(1)
    w = (torch.randn(16, 8) * 0.05).requires_grad_()
    scale = w.detach().abs().amax(dim=1) / qmax * 0.7  # clip some weights
    scale[3] = -scale[3]  # a negative step: |scale| forward, sign in the gradient
    scale[5] = EPS / 2  # below eps: clamped forward, no gradient
    scale.requires_grad_()
    g = 1.0 / (8 * qmax) ** 0.5
    grads = assert_same(lambda w, s: lsq_fake_quant(w, s, None, -qmax, qmax, g, ch_axis=0),
                        lambda w, s: composed_lsq(w, s, None, -qmax, qmax, g, 0), [w, scale])
    assert grads[1][5] == 0 and grads[1][3] != 0


@pytest.mark.parametrize("zero_point", [100.0, 300.0, -4.0])  # in range, above, below
def test_lsq_activation_matches_the_composed_graph(zero_point):
    torch.manual_seed(2)
    x = (torch.randn(40, 25) * 2).requires_grad_()
    scale = torch.tensor([0.013], requires_grad=True)
    zp = torch.tensor([zero_point], requires_grad=True)
    g = 1.0 / (x.numel() * 255) ** 0.5
    grads = assert_same(lambda x, s, z: lsq_fake_quant(x, s, z, 0, 255, g),
                        lambda x, s, z: composed_lsq(x, s, z, 0, 255, g), [x, scale, zp],
                        atol=1e-7)
    assert (grads[2] != 0).all() == (0 <= zero_point <= 255)


@pytest.mark.parametrize("signed", [True, False])
def test_pact_matches_the_composed_graph(signed):
    torch.manual_seed(3)
    x = (torch.randn(50, 20) * 2).requires_grad_()
    for alpha in ([1.5], [-1.5]):
        a = torch.tensor(alpha, requires_grad=True)
        grads = assert_same(lambda x, a: pact_fake_quant(x, a, signed=signed),
                            lambda x, a: composed_pact(x, a, signed), [x, a])
        assert grads[1].abs().item() > 0 and 0 < (grads[0] == 0).sum() < x.numel()
    tiny = torch.tensor([1e-9], requires_grad=True)  # |alpha| < eps: floored, no gradient
    grads = assert_same(lambda x, a: pact_fake_quant(x, a, signed=signed),
                        lambda x, a: composed_pact(x, a, signed), [x, tiny])
    assert grads[1].item() == 0


@pytest.mark.parametrize("bits", [4, 8])
def test_apot_matches_the_composed_graph(bits):
    torch.manual_seed(4)
    magnitudes, denominator = apot_levels(bits)
    w = (torch.randn(12, 10) * 0.1).requires_grad_()
    sigma = w.detach().std(dim=1, correction=0)
    alpha = torch.full((12,), 2.0)
    alpha[2] = -2.0
    alpha[4] = 1e-9  # scale floored at eps: no gradient
    alpha.requires_grad_()
    grads = assert_same(
        lambda w, a: apot_fake_quant(w, a, sigma, magnitudes, denominator),
        lambda w, a: composed_apot(w, a, sigma, magnitudes, denominator), [w, alpha])
    assert grads[1][4] == 0 and grads[1][2] != 0 and 0 < (grads[0] == 0).sum() < w.numel()


@pytest.mark.parametrize("qmax", [64, 7])
def test_dorefa_matches_the_composed_graph_with_tied_row_maxima(qmax):
    torch.manual_seed(5)
    w = torch.randn(10, 8) * 0.3
    w[1, 2] = w[1, 5] = w[1].abs().max() + 0.1  # two arg-maxima: gradient split between them
    w[2, 0], w[2, 3] = w[2].abs().max() + 0.1, -(w[2].abs().max() + 0.1)  # +- tie
    w[3] = 0.0  # zero row: max floored at eps
    w[4, :3] = torch.tensor([20.0, -20.0, 9.0])  # tanh saturates at +-1: q = +-Qw, no clamp
    w.requires_grad_()
    scale = w.detach().abs().amax(dim=1).clamp(min=EPS) / qmax
    assert_same(lambda w: dorefa_weight_fake_quant(w, scale, qmax),
                lambda w: composed_dorefa(w, scale, qmax), [w])


def test_adaround_soft_matches_the_composed_graph():
    torch.manual_seed(6)
    w = torch.randn(8, 6) * 0.1
    scale = w.abs().amax(dim=1) / 5  # integers up to +-5: qmax 4 clips some
    v = torch.randn(8, 6) * 4  # h saturates at 0 and 1 for some entries
    v.requires_grad_()
    grads = assert_same(lambda v: adaround_soft_quant(w, scale, v, 4),
                        lambda v: composed_adaround(w, scale, v, 4), [v])
    h = torch.sigmoid(v.detach()) * (ZETA - GAMMA) + GAMMA
    assert ((h < 0) | (h > 1)).any() and (grads[0] == 0).any() and (grads[0] != 0).any()


def test_model_regularizers_equal_the_sum_of_module_terms():
    from observers import AdaRoundFakeQuantize, PactActivationFakeQuantize
    from qat.methods import adaround_regularizer, pact_regularizer

    torch.manual_seed(7)
    model = torch.nn.Sequential(*[PactActivationFakeQuantize(alpha=a) for a in (0.5, 2.0, 3.0)])
    model[2].alpha_l2 = 1e-3  # two lambdas
    expected = sum(pact_regularization(m.alpha, m.alpha_l2) for m in model)
    torch.testing.assert_close(pact_regularizer(model, 0.5), expected, rtol=1e-6, atol=0)

    quantizers = []
    for shape in ((4, 3), (5, 2)):
        fq = AdaRoundFakeQuantize(scale_init="max")
        fq(torch.randn(shape))
        quantizers.append(fq)
    model = torch.nn.Sequential(*quantizers)
    total = sum(fq.v.numel() for fq in quantizers)
    got = adaround_regularizer(model, 0.6)
    got.backward()
    grads = [fq.v.grad.clone() for fq in quantizers]
    for fq in quantizers:
        fq.v.grad = None
    from observers import beta_schedule, regularization_weight
    from qat.methods import ADAROUND_STEPS
    step = round(0.6 * ADAROUND_STEPS)
    lam, beta = regularization_weight(step, ADAROUND_STEPS), beta_schedule(step, ADAROUND_STEPS)
    expected = lam * sum(adaround_regularization(fq.v, beta) for fq in quantizers) / total
    expected.backward()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    for fq, grad in zip(quantizers, grads):
        torch.testing.assert_close(grad, fq.v.grad, rtol=1e-6, atol=0)


def test_one_step_for_the_tensor_before_the_per_row_state_is_initialised():
    """Per-row LSQ steps and APoT clips start with one element until the first observed
    forward; a forward before that broadcasts it, and its gradient is summed over the tensor."""
    torch.manual_seed(8)
    w = (torch.randn(6, 4) * 0.1).requires_grad_()
    step = torch.tensor([0.001], requires_grad=True)  # small: both clip sides
    assert_same(lambda w, s: lsq_fake_quant(w, s, None, -64, 64, 0.1, ch_axis=0),
                lambda w, s: composed_lsq(w, s, None, -64, 64, 0.1, 0), [w, step])
    magnitudes, denominator = apot_levels(8)
    sigma = torch.ones(1)
    alpha = torch.tensor([0.1], requires_grad=True)
    assert_same(lambda w, a: apot_fake_quant(w, a, sigma, magnitudes, denominator),
                lambda w, a: composed_apot(w, a, sigma, magnitudes, denominator), [w, alpha])

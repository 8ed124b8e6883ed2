"""PACT against plain-torch references: exact forward, the paper's alpha gradient."""

import pytest
import torch

from observers.pact import PactActivationFakeQuantize


def ref_affine(x, scale, zp):
    """What the converted model computes: requantize on [0, 255] with (scale, zp)."""
    return (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale


def data(seed=0, n=400):
    torch.manual_seed(seed)
    return torch.randn(n) * 2


@pytest.mark.parametrize("signed, n_pos, zp", [(True, 127, 128), (False, 255, 0)])
def test_forward_equals_affine_grid_of_calculate_qparams(signed, n_pos, zp):
    x = data()
    fq = PactActivationFakeQuantize(signed=signed, alpha=1.5)
    y = fq(x)
    scale, zero_point = fq.calculate_qparams()
    assert zero_point.item() == zp and zero_point.dtype == torch.int64
    torch.testing.assert_close(scale, torch.tensor([1.5]) / n_pos, atol=0, rtol=0)
    torch.testing.assert_close(y, ref_affine(x, scale, zp), atol=0, rtol=0)
    lo = -128 / 127 * 1.5 if signed else 0.0
    assert y.max() <= 1.5 + 1e-6 and y.min() >= lo - 1e-6


@pytest.mark.parametrize("signed", [True, False])
def test_backward_is_the_paper_alpha_gradient(signed):
    x = data(1).requires_grad_()
    fq = PactActivationFakeQuantize(signed=signed, alpha=1.5)
    g = torch.randn(400)
    fq(x).backward(g)
    xd = x.detach()
    lo = -128 / 127 * 1.5 if signed else 0.0
    above, below = xd >= 1.5, xd <= lo
    inside = ~(above | below)
    assert above.any() and below.any() and inside.any()
    torch.testing.assert_close(x.grad, g * inside.float(), atol=1e-6, rtol=1e-6)
    d_alpha = g[above].sum() + ((-128 / 127) * g[below].sum() if signed else 0.0)
    torch.testing.assert_close(fq.alpha.grad, d_alpha.reshape(1), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("signed", [True, False])
def test_alpha_initialised_from_first_batch_without_clipping(signed):
    x = torch.tensor([-4.0, 0.5, 3.0])
    fq = PactActivationFakeQuantize(signed=signed)
    y = fq(x)
    expected = 4.0 * 127 / 128 if signed else 3.0
    assert fq.alpha.item() == pytest.approx(expected, rel=1e-7)
    if signed:  # nothing clipped: -4 is exactly the lowest grid point -128 * alpha / 127
        torch.testing.assert_close(y[0], torch.tensor(-4.0), atol=1e-6, rtol=0)
    fq(x * 10)
    assert fq.alpha.item() == pytest.approx(expected, rel=1e-7)  # initialised once


def test_given_alpha_is_kept():
    fq = PactActivationFakeQuantize(alpha=2.0)
    fq(data() * 5)
    assert fq.alpha.item() == 2.0


def test_regularization_is_lambda_alpha_squared_and_differentiable():
    fq = PactActivationFakeQuantize(alpha=3.0, alpha_l2=1e-3)
    reg = fq.regularization()
    torch.testing.assert_close(reg, torch.tensor(9e-3), atol=0, rtol=1e-6)
    reg.backward()
    torch.testing.assert_close(fq.alpha.grad, torch.tensor([6e-3]), atol=0, rtol=1e-6)
    assert PactActivationFakeQuantize().alpha_l2 == 2e-4


def test_negative_alpha_uses_its_magnitude():
    fq = PactActivationFakeQuantize(alpha=1.5)
    x = data()
    y = fq(x)
    with torch.no_grad():
        fq.alpha.neg_()
    torch.testing.assert_close(fq(x), y, atol=0, rtol=0)
    torch.testing.assert_close(fq.calculate_qparams()[0], torch.tensor([1.5 / 127]), atol=0, rtol=0)


def test_alpha_gets_grad_and_changes_after_a_step():
    fq = PactActivationFakeQuantize()
    fq(data(2))
    before = fq.alpha.detach().clone()
    opt = torch.optim.SGD(fq.parameters(), lr=0.1)
    x = data(3) * 3
    loss = (fq(x) - x).pow(2).mean() + fq.regularization()
    loss.backward()
    assert fq.alpha.grad is not None and fq.alpha.grad.abs().item() > 0
    opt.step()
    assert fq.alpha.item() != before.item()


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match=r"8-bit only.*supported bits are \(8,\)"):
        PactActivationFakeQuantize(bits=4)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        PactActivationFakeQuantize(alpha=0.0)
    with pytest.raises(ValueError, match="alpha_l2 must be >= 0"):
        PactActivationFakeQuantize(alpha_l2=-1.0)

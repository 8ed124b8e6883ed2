"""LSQ against plain-torch references: exact forward, hand-derived step/zero-point gradients."""

import math

import pytest
import torch

from observers.lsq import LsqActivationFakeQuantize, LsqWeightFakeQuantize


EPS = torch.finfo(torch.float32).eps


def ref_lsq_forward(x, s, z, qmin, qmax):
    return (torch.clamp(torch.round(x / s) + z, qmin, qmax) - z) * s


def ref_lsq_grads(x, s, z, qmin, qmax, g, grad_factor):
    """Paper eq. 3 (and LSQ+ for z), elementwise; caller sums over the elements sharing s."""
    xs = x / s
    q = torch.round(xs) + z
    below, above = q < qmin, q > qmax
    inside = ~(below | above)
    d_s = torch.where(inside, torch.round(xs) - xs, torch.where(below, qmin - z, qmax - z))
    d_z = torch.where(inside, torch.zeros_like(x), -s * torch.ones_like(x))
    return g * inside.float(), g * d_s * grad_factor, g * d_z * grad_factor


def weight(seed=0):
    torch.manual_seed(seed)
    return torch.randn(16, 8) * 0.05


@pytest.mark.parametrize("bits, qmax", [(8, 64), (4, 7)])
def test_weight_init_max_and_forward_exact(bits, qmax):
    w = weight()
    fq = LsqWeightFakeQuantize(bits=bits)
    y = fq(w)
    s = (w.abs().amax(dim=1) / qmax).clamp(min=EPS)
    torch.testing.assert_close(fq.scale.detach(), s, atol=0, rtol=0)
    torch.testing.assert_close(y, ref_lsq_forward(w, s[:, None], 0.0, -qmax, qmax), atol=0, rtol=0)


def test_weight_paper_init():
    w = weight()
    fq = LsqWeightFakeQuantize(bits=4, init="paper")
    fq(w)
    torch.testing.assert_close(
        fq.scale.detach(), 2 * w.abs().mean(dim=1) / math.sqrt(7), atol=0, rtol=1e-6
    )


def test_weight_initialises_once():
    fq = LsqWeightFakeQuantize()
    fq(weight(0))
    s0 = fq.scale.detach().clone()
    fq(weight(1) * 10)
    torch.testing.assert_close(fq.scale.detach(), s0, atol=0, rtol=0)


@pytest.mark.parametrize("bits, qmax", [(8, 64), (4, 7)])
def test_weight_backward_matches_lsq_reference(bits, qmax):
    w0 = weight()
    fq = LsqWeightFakeQuantize(bits=bits)
    fq(w0)
    with torch.no_grad():
        fq.scale.mul_(0.7)  # clip some weights so all three gradient cases occur
    w = w0.clone().requires_grad_()
    g = torch.randn_like(w)
    fq(w).backward(g)
    s = fq.scale.detach()[:, None]
    grad_factor = 1.0 / math.sqrt(8 * qmax)
    d_x, d_s, _ = ref_lsq_grads(w0, s, 0.0, -qmax, qmax, g, grad_factor)
    assert 0 < (d_x == 0).sum() < w.numel()
    torch.testing.assert_close(w.grad, d_x, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(fq.scale.grad, d_s.sum(dim=1), atol=1e-6, rtol=1e-5)


def test_weight_negative_step_uses_abs_and_calculate_qparams_agrees():
    w = weight()
    fq = LsqWeightFakeQuantize(bits=4)
    fq(w)
    with torch.no_grad():
        fq.scale.neg_()
    s = fq.scale.detach().abs()
    torch.testing.assert_close(fq(w), ref_lsq_forward(w, s[:, None], 0.0, -7, 7), atol=0, rtol=0)
    torch.testing.assert_close(fq.calculate_qparams()[0], s, atol=0, rtol=0)
    with torch.no_grad():
        fq.scale.zero_()
    torch.testing.assert_close(fq.calculate_qparams()[0], torch.full((16,), EPS), atol=0, rtol=0)


def test_activation_minmax_init_and_forward_exact():
    torch.manual_seed(1)
    x = torch.randn(4, 50)
    fq = LsqActivationFakeQuantize()
    y = fq(x)
    lo, hi = x.min(), x.max()
    s = (hi - lo) / 255
    z = torch.round(-lo / s)
    torch.testing.assert_close(fq.scale.detach(), s.reshape(1), atol=0, rtol=0)
    assert fq.zero_point.item() == z.item()
    torch.testing.assert_close(y, ref_lsq_forward(x, s, z, 0, 255), atol=0, rtol=0)


@pytest.mark.parametrize("shift, expected_zp, qp", [(0.0, 128.0, 127), (10.0, 0.0, 255)])
def test_activation_paper_init(shift, expected_zp, qp):
    torch.manual_seed(2)
    x = torch.randn(200) + shift
    if shift:
        x = x.clamp(min=0)
    fq = LsqActivationFakeQuantize(init="paper")
    fq(x)
    assert fq.zero_point.item() == expected_zp
    torch.testing.assert_close(
        fq.scale.detach(), (2 * x.abs().mean() / math.sqrt(qp)).reshape(1), atol=0, rtol=1e-6
    )


def test_activation_backward_matches_lsq_plus_reference():
    torch.manual_seed(3)
    fq = LsqActivationFakeQuantize()
    fq(torch.randn(100))
    x = (torch.randn(300) * 2).requires_grad_()  # wider than the init batch: both clip sides
    g = torch.randn(300)
    fq(x).backward(g)
    s, z = fq.scale.detach(), fq.zero_point.detach()
    grad_factor = 1.0 / math.sqrt(300 * 255)
    d_x, d_s, d_z = ref_lsq_grads(x.detach(), s, z, 0, 255, g, grad_factor)
    assert (d_z != 0).any() and (d_x != 0).any()
    torch.testing.assert_close(x.grad, d_x, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(fq.scale.grad, d_s.sum().reshape(1), atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(fq.zero_point.grad, d_z.sum().reshape(1), atol=1e-7, rtol=1e-5)


def test_activation_agrees_with_torch_learnable_kernel():
    torch.manual_seed(4)
    x = (torch.randn(500) * 2).requires_grad_()
    g = torch.randn(500)
    fq = LsqActivationFakeQuantize()
    with torch.no_grad():
        fq.scale.fill_(0.01)
        fq.zero_point.fill_(120.0)
    fq.initialized.fill_(1)
    fq(x).backward(g)
    ours = (x.grad.clone(), fq.scale.grad.clone(), fq.zero_point.grad.clone())

    x2 = x.detach().clone().requires_grad_()
    s = torch.tensor([0.01], requires_grad=True)
    z = torch.tensor([120.0], requires_grad=True)
    y = torch._fake_quantize_learnable_per_tensor_affine(
        x2, s, z, 0, 255, 1.0 / math.sqrt(500 * 255)
    )
    y.backward(g)
    torch.testing.assert_close(fq(x.detach()), y.detach(), atol=0.01 * 1.0001, rtol=0)
    torch.testing.assert_close(ours[0], x2.grad, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours[1], s.grad, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(ours[2], z.grad, atol=1e-6, rtol=1e-4)


def test_activation_zero_point_rounded_consistently():
    fq = LsqActivationFakeQuantize()
    fq.initialized.fill_(1)
    with torch.no_grad():
        fq.scale.fill_(0.1)
        fq.zero_point.fill_(100.4)
    x = torch.tensor([-20.0, 0.0, 1.23, 20.0])
    torch.testing.assert_close(fq(x), ref_lsq_forward(x, 0.1, 100.0, 0, 255), atol=0, rtol=0)
    scale, zp = fq.calculate_qparams()
    assert zp.dtype == torch.int64 and zp.item() == 100
    with torch.no_grad():
        fq.zero_point.fill_(300.0)
    assert fq.calculate_qparams()[1].item() == 255


@pytest.mark.parametrize(
    "cls, data", [(LsqWeightFakeQuantize, "w"), (LsqActivationFakeQuantize, "x")]
)
def test_learnable_parameters_get_grads_and_change_after_a_step(cls, data):
    torch.manual_seed(5)
    fq = cls()
    first = weight() if data == "w" else torch.randn(64)
    fq(first)
    params = dict(fq.named_parameters())
    before = {k: v.detach().clone() for k, v in params.items()}
    opt = torch.optim.SGD(fq.parameters(), lr=0.1)
    x = first * 1.5 if data == "w" else torch.randn(64) * 3  # some inputs clipped
    loss = (fq(x) - x.sin()).pow(2).sum()
    loss.backward()
    for name, p in params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    opt.step()
    for name, p in params.items():
        assert not torch.equal(p.detach(), before[name]), name


def test_optimizer_built_before_first_forward_still_trains_the_per_row_scale():
    fq = LsqWeightFakeQuantize()
    opt = torch.optim.Adam(fq.parameters(), lr=1e-3)  # scale still has one element here
    w = weight()
    fq(w).pow(2).sum().backward()
    assert fq.scale.shape == (16,)
    before = fq.scale.detach().clone()
    opt.step()
    assert not torch.equal(fq.scale.detach(), before)


def test_bad_init_names_the_choices():
    with pytest.raises(ValueError, match=r"init='mse' is not one of \('max', 'paper'\)"):
        LsqWeightFakeQuantize(init="mse")
    with pytest.raises(ValueError, match=r"\('minmax', 'paper'\)"):
        LsqActivationFakeQuantize(init="max")
    with pytest.raises(ValueError, match=r"supported bits are \(2, 3, 4, 5, 6, 7, 8\)"):
        LsqWeightFakeQuantize(bits=1)

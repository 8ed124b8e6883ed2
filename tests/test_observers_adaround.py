"""AdaRound against plain-torch references: soft/hard forward, V gradient through h, schedule."""

import pytest
import torch

from observers.adaround import (
    AdaRoundFakeQuantize,
    beta_schedule,
    mse_scale,
    regularization_weight,
)


EPS = torch.finfo(torch.float32).eps
ZETA, GAMMA = 1.1, -0.1


def weight(seed=0):
    torch.manual_seed(seed)
    return torch.randn(16, 8) * 0.05


def h_ref(v):
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def max_scale(w, qmax):
    return (w.abs().amax(dim=1) / qmax).clamp(min=EPS)


@pytest.mark.parametrize("bits, qmax", [(8, 64), (4, 7)])
def test_init_reproduces_the_weight_and_soft_forward_matches_reference(bits, qmax):
    w = weight()
    fq = AdaRoundFakeQuantize(bits=bits, scale_init="max")
    y = fq(w)
    s = max_scale(w, qmax)
    torch.testing.assert_close(fq.scale, s, atol=0, rtol=0)
    # h(V) == frac(w / s) up to float error, so the soft forward starts at the FP32 weight.
    frac = w / s[:, None] - torch.floor(w / s[:, None])
    torch.testing.assert_close(h_ref(fq.v.detach()), frac, atol=2e-6, rtol=0)
    torch.testing.assert_close(y, w, atol=1e-6 * w.abs().max().item(), rtol=0)
    expected = (
        torch.clamp(torch.floor(w / s[:, None]) + h_ref(fq.v.detach()), -qmax, qmax) * s[:, None]
    )
    torch.testing.assert_close(y, expected, atol=0, rtol=0)


@pytest.mark.parametrize("bits, qmax", [(8, 64), (4, 7)])
def test_hard_forward_is_on_the_grid_and_matches_reference(bits, qmax):
    w = weight(1)
    fq = AdaRoundFakeQuantize(bits=bits)
    fq(w)
    with torch.no_grad():
        fq.v.add_(torch.randn_like(fq.v))  # arbitrary up/down decisions
    fq.harden()
    y = fq(w)
    s = fq.scale[:, None]
    q = torch.clamp(torch.floor(w / s) + (fq.v.detach() >= 0).float(), -qmax, qmax)
    torch.testing.assert_close(y, q * s, atol=0, rtol=0)
    assert q.abs().max() <= qmax
    # Each weight is rounded to one of its two neighbours.
    assert torch.all((q - w / s).abs() < 1 + 1e-5) or q.abs().max() == qmax


def test_v_gradient_through_rectified_sigmoid():
    w = weight(2)
    fq = AdaRoundFakeQuantize(bits=4)
    fq(w)
    with torch.no_grad():
        fq.v.mul_(4.0)  # push some h(V) into the flat 0/1 regions
    g = torch.randn_like(w)
    w_req = w.clone().requires_grad_()
    fq(w_req).backward(g)
    v = fq.v.detach()
    s = fq.scale[:, None]
    raw = torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA
    pre_clamp = torch.floor(w / s) + h_ref(v)
    active = ((raw >= 0) & (raw <= 1) & (pre_clamp >= -7) & (pre_clamp <= 7)).float()
    expected = g * s * torch.sigmoid(v) * (1 - torch.sigmoid(v)) * (ZETA - GAMMA) * active
    assert 0 < active.sum() < active.numel()
    torch.testing.assert_close(fq.v.grad, expected, atol=1e-7, rtol=1e-5)
    assert w_req.grad is None  # the FP32 weight gets no gradient from AdaRound


def test_regularization_value_and_gradient():
    fq = AdaRoundFakeQuantize(bits=4)
    fq(weight(3))
    beta = 3.0
    reg = fq.regularization(beta)
    h = h_ref(fq.v.detach())
    torch.testing.assert_close(reg, (1 - (2 * h - 1).abs() ** beta).sum(), atol=0, rtol=1e-6)
    reg.backward()
    v = fq.v.detach()
    raw = torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA
    dh = torch.sigmoid(v) * (1 - torch.sigmoid(v)) * (ZETA - GAMMA) * ((raw >= 0) & (raw <= 1))
    d = 2 * h - 1
    expected = -beta * d.abs() ** (beta - 1) * torch.sign(d) * 2 * dh
    torch.testing.assert_close(fq.v.grad, expected, atol=1e-6, rtol=1e-5)


def test_regularization_is_zero_for_binary_h():
    fq = AdaRoundFakeQuantize()
    fq(weight())
    with torch.no_grad():
        fq.v.copy_(torch.sign(torch.randn_like(fq.v)) * 20)
    assert fq.regularization(2.0).item() == 0.0


def test_beta_schedule_and_regularization_weight():
    assert beta_schedule(0, 100) == 20.0
    assert beta_schedule(20, 100) == 20.0
    assert beta_schedule(60, 100) == pytest.approx(11.0)
    assert beta_schedule(100, 100) == 2.0
    assert beta_schedule(150, 100) == 2.0
    assert beta_schedule(50, 100, warmup=0.0, start=10, end=2) == pytest.approx(6.0)
    assert regularization_weight(19, 100) == 0.0
    assert regularization_weight(20, 100, weight=0.5) == 0.5
    with pytest.raises(ValueError, match="warmup is a fraction"):
        beta_schedule(0, 10, warmup=1.5)
    with pytest.raises(ValueError, match="total_steps must be positive"):
        beta_schedule(0, 0)


def test_mse_scale_is_the_brute_force_minimiser():
    torch.manual_seed(4)
    w = torch.randn(6, 50)
    w[0, 0] = 8.0  # an outlier: the MSE grid should clip it
    qmax = 7
    got = mse_scale(w, qmax)
    for row in range(6):
        base = w[row].abs().max() / qmax
        errs = []
        for i in range(81):
            s = base * round(1.0 - 0.01 * i, 2)
            errs.append(
                ((torch.clamp(torch.round(w[row] / s), -qmax, qmax) * s - w[row]) ** 2).sum()
            )
        best = int(torch.stack(errs).argmin())
        assert got[row].item() == pytest.approx(
            (base * round(1.0 - 0.01 * best, 2)).item(), rel=1e-6
        )
    assert got[0] < w[0].abs().max() / qmax  # the outlier is clipped


def test_fold_hardens_and_returns_exact_grid_values():
    w = weight(5)
    fq = AdaRoundFakeQuantize(bits=4)
    fq(w)
    folded = fq.fold(w)
    assert fq.hard.item() == 1 and fq.folded.item() == 1 and fq.observer_enabled.item() == 0
    s = fq.scale[:, None]
    # integer * scale, bit for bit (what convert's quantize/dequantize reproduces)
    torch.testing.assert_close(torch.round(folded / s) * s, folded, atol=0, rtol=0)
    torch.testing.assert_close(fq(folded), folded, atol=0, rtol=0)  # frozen module: identity on it


def test_v_gets_grad_and_changes_after_a_step():
    w = weight(6)
    fq = AdaRoundFakeQuantize()
    fq(w)
    before = fq.v.detach().clone()
    opt = torch.optim.Adam(fq.parameters(), lr=1e-2)
    x = torch.randn(4, 8)
    loss = (x @ fq(w).t() - x @ (w * 1.01).t()).pow(2).mean() + 0.01 * fq.regularization(10.0)
    loss.backward()
    assert fq.v.grad is not None and fq.v.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(fq.v.detach(), before)


def test_errors_name_the_fix():
    fq = AdaRoundFakeQuantize()
    fq.disable_observer()
    with pytest.raises(ValueError, match=r"not initialised: run one forward with the observer"):
        fq(weight())
    fq.enable_observer()
    fq(weight())
    with pytest.raises(ValueError, match="one AdaRoundFakeQuantize belongs to one weight"):
        fq(torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"scale_init='minmax' is not one of \('mse', 'max'\)"):
        AdaRoundFakeQuantize(scale_init="minmax")
    with pytest.raises(ValueError, match=r"AdaRound weights: bits=10.*\(2, 3, 4, 5, 6, 7, 8\)"):
        AdaRoundFakeQuantize(bits=10)

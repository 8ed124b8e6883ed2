"""DoReFa against plain-torch references: exact forward, gradient through tanh + row max."""

import pytest
import torch

from observers.dorefa import DorefaActivationFakeQuantize, DorefaWeightFakeQuantize


EPS = torch.finfo(torch.float32).eps


def weight(seed=0):
    torch.manual_seed(seed)
    w = torch.randn(16, 8) * 0.3
    w[4] = 0.0
    return w


def ref_dorefa(w, qmax):
    t = torch.tanh(w)
    m = t.abs().amax(dim=1, keepdim=True).clamp(min=EPS)
    q = torch.clamp(torch.round(qmax * t / m), -qmax, qmax)
    scale = (w.abs().amax(dim=1) / qmax).clamp(min=EPS)
    return q * scale[:, None], scale


def ref_dorefa_grad(w, g, scale, qmax):
    """d/dw of c * t/m per row, c = Qw * scale, m = |t_k| with k the row's arg-max.

    A zero row has m clamped to eps: no gradient through m there.
    """
    t = torch.tanh(w)
    k = t.abs().argmax(dim=1)
    m_raw = t.abs().gather(1, k[:, None])
    m = m_raw.clamp(min=EPS)
    c = (qmax * scale)[:, None]
    grad = g * (1 - t**2) / m
    corr = (g * t).sum(dim=1, keepdim=True) / m**2 * (m_raw >= EPS).float()
    t_k = t.gather(1, k[:, None])
    extra = torch.zeros_like(w).scatter_(1, k[:, None], torch.sign(t_k) * (1 - t_k**2) * corr)
    return c * (grad - extra)


@pytest.mark.parametrize("bits, qmax", [(8, 64), (4, 7)])
@pytest.mark.parametrize("embedding", [False, True])
def test_weight_forward_matches_reference(bits, qmax, embedding):
    w = weight()
    fq = DorefaWeightFakeQuantize(bits=bits, embedding=embedding)
    expected, scale = ref_dorefa(w, qmax)
    torch.testing.assert_close(fq(w), expected, atol=0, rtol=0)
    torch.testing.assert_close(fq.calculate_qparams()[0], scale, atol=0, rtol=0)


def test_symmetric_grid_is_the_paper_formula_with_an_even_step_count():
    # 2 * quantize_n(u/2 + 1/2) - 1 with n = 2*Qw steps equals round(Qw*u)/Qw (ties aside).
    torch.manual_seed(1)
    u = torch.rand(1000) * 2 - 1
    qmax = 64
    n = 2 * qmax
    paper = 2 * torch.round(n * (u / 2 + 0.5)) / n - 1
    ours = torch.round(qmax * u) / qmax
    torch.testing.assert_close(ours, paper, atol=1e-6, rtol=0)


@pytest.mark.parametrize("bits, qmax", [(8, 64), (4, 7)])
def test_weight_backward_through_tanh_and_row_max(bits, qmax):
    w = weight(2).requires_grad_()
    fq = DorefaWeightFakeQuantize(bits=bits)
    g = torch.randn(16, 8)
    fq(w).backward(g)
    expected = ref_dorefa_grad(w.detach(), g, fq.scale, qmax)
    torch.testing.assert_close(w.grad, expected, atol=1e-6, rtol=1e-5)


def test_small_weights_are_close_to_round_to_nearest():
    torch.manual_seed(3)
    w = torch.randn(16, 50) * 0.02
    fq = DorefaWeightFakeQuantize()
    scale = w.abs().amax(dim=1, keepdim=True) / 64
    rtn = torch.round(w / scale) * scale
    assert ((fq(w) - rtn).abs() / scale).max() <= 1.0 + 1e-5  # at most one step apart
    assert ((fq(w) - rtn).abs() > 0).float().mean() < 0.05


def test_weight_scale_follows_the_observer_switch():
    fq = DorefaWeightFakeQuantize()
    fq(weight(0))
    s0 = fq.calculate_qparams()[0]
    fq.disable_observer()
    fq(weight(1) * 3)
    torch.testing.assert_close(fq.calculate_qparams()[0], s0, atol=0, rtol=0)


def test_activation_range_is_union_of_calibration_batches_then_frozen():
    fq = DorefaActivationFakeQuantize(calibration_steps=2)
    fq(torch.tensor([-1.0, 2.0]))
    fq(torch.tensor([-0.5, 3.0]))
    assert fq.min_val.item() == -1.0 and fq.max_val.item() == 3.0
    assert fq.observer_enabled.item() == 0  # calibration finished
    scale = torch.tensor([4.0 / 255])
    torch.testing.assert_close(fq.scale, scale, atol=0, rtol=0)
    x = torch.tensor([-7.0, -1.0, 0.3, 2.9, 9.0])
    y = fq(x)
    assert fq.max_val.item() == 3.0  # not widened by the new batch
    zp = fq.zero_point.float()
    torch.testing.assert_close(
        y, (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale, atol=0, rtol=0
    )


def test_activation_backward_is_zero_outside_the_fixed_range():
    fq = DorefaActivationFakeQuantize(calibration_steps=1)
    fq(torch.tensor([-1.0, 1.0]))
    x = torch.linspace(-3, 3, 61).requires_grad_()
    fq(x).backward(torch.ones(61))
    xq = torch.round(x.detach() / fq.scale) + fq.zero_point
    torch.testing.assert_close(x.grad, ((xq >= 0) & (xq <= 255)).float(), atol=1e-6, rtol=0)
    assert x.grad[0] == 0 and x.grad[30] == 1 and x.grad[-1] == 0


def test_activation_without_limit_calibrates_until_disabled():
    fq = DorefaActivationFakeQuantize(calibration_steps=None)
    for i in range(5):
        fq(torch.tensor([float(i)]))
    assert fq.observer_enabled.item() == 1 and fq.max_val.item() == 4.0


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="calibration_steps must be a positive int"):
        DorefaActivationFakeQuantize(calibration_steps=0)
    with pytest.raises(ValueError, match=r"DoReFa weights: bits=1.*\(2, 3, 4, 5, 6, 7, 8\)"):
        DorefaWeightFakeQuantize(bits=1)
    with pytest.raises(ValueError, match=r"supported bits are \(8,\)"):
        DorefaActivationFakeQuantize(bits=6)

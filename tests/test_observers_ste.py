"""STE quantizers against plain-torch references (forward exact, backward = STE mask)."""

import pytest
import torch

from observers.ste import SteActivationFakeQuantize, SteWeightFakeQuantize


EPS = torch.finfo(torch.float32).eps


def ref_symmetric_per_row(w, qmax):
    """Reference weight fake-quant: scale = max|row| / Qw, RTN, clamp to [-Qw, Qw]."""
    scale = (w.abs().amax(dim=1) / qmax).clamp(min=EPS)
    q = torch.clamp(torch.round(w / scale[:, None]), -qmax, qmax)
    return q * scale[:, None], scale


def ref_affine(x, scale, zp):
    return (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale


def weight(seed=0, rows=16, cols=8):
    torch.manual_seed(seed)
    w = torch.randn(rows, cols) * 0.05
    w[3, 2] = 0.9  # an outlier row
    w[5] = 0.0  # an all-zero row (e.g. the padding embedding)
    return w


@pytest.mark.parametrize("bits, qmax", [(8, 64), (4, 7), (2, 1)])
@pytest.mark.parametrize("embedding", [False, True])
def test_weight_forward_matches_reference(bits, qmax, embedding):
    w = weight()
    fq = SteWeightFakeQuantize(bits=bits, embedding=embedding)
    expected, scale = ref_symmetric_per_row(w, qmax)
    torch.testing.assert_close(fq(w), expected, atol=0, rtol=0)
    got_scale, zp = fq.calculate_qparams()
    torch.testing.assert_close(got_scale, scale, atol=0, rtol=0)
    if embedding:
        assert zp.dtype == torch.float32 and torch.all(zp == 128.0)
    else:
        assert zp.dtype == torch.int64 and torch.all(zp == 0)


def test_weight_full_range_uses_127():
    w = weight()
    fq = SteWeightFakeQuantize(bits=8, full_range=True)
    torch.testing.assert_close(fq(w), ref_symmetric_per_row(w, 127)[0], atol=0, rtol=0)
    assert (fq.quant_min, fq.quant_max) == (-127, 127)


def test_weight_backward_is_ste_mask():
    w0 = weight()
    fq = SteWeightFakeQuantize(bits=4)
    fq(w0)  # scale from w0
    fq.disable_observer()
    w = (w0 * 1.5).requires_grad_()  # now some entries fall outside [-Qw, Qw] * scale
    g = torch.randn_like(w)
    fq(w).backward(g)
    scale = fq.scale[:, None]
    xq = torch.round(w.detach() / scale)
    mask = ((xq >= -7) & (xq <= 7)).float()
    assert 0 < mask.sum() < mask.numel()
    torch.testing.assert_close(w.grad, g * mask, atol=1e-6, rtol=1e-6)


def test_weight_scale_tracks_weight_while_observing_and_freezes_after():
    fq = SteWeightFakeQuantize()
    fq(weight(0))
    s0 = fq.calculate_qparams()[0]
    fq(weight(1))
    s1 = fq.calculate_qparams()[0]
    assert not torch.equal(s0, s1)
    fq.disable_observer()
    fq(weight(2))
    torch.testing.assert_close(fq.calculate_qparams()[0], s1, atol=0, rtol=0)


def test_activation_first_batch_initialises_then_moving_average():
    fq = SteActivationFakeQuantize(averaging_constant=0.01)
    x1 = torch.tensor([-1.0, 0.5, 3.0])
    y1 = fq(x1)
    s1 = torch.tensor([4.0 / 255])
    torch.testing.assert_close(fq.scale, s1, atol=0, rtol=0)
    assert fq.zero_point.item() == 64
    torch.testing.assert_close(y1, ref_affine(x1, fq.scale, 64.0), atol=0, rtol=0)

    x2 = torch.tensor([-3.0, 1.0, 5.0])
    y2 = fq(x2)
    lo = torch.tensor([-1.0]) + 0.01 * (torch.tensor([-3.0]) - torch.tensor([-1.0]))
    hi = torch.tensor([3.0]) + 0.01 * (torch.tensor([5.0]) - torch.tensor([3.0]))
    scale = (hi - lo) / 255.0
    zp = torch.clamp(0 - torch.round(lo / scale), 0, 255)
    torch.testing.assert_close(fq.min_val, lo, atol=0, rtol=0)
    torch.testing.assert_close(fq.max_val, hi, atol=0, rtol=0)
    torch.testing.assert_close(fq.scale, scale, atol=0, rtol=0)
    assert fq.zero_point.item() == int(zp.item())
    torch.testing.assert_close(y2, ref_affine(x2, scale, zp), atol=0, rtol=0)


def test_activation_backward_is_ste_mask():
    torch.manual_seed(3)
    fq = SteActivationFakeQuantize()
    fq(torch.randn(64))
    fq.disable_observer()
    x = (torch.randn(256) * 3).requires_grad_()
    g = torch.randn(256)
    fq(x).backward(g)
    xq = torch.round(x.detach() / fq.scale) + fq.zero_point
    mask = ((xq >= 0) & (xq <= 255)).float()
    assert 0 < mask.sum() < 256
    torch.testing.assert_close(x.grad, g * mask, atol=1e-6, rtol=1e-6)


def test_activation_agrees_with_torch_fake_quantize_within_one_step():
    # torch's fake_quantize kernel rounds x * (1/s) and adds z after rounding; ours rounds like
    # quantize_per_tensor (z added before): ties and near-ties may differ by one step.
    torch.manual_seed(4)
    fq = SteActivationFakeQuantize()
    x = torch.randn(4096) * 2
    y = fq(x)
    scale, zp = fq.calculate_qparams()
    y_torch = torch.fake_quantize_per_tensor_affine(x, scale, zp.to(torch.int32), 0, 255)
    assert (y - y_torch).abs().max() <= scale.item() * 1.0001
    assert (y != y_torch).float().mean() < 0.01


def test_activation_before_any_batch_uses_scale_one():
    fq = SteActivationFakeQuantize()
    fq.disable_observer()
    x = torch.tensor([0.4, 1.6, 300.0, -1.0])
    torch.testing.assert_close(fq(x), torch.tensor([0.0, 2.0, 255.0, 0.0]), atol=0, rtol=0)


def test_activation_rejects_other_bits_and_bad_constant():
    with pytest.raises(ValueError, match=r"8-bit only.*supported bits are \(8,\)"):
        SteActivationFakeQuantize(bits=4)
    with pytest.raises(ValueError, match=r"averaging_constant must be in \(0, 1\]"):
        SteActivationFakeQuantize(averaging_constant=0.0)


def test_weight_rejects_unsupported_bits():
    with pytest.raises(ValueError, match=r"STE weights: bits=9.*\(2, 3, 4, 5, 6, 7, 8\)"):
        SteWeightFakeQuantize(bits=9)

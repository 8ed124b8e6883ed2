"""APoT: level sets on the int8 grid, exact forward, the paper's clipping gradient."""

import itertools

import pytest
import torch

from observers.apot import ApotWeightFakeQuantize, apot_levels


EPS = torch.finfo(torch.float32).eps


def paper_set(term_lists):
    """Sums over one choice (0 or a power) per term, normalised to max 1 (build_power_value)."""
    sums = {sum(c) for c in itertools.product(*[[0.0] + t for t in term_lists])}
    top = max(sums)
    return sorted(s / top for s in sums)


def test_4bit_levels_are_the_papers_set_exactly():
    # The reference code's B = 3 (4-bit weights): base_a = {1/2, 1/4, 1/16}, base_b = {1/8}.
    levels = paper_set([[1 / 2, 1 / 4, 1 / 16], [1 / 8]])
    magnitudes, d = apot_levels(4)
    assert d == 10
    torch.testing.assert_close(magnitudes / d, torch.tensor(levels), atol=1e-7, rtol=0)
    assert magnitudes.tolist() == [0, 1, 2, 3, 4, 6, 8, 10]


@pytest.mark.parametrize("full_range, d, count", [(False, 64, 36), (True, 127, 61)])
def test_8bit_levels_are_the_snapped_paper_construction(full_range, d, count):
    terms = [
        [1 / 2, 1 / 16, 1 / 256],
        [1 / 4, 1 / 32, 1 / 512],
        [1 / 8, 1 / 64, 1 / 1024],
        [1 / 128],
    ]
    levels = paper_set(terms)
    assert len(levels) == 128
    expected = sorted({round(level * d) for level in levels})
    magnitudes, got_d = apot_levels(8, full_range=full_range)
    assert got_d == d and magnitudes.tolist() == expected and len(expected) == count
    assert magnitudes[0] == 0 and magnitudes[-1] == d
    # APoT shape: dense near zero, sparse near the clip.
    assert magnitudes[:13].tolist() == list(range(13))


def weight(seed=0):
    torch.manual_seed(seed)
    w = torch.randn(16, 8) * 0.05
    w[2] = 0.0
    return w


def ref_project(x, magnitudes):
    signed = torch.cat([-magnitudes.flip(0), magnitudes])
    return signed[(x[..., None] - signed).abs().argmin(dim=-1)]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("embedding", [False, True])
def test_forward_matches_reference(bits, embedding):
    w = weight()
    fq = ApotWeightFakeQuantize(bits=bits, embedding=embedding)
    y = fq(w)
    magnitudes, d = apot_levels(bits)
    sigma = w.std(dim=1, correction=0).clamp(min=EPS)
    alpha = w.abs().amax(dim=1) / sigma
    scale = (alpha * sigma / d).clamp(min=EPS)
    torch.testing.assert_close(fq.sigma, sigma, atol=0, rtol=0)
    torch.testing.assert_close(fq.alpha.detach(), alpha, atol=0, rtol=0)
    torch.testing.assert_close(fq.calculate_qparams()[0], scale, atol=0, rtol=0)
    m = ref_project(torch.clamp(w / scale[:, None], -d, d), magnitudes)
    torch.testing.assert_close(y, m * scale[:, None], atol=0, rtol=0)
    # init "max": each row's largest weight is (up to rounding of the scale) a level.
    torch.testing.assert_close(y.abs().amax(dim=1), w.abs().amax(dim=1), atol=1e-7, rtol=1e-6)
    assert (fq.quant_min, fq.quant_max) == ((128 - d, 128 + d) if embedding else (-d, d))


@pytest.mark.parametrize("bits", [4, 8])
def test_backward_is_the_papers_clip_gradient(bits):
    w0 = weight(1)
    fq = ApotWeightFakeQuantize(bits=bits)
    fq(w0)
    with torch.no_grad():
        fq.alpha.mul_(0.6)  # clip the largest weights of each row
    w = w0.clone().requires_grad_()
    g = torch.randn_like(w)
    fq(w).backward(g)
    magnitudes, d = apot_levels(bits)
    sigma = fq.sigma[:, None]
    scale = fq.calculate_qparams()[0][:, None]
    x = w0 / scale
    inside = (x >= -d) & (x <= d)
    q = ref_project(torch.clamp(x, -d, d), magnitudes)
    d_alpha = torch.where(inside, q - x, q) * sigma / d  # paper: (level - w/alpha) | sign(w)
    assert 0 < inside.sum() < inside.numel()
    torch.testing.assert_close(w.grad, g * inside.float(), atol=1e-6, rtol=1e-6)
    zero_row = fq.sigma <= EPS  # alpha * sigma / D clamped at eps there: no gradient
    expected = torch.where(zero_row, torch.zeros(16), (g * d_alpha).sum(dim=1))
    torch.testing.assert_close(fq.alpha.grad, expected, atol=1e-6, rtol=1e-5)


def test_paper_init_and_sigma_tracking():
    w = weight(2)
    fq = ApotWeightFakeQuantize(bits=4, init="paper")
    fq(w)
    torch.testing.assert_close(fq.alpha.detach(), torch.full((16,), 3.0), atol=0, rtol=0)
    fq(w * 2)  # sigma follows the weight while observing; alpha is not re-initialised
    torch.testing.assert_close(
        fq.sigma, (2 * w).std(dim=1, correction=0).clamp(min=EPS), atol=0, rtol=0
    )
    torch.testing.assert_close(fq.alpha.detach(), torch.full((16,), 3.0), atol=0, rtol=0)


def test_alpha_gets_grad_and_changes_after_a_step():
    w = weight(3)
    fq = ApotWeightFakeQuantize(bits=4)
    fq(w)
    before = fq.alpha.detach().clone()
    opt = torch.optim.SGD(fq.parameters(), lr=0.1)
    loss = (fq(w) - w).pow(2).sum()
    loss.backward()
    assert fq.alpha.grad is not None and fq.alpha.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(fq.alpha.detach(), before)


def test_folded_weight_is_a_fixed_point():
    w = weight(4)
    fq = ApotWeightFakeQuantize(bits=8)
    y = fq(w).detach()
    folded = fq.fold(w)
    torch.testing.assert_close(folded, y, atol=0, rtol=0)
    torch.testing.assert_close(fq(folded), folded, atol=0, rtol=0)


def test_unsupported_bits_list_the_supported_ones():
    with pytest.raises(
        ValueError, match=r"APoT weights: bits=5 is not supported; supported bits are \(4, 8\)"
    ):
        ApotWeightFakeQuantize(bits=5)
    with pytest.raises(ValueError, match=r"init='mse' is not one of \('max', 'paper'\)"):
        ApotWeightFakeQuantize(init="mse")

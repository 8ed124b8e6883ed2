"""Grid definitions, the straight-through Function and the shared helpers of observers/grid.py."""

import doctest
import importlib

import pytest
import torch
from torch import nn

from observers import grid
from observers.ste import SteWeightFakeQuantize


def ref_fake_quant(x, scale, zero_point, quant_min, quant_max):
    """Plain-torch quantize-dequantize (torch test_workflow_ops style reference)."""
    return (
        torch.clamp(torch.round(x / scale) + zero_point, quant_min, quant_max) - zero_point
    ) * scale


@pytest.mark.parametrize(
    "bits, full_range, expected",
    [(8, False, 64), (8, True, 127), (7, False, 63), (4, False, 7), (4, True, 7), (2, False, 1)],
)
def test_weight_qmax_table(bits, full_range, expected):
    assert grid.weight_qmax(bits, full_range=full_range) == expected


def test_saturation_safe_range_fits_int16_pair_sums():
    # vpmaddubsw: two u8 x s8 products summed in int16 with saturation.
    assert 2 * 255 * grid.weight_qmax(8) <= torch.iinfo(torch.int16).max
    assert 2 * 255 * grid.weight_qmax(8, full_range=True) > torch.iinfo(torch.int16).max


@pytest.mark.parametrize("bits", [1, 9, 16, 0, 4.0, True])
def test_unsupported_weight_bits_list_supported(bits):
    with pytest.raises(ValueError, match=r"supported bits are \(2, 3, 4, 5, 6, 7, 8\)"):
        grid.weight_qmax(bits)


def test_round_ste_forward_is_round_half_even_and_backward_identity():
    x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49, 7.51], requires_grad=True)
    y = grid.round_ste(x)
    torch.testing.assert_close(
        y, torch.tensor([-2.0, -2.0, -0.0, 0.0, 2.0, 2.0, 0.0, 8.0]), atol=0, rtol=0
    )
    upstream = torch.arange(8.0)
    y.backward(upstream)
    torch.testing.assert_close(x.grad, upstream, atol=0, rtol=0)


def test_straight_through_custom_projection():
    levels = torch.tensor([0.0, 1.0, 4.0])
    x = torch.tensor([0.2, 2.4, 3.0], requires_grad=True)
    y = grid.straight_through(x, lambda t: levels[(t[:, None] - levels).abs().argmin(dim=1)])
    torch.testing.assert_close(y, torch.tensor([0.0, 1.0, 4.0]), atol=0, rtol=0)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(3), atol=0, rtol=0)


def test_fake_quant_affine_forward_and_ste_mask():
    torch.manual_seed(0)
    x = (torch.randn(200) * 3).requires_grad_()
    scale, zp = torch.tensor([0.02]), 100.0
    y = grid.fake_quant_affine(x, scale, zp, 0, 255)
    torch.testing.assert_close(y, ref_fake_quant(x.detach(), scale, zp, 0, 255), atol=0, rtol=0)
    g = torch.randn(200)
    y.backward(g)
    xq = torch.round(x.detach() / scale) + zp
    mask = ((xq >= 0) & (xq <= 255)).float()
    assert 0 < mask.sum() < 200  # both regions exercised
    torch.testing.assert_close(x.grad, g * mask, atol=1e-6, rtol=1e-6)


def test_fake_quant_affine_per_channel_broadcasts_along_axis0():
    w = torch.tensor([[0.5, -1.0, 2.0], [0.05, 0.1, -0.4]])
    scale = torch.tensor([0.5, 0.1])
    y = grid.fake_quant_affine(w, scale, 0.0, -3, 3, ch_axis=0)
    expected = torch.stack([ref_fake_quant(w[i], scale[i], 0.0, -3, 3) for i in range(2)])
    torch.testing.assert_close(y, expected, atol=0, rtol=0)


def test_absmax_scale_matches_torch_symmetric_per_channel_observer():
    torch.manual_seed(1)
    w = torch.randn(16, 8) * 0.1
    obs = torch.ao.quantization.PerChannelMinMaxObserver(
        ch_axis=0,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
        quant_min=-64,
        quant_max=64,
    )
    obs(w)
    torch_scale, _ = obs.calculate_qparams()
    torch.testing.assert_close(grid.absmax_scale(w, 64), torch_scale.float(), atol=0, rtol=0)


def test_absmax_scale_clamps_zero_rows_to_eps():
    s = grid.absmax_scale(torch.zeros(3, 4), 64)
    torch.testing.assert_close(s, torch.full((3,), grid.EPS), atol=0, rtol=0)


@pytest.mark.parametrize("lo, hi", [(-1.0, 3.0), (0.5, 2.0), (-4.0, -1.0), (0.0, 0.0)])
def test_affine_qparams_match_torch_minmax_observer(lo, hi):
    obs = torch.ao.quantization.MinMaxObserver(dtype=torch.quint8, quant_min=0, quant_max=255)
    obs(torch.tensor([lo, hi]))
    torch_scale, torch_zp = obs.calculate_qparams()
    scale, zp = grid.affine_qparams(torch.tensor([lo]), torch.tensor([hi]), 0, 255)
    torch.testing.assert_close(scale, torch_scale.float(), atol=0, rtol=0)
    assert zp.dtype == torch.int64 and int(zp) == int(torch_zp)


def test_affine_qparams_golden():
    scale, zp = grid.affine_qparams(torch.tensor([-1.0]), torch.tensor([3.0]), 0, 255)
    assert scale.item() == pytest.approx(4.0 / 255, rel=1e-7)
    assert zp.item() == 64  # round(1 / (4/255)) = round(63.75)


def test_fold_weights_folds_every_weight_fake_quant_and_freezes_it():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 3)
            self.a.weight_fake_quant = SteWeightFakeQuantize(bits=4)
            self.b = nn.Linear(3, 2)  # no quantizer: left alone

    torch.manual_seed(2)
    m = Tiny()
    raw_b = m.b.weight.detach().clone()
    expected = m.a.weight_fake_quant(m.a.weight).detach()
    assert grid.fold_weights_(m) == ["a"]
    torch.testing.assert_close(m.a.weight.detach(), expected, atol=0, rtol=0)
    torch.testing.assert_close(m.b.weight.detach(), raw_b, atol=0, rtol=0)
    assert m.a.weight_fake_quant.observer_enabled.item() == 0
    assert m.a.weight_fake_quant.folded.item() == 1
    # The folded module maps the folded weight onto itself.
    torch.testing.assert_close(m.a.weight_fake_quant(m.a.weight), expected, atol=0, rtol=0)


def test_factory_kwargs_must_be_a_dict():
    with pytest.raises(ValueError, match="factory_kwargs must be a dict"):
        SteWeightFakeQuantize(factory_kwargs=["cpu"])


@pytest.mark.parametrize(
    "module_name", ["grid", "ste", "lsq", "pact", "dorefa", "adaround", "apot"]
)
def test_docstring_examples_run(module_name):
    module = importlib.import_module(f"observers.{module_name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# --- activation rounding: torch.quantize_per_tensor's, exactly -------------------------------


def half_steps(scale, zero_point, seed=0):
    """Exact half-step inputs ``(k + 1/2) * s`` over the whole grid and past both ends, their
    float32 neighbours (near-ties) and random values; 3 * 263 + 600 elements, so torch's vector
    lanes and its scalar tail both occur."""
    k = torch.arange(-zero_point - 4, 256 - zero_point + 3, dtype=torch.float64)
    ties = ((k + 0.5) * float(scale)).float()
    up = torch.nextafter(ties, torch.tensor(float("inf")))
    down = torch.nextafter(ties, torch.tensor(float("-inf")))
    g = torch.Generator().manual_seed(seed)
    noise = (torch.rand(600, generator=g) * 300 - 30 - zero_point) * float(scale)
    return torch.cat([ties, up, down, noise.float()])


def torch_ints(x, scale, zero_point):
    return torch.quantize_per_tensor(x, float(scale), int(zero_point), torch.quint8).int_repr()


def rint_float64_path(x, scale, zero_point):
    """quantize_per_tensor_rint through the float64 emulation (used where torch.add's alpha
    is not a fused multiply-add)."""
    return torch.round(grid.fma_float32_exact(x, torch.reciprocal(scale), float(zero_point)))


RINT_PATHS = [
    pytest.param(grid.quantize_per_tensor_rint, id="default"),
    pytest.param(rint_float64_path, id="float64"),
]


@pytest.mark.parametrize("rint", RINT_PATHS)
@pytest.mark.parametrize("scale", [2.0**-5, 0.1, 0.0371, 0.00731])
@pytest.mark.parametrize("zero_point", [0, 3, 127, 128, 200])
def test_quantize_per_tensor_rint_equals_torch_quantize_per_tensor(scale, zero_point, rint):
    s = torch.tensor([scale], dtype=torch.float32)
    x = half_steps(scale, zero_point)
    q = rint(x, s, float(zero_point))
    expected = torch_ints(x, s, zero_point).float()
    torch.testing.assert_close(q.clamp(0, 255), expected, atol=0, rtol=0)
    # The data bites: with an odd zero point (at exact ties, in any scale) or on near-ties
    # (scale not a power of two), round(x / s) + z misses torch's integers.
    old = torch.clamp(torch.round(x / s) + zero_point, 0, 255)
    if zero_point % 2 or scale != 2.0**-5:
        assert (old != expected).any()


@pytest.mark.parametrize("rint", RINT_PATHS)
@pytest.mark.parametrize("threads", [1, 3])
def test_quantize_per_tensor_rint_on_large_tensors_any_thread_count(threads, rint):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        s = torch.tensor([0.0371])
        x = half_steps(0.0371, 127).repeat(200)[:-7]  # odd length: a scalar tail per chunk
        expected = torch_ints(x, s, 127).float()
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(rint(x, s, 127.0).clamp(0, 255), expected, atol=0, rtol=0)


# (x, s) as float32 bit patterns with x * (1/s) = 1/2 + 2**-17 + 2**-47 exactly: x/s + 128 is just
# above the float32 midpoint between 128.5 and its upper neighbour, so torch's single-rounding
# fma gives 129; a float64 sum rounds onto that midpoint and the float32 cast then rounds to
# 128.5 -> 128 (double rounding), as does a float32 product followed by a float32 sum.
DOUBLE_ROUNDING_CASES = [
    (0x3D31B7B1, 0x3DB1B6FF),
    (0x3CCEBC2A, 0x3D4EBB5B),
    (0x3C4EBC2A, 0x3CCEBB5B),
]


@pytest.mark.parametrize("rint", RINT_PATHS)
@pytest.mark.parametrize("x_bits, s_bits", DOUBLE_ROUNDING_CASES)
def test_quantize_per_tensor_rint_rounds_once_where_two_roundings_differ(x_bits, s_bits, rint):
    x = torch.tensor([x_bits], dtype=torch.int32).view(torch.float32).expand(37).contiguous()
    s = torch.tensor([s_bits], dtype=torch.int32).view(torch.float32)
    inv_s = torch.reciprocal(s)
    assert torch.all(torch.round((x.double() * inv_s.double() + 128.0).float()) == 128)
    assert torch.all(torch.round(x * inv_s + 128.0) == 128)
    assert torch.all(torch_ints(x, s, 128) == 129)  # torch: one rounding
    assert torch.all(rint(x, s, 128.0) == 129)
    assert torch.all(rint(x.expand(2, 37)[:, ::3], s, 128.0) == 129)  # strided


@pytest.mark.parametrize("scale", [2.0**-5, 0.0371])
@pytest.mark.parametrize("zero_point", [3, 128])
def test_fake_quant_per_tensor_is_dequantized_quantize_per_tensor_bit_for_bit(scale, zero_point):
    s = torch.tensor([scale], dtype=torch.float32)
    x = half_steps(scale, zero_point, seed=1)
    y = grid.fake_quant_per_tensor(x, s, float(zero_point))
    qt = torch.quantize_per_tensor(x, scale, zero_point, torch.quint8)
    assert torch.equal(y.view(torch.int32), qt.dequantize().view(torch.int32))  # also +-0.0


def test_fake_quant_per_tensor_gradients_are_those_of_fake_quant_affine():
    # Same straight-through graph, only the forward's rounding differs: on data without
    # near-ties (where both round alike) every gradient is identical, bit for bit.
    torch.manual_seed(5)
    x0 = torch.randn(2000) * 3
    s0, z0 = torch.tensor([0.02]), torch.tensor([100.0])
    assert torch.equal(grid.quantize_per_tensor_rint(x0, s0, z0), torch.round(x0 / s0) + z0)
    grads = []
    for fn in (grid.fake_quant_per_tensor, grid.fake_quant_affine):
        x, s, z = (t.clone().requires_grad_() for t in (x0, s0, z0))
        fn(x, s, z, 0, 255).backward(torch.linspace(-1, 1, 2000))
        grads.append((x.grad, s.grad, z.grad))
    for new, old in zip(*grads):
        torch.testing.assert_close(new, old, atol=0, rtol=0)
    assert 0 < (grads[0][0] == 0).sum() < 2000  # both sides of the clamp exercised

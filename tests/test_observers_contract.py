"""The FakeQuantizeBase contract, checked for every class in the registries.

fake quant off -> identity; observer off -> qparams frozen; state_dict round trip (with golden
values on hand examples); with_args and nnqat construction; calculate_qparams dtypes/shapes as
convert reads them; fold gives exact grid values.
"""

import copy

import pytest
import torch
import torch.ao.nn.qat as nnqat
from torch.ao.quantization import NoopObserver, QConfig

from observers import (
    ACTIVATION_FAKE_QUANTS,
    METHOD_FAKE_QUANTS,
    WEIGHT_FAKE_QUANTS,
    LsqActivationFakeQuantize,
    PactActivationFakeQuantize,
    SteActivationFakeQuantize,
    SteWeightFakeQuantize,
)


WEIGHT_CASES = [
    pytest.param(name, embedding, id=f"{name}-{'embedding' if embedding else 'linear'}")
    for name in WEIGHT_FAKE_QUANTS
    for embedding in (False, True)
]
ACT_NAMES = list(ACTIVATION_FAKE_QUANTS)


def make_weight(name, embedding, **kwargs):
    return WEIGHT_FAKE_QUANTS[name](embedding=embedding, **kwargs)


def weight_data(seed):
    torch.manual_seed(seed)
    return torch.randn(16, 8) * 0.05 * (1 + seed)


def act_data(seed):
    torch.manual_seed(seed)
    return torch.randn(4, 50) * (1 + seed) + seed


def perturb_learnables(fq):
    """Stand-in for training: move every learnable parameter."""
    with torch.no_grad():
        for p in fq.parameters():
            p.mul_(1.1).add_(0.01)


# --- fake quant disabled -> identity ---------------------------------------------------------


@pytest.mark.parametrize("name, embedding", WEIGHT_CASES)
def test_weight_fake_quant_disabled_is_identity(name, embedding):
    fq = make_weight(name, embedding)
    w = weight_data(0)
    assert not torch.equal(fq(w), w)
    fq.disable_fake_quant()
    assert fq(w) is w


@pytest.mark.parametrize("name", ACT_NAMES)
def test_activation_fake_quant_disabled_is_identity(name):
    fq = ACTIVATION_FAKE_QUANTS[name]()
    x = act_data(0)
    assert not torch.equal(fq(x), x)
    fq.disable_fake_quant()
    assert fq(x) is x


def test_observer_still_runs_while_fake_quant_is_disabled():
    fq = SteActivationFakeQuantize()
    fq.disable_fake_quant()
    fq(torch.tensor([-1.0, 3.0]))
    assert fq.initialized.item() == 1 and fq.zero_point.item() == 64


# --- observer disabled -> qparams frozen -----------------------------------------------------


@pytest.mark.parametrize("name, embedding", WEIGHT_CASES)
def test_weight_observer_disabled_freezes_qparams(name, embedding):
    fq = make_weight(name, embedding)
    fq(weight_data(0))
    fq.disable_observer()
    before = fq.calculate_qparams()
    out = fq(weight_data(1))
    fq(weight_data(2) * 7)
    after = fq.calculate_qparams()
    torch.testing.assert_close(after[0], before[0], atol=0, rtol=0)
    torch.testing.assert_close(after[1], before[1], atol=0, rtol=0)
    torch.testing.assert_close(fq(weight_data(1)), out, atol=0, rtol=0)


@pytest.mark.parametrize("name", ACT_NAMES)
def test_activation_observer_disabled_freezes_qparams(name):
    fq = ACTIVATION_FAKE_QUANTS[name]()
    fq(act_data(0))
    fq.disable_observer()
    before = fq.calculate_qparams()
    fq(act_data(1))
    fq(act_data(2) * 5 - 3)
    after = fq.calculate_qparams()
    torch.testing.assert_close(after[0], before[0], atol=0, rtol=0)
    torch.testing.assert_close(after[1], before[1], atol=0, rtol=0)


# --- calculate_qparams as convert reads it ---------------------------------------------------


@pytest.mark.parametrize("name, embedding", WEIGHT_CASES)
def test_weight_qparams_and_attributes_as_convert_expects(name, embedding):
    fq = make_weight(name, embedding)
    fq(weight_data(0))
    scale, zp = fq.calculate_qparams()
    assert scale.dtype == torch.float32 and scale.shape == (16,) and torch.all(scale > 0)
    assert zp.shape == (16,)
    assert fq.ch_axis == 0 and fq.is_dynamic is False
    if embedding:
        assert fq.dtype == torch.quint8 and fq.qscheme == torch.per_channel_affine_float_qparams
        assert zp.dtype == torch.float32 and torch.all(zp == 128.0)
        assert (fq.quant_min, fq.quant_max) == (128 - fq.int_max, 128 + fq.int_max)
    else:
        assert fq.dtype == torch.qint8 and fq.qscheme == torch.per_channel_symmetric
        assert zp.dtype == torch.int64 and torch.all(zp == 0)
        assert (fq.quant_min, fq.quant_max) == (-fq.int_max, fq.int_max)
    assert fq.int_max <= 64  # saturation-safe by default


@pytest.mark.parametrize("name", ACT_NAMES)
def test_activation_qparams_and_attributes_as_convert_expects(name):
    fq = ACTIVATION_FAKE_QUANTS[name]()
    fq(act_data(3))
    scale, zp = fq.calculate_qparams()
    assert scale.dtype == torch.float32 and scale.shape == (1,) and scale.item() > 0
    assert zp.dtype == torch.int64 and zp.shape == (1,) and 0 <= zp.item() <= 255
    assert fq.dtype == torch.quint8 and fq.qscheme == torch.per_tensor_affine
    assert (fq.quant_min, fq.quant_max) == (0, 255) and fq.is_dynamic is False
    # The forward is the affine grid of calculate_qparams (what the converted model computes).
    fq.disable_observer()
    x = act_data(4)
    expected = (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale
    torch.testing.assert_close(fq(x), expected, atol=0, rtol=0)


def freeze_activation_grid(fq, scale, zero_point):
    """Put an activation quantizer on ``(scale, zero_point)`` and freeze it (PACT: ``alpha`` is
    ``127 * scale`` or ``255 * scale``, its zero point stays 128 / 0)."""
    with torch.no_grad():
        if isinstance(fq, PactActivationFakeQuantize):
            fq.alpha.fill_(scale * (127.0 if fq.signed else 255.0))
        elif isinstance(fq, (SteActivationFakeQuantize, LsqActivationFakeQuantize)):
            fq.scale.fill_(scale)
            fq.zero_point.fill_(zero_point)
        else:  # pragma: no cover - a new class must say how to set its grid
            raise AssertionError(f"no grid setter for {type(fq).__name__}")
    fq.initialized.fill_(1)
    fq.disable_observer()
    return fq


def half_steps(scale, zero_point):
    """``(k + 1/2) * s`` over the grid and past both ends, and their float32 neighbours."""
    k = torch.arange(-zero_point - 3, 256 - zero_point + 3, dtype=torch.float64)
    ties = ((k + 0.5) * float(scale)).float()
    up = torch.nextafter(ties, torch.tensor(float("inf")))
    down = torch.nextafter(ties, torch.tensor(float("-inf")))
    return torch.cat([ties, up, down, torch.tensor([0.0, -0.0])])


@pytest.mark.parametrize("scale", [2.0**-5, 0.0371])
@pytest.mark.parametrize("zero_point", [3, 128])
@pytest.mark.parametrize("name", ACT_NAMES)
def test_activation_forward_rounds_like_quantize_per_tensor_at_ties(name, zero_point, scale):
    # The forward is what the converted model's quantize computes, bit for bit, also at exact
    # half steps with an odd zero point (round(x / s) + z picks the other neighbour there).
    fq = freeze_activation_grid(ACTIVATION_FAKE_QUANTS[name](), scale, zero_point)
    s, z = fq.calculate_qparams()
    x = half_steps(s.item(), int(z))
    expected = torch.quantize_per_tensor(x, s.item(), int(z), torch.quint8).dequantize()
    assert torch.equal(fq(x).view(torch.int32), expected.view(torch.int32))
    x.requires_grad_()
    y = fq(x)
    assert torch.equal(y.detach().view(torch.int32), expected.view(torch.int32))
    y.sum().backward()  # and with autograd recording
    assert x.grad is not None


# --- state_dict round trip -------------------------------------------------------------------


@pytest.mark.parametrize("name, embedding", WEIGHT_CASES)
@pytest.mark.parametrize("fold", [False, True], ids=["trained", "folded"])
def test_weight_state_dict_round_trip(name, embedding, fold):
    fq = make_weight(name, embedding, bits=4)
    w = weight_data(0)
    fq(w)
    perturb_learnables(fq)
    if fold:
        fq.fold(w)
    fresh = make_weight(name, embedding, bits=4)  # never run: per-channel state not sized yet
    fresh.load_state_dict(copy.deepcopy(fq.state_dict()))
    for x in (w, weight_data(1)):
        torch.testing.assert_close(fresh(x), fq(x), atol=0, rtol=0)
    for a, b in zip(fresh.calculate_qparams(), fq.calculate_qparams()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert fresh.observer_enabled.item() == fq.observer_enabled.item()


@pytest.mark.parametrize("name", ACT_NAMES)
def test_activation_state_dict_round_trip(name):
    fq = ACTIVATION_FAKE_QUANTS[name]()
    fq(act_data(0))
    perturb_learnables(fq)
    fresh = ACTIVATION_FAKE_QUANTS[name]()
    fresh.load_state_dict(copy.deepcopy(fq.state_dict()))
    x = act_data(1)
    torch.testing.assert_close(fresh(x), fq(x), atol=0, rtol=0)
    for a, b in zip(fresh.calculate_qparams(), fq.calculate_qparams()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_golden_state_dict_ste_weight():
    fq = SteWeightFakeQuantize(bits=8)
    fq(torch.tensor([[0.64, -0.32, 0.01], [0.0, -0.128, 0.06]]))
    sd = fq.state_dict()
    assert sorted(sd) == [
        "fake_quant_enabled",
        "folded",
        "initialized",
        "observer_enabled",
        "scale",
    ]
    torch.testing.assert_close(sd["scale"], torch.tensor([0.01, 0.002]), atol=0, rtol=0)
    fresh = SteWeightFakeQuantize(bits=8)
    fresh.load_state_dict(sd)
    fresh.disable_observer()
    out = fresh(torch.tensor([[0.64, -0.32, 0.01], [0.0, -0.128, 0.06]]))
    torch.testing.assert_close(
        out,
        torch.tensor([[64.0, -32.0, 1.0], [0.0, -64.0, 30.0]]) * torch.tensor([[0.01], [0.002]]),
        atol=0,
        rtol=0,
    )


def test_golden_state_dict_ste_activation():
    fq = SteActivationFakeQuantize()
    fq(torch.tensor([-1.0, 0.25, 3.0]))
    sd = fq.state_dict()
    assert sd["scale"].item() == pytest.approx(0.0156862754, rel=1e-7)
    assert sd["zero_point"].tolist() == [64]
    assert sd["min_val"].tolist() == [-1.0] and sd["max_val"].tolist() == [3.0]


def test_golden_state_dict_pact():
    fq = PactActivationFakeQuantize()
    fq(torch.tensor([-2.56, 0.5, 1.0]))
    sd = fq.state_dict()
    assert sd["alpha"].item() == pytest.approx(2.54, rel=1e-6)  # 2.56 * 127/128
    scale, zp = fq.calculate_qparams()
    assert scale.item() == pytest.approx(0.02, rel=1e-6) and zp.item() == 128


# --- with_args, nnqat construction, deepcopy -------------------------------------------------


@pytest.mark.parametrize("name, embedding", WEIGHT_CASES)
def test_weight_with_args_and_nnqat_construction(name, embedding):
    cls = WEIGHT_FAKE_QUANTS[name]
    factory = cls.with_args(bits=4, embedding=embedding)
    fq = factory(factory_kwargs={"device": None, "dtype": None})  # what nnqat passes
    assert isinstance(fq, cls) and fq.bits == 4 and fq.embedding == embedding
    act = NoopObserver.with_args(dtype=torch.float32)
    qconfig = QConfig(activation=act, weight=factory)
    if embedding:
        module = nnqat.Embedding(10, 8, qconfig=qconfig)
        idx = torch.tensor([1, 2, 3])
        assert module(idx).shape == (3, 8)
    else:
        module = nnqat.Linear(8, 16, qconfig=qconfig)
        assert module(torch.randn(2, 8)).shape == (2, 16)
    assert isinstance(module.weight_fake_quant, cls)


@pytest.mark.parametrize("name", ACT_NAMES)
def test_activation_with_args_and_deepcopy(name):
    cls = ACTIVATION_FAKE_QUANTS[name]
    fq = cls.with_args(bits=8)(factory_kwargs=None)
    x = act_data(5)
    y = fq(x)
    twin = copy.deepcopy(fq)
    torch.testing.assert_close(twin(x), y, atol=0, rtol=0)


@pytest.mark.parametrize("name, embedding", WEIGHT_CASES)
def test_weight_deepcopy_keeps_state(name, embedding):
    fq = make_weight(name, embedding)
    w = weight_data(0)
    y = fq(w)
    torch.testing.assert_close(copy.deepcopy(fq)(w), y, atol=0, rtol=0)


# --- bits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(WEIGHT_FAKE_QUANTS))
@pytest.mark.parametrize("bits", [8, 4])
def test_weight_bits_8_and_4_accepted(name, bits):
    fq = WEIGHT_FAKE_QUANTS[name](bits=bits)
    fq(weight_data(0))
    assert fq.bits == bits and fq.quant_max == fq.int_max


@pytest.mark.parametrize("name", list(WEIGHT_FAKE_QUANTS))
def test_weight_unsupported_bits_raise_with_supported_list(name):
    cls = WEIGHT_FAKE_QUANTS[name]
    supported = ", ".join(str(b) for b in cls.supported_bits)
    with pytest.raises(
        ValueError, match=rf"bits=9 is not supported; supported bits are \({supported}\)"
    ):
        cls(bits=9)


@pytest.mark.parametrize("name", ACT_NAMES)
def test_activation_bits_other_than_8_raise(name):
    with pytest.raises(ValueError, match=r"8-bit only.*supported bits are \(8,\)"):
        ACTIVATION_FAKE_QUANTS[name](bits=4)


# --- fold -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, embedding", WEIGHT_CASES)
@pytest.mark.parametrize("bits", [8, 4])
def test_fold_returns_exact_grid_values_and_freezes(name, embedding, bits):
    fq = make_weight(name, embedding, bits=bits)
    w = weight_data(0)
    fq(w)
    perturb_learnables(fq)
    folded = fq.fold(w)
    assert folded.requires_grad is False
    scale = fq.calculate_qparams()[0][:, None]
    q = torch.round(folded / scale)
    torch.testing.assert_close(q * scale, folded, atol=0, rtol=0)  # integer * scale, exactly
    assert q.abs().max() <= fq.int_max
    assert fq.observer_enabled.item() == 0 and fq.folded.item() == 1
    torch.testing.assert_close(fq(folded), folded, atol=0, rtol=0)  # fixed point
    torch.testing.assert_close(fq.fold(folded), folded, atol=0, rtol=0)  # idempotent
    fq.enable_observer()  # a folded quantizer stays frozen
    fq(w * 3)
    torch.testing.assert_close(fq.calculate_qparams()[0][:, None], scale, atol=0, rtol=0)


def test_registries_cover_every_method():
    assert set(METHOD_FAKE_QUANTS) == {"ste", "lsq", "pact", "adaround", "apot", "dorefa"}
    for weight_cls, act_cls in METHOD_FAKE_QUANTS.values():
        assert weight_cls in WEIGHT_FAKE_QUANTS.values()
        assert act_cls in ACTIVATION_FAKE_QUANTS.values()

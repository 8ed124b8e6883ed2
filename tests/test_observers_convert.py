"""Convert exactness: prepare_qat -> train -> fold -> convert reproduces the fake-quant model.

For every method (so every weight and every activation class) and bits 8 and 4:

* the converted ``nnq.Linear``'s dequantized weight equals the fake-quantized weight bit for bit,
  its integers lie in ``[-Qw, Qw]`` and its scales are ``calculate_qparams()``'s;
* the converted model's outputs are within one output quantization step of the fake-quant
  model's (the requantization may round a near-tie the other way);
* the embedding variant: ``nnq.Embedding``'s dequantized table and its lookups equal the
  fake-quant table / lookups exactly. torch 2.13's default mappings have no
  ``nn.Embedding -> nnqat.Embedding`` (prepare_qat) nor ``nnqat.Embedding -> nnq.Embedding``
  (convert) entry: both must be passed explicitly;
* activations at exact half steps, odd and even zero points: a QuantStub (``nnq.Quantize``,
  ``torch.quantize_per_tensor``) reproduces every activation fake-quant bit for bit; the
  requantizing ops (``quantized::linear``, ``layer_norm``, ``add``) round ``rint(t) + z`` in
  their vectorised part and differ from the fake-quant's ``rint(t + z)`` exactly at the ties
  with an odd ``z``, by one step, nowhere else (inputs built so both sides see the same ``t``).
"""

import pytest
import torch
import torch.ao.nn.qat as nnqat
import torch.ao.nn.quantized as nnq
from torch import nn
from torch.ao.nn.quantized import FloatFunctional
from torch.ao.quantization import (
    DeQuantStub,
    NoopObserver,
    QConfig,
    QuantStub,
    convert,
    disable_observer,
    prepare_qat,
)
from torch.ao.quantization.quantization_mappings import (
    get_default_qat_module_mappings,
    get_default_static_quant_module_mappings,
)

from observers import (
    ACTIVATION_FAKE_QUANTS,
    METHOD_FAKE_QUANTS,
    WEIGHT_FAKE_QUANTS,
    LsqActivationFakeQuantize,
    PactActivationFakeQuantize,
    SteActivationFakeQuantize,
    SteWeightFakeQuantize,
    fold_weights_,
)


ENGINE = next(
    e for e in ("x86", "fbgemm", "qnnpack") if e in torch.backends.quantized.supported_engines
)


@pytest.fixture(autouse=True)
def quantized_engine():
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = ENGINE
    yield
    torch.backends.quantized.engine = previous


def regularizers(model, step, steps):
    """The method-specific loss terms (PACT alpha L2, AdaRound rounding regulariser)."""
    total = torch.zeros(())
    for module in model.modules():
        if hasattr(module, "regularization"):
            if hasattr(module, "v"):  # AdaRound
                total = total + 0.01 * module.regularization(20.0 - 18.0 * step / steps)
            else:
                total = total + module.regularization()
    return total


def train(model, make_batch, steps=6):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    for step in range(steps):
        x, target = make_batch(step)
        loss = (model(x) - target).pow(2).mean() + regularizers(model, step, steps)
        opt.zero_grad()
        loss.backward()
        opt.step()


def snapshot_learnables(model):
    return {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if "fake_quant" in n or "activation_post_process" in n
    }


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("method", list(METHOD_FAKE_QUANTS))
def test_linear_convert_reproduces_fake_quant(method, bits):
    weight_cls, act_cls = METHOD_FAKE_QUANTS[method]
    torch.manual_seed(0)
    model = nn.Sequential(QuantStub(), nn.Linear(8, 16), DeQuantStub())
    model.qconfig = QConfig(activation=act_cls.with_args(), weight=weight_cls.with_args(bits=bits))
    model.train()
    qat = prepare_qat(model)
    if method == "adaround":
        qat[1].weight.requires_grad_(False)  # AdaRound learns V, not W
    teacher = torch.randn(16, 8)

    def batch(step):
        x = torch.randn(32, 8) * 2
        return x, x @ teacher.t()

    qat(batch(0)[0])  # initialise the quantizers before snapshotting the learnables
    learnables = snapshot_learnables(qat)
    train(qat, batch)
    for name, value in learnables.items():  # learnable quantizer parameters were trained
        assert not torch.equal(dict(qat.named_parameters())[name].detach(), value), name

    qat.apply(disable_observer)
    qat.eval()
    fq = qat[1].weight_fake_quant
    if method == "adaround":
        fq.harden()
    w_fq = fq(qat[1].weight).detach().clone()
    x_test = torch.randn(256, 8) * 2
    y_before_fold = qat(x_test).detach()

    assert fold_weights_(qat) == ["1"]
    torch.testing.assert_close(qat[1].weight.detach(), w_fq, atol=0, rtol=0)
    y_fq = qat(x_test).detach()
    torch.testing.assert_close(y_fq, y_before_fold, atol=0, rtol=0)  # folding changes nothing

    int8 = convert(qat)
    assert isinstance(int8[1], nnq.Linear)
    qweight = int8[1].weight()
    torch.testing.assert_close(qweight.dequantize(), w_fq, atol=0, rtol=0)
    ints = qweight.int_repr()
    assert ints.abs().max() <= fq.int_max <= 64
    torch.testing.assert_close(
        qweight.q_per_channel_scales().float(), fq.calculate_qparams()[0], atol=0, rtol=0
    )

    out_scale = int8[1].scale
    y_int8 = int8(x_test)
    steps_off = (y_int8 - y_fq).abs() / out_scale
    assert steps_off.max() <= 1.0 + 1e-4
    assert (steps_off > 1e-4).float().mean() < 0.02


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("name", list(WEIGHT_FAKE_QUANTS))
def test_embedding_convert_reproduces_fake_quant_table(name, bits):
    weight_cls = WEIGHT_FAKE_QUANTS[name]
    torch.manual_seed(1)
    model = nn.Sequential(nn.Embedding(20, 8, padding_idx=0))
    model.qconfig = QConfig(
        activation=NoopObserver.with_args(dtype=torch.float32),
        weight=weight_cls.with_args(bits=bits, embedding=True),
    )
    model.train()
    qat = prepare_qat(
        model, mapping={**get_default_qat_module_mappings(), nn.Embedding: nnqat.Embedding}
    )
    assert isinstance(qat[0], nnqat.Embedding)
    if name == "adaround":
        qat[0].weight.requires_grad_(False)
    target = torch.randn(20, 8)

    def batch(step):
        idx = torch.randint(0, 20, (32,))
        return idx, target[idx]

    train(qat, batch)
    qat.apply(disable_observer)
    qat.eval()
    fq = qat[0].weight_fake_quant
    if name == "adaround":
        fq.harden()
    table_fq = fq(qat[0].weight).detach().clone()
    fold_weights_(qat)
    idx = torch.arange(20)
    lookup_fq = qat(idx).detach()
    torch.testing.assert_close(lookup_fq, table_fq, atol=0, rtol=0)

    int8 = convert(
        qat, mapping={**get_default_static_quant_module_mappings(), nnqat.Embedding: nnq.Embedding}
    )
    assert isinstance(int8[0], nnq.Embedding)
    qweight = int8[0].weight()
    assert qweight.qscheme() == torch.per_channel_affine_float_qparams
    torch.testing.assert_close(qweight.dequantize(), table_fq, atol=0, rtol=0)
    u = qweight.int_repr().int()
    assert u.min() >= 128 - fq.int_max and u.max() <= 128 + fq.int_max
    assert torch.all(qweight.q_per_channel_zero_points() == 128.0)
    torch.testing.assert_close(int8(idx), lookup_fq, atol=0, rtol=0)
    assert torch.all(int8(torch.tensor([0])) == 0)  # padding row stays exactly zero


def test_without_fold_adaround_and_dorefa_weights_change_in_convert():
    """Why fold exists: convert re-rounds the raw weight (docs/design.md, section 3: the
    measurement, in small)."""
    for name in ("adaround", "dorefa"):
        torch.manual_seed(2)
        model = nn.Sequential(QuantStub(), nn.Linear(32, 32), DeQuantStub())
        model.qconfig = QConfig(
            activation=METHOD_FAKE_QUANTS["ste"][1].with_args(),
            weight=WEIGHT_FAKE_QUANTS[name].with_args(bits=4),
        )
        with torch.no_grad():
            model[1].weight.mul_(20)  # DoReFa's tanh only bites on weights of order 1
        qat = prepare_qat(model.train())
        qat(torch.randn(8, 32))
        fq = qat[1].weight_fake_quant
        if name == "adaround":
            with torch.no_grad():
                fq.v.copy_(torch.randn_like(fq.v) * 3)
            fq.harden()
        qat.apply(disable_observer)
        w_fq = fq(qat[1].weight).detach()
        int8 = convert(qat.eval())
        changed = (int8[1].weight().dequantize() != w_fq).float().mean().item()
        assert changed > 0.05, name


# --- activations at exact ties: bit-exact quantize, one step at requantizing ops ------------


def freeze_grid(fq, scale, zero_point):
    """Put an activation quantizer on ``(scale, zero_point)``, observer off (PACT: alpha)."""
    with torch.no_grad():
        if isinstance(fq, PactActivationFakeQuantize):
            fq.alpha.fill_(scale * (127.0 if fq.signed else 255.0))
        else:
            assert isinstance(fq, (SteActivationFakeQuantize, LsqActivationFakeQuantize))
            fq.scale.fill_(scale)
            fq.zero_point.fill_(zero_point)
    fq.initialized.fill_(1)
    fq.disable_observer()


def half_steps(scale, zero_point):
    """``(k + 1/2) * s`` over the grid and past both ends, and their float32 neighbours."""
    k = torch.arange(-zero_point - 3, 256 - zero_point + 3, dtype=torch.float64)
    ties = ((k + 0.5) * float(scale)).float()
    up = torch.nextafter(ties, torch.tensor(float("inf")))
    down = torch.nextafter(ties, torch.tensor(float("-inf")))
    return torch.cat([ties, up, down])


ACTIVATION_CASES = [
    pytest.param(ACTIVATION_FAKE_QUANTS[name].with_args(), id=name)
    for name in ACTIVATION_FAKE_QUANTS
] + [pytest.param(PactActivationFakeQuantize.with_args(signed=False), id="pact-one-sided")]


@pytest.mark.parametrize("scale", [2.0**-5, 0.0371])
@pytest.mark.parametrize("zero_point", [3, 128])
@pytest.mark.parametrize("activation", ACTIVATION_CASES)
def test_quant_stub_convert_is_bit_exact_at_ties(activation, zero_point, scale):
    model = nn.Sequential(QuantStub(), DeQuantStub())
    model.qconfig = QConfig(activation=activation, weight=SteWeightFakeQuantize.with_args())
    qat = prepare_qat(model.train())
    freeze_grid(qat[0].activation_post_process, scale, zero_point)
    s, z = qat[0].activation_post_process.calculate_qparams()
    x = half_steps(s.item(), int(z))
    y_fq = qat.eval()(x)
    int8 = convert(qat)
    assert isinstance(int8[0], nnq.Quantize)
    assert torch.equal(y_fq.view(torch.int32), int8(x).view(torch.int32))


def requantize_case(op, activation, zero_point):
    """A QAT model and its INT8 conversion fed so that both sides quantize the same value ``t``
    (in steps of the output grid): integer data, power-of-two scales, exact float arithmetic.
    Returns (fake-quant output / s, INT8 output / s, t, mask of torch's vectorised elements)."""
    torch.manual_seed(7)
    qconfig = QConfig(activation=activation, weight=SteWeightFakeQuantize.with_args())
    if op == "linear":  # acc * M with M = 1 * 1 / 2: half-integers wherever acc is odd
        model = nn.Sequential(QuantStub(), nn.Linear(40, 24), DeQuantStub())
        with torch.no_grad():
            weight = torch.randint(-2, 3, (24, 40)).float()
            weight[:, 0] = 64.0  # weight scale max|w| / 64 = 1; input column 0 is 0
            model[1].weight.copy_(weight)
            model[1].bias.zero_()
        x = torch.randint(0, 4, (50, 40)).float()
        x[:, 0] = 0.0
        grids = [(1.0, 0), (2.0, zero_point)]
        t = (x @ weight.t()) / 2.0
        vector = torch.ones_like(t, dtype=torch.bool)
        inputs = (x,)
    elif op == "layer_norm":  # gamma = 0: both sides output beta = (k + 1/2) * s exactly
        model = nn.Sequential(QuantStub(), nn.LayerNorm(50), DeQuantStub())
        k = torch.randint(-100, 100, (50,)).float()
        with torch.no_grad():
            model[1].weight.zero_()
            model[1].bias.copy_((k + 0.5) * 0.5)
        inputs = (torch.randn(20, 50),)
        grids = [(0.05, 128), (0.5, zero_point)]
        t = (k + 0.5).expand(20, 50)
        vector = torch.zeros_like(t, dtype=torch.bool)
        vector[:, :32] = True  # x86 kernel: 32-column vector chunks, scalar remainder
    else:  # add: c = 0.5 (a - 3) + 0.25 (b - 128), output scale 1: quarter steps
        class Add(nn.Module):
            def __init__(self):
                super().__init__()
                self.quant_a, self.quant_b = QuantStub(), QuantStub()
                self.add = FloatFunctional()
                self.dequant = DeQuantStub()

            def forward(self, a, b):
                return self.dequant(self.add.add(self.quant_a(a), self.quant_b(b)))

        model = Add()
        a, b = torch.randint(0, 256, (100,)).float(), torch.randint(0, 256, (100,)).float()
        inputs = ((a - 3) * 0.5, (b - 128) * 0.25)
        grids = [(0.5, 3), (0.25, 128), (1.0, zero_point)]
        t = inputs[0] + inputs[1]
        vector = torch.zeros_like(t, dtype=torch.bool)
        vector[:64] = True  # x86 kernel: 64-element vector chunks, scalar remainder
    model.qconfig = qconfig
    qat = prepare_qat(model.train())
    fqs = [m for m in qat.modules() if isinstance(m, tuple(ACTIVATION_FAKE_QUANTS.values()))]
    assert len(fqs) == len(grids)  # in forward order: inputs first, output last
    for fq, (scale, z) in zip(fqs, grids):
        freeze_grid(fq, scale, z)
    qat(*inputs)  # the weight quantizer observes: scale 1
    qat.apply(disable_observer)
    qat.eval()
    y_fq = qat(*inputs).detach()
    fold_weights_(qat)
    y_int8 = convert(qat)(*inputs)
    out_scale = grids[-1][0]
    return y_fq / out_scale, y_int8 / out_scale, t, vector


@pytest.mark.parametrize("zero_point", [3, 127, 128])
@pytest.mark.parametrize("op", ["linear", "layer_norm", "add"])
@pytest.mark.parametrize("name", ["ste", "lsq", "dorefa"])
def test_requantizing_ops_differ_from_fake_quant_only_at_exact_ties_by_one_step(
    name, op, zero_point
):
    fq_steps, int8_steps, t, vector = requantize_case(
        op, ACTIVATION_FAKE_QUANTS[name].with_args(), zero_point
    )
    z = float(zero_point)
    # Both sides see the same t: the fake-quant (and torch.quantize_per_tensor) rounds
    # rint(t + z); the requantizing kernels round rint(t) + z in their vectorised part.
    fq_expected = torch.clamp(torch.round(t + z), 0, 255) - z
    torch.testing.assert_close(fq_steps, fq_expected, atol=0, rtol=0)
    diff = fq_steps - int8_steps
    ties = (t - torch.floor(t)) == 0.5
    assert ties.sum() > 10
    assert torch.all(diff[~ties] == 0)  # off the ties: identical
    assert torch.all(diff.abs() <= 1)  # at most one step
    if zero_point % 2 == 0:
        assert torch.all(diff == 0)  # even zero point: rint(t + z) == rint(t) + z
    elif ENGINE in ("x86", "fbgemm"):
        expected = fq_expected - (torch.clamp(torch.round(t) + z, 0, 255) - z)
        assert (expected[ties & vector] != 0).any()
        torch.testing.assert_close(diff[vector], expected[vector], atol=0, rtol=0)
        assert torch.all(diff[~vector] == 0)  # the scalar remainder rounds rint(t + z) too

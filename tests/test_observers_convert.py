"""Convert exactness: prepare_qat -> train -> fold -> convert reproduces the fake-quant model.

For every method (so every weight and every activation class) and bits 8 and 4:

* the converted ``nnq.Linear``'s dequantized weight equals the fake-quantized weight bit for bit,
  its integers lie in ``[-Qw, Qw]`` and its scales are ``calculate_qparams()``'s;
* the converted model's outputs are within one output quantization step of the fake-quant
  model's (the requantization may round a near-tie the other way);
* the embedding variant: ``nnq.Embedding``'s dequantized table and its lookups equal the
  fake-quant table / lookups exactly. torch 2.13's default mappings have no
  ``nn.Embedding -> nnqat.Embedding`` (prepare_qat) nor ``nnqat.Embedding -> nnq.Embedding``
  (convert) entry: both must be passed explicitly.
"""

import pytest
import torch
import torch.ao.nn.qat as nnqat
import torch.ao.nn.quantized as nnq
from torch import nn
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

from observers import METHOD_FAKE_QUANTS, WEIGHT_FAKE_QUANTS, fold_weights_

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

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
    """Why fold exists: convert re-rounds the raw weight (DESIGN.md's measurement, in small)."""
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

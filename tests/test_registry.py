"""The ``--qconfig`` registry is built from ``observers.METHOD_FAKE_QUANTS``, the one place
where a method's weight and activation classes are paired: the two cannot disagree, and a new
method is one entry there."""
import pytest
import torch
from torch.ao.quantization import FakeQuantizeBase

from observers import (
    METHOD_FAKE_QUANTS,
    LsqActivationFakeQuantize,
    PactActivationFakeQuantize,
    SteActivationFakeQuantize,
    SteWeightFakeQuantize,
)
from qat import METHODS, SASRec, SASRecConfig, get_method
from qat.methods import TRAINING, build_methods
from qat.quantize import calibrate, prepare_qat_model
from qat.registry import QuantMethod, register_method

CONFIG = SASRecConfig(num_items=40, max_len=10, hidden=16, blocks=2, heads=2, dropout=0.1)


def prepared(method, bits=8):
    torch.manual_seed(0)
    model = prepare_qat_model(SASRec(CONFIG), method.mapping(bits))
    calibrate(model, torch.randint(1, 41, (4, 10)))
    return model


def fake_quant_classes(model):
    """``(weight classes, activation classes)`` of the fake-quants in a prepared model."""
    weights = {type(m.weight_fake_quant) for m in model.modules()
               if hasattr(m, "weight_fake_quant")}
    every = {type(m) for m in model.modules() if isinstance(m, FakeQuantizeBase)}
    return weights, every - weights


def test_quantized_methods_are_exactly_the_observer_pairings():
    quantized = {name: m for name, m in METHODS.items() if m.is_quantized}
    assert list(quantized) == list(METHOD_FAKE_QUANTS)  # same names, same order
    for name, method in quantized.items():
        assert method.fake_quants == METHOD_FAKE_QUANTS[name]
        assert method.supported_bits == tuple(METHOD_FAKE_QUANTS[name][0].supported_bits)
    assert not get_method("fp32").is_quantized and get_method("fp32").supported_bits == ()


@pytest.mark.parametrize("name", list(METHOD_FAKE_QUANTS))
def test_prepared_model_uses_exactly_the_pairing_classes(name):
    weight_cls, activation_cls = METHOD_FAKE_QUANTS[name]
    model = prepared(get_method(name))
    assert fake_quant_classes(model) == ({weight_cls}, {activation_cls})
    embeddings = [model.item_emb.weight_fake_quant, model.pos_emb.weight_fake_quant]
    assert all(type(fq) is weight_cls and fq.embedding for fq in embeddings)


def test_pact_clips_one_sided_after_the_relu_and_symmetric_elsewhere():
    model = prepared(get_method("pact"))
    relu_outputs = {id(block.ffn.fc1.activation_post_process) for block in model.blocks}
    pact = [m for m in model.modules() if isinstance(m, PactActivationFakeQuantize)]
    assert len(relu_outputs) == len(model.blocks)
    for fq in pact:
        assert fq.signed == (id(fq) not in relu_outputs)


def test_adding_a_method_is_one_entry():
    pairings = {**METHOD_FAKE_QUANTS, "ste_lsq": (SteWeightFakeQuantize, LsqActivationFakeQuantize)}
    methods = {m.name: m for m in build_methods(pairings, TRAINING)}
    assert list(methods) == list(pairings)
    for name in METHOD_FAKE_QUANTS:  # the others are built exactly as registered
        assert methods[name] == METHODS[name]
    new = methods["ste_lsq"]
    assert new.supported_bits == SteWeightFakeQuantize.supported_bits
    assert (new.regularizer, new.freeze_float_weights, new.quant_lr) == (None, False, 1e-5)
    assert "SteWeightFakeQuantize + LsqActivationFakeQuantize" in new.description
    assert fake_quant_classes(prepared(new, bits=4)) == (
        {SteWeightFakeQuantize}, {LsqActivationFakeQuantize})


def test_training_settings_need_a_pairing():
    with pytest.raises(ValueError, match="pact.*add it to observers.METHOD_FAKE_QUANTS"):
        build_methods({"ste": METHOD_FAKE_QUANTS["ste"]}, {"pact": {"quant_lr": 1e-3}})


def test_a_pairing_written_outside_observers_is_refused():
    with pytest.raises(ValueError, match="must be observers.METHOD_FAKE_QUANTS\\['mine'\\]"):
        register_method(QuantMethod(
            "mine", "ad hoc", fake_quants=(SteWeightFakeQuantize, SteActivationFakeQuantize)))
    assert "mine" not in METHODS


def test_unknown_method_lists_the_choices():
    with pytest.raises(ValueError, match="unknown quantization method 'int3'; choose one of "
                                         + ", ".join(METHODS)):
        get_method("int3")

"""Prepare -> QAT steps -> fold -> convert, for every registered method: the INT8 model is
exactly the fake-quant model it was trained as."""
import functools

import pytest
import torch
from torch.ao.nn import qat as nnqat
from torch.ao.nn import quantized as nnq

from qat import METHODS, SASRec, SASRecConfig, get_method
from qat.finetune import (
    deployment_view,
    load_int8_model,
    prepare_for_method,
    qat_hooks,
    save_int8_model,
    to_int8,
)
from qat.model import AttentionCore
from qat.quantize import quantized_weights

QAT_METHODS = [name for name, m in METHODS.items() if m.is_quantized]


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 41, (24, 10), generator=g)
    x[:6, :4] = 0  # left padding
    return x


@functools.lru_cache(maxsize=None)
def trained_qat_model(name, bits=8, steps=4):
    """A few QAT steps on a tiny model (cached: tests only read it or work on copies)."""
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=40, max_len=10, hidden=16, blocks=2, heads=2,
                                dropout=0.1))
    method = get_method(name)
    qat_model = prepare_for_method(model, method, bits, inputs(0))
    hooks = qat_hooks(qat_model, method, lr=1e-3, quant_lr=1e-3)
    optimizer = torch.optim.Adam(hooks.param_groups)
    x = inputs(0)
    for step in range(steps):
        hidden = qat_model(x)
        loss = torch.nn.functional.cross_entropy(
            qat_model.score(hidden[:, -1]), torch.arange(24) % 40 + 1)
        if hooks.regularizer is not None:
            loss = loss + hooks.regularizer(0.5 + step / 10)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return qat_model


def test_registry_has_the_six_methods_and_fp32():
    assert set(METHODS) == {"fp32", "ste", "lsq", "pact", "adaround", "apot", "dorefa"}
    with pytest.raises(ValueError, match="choose one of fp32, ste"):
        get_method("int3")


@pytest.mark.parametrize("name", QAT_METHODS)
def test_prepare_quantizes_embeddings_and_keeps_attention_core_float(name):
    qat_model = trained_qat_model(name, steps=0)
    assert isinstance(qat_model.item_emb, nnqat.Embedding)
    assert isinstance(qat_model.pos_emb, nnqat.Embedding)
    cores = [m for m in qat_model.modules() if isinstance(m, AttentionCore)]
    assert cores and all(not hasattr(c, "activation_post_process") for c in cores)
    int8 = to_int8(qat_model)
    assert isinstance(int8.item_emb, nnq.Embedding)
    assert isinstance(int8.blocks[0].attn.q_proj, nnq.Linear)
    assert isinstance(int8.blocks[0].attn_norm, nnq.LayerNorm)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("name", QAT_METHODS)
def test_int8_weights_equal_fake_quantized_weights(name, bits):
    qat_model = trained_qat_model(name, bits)
    view = deployment_view(qat_model)
    int8 = to_int8(qat_model)
    weights = quantized_weights(int8)
    assert len(weights) == 2 + 2 * 6  # two embeddings, six linears per block
    for module_name, qweight in weights.items():
        module = view.get_submodule(module_name)
        qmax = module.weight_fake_quant.int_max
        assert qmax <= (64 if bits == 8 else 10)  # APoT's 4-bit set is {0..4, 6, 8, 10}
        with torch.no_grad():
            expected = module.weight_fake_quant(module.weight)
        torch.testing.assert_close(qweight.dequantize(), expected, atol=0, rtol=0)
        ints = qweight.int_repr().int()
        if qweight.dtype == torch.quint8:  # embedding table: zero point 128
            ints = ints - 128
        assert ints.abs().max() <= qmax, module_name


def layer_inputs_and_outputs(model: torch.nn.Module, types: tuple[type, ...],
                             x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{layer name: (its first input, its output)}`` of every ``types`` layer in one forward."""
    captured = {}
    handles = []
    for layer_name, module in model.named_modules():
        if isinstance(module, types):
            def hook(module, args, output, layer_name=layer_name):
                captured[layer_name] = (args[0], output)
            handles.append(module.register_forward_hook(hook))
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return captured


@pytest.mark.parametrize("name", QAT_METHODS)
def test_each_int8_layer_is_within_one_output_step_of_its_fake_quant_twin(name):
    """Fed the same (quantized) input, every INT8 Linear/LayerNorm lands within one step of
    its output grid of what the fake-quant module computes (int32 accumulation + requantize
    vs float matmul + round can differ on near-ties only)."""
    qat_model = trained_qat_model(name)
    view = deployment_view(qat_model)
    int8 = to_int8(qat_model)
    with torch.no_grad():
        captured = layer_inputs_and_outputs(int8, (nnq.Linear, nnq.LayerNorm), inputs(2))
        assert len(captured) == 2 * 8 + 1  # 6 linears + 2 norms per block, final norm
        for layer_name, (q_in, q_out) in captured.items():
            expected = view.get_submodule(layer_name)(q_in.dequantize())
            steps = (expected - q_out.dequantize()).abs().max() / q_out.q_scale()
            assert steps <= 1 + 1e-4, f"{layer_name}: {steps:.3f} steps"


@pytest.mark.parametrize("name", QAT_METHODS)
def test_int8_quantize_points_equal_the_fake_quant_bit_for_bit(name):
    """Fed the same float input, each INT8 ``nnq.Quantize`` (after the embeddings, after each
    attention core) outputs exactly the integers its fake-quant twin rounds to: both compute
    ``rint(fma(x, 1/s, z))``, ties and near-ties included (unlike the requantizing layers)."""
    qat_model = trained_qat_model(name)
    view = deployment_view(qat_model)
    int8 = to_int8(qat_model)
    with torch.no_grad():
        captured = layer_inputs_and_outputs(int8, (nnq.Quantize,), inputs(2))
        assert len(captured) == 1 + 2  # quant_input, one quant_context per block
        for layer_name, (x, q_out) in captured.items():
            expected = view.get_submodule(layer_name)(x)
            bits = (expected.view(torch.int32), q_out.dequantize().view(torch.int32))
            assert torch.equal(*bits), layer_name


@pytest.mark.parametrize("name", QAT_METHODS)
def test_int8_model_ranks_like_the_fake_quant_model(name):
    qat_model = trained_qat_model(name)
    view = deployment_view(qat_model)
    int8 = to_int8(qat_model)
    x = inputs(2)
    with torch.no_grad():
        fake_hidden, int8_hidden = view(x), int8(x)
        fake_scores, int8_scores = view.score_last(x), int8.score_last(x)
    # near-ties can flip one rounding and propagate a few steps: most outputs are identical
    step = float(int8.final_norm.scale)
    assert ((fake_hidden - int8_hidden).abs() <= step * (1 + 1e-5)).float().mean() >= 0.99
    # Same top-10 sets (the parity gate's agreement): a flipped step can swap two items
    # whose scores are within it (apot: ranks 9 and 10, 0.4017 vs 0.4014 in INT8).
    fake_top, int8_top = fake_scores.topk(10).indices, int8_scores.topk(10).indices
    assert torch.equal(fake_top.sort(dim=1).values, int8_top.sort(dim=1).values)


@pytest.mark.parametrize("name", ["lsq", "adaround"])
def test_saved_int8_model_loads_identically(name, tmp_path):
    qat_model = trained_qat_model(name)
    int8 = save_int8_model(qat_model, get_method(name), 8, tmp_path)
    loaded, meta = load_int8_model(tmp_path)
    assert meta["method"] == name and meta["bits"] == 8
    x = inputs(3)
    with torch.no_grad():
        torch.testing.assert_close(loaded.score_last(x), int8.score_last(x), atol=0, rtol=0)


def test_unsupported_bits_name_the_choices():
    with pytest.raises(ValueError, match="apot supports --bits 4, 8, not 6"):
        get_method("apot").mapping(6)
    with pytest.raises(ValueError, match="ste supports --bits 2, 3, 4, 5, 6, 7, 8, not 9"):
        get_method("ste").mapping(9)

"""Tiny FP32 / QAT-converted INT8 SASRec models for the export tests, and the export's
structure: a valid ONNX file with INT8 initializers for every Linear and both tables, INT8
kernels (not a float fall-back) in the graph onnxruntime actually runs, and the file size.

The helpers (``tiny_model``, ``batch``, ``EXPORT_METHODS``) are imported by the other
``test_export_*`` files.
"""
from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from export import build_sasrec_onnx, make_session, model_kind, native_ops, save_onnx, torch_kernels
from export.float_layers import FloatLayers
from export.graph_builder import GraphBuilder
from export.int8_emitters import (
    EMITTERS,
    FusedEmitter,
    Int8Emitter,
    backend_name,
    get_emitter,
    register_emitter,
)
from export.int8_layers import Int8Layers
from export.layer_emitter import LayerEmitter
from qat import METHODS, SASRec, SASRecConfig, get_method
from qat.finetune import prepare_for_method, qat_hooks, to_int8


QAT_METHODS = [name for name, method in METHODS.items() if method.is_quantized]
EXPORT_METHODS = ["fp32", *QAT_METHODS]
CONFIG = SASRecConfig(num_items=40, max_len=10, hidden=16, blocks=2, heads=2, dropout=0.1)
LINEARS = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "ffn.fc1", "ffn.fc2")
INT8_KERNELS = {"MatMulInteger", "MatMulIntegerToFloat", "QLinearMatMul", "QGemm",
                "DynamicQuantizeMatMul"}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: one torch thread is fastest, and spares a busy machine (restored after).
    Other test_export_* files import this fixture to use it too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch(seed: int = 1, size: int = 24, config: SASRecConfig = CONFIG) -> torch.Tensor:
    """(size, max_len) item ids, a quarter of the rows left-padded."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, config.num_items + 1, (size, config.max_len), generator=g)
    x[: size // 4, : config.max_len // 2] = 0
    return x


@functools.lru_cache(maxsize=None)
def tiny_model(name: str, steps: int = 3, config: SASRecConfig = CONFIG) -> SASRec:
    """FP32 (``name="fp32"``) or a converted INT8 model after a few QAT steps (cached: tests
    only read it)."""
    torch.manual_seed(0)
    model = SASRec(config)
    if name == "fp32":
        return model.eval()
    method = get_method(name)
    qat_model = prepare_for_method(model, method, 8, batch(0, config=config))
    hooks = qat_hooks(qat_model, method, lr=1e-3, quant_lr=1e-3)
    optimizer = torch.optim.Adam(hooks.param_groups)
    for step in range(steps):
        x = batch(step, config=config)
        loss = torch.nn.functional.cross_entropy(qat_model.score(qat_model(x)[:, -1]),
                                                 torch.arange(len(x)) % config.num_items + 1)
        if hooks.regularizer is not None:
            loss = loss + hooks.regularizer(0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return to_int8(qat_model)


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_model_kind_tells_fp32_int8_and_refuses_unconverted_qat():
    assert model_kind(tiny_model("fp32")) == "fp32"
    assert model_kind(tiny_model("lsq")) == "int8"
    qat_model = prepare_for_method(SASRec(CONFIG), get_method("ste"), 8, batch(0))
    with pytest.raises(ValueError, match="convert it to INT8 first"):
        build_sasrec_onnx(qat_model)


@pytest.mark.parametrize("name", EXPORT_METHODS)
def test_export_is_valid_onnx_with_int8_weights(name, tmp_path):
    model = tiny_model(name)
    proto = build_sasrec_onnx(model)
    size = save_onnx(proto, tmp_path / "model.onnx")  # runs onnx.checker (full check)
    assert size == (tmp_path / "model.onnx").stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temp file left
    assert proto.opset_import[0].version >= 17
    graph_input = proto.graph.input[0]
    assert graph_input.name == "item_seq" and graph_input.type.tensor_type.elem_type == \
        TensorProto.INT64
    assert graph_input.type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch
    assert [o.name for o in proto.graph.output] == ["scores"]
    inits = initializers(proto)
    if name == "fp32":
        assert all(t.data_type == TensorProto.FLOAT for t in inits.values() if len(t.dims) == 2)
        return
    expected = {f"blocks.{b}.{layer}.weight_int8_t" for b in range(CONFIG.blocks)
                for layer in LINEARS} | {"item_emb.weight_int8", "pos_emb.weight_int8"}
    assert expected <= set(inits)
    for weight in expected:
        assert inits[weight].data_type == TensorProto.INT8, weight
    assert numpy_helper.to_array(inits["item_emb.weight_int8"]).shape == \
        (CONFIG.num_items + 1, CONFIG.hidden)
    matrices = [n for n, t in inits.items() if len(t.dims) == 2]
    assert sorted(matrices) == sorted(expected)  # no float matrix anywhere: one copy, in int8
    ints = np.concatenate([numpy_helper.to_array(inits[w]).ravel() for w in expected])
    assert np.abs(ints.astype(int)).max() <= 64  # the saturation-safe 8-bit range
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["sasrec_qat.kind"] == "int8" and props["sasrec_qat.max_abs_weight_int"] == \
        str(np.abs(ints.astype(int)).max())


@pytest.mark.parametrize("torch_exact", [True, False])
@pytest.mark.parametrize("name", QAT_METHODS)
def test_onnxruntime_optimised_graph_runs_int8_kernels(name, torch_exact, tmp_path):
    """In the graph onnxruntime runs after its fusions, every weight matmul is an INT8 kernel:
    6 linears per block + scoring, each MatMulInteger on an INT8 initializer, and no float
    MatMul/Gemm reads an initializer (a silent fall-back to float would)."""
    proto = build_sasrec_onnx(tiny_model(name), torch_exact=torch_exact)
    for level in ("disable", "extended", "all"):
        path = tmp_path / f"optimised_{level}.onnx"
        make_session(proto, optimization=level, threads=1, optimized_model_path=path)
        optimised = onnx.load(str(path))
        counts = op_counts(optimised)
        inits = initializers(optimised)
        assert counts["MatMulInteger"] == 6 * CONFIG.blocks + 1, (level, counts)
        for node in optimised.graph.node:
            if node.op_type == "MatMulInteger" and node.input[1] in inits:
                assert inits[node.input[1]].data_type == TensorProto.INT8
            if node.op_type in {"MatMul", "Gemm", "FusedMatMul"}:
                assert not set(node.input) & set(inits), (level, node)
        if level != "disable":
            # onnxruntime folds the table's Transpose: every MatMulInteger reads an initializer
            weights = [n.input[1] for n in optimised.graph.node if n.op_type == "MatMulInteger"]
            assert all(w in inits for w in weights)
            # and fuses q . k^T of the two uint8 projections into an integer matmul too
            assert counts.get("MatMulIntegerToFloat", 0) == CONFIG.blocks
            if not torch_exact:
                assert counts["QLinearAdd"] == 2 * CONFIG.blocks  # DQ + DQ -> Add -> Q fused


def test_int8_file_is_under_a_third_of_fp32_when_the_item_table_dominates(tmp_path):
    """ML-1M's shape: 3416 items x 50 (171k table entries) vs ~30k other parameters. The table
    costs 50 int8 + one float32 row scale per item vs 200 bytes, 0.27; the linears' int8 weights
    and the graph's nodes (~16 KB) add about 0.03.
    (At d=16 the row scale alone would make it 20/64 = 0.31.)"""
    config = SASRecConfig(num_items=3416, max_len=50, hidden=50, blocks=2, heads=1)
    torch.manual_seed(0)
    fp32 = SASRec(config).eval()
    int8 = to_int8(prepare_for_method(fp32, get_method("ste"), 8, batch(0, 32, config)))
    int8_bytes = save_onnx(build_sasrec_onnx(int8), tmp_path / "int8.onnx")
    fp32_bytes = save_onnx(build_sasrec_onnx(fp32), tmp_path / "fp32.onnx")
    assert int8_bytes <= 0.31 * fp32_bytes, int8_bytes / fp32_bytes


# the op domain that holds each INT8 backend's requantizing ops
BACKEND_DOMAINS = {"plain": "", "torch_exact": torch_kernels.DOMAIN, "fused": native_ops.DOMAIN}


def test_the_three_int8_backends_are_registered():
    assert sorted(EMITTERS) == sorted(BACKEND_DOMAINS)
    assert not FloatLayers.__abstractmethods__ and issubclass(FloatLayers, LayerEmitter)
    with pytest.raises(ValueError, match=r"unknown INT8 backend 'qdq': choose one of \["):
        get_emitter("qdq")
    with pytest.raises(ValueError, match="fused=True needs torch_exact=True"):
        backend_name(torch_exact=False, fused=True)
    with pytest.raises(ValueError, match="'fused' is already registered"):
        register_emitter("fused")(FusedEmitter)

    class SameFlags(FusedEmitter):
        pass
    with pytest.raises(ValueError, match="declares the flags of backend 'fused'"):
        register_emitter("fused_again")(SameFlags)
    assert sorted(EMITTERS) == sorted(BACKEND_DOMAINS)  # nothing registered by the failures


@pytest.mark.parametrize("name", sorted(EMITTERS))
def test_each_int8_emitter_is_selected_by_its_flags_and_writes_its_own_ops(name):
    """Registry entry -> flags -> the same class back (``build_sasrec_onnx``'s selection), a
    complete interface, and a graph whose requantizing ops are that backend's only."""
    cls = get_emitter(name)
    assert cls.name == name and issubclass(cls, Int8Emitter) and not cls.__abstractmethods__
    flags = dict(torch_exact=cls.torch_exact, fused=cls.fused)
    assert backend_name(**flags) == name
    assert type(Int8Layers(GraphBuilder("g"), **flags)) is cls
    proto = build_sasrec_onnx(tiny_model("lsq"), **flags)
    props = {p.key: p.value for p in proto.metadata_props}
    assert (props["sasrec_qat.torch_exact"], props["sasrec_qat.fused"]) == \
        (str(int(cls.torch_exact)), str(int(cls.fused)))
    assert {n.domain for n in proto.graph.node} == {"", BACKEND_DOMAINS[name]}
    ops = op_counts(proto)
    assert ("QuantizeLinear" in ops) == (name == "plain")  # the others round their own way
    assert bool(proto.functions) == (name == "torch_exact")

"""The fused INT8 kernels (export/native, an onnxruntime custom-op library): the same uint8
tensors as the exact ONNX functions, built once per machine, clear errors.

Per-op exactness against torch on 10^6 values is in test_export_numerics.py.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from test_export_models import one_torch_thread  # noqa: F401  (autouse fixture)
from test_export_models import QAT_METHODS, batch, tiny_model

from export import OnnxScorer, build_sasrec_onnx, make_session, native_ops
from export.fusion import fold_layer_norms
from export.graph_builder import FLOAT, INT32, UINT8, GraphBuilder
from export.int8_emitters import FusedEmitter
from export.runtime import uses_fused_ops


@pytest.mark.parametrize("name", QAT_METHODS)
def test_fused_graph_equals_the_function_graph(name):
    """Scores and final hidden state identical to the exact function graph run as written
    (ORT_DISABLE_ALL), at both optimisation levels and with one and two threads (the batch is
    large enough for the kernels to split rows between threads).

    Against the function graph at ORT_ENABLE_ALL they may differ: there onnxruntime rewrites
    the attention's DequantizeLinear -> MatMul into an integer q.k^T, whose float result can
    differ in the last bit and flip a step (95 of 3.3M hidden values on ML-1M batches); the
    fused graph has no DequantizeLinear left to rewrite, so its attention is torch's float one.
    """
    model = tiny_model(name)
    x = batch(12, size=400)
    serving = name != "dorefa"  # one method runs the full-sequence graph instead
    exact = build_sasrec_onnx(model, hidden_output=True, last_position_only=serving)
    fused = build_sasrec_onnx(model, hidden_output=True, fused=True, last_position_only=serving)
    expected = OnnxScorer(make_session(exact, threads=1, optimization="disable")).run(
        x, ["scores", "hidden"])
    for level in ("disable", "all"):
        for threads in (1, 2):
            session = make_session(fused, threads=threads, optimization=level)
            got = OnnxScorer(session).run(x, ["scores", "hidden"])
            assert np.array_equal(got[1], expected[1])
            assert np.array_equal(got[0], expected[0])


def test_fused_graph_structure():
    model = tiny_model("lsq")
    fused = build_sasrec_onnx(model, fused=True)
    onnx.checker.check_model(fused)
    custom = [n.op_type for n in fused.graph.node if n.domain == native_ops.DOMAIN]
    blocks = model.config.blocks
    # every LayerNorm follows the op that wrote its input: that op normalises each row right
    # after writing it (EmbedQuantizeNorm: the first attn_norm; RequantizeAddNorm: the norm
    # after each residual, the final norm included)
    assert sorted(set(custom)) == ["EmbedQuantizeNorm", "QuantizePerTensor",
                                   "RequantizeAddNorm", "RequantizeDequantize", "RequantizeRelu",
                                   "Score"]  # the fused scoring path, the fused default
    norm = next(n for n in fused.graph.node if n.op_type == "RequantizeAddNorm")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in norm.attribute}
    assert attrs["norm_eps"] == repr(float(model.blocks[0].ffn_norm.eps)).encode()
    assert sorted(attrs) == ["inv_s", "norm_eps", "norm_inv_s", "norm_s_x", "norm_z",
                             "norm_z_x", "s_a", "s_b", "z", "z_a", "z_b"]
    assert len(norm.output) == 2 and len(norm.input) == 6  # + gamma, beta
    assert custom.count("RequantizeAddNorm") == 2 * blocks  # out_proj, fc2 + residual + norm
    assert custom.count("RequantizeDequantize") == 3 * blocks  # q, k, v
    ops = [n.op_type for n in fused.graph.node]
    assert ops.count("MatMulInteger") == 6 * blocks  # scoring: the Score op
    assert custom.count("EmbedQuantizeNorm") == 1
    assert "DequantizeLinear" not in ops  # folded into RequantizeDequantize
    assert ops.count("Gather") == 3  # the last position twice (serving graph), keys' length
    assert not fused.functions  # no ONNX functions left to inline
    assert any(op.domain == native_ops.DOMAIN for op in fused.opset_import)
    props = {p.key: p.value for p in fused.metadata_props}
    assert props["sasrec_qat.fused"] == "1"
    assert uses_fused_ops(fused) and uses_fused_ops(fused.SerializeToString())
    assert not uses_fused_ops(build_sasrec_onnx(model))
    # the full-sequence graph normalises a Gather's output: a standalone LayerNorm there
    full = build_sasrec_onnx(model, fused=True, last_position_only=False)
    assert [n.op_type for n in full.graph.node].count("LayerNorm") == 1
    with pytest.raises(ValueError, match="needs torch_exact"):
        build_sasrec_onnx(model, fused=True, torch_exact=False)


def test_fused_file_loads_by_path(tmp_path):
    """make_session registers the library for a fused model given as a file path too."""
    model = tiny_model("ste")
    path = tmp_path / "fused.onnx"
    onnx.save(build_sasrec_onnx(model, fused=True), path)
    assert uses_fused_ops(path)
    x = batch(13, size=5)
    expected = OnnxScorer(make_session(build_sasrec_onnx(model), threads=1))(x)
    np.testing.assert_array_equal(OnnxScorer(make_session(path, threads=1))(x).numpy(),
                                  expected.numpy())


def _op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("serving", [True, False])
def test_fold_layer_norms_folds_each_norm_into_the_op_that_wrote_its_input(serving, monkeypatch):
    """The fused emitter writes RequantizeAdd / EmbedQuantize and LayerNorm nodes; the graph
    pass turns every producer + LayerNorm pair into the *Norm op, and the result is the graph
    build_sasrec_onnx(fused=True) returns, byte for byte, with bit-identical outputs."""
    model = tiny_model("lsq")
    blocks = model.config.blocks
    kwargs = dict(fused=True, hidden_output=True, last_position_only=serving)
    folded = build_sasrec_onnx(model, **kwargs)
    with monkeypatch.context() as patch:
        patch.setattr(FusedEmitter, "graph_passes", ())
        unfolded = build_sasrec_onnx(model, **kwargs)
    ops = _op_types(unfolded)
    # a norm after the embedding, after each residual add (2 per block), the final norm
    assert ops.count("LayerNorm") == 2 * blocks + 1
    assert ops.count("RequantizeAdd") == 2 * blocks and ops.count("EmbedQuantize") == 1
    assert not {"RequantizeAddNorm", "EmbedQuantizeNorm"} & set(ops)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(unfolded)
    # the full-sequence graph's final norm reads a Gather (the last position): left alone
    folds = 2 * blocks + 1 if serving else 2 * blocks
    assert fold_layer_norms(rewritten) == folds
    assert rewritten.SerializeToString() == folded.SerializeToString()
    ops = _op_types(rewritten)
    assert ops.count("EmbedQuantizeNorm") == 1 and ops.count("EmbedQuantize") == 0
    assert ops.count("RequantizeAddNorm") == folds - 1
    assert ops.count("RequantizeAdd") == 2 * blocks - (folds - 1)
    assert ops.count("LayerNorm") == 2 * blocks + 1 - folds
    assert len(rewritten.graph.node) == len(unfolded.graph.node) - folds
    assert fold_layer_norms(rewritten) == 0  # nothing left to fold
    onnx.checker.check_model(unfolded)
    x = batch(15, size=64)
    expected = OnnxScorer(make_session(unfolded, threads=1, optimization="disable")).run(
        x, ["scores", "hidden"])
    got = OnnxScorer(make_session(rewritten, threads=1, optimization="disable")).run(
        x, ["scores", "hidden"])
    assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])


def test_fold_layer_norms_rule_on_a_hand_written_graph():
    """One LayerNorm per producer (the first of two is folded), gamma/beta must exist where the
    producer runs, the other backends' nodes are not touched; outputs unchanged."""
    rng = np.random.default_rng(3)
    rows, width = 6, 40
    g = GraphBuilder("fold")
    acc = g.add_input("acc", INT32, [rows, width])
    residual = g.add_input("residual", UINT8, [rows, width])
    add_attrs = dict(s_a=0.04, z_a=120, s_b=0.03, z_b=131, inv_s=20.0, z=126)
    norm_attrs = dict(s_x=0.05, z_x=126, eps="1e-05", inv_s=30.0, z=128)

    def requantize_add(hint):
        inputs = [acc, g.initializer(rng.standard_normal(width).astype(np.float32), "bias_acc"),
                  g.initializer((rng.random(width) * 0.01).astype(np.float32), "multiplier"),
                  residual]
        return g.node("RequantizeAdd", inputs, name=hint, domain=native_ops.DOMAIN, **add_attrs)

    def layer_norm(u, hint, gamma=None):
        gamma = gamma or g.initializer((rng.random(width) + 0.5).astype(np.float32), "gamma")
        beta = g.initializer(rng.standard_normal(width).astype(np.float32) * 0.1, "beta")
        return g.node("LayerNorm", [u, gamma, beta], name=hint, domain=native_ops.DOMAIN,
                      **norm_attrs)

    first = requantize_add("first")
    second = requantize_add("second")
    late_gamma = g.node("Identity", [g.initializer(np.ones(width, np.float32), "g")], name="lg")
    outputs = [first, layer_norm(first, "norm_a"), layer_norm(first, "norm_b"),
               layer_norm(second, "norm_c", gamma=late_gamma)]  # gamma written after "second"
    for name in outputs:
        g.add_output(name, UINT8)
    proto = g.build()
    before = onnx.ModelProto()
    before.CopyFrom(proto)
    assert fold_layer_norms(proto) == 1
    assert _op_types(proto) == ["RequantizeAddNorm", "RequantizeAdd", "Identity", "LayerNorm",
                                "LayerNorm"]
    fused = proto.graph.node[0]
    assert list(fused.output) == [first, outputs[1]] and len(fused.input) == 6
    assert [a.name for a in fused.attribute][-5:] == [
        "norm_s_x", "norm_z_x", "norm_eps", "norm_inv_s", "norm_z"]
    feed = {"acc": rng.integers(-3000, 3000, (rows, width)).astype(np.int32),
            "residual": rng.integers(0, 256, (rows, width)).astype(np.uint8)}
    expected = make_session(before, threads=1).run(None, feed)
    got = make_session(proto, threads=1).run(None, feed)
    for e, o in zip(expected, got):
        np.testing.assert_array_equal(o, e)
    # the torch-exact graph's LayerNorm functions (another domain) are not this pass's
    exact = build_sasrec_onnx(tiny_model("lsq"))
    data = exact.SerializeToString()
    assert fold_layer_norms(exact) == 0 and exact.SerializeToString() == data


def _one_op_model(op: str, inputs: list[tuple[str, int, list[int]]],
                  constants: dict[str, np.ndarray], **attrs) -> onnx.ModelProto:
    g = GraphBuilder("one_op")
    names = [g.add_input(name, dtype, shape) for name, dtype, shape in inputs]
    names += [g.initializer(value, name) for name, value in constants.items()]
    g.add_output(g.node(op, names, name="y", domain=native_ops.DOMAIN, **attrs), UINT8)
    return g.build()


def test_bad_inputs_get_clear_errors():
    """Shape and attribute errors come back from the kernel as onnxruntime errors naming the
    problem."""
    width = 50
    norm_attrs = dict(s_x=0.1, z_x=3, eps="1e-05", inv_s=10.0, z=4)
    norm = _one_op_model("LayerNorm", [("u", UINT8, [2, width])], {
        "gamma": np.ones(width - 1, np.float32), "beta": np.zeros(width, np.float32)},
        **norm_attrs)
    with pytest.raises(Exception, match=r"gamma must have one value per column \(50\), got 49"):
        make_session(norm, threads=1).run(None, {"u": np.zeros((2, width), np.uint8)})
    requant = _one_op_model("Requantize", [("acc", INT32, [3, 8])], {
        "bias_acc": np.zeros(7, np.float32), "multiplier": np.ones(8, np.float32)}, z=0)
    with pytest.raises(Exception, match=r"bias_acc must have one value per column \(8\), got 7"):
        make_session(requant, threads=1).run(None, {"acc": np.zeros((3, 8), np.int32)})
    no_z = _one_op_model("QuantizePerTensor", [("x", FLOAT, [4])], {}, inv_s=1.0)
    with pytest.raises(Exception, match="needs the int attribute z"):
        make_session(no_z, threads=1)
    wide_z = _one_op_model("QuantizePerTensor", [("x", FLOAT, [4])], {}, inv_s=1.0, z=300)
    with pytest.raises(Exception, match="must be a uint8 zero point, got 300"):
        make_session(wide_z, threads=1)
    bad_eps = _one_op_model("LayerNorm", [("u", UINT8, [2, width])], {
        "gamma": np.ones(width, np.float32), "beta": np.zeros(width, np.float32)},
        **{**norm_attrs, "eps": "tiny"})
    with pytest.raises(Exception, match="eps is not a number: tiny"):
        make_session(bad_eps, threads=1)


def test_out_of_range_ids_are_an_error():
    """EmbedQuantize checks its ids like Gather does: the message names the bad value."""
    session = make_session(build_sasrec_onnx(tiny_model("pact"), fused=True), threads=1)
    x = batch(14, size=3).numpy()
    x[1, -1] = 999
    with pytest.raises(Exception, match="item id 999 or position 10 is out of range"):
        session.run(None, {"item_seq": x})


def test_requantize_kernel_by_hand():
    """sat(rint((acc + bias_acc) * multiplier) + z), round half to even, saturating."""
    acc = np.array([[0, 1, 2, 3], [-10, 5, 500, -500]], np.int32)
    bias_acc = np.array([0.5, 0.5, 0.0, 0.0], np.float32)
    multiplier = np.array([1.0, 1.0, 1.0, 0.5], np.float32)
    model = _one_op_model("Requantize", [("acc", INT32, [2, 4])], {
        "bias_acc": bias_acc, "multiplier": multiplier}, z=10)
    got = make_session(model, threads=1).run(None, {"acc": acc})[0]
    # row 0: 0.5 -> 0, 1.5 -> 2, 2 -> 2, 1.5 -> 2; then + 10
    # row 1: -9.5 -> -10 (+10 = 0), 5.5 -> 6, 500 -> 510 saturates at 255, -250 -> 0
    np.testing.assert_array_equal(got, [[10, 12, 12, 12], [0, 16, 255, 0]])


@pytest.mark.slow  # compiles the library
def test_library_is_built_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("SASREC_QAT_CACHE", str(tmp_path))
    native_ops.library_path.cache_clear()
    try:
        first = native_ops.library_path()
        assert first.is_file() and tmp_path in first.parents
        built = first.stat().st_mtime_ns
        native_ops.library_path.cache_clear()
        assert native_ops.library_path() == first and first.stat().st_mtime_ns == built
    finally:
        native_ops.library_path.cache_clear()


def test_missing_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SASREC_QAT_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    native_ops.library_path.cache_clear()
    try:
        with pytest.raises(native_ops.NativeBuildError, match="need a C\\+\\+ compiler"):
            native_ops.library_path()
        with pytest.raises(native_ops.NativeBuildError):
            make_session(build_sasrec_onnx(tiny_model("ste"), fused=True))
    finally:
        native_ops.library_path.cache_clear()


def test_compile_errors_are_reported(tmp_path, monkeypatch):
    """A compiler that fails: the message carries its output."""
    fake = tmp_path / "bad-cxx"
    fake.write_text("#!/bin/sh\necho 'fake compiler: broken' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("SASREC_QAT_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(fake))
    native_ops.library_path.cache_clear()
    try:
        with pytest.raises(native_ops.NativeBuildError, match="fake compiler: broken"):
            native_ops.library_path()
        assert not list(tmp_path.rglob(native_ops.LIBRARY_NAME))  # nothing half-built left
    finally:
        native_ops.library_path.cache_clear()


def test_per_column_inputs_fed_at_run_time():
    """gamma/beta (or bias_acc/multiplier) that are graph inputs, not initializers: the kernel
    tiles them on each run instead of once; results equal the initializer version's."""
    rng = np.random.default_rng(0)
    width, rows = 50, 300
    u = rng.integers(0, 256, (rows, width)).astype(np.uint8)
    gamma = (rng.random(width) + 0.5).astype(np.float32)
    beta = (rng.standard_normal(width) * 0.1).astype(np.float32)
    attrs = dict(s_x=0.0311, z_x=120, eps="1e-05", inv_s=1 / 0.0257, z=125)
    constant = _one_op_model("LayerNorm", [("u", UINT8, [rows, width])],
                             {"gamma": gamma, "beta": beta}, **attrs)
    fed = _one_op_model("LayerNorm", [("u", UINT8, [rows, width]), ("gamma", FLOAT, [width]),
                                      ("beta", FLOAT, [width])], {}, **attrs)
    expected = make_session(constant, threads=1).run(None, {"u": u})[0]
    got = make_session(fed, threads=2).run(None, {"u": u, "gamma": gamma, "beta": beta})[0]
    np.testing.assert_array_equal(got, expected)
    acc = rng.integers(-5000, 5000, (rows, width)).astype(np.int32)
    bias_acc = rng.standard_normal(width).astype(np.float32) * 50
    multiplier = (rng.random(width) * 0.01).astype(np.float32)
    constant = _one_op_model("RequantizeRelu", [("acc", INT32, [rows, width])],
                             {"bias_acc": bias_acc, "multiplier": multiplier}, z=7)
    fed = _one_op_model("RequantizeRelu", [("acc", INT32, [rows, width]),
                                           ("bias_acc", FLOAT, [width]),
                                           ("multiplier", FLOAT, [width])], {}, z=7)
    expected = make_session(constant, threads=1).run(None, {"acc": acc})[0]
    got = make_session(fed, threads=1).run(None, {"acc": acc, "bias_acc": bias_acc,
                                                  "multiplier": multiplier})[0]
    np.testing.assert_array_equal(got, expected)
    steps = np.maximum((acc.astype(np.float32) + bias_acc) * multiplier, 0)  # by hand
    np.testing.assert_array_equal(expected, np.clip(np.rint(steps) + 7, 0, 255))


@pytest.mark.slow  # compiles the library
def test_unwritable_cache_builds_in_the_temporary_directory(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SASREC_QAT_CACHE", str(blocker / "cache"))  # mkdir fails under a file
    monkeypatch.setattr(native_ops.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    native_ops.library_path.cache_clear()
    try:
        path = native_ops.library_path()
        assert (tmp_path / "tmp") in path.parents and path.is_file()
    finally:
        native_ops.library_path.cache_clear()

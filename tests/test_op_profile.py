"""export.op_profile and scripts/profile_ops.py: onnxruntime's per-node kernel times summed per
op type, counting only the profiled runs (not the warm-up)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import run_in_process

from export import build_sasrec_onnx
from export.onnx_file import save_onnx
from export.op_profile import profile_ops, random_histories
from tests.test_export_models import CONFIG, tiny_model


def inputs(rows: int = 6) -> np.ndarray:
    return random_histories(CONFIG.num_items, CONFIG.max_len, rows, seed=3)


@pytest.mark.parametrize("kind,fused,ops", [
    ("fp32", False, {"MatMul", "LayerNormalization", "Softmax"}),
    ("lsq", True, {"MatMulInteger", "EmbedQuantizeNorm", "RequantizeAddNorm", "Score"})])
def test_profile_sums_kernel_time_per_op_type_over_the_profiled_runs(kind, fused, ops):
    model = build_sasrec_onnx(tiny_model(kind), fused=fused)
    profile = profile_ops(model, inputs(), threads=1, runs=4, warmup=3)
    assert ops <= set(profile.per_op_us)
    assert all(us > 0 for us in profile.per_op_us.values())
    assert profile.kernel_us == pytest.approx(sum(profile.per_op_us.values()))
    assert [us for _, us in profile.top()] == sorted(profile.per_op_us.values(), reverse=True)
    assert len(profile.top(2)) == 2 and (profile.runs, profile.batch) == (4, 6)
    # every node runs once per run: whole numbers, so the 3 warm-up runs were left out
    assert all(n == int(n) and n >= 1 for n in profile.calls_per_run.values())
    once = "EmbedQuantizeNorm" if fused else "Softmax"
    assert profile.calls_per_run[once] == (1 if fused else CONFIG.blocks)
    assert profile.wall_us > 0


def test_bad_numbers_are_refused():
    model = build_sasrec_onnx(tiny_model("fp32"))
    for kwargs in ({"runs": 0}, {"warmup": -1}, {"threads": 0}):
        with pytest.raises(ValueError, match="runs must be >= 1"):
            profile_ops(model, inputs(), **kwargs)


def test_random_histories_are_left_padded_ids_of_the_catalogue():
    x = random_histories(30, 12, 200, seed=0)
    assert x.shape == (200, 12) and x.dtype == np.int64 and x.max() <= 30
    lengths = (x != 0).sum(axis=1)
    assert lengths.min() >= 1 and lengths.max() == 12
    for row, n in zip(x, lengths):  # padding first, then ids (no 0 inside a history)
        assert not row[:12 - n].any() and row[12 - n:].all()


def test_cli_prints_one_table_per_model_and_refuses_bad_input(tmp_path):
    fp32, fused = tmp_path / "model_fp32.onnx", tmp_path / "model_int8_fused.onnx"
    save_onnx(build_sasrec_onnx(tiny_model("fp32")), fp32)
    save_onnx(build_sasrec_onnx(tiny_model("lsq"), fused=True), fused)
    result = run_in_process("profile_ops", "--models", fp32, fused, "--batch", 4, "--runs", 3,
                            "--top", 3)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "batch 4, 1 thread(s), 3 profiled runs, 40 items, max_len 10" in out
    assert f"{fp32}: kernels" in out and f"{fused}: kernels" in out and "more)" in out
    other = tmp_path / "other.onnx"
    smaller = dataclasses.replace(CONFIG, num_items=30)
    save_onnx(build_sasrec_onnx(tiny_model("fp32", config=smaller)), other)
    for args, message in ((["--models", tmp_path / "none.onnx"], "no model file at"),
                          (["--models", fp32, other], "different catalogues or lengths"),
                          (["--models", fp32, "--runs", 0], "--runs must be >= 1, got 0"),
                          (["--models", fp32, "--warmup", -2], "--warmup must be >= 0, got -2")):
        result = run_in_process("profile_ops", *args)
        assert result.returncode == 2
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], result.stderr

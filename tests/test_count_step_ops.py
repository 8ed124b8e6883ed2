"""scripts/count_step_ops.py: operators per QAT training step, against FP32."""
from __future__ import annotations

import torch
from conftest import run_in_process

TINY = ["--num-items", "30", "--max-len", "6", "--hidden", "8", "--blocks", "1",
        "--batch-size", "4", "--warmup", "1"]


def test_counts_fp32_and_each_method_with_their_ratio():
    result = run_in_process("count_step_ops", *TINY, "--methods", "ste", "lsq")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:]}
    assert list(rows) == ["fp32", "ste", "lsq"]
    leaf = {name: int(row[2]) for name, row in rows.items()}
    assert rows["fp32"][3] == "1.00x" and rows["fp32"][6] == "-"  # no kernels on the CPU
    for name in ("ste", "lsq"):
        assert leaf[name] > leaf["fp32"]  # fake quantization adds operators
        assert rows[name][3] == f"{leaf[name] / leaf['fp32']:.2f}x"
        assert int(rows[name][1]) >= leaf[name] and int(rows[name][5]) > 0


def test_time_rounds_print_a_median_per_model_against_fp32():
    result = run_in_process("count_step_ops", *TINY, "--methods", "pact", "--threads", "1",
                            "--adam", "foreach", "--time-rounds", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if "median ms" in line)
    assert "3 interleaved rounds, 1 threads" in lines[header]
    rows = {line.split()[0]: line.split() for line in lines[header + 1:] if line.strip()}
    assert list(rows) == ["fp32", "pact"] and rows["fp32"][2] == "1.00x"
    ms = {name: float(row[1]) for name, row in rows.items()}
    assert all(v > 0 for v in ms.values())
    # the printed ratio (2 decimals) of the unrounded times against the ratio of the printed
    # times (each within 0.005 ms): apart by at most its rounding plus theirs
    printed, rebuilt = float(rows["pact"][2][:-1]), ms["pact"] / ms["fp32"]
    bound = 0.005 + 0.005 * (1 + rebuilt) / (ms["fp32"] - 0.005)
    assert abs(printed - rebuilt) <= bound * 1.001, (printed, rebuilt, bound)


def test_bad_input_is_one_error_line():
    cases = [(["--hidden", "0"], "--hidden must be >= 1"),
             (["--time-rounds", "-1"], "--time-rounds must be >= 0"),
             (["--threads", "0"], "--threads must be >= 1")]
    if not torch.cuda.is_available():  # where it is, --device cuda is good input
        cases.append((["--device", "cuda"], "CUDA is not available"))
    for args, message in cases:
        result = run_in_process("count_step_ops", *TINY, *args)
        assert result.returncode == 2
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], result.stderr


def test_several_adam_kinds_are_rows_of_one_run_each_against_its_own_fp32():
    result = run_in_process("count_step_ops", *TINY, "--methods", "ste", "--adam", "fused",
                            "loop")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:]}
    assert list(rows) == ["fp32/fused", "ste/fused", "fp32/loop", "ste/loop"]
    leaf = {name: int(row[2]) for name, row in rows.items()}
    for kind in ("fused", "loop"):
        assert rows[f"fp32/{kind}"][3] == "1.00x"
        assert rows[f"ste/{kind}"][3] == f"{leaf[f'ste/{kind}'] / leaf[f'fp32/{kind}']:.2f}x"
    # the fused Adam updates every parameter in one operator; the loop runs several per
    # parameter, and the forward and backward are the same
    assert leaf["fp32/fused"] < leaf["fp32/loop"]
    assert leaf["ste/loop"] - leaf["ste/fused"] == leaf["fp32/loop"] - leaf["fp32/fused"] > 0

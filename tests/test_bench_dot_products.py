"""scripts/bench_dot_products.py: its instruction rates, and its bad input as one error line."""
from __future__ import annotations

import re

import pytest
from conftest import run_in_process


def one_error(result) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def test_unknown_arguments_and_a_missing_compiler_are_one_error_line(monkeypatch):
    assert "unrecognized arguments: --bogus" in one_error(
        run_in_process("bench_dot_products", "--bogus"))
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    assert one_error(run_in_process("bench_dot_products")) == (
        "error: cannot run the C++ compiler '/nonexistent/g++' (No such file or directory); "
        "install g++ or set $CXX")
    monkeypatch.setenv("CXX", "/bin/false")
    assert one_error(run_in_process("bench_dot_products")) == "error: /bin/false failed: " \
                                                              "no message"


@pytest.mark.slow
def test_prints_a_positive_rate_per_instruction_and_the_cpu_flags():
    result = run_in_process("bench_dot_products")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "flags" in lines[0]
    rates = [float(m.group(1)) for line in lines[1:]
             if (m := re.search(r"([\d.]+) G MAC/s$", line))]
    assert len(rates) >= 3 and all(rate > 0 for rate in rates), result.stdout

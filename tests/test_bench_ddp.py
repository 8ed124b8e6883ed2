"""scripts/bench_ddp.py: one process against torchrun's, with paths relative to the caller."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cyclic_dataset

from data import write_sasrec_text

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_relative_data_and_out_are_the_callers(tmp_path):
    """Run from another folder than the repository with relative --data and --out: both are
    read and written there (the trainings once ran from the repository root, so a relative
    --data was not found and a relative --out landed in the repository)."""
    write_sasrec_text(cyclic_dataset(), tmp_path / "cyclic.txt")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT),
                                                        os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_ddp.py"), "--data", "cyclic.txt",
         "--out", "bench", "--max-len", "10", "--epochs", "2", "--batch-size", "8"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "bench" / "bench_ddp.json").read_text())
    run = record["runs"][0]
    assert run["max_len"] == 10 and run["one"]["processes"] == 1
    assert run["many"]["processes"] == 2 and run["throughput_ratio"] > 0
    assert (tmp_path / "bench" / "len10_p2" / "checkpoint.pt").is_file()
    assert not (ROOT / "bench").exists()

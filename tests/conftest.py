"""Shared fixtures: tiny synthetic datasets with a learnable structure; loading the scripts."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest

from data import SequenceDataset, leave_one_out, write_sasrec_text


def cyclic_dataset(num_users: int = 40, num_items: int = 20, length: int = 12) -> SequenceDataset:
    """User u walks the item cycle 1..num_items starting at item u: next item = item % N + 1.

    A sequence model can learn this perfectly, so trained metrics must be far above chance.
    """
    sequences = {
        user: [(user + step) % num_items + 1 for step in range(length)]
        for user in range(1, num_users + 1)
    }
    return SequenceDataset(sequences=sequences, num_users=num_users, num_items=num_items,
                           source="cyclic")


@pytest.fixture
def cyclic_split():
    return leave_one_out(cyclic_dataset())


@pytest.fixture
def cyclic_file(tmp_path):
    path = tmp_path / "cyclic.txt"
    write_sasrec_text(cyclic_dataset(), path)
    return path


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as module ``<name>_script`` (to call ``main`` in process)."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def run_in_process(name: str, *args: object) -> subprocess.CompletedProcess:
    """``scripts/<name>.py args`` called in this process (``main``), as a subprocess result:
    exit status, stdout, stderr. Saves the seconds a new Python process spends importing torch;
    tests that must see a real process use ``subprocess`` themselves."""
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = load_script(name).main(argv)
        except SystemExit as exit_:  # argparse
            status = exit_.code if isinstance(exit_.code, int) else 2
    return subprocess.CompletedProcess([name, *argv], status, out.getvalue(), err.getvalue())


# train_qat.py flags of a tiny model that trains in about a second (max length first)
TINY_TRAIN = ["--max-len", "10", "--hidden", "8", "--blocks", "1", "--batch-size", "8",
              "--threads", "1", "--no-progress"]


def train_tiny_runs(root: Path, methods: Sequence[str] = (), *,
                    epochs: int = 1) -> tuple[Path, Path, dict[str, Path]]:
    """``(data file, FP32 run, {method: QAT run})`` under ``root``, trained in process by
    scripts/train_qat.py on the cyclic dataset; each QAT run starts from the FP32 run."""
    data = root / "cyclic.txt"
    write_sasrec_text(cyclic_dataset(), data)
    train = load_script("train_qat")
    flags = ["--data", str(data), *TINY_TRAIN, "--epochs", str(epochs)]
    fp32 = root / "fp32"
    assert train.main([*flags, "--out", str(fp32)]) == 0
    qat = {}
    for method in methods:
        qat[method] = root / method
        assert train.main([*flags, "--qconfig", method, "--init-from", str(fp32), "--out",
                           str(qat[method])]) == 0
    return data, fp32, qat

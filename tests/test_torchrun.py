"""scripts/train_qat.py under real ``torchrun`` (2 local CPU processes, gloo).

* every rank ``kill -9``-ed mid-epoch, then the same command plus ``--resume``, ends with the
  metrics and weights of an uninterrupted 2-process run, bit for bit;
* a user error (``--out`` holding a finished run, no ``--resume``) is one ``error:`` line
  (rank 0's; rank 1 stops quietly) and a non-zero exit, with no Python traceback of ours.

torchrun is started as ``python -m torch.distributed.run`` so that the processes use this Python.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN, cyclic_dataset

from data import write_sasrec_text
from qat.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_qat.py"
EPOCHS = 3
PROCESSES = 2

# Runs scripts/train_qat.py (argv[1:] = its flags) after arming a SIGKILL of this process at
# epoch 2, step 2 (call len(batcher) + 2 of Trainer.step). Every rank runs it, so every rank
# kills itself at the same step (before the step's collectives: no rank waits on a dead peer).
KILL_MID_EPOCH = r"""
import os, runpy, signal, sys
sys.path.insert(0, os.getcwd())
import qat.train as train

real_step, calls = train.Trainer.step, {"n": 0}
def step(self, batch, progress):
    calls["n"] += 1
    if calls["n"] == len(self.batcher) + 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_step(self, batch, progress)
train.Trainer.step = step
sys.argv = ["train_qat.py", *sys.argv[1:]]
runpy.run_path(os.path.join(os.getcwd(), "scripts", "train_qat.py"), run_name="__main__")
"""


def _torchrun(script: Path, flags: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(PROCESSES), str(script), *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def _no_abort(result: subprocess.CompletedProcess) -> None:
    """No rank aborted (SIGABRT) on its way out: "terminate called without an active exception"
    is a gloo worker thread that outlived ``destroy_process_group`` meeting the interpreter's
    finalization (qat/distributed.py ``DistributedContext.shutdown``)."""
    assert "terminate called" not in result.stderr and "SIGABRT" not in result.stderr, \
        "a rank aborted at exit:\n" + result.stderr


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("torchrun") / "cyclic.txt"
    write_sasrec_text(cyclic_dataset(), path)
    return path


def _flags(data: Path, out: Path) -> list[str]:
    return ["--data", str(data), *TINY_TRAIN, "--device", "cpu", "--epochs", str(EPOCHS),
            "--out", str(out)]


@pytest.mark.slow
def test_torchrun_resume_after_killing_all_ranks(data_file, tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "run"
    done = _torchrun(SCRIPT, _flags(data_file, reference))
    _no_abort(done)
    assert done.returncode == 0, done.stderr

    launcher = tmp_path / "kill_mid_epoch.py"
    launcher.write_text(KILL_MID_EPOCH)
    killed = _torchrun(launcher, _flags(data_file, out))
    assert killed.returncode != 0, killed.stderr
    assert "SIGKILL" in killed.stderr, killed.stderr  # torchrun's summary names the signal
    # what survived: epoch 1's checkpoint (rank 0 wrote it), no metrics
    assert load_checkpoint(out / "checkpoint.pt")["state"]["epoch"] == 1
    assert not (out / "metrics.json").exists()

    resumed = _torchrun(SCRIPT, [*_flags(data_file, out), "--resume"])
    _no_abort(resumed)
    assert resumed.returncode == 0, resumed.stderr

    expected = json.loads((reference / "metrics.json").read_text())
    got = json.loads((out / "metrics.json").read_text())
    assert got["processes"] == expected["processes"] == PROCESSES
    for key in ("valid", "test"):
        for metric in ("ndcg@10", "hit@10", "users"):
            assert got[key][metric] == expected[key][metric], (key, metric)
    assert got["best_epoch"] == expected["best_epoch"]
    assert got["epochs_run"] == expected["epochs_run"] == EPOCHS
    a, b = load_checkpoint(reference / "checkpoint.pt"), load_checkpoint(out / "checkpoint.pt")
    assert a["model"].keys() == b["model"].keys()
    for name, tensor in a["model"].items():
        assert torch.equal(b["model"][name], tensor), name
    for name, tensor in a["state"]["model"].items():
        assert torch.equal(b["state"]["model"][name], tensor), name
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]


@pytest.mark.slow
def test_torchrun_bad_input_is_one_error_line(data_file, tmp_path):
    out = tmp_path / "run"
    flags = ["--data", str(data_file), *TINY_TRAIN, "--device", "cpu", "--epochs", "1",
             "--out", str(out)]
    done = _torchrun(SCRIPT, flags)
    _no_abort(done)
    assert done.returncode == 0, done.stderr
    assert (out / "metrics.json").exists()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    again = _torchrun(SCRIPT, flags)  # no --resume
    _no_abort(again)
    assert again.returncode != 0, again.stderr
    errors = [line for line in again.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, again.stderr
    assert "exists" in errors[0] and "--resume" in errors[0], errors
    assert "[rank" not in errors[0]  # rank 0's line; rank 1 (PeerFailed) prints none
    # No traceback of ours. torchrun's own process prints one: its ChildFailedError (frames in
    # torch/distributed only), then a summary of the failed ranks (exitcode 2 for ours; one
    # may read -15, SIGTERM, when torchrun stopped it first).
    assert again.stderr.count("Traceback") <= 1, again.stderr
    if "Traceback" in again.stderr:
        assert "ChildFailedError" in again.stderr, again.stderr
    frames = [line for line in again.stderr.splitlines() if line.lstrip().startswith("File ")]
    assert not [f for f in frames if str(ROOT) in f or "train_qat.py" in f], again.stderr
    assert re.search(r"exitcode\s*:\s*2\b", again.stderr), again.stderr
    # the finished run is left as it was
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

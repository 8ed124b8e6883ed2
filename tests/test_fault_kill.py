"""Fault test: ``kill -9`` of train_qat.py mid-epoch or mid-checkpoint-write, then ``--resume``.

The process is killed for real (SIGKILL: no cleanup, no ``finally``). The moment is chosen
deterministically by a launcher that wraps one function of the real code before running the
script: ``Trainer.step`` (a kill in the middle of an epoch) or ``os.replace``/``torch.save`` in
``qat.checkpoint`` (a kill after the temp file is written but before the rename, and one halfway
through writing the temp file). After the kill, the same command plus ``--resume`` must end with
the metrics and weights of an uninterrupted run, bit for bit.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN, cyclic_dataset

from data import write_sasrec_text
from qat.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3

# Runs scripts/train_qat.py after arming one SIGKILL; argv[1] = where, argv[2:] = the flags.
LAUNCHER = r"""
import os, runpy, signal, sys
where, argv = sys.argv[1], sys.argv[2:]
import qat.checkpoint as checkpoint
import qat.train as train

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if where == "mid_epoch":  # epoch 2, step 2
    real_step, calls = train.Trainer.step, {"n": 0}
    def step(self, batch, progress):
        calls["n"] += 1
        if calls["n"] == len(self.batcher) + 2:
            die()
        return real_step(self, batch, progress)
    train.Trainer.step = step
elif where == "before_rename":  # epoch 2's checkpoint: complete temp file, not yet renamed
    real_replace, seen = os.replace, {"n": 0}
    def replace(src, dst):
        if str(dst).endswith("checkpoint.pt"):
            seen["n"] += 1
            if seen["n"] == 2:
                die()
        return real_replace(src, dst)
    checkpoint.os.replace = replace
elif where == "mid_write":  # epoch 2's checkpoint: temp file half written
    real_save, seen = checkpoint.torch.save, {"n": 0}
    def save(obj, f):
        seen["n"] += 1
        if seen["n"] == 2:
            import io
            buffer = io.BytesIO()
            real_save(obj, buffer)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            die()
        return real_save(obj, f)
    checkpoint.torch.save = save
sys.argv = ["train_qat.py", *argv]
runpy.run_path(os.path.join(os.getcwd(), "scripts", "train_qat.py"), run_name="__main__")
"""


def _train(flags: list[str], where: str | None = None) -> subprocess.CompletedProcess:
    command = ([sys.executable, "-c", LAUNCHER, where, *flags] if where else
               [sys.executable, str(ROOT / "scripts" / "train_qat.py"), *flags])
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault")
    data = root / "cyclic.txt"
    write_sasrec_text(cyclic_dataset(), data)
    flags = ["--data", str(data), *TINY_TRAIN, "--epochs", str(EPOCHS), "--patience", "50"]
    done = _train([*flags, "--out", str(root / "straight")])
    assert done.returncode == 0, done.stderr
    return flags, root / "straight"


@pytest.mark.slow
@pytest.mark.parametrize("where", ["mid_epoch", "before_rename", "mid_write"])
def test_kill_9_then_resume_gives_the_uninterrupted_result(uninterrupted, tmp_path, where):
    flags, straight = uninterrupted
    out = tmp_path / "run"
    killed = _train([*flags, "--out", str(out)], where)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # what survived: epoch 1's complete checkpoint (the interrupted write left only a temp file)
    assert load_checkpoint(out / "checkpoint.pt")["state"]["epoch"] == 1
    assert not (out / "metrics.json").exists()
    resumed = _train([*flags, "--out", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr

    expected = json.loads((straight / "metrics.json").read_text())
    got = json.loads((out / "metrics.json").read_text())
    for key in ("valid", "test"):
        for metric in ("ndcg@10", "hit@10", "users"):
            assert got[key][metric] == expected[key][metric]
    assert got["best_epoch"] == expected["best_epoch"] and got["epochs_run"] == EPOCHS
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(out / "checkpoint.pt")
    for name, tensor in a["state"]["model"].items():
        torch.testing.assert_close(b["state"]["model"][name], tensor, atol=0, rtol=0)
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]

"""scripts/paired_ndcg.py: paired per-user nDCG differences with a 95% interval."""
from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import cyclic_dataset, load_script, train_tiny_runs

from data import leave_one_out
from export import load_run
from qat.evaluate import evaluate

paired = load_script("paired_ndcg")


def test_paired_difference_by_hand():
    reference = torch.tensor([0.0, 1.0, 0.5, 0.0])
    run = torch.tensor([0.0, 0.5, 0.5, 1.0])  # differences 0, -0.5, 0, 1
    d = paired.paired_difference(run, reference)
    assert d["mean"] == pytest.approx(0.125)
    sd = math.sqrt(((0 - .125) ** 2 + (-.5 - .125) ** 2 + (0 - .125) ** 2 + (1 - .125) ** 2) / 3)
    assert d["ci95"] == pytest.approx(1.959964 * sd / 2)
    assert d["changed_users"] == 2
    with pytest.raises(ValueError, match="same users"):
        paired.paired_difference(run[:3], reference)


def test_cli_against_evaluate(tmp_path, capsys):
    _, fp32, qat = train_tiny_runs(tmp_path, ["ste"], epochs=2)
    ste = qat["ste"]
    out = tmp_path / "paired.json"
    assert paired.main(["--reference", str(fp32), "--runs", str(fp32), str(ste),
                        "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    split = leave_one_out(cyclic_dataset())
    expected = {str(d): evaluate(load_run(d).model.score_last, split, "test", max_len=10)
                for d in (fp32, ste)}
    by_run = {r["run"]: r for r in result["runs"]}
    assert result["reference_ndcg@10"] == pytest.approx(expected[str(fp32)]["ndcg@10"])
    itself = by_run[str(fp32)]
    assert itself["ratio"] == 1.0 and itself["difference"] == {
        "mean": 0.0, "ci95": 0.0, "changed_users": 0}
    quantized = by_run[str(ste)]
    assert quantized["ndcg@10"] == pytest.approx(expected[str(ste)]["ndcg@10"])
    assert quantized["difference"]["mean"] == pytest.approx(
        expected[str(ste)]["ndcg@10"] - expected[str(fp32)]["ndcg@10"])
    assert "ste" in capsys.readouterr().out


def test_bad_input_exits_2(tmp_path, capsys):
    assert paired.main(["--reference", str(tmp_path / "nope"), "--runs",
                        str(tmp_path / "nope")]) == 2
    assert "error:" in capsys.readouterr().err
    assert paired.main(["--reference", str(tmp_path), "--runs", str(tmp_path), "--out",
                        str(tmp_path)]) == 2  # --out a folder: before any computation
    err = capsys.readouterr().err
    assert f"--out {tmp_path} is a folder" in err and "Traceback" not in err

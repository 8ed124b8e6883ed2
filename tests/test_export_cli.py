"""scripts/export_int8.py end to end on tiny run folders made by scripts/train_qat.py."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from conftest import cyclic_dataset, load_script

from data import write_sasrec_text
from qat.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EXPORT = ROOT / "scripts" / "export_int8.py"
TRAIN = ROOT / "scripts" / "train_qat.py"
TINY = ["--max-len", 10, "--hidden", 8, "--blocks", 1, "--batch-size", 8, "--threads", 1,
        "--no-progress", "--epochs", 1]


def run(script, *args):
    # the repository root first: an editable install made before export/ existed lacks it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(data file, fp32 run folder, lsq run folder), trained once for the module."""
    root = tmp_path_factory.mktemp("runs")
    data = root / "cyclic.txt"
    write_sasrec_text(cyclic_dataset(), data)
    fp32, lsq = root / "fp32", root / "lsq"
    for args in (["--out", fp32], ["--qconfig", "lsq", "--init-from", fp32, "--out", lsq]):
        result = run(TRAIN, "--data", data, *TINY, *args)
        assert result.returncode == 0, result.stderr
    return data, fp32, lsq


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for name in ("model_int8.onnx", "model_fp32.onnx", "parity.json"):
        (dst / name).unlink(missing_ok=True)
    return dst


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_export_writes_onnx_and_parity_and_passes(kind, runs, tmp_path):
    data, fp32, lsq = runs
    folder = copy_run(fp32 if kind == "fp32" else lsq, tmp_path / "run")
    result = run(EXPORT, "--run", folder, "--threads", 1, "--top-k", 5)
    assert result.returncode == 0, result.stderr
    assert "parity: PASSED" in result.stdout and "nDCG@10" in result.stdout
    model = onnx.load(str(folder / f"model_{kind}.onnx"))
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == ["scores", "top_k_scores", "top_k_items"]
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["passed"] is True and parity["kind"] == kind
    assert parity["method"] == ("fp32" if kind == "fp32" else "lsq")
    assert parity["dataset"] == str(data)  # taken from config.json
    for metric in ("ndcg@10", "hit@10"):
        assert set(parity[metric]) == {"torch", "onnxruntime"}
        assert abs(parity[metric]["torch"] - parity[metric]["onnxruntime"]) <= 0.002
    assert parity["top10_agreement"] >= 0.99
    payload = (folder / f"model_{kind}.onnx").read_bytes()
    assert parity["onnx_bytes"] == len(payload)
    assert parity["onnx_sha256"] == hashlib.sha256(payload).hexdigest()  # what benchmark matches
    assert parity["max_abs_score_diff"] < 1e-3
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def bad_input(result):
    """Exit 2 with one clear line on stderr and no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_missing_or_empty_run_folder(tmp_path):
    assert "no run folder at" in bad_input(run(EXPORT, "--run", tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    assert "neither model_int8.pt nor checkpoint.pt" in bad_input(
        run(EXPORT, "--run", tmp_path / "empty"))
    assert list((tmp_path / "empty").iterdir()) == []


def test_corrupt_int8_model_leaves_no_new_files(runs, tmp_path):
    folder = copy_run(runs[2], tmp_path / "run")
    (folder / "model_int8.pt").write_bytes(b"garbage, not a torch file")
    before = listing(folder)
    message = bad_input(run(EXPORT, "--run", folder))
    assert message.startswith(f"error: {folder / 'model_int8.pt'}") and "not a readable" in message
    assert listing(folder) == before


def test_truncated_model_files_name_the_file(runs, tmp_path, capsys):
    """A truncated model_int8.pt or checkpoint.pt (a copy cut short): exit 2 with one error line
    that names the file, no traceback, nothing written (in process: no subprocess start-up)."""
    script = load_script("export_int8")
    for src, name in ((runs[2], "model_int8.pt"), (runs[1], "checkpoint.pt")):
        folder = copy_run(src, tmp_path / name)
        path = folder / name
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
        before = listing(folder)
        assert script.main(["--run", str(folder)]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines()
                  if line.startswith("error: ")]
        assert len(errors) == 1 and errors[0].startswith(f"error: {path}"), errors
        assert listing(folder) == before


def test_unknown_method_in_checkpoints(runs, tmp_path):
    folder = copy_run(runs[2], tmp_path / "int8")
    # through qat.checkpoint: the file stays a well-formed checkpoint, only its method is unknown
    saved = load_checkpoint(folder / "model_int8.pt")
    save_checkpoint({**saved, "method": "int3"}, folder / "model_int8.pt")
    before = listing(folder)
    assert "unknown quantization method 'int3'" in bad_input(run(EXPORT, "--run", folder))
    assert listing(folder) == before

    folder = copy_run(runs[1], tmp_path / "fp32")
    ckpt = load_checkpoint(folder / "checkpoint.pt")
    save_checkpoint({**ckpt, "method": "int3"}, folder / "checkpoint.pt")
    assert "unknown method 'int3'" in bad_input(run(EXPORT, "--run", folder))


def test_qat_run_without_int8_model_and_wrong_dataset(runs, tmp_path):
    data, fp32, lsq = runs
    folder = copy_run(lsq, tmp_path / "run")
    (folder / "model_int8.pt").unlink()
    assert "is a lsq run without model_int8.pt" in bad_input(run(EXPORT, "--run", folder))
    other = tmp_path / "other.txt"
    write_sasrec_text(cyclic_dataset(num_items=25), other)
    message = bad_input(run(EXPORT, "--run", copy_run(fp32, tmp_path / "fp32"), "--data", other))
    assert "the model scores 20 items" in message


def test_failed_parity_exits_1_and_still_writes_the_record(runs, tmp_path, monkeypatch):
    """In process, with a gate no export can pass (top-10 agreement >= 1.01)."""
    script = load_script("export_int8")
    from export import ParityThresholds, check_parity

    def strict(*args, **kwargs):
        return check_parity(*args, **kwargs, thresholds=ParityThresholds(min_top10_agreement=1.01))
    monkeypatch.setattr(script, "check_parity", strict)
    folder = copy_run(runs[1], tmp_path / "run")
    assert script.main(["--run", str(folder), "--threads", "1"]) == 1
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["passed"] is False and parity["failures"] == ["top-10 agreement 1.0000 < 1.01"]
    assert (folder / "model_fp32.onnx").is_file()


def test_fused_export_writes_both_graphs_with_parity(runs, tmp_path):
    """--fused: model_int8_fused.onnx beside model_int8.onnx, parity.json["fused"] recorded,
    and its metrics are the exact graph's (the same uint8 results)."""
    _, fp32, lsq = runs
    folder = copy_run(lsq, tmp_path / "run")
    result = run(EXPORT, "--run", folder, "--threads", 1, "--fused")
    assert result.returncode == 0, result.stderr
    assert "model_int8_fused.onnx: fused kernels" in result.stdout
    assert result.stdout.count("parity: PASSED") == 2
    parity = json.loads((folder / "parity.json").read_text())
    fused = parity["fused"]
    assert fused["passed"] is True and fused["onnx_file"] == "model_int8_fused.onnx"
    payload = (folder / "model_int8_fused.onnx").read_bytes()
    assert fused["onnx_bytes"] == len(payload)
    assert fused["onnx_sha256"] == hashlib.sha256(payload).hexdigest() != parity["onnx_sha256"]
    assert parity["onnx_sha256"] == hashlib.sha256(
        (folder / "model_int8.onnx").read_bytes()).hexdigest()
    assert fused["ndcg@10"] == parity["ndcg@10"] and fused["hit@10"] == parity["hit@10"]
    model = onnx.load(str(folder / "model_int8_fused.onnx"))
    assert any(op.domain == "sasrec_qat.fused" for op in model.opset_import)
    # an FP32 run has no fused graph: a clear error, nothing written
    other = copy_run(fp32, tmp_path / "fp32")
    assert "--fused applies to INT8 runs" in bad_input(run(EXPORT, "--run", other, "--fused"))
    assert not (other / "model_fp32.onnx").exists()

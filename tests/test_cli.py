"""scripts/train_qat.py end to end on a tiny synthetic file."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_qat.py"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_help_documents_every_flag():
    out = run("--help").stdout
    for flag in ["--qconfig", "--data", "--out", "--epochs", "--max-len", "--hidden", "--blocks",
                 "--heads", "--dropout", "--batch-size", "--lr", "--loss", "--seed", "--threads",
                 "--resume", "--cache-dir"]:
        assert flag in out


def test_unknown_qconfig_lists_choices(tmp_path):
    result = run("--qconfig", "int3", "--data", "x", "--out", tmp_path)
    assert result.returncode == 2
    assert "invalid choice: 'int3'" in result.stderr and "fp32" in result.stderr


def test_missing_data_file_is_a_clear_error(tmp_path):
    result = run("--data", tmp_path / "nope.txt", "--out", tmp_path / "run")
    assert result.returncode == 2 and "nope.txt" in result.stderr


def test_tiny_run_writes_checkpoint_config_and_metrics(cyclic_file, tmp_path):
    out = tmp_path / "run"
    common = ["--data", cyclic_file, "--out", out, "--max-len", 10, "--hidden", 8, "--blocks", 1,
              "--batch-size", 8, "--threads", 1, "--no-progress"]
    result = run(*common, "--epochs", 2)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("valid", "test"):
        assert 0.0 <= metrics[split]["ndcg@10"] <= metrics[split]["hit@10"] <= 1.0
    assert (out / "checkpoint.pt").is_file() and (out / "config.json").is_file()
    again = run(*common, "--epochs", 2)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = run(*common, "--epochs", 3, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 3

"""scripts/train_qat.py end to end on a tiny synthetic file."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_in_process

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_qat.py"


def run(*args, new_process=False):
    """train_qat.py's result: in this process (fast), or with ``new_process`` as a user runs
    it (one test per behaviour that needs a real process)."""
    if not new_process:
        return run_in_process("train_qat", *args)
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


@pytest.mark.slow  # the first run in a new Python process, as a user starts it
def test_tiny_run_writes_checkpoint_config_and_metrics(cyclic_file, tmp_path):
    out = tmp_path / "run"
    common = ["--data", cyclic_file, "--out", out, "--max-len", 10, "--hidden", 8, "--blocks", 1,
              "--batch-size", 8, "--threads", 1, "--no-progress"]
    result = run(*common, "--epochs", 2, new_process=True)
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


def tiny_fp32_run(cyclic_file, out):
    result = run("--data", cyclic_file, "--out", out, "--max-len", 10, "--hidden", 8,
                 "--blocks", 1, "--batch-size", 8, "--threads", 1, "--no-progress",
                 "--epochs", 1)
    assert result.returncode == 0, result.stderr
    return out


def test_qat_run_from_fp32_writes_int8_model_and_metrics(cyclic_file, tmp_path):
    fp32 = tiny_fp32_run(cyclic_file, tmp_path / "fp32")
    out = tmp_path / "lsq"
    result = run("--qconfig", "lsq", "--init-from", fp32, "--data", cyclic_file, "--out", out,
                 "--batch-size", 8, "--threads", 1, "--no-progress", "--epochs", 1)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "lsq" and config["bits"] == 8
    assert config["model"]["hidden"] == 8  # architecture taken from the --init-from run
    assert (out / "model_int8.pt").is_file()
    for split in ("valid", "test"):
        assert set(metrics["int8"][split]) >= {"ndcg@10", "hit@10"}


def test_init_from_another_architecture_is_refused(cyclic_file, tmp_path):
    fp32 = tiny_fp32_run(cyclic_file, tmp_path / "fp32")
    result = run("--qconfig", "ste", "--init-from", fp32, "--hidden", 16, "--data", cyclic_file,
                 "--out", tmp_path / "ste")
    assert result.returncode == 2
    assert "has hidden=8, but --hidden 16 was given" in result.stderr
    assert not (tmp_path / "ste").exists()


def test_init_from_a_missing_run_is_a_clear_error(cyclic_file, tmp_path):
    result = run("--qconfig", "ste", "--init-from", tmp_path / "nope", "--data", cyclic_file,
                 "--out", tmp_path / "ste")
    assert result.returncode == 2 and "no checkpoint at" in result.stderr


def test_unsupported_bits_for_a_method(cyclic_file, tmp_path):
    result = run("--qconfig", "apot", "--bits", 6, "--data", cyclic_file, "--out", tmp_path / "a")
    assert result.returncode == 2 and "apot supports --bits 4, 8, not 6" in result.stderr


GLOO_DEAD_PEER = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read "
                  "error [127.0.0.1]:2696: Connection reset by peer. This is typically caused "
                  "by a remote worker hanging or bugs in the application. Check the logs of "
                  "the remote worker before reporting an error. GLHF!")  # torch 2.13, kill -9


def test_a_rank_whose_peer_died_says_so_in_one_line(monkeypatch, capsys):
    """Under torchrun, the collective error a dead peer causes (gloo's, as measured with kill
    -9 of one rank) is one error line naming the rank and --resume, exit 2; the same
    RuntimeError outside torchrun, or another RuntimeError, keeps its traceback (a bug)."""
    from qat.cli import run_cli

    def dies(argv):
        raise RuntimeError(GLOO_DEAD_PEER)

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert run_cli(dies) == 2
    err = capsys.readouterr().err
    assert err == ("error: [rank 1] lost contact with another process of the run, which "
                   "stopped or was killed (its own output says why): [/__w/pytorch/pytorch/"
                   "third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
                   "[127.0.0.1]:2696: Connection reset by peer; every checkpoint written so "
                   "far is kept: rerun with --resume\n")

    def bug(argv):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="mat1"):
        run_cli(bug)
    for other in ("[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 1800000ms for "
                  "recv operation to complete",  # a slow rank, not a dead one
                  "ProcessGroupNCCL is only supported with GPUs, no GPUs found!"):
        def setup(argv, text=other):
            raise RuntimeError(text)
        with pytest.raises(RuntimeError, match=other[:20].replace("[", r"\[")):
            run_cli(setup)
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(RuntimeError, match="Connection reset by peer"):
        run_cli(dies)


def test_resume_may_add_epochs_to_pact_whose_regulariser_has_no_schedule(cyclic_file, tmp_path):
    """PACT's L2 term on alpha is the same at every step, so a resume may extend --epochs
    (AdaRound's annealed regulariser may not: tests/test_bad_input.py)."""
    fp32 = tiny_fp32_run(cyclic_file, tmp_path / "fp32")
    out = tmp_path / "pact"
    flags = ["--qconfig", "pact", "--init-from", fp32, "--data", cyclic_file, "--out", out,
             "--batch-size", 8, "--threads", 1, "--no-progress"]
    assert run(*flags, "--epochs", 1).returncode == 0
    result = run(*flags, "--epochs", 2, "--resume")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 2

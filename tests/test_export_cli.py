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
from conftest import cyclic_dataset, load_script, run_in_process

from data import write_sasrec_text
from export import export_run
from export.parity_record import ParityRecord
from qat.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EXPORT = ROOT / "scripts" / "export_int8.py"
TRAIN = ROOT / "scripts" / "train_qat.py"
TINY = ["--max-len", 10, "--hidden", 8, "--blocks", 1, "--batch-size", 8, "--threads", 1,
        "--no-progress", "--epochs", 1]


def run(script, *args, new_process=False):
    """The script's result: in this process (fast), or with ``new_process`` as a user runs it."""
    if not new_process:
        return run_in_process(script.stem, *args)
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
    result = run(EXPORT, "--run", folder, "--threads", 1, "--top-k", 5,
                 new_process=kind == "int8")
    assert result.returncode == 0, result.stderr
    assert "parity: PASSED" in result.stdout and "nDCG@10" in result.stdout
    model = onnx.load(str(folder / f"model_{kind}.onnx"))
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == ["scores"]
    top_k = onnx.load(str(folder / f"model_{kind}_top_k.onnx"))  # the serving graph beside it
    assert [o.name for o in top_k.graph.output] == ["top_k_scores", "top_k_items"]
    assert {p.key: p.value for p in top_k.metadata_props}["sasrec_qat.top_k"] == "5"
    on_disk = json.loads((folder / "parity.json").read_text())
    assert on_disk["record"] == "parity" and on_disk["schema"] == 1
    parity = ParityRecord.load(folder / "parity.json")
    assert parity.passed and parity.kind == kind
    assert parity.method == ("fp32" if kind == "fp32" else "lsq")
    assert parity.dataset == str(data)  # taken from config.json
    graph = parity.graph
    for pair in (graph.ndcg, graph.hit):
        assert set(pair) == {"torch", "onnxruntime"}
        assert abs(pair["torch"] - pair["onnxruntime"]) <= 0.002
    assert graph.top10_agreement >= 0.99
    assert [t.onnx_file for t in parity.top_k] == [f"model_{kind}_top_k.onnx"]
    assert parity.top_k[0].passed and parity.top_k[0].list_agreement >= 0.99
    assert parity.top_k[0].k == 5 and parity.is_current(folder)
    payload = (folder / f"model_{kind}.onnx").read_bytes()
    assert graph.onnx_bytes == len(payload)
    assert graph.onnx_sha256 == hashlib.sha256(payload).hexdigest()  # what benchmark matches
    model_file = folder / ("checkpoint.pt" if kind == "fp32" else "model_int8.pt")
    assert parity.model_file == model_file.name
    assert parity.model_sha256 == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert parity.is_current(folder)
    assert graph.max_abs_score_diff < 1e-3
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_export_shows_progress_on_stderr_unless_told_not_to(runs, tmp_path):
    data, fp32, lsq = runs
    folder = copy_run(lsq, tmp_path / "run")
    shown = run(EXPORT, "--run", folder, "--threads", 1)
    assert shown.returncode == 0, shown.stderr
    for bar in ("model_int8.onnx vs torch", "model_int8_top_k.onnx"):  # each graph's check
        assert f"{bar}: " in shown.stderr and "batch" in shown.stderr
    assert "vs torch" not in shown.stdout  # the report stays clean
    hidden = run(EXPORT, "--run", copy_run(lsq, tmp_path / "quiet"), "--threads", 1,
                 "--no-progress")
    assert hidden.returncode == 0 and hidden.stderr == "" and hidden.stdout == shown.stdout


def test_export_of_an_unfinished_fp32_run_says_what_it_exported(runs, tmp_path):
    data, fp32, lsq = runs
    folder = copy_run(fp32, tmp_path / "run")
    ckpt = load_checkpoint(folder / "checkpoint.pt")
    ckpt["finished"] = False  # as a run killed at its first epoch leaves it
    save_checkpoint(ckpt, folder / "checkpoint.pt")
    result = run(EXPORT, "--run", folder, "--threads", 1, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert result.stderr == (f"note: {folder} has not finished training (epoch 1 of 1): its "
                             "best model so far (epoch 1) is exported; train_qat.py --resume "
                             "finishes it\n")
    ckpt["best_epoch"] = 0  # stopped before its first validation: the initial weights
    save_checkpoint(ckpt, folder / "checkpoint.pt")
    early = run(EXPORT, "--run", folder, "--threads", 1, "--no-progress")
    assert "its initial weights (it stopped before its first validation) is exported" in \
        early.stderr
    finished = run(EXPORT, "--run", copy_run(fp32, tmp_path / "done"), "--threads", 1,
                   "--no-progress")
    assert finished.returncode == 0 and finished.stderr == ""


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


def test_bad_top_k_or_scoring_is_one_error_line_and_writes_nothing(runs, tmp_path):
    _, _, lsq = runs
    folder = copy_run(lsq, tmp_path / "run")
    before = listing(folder)
    num_items = json.loads((folder / "config.json").read_text())["model"]["num_items"]
    for k in (0, num_items + 1):
        message = bad_input(run(EXPORT, "--run", folder, "--top-k", k))
        assert f"--top-k must be in [1, {num_items}]" in message and f"got {k}" in message
    assert "invalid choice: 'int4'" in bad_input(run(EXPORT, "--run", folder, "--scoring", "int4"))
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
    monkeypatch.setattr(export_run, "check_parity", strict)
    folder = copy_run(runs[1], tmp_path / "run")
    assert script.main(["--run", str(folder), "--threads", "1"]) == 1
    parity = ParityRecord.load(folder / "parity.json")
    assert not parity.passed
    assert parity.graph.failures == ["top-10 agreement 1.0000 < 1.01"]
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
    parity = ParityRecord.load(folder / "parity.json")
    fused = parity.fused
    assert fused.passed and fused.onnx_file == "model_int8_fused.onnx"
    payload = (folder / "model_int8_fused.onnx").read_bytes()
    assert fused.onnx_bytes == len(payload)
    assert fused.onnx_sha256 == hashlib.sha256(payload).hexdigest() != parity.graph.onnx_sha256
    assert parity.graph.onnx_sha256 == hashlib.sha256(
        (folder / "model_int8.onnx").read_bytes()).hexdigest()
    assert fused.ndcg == parity.graph.ndcg and fused.hit == parity.graph.hit
    assert parity.is_current(folder)
    (folder / "model_int8_fused.onnx").write_bytes(payload[:-1] + b"\0")  # edited: stale
    assert not parity.is_current(folder)
    model = onnx.load(str(folder / "model_int8_fused.onnx"))
    assert any(op.domain == "sasrec_qat.fused" for op in model.opset_import)
    # an FP32 run has no fused graph: a clear error, nothing written
    other = copy_run(fp32, tmp_path / "fp32")
    assert "--fused applies to INT8 runs" in bad_input(run(EXPORT, "--run", other, "--fused"))
    assert not (other / "model_fp32.onnx").exists()


def test_eval_negatives_records_sampled_metrics_equal_to_qat_evaluate(runs, tmp_path):
    """--eval-negatives N: each graph's parity record holds the sampled metrics (target + N
    negatives); the torch side is exactly qat.evaluate's, both are printed, and the fused graph
    (the same uint8 results) scores as the exact one."""
    from export import load_run
    from export.run_folder import load_run_split
    from qat.evaluate import evaluate

    data, _, lsq = runs
    folder = copy_run(lsq, tmp_path / "run")
    result = run(EXPORT, "--run", folder, "--threads", 1, "--fused", "--eval-negatives", 7,
                 "--eval-seed", 3)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("nDCG@10 (7 neg)") == 2
    assert result.stdout.count("Hit@10 (7 neg)") == 2
    parity = ParityRecord.load(folder / "parity.json")
    model = load_run(folder).model
    _, split = load_run_split(folder, model.config.num_items)
    ref = evaluate(model.score_last, split, "test", max_len=model.config.max_len,
                   batch_size=256, sampled_negatives=7, seed=3)
    for graph in (parity.graph, parity.fused):
        sampled = graph.sampled
        assert sampled["negatives"] == 7 and sampled["seed"] == 3
        assert sampled["users"] == ref["users"]
        assert sampled["ndcg"]["torch"] == ref["ndcg@10"]
        assert sampled["hit"]["torch"] == ref["hit@10"]
        assert abs(sampled["ndcg"]["onnxruntime"] - ref["ndcg@10"]) <= 0.002
    assert parity.fused.sampled == parity.graph.sampled
    assert sampled["ndcg"]["torch"] != parity.graph.ndcg["torch"]  # not the full ranking


def test_eval_negatives_off_by_default_and_old_records_load(runs, tmp_path):
    folder = copy_run(runs[1], tmp_path / "run")
    result = run(EXPORT, "--run", folder, "--threads", 1)
    assert result.returncode == 0, result.stderr
    assert "neg)" not in result.stdout
    on_disk = json.loads((folder / "parity.json").read_text())
    assert on_disk["graph"]["sampled"] is None
    assert on_disk["item_ids_source"] in ("identity", "item_ids.json")
    # a parity.json written before these optional fields existed still loads
    for key in ("item_ids_source", "item_ids_sha256"):
        del on_disk[key]
    del on_disk["graph"]["sampled"]
    (folder / "parity.json").write_text(json.dumps(on_disk))
    old = ParityRecord.load(folder / "parity.json")
    assert old.item_ids_sha256 is None and old.graph.sampled is None
    # the run folder has item_ids.json, which that older export did not embed: stale
    assert (folder / "item_ids.json").is_file() and not old.is_current(folder)
    (folder / "item_ids.json").unlink()  # a run trained before maps existed: current
    assert old.is_current(folder)
    assert "--eval-negatives must be >= 0" in bad_input(
        run(EXPORT, "--run", folder, "--eval-negatives", -1))

"""scripts/run_all.py: the summary table and figure, the step logic on stand-in scripts, and the
real pipeline (train, export, benchmark, summary) end to end on a tiny synthetic dataset."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import cyclic_dataset, load_script

from export import native_ops, pipeline
from export.bench_record import BenchRecord, BenchSetup, TimedModel, Timing
from export.latency import machine_info
from export.parity_record import ParityRecord

from data import load_dataset, write_sasrec_text
from export.results_table import summary_columns

ROOT = Path(__file__).resolve().parents[1]
RUN_ALL = ROOT / "scripts" / "run_all.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_run_all() -> Any:
    return load_script("run_all")


def run_cli(*args: Any) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(RUN_ALL), *map(str, args)], capture_output=True,
                          text=True, timeout=600, env=env)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def step_lines(stdout: str) -> dict[str, list[str]]:
    """``"train fp32" -> ["started", "done in 1.2 s"]`` from the ``[i/n] step: what`` lines."""
    out: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        if line.startswith("[") and "] " in line and ": " in line:
            label, what = line.split("] ", 1)[1].split(": ", 1)
            out.setdefault(label, []).append(what)
    return out


# -- the step logic, on stand-in scripts ----------------------------------------------------------
FAKE = r'''
import hashlib, json, pathlib, sys
def sha256(path):  # the records' file hash (qat.records.file_sha256), without importing torch
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()
role, statuses, calls = {role!r}, {statuses!r}, pathlib.Path({calls!r})
args = sys.argv[1:]
with calls.open("a") as f:
    f.write(json.dumps([role, *args]) + "\n")
def value(flag):
    return args[args.index(flag) + 1]
if role == "train_qat":
    out = pathlib.Path(value("--out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoint.pt").write_text("checkpoint")
    q = {{"ndcg@10": 0.5, "hit@10": 0.9, "users": 40, "seconds": 0.1}}
    metrics = {{"record": "metrics", "schema": 1, "method": value("--qconfig"), "valid": q,
               "test": q, "best_epoch": 1, "epochs_run": 1, "seconds_per_epoch": 1.0,
               "train_seconds_to_best": 1.0, "train_seconds": 1.0,
               "eval_seconds_all_users": 0.1, "peak_rss_mb": 100.0, "threads": 1,
               "checkpoint_sha256": sha256(out / "checkpoint.pt")}}
    if value("--qconfig") != "fp32":
        (out / "model_int8.pt").write_text("int8")
        metrics["int8"] = {{"valid": q, "test": q}}
        metrics["int8_model_sha256"] = sha256(out / "model_int8.pt")
    (out / "metrics.json").write_text(json.dumps(metrics))
elif role == "export_int8":
    run = pathlib.Path(value("--run"))
    status = statuses.get(run.name, 0)
    if status == 2:
        print("error: something is broken")
        sys.exit(2)
    kind = "int8" if (run / "model_int8.pt").exists() else "fp32"
    model = run / ("model_int8.pt" if kind == "int8" else "checkpoint.pt")
    onnx_file = run / f"model_{{kind}}.onnx"
    onnx_file.write_text("onnx")
    q = {{"torch": 0.5, "onnxruntime": 0.5}}
    graph = {{"record": "graph_parity", "schema": 1, "onnx_file": onnx_file.name,
             "onnx_bytes": 4, "onnx_sha256": sha256(onnx_file), "ndcg": q, "hit": q,
             "ndcg_delta": 0.0, "hit_delta": 0.0, "top10_agreement": 1.0,
             "top10_mean_overlap": 1.0, "max_abs_score_diff": 0.0, "users": 40, "seconds": {{}},
             "thresholds": {{}}, "passed": status == 0, "failures": [] if status == 0 else ["x"]}}
    (run / "parity.json").write_text(json.dumps({{
        "record": "parity", "schema": 1, "method": "m", "bits": 8, "kind": kind,
        "model_file": model.name, "model_sha256": sha256(model), "dataset": "data",
        "data_fingerprint": None, "split": "test", "optimization": "all", "threads": 1,
        "max_abs_weight_int": None, "graph": graph}}))
    print("parity: " + ("PASSED" if status == 0 else "FAILED"))
    sys.exit(status)
else:
    def ints(flag, stop):
        return [int(v) for v in args[args.index(flag) + 1:args.index(stop)]]
    batches, threads = ints("--batches", "--threads"), ints("--threads", "--repeats")
    sweep = args[args.index("--sweep-hidden") + 1:] if "--sweep-hidden" in args else []
    bench = json.loads({bench!r})  # a valid BenchRecord made by the test, filled in here
    bench["settings"].update(
        repeats=int(value("--repeats")), baselines="--no-baselines" not in args,
        int8_fast="--int8-fast" in args, torch_int8="--torch-int8" in args,
        sweep_hidden=[int(d) for d in sweep], batches=batches, threads=threads,
        top_k=int(value("--top-k")) if "--top-k" in args else None, fused=True)
    model_entry, timing = bench.pop("models")[0], bench.pop("records")[0]
    bench["models"], bench["records"] = [], []
    for folder in map(pathlib.Path, args[1:args.index("--out")]):
        int8 = (folder / "model_int8.pt").exists()
        model, onnx = (("model_int8.pt", "model_int8.onnx") if int8
                       else ("checkpoint.pt", "model_fp32.onnx"))
        bench["models"].append({{**model_entry, "model": folder.name, "run": str(folder),
                                "kind": "onnx_int8" if int8 else "onnx_fp32",
                                "model_file": model, "model_sha256": sha256(folder / model),
                                "onnx_file": onnx, "onnx_sha256": sha256(folder / onnx)}})
        names = [folder.name] + ([folder.name + "_fused"] if int8 else [])
        bench["records"] += [{{**timing, "model": name, "batch": b, "threads": t}}
                             for name in names for b in batches for t in threads]
    pathlib.Path(value("--out")).write_text(json.dumps(bench))
'''


FAKE_BUILD = "fake-kernel-build"  # the stand-in benchmark's native_ops.build_key()


def bench_template() -> BenchRecord:
    """A valid bench.json with one model and one timing, for the stand-in benchmark to copy."""
    setup = BenchSetup(
        runs=[], data="d.txt", split="test", test_users=40, num_items=20, max_len=10,
        batches=[1], threads=[1], repeats=1, warmup=0, baselines=False, baseline_source=None,
        calibration_users=16, sweep_hidden=[], fused=False, int8_fast=False, torch_int8=False,
        onnxruntime={}, inputs="", schedule="", timer="", torch_eager="",
        sweep_quantization="", native_build=FAKE_BUILD)
    model = TimedModel(model="m", kind="onnx_int8", run=None, method="m", bits=8, source="",
                       onnx_bytes=4, onnx_sha256=None, onnx_file=None, model_file=None,
                       model_sha256=None)
    timing = Timing(model="m", kind="onnx_int8", run=None, method="m", bits=8, batch=1,
                    threads=1, median_ms=1.0, p90_ms=1.0, min_ms=1.0, repeats=1,
                    ratio_to_fp32=None)
    here = machine_info()  # run_all keeps a bench.json only from this very CPU
    return BenchRecord(machine={"cpu": here["cpu"], "flags": here["flags"]}, settings=setup,
                       models=[model], baselines=[], records=[timing], quality=[], sweep=[],
                       notes=[])


@pytest.fixture
def fake_pipeline(tmp_path, monkeypatch):
    """``(run(statuses, *extra) -> (exit status, stdout, stderr), calls())``: run_all.main in
    process with train/export/benchmark replaced by stand-ins that write the files the real
    scripts write; ``statuses`` maps a run folder name to the export's exit status."""
    module = load_run_all()
    calls = tmp_path / "calls.jsonl"
    # the stand-in benchmark times fused graphs, as the real one does where the kernels build
    monkeypatch.setattr(pipeline.native_ops, "available", lambda: True)
    monkeypatch.setattr(pipeline.native_ops, "build_key", lambda: FAKE_BUILD)
    # the stand-in runs hold no models to build graphs from; the stand-in benchmark times none
    monkeypatch.setattr(pipeline, "built_graphs", lambda runs, settings, fused: {})
    # the default --data d.txt does not exist: a catalogue of 20 items for --bench-top-k
    real_load = pipeline.load_dataset
    monkeypatch.setattr(pipeline, "load_dataset", lambda data, **kwargs: (
        real_load(data, **kwargs) if Path(data).is_file() else SimpleNamespace(num_items=20)))

    def run(capsys, statuses: dict[str, int], *extra: str) -> tuple[int, str, str]:
        for role in pipeline.SCRIPTS:
            script = tmp_path / f"fake_{role}.py"
            script.write_text(FAKE.format(role=role, statuses=statuses, calls=str(calls),
                                          bench=json.dumps(bench_template().to_json())))
            monkeypatch.setitem(pipeline.SCRIPTS, role, script)
        argv = ["--data", "d.txt", "--out", str(tmp_path / "all"), "--methods", "ste", "pact",
                "--bench-batches", "1", "8", "--bench-threads", "1", "--no-progress", *extra]
        status = module.main(argv)
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    def read_calls() -> list[list[str]]:
        lines = calls.read_text().splitlines() if calls.exists() else []
        calls.unlink(missing_ok=True)
        return [json.loads(line) for line in lines]
    return run, read_calls, tmp_path / "all"


def test_flags_reach_each_script(fake_pipeline, capsys):
    run, calls, out = fake_pipeline
    status, stdout, err = run(capsys, {}, "--hidden", "16", "--qat-epochs", "3", "--epochs",
                              "7", "--threads", "1", "--bench-repeats", "5", "--no-baselines",
                              "--int8-fast", "--torch-int8", "--bench-top-k", "5",
                              "--sweep-hidden", "8", "16", "--columns", "u,i,t",
                              "--min-user-interactions", "3")
    assert status == 0, stdout + err
    by_step = {(c[0], c[c.index("--out") + 1] if "--out" in c else c[c.index("--run") + 1]): c
               for c in calls()}
    fp32 = by_step[("train_qat", str(out / "fp32"))]
    assert fp32[fp32.index("--hidden") + 1] == "16" and fp32[fp32.index("--epochs") + 1] == "7"
    assert "--blocks" not in fp32 and "--resume" not in fp32  # not given: train_qat's default
    ste = by_step[("train_qat", str(out / "ste_w8"))]
    assert ste[ste.index("--init-from") + 1] == str(out / "fp32")
    assert ste[ste.index("--epochs") + 1] == "3" and "--hidden" not in ste
    assert ste[ste.index("--bits") + 1] == "8" and ste[ste.index("--threads") + 1] == "1"
    for call in (fp32, ste):  # every training run reads the log the same way
        assert call[call.index("--columns") + 1] == "u,i,t"
        assert call[call.index("--min-user-interactions") + 1] == "3"
    bench = by_step[("benchmark", str(out / "bench.json"))]
    assert bench[bench.index("--runs") + 1:bench.index("--out")] == [
        str(out / name) for name in ("fp32", "ste_w8", "pact_w8")]
    assert bench[bench.index("--batches") + 1:bench.index("--threads")] == ["1", "8"]
    assert "--no-baselines" in bench and bench[bench.index("--repeats") + 1] == "5"
    assert "--int8-fast" in bench and "--torch-int8" in bench
    assert bench[bench.index("--top-k") + 1] == "5"
    assert bench[bench.index("--sweep-hidden") + 1:] == ["8", "16"]
    assert (out / "logs" / "train_pact_w8.log").read_text().count("=== exit status 0") == 1
    assert [r["model"] for r in read_csv(out / "results_summary.csv")[1]] == [
        "fp32", "ste_w8", "ste_w8_fused", "pact_w8", "pact_w8_fused"]  # a fused row follows


def test_failed_parity_is_marked_and_the_pipeline_goes_on(fake_pipeline, capsys):
    run, calls, out = fake_pipeline
    status, stdout, stderr = run(capsys, {"ste_w8": 1})
    assert status == 0
    assert "export ste_w8: done in" in stdout and "parity FAILED" in stdout
    assert "parity failed for ste_w8" in stderr
    rows = {r["model"]: r for r in read_csv(out / "results_summary.csv")[1]}
    assert rows["ste_w8"]["parity_passed"] == "False" and rows["pact_w8"]["parity_passed"] == "True"
    calls()
    run(capsys, {})  # a failed parity gate is a result, not an unfinished step
    assert calls() == []


def test_export_error_stops_and_a_rerun_resumes_there(fake_pipeline, capsys):
    run, calls, out = fake_pipeline
    status, stdout, stderr = run(capsys, {"ste_w8": 2})
    log = out / "logs" / "export_ste_w8.log"
    assert status == 2
    cause = "error: something is broken"
    assert f"step 'export ste_w8' failed (exit status 2: {cause}); its log is {log}" in stderr
    assert cause in log.read_text()
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error: ")
    assert "export pact_w8" not in stdout and not (out / "bench.json").exists()
    calls()
    status, stdout, _ = run(capsys, {})
    assert status == 0
    assert [(c[0], Path(c[2]).name) for c in calls() if c[0] != "benchmark"] == [
        ("export_int8", "ste_w8"), ("export_int8", "pact_w8")]
    steps = step_lines(stdout)
    assert all(steps[f"train {name}"][0].startswith("skipped") for name in ("fp32", "ste_w8"))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_finished_run_of_another_dataset_or_architecture_stops_the_pipeline(
        fake_pipeline, capsys, tmp_path):
    """A rerun with another --data (or --hidden...) into the same --out must not report the
    old runs' results as this command's: one error line naming the folder and the fix."""
    run, calls, out = fake_pipeline
    data_a, data_b = tmp_path / "a.txt", tmp_path / "b.txt"
    write_sasrec_text(cyclic_dataset(num_users=20, length=8), data_a)
    write_sasrec_text(cyclic_dataset(num_users=21, length=8), data_b)
    assert run(capsys, {}, "--data", str(data_a))[0] == 0
    config = {"model": {"num_items": 8, "max_len": 8, "hidden": 8, "blocks": 1, "heads": 1},
              "train": {"seed": 42, "batch_size": 128, "epochs": 200}, "data": str(data_a),
              "data_fingerprint": load_dataset(data_a).fingerprint()}  # as train_qat writes it
    (out / "fp32" / "config.json").write_text(json.dumps(config))
    calls()
    status, stdout, _ = run(capsys, {}, "--data", str(data_a), "--hidden", "8", "--seed", "42",
                            "--epochs", "300")  # a larger cap is not a difference
    assert status == 0 and all(line.split(": ")[1].startswith("skipped")
                               for line in stdout.splitlines()[:-1] if "summary" not in line
                               and line.startswith("["))
    for extra, why in ((["--data", str(data_b)], "it was trained on another dataset ("
                        f"{data_a}, fingerprint {config['data_fingerprint'][:12]}; --data "
                        f"{data_b} has "),
                       (["--data", str(data_a), "--hidden", "16"],
                        "its hidden is 8, not --hidden 16"),
                       (["--data", str(data_a), "--seed", "7"], "its seed is 42, not --seed 7")):
        status, stdout, stderr = run(capsys, {}, *extra)
        assert status == 2
        errors = stderr.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith(
            f"error: {out / 'fp32'} holds a finished run that is not this command's: {why}")
        assert errors[0].endswith(f"use another --out, or delete {out / 'fp32'} to train it "
                                  "again")
        assert "train ste_w8" not in stdout  # stopped at the first run
    # a QAT run records the FP32 checkpoint it started from: the one in fp32/, then another
    ste = {**config, "init_from_sha256": sha256_of(out / "fp32" / "checkpoint.pt")}
    (out / "ste_w8" / "config.json").write_text(json.dumps(ste))
    assert run(capsys, {}, "--data", str(data_a))[0] == 0
    older = "0" * 64  # as if fp32/ was trained again after ste_w8 was fine-tuned
    (out / "ste_w8" / "config.json").write_text(json.dumps({**ste, "init_from_sha256": older}))
    status, stdout, stderr = run(capsys, {}, "--data", str(data_a))
    assert status == 2 and "train fp32: skipped" in stdout
    assert stderr.strip().splitlines() == [
        f"error: {out / 'ste_w8'} holds a finished run that is not this command's: it was "
        f"fine-tuned from another FP32 checkpoint than {out / 'fp32' / 'checkpoint.pt'} (sha256 "
        f"{older[:12]}, now {ste['init_from_sha256'][:12]}); use another --out, or delete "
        f"{out / 'ste_w8'} to train it again"]
    assert not [c for c in calls() if c[0] == "train_qat"]
    # a run that read the log with other options: the message names the flags to give
    other_read = {**config, "data_fingerprint": "1" * 64,
                  "data_options": {"columns": "u,i,t", "min_user_interactions": 3}}
    (out / "fp32" / "config.json").write_text(json.dumps(other_read))
    status, _, stderr = run(capsys, {}, "--data", str(data_a))
    assert status == 2 and "read with --columns u,i,t --min-user-interactions 3: give the " \
        "same)" in stderr, stderr


def test_usage_errors(capsys):
    module = load_run_all()
    for argv in (["--data", "x", "--methods", "apot", "--bits", "6"],
                 ["--data", "x", "--bench-threads", "1", "2", "--summary-threads", "4"],
                 ["--data", "x", "--methods", "int3"]):
        with pytest.raises(SystemExit) as exit_info:
            module.parse_args(argv)
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "apot supports --bits 4, 8, not 6" in err and "--summary-threads 4" in err


@pytest.mark.slow  # a new Python process
def test_help_documents_every_flag():
    out = run_cli("--help").stdout
    for flag in ["--data", "--out", "--methods", "--bits", "--max-len", "--hidden", "--blocks",
                 "--heads", "--epochs", "--qat-epochs", "--patience", "--batch-size", "--threads",
                 "--bench-threads", "--bench-repeats", "--bench-batches", "--no-baselines",
                 "--seed", "--summary-threads", "--quiet", "--no-progress", "--columns",
                 "--min-user-interactions", "--bench-top-k", "--sweep-hidden"]:
        assert flag in out
    assert "python scripts/run_all.py --data ml-1m" in out  # the reproduce command


@pytest.mark.slow  # new Python processes
def test_a_failing_training_step_names_step_and_log(tmp_path):
    out = tmp_path / "all"
    result = run_cli("--data", tmp_path / "nope.txt", "--out", out, "--quiet", "--no-progress")
    log = out / "logs" / "train_fp32.log"
    assert result.returncode == 2
    assert "step 'train fp32' failed (exit status 2: error: " in result.stderr
    assert f"its log is {log}" in result.stderr
    assert "nope.txt" in log.read_text() and "nope.txt" in result.stderr  # the cause, shown
    assert list(step_lines(result.stdout)) == ["train fp32"]


# -- the real pipeline --------------------------------------------------------------------------
@pytest.mark.slow
def test_pipeline_end_to_end_rerun_and_resume(tmp_path):
    data = tmp_path / "cyclic.txt"
    write_sasrec_text(cyclic_dataset(num_users=30, length=10), data)
    out = tmp_path / "all"
    argv = ["--data", data, "--out", out, "--methods", "ste", "lsq", "--bits", 8,
            "--max-len", 8, "--hidden", 8, "--blocks", 1, "--epochs", 1, "--qat-epochs", 1,
            "--batch-size", 8, "--threads", 1, "--bench-batches", 1, 4, "--bench-threads", 1,
            "--bench-repeats", 3, "--quiet", "--no-progress"]
    names = ["fp32", "ste_w8", "lsq_w8"]
    labels = ([f"train {n}" for n in names] + [f"export {n}" for n in names]
              + ["benchmark", "summary"])

    first = run_cli(*argv)
    assert first.returncode == 0, first.stdout + first.stderr
    steps = step_lines(first.stdout)
    assert list(steps) == labels
    assert all(len(s) == 2 and s[0].startswith("started") and s[1].startswith("done in")
               for s in steps.values())
    assert sorted(p.name for p in (out / "logs").iterdir()) == sorted(
        label.replace(" ", "_") + ".log" for label in labels[:-1])

    bench = json.loads((out / "bench.json").read_text())
    assert BenchRecord.load(out / "bench.json").missing(
        [(out / n, n) for n in names], batches=[1, 4], threads=[1], repeats=3) is None
    columns, rows = read_csv(out / "results_summary.csv")
    assert columns == summary_columns([1, 4])
    baselines = ["ort_quantize_dynamic", "ort_quantize_static"]
    fused = ["ste_w8_fused", "lsq_w8_fused"]  # each right after its run
    assert [r["model"] for r in rows] == ["fp32", "ste_w8", fused[0], "lsq_w8", fused[1],
                                          *baselines]
    by_model = {r["model"]: r for r in rows}
    fp32_ms = {}
    for name in names:
        row = by_model[name]
        report = ParityRecord.load(out / name / "parity.json")
        assert row["method"] == report.method and int(row["bits"]) == report.bits
        for metric, pair in (("ndcg@10", report.graph.ndcg), ("hit@10", report.graph.hit)):
            for engine in ("torch", "onnxruntime"):
                assert float(row[f"{metric}_{engine}"]) == pytest.approx(
                    pair[engine], rel=1e-5, abs=1e-9)
        assert row["parity_passed"] == str(report.passed) == "True"
        onnx_file = out / name / report.graph.onnx_file
        assert int(row["onnx_bytes"]) == report.graph.onnx_bytes == onnx_file.stat().st_size
        for batch in (1, 4):
            median = [r["median_ms"] for r in bench["records"]
                      if (r["model"], r["batch"], r["threads"]) == (name, batch, 1)]
            assert len(median) == 1
            assert float(row[f"latency_b{batch}_ms"]) == pytest.approx(median[0], rel=1e-5)
            fp32_ms.setdefault(batch, median[0])
            assert float(row[f"speedup_b{batch}"]) == pytest.approx(
                fp32_ms[batch] / median[0], rel=1e-5)
    for row in (by_model[m] for m in fused + baselines):  # quality, size from bench.json
        quality = next(q for q in bench["quality"] if q["model"] == row["model"])
        model = next(m for m in bench["models"] if m["model"] == row["model"])
        if row["model"] in fused:
            assert row["method"] == row["model"].split("_")[0] == model["method"]
            assert row["parity_passed"] == str(quality["parity_passed"]) == "True"
            exact = by_model[row["model"].removesuffix("_fused")]
            assert row["ndcg@10_onnxruntime"] == exact["ndcg@10_onnxruntime"]
        else:
            assert row["method"] == row["model"].removeprefix("ort_") == model["method"]
            assert row["parity_passed"] == ""
        assert float(row["ndcg@10_onnxruntime"]) == pytest.approx(quality["ndcg"], rel=1e-5)
        assert float(row["hit@10_onnxruntime"]) == pytest.approx(quality["hit"], rel=1e-5)
        assert row["ndcg@10_torch"] == ""
        assert int(row["onnx_bytes"]) == model["onnx_bytes"]
        for batch in (1, 4):
            assert float(row[f"speedup_b{batch}"]) == pytest.approx(
                fp32_ms[batch] / float(row[f"latency_b{batch}_ms"]), rel=1e-4)
    png = (out / "results_comparison.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000

    def stamps() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in out.rglob("*")
                if p.suffix in (".pt", ".onnx", ".json")}
    before = stamps()
    second = run_cli(*argv)
    assert second.returncode == 0, second.stdout + second.stderr
    # checking bench.json loads the INT8 runs in run_all's own process: torch's warnings about
    # quantized tensors are filtered there too
    assert "Warning" not in second.stderr, second.stderr
    steps = step_lines(second.stdout)
    assert all(steps[label][0].startswith("skipped") for label in labels[:-1])
    assert steps["summary"][-1].startswith("done in")
    assert stamps() == before

    int8_before = (out / "lsq_w8" / "model_int8.pt").read_bytes()
    (out / "lsq_w8" / "metrics.json").unlink()  # a crash after the last checkpoint
    third = run_cli(*argv)
    assert third.returncode == 0, third.stdout + third.stderr
    steps = step_lines(third.stdout)
    ran = [label for label in labels if not steps[label][0].startswith("skipped")]
    # the resumed run rewrites model_int8.pt with the same bytes (conversion is deterministic):
    # parity.json and bench.json still describe it (sha256), so export and benchmark are not
    # redone, although the file is newer than both
    assert ran == ["train lsq_w8", "summary"]
    assert (out / "lsq_w8" / "model_int8.pt").read_bytes() == int8_before
    assert steps["train lsq_w8"][0] == "started (resuming from checkpoint.pt)"
    commands = [line for line in (out / "logs" / "train_lsq_w8.log").read_text().splitlines()
                if line.startswith("=== ") and " $ " in line]
    assert len(commands) == 2 and "--resume" not in commands[0] and "--resume" in commands[1]
    after = stamps()
    assert all(after[p] == before[p] for p in before if "lsq_w8" not in p.parts
               and p.name != "bench.json")
    assert after[out / "lsq_w8" / "checkpoint.pt"] == before[out / "lsq_w8" / "checkpoint.pt"]
    assert json.loads((out / "lsq_w8" / "metrics.json").read_text())["epochs_run"] == 1

    def rerun() -> tuple[list[str], dict[str, list[str]]]:
        """(the steps that ran, every step's lines) of the command again."""
        result = run_cli(*argv)
        assert result.returncode == 0, result.stdout + result.stderr
        steps = step_lines(result.stdout)
        return [label for label in labels if not steps[label][0].startswith("skipped")], steps

    graph = out / "ste_w8" / "model_int8.onnx"
    exported = graph.read_bytes()
    graph.write_bytes(exported[:-8] + b"\0" * 8)  # same size, other content: parity is stale
    ran, _ = rerun()
    assert ran == ["export ste_w8", "summary"]  # re-exported: the same bytes bench.json timed
    assert graph.read_bytes() == exported

    if native_ops.available():  # a bench.json made where the fused kernels did not build
        record = BenchRecord.load(out / "bench.json")
        assert record.settings.fused
        record.settings.fused = False
        record.save(out / "bench.json")
        ran, _ = rerun()
        assert ran == ["benchmark", "summary"]
        assert BenchRecord.load(out / "bench.json").settings.fused
        # the fused graphs are built in memory by the exporter: timings of what an older
        # exporter built (another sha256) are not this code's graph's
        record = BenchRecord.load(out / "bench.json")
        fused_entry = record.model("lsq_w8_fused")
        assert fused_entry is not None and fused_entry.onnx_file is None
        fused_entry.onnx_sha256 = "0" * 64
        record.save(out / "bench.json")
        ran, steps = rerun()
        assert ran == ["benchmark", "summary"]
        assert "its lsq_w8_fused graph is not the one this code builds" in \
            steps["benchmark"][0]
        assert BenchRecord.load(out / "bench.json").model("lsq_w8_fused").onnx_sha256 != \
            "0" * 64

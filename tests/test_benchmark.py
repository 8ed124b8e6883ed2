"""scripts/benchmark.py and export.latency / export.ort_baselines on tiny run folders."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from conftest import TINY_TRAIN, cyclic_dataset, load_script, train_tiny_runs

from data import leave_one_out, write_sasrec_text
from export import OnnxScorer, build_sasrec_onnx, check_parity, load_run, make_session
from export import ort_baselines
from export.latency import (
    CPU_FLAGS,
    batch_pool,
    eval_inputs,
    latency_stats,
    machine_info,
    round_order,
    time_interleaved,
    timing_session,
)
from qat.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
TINY = [*TINY_TRAIN, "--epochs", "1"]
FAST = ["--repeats", "3", "--warmup", "1", "--batches", "1", "4", "--threads", "1"]


benchmark = load_script("benchmark")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(data file, fp32 run exported with parity.json, lsq run not exported), made in process."""
    data, fp32, qat = train_tiny_runs(tmp_path_factory.mktemp("runs"), ["lsq"])
    lsq = qat["lsq"]
    assert load_script("export_int8").main(["--run", str(fp32), "--threads", "1"]) == 0
    return data, fp32, lsq


@pytest.fixture(scope="module")
def bench(runs, tmp_path_factory):
    """bench.json of both runs with baselines and a sweep over two widths."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    assert benchmark.main(["--runs", str(runs[1]), str(runs[2]), *FAST, "--sweep-hidden", "8",
                           "16", "--calibration-users", "16", "--out", str(out)]) == 0
    return json.loads(out.read_text())


# --- the timing harness ------------------------------------------------------------------------

def test_round_order_rotates_so_every_model_holds_every_position():
    assert [round_order(4, r) for r in range(5)] == [[0, 1, 3, 2], [1, 2, 0, 3], [2, 3, 1, 0],
                                                     [3, 0, 2, 1], [0, 1, 3, 2]]
    assert [round_order(3, r) for r in range(7)] == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0],
                                                     [0, 2, 1], [1, 0, 2], [0, 1, 2]]
    assert round_order(1, 5) == [0]
    for m in range(2, 8):
        period = m if m % 2 == 0 else 2 * m
        rounds = [round_order(m, r) for r in range(period)]
        assert all(sorted(order) == list(range(m)) for order in rounds)
        for position in range(m):  # every model equally often at every position
            assert Counter(order[position] for order in rounds) == {i: period // m
                                                                    for i in range(m)}
        follows = Counter((a, b) for order in rounds for a, b in zip(order, order[1:]))
        assert set(follows) == {(a, b) for a in range(m) for b in range(m) if a != b}
        assert len(set(follows.values())) == 1  # every model after every other equally often
    with pytest.raises(ValueError):
        round_order(0, 0)


def test_time_interleaved_follows_the_schedule_and_times_each_call():
    clock = [0]
    log = []

    def model(i):
        def call(batch):
            log.append((i, int(batch[0, 0])))
            clock[0] += (i + 1) * 1_000_000  # model i takes i + 1 ms
        return call

    inputs = [np.full((1, 2), k) for k in range(2)]
    times = time_interleaved([model(0), model(1), model(2)], inputs, warmup=2, repeats=4,
                             timer=lambda: clock[0])
    assert times == [[1.0] * 4, [2.0] * 4, [3.0] * 4]
    expected = [(i, r % 2) for r in range(6) for i in round_order(3, r)]
    assert log == expected  # rotated order; every model gets the same batch within a round
    with pytest.raises(ValueError):
        time_interleaved([model(0)], inputs, warmup=0, repeats=0)


def test_timing_session_settings(runs):
    """Timing sessions: the requested threads, full optimisation, worker spinning off unless
    asked for; bad thread counts refused."""
    payload = (runs[1] / "model_fp32.onnx").read_bytes()
    for spinning, expected in ((False, "0"), (True, "1")):
        options = timing_session(payload, threads=2, allow_spinning=spinning).get_session_options()
        assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
        assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == expected
    with pytest.raises(ValueError, match="threads must be >= 1"):
        timing_session(payload, threads=0)


def test_latency_stats_and_batch_pool():
    stats = latency_stats([float(v) for v in range(10, 0, -1)])
    assert stats == {"median_ms": 5.5, "p90_ms": pytest.approx(9.1), "min_ms": 1.0,
                     "repeats": 10}
    with pytest.raises(ValueError):
        latency_stats([])
    inputs = np.arange(10).reshape(5, 2)
    pool = batch_pool(inputs, batch=2, count=10)
    assert len(pool) == 3  # ceil(5 / 2) distinct batches
    assert [p[:, 0].tolist() for p in pool] == [[0, 2], [4, 6], [8, 0]]
    assert [p.shape for p in batch_pool(inputs, batch=1, count=4)] == [(1, 2)] * 4
    assert batch_pool(inputs, batch=7, count=3)[0][:, 0].tolist() == [0, 2, 4, 6, 8, 0, 2]


def test_eval_inputs_are_the_left_padded_test_rows():
    split = leave_one_out(cyclic_dataset(num_users=6, length=5))
    rows = eval_inputs(split, "test", max_len=6)
    assert rows.shape == (6, 6) and rows.dtype == np.int64
    assert sorted(map(tuple, rows.tolist())) == sorted(  # history = train + valid, padded
        tuple([0, 0] + [(u + s) % 20 + 1 for s in range(4)]) for u in range(1, 7))


def test_machine_info_names_cpu_flags_and_versions():
    info = machine_info()
    assert set(info["flags"]) == set(CPU_FLAGS)
    assert all(v in (True, False, None) for v in info["flags"].values())
    assert info["logical_cores"] >= 1 and info["cpu"]
    assert info["onnxruntime"] and info["torch"] and info["python"].count(".") == 2


# --- the benchmark -----------------------------------------------------------------------------

RUN_MODELS = ["fp32", "lsq_w8", "lsq_w8_fused"]
BASELINES = ["torch_eager_fp32", "ort_quantize_dynamic", "ort_quantize_static"]


def test_bench_json_schema_and_cases(bench):
    result = bench
    assert {"machine", "settings", "records", "quality", "sweep"} <= set(result)
    assert {"cpu", "logical_cores", "flags", "python", "torch", "onnxruntime",
            "date"} <= set(result["machine"])
    assert result["settings"]["repeats"] == 3 and result["settings"]["batches"] == [1, 4]
    cases = {(r["model"], r["batch"], r["threads"]) for r in result["records"]}
    assert cases == {(m, b, 1) for m in RUN_MODELS + BASELINES for b in (1, 4)}
    assert len(result["records"]) == len(cases)
    kinds = {r["model"]: r["kind"] for r in result["records"]}
    assert kinds == {"fp32": "onnx_fp32", "lsq_w8": "onnx_int8",
                     "lsq_w8_fused": "onnx_int8_fused",
                     "torch_eager_fp32": "torch_eager", "ort_quantize_dynamic": "ort_ptq",
                     "ort_quantize_static": "ort_ptq"}
    for r in result["records"]:
        assert {"model", "kind", "run", "method", "bits", "batch", "threads", "median_ms",
                "p90_ms", "repeats"} <= set(r)
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"] and r["repeats"] == 3
    lsq = next(r for r in result["records"] if r["model"] == "lsq_w8")
    assert (lsq["method"], lsq["bits"]) == ("lsq", 8)
    fp32 = {r["batch"]: r["median_ms"] for r in result["records"] if r["model"] == "fp32"}
    for r in result["records"]:
        assert r["ratio_to_fp32"] == pytest.approx(r["median_ms"] / fp32[r["batch"]])


def test_table_prints_every_record_with_its_ratio(bench, capsys):
    result = bench
    benchmark.print_tables(result)
    stdout = capsys.readouterr().out
    assert "median ms" in stdout and "vs fp32" in stdout
    rows = [line.split() for line in stdout.splitlines()]
    for r in result["records"]:
        assert [r["model"], str(r["batch"]), "1", f"{r['median_ms']:.3f}", f"{r['p90_ms']:.3f}",
                f"{r['ratio_to_fp32']:.2f}x"] in rows


def test_quality_of_baselines_and_runs(bench, runs):
    result = bench
    data, fp32_dir, lsq_dir = runs
    quality = {q["model"]: q for q in result["quality"]}
    assert set(quality) == set(RUN_MODELS + BASELINES)
    for q in quality.values():
        assert 0.0 <= q["ndcg@10"] <= q["hit@10"] <= 1.0
    parity = json.loads((fp32_dir / "parity.json").read_text())
    assert quality["fp32"]["source"].startswith(str(fp32_dir / "parity.json"))
    assert quality["fp32"]["ndcg@10"] == parity["ndcg@10"]["onnxruntime"]
    assert quality["torch_eager_fp32"]["ndcg@10"] == parity["ndcg@10"]["torch"]
    # the lsq run was never exported: its graph is built in memory and its quality computed
    assert quality["lsq_w8"]["source"] == "computed (onnxruntime)"
    assert any("lsq_w8: built in memory" in note for note in result["notes"])
    assert not (lsq_dir / "model_int8.onnx").exists()
    # quantize_dynamic's nDCG is what qat.evaluate gives its model through onnxruntime
    split = leave_one_out(cyclic_dataset())
    dynamic = ort_baselines.quantize_dynamic_model((fp32_dir / "model_fp32.onnx").read_bytes())
    metrics = evaluate(OnnxScorer(make_session(dynamic.model)), split, "test", max_len=10,
                       batch_size=512)
    assert quality["ort_quantize_dynamic"]["ndcg@10"] == pytest.approx(metrics["ndcg@10"],
                                                                       abs=1e-12)
    assert quality["ort_quantize_dynamic"]["source"] == "computed (onnxruntime)"
    static = {b["name"]: b for b in result["baselines"]}["quantize_static"]
    assert static["ok"] and static["options"]["quant_format"] == "QDQ"
    assert all(a["error"] for a in static["attempts"][:-1]) and static["attempts"][-1]["error"] \
        is None


def test_sweep_records_for_two_widths(bench):
    result = bench
    sweep = result["sweep"]
    cases = {(r["model"], r["sweep_hidden"], r["batch"], r["threads"]) for r in sweep}
    assert cases == {(f"sweep_{k}_d{d}", d, b, 1) for k in ("fp32", "int8", "int8_fused")
                     for d in (8, 16) for b in (1, 4)}
    fp32 = {(r["sweep_hidden"], r["batch"]): r["median_ms"] for r in sweep
            if r["kind"] == "onnx_fp32"}
    for r in sweep:
        kind = ("onnx_int8_fused" if "fused" in r["model"] else
                "onnx_int8" if "int8" in r["model"] else "onnx_fp32")
        assert r["kind"] == kind
        assert 0 < r["median_ms"] <= r["p90_ms"]
        assert r["ratio_to_fp32"] == pytest.approx(
            r["median_ms"] / fp32[(r["sweep_hidden"], r["batch"])])


def test_sweep_models_are_fp32_and_converted_int8_graphs(runs):
    first = benchmark.load_run(runs[1]).model.config
    fp32, int8 = benchmark.sweep_candidates(16, first)
    for candidate, kind, weight_type in ((fp32, "fp32", onnx.TensorProto.FLOAT),
                                         (int8, "int8", onnx.TensorProto.INT8)):
        model = onnx.load_model_from_string(candidate.onnx)
        props = {p.key: p.value for p in model.metadata_props}
        assert props["sasrec_qat.kind"] == kind and props["sasrec_qat.hidden"] == "16"
        assert props["sasrec_qat.max_len"] == "10" and props["sasrec_qat.num_items"] == "20"
        item_table = {t.name: t for t in model.graph.initializer
                      if tuple(t.dims) == (21, 16)}  # (num_items + 1, hidden)
        assert item_table and all(t.data_type == weight_type for t in item_table.values())
        assert candidate.kind == f"onnx_{kind}"


def test_failed_quantize_static_is_recorded_and_the_rest_runs(runs, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("no static quantization today")
    monkeypatch.setattr(ort_baselines, "quantize_static", refuse)
    out = tmp_path / "bench.json"
    assert benchmark.main(["--runs", str(runs[1]), "--repeats", "1", "--warmup", "0",
                           "--batches", "2", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    static = {b["name"]: b for b in result["baselines"]}["quantize_static"]
    assert static["ok"] is False and "no static quantization today" in static["error"]
    assert len(static["attempts"]) == 3
    assert {r["model"] for r in result["records"]} == {"fp32", "torch_eager_fp32",
                                                       "ort_quantize_dynamic"}
    assert "ort_quantize_static" not in {q["model"] for q in result["quality"]}
    assert any("quantize_static failed" in note for note in result["notes"])


def copy_run(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


def torch_candidate(run) -> benchmark.Candidate:
    """The torch eager model of ``run``, as baseline_candidates makes it for an FP32 run."""
    return benchmark.Candidate(benchmark.TORCH_EAGER, "torch_eager", str(run.run_dir), "fp32",
                               32, "torch eager", torch_model=run.model)


def test_parity_json_names_the_file_by_sha256_and_only_that_file_is_trusted(runs, tmp_path):
    """export_int8.py records the sha256 of the file it wrote; the unchanged file is matched
    (its numbers reused), a record naming another sha256, none (an older export) or another
    dataset is not."""
    folder = copy_run(runs[1], tmp_path / "fp32")
    parity = json.loads((folder / "parity.json").read_text())
    payload = (folder / "model_fp32.onnx").read_bytes()
    assert parity["onnx_sha256"] == hashlib.sha256(payload).hexdigest()
    run = benchmark.load_run(folder)
    candidate = benchmark.run_candidates([run], [])[0]
    for c, engine in ((candidate, "onnxruntime"), (torch_candidate(run), "torch")):
        reused = benchmark._parity_quality(c, run, str(runs[0]))
        assert reused is not None and reused["source"] == f"{folder / 'parity.json'} ({engine})"
        assert reused["ndcg@10"] == parity["ndcg@10"][engine]
    for edited in ({**parity, "onnx_sha256": "0" * 64},
                   {k: v for k, v in parity.items() if k != "onnx_sha256"}):
        (folder / "parity.json").write_text(json.dumps(edited))
        assert benchmark._parity_quality(candidate, run, str(runs[0])) is None
        assert benchmark._parity_quality(torch_candidate(run), run, str(runs[0])) is None
    (folder / "parity.json").write_text(json.dumps(parity))
    assert benchmark._parity_quality(candidate, run, str(tmp_path / "other.txt")) is None


def test_an_edited_onnx_file_of_the_same_size_is_re_evaluated(runs, tmp_path):
    """The issue's case: the ONNX file is replaced by another model of the same size (the item
    table's rows reversed: loadable, other scores). parity.json's numbers describe the old file,
    so the benchmark computes the quality of the file it times instead of reporting them."""
    data, fp32_dir, _ = runs
    folder = copy_run(fp32_dir, tmp_path / "fp32")
    path = folder / "model_fp32.onnx"
    original = path.read_bytes()
    model = onnx.load_model_from_string(original)
    table = next(t for t in model.graph.initializer if t.name == "item_emb.weight")
    rows = numpy_helper.to_array(table).copy()
    rows[1:] = rows[1:][::-1].copy()  # item i now looks like item num_items + 1 - i
    table.raw_data = rows.tobytes()
    edited = model.SerializeToString()
    assert len(edited) == len(original) and edited != original
    path.write_bytes(edited)
    parity = json.loads((folder / "parity.json").read_text())
    expected = evaluate(OnnxScorer(make_session(edited)), leave_one_out(cyclic_dataset()),
                        "test", max_len=10, batch_size=512)
    assert abs(expected["ndcg@10"] - parity["ndcg@10"]["onnxruntime"]) > 0.01
    out = tmp_path / "bench.json"
    assert benchmark.main(["--runs", str(folder), "--repeats", "1", "--warmup", "0",
                           "--batches", "2", "--threads", "1", "--calibration-users", "16",
                           "--no-fused", "--out", str(out)]) == 0
    quality = {q["model"]: q for q in json.loads(out.read_text())["quality"]}
    assert quality["fp32"]["source"] == "computed (onnxruntime)"
    assert quality["fp32"]["ndcg@10"] == pytest.approx(expected["ndcg@10"], abs=1e-12)
    assert quality["fp32"]["hit@10"] == pytest.approx(expected["hit@10"], abs=1e-12)
    # parity.json's torch side belongs to the old export too: computed from the torch model
    assert quality["torch_eager_fp32"]["source"] == "computed (torch)"
    assert quality["torch_eager_fp32"]["ndcg@10"] == pytest.approx(parity["ndcg@10"]["torch"],
                                                                   abs=1e-12)


# --- bad input ---------------------------------------------------------------------------------

def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def bad(capsys, argv: list[str]) -> str:
    assert benchmark.main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    return errors[0]


@pytest.mark.parametrize("extra, message", [
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["--warmup", "-1"], "--warmup must be >= 0"),
    (["--batches", "1", "0"], "--batches values must be >= 1"),
    (["--threads", "0"], "--threads values must be >= 1"),
    (["--sweep-hidden", "0"], "--sweep-hidden values must be >= 1"),
    (["--calibration-users", "0"], "--calibration-users must be >= 1"),
])
def test_bad_numbers_exit_2_and_write_nothing(runs, tmp_path, capsys, extra, message):
    before = listing(runs[1])
    out = tmp_path / "bench.json"
    assert message in bad(capsys, ["--runs", str(runs[1]), *extra, "--out", str(out)])
    assert list(tmp_path.iterdir()) == [] and listing(runs[1]) == before


def test_bad_folders_and_mismatched_runs_exit_2(runs, tmp_path, capsys):
    data, fp32, lsq = runs
    out = tmp_path / "out" / "bench.json"
    assert "no run folder at" in bad(capsys, ["--runs", str(tmp_path / "nope"), "--out",
                                              str(out)])
    (tmp_path / "empty").mkdir()
    assert "not a train_qat.py run folder" in bad(
        capsys, ["--runs", str(fp32), str(tmp_path / "empty"), "--out", str(out)])
    assert "twice" in bad(capsys, ["--runs", str(fp32), str(fp32), "--out", str(out)])
    short = tmp_path / "short"
    assert load_script("train_qat").main(["--data", str(data), *TINY[2:], "--max-len", "8",
                                          "--out", str(short)]) == 0
    capsys.readouterr()
    assert "has max_len=8" in bad(capsys, ["--runs", str(fp32), str(short), "--out", str(out)])
    other = tmp_path / "other.txt"
    write_sasrec_text(cyclic_dataset(num_items=25), other)
    assert "the models score 20 items" in bad(
        capsys, ["--runs", str(lsq), "--data", str(other), "--out", str(out)])
    assert "is a folder" in bad(capsys, ["--runs", str(fp32), "--out", str(tmp_path)])
    assert not (tmp_path / "out").exists()


def test_unloadable_model_or_onnx_file_names_the_file_and_exits_2(runs, tmp_path, capsys):
    """A truncated ONNX file, one that is not a SASRec graph, a truncated or garbage model file:
    one ``error: <file>...`` line, exit 2, nothing written."""
    data, fp32, lsq = runs
    out = tmp_path / "out" / "bench.json"
    folder = copy_run(fp32, tmp_path / "fp32")
    onnx_file = folder / "model_fp32.onnx"
    payload = onnx_file.read_bytes()
    onnx_file.write_bytes(payload[:len(payload) // 2])
    message = bad(capsys, ["--runs", str(folder), "--out", str(out)])
    assert message.startswith(f"error: {onnx_file}: not a loadable SASRec ONNX model (")
    assert message.endswith(f"re-export it with scripts/export_int8.py --run {folder}")
    model = onnx.load_model_from_string(payload)
    for node in model.graph.node:  # loads, but is not what the benchmark can score
        node.output[:] = ["logits" if name == "scores" else name for name in node.output]
    model.graph.output[0].name = "logits"
    onnx_file.write_bytes(model.SerializeToString())
    message = bad(capsys, ["--runs", str(folder), "--out", str(out)])
    assert message.startswith(f"error: {onnx_file}: ") and "no output 'scores'" in message
    int8 = copy_run(lsq, tmp_path / "lsq")
    model_file = int8 / "model_int8.pt"
    model_file.write_bytes(model_file.read_bytes()[:100])
    assert bad(capsys, ["--runs", str(int8), "--out", str(out)]).startswith(
        f"error: {model_file}")
    checkpoint = folder / "checkpoint.pt"
    checkpoint.write_bytes(b"garbage, not a torch file")
    assert bad(capsys, ["--runs", str(folder), "--out", str(out)]).startswith(
        f"error: {checkpoint}")
    assert not (tmp_path / "out").exists()


def test_cli_exit_status_2_on_missing_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT),
                                                        os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(SCRIPTS / "benchmark.py"), "--runs",
                             str(tmp_path / "nope"), "--out", str(tmp_path / "b.json")],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: no run folder at")
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == []


def test_int8_fast_and_torch_int8_variants(runs, tmp_path):
    """--int8-fast adds each INT8 run's plain-op graph, timed like the others, and records its
    parity against the torch INT8 model as check_parity measures it; --torch-int8 adds the
    converted torch model itself, with its own quality."""
    data, fp32_dir, lsq_dir = runs
    out = tmp_path / "bench.json"
    assert benchmark.main(["--runs", str(fp32_dir), str(lsq_dir), *FAST, "--no-baselines",
                           "--int8-fast", "--torch-int8", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    cases = {(r["model"], r["batch"]) for r in result["records"]}
    models = ("fp32", "lsq_w8", "lsq_w8_fused", "lsq_w8_fast", "torch_eager_lsq_w8")
    assert cases == {(m, b) for m in models for b in (1, 4)}
    torch_int8 = {q["model"]: q for q in result["quality"]}["torch_eager_lsq_w8"]
    split = leave_one_out(cyclic_dataset())
    run = load_run(lsq_dir)
    expected = evaluate(run.model.score_last, split, "test", max_len=10, batch_size=512)
    assert torch_int8["ndcg@10"] == pytest.approx(expected["ndcg@10"], abs=1e-12)
    fast = {q["model"]: q for q in result["quality"]}["lsq_w8_fast"]
    run = load_run(lsq_dir)
    proto = build_sasrec_onnx(run.model, torch_exact=False)
    report = check_parity(run.model, make_session(proto), split)
    assert fast["ndcg@10"] == pytest.approx(report.ndcg["onnxruntime"], abs=1e-12)
    assert fast["top10_agreement"] == pytest.approx(report.top10_agreement, abs=1e-12)
    assert fast["parity_passed"] == report.passed
    assert result["settings"]["int8_fast"] is True


def test_fused_graphs_are_timed_with_their_parity(bench, runs):
    """By default each INT8 run's fused-kernel graph is timed as <model>_fused; its quality is
    check_parity's against the torch INT8 model, and it equals the exact graph's here."""
    _, _, lsq_dir = runs
    fused = {q["model"]: q for q in bench["quality"]}["lsq_w8_fused"]
    run = load_run(lsq_dir)
    split = leave_one_out(cyclic_dataset())
    report = check_parity(run.model, make_session(build_sasrec_onnx(run.model, fused=True)),
                          split)
    assert fused["ndcg@10"] == pytest.approx(report.ndcg["onnxruntime"], abs=1e-12)
    assert fused["parity_passed"] is True and fused["top10_agreement"] == 1.0
    exact = {q["model"]: q for q in bench["quality"]}["lsq_w8"]
    assert fused["ndcg@10"] == pytest.approx(exact["ndcg@10"], abs=1e-12)
    assert bench["settings"]["fused"] is True
    described = {m["model"]: m for m in bench["models"]}["lsq_w8_fused"]
    assert described["kind"] == "onnx_int8_fused" and described["onnx_bytes"] > 0


def test_no_compiler_skips_the_fused_graphs_with_a_note(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("SASREC_QAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-compiler"))
    benchmark.native_ops.library_path.cache_clear()
    try:
        out = tmp_path / "bench.json"
        assert benchmark.main(["--runs", str(runs[1]), str(runs[2]), *FAST, "--no-baselines",
                               "--out", str(out)]) == 0
    finally:
        benchmark.native_ops.library_path.cache_clear()
    result = json.loads(out.read_text())
    assert {r["model"] for r in result["records"]} == {"fp32", "lsq_w8"}
    assert result["settings"]["fused"] is False
    assert any("fused INT8 graphs skipped" in note for note in result["notes"])

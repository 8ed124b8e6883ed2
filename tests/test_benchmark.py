"""export.bench (the benchmark harness), export.bench_record (bench.json), export.latency and
export.ort_baselines on tiny run folders; scripts/benchmark.py's command line."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
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
from export import native_ops, ort_baselines
from export.bench import BenchSettings, benchmark_to_file, print_tables, run_benchmark
from export.bench_candidates import TORCH_EAGER, Candidate, load_runs, run_candidates
from export.bench_candidates import built_graph_digests, sweep_candidates
from export.bench_quality import parity_quality
from export.bench_record import Baseline, BenchRecord, BenchSetup, Quality, TimedModel, Timing
from export.export_run import export_run
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
from export.parity_record import ParityRecord
from qat.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
TINY = [*TINY_TRAIN, "--epochs", "1"]
FAST = dict(repeats=3, warmup=1, batches=(1, 4), threads=(1,))
ONE = dict(repeats=1, warmup=0, batches=(2,), threads=(1,))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(data file, fp32 run exported with parity.json, lsq run not exported), made in process."""
    data, fp32, qat = train_tiny_runs(tmp_path_factory.mktemp("runs"), ["lsq"])
    lsq = qat["lsq"]
    export_run(fp32, threads=1)
    return data, fp32, lsq


@pytest.fixture(scope="module")
def bench_file(runs, tmp_path_factory):
    """(bench.json of both runs with baselines and a sweep over two widths, the record
    benchmark_to_file returned)."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    settings = BenchSettings(runs=(runs[1], runs[2]), **FAST, sweep_hidden=(8, 16),
                             sweep_items=(60,), calibration_users=16)
    return out, benchmark_to_file(settings, out)


@pytest.fixture(scope="module")
def bench(bench_file):
    """The bench record as read back from bench.json."""
    return BenchRecord.load(bench_file[0])


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


# --- the benchmark ---------------------------------------------------------------------------

RUN_MODELS = ["fp32", "lsq_w8", "lsq_w8_fused"]
BASELINES = ["torch_eager_fp32", "ort_quantize_dynamic", "ort_quantize_static"]


def test_bench_json_schema_and_cases(bench):
    result = bench
    assert {"cpu", "logical_cores", "flags", "python", "torch", "onnxruntime",
            "date"} <= set(result.machine)
    assert result.settings.repeats == 3 and result.settings.batches == [1, 4]
    cases = {(r.model, r.batch, r.threads) for r in result.records}
    assert cases == {(m, b, 1) for m in RUN_MODELS + BASELINES for b in (1, 4)}
    assert len(result.records) == len(cases)
    kinds = {r.model: r.kind for r in result.records}
    assert kinds == {"fp32": "onnx_fp32", "lsq_w8": "onnx_int8",
                     "lsq_w8_fused": "onnx_int8_fused",
                     "torch_eager_fp32": "torch_eager", "ort_quantize_dynamic": "ort_ptq",
                     "ort_quantize_static": "ort_ptq"}
    for r in result.records:
        assert 0 < r.min_ms <= r.median_ms <= r.p90_ms and r.repeats == 3
    lsq = next(r for r in result.records if r.model == "lsq_w8")
    assert (lsq.method, lsq.bits) == ("lsq", 8)
    fp32 = {r.batch: r.median_ms for r in result.records if r.model == "fp32"}
    for r in result.records:
        assert r.ratio_to_fp32 == pytest.approx(r.median_ms / fp32[r.batch])
    assert result.median_ms("fp32", 4, 1) == fp32[4] and result.median_ms("fp32", 2, 1) is None


def test_bench_json_is_the_record_returned_and_round_trips(bench_file, bench):
    """What benchmark_to_file returned is what bench.json holds; to_json/from_json is lossless,
    and the file is a versioned "bench" record."""
    path, returned = bench_file
    assert bench == returned
    assert BenchRecord.from_json(bench.to_json()) == bench
    raw = json.loads(path.read_text())
    assert (raw["record"], raw["schema"]) == ("bench", 1)
    assert {"machine", "settings", "models", "baselines", "records", "quality", "sweep",
            "notes"} <= set(raw)
    assert raw["records"][0]["record"] == "bench_timing"


def test_models_name_the_sha256_of_what_was_timed(bench, runs):
    """Each run-derived model names the run's model file and its sha256, and the sha256 of the
    ONNX bytes timed; the run's exported graph also names the file they were read from."""
    data, fp32_dir, lsq_dir = runs
    models = {m.model: m for m in bench.models}
    assert set(models) == set(RUN_MODELS + BASELINES)
    fp32 = models["fp32"]
    onnx_bytes = (fp32_dir / "model_fp32.onnx").read_bytes()
    assert fp32.onnx_file == "model_fp32.onnx" and fp32.onnx_bytes == len(onnx_bytes)
    assert fp32.onnx_sha256 == hashlib.sha256(onnx_bytes).hexdigest()
    assert fp32.model_file == "checkpoint.pt" and fp32.model_sha256 == hashlib.sha256(
        (fp32_dir / "checkpoint.pt").read_bytes()).hexdigest()
    lsq_sha = hashlib.sha256((lsq_dir / "model_int8.pt").read_bytes()).hexdigest()
    for name in ("lsq_w8", "lsq_w8_fused"):  # built in memory: no file, the model file's sha
        assert models[name].onnx_file is None and len(models[name].onnx_sha256) == 64
        assert (models[name].model_file, models[name].model_sha256) == ("model_int8.pt", lsq_sha)
    torch_eager = models["torch_eager_fp32"]
    assert torch_eager.onnx_sha256 is None and torch_eager.model_sha256 == fp32.model_sha256
    assert models["ort_quantize_dynamic"].method == "quantize_dynamic"


def test_table_prints_every_record_with_its_ratio(bench, capsys):
    result = bench
    print_tables(result)
    stdout = capsys.readouterr().out
    assert "median ms" in stdout and "vs fp32" in stdout
    rows = [line.split() for line in stdout.splitlines()]
    for r in result.records:
        assert [r.model, str(r.batch), "1", f"{r.median_ms:.3f}", f"{r.p90_ms:.3f}",
                f"{r.ratio_to_fp32:.2f}x"] in rows
    assert "int8/fp32" in stdout and "nDCG@10" in stdout  # the sweep and quality tables


def test_quality_of_baselines_and_runs(bench, runs):
    result = bench
    data, fp32_dir, lsq_dir = runs
    quality = {q.model: q for q in result.quality}
    assert set(quality) == set(RUN_MODELS + BASELINES)
    for q in quality.values():
        assert 0.0 <= q.ndcg <= q.hit <= 1.0
    parity = ParityRecord.load(fp32_dir / "parity.json")
    assert quality["fp32"].source.startswith(str(fp32_dir / "parity.json"))
    assert quality["fp32"].ndcg == parity.graph.ndcg["onnxruntime"]
    assert quality["torch_eager_fp32"].ndcg == parity.graph.ndcg["torch"]
    # the lsq run was never exported: its graph is built in memory and its quality computed
    assert quality["lsq_w8"].source == "computed (onnxruntime)"
    assert any("lsq_w8: built in memory" in note for note in result.notes)
    assert not (lsq_dir / "model_int8.onnx").exists()
    # quantize_dynamic's nDCG is what qat.evaluate gives its model through onnxruntime
    split = leave_one_out(cyclic_dataset())
    dynamic = ort_baselines.quantize_dynamic_model((fp32_dir / "model_fp32.onnx").read_bytes())
    metrics = evaluate(OnnxScorer(make_session(dynamic.model)), split, "test", max_len=10,
                       batch_size=512)
    assert quality["ort_quantize_dynamic"].ndcg == pytest.approx(metrics["ndcg@10"], abs=1e-12)
    assert quality["ort_quantize_dynamic"].source == "computed (onnxruntime)"
    static = {b.name: b for b in result.baselines}["quantize_static"]
    assert static.ok and static.options["quant_format"] == "QDQ"
    assert all(a["error"] for a in static.attempts[:-1]) and static.attempts[-1]["error"] \
        is None


def test_sweep_records_for_two_widths(bench):
    result = bench
    sweep = result.sweep
    cases = {(r.model, r.sweep_hidden, r.batch, r.threads) for r in sweep}
    assert cases == {(f"sweep_{k}_d{d}", d, b, 1) for k in ("fp32", "int8", "int8_fused")
                     for d in (8, 16) for b in (1, 4)}
    fp32 = {(r.sweep_hidden, r.batch): r.median_ms for r in sweep if r.kind == "onnx_fp32"}
    for r in sweep:
        kind = ("onnx_int8_fused" if "fused" in r.model else
                "onnx_int8" if "int8" in r.model else "onnx_fp32")
        assert r.kind == kind
        assert 0 < r.median_ms <= r.p90_ms
        assert r.ratio_to_fp32 == pytest.approx(r.median_ms / fp32[(r.sweep_hidden, r.batch)])


def test_catalogue_records_full_and_top_k_graphs_with_like_for_like_ratios(bench):
    catalogue = bench.catalogue
    assert bench.settings.sweep_items == [60]
    names = {"items60_fp32", "items60_int8_fused", "items60_fp32_top_k",
             "items60_int8_fused_top_k"}
    assert {(r.model, r.batch) for r in catalogue} == {(n, b) for n in names for b in (1, 4)}
    median = {(r.model, r.batch): r.median_ms for r in catalogue}
    for r in catalogue:
        assert r.sweep_items == 60 and r.serving == ("top_k" if "top_k" in r.model else "scores")
        fp32 = "items60_fp32" + ("_top_k" if r.serving == "top_k" else "")
        assert r.ratio_to_fp32 == pytest.approx(r.median_ms / median[(fp32, r.batch)])
        assert (r.scoring is None) == (r.kind == "onnx_fp32")
        assert r.scoring in (None, "fused", "int8", "float")


def test_run_top_k_graphs_are_timed_against_the_fp32_top_k_graph(runs):
    """--top-k: every run graph's top-k twin (FP32, INT8, fused INT8; not the baselines) is
    timed, its ratio taken against the FP32 run's top-k graph; no quality entry for them."""
    result = run_benchmark(BenchSettings(runs=(runs[1], runs[2]), **ONE, top_k=3,
                                         baselines=False))
    assert result.settings.top_k == 3
    twins = {f"{name}_top_k": name for name in RUN_MODELS}
    assert {r.model for r in result.records} == set(RUN_MODELS) | set(twins)
    median = {r.model: r.median_ms for r in result.records}
    for r in result.records:
        top_k = r.model in twins
        assert r.serving == ("top_k" if top_k else "scores")
        twin = twins.get(r.model, r.model)
        assert r.kind == next(t.kind for t in result.records if t.model == twin)
        reference = "fp32_top_k" if top_k else "fp32"
        assert r.ratio_to_fp32 == pytest.approx(r.median_ms / median[reference])
    assert {q.model for q in result.quality} == set(RUN_MODELS)
    described = {m.model: m for m in result.models}
    assert described["lsq_w8_fused_top_k"].source == "built in memory, top-k graph (k=3)"
    with pytest.raises(ValueError, match=r"--top-k must be in \[1, 20\]"):
        run_benchmark(BenchSettings(runs=(runs[1],), **ONE, top_k=21, baselines=False))


def test_sweep_models_are_fp32_and_converted_int8_graphs(runs):
    first = load_run(runs[1]).model.config
    fp32, int8 = sweep_candidates(16, first)
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


def test_failed_quantize_static_is_recorded_and_the_rest_runs(runs, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("no static quantization today")
    monkeypatch.setattr(ort_baselines, "quantize_static", refuse)
    result = run_benchmark(BenchSettings(runs=[runs[1]], **ONE))
    static = {b.name: b for b in result.baselines}["quantize_static"]
    assert static.ok is False and "no static quantization today" in static.error
    assert len(static.attempts) == 3
    assert {r.model for r in result.records} == {"fp32", "torch_eager_fp32",
                                                 "ort_quantize_dynamic"}
    assert result.quality_of("ort_quantize_static") is None
    assert any("quantize_static failed" in note for note in result.notes)


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def torch_candidate(run) -> Candidate:
    """The torch eager model of ``run``, as baseline_candidates makes it for an FP32 run."""
    return Candidate(TORCH_EAGER, "torch_eager", str(run.run_dir), "fp32", 32, "torch eager",
                     torch_model=run.model)


def test_parity_json_names_the_file_by_sha256_and_only_that_file_is_trusted(runs, tmp_path):
    """export_int8.py records the sha256 of the file it wrote and of the model it exported; the
    unchanged files are matched (their numbers reused); a record naming another ONNX sha256,
    another model sha256, none (an older export, not a valid record) or another dataset is
    not."""
    folder = copy_run(runs[1], tmp_path / "fp32")
    original = json.loads((folder / "parity.json").read_text())
    parity = ParityRecord.load(folder / "parity.json")
    payload = (folder / "model_fp32.onnx").read_bytes()
    assert parity.graph.onnx_sha256 == hashlib.sha256(payload).hexdigest()
    [bench_run] = load_runs([folder])
    run = bench_run.run
    candidate = run_candidates([bench_run], [])[0]
    for c, engine in ((candidate, "onnxruntime"), (torch_candidate(run), "torch")):
        reused = parity_quality(c, run, str(runs[0]))
        assert reused is not None and reused.source == f"{folder / 'parity.json'} ({engine})"
        assert reused.ndcg == parity.graph.ndcg[engine] and reused.model == c.name
    other_onnx = {**original, "graph": {**original["graph"], "onnx_sha256": "0" * 64}}
    other_model = {**original, "model_sha256": "0" * 64}
    unversioned = {k: v for k, v in original.items() if k not in ("record", "schema")}
    for edited in (other_onnx, other_model, unversioned):
        (folder / "parity.json").write_text(json.dumps(edited))
        assert parity_quality(candidate, run, str(runs[0])) is None
        assert parity_quality(torch_candidate(run), run, str(runs[0])) is None
    (folder / "parity.json").write_text(json.dumps(original))
    assert parity_quality(candidate, run, str(tmp_path / "other.txt")) is None


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
    parity = ParityRecord.load(folder / "parity.json")
    expected = evaluate(OnnxScorer(make_session(edited)), leave_one_out(cyclic_dataset()),
                        "test", max_len=10, batch_size=512)
    assert abs(expected["ndcg@10"] - parity.graph.ndcg["onnxruntime"]) > 0.01
    result = run_benchmark(BenchSettings(runs=[folder], **ONE, calibration_users=16,
                                         fused=False))
    quality = {q.model: q for q in result.quality}
    assert quality["fp32"].source == "computed (onnxruntime)"
    assert quality["fp32"].ndcg == pytest.approx(expected["ndcg@10"], abs=1e-12)
    assert quality["fp32"].hit == pytest.approx(expected["hit@10"], abs=1e-12)
    # parity.json's torch side belongs to the old export too: computed from the torch model
    assert quality["torch_eager_fp32"].source == "computed (torch)"
    assert quality["torch_eager_fp32"].ndcg == pytest.approx(parity.graph.ndcg["torch"],
                                                             abs=1e-12)
    assert result.model("fp32").onnx_sha256 == hashlib.sha256(edited).hexdigest()


def test_int8_fast_and_torch_int8_variants(runs):
    """int8_fast adds each INT8 run's plain-op graph, timed like the others, and records its
    parity against the torch INT8 model as check_parity measures it; torch_int8 adds the
    converted torch model itself, with its own quality."""
    data, fp32_dir, lsq_dir = runs
    result = run_benchmark(BenchSettings(runs=[fp32_dir, lsq_dir], **FAST, baselines=False,
                                         int8_fast=True, torch_int8=True))
    cases = {(r.model, r.batch) for r in result.records}
    models = ("fp32", "lsq_w8", "lsq_w8_fused", "lsq_w8_fast", "torch_eager_lsq_w8")
    assert cases == {(m, b) for m in models for b in (1, 4)}
    torch_int8 = result.quality_of("torch_eager_lsq_w8")
    split = leave_one_out(cyclic_dataset())
    run = load_run(lsq_dir)
    expected = evaluate(run.model.score_last, split, "test", max_len=10, batch_size=512)
    assert torch_int8.ndcg == pytest.approx(expected["ndcg@10"], abs=1e-12)
    fast = result.quality_of("lsq_w8_fast")
    run = load_run(lsq_dir)
    proto = build_sasrec_onnx(run.model, torch_exact=False)
    report = check_parity(run.model, make_session(proto), split)
    assert fast.ndcg == pytest.approx(report.ndcg["onnxruntime"], abs=1e-12)
    assert fast.top10_agreement == pytest.approx(report.top10_agreement, abs=1e-12)
    assert fast.parity_passed == report.passed
    assert result.settings.int8_fast is True and result.settings.torch_int8 is True
    assert result.settings.baselines is False


def test_fused_graphs_are_timed_with_their_parity(bench, runs):
    """By default each INT8 run's fused-kernel graph is timed as <model>_fused; its quality is
    check_parity's against the torch INT8 model, and it equals the exact graph's here."""
    _, _, lsq_dir = runs
    fused = bench.quality_of("lsq_w8_fused")
    run = load_run(lsq_dir)
    split = leave_one_out(cyclic_dataset())
    report = check_parity(run.model, make_session(build_sasrec_onnx(run.model, fused=True)),
                          split)
    assert fused.ndcg == pytest.approx(report.ndcg["onnxruntime"], abs=1e-12)
    assert fused.parity_passed is True and fused.top10_agreement == 1.0
    exact = bench.quality_of("lsq_w8")
    assert fused.ndcg == pytest.approx(exact.ndcg, abs=1e-12)
    assert bench.settings.fused is True
    assert bench.settings.native_build == native_ops.build_key()  # the kernels that ran them
    described = bench.model("lsq_w8_fused")
    assert described.kind == "onnx_int8_fused" and described.onnx_bytes > 0
    # the digest of the graph timed is what the exporter builds now (run_all's reuse check)
    digests = built_graph_digests(load_runs([runs[1], runs[2]]), fused=True, int8_fast=False,
                                  top_k=None, sweep_hidden=(8, 16))
    assert digests["lsq_w8_fused"] == described.onnx_sha256
    sweep = {name for name in digests if name.startswith("sweep_")}
    assert sweep == set(bench.settings.sweep_graphs) and len(sweep) == 6  # 2 widths x 3
    assert set(digests) - sweep <= {"fp32", "lsq_w8", "lsq_w8_fused"}  # where not exported
    assert bench.changed_graphs(digests) is None
    name = sorted(sweep)[0]  # a sweep graph the exporter now builds differently
    assert bench.changed_graphs({**digests, name: "0" * 64}) == (
        f"its {name} graph is not the one this code builds (sha256 differs: the exporter "
        "changed since it was timed)")


def test_no_compiler_skips_the_fused_graphs_with_a_note(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("SASREC_QAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-compiler"))
    native_ops.library_path.cache_clear()
    try:
        result = run_benchmark(BenchSettings(runs=[runs[1], runs[2]], **FAST, baselines=False))
    finally:
        native_ops.library_path.cache_clear()
    assert {r.model for r in result.records} == {"fp32", "lsq_w8"}
    assert result.settings.fused is False and result.settings.native_build is None
    assert any("fused INT8 graphs skipped" in note for note in result.notes)


# --- bad input ---------------------------------------------------------------------------------

def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("field, value, message", [
    ("repeats", 0, "--repeats must be >= 1"),
    ("warmup", -1, "--warmup must be >= 0"),
    ("batches", (1, 0), "--batches values must be >= 1"),
    ("threads", (0,), "--threads values must be >= 1"),
    ("sweep_hidden", (0,), "--sweep-hidden values must be >= 1"),
    ("calibration_users", 0, "--calibration-users must be >= 1"),
    ("top_k", 0, "--top-k must be >= 1"),
    ("runs", (), "--runs needs at least one run folder"),
    ("batches", (), "--batches and --threads need at least one value"),
])
def test_bad_numbers_are_refused_with_the_flag(field, value, message):
    settings = {"runs": ("runs/fp32",), field: value}
    with pytest.raises(ValueError, match=message):
        BenchSettings(**settings)


def test_settings_are_keyword_only_frozen_and_normalised():
    settings = BenchSettings(runs="runs/fp32", batches=[4, 1, 4], threads=[2, 2],
                             sweep_hidden=[16, 8, 16], cache_dir="cache")
    assert settings.runs == (Path("runs/fp32"),)
    assert settings.batches == (4, 1) and settings.threads == (2,)
    assert settings.sweep_hidden == (16, 8)
    assert settings.cache_dir == Path("cache")
    assert (settings.repeats, settings.warmup, settings.fused, settings.int8_fast) == (
        100, 10, True, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.repeats = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        BenchSettings(("runs/fp32",))  # type: ignore[misc]


def test_bad_folders_and_mismatched_runs_are_refused(runs, tmp_path, capsys):
    data, fp32, lsq = runs
    out = tmp_path / "out" / "bench.json"

    def refused(*run_dirs: Path, **extra: object) -> str:
        with pytest.raises((ValueError, FileNotFoundError)) as caught:
            benchmark_to_file(BenchSettings(runs=run_dirs, **ONE, **extra), out)
        return str(caught.value)
    assert "no run folder at" in refused(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "not a train_qat.py run folder" in refused(fp32, tmp_path / "empty")
    assert "twice" in refused(fp32, fp32)
    short = tmp_path / "short"
    assert load_script("train_qat").main(["--data", str(data), *TINY[2:], "--max-len", "8",
                                          "--out", str(short)]) == 0
    capsys.readouterr()
    assert "has max_len=8" in refused(fp32, short)
    other = tmp_path / "other.txt"
    write_sasrec_text(cyclic_dataset(num_items=25), other)
    assert "the models score 20 items" in refused(lsq, data=str(other))
    with pytest.raises(ValueError, match="is a folder"):
        benchmark_to_file(BenchSettings(runs=[fp32], **ONE), tmp_path)
    assert not (tmp_path / "out").exists()


def test_unloadable_model_or_onnx_file_names_the_file(runs, tmp_path):
    """A truncated ONNX file, one that is not a SASRec graph, a truncated or garbage model file:
    a ValueError naming the file (the script's one ``error:`` line), nothing written."""
    data, fp32, lsq = runs
    out = tmp_path / "out" / "bench.json"

    def refused(folder: Path) -> str:
        with pytest.raises(ValueError) as caught:
            benchmark_to_file(BenchSettings(runs=[folder], **ONE), out)
        return str(caught.value)
    folder = copy_run(fp32, tmp_path / "fp32")
    onnx_file = folder / "model_fp32.onnx"
    payload = onnx_file.read_bytes()
    onnx_file.write_bytes(payload[:len(payload) // 2])
    message = refused(folder)
    assert message.startswith(f"{onnx_file}: not a loadable SASRec ONNX model (")
    assert message.endswith(f"re-export it with scripts/export_int8.py --run {folder}")
    model = onnx.load_model_from_string(payload)
    for node in model.graph.node:  # loads, but is not what the benchmark can score
        node.output[:] = ["logits" if name == "scores" else name for name in node.output]
    model.graph.output[0].name = "logits"
    onnx_file.write_bytes(model.SerializeToString())
    message = refused(folder)
    assert message.startswith(f"{onnx_file}: ") and "no output 'scores'" in message
    int8 = copy_run(lsq, tmp_path / "lsq")
    model_file = int8 / "model_int8.pt"
    model_file.write_bytes(model_file.read_bytes()[:100])
    assert refused(int8).startswith(str(model_file))
    checkpoint = folder / "checkpoint.pt"
    checkpoint.write_bytes(b"garbage, not a torch file")
    assert refused(folder).startswith(str(checkpoint))
    assert not (tmp_path / "out").exists()


# --- the command line ----------------------------------------------------------------------------

def test_cli_writes_bench_json_and_prints_the_tables(runs, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert load_script("benchmark").main([
        "--runs", str(runs[1]), "--repeats", "1", "--warmup", "0", "--batches", "2",
        "--threads", "1", "--no-baselines", "--no-fused", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    record = BenchRecord.load(out)
    assert [(r.model, r.batch, r.threads) for r in record.records] == [("fp32", 2, 1)]
    assert record.settings.baselines is False and record.settings.fused is False
    assert "median ms" in captured.out and f"wrote {out}" in captured.err


@pytest.mark.parametrize("extra, message", [
    (["--repeats", "0"], "error: --repeats must be >= 1"),
    (["--batches"], "error: argument --batches: expected at least one argument"),
])
def test_cli_bad_input_is_one_error_line_exit_2_and_writes_nothing(runs, tmp_path, capsys,
                                                                   extra, message):
    before = listing(runs[1])
    out = tmp_path / "bench.json"
    try:  # argparse's own usage errors leave by SystemExit, the rest by the returned status
        status = load_script("benchmark").main(["--runs", str(runs[1]), *extra, "--out",
                                                str(out)])
    except SystemExit as exit_info:
        status = exit_info.code
    assert status == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message)
    assert list(tmp_path.iterdir()) == [] and listing(runs[1]) == before


@pytest.mark.slow  # a new Python process
def test_cli_exit_status_2_on_missing_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT),
                                                        os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(SCRIPTS / "benchmark.py"), "--runs",
                             str(tmp_path / "nope"), "--out", str(tmp_path / "b.json")],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: no run folder at")
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == []


# --- bench.json as a record, and when it must be remade ------------------------------------------

def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fake_run(folder: Path, kind: str) -> Path:
    """A run folder holding only the files a bench record names (contents are stand-ins)."""
    folder.mkdir(parents=True)
    (folder / ("model_int8.pt" if kind == "int8" else "checkpoint.pt")).write_bytes(b"model 1")
    (folder / f"model_{kind}.onnx").write_bytes(b"graph 1")
    return folder


def setup(**changes: object) -> BenchSetup:
    values = dict(runs=[], data="cyclic.txt", split="test", test_users=40, num_items=20,
                  max_len=10, batches=[1, 4], threads=[1], repeats=3, warmup=1, baselines=True,
                  baseline_source=None, calibration_users=16, sweep_hidden=[], fused=True,
                  int8_fast=False, torch_int8=False,
                  onnxruntime={"graph_optimization": "all", "allow_spinning": False},
                  inputs="test users", schedule="interleaved", timer="perf_counter_ns",
                  torch_eager="score_last", sweep_quantization="ste, 8-bit")
    return BenchSetup(**{**values, **changes})  # type: ignore[arg-type]


def timed_run(folder: Path, name: str, kind: str, *, in_memory: bool = False) -> TimedModel:
    model_file = "model_int8.pt" if kind == "int8" else "checkpoint.pt"
    onnx_file = folder / f"model_{kind}.onnx"
    return TimedModel(model=name, kind=f"onnx_{kind}", run=str(folder),
                      method="ste" if kind == "int8" else "fp32", bits=8 if kind == "int8" else 32,
                      source="built in memory" if in_memory else str(onnx_file),
                      onnx_bytes=onnx_file.stat().st_size, onnx_sha256=sha(onnx_file),
                      onnx_file=None if in_memory else onnx_file.name, model_file=model_file,
                      model_sha256=sha(folder / model_file))


def timing(model: str, batch: int, threads: int, median: float = 2.0) -> Timing:
    return Timing(model=model, kind="onnx_fp32", run=None, method="fp32", bits=32, batch=batch,
                  threads=threads, median_ms=median, p90_ms=median * 1.5, min_ms=median / 2,
                  repeats=3, ratio_to_fp32=None)


@pytest.fixture
def study(tmp_path):
    """(record, runs) of two stand-in run folders timed at batches 1 and 4, one thread."""
    fp32, ste = fake_run(tmp_path / "fp32", "fp32"), fake_run(tmp_path / "ste_w8", "int8")
    record = BenchRecord(
        machine={"cpu": "test", "flags": {"avx2": True}},
        settings=setup(runs=[str(fp32), str(ste)], baseline_source=str(fp32)),
        models=[timed_run(fp32, "fp32", "fp32"), timed_run(ste, "ste_w8", "int8")],
        baselines=[Baseline(name="quantize_dynamic", ok=True, options={"per_channel": False},
                            attempts=[{"error": None}], error=None)],
        records=[timing(m, b, 1) for m in ("fp32", "ste_w8") for b in (1, 4)],
        quality=[Quality(model="fp32", kind="onnx_fp32", ndcg=0.5, hit=0.75, users=40,
                         source="computed (onnxruntime)"),
                 Quality(model="ste_w8_fused", kind="onnx_int8_fused", ndcg=0.5, hit=0.75,
                         users=40, source="computed", top10_agreement=1.0, ndcg_delta=0.0,
                         parity_passed=True)],
        sweep=[dataclasses.replace(timing("sweep_fp32_d8", 1, 1), sweep_hidden=8)],
        notes=["a note"])
    return record, [(fp32, "fp32"), (ste, "ste_w8")]


REQUEST = dict(batches=[1, 4], threads=[1], repeats=3)


def test_record_round_trips_through_json_and_file(study, tmp_path):
    record, _ = study
    again = BenchRecord.from_json(json.loads(json.dumps(record.to_json())))
    assert again == record and isinstance(again.records[0], Timing)
    assert again.sweep[0].sweep_hidden == 8 and again.quality[1].parity_passed is True
    record.save(tmp_path / "bench.json")
    assert BenchRecord.load(tmp_path / "bench.json") == record
    assert record.to_json()["settings"]["record"] == "bench_settings"


def test_a_newer_schema_is_refused_with_the_file_named(study, tmp_path):
    record, _ = study
    path = tmp_path / "bench.json"
    newer = {**record.to_json(), "schema": 2}
    path.write_text(json.dumps(newer))
    with pytest.raises(ValueError, match=f"^{path}: schema 2 is newer than this program's 1"):
        BenchRecord.load(path)
    raw = record.to_json()
    raw["records"][1]["schema"] = 2  # a nested record of a newer schema: refused, located
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=rf"^{path} \[records\]\[1\]: schema 2 is newer"):
        BenchRecord.load(path)
    assert BenchRecord.load_or_none(path) is None


def test_a_missing_field_is_refused_with_the_file_named(study, tmp_path):
    record, _ = study
    path = tmp_path / "bench.json"
    for drop, where in (((), "settings"), ((), "notes"), (("records", 0), "median_ms"),
                        (("settings",), "repeats")):
        raw = record.to_json()
        target = raw
        for key in drop:
            target = target[key]
        del target[where]
        path.write_text(json.dumps(raw))
        with pytest.raises(ValueError) as caught:
            BenchRecord.load(path)
        message = str(caught.value)
        assert message.startswith(str(path)) and f"missing field(s) {where}" in message
    unversioned = {k: v for k, v in record.to_json().items() if k not in ("record", "schema")}
    path.write_text(json.dumps(unversioned))  # bench.json as the benchmark wrote it before
    with pytest.raises(ValueError, match=f"^{path}: is a None record, expected 'bench'"):
        BenchRecord.load(path)
    path.write_text(json.dumps({**record.to_json(), "records": "none"}))
    with pytest.raises(ValueError, match="records must be a list of Timing records"):
        BenchRecord.load(path)


def test_missing_is_none_for_a_current_record_whatever_the_mtimes(study, tmp_path):
    record, runs = study
    assert record.missing(runs, **REQUEST) is None
    later = 4_000_000_000  # every file "modified" after bench.json: no matter, same sha256
    for folder, _ in runs:
        for path in folder.iterdir():
            os.utime(path, (later, later))
    record.save(tmp_path / "bench.json")
    assert BenchRecord.missing_at(tmp_path / "bench.json", runs, **REQUEST) is None
    # more than asked for is fine: extra variants, no sweep asked for, fewer cases
    assert record.missing(runs[:1], batches=[4], threads=[1], repeats=3, baselines=False) is None


def test_missing_settings_reasons(study):
    record, runs = study
    assert record.missing(runs, **{**REQUEST, "repeats": 100}) == "it has 3 repeats, not 100"
    assert record.missing(runs, **REQUEST, int8_fast=True) == "it was made without --int8-fast"
    assert record.missing(runs, **REQUEST, torch_int8=True) == \
        "it was made without --torch-int8"
    assert record.missing(runs, **REQUEST, sweep_hidden=[8, 16]) == \
        "its sweep is [], not [8, 16]"
    assert record.missing(runs, **REQUEST, top_k=10) == "it was made without --top-k 10"
    record.settings.top_k = 5
    assert record.missing(runs, **REQUEST, top_k=10) == "it timed top-k graphs of k=5, not 10"
    assert record.missing(runs, **REQUEST, top_k=5) is None
    record.settings.top_k = None
    record.settings.baselines = False
    assert record.missing(runs, **REQUEST) == "it has no baselines"
    assert record.missing(runs, **REQUEST, baselines=False) is None


def test_missing_fused_graphs_when_asked_for(study):
    """run_all asks for the fused-kernel graphs where the kernels build: a record made where
    they did not (settings.fused False), or without one run's fused timings, is remade."""
    record, runs = study
    assert record.missing(runs, **REQUEST) is None  # not asked for: the fused rows may lack
    assert record.missing(runs, **REQUEST, fused=True) == (
        "no record of ste_w8_fused at batch 1, 1 thread(s)")  # fp32 has no fused graph
    record.records += [timing("ste_w8_fused", b, 1) for b in (1, 4)]
    assert record.missing(runs, **REQUEST, fused=True) is None
    record.settings.fused = False
    assert record.missing(runs, **REQUEST, fused=True) == (
        "it was made without the fused-kernel INT8 graphs")
    assert record.missing(runs, **REQUEST) is None


def test_missing_fused_graphs_of_another_kernel_build(study):
    """Fused timings ran on one build of the kernels (sources, compiler, flags, CPU): asked with
    this machine's build, another is remade; a record without one (older) too."""
    record, runs = study
    record.records += [timing("ste_w8_fused", b, 1) for b in (1, 4)]
    record.settings.native_build = "aaaa"
    assert record.missing(runs, **REQUEST, fused=True, native_build="aaaa") is None
    assert record.missing(runs, **REQUEST, fused=True, native_build="bbbb") == (
        "its fused-kernel graphs ran on another build of the kernels (aaaa, here bbbb)")
    assert record.missing(runs, **REQUEST, native_build="bbbb") is None  # fused not asked for
    record.settings.native_build = None
    assert record.missing(runs, **REQUEST, fused=True, native_build="bbbb") == (
        "its fused-kernel graphs ran on another build of the kernels (None, here bbbb)")


def test_changed_graphs_compares_what_the_code_builds_now(study):
    """Graphs built in memory (fused, top-k) are named by the sha256 of the bytes timed: the
    same digest now is current, another is a changed exporter; unnamed ones are left to
    missing."""
    record, runs = study
    record.models.append(TimedModel(
        model="ste_w8_fused", kind="onnx_int8_fused", run=str(runs[1][0]), method="ste", bits=8,
        source="built in memory with fused=True", onnx_bytes=10, onnx_sha256="ab" * 32,
        onnx_file=None, model_file="model_int8.pt",
        model_sha256=sha(runs[1][0] / "model_int8.pt")))
    assert record.changed_graphs({"ste_w8_fused": "ab" * 32, "fp32_top_k": "cd" * 32}) is None
    assert record.changed_graphs({"ste_w8_fused": "ef" * 32}) == (
        "its ste_w8_fused graph is not the one this code builds (sha256 differs: the exporter "
        "changed since it was timed)")


def test_missing_on_another_cpu(study):
    """Latency from another CPU class is not this machine's: model name and flags must match
    (run_all passes this machine's; the date, load and versions may differ)."""
    record, runs = study
    here = {**record.machine, "date": "later", "load_average": [9.0, 9.0, 9.0]}
    assert record.missing(runs, **REQUEST, machine=here) is None
    other_flags = {**here, "flags": {**here["flags"], "avx512_vnni": not here["flags"].get(
        "avx512_vnni")}}
    assert record.missing(runs, **REQUEST, machine=other_flags).startswith(
        "it was made on another CPU (flags")
    assert record.missing(runs, **REQUEST, machine={**here, "cpu": "Other CPU"}) == (
        f"it was made on another CPU (cpu {record.machine['cpu']!r}, here 'Other CPU')")


def test_missing_when_a_file_is_not_the_one_timed(study):
    """Same size, other content: the sha256 tells; so does a file that is gone."""
    record, runs = study
    (fp32, _), (ste, _) = runs
    (ste / "model_int8.pt").write_bytes(b"model 2")
    assert record.missing(runs, **REQUEST) == (
        f"{ste / 'model_int8.pt'} is not the model file it timed (sha256 differs or it is gone)")
    (ste / "model_int8.pt").write_bytes(b"model 1")
    (fp32 / "model_fp32.onnx").write_bytes(b"graph 2")
    assert record.missing(runs, **REQUEST) == (
        f"{fp32 / 'model_fp32.onnx'} is not the ONNX file it timed (sha256 differs or it is "
        "gone)")
    (fp32 / "model_fp32.onnx").unlink()
    assert "model_fp32.onnx is not the ONNX file it timed" in record.missing(runs, **REQUEST)


def test_missing_when_the_graph_was_built_in_memory(study):
    record, runs = study
    (ste, _) = runs[1]
    record.models[1] = timed_run(ste, "ste_w8", "int8", in_memory=True)
    assert record.missing(runs, **REQUEST) == (
        "it timed a graph of ste_w8 built in memory, not an exported ONNX file")


def test_missing_when_a_case_or_a_run_was_not_timed(study, tmp_path):
    record, runs = study
    assert record.missing(runs, batches=[1, 4], threads=[1, 2], repeats=3) == \
        "no record of fp32 at batch 1, 2 thread(s)"
    lsq = fake_run(tmp_path / "lsq_w8", "int8")
    assert record.missing([*runs, (lsq, "lsq_w8")], **REQUEST) == \
        "no record of lsq_w8 at batch 1, 1 thread(s)"
    del record.models[0]  # timed, but the files it came from are not named
    assert record.missing(runs, **REQUEST) == "it does not name the files of fp32"


def test_missing_at_an_absent_or_unreadable_file(study, tmp_path):
    _, runs = study
    path = tmp_path / "bench.json"
    assert BenchRecord.missing_at(path, runs, **REQUEST) == "no bench.json"
    path.write_text('{"records": []}')
    why = BenchRecord.missing_at(path, runs, **REQUEST)
    assert why.startswith("no readable bench.json (") and "expected 'bench'" in why

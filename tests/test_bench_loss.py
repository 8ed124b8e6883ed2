"""scripts/bench_loss.py: full vs sampled CE step time and memory on a synthetic catalogue."""
from __future__ import annotations

import json

import pytest

from conftest import load_script

bench = load_script("bench_loss")

TINY = ["--items", "50", "--max-len", "8", "--batch-size", "4", "--hidden", "8", "--blocks", "1",
        "--negatives", "8", "--steps", "1", "--warmup", "0"]


@pytest.mark.slow  # one Python process per configuration
def test_cli_runs_each_configuration_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main([*TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("machine: ") and "1 thread(s); load average" in printed
    rows = [line for line in printed.splitlines() if line.startswith("| 8 |")]
    assert len(rows) == 2
    assert "| ce | all | 4 |" in rows[0] and "| sampled-ce (uniform) | 8 | 4 |" in rows[1]
    records = json.loads(out.read_text())["records"]
    assert [r["loss"] for r in records] == ["ce", "sampled-ce"]
    for r in records:
        assert "error" not in r and len(r["step_seconds"]) == len(r["step_cpu_seconds"]) == 1
        assert r["peak_rss_mb"] >= r["rss_before_steps_mb"] > 0
        assert r["torch_threads"] == 1 and r["positions_per_step"] == 32


def test_run_config_times_real_training_steps():
    config = bench.plan(bench.parse_args([*TINY, "--losses", "sampled-ce",
                                          "--negative-sampling", "popularity"]))[0]
    record = bench.run_config({**config, "steps": 2})
    assert len(record["step_seconds"]) == 2 and record["median_step_seconds"] > 0
    assert record["negative_sampling"] == "popularity"


def test_plan_halves_the_batch_of_a_loss_that_does_not_fit():
    args = bench.parse_args(["--items", "200000", "--max-len", "200", "--memory-limit-gb", "8"])
    plan = {(c["loss"], c["negatives"]): c for c in bench.plan(args)}
    ce = plan[("ce", 0)]
    # 3 float32 tensors of 128 x 200 positions x 200,000 items = 61 GB; 16 users: 7.7 GB
    assert ce["loss_memory_estimate_gb"] == pytest.approx(3 * 128 * 200 * 200_000 * 4 / 2 ** 30)
    assert ce["measured_batch"] == 16 and ce["batch_size"] == 128
    assert all(plan[("sampled-ce", n)]["measured_batch"] == 128 for n in (256, 1024, 3000))


def test_table_marks_extrapolated_and_failed_rows():
    base = {"max_len": 200, "batch_size": 128, "negative_sampling": "uniform",
            "loss_memory_estimate_gb": 61.0}
    records = [
        {**base, "loss": "ce", "negatives": 0, "measured_batch": 16, "median_step_seconds": 2.0,
         "median_step_cpu_seconds": 1.5, "peak_rss_mb": 9000.0, "step_rss_mb": 8000.0},
        {**base, "loss": "sampled-ce", "negatives": 256, "measured_batch": 128,
         "error": "stopped after 600 s"},
    ]
    text = bench.table(records, epoch_users=1280)
    ce, failed = text.splitlines()[2:]
    # 2.0 s at batch 16 x 8 = 16 s per step at 128; 10 batches per epoch
    assert "| 16.000 | 12.000 | 160.0 | - | - | 61.00 | extrapolated: measured at batch 16" in ce
    assert "failed: stopped after 600 s" in failed


@pytest.mark.parametrize("extra", [["--steps", "0"], ["--memory-limit-gb", "0"],
                                   ["--negatives", "0"]])
def test_bad_input_exits_2(extra, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main([*TINY, *extra])
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err

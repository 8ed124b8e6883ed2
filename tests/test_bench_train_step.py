"""scripts/bench_train_step.py: interleaved training-step timing of FP32 and QAT methods."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import load_script, train_tiny_runs

bench = load_script("bench_train_step")


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory):
    return train_tiny_runs(tmp_path_factory.mktemp("steps"))[1]


class FakeTrainer:
    """Records the order of its steps in a shared log."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def step(self, batch, progress):
        self.log.append((self.name, batch))
        return 1.0


def test_time_steps_interleaves_models_on_the_same_batch():
    log = []
    trainers = {n: FakeTrainer(n, log) for n in ("fp32", "a", "b")}
    times = bench.time_steps(trainers, ["b0", "b1", "b2", "b3"], warmup=1, steps=3)
    assert {n: len(t) for n, t in times.items()} == {"fp32": 3, "a": 3, "b": 3}
    rounds = [log[i:i + 3] for i in range(0, 12, 3)]
    for r, calls in enumerate(rounds):
        assert {b for _, b in calls} == {f"b{r}"}  # every model steps on the round's batch
        assert sorted(n for n, _ in calls) == ["a", "b", "fp32"]
    assert len({calls[0][0] for calls in rounds[:3]}) == 3  # the first model rotates


def test_time_steps_stops_on_a_non_finite_loss():
    class Bad(FakeTrainer):
        def step(self, batch, progress):
            return float("nan")
    with pytest.raises(FloatingPointError, match="bad"):
        bench.time_steps({"bad": Bad("bad", [])}, ["x"], warmup=0, steps=1)


def test_cli_times_fp32_and_methods_and_their_weights_change(fp32_run, tmp_path, capsys):
    out = tmp_path / "steps.json"
    assert bench.main(["--init-from", str(fp32_run), "--methods", "ste", "lsq", "--steps", "2",
                       "--warmup", "1", "--batch-size", "8", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    records = {r["model"]: r for r in result["records"]}
    assert set(records) == {"fp32", "ste_w8", "lsq_w8"}
    assert records["fp32"]["ratio_to_fp32"] == 1.0
    for r in records.values():
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"] and r["repeats"] == 2
        assert r["seconds_per_epoch"] == pytest.approx(
            r["median_ms"] * result["settings"]["batches_per_epoch"] / 1000)
    table = capsys.readouterr().out
    assert "ste_w8" in table and "lsq_w8" in table


def test_trainers_really_train(fp32_run, tmp_path):
    args = bench.parse_args(["--init-from", str(fp32_run), "--methods", "pact",
                             "--batch-size", "8"])
    trainers, batcher = bench.build_trainers(args, tmp_path)
    batch = next(iter(batcher.epoch(np.random.default_rng(0))))
    for trainer in trainers.values():
        before = [p.detach().clone() for p in trainer.model.parameters() if p.requires_grad]
        trainer.step(batch, 0.5)
        after = [p.detach() for p in trainer.model.parameters() if p.requires_grad]
        assert any(not b.equal(a) for b, a in zip(before, after))


@pytest.mark.parametrize("extra, message", [
    (["--steps", "0"], "--steps"),
    (["--methods", "apot", "--bits", "6"], "bits"),
])
def test_bad_input_exits_2(fp32_run, capsys, extra, message):
    assert bench.main(["--init-from", str(fp32_run), *extra]) == 2
    assert message in capsys.readouterr().err


def test_missing_run_exits_2(tmp_path, capsys):
    assert bench.main(["--init-from", str(tmp_path / "nope")]) == 2
    assert "error:" in capsys.readouterr().err

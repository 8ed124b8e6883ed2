"""data.drop_item_before_valid and scripts/missing_item_effect.py (ml-1m.txt's damage, on valid)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import cyclic_dataset, load_script, train_tiny_runs

from data import drop_item_before_valid, leave_one_out
from export import load_run
from qat.evaluate import evaluate

effect = load_script("missing_item_effect")


def test_drop_item_before_valid(cyclic_split):
    damaged = drop_item_before_valid(cyclic_split, [1, 3])
    for user, items in cyclic_split.train.items():
        expected = items[:-1] if user in (1, 3) else items
        assert damaged.train[user] == expected
    assert cyclic_split.train[1][-1] == cyclic_split.valid[1] - 1  # the original is untouched
    assert damaged.valid == cyclic_split.valid and damaged.test == cyclic_split.test
    with pytest.raises(KeyError):
        drop_item_before_valid(cyclic_split, [999])


def oracle_score_last(inputs: torch.Tensor, num_items: int = 20) -> torch.Tensor:
    """Knows the cycle: 1.0 for last item + 1, 0.5 for the item after that, 0 elsewhere."""
    scores = torch.zeros(inputs.shape[0], num_items + 1)
    guess = inputs[:, -1] % num_items + 1
    rows = torch.arange(inputs.shape[0])
    scores[rows, guess] = 1.0
    scores[rows, guess % num_items + 1] = 0.5
    return scores


def test_damage_moves_the_target_one_rank_down(cyclic_split):
    """Without the item before the target the oracle guesses the dropped item first."""
    users = [2, 5, 7, 11]
    metrics = effect.damaged_valid_metrics(oracle_score_last, cyclic_split, users, max_len=10)
    damaged_ndcg = 1 / math.log2(3)  # rank 1 (0-based)
    share = len(users) / len(cyclic_split.valid)
    assert metrics["ndcg@10_damaged_users"] == pytest.approx(damaged_ndcg)
    assert metrics["ndcg@10_other_users"] == 1.0
    assert metrics["ndcg@10"] == pytest.approx(share * damaged_ndcg + 1 - share)
    assert metrics["hit@10"] == 1.0
    none = effect.damaged_valid_metrics(oracle_score_last, cyclic_split, [], max_len=10)
    assert none["ndcg@10"] == 1.0 and none["ndcg@10_damaged_users"] == -1.0


def test_cli_on_a_trained_run(tmp_path, capsys):
    _, fp32, _ = train_tiny_runs(tmp_path, epochs=2)
    out = tmp_path / "effect.json"
    assert effect.main(["--run", str(fp32), "--users", "40", "--seeds", "0", "--out",
                        str(out)]) == 0
    result = json.loads(out.read_text())
    split = leave_one_out(cyclic_dataset())
    model = load_run(fp32).model
    for which in ("valid", "test"):
        expected = evaluate(model.score_last, split, which, max_len=10)
        assert result["intact"][which]["ndcg@10"] == pytest.approx(expected["ndcg@10"])
    everyone = evaluate(model.score_last, drop_item_before_valid(split, split.valid), "valid",
                        max_len=10)
    assert result["damaged_valid"][0]["ndcg@10"] == pytest.approx(everyone["ndcg@10"])
    assert result["damaged_valid_mean"]["hit@10"] == pytest.approx(everyone["hit@10"])
    assert "damaged" in capsys.readouterr().out


def test_bad_users_exit_2(tmp_path, capsys):
    _, fp32, _ = train_tiny_runs(tmp_path, epochs=1)
    assert effect.main(["--run", str(fp32), "--users", "41"]) == 2
    assert "--users must lie in 1..40" in capsys.readouterr().err
    assert effect.main(["--run", str(fp32), "--users", "0"]) == 2  # no damaged users to mean
    assert "--users must lie in 1..40" in capsys.readouterr().err
    assert effect.main(["--run", str(fp32), "--out", str(tmp_path)]) == 2  # a folder
    assert f"--out {tmp_path} is a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # argparse's own exit, status 2
        effect.main(["--run", str(fp32), "--seeds", "-1"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --seeds: a seed is an integer in [0, 4294967295], got -1" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert effect.main(["--run", str(tmp_path / "nope")]) == 2

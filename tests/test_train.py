"""Trainer: learning, early stopping, atomic checkpoints, resume, NaN handling."""
import json

import pytest
import torch

from qat import NonFiniteError, SASRec, SASRecConfig, Trainer, TrainConfig, TrainHooks
from qat.checkpoint import load_checkpoint
from qat.metrics_record import MetricsRecord
from qat.records import file_sha256

MODEL = dict(num_items=20, max_len=10, hidden=16, blocks=1, heads=1, dropout=0.1)


def make_trainer(split, out, **train_kw):
    torch.manual_seed(0)
    cfg = SASRecConfig(**MODEL)
    train = TrainConfig(**{"epochs": 4, "batch_size": 8, "lr": 1e-2, "progress": False,
                           "patience": 100, **train_kw})
    return Trainer(SASRec(cfg), split, cfg, train, out)


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_learns_a_deterministic_sequence(cyclic_split, tmp_path, loss):
    metrics = make_trainer(cyclic_split, tmp_path, epochs=30, loss=loss).fit()
    # chance level is Hit@10 ~ 10/17 of unseen items only by luck; the cycle is fully learnable
    assert metrics.test["hit@10"] == 1.0
    assert metrics.test["ndcg@10"] > 0.8
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["record"] == "metrics" and on_disk["schema"] == 1
    assert set(on_disk["valid"]) >= {"ndcg@10", "hit@10"}
    assert on_disk["test"]["ndcg@10"] == metrics.test["ndcg@10"]
    assert MetricsRecord.load(tmp_path / "metrics.json") == metrics
    assert metrics.checkpoint_sha256 == file_sha256(tmp_path / "checkpoint.pt")
    assert metrics.is_current(tmp_path, quantized=False)
    assert not metrics.is_current(tmp_path, quantized=True)  # no INT8 model measured
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"]["hidden"] == 16 and config["train"]["loss"] == loss


def test_resume_continues_exactly(cyclic_split, tmp_path):
    straight = make_trainer(cyclic_split, tmp_path / "a", epochs=4)
    straight.fit()
    first = make_trainer(cyclic_split, tmp_path / "b", epochs=2)
    first.fit()
    resumed = make_trainer(cyclic_split, tmp_path / "b", epochs=4)
    resumed.fit(resume=True)
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert b["state"]["epoch"] == 4
    for name, tensor in a["state"]["model"].items():
        torch.testing.assert_close(b["state"]["model"][name], tensor, atol=0, rtol=0)
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]


def test_existing_run_needs_resume(cyclic_split, tmp_path):
    make_trainer(cyclic_split, tmp_path, epochs=1).fit()
    with pytest.raises(FileExistsError, match="--resume"):
        make_trainer(cyclic_split, tmp_path, epochs=1).fit()


def test_resume_with_another_architecture_is_refused(cyclic_split, tmp_path):
    make_trainer(cyclic_split, tmp_path, epochs=1).fit()
    cfg = SASRecConfig(**{**MODEL, "hidden": 8})
    other = Trainer(SASRec(cfg), cyclic_split, cfg, TrainConfig(epochs=2, progress=False), tmp_path)
    with pytest.raises(ValueError, match="cannot resume"):
        other.fit(resume=True)


def test_early_stopping_stops_and_keeps_best(cyclic_split, tmp_path):
    trainer = make_trainer(cyclic_split, tmp_path, epochs=50, lr=0.0 + 1e-12, patience=2)
    metrics = trainer.fit()
    # with a negligible learning rate nothing improves after the first evaluation
    assert metrics.epochs_run == 3 and metrics.best_epoch == 1


def test_nan_loss_stops_with_location_and_keeps_last_good_checkpoint(cyclic_split, tmp_path):
    trainer = make_trainer(cyclic_split, tmp_path, epochs=3)
    calls = {"n": 0}
    steps_per_epoch = len(trainer.batcher)

    def poison(progress):
        calls["n"] += 1
        return torch.tensor(float("nan") if calls["n"] == steps_per_epoch + 2 else 0.0)

    trainer.hooks = TrainHooks(regularizer=poison)
    with pytest.raises(NonFiniteError, match=r"epoch 2, step 2/.*last good checkpoint"):
        trainer.fit()
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["state"]["epoch"] == 1 and not ckpt["finished"]
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_step_leaving_a_nan_weight_is_undone_and_stops(cyclic_split, tmp_path):
    # A finite loss can still come with a step that blows a weight up (huge lr): the old loop
    # only looked at the loss, validated the NaN model as a perfect one and kept it as best.
    trainer = make_trainer(cyclic_split, tmp_path, epochs=3)
    steps_per_epoch = len(trainer.batcher)
    real_step, calls = trainer.optimizer.step, {"n": 0}

    def exploding_step(*args, **kwargs):
        result = real_step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == steps_per_epoch + 3:  # epoch 2, step 3
            with torch.no_grad():
                next(trainer.model.parameters()).view(-1)[0] = float("nan")
        return result

    trainer.optimizer.step = exploding_step
    with pytest.raises(NonFiniteError, match=r"weight became non-finite .* at epoch 2, step 3/"):
        trainer.fit()
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["state"]["epoch"] == 1 and ckpt["best_epoch"] == 1
    # undone: the model in memory is the checkpointed epoch-1 state, every weight finite
    for name, tensor in trainer.model.state_dict().items():
        torch.testing.assert_close(tensor, ckpt["state"]["model"][name], atol=0, rtol=0)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["train"]["epochs"] == 3


def test_nan_model_scores_zero(cyclic_split, tmp_path):
    trainer = make_trainer(cyclic_split, tmp_path)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.fill_(float("nan"))
    valid = trainer.evaluate("valid")
    assert valid["ndcg@10"] == 0.0 and valid["hit@10"] == 0.0


def _config_bytes(folder):
    return (folder / "config.json").read_bytes(), (folder / "checkpoint.pt").read_bytes()


@pytest.mark.parametrize("change, message", [
    ({"lr": 1e9}, r"lr 0\.01 \(asked: 1000000000\.0\)"),
    ({"seed": 7}, r"seed 42 \(asked: 7\)"),
    ({"batch_size": 4}, r"batch_size 8 \(asked: 4\)"),
])
def test_resume_refuses_changed_settings_and_writes_nothing(cyclic_split, tmp_path, change,
                                                            message):
    make_trainer(cyclic_split, tmp_path, epochs=1).fit()
    before = _config_bytes(tmp_path)
    with pytest.raises(ValueError, match="cannot resume: .*" + message):
        make_trainer(cyclic_split, tmp_path, epochs=2, **change).fit(resume=True)
    assert _config_bytes(tmp_path) == before


def test_refused_resume_of_another_model_leaves_config_json(cyclic_split, tmp_path):
    make_trainer(cyclic_split, tmp_path, epochs=1).fit()
    before = _config_bytes(tmp_path)
    cfg = SASRecConfig(**{**MODEL, "max_len": 5})
    other = Trainer(SASRec(cfg), cyclic_split, cfg, TrainConfig(epochs=2, progress=False), tmp_path)
    with pytest.raises(ValueError, match="cannot resume"):
        other.fit(resume=True)
    assert _config_bytes(tmp_path) == before


def test_resume_may_extend_epochs_and_records_it(cyclic_split, tmp_path):
    make_trainer(cyclic_split, tmp_path, epochs=1).fit()
    make_trainer(cyclic_split, tmp_path, epochs=2, patience=50).fit(resume=True)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["train"]["patience"] == 50
    assert load_checkpoint(tmp_path / "checkpoint.pt")["state"]["epoch"] == 2


def test_checkpoint_with_damaged_weights_is_refused(cyclic_split, tmp_path):
    make_trainer(cyclic_split, tmp_path, epochs=1).fit()
    path = tmp_path / "checkpoint.pt"
    raw = bytearray(path.read_bytes())
    # overwrite 16 bytes inside the best model's first weight tensor (torch stores tensors
    # uncompressed in the zip; its reader does not check the entries' CRC)
    table = load_checkpoint(path)["model"]["item_emb.weight"]
    needle = table[1, :8].numpy().tobytes()  # row 0 is the all-zero padding row
    at = bytes(raw).index(needle)
    raw[at:at + 16] = b"\x7f" * 16
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=f"{path} is corrupt: its content does not match"):
        load_checkpoint(path)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(path)

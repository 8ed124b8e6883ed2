"""Trainer: learning, early stopping, atomic checkpoints, resume, NaN handling."""
import copy
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


def _straight_and_resumed(split, tmp_path, **kw) -> tuple[dict, dict]:
    """Checkpoints of 4 epochs straight and of 2 epochs then resumed to 4; asserts they match
    bit for bit (weights and loss history)."""
    make_trainer(split, tmp_path / "a", epochs=4, **kw).fit()
    make_trainer(split, tmp_path / "b", epochs=2, **kw).fit()
    make_trainer(split, tmp_path / "b", epochs=4, **kw).fit(resume=True)
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert b["state"]["epoch"] == 4
    for name, tensor in a["state"]["model"].items():
        torch.testing.assert_close(b["state"]["model"][name], tensor, atol=0, rtol=0)
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]
    return a, b


def test_resume_continues_exactly(cyclic_split, tmp_path):
    _straight_and_resumed(cyclic_split, tmp_path)


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


def test_resume_without_a_checkpoint_starts_the_run_and_says_so(cyclic_split, tmp_path, capsys):
    """--resume where no checkpoint was written yet (killed in the first epoch, or a new
    folder) starts the run, with one line saying so (a mistyped --out is then visible)."""
    metrics = make_trainer(cyclic_split, tmp_path / "new", epochs=1).fit(resume=True)
    assert metrics.epochs_run == 1
    assert f"--resume: no checkpoint in {tmp_path / 'new'} yet; starting the run" in \
        capsys.readouterr().out


def test_resume_may_extend_epochs_and_records_it(cyclic_split, tmp_path):
    make_trainer(cyclic_split, tmp_path, epochs=1).fit()
    make_trainer(cyclic_split, tmp_path, epochs=2, patience=50).fit(resume=True)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["train"]["patience"] == 50
    assert load_checkpoint(tmp_path / "checkpoint.pt")["state"]["epoch"] == 2


def test_resume_with_more_patience_continues_an_early_stopped_run(cyclic_split, tmp_path,
                                                                  capsys):
    """--patience may change on resume: a run that stopped early continues under a larger one
    and ends with the weights, history and metrics of a run given that patience from the start;
    resumed again with the old patience it stays stopped (metrics recomputed only)."""
    kw = dict(epochs=12, lr=3e-3)
    early = make_trainer(cyclic_split, tmp_path / "early", patience=1, **kw).fit()
    assert early.epochs_run < 12  # stopped after one evaluation without improvement
    straight = make_trainer(cyclic_split, tmp_path / "straight", patience=4, **kw).fit()
    assert straight.epochs_run > early.epochs_run
    capsys.readouterr()
    resumed = make_trainer(cyclic_split, tmp_path / "early", patience=4, **kw).fit(resume=True)
    assert f"continuing a run that stopped early at epoch {early.epochs_run}" in \
        capsys.readouterr().out
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "early" / "checkpoint.pt")
    for name, tensor in a["state"]["model"].items():
        torch.testing.assert_close(b["state"]["model"][name], tensor, atol=0, rtol=0)
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]

    def scores(m):  # (evaluation seconds differ)
        return m.epochs_run, m.best_epoch, m.valid["ndcg@10"], m.test["ndcg@10"]
    assert scores(resumed) == scores(straight)
    again = make_trainer(cyclic_split, tmp_path / "early", patience=1, **kw).fit(resume=True)
    assert scores(again) == scores(resumed)


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


# -- --loss sampled-ce ------------------------------------------------------------------------

@pytest.mark.parametrize("sampling", ["uniform", "popularity"])
def test_sampled_ce_learns_a_deterministic_sequence(cyclic_split, tmp_path, sampling):
    # 5 shared negatives out of 20 items per batch
    metrics = make_trainer(cyclic_split, tmp_path, epochs=30, loss="sampled-ce", negatives=5,
                           negative_sampling=sampling).fit()
    assert metrics.test["hit@10"] == 1.0
    assert metrics.test["ndcg@10"] > 0.8
    config = json.loads((tmp_path / "config.json").read_text())["train"]
    assert (config["loss"], config["negatives"], config["negative_sampling"]) == (
        "sampled-ce", 5, sampling)


def test_sampled_ce_resume_continues_exactly(cyclic_split, tmp_path):
    a, b = _straight_and_resumed(cyclic_split, tmp_path, loss="sampled-ce", negatives=4,
                                 negative_sampling="popularity")
    assert torch.equal(a["state"]["sampler_rng"], b["state"]["sampler_rng"])


def test_sampled_ce_resume_needs_the_sampler_state(cyclic_split, tmp_path, monkeypatch):
    """The check above is sensitive: a resume that leaves the sampler's generator at its seed
    draws other negatives after the resume and ends with other weights."""
    kw = dict(loss="sampled-ce", negatives=4)
    make_trainer(cyclic_split, tmp_path / "a", epochs=3, **kw).fit()
    make_trainer(cyclic_split, tmp_path / "b", epochs=2, **kw).fit()
    monkeypatch.setattr("qat.negative_sampling.NegativeSampler.set_state",
                        lambda self, state: None)
    make_trainer(cyclic_split, tmp_path / "b", epochs=3, **kw).fit(resume=True)
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["state"]["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["state"]["model"]
    assert not all(torch.equal(a[name], b[name]) for name in a)


def test_sampling_settings_are_not_resumable_changes():
    from qat.train import RESUMABLE_CHANGES
    assert {"loss", "negatives", "negative_sampling"}.isdisjoint(RESUMABLE_CHANGES)


@pytest.mark.parametrize("change, message", [
    ({"negatives": 7}, r"negatives 4 \(asked: 7\)"),
    ({"negative_sampling": "popularity"}, r"negative_sampling 'uniform' \(asked: 'popularity'\)"),
    ({"loss": "ce"}, r"loss 'sampled-ce' \(asked: 'ce'\)"),
])
def test_resume_refuses_changed_sampling_and_writes_nothing(cyclic_split, tmp_path, change,
                                                            message):
    kw = dict(loss="sampled-ce", negatives=4, negative_sampling="uniform")
    make_trainer(cyclic_split, tmp_path, epochs=1, **kw).fit()
    before = _config_bytes(tmp_path)
    with pytest.raises(ValueError, match="cannot resume: .*" + message):
        make_trainer(cyclic_split, tmp_path, epochs=2, **{**kw, **change}).fit(resume=True)
    assert _config_bytes(tmp_path) == before


def test_sampled_ce_step_uses_the_trainer_generator_only(cyclic_split, tmp_path):
    """Negatives come from the sampler's generator: torch's global RNG (dropout) and the
    batcher's numpy RNG advance exactly as with --loss ce, so both losses see the same batches
    and dropout masks for a seed."""
    states = {}
    for loss in ("ce", "sampled-ce"):
        trainer = make_trainer(cyclic_split, tmp_path / loss, loss=loss, negatives=3)
        batch = next(iter(trainer.batcher.epoch(trainer.rng)))
        torch.manual_seed(1)
        trainer.step(batch, 0.0)
        states[loss] = (torch.get_rng_state(), trainer.rng.bit_generator.state)
    assert torch.equal(states["ce"][0], states["sampled-ce"][0])
    assert states["ce"][1] == states["sampled-ce"][1]


def test_train_qat_cli_trains_fp32_and_qat_with_sampled_ce(cyclic_file, tmp_path):
    from conftest import TINY_TRAIN, run_in_process
    flags = ["--data", cyclic_file, *TINY_TRAIN, "--epochs", "1", "--loss", "sampled-ce",
             "--negatives", "6", "--negative-sampling", "popularity"]
    fp32 = run_in_process("train_qat", *flags, "--out", tmp_path / "fp32")
    assert fp32.returncode == 0, fp32.stderr
    qat = run_in_process("train_qat", *flags, "--qconfig", "ste", "--init-from", tmp_path / "fp32",
                         "--out", tmp_path / "ste")
    assert qat.returncode == 0, qat.stderr
    metrics = json.loads((tmp_path / "ste" / "metrics.json").read_text())
    assert 0 <= metrics["int8"]["test"]["ndcg@10"] <= 1
    assert (tmp_path / "ste" / "model_int8.pt").is_file()
    for run in ("fp32", "ste"):
        train = json.loads((tmp_path / run / "config.json").read_text())["train"]
        assert (train["loss"], train["negatives"], train["negative_sampling"]) == (
            "sampled-ce", 6, "popularity")
    assert load_checkpoint(tmp_path / "ste" / "checkpoint.pt")["state"]["sampler_rng"] is not None


@pytest.mark.parametrize("extra, message", [
    (["--negatives", "8"], "--negatives applies to --loss sampled-ce, not --loss ce"),
    (["--loss", "bce", "--negative-sampling", "popularity"], "--negative-sampling applies to"),
    (["--loss", "sampled-ce", "--negatives", "0"], "(--negatives) must be a positive integer"),
    (["--loss", "sampled-ce", "--negative-sampling", "zipf"], "invalid choice: 'zipf'"),
])
def test_train_qat_cli_refuses_bad_sampling_flags(cyclic_file, tmp_path, extra, message):
    from conftest import TINY_TRAIN, run_in_process
    done = run_in_process("train_qat", "--data", cyclic_file, *TINY_TRAIN, "--epochs", "1",
                          *extra, "--out", tmp_path / "run")
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_sampled_ce_with_the_whole_catalogue_is_the_trainers_ce(cyclic_split, tmp_path):
    """Default N = 3000 > 20 items: uniform negatives are the whole catalogue, so the Trainer's
    sampled-ce loss is its full-softmax ce loss (same weights, dropout off)."""
    ce = make_trainer(cyclic_split, tmp_path / "ce")
    sampled = make_trainer(cyclic_split, tmp_path / "sampled", loss="sampled-ce")
    assert sampled.sampler.negatives == 20
    batch = next(iter(ce.batcher.epoch(ce.rng)))
    for trainer in (ce, sampled):
        trainer.model.eval()
    torch.testing.assert_close(sampled._loss(batch, 0.0), ce._loss(batch, 0.0), atol=1e-5,
                               rtol=1e-6)


def test_init_from_an_unfinished_run_says_so(tmp_path):
    """Fine-tuning from an FP32 run whose training did not finish (killed, or still running):
    allowed (its best model so far), with a note naming the epochs."""
    from conftest import TINY_TRAIN, run_in_process, train_tiny_runs

    from qat.checkpoint import save_checkpoint

    data, fp32, _ = train_tiny_runs(tmp_path)
    ckpt = load_checkpoint(fp32 / "checkpoint.pt")
    ckpt["finished"] = False  # as a run interrupted after its first epoch leaves it
    save_checkpoint(ckpt, fp32 / "checkpoint.pt")
    result = run_in_process("train_qat", "--data", data, *TINY_TRAIN, "--epochs", "1",
                            "--qconfig", "ste", "--init-from", fp32, "--out", tmp_path / "ste")
    assert result.returncode == 0, result.stderr
    assert (f"note: --init-from {fp32} has not finished training (epoch 1); fine-tuning starts "
            "from its best model so far (epoch 1)") in result.stderr


def _adam_reference_step(p, grad, m, v, t, lr, betas, wd, eps=1e-8):
    """Kingma & Ba's Adam (torch's L2 weight decay folded into the gradient), in float64."""
    g = grad + wd * p
    m = betas[0] * m + (1 - betas[0]) * g
    v = betas[1] * v + (1 - betas[1]) * g * g
    m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
    return p - lr * m_hat / (v_hat.sqrt() + eps), m, v


def test_trainer_adam_is_fused_and_steps_by_adams_formula(cyclic_split, tmp_path):
    from qat.train import make_adam
    trainer = make_trainer(cyclic_split, tmp_path, weight_decay=0.01)
    assert trainer.optimizer.defaults["fused"] is True  # CPU float parameters: the fused kernel
    torch.manual_seed(1)
    w = torch.nn.Parameter(torch.randn(7, 5))
    optimizer = make_adam([{"params": [w]}], lr=1e-2, weight_decay=0.01)
    p, m = w.detach().double().clone(), torch.zeros(7, 5, dtype=torch.float64)
    v = torch.zeros_like(m)
    for t in range(1, 4):
        grad = torch.randn(7, 5)
        w.grad = grad.clone()
        optimizer.step()
        p, m, v = _adam_reference_step(p, grad.double(), m, v, t, 1e-2, (0.9, 0.98), 0.01)
        torch.testing.assert_close(w.detach().double(), p, rtol=1e-6, atol=1e-7)


def test_fused_adam_resumes_the_state_of_the_per_parameter_loop():
    """A checkpoint written by the loop implementation (runs before the fused one) resumes,
    and the optimizer stays fused."""
    from qat.train import load_optimizer_state, make_adam
    torch.manual_seed(2)
    grads = [torch.randn(4, 3) for _ in range(4)]
    a = torch.nn.Parameter(torch.randn(4, 3))
    b = torch.nn.Parameter(a.detach().clone())
    loop = torch.optim.Adam([a], lr=1e-2, betas=(0.9, 0.98), foreach=False)
    for grad in grads[:2]:
        a.grad = grad.clone()
        loop.step()
    fused = make_adam([{"params": [b]}], lr=1e-2, weight_decay=0.0)
    b.data.copy_(a.detach())
    load_optimizer_state(fused, copy.deepcopy(loop.state_dict()))  # as read from a checkpoint
    assert fused.param_groups[0]["fused"] is True  # torch's load would take the loop's None
    for grad in grads[2:]:
        a.grad, b.grad = grad.clone(), grad.clone()
        loop.step()
        fused.step()
    assert fused.state[b]["step"].item() == 4
    torch.testing.assert_close(b.detach(), a.detach(), rtol=1e-6, atol=1e-7)


def test_loading_places_the_steps_as_the_live_optimizer_needs_them():
    """torch places each saved ``step`` by the *saved* groups' flags (fused: float32 on the
    parameter's device); a loop-Adam checkpoint written on a GPU keeps its steps on the CPU,
    where the fused CUDA kernel refuses them. Here the misplaced step is a float64 one: the
    fused optimizer must get it as float32, as it would get a CPU step moved to the GPU."""
    from qat.train import load_optimizer_state, make_adam
    w = torch.nn.Parameter(torch.randn(3))
    loop = torch.optim.Adam([w], lr=1e-2, betas=(0.9, 0.98), foreach=False)
    w.grad = torch.ones(3)
    loop.step()
    state = copy.deepcopy(loop.state_dict())
    state["state"][0]["step"] = torch.tensor(1.0, dtype=torch.float64)
    fused = make_adam([{"params": [w]}], lr=1e-2, weight_decay=0.0)
    load_optimizer_state(fused, state)
    step = fused.state[w]["step"]
    assert step.dtype == torch.float32 and step.device == w.device and step.item() == 1
    fused.step()  # the fused kernel takes it
    assert fused.state[w]["step"].item() == 2


def test_a_fused_adam_checkpoint_resumes_into_the_loop_where_there_is_no_kernel():
    from qat.train import load_optimizer_state, make_adam
    w = torch.nn.Parameter(torch.randn(3))
    fused = make_adam([{"params": [w]}], lr=1e-2, weight_decay=0.0)
    w.grad = torch.ones(3)
    fused.step()
    loop = torch.optim.Adam([w], lr=1e-2, betas=(0.9, 0.98), foreach=False)
    load_optimizer_state(loop, copy.deepcopy(fused.state_dict()))
    assert loop.param_groups[0]["fused"] is None and loop.param_groups[0]["foreach"] is False
    assert loop.state[w]["step"].item() == 1
    loop.step()  # the loop continues from the fused state
    assert loop.state[w]["step"].item() == 2

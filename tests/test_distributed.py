"""Data-parallel training (DDP, gloo) on 2 local CPU processes, against 1 process.

Each multi-process test spawns two real processes that join a gloo group and run one function
of this module (results come back through ``torch.save`` files). What is checked:

* the shards of every global batch are a partition of the one-process batch (DistributedSampler);
* 2 processes with the same global batch and seed follow 1 process's loss curve (FP32 and STE,
  whose activation observers all-reduce their batch ranges), and end with the same weights;
* every quantizer buffer and parameter of all six methods is equal on both ranks after a few
  steps, and the converted INT8 model is the same from either rank;
* sharded validation (full ranking and sampled) gives the one-process metrics exactly;
* ``train_run`` under 2 processes writes only rank 0's folder, and refuses ranks that read
  different data.
"""
from __future__ import annotations

import os
import socket
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import cyclic_dataset

from data import TrainBatcher, leave_one_out, write_sasrec_text
from qat.checkpoint import content_digest
from qat.config import SASRecConfig, TrainConfig
from qat.distributed import DistributedContext, PeerFailed, shard_bounds
from qat.finetune import calibration_inputs, prepare_for_method, qat_hooks, to_int8
from qat.model import SASRec
from qat.registry import get_method
from qat.train import Trainer
from qat.train_run import TrainRunOptions, train_run

METHODS = ("ste", "lsq", "pact", "adaround", "apot", "dorefa")
STEPS = 8  # over an epoch boundary, through the epoch's short last batch
GLOBAL_BATCH = 8
WORLD = 2
# Not a multiple of the global batch or of WORLD: each epoch ends with a batch of one user,
# which rank 1 fills with a ghost row (no targets), so the processes still compute exactly the
# one-process batches (TrainBatcher.epoch).
NUM_USERS = 41


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn: Callable[..., Any], rank: int, world: int, port: int, out: str,
           args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    status = 1
    try:
        result = fn(DistributedContext(torch.device("cpu"), rank, world, rank), *args)
        torch.save(result, Path(out) / f"rank{rank}.pt")
        status = 0
    except BaseException:
        traceback.print_exc()
    finally:
        dist.destroy_process_group()
        # leave without finalizing, as scripts/train_qat.py does under torchrun: a gloo thread
        # that DDP keeps alive can abort Python's finalization (SIGABRT, a few % of exits)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def run_ranks(fn: Callable[..., Any], tmp_path: Path, *args: Any) -> list[Any]:
    """``fn(context, *args)`` on ``WORLD`` spawned gloo processes; their results by rank."""
    spawn = mp.get_context("spawn")
    port = _free_port()
    procs = [spawn.Process(target=_entry, args=(fn, rank, WORLD, port, str(tmp_path), args))
             for rank in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0] * WORLD
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


# -- what each process runs ----------------------------------------------------------------------
CONFIG = SASRecConfig(num_items=20, max_len=10, hidden=8, blocks=1, heads=1, dropout=0.0)


def _trainer(ctx: DistributedContext, method: str, out: Path) -> Trainer:
    split = leave_one_out(cyclic_dataset(num_users=NUM_USERS))
    torch.manual_seed(0)
    model = SASRec(CONFIG)
    train = TrainConfig(batch_size=GLOBAL_BATCH, lr=3e-3, progress=False, eval_batch_size=7)
    hooks = None
    if method != "fp32":
        qat = get_method(method)
        calibration = calibration_inputs(split, CONFIG.max_len, GLOBAL_BATCH, seed=0)
        model = prepare_for_method(model, qat, 8, calibration)
        hooks = qat_hooks(model, qat, lr=train.lr, quant_lr=1e-3)
    return Trainer(model, split, CONFIG, train, out, method=method, hooks=hooks, context=ctx)


def train_steps(ctx: DistributedContext, method: str) -> dict[str, Any]:
    """``STEPS`` optimizer steps (over an epoch boundary); losses, state and INT8 digest."""
    trainer = _trainer(ctx, method, Path("unused"))
    losses = []
    while len(losses) < STEPS:
        for batch in trainer.batcher.epoch(trainer.rng, rank=ctx.rank, world_size=ctx.world_size):
            losses.append(trainer.step(batch, len(losses) / STEPS))
            if len(losses) == STEPS:
                break
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result: dict[str, Any] = {"losses": losses, "state": state}
    if method != "fp32":
        # keep the INT8 model alive while reading its state: an unpacked quantized embedding's
        # per-channel scales point into the packed params (torch 2.13), freed with the module
        int8 = to_int8(trainer.model)
        result["int8_digest"] = content_digest(int8.state_dict())
    return result


def train_all_methods(ctx: DistributedContext) -> dict[str, Any]:
    return {method: train_steps(ctx, method) for method in ("fp32", *METHODS)}


def evaluate_sharded(ctx: DistributedContext, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    trainer = _trainer(ctx, "fp32", Path("unused"))
    trainer.model.load_state_dict(state)
    return {"valid": trainer.evaluate("valid"), "test": trainer.evaluate("test"),
            "sampled": trainer.evaluate("test", sampled_negatives=5, seed=3)}


def run_cli_options(ctx: DistributedContext, data: str, root: str) -> dict[str, Any]:
    out = Path(root) / f"run_rank{ctx.rank}"  # rank 1's folder must never appear
    metrics = train_run(TrainRunOptions(data=data, out=out, max_len=10, hidden=8, blocks=1,
                                        heads=1, batch_size=8, epochs=2, threads=1,
                                        progress=False, device="cpu"), ctx)
    return metrics.to_json()


def different_data(ctx: DistributedContext, root: str) -> str:
    data = Path(root) / f"data{ctx.rank}.txt"
    write_sasrec_text(cyclic_dataset(num_users=40 + ctx.rank), data)
    try:
        train_run(TrainRunOptions(data=str(data), out=Path(root) / "run", max_len=10, hidden=8,
                                  blocks=1, epochs=1, progress=False, device="cpu"), ctx)
    except (ValueError, PeerFailed) as err:
        return f"{type(err).__name__}: {err}"
    return "no error"


# -- tests ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bucket", [False, True])
@pytest.mark.parametrize("num_users", [40, 41])
def test_rank_shards_partition_each_global_batch(bucket, num_users):
    split = leave_one_out(cyclic_dataset(num_users=num_users))
    batcher = TrainBatcher(split, max_len=10, batch_size=GLOBAL_BATCH, bucket=bucket,
                           bucket_size=2)
    whole = list(batcher.epoch(np.random.default_rng(5)))
    shards = [list(batcher.epoch(np.random.default_rng(5), rank=r, world_size=WORLD))
              for r in range(WORLD)]
    assert len(shards[0]) == len(shards[1]) == len(whole) == len(batcher)
    ghosts = 0
    for i, batch in enumerate(whole):
        parts = [shards[r][i] for r in range(WORLD)]
        assert len(parts[0].users) == len(parts[1].users)  # every rank does the same work
        # rank r takes rows r, r + 2, ... of the batch padded with ghost rows: copies of its
        # first rows whose targets are all 0 (user 0), so they add nothing to the loss
        rows = len(batch.users)
        padded = rows + (-rows) % WORLD
        users = torch.zeros(padded, dtype=torch.long)
        inputs = torch.zeros(padded, batch.inputs.shape[1], dtype=torch.long)
        targets = torch.zeros_like(inputs)
        for r, part in enumerate(parts):
            users[r::WORLD], inputs[r::WORLD], targets[r::WORLD] = (part.users, part.inputs,
                                                                    part.targets)
        assert users[:rows].tolist() == batch.users.tolist() and not users[rows:].any()
        assert torch.equal(inputs[:rows], batch.inputs)
        assert torch.equal(targets[:rows], batch.targets) and not targets[rows:].any()
        assert torch.equal(inputs[rows:], batch.inputs[:padded - rows])  # copies of its rows
        ghosts += padded - rows
    assert ghosts == (0 if num_users % WORLD == 0 else 1)  # the epoch's last batch only


def test_shard_bounds_cover_the_range_in_order():
    for count in (0, 1, 5, 6, 7):
        for world in (1, 2, 3):
            pieces = [range(*shard_bounds(count, r, world)) for r in range(world)]
            assert [i for p in pieces for i in p] == list(range(count))


@pytest.mark.parametrize("world, batch, message", [
    (41, 8, r"41 processes but only 40 training users"),
    (3, 8, r"--batch-size 8 is the global batch and must be a multiple of the 3 processes"),
])
def test_unshardable_runs_are_refused(world, batch, message):
    batcher = TrainBatcher(leave_one_out(cyclic_dataset()), max_len=10, batch_size=batch)
    with pytest.raises(ValueError, match=message):
        batcher.check_shardable(world)


@pytest.fixture(scope="module")
def two_process_training(tmp_path_factory):
    return run_ranks(train_all_methods, tmp_path_factory.mktemp("ddp"))


# Tolerances of 2 processes against 1 (same global batch, seed, dropout 0). The sums differ in
# order only, but the key projection's bias has an exact gradient of 0 (softmax is invariant to
# it), so Adam turns the rounding noise left in its place into lr-sized steps of either sign. In
# FP32 that bias cannot change the loss; under fake quantization it shifts where the keys are
# rounded, so the STE curve drifts by up to ~3e-4 relative over these steps.
LOSS_RTOL = {"fp32": 2e-5, "ste": 1e-3}
WEIGHT_ATOL = {"fp32": 1e-5, "ste": 2e-3}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fp32", "ste"])
def test_two_processes_follow_the_one_process_loss_curve(method, two_process_training):
    one = train_steps(DistributedContext(torch.device("cpu")), method)
    for rank in range(WORLD):
        got = two_process_training[rank][method]
        # each rank reports the global batch's loss (the mean of the ranks' scaled losses)
        np.testing.assert_allclose(got["losses"], one["losses"], rtol=LOSS_RTOL[method])
        for name, value in one["state"].items():
            if name.endswith("k_proj.bias"):  # see above: free to wander by lr per step
                continue
            torch.testing.assert_close(got["state"][name], value, rtol=1e-4,
                                       atol=WEIGHT_ATOL[method], msg=f"{method} {name}")


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_quantizer_state_and_int8_model_are_identical_on_every_rank(method,
                                                                    two_process_training):
    rank0, rank1 = (two_process_training[r][method] for r in range(WORLD))
    assert rank0["losses"] == rank1["losses"]
    assert rank0["state"].keys() == rank1["state"].keys()
    quantizer_keys = [k for k in rank0["state"] if "fake_quant" in k]
    assert quantizer_keys, "no quantizer state found"
    for name in rank0["state"]:  # weights, quantizer parameters and every observer buffer
        assert torch.equal(rank0["state"][name], rank1["state"][name]), name
    assert rank0["int8_digest"] == rank1["int8_digest"]
    # the quantizers did move during the steps (the check above is not trivially true)
    start = _trainer(DistributedContext(torch.device("cpu")), method, Path("unused"))
    moved = [k for k in quantizer_keys
             if not torch.equal(start.model.state_dict()[k], rank0["state"][k])]
    assert moved, f"{method}: no quantizer state changed in {STEPS} steps"


@pytest.mark.slow
def test_sharded_validation_gives_the_one_process_metrics(two_process_training, tmp_path):
    state = two_process_training[0]["fp32"]["state"]
    got = run_ranks(evaluate_sharded, tmp_path, state)
    one = evaluate_sharded(DistributedContext(torch.device("cpu")), state)
    for rank in range(WORLD):
        for which in one:
            for key in ("ndcg@10", "hit@10", "users"):
                assert got[rank][which][key] == one[which][key], (rank, which, key)


@pytest.mark.slow
def test_train_run_on_two_processes_writes_only_rank_0s_folder(tmp_path):
    data = tmp_path / "cyclic.txt"
    write_sasrec_text(cyclic_dataset(), data)
    metrics = run_ranks(run_cli_options, tmp_path, str(data), str(tmp_path))
    assert metrics[0]["processes"] == WORLD and metrics[0]["device"] == "cpu"
    for which in ("valid", "test"):
        assert metrics[0][which]["ndcg@10"] == metrics[1][which]["ndcg@10"]
    assert metrics[0]["checkpoint_sha256"] == metrics[1]["checkpoint_sha256"]
    written = sorted(p.name for p in (tmp_path / "run_rank0").iterdir())
    assert written == ["checkpoint.pt", "config.json", "item_ids.json", "metrics.json"]
    assert not (tmp_path / "run_rank1").exists()


@pytest.mark.slow
def test_processes_reading_different_data_are_refused(tmp_path):
    errors = run_ranks(different_data, tmp_path, str(tmp_path))
    for error in errors:
        assert error.startswith("ValueError: the processes read different data"), error
    assert not (tmp_path / "run").exists()


def _as_if_saved_on_cuda(path: Path) -> None:
    """Rewrite a torch checkpoint so that every tensor's storage says it lives on ``cuda:0``,
    as a file written by a run on a GPU does (the location is a pickled string per storage)."""
    import zipfile
    with zipfile.ZipFile(path) as z:
        entries = {info: z.read(info.filename) for info in z.infolist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for info, payload in entries.items():
            if info.filename.endswith("data.pkl"):
                assert b"X\x03\x00\x00\x00cpu" in payload
                payload = payload.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            z.writestr(info, payload)


def test_checkpoint_written_on_a_gpu_loads_on_a_cpu_only_machine(tmp_path):
    from qat.checkpoint import load_checkpoint, save_checkpoint
    torch.manual_seed(0)
    model = SASRec(CONFIG)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"model_config": {}, "model": model.state_dict()}, path)
    _as_if_saved_on_cuda(path)
    if not torch.cuda.is_available():  # the file really asks for CUDA ...
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=False)
    loaded = load_checkpoint(path)  # ... and loads onto the CPU, digest checked
    for name, value in model.state_dict().items():
        assert loaded["model"][name].device.type == "cpu"
        assert torch.equal(loaded["model"][name], value), name


@pytest.mark.slow
def test_check_gpu_script_passes_on_the_cpu(tmp_path):
    """scripts/check_gpu.py --device cpu: the GPU check's own smoke test (its checks must pass
    on the CPU too: INT8 from a copy equals INT8 from the original, a run loads without GPU)."""
    import json

    from conftest import load_script
    assert load_script("check_gpu").main(["--device", "cpu", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(report["methods"]) == {"fp32", *METHODS}
    for method in METHODS:
        assert report["methods"][method]["int8_from_device_equals_int8_from_cpu"], method
    assert report["portable_checkpoint"]["ok"]
    resume = report["optimizer_resume"]
    assert resume["ok"] and resume["fused"] and resume["max_abs_diff"] < 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_quantizer_flags_stay_in_host_memory_when_the_model_moves(method):
    """Flags the forward branches on stay on the CPU through ``.to(device)`` (no GPU wait per
    ``if``); everything else moves. The meta device stands in for a GPU here."""
    from observers.grid import _GridFakeQuantize
    qat = get_method(method)
    model = prepare_for_method(SASRec(CONFIG), qat, 8, torch.ones(2, 10, dtype=torch.long))
    model.to("meta")
    seen = set()
    for module in model.modules():
        if isinstance(module, _GridFakeQuantize):
            for name, buffer in module.named_buffers(recurse=False):
                expected = "cpu" if name in module.HOST_BUFFERS else "meta"
                assert buffer.device.type == expected, (type(module).__name__, name)
                seen.add(name)
    assert {"observer_enabled", "fake_quant_enabled", "initialized"} <= seen

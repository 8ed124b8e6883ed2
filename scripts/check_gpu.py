#!/usr/bin/env python
"""Check (and time) training on a GPU: what issue 12 asks a CUDA machine to show.

    python scripts/check_gpu.py --out runs/gpu_check                      # the checks
    python scripts/check_gpu.py --time-data ml-1m.txt --run-all --out runs/gpu_check

1. FP32 and each of the six QAT methods train a few steps on the device (a synthetic dataset);
   the INT8 model converted from the device-trained QAT model equals, byte for byte, the one
   converted from a CPU copy of the same weights; and the device's fake-quant scores are
   compared with the CPU fake-quant and the CPU INT8 scores (max |diff|, top-10 agreement).
2. A run trained on the device loads and evaluates in a process that sees no GPU
   (``CUDA_VISIBLE_DEVICES=``): the same metrics. The trainer's fused Adam resumes the state of
   torch's default (``foreach``) Adam read back from a checkpoint (``map_location="cpu"``, as
   ``--resume`` reads it) on the device, and continues as that optimizer would.
3. ``--time-data FILE``: seconds per epoch of FP32 and each method on that dataset (max length
   ``--time-max-len``, batch 128), the median of the epochs after the first, and each method's
   ratio to FP32.
4. ``--run-all``: ``scripts/run_all.py --device DEVICE`` end to end on a small configuration.

Everything is written to OUT/gpu_check.json; the exit status is 1 if a check failed. ``--device
cpu`` runs the same checks on the CPU (a smoke test of this script; the tests do that).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data import SequenceDataset, leave_one_out, load_dataset
from data import write_sasrec_text
from qat.checkpoint import content_digest
from qat.cli import ArgumentParser, folder_arg, run_cli
from qat.config import SASRecConfig, TrainConfig
from qat.distributed import DistributedContext, resolve_device
from qat.evaluate import evaluate
from qat.finetune import (calibration_inputs, deployment_view, prepare_for_method, qat_hooks,
                          to_int8)
from qat.model import SASRec
from qat.registry import METHODS, get_method
from qat.train import Trainer, load_optimizer_state, make_adam
from qat.train_run import TrainRunOptions, train_run

ROOT = Path(__file__).resolve().parents[1]
STEPS = 20
QAT_METHODS = [name for name, method in METHODS.items() if method.is_quantized]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="device to check (default cuda)")
    p.add_argument("--out", type=folder_arg, default=Path("runs/gpu_check"), help="output folder")
    p.add_argument("--time-data", default=None, metavar="PATH_OR_NAME",
                   help="also time epochs of FP32 and every method on this dataset")
    p.add_argument("--time-max-len", type=int, default=200, help="max length of the timing")
    p.add_argument("--time-epochs", type=int, default=3,
                   help="epochs timed per model (the first is a warm-up)")
    p.add_argument("--run-all", action="store_true",
                   help="also run run_all.py --device DEVICE on a small configuration")
    return p.parse_args(argv)


def synthetic(num_users: int = 200, num_items: int = 60, length: int = 30) -> SequenceDataset:
    """User u walks items with stride 1 + u % 3 (learnable, not trivial)."""
    sequences = {u: [(u + step * (1 + u % 3)) % num_items + 1 for step in range(length)]
                 for u in range(1, num_users + 1)}
    return SequenceDataset(sequences=sequences, num_users=num_users, num_items=num_items,
                           source="synthetic")


def _trainer(method: str, split: Any, config: SASRecConfig, device: torch.device,
             out: Path, batch_size: int = 64) -> Trainer:
    torch.manual_seed(0)
    model = SASRec(config).to(device)
    train = TrainConfig(batch_size=batch_size, lr=1e-3, progress=False)
    hooks = None
    if method != "fp32":
        qat = get_method(method)
        calibration = calibration_inputs(split, config.max_len, batch_size, seed=0)
        model = prepare_for_method(model, qat, 8, calibration.to(device))
        hooks = qat_hooks(model, qat, lr=train.lr, quant_lr=qat.quant_lr)
    return Trainer(model, split, config, train, out, method=method, hooks=hooks,
                   context=DistributedContext(device=device))


def _steps(trainer: Trainer, steps: int) -> list[float]:
    losses: list[float] = []
    while len(losses) < steps:
        for batch in trainer.batcher.epoch(trainer.rng):
            losses.append(trainer.step(batch, len(losses) / steps))
            if len(losses) == steps:
                break
    return losses


def _top10_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    top_a, top_b = a[:, 1:].topk(10).indices, b[:, 1:].topk(10).indices
    return float(np.mean([len(set(x.tolist()) & set(y.tolist())) / 10
                          for x, y in zip(top_a, top_b)]))


def check_methods(device: torch.device) -> dict[str, Any]:
    """Section 1: every method trains on ``device``; INT8 from device == INT8 from CPU copy."""
    split = leave_one_out(synthetic())
    config = SASRecConfig(num_items=split.num_items, max_len=20, hidden=32, blocks=2, heads=1,
                          dropout=0.1)
    inputs = calibration_inputs(split, 20, 128, seed=1)  # a batch to compare scores on
    results: dict[str, Any] = {}
    for method in ("fp32", *QAT_METHODS):
        trainer = _trainer(method, split, config, device, Path("unused"))
        start = time.perf_counter()
        losses = _steps(trainer, STEPS)
        seconds = time.perf_counter() - start
        cpu_copy = copy.deepcopy(trainer.model).cpu()
        view_device, view_cpu = deployment_view(trainer.model), deployment_view(cpu_copy)
        with torch.no_grad():
            on_device = view_device.score_last(inputs.to(device)).cpu()
            on_cpu = view_cpu.score_last(inputs)
        entry: dict[str, Any] = {
            "steps": STEPS, "seconds": round(seconds, 3),
            "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
            "finite": bool(np.isfinite(losses).all()),
            "max_abs_score_diff_device_vs_cpu": float((on_device - on_cpu).abs().max()),
            "top10_agreement_device_vs_cpu": _top10_agreement(on_device, on_cpu),
            "valid_device": trainer.evaluate("valid")["ndcg@10"],
        }
        ok = entry["finite"]
        if method != "fp32":
            int8_device, int8_cpu = to_int8(trainer.model), to_int8(cpu_copy)
            same = content_digest(int8_device.state_dict()) == content_digest(
                int8_cpu.state_dict())
            with torch.no_grad():
                int8_scores = int8_cpu.score_last(inputs)
            entry.update({
                "int8_from_device_equals_int8_from_cpu": same,
                "max_abs_score_diff_fake_quant_device_vs_int8_cpu":
                    float((on_device - int8_scores).abs().max()),
                "top10_agreement_fake_quant_device_vs_int8_cpu":
                    _top10_agreement(on_device, int8_scores),
                "valid_int8_cpu": evaluate(int8_cpu.score_last, split, "valid",
                                           max_len=config.max_len)["ndcg@10"],
            })
            ok = ok and same
        entry["ok"] = ok
        results[method] = entry
        print(f"{method:9s} {json.dumps(entry)}", flush=True)
    return results


def check_portable_checkpoint(device: torch.device, out: Path) -> dict[str, Any]:
    """Section 2: a run trained on ``device`` loads and evaluates where no GPU is visible."""
    data = out / "synthetic.txt"
    write_sasrec_text(synthetic(), data)
    run = out / "portable_run"
    metrics = train_run(TrainRunOptions(data=str(data), out=run, max_len=20, hidden=16, blocks=1,
                                        epochs=2, progress=False, device=str(device)))
    probe = ("import json, sys; from data import load_dataset, leave_one_out; "
             "from qat.evaluate import evaluate; from qat.finetune import load_float_model; "
             "import torch; model, _ = load_float_model(sys.argv[1]); "
             "split = leave_one_out(load_dataset(sys.argv[2])); "
             "print(json.dumps({'cuda': torch.cuda.is_available(), 'test': evaluate("
             "model.score_last, split, 'test', max_len=20)['ndcg@10']}))")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", probe, str(run), str(data)], env=env,
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    if done.returncode != 0:
        return {"ok": False, "error": done.stderr.strip().splitlines()[-1:]}
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    return {"trained_on": metrics.device, "test_ndcg_on_device": metrics.test["ndcg@10"],
            "test_ndcg_without_gpu": seen["test"], "gpu_visible_to_loader": seen["cuda"],
            "ok": not seen["cuda"] and abs(seen["test"] - metrics.test["ndcg@10"]) < 1e-6}


def check_optimizer_resume(device: torch.device) -> dict[str, Any]:
    """Section 2: a checkpoint of torch's default Adam (``foreach`` on CUDA, the trainer's before
    it used the fused one), read back to the CPU, resumes into ``make_adam`` on ``device``."""
    import io
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, 4, generator=generator).to(device) for _ in range(4)]
    old = torch.nn.Parameter(torch.randn(5, 4, generator=generator).to(device))
    new = torch.nn.Parameter(old.detach().clone())
    before = torch.optim.Adam([old], lr=1e-2, betas=(0.9, 0.98), foreach=True)
    for grad in grads[:2]:
        old.grad = grad.clone()
        before.step()
    buffer = io.BytesIO()
    torch.save(before.state_dict(), buffer)
    buffer.seek(0)
    after = make_adam([{"params": [new]}], lr=1e-2, weight_decay=0.0)
    new.data.copy_(old.detach())
    load_optimizer_state(after, torch.load(buffer, map_location="cpu"))
    try:
        for grad in grads[2:]:
            old.grad, new.grad = grad.clone(), grad.clone()
            before.step()
            after.step()
    except RuntimeError as err:
        return {"ok": False, "error": str(err).splitlines()[0]}
    diff = (new.detach() - old.detach()).abs().max().item()
    return {"fused": bool(after.param_groups[0]["fused"]),
            "step_device": str(after.state[new]["step"].device), "max_abs_diff": diff,
            "ok": diff < 1e-5}


def time_epochs(device: torch.device, data: str, max_len: int, epochs: int) -> dict[str, Any]:
    """Section 3: training seconds per epoch of FP32 and each method (no evaluation)."""
    dataset = load_dataset(data)
    split = leave_one_out(dataset)
    config = SASRecConfig(num_items=dataset.num_items, max_len=max_len, hidden=50, blocks=2,
                          heads=1, dropout=0.2)
    results: dict[str, Any] = {}
    for method in ("fp32", *QAT_METHODS):
        trainer = _trainer(method, split, config, device, Path("unused"), batch_size=128)
        seconds = []
        for _ in range(epochs):
            start = time.perf_counter()
            for batch in trainer.batcher.epoch(trainer.rng):
                trainer.step(batch, 0.5)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
        timed = seconds[1:] or seconds
        results[method] = {"epoch_seconds": [round(s, 3) for s in seconds],
                           "median_after_first": round(statistics.median(timed), 3)}
    base = results["fp32"]["median_after_first"]
    for method in QAT_METHODS:
        results[method]["ratio_to_fp32"] = round(results[method]["median_after_first"] / base, 2)
    print(json.dumps(results, indent=1), flush=True)
    return {"dataset": str(dataset.source), "users": dataset.num_users,
            "items": dataset.num_items, "max_len": max_len, "hidden": 50, "batch_size": 128,
            "models": results}


def check_run_all(device: torch.device, out: Path) -> dict[str, Any]:
    """Section 4: run_all.py --device on a small configuration, end to end."""
    data = out / "synthetic.txt"
    write_sasrec_text(synthetic(), data)
    study = out / "run_all"
    command = [sys.executable, str(ROOT / "scripts" / "run_all.py"), "--data", str(data),
               "--out", str(study), "--device", str(device), "--max-len", "20", "--hidden", "16",
               "--blocks", "1", "--epochs", "3", "--qat-epochs", "1", "--bench-batches", "1",
               "--bench-threads", "1", "--bench-repeats", "5", "--no-baselines", "--quiet",
               "--no-progress"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=1800,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - start
    summary = study / "results_summary.csv"
    return {"exit_status": done.returncode, "seconds": round(seconds, 1),
            "summary_written": summary.is_file(),
            "summary": summary.read_text() if summary.is_file() else None,
            "stderr_tail": done.stderr.strip().splitlines()[-5:],
            "ok": done.returncode == 0 and summary.is_file()}


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"environment": environment(device)}
    path = args.out / "gpu_check.json"

    def save() -> None:
        path.write_text(json.dumps(report, indent=2) + "\n")
    report["methods"] = check_methods(device)
    save()
    report["portable_checkpoint"] = check_portable_checkpoint(device, args.out)
    report["optimizer_resume"] = check_optimizer_resume(device)
    print(f"optimizer_resume {json.dumps(report['optimizer_resume'])}", flush=True)
    save()
    if args.time_data:
        report["epoch_timing"] = time_epochs(device, args.time_data, args.time_max_len,
                                             args.time_epochs)
        save()
    if args.run_all:
        report["run_all"] = check_run_all(device, args.out)
        save()
    failed = [name for name, entry in [*report["methods"].items(),
                                       ("portable_checkpoint", report["portable_checkpoint"]),
                                       ("optimizer_resume", report["optimizer_resume"]),
                                       ("run_all", report.get("run_all", {"ok": True}))]
              if not entry["ok"]]
    print(f"{path}: " + ("all checks passed" if not failed else "FAILED: " + ", ".join(failed)))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())

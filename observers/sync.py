"""Batch statistics across the processes of a data-parallel run.

Under ``torch.nn.parallel.DistributedDataParallel`` each process sees its shard of the global
batch. An activation observer that tracks a range from batches (STE's moving-average min/max,
DoReFa's calibrated running min/max) must see the range of the *global* batch, or its state
drifts apart between processes and the INT8 model depends on which rank converts it.
``global_min_max`` all-reduces a batch's min and max; with no process group (one process) it
returns them unchanged. Every rank must call it at the same point of the forward, which holds
because every rank runs the same model on a batch of the same structure; a rank with an empty
shard calls it too, contributing ``(+inf, -inf)``.

DDP averages gradients, so parameters (LSQ steps, PACT/APoT clips, AdaRound's V) stay equal, and
it broadcasts rank 0's parameters and buffers when it wraps the model, so initial state
(calibration) is equal too; ``docs/design.md`` lists every quantizer state and why it agrees.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Processes in the default group (1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def global_min_max(batch_min: torch.Tensor, batch_max: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min over ranks of batch_min, max over ranks of batch_max)``, shape ``[1]`` each.

    One collective (a MIN all-reduce of ``[min, -max]``). Without a process group, the inputs.
    """
    if world_size() == 1:
        return batch_min, batch_max
    device = batch_min.device
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    both = torch.cat([batch_min.reshape(1), -batch_max.reshape(1)]).float().to(on)
    dist.all_reduce(both, op=dist.ReduceOp.MIN)
    both = both.to(device)
    return both[:1], -both[1:]

"""Where training runs: the device, and the process group when launched by ``torchrun``.

One process (``python scripts/train_qat.py``) trains on one device. ``torchrun --nproc-per-node
N scripts/train_qat.py ...`` starts N processes; each reads ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE`` from its environment, joins a process group (gloo on CPU, nccl on CUDA) and
trains its shard of every batch under ``torch.nn.parallel.DistributedDataParallel``.

    ctx = setup_distributed("auto")      # reads torchrun's environment; one process: world 1
    model.to(ctx.device)
    ...
    ctx.shutdown()

What stays identical across ranks, and why (docs/design.md, "Training on several processes"):

* weights and optimizer state: DDP averages gradients, every rank takes the same Adam step;
* quantizer parameters (LSQ steps, PACT/APoT clips, AdaRound V): parameters, so likewise;
* weight observers (STE/DoReFa/APoT scale from the weight): they read identical weights;
* activation observers that track a range from batches (STE's moving average, DoReFa's
  calibration): ``observers.grid.global_min_max`` all-reduces each batch's min/max, so every
  rank sees the range of the *global* batch, as one process would;
* LSQ/PACT activation initialisation: from the calibration batch, the same on every rank.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

DEVICES = ("auto", "cpu", "cuda")
T = TypeVar("T")


class PeerFailed(RuntimeError):
    """Another rank failed (it printed the reason); this rank stops too."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The ``torch.device`` for ``--device NAME``: ``auto`` (CUDA when available), ``cpu``,
    ``cuda`` or ``cuda:N``. Under torchrun, ``cuda`` means this process's ``LOCAL_RANK`` GPU.

    Raises:
        ValueError: an unknown name, or CUDA asked for where there is none (the message says
            what this machine has).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            build = ("this torch build has no CUDA (torch " + torch.__version__ + ")"
                     if torch.version.cuda is None else
                     f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU")
            raise ValueError(f"--device {name}: CUDA is not available ({build}); available: cpu. "
                             "Use --device cpu, or --device auto to take a GPU when there is one")
        index = local_rank if name == "cuda" else _cuda_index(name)
        count = torch.cuda.device_count()
        if index >= count:
            raise ValueError(f"--device {name}: this machine has {count} GPU(s) (cuda:0.."
                             f"cuda:{count - 1}); under torchrun use at most {count} processes "
                             "per node with --device cuda")
        return torch.device("cuda", index)
    raise ValueError(f"--device must be one of {', '.join(DEVICES)} or cuda:N, got {name!r}")


def _cuda_index(name: str) -> int:
    try:
        index = int(name.split(":", 1)[1])
    except ValueError:
        raise ValueError(f"--device {name}: expected cuda:N with N a GPU index") from None
    if index < 0:
        raise ValueError(f"--device {name}: a GPU index is >= 0")
    return index


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the run: ``rank`` of ``world_size`` processes, on ``device``."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints progress."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def all_gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
        if not self.is_distributed:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0 only (file reads and writes), its result sent to every rank.

        If it raises on rank 0, rank 0 re-raises it and every other rank raises ``PeerFailed``
        (which ``qat.cli.run_cli`` turns into a quiet exit 2, so the error is printed once).
        One process: ``fn()``.
        """
        if not self.is_distributed:
            return fn()
        outcome: list[Any] = [None]
        error: BaseException | None = None
        if self.is_main:
            try:
                outcome[0] = ("ok", fn())
            except Exception as err:  # noqa: BLE001 - re-raised below after telling the others
                error = err
                outcome[0] = ("error", f"{type(err).__name__}: {err}")
        dist.broadcast_object_list(outcome, src=0, device=self._collective_device)
        if error is not None:
            raise error
        status, value = outcome[0]
        if status == "error":
            raise PeerFailed(f"rank 0 failed ({value}); rank {self.rank} stopped")
        return value

    def mean(self, value: float) -> float:
        """The mean of ``value`` over ranks (``value`` itself in one process)."""
        if not self.is_distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._collective_device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    @property
    def _collective_device(self) -> torch.device:
        # nccl reduces CUDA tensors only; gloo reduces CPU ones
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def shutdown(self) -> None:
        """Leave the process group (each process once, at the end)."""
        if self.is_distributed and dist.is_initialized():
            dist.destroy_process_group()


# What a collective says when the process at the other end is gone: the connection dropped
# (gloo's TCP transport; measured with kill -9 of one rank). Not timeouts or setup errors
# (a slow rank, two ranks on one GPU): those keep their traceback.
_LOST_PEER_MARKERS = ("Connection reset by peer", "Connection closed by peer", "Broken pipe")


def lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is a collective failing because another process of the run died (was
    killed, or crashed): a ``RuntimeError`` (``torch.distributed.DistError`` included) saying
    its connection dropped, as gloo's TCP transport does when a peer is gone ("Read error ...
    Connection reset by peer"). Only under torchrun; elsewhere, and for any other error
    (a timeout, a setup mistake), the traceback stays.

    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"WORLD_SIZE": "2"}):
    ...     [lost_peer(RuntimeError(text)) for text in (
    ...         "[gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer.",
    ...         "mat1 and mat2 shapes cannot be multiplied")]
    [True, False]
    """
    if not launched_by_torchrun():
        return False
    return isinstance(err, RuntimeError) and any(m in str(err) for m in _LOST_PEER_MARKERS)


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher) set a world size above 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup_distributed(device: str = "auto") -> DistributedContext:
    """This process's device and, under torchrun, its process group.

    Without torchrun's environment (``WORLD_SIZE`` unset or 1) this is one process on
    ``resolve_device(device)``. Under torchrun it joins the group with nccl for CUDA and gloo for
    CPU (an already initialised group, e.g. from a test, is used as it is).

    Raises:
        ValueError: bad ``device``, CUDA missing, more processes per node than GPUs.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistributedContext(device=resolve_device(device))
    if not dist.is_available():
        raise ValueError("this torch build has no torch.distributed: run one process")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
            dist.init_process_group(backend, device_id=resolved)
        else:
            dist.init_process_group(backend)
    return DistributedContext(device=resolved, rank=dist.get_rank(),
                              world_size=dist.get_world_size(), local_rank=local_rank)


def shard_bounds(count: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous share of ``count`` items (sizes differ by
    at most one; concatenating the shards in rank order gives back ``range(count)``)."""
    base, extra = divmod(count, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)

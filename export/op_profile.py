"""Where a graph's time goes: onnxruntime's profiler, summed per op type.

    profile = profile_ops("runs/lsq/model_int8_fused.onnx", inputs, threads=1, runs=50)
    for op, us in profile.top(10):
        print(op, us, us / profile.kernel_us)

onnxruntime's profiler records every node's kernel time in each ``session.run``
(``<node>_kernel_time`` events); ``profile_ops`` runs the graph ``warmup`` times untimed, then
``runs`` times (the profiler is on from the start; only the last ``runs`` ``model_run``
windows count), and reports per op type the mean microseconds per run
(``per_op_us``), their sum (``kernel_us``) and the median wall time of a profiled run
(``wall_us``; above ``kernel_us`` by the per-run overhead outside kernels). The profiler's own
cost inflates small kernels a little, so compare graphs profiled alike, not with benchmark
medians. ``random_histories`` makes inputs shaped like real ones (left-padded histories of
random lengths). scripts/profile_ops.py prints the tables side by side.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from export.runtime import make_session
from export.sasrec_graph import INPUT

KERNEL_SUFFIX = "_kernel_time"


@dataclass(frozen=True)
class OpProfile:
    """Mean per-run kernel time per op type of one graph.

    Attributes:
        per_op_us: op type -> mean microseconds per run (summed over its nodes).
        calls_per_run: op type -> its node executions per run (nodes of the optimised graph).
        kernel_us: the sum of ``per_op_us``.
        wall_us: median wall-clock microseconds of a profiled ``session.run``.
        runs: profiled runs.
        threads: intra-op threads.
        batch: rows of the input.
    """

    per_op_us: dict[str, float]
    calls_per_run: dict[str, float]
    kernel_us: float
    wall_us: float
    runs: int
    threads: int
    batch: int

    def top(self, n: int | None = None) -> list[tuple[str, float]]:
        """``(op type, us per run)``, the most expensive first (``n`` of them, or all)."""
        return sorted(self.per_op_us.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def random_histories(num_items: int, max_len: int, batch: int, seed: int) -> np.ndarray:
    """``(batch, max_len)`` ids in 1..num_items, row r left-padded to a random length >= 1."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, num_items + 1, (batch, max_len), dtype=np.int64)
    lengths = rng.integers(1, max_len + 1, batch)
    x[np.arange(max_len)[None, :] < (max_len - lengths)[:, None]] = 0
    return x


def profile_ops(model: str | os.PathLike | bytes | onnx.ModelProto, inputs: np.ndarray, *,
                threads: int = 1, runs: int = 50, warmup: int = 5) -> OpProfile:
    """Profile ``model`` (any exported SASRec graph; fused graphs load the kernels) on the
    ``(B, T)`` item sequences ``inputs`` (module docstring).

    Raises:
        ValueError: ``runs`` < 1, ``warmup`` < 0, ``threads`` < 1, or a model onnxruntime
            cannot load.
    """
    if runs < 1 or warmup < 0 or threads < 1:
        raise ValueError(f"runs must be >= 1, warmup >= 0 and threads >= 1, got {runs}, "
                         f"{warmup}, {threads}")
    with tempfile.TemporaryDirectory() as tmp:
        session = make_session(model, threads=threads, optimization="all", deterministic=False,
                               allow_spinning=False, profile_prefix=Path(tmp) / "profile")
        outputs = [o.name for o in session.get_outputs()]
        feed = {INPUT: inputs}
        for _ in range(warmup):
            session.run(outputs, feed)
        walls = []
        for _ in range(runs):
            begin = time.perf_counter_ns()
            session.run(outputs, feed)
            walls.append((time.perf_counter_ns() - begin) / 1e3)
        events = json.loads(Path(session.end_profiling()).read_text())
    # the profiler saw the warm-up runs too: keep the nodes inside the last `runs` model runs
    starts = sorted(e["ts"] for e in events
                    if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(starts) < runs:
        raise RuntimeError(f"onnxruntime's profile holds {len(starts)} model_run events, "
                           f"expected at least {runs}: its format changed")
    first = starts[-runs]
    per_op: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    for event in events:
        if (event.get("cat") == "Node" and event.get("name", "").endswith(KERNEL_SUFFIX)
                and event["ts"] >= first):
            per_op[event["args"]["op_name"]] += float(event["dur"])
            calls[event["args"]["op_name"]] += 1
    per_op_us = {op: us / runs for op, us in per_op.items()}
    return OpProfile(per_op_us=per_op_us,
                     calls_per_run={op: n / runs for op, n in calls.items()},
                     kernel_us=sum(per_op_us.values()),
                     wall_us=float(np.median(walls)), runs=runs, threads=threads,
                     batch=int(inputs.shape[0]))

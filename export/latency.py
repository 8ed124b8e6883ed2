"""Latency measurement: interleaved wall-clock timing of several models, and the machine it ran on.

    inputs = eval_inputs(split, "test", max_len=200)         # real test users, left-padded
    pool = batch_pool(inputs, batch=256, count=8)
    sessions = [timing_session(m, threads=2) for m in models]
    times = time_interleaved([ort_call(s) for s in sessions], pool, warmup=10, repeats=100)
    stats = [latency_stats(t) for t in times]                  # median / p90 ms per model

What is measured: the wall-clock time (``time.perf_counter_ns``) of one ``session.run`` (or one
torch forward) on one batch of item sequences, as a caller sees it, inputs already in memory.
Models are interleaved: round ``r`` times one call of every model, in the order
``round_order(M, r)`` (rotated from round to round), all on the same batch, so slow drift of the
machine (other jobs, frequency changes) falls on every model alike, no model always runs first
and no model always runs right after the same other model.
"""
from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from data import LeaveOneOutSplit, eval_batches
from export.runtime import make_session, serving_kind
from export.sasrec_graph import INPUT, SCORES, TOP_K_ITEMS, TOP_K_SCORES

Call = Callable[[np.ndarray], Any]
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def round_order(num_models: int, round_index: int) -> list[int]:
    """The order in which round ``round_index`` calls ``num_models`` models.

    A balanced Latin square (Williams 1949): round r is the base order ``0, 1, M-1, 2, M-2, ...``
    with every model index rotated by ``r mod M`` (for odd M, every other block of M rounds runs
    reversed). Over M rounds (2M for odd M) every model holds every position equally often, and
    every model directly follows every other model equally often, so neither drift within a round
    nor what the previous model left behind (caches, threads still spinning) favours a model.
    """
    if num_models < 1:
        raise ValueError(f"num_models must be >= 1, got {num_models}")
    base, low, high = [0], 1, num_models - 1
    while len(base) < num_models:
        base.append(low)
        low += 1
        if len(base) < num_models:
            base.append(high)
            high -= 1
    shift = round_index % num_models
    order = [(b + shift) % num_models for b in base]
    if num_models % 2 and (round_index // num_models) % 2:
        order.reverse()
    return order


def time_interleaved(calls: Sequence[Call], inputs: Sequence[np.ndarray], *, warmup: int,
                     repeats: int,
                     timer: Callable[[], int] = time.perf_counter_ns) -> list[list[float]]:
    """Wall-clock milliseconds of ``repeats`` calls of every model, interleaved.

    Round r (warm-up rounds first, untimed) feeds ``inputs[r % len(inputs)]`` to every model, in
    the order ``round_order(len(calls), r)``; each call is timed on its own.

    Args:
        calls: one callable per model, taking the input batch (outputs are discarded).
        inputs: batches to cycle through (every model sees the same batch in a round).
        warmup: untimed rounds first (>= 0).
        repeats: timed rounds (>= 1).
        timer: a nanosecond clock (tests inject a fake one).

    Returns:
        ``times[i]``: the ``repeats`` durations in ms of model i, in round order.
    """
    if not calls or not inputs:
        raise ValueError("time_interleaved needs at least one call and one input")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup must be >= 0 and repeats >= 1, got {warmup} and {repeats}")
    for r in range(warmup):
        batch = inputs[r % len(inputs)]
        for i in round_order(len(calls), r):
            calls[i](batch)
    times: list[list[float]] = [[] for _ in calls]
    for r in range(warmup, warmup + repeats):
        batch = inputs[r % len(inputs)]
        for i in round_order(len(calls), r):
            start = timer()
            calls[i](batch)
            times[i].append((timer() - start) / 1e6)
    return times


def latency_stats(times_ms: Sequence[float]) -> dict[str, float | int]:
    """``{"median_ms", "p90_ms", "min_ms", "repeats"}`` of one model's timed calls.

    Percentiles interpolate linearly between order statistics (numpy's default), so
    ``min <= median <= p90``.
    """
    if len(times_ms) == 0:
        raise ValueError("no timings")
    values = np.asarray(times_ms, dtype=np.float64)
    median, p90 = np.percentile(values, [50, 90])
    return {"median_ms": float(median), "p90_ms": float(p90), "min_ms": float(values.min()),
            "repeats": int(values.size)}


def timing_session(model: bytes | onnx.ModelProto, *, threads: int,
                   allow_spinning: bool = False) -> ort.InferenceSession:
    """A CPU onnxruntime session set up for timing.

    ``export.runtime.make_session`` with full graph optimisation, ``threads`` intra-op threads,
    one inter-op thread (sequential execution, onnxruntime's default), no deterministic-compute
    constraint. ``allow_spinning`` lets intra-op worker threads busy-wait after a run (onnxruntime's
    default): it lowers wake-up latency for a lone model, but when models are interleaved a
    previous session's spinning workers compete with the next session for the cores, so it is
    off by default here (it only matters with ``threads > 1``).
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return make_session(model, threads=threads, optimization="all", deterministic=False,
                        allow_spinning=allow_spinning)


def ort_call(session: ort.InferenceSession, output: str | None = None) -> Call:
    """``batch -> outputs`` through ``session`` (the timed unit: one ``session.run``).

    ``output`` None: what the graph serves, ``scores`` of a full-score graph or both outputs of
    a top-k graph (``top_k_items``, ``top_k_scores``; ``exclude`` and ``k`` at their defaults:
    the history in the batch masked, k as exported), as ``export.runtime.serving_kind`` tells.

    Raises:
        ValueError: ``output`` None and a graph of neither kind.
    """
    outputs = ([output] if output is not None else [SCORES]
               if serving_kind(session) == "scores" else [TOP_K_ITEMS, TOP_K_SCORES])

    def call(batch: np.ndarray) -> Any:
        return session.run(outputs, {INPUT: batch})
    return call


def torch_call(score: Callable[[torch.Tensor], torch.Tensor]) -> Call:
    """``batch -> scores`` through a torch scorer (e.g. ``model.score_last``) in inference mode.

    The timed unit includes the zero-copy ``torch.from_numpy``; set the thread count with
    ``torch.set_num_threads`` before timing.
    """
    def call(batch: np.ndarray) -> Any:
        with torch.inference_mode():
            return score(torch.from_numpy(batch))
    return call


def eval_inputs(split: LeaveOneOutSplit, which: str = "test", *, max_len: int,
                seed: int = 0) -> np.ndarray:
    """Every evaluated user's input row ``(N, max_len)`` int64, as ``eval_batches(split, which)``
    builds it (last ``max_len`` history items, left-padded with 0), rows shuffled by ``seed``."""
    rows = [batch.inputs.numpy() for batch in eval_batches(split, which, max_len=max_len,
                                                           batch_size=1024)]
    if not rows:
        raise ValueError(f"the dataset has no {which} users (every user has < 3 interactions)")
    inputs = np.concatenate(rows).astype(np.int64, copy=False)
    return inputs[np.random.default_rng(seed).permutation(len(inputs))]


def batch_pool(inputs: np.ndarray, *, batch: int, count: int) -> list[np.ndarray]:
    """``count`` batches of ``batch`` rows taken consecutively (cyclically) from ``inputs``.

    Batch p holds rows ``p * batch .. p * batch + batch - 1`` (mod N): distinct users while they
    last; with fewer than ``batch`` users, users repeat within a batch. Only as many distinct
    batches as the users allow are made (at most ``ceil(N / batch)``).
    """
    if batch < 1 or count < 1:
        raise ValueError(f"batch and count must be >= 1, got {batch} and {count}")
    n = len(inputs)
    count = min(count, -(-n // batch))
    return [np.ascontiguousarray(inputs[(p * batch + np.arange(batch)) % n])
            for p in range(count)]


def machine_info() -> dict[str, Any]:
    """The CPU (model, logical cores, int8-relevant flags), library versions, date and load.

    ``flags`` maps each of ``CPU_FLAGS`` to True/False (None where ``/proc/cpuinfo`` is not
    readable): VNNI decides whether u8 x s8 products saturate (docs/design.md, section 3).
    """
    model, flags = _cpuinfo()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        load = None
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "logical_cores": os.cpu_count(),
        "flags": {f: (None if flags is None else f in flags) for f in CPU_FLAGS},
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average": load,
    }


def _cpuinfo() -> tuple[str | None, set[str] | None]:
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
    except OSError:
        return None, None
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and flags is None:
            flags = set(value.split())
    return model, flags

"""Interleaved timing of the benchmark's candidates at every threads x batch case.

    records = time_cases(candidates, inputs, batches=[1, 256], threads=[1, 2], warmup=10,
                         repeats=100, what="runs")
    add_ratios(records, {None: "fp32"})        # ratio_to_fp32 of every record

Per thread count every candidate gets a fresh session (and torch that many threads); per batch
size ``export.latency.time_interleaved`` times one call of every candidate per round, in a
rotated order, on the same batch, so drift of a shared machine hits all models alike.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from export.bench_candidates import Candidate
from export.bench_record import Timing
from export.latency import batch_pool, latency_stats, time_interleaved


def time_cases(candidates: Sequence[Candidate], inputs: np.ndarray, *, batches: Sequence[int],
               threads: Sequence[int], warmup: int, repeats: int, allow_spinning: bool = False,
               what: str = "models") -> list[Timing]:
    """One ``Timing`` per candidate, thread count and batch size (threads outer, batches
    inner, candidates in order); ``ratio_to_fp32`` is left None (``add_ratios``).

    Progress goes to stderr (``what`` names the group). torch's thread count is restored.
    """
    records = []
    torch_threads = torch.get_num_threads()
    try:
        for n in threads:
            torch.set_num_threads(n)
            calls = [c.call(n, allow_spinning) for c in candidates]
            for batch in batches:
                print(f"timing {what}: {len(candidates)} models, batch {batch}, {n} "
                      f"thread(s), {warmup} + {repeats} rounds", file=sys.stderr)
                pool = batch_pool(inputs, batch=batch, count=warmup + repeats)
                times = time_interleaved(calls, pool, warmup=warmup, repeats=repeats)
                records += [c.timing(batch, n, latency_stats(t))
                            for c, t in zip(candidates, times)]
    finally:
        torch.set_num_threads(torch_threads)
    return records


def add_ratios(records: Sequence[Timing], reference: Mapping[int | None, str | None]) -> None:
    """Set ``ratio_to_fp32``: median over the reference model's median in the same case (None
    if there is no reference). ``reference`` maps ``sweep_hidden`` (None: the runs) to the
    reference model's name."""
    add_ratios_by_name(records, {r.model: reference.get(r.sweep_hidden) for r in records})


def add_ratios_by_name(records: Sequence[Timing], reference: Mapping[str, str | None]) -> None:
    """Set ``ratio_to_fp32`` of each record whose model ``reference`` names: its median over
    the named model's median in the same case (``export.bench_catalogue``'s pairs)."""
    medians = {(r.model, r.batch, r.threads): r.median_ms for r in records}
    for r in records:
        base = medians.get((reference.get(r.model), r.batch, r.threads))
        r.ratio_to_fp32 = None if base is None else r.median_ms / base

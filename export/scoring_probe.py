"""Choose the INT8 graph's scoring path for this machine by timing it (a micro-benchmark).

    choice = choose_scoring(int8_model, fused=True, top_k=10)
    onnx_model = build_sasrec_onnx(int8_model, fused=True, top_k=10, scoring=choice.path,
                                   metadata=choice.metadata())

Scoring (``hidden . item_table^T`` and, in a top-k graph, the selection) is where INT8 can lose
to FP32 on CPUs whose int8 products are no faster than float32 FMAs (x86 with AVX2 but no VNNI:
an exact u8 x s8 product goes through 16-bit pair sums, ``vpmaddwd``, at most the FMA rate;
docs/design.md, "Scoring paths"), and the cost grows with the catalogue. The paths
(``export.int8_emitters.common``): ``"int8"`` (MatMulInteger, Cast, Mul), ``"float"`` (a float32
Gemm against the dequantized table: exactly the FP32 graph's scoring cost) and, for the fused
backend, ``"fused"`` (one custom op; in a top-k graph it never writes the score matrix).

The probe builds the scoring part alone (input: a random uint8 final hidden state with the
model's qparams; output: the graph's scores or top-k lists) for each candidate path, times all
of them interleaved at each probe batch size (``export.latency.time_interleaved``), and picks
the path whose worst ratio to ``"float"`` over the batch sizes is lowest: a path is chosen only
where it is not slower than the float32 scoring at any probed batch size (up to the ratio
``tolerance``), so the INT8 graph's scoring never costs more than the FP32 graph's. Ties go to
the exact paths (``"fused"``, then ``"int8"``), whose scores equal the torch INT8 model's
integer products.

The choice and its figures go into the model's metadata (``sasrec_qat.scoring``, and
``sasrec_qat.scoring_probe``: JSON with the medians per path and batch size, the rule and the
CPU flags), and bench.json records the path of every graph it times.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from export.graph_builder import INT64, UINT8, GraphBuilder
from export.int8_emitters import QTensor, backend_name, get_emitter
from export.latency import latency_stats, machine_info, time_interleaved, timing_session
from export.sasrec_graph import INPUT, add_serving_outputs, model_kind
from qat.model import SASRec

PROBE_BATCHES = (1, 256)
PROBE_REPEATS = 15
PROBE_WARMUP = 3
PROBE_LENGTH = 50  # item_seq columns masked in a top-k probe
TOLERANCE = 1.02   # ratios up to this count as "not slower" (timer noise)
HIDDEN_INPUT = "hidden"


@dataclass(frozen=True)
class ScoringChoice:
    """The chosen path and what the probe measured.

    Attributes:
        path: the chosen scoring path (``build_sasrec_onnx(scoring=...)``).
        median_ms: ``{path: {batch: median ms}}`` of the scoring part alone.
        worst_ratio: ``{path: max over batches of its time / the float path's}``.
        threads: intra-op threads of the probe sessions.
        top_k: the probe timed a top-k graph's scoring (k) or the full scores (None).
        flags: the CPU flags the probe ran on (``export.latency.machine_info``).
    """

    path: str
    median_ms: dict[str, dict[int, float]]
    worst_ratio: dict[str, float]
    threads: int
    top_k: int | None
    flags: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, str]:
        """``sasrec_qat.scoring_probe``: the probe's figures as JSON, for the model file."""
        record = {"chosen": self.path, "rule": f"lowest worst ratio to float over batches "
                  f"(tolerance {TOLERANCE})", "threads": self.threads, "top_k": self.top_k,
                  "median_ms": {p: {str(b): round(ms, 4) for b, ms in by_batch.items()}
                                for p, by_batch in self.median_ms.items()},
                  "worst_ratio_to_float": {p: round(r, 3) for p, r in self.worst_ratio.items()},
                  "cpu_flags": self.flags}
        return {"sasrec_qat.scoring_probe": json.dumps(record, sort_keys=True)}


def candidate_paths(*, fused: bool) -> tuple[str, ...]:
    """The scoring paths of the fused or the exact backend, exact ones first."""
    emitter = get_emitter(backend_name(torch_exact=True, fused=fused))
    return tuple(sorted(emitter.scoring_paths, key=("fused", "int8", "float").index))


def scoring_graph(model: SASRec, path: str, *, fused: bool, top_k: int | None) -> bytes:
    """The scoring part of ``build_sasrec_onnx(model, scoring=path, fused=fused, top_k=top_k)``
    alone: input ``hidden`` (B, d) uint8 with the final LayerNorm's qparams (and ``item_seq``
    for a top-k graph), output its scores or top-k lists."""
    g = GraphBuilder("sasrec_scoring_probe")
    layers = get_emitter(backend_name(torch_exact=True, fused=fused))(g, scoring=path)
    norm = model.final_norm
    scale, zero_point = float(norm.scale), int(norm.zero_point)
    hidden = QTensor(g.add_input(HIDDEN_INPUT, UINT8, ["batch", model.config.hidden]), scale,
                     zero_point, *layers._qparams(scale, zero_point))
    item_seq = None if top_k is None else g.add_input(INPUT, INT64, ["batch", "length"])
    add_serving_outputs(g, layers, hidden, model.item_emb, item_seq, model.config.num_items,
                        top_k)
    onnx_model = g.build(metadata={}, doc="scoring probe")
    return onnx_model.SerializeToString()


def choose_scoring(model: SASRec, *, fused: bool, top_k: int | None = None, threads: int = 1,
                   batches: Sequence[int] = PROBE_BATCHES, repeats: int = PROBE_REPEATS,
                   warmup: int = PROBE_WARMUP, seed: int = 0) -> ScoringChoice:
    """Time every scoring path of the backend on this machine and choose one (module rule).

    Args:
        model: a converted INT8 SASRec.
        fused: probe the fused backend's paths (``"fused"``, ``"int8"``, ``"float"``), else the
            exact backend's (``"int8"``, ``"float"``).
        top_k: probe a top-k graph's scoring with this k (None: the full-score graph's).
        threads: intra-op threads of the probe sessions.
        batches, repeats, warmup: probe batch sizes and timed / untimed calls per path.
        seed: of the random hidden states and sequences.

    Raises:
        ValueError: an FP32 model, or an empty ``batches``.
    """
    if model_kind(model) != "int8":
        raise ValueError("the scoring probe applies to converted INT8 models")
    if not batches:
        raise ValueError("the scoring probe needs at least one batch size")
    paths = candidate_paths(fused=fused)
    sessions = [timing_session(scoring_graph(model, p, fused=fused, top_k=top_k), threads=threads)
                for p in paths]
    rng = np.random.default_rng(seed)
    config = model.config
    median: dict[str, dict[int, float]] = {p: {} for p in paths}
    for batch in batches:
        feed = {HIDDEN_INPUT: rng.integers(0, 256, (batch, config.hidden), dtype=np.uint8)}
        if top_k is not None:
            feed[INPUT] = rng.integers(1, config.num_items + 1, (batch, PROBE_LENGTH))
        calls = [_call(session, feed) for session in sessions]
        times = time_interleaved(calls, [feed[HIDDEN_INPUT]], warmup=warmup, repeats=repeats)
        for path, t in zip(paths, times):
            median[path][batch] = float(latency_stats(t)["median_ms"])
    worst = {p: max(median[p][b] / median["float"][b] for b in batches) for p in paths}
    return ScoringChoice(pick_path(worst, paths), median, worst, threads, top_k,
                         machine_info()["flags"])


def pick_path(worst_ratio: dict[str, float], paths: Sequence[str]) -> str:
    """The first of ``paths`` (exact paths first) whose worst ratio to ``"float"`` is within
    ``TOLERANCE`` of the lowest; ``"float"`` itself has ratio 1, so a path slower than it at some
    batch size is never chosen over it."""
    best = min(worst_ratio[p] for p in paths)
    return next(p for p in paths if worst_ratio[p] <= best * TOLERANCE)


def _call(session: Any, feed: dict[str, np.ndarray]) -> Any:
    """A timed call feeding the whole probe input (``time_interleaved`` passes the hidden)."""
    outputs = [o.name for o in session.get_outputs()]

    def call(_: np.ndarray) -> Any:
        return session.run(outputs, feed)
    return call

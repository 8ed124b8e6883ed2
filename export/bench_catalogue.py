"""The benchmark's synthetic catalogues: how INT8 vs FP32 latency scales with the item count.

    candidates, reference = catalogue_candidates(20_000, config, fused=True)
    timings = time_cases(candidates, inputs, ...)
    add_ratios_by_name(timings, reference)

For ``num_items`` items a random SASRec (the runs' width, depth, heads and max_len) in FP32 and
converted to INT8 the project's way (``export.bench_candidates.random_fp32_and_int8``, the width
sweep's recipe), each
exported twice: the full-score graph and the top-k serving graph (``build_sasrec_onnx(top_k=10)``,
the history masked and the k best ids selected inside the graph). INT8 graphs use the fused
kernels when they can be built (else the exact functions) and the scoring path the probe picks on
this machine (``export.scoring_probe``), recorded in each timing's ``scoring``. Ratios compare
like with like: each INT8 graph with the FP32 graph of the same catalogue and serving kind.
Weights are random, so only latency is meaningful; inputs are the runs' test sequences with
every item id redrawn uniformly from the catalogue (padding kept).
"""
from __future__ import annotations

import numpy as np

from export.bench_candidates import SWEEP_BITS, SWEEP_METHOD, Candidate, random_fp32_and_int8
from export.sasrec_graph import build_sasrec_onnx
from export.scoring_probe import choose_scoring
from qat.config import SASRecConfig

TOP_K = 10
SERVINGS = ("scores", "top_k")


def catalogue_name(num_items: int, kind: str, serving: str) -> str:
    """``items20000_fp32``, ``items20000_int8_fused_top_k``, ..."""
    return f"items{num_items}_{kind}" + ("" if serving == "scores" else "_top_k")


def catalogue_candidates(num_items: int, first: SASRecConfig, *, fused: bool,
                         seed: int = 0) -> tuple[list[Candidate], dict[str, str]]:
    """``(candidates, reference)``: the four graphs of a random model of ``num_items`` items
    (FP32 and INT8, full scores and top-k), and for each INT8 one the name of its FP32 twin."""
    config = SASRecConfig(num_items=num_items, max_len=first.max_len, hidden=first.hidden,
                          blocks=first.blocks, heads=first.heads, dropout=first.dropout)
    fp32, int8 = random_fp32_and_int8(config, seed + num_items)
    int8_kind = "int8_fused" if fused else "int8"
    source = f"random init (seed {seed + num_items}), {num_items} items"
    candidates, reference = [], {}
    for serving in SERVINGS:
        top_k = None if serving == "scores" else TOP_K
        choice = choose_scoring(int8, fused=fused, top_k=top_k)
        fp32_name = catalogue_name(num_items, "fp32", serving)
        int8_name = catalogue_name(num_items, int8_kind, serving)
        candidates.append(Candidate(fp32_name, "onnx_fp32", None, "fp32", 32, source,
                                    onnx=build_sasrec_onnx(fp32, top_k=top_k)
                                    .SerializeToString(),
                                    sweep_hidden=config.hidden, serving=serving))
        candidates.append(Candidate(
            int8_name, "onnx_int8_fused" if fused else "onnx_int8", None, SWEEP_METHOD,
            SWEEP_BITS, f"{source}, {SWEEP_METHOD} calibrated, converted, {choice.path} scoring",
            onnx=build_sasrec_onnx(int8, top_k=top_k, fused=fused, scoring=choice.path,
                                   metadata=choice.metadata()).SerializeToString(),
            sweep_hidden=config.hidden, serving=serving, scoring=choice.path))
        reference[int8_name] = fp32_name
        reference[fp32_name] = fp32_name
    return candidates, reference


def catalogue_inputs(inputs: np.ndarray, num_items: int, seed: int = 0) -> np.ndarray:
    """``inputs`` with every nonzero id redrawn uniformly from 1..num_items (padding kept)."""
    rng = np.random.default_rng(seed)
    out = inputs.copy()
    mask = out != 0
    out[mask] = rng.integers(1, num_items + 1, int(mask.sum()))
    return out

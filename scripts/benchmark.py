#!/usr/bin/env python
"""Latency of exported SASRec models (INT8 vs FP32) in onnxruntime on the CPU, with PTQ baselines.

Examples:
    python scripts/benchmark.py --runs runs/fp32 runs/lsq --out bench.json
    python scripts/benchmark.py --runs runs/fp32 runs/lsq runs/ste --batches 1 256 --threads 1 2 \
        --repeats 100 --sweep-hidden 50 128 256 --out bench.json

What is measured: the wall-clock time of one onnxruntime ``session.run`` of every run folder's
ONNX model (DIR/model_int8.onnx or DIR/model_fp32.onnx; built in memory from the run's model when
the file is missing) on a batch of real test-user sequences (``item_seq`` (B, max_len), the last
max_len history items left-padded as in evaluation; batch 1 cycles through users), at every
--batches size and --threads count (intra-op threads; one inter-op thread, sequential execution,
full graph optimisation). After --warmup untimed rounds, --repeats rounds each time one call of
every model, in a rotated order, on the same batch, so machine drift hits all models alike.
Reported: median and p90 in ms, and the ratio to the FP32 ONNX model in the same case.

Baselines (when an FP32 run is among --runs, unless --no-baselines), timed in the same loop:
``torch_eager_fp32`` (``model.score_last`` under ``torch.inference_mode``,
``torch.set_num_threads(threads)``), ``ort_quantize_dynamic`` and ``ort_quantize_static``
(onnxruntime's post-training quantization of the FP32 graph, static calibrated on
--calibration-users training sequences; see export/ort_baselines.py). Test nDCG@10/Hit@10 (full
ranking) of every timed model: from DIR/parity.json when it was measured on the same dataset and
on this very ONNX file (its sha256 is parity.json's "onnx_sha256"; the size alone proves nothing,
two graphs of one architecture have the same), else computed with qat.evaluate.

Fused INT8 graphs (unless --no-fused): every INT8 run's graph with the fused custom-op kernels
(``build_sasrec_onnx(fused=True)``, export/native: the same uint8 results as the exact graph,
one pass per op), named ``<model>_fused``, built in memory; its parity with the torch INT8
model is measured and recorded in "quality". The sweep times a fused INT8 model too
(``sweep_int8_fused_d<D>``). Needs a C++ compiler the first time (export/native_ops.py); without
one the fused graphs are skipped with a note.

--int8-fast: also time every INT8 run's plain-op graph (``build_sasrec_onnx(torch_exact=False)``:
QuantizeLinear/LayerNormalization/QLinearAdd instead of the ops that round exactly like torch),
named ``<model>_fast``; its parity with the torch INT8 model (nDCG@10, Hit@10, top-10 agreement,
pass/fail at export/parity.py's thresholds) is measured and recorded in "quality".

--torch-int8: also time every INT8 run's converted torch model in eager mode
(``torch_eager_<model>``: torch's own fbgemm INT8 kernels, the reference the exact ONNX graph
reproduces).

--sweep-hidden D...: for each width D, a randomly initialised SASRec (the runs' num_items and
max_len, the first run's blocks and heads) in FP32 and converted to INT8 the project's way (STE,
8 bits, calibrated on random sequences), both timed at every batch/threads case.

Output: --out JSON {"machine", "settings", "models", "baselines", "records", "quality", "sweep",
"notes"}, written atomically. Exit status: 0 done; 2 bad input, e.g. a run's model or ONNX file
that cannot be loaded (one "error: <file>: <reason>" line; nothing is written).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data import LeaveOneOutSplit
from export import (
    OnnxScorer,
    RunModel,
    build_sasrec_onnx,
    check_parity,
    load_run,
    make_session,
    native_ops,
)
from export.latency import (
    Call,
    batch_pool,
    eval_inputs,
    latency_stats,
    machine_info,
    ort_call,
    time_interleaved,
    timing_session,
    torch_call,
)
from export.ort_baselines import (
    PTQResult,
    calibration_inputs,
    quantize_dynamic_model,
    quantize_static_model,
)
from export.onnx_file import file_sha256
from export.results_table import FUSED_SUFFIX
from export.run_folder import PARITY, load_run_split
from qat.checkpoint import save_json
from qat.cli import ArgumentParser, run_cli
from qat.config import SASRecConfig
from qat.evaluate import evaluate
from qat.finetune import prepare_for_method, to_int8
from qat.model import SASRec
from qat.quantize import ignore_torch_quantization_warnings
from qat.registry import get_method

WHICH = "test"
EVAL_BATCH = 512
SWEEP_METHOD, SWEEP_BITS, SWEEP_CALIBRATION = "ste", 8, 64
TORCH_EAGER_PREFIX = "torch_eager_"
TORCH_EAGER, ORT_DYNAMIC, ORT_STATIC = "torch_eager_fp32", "ort_quantize_dynamic", \
    "ort_quantize_static"


@dataclass
class Candidate:
    """One timed model: an ONNX graph (``onnx``) or a torch model (``torch_model``)."""

    name: str
    kind: str  # onnx_fp32 | onnx_int8 | onnx_int8_fused | onnx_int8_fast | torch_eager | ort_ptq
    run: str | None
    method: str
    bits: int
    source: str
    onnx: bytes | None = None
    torch_model: SASRec | None = None
    sweep_hidden: int | None = None

    def call(self, threads: int, allow_spinning: bool) -> Call:
        """The timed callable at ``threads`` (a new session; the caller sets torch threads)."""
        if self.onnx is not None:
            return ort_call(timing_session(self.onnx, threads=threads,
                                           allow_spinning=allow_spinning))
        assert self.torch_model is not None
        return torch_call(self.torch_model.score_last)

    def label(self) -> dict[str, Any]:
        out = {"model": self.name, "kind": self.kind, "run": self.run, "method": self.method,
               "bits": self.bits}
        if self.sweep_hidden is not None:
            out["sweep_hidden"] = self.sweep_hidden
        return out

    def describe(self) -> dict[str, Any]:
        return {**self.label(), "source": self.source,
                "onnx_bytes": None if self.onnx is None else len(self.onnx)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, nargs="+", required=True, metavar="RUN_DIR",
                   help="train_qat.py run folders (FP32: checkpoint.pt; QAT: model_int8.pt), "
                        "exported with export_int8.py or not")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 256], metavar="B",
                   help="batch sizes (default 1 256)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], metavar="N",
                   help="intra-op thread counts (default 1 2)")
    p.add_argument("--repeats", type=int, default=100,
                   help="timed calls per model and case (default 100)")
    p.add_argument("--warmup", type=int, default=10,
                   help="untimed calls per model and case first (default 10)")
    p.add_argument("--data", default=None, metavar="PATH_OR_NAME",
                   help="dataset (default: the one in the first run's config.json)")
    p.add_argument("--mirror", default=None, metavar="URL",
                   help="download a named dataset from this URL (as train_qat.py --mirror)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="download cache for named datasets")
    p.add_argument("--no-baselines", dest="baselines", action="store_false",
                   help="skip torch eager and onnxruntime PTQ baselines")
    p.add_argument("--calibration-users", type=int, default=512,
                   help="training sequences calibrating ort quantize_static (default 512)")
    p.add_argument("--no-fused", dest="fused", action="store_false",
                   help="skip the INT8 graphs with fused custom-op kernels (timed by default)")
    p.add_argument("--int8-fast", action="store_true",
                   help="also time each INT8 run's plain-op graph (not bit-exact with torch) "
                        "and measure its parity")
    p.add_argument("--torch-int8", action="store_true",
                   help="also time each INT8 run's converted torch model (eager, fbgemm)")
    p.add_argument("--sweep-hidden", type=int, nargs="+", default=[], metavar="D",
                   help="also time random FP32/INT8 SASRec at these hidden sizes")
    p.add_argument("--ort-spinning", action="store_true",
                   help="let onnxruntime worker threads spin between runs (its default; off "
                        "here because interleaved sessions would compete with spinning workers)")
    return p.parse_args(argv)


def check_numbers(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` for out-of-range numbers; deduplicate lists (order kept)."""
    for name, values, low in (("--batches", args.batches, 1), ("--threads", args.threads, 1),
                              ("--sweep-hidden", args.sweep_hidden, 1)):
        bad = [v for v in values if v < low]
        if bad:
            raise ValueError(f"{name} values must be >= {low}, got {bad[0]}")
    for name, value, low in (("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0),
                             ("--calibration-users", args.calibration_users, 1)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    for name in ("batches", "threads", "sweep_hidden"):
        setattr(args, name, list(dict.fromkeys(getattr(args, name))))
    if args.out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; give a file name")


def load_runs(paths: Sequence[Path]) -> list[RunModel]:
    """Every run's model; runs must share num_items and max_len (same inputs for all)."""
    seen: dict[Path, Path] = {}
    for path in paths:
        key = path.resolve()
        if key in seen:
            raise ValueError(f"--runs lists {path} twice")
        seen[key] = path
    runs = [load_run(path) for path in paths]
    first = runs[0].model.config
    for run in runs[1:]:
        config = run.model.config
        for name in ("num_items", "max_len"):
            if getattr(config, name) != getattr(first, name):
                raise ValueError(f"{run.run_dir} has {name}={getattr(config, name)} but "
                                 f"{runs[0].run_dir} has {getattr(first, name)}: benchmark runs "
                                 "of one dataset and max_len together")
    return runs


def run_names(runs: list[RunModel]) -> list[str]:
    """``fp32`` or ``<method>_w<bits>``; colliding labels get the folder name appended."""
    labels = ["fp32" if r.kind == "fp32" else f"{r.method}_w{r.bits}" for r in runs]
    counts = Counter(labels)
    names = [f"{label}_{r.run_dir.name}" if counts[label] > 1 else label
             for label, r in zip(labels, runs)]
    out: list[str] = []
    for name in names:
        unique, i = name, 2
        while unique in out:
            unique, i = f"{name}_{i}", i + 1
        out.append(unique)
    return out


def run_candidates(runs: list[RunModel], notes: list[str]) -> list[Candidate]:
    """The ONNX model of every run: its file if exported, else built in memory (noted)."""
    out = []
    for run, name in zip(runs, run_names(runs)):
        path = run.onnx_path
        if path.is_file():
            try:
                payload, source = path.read_bytes(), str(path)
            except OSError as err:
                raise ValueError(f"{path}: cannot read it ({err.strerror or err})") from err
            _check_metadata(payload, run, path)
        else:
            meta = {"sasrec_qat.method": run.method, "sasrec_qat.bits": run.bits}
            payload = build_sasrec_onnx(run.model, metadata=meta).SerializeToString()
            source = f"built in memory (no {path.name} in {run.run_dir})"
            notes.append(f"{name}: {source}")
        out.append(Candidate(name, f"onnx_{run.kind}", str(run.run_dir), run.method, run.bits,
                             source, onnx=payload))
    return out


def int8_variant_candidates(runs: list[RunModel], suffix: str, kind: str,
                            **build_options: bool) -> list[Candidate]:
    """Every INT8 run's graph built in memory with ``build_sasrec_onnx(**build_options)``,
    named ``<model><suffix>``."""
    options = ", ".join(f"{k}={v}" for k, v in build_options.items())
    out = []
    for run, name in zip(runs, run_names(runs)):
        if run.kind == "int8":
            meta = {"sasrec_qat.method": run.method, "sasrec_qat.bits": run.bits}
            payload = build_sasrec_onnx(run.model, metadata=meta, **build_options)
            out.append(Candidate(f"{name}{suffix}", kind, str(run.run_dir), run.method, run.bits,
                                 f"built in memory with {options}",
                                 onnx=payload.SerializeToString()))
    return out


def fused_candidates(runs: list[RunModel]) -> list[Candidate]:
    """Every INT8 run's graph with fused custom-op kernels (``fused=True``).

    Raises:
        NativeBuildError: the custom-op library cannot be built here.
    """
    native_ops.library_path()  # build first: a clear error before any graph is made
    return int8_variant_candidates(runs, FUSED_SUFFIX, "onnx_int8_fused", fused=True)


def fast_candidates(runs: list[RunModel]) -> list[Candidate]:
    """Every INT8 run's plain-op graph (``torch_exact=False``)."""
    return int8_variant_candidates(runs, "_fast", "onnx_int8_fast", torch_exact=False)


def torch_int8_candidates(runs: list[RunModel]) -> list[Candidate]:
    """Every INT8 run's converted torch model, run eagerly by torch's quantized kernels."""
    return [Candidate(f"{TORCH_EAGER_PREFIX}{name}", "torch_eager", str(run.run_dir), run.method,
                      run.bits, f"torch eager INT8 model of {run.run_dir}", torch_model=run.model)
            for run, name in zip(runs, run_names(runs)) if run.kind == "int8"]


def _check_metadata(payload: bytes, run: RunModel, path: Path) -> None:
    """An exported file must load and describe the run's model (a stale export would mislead).

    Raises:
        ValueError: ``<path>: <reason>`` for a file onnxruntime cannot load (truncated, not
            ONNX, fused kernels that cannot be built here) or without a ``scores`` output, and
            for dimensions other than the run's model's.
    """
    fix = f"re-export it with scripts/export_int8.py --run {run.run_dir}"
    try:
        session = make_session(payload, threads=1)
        OnnxScorer(session)  # the output every timed call and the quality evaluation read
    except native_ops.NativeBuildError as err:
        raise ValueError(f"{path}: {str(err).splitlines()[0]}") from err
    except ValueError as err:
        reason = str(err).removeprefix("onnxruntime cannot load the model: ")
        raise ValueError(f"{path}: not a loadable SASRec ONNX model ({reason}); {fix}") from err
    props = session.get_modelmeta().custom_metadata_map
    for name in ("num_items", "max_len", "hidden"):
        recorded = props.get(f"sasrec_qat.{name}")
        expected = getattr(run.model.config, name)
        if recorded is not None and int(recorded) != expected:
            raise ValueError(f"{path} has {name}={recorded} but the run's model has {expected}: "
                             f"{fix}")


def baseline_candidates(fp32_run: RunModel, fp32: Candidate, split: LeaveOneOutSplit,
                        calibration_users: int) -> tuple[list[Candidate], list[PTQResult]]:
    """Torch eager FP32 and onnxruntime's quantize_dynamic/quantize_static of ``fp32``."""
    assert fp32.onnx is not None
    run = str(fp32_run.run_dir)
    out = [Candidate(TORCH_EAGER, "torch_eager", run, "fp32", 32,
                     f"torch eager model of {run}", torch_model=fp32_run.model)]
    max_len = fp32_run.model.config.max_len
    results = [quantize_dynamic_model(fp32.onnx),
               quantize_static_model(fp32.onnx, calibration_inputs(
                   split, max_len=max_len, users=calibration_users))]
    for name, result in zip((ORT_DYNAMIC, ORT_STATIC), results):
        if result.model is not None:
            out.append(Candidate(name, "ort_ptq", run, result.name, 8,
                                 f"onnxruntime {result.name} of the FP32 graph "
                                 f"({fp32.source})",
                                 onnx=result.model))
    return out, results


def quality(candidates: list[Candidate], runs: list[RunModel], data: str,
            split: LeaveOneOutSplit) -> list[dict[str, Any]]:
    """Test nDCG@10/Hit@10 of every candidate (parity.json when it matches, else computed)."""
    by_dir = {str(r.run_dir): r for r in runs}
    out = []
    for c in candidates:
        if c.kind in ("onnx_int8_fast", "onnx_int8_fused"):
            assert c.onnx is not None
            report = check_parity(by_dir[c.run or ""].model, make_session(c.onnx), split, WHICH,
                                  batch_size=EVAL_BATCH)
            out.append({"model": c.name, "kind": c.kind, "ndcg@10": report.ndcg["onnxruntime"],
                        "hit@10": report.hit["onnxruntime"], "users": report.users,
                        "top10_agreement": report.top10_agreement,
                        "ndcg@10_delta": report.ndcg_delta, "parity_passed": report.passed,
                        "source": "computed (onnxruntime), parity vs the torch INT8 model"})
            continue
        recorded = _parity_quality(c, by_dir.get(c.run or ""), data)
        if recorded is not None:
            out.append({"model": c.name, "kind": c.kind, **recorded})
            continue
        max_len = runs[0].model.config.max_len
        if c.onnx is not None:
            scorer, source = OnnxScorer(make_session(c.onnx)), "computed (onnxruntime)"
        else:
            assert c.torch_model is not None
            scorer, source = c.torch_model.score_last, "computed (torch)"
        metrics = evaluate(scorer, split, WHICH, max_len=max_len, batch_size=EVAL_BATCH)
        out.append({"model": c.name, "kind": c.kind, "ndcg@10": metrics["ndcg@10"],
                    "hit@10": metrics["hit@10"], "users": metrics["users"], "source": source})
    return out


def _parity_quality(c: Candidate, run: RunModel | None, data: str) -> dict[str, Any] | None:
    """The run's parity.json numbers if they were measured on this very ONNX file and data.

    "This very file" is parity.json's ``onnx_sha256``: for the run's ONNX candidate the sha256
    of the bytes timed, for its torch eager model (parity.json's torch side) that of the run's
    ONNX file, i.e. the record still belongs to the run's current export. A record without a
    sha256 (written before export_int8.py recorded it) is not trusted: the file size it has
    is the same for any two models of one architecture.
    """
    if run is None or c.kind not in ("onnx_fp32", "onnx_int8", "torch_eager"):
        return None
    path = run.run_dir / PARITY
    try:
        parity = json.loads(path.read_text())
        if (parity.get("split") != WHICH or parity.get("kind") != run.kind
                or not _same_data(str(parity.get("dataset")), data)
                or not run.onnx_path.is_file()
                or (c.kind != "torch_eager" and c.source != str(run.onnx_path))):
            return None
        recorded = parity.get("onnx_sha256")
        actual = (file_sha256(run.onnx_path) if c.onnx is None
                  else hashlib.sha256(c.onnx).hexdigest())  # the bytes timed, read once
        if not isinstance(recorded, str) or recorded != actual:
            return None
        which = "torch" if c.kind == "torch_eager" else "onnxruntime"
        return {"ndcg@10": float(parity["ndcg@10"][which]),
                "hit@10": float(parity["hit@10"][which]), "users": parity.get("users"),
                "source": f"{path} ({which})"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _same_data(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def time_cases(candidates: list[Candidate], inputs: np.ndarray, args: argparse.Namespace,
               what: str) -> list[dict[str, Any]]:
    """Interleaved timing of ``candidates`` at every threads x batch case -> records."""
    records = []
    torch_threads = torch.get_num_threads()
    try:
        for threads in args.threads:
            torch.set_num_threads(threads)
            calls = [c.call(threads, args.ort_spinning) for c in candidates]
            for batch in args.batches:
                print(f"timing {what}: {len(candidates)} models, batch {batch}, {threads} "
                      f"thread(s), {args.warmup} + {args.repeats} rounds", file=sys.stderr)
                pool = batch_pool(inputs, batch=batch, count=args.warmup + args.repeats)
                times = time_interleaved(calls, pool, warmup=args.warmup, repeats=args.repeats)
                for c, t in zip(candidates, times):
                    records.append({**c.label(), "batch": batch, "threads": threads,
                                    **latency_stats(t)})
    finally:
        torch.set_num_threads(torch_threads)
    return records


def add_ratios(records: list[dict[str, Any]], reference: dict[int | None, str]) -> None:
    """``ratio_to_fp32``: median over the reference model's median in the same case (None if
    there is no reference). ``reference`` maps ``sweep_hidden`` (None: the runs) to a name."""
    medians = {(r["model"], r["batch"], r["threads"]): r["median_ms"] for r in records}
    for r in records:
        ref = reference.get(r.get("sweep_hidden"))
        base = medians.get((ref, r["batch"], r["threads"]))
        r["ratio_to_fp32"] = None if base is None else r["median_ms"] / base


def sweep_candidates(hidden: int, first: SASRecConfig, seed: int = 0, *,
                     fused: bool = False) -> list[Candidate]:
    """Random FP32 SASRec of width ``hidden`` and its INT8 twin (STE, calibrated, converted),
    with ``fused`` also the INT8 twin's fused graph."""
    config = SASRecConfig(num_items=first.num_items, max_len=first.max_len, hidden=hidden,
                          blocks=first.blocks, heads=first.heads, dropout=first.dropout)
    generator = torch.Generator().manual_seed(seed + hidden)
    torch.manual_seed(seed + hidden)
    fp32 = SASRec(config).eval()
    calibration = torch.randint(1, config.num_items + 1, (SWEEP_CALIBRATION, config.max_len),
                                generator=generator)
    pads = torch.randint(0, config.max_len, (SWEEP_CALIBRATION, 1), generator=generator)
    calibration[torch.arange(config.max_len).unsqueeze(0) < pads] = 0  # left padding
    qat_model = prepare_for_method(fp32, get_method(SWEEP_METHOD), SWEEP_BITS, calibration)
    int8 = to_int8(qat_model)
    source = f"random init (seed {seed + hidden}), hidden {hidden}"
    int8_source = (f"{source}, {SWEEP_METHOD} calibrated on {SWEEP_CALIBRATION} random "
                   "sequences, converted")
    out = [Candidate(f"sweep_fp32_d{hidden}", "onnx_fp32", None, "fp32", 32, source,
                     onnx=build_sasrec_onnx(fp32).SerializeToString(), sweep_hidden=hidden),
           Candidate(f"sweep_int8_d{hidden}", "onnx_int8", None, SWEEP_METHOD, SWEEP_BITS,
                     int8_source, onnx=build_sasrec_onnx(int8).SerializeToString(),
                     sweep_hidden=hidden)]
    if fused:
        out.append(Candidate(f"sweep_int8{FUSED_SUFFIX}_d{hidden}", "onnx_int8_fused", None,
                             SWEEP_METHOD, SWEEP_BITS, f"{int8_source}, fused kernels",
                             onnx=build_sasrec_onnx(int8, fused=True).SerializeToString(),
                             sweep_hidden=hidden))
    return out


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Everything but writing: the bench.json content. Raises on bad input."""
    check_numbers(args)
    runs = load_runs(args.runs)
    first = runs[0].model.config
    bad = [d for d in args.sweep_hidden if d % first.heads]
    if bad:
        raise ValueError(f"--sweep-hidden {bad[0]} is not divisible by the first run's "
                         f"{first.heads} heads")
    data, split = load_run_split(runs[0].run_dir, first.num_items, args.data,
                                 cache_dir=args.cache_dir, mirror=args.mirror, shared=True,
                                 also=[r.run_dir for r in runs[1:]])
    notes: list[str] = []
    candidates = run_candidates(runs, notes)
    fused = args.fused
    if fused:
        try:
            candidates += fused_candidates(runs)
        except native_ops.NativeBuildError as err:
            fused = False
            notes.append(f"fused INT8 graphs skipped: {err.reason}")
    if args.int8_fast:
        candidates += fast_candidates(runs)
    if args.torch_int8:
        candidates += torch_int8_candidates(runs)
    baselines: list[PTQResult] = []
    fp32_index = next((i for i, r in enumerate(runs) if r.kind == "fp32"), None)
    if args.baselines and fp32_index is None:
        notes.append("no FP32 run among --runs: baselines skipped")
    if args.baselines and fp32_index is not None:
        extra, baselines = baseline_candidates(runs[fp32_index], candidates[fp32_index], split,
                                               args.calibration_users)
        candidates += extra
        for result in baselines:
            if result.model is None:
                notes.append(f"ort {result.name} failed, not timed: {result.error}")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"quality of {len(candidates)} models on {data} ({WHICH})", file=sys.stderr)
    scores = quality(candidates, runs, data, split)
    inputs = eval_inputs(split, WHICH, max_len=first.max_len)
    records = time_cases(candidates, inputs, args, "runs")
    add_ratios(records, {None: None if fp32_index is None else candidates[fp32_index].name})
    sweep: list[dict[str, Any]] = []
    for hidden in args.sweep_hidden:
        pair = sweep_candidates(hidden, first, fused=fused)
        sweep += time_cases(pair, inputs, args, f"sweep hidden {hidden}")
    add_ratios(sweep, {d: f"sweep_fp32_d{d}" for d in args.sweep_hidden})
    settings = {
        "runs": [str(r.run_dir) for r in runs], "data": data, "split": WHICH,
        "test_users": int(len(inputs)), "num_items": first.num_items, "max_len": first.max_len,
        "batches": args.batches, "threads": args.threads, "repeats": args.repeats,
        "warmup": args.warmup,
        "inputs": "test users' last max_len history items, left-padded (as eval_batches), "
                  "shuffled; batch b of a case holds the next B users cyclically",
        "schedule": "interleaved: each round times one call of every model on the same batch, "
                    "in a rotated order (balanced Latin square, export.latency.round_order)",
        "timer": "time.perf_counter_ns around one session.run / score_last call",
        "onnxruntime": {"graph_optimization": "all", "inter_op_threads": 1,
                        "execution_mode": "sequential", "allow_spinning": args.ort_spinning},
        "torch_eager": "model.score_last under torch.inference_mode, "
                       "torch.set_num_threads(threads)",
        "baselines": bool(args.baselines and fp32_index is not None),
        "baseline_source": None if fp32_index is None else str(runs[fp32_index].run_dir),
        "calibration_users": args.calibration_users, "sweep_hidden": args.sweep_hidden,
        "fused": fused, "int8_fast": args.int8_fast, "torch_int8": args.torch_int8,
        "sweep_quantization": f"{SWEEP_METHOD}, {SWEEP_BITS}-bit weights, "
                              f"{SWEEP_CALIBRATION} random calibration sequences",
    }
    return {"machine": machine_info(), "settings": settings,
            "models": [c.describe() for c in candidates],
            "baselines": [r.to_dict() for r in baselines], "records": records,
            "quality": scores, "sweep": sweep, "notes": notes}


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def print_tables(bench: dict[str, Any]) -> None:
    """Latency per model and case, the sweep's INT8/FP32 ratios, and quality."""
    print(f"{'model':26s}{'batch':>6s}{'threads':>8s}{'median ms':>11s}{'p90 ms':>10s}"
          f"{'vs fp32':>9s}")
    for r in sorted(bench["records"], key=lambda r: (r["threads"], r["batch"])):
        print(f"{r['model']:26s}{r['batch']:6d}{r['threads']:8d}{r['median_ms']:11.3f}"
              f"{r['p90_ms']:10.3f}{_ratio(r['ratio_to_fp32']):>9s}")
    ints = [r for r in bench["sweep"] if r["kind"] in ("onnx_int8", "onnx_int8_fused")]
    if ints:
        fp = {(r["sweep_hidden"], r["batch"], r["threads"]): r for r in bench["sweep"]
              if r["kind"] == "onnx_fp32"}
        print(f"\nsweep (random weights){'model':>22s}{'batch':>6s}{'threads':>8s}"
              f"{'fp32 ms':>10s}{'int8 ms':>10s}{'int8/fp32':>11s}")
        for r in sorted(ints, key=lambda r: (r["sweep_hidden"], r["threads"], r["batch"],
                                             r["model"])):
            f = fp[(r["sweep_hidden"], r["batch"], r["threads"])]
            print(f"{'':22s}{r['model']:>22s}{r['batch']:6d}{r['threads']:8d}"
                  f"{f['median_ms']:10.3f}{r['median_ms']:10.3f}"
                  f"{_ratio(r['ratio_to_fp32']):>11s}")
    if bench["quality"]:
        print(f"\n{'model':26s}{'nDCG@10':>9s}{'Hit@10':>9s}  source")
        for q in bench["quality"]:
            agreement = (f", top-10 agreement {q['top10_agreement']:.4f}"
                         if "top10_agreement" in q else "")
            print(f"{q['model']:26s}{q['ndcg@10']:9.4f}{q['hit@10']:9.4f}  {q['source']}"
                  f"{agreement}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with one ``error:`` line for bad input)."""
    return run_cli(_main, argv, extra=(native_ops.NativeBuildError,))


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    ignore_torch_quantization_warnings()
    bench = run_benchmark(args)
    try:
        save_json(bench, args.out)
    except OSError as err:
        raise OSError(f"cannot write {args.out}: {err}") from err
    print_tables(bench)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

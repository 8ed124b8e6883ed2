"""The models the benchmark times: each run folder's graph, its variants, and the baselines.

    runs = load_runs([Path("runs/fp32"), Path("runs/lsq_w8")])
    candidates = run_candidates(runs, notes) + fused_candidates(runs)
    candidates += baseline_candidates(runs[0], candidates[0], split, calibration_users=512)[0]

A ``Candidate`` is one timed model: ONNX bytes (timed in an onnxruntime session) or a torch
model (timed eagerly). Candidates of a run carry the run's model file and its sha256, and the
run's own graph the ONNX file it was read from, so bench.json names what it timed
(``export.bench_record.TimedModel``).
"""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from data import LeaveOneOutSplit
from export import native_ops
from export.bench_record import FAST_SUFFIX, FUSED_SUFFIX, TORCH_EAGER_PREFIX, TimedModel, Timing
from export.latency import Call, ort_call, timing_session, torch_call
from export.ort_baselines import (
    PTQResult,
    calibration_inputs,
    quantize_dynamic_model,
    quantize_static_model,
)
from export.run_folder import RunModel, load_run
from export.runtime import OnnxScorer, make_session
from export.sasrec_graph import build_sasrec_onnx
from qat.config import SASRecConfig
from qat.finetune import prepare_for_method, to_int8
from qat.model import SASRec
from qat.records import file_sha256
from qat.registry import get_method

TORCH_EAGER = f"{TORCH_EAGER_PREFIX}fp32"
ORT_DYNAMIC, ORT_STATIC = "ort_quantize_dynamic", "ort_quantize_static"
SWEEP_METHOD, SWEEP_BITS, SWEEP_CALIBRATION = "ste", 8, 64
TOP_K_SUFFIX = "_top_k"
TOP_K_KINDS = ("onnx_fp32", "onnx_int8", "onnx_int8_fused")  # graphs with a top-k twin


@dataclass
class Candidate:
    """One timed model: an ONNX graph (``onnx``) or a torch model (``torch_model``).

    Attributes:
        name: its name in bench.json.
        kind: one of ``export.bench_record.KINDS``.
        run: the run folder it comes from (None: the sweep's random models).
        method, bits: the run's method and weight bits (a PTQ baseline: its function and 8).
        source: where it came from, in words.
        onnx, torch_model: what is timed (exactly one is set).
        sweep_hidden: the sweep's width (None: from a run).
        onnx_file: the run's ONNX file ``onnx`` was read from (None: built in memory).
        model_file, model_sha256: the run's torch model file and its sha256 at load time.
        serving: ``"scores"`` (full-score graph) or ``"top_k"`` (top-k serving graph).
        scoring: an INT8 graph's scoring path where the builder chose it (None: FP32, or the
            backend's default).
    """

    name: str
    kind: str
    run: str | None
    method: str
    bits: int
    source: str
    onnx: bytes | None = None
    torch_model: SASRec | None = None
    sweep_hidden: int | None = None
    onnx_file: str | None = None
    model_file: str | None = None
    model_sha256: str | None = None
    serving: str = "scores"
    scoring: str | None = None

    def call(self, threads: int, allow_spinning: bool) -> Call:
        """The timed callable at ``threads`` (a new session; the caller sets torch threads)."""
        if self.onnx is not None:
            return ort_call(timing_session(self.onnx, threads=threads,
                                           allow_spinning=allow_spinning))
        assert self.torch_model is not None
        return torch_call(self.torch_model.score_last)

    def timing(self, batch: int, threads: int, stats: dict[str, float | int]) -> Timing:
        """Its ``Timing`` in one case from ``export.latency.latency_stats`` (no ratio yet)."""
        return Timing(model=self.name, kind=self.kind, run=self.run, method=self.method,
                      bits=self.bits, batch=batch, threads=threads,
                      median_ms=float(stats["median_ms"]), p90_ms=float(stats["p90_ms"]),
                      min_ms=float(stats["min_ms"]), repeats=int(stats["repeats"]),
                      ratio_to_fp32=None, sweep_hidden=self.sweep_hidden,
                      serving=self.serving, scoring=self.scoring)

    @property
    def onnx_sha256(self) -> str | None:
        """sha256 of the ONNX bytes timed (None: a torch model)."""
        return None if self.onnx is None else hashlib.sha256(self.onnx).hexdigest()

    def describe(self) -> TimedModel:
        """What bench.json says about it: identity, source, and the sha256 of what was timed."""
        return TimedModel(model=self.name, kind=self.kind, run=self.run, method=self.method,
                          bits=self.bits, source=self.source,
                          onnx_bytes=None if self.onnx is None else len(self.onnx),
                          onnx_sha256=self.onnx_sha256,
                          onnx_file=self.onnx_file, model_file=self.model_file,
                          model_sha256=self.model_sha256)


@dataclass(frozen=True)
class BenchRun:
    """A loaded run folder, its bench name and the sha256 of its model file when loaded."""

    run: RunModel
    name: str
    model_sha256: str

    def candidate(self, name: str, kind: str, source: str, *, onnx: bytes | None = None,
                  torch_model: SASRec | None = None, onnx_file: str | None = None,
                  method: str | None = None, bits: int | None = None) -> Candidate:
        """A ``Candidate`` of this run (``method``/``bits`` default to the run's)."""
        return Candidate(name, kind, str(self.run.run_dir),
                         self.run.method if method is None else method,
                         self.run.bits if bits is None else bits, source, onnx=onnx,
                         torch_model=torch_model, onnx_file=onnx_file,
                         model_file=self.run.model_path.name, model_sha256=self.model_sha256)


def load_runs(paths: Sequence[Path]) -> list[BenchRun]:
    """Every run's model, named, with its model file's sha256; runs must share num_items and
    max_len (same inputs for all).

    Raises:
        FileNotFoundError, ValueError: a folder listed twice, an unusable folder (the message
            names the file), runs of different dimensions.
    """
    seen: dict[Path, Path] = {}
    for path in paths:
        key = Path(path).resolve()
        if key in seen:
            raise ValueError(f"--runs lists {path} twice")
        seen[key] = Path(path)
    runs = [load_run(path) for path in paths]
    first = runs[0].model.config
    for run in runs[1:]:
        config = run.model.config
        for name in ("num_items", "max_len"):
            if getattr(config, name) != getattr(first, name):
                raise ValueError(f"{run.run_dir} has {name}={getattr(config, name)} but "
                                 f"{runs[0].run_dir} has {getattr(first, name)}: benchmark runs "
                                 "of one dataset and max_len together")
    return [BenchRun(run, name, file_sha256(run.model_path))
            for run, name in zip(runs, run_names(runs))]


def run_names(runs: Sequence[RunModel]) -> list[str]:
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


def run_candidates(runs: Sequence[BenchRun], notes: list[str]) -> list[Candidate]:
    """The ONNX model of every run: its file if exported, else built in memory (noted).

    Raises:
        ValueError: an exported file that cannot be read, loaded or scored, or that describes
            another model (``<file>: <reason>``).
    """
    out = []
    for bench_run in runs:
        run, name = bench_run.run, bench_run.name
        path = run.onnx_path
        onnx_file = None
        if path.is_file():
            try:
                payload, source = path.read_bytes(), str(path)
            except OSError as err:
                raise ValueError(f"{path}: cannot read it ({err.strerror or err})") from err
            _check_metadata(payload, run, path)
            onnx_file = path.name
        else:
            payload = build_sasrec_onnx(run.model, metadata=run.graph_metadata).SerializeToString()
            source = f"built in memory (no {path.name} in {run.run_dir})"
            notes.append(f"{name}: {source}")
        out.append(bench_run.candidate(name, f"onnx_{run.kind}", source, onnx=payload,
                                       onnx_file=onnx_file))
    return out


def int8_variant_candidates(runs: Sequence[BenchRun], suffix: str, kind: str,
                            **build_options: bool) -> list[Candidate]:
    """Every INT8 run's graph built in memory with ``build_sasrec_onnx(**build_options)``,
    named ``<model><suffix>``."""
    options = ", ".join(f"{k}={v}" for k, v in build_options.items())
    out = []
    for bench_run in runs:
        run = bench_run.run
        if run.kind == "int8":
            payload = build_sasrec_onnx(run.model, metadata=run.graph_metadata, **build_options)
            out.append(bench_run.candidate(f"{bench_run.name}{suffix}", kind,
                                           f"built in memory with {options}",
                                           onnx=payload.SerializeToString()))
    return out


def fused_candidates(runs: Sequence[BenchRun]) -> list[Candidate]:
    """Every INT8 run's graph with fused custom-op kernels (``fused=True``).

    Raises:
        NativeBuildError: the custom-op library cannot be built here.
    """
    native_ops.library_path()  # build first: a clear error before any graph is made
    return int8_variant_candidates(runs, FUSED_SUFFIX, "onnx_int8_fused", fused=True)


def built_graph_digests(runs: Sequence[BenchRun], *, fused: bool, int8_fast: bool,
                        top_k: int | None, sweep_hidden: Sequence[int] = ()) -> dict[str, str]:
    """sha256 of every graph the benchmark would build in memory from ``runs`` with these
    options (the fused, plain-op and top-k graphs, a run's graph where it has no exported
    file, and the ``sweep_hidden`` random models), by bench name: what
    ``BenchRecord.changed_graphs`` compares with a record. Built by the functions the
    benchmark uses, so the two cannot drift.

    Raises:
        NativeBuildError: ``fused`` where the kernels cannot be built.
    """
    graphs = run_candidates(runs, [])
    if fused:
        graphs += fused_candidates(runs)
    if int8_fast:
        graphs += fast_candidates(runs)
    if top_k is not None:
        graphs += top_k_candidates(graphs, runs, top_k)
    for hidden in sweep_hidden:
        graphs += sweep_candidates(hidden, runs[0].run.model.config, fused=fused)
    return {c.name: c.onnx_sha256 for c in graphs if c.onnx is not None and c.onnx_file is None}


def fast_candidates(runs: Sequence[BenchRun]) -> list[Candidate]:
    """Every INT8 run's plain-op graph (``torch_exact=False``)."""
    return int8_variant_candidates(runs, FAST_SUFFIX, "onnx_int8_fast", torch_exact=False)


def top_k_candidates(graphs: Sequence[Candidate], runs: Sequence[BenchRun],
                     k: int) -> list[Candidate]:
    """The top-k serving graph of every run graph among ``graphs`` (FP32, INT8 and fused INT8;
    not the baselines), named ``<name>_top_k``: the same run's model and backend built with
    ``build_sasrec_onnx(top_k=k)`` in memory (the backend's default scoring path), so the history
    is masked and the k best selected inside the graph.

    Raises:
        ValueError: ``k`` outside [1, num_items].
    """
    by_dir = {str(r.run.run_dir): r for r in runs}
    out = []
    for graph in graphs:
        if graph.kind not in TOP_K_KINDS or graph.run not in by_dir:
            continue
        bench_run = by_dir[graph.run]
        run = bench_run.run
        payload = build_sasrec_onnx(run.model, metadata=run.graph_metadata, top_k=k,
                                    fused=graph.kind == "onnx_int8_fused")
        candidate = bench_run.candidate(f"{graph.name}{TOP_K_SUFFIX}", graph.kind,
                                        f"built in memory, top-k graph (k={k})",
                                        onnx=payload.SerializeToString())
        candidate.serving = "top_k"
        out.append(candidate)
    return out


def torch_int8_candidates(runs: Sequence[BenchRun]) -> list[Candidate]:
    """Every INT8 run's converted torch model, run eagerly by torch's quantized kernels."""
    return [r.candidate(f"{TORCH_EAGER_PREFIX}{r.name}", "torch_eager",
                        f"torch eager INT8 model of {r.run.run_dir}", torch_model=r.run.model)
            for r in runs if r.run.kind == "int8"]


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


def baseline_candidates(fp32_run: BenchRun, fp32: Candidate, split: LeaveOneOutSplit,
                        calibration_users: int) -> tuple[list[Candidate], list[PTQResult]]:
    """Torch eager FP32 and onnxruntime's quantize_dynamic/quantize_static of ``fp32`` (the
    FP32 run's graph); a PTQ configuration that fails is recorded in its ``PTQResult``."""
    assert fp32.onnx is not None
    run = str(fp32_run.run.run_dir)
    out = [fp32_run.candidate(TORCH_EAGER, "torch_eager", f"torch eager model of {run}",
                              torch_model=fp32_run.run.model)]
    max_len = fp32_run.run.model.config.max_len
    results = [quantize_dynamic_model(fp32.onnx),
               quantize_static_model(fp32.onnx, calibration_inputs(
                   split, max_len=max_len, users=calibration_users))]
    for name, result in zip((ORT_DYNAMIC, ORT_STATIC), results):
        if result.model is not None:
            out.append(fp32_run.candidate(
                name, "ort_ptq", f"onnxruntime {result.name} of the FP32 graph ({fp32.source})",
                onnx=result.model, method=result.name, bits=8))
    return out, results


def random_fp32_and_int8(config: SASRecConfig, seed: int) -> tuple[SASRec, SASRec]:
    """A random FP32 SASRec (``torch.manual_seed(seed)``) and its INT8 twin, converted the
    project's way: ``SWEEP_METHOD`` at ``SWEEP_BITS`` bits, calibrated on ``SWEEP_CALIBRATION``
    random left-padded sequences (seeded by ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    fp32 = SASRec(config).eval()
    calibration = torch.randint(1, config.num_items + 1, (SWEEP_CALIBRATION, config.max_len),
                                generator=generator)
    pads = torch.randint(0, config.max_len, (SWEEP_CALIBRATION, 1), generator=generator)
    calibration[torch.arange(config.max_len).unsqueeze(0) < pads] = 0  # left padding
    qat_model = prepare_for_method(fp32, get_method(SWEEP_METHOD), SWEEP_BITS, calibration)
    return fp32, to_int8(qat_model)


def sweep_candidates(hidden: int, first: SASRecConfig, seed: int = 0, *,
                     fused: bool = False) -> list[Candidate]:
    """Random FP32 SASRec of width ``hidden`` and its INT8 twin (STE, calibrated, converted),
    with ``fused`` also the INT8 twin's fused graph.

    The runs' ``num_items`` and ``max_len`` and the first run's blocks, heads and dropout;
    seeded by ``seed + hidden``, so a sweep is the same models every time.
    """
    config = SASRecConfig(num_items=first.num_items, max_len=first.max_len, hidden=hidden,
                          blocks=first.blocks, heads=first.heads, dropout=first.dropout)
    fp32, int8 = random_fp32_and_int8(config, seed + hidden)
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

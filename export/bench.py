"""The latency benchmark: exported SASRec models (INT8 vs FP32) in onnxruntime on the CPU, with
PTQ baselines, as one call.

    settings = BenchSettings(runs=["runs/fp32", "runs/lsq_w8"], batches=[1, 256], threads=[1])
    record = run_benchmark(settings)          # export.bench_record.BenchRecord
    print_tables(record)
    benchmark_to_file(settings, "bench.json")  # what scripts/benchmark.py does

What is timed, and how (``scripts/benchmark.py --help`` says the same for the command line):
every run folder's ONNX model (its exported file, or built in memory when there is none), each
INT8 run's fused-kernel graph (``fused``), its plain-op graph (``int8_fast``) and its torch
model (``torch_int8``), and with an FP32 run among ``runs`` the baselines (torch eager FP32,
onnxruntime ``quantize_dynamic`` / ``quantize_static``), all interleaved on the same batches of
real test users at every batch size and thread count; then, apart, random models of the
``sweep_hidden`` widths. The pieces: ``export.bench_candidates`` (what is timed),
``export.bench_quality`` (their test nDCG@10), ``export.bench_timing`` (the timing loop),
``export.bench_record`` (bench.json).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from export import native_ops
from export.bench_candidates import (
    SWEEP_BITS,
    SWEEP_CALIBRATION,
    SWEEP_METHOD,
    TOP_K_SUFFIX,
    baseline_candidates,
    fast_candidates,
    fused_candidates,
    load_runs,
    run_candidates,
    sweep_candidates,
    top_k_candidates,
    torch_int8_candidates,
)
from export.bench_quality import WHICH, quality
from export.bench_record import Baseline, BenchRecord, BenchSetup, Timing
from export.bench_catalogue import TOP_K as CATALOGUE_TOP_K
from export.bench_catalogue import catalogue_candidates, catalogue_inputs
from export.bench_timing import add_ratios, add_ratios_by_name, time_cases
from export.latency import eval_inputs, machine_info
from export.ort_baselines import PTQResult
from export.run_folder import load_run_split
from qat.cli import check_output_file

DEFAULT_BATCHES = (1, 256)
DEFAULT_THREADS = (1, 2)
DEFAULT_REPEATS = 100
DEFAULT_WARMUP = 10
DEFAULT_CALIBRATION_USERS = 512

MAX_CATALOGUE_ITEMS = 5_000_000  # --items: a 5M x 50 float32 table is 1 GB; beyond, refuse


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """What to benchmark; checked when made (``ValueError`` naming the command-line flag).

    Attributes:
        runs: ``scripts/train_qat.py`` run folders (``--runs``), exported or not.
        batches, threads: batch sizes and intra-op thread counts to time (``--batches``,
            ``--threads``; duplicates dropped, order kept).
        repeats, warmup: timed and untimed calls per model and case.
        data: dataset (default: the one in the first run's config.json); ``mirror``,
            ``cache_dir``: how to download a named one.
        baselines: time torch eager FP32 and onnxruntime's PTQ of the FP32 run.
        calibration_users: training sequences calibrating ``quantize_static``.
        fused: time each INT8 run's fused-kernel graph (skipped with a note without a compiler).
        int8_fast: time each INT8 run's plain-op graph and measure its parity.
        torch_int8: time each INT8 run's converted torch model.
        sweep_hidden: also time random FP32/INT8 models of these widths.
        sweep_items: also time random FP32/INT8 models of these catalogue sizes, full-score and
            top-k graphs (``--items``; ``export.bench_catalogue``).
        top_k: also time the top-k serving graph (this k) of every run's FP32, INT8 and fused
            INT8 graph (``--top-k``; None: not), each compared with the FP32 run's top-k graph.
        ort_spinning: let onnxruntime's worker threads spin between runs.
    """

    runs: tuple[Path, ...]
    batches: tuple[int, ...] = DEFAULT_BATCHES
    threads: tuple[int, ...] = DEFAULT_THREADS
    repeats: int = DEFAULT_REPEATS
    warmup: int = DEFAULT_WARMUP
    data: str | None = None
    mirror: str | None = None
    cache_dir: Path | None = None
    baselines: bool = True
    calibration_users: int = DEFAULT_CALIBRATION_USERS
    fused: bool = True
    int8_fast: bool = False
    torch_int8: bool = False
    sweep_hidden: tuple[int, ...] = ()
    sweep_items: tuple[int, ...] = ()
    top_k: int | None = None
    ort_spinning: bool = False

    def __post_init__(self) -> None:
        """Normalise sequences to tuples (duplicates dropped) and refuse impossible numbers."""
        runs = (self.runs,) if isinstance(self.runs, (str, os.PathLike)) else self.runs
        object.__setattr__(self, "runs", tuple(Path(r) for r in runs))
        if not self.runs:
            raise ValueError("--runs needs at least one run folder")
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        for flag, name, low in (("--batches", "batches", 1), ("--threads", "threads", 1),
                                ("--sweep-hidden", "sweep_hidden", 1),
                                ("--items", "sweep_items", CATALOGUE_TOP_K)):
            values = tuple(dict.fromkeys(getattr(self, name)))
            bad = [v for v in values if v < low]
            if bad:
                why = (f" (its top-k graphs return {CATALOGUE_TOP_K} items)"
                       if name == "sweep_items" else "")
                raise ValueError(f"{flag} values must be >= {low}{why}, got {bad[0]}")
            object.__setattr__(self, name, values)
        too_many = [n for n in self.sweep_items if n > MAX_CATALOGUE_ITEMS]
        if too_many:
            raise ValueError(f"--items {too_many[0]} is above {MAX_CATALOGUE_ITEMS:,} (each "
                             "catalogue is a random model with tables of that many rows in "
                             "memory, several copies while exporting)")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"--top-k must be >= 1, got {self.top_k}")
        if not self.batches or not self.threads:
            raise ValueError("--batches and --threads need at least one value each")
        for flag, value, low in (("--repeats", self.repeats, 1), ("--warmup", self.warmup, 0),
                                 ("--calibration-users", self.calibration_users, 1)):
            if value < low:
                raise ValueError(f"{flag} must be >= {low}, got {value}")


def run_benchmark(settings: BenchSettings) -> BenchRecord:
    """Time everything ``settings`` asks for and measure its quality; writes nothing.

    Progress and notes go to stderr.

    Raises:
        FileNotFoundError, ValueError: an unusable run folder, model or ONNX file (the message
            names the file), runs of different dimensions, a sweep width the heads do not
            divide, an unusable or mismatched dataset.
        DownloadError: a named dataset that cannot be downloaded.
    """
    runs = load_runs(settings.runs)
    first = runs[0].run.model.config
    bad = [d for d in settings.sweep_hidden if d % first.heads]
    if bad:
        raise ValueError(f"--sweep-hidden {bad[0]} is not divisible by the first run's "
                         f"{first.heads} heads")
    data, split = load_run_split(runs[0].run.run_dir, first.num_items, settings.data,
                                 cache_dir=settings.cache_dir, mirror=settings.mirror,
                                 shared=True, also=[r.run.run_dir for r in runs[1:]])
    notes: list[str] = []
    candidates = run_candidates(runs, notes)
    fused = settings.fused
    if fused:
        try:
            candidates += fused_candidates(runs)
        except native_ops.NativeBuildError as err:
            fused = False
            notes.append(f"fused INT8 graphs skipped: {err.reason}")
    if settings.int8_fast:
        candidates += fast_candidates(runs)
    if settings.torch_int8:
        candidates += torch_int8_candidates(runs)
    if settings.top_k is not None:
        if settings.top_k > first.num_items:
            raise ValueError(f"--top-k must be in [1, {first.num_items}] (the runs' items), got "
                             f"{settings.top_k}")
        candidates += top_k_candidates(candidates, runs, settings.top_k)
    baselines: list[PTQResult] = []
    fp32_index = next((i for i, r in enumerate(runs) if r.run.kind == "fp32"), None)
    if settings.baselines and fp32_index is None:
        notes.append("no FP32 run among --runs: baselines skipped")
    if settings.baselines and fp32_index is not None:
        extra, baselines = baseline_candidates(runs[fp32_index], candidates[fp32_index], split,
                                               settings.calibration_users)
        candidates += extra
        for result in baselines:
            if result.model is None:
                notes.append(f"ort {result.name} failed, not timed: {result.error}")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    graded = sum(c.serving == "scores" for c in candidates)
    print(f"quality of {graded} models on {data} ({WHICH})", file=sys.stderr)
    scores = quality(candidates, runs, data, split)
    inputs = eval_inputs(split, WHICH, max_len=first.max_len)
    cases = dict(batches=settings.batches, threads=settings.threads, warmup=settings.warmup,
                 repeats=settings.repeats, allow_spinning=settings.ort_spinning)
    records = time_cases(candidates, inputs, what="runs", **cases)
    fp32_name = None if fp32_index is None else candidates[fp32_index].name
    # like with like: a top-k graph against the FP32 run's top-k graph
    add_ratios_by_name(records, {c.name: fp32_name if fp32_name is None or c.serving == "scores"
                                 else f"{fp32_name}{TOP_K_SUFFIX}" for c in candidates})
    sweep: list[Timing] = []
    sweep_graphs: dict[str, str] = {}
    for hidden in settings.sweep_hidden:
        models = sweep_candidates(hidden, first, fused=fused)
        sweep_graphs.update({c.name: c.onnx_sha256 for c in models if c.onnx is not None})
        sweep += time_cases(models, inputs, what=f"sweep hidden {hidden}", **cases)
    add_ratios(sweep, {d: f"sweep_fp32_d{d}" for d in settings.sweep_hidden})
    catalogue: list[Timing] = []
    for num_items in settings.sweep_items:
        models, reference = catalogue_candidates(num_items, first, fused=fused)
        timings = time_cases(models, catalogue_inputs(inputs, num_items),
                             what=f"catalogue of {num_items} items", **cases)
        for timing in timings:
            timing.sweep_items = num_items
        add_ratios_by_name(timings, reference)
        catalogue += timings
    setup = BenchSetup(
        runs=[str(r.run.run_dir) for r in runs], data=data, split=WHICH,
        test_users=int(len(inputs)), num_items=first.num_items, max_len=first.max_len,
        batches=list(settings.batches), threads=list(settings.threads),
        repeats=settings.repeats, warmup=settings.warmup,
        baselines=bool(settings.baselines and fp32_index is not None),
        baseline_source=None if fp32_index is None else str(runs[fp32_index].run.run_dir),
        calibration_users=settings.calibration_users, sweep_hidden=list(settings.sweep_hidden),
        fused=fused, int8_fast=settings.int8_fast, torch_int8=settings.torch_int8,
        onnxruntime={"graph_optimization": "all", "inter_op_threads": 1,
                     "execution_mode": "sequential", "allow_spinning": settings.ort_spinning},
        inputs="test users' last max_len history items, left-padded (as eval_batches), "
               "shuffled; batch b of a case holds the next B users cyclically",
        schedule="interleaved: each round times one call of every model on the same batch, "
                 "in a rotated order (balanced Latin square, export.latency.round_order)",
        timer="time.perf_counter_ns around one session.run / score_last call",
        torch_eager="model.score_last under torch.inference_mode, "
                    "torch.set_num_threads(threads)",
        sweep_quantization=f"{SWEEP_METHOD}, {SWEEP_BITS}-bit weights, "
                           f"{SWEEP_CALIBRATION} random calibration sequences",
        sweep_items=list(settings.sweep_items), top_k=settings.top_k,
        native_build=native_ops.build_key() if fused else None, sweep_graphs=sweep_graphs)
    return BenchRecord(machine=machine_info(), settings=setup,
                       models=[c.describe() for c in candidates],
                       baselines=[_baseline(r) for r in baselines], records=records,
                       quality=scores, sweep=sweep, notes=notes, catalogue=catalogue)


def _baseline(result: PTQResult) -> Baseline:
    """The record of how one onnxruntime PTQ baseline was built (no model bytes)."""
    return Baseline(name=result.name, ok=result.model is not None, options=result.options,
                    attempts=list(result.attempts), error=result.error)


def benchmark_to_file(settings: BenchSettings, out: str | Path) -> BenchRecord:
    """``run_benchmark``, then write ``out`` atomically and print the tables on stdout.

    Raises:
        ValueError: ``out`` is a folder (before anything is timed), and whatever
            ``run_benchmark`` raises (nothing is written then).
        OSError: ``out`` cannot be written.
    """
    out = Path(out)
    check_output_file(out)
    record = run_benchmark(settings)
    try:
        record.save(out)
    except OSError as err:
        raise OSError(f"cannot write {out}: {err}") from err
    print_tables(record)
    print(f"wrote {out}", file=sys.stderr)
    return record


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def print_tables(bench: BenchRecord) -> None:
    """Latency per model and case, the sweep's INT8/FP32 ratios, and quality, on stdout."""
    print(f"{'model':26s}{'batch':>6s}{'threads':>8s}{'median ms':>11s}{'p90 ms':>10s}"
          f"{'vs fp32':>9s}")
    for r in sorted(bench.records, key=lambda r: (r.threads, r.batch)):
        print(f"{r.model:26s}{r.batch:6d}{r.threads:8d}{r.median_ms:11.3f}"
              f"{r.p90_ms:10.3f}{_ratio(r.ratio_to_fp32):>9s}")
    ints = [r for r in bench.sweep if r.kind in ("onnx_int8", "onnx_int8_fused")]
    if ints:
        fp = {(r.sweep_hidden, r.batch, r.threads): r for r in bench.sweep
              if r.kind == "onnx_fp32"}
        print(f"\nsweep (random weights){'model':>22s}{'batch':>6s}{'threads':>8s}"
              f"{'fp32 ms':>10s}{'int8 ms':>10s}{'int8/fp32':>11s}")
        for r in sorted(ints, key=lambda r: (r.sweep_hidden or 0, r.threads, r.batch, r.model)):
            f = fp[(r.sweep_hidden, r.batch, r.threads)]
            print(f"{'':22s}{r.model:>22s}{r.batch:6d}{r.threads:8d}"
                  f"{f.median_ms:10.3f}{r.median_ms:10.3f}"
                  f"{_ratio(r.ratio_to_fp32):>11s}")
    if bench.catalogue:
        print(f"\ncatalogue (random weights){'model':>30s}{'batch':>6s}{'threads':>8s}"
              f"{'median ms':>11s}{'vs fp32':>9s}  scoring")
        for r in sorted(bench.catalogue, key=lambda r: (r.sweep_items or 0, r.threads, r.batch,
                                                        r.serving, r.model)):
            print(f"{'':26s}{r.model:>30s}{r.batch:6d}{r.threads:8d}{r.median_ms:11.3f}"
                  f"{_ratio(r.ratio_to_fp32):>9s}  {r.scoring or ''}")
    if bench.quality:
        print(f"\n{'model':26s}{'nDCG@10':>9s}{'Hit@10':>9s}  source")
        for q in bench.quality:
            agreement = (f", top-10 agreement {q.top10_agreement:.4f}"
                         if q.top10_agreement is not None else "")
            print(f"{q.model:26s}{q.ndcg:9.4f}{q.hit:9.4f}  {q.source}{agreement}")

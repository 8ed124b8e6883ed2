"""The whole study as one pipeline: train FP32 and every QAT method, export, benchmark, summarise.

    settings = PipelineSettings(data="ml-1m", out=Path("runs/all"), max_len=50, threads=1)
    status = run_pipeline(settings)

Steps, each a subprocess of a ``scripts/`` entry point (its own process: memory, threads and a
crash stay inside the step) whose output goes to the console and to ``OUT/logs/<step>.log``:

1. train fp32         train_qat.py --qconfig fp32 --out OUT/fp32
2. train <M>_w<B>     train_qat.py --qconfig M --bits B --init-from OUT/fp32 --out OUT/<M>_w<B>
3. export <run>       export_int8.py --run OUT/<run>: ONNX file + parity.json per run folder
4. benchmark          benchmark.py --runs OUT/fp32 OUT/<M>_w<B>... --out OUT/bench.json
5. summary            OUT/results_summary.csv and OUT/results_comparison.png (in process)

Whether a step is done is a function of the records it wrote (docs/design.md, "Files and
records"), matched to the files they describe by sha256: training when ``metrics.json``
(``MetricsRecord``) describes the checkpoint (and INT8 model) now in the folder; export when
``parity.json`` (``ParityRecord``) describes the model file and the ONNX file(s) as they are;
the benchmark when ``bench.json`` has a record of every run's current files at every batch size
and thread count, made with the requested settings on this machine's CPU (model name and
flags). A step that ran must leave its record current; one that exits 0 (or, for export, 1:
parity failed) without it has failed. A run folder with a checkpoint but no current metrics (an
interrupted run) is continued with ``--resume``.
"""
from __future__ import annotations

import collections
import functools
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from data import load_dataset
from export import native_ops
from export.bench_candidates import built_graph_digests, load_runs
from export.bench_record import BenchRecord
from export.latency import machine_info
from export.parity_record import ParityRecord
from export.results_plot import plot_comparison
from export.results_table import FP32_MODEL, RunResult, model_name, summary_rows
from export.results_table import write_summary_csv
from export.run_folder import PARITY, onnx_file_name
from qat.cli import EXIT_INTERRUPTED, EXIT_USER_ERROR
from qat.distributed import resolve_device
from qat.metrics_record import MetricsRecord
from qat.records import file_sha256
from qat.registry import METHODS
from qat.train_run import data_option_flags, data_options
from qat.run_files import CHECKPOINT, CONFIG, INT8_MODEL, METRICS

QAT_METHODS = tuple(name for name, method in METHODS.items() if method.is_quantized)


@dataclass(frozen=True)
class PipelineSettings:
    """What ``run_all.py`` was asked for (its flags); validated on construction.

    Attributes:
        data: dataset for every step (a name such as ``ml-1m`` or a file).
        out: the study folder: one run folder per model, logs/, bench.json, the summary.
        mirror: download URL for a dataset name (train_qat.py --mirror).
        columns, min_user_interactions: how an interaction log is read (train_qat.py
            ``--columns``, ``--min-user-interactions``; None: its defaults), given to every
            training run; later steps read them from the runs' config.json.
        methods, bits: one QAT run per method and bit width.
        max_len, hidden, blocks, heads, epochs, patience, batch_size, seed, threads: passed to
            the training runs when given (None: train_qat.py's default); architecture flags
            go to the FP32 run, QAT runs inherit its architecture.
        qat_epochs: the QAT runs' ``--epochs``.
        device: the training runs' ``--device`` (None: train_qat.py's default, auto); export,
            parity and latency run on the CPU.
        bench_batches, bench_threads, bench_repeats: the latency grid and repeats.
        no_baselines, int8_fast, torch_int8, sweep_hidden: benchmark.py options.
        bench_top_k: benchmark.py ``--top-k``: also time every run's top-k serving graph
            (None: not).
        summary_threads: the thread count whose latencies the summary shows (default: the
            largest of ``bench_threads``).
        quiet: the steps' output only in OUT/logs/; progress: a progress bar over the steps.

    Raises:
        ValueError: a method with bits it does not support, an unknown method, a count < 1,
            or ``summary_threads`` not among ``bench_threads``.
    """

    data: str
    out: Path = Path("runs/all")
    mirror: str | None = None
    columns: str | None = None
    min_user_interactions: int | None = None
    methods: tuple[str, ...] = ()
    bits: tuple[int, ...] = (8,)
    max_len: int | None = None
    hidden: int | None = None
    blocks: int | None = None
    heads: int | None = None
    epochs: int | None = None
    qat_epochs: int | None = None
    patience: int | None = None
    batch_size: int | None = None
    seed: int | None = None
    threads: int | None = None
    device: str | None = None
    bench_batches: tuple[int, ...] = (1, 256)
    bench_threads: tuple[int, ...] = (1, 2)
    bench_repeats: int = 100
    no_baselines: bool = False
    int8_fast: bool = False
    torch_int8: bool = False
    sweep_hidden: tuple[int, ...] = ()
    bench_top_k: int | None = None
    summary_threads: int | None = None
    quiet: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        methods = tuple(dict.fromkeys(self.methods or QAT_METHODS))
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "bits", tuple(dict.fromkeys(self.bits)))
        object.__setattr__(self, "out", Path(self.out))
        for name in ("bench_batches", "bench_threads", "sweep_hidden"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.device is not None:
            resolve_device(self.device)  # --device cuda without CUDA: refused before any step
        for method in methods:
            if method not in QAT_METHODS:
                raise ValueError(f"unknown QAT method {method!r}; choose among "
                                 + ", ".join(QAT_METHODS))
            supported = METHODS[method].supported_bits
            for bits in self.bits:
                if bits not in supported:
                    raise ValueError(f"{method} supports --bits "
                                     f"{', '.join(map(str, supported))}, not {bits}")
        positive = {"--bench-batches": self.bench_batches, "--bench-threads": self.bench_threads,
                    "--bench-repeats": (self.bench_repeats,)}
        # every optional count given must be positive: checked now, not when its step starts
        for name in ("bench_top_k", "epochs", "qat_epochs", "patience", "max_len", "hidden",
                     "blocks", "heads", "batch_size"):
            if getattr(self, name) is not None:
                positive["--" + name.replace("_", "-")] = (getattr(self, name),)
        if self.sweep_hidden:
            positive["--sweep-hidden"] = self.sweep_hidden
        for flag, values in positive.items():
            if not values or min(values) < 1:
                raise ValueError(f"{flag} must be >= 1")
        if self.summary_threads is None:
            object.__setattr__(self, "summary_threads", max(self.bench_threads))
        elif self.summary_threads not in self.bench_threads:
            raise ValueError(f"--summary-threads {self.summary_threads} is not among "
                             "--bench-threads " + " ".join(map(str, self.bench_threads)))

    @property
    def data_options(self) -> dict[str, Any]:
        """How the training runs read ``data`` (train_qat.py's ``--columns`` and
        ``--min-user-interactions``, its defaults where not given), as config.json records
        them (``data_options``) and ``data.load_dataset`` takes them."""
        return data_options(self.columns, self.min_user_interactions)


ROOT = Path(__file__).resolve().parents[1]  # the repository: scripts/ lives there
SCRIPTS = {name: ROOT / "scripts" / f"{name}.py"
           for name in ("train_qat", "export_int8", "benchmark")}
BENCH = "bench.json"
SUMMARY_CSV = "results_summary.csv"
SUMMARY_PNG = "results_comparison.png"
LOGS = "logs"
EXPORT_PARITY_FAILED = 1  # export_int8.py: files written, parity gate failed
TAIL_LINES = 15


class StepFailed(RuntimeError):
    """A step's subprocess exited with an unexpected status; the message names step and log."""


@dataclass(frozen=True)
class Plan:
    """What a step will do now: skip (with the reason) or run a script with these arguments."""

    skip: str | None = None
    args: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class Step:
    """One pipeline step; ``plan`` is called when the step's turn comes (files change earlier)."""

    name: str  # log file stem, e.g. "train_ste_w8"
    label: str  # shown on the console, e.g. "train ste_w8"
    script: str | None  # key of SCRIPTS; None: runs in this process
    plan: Callable[[], Plan]
    ok_status: tuple[int, ...] = (0,)
    # after the step ran: None when its record is current, else why not (it failed)
    check: Callable[[], str | None] = lambda: None


@dataclass(frozen=True)
class Run:
    """A run folder of the study."""

    method: str
    bits: int  # 32 for FP32
    folder: Path

    @property
    def name(self) -> str:
        return model_name(self.method, self.bits)

    @property
    def quantized(self) -> bool:
        return self.method != FP32_MODEL

    @property
    def model_file(self) -> Path:
        """The file export_int8.py reads."""
        return self.folder / (INT8_MODEL if self.quantized else CHECKPOINT)

    @property
    def onnx_file(self) -> Path:
        return self.folder / onnx_file_name("int8" if self.quantized else "fp32")


# -- what is finished ----------------------------------------------------------------------------
def training_finished(run: Run) -> bool:
    """metrics.json is a valid record of the checkpoint now in the folder (and, for QAT, of
    model_int8.pt, with its INT8 metrics), matched by sha256."""
    metrics = MetricsRecord.load_or_none(run.folder / METRICS)
    return metrics is not None and metrics.is_current(run.folder, quantized=run.quantized)


def export_done(run: Run) -> bool:
    """parity.json is a valid record of the model file and the ONNX file now in the folder
    (matched by sha256)."""
    parity = ParityRecord.load_or_none(run.folder / PARITY)
    return parity is not None and parity.is_current(run.folder)


def bench_missing(bench_path: Path, runs: list[Run], settings: PipelineSettings) -> str | None:
    """Why bench.json must be (re)made (``BenchRecord.missing_at``: this machine's CPU,
    settings, the sha256 of every run's model and ONNX file, a timing at every batch size and
    thread count, of every INT8 run's fused-kernel graph too where the kernels build here, run
    on this build of the kernels; then ``BenchRecord.changed_graphs``: the graphs the
    benchmark builds in memory are the ones this code builds), or None."""
    fused = native_ops.available()
    why = BenchRecord.missing_at(
        bench_path, [(run.folder, run.name) for run in runs], batches=settings.bench_batches,
        threads=settings.bench_threads, repeats=settings.bench_repeats,
        baselines=not settings.no_baselines, int8_fast=settings.int8_fast,
        torch_int8=settings.torch_int8, sweep_hidden=settings.sweep_hidden,
        top_k=settings.bench_top_k, machine=machine_info(), fused=fused,
        native_build=native_ops.build_key() if fused else None)
    if why is not None:
        return why
    return BenchRecord.load(bench_path).changed_graphs(built_graphs(runs, settings, fused=fused))


def built_graphs(runs: list[Run], settings: PipelineSettings, *, fused: bool) -> dict[str, str]:
    """sha256 of each graph the benchmark step builds in memory from the runs, by bench name
    (``export.bench_candidates.built_graph_digests``; loads every run's model)."""
    return built_graph_digests(load_runs([run.folder for run in runs]), fused=fused,
                               int8_fast=settings.int8_fast, top_k=settings.bench_top_k,
                               sweep_hidden=settings.sweep_hidden)


# -- the steps -----------------------------------------------------------------------------------
def optional_flags(settings: PipelineSettings, names: list[str]) -> list[str]:
    """``--flag value`` for each given (not None) option in ``names`` (argparse dest names)."""
    out: list[str] = []
    for name in names:
        value = getattr(settings, name)
        if value is not None:
            out += [f"--{name.replace('_', '-')}", str(value)]
    return out


ARCHITECTURE_FLAGS = ("max_len", "hidden", "blocks", "heads")
# training settings that change a finished run's result whatever else happened (a larger
# --epochs or --patience may not: the run may have stopped early; they are not compared)
RESULT_FLAGS = ("seed", "batch_size")


def finished_run_mismatch(run: Run, fp32: Run, settings: PipelineSettings,
                          data_fingerprint: Callable[[], str]) -> str | None:
    """Why the finished run in ``run.folder`` is not a run of this command, or None.

    It is not when its config.json records another dataset (``data_fingerprint()``, the
    fingerprint of ``--data`` as train_qat.py computes it, is only called when there is one to
    compare), another architecture than a ``--max-len``/``--hidden``/``--blocks``/``--heads``
    given, another ``--seed``/``--batch-size`` than given, or (a QAT run) another FP32
    checkpoint than the one now in ``fp32.folder``
    (``init_from_sha256``: the FP32 run was trained again since). Reusing it would report its
    results as this command's. What config.json does not record (older runs) is not checked.
    """
    try:
        config = json.loads((run.folder / CONFIG).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    recorded = config.get("data_fingerprint")
    if isinstance(recorded, str) and recorded != data_fingerprint():
        read = config.get("data_options")
        how = (f", read with {data_option_flags(read)}: give the same"
               if isinstance(read, dict) and read != settings.data_options else "")
        return (f"it was trained on another dataset ({config.get('data')}, fingerprint "
                f"{recorded[:12]}; --data {settings.data} has {data_fingerprint()[:12]}{how})")
    started_from = config.get("init_from_sha256")
    fp32_checkpoint = fp32.folder / CHECKPOINT
    if run.quantized and isinstance(started_from, str) and fp32_checkpoint.is_file():
        now = file_sha256(fp32_checkpoint)
        if now != started_from:
            return (f"it was fine-tuned from another FP32 checkpoint than {fp32_checkpoint} "
                    f"(sha256 {started_from[:12]}, now {now[:12]})")
    for section, names in (("model", ARCHITECTURE_FLAGS), ("train", RESULT_FLAGS)):
        recorded_section = config.get(section)
        for name in names:
            wanted = getattr(settings, name)
            if wanted is not None and isinstance(recorded_section, dict) \
                    and recorded_section.get(name) != wanted:
                flag = "--" + name.replace("_", "-")
                return f"its {name} is {recorded_section.get(name)}, not {flag} {wanted}"
    return None


def train_step(run: Run, fp32: Run, settings: PipelineSettings,
               data_fingerprint: Callable[[], str]) -> Step:
    """train_qat.py for ``run``: skipped when finished (and a run of this command's dataset and
    architecture, a QAT run of the FP32 checkpoint now there: else the pipeline stops, see
    ``finished_run_mismatch``), ``--resume`` when a checkpoint exists (train_qat.py checks the
    dataset and the FP32 checkpoint then)."""
    def plan() -> Plan:
        if training_finished(run):
            why = finished_run_mismatch(run, fp32, settings, data_fingerprint)
            if why is not None:
                raise StepFailed(f"{run.folder} holds a finished run that is not this "
                                 f"command's: {why}; use another --out, or delete "
                                 f"{run.folder} to train it again")
            return Plan(skip=f"{run.folder / METRICS} describes the model files as they are")
        flags = ["--qconfig", run.method, "--data", settings.data, "--out", str(run.folder),
                 "--no-progress", *optional_flags(settings, ["mirror", "device", "columns",
                                                             "min_user_interactions"])]
        if run.quantized:
            flags += ["--bits", str(run.bits), "--init-from", str(fp32.folder)]
            flags += optional_flags(settings, ["patience", "batch_size", "seed", "threads"])
            if settings.qat_epochs is not None:
                flags += ["--epochs", str(settings.qat_epochs)]
        else:
            flags += optional_flags(settings, ["max_len", "hidden", "blocks", "heads", "epochs",
                                               "patience", "batch_size", "seed", "threads"])
        if (run.folder / CHECKPOINT).is_file():
            return Plan(args=flags + ["--resume"], note=f"resuming from {CHECKPOINT}")
        return Plan(args=flags)

    def check() -> str | None:
        return None if training_finished(run) else \
            f"{run.folder / METRICS} does not describe the model files it left"
    return Step(f"train_{run.name}", f"train {run.name}", "train_qat", plan, check=check)


def export_step(run: Run, settings: PipelineSettings) -> Step:
    """export_int8.py for ``run``; exit 1 (parity failed, files written) is a result."""
    def plan() -> Plan:
        if export_done(run):
            return Plan(skip=f"{run.folder / PARITY} describes {run.model_file.name} and "
                             f"{run.onnx_file.name} as they are")
        return Plan(args=["--run", str(run.folder), "--data", settings.data, "--no-progress"]
                    + optional_flags(settings, ["threads"]))

    def check() -> str | None:
        return None if export_done(run) else \
            f"{run.folder / PARITY} does not describe {run.model_file.name} and its ONNX file"
    return Step(f"export_{run.name}", f"export {run.name}", "export_int8", plan,
                ok_status=(0, EXPORT_PARITY_FAILED), check=check)


def bench_step(runs: list[Run], settings: PipelineSettings) -> Step:
    """benchmark.py over every run folder, unless bench.json already covers them."""
    bench_path = settings.out / BENCH

    def plan() -> Plan:
        why = bench_missing(bench_path, runs, settings)
        if why is None:
            return Plan(skip=f"{bench_path} covers every run's current files")
        flags = ["--runs", *(str(run.folder) for run in runs), "--out", str(bench_path),
                 "--data", settings.data, "--batches", *map(str, settings.bench_batches),
                 "--threads", *map(str, settings.bench_threads),
                 "--repeats", str(settings.bench_repeats)]
        flags += ["--no-baselines"] if settings.no_baselines else []
        flags += ["--int8-fast"] if settings.int8_fast else []
        flags += ["--torch-int8"] if settings.torch_int8 else []
        if settings.bench_top_k is not None:
            flags += ["--top-k", str(settings.bench_top_k)]
        if settings.sweep_hidden:
            flags += ["--sweep-hidden", *map(str, settings.sweep_hidden)]
        return Plan(args=flags, note=why)

    def check() -> str | None:
        why = bench_missing(bench_path, runs, settings)
        return None if why is None else f"{bench_path} is not complete ({why})"
    return Step("benchmark", "benchmark", "benchmark", plan, check=check)


def summary_step() -> Step:
    """The CSV and PNG, written in this process every time (cheap)."""
    return Step("summary", "summary", None, lambda: Plan(note="always rewritten"))


def write_summary(runs: list[Run], settings: PipelineSettings) -> list[dict[str, Any]]:
    """Write the CSV and PNG from the run folders and bench.json; returns the rows."""
    results = [RunResult(run.name, run.method, run.bits,
                         ParityRecord.load_or_none(run.folder / PARITY))
               for run in runs]
    bench = BenchRecord.load_or_none(settings.out / BENCH)
    rows = summary_rows(results, bench, settings.bench_batches, settings.summary_threads)
    write_summary_csv(rows, settings.out / SUMMARY_CSV, settings.bench_batches)
    plot_comparison(rows, settings.out / SUMMARY_PNG, settings.bench_batches,
                    settings.summary_threads)
    return rows


# -- running -------------------------------------------------------------------------------------
def run_script(step: Step, flags: list[str], log_path: Path, echo: bool) -> int:
    """Run ``step``'s script with ``flags``; its output goes to ``log_path`` (appended) and, with
    ``echo``, to the console. Raises ``StepFailed`` on an exit status not in ``step.ok_status``."""
    script = SCRIPTS[step.script]
    if not script.is_file():
        raise StepFailed(f"step '{step.label}' needs {script}, which does not exist")
    command = [sys.executable, str(script), *flags]
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": pythonpath}
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"=== {datetime.now().isoformat(timespec='seconds')} $ "
                  f"{shlex.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", env=env)
        try:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                tail.append(line.rstrip("\n"))
                if echo:
                    tqdm.write("    " + line.rstrip("\n"))
            status = proc.wait()
        except BaseException:  # Ctrl-C or anything else: do not leave the child running
            proc.kill()
            proc.wait()
            log.write("=== interrupted\n")
            raise
        log.write(f"=== exit status {status}\n")
    if status not in step.ok_status:
        raise StepFailed(f"step '{step.label}' failed ({step_error(tail, status)}); its log is "
                         f"{log_path}. Fix the cause and rerun the same command: finished steps "
                         "are skipped, interrupted training resumes.")
    return status


def step_error(output: Sequence[str], status: int) -> str:
    """What a failed step said: its ``error:`` line, else its last line, with its exit status."""
    lines = [line.strip() for line in output if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    said = errors[-1] if errors else (lines[-1] if lines else "no output")
    return f"exit status {status}: {said}"


def build_runs(settings: PipelineSettings) -> tuple[Run, list[Run]]:
    """The FP32 run and one QAT run per method and bits, in --methods x --bits order."""
    fp32 = Run(FP32_MODEL, 32, settings.out / FP32_MODEL)
    qat = [Run(method, bits, settings.out / model_name(method, bits))
           for method in settings.methods for bits in settings.bits]
    return fp32, qat


def run_pipeline(settings: PipelineSettings) -> int:
    """Run (or skip) every step in order; returns the exit status (0, 1, or 130 on Ctrl-C)."""
    fp32, qat = build_runs(settings)
    runs = [fp32, *qat]
    dataset = functools.cache(lambda: load_dataset(settings.data, mirror=settings.mirror,
                                                   **settings.data_options))

    def data_fingerprint() -> str:
        return dataset().fingerprint()
    if settings.bench_top_k is not None and settings.bench_top_k > dataset().num_items:
        raise ValueError(f"--bench-top-k {settings.bench_top_k} is above the "
                         f"{dataset().num_items} items of {settings.data}")
    steps = ([train_step(run, fp32, settings, data_fingerprint) for run in runs]
             + [export_step(run, settings) for run in runs]
             + [bench_step(runs, settings), summary_step()])
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(steps), desc="run_all", unit="step",
               disable=None if settings.progress else True)  # None: off when not a terminal
    try:
        for number, step in enumerate(steps, 1):
            prefix = f"[{number}/{len(steps)}] {step.label}:"
            plan = step.plan()
            if plan.skip is not None:
                tqdm.write(f"{prefix} skipped ({plan.skip})")
                bar.update()
                continue
            tqdm.write(f"{prefix} started" + (f" ({plan.note})" if plan.note else ""))
            bar.set_postfix_str(step.label)
            start = time.perf_counter()
            result = ""
            if step.script is None:
                rows = write_summary(runs, settings)
            else:
                log = settings.out / LOGS / f"{step.name}.log"
                status = run_script(step, plan.args, log, echo=not settings.quiet)
                why = step.check()
                if why is not None:
                    raise StepFailed(f"step '{step.label}' exited with status {status} but "
                                     f"{why}; its log is {log}")
                if step.script == "export_int8" and status == EXPORT_PARITY_FAILED:
                    result = ", parity FAILED (see parity.json)"
            tqdm.write(f"{prefix} done in {time.perf_counter() - start:.1f} s{result}")
            bar.update()
    except StepFailed as err:
        bar.close()
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        bar.close()
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    bar.close()
    print_rows(rows, settings)
    failed = [row["model"] for row in rows if row["parity_passed"] is False]
    if failed:
        print(f"warning: parity failed for {', '.join(failed)} (parity_passed=False in the CSV)",
              file=sys.stderr)
    return 0


def print_rows(rows: list[dict[str, Any]], settings: PipelineSettings) -> None:
    """A short console table of the summary, and where the files are."""
    batches = settings.bench_batches
    header = f"{'model':22s}{'nDCG@10 torch':>15s}{'ORT':>9s}{'parity':>8s}" + "".join(
        f"{f'ms B={b}':>11s}{'speedup':>9s}" for b in batches)
    print(header)

    def fmt(value: Any, spec: str, width: int) -> str:
        return f"{'-' if value is None else format(value, spec):>{width}s}"
    for row in rows:
        parity = {True: "ok", False: "FAILED", None: "-"}[row["parity_passed"]]
        line = (f"{row['model']:22s}{fmt(row['ndcg@10_torch'], '.4f', 15)}"
                f"{fmt(row['ndcg@10_onnxruntime'], '.4f', 9)}{parity:>8s}")
        for b in batches:
            line += fmt(row[f"latency_b{b}_ms"], ".3f", 11) + fmt(row[f"speedup_b{b}"], ".2f", 9)
        print(line)
    print(f"latency: median at {settings.summary_threads} thread(s); wrote "
          f"{settings.out / SUMMARY_CSV} and {settings.out / SUMMARY_PNG}")

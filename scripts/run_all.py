#!/usr/bin/env python
"""The whole study in one command: train FP32 and every QAT method, export, check, benchmark.

Reproduce the README results (MovieLens-1M, max length 50, 8- and 4-bit weights):
    python scripts/run_all.py --data ml-1m --out runs/all --max-len 50 --bits 8 4 --threads 1

Steps, each a subprocess of a scripts/ entry point whose output goes to the console and to
OUT/logs/<step>.log:
  1. train fp32          train_qat.py --qconfig fp32 --out OUT/fp32
  2. train <M>_w<B>      train_qat.py --qconfig M --bits B --init-from OUT/fp32 --out OUT/<M>_w<B>
                         (for every --methods M and --bits B; --qat-epochs is its --epochs)
  3. export <run>        export_int8.py --run OUT/<run>: ONNX file + parity.json per run folder
  4. benchmark           benchmark.py --runs OUT/fp32 OUT/<M>_w<B>... --out OUT/bench.json
                         (also times each INT8 run's fused-kernel graph, <M>_w<B>_fused)
  5. summary             OUT/results_summary.csv and OUT/results_comparison.png (always rewritten;
                         a fused graph's row follows its run's)

Rerunning the same command skips what is finished: a training run whose metrics.json holds test
results (and, for QAT, the INT8 model), an export whose parity.json is newer than the model file,
and a bench.json newer than every ONNX file, with a record of every run at every batch size and
thread count, made with the same --bench-repeats (and with baselines unless --no-baselines). A
run folder with checkpoint.pt but no final metrics (an interrupted run) is continued with
--resume. A finished training run is never retrained: delete its folder to redo it.

Exit status: 0 every step done (an export whose parity check failed is reported, marked
parity_passed=False in the CSV, and does not stop the pipeline); 2 bad arguments or a failed
step (one ``error:`` line naming the step, its own error line and its log; fix the cause and
rerun the same command to resume); 130 interrupted.
"""
from __future__ import annotations

import argparse
import collections
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

from export.results_plot import plot_comparison
from export.results_table import FP32_MODEL, RunResult, model_name, summary_rows
from export.results_table import write_summary_csv
from export.run_folder import PARITY, onnx_file_name
from qat.cli import EXIT_USER_ERROR, ArgumentParser, run_cli
from qat.finetune import INT8_MODEL
from qat.registry import METHODS
from qat.train import CHECKPOINT, METRICS

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {name: ROOT / "scripts" / f"{name}.py"
           for name in ("train_qat", "export_int8", "benchmark")}
QAT_METHODS = [name for name, method in METHODS.items() if method.is_quantized]
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; an impossible combination (e.g. apot --bits 6) exits 2 at once."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="PATH_OR_NAME",
                   help="dataset for every step (ml-1m, or a file: see train_qat.py --help)")
    p.add_argument("--mirror", default=None, metavar="URL",
                   help="download a named dataset from this URL (train_qat.py --mirror)")
    p.add_argument("--out", type=Path, default=Path("runs/all"),
                   help="study folder: one run folder per model, logs/, bench.json, summary "
                        "(default runs/all)")
    p.add_argument("--methods", nargs="+", choices=QAT_METHODS, default=QAT_METHODS,
                   metavar="METHOD",
                   help="QAT methods to train (default all: " + " ".join(QAT_METHODS) + ")")
    p.add_argument("--bits", nargs="+", type=int, default=[8],
                   help="weight bits, one QAT run per method and value (default 8)")
    train = p.add_argument_group(
        "model and training (default: train_qat.py's own default; the architecture flags go to "
        "the FP32 run, QAT runs inherit its architecture)")
    train.add_argument("--max-len", type=int, help="longest history the model reads (200)")
    train.add_argument("--hidden", type=int, help="embedding/hidden width d (50)")
    train.add_argument("--blocks", type=int, help="self-attention blocks (2)")
    train.add_argument("--heads", type=int, help="attention heads (1)")
    train.add_argument("--epochs", type=int, help="maximum FP32 epochs (200)")
    train.add_argument("--qat-epochs", type=int, help="maximum QAT fine-tuning epochs (30)")
    train.add_argument("--patience", type=int,
                       help="early-stopping patience of every training run (20 FP32, 5 QAT)")
    train.add_argument("--batch-size", type=int, help="users per training batch (128)")
    train.add_argument("--seed", type=int, help="random seed of every training run (42)")
    train.add_argument("--threads", type=int,
                       help="torch/onnxruntime threads for training, evaluation and the parity "
                            "check (library default)")
    bench = p.add_argument_group("benchmark and summary")
    bench.add_argument("--bench-batches", nargs="+", type=int, default=[1, 256], metavar="B",
                       help="batch sizes to time (default 1 256)")
    bench.add_argument("--bench-threads", nargs="+", type=int, default=[1, 2], metavar="T",
                       help="onnxruntime intra-op thread counts to time (default 1 2)")
    bench.add_argument("--bench-repeats", type=int, default=100, metavar="N",
                       help="timed runs per model, batch size and thread count (default 100)")
    bench.add_argument("--no-baselines", action="store_true",
                       help="do not benchmark torch eager FP32 and onnxruntime "
                            "quantize_dynamic/quantize_static")
    bench.add_argument("--int8-fast", action="store_true",
                       help="benchmark.py --int8-fast: also time each INT8 run's plain-op "
                            "graph (not bit-exact) and record its parity")
    bench.add_argument("--torch-int8", action="store_true",
                       help="benchmark.py --torch-int8: also time the converted torch models")
    bench.add_argument("--sweep-hidden", nargs="+", type=int, default=[], metavar="D",
                       help="benchmark.py --sweep-hidden: INT8/FP32 latency of random models "
                            "of these widths")
    bench.add_argument("--summary-threads", type=int, default=None, metavar="T",
                       help="thread count whose latencies the summary shows (default the largest "
                            "--bench-threads)")
    shown = p.add_argument_group("console")
    shown.add_argument("--quiet", action="store_true",
                       help="write the steps' output only to OUT/logs/, not to the console")
    shown.add_argument("--no-progress", dest="progress", action="store_false",
                       help="hide the progress bar over the steps")
    args = p.parse_args(argv)
    for method in args.methods:
        supported = METHODS[method].supported_bits
        for bits in args.bits:
            if bits not in supported:
                p.error(f"{method} supports --bits {', '.join(map(str, supported))}, not {bits}")
    positive = {"--bench-batches": args.bench_batches, "--bench-threads": args.bench_threads,
                "--bench-repeats": [args.bench_repeats]}
    for flag, values in positive.items():
        if min(values) < 1:
            p.error(f"{flag} must be >= 1")
    if args.summary_threads is None:
        args.summary_threads = max(args.bench_threads)
    elif args.summary_threads not in args.bench_threads:
        p.error(f"--summary-threads {args.summary_threads} is not among --bench-threads "
                + " ".join(map(str, args.bench_threads)))
    args.methods = list(dict.fromkeys(args.methods))
    args.bits = list(dict.fromkeys(args.bits))
    return args


# -- what is finished ----------------------------------------------------------------------------
def read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def training_finished(run: Run) -> bool:
    """metrics.json holds test results (and, for QAT, the INT8 model's, with model_int8.pt)."""
    metrics = read_json(run.folder / METRICS)
    if not isinstance(metrics, dict) or "test" not in metrics:
        return False
    if run.quantized:
        return "int8" in metrics and (run.folder / INT8_MODEL).is_file()
    return (run.folder / CHECKPOINT).is_file()


def newer(path: Path, than: Path) -> bool:
    """Both exist and ``path`` was modified after ``than``."""
    try:
        return path.stat().st_mtime_ns > than.stat().st_mtime_ns
    except OSError:
        return False


def export_done(run: Run) -> bool:
    """parity.json and the ONNX file exist and parity.json is newer than the model file."""
    return run.onnx_file.is_file() and newer(run.folder / PARITY, run.model_file)


def bench_missing(bench_path: Path, runs: list[Run], args: argparse.Namespace) -> str | None:
    """Why bench.json must be (re)made, or None when it is newer than every ONNX file, has a
    record for every run, batch size and thread count, and was made with the requested repeats
    (and baselines, unless --no-baselines)."""
    bench = read_json(bench_path)
    if not isinstance(bench, dict):
        return f"no readable {bench_path.name}"
    settings = bench.get("settings") or {}
    if settings.get("repeats", args.bench_repeats) != args.bench_repeats:
        return f"it has {settings['repeats']} repeats, not {args.bench_repeats}"
    if not args.no_baselines and settings.get("baselines") is False:
        return "it has no baselines"
    for flag in ("int8_fast", "torch_int8"):
        if getattr(args, flag) and not settings.get(flag):
            return f"it was made without --{flag.replace('_', '-')}"
    if args.sweep_hidden and settings.get("sweep_hidden") != args.sweep_hidden:
        return f"its sweep is {settings.get('sweep_hidden')}, not {args.sweep_hidden}"
    batches, threads = args.bench_batches, args.bench_threads
    have = {(r.get("model"), r.get("batch"), r.get("threads")) for r in bench.get("records", [])}
    for run in runs:
        if not newer(bench_path, run.onnx_file):
            return f"{run.onnx_file} is newer"
        missing = [(b, t) for b in batches for t in threads if (run.name, b, t) not in have]
        if missing:
            return f"no record of {run.name} at batch {missing[0][0]}, {missing[0][1]} thread(s)"
    return None


# -- the steps -----------------------------------------------------------------------------------
def optional_flags(args: argparse.Namespace, names: list[str]) -> list[str]:
    """``--flag value`` for each given (not None) option in ``names`` (argparse dest names)."""
    out: list[str] = []
    for name in names:
        value = getattr(args, name)
        if value is not None:
            out += [f"--{name.replace('_', '-')}", str(value)]
    return out


def train_step(run: Run, fp32: Run, args: argparse.Namespace) -> Step:
    """train_qat.py for ``run``: skipped when finished, ``--resume`` when a checkpoint exists."""
    def plan() -> Plan:
        if training_finished(run):
            return Plan(skip=f"{run.folder / METRICS} has test results")
        flags = ["--qconfig", run.method, "--data", args.data, "--out", str(run.folder),
                 "--no-progress", *optional_flags(args, ["mirror"])]
        if run.quantized:
            flags += ["--bits", str(run.bits), "--init-from", str(fp32.folder)]
            flags += optional_flags(args, ["patience", "batch_size", "seed", "threads"])
            if args.qat_epochs is not None:
                flags += ["--epochs", str(args.qat_epochs)]
        else:
            flags += optional_flags(args, ["max_len", "hidden", "blocks", "heads", "epochs",
                                           "patience", "batch_size", "seed", "threads"])
        if (run.folder / CHECKPOINT).is_file():
            return Plan(args=flags + ["--resume"], note=f"resuming from {CHECKPOINT}")
        return Plan(args=flags)
    return Step(f"train_{run.name}", f"train {run.name}", "train_qat", plan)


def export_step(run: Run, args: argparse.Namespace) -> Step:
    """export_int8.py for ``run``; exit 1 (parity failed, files written) is a result."""
    def plan() -> Plan:
        if export_done(run):
            return Plan(skip=f"{run.folder / PARITY} is newer than {run.model_file.name}")
        return Plan(args=["--run", str(run.folder), "--data", args.data]
                    + optional_flags(args, ["threads"]))
    return Step(f"export_{run.name}", f"export {run.name}", "export_int8", plan,
                ok_status=(0, EXPORT_PARITY_FAILED))


def bench_step(runs: list[Run], args: argparse.Namespace) -> Step:
    """benchmark.py over every run folder, unless bench.json already covers them."""
    bench_path = args.out / BENCH

    def plan() -> Plan:
        why = bench_missing(bench_path, runs, args)
        if why is None:
            return Plan(skip=f"{bench_path} lists every run")
        flags = ["--runs", *(str(run.folder) for run in runs), "--out", str(bench_path),
                 "--data", args.data, "--batches", *map(str, args.bench_batches),
                 "--threads", *map(str, args.bench_threads),
                 "--repeats", str(args.bench_repeats)]
        flags += ["--no-baselines"] if args.no_baselines else []
        flags += ["--int8-fast"] if args.int8_fast else []
        flags += ["--torch-int8"] if args.torch_int8 else []
        flags += ["--sweep-hidden", *map(str, args.sweep_hidden)] if args.sweep_hidden else []
        return Plan(args=flags, note=why)
    return Step("benchmark", "benchmark", "benchmark", plan)


def summary_step() -> Step:
    """The CSV and PNG, written in this process every time (cheap)."""
    return Step("summary", "summary", None, lambda: Plan(note="always rewritten"))


def write_summary(runs: list[Run], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Write the CSV and PNG from the run folders and bench.json; returns the rows."""
    results = [RunResult(run.name, run.method, run.bits, read_json(run.folder / PARITY))
               for run in runs]
    bench = read_json(args.out / BENCH)
    rows = summary_rows(results, bench, args.bench_batches, args.summary_threads)
    write_summary_csv(rows, args.out / SUMMARY_CSV, args.bench_batches)
    plot_comparison(rows, args.out / SUMMARY_PNG, args.bench_batches, args.summary_threads)
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


def build_runs(args: argparse.Namespace) -> tuple[Run, list[Run]]:
    """The FP32 run and one QAT run per method and bits, in --methods x --bits order."""
    fp32 = Run(FP32_MODEL, 32, args.out / FP32_MODEL)
    qat = [Run(method, bits, args.out / model_name(method, bits))
           for method in args.methods for bits in args.bits]
    return fp32, qat


def run_pipeline(args: argparse.Namespace) -> int:
    """Run (or skip) every step in order; returns the exit status (0, 1, or 130 on Ctrl-C)."""
    fp32, qat = build_runs(args)
    runs = [fp32, *qat]
    steps = ([train_step(run, fp32, args) for run in runs]
             + [export_step(run, args) for run in runs]
             + [bench_step(runs, args), summary_step()])
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(steps), desc="run_all", unit="step",
               disable=None if args.progress else True)  # None: off when not a terminal
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
                rows = write_summary(runs, args)
            else:
                status = run_script(step, plan.args, args.out / LOGS / f"{step.name}.log",
                                    echo=not args.quiet)
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
        return 130
    bar.close()
    print_rows(rows, args)
    failed = [row["model"] for row in rows if row["parity_passed"] is False]
    if failed:
        print(f"warning: parity failed for {', '.join(failed)} (parity_passed=False in the CSV)",
              file=sys.stderr)
    return 0


def print_rows(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """A short console table of the summary, and where the files are."""
    batches = args.bench_batches
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
    print(f"latency: median at {args.summary_threads} thread(s); wrote "
          f"{args.out / SUMMARY_CSV} and {args.out / SUMMARY_PNG}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    return run_pipeline(args)


if __name__ == "__main__":
    sys.exit(main())

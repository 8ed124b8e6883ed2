"""``bench.json``: what the benchmark timed, how, on which machine, and which files it timed.

    record = run_benchmark(BenchSettings(runs=["runs/fp32", "runs/lsq_w8"]))  # export.bench
    record.save("bench.json")
    record = BenchRecord.load("bench.json")
    record.median_ms("lsq_w8", batch=1, threads=2)          # None when not timed
    why = BenchRecord.missing_at("bench.json", [("runs/fp32", "fp32")], batches=[1, 256],
                                 threads=[1, 2], repeats=100)  # None: nothing to redo

Layout (schema 1; every nested object also carries its own ``record`` and ``schema`` keys)::

    {"record": "bench", "schema": 1,
     "machine":   {"cpu", "logical_cores", "flags": {"avx2": true, ...}, "python", ...},
     "settings":  BenchSetup  {"runs", "data", "batches", "threads", "repeats", ...},
     "models":    [TimedModel {"model", "kind", "run", "method", "bits", "source",
                               "onnx_bytes", "onnx_sha256", "onnx_file", "model_file",
                               "model_sha256"}],
     "baselines": [Baseline   {"name", "ok", "options", "attempts", "error"}],
     "records":   [Timing     {"model", "kind", ..., "batch", "threads", "median_ms",
                               "p90_ms", "min_ms", "repeats", "ratio_to_fp32"}],
     "quality":   [Quality    {"model", "kind", "ndcg", "hit", "users", "source", ...}],
     "sweep":     [Timing     (random models of other widths, "sweep_hidden" set)],
     "notes":     ["...", ...]}

A model derived from a run folder names the sha256 of the torch model file it came from
(``model_int8.pt`` / ``checkpoint.pt``) and, for an ONNX graph, of the very bytes timed; the
run's own graph also names the file it read them from. ``missing`` compares those with the
files now in the folders: a retrained model or a re-exported graph makes the record stale,
whatever the sizes and modification times say.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from qat.records import RECORD_KEY, SCHEMA_KEY, Record, sha256_or_none

# model names and kinds in bench.json
FP32_MODEL = "fp32"  # a run's model is "fp32" or "<method>_w<bits>"
FUSED_SUFFIX = "_fused"  # an INT8 run's fused-kernel graph: <model>_fused
FAST_SUFFIX = "_fast"  # an INT8 run's plain-op graph (--int8-fast): <model>_fast
TORCH_EAGER_PREFIX = "torch_eager_"  # a torch model run eagerly: torch_eager_<model>
KINDS = ("onnx_fp32", "onnx_int8", "onnx_int8_fused", "onnx_int8_fast", "torch_eager", "ort_ptq")

N = TypeVar("N", bound=Record)


@dataclass
class BenchSetup(Record):
    """How the benchmark ran (``settings`` in bench.json).

    Attributes:
        runs: the run folders, in ``--runs`` order.
        data, split: the dataset the inputs and quality come from, and its split (``"test"``).
        test_users, num_items, max_len: the input rows, and the models' dimensions.
        batches, threads: the timed cases (batch sizes, intra-op thread counts).
        repeats, warmup: timed and untimed rounds per case.
        baselines: torch eager FP32 and onnxruntime PTQ were timed (False when asked for but
            no FP32 run was among ``runs``).
        baseline_source: the FP32 run the baselines come from (None without one).
        calibration_users: training sequences calibrating ``quantize_static``.
        sweep_hidden: widths of the random-model sweep.
        fused: the fused-kernel INT8 graphs were timed (False when asked for but the kernels
            could not be built; ``notes`` says why).
        int8_fast, torch_int8: the plain-op INT8 graphs / the torch INT8 models were timed.
        onnxruntime: the timing sessions' settings (``graph_optimization``,
            ``inter_op_threads``, ``execution_mode``, ``allow_spinning``).
        inputs, schedule, timer, torch_eager, sweep_quantization: what was measured, in words.
        sweep_items: the synthetic catalogues' item counts (``--items``).
        top_k: k of the runs' top-k graphs timed (``--top-k``; None: none were).
        native_build: ``export.native_ops.build_key()`` of the kernels that ran the fused
            graphs (None: none were timed, or a record older than this field).
        sweep_graphs: sha256 of each ``--sweep-hidden`` graph timed, by name (random models
            built from seeds by the exporter: ``changed_graphs`` compares them too).
    """

    KIND = "bench_settings"
    SCHEMA = 1

    runs: list[str]
    data: str
    split: str
    test_users: int
    num_items: int
    max_len: int
    batches: list[int]
    threads: list[int]
    repeats: int
    warmup: int
    baselines: bool
    baseline_source: str | None
    calibration_users: int
    sweep_hidden: list[int]
    fused: bool
    int8_fast: bool
    torch_int8: bool
    onnxruntime: dict[str, Any]
    inputs: str
    schedule: str
    timer: str
    torch_eager: str
    sweep_quantization: str
    sweep_items: list[int] = field(default_factory=list)
    top_k: int | None = None
    native_build: str | None = None
    sweep_graphs: dict[str, str] = field(default_factory=dict)


@dataclass
class TimedModel(Record):
    """One model timed with the runs (``models`` in bench.json; the sweep's are not listed).

    Attributes:
        model: its name in ``records`` and ``quality``.
        kind: one of ``KINDS``.
        run: the run folder it comes from (None: not from a run).
        method, bits: the run's ``--qconfig`` and weight bits (a PTQ baseline: its
            onnxruntime function and 8).
        source: where the timed model came from, in words (a file path, "built in memory ...").
        onnx_bytes, onnx_sha256: size and sha256 of the ONNX bytes timed (None: a torch model).
        onnx_file: the run folder's ONNX file those bytes were read from (``model_int8.onnx``
            or ``model_fp32.onnx``); None when the graph was built in memory.
        model_file, model_sha256: the run's torch model file (``model_int8.pt`` or
            ``checkpoint.pt``) and its sha256 when the benchmark loaded it (None: not from a
            run).
    """

    KIND = "bench_model"
    SCHEMA = 1

    model: str
    kind: str
    run: str | None
    method: str
    bits: int
    source: str
    onnx_bytes: int | None
    onnx_sha256: str | None
    onnx_file: str | None
    model_file: str | None
    model_sha256: str | None


@dataclass
class Timing(Record):
    """The latency of one model in one case (``records`` and ``sweep`` in bench.json).

    Attributes:
        model, kind, run, method, bits: the model (as in ``TimedModel``).
        batch, threads: the case.
        median_ms, p90_ms, min_ms: wall-clock milliseconds per call over ``repeats`` calls.
        ratio_to_fp32: ``median_ms`` over the FP32 reference's in the same case (the FP32 run;
            in the sweep the FP32 model of the same width); None without a reference.
        sweep_hidden: the sweep's width (None: a run's model).
        sweep_items: a synthetic catalogue's item count (None: a run's or the width sweep's).
        serving: ``"scores"`` (full-score graph) or ``"top_k"`` (top-k serving graph).
        scoring: an INT8 graph's scoring path (``sasrec_qat.scoring``); None: FP32 or unknown.
    """

    KIND = "bench_timing"
    SCHEMA = 1

    model: str
    kind: str
    run: str | None
    method: str
    bits: int
    batch: int
    threads: int
    median_ms: float
    p90_ms: float
    min_ms: float
    repeats: int
    ratio_to_fp32: float | None
    sweep_hidden: int | None = None
    sweep_items: int | None = None
    serving: str = "scores"
    scoring: str | None = None


@dataclass
class Quality(Record):
    """Test nDCG@10 / Hit@10 (full ranking) of one timed model (``quality`` in bench.json).

    Attributes:
        model, kind: the model (as in ``TimedModel``).
        ndcg, hit: nDCG@10 and Hit@10.
        users: evaluated users.
        source: where the numbers come from: ``"<run>/parity.json (onnxruntime|torch)"`` (the
            record of the very file timed) or ``"computed (onnxruntime|torch)"``.
        top10_agreement, ndcg_delta, parity_passed: the fused and plain-op INT8 graphs only,
            their parity with the torch INT8 model (``export.parity.check_parity``).
    """

    KIND = "bench_quality"
    SCHEMA = 1

    model: str
    kind: str
    ndcg: float
    hit: float
    users: int
    source: str
    top10_agreement: float | None = None
    ndcg_delta: float | None = None
    parity_passed: bool | None = None


@dataclass
class Baseline(Record):
    """How an onnxruntime PTQ baseline was built (``export.ort_baselines.PTQResult``).

    Attributes:
        name: ``"quantize_dynamic"`` or ``"quantize_static"``.
        ok: a model was produced (and timed).
        options: the configuration that produced it (None if none did).
        attempts: every configuration tried, in order, each with its ``"error"`` (None: it
            worked).
        error: the last attempt's error when no model was produced.
    """

    KIND = "bench_baseline"
    SCHEMA = 1

    name: str
    ok: bool
    options: dict[str, Any] | None
    attempts: list[dict[str, Any]]
    error: str | None


_NESTED_LISTS: dict[str, type[Record]] = {"models": TimedModel, "baselines": Baseline,
                                          "records": Timing, "quality": Quality, "sweep": Timing,
                                          "catalogue": Timing}


@dataclass
class BenchRecord(Record):
    """What ``export.bench.run_benchmark`` measured (the content of bench.json).

    Attributes:
        machine: ``export.latency.machine_info()``: CPU model, logical cores, int8-relevant
            CPU flags, library versions, date, load average.
        settings: how it ran.
        models: every model timed with the runs, with the sha256 of what it was made from.
        baselines: how each onnxruntime PTQ baseline was built (empty without baselines).
        records: the timings of ``models`` at every batch and threads case.
        quality: test nDCG@10 / Hit@10 of every model in ``models``.
        sweep: the timings of the random models of ``settings.sweep_hidden`` widths.
        notes: what was skipped or built in memory, and why.
        catalogue: the timings of the synthetic catalogues (``settings.sweep_items``:
            ``export.bench_catalogue``), full-score and top-k graphs.
    """

    KIND = "bench"
    SCHEMA = 1

    machine: dict[str, Any]
    settings: BenchSetup
    models: list[TimedModel]
    baselines: list[Baseline]
    records: list[Timing]
    quality: list[Quality]
    sweep: list[Timing]
    notes: list[str]
    catalogue: list[Timing] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Refuse fields of the wrong shape (``load`` reports them with the file's name)."""
        if not isinstance(self.machine, dict):
            raise TypeError("machine must be an object")
        if not isinstance(self.settings, BenchSetup):
            raise TypeError("settings must be a BenchSetup record")
        if not isinstance(self.notes, list) or not all(isinstance(n, str) for n in self.notes):
            raise TypeError("notes must be a list of strings")
        for name, kind in _NESTED_LISTS.items():
            items = getattr(self, name)
            if not isinstance(items, list) or not all(isinstance(i, kind) for i in items):
                raise TypeError(f"{name} must be a list of {kind.__name__} records")

    @classmethod
    def from_json(cls, obj: Any, *, source: str = "record") -> BenchRecord:
        """The record in ``obj``, nested records built (each error names where it is)."""
        if (isinstance(obj, dict) and obj.get(RECORD_KEY) == cls.KIND
                and isinstance(obj.get(SCHEMA_KEY), int) and obj[SCHEMA_KEY] <= cls.SCHEMA):
            obj = dict(obj)  # nested records only once the header is known to be readable
            if isinstance(obj.get("settings"), dict):
                obj["settings"] = BenchSetup.from_json(obj["settings"],
                                                       source=f"{source} [settings]")
            for name, kind in _NESTED_LISTS.items():
                if isinstance(obj.get(name), list):
                    obj[name] = [_nested(kind, item, f"{source} [{name}][{i}]")
                                 for i, item in enumerate(obj[name])]
        return super().from_json(obj, source=source)

    # -- reading ---------------------------------------------------------------------------------
    def model(self, name: str) -> TimedModel | None:
        """The timed model called ``name`` (None: not among ``models``)."""
        return next((m for m in self.models if m.model == name), None)

    def quality_of(self, name: str) -> Quality | None:
        """The quality of the model called ``name`` (None: not measured)."""
        return next((q for q in self.quality if q.model == name), None)

    def timed(self, name: str) -> bool:
        """True when ``records`` holds a timing of ``name``."""
        return any(r.model == name for r in self.records)

    def median_ms(self, name: str, batch: int, threads: int) -> float | None:
        """``median_ms`` of ``name`` at ``batch`` and ``threads`` in ``records``, or None."""
        return next((r.median_ms for r in self.records
                     if (r.model, r.batch, r.threads) == (name, batch, threads)), None)

    # -- is it current? --------------------------------------------------------------------------
    def missing(self, runs: Sequence[tuple[str | Path, str]], *, batches: Sequence[int],
                threads: Sequence[int], repeats: int, baselines: bool = True,
                int8_fast: bool = False, torch_int8: bool = False,
                sweep_hidden: Sequence[int] = (), top_k: int | None = None,
                machine: Mapping[str, Any] | None = None, fused: bool = False,
                native_build: str | None = None) -> str | None:
        """Why this record does not cover the request (it must be remade), or None.

        Args:
            runs: ``(run folder, model name)`` of every run that must be covered; the name is
                the run's bench name (``"fp32"``, ``"<method>_w<bits>"``).
            batches, threads: every case that must have a timing of every run.
            repeats: the timed rounds per case it must have been made with.
            baselines: the baselines must have been timed.
            int8_fast, torch_int8: those variants must have been timed (extra ones are fine).
            sweep_hidden: when given, the sweep must be exactly these widths.
            top_k: when given, the runs' top-k graphs must have been timed with this k.
            machine: when given (``export.latency.machine_info()`` of this machine), the
                record must come from the same CPU: model name and int8-relevant flags
                (latency on another CPU class is not this machine's).
            fused: the fused-kernel graph of every INT8 run (``<name>_fused``) must have been
                timed at every case (a record made where the kernels could not be built has
                none).
            native_build: with ``fused``, ``export.native_ops.build_key()`` here: the fused
                graphs must have run on that build of the kernels (another source, compiler or
                flags times other code).

        The rules, in order (the first that fails is the reason): the same CPU when
        ``machine`` is given; the same ``repeats``; the baselines when asked for;
        ``--int8-fast`` / ``--torch-int8`` when asked for; the same sweep when one is asked for;
        the same top-k ``k`` when one is asked for; the fused-kernel graphs when asked for;
        then for each run: its model file's sha256 is the one timed, its ONNX file's sha256 is
        that of the bytes timed (a graph that was built in memory, because the run was not
        exported then, does not count), and a timing at every ``batches`` x ``threads`` case,
        of its fused-kernel graph too when ``fused`` and the run is INT8.
        """
        s = self.settings
        if machine is not None:
            for key in ("cpu", "flags"):
                if self.machine.get(key) != machine.get(key):
                    return (f"it was made on another CPU ({key} {self.machine.get(key)!r}, "
                            f"here {machine.get(key)!r})")
        if s.repeats != repeats:
            return f"it has {s.repeats} repeats, not {repeats}"
        if baselines and not s.baselines:
            return "it has no baselines"
        for flag, wanted, made in (("int8-fast", int8_fast, s.int8_fast),
                                   ("torch-int8", torch_int8, s.torch_int8)):
            if wanted and not made:
                return f"it was made without --{flag}"
        if sweep_hidden and list(s.sweep_hidden) != list(sweep_hidden):
            return f"its sweep is {s.sweep_hidden}, not {list(sweep_hidden)}"
        if top_k is not None and s.top_k != top_k:
            return (f"it was made without --top-k {top_k}" if s.top_k is None else
                    f"it timed top-k graphs of k={s.top_k}, not {top_k}")
        if fused and not s.fused:
            return "it was made without the fused-kernel INT8 graphs"
        if fused and native_build is not None and s.native_build != native_build:
            return (f"its fused-kernel graphs ran on another build of the kernels "
                    f"({s.native_build}, here {native_build})")
        have = {(r.model, r.batch, r.threads) for r in self.records}
        for run_dir, name in runs:
            why = self._files_changed(Path(run_dir), name)
            if why is not None:
                return why
            timed = [name]
            entry = self.model(name)
            if fused and entry is not None and entry.kind == "onnx_int8":
                timed.append(name + FUSED_SUFFIX)
            for model in timed:
                cases = [(b, t) for b in batches for t in threads if (model, b, t) not in have]
                if cases:
                    return (f"no record of {model} at batch {cases[0][0]}, {cases[0][1]} "
                            f"thread(s)")
        return None

    def changed_graphs(self, built: Mapping[str, str]) -> str | None:
        """Why the graphs the benchmark builds in memory (fused, plain-op, top-k and sweep graphs:
        ``export.bench_candidates.built_graph_digests``, name -> sha256 of what this code
        builds now) are not the ones timed, or None. ``missing`` checks the files; these
        graphs come from the code, so a change to the exporter makes their timings another
        graph's. Graphs the record does not name are ``missing``'s business."""
        for name, digest in built.items():
            entry = self.model(name)
            timed = (entry.onnx_sha256 if entry is not None
                     else self.settings.sweep_graphs.get(name, digest))
            if timed != digest:
                return (f"its {name} graph is not the one this code builds (sha256 differs: "
                        "the exporter changed since it was timed)")
        return None

    def _files_changed(self, run_dir: Path, name: str) -> str | None:
        """Why ``name``'s files in ``run_dir`` are not the ones timed (None: they are, or
        ``name`` was not timed at all, which the caller reports)."""
        entry = self.model(name)
        if entry is None:
            return None if not self.timed(name) else f"it does not name the files of {name}"
        if entry.model_file is None or entry.model_sha256 is None:
            return f"it does not name the model file of {name}"
        model_path = run_dir / entry.model_file
        if sha256_or_none(model_path) != entry.model_sha256:
            return f"{model_path} is not the model file it timed (sha256 differs or it is gone)"
        if entry.onnx_file is None:
            return f"it timed a graph of {name} built in memory, not an exported ONNX file"
        onnx_path = run_dir / entry.onnx_file
        if sha256_or_none(onnx_path) != entry.onnx_sha256:
            return f"{onnx_path} is not the ONNX file it timed (sha256 differs or it is gone)"
        return None

    @classmethod
    def missing_at(cls, path: str | Path, runs: Sequence[tuple[str | Path, str]],
                   **request: Any) -> str | None:
        """``load(path).missing(runs, **request)``; a missing or unreadable file (another
        kind, a newer schema, an older bench.json without a schema) is a reason too."""
        path = Path(path)
        try:
            record = cls.load(path)
        except FileNotFoundError:
            return f"no {path.name}"
        except (OSError, ValueError) as err:
            return f"no readable {path.name} ({err})"
        return record.missing(runs, **request)


def _nested(kind: type[N], item: Any, source: str) -> Any:
    """``kind.from_json(item)`` for an object; anything else is left for the type check."""
    return kind.from_json(item, source=source) if isinstance(item, dict) else item

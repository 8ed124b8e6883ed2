"""Export a run folder's model to ONNX, score it in onnxruntime, and record the parity.

    result = export_run("runs/lsq", fused=True)     # writes the ONNX file(s) and parity.json
    print_parity(result)

A QAT run folder (``model_int8.pt``) gives ``model_int8.onnx`` (and with ``fused``
``model_int8_fused.onnx``: the same model with the fused custom-op kernels of export/native);
an FP32 run folder gives ``model_fp32.onnx``. Each graph scores the test users (full ranking)
and is compared with the torch model (``export.parity.check_parity``); ``parity.json``
(``ParityRecord``) names the exported model file and each ONNX file by sha256.

Every graph carries the run's item id map (``data.ItemIds``: internal id -> raw id and title) in
its metadata property ``data.item_ids.METADATA_KEY``, so a model file alone can turn its scores
into the raw ids of the user's log (``export.recommend``). The map is the run folder's
``item_ids.json``; a run folder without one (trained before the map existed, or on a SASRec text
file whose ids are already dense) gets ``ItemIds.identity(num_items)``. ``parity.json`` records
which (``item_ids_source``) and the sha256 of the embedded JSON (``item_ids_sha256``).

Beside each full-score graph goes its top-k serving graph (``build_sasrec_onnx(top_k=k)``:
history masking and the selection inside the graph, output (B, k) ids and scores),
``model_<kind>_top_k.onnx`` / ``model_int8_fused_top_k.onnx``, checked against the full-score
graph's scores ranked by the same rules (``TopKParity``: fraction of test users whose ordered
lists agree, gate ``TOP_K_MIN_AGREEMENT``).

The scoring path of each INT8 graph (``export.scoring_probe``): ``scoring="auto"`` times the
backend's paths on this machine and takes the one never slower than float32 scoring, recorded
in the graph's metadata (``sasrec_qat.scoring``, ``sasrec_qat.scoring_probe``).

With ``eval_negatives`` each graph is also scored by the paper's sampled protocol (the target
against N sampled unseen items, ``qat.evaluate.evaluate(sampled_negatives=N, seed=...)``) on the
torch and the onnxruntime side; both go into ``GraphParity.sampled`` (reported, not gated).

Everything is computed in memory first: bad input raises before any file is written, and the
ONNX files and parity.json are written together (an ONNX file never lies there without the
record that describes it).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tqdm.auto import tqdm

from data import ITEM_IDS, ItemIds, LeaveOneOutSplit
from data.batching import check_eval_negatives
from data.item_ids import METADATA_KEY
from export import native_ops
from export.onnx_file import save_onnx
from export.parity import ParityReport, check_parity
from export.parity_record import GraphParity, ParityRecord, TopKParity
from export.run_folder import (
    PARITY,
    RunModel,
    load_run,
    load_run_split,
    onnx_file_name,
    recorded_fingerprint,
)
from export.latency import eval_inputs
from export.runtime import OnnxScorer, make_session
from export.sasrec_graph import INPUT, SCORES, SCORING_PATHS, TOP_K_ITEMS, build_sasrec_onnx
from export.scoring_probe import choose_scoring
from export.top_k import rank_masked
from qat.evaluate import evaluate
from qat.records import file_sha256
from qat.run_lock import run_folder_lock

WHICH = "test"
FUSED_KIND = "int8_fused"  # model_int8_fused.onnx
SATURATION_SAFE = 64  # 2 * 255 * 64 <= 32767: exact in vpmaddubsw's int16 pairs
K = 10  # the cut-off of the sampled metrics (as the full-ranking ones, export.parity.K)
TOP_K_SUFFIX = "_top_k"  # model_int8_top_k.onnx beside model_int8.onnx
TOP_K_MIN_AGREEMENT = 0.99  # same scoring path: 1.0; another path may flip near-ties
AUTO = "auto"
IDENTITY = "identity"  # item_ids_source of a run folder without item_ids.json


@dataclass
class ExportResult:
    """What ``export_run`` wrote: the run, its parity record and the reports behind it."""

    run: RunModel
    record: ParityRecord
    report: ParityReport
    fused_report: ParityReport | None = None


def run_item_ids(run_dir: str | Path, num_items: int) -> tuple[ItemIds, str]:
    """``(item id map, source)`` of a run folder: its ``item_ids.json`` (source
    ``"item_ids.json"``) or, when it has none, ``ItemIds.identity(num_items)`` (``"identity"``).

    Raises:
        ValueError: an unreadable ``item_ids.json``, or one that maps another number of items
            than the model scores (the message names the file).
    """
    path = Path(run_dir) / ITEM_IDS
    if not path.exists():
        return ItemIds.identity(num_items), IDENTITY
    ids = ItemIds.load(path)
    if ids.num_items != num_items:
        raise ValueError(f"{path} maps {ids.num_items} items but the model scores {num_items}: "
                         "it is not this run's item id map")
    return ids, ITEM_IDS


def _scoring(run: RunModel, scoring: str | None, *, fused: bool, top_k: int | None,
             threads: int) -> tuple[str | None, dict[str, str]]:
    """``(scoring path, metadata)`` of one INT8 graph: ``scoring`` itself, or with ``"auto"``
    the probe's choice and its figures; FP32 graphs have one path (None, no metadata)."""
    if run.kind != "int8" or scoring is None:
        return None, {}
    if scoring != AUTO:
        return scoring, {}
    choice = choose_scoring(run.model, fused=fused, top_k=top_k, threads=max(threads, 1))
    return choice.path, choice.metadata()


def _export_one(run: RunModel, split: LeaveOneOutSplit, *, fused: bool, scoring: str | None,
                threads: int, batch_size: int, optimization: str, item_ids: ItemIds,
                eval_negatives: int, eval_seed: int, torch_sampled: dict[str, Any] | None,
                progress: bool) -> tuple[onnx.ModelProto, ParityReport, dict[str, Any] | None,
                                         Any]:
    """Build one graph of ``run`` (exact or fused) and compare it with the torch model; with
    ``eval_negatives`` also its sampled metrics (``GraphParity.sampled``; ``torch_sampled``:
    the torch side's, computed once for every graph). Returns the graph, its report, its
    sampled metrics and its session (the top-k graph's check reuses it)."""
    path, probe = _scoring(run, scoring, fused=fused, top_k=None, threads=threads)
    meta = {**run.graph_metadata, METADATA_KEY: item_ids.dumps(), **probe}
    onnx_model = build_sasrec_onnx(run.model, metadata=meta, fused=fused, scoring=path)
    session = make_session(onnx_model.SerializeToString(), threads=threads,
                           optimization=optimization)
    hidden_session = None
    if run.kind == "int8":
        hidden_session = make_session(
            build_sasrec_onnx(run.model, hidden_output=True, metadata=meta, fused=fused,
                              scoring=path),
            threads=threads, optimization=optimization)
    name = onnx_file_name(FUSED_KIND if fused else run.kind)
    report = check_parity(run.model, session, split, WHICH, batch_size=batch_size,
                          hidden_session=hidden_session,
                          progress=f"{name} vs torch" if progress else None)
    sampled = None
    if eval_negatives:
        sampled = sampled_metrics(run, session, split, negatives=eval_negatives,
                                  seed=eval_seed, batch_size=batch_size,
                                  reference=torch_sampled,
                                  progress=f"{name} sampled" if progress else None)
    return onnx_model, report, sampled, session


def _export_top_k(run: RunModel, inputs: np.ndarray, full_session: Any, full_file: str,
                  *, fused: bool, top_k: int, scoring: str | None, threads: int,
                  item_ids: ItemIds, batch_size: int,
                  progress: bool = False) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The top-k graph beside the full-score graph ``full_file`` and how its lists agree with
    that graph's ranked scores (``full_session``) on ``inputs``, the test users' sequences
    (``TopKParity`` fields but the file's)."""
    path, probe = _scoring(run, scoring, fused=fused, top_k=top_k, threads=threads)
    meta = {**run.graph_metadata, METADATA_KEY: item_ids.dumps(), **probe}
    model = build_sasrec_onnx(run.model, top_k=top_k, metadata=meta, fused=fused, scoring=path)
    top_session = make_session(model, threads=threads)
    same = 0
    for start in tqdm(range(0, len(inputs), batch_size), desc=top_k_file_name(full_file),
                      unit="batch", disable=not progress, leave=False):
        x = inputs[start:start + batch_size]
        want = rank_masked(full_session.run([SCORES], {INPUT: x})[0], x, top_k)[0]
        got = top_session.run([TOP_K_ITEMS], {INPUT: x})[0]
        same += int(np.sum(np.all(got == want, axis=1)))
    agreement = same / len(inputs)
    props = {p.key: p.value for p in model.metadata_props}
    return model, {"of_graph": full_file, "k": top_k, "scoring": props["sasrec_qat.scoring"],
                   "list_agreement": agreement, "users": len(inputs),
                   "min_agreement": TOP_K_MIN_AGREEMENT,
                   "passed": agreement >= TOP_K_MIN_AGREEMENT}


def export_file_names() -> list[str]:
    """Every file an export may write into a run folder (graphs, their top-k graphs, the
    record): the names whose stale temporary files it may remove while it holds the lock."""
    graphs = [onnx_file_name(kind) for kind in ("fp32", "int8", FUSED_KIND)]
    return [*graphs, *(top_k_file_name(g) for g in graphs), PARITY]


def top_k_file_name(full_file: str) -> str:
    """``model_int8.onnx`` -> ``model_int8_top_k.onnx``."""
    return full_file.removesuffix(".onnx") + TOP_K_SUFFIX + ".onnx"


def sampled_metrics(run: RunModel, session: Any, split: LeaveOneOutSplit, *, negatives: int,
                    seed: int, batch_size: int, reference: dict[str, Any] | None = None,
                    progress: str | None = None) -> dict[str, Any]:
    """nDCG@10 / Hit@10 of the torch model and of ``session`` by the sampled protocol.

    Both sides rank each test target against the same ``negatives`` sampled unseen items
    (``qat.evaluate.evaluate(sampled_negatives=negatives, seed=seed)``: one generator seeded
    alike, so the same negatives). ``reference``: the torch side's ``evaluate`` result if
    already computed with these settings; ``progress``: a bar with this description. Returns
    the ``GraphParity.sampled`` layout:
    ``{"negatives", "seed", "ndcg": {"torch", "onnxruntime"}, "hit": {...}, "users"}``.
    """
    common = dict(max_len=run.model.config.max_len, batch_size=batch_size, k=K,
                  sampled_negatives=negatives, seed=seed)
    ref = reference or evaluate(run.model.score_last, split, WHICH, **common)
    got = evaluate(OnnxScorer(session), split, WHICH, progress=progress is not None,
                   desc=progress, **common)
    return {"negatives": negatives, "seed": seed,
            "ndcg": {"torch": ref[f"ndcg@{K}"], "onnxruntime": got[f"ndcg@{K}"]},
            "hit": {"torch": ref[f"hit@{K}"], "onnxruntime": got[f"hit@{K}"]},
            "users": ref["users"]}


def export_run(run_dir: str | Path, *, data: str | None = None, cache_dir: Path | None = None,
               mirror: str | None = None, threads: int = 0, batch_size: int = 256,
               top_k: int = K, fused: bool = False, scoring: str | None = None,
               optimization: str = "all", eval_negatives: int = 0,
               eval_seed: int = 0, progress: bool = False) -> ExportResult:
    """Export ``run_dir``'s model, check its parity, write the ONNX file(s) and parity.json.

    Args:
        run_dir: a ``scripts/train_qat.py`` run folder.
        data: dataset for the parity check (default: the one in ``config.json``); its
            fingerprint must match the run's.
        cache_dir, mirror: for a dataset name (``data.load_dataset``).
        threads: onnxruntime intra-op threads (0 = library default).
        batch_size: users per evaluation batch.
        top_k: the default k of the top-k serving graphs written beside the full-score ones.
        fused: INT8 runs: also write and check the fused-kernel graph.
        scoring: INT8 runs: the scoring path (``export.sasrec_graph.SCORING_PATHS``; ``"fused"``
            applies to the fused graph, the exact one then keeps its default), ``"auto"``: each
            graph's own probe (``export.scoring_probe``; the probe's timings go into the
            metadata, so the bytes differ from export to export), or None: each backend's
            default (``"int8"``, fused ``"fused"``; byte-for-byte reproducible exports).
        optimization: onnxruntime graph optimisation level of the parity sessions.
        eval_negatives: also score each graph and the torch model by the sampled protocol
            (target + this many sampled negatives; 0 = off).
        eval_seed: seed of the sampled negatives.
        progress: progress bars on stderr over each graph's evaluation batches.

    Raises:
        FileNotFoundError, ValueError: unusable run folder, data or ``item_ids.json``, or a
            negative ``eval_negatives`` (nothing is written).
        export.native_ops.NativeBuildError: ``fused`` without a working C++ compiler.
        OSError: the folder cannot be written (no ONNX file is left without its record).
    """
    if threads < 0 or batch_size < 1:
        raise ValueError("--threads must be >= 0 and --batch-size >= 1")
    if eval_negatives < 0:
        raise ValueError(f"--eval-negatives must be >= 0 (0 = off), got {eval_negatives}")
    if scoring is not None and scoring != AUTO and scoring not in SCORING_PATHS:
        raise ValueError(f"--scoring must be {AUTO} or one of {', '.join(SCORING_PATHS)}, got "
                         f"{scoring!r}")
    run = load_run(run_dir)
    # one writer per run folder (a training or another export holds it: one error line);
    # holding it, an earlier killed export's temporary files are removed
    with run_folder_lock(run.run_dir, written=export_file_names()):
        if eval_negatives:
            check_eval_negatives(eval_negatives, run.model.config.num_items)
        if not 1 <= top_k <= run.model.config.num_items:
            raise ValueError(f"--top-k must be in [1, {run.model.config.num_items}] (the number of "
                             f"items), got {top_k}")
        item_ids, item_ids_source = run_item_ids(run.run_dir, run.model.config.num_items)
        if fused and run.kind != "int8":
            raise ValueError(f"--fused applies to INT8 runs; {run_dir} is an FP32 run")
        if fused:
            native_ops.library_path()  # a missing compiler is bad input: fail before the work
        dataset, split = load_run_split(run_dir, run.model.config.num_items, data,
                                        cache_dir=cache_dir, mirror=mirror)
        settings = dict(threads=threads, batch_size=batch_size,
                        optimization=optimization, item_ids=item_ids,
                        eval_negatives=eval_negatives, eval_seed=eval_seed, torch_sampled=None,
                        progress=progress)
        if eval_negatives:  # the torch side once, for every graph
            settings["torch_sampled"] = evaluate(
                run.model.score_last, split, WHICH, max_len=run.model.config.max_len,
                batch_size=batch_size, k=K, sampled_negatives=eval_negatives, seed=eval_seed,
                progress=progress, desc="torch sampled")
        exact_scoring = None if scoring == "fused" else scoring
        *exact, exact_session = _export_one(run, split, fused=False, scoring=exact_scoring,
                                            **settings)
        graphs, sessions = [(run.onnx_path, *exact)], [exact_session]
        if fused:
            *fused_graph, fused_session = _export_one(run, split, fused=True, scoring=scoring,
                                                      **settings)
            graphs.append((run.run_dir / onnx_file_name(FUSED_KIND), *fused_graph))
            sessions.append(fused_session)
        top_k_graphs = []
        inputs = eval_inputs(split, WHICH, max_len=run.model.config.max_len)
        for (path, *_), session, is_fused in zip(graphs, sessions, (False, True)):
            model, fields = _export_top_k(
                run, inputs, session, path.name, fused=is_fused, top_k=top_k, threads=threads,
                scoring=exact_scoring if not is_fused else scoring, item_ids=item_ids,
                batch_size=batch_size, progress=progress)
            top_k_graphs.append((run.run_dir / top_k_file_name(path.name), model, fields))
        props = {p.key: p.value for p in graphs[0][1].metadata_props}
        max_weight = props.get("sasrec_qat.max_abs_weight_int")
        records = _write(graphs)
        try:
            top_k_records = [TopKParity(onnx_file=path.name, onnx_bytes=save_onnx(model, path),
                                        onnx_sha256=file_sha256(path), **fields)
                             for path, model, fields in top_k_graphs]
        except BaseException:
            for path, *_ in [*graphs, *top_k_graphs]:
                path.unlink(missing_ok=True)
            raise
        record = ParityRecord(
            method=run.method, bits=run.bits, kind=run.kind, model_file=run.model_path.name,
            model_sha256=file_sha256(run.model_path), dataset=str(dataset),
            data_fingerprint=recorded_fingerprint(run.run_dir), split=WHICH,
            optimization=optimization, threads=threads,
            max_abs_weight_int=None if max_weight is None else int(max_weight),
            graph=records[0], fused=records[1] if fused else None,
            item_ids_source=item_ids_source,
            item_ids_sha256=item_ids.sha256(), top_k=top_k_records)
        try:
            record.save(run.run_dir / PARITY)
        except BaseException:
            for path, *_ in [*graphs, *top_k_graphs]:  # no ONNX file without its parity record
                path.unlink(missing_ok=True)
            raise
        return ExportResult(run, record, graphs[0][2], graphs[1][2] if fused else None)


def _write(graphs: list[tuple[Path, onnx.ModelProto, ParityReport, dict[str, Any] | None]]
           ) -> list[GraphParity]:
    """Write each graph; its record holds the sha256 of the bytes on disk."""
    records = []
    try:
        for path, model, report, sampled in graphs:
            size = save_onnx(model, path)
            records.append(replace(GraphParity.of(report, onnx_file=path.name, onnx_bytes=size,
                                                  onnx_sha256=file_sha256(path)),
                                   sampled=sampled))
    except BaseException:
        for path, *_ in graphs:
            path.unlink(missing_ok=True)
        raise
    return records


def print_parity(result: ExportResult) -> None:
    """The parity table(s) on stdout; a saturation note on stderr when weights exceed 64."""
    record = result.record
    print(f"{record.graph.onnx_file}: {record.method}, {record.bits}-bit weights, "
          f"{record.graph.onnx_bytes:,} bytes; {result.report.users} {WHICH} users")
    _print_report(result.report, record.graph.sampled)
    if record.fused is not None and result.fused_report is not None:
        print(f"\n{record.fused.onnx_file}: fused kernels, {record.fused.onnx_bytes:,} bytes")
        _print_report(result.fused_report, record.fused.sampled)
    for top in record.top_k or ():
        print(f"\n{top.onnx_file}: top-{top.k} serving graph ({top.scoring} scoring), "
              f"{top.onnx_bytes:,} bytes; lists equal to {top.of_graph}'s ranked scores for "
              f"{100 * top.list_agreement:.2f}% of {top.users} users: "
              + ("PASSED" if top.passed else f"FAILED (< {100 * top.min_agreement:.0f}%)"))
    if (record.max_abs_weight_int or 0) > SATURATION_SAFE:
        print(f"note: integer weights reach {record.max_abs_weight_int} > {SATURATION_SAFE}; "
              "u8 x s8 kernels can saturate on AVX2 CPUs without VNNI", file=sys.stderr)


def _print_report(report: ParityReport, sampled: dict[str, Any] | None = None) -> None:
    print(f"{'':18s}{'torch':>10s}{'onnxruntime':>13s}{'|delta|':>10s}")
    rows = [("nDCG@10", report.ndcg), ("Hit@10", report.hit)]
    if sampled is not None:  # beside the full-ranking rows: target + N sampled negatives
        n = sampled["negatives"]
        rows += [(f"nDCG@10 ({n} neg)", sampled["ndcg"]), (f"Hit@10 ({n} neg)", sampled["hit"])]
    for name, pair in rows:
        delta = abs(pair["torch"] - pair["onnxruntime"])
        print(f"{name:18s}{pair['torch']:10.4f}{pair['onnxruntime']:13.4f}{delta:10.4f}")
    print(f"top-10 agreement  {report.top10_agreement:.4f} (mean overlap "
          f"{report.top10_mean_overlap:.4f}); max |score diff| {report.max_abs_score_diff:.3g}")
    if report.hidden_steps is not None:
        h = report.hidden_steps
        print(f"final hidden      max {h['max']} step(s), {100 * h['fraction_differing']:.3f}% "
              "of elements differ")
    print("parity: PASSED" if report.passed else "parity: FAILED (" + "; ".join(report.failures)
          + ")")

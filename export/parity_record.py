"""``parity.json``: how an exported ONNX graph scored against the torch model it came from.

Written by ``scripts/export_int8.py`` next to the graph(s); read by the benchmark (to reuse the
quality of the very file it times), the results table and the pipeline (is the export of this
run current?). The record names the model file it exported (``model_int8.pt`` or
``checkpoint.pt``) and each ONNX file by sha256: a retrained model or an edited graph makes it
stale, whatever the sizes and modification times say.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from data.item_ids import ITEM_IDS, ItemIds
from export.parity import ParityReport
from export.run_folder import PARITY
from qat.records import Record, sha256_or_none


@dataclass
class GraphParity(Record):
    """One ONNX file and its parity with the torch model (``export.parity.ParityReport``).

    Attributes:
        onnx_file: the file's name in the run folder.
        onnx_bytes, onnx_sha256: its size and content hash.
        ndcg, hit: ``{"torch": .., "onnxruntime": ..}`` nDCG@10 / Hit@10 on ``split``.
        ndcg_delta, hit_delta: their absolute differences.
        top10_agreement: fraction of users whose top-10 sets are identical.
        top10_mean_overlap: mean fraction of shared top-10 items.
        max_abs_score_diff: largest |score difference| over every user and item.
        users: evaluated users.
        seconds: scoring time of each side.
        hidden_steps: INT8 only, how far the final hidden state differs in output steps.
        thresholds: the gate's limits; passed / failures: its verdict.
        sampled: with ``--eval-negatives N``, the paper's sampled metrics (the target against
            N sampled unseen items): ``{"negatives": N, "seed": .., "ndcg": {"torch": ..,
            "onnxruntime": ..}, "hit": {..}, "users": ..}``; reported, not gated. None: off.
    """

    KIND = "graph_parity"
    SCHEMA = 1

    onnx_file: str
    onnx_bytes: int
    onnx_sha256: str
    ndcg: dict[str, float]
    hit: dict[str, float]
    ndcg_delta: float
    hit_delta: float
    top10_agreement: float
    top10_mean_overlap: float
    max_abs_score_diff: float
    users: int
    seconds: dict[str, float]
    thresholds: dict[str, float]
    passed: bool
    failures: list[str]
    hidden_steps: dict[str, float] | None = None
    sampled: dict[str, Any] | None = None

    @classmethod
    def of(cls, report: ParityReport, *, onnx_file: str, onnx_bytes: int,
           onnx_sha256: str) -> GraphParity:
        """The record of ``report`` measured on the file ``onnx_file``."""
        return cls(onnx_file=onnx_file, onnx_bytes=onnx_bytes, onnx_sha256=onnx_sha256,
                   ndcg=dict(report.ndcg), hit=dict(report.hit), ndcg_delta=report.ndcg_delta,
                   hit_delta=report.hit_delta, top10_agreement=report.top10_agreement,
                   top10_mean_overlap=report.top10_mean_overlap,
                   max_abs_score_diff=report.max_abs_score_diff, users=report.users,
                   seconds=dict(report.seconds), thresholds=asdict(report.thresholds),
                   passed=report.passed, failures=list(report.failures),
                   hidden_steps=report.hidden_steps)

    def describes(self, path: str | Path) -> bool:
        """True when ``path`` is the file this record measured (same sha256)."""
        return sha256_or_none(path) == self.onnx_sha256


@dataclass
class TopKParity(Record):
    """A top-k serving graph (``build_sasrec_onnx(top_k=k)``) against its full-score graph.

    Attributes:
        onnx_file, onnx_bytes, onnx_sha256: the file, its size and content hash.
        of_graph: the full-score graph it was compared with (``GraphParity.onnx_file``).
        k: its default list length; scoring: its scoring path (``sasrec_qat.scoring``).
        list_agreement: fraction of users whose k ids, in order, equal the full graph's scores
            ranked by the same rules (``export.top_k``; the history in the input masked).
        users: users compared; min_agreement: the gate; passed: its verdict.
    """

    KIND = "top_k_parity"
    SCHEMA = 1

    onnx_file: str
    onnx_bytes: int
    onnx_sha256: str
    of_graph: str
    k: int
    scoring: str
    list_agreement: float
    users: int
    min_agreement: float
    passed: bool

    def describes(self, path: str | Path) -> bool:
        """The file at ``path`` is the one recorded (same sha256)."""
        return sha256_or_none(path) == self.onnx_sha256


@dataclass
class ParityRecord(Record):
    """What export_int8.py checked for one run folder.

    Attributes:
        method, bits, kind: the run's ``--qconfig``, weight bits (32 for FP32), ``"int8"`` or
            ``"fp32"``.
        model_file, model_sha256: the torch model file exported (``model_int8.pt`` or
            ``checkpoint.pt``) and its content hash.
        dataset, data_fingerprint: the data the parity was measured on.
        split: ``"test"``.
        optimization, threads: the onnxruntime session settings of the parity run.
        max_abs_weight_int: INT8 only, the largest |integer weight| (saturation check).
        graph: the portable graph (``model_int8.onnx`` / ``model_fp32.onnx``).
        fused: the fused-kernel graph (``model_int8_fused.onnx``), when exported.
        top_k: the top-k serving graphs written beside them (``model_<kind>_top_k.onnx``), each
            checked against its full-score graph; None in records written before them.
        item_ids_source: the item id map embedded in every graph's metadata
            (``data.item_ids.METADATA_KEY``): ``"item_ids.json"`` (the run folder's) or
            ``"identity"`` (none there: raw id = internal id). None: exported before the map
            was embedded.
        item_ids_sha256: sha256 of the embedded JSON string (``ItemIds.dumps()``, UTF-8).
    """

    KIND = "parity"
    SCHEMA = 1

    method: str
    bits: int
    kind: str
    model_file: str
    model_sha256: str
    dataset: str
    data_fingerprint: str | None
    split: str
    optimization: str
    threads: int
    max_abs_weight_int: int | None
    graph: GraphParity
    fused: GraphParity | None = None
    item_ids_source: str | None = None
    item_ids_sha256: str | None = None
    top_k: list[TopKParity] | None = None

    @classmethod
    def from_json(cls, obj: Any, *, source: str = "record") -> ParityRecord:
        if isinstance(obj, dict):
            obj = dict(obj)
            for key in ("graph", "fused"):
                if isinstance(obj.get(key), dict):
                    obj[key] = GraphParity.from_json(obj[key], source=f"{source} [{key}]")
            if isinstance(obj.get("top_k"), list):
                obj["top_k"] = [TopKParity.from_json(t, source=f"{source} [top_k]")
                                if isinstance(t, dict) else t for t in obj["top_k"]]
        return super().from_json(obj, source=source)

    @property
    def passed(self) -> bool:
        """Every exported graph passed its gate."""
        return all(g.passed for g in self.graphs())

    def graphs(self) -> list[GraphParity | TopKParity]:
        """Every graph this export wrote: the full-score one, the fused one, the top-k ones."""
        return ([g for g in (self.graph, self.fused) if g is not None]
                + list(self.top_k or ()))

    def is_current(self, run_dir: str | Path) -> bool:
        """True when the model file and every ONNX file named here are in ``run_dir`` with the
        recorded content, and the graphs embed the run's item id map as it is now (its
        ``item_ids.json``, or identity ids when it has none)."""
        run_dir = Path(run_dir)
        return (sha256_or_none(run_dir / self.model_file) == self.model_sha256
                and all(g.describes(run_dir / g.onnx_file) for g in self.graphs())
                and self._embeds_current_item_ids(run_dir))

    def _embeds_current_item_ids(self, run_dir: Path) -> bool:
        path = run_dir / ITEM_IDS
        if not path.exists():
            return self.item_ids_source in (None, "identity")
        try:
            return ItemIds.load(path).sha256() == self.item_ids_sha256
        except (OSError, ValueError):
            return False


def exported_graphs(run_dir: str | Path) -> set[str] | None:
    """The graph files of ``run_dir``'s last export: those its parity.json describes, byte for
    byte (None: no parity.json, e.g. graphs copied without it).

    Raises:
        ValueError: parity.json cannot be read, or the run's model file is there but is not the
            one the graphs were exported from (the run trained further, not exported again).
    """
    run_dir = Path(run_dir)
    if not (run_dir / PARITY).exists():
        return None
    record = ParityRecord.load(run_dir / PARITY)
    model = run_dir / record.model_file
    if model.exists() and sha256_or_none(model) != record.model_sha256:
        raise ValueError(f"{run_dir}: its graphs were exported from another {record.model_file} "
                         f"than the one there now (parity.json): export it again, "
                         f"scripts/export_int8.py --run {run_dir}")
    return {g.onnx_file for g in record.graphs() if g.describes(run_dir / g.onnx_file)}

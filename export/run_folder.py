"""The model a ``scripts/train_qat.py`` run folder holds, ready to export.

A QAT run folder has ``model_int8.pt`` (the converted INT8 model) and exports to
``model_int8.onnx``; an FP32 run folder has only ``checkpoint.pt`` and exports to
``model_fp32.onnx``. Every way a folder can be unusable raises ``FileNotFoundError`` or
``ValueError`` with a one-line message naming the file. ``load_run_split`` loads the dataset a
run was trained on (recorded in its ``config.json``), for the scripts that evaluate runs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from data import LeaveOneOutSplit, leave_one_out, load_dataset
from qat.checkpoint import load_checkpoint
from qat.config import SASRecConfig
from qat.finetune import INT8_MODEL, load_int8_model
from qat.model import SASRec
from qat.registry import METHODS
from qat.train import CHECKPOINT, CONFIG

PARITY = "parity.json"


@dataclass
class RunModel:
    """A run folder's exportable model.

    Attributes:
        model: the INT8 (converted) or FP32 torch model, in eval mode.
        kind: ``"int8"`` or ``"fp32"``.
        method: the ``--qconfig`` it was trained with.
        bits: weight bits (32 for FP32).
        data: the dataset recorded in ``config.json`` (None if absent).
        run_dir: the folder.
        unfinished: FP32 runs whose training has not ended (it was stopped): what is exported
            instead of the final model, for a note; None otherwise.
    """

    model: SASRec
    kind: str
    method: str
    bits: int
    data: str | None
    run_dir: Path
    unfinished: str | None = None

    @property
    def onnx_path(self) -> Path:
        return self.run_dir / onnx_file_name(self.kind)

    @property
    def model_path(self) -> Path:
        """The torch model file exported: ``model_int8.pt`` or ``checkpoint.pt``."""
        return self.run_dir / (INT8_MODEL if self.kind == "int8" else CHECKPOINT)

    @property
    def graph_metadata(self) -> dict[str, str | int]:
        """The ``sasrec_qat.*`` entries every graph of this run carries: method and bits."""
        return {"sasrec_qat.method": self.method, "sasrec_qat.bits": self.bits}


def onnx_file_name(kind: str) -> str:
    """Where export_int8.py writes a run's graph: ``model_int8.onnx`` or ``model_fp32.onnx``."""
    return f"model_{kind}.onnx"


def load_run(run_dir: str | Path) -> RunModel:
    """Load the model of ``run_dir`` (INT8 if ``model_int8.pt`` exists, else FP32).

    Raises:
        FileNotFoundError: no folder, or no model file in it.
        ValueError: an unreadable or corrupt model file, an unknown method, a QAT run without
            its INT8 model.
    """
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise FileNotFoundError(f"{run_dir} is a file, not a run folder: give the folder "
                                "train_qat.py wrote (--out), e.g. "
                                f"{run_dir.parent if str(run_dir.parent) != '.' else 'runs/fp32'}")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run folder at {run_dir}")
    data = _recorded_data(run_dir)
    if (run_dir / INT8_MODEL).exists():
        model, saved = _load_int8(run_dir)
        return RunModel(model.eval(), "int8", saved["method"], int(saved["bits"]), data, run_dir)
    if not (run_dir / CHECKPOINT).exists():
        raise FileNotFoundError(f"{run_dir} has neither {INT8_MODEL} nor {CHECKPOINT}: not a "
                                "train_qat.py run folder")
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    method = ckpt.get("method")
    if method != "fp32":
        if method in METHODS:
            raise ValueError(f"{run_dir} is a {method} run without {INT8_MODEL}: finish the QAT "
                             "run (train_qat.py --resume) so it converts and saves the INT8 model")
        raise ValueError(f"{run_dir / CHECKPOINT} records unknown method {method!r}; known: "
                         f"{', '.join(METHODS)}")
    try:
        model = SASRec(SASRecConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{run_dir / CHECKPOINT} does not hold a usable FP32 SASRec "
                         f"({type(err).__name__}: {_first_line(err)})") from err
    unfinished = None
    if ckpt.get("finished") is False:
        epoch = (ckpt.get("state") or {}).get("epoch", "?")
        planned = (ckpt.get("train_config") or {}).get("epochs", "?")
        best = ckpt.get("best_epoch")
        what = (f"its best model so far (epoch {best})" if best else
                "its initial weights (it stopped before its first validation)")
        unfinished = (f"{run_dir} has not finished training (epoch {epoch} of {planned}): "
                      f"{what} is exported; train_qat.py --resume finishes it")
    return RunModel(model.eval(), "fp32", "fp32", 32, data, run_dir, unfinished)


def load_run_split(run_dir: str | Path, num_items: int, data: str | None = None, *,
                   cache_dir: Path | None = None, mirror: str | None = None,
                   shared: bool = False,
                   also: Sequence[str | Path] = ()) -> tuple[str, LeaveOneOutSplit]:
    """``(dataset, leave-one-out split)`` for evaluating the model(s) of ``run_dir``.

    Args:
        run_dir: the run whose ``config.json`` names the dataset when ``data`` is None.
        num_items: items the model(s) score; the dataset must have as many.
        data: a path or dataset name given by the user (overrides the recorded one).
        cache_dir: download cache for dataset names.
        mirror: download URL for a dataset name (``data.load_dataset``).
        shared: the split serves several runs (only the error message's wording changes).
        also: further run folders evaluated on the same split; their recorded fingerprints are
            checked too.

    Raises:
        ValueError: a missing or unreadable config.json (of ``run_dir`` or ``also``), runs
            recorded as trained on different datasets, no dataset recorded nor given, an
            unreadable recorded dataset (the message says where it was recorded), a dataset
            with another number of items, or one whose fingerprint differs from the one
            ``config.json`` records (``check_run_data``).
    """
    run_dir = Path(run_dir)
    config = _read_config(run_dir)  # else the dataset checks below would pass by default
    for run in also:
        _read_config(Path(run))
    trained_on = {str(run): recorded_fingerprint(run) for run in (run_dir, *also)}
    if len({f for f in trained_on.values() if f is not None}) > 1:
        raise ValueError("the runs were trained on different datasets (fingerprints: "
                         + ", ".join(f"{run} {f[:12]}" for run, f in trained_on.items() if f)
                         + "): no one dataset evaluates them all; give runs of one dataset")
    recorded = data is None
    data = (str(config["data"]) if config.get("data") else None) if recorded else data
    if data is None:
        raise ValueError(f"{run_dir / CONFIG} records no dataset: pass --data")
    options = _data_options(config)  # read the file as training read it
    try:
        dataset = load_dataset(data, cache_dir=cache_dir, mirror=mirror, **options)
    except ValueError as err:
        if recorded:  # a relative path in config.json is relative to where it trained
            raise ValueError(f"{err} (recorded in {run_dir / CONFIG}); pass --data") from err
        raise
    if dataset.num_items != num_items:
        subject, owner = (("the models score", "runs'") if shared
                          else ("the model scores", "run's"))
        raise ValueError(f"{subject} {num_items} items but {data} has {dataset.num_items}: "
                         f"pass --data with the {owner} dataset")
    fingerprint = dataset.fingerprint()
    for run in (run_dir, *also):
        check_run_data(run, fingerprint, data)
    return str(data), leave_one_out(dataset)


def _data_options(config: dict[str, Any]) -> dict[str, Any]:
    """How the run read its data file (config.json's ``data_options``: ``columns``,
    ``min_user_interactions``, as ``data.load_dataset`` takes them); ``{}`` (the defaults) for
    runs that recorded none."""
    options = config.get("data_options")
    if not isinstance(options, dict):
        return {}
    return {k: options[k] for k in ("columns", "min_user_interactions") if k in options}


def recorded_fingerprint(run_dir: str | Path) -> str | None:
    """The ``data_fingerprint`` in ``run_dir``'s config.json (None: absent or unreadable)."""
    try:
        return json.loads((Path(run_dir) / CONFIG).read_text()).get("data_fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def check_run_data(run_dir: str | Path, fingerprint: str, data: str) -> None:
    """Refuse to evaluate a run on another dataset than the one it was trained on.

    ``config.json`` records ``data_fingerprint`` (``SequenceDataset.fingerprint``) since
    fingerprints exist; older runs are checked by item count only.

    Raises:
        ValueError: the fingerprints differ (e.g. the same items renumbered).
    """
    path = Path(run_dir) / CONFIG
    recorded = recorded_fingerprint(run_dir)
    if recorded is not None and recorded != fingerprint:
        raise ValueError(f"{run_dir} was trained on a dataset with fingerprint {recorded[:12]} "
                         f"({path}), but {data} has fingerprint {fingerprint[:12]}: the same "
                         "item ids must mean the same items; pass --data with the run's dataset")


def _load_int8(run_dir: Path) -> tuple[SASRec, dict]:
    """``qat.finetune.load_int8_model`` already names the file in a one-line ``ValueError``."""
    return load_int8_model(run_dir)


def _read_config(run_dir: Path) -> dict[str, Any]:
    """A run folder's config.json, which must exist and hold a JSON object: it names the
    dataset, its fingerprint and how it was read, without which another dataset would go
    unnoticed.

    Raises:
        ValueError: missing, unreadable or not a JSON object (named, with what to do).
    """
    path = run_dir / CONFIG
    if not path.is_file():
        raise ValueError(f"{path} is missing: the run's dataset cannot be checked; restore the "
                         "file (train_qat.py writes it first), or train the run again")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is unreadable ({str(err).splitlines()[0]}): the run's "
                         "dataset cannot be checked; restore the file") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a JSON object: the run's dataset cannot be checked")
    return config


def _recorded_data(run_dir: Path) -> str | None:
    path = run_dir / CONFIG
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text()).get("data")
    except (OSError, ValueError, AttributeError):
        return None
    return str(data) if data else None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__

"""Data pipeline: load or download interactions, split leave-one-out, build tensor batches.

Sources: named datasets (``ml-1m``, ``ml-20m``), raw MovieLens files, interaction logs (CSV, TSV,
Parquet) and SASRec text files; ``load_dataset`` picks the reader.

Imports no other project package.
"""

from data.batching import (
    EvalBatch,
    TrainBatch,
    TrainBatcher,
    eval_batches,
    eval_users,
    num_eval_users,
    sample_negatives_for_eval,
)
from data.download import (
    DATASETS,
    RemoteDataset,
    default_cache_dir,
    download_file,
    fetch_dataset,
    file_md5,
)
from data.errors import ChecksumMismatchError, DataFormatError, DownloadError
from data.interactions import (
    Interactions,
    load_interactions,
    preprocess_interactions,
    read_interactions,
)
from data.item_ids import ITEM_IDS, ItemIds, UnknownItemError
from data.loading import load_dataset
from data.movielens import load_movielens_raw, preprocess_ratings, read_ratings
from data.sequences import SequenceDataset, read_sasrec_text, write_sasrec_text
from data.split import LeaveOneOutSplit, drop_item_before_valid, leave_one_out

__all__ = [
    "DATASETS",
    "ChecksumMismatchError",
    "DataFormatError",
    "DownloadError",
    "ITEM_IDS",
    "Interactions",
    "ItemIds",
    "UnknownItemError",
    "EvalBatch",
    "LeaveOneOutSplit",
    "RemoteDataset",
    "SequenceDataset",
    "TrainBatch",
    "TrainBatcher",
    "default_cache_dir",
    "download_file",
    "drop_item_before_valid",
    "eval_batches",
    "fetch_dataset",
    "file_md5",
    "leave_one_out",
    "load_dataset",
    "load_interactions",
    "load_movielens_raw",
    "eval_users",
    "num_eval_users",
    "preprocess_interactions",
    "preprocess_ratings",
    "read_interactions",
    "read_ratings",
    "read_sasrec_text",
    "sample_negatives_for_eval",
    "write_sasrec_text",
]

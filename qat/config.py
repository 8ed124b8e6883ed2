"""Configuration dataclasses: the model's shape and the training run.

Both are validated in ``__post_init__`` and saved next to every checkpoint (``config.json``), so a
run folder fully describes how its model was made.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

LOSSES = ("ce", "bce", "sampled-ce")
NEGATIVE_SAMPLING = ("uniform", "popularity")  # --loss sampled-ce proposals (qat.negative_sampling)


@dataclass(frozen=True)
class SASRecConfig:
    """Shape of a SASRec model (Kang & McAuley 2018, https://arxiv.org/abs/1808.09781).

    Defaults follow the reference setup for MovieLens-1M.
    """

    num_items: int  # largest item id; ids are 1..num_items and 0 is padding
    max_len: int = 200  # 200 for ML-1M in the paper; 50 is the fast setting
    hidden: int = 50  # d, embedding and every layer width
    blocks: int = 2  # self-attention blocks
    heads: int = 1
    dropout: float = 0.2

    def __post_init__(self) -> None:
        for name in ("num_items", "max_len", "hidden", "blocks", "heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{_named(name, 'SASRecConfig')} must be a positive integer, "
                                 f"got {value!r}")
        if self.hidden % self.heads:
            divisors = [h for h in range(1, self.hidden + 1) if self.hidden % h == 0]
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads}); "
                             f"choose heads among {divisors}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout (--dropout) must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained. Flags are keyword-only to keep call sites readable."""

    epochs: int = 200  # upper bound; early stopping usually ends the run sooner
    batch_size: int = 128
    lr: float = 1e-3
    loss: str = "ce"  # "ce": full softmax over all items (SASRec+); "bce": one sampled negative;
    # "sampled-ce": softmax over the target and `negatives` items shared by the batch
    # 3000 negatives per batch: Klenitskiy & Vasilev 2023's "SASRec+ 3000", their sampled setting
    # close to the full softmax; 1/67 of a 200,000-item softmax's logits. On ML-1M (max length
    # 50, 20 epochs) 256 shared negatives (gSASRec's count) reached half of full CE's valid
    # nDCG@10, 3000 came within 0.003. Uniform negatives are capped at the catalogue size (then:
    # the full softmax). Used by "sampled-ce" only.
    negatives: int = 3000
    # "uniform", or "popularity": (count + 1)^0.75 with the logQ correction (qat.negative_sampling)
    negative_sampling: str = "uniform"
    weight_decay: float = 0.0
    patience: int = 20  # evaluations without a better validation nDCG@10 before stopping
    eval_every: int = 1  # epochs between validation evaluations
    seed: int = 42
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    bucket: bool = False  # batch users of similar length together, trim padding (faster)
    eval_batch_size: int = 512
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific settings (QAT)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if isinstance(self.negatives, bool) or not isinstance(self.negatives, int) \
                or self.negatives < 1:
            raise ValueError(f"negatives (--negatives) must be a positive integer, got "
                             f"{self.negatives!r}")
        if self.negative_sampling not in NEGATIVE_SAMPLING:
            raise ValueError(f"negative_sampling (--negative-sampling) must be one of "
                             f"{NEGATIVE_SAMPLING}, got {self.negative_sampling!r}")
        for name in ("epochs", "batch_size", "patience", "eval_every", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{_named(name, 'TrainConfig')} must be a positive integer, "
                                 f"got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr (--lr) must be positive, got {self.lr}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = torch default), got {self.threads}")


# Fields that scripts/train_qat.py sets from a flag of the same name: messages name both.
_FLAGS = frozenset({"max_len", "hidden", "blocks", "heads", "epochs", "batch_size", "patience",
                    "eval_every"})


def _named(field_name: str, owner: str) -> str:
    """``max_len (--max-len)`` for a field a flag sets, else ``Owner.field``."""
    if field_name in _FLAGS:
        return f"{field_name} (--{field_name.replace('_', '-')})"
    return f"{owner}.{field_name}"


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-serialisable dict of a config dataclass."""
    return dataclasses.asdict(config)

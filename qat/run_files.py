"""The file names of a ``scripts/train_qat.py`` run folder (one place, for every reader)."""

CHECKPOINT = "checkpoint.pt"  # best model + resumable training state (qat.train)
CONFIG = "config.json"  # model and training configuration, dataset fingerprint (qat.train)
METRICS = "metrics.json"  # qat.metrics_record.MetricsRecord
INT8_MODEL = "model_int8.pt"  # QAT runs: the converted INT8 model (qat.finetune)

"""SASRec model, training, evaluation and the registry of quantization methods."""
from qat.config import SASRecConfig, TrainConfig
from qat.evaluate import evaluate
from qat.model import SASRec
from qat.registry import METHODS, QuantMethod, get_method, register_method
from qat.train import NonFiniteError, Trainer, TrainHooks

import qat.methods  # noqa: E402,F401  (registers the six QAT methods)

__all__ = ["SASRecConfig", "TrainConfig", "SASRec", "evaluate", "Trainer", "TrainHooks",
           "NonFiniteError", "METHODS", "QuantMethod", "get_method", "register_method"]

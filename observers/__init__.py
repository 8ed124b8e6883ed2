"""Fake-quantize classes for eager-mode QAT, one method per file, all on INT8-exact grids.

Each class subclasses ``torch.ao.quantization.FakeQuantizeBase`` and is used through
``QConfig(activation=A.with_args(...), weight=W.with_args(...))``. The integer grids, the
exactness contract with ``convert`` and the ``fold`` step are described in
:mod:`observers.grid`.

Registries (name -> class), for the ``--qconfig`` registry in ``qat/`` and for the tests:

* :data:`WEIGHT_FAKE_QUANTS`: ``ste``, ``lsq``, ``dorefa``, ``adaround``, ``apot``. Keywords
  common to all: ``bits``, ``full_range``, ``embedding`` (``nn.Embedding`` tables),
  ``factory_kwargs``. All have ``fold(weight)``.
* :data:`ACTIVATION_FAKE_QUANTS`: ``ste``, ``lsq``, ``pact``, ``dorefa`` (8-bit, per tensor,
  affine ``quint8``).
* :data:`METHOD_FAKE_QUANTS`: method name -> ``(weight class, activation class)``, the pairing
  each method is trained and evaluated with. It is the only place the pairing is written:
  ``qat/methods.py`` builds one ``--qconfig`` entry per item (in this order), adding what
  training knows (regularisers, learning rates, frozen weights, activation keywords), so a new
  method is one entry here.
"""

from observers.adaround import AdaRoundFakeQuantize, beta_schedule, regularization_weight
from observers.apot import ApotWeightFakeQuantize
from observers.dorefa import DorefaActivationFakeQuantize, DorefaWeightFakeQuantize
from observers.grid import ActivationFakeQuantize, WeightFakeQuantize, fold_weights_
from observers.lsq import LsqActivationFakeQuantize, LsqWeightFakeQuantize
from observers.pact import PactActivationFakeQuantize
from observers.ste import SteActivationFakeQuantize, SteWeightFakeQuantize

__all__ = [
    "ACTIVATION_FAKE_QUANTS",
    "METHOD_FAKE_QUANTS",
    "WEIGHT_FAKE_QUANTS",
    "ActivationFakeQuantize",
    "AdaRoundFakeQuantize",
    "ApotWeightFakeQuantize",
    "DorefaActivationFakeQuantize",
    "DorefaWeightFakeQuantize",
    "LsqActivationFakeQuantize",
    "LsqWeightFakeQuantize",
    "PactActivationFakeQuantize",
    "SteActivationFakeQuantize",
    "SteWeightFakeQuantize",
    "WeightFakeQuantize",
    "beta_schedule",
    "fold_weights_",
    "regularization_weight",
]

WEIGHT_FAKE_QUANTS: dict[str, type[WeightFakeQuantize]] = {
    "ste": SteWeightFakeQuantize,
    "lsq": LsqWeightFakeQuantize,
    "dorefa": DorefaWeightFakeQuantize,
    "adaround": AdaRoundFakeQuantize,
    "apot": ApotWeightFakeQuantize,
}

ACTIVATION_FAKE_QUANTS: dict[str, type[ActivationFakeQuantize]] = {
    "ste": SteActivationFakeQuantize,
    "lsq": LsqActivationFakeQuantize,
    "pact": PactActivationFakeQuantize,
    "dorefa": DorefaActivationFakeQuantize,
}

METHOD_FAKE_QUANTS: dict[str, tuple[type[WeightFakeQuantize], type[ActivationFakeQuantize]]] = {
    "ste": (SteWeightFakeQuantize, SteActivationFakeQuantize),
    "lsq": (LsqWeightFakeQuantize, LsqActivationFakeQuantize),
    "pact": (SteWeightFakeQuantize, PactActivationFakeQuantize),
    "adaround": (AdaRoundFakeQuantize, SteActivationFakeQuantize),
    "apot": (ApotWeightFakeQuantize, LsqActivationFakeQuantize),
    "dorefa": (DorefaWeightFakeQuantize, DorefaActivationFakeQuantize),
}

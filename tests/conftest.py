"""Shared fixtures: tiny synthetic datasets with a learnable structure; loading the scripts."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from data import SequenceDataset, leave_one_out, write_sasrec_text


def cyclic_dataset(num_users: int = 40, num_items: int = 20, length: int = 12) -> SequenceDataset:
    """User u walks the item cycle 1..num_items starting at item u: next item = item % N + 1.

    A sequence model can learn this perfectly, so trained metrics must be far above chance.
    """
    sequences = {
        user: [(user + step) % num_items + 1 for step in range(length)]
        for user in range(1, num_users + 1)
    }
    return SequenceDataset(sequences=sequences, num_users=num_users, num_items=num_items,
                           source="cyclic")


@pytest.fixture
def cyclic_split():
    return leave_one_out(cyclic_dataset())


@pytest.fixture
def cyclic_file(tmp_path):
    path = tmp_path / "cyclic.txt"
    write_sasrec_text(cyclic_dataset(), path)
    return path


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as module ``<name>_script`` (to call ``main`` in process)."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module

"""torch's warnings about its own quantization internals are filtered in two lists that must
agree: setup.cfg's [tool:pytest] filterwarnings (the tests) and
``qat.quantize.TORCH_QUANTIZATION_WARNINGS`` (the scripts, through
``ignore_torch_quantization_warnings``)."""
import configparser
import io
import warnings
from pathlib import Path

import torch

from qat import SASRec, SASRecConfig, get_method
from qat.quantize import (
    TORCH_QUANTIZATION_WARNINGS,
    calibrate,
    convert_model,
    ignore_torch_quantization_warnings,
    prepare_qat_model,
)

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"


def pytest_filters():
    config = configparser.ConfigParser(interpolation=None)
    config.read(SETUP_CFG)
    lines = config["tool:pytest"]["filterwarnings"].strip().splitlines()
    return [tuple(line.strip().split(":")) for line in lines]


def test_setup_cfg_and_the_script_helper_filter_the_same_warnings():
    expected = [("ignore", message, category.__name__)
                for message, category in TORCH_QUANTIZATION_WARNINGS]
    assert pytest_filters() == expected


def test_the_helper_silences_prepare_convert_and_load():
    """With every other warning an error, the QAT -> INT8 -> save/load path runs clean."""
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=40, max_len=10, hidden=16, blocks=1, heads=1))
    x = torch.randint(1, 41, (4, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ignore_torch_quantization_warnings()
        qat_model = prepare_qat_model(model, get_method("ste").mapping(8))
        calibrate(qat_model, x)
        int8 = convert_model(qat_model)
        buffer = io.BytesIO()
        torch.save(int8, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), int8(x), atol=0, rtol=0)


def test_train_qat_prints_no_torch_quantization_warning(tmp_path):
    """A QAT run converts its model (torch warns about quantized tensors): the script filters
    those warnings, in a real process (pytest's own filters do not apply there)."""
    import subprocess
    import sys

    from conftest import TINY_TRAIN, train_tiny_runs

    data, fp32, _ = train_tiny_runs(tmp_path)
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "scripts" / "train_qat.py"), "--data",
                           str(data), *TINY_TRAIN, "--epochs", "1", "--qconfig", "ste",
                           "--init-from", str(fp32), "--out", str(tmp_path / "ste")],
                          capture_output=True, text=True, cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr

"""``experiments.ipynb``: committed without outputs, and it runs top to bottom in tiny mode.

The run executes the notebook in a fresh ``python3`` kernel (nbclient) with
``SASREC_QAT_NOTEBOOK_TINY=1`` (synthetic data, tiny model, two methods) and
``SASREC_QAT_NOTEBOOK_OUT`` pointing into ``tmp_path``, the working directory set to the
repository root, then checks the ``results.json`` and the plot the notebook writes there.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from qat import METHODS

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "experiments.ipynb"
CELL_TIMEOUT_S = 120
STAGES = ("fp32", "fake_quant", "int8_torch", "onnxruntime")


def test_notebook_is_committed_clean():
    """nbformat 4, valid, no outputs or execution counts, a python3 kernel, parameters first."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    params = code[0]
    assert "parameters" in params.metadata.get("tags", [])
    for name in ("DATA", "MAX_LEN", "EPOCHS", "QAT_EPOCHS", "METHODS", "THREADS", "OUT"):
        assert f"\n{name} = " in "\n" + params.source, f"{name} missing from the parameters cell"


@pytest.mark.slow
def test_notebook_runs_in_tiny_mode(tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("SASREC_QAT_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("SASREC_QAT_NOTEBOOK_OUT", str(out))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    seconds = time.perf_counter() - start

    errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
              if o.output_type == "error"]
    assert not errors, errors
    assert seconds < 10 * CELL_TIMEOUT_S

    results = json.loads((out / "results.json").read_text())
    config, thresholds = results["config"], results["thresholds"]
    assert config["tiny"] is True
    assert (config["max_len"], config["hidden"], config["blocks"]) == (8, 8, 1)
    methods = config["methods"]
    assert len(methods) == 2 and all(METHODS[m].is_quantized for m in methods)
    assert set(results["runs"]) == {"fp32", *methods}

    fp32 = results["runs"]["fp32"]
    for metric in ("ndcg@10", "hit@10"):
        assert fp32[metric]["fake_quant"] is None and fp32[metric]["int8_torch"] is None
    assert abs(fp32["ndcg@10"]["fp32"] - fp32["ndcg@10"]["onnxruntime"]) \
        <= thresholds["max_ndcg_delta"]
    for name in methods:
        run = results["runs"][name]
        assert run["bits"] == 8
        for metric in ("ndcg@10", "hit@10"):
            values = run[metric]
            assert all(0.0 <= values[s] <= 1.0 and math.isfinite(values[s]) for s in STAGES)
            assert values["fp32"] == fp32[metric]["fp32"]  # every method starts from that model
            assert values["int8_torch"] == run["parity"][metric]["torch"]
            assert values["onnxruntime"] == run["parity"][metric]["onnxruntime"]
        # the INT8 torch model and its ONNX export agree within the parity gate
        assert abs(run["ndcg@10"]["int8_torch"] - run["ndcg@10"]["onnxruntime"]) \
            <= thresholds["max_ndcg_delta"]
        assert abs(run["hit@10"]["int8_torch"] - run["hit@10"]["onnxruntime"]) \
            <= thresholds["max_hit_delta"]
        assert (out / name / "model_int8.pt").is_file()
        assert (out / name / "model_int8.onnx").stat().st_size == run["onnx_bytes"]
    assert (out / "fp32" / "model_fp32.onnx").stat().st_size == fp32["onnx_bytes"]
    # the fused-kernel graph scores the test users exactly as the exact graph does
    assert results["fused_equal_exact"] == {name: True for name in methods}
    assert (out / "ndcg10.png").stat().st_size > 0

    shown = "".join(o.get("data", {}).get("text/markdown", "") for cell in nb.cells
                    if cell.cell_type == "code" for o in cell.outputs)
    for name in ("fp32", *methods):
        assert f"| {name} |" in shown, f"the comparison table has no {name} row"

"""The results figure: quality and latency of every model, side by side, as one PNG.

    plot_comparison(rows, "runs/all/results_comparison.png", batches=[1, 256], threads=2)

``rows`` are ``export.results_table.summary_rows``. Left: nDCG@10 per model, torch and
onnxruntime bars, the FP32 model's as a dashed reference line. Right: median latency per model
at each benchmarked batch size (log scale), the speedup over FP32 written above each bar.
Rendered with matplotlib's Agg canvas (no display, no pyplot state) and written atomically.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from export.results_table import FP32_MODEL
from qat.checkpoint import atomic_write


def plot_comparison(rows: Sequence[dict[str, Any]], path: str | Path, batches: Sequence[int],
                    threads: int) -> None:
    """Draw the two panels for ``rows`` and write ``path`` (PNG) atomically."""
    names = [row["model"] for row in rows]
    x = np.arange(len(names))
    fig = Figure(figsize=(max(11.0, 0.8 * len(names) + 4), 6.0), layout="constrained")
    FigureCanvasAgg(fig)
    quality, latency = fig.subplots(1, 2)

    _grouped_bars(quality, x, [("torch", [row.get("ndcg@10_torch") for row in rows]),
                               ("onnxruntime", [row.get("ndcg@10_onnxruntime") for row in rows])])
    fp32 = next((row for row in rows if row["model"] == FP32_MODEL), None)
    reference = fp32 and (fp32.get("ndcg@10_onnxruntime") or fp32.get("ndcg@10_torch"))
    if reference:
        quality.axhline(reference, color="black", linestyle="--", linewidth=1,
                        label=f"FP32 ({reference:.4f})")
    values = [v for row in rows for v in (row.get("ndcg@10_torch"), row.get("ndcg@10_onnxruntime"))
              if v is not None]
    if values and min(values) > 0:  # zoom in: the models differ in the third decimal
        low, high = min(values), max(values)
        span = max(high - low, 0.02 * high)
        quality.set_ylim(max(0.0, low - span), high + span)
    quality.set_title("nDCG@10, test split")
    quality.set_ylabel("nDCG@10 (axis does not start at 0)")
    quality.legend(loc="upper left", ncols=3, fontsize="small")

    series = [(f"batch {b}", [row.get(f"latency_b{b}_ms") for row in rows]) for b in batches]
    containers = _grouped_bars(latency, x, series)
    for container, batch in zip(containers, batches):
        labels = [_speedup_label(row.get(f"speedup_b{batch}")) for row in rows]
        latency.bar_label(container, labels=labels, fontsize="x-small", padding=2,
                          rotation=90 if len(names) > 6 else 0)  # many models: narrow bars
    timed = [v for _, values in series for v in values if v]
    if timed:  # batch sizes differ by orders of magnitude
        latency.set_yscale("log")
        latency.set_ylim(min(timed) / 2, max(timed) * 10)  # room for the labels and legend
        latency.yaxis.set_major_formatter(FuncFormatter(_plain_number))
        latency.yaxis.set_minor_formatter(FuncFormatter(_two_and_five))
    latency.set_title(f"onnxruntime latency, {threads} thread(s)\n"
                      "bar label: speedup over FP32 at the same batch size")
    latency.set_ylabel("median latency per batch (ms, log scale)")
    latency.legend(loc="upper left", ncols=len(batches), fontsize="small")

    for ax in (quality, latency):
        ax.set_xticks(x, names, rotation=35, ha="right")
        ax.grid(axis="y", alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def _grouped_bars(ax: Any, x: np.ndarray,
                  series: Sequence[tuple[str, Sequence[float | None]]]) -> list[Any]:
    """One bar per series at each x (missing values drawn as nothing); returns the containers."""
    width = 0.8 / max(len(series), 1)
    containers = []
    for i, (label, values) in enumerate(series):
        heights = [np.nan if v is None else float(v) for v in values]
        offset = (i - (len(series) - 1) / 2) * width
        containers.append(ax.bar(x + offset, heights, width, label=label))
    return containers


def _speedup_label(speedup: float | None) -> str:
    return "" if speedup is None else f"{speedup:.2f}x"


def _plain_number(value: float, _position: int | None = None) -> str:
    """0.02, 0.5, 10: no scientific notation on the log axis."""
    return f"{value:g}"


def _two_and_five(value: float, _position: int | None = None) -> str:
    """Label the minor ticks at 2 and 5 times a power of ten only."""
    mantissa = f"{value:.0e}"[0]
    return _plain_number(float(f"{value:.1g}")) if mantissa in "25" else ""

#!/usr/bin/env python
"""Recommend the next items for a user's history with an exported model (onnxruntime).

Examples:
    python scripts/recommend.py --model runs/lsq/model_int8_fused_top_k.onnx --history 1193 661 914
    python scripts/recommend.py --model runs/fp32/model_fp32.onnx --history-file users.txt --k 5
    python scripts/recommend.py --model runs/lsq --history 1193 661 914   # the run's fastest graph

--history: one user's raw item ids (as in the data: ML-1M movie ids, ...), oldest first.
--history-file: one user per line, raw ids separated by spaces or commas; blank lines are
skipped. Each output line is "rank<TAB>raw id<TAB>score[<TAB>title]" (the title when the model's
item id map has titles); with --history-file each line starts with the user's line number.

Items of the history are never recommended; equal scores rank the lower internal id first; an
empty history is refused (the model never learnt to predict from nothing). Any exported model
works (model_fp32.onnx, model_int8.onnx, model_int8_fused.onnx: the fused kernels are built on
first use), and their top-k graphs (model_*_top_k.onnx: the graph masks the history and selects
the k best itself; the same lists, less work for a large catalogue). A model exported before
item id maps were embedded uses its internal ids as raw ids (a note on stderr). The logic is
export/recommend.py.

A run folder serves its first graph in export.recommend.SERVING_PREFERENCE among those its
parity.json describes (export_int8.py's record), and refuses graphs exported from another model
file than the folder's.

Exit status: 0 done; 2 bad input (one error: line: unknown item ids, all named; a missing or
unloadable model file; a run folder whose graphs are of another model; an empty history).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data import UnknownItemError
from export import native_ops
from export.recommend import (
    embedded_item_ids,
    format_recommendations,
    load_recommender,
    read_history_file,
    recommend,
    serving_model_path,
)
from qat.cli import ArgumentParser, run_cli, threads_arg


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, metavar="FILE_OR_RUN",
                   help="an exported model (DIR/model_int8_fused.onnx, model_int8.onnx, "
                        "model_fp32.onnx, or their _top_k graphs), or a run folder: its fastest "
                        "exported graph (top-k, fused INT8 first; the choice goes to stderr)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--history", nargs="+", metavar="RAW_ID",
                        help="one user's raw item ids, oldest first")
    source.add_argument("--history-file", type=Path, metavar="FILE",
                        help="one user per line: raw item ids separated by spaces or commas")
    p.add_argument("--k", type=int, default=10, help="recommendations per user (default 10)")
    p.add_argument("--threads", type=threads_arg, default=0,
                   help="onnxruntime intra-op threads (0 = library default)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 done, 2 bad input (one ``error:`` line)."""
    return run_cli(_main, argv, extra=(native_ops.NativeBuildError,))


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    if args.history_file is not None:
        lines, histories = read_history_file(args.history_file)
    else:
        lines, histories = [], [args.history]
    model = serving_model_path(args.model)
    if model != args.model:
        print(f"note: serving {model}", file=sys.stderr)
    session, item_ids = load_recommender(model, threads=args.threads)
    if embedded_item_ids(session) is None:
        print(f"note: {model} carries no item id map (exported before maps were "
              f"embedded): raw ids are its internal ids 1..{item_ids.num_items}",
              file=sys.stderr)
    try:
        results = recommend(session, histories, args.k, item_ids=item_ids)
    except UnknownItemError as err:
        if not lines:
            raise
        unknown = set(err.unknown)
        first = next(n for n, h in zip(lines, histories) if unknown & set(h))
        raise ValueError(f"{args.history_file}:{first}: {err}") from err
    for line in format_recommendations(results, lines or None):
        print(line)
    for i, recs in enumerate(results):
        if len(recs) < args.k:  # the history excludes all but these items
            where = f"line {lines[i]}" if lines else "the history"
            print(f"note: {where}: {len(recs)} of the {args.k} asked for; the history covers "
                  f"the rest of the {item_ids.num_items} items", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

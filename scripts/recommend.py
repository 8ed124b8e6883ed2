#!/usr/bin/env python
"""Recommend the next items for a user's history with an exported model (onnxruntime).

Examples:
    python scripts/recommend.py --model runs/lsq/model_int8_fused_top_k.onnx --history 1193 661 914
    python scripts/recommend.py --model runs/fp32/model_fp32.onnx --history-file users.txt --k 5
    python scripts/recommend.py --model runs/lsq --history 1193 661 914   # the run's fastest graph
    python scripts/recommend.py --model runs/lsq --data my_log.csv --out recs.tsv  # every user

--history: one user's raw item ids (as in the data: ML-1M movie ids, ...), oldest first.
--history-file: one user per line, raw ids separated by spaces or commas; blank lines are
skipped. Each output line is "rank<TAB>raw id<TAB>score[<TAB>title]" (the title when the model's
item id map has titles); with --history-file each line starts with the user's line number
(--batch-size users per onnxruntime run; the lines are printed once every user is scored).

--data: every user of an interaction log (any --data train_qat.py reads: a dataset name, a
SASRec text file, ratings.dat, a .csv/.tsv (or .csv.gz/.tsv.gz)/.parquet log with --columns and
--min-user-interactions), or the --users named (each once), each from their whole history in
the log (time order, the test item included; no item is dropped for being rare). Each line is
"user<TAB>rank<TAB>raw id<TAB>score[<TAB>title]", users by raw id (ascending: numerically when
every id is an integer, else by code point; or as --users lists them), --batch-size users per
onnxruntime run, a progress bar on stderr; --out writes the lines to a file (atomically: a
crash leaves no half file), else they stream to stdout. Items of the log the model does not
know (new ones, or too rare to train on) cannot be read or recommended by it: they are left out
of the histories with a note on stderr (--unknown-items error refuses them instead, naming them,
before anything is written); a user left without an item gets no list and is named; no user
left at all is an error. The log must speak the model's raw ids: a model trained on a SASRec
text file without an item map knows internal ids, so serve it that file, not the raw log
(and the reverse): either mix-up prints a note.
The logic is export/recommend_log.py.

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

Exit status: 0 done; 2 bad input (one error: line: unknown item or user ids, all named; a
missing or unloadable model file or log; a run folder whose graphs are of another model; an
empty history).
"""
from __future__ import annotations

import argparse
import io
import sys
from typing import TextIO

from onnxruntime import InferenceSession
from tqdm.auto import tqdm

from data import ItemIds, UnknownItemError, load_dataset
from data.atomic import atomic_write
from data.item_ids import tsv_unsafe
from data.errors import quote_some
from export import native_ops
from export.recommend import (
    embedded_item_ids,
    format_recommendations,
    load_recommender,
    read_history_file,
    recommend,
    refuse_tsv_unsafe,
    serving_model_path,
)
from export.recommend_log import (
    DEFAULT_BATCH_SIZE,
    SERVING_LOAD,
    UNKNOWN_ITEMS,
    recommend_in_batches,
    user_histories,
)
from qat.cli import ArgumentParser, check_output_file, path_arg, run_cli, threads_arg


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=path_arg, required=True, metavar="FILE_OR_RUN",
                   help="an exported model (DIR/model_int8_fused.onnx, model_int8.onnx, "
                        "model_fp32.onnx, or their _top_k graphs), or a run folder: its fastest "
                        "exported graph (top-k, fused INT8 first; the choice goes to stderr)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--history", nargs="+", metavar="RAW_ID",
                        help="one user's raw item ids, oldest first")
    source.add_argument("--history-file", type=path_arg, metavar="FILE",
                        help="one user per line: raw item ids separated by spaces or commas")
    source.add_argument("--data", metavar="PATH_OR_NAME",
                        help="every user of this interaction log (as train_qat.py's --data), "
                             "each from their whole history")
    log = p.add_argument_group("with --data")
    log.add_argument("--columns", default=None, metavar="USER,ITEM,TIMESTAMP",
                     help="CSV/TSV/parquet logs: the user, item and timestamp columns (as "
                          "train_qat.py's)")
    log.add_argument("--min-user-interactions", type=int, default=None, metavar="N",
                     help="drop users with fewer interactions, as train_qat.py (default 1: "
                          "none); items are never dropped for being rare")
    log.add_argument("--cache-dir", type=path_arg, default=None,
                     help="download cache of named datasets (as train_qat.py's)")
    log.add_argument("--users", nargs="+", metavar="RAW_USER_ID",
                     help="only these users, in this order, each once (default: every user)")
    log.add_argument("--unknown-items", choices=UNKNOWN_ITEMS, default=None,
                     help="items of the log the model does not know: drop them from the "
                          "histories, counted on stderr (default), or error")
    log.add_argument("--out", type=path_arg, default=None,
                     help="write the lines to this file (default: stdout)")
    p.add_argument("--k", type=int, default=10, help="recommendations per user (default 10)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"users per onnxruntime run, --history-file and --data (default "
                        f"{DEFAULT_BATCH_SIZE})")
    p.add_argument("--threads", type=threads_arg, default=0,
                   help="onnxruntime intra-op threads (0 = library default)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 done, 2 bad input (one ``error:`` line)."""
    return run_cli(_main, argv, extra=(native_ops.NativeBuildError,))


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    if args.data is None:
        used = [flag for flag, value in (
            ("--columns", args.columns), ("--min-user-interactions", args.min_user_interactions),
            ("--cache-dir", args.cache_dir), ("--users", args.users),
            ("--unknown-items", args.unknown_items), ("--out", args.out)) if value is not None]
        if used:
            raise ValueError(f"{', '.join(used)} only apply with --data")
    else:
        return _recommend_log(args)
    check_counts(args)
    if args.history_file is not None:
        lines, histories = read_history_file(args.history_file)
    else:
        lines, histories = [], [args.history]
    session, item_ids = _load(args)
    unknown = list(dict.fromkeys(item for history in histories for item in history
                                 if item not in item_ids))
    if unknown:  # the whole file's, named in one error before anything is scored
        if not lines:
            raise UnknownItemError(unknown)
        raise unknown_in_file(args.history_file, lines, histories, unknown)
    results = []  # printed once all are scored: an error leaves no partial output
    for start in range(0, len(histories), args.batch_size):
        try:
            results += recommend(session, histories[start:start + args.batch_size], args.k,
                                 item_ids=item_ids)
        except FloatingPointError as err:  # it names histories[i] of this batch
            if not lines:
                raise
            stop = min(start + args.batch_size, len(lines))
            raise FloatingPointError(f"{args.history_file}: lines {lines[start]}-"
                                     f"{lines[stop - 1]} (histories[0] is line "
                                     f"{lines[start]}): {err}") from err
    for line in format_recommendations(results, lines or None):
        print(line)
    for i, recs in enumerate(results):
        if len(recs) < args.k:  # the history excludes all but these items
            where = f"line {lines[i]}" if lines else "the history"
            print(f"note: {where}: {len(recs)} of the {args.k} asked for; the history covers "
                  f"the rest of the {item_ids.num_items} items", file=sys.stderr)
    return 0


def _load(args: argparse.Namespace) -> tuple[InferenceSession, ItemIds]:
    """``--model``'s session and item map, with notes on which graph a run folder serves and on
    a model without an embedded map."""
    model = serving_model_path(args.model)
    if model != args.model:
        print(f"note: serving {model}", file=sys.stderr)
    session, item_ids = load_recommender(model, threads=args.threads)
    if embedded_item_ids(session) is None:
        print(f"note: {model} carries no item id map (exported before maps were "
              f"embedded): raw ids are its internal ids 1..{item_ids.num_items}",
              file=sys.stderr)
    return session, item_ids


def check_counts(args: argparse.Namespace) -> None:
    """--k and --batch-size, before any work."""
    for flag, value in (("--k", args.k), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")


def unknown_in_file(path: str, lines: list[int], histories: list[list[str]],
                    unknown: list[str]) -> ValueError:
    """The error for ``unknown`` ids of a history file: ``path:N:`` when they are all on line N,
    else each id with the first line it is on."""
    first_line = {}
    for number, history in zip(lines, histories):
        for item in history:
            first_line.setdefault(item, number)
    on = {first_line[item] for item in unknown}
    if len(on) == 1:
        return ValueError(f"{path}:{on.pop()}: {UnknownItemError(unknown)}")
    named = quote_some(unknown, show=lambda item: f"{item!r} (line {first_line[item]})")
    return ValueError(f"{path}: unknown item id(s) {named}: {UnknownItemError.REASON}")


def _recommend_log(args: argparse.Namespace) -> int:
    """--data: every (or every --users) user of the log, batch by batch, to --out or stdout."""
    check_counts(args)
    min_user = 1 if args.min_user_interactions is None else args.min_user_interactions
    if min_user < 0:
        raise ValueError(f"--min-user-interactions must be >= 0, got {min_user}")
    check_output_file(args.out, what="the recommendations")
    session, item_ids = _load(args)  # before the log: a bad model fails fast
    dataset = load_dataset(args.data, args.cache_dir, columns=args.columns,
                           min_user_interactions=min_user, **SERVING_LOAD)
    if item_ids.is_identity and dataset.item_ids is not None:
        print("note: the model's item ids are its internal ids 1.."
              f"{item_ids.num_items} (trained on a SASRec text file without an item map), "
              f"while {dataset.source} names raw ids: the same number need not be the same "
              "item; serve it the text file it was trained on", file=sys.stderr)
    elif dataset.item_ids is None and not item_ids.is_identity:
        print(f"note: {dataset.source} is a SASRec text file of internal ids 1.."
              f"{dataset.num_items}, while the model's map names raw ids (it was trained on "
              "a raw log): the same number need not be the same item; serve it that log",
              file=sys.stderr)
    users = None if args.users is None else [u.strip() for u in args.users]
    try:
        histories = user_histories(dataset, item_ids, users=users,
                                   unknown_items=args.unknown_items or "drop")
    except UnknownItemError as err:
        raise ValueError(f"{dataset.source}: {err}; the default --unknown-items drop leaves "
                         "them out of the histories") from err
    # before any work: format_recommendations would refuse them part way
    refuse_tsv_unsafe(histories.users, "user ids")
    if histories.dropped_items:
        print(f"note: {histories.dropped_items} interaction(s) with "
              f"{len(histories.unknown_item_ids)} item(s) the model does not know were left "
              f"out of the histories ({quote_some(histories.unknown_item_ids, 5)}); "
              "--unknown-items error refuses them", file=sys.stderr)
    if histories.skipped_users:
        print(f"note: no list for {len(histories.skipped_users)} user(s) without an item the "
              f"model knows: {quote_some(histories.skipped_users)}", file=sys.stderr)

    def write(out: TextIO) -> None:
        short = 0
        with tqdm(total=len(histories.users), unit="user", file=sys.stderr,
                  disable=None) as bar:
            for users, lists in recommend_in_batches(session, histories, args.k,
                                                     item_ids=item_ids,
                                                     batch_size=args.batch_size):
                for line in format_recommendations(lists, users):
                    out.write(line + "\n")
                short += sum(len(recs) < args.k for recs in lists)
                bar.update(len(users))
        if short:
            print(f"note: {short} user(s) got fewer than {args.k}: their histories cover the "
                  f"rest of the {item_ids.num_items} items", file=sys.stderr)

    if args.out is None and tsv_unsafe([*item_ids.raw, *(item_ids.titles or ())]):
        # a list may hold an id no line can carry (refused): all or nothing, not part streamed
        buffered = io.StringIO()
        write(buffered)
        sys.stdout.write(buffered.getvalue())
    elif args.out is None:
        write(sys.stdout)  # streamed: a failure part way leaves the lines before it
    else:
        atomic_write(args.out, write, mode="w")
        print(f"wrote {len(histories.users)} users' lists to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

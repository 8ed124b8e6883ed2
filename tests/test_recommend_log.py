"""export.recommend_log and scripts/recommend.py --data: lists for every user of a log, by raw
user and item ids, checked against histories rebuilt from the log's rows here."""
from __future__ import annotations

import csv
from collections import defaultdict

import pytest
from conftest import TINY_TRAIN, cyclic_dataset, load_script, run_in_process

from data import ItemIds, UnknownItemError, load_dataset
from export.export_run import export_run
from export.recommend import format_recommendations, load_recommender, recommend
from export.recommend_log import SERVING_LOAD, recommend_in_batches, user_histories


def write_log(path, extra_rows=()):
    """The cyclic dataset as a CSV log with text ids: user ``u<n>``, item ``sku<i>``; rows in
    reverse time order (the loader must sort them), then ``extra_rows``."""
    rows = []
    for user, items in cyclic_dataset().sequences.items():
        rows += [(f"u{user}", f"sku{item}", 1000 + t) for t, item in enumerate(items)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "item", "timestamp"])
        w.writerows(reversed(rows))
        w.writerows(extra_rows)
    return path


def histories_from_rows(path) -> dict[str, list[str]]:
    """Each user's items by timestamp, straight from the CSV (the reference)."""
    by_user = defaultdict(list)
    with open(path) as f:
        for row in csv.DictReader(f):
            by_user[row["user"]].append((int(row["timestamp"]), row["item"]))
    return {u: [item for _, item in sorted(rows)] for u, rows in by_user.items()}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(log, exported FP32 run) trained on the text-id log, in process."""
    root = tmp_path_factory.mktemp("log_run")
    log = write_log(root / "log.csv")
    run = root / "fp32"
    assert load_script("train_qat").main(["--data", str(log), *TINY_TRAIN, "--epochs", "1",
                                          "--out", str(run)]) == 0
    export_run(run, threads=1)
    return log, run


def test_dataset_keeps_raw_user_ids_through_the_loader_and_the_user_filter(tmp_path):
    log = write_log(tmp_path / "log.csv", [("late", "sku1", 5), ("late", "sku2", 6)])
    data = load_dataset(log)
    reference = histories_from_rows(log)
    # text ids: numbered by code point order, and each user's sequence is theirs
    assert list(data.raw_user_ids()) == sorted(reference)
    items = data.item_ids
    for internal, raw in enumerate(data.raw_user_ids(), start=1):
        assert [items.raw_id(i) for i in data.sequences[internal]] == reference[raw]
    short = load_dataset(log, min_user_interactions=3)  # "late" has 2 rows: dropped
    assert list(short.raw_user_ids()) == sorted(u for u in reference if u != "late")
    for internal, raw in enumerate(short.raw_user_ids(), start=1):
        assert [short.item_ids.raw_id(i) for i in short.sequences[internal]] == reference[raw]


def test_histories_are_every_users_whole_log_in_raw_ids(served):
    log, _ = served
    data = load_dataset(log)
    reference = histories_from_rows(log)
    model_items = data.item_ids  # the run was trained on this log: the same map
    prepared = user_histories(data, model_items)
    assert prepared.users == sorted(reference)
    assert prepared.histories == [reference[u] for u in prepared.users]
    assert prepared.dropped_items == 0 and prepared.skipped_users == []
    picked = user_histories(data, model_items, users=["u7", "u12", "u7"])
    assert picked.users == ["u7", "u12"] and picked.histories == [reference["u7"],
                                                                  reference["u12"]]
    with pytest.raises(ValueError, match=r"'nobody', 'u99' not in"):
        user_histories(data, model_items, users=["u3", "nobody", "u99"])
    with pytest.raises(ValueError, match="users is empty"):
        user_histories(data, model_items, users=[])


def test_unknown_items_are_dropped_and_counted_or_refused(served, tmp_path):
    log, _ = served
    model_items = load_dataset(log).item_ids
    # "new" and "rare" are items the model never saw; "x" has nothing else
    extra = [("u1", "new", 3000), ("u2", "new", 3000), ("u3", "rare", 3000),
             ("x", "new", 1), ("x", "new", 2)]
    newer = load_dataset(write_log(tmp_path / "newer.csv", extra), **SERVING_LOAD)
    prepared = user_histories(newer, model_items)
    assert prepared.dropped_items == 5 and prepared.skipped_users == ["x"]
    assert prepared.unknown_item_ids == ["new", "rare"]
    assert "x" not in prepared.users and len(prepared.users) == 40
    reference = histories_from_rows(log)
    assert prepared.histories == [reference[u] for u in prepared.users]  # unknown left out
    with pytest.raises(UnknownItemError, match="'new', 'rare'"):
        user_histories(newer, model_items, unknown_items="error")
    with pytest.raises(ValueError, match="no user to serve .* 1 user"):
        user_histories(newer, model_items, users=["x"])
    with pytest.raises(ValueError, match="unknown_items must be one of drop, error"):
        user_histories(newer, model_items, unknown_items="skip")


def test_items_rare_in_the_served_log_stay_in_the_histories(served, tmp_path):
    """Training's rule drops items seen fewer than 5 times; serving must not: a known item
    left out of a history could be recommended back to the user who saw it."""
    log, run = served
    reference = histories_from_rows(log)
    few = tmp_path / "few.csv"  # three users: every item is rare in this log
    with open(few, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "item", "timestamp"])
        for user in ("u1", "u2", "u3"):
            w.writerows((user, item, t) for t, item in enumerate(reference[user]))
    session, item_ids = load_recommender(run, threads=1)
    prepared = user_histories(load_dataset(few, **SERVING_LOAD), item_ids)
    assert prepared.histories == [reference[u] for u in ("u1", "u2", "u3")]
    out = tmp_path / "recs.tsv"
    result = run_in_process("recommend", "--model", run, "--data", few, "--out", out,
                            "--threads", "1")
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in out.read_text().splitlines()]
    assert {user for user, *_ in lines} == {"u1", "u2", "u3"}
    assert all(item not in reference[user] for user, _, item, _ in lines)


def test_batches_give_the_lists_of_one_run(served):
    log, run = served
    session, item_ids = load_recommender(run, threads=1)
    prepared = user_histories(load_dataset(log), item_ids)
    whole = recommend(session, prepared.histories, 5, item_ids=item_ids)
    batched = [(users, lists) for users, lists in
               recommend_in_batches(session, prepared, 5, item_ids=item_ids, batch_size=7)]
    assert [len(users) for users, _ in batched] == [7] * 5 + [5]
    assert [u for users, _ in batched for u in users] == prepared.users
    assert [recs for _, lists in batched for recs in lists] == whole
    with pytest.raises(ValueError, match="batch_size"):
        next(recommend_in_batches(session, prepared, 5, batch_size=0))


def test_cli_writes_every_users_lists_to_a_file(served, tmp_path):
    log, run = served
    out = tmp_path / "recs.tsv"
    result = run_in_process("recommend", "--model", run, "--data", log, "--k", "3",
                            "--batch-size", "6", "--out", out, "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and f"wrote 40 users' lists to {out}" in result.stderr
    session, item_ids = load_recommender(run, threads=1)
    reference = histories_from_rows(log)
    users = sorted(reference)
    expected = format_recommendations(
        recommend(session, [reference[u] for u in users], 3, item_ids=item_ids), users)
    assert out.read_text().splitlines() == expected
    lines = out.read_text().splitlines()
    assert len(lines) == 120 and lines[0].split("\t")[:2] == [users[0], "1"]
    # the history's items are never recommended
    for line in lines:
        user, _, item, _ = line.split("\t")
        assert item not in reference[user]
    # --users to stdout, in the order given
    result = run_in_process("recommend", "--model", run, "--data", log, "--k", "2", "--users",
                            "u9", "u1", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["u9"] * 2 + ["u1"] * 2


def test_cli_bad_input_is_one_error_line_and_writes_nothing(served, tmp_path):
    log, run = served
    newer = write_log(tmp_path / "newer.csv", [(f"u{i}", "new", 3000) for i in range(1, 6)]
                      + [("new_only", "new", 1), ("new_only", "new", 2)])
    tabbed = write_log(tmp_path / "tabbed.csv", [("a\tb", "sku1", 1)])
    out = tmp_path / "recs.tsv"
    cases = [
        (["--data", log, "--users", "ghost", "--out", out], "'ghost' not in"),
        (["--data", newer, "--unknown-items", "error", "--out", out],
         "unknown item id(s) 'new'"),
        (["--data", log, "--batch-size", "0", "--out", out], "--batch-size must be >= 1"),
        (["--data", log, "--k", "0", "--out", out], "--k must be >= 1"),
        (["--data", log, "--min-user-interactions", "-1", "--out", out],
         "--min-user-interactions must be >= 0"),
        (["--data", log, "--out", tmp_path], "is a folder; give a file name for the "
                                             "recommendations"),
        (["--data", log, "--out", "/proc/recs.tsv"], "--out /proc/recs.tsv: cannot write there"),
        (["--data", newer, "--users", "new_only", "--out", out], "no user to serve"),
        (["--data", tabbed, "--out", out], "user ids 'a\\tb' hold a tab or line break"),
        (["--history", "sku1", "--out", out], "--out only apply with --data"),
        (["--history", "sku1", "--users", "u1", "--unknown-items", "drop"],
         "--users, --unknown-items only apply with --data"),
        (["--history", "sku1", "--min-user-interactions", "1"],
         "--min-user-interactions only apply with --data"),
    ]
    for args, message in cases:
        result = run_in_process("recommend", "--model", run, *args, "--threads", "1")
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert result.returncode == 2 and len(errors) == 1 and message in errors[0], \
            (args, result.stderr)
        assert not out.exists()
    # the default drops what the model does not know, and says so
    result = run_in_process("recommend", "--model", run, "--data", newer, "--threads", "1",
                            "--out", out)
    assert result.returncode == 0, result.stderr
    assert "note: 7 interaction(s) with 1 item(s) the model does not know were left out of " \
           "the histories ('new')" in result.stderr
    assert "note: no list for 1 user(s) without an item the model knows: 'new_only'" \
        in result.stderr
    # 12 of the 20 items seen: 8 left per user, fewer than the 10 asked for, and said so
    assert len(out.read_text().splitlines()) == 40 * 8
    assert "note: 40 user(s) got fewer than 10" in result.stderr


def test_user_ids_must_name_every_user():
    data = cyclic_dataset(num_users=3)
    with pytest.raises(ValueError, match="user_ids names 2 users but the dataset has "
                                         "num_users=3"):
        type(data)(sequences=data.sequences, num_users=3, num_items=data.num_items,
                   source="x", user_ids=("a", "b"))
    assert data.raw_user_ids() == ("1", "2", "3") and data.user_ids is None
    assert "sku1" in ItemIds(("sku1",)) and 1 not in ItemIds(("sku1",))
    assert ItemIds.identity(3).is_identity and not ItemIds(("1", "3", "2")).is_identity


def test_a_model_of_internal_ids_served_a_raw_log_gets_a_note(tmp_path, cyclic_file):
    """A model trained on a SASRec text file knows internal ids; a raw log's ids are others
    (the same number need not be the same item): said on stderr."""
    run = tmp_path / "text_run"
    assert load_script("train_qat").main(["--data", str(cyclic_file), *TINY_TRAIN, "--epochs",
                                          "1", "--out", str(run)]) == 0
    export_run(run, threads=1)
    log = tmp_path / "raw.csv"
    rows = "".join(f"a,{i},{i}\nb,{i},{i}\n" for i in range(1, 8))
    log.write_text("user,item,timestamp\n" + rows)
    result = run_in_process("recommend", "--model", run, "--data", log, "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert "the model's item ids are its internal ids 1..20" in result.stderr
    quiet = run_in_process("recommend", "--model", run, "--data", cyclic_file, "--threads", "1")
    assert quiet.returncode == 0 and "internal ids" not in quiet.stderr


def test_a_model_of_raw_ids_served_a_text_file_gets_a_note(served, cyclic_file):
    _, run = served  # trained on the log of sku ids; the text file holds internal ids
    result = run_in_process("recommend", "--model", run, "--data", cyclic_file, "--threads", "1")
    assert f"note: {cyclic_file} is a SASRec text file of internal ids 1..20, while the " \
           "model's map names raw ids" in result.stderr
    assert result.returncode == 2 and "no user to serve" in result.stderr  # none is known


def test_load_dataset_keeps_rare_items_when_asked(tmp_path, cyclic_file):
    log = write_log(tmp_path / "log.csv", [("solo", "once", 1)])
    assert "once" not in load_dataset(log).item_ids  # training's rule: fewer than 5, dropped
    kept = load_dataset(log, min_item_interactions=0)
    assert "once" in kept.item_ids and "solo" in kept.raw_user_ids()
    assert load_dataset(cyclic_file, min_item_interactions=0).num_items == 20  # read as it is
    with pytest.raises(ValueError, match="min_item_interactions applies to raw logs"):
        load_dataset(cyclic_file, min_item_interactions=5)
    with pytest.raises(ValueError, match="min_item_interactions must be >= 0"):
        load_dataset(log, min_item_interactions=-1)
    with pytest.raises(ValueError, match="the path does not exist"):  # not a rule's message
        load_dataset(tmp_path / "none.txt", min_item_interactions=5)


def test_cli_prints_all_lists_or_none_when_an_id_cannot_be_printed(tmp_path):
    """A model whose best item's id holds a tab: user A has seen it (A's list is printable),
    user B has not (B's list holds it). Streamed batch by batch, A's lines would be printed
    before B's refusal; the command prints nothing instead, with one error line."""
    import torch

    from data.item_ids import METADATA_KEY
    from export import build_sasrec_onnx
    from export.onnx_file import save_onnx
    from qat.config import SASRecConfig
    from qat.model import SASRec

    raw = ("tab\there", *(f"i{n}" for n in range(2, 11)))
    model = SASRec(SASRecConfig(num_items=len(raw), max_len=5, hidden=4, blocks=1,
                                dropout=0.0)).eval()
    with torch.no_grad():  # scores = column 0 of the item table, whatever the history
        model.final_norm.weight.zero_()
        model.final_norm.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        model.item_emb.weight[1:, 0] = torch.tensor([9.0, *range(1, len(raw))])
    onnx_file = tmp_path / "model.onnx"
    save_onnx(build_sasrec_onnx(model, metadata={METADATA_KEY: ItemIds(raw).dumps()}),
              onnx_file)
    log = tmp_path / "log.csv"
    with open(log, "w", newline="") as f:
        csv.writer(f).writerows([("user", "item", "timestamp"),
                                 ("A", "tab\there", 1), ("A", "i2", 2), ("A", "i3", 3),
                                 ("B", "i4", 1), ("B", "i5", 2), ("B", "i6", 3)])
    first = run_in_process("recommend", "--model", onnx_file, "--data", log, "--users", "A",
                           "--k", 2)
    assert first.returncode == 0 and first.stdout == "A\t1\ti10\t9.000000\nA\t2\ti9\t8.000000\n", \
        first.stdout + first.stderr
    both = run_in_process("recommend", "--model", onnx_file, "--data", log, "--users", "A", "B",
                          "--k", 2, "--batch-size", 1)
    assert both.returncode == 2 and both.stdout == "", both.stdout
    assert "'tab\\there' hold a tab or line break" in both.stderr

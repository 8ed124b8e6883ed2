"""A shop's CSV log end to end: train (FP32, QAT), export, recommend, all in raw ids.

The log has string user and item ids (SKUs with a comma inside quotes) and ISO timestamps, its
rows shuffled; every user walks the item cycle of conftest.py's cyclic dataset, so a trained
model recommends the next SKU of the cycle.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import random

import pytest
from conftest import TINY_TRAIN, cyclic_dataset, load_script, run_in_process

from data import ITEM_IDS, ItemIds, load_dataset
from export.parity_record import ParityRecord
from export.recommend import load_recommender, recommend


DATA_OPTIONS = ["--columns", "customer,product,bought_at", "--min-user-interactions", "3"]


def sku(item: int) -> str:
    return f"SKU-{item:03d}, blue"  # a comma inside the id: the CSV quotes it


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """(log file, FP32 run, LSQ run), trained and exported once."""
    root = tmp_path_factory.mktemp("shop")
    rows = [(f"2026-01-{1 + step:02d}T10:00:00", f"customer {user}", sku(item))
            for user, items in cyclic_dataset().sequences.items()
            for step, item in enumerate(items)]
    # one-off visitors, dropped by --min-user-interactions 3
    rows += [(f"2026-01-0{1 + step}T10:00:00", f"visitor {v}", sku(1 + v + step))
             for v in range(3) for step in range(2)]
    random.Random(0).shuffle(rows)  # file order is not time order
    log = root / "shop.csv"
    with open(log, "w", newline="") as f:
        writer = csv.writer(f)
        # not in user, item, timestamp order: read by position the file means something else
        writer.writerow(["bought_at", "customer", "product"])
        writer.writerows(rows)
    train, export = load_script("train_qat"), load_script("export_int8")
    common = ["--data", str(log), *DATA_OPTIONS, *TINY_TRAIN, "--eval-negatives", "5"]
    fp32, lsq = root / "fp32", root / "lsq"
    assert train.main([*common, "--epochs", "40", "--out", str(fp32)]) == 0
    assert train.main([*common, "--epochs", "2", "--qconfig", "lsq", "--init-from", str(fp32),
                       "--out", str(lsq)]) == 0
    assert export.main(["--run", str(lsq), "--fused", "--threads", "1"]) == 0
    return log, fp32, lsq


def test_run_folders_carry_the_raw_item_ids(shop):
    log, fp32, lsq = shop
    dataset = load_dataset(log, columns="customer,product,bought_at", min_user_interactions=3)
    assert dataset.num_users == len(cyclic_dataset().sequences)  # the visitors dropped
    for run in (fp32, lsq):
        ids = ItemIds.load(run / ITEM_IDS)
        assert ids == dataset.item_ids
        assert sorted(ids.raw) == sorted(sku(i) for i in range(1, 21))
        config = json.loads((run / "config.json").read_text())
        assert config["data_fingerprint"] == dataset.fingerprint()
        assert config["data_options"] == {"columns": "customer,product,bought_at",
                                          "min_user_interactions": 3}


def test_later_steps_read_the_log_as_training_did(shop, tmp_path, capsys):
    """Export (done in the fixture without data flags), the benchmark and a QAT fine-tune read
    the log with the options config.json records; a fine-tune given other options is refused
    with the flags that read it."""
    log, fp32, lsq = shop
    assert ParityRecord.load(lsq / "parity.json").passed
    bench = load_script("benchmark")
    assert bench.main(["--runs", str(fp32), str(lsq), "--out", str(tmp_path / "b.json"),
                       "--batches", "1", "--threads", "1", "--repeats", "2", "--warmup", "1",
                       "--no-baselines", "--no-fused"]) == 0
    train = load_script("train_qat")
    status = train.main(["--data", str(log), "--columns", "customer,product,bought_at",
                         *TINY_TRAIN, "--epochs", "1", "--qconfig", "ste", "--init-from",
                         str(fp32), "--out", str(tmp_path / "ste")])
    assert status == 2
    assert ("it read the file with --columns customer,product,bought_at "
            "--min-user-interactions 3: give the same") in capsys.readouterr().err


def test_eval_negatives_are_recorded(shop):
    metrics = json.loads((shop[1] / "metrics.json").read_text())
    sampled = metrics["sampled"]
    assert sampled["negatives"] == 5 and sampled["seed"] == 0
    for which in ("valid", "test"):
        # the sampled protocol ranks among 6 items: never harder than the full ranking
        assert sampled[which]["hit@10"] >= metrics[which]["hit@10"]


@pytest.mark.parametrize("graph", ["model_int8.onnx", "model_int8_fused.onnx"])
def test_exported_model_recommends_the_next_sku(shop, graph):
    _, _, lsq = shop
    parity = ParityRecord.load(lsq / "parity.json")
    assert parity.item_ids_source == ITEM_IDS and parity.is_current(lsq)
    session, ids = load_recommender(lsq / graph)
    assert ids == ItemIds.load(lsq / ITEM_IDS)
    # a history as long as the training inputs (a 5-item one ends at a window position no
    # training sequence ends at, and its top item changed with the dropout stream)
    history = [sku(i) for i in range(3, 12)]  # the cycle continues with item 12
    top = recommend(session, [history], k=3)[0]
    assert top[0].item == sku(12)
    assert not {r.item for r in top} & set(history)


def test_a_changed_item_map_makes_the_export_stale(shop, tmp_path):
    import shutil

    _, _, lsq = shop
    run = shutil.copytree(lsq, tmp_path / "lsq")
    ids = ItemIds.load(run / ITEM_IDS)
    ItemIds(tuple(reversed(ids.raw))).save(run / ITEM_IDS)  # other names for the same items
    assert not ParityRecord.load(run / "parity.json").is_current(run)


def test_a_gzipped_log_trains_and_an_unprintable_id_is_noted(tmp_path):
    """A .csv.gz log trains as its text would; an item id holding a tab is kept (the Python
    API serves it) with a note that recommend.py's tab-separated lines cannot print it."""
    rows = [(f"user {user}", f"SKU\t{item}" if item == 1 else sku(item), step)
            for user, items in cyclic_dataset().sequences.items()
            for step, item in enumerate(items)]
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([("user", "item", "timestamp"), *rows])
    log = tmp_path / "shop.csv.gz"
    log.write_bytes(gzip.compress(text.getvalue().encode()))
    result = run_in_process("train_qat", "--data", log, *TINY_TRAIN, "--epochs", 1,
                            "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert "note: item id(s) 'SKU\\t1' hold a tab or line break: scripts/recommend.py " \
           "cannot print them" in result.stderr
    assert ItemIds.load(tmp_path / "run" / ITEM_IDS).internal_id("SKU\t1") >= 1

"""Interaction logs (CSV, TSV, Parquet): columns, ids, timestamps, preprocessing, bad input."""

import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from data import (
    DataFormatError,
    leave_one_out,
    load_dataset,
    load_interactions,
    preprocess_ratings,
    read_interactions,
)
from data import interactions as interactions_module

# A shop's log: string ids, one SKU with a comma inside quotes. Item "rare" has 1 row.
# By time: alice: SKU,1 (t=1), B-2 (t=2), C (t=5); bob: C (t=3), SKU,1 (t=4), B-2 (t=9), rare;
# carol: B-2 (t=6), C (t=7), SKU,1 (t=8). With min_item_interactions=3 "rare" is dropped.
ROWS = [
    ("bob", "C", "3"),
    ("alice", "SKU,1", "1"),
    ("carol", "B-2", "6"),
    ("alice", "B-2", "2"),
    ("bob", "SKU,1", "4"),
    ("carol", "C", "7"),
    ("alice", "C", "5"),
    ("bob", "rare", "10"),
    ("carol", "SKU,1", "8"),
    ("bob", "B-2", "9"),
]
# Users alice, bob, carol -> 1, 2, 3 (code point order); items by first appearance over users in
# order: SKU,1 -> 1, B-2 -> 2, C -> 3.
EXPECTED = {1: [1, 2, 3], 2: [3, 1, 2], 3: [2, 3, 1]}
EXPECTED_RAW = ("SKU,1", "B-2", "C")


def _quote(value: str, sep: str) -> str:
    return f'"{value}"' if sep in value or '"' in value else value


def _write(path: Path, rows, header=("user", "item", "timestamp"), sep=",") -> Path:
    lines = [sep.join(header)] if header else []
    lines += [sep.join(_quote(v, sep) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _parquet(path: Path, columns: dict) -> Path:
    import pyarrow as pa  # a dev dependency: the parquet tests run, never skip
    import pyarrow.parquet as pq
    pq.write_table(pa.table(columns), path)
    return path


def _raw_sequences(dataset) -> dict[int, list[str]]:
    return {u: [dataset.item_ids.raw_id(i) for i in s] for u, s in dataset.sequences.items()}


# -- round trips -----------------------------------------------------------------------------
def test_csv_string_ids_quoted_separator(tmp_path):
    path = _write(tmp_path / "log.csv", ROWS)
    assert '"SKU,1"' in path.read_text()
    d = load_interactions(path, min_item_interactions=3)
    assert d.sequences == EXPECTED
    assert (d.num_users, d.num_items) == (3, 3)
    assert d.item_ids.raw == EXPECTED_RAW
    assert d.item_ids.titles is None
    assert d.source == str(path)


def test_tsv_with_tab_inside_quotes(tmp_path):
    rows = [(u, i.replace(",", "\t"), t) for u, i, t in ROWS]
    path = _write(tmp_path / "log.TSV", rows, sep="\t")
    d = load_interactions(path, min_item_interactions=3)
    assert d.sequences == EXPECTED
    assert d.item_ids.raw == ("SKU\t1", "B-2", "C")


def test_parquet_same_as_csv(tmp_path):
    path = _parquet(tmp_path / "log.parquet", {
        "user": [r[0] for r in ROWS],
        "item": [r[1] for r in ROWS],
        "timestamp": [int(r[2]) for r in ROWS],
    })
    d = load_interactions(path, min_item_interactions=3)
    assert d.sequences == EXPECTED
    assert d.item_ids.raw == EXPECTED_RAW
    csv_d = load_interactions(_write(tmp_path / "log.csv", ROWS), min_item_interactions=3)
    assert d.fingerprint() == csv_d.fingerprint()


def test_parquet_integer_ids_and_timestamp_types(tmp_path):
    import pyarrow as pa  # a dev dependency: the parquet tests run, never skip
    from datetime import date, datetime, timezone

    users = pa.array([7, 7, 3, 3], type=pa.int32())
    items = pa.array([10, 20, 20, 10], type=pa.int64())
    stamps = [datetime(2024, 1, 2, tzinfo=timezone.utc), datetime(2024, 1, 1, tzinfo=timezone.utc),
              datetime(2024, 1, 1, tzinfo=timezone.utc), datetime(2024, 1, 3, tzinfo=timezone.utc)]
    for name, column in {
        "ts": pa.array(stamps, type=pa.timestamp("ns", tz="UTC")),
        "naive": pa.array([s.replace(tzinfo=None) for s in stamps], type=pa.timestamp("ms")),
        "date": pa.array([s.date() for s in stamps], type=pa.date32()),
        "text": pa.array([s.isoformat() for s in stamps]),
    }.items():
        path = _parquet(tmp_path / f"{name}.parquet", {"u": users, "i": items, "t": column})
        d = load_interactions(path, min_item_interactions=1)
        # users 3, 7 -> 1, 2 (integers: numeric order); user 3: 20 (1st), 10 (3rd); user 7:
        # 20 (1st), 10 (2nd).
        assert d.sequences == {1: [1, 2], 2: [1, 2]}, name
        assert d.item_ids.raw == ("20", "10")
    assert read_interactions(tmp_path / "date.parquet").timestamps[0] == (
        (date(2024, 1, 2) - date(1970, 1, 1)).days * 86_400_000_000)


def test_parquet_dictionary_and_large_string_columns(tmp_path):
    import pyarrow as pa  # a dev dependency: the parquet tests run, never skip
    path = _parquet(tmp_path / "d.parquet", {
        "user": pa.array(["u", "u", "v"]).dictionary_encode(),
        "item": pa.array(["x", "y", "x"], type=pa.large_string()),
        "timestamp": pa.array([1.5, 0.5, 2.0]),
    })
    d = load_interactions(path, min_item_interactions=1)
    assert _raw_sequences(d) == {1: ["y", "x"], 2: ["x"]}


# -- columns ---------------------------------------------------------------------------------
@pytest.mark.parametrize("columns", ["user_id,sku,ts", "1,3,0", ["user_id", "sku", "ts"],
                                     ("user_id", 3, "ts"), [1, 3, 0], " user_id , sku , ts "])
def test_columns_by_name_or_position(tmp_path, columns):
    rows = [(t, u, "x", i) for u, i, t in ROWS]
    path = _write(tmp_path / "log.csv", rows, header=("ts", "user_id", "other", "sku"))
    d = load_interactions(path, columns=columns, min_item_interactions=3)
    assert d.sequences == EXPECTED
    assert d.item_ids.raw == EXPECTED_RAW


def test_default_header_names_in_any_order_with_extra_columns(tmp_path):
    rows = [("9.99", i, t, u) for u, i, t in ROWS]
    path = _write(tmp_path / "log.csv", rows, header=("price", "item", "timestamp", "user"))
    assert load_interactions(path, min_item_interactions=3).sequences == EXPECTED


def test_default_positions_without_header_or_with_another_header(tmp_path):
    no_header = _write(tmp_path / "a.csv", ROWS, header=None)
    assert load_interactions(no_header, min_item_interactions=3).sequences == EXPECTED
    other = _write(tmp_path / "b.csv", ROWS, header=("customer", "product", "when"))
    assert load_interactions(other, min_item_interactions=3).sequences == EXPECTED
    # Explicit positions on a file with a header: the header is recognised the same way.
    assert load_interactions(other, columns="0,1,2", min_item_interactions=3).sequences == EXPECTED
    assert read_interactions(no_header, columns="0,1,2").num_rows == len(ROWS)


def test_a_header_naming_columns_out_of_position_is_refused(tmp_path):
    """A header naming user or item but not all three defaults (no ``timestamp``) is read by
    position; where a named column sits elsewhere than its position (item,user,ts) that would
    swap users and items silently: an error naming the column and a columns= to pass. Named
    where the positions read them (user,item,ts) it is fine."""
    swapped = _write(tmp_path / "a.csv", [(i, u, t) for u, i, t in ROWS],
                     header=("item", "user", "ts"))
    with pytest.raises(DataFormatError, match=r"a\.csv:1: the header item,user,ts names 'user' "
                       r"at position 1.*--columns user,item,ts"):
        load_interactions(swapped, min_item_interactions=3)
    assert load_interactions(swapped, columns="user,item,ts",
                             min_item_interactions=3).sequences == EXPECTED
    in_place = _write(tmp_path / "b.csv", ROWS, header=("user", "item", "ts"))
    assert load_interactions(in_place, min_item_interactions=3).sequences == EXPECTED


@pytest.mark.parametrize(("columns", "message"), [
    ("a,b", "expected 3 columns"),
    ("a,b,c,d", "expected 3 columns"),
    ("a,,c", "empty column name"),
    ("a,b,a", "named twice"),
    ([0, 1, -1], "positions start at 0"),
    ([0, 1, 2.5], "neither a column name nor a position"),
])
def test_bad_columns_argument(tmp_path, columns, message):
    path = _write(tmp_path / "log.csv", ROWS)
    with pytest.raises(ValueError, match=message) as info:
        load_interactions(path, columns=columns)
    assert not isinstance(info.value, DataFormatError)


def test_name_and_position_of_the_same_column(tmp_path):
    path = _write(tmp_path / "log.csv", ROWS)
    with pytest.raises(ValueError, match="same column twice"):
        load_interactions(path, columns=("user", 0, "timestamp"))


# -- preprocessing rules ---------------------------------------------------------------------
def test_stable_time_sort_ties_keep_file_order(tmp_path):
    rows = [("u", "b", "5"), ("u", "a", "5"), ("u", "c", "1"), ("u", "d", "5"), ("v", "a", "5")]
    d = load_interactions(_write(tmp_path / "t.csv", rows), min_item_interactions=1)
    assert _raw_sequences(d) == {1: ["c", "b", "a", "d"], 2: ["a"]}


def test_min_item_count_is_counted_over_all_rows_first(tmp_path):
    # "x" has 2 rows in total (one per user): kept at 2, dropped at 3.
    rows = [("u", "x", "1"), ("v", "x", "2"), ("v", "y", "3")]
    path = _write(tmp_path / "m.csv", rows)
    assert _raw_sequences(load_interactions(path, min_item_interactions=2)) == {
        1: ["x"], 2: ["x"]}
    with pytest.raises(ValueError, match="no interactions left .* fewer than 3 interactions; "
                                         "the log needs items seen at least 3 times"):
        load_interactions(path, min_item_interactions=3)


def test_min_user_interactions_after_the_item_filter(tmp_path):
    # With the item filter (min 2): u keeps x, y (2); v keeps x (1, "z" is rare); w keeps y, x, y.
    rows = [("u", "x", "1"), ("u", "y", "2"), ("v", "x", "3"), ("v", "z", "4"),
            ("w", "y", "5"), ("w", "x", "6"), ("w", "y", "7")]
    path = _write(tmp_path / "m.csv", rows)
    default = load_interactions(path, min_item_interactions=2)
    assert _raw_sequences(default) == {1: ["x", "y"], 2: ["x"], 3: ["y", "x", "y"]}
    d = load_interactions(path, min_item_interactions=2, min_user_interactions=2)
    assert _raw_sequences(d) == {1: ["x", "y"], 2: ["y", "x", "y"]}
    assert d.num_users == 2
    d = load_interactions(path, min_item_interactions=2, min_user_interactions=3)
    assert _raw_sequences(d) == {1: ["y", "x", "y"]}
    assert d.item_ids.raw == ("y", "x")  # renumbered by first appearance among those kept
    with pytest.raises(ValueError, match="fewer than 4 interactions; lower "
                                         "--min-user-interactions"):
        load_interactions(path, min_item_interactions=2, min_user_interactions=4)
    with pytest.raises(ValueError,
                       match=r"min_user_interactions \(--min-user-interactions\) must be >= 0"):
        load_interactions(path, min_user_interactions=-1)
    with pytest.raises(ValueError, match="min_item_interactions must be >= 0"):
        load_interactions(path, min_item_interactions=-1)


def test_user_with_one_interaction_is_kept_and_only_trains(tmp_path):
    rows = [("solo", "x", "1")] + [("many", i, str(t)) for t, i in enumerate("xyzx")]
    d = load_interactions(_write(tmp_path / "s.csv", rows), min_item_interactions=1)
    assert d.num_users == 2
    split = leave_one_out(d)
    solo = 2  # "many" < "solo"
    assert split.train[solo] == d.sequences[solo] and len(d.sequences[solo]) == 1
    assert solo not in split.valid and solo not in split.test


def test_integer_user_ids_sort_numerically(tmp_path):
    rows = [("10", "a", "1"), ("9", "b", "1"), ("010", "c", "1"), ("-1", "d", "1")]
    d = load_interactions(_write(tmp_path / "n.csv", rows), min_item_interactions=1)
    # -1, 9, 10, 010 (equal numbers: by text, "010" < "10").
    assert _raw_sequences(d) == {1: ["d"], 2: ["b"], 3: ["c"], 4: ["a"]}
    rows = [("10", "a", "1"), ("9", "b", "1"), ("x", "c", "1")]
    d = load_interactions(_write(tmp_path / "s.csv", rows), min_item_interactions=1)
    assert _raw_sequences(d) == {1: ["a"], 2: ["b"], 3: ["c"]}  # text: "10" < "9" < "x"


def test_ids_are_text_and_stripped(tmp_path):
    rows = [(" u ", "007", "1"), ("u", "7", "2"), ("u", " 7", "3")]
    d = load_interactions(_write(tmp_path / "w.csv", rows), min_item_interactions=1)
    assert _raw_sequences(d) == {1: ["007", "7", "7"]}


def test_ml1m_as_csv_equals_preprocess_ratings(tmp_path):
    rng = np.random.default_rng(0)
    table = np.stack([rng.integers(1, 40, 600), rng.integers(1, 60, 600),
                      rng.integers(0, 30, 600)], axis=1)
    path = _write(tmp_path / "r.csv", [tuple(map(str, r)) for r in table.tolist()])
    for min_user in (1, 5):
        expected = preprocess_ratings(table, min_user_interactions=min_user)
        d = load_interactions(path, min_user_interactions=min_user)
        assert d.sequences == expected.sequences
        assert d.fingerprint() == expected.fingerprint()
        assert d.item_ids == expected.item_ids


# -- timestamps ------------------------------------------------------------------------------
def test_iso_timestamps(tmp_path):
    rows = [
        ("u", "late", "2024-03-01T10:00:00+02:00"),  # 08:00 UTC
        ("u", "later", "2024-03-01 09:00"),  # naive: UTC
        ("u", "first", "2024-02-29"),  # midnight
        ("u", "tie", "2024-03-01T08:00:00Z"),  # ties with "late": file order
        ("u", "micro", "2024-02-29T00:00:00.000001"),
    ]
    d = load_interactions(_write(tmp_path / "iso.csv", rows), min_item_interactions=1)
    assert _raw_sequences(d) == {1: ["first", "micro", "late", "tie", "later"]}
    stamps = read_interactions(tmp_path / "iso.csv").timestamps
    assert stamps.dtype == np.int64
    assert stamps[2] == 1709164800 * 10**6 and stamps[4] - stamps[2] == 1


def test_float_and_integer_timestamps(tmp_path):
    rows = [("u", "a", "2"), ("u", "b", "1.5"), ("u", "c", "-1e3"), ("u", "d", " 3 ")]
    d = load_interactions(_write(tmp_path / "f.csv", rows), min_item_interactions=1)
    assert _raw_sequences(d) == {1: ["c", "b", "a", "d"]}
    assert read_interactions(tmp_path / "f.csv").timestamps.dtype == np.float64
    ints = read_interactions(_write(tmp_path / "i.csv", [("u", "a", str(2**62))]))
    assert ints.timestamps.dtype == np.int64 and ints.timestamps[0] == 2**62


def test_many_chunks_and_kinds_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(interactions_module, "_CHUNK_ROWS", 4)
    rows = [(f"u{k % 3}", f"i{k % 5}", str(k)) for k in range(20)]
    rows[13] = ("u1", "i3", "12.5")  # a float in a later chunk turns the column into floats
    path = _write(tmp_path / "c.csv", rows)
    d = load_interactions(path, min_item_interactions=1)
    monkeypatch.setattr(interactions_module, "_CHUNK_ROWS", 1 << 14)
    assert d == load_interactions(path, min_item_interactions=1)
    assert read_interactions(path).timestamps.dtype == np.float64


def test_blank_lines_are_skipped_and_both_paths_agree(tmp_path):
    clean = _write(tmp_path / "clean.csv", ROWS)
    text = clean.read_text().splitlines()
    text.insert(3, "")
    text.insert(6, "   ")  # forces the checked row-by-row pass
    messy = tmp_path / "messy.csv"
    messy.write_text("\n\n" + "\r\n".join(text) + "\r\n\r\n")
    expected = replace(load_interactions(clean, min_item_interactions=3), source=str(messy))
    assert load_interactions(messy, min_item_interactions=3) == expected


def test_utf8_bom_and_unicode_ids(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffuser,item,timestamp\nzoë,café,1\nzoë,naïve,2\n".encode())
    d = load_interactions(path, min_item_interactions=1)
    assert _raw_sequences(d) == {1: ["café", "naïve"]}


# -- bad input -------------------------------------------------------------------------------
BAD_CSV = [
    ("", 1, "file is empty"),
    ("\n\n", 1, "file is empty"),
    ("user,item,timestamp\n", 1, "the file has a header but no rows"),
    ("user,item\nu,i\n", 1, "missing column(s) 'timestamp'; the header is user,item"),
    ("user,item,user\nu,i,1\n", 1, "duplicate column name(s) 'user' in the header user,item,user"),
    ("user,item,timestamp\nu,i,1\nu,i\n", 3,
     "expected at least 3 fields (user, item, timestamp in columns 0,1,2), got 2"),
    ("user,item,timestamp\nu,i,1\nu,i,yesterday\n", 3,
     "timestamp 'yesterday' is not an integer, a float or an ISO-8601 date/datetime"),
    ("user,item,timestamp\nu,i,1\nu,i,\n", 3, "timestamp '' is not an integer"),
    ("user,item,timestamp\nu,i,1\nu,i,2024-02-30\n", 3, "timestamp '2024-02-30' is not"),
    ("user,item,timestamp\nu,i,nan\n", 2, "timestamp 'nan' is not finite"),
    ("user,item,timestamp\nu,i,1\nu,i,1e999\n", 3, "timestamp '1e999' is not finite"),
    ("user,item,timestamp\nu,i,1\nu,i," + "9" * 20 + "\n", 3,
     "timestamp '" + "9" * 20 + "' is too large"),
    ("user,item,timestamp\nu,i,1\n,i,2\n", 3, "empty user id"),
    ("user,item,timestamp\nu,i,1\nu, ,2\n", 3, "empty item id"),
    ("user,item,timestamp\nu,i,1\nu,i,2024-01-01\n", 3,
     "timestamp '2024-01-01' is a date but line 2 has a number ('1')"),
    ("user,item,timestamp\nu,i,2024-01-01\nu,i,5\n", 3,
     "timestamp '5' is a number but line 2 has a date"),
    ("user,item,timestamp\nu,i,1\nu,\"i,2\nu,i,3\n", 3, "malformed CSV (unexpected end of data)"),
    ("user,item,timestamp\nu,i,1\nu,\"i\"x,2\n", 3, "malformed CSV"),
    ("uid,iid,rating,ts\n1,2,3.5,4\n", 1,
     "the header uid,iid,rating,ts has no columns named user, item, timestamp and more than 3 "
     "columns"),
    ("u\n", 1, "expected at least 3 fields for columns 0,1,2, got 1"),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD_CSV)
def test_bad_csv_names_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataFormatError) as info:
        load_interactions(path)
    assert str(info.value).startswith(f"{path}:{line}: {message}"), str(info.value)


def test_bad_csv_with_named_columns(tmp_path):
    path = _write(tmp_path / "bad.csv", ROWS, header=("user_id", "item", "ts"))
    with pytest.raises(DataFormatError) as info:
        load_interactions(path, columns="user_id,sku,time")
    assert str(info.value).startswith(
        f"{path}:1: missing column(s) 'sku', 'time'; the header is user_id,item,ts")


def test_bad_line_after_the_first_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(interactions_module, "_CHUNK_ROWS", 8)
    rows = [("u", "i", str(k)) for k in range(30)]
    rows[24] = ("u", "i", "soon")
    path = _write(tmp_path / "late.csv", rows)
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(path))}:26: timestamp 'soon'"):
        load_interactions(path)


def test_quoted_field_spanning_lines_counts_lines(tmp_path):
    path = tmp_path / "multi.csv"
    path.write_text('user,item,timestamp\nu,"two\nlines",1\nu,i,oops\n')
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(path))}:4: timestamp 'oops'"):
        load_interactions(path)
    path.write_text('user,item,timestamp\nu,"two\nlines",1\nu,i,2\n')
    assert load_interactions(path, min_item_interactions=1).item_ids.raw == ("two\nlines", "i")


def test_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"user,item,timestamp\nu,i,1\nu,caf\xe9,2\n")
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(path))}:3: not UTF-8 text"):
        load_interactions(path)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_interactions(tmp_path / "none.csv")
    other = tmp_path / "log.json"
    other.write_text("{}")
    with pytest.raises(ValueError, match="unknown interaction log suffix '.json'"):
        read_interactions(other)


def _parquet_error(path: Path, **kw) -> str:
    with pytest.raises(DataFormatError) as info:
        load_interactions(path, **kw)
    return str(info.value)


def test_bad_parquet(tmp_path):
    import pyarrow as pa  # a dev dependency: the parquet tests run, never skip
    good = {"user": ["u", "u"], "item": ["a", "b"], "timestamp": [1, 2]}

    path = _parquet(tmp_path / "a.parquet", good)
    assert _parquet_error(path, columns="user,sku,ts").startswith(
        f"{path}: missing column(s) 'sku', 'ts'; the header is user,item,timestamp")
    path = _parquet(tmp_path / "b.parquet", {**good, "user": ["u", None]})
    assert _parquet_error(path).startswith(f"{path}: row 1: empty user id (null)")
    path = _parquet(tmp_path / "c.parquet", {**good, "item": ["a", " "]})
    assert _parquet_error(path).startswith(f"{path}: row 1: empty item id")
    path = _parquet(tmp_path / "d.parquet", {**good, "timestamp": ["2024-01-01", "later"]})
    assert _parquet_error(path).startswith(f"{path}: row 1: timestamp 'later' is not an integer")
    path = _parquet(tmp_path / "e.parquet", {**good, "timestamp": ["2024-01-01", "7"]})
    assert _parquet_error(path).startswith(f"{path}: row 1: timestamp '7' is a number but row 0")
    path = _parquet(tmp_path / "f.parquet", {**good, "timestamp": [1.0, float("nan")]})
    assert _parquet_error(path).startswith(f"{path}: row 1: timestamp nan is not finite")
    path = _parquet(tmp_path / "g.parquet", {**good, "timestamp": [1, None]})
    assert _parquet_error(path).startswith(f"{path}: row 1: missing timestamp (null)")
    path = _parquet(tmp_path / "h.parquet", {**good, "item": [1.5, 2.5]})
    assert _parquet_error(path).startswith(f"{path}: item column 'item' has type double")
    path = _parquet(tmp_path / "i.parquet", {k: pa.array([], type=pa.string() if k != "timestamp"
                                                         else pa.int64()) for k in good})
    assert _parquet_error(path).startswith(f"{path}: the file has no rows")
    path = tmp_path / "j.parquet"
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_arrays([pa.array(["u"]), pa.array(["a"]), pa.array([1])],
                                        names=["user", "item", "user"]), path)
    assert _parquet_error(path, columns="0,1,2").startswith(f"{path}: duplicate column name(s) "
                                                            "'user'")
    path = tmp_path / "k.parquet"
    path.write_bytes(b"PAR1 not really parquet")
    assert _parquet_error(path).startswith(f"{path}: not a readable Parquet file")


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "log.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ValueError, match=r"pip install sasrec-qat\[parquet\]") as info:
        load_interactions(path)
    assert not isinstance(info.value, DataFormatError)


# -- load_dataset ----------------------------------------------------------------------------
def test_load_dataset_dispatches_logs(tmp_path):
    # load_dataset keeps items with at least 5 rows: "a" and "b" (5 users each), not "c".
    rows = [(f"user{u}", item, str(t)) for u in range(5) for t, item in enumerate("ba")]
    rows += [("user0", "c", "9"), ("user1", "c", "9"), ("user9", "a", "0")]
    path = _write(tmp_path / "log.csv", rows, header=("user_id", "sku", "ts"))
    d = load_dataset(path, columns="user_id,sku,ts")
    assert d.item_ids.raw == ("b", "a")
    assert d.sequences == {**{u: [1, 2] for u in range(1, 6)}, 6: [2]}
    d = load_dataset(str(path), columns=["user_id", "sku", "ts"], min_user_interactions=2)
    assert d.sequences == {u: [1, 2] for u in range(1, 6)}
    parquet = _parquet(tmp_path / "log.parquet", {
        "user": [r[0] for r in rows], "item": [r[1] for r in rows],
        "timestamp": [int(r[2]) for r in rows]})
    assert load_dataset(parquet, min_user_interactions=2).sequences == d.sequences
    with pytest.raises(ValueError, match="no interactions left"):
        load_dataset(_write(tmp_path / "tiny.csv", ROWS[:3]))


def test_load_dataset_columns_and_min_user_only_where_they_apply(tmp_path):
    text = tmp_path / "seq.txt"
    text.write_text("1 1\n1 2\n")
    with pytest.raises(ValueError, match=r"columns= \(--columns\) applies to .csv, .tsv, .parquet"):
        load_dataset(text, columns="0,1,2")
    with pytest.raises(ValueError, match=r"columns= \(--columns\) applies to"):
        load_dataset("ml-1m", columns="0,1,2")
    with pytest.raises(ValueError, match="a SASRec text file is already preprocessed"):
        load_dataset(text, min_user_interactions=2)
    with pytest.raises(ValueError,
                       match=r"min_user_interactions \(--min-user-interactions\) must be >= 0"):
        load_dataset(text, min_user_interactions=-1)
    assert load_dataset(text, min_user_interactions=1).item_ids is None

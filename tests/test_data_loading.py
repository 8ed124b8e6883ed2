"""load_dataset dispatch: dataset name, SASRec text, ratings.dat, zip."""

import bz2
import gzip
import lzma
import zipfile

import pytest

from data import DataFormatError, ItemIds, load_dataset

# load_dataset uses the default min_item_ratings=5. Movies 7 and 8 get 5 ratings each (users 4
# and 2 rate each twice, user 3 once), movie 9 only 2 and is dropped. Users 2, 3, 4 -> 1, 2, 3;
# user 2's ratings: 7 (t=9), 8 (t=10), 9, 7 (t=9), 8 (t=10) -> stable by time: 7, 7, 8, 8.
# Items by first appearance: 7 -> 1, 8 -> 2.
RATINGS = "".join(f"{u}::{m}::3::{u + m}\n" for u in (4, 2) for m in (7, 8, 9, 7, 8))
RATINGS += "3::7::1::0\n3::8::1::1\n"
EXPECTED = {1: [1, 1, 2, 2], 2: [1, 2], 3: [1, 1, 2, 2]}


def test_sasrec_text(tmp_path):
    path = tmp_path / "any.txt"
    path.write_text("1 2\n1 3\n")
    d = load_dataset(path)
    assert d.sequences == {1: [2, 3]}
    assert load_dataset(str(path)).sequences == {1: [2, 3]}


def test_ratings_dat_by_name(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text(RATINGS)
    assert load_dataset(path).sequences == EXPECTED


def test_ratings_by_content(tmp_path):
    path = tmp_path / "my_ratings.txt"
    path.write_text(RATINGS)
    assert load_dataset(path).sequences == EXPECTED


def test_zip(tmp_path):
    path = tmp_path / "archive.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ml-1m/ratings.dat", RATINGS)
    assert load_dataset(path).sequences == EXPECTED


def test_named_dataset_from_cache(tmp_path):
    # A prepared cache (text file and its item id map) means no download.
    (tmp_path / "ml-1m").mkdir()
    (tmp_path / "ml-1m" / "ml-1m.txt").write_text("1 1\n2 1\n2 2\n")
    ItemIds(("1193", "661")).save(tmp_path / "ml-1m" / "item_ids.json")
    d = load_dataset("ml-1m", cache_dir=tmp_path)
    assert d.sequences == {1: [1], 2: [1, 2]}
    assert d.item_ids == ItemIds(("1193", "661"))


def test_neither_path_nor_name(tmp_path):
    with pytest.raises(ValueError, match=r"'ml-2m': the path does not exist .*known: ml-1m"):
        load_dataset("ml-2m")
    with pytest.raises(ValueError, match="the path does not exist"):
        load_dataset(tmp_path / "missing.txt")


def test_directory(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        load_dataset(tmp_path)


def test_raw_sources_keep_raw_ids(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text(RATINGS)
    assert load_dataset(path).item_ids == ItemIds(("7", "8"))
    assert load_dataset(path, min_user_interactions=3).sequences == {1: [1, 1, 2, 2],
                                                                     2: [1, 1, 2, 2]}


def test_interaction_log_by_suffix(tmp_path):
    # The RATINGS above as a CSV log with string ids: the same sequences.
    rows = [line.split("::") for line in RATINGS.splitlines()]
    text = "user,item,timestamp\n" + "".join(f"u{u},m{m},{t}\n" for u, m, _, t in rows)
    for name in ("log.csv", "LOG.CSV"):
        path = tmp_path / name
        path.write_text(text)
        d = load_dataset(path)
        assert d.sequences == EXPECTED
        assert d.item_ids == ItemIds(("m7", "m8"))
    tsv = tmp_path / "log.tsv"
    tsv.write_text(text.replace(",", "\t"))
    assert load_dataset(tsv).sequences == EXPECTED


def test_gzip_compressed_logs_read_as_their_plain_text(tmp_path):
    rows = [line.split("::") for line in RATINGS.splitlines()]
    text = "user,item,timestamp\n" + "".join(f"u{u},m{m},{t}\n" for u, m, _, t in rows)
    for name, body in (("log.csv.gz", text), ("LOG.TSV.GZ", text.replace(",", "\t"))):
        path = tmp_path / name
        path.write_bytes(gzip.compress(body.encode()))
        d = load_dataset(path)
        assert d.sequences == EXPECTED and d.item_ids == ItemIds(("m7", "m8"))
        assert load_dataset(path, columns="user,item,timestamp").sequences == EXPECTED
    plain = tmp_path / "log.csv"
    plain.write_text(text)
    assert load_dataset(tmp_path / "log.csv.gz").fingerprint() == load_dataset(plain).fingerprint()


def test_damaged_gzip_logs_are_one_clear_error(tmp_path):
    whole = gzip.compress(("user,item,timestamp\n" + "u1,i1,1\n" * 5000).encode())
    truncated = tmp_path / "cut.csv.gz"
    truncated.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(DataFormatError, match=r"cut.csv.gz: the compressed data ends early"):
        load_dataset(truncated)
    not_gzip = tmp_path / "plain.csv.gz"
    not_gzip.write_text("user,item,timestamp\nu1,i1,1\n")
    with pytest.raises(DataFormatError, match=r"plain.csv.gz: not a valid gzip file"):
        load_dataset(not_gzip)


@pytest.mark.parametrize("name, compress, kind", [
    ("log.txt", gzip.compress, "gzip"),          # would be read as SASRec text
    ("log.csv", gzip.compress, "gzip"),          # would be read as UTF-8 CSV
    ("log.csv.bz2", bz2.compress, "bzip2"),
    ("log.csv.xz", lzma.compress, "xz"),
])
def test_other_compressed_files_are_named_not_parsed_as_text(tmp_path, name, compress, kind):
    path = tmp_path / name
    path.write_bytes(compress(b"1 1\n1 2\n1 3\n"))
    with pytest.raises(DataFormatError, match=rf"{name}: a {kind} file, not text; "):
        load_dataset(path)


def test_a_zip_archive_not_named_zip_is_named(tmp_path):
    path = tmp_path / "ratings.bin"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ratings.dat", RATINGS)
    with pytest.raises(DataFormatError, match="a zip file, not text; decompress or unpack it"):
        load_dataset(path)


def test_a_zip_named_ratings_dat_is_still_read_as_movielens(tmp_path):
    """load_movielens_raw reads a zip by its content; the compressed-file check lets it by."""
    path = tmp_path / "ratings.dat"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ml-1m/ratings.dat", RATINGS)
    assert load_dataset(path).sequences == EXPECTED

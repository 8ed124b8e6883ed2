"""SequenceDataset and the SASRec ``user item`` text format."""

from pathlib import Path

import pytest

from data import DataFormatError, SequenceDataset, read_sasrec_text, write_sasrec_text


def _write(tmp_path: Path, text: str, name: str = "seqs.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


def test_read_groups_users_in_file_order(tmp_path):
    # User 2's lines are split around user 1's; appended in file order. Tabs, CRLF and
    # trailing blank lines are accepted.
    path = _write(tmp_path, "2 5\n1 1\r\n1\t3\n2 2\n1 1\n\n \n")
    d = read_sasrec_text(path)
    assert d.sequences == {1: [1, 3, 1], 2: [5, 2]}
    assert list(d.sequences) == [1, 2]
    assert (d.num_users, d.num_items, d.source) == (2, 5, str(path))
    assert d.num_interactions == 5


def test_num_users_is_largest_id_not_count(tmp_path):
    d = read_sasrec_text(_write(tmp_path, "3 7\n3 2\n"))
    assert d.sequences == {3: [7, 2]}
    assert (d.num_users, d.num_items) == (3, 7)


def test_slow_path_accepts_signed_ids(tmp_path):
    # "+4" is not pure digits, so the line-by-line parser runs and must agree with the fast one.
    d = read_sasrec_text(_write(tmp_path, "1 +4\n2 1\n"))
    assert d.sequences == {1: [4], 2: [1]}


def test_round_trip(tmp_path):
    d = SequenceDataset({2: [3, 1, 3], 1: [2], 4: [1, 2]}, num_users=4, num_items=3, source="x")
    path = tmp_path / "out.txt"
    write_sasrec_text(d, path)
    assert path.read_text() == "1 2\n2 3\n2 1\n2 3\n4 1\n4 2\n"
    back = read_sasrec_text(path)
    assert back.sequences == d.sequences
    assert (back.num_users, back.num_items) == (4, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # no .tmp left behind


def test_write_replaces_existing_file(tmp_path):
    path = _write(tmp_path, "9 9\n" * 100, name="out.txt")
    write_sasrec_text(SequenceDataset({1: [1]}, 1, 1, "x"), path)
    assert path.read_text() == "1 1\n"


def test_write_failure_leaves_no_temp_file(tmp_path, monkeypatch):
    import data.atomic

    def disk_full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(data.atomic.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_sasrec_text(SequenceDataset({1: [1]}, 1, 1, "x"), tmp_path / "out.txt")
    assert list(tmp_path.iterdir()) == []


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.txt: no such file"):
        read_sasrec_text(tmp_path / "nope.txt")


@pytest.mark.parametrize("text", ["", "\n\n", "  \n\t\n"])
def test_empty_file(tmp_path, text):
    with pytest.raises(DataFormatError, match=r"seqs\.txt:1: file is empty"):
        read_sasrec_text(_write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("1 1\n1 2 3\n", r"seqs\.txt:2: expected 2 whitespace-separated fields .* got 3"),
        ("1 1\n1 2\n7\n", r"seqs\.txt:3: expected 2 .* got 1"),
        # Two bad lines whose field counts add up to 2 per line on average.
        ("1 1 1\n2\n", r"seqs\.txt:1: expected 2 .* got 3"),
        ("1 1\n\n1 2\n", r"seqs\.txt:2: expected 2 .* got 0"),
        ("1 1\n1 x\n", r"seqs\.txt:2: item id 'x' is not an integer"),
        ("1 1\n1 2\n1.5 2\n", r"seqs\.txt:3: user id '1\.5' is not an integer"),
        ("1 1\n1 1e3\n", r"seqs\.txt:2: item id '1e3' is not an integer"),
        ("1 1\n0 2\n", r"seqs\.txt:2: user id 0 is not positive"),
        ("1 1\n1 2\n2 0\n", r"seqs\.txt:3: item id 0 is not positive"),
        ("1 -4\n", r"seqs\.txt:1: item id -4 is not positive"),
        ("1 99999999999999999999\n", r"seqs\.txt:1: item id 99999999999999999999 is too large"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, text, pattern):
    with pytest.raises(DataFormatError, match=pattern):
        read_sasrec_text(_write(tmp_path, text))


def test_bad_line_far_into_a_large_file(tmp_path):
    # Beyond the fast parser's 1 MiB block size, so the block logic is exercised too.
    good = "".join(f"{u} {i}\n" for u in range(1, 20001) for i in range(1, 11))
    d = read_sasrec_text(_write(tmp_path, good))
    assert (d.num_users, d.num_items, d.num_interactions) == (20000, 10, 200000)
    lines = good.splitlines(keepends=True)
    lines[150000] = "\n"  # a blank line in the middle is an error, not silently dropped
    with pytest.raises(DataFormatError, match=r"seqs\.txt:150001: expected 2 .* got 0"):
        read_sasrec_text(_write(tmp_path, "".join(lines)))


def test_dataset_validates_ids():
    with pytest.raises(ValueError, match="exceeds num_users=1"):
        SequenceDataset({2: [1]}, num_users=1, num_items=1, source="x")
    with pytest.raises(ValueError, match=r"item ids span 1\.\.5 .* 1\.\.num_items=4"):
        SequenceDataset({1: [1, 5]}, num_users=1, num_items=4, source="x")
    with pytest.raises(ValueError, match="0 is the padding id"):
        SequenceDataset({1: [0]}, num_users=1, num_items=4, source="x")


@pytest.mark.parametrize("chunk", [1, 4, 6, 1 << 20])
def test_block_boundaries_do_not_change_results(tmp_path, monkeypatch, chunk):
    import data._parse

    monkeypatch.setattr(data._parse, "_CHUNK", chunk)
    d = read_sasrec_text(_write(tmp_path, "1 10\n2 20\n1 3\n\n\n"))
    assert d.sequences == {1: [10, 3], 2: [20]}
    # Blank lines that end a block but not the file are still errors, wherever blocks split.
    for text, line in [("1 1\n\n2 2\n", 2), ("1 1\n2 2\n\n\n3 3\n", 3), ("12 3\n\n4 5\n", 2)]:
        with pytest.raises(DataFormatError, match=rf"seqs\.txt:{line}: expected 2 .* got 0"):
            read_sasrec_text(_write(tmp_path, text))

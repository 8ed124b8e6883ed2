"""Raw GroupLens ratings (ratings.dat / ml-1m.zip) and the SASRec preprocessing."""

import zipfile
from pathlib import Path

import numpy as np
import pytest

from data import DataFormatError, load_movielens_raw, preprocess_ratings, read_ratings

# UserID::MovieID::Rating::Timestamp. With min_item_ratings=2: movies 99 and 77 are rated
# once and dropped, which leaves user 7 with nothing. Timestamp ties: user 5 rates 10 and 30 at
# t=100 (file order 10, 30), user 2 rates 20 and 10 at t=300 (file order 20, 10), user 3 rates
# 40 and 30 at t=1.
RATINGS = """\
5::10::4::100
5::20::3::50
5::30::5::100
5::99::1::10
2::20::5::300
2::10::2::300
2::40::3::200
7::77::2::5
3::40::1::1
3::30::1::1
"""
# Hand-computed: users 2, 3, 5 -> 1, 2, 3. Time-ordered movies: user 2: 40, 20, 10;
# user 3: 40, 30; user 5: 20, 10, 30. First appearance: 40 -> 1, 20 -> 2, 10 -> 3, 30 -> 4.
EXPECTED = {1: [1, 2, 3], 2: [1, 4], 3: [2, 3, 4]}


def _ratings_file(tmp_path: Path, text: str = RATINGS) -> Path:
    path = tmp_path / "ratings.dat"
    path.write_bytes(text.encode("latin-1"))
    return path


def _zip(tmp_path: Path, members: dict[str, str], name: str = "ml-1m.zip") -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for member, text in members.items():
            z.writestr(member, text)
    return path


def test_read_ratings_keeps_file_order_and_drops_rating(tmp_path):
    table = read_ratings(_ratings_file(tmp_path))
    assert table.dtype == np.int64
    assert table.shape == (10, 3)
    assert table[:3].tolist() == [[5, 10, 100], [5, 20, 50], [5, 30, 100]]


def test_preprocess_exact(tmp_path):
    d = load_movielens_raw(_ratings_file(tmp_path), min_item_ratings=2)
    assert d.sequences == EXPECTED
    assert (d.num_users, d.num_items) == (3, 4)
    assert d.source == str(tmp_path / "ratings.dat")


def test_preprocess_from_tuples_and_source():
    rows = [tuple(int(x) for x in line.split("::")) for line in RATINGS.splitlines()]
    d = preprocess_ratings([(u, m, t) for u, m, _, t in rows], min_item_ratings=2, source="s")
    assert d.sequences == EXPECTED
    assert d.source == "s"


def test_min_item_ratings_one_keeps_everything(tmp_path):
    d = load_movielens_raw(_ratings_file(tmp_path), min_item_ratings=1)
    # Users 2, 3, 5, 7 -> 1..4; user 5 now starts with movie 99 (t=10).
    # First appearance: 40, 20, 10, 30, 99, 77 -> 1..6.
    assert d.sequences == {1: [1, 2, 3], 2: [1, 4], 3: [5, 2, 3, 4], 4: [6]}
    assert (d.num_users, d.num_items) == (4, 6)


def test_rare_items_counted_over_all_ratings_before_anything_else():
    # Movie 8 has 2 ratings in total; a per-user count would see only 1 each.
    d = preprocess_ratings([(1, 8, 0), (2, 8, 0), (2, 9, 1)], min_item_ratings=2)
    assert d.sequences == {1: [1], 2: [1]}


def test_nothing_left_raises():
    with pytest.raises(ValueError, match="no interactions left .* fewer than 5 ratings"):
        preprocess_ratings([(1, 2, 3)])


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        preprocess_ratings([(1, 2)])
    with pytest.raises(ValueError, match="min_item_ratings must be >= 0"):
        preprocess_ratings([(1, 2, 3)], min_item_ratings=-1)


def test_crlf_and_trailing_blank_lines(tmp_path):
    path = _ratings_file(tmp_path, RATINGS.replace("\n", "\r\n") + "\r\n\r\n")
    assert load_movielens_raw(path, min_item_ratings=2).sequences == EXPECTED


def test_zip_member(tmp_path):
    path = _zip(
        tmp_path,
        {"ml-1m/movies.dat": "1::Toy Story (1995)::Animation\n", "ml-1m/ratings.dat": RATINGS},
    )
    assert read_ratings(path).shape == (10, 3)
    d = load_movielens_raw(path, min_item_ratings=2)
    assert d.sequences == EXPECTED
    assert d.source == str(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ratings\.dat: no such file"):
        read_ratings(tmp_path / "ratings.dat")


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("", r"ratings\.dat:1: file is empty"),
        ("1::2::3::4\n1::2::3\n", r"ratings\.dat:2: expected 4 '::'-separated fields .* got 3"),
        ("1::2::3::4\n::1::2::3::4\n", r"ratings\.dat:2: expected 4 .* got 5"),
        ("1::2::3::4\n1::2::3::4::\n", r"ratings\.dat:2: expected 4 .* got 5"),
        ("1::2::3::4\n1 2 3 4\n", r"ratings\.dat:2: expected 4 .* got 1"),
        ("1::2::3::4\n\n1::2::3::4\n", r"ratings\.dat:2: expected 4 .* got 1"),
        ("1::2::3::4\n1::x::3::4\n", r"ratings\.dat:2: MovieID 'x' is not an integer"),
        ("1::2::3::4\n1:::2::3::4\n", r"ratings\.dat:2: MovieID ':2' is not an integer"),
        ("1::2::3::4\n1::2::3::4.5\n", r"ratings\.dat:2: Timestamp '4\.5' is not an integer"),
        ("1::2::3::4\n1::0::3::4\n", r"ratings\.dat:2: UserID and MovieID must be positive"),
        ("1::2::3::4\n-1::2::3::4\n", r"ratings\.dat:2: UserID and MovieID must be positive"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, text, pattern):
    with pytest.raises(DataFormatError, match=pattern):
        read_ratings(_ratings_file(tmp_path, text))


def test_bad_line_in_zip_names_member(tmp_path):
    path = _zip(tmp_path, {"ml-1m/ratings.dat": "1::2::3::4\n1::2::3\n"})
    with pytest.raises(DataFormatError, match=r"ml-1m\.zip:ml-1m/ratings\.dat:2: expected 4"):
        read_ratings(path)


def test_corrupt_zip(tmp_path):
    path = tmp_path / "ml-1m.zip"
    path.write_bytes(b"PK\x03\x04 this is not really a zip file")
    with pytest.raises(DataFormatError, match=r"ml-1m\.zip: corrupt or truncated zip archive"):
        read_ratings(path)


def test_truncated_zip(tmp_path):
    path = _zip(tmp_path, {"ml-1m/ratings.dat": RATINGS * 50})
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataFormatError, match="corrupt or truncated zip archive"):
        read_ratings(path)


def test_zip_without_ratings(tmp_path):
    path = _zip(tmp_path, {"ml-1m/movies.dat": "1::Toy Story (1995)::Animation\n"})
    with pytest.raises(DataFormatError, match=r"no member ending in 'ratings\.dat' .*movies\.dat"):
        read_ratings(path)

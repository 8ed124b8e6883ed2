"""Raw GroupLens ratings (ratings.dat / ml-1m.zip) and the SASRec preprocessing."""

import zipfile
from pathlib import Path

import numpy as np
import pytest

from data import (
    DataFormatError,
    ItemIds,
    load_movielens_raw,
    preprocess_ratings,
    read_ratings,
)

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
    assert d.user_ids == ("2", "3", "5")  # user 7 lost every rating: not a user any more


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


# -- raw ids and titles ----------------------------------------------------------------------
MOVIES_DAT = ("10::Caf\xe9 Society (2016)::Comedy\n20::Heat (1995)::Action|Crime\n"
              "40::Se7en::Thriller\n")


def _reference(table, min_item, min_user=1):
    """The preprocessing spelled out in plain Python (raw movie ids per user)."""
    counts = {}
    for _, m, _ in table:
        counts[m] = counts.get(m, 0) + 1
    rows = [r for r in table if counts[r[1]] >= min_item]
    per_user = {}
    for u, m, t in rows:
        per_user.setdefault(u, []).append((t, m))
    per_user = {u: v for u, v in per_user.items() if len(v) >= min_user}
    return [[m for _, m in sorted(v, key=lambda x: x[0])] for _, v in sorted(per_user.items())]


def test_preprocess_ratings_matches_reference_on_random_data():
    rng = np.random.default_rng(5)
    for trial in range(20):
        n = int(rng.integers(1, 400))
        table = np.stack([rng.integers(1, 30, n), rng.integers(1, 50, n),
                          rng.integers(0, 10, n)], axis=1).tolist()  # many timestamp ties
        for min_item, min_user in ((5, 1), (2, 3), (1, 1)):
            expected = _reference(table, min_item, min_user)
            if not expected:
                with pytest.raises(ValueError, match="no interactions left"):
                    preprocess_ratings(table, min_item_ratings=min_item,
                                       min_user_interactions=min_user)
                continue
            d = preprocess_ratings(table, min_item_ratings=min_item,
                                   min_user_interactions=min_user)
            raw = [[int(d.item_ids.raw_id(i)) for i in d.sequences[u]]
                   for u in sorted(d.sequences)]
            assert raw == expected, (trial, min_item, min_user)
            assert sorted(d.sequences) == list(range(1, len(expected) + 1))
            # items numbered by first appearance
            firsts = list(dict.fromkeys(i for u in sorted(d.sequences) for i in d.sequences[u]))
            assert firsts == list(range(1, d.num_items + 1))


def test_raw_movie_ids_without_titles(tmp_path):
    d = load_movielens_raw(_ratings_file(tmp_path), min_item_ratings=2)
    assert d.item_ids == ItemIds(("40", "20", "10", "30"))  # see EXPECTED: 40 -> 1, 20 -> 2, ...


def test_zip_with_movies_dat_gives_titles(tmp_path):
    path = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ml-1m/ratings.dat", RATINGS)
        z.writestr("ml-1m/movies.dat", MOVIES_DAT.encode("latin-1"))
    d = load_movielens_raw(path, min_item_ratings=2)
    assert d.sequences == EXPECTED
    assert d.item_ids.raw == ("40", "20", "10", "30")
    assert d.item_ids.titles == ("Se7en", "Heat (1995)", "Café Society (2016)", "")  # 30: none
    assert d.item_ids.title(3) == "Café Society (2016)"


def test_movies_dat_beside_ratings_dat(tmp_path):
    (tmp_path / "movies.dat").write_bytes(MOVIES_DAT.encode("latin-1"))
    d = load_movielens_raw(_ratings_file(tmp_path), min_item_ratings=2)
    assert d.item_ids.titles[:2] == ("Se7en", "Heat (1995)")


def test_bad_movies_dat_names_member_and_line(tmp_path):
    path = _zip(tmp_path, {"ml-1m/ratings.dat": RATINGS,
                           "ml-1m/movies.dat": "10::A::Comedy\n\nx::B::Drama\n"})
    with pytest.raises(DataFormatError, match=r"ml-1m\.zip:ml-1m/movies\.dat:3: expected "
                                              r"MovieID::Title::Genres"):
        load_movielens_raw(path, min_item_ratings=2)


def test_min_user_interactions(tmp_path):
    # min_item_ratings=2 leaves user 3 (second user) with 2 interactions.
    d = load_movielens_raw(_ratings_file(tmp_path), min_item_ratings=2, min_user_interactions=3)
    assert d.sequences == {1: [1, 2, 3], 2: [2, 3, 4]}
    assert d.item_ids.raw == ("40", "20", "10", "30")
    with pytest.raises(ValueError,
                       match=r"min_user_interactions \(--min-user-interactions\) must be >= 0"):
        preprocess_ratings([(1, 2, 3)], min_user_interactions=-1)


# -- the ML-20M layout: ratings.csv and movies.csv -------------------------------------------
def _csv_zip(tmp_path: Path, ratings: str = RATINGS, name: str = "ml-20m.zip",
             movies: str | None = None) -> Path:
    lines = ["userId,movieId,rating,timestamp"]
    for line in ratings.splitlines():
        u, m, r, t = line.split("::")
        lines.append(f"{u},{m},{int(r) - 0.5},{t}")
    members = {"ml-20m/ratings.csv": "\n".join(lines) + "\n",
               "ml-20m/genome-scores.csv": "movieId,tagId,relevance\n",
               "ml-20m/tags.csv": "userId,movieId,tag,timestamp\n"}
    if movies is not None:
        members["ml-20m/movies.csv"] = movies
    return _zip(tmp_path, members, name)


MOVIES_CSV = ('movieId,title,genres\n10,"Birdcage, The (1996)",Comedy\n'
              '20,Heat (1995),Action|Crime\n40,"Léon: ""The Professional""",Thriller\n')


def test_ratings_csv_zip_equals_ratings_dat(tmp_path):
    dat = load_movielens_raw(_zip(tmp_path, {"ml-1m/ratings.dat": RATINGS}), min_item_ratings=2)
    path = _csv_zip(tmp_path, movies=MOVIES_CSV)
    d = load_movielens_raw(path, min_item_ratings=2)
    assert d.sequences == dat.sequences == EXPECTED
    assert d.fingerprint() == dat.fingerprint()
    assert d.item_ids.raw == dat.item_ids.raw
    assert d.item_ids.titles == ('Léon: "The Professional"', "Heat (1995)",
                                 "Birdcage, The (1996)", "")
    assert d.source == str(path)
    short = load_movielens_raw(path, min_item_ratings=2, min_user_interactions=3)
    assert short.sequences == {1: [1, 2, 3], 2: [2, 3, 4]}


def test_ratings_csv_zip_without_movies_has_no_titles(tmp_path):
    d = load_movielens_raw(_csv_zip(tmp_path), min_item_ratings=2)
    assert d.item_ids.titles is None and d.sequences == EXPECTED


def test_bad_ratings_csv_names_member_and_line(tmp_path):
    path = _csv_zip(tmp_path, RATINGS.replace("2::10::2::300", "2::10::2::soon"))
    with pytest.raises(DataFormatError, match=r"ml-20m\.zip:ml-20m/ratings\.csv:7: timestamp "
                                              r"'soon'"):
        load_movielens_raw(path)
    bad_movies = _csv_zip(tmp_path, name="b.zip", movies="id,name\n1,x\n")
    with pytest.raises(DataFormatError, match=r"b\.zip:ml-20m/movies\.csv:1: expected the header"):
        load_movielens_raw(bad_movies)

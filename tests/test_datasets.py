"""Published-dataset loaders: tiny files in the published formats, plus the real data when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agent.data.datasets import SYNTHETIC_EPOCH, SequenceDataset, load_amazon_seq, load_movielens
from agent.errors import DataError

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
EVENT_DTYPES = {
    "user_id": "str",
    "item_id": "str",
    "behavior": "str",
    "timestamp": "datetime64[ns, UTC]",
    "value": "float64",
    "text": "object",
}


def assert_canonical(events: pd.DataFrame, items: pd.DataFrame) -> None:
    assert list(events.columns) == list(EVENT_DTYPES)
    for column, dtype in EVENT_DTYPES.items():
        assert str(events[column].dtype) == dtype, column
    assert events["timestamp"].is_monotonic_increasing
    assert events["text"].isna().all() and events["text"].map(lambda x: x is None).all()
    assert list(items.columns[:5]) == ["item_id", "title", "category", "description", "price"]
    assert items["item_id"].is_unique
    assert str(items["item_id"].dtype) == "str" and str(items["price"].dtype) == "float64"
    assert items["category"].map(lambda x: x is None or isinstance(x, str)).all()


GENRES = "unknown|0\nAction|1\nComedy|2\nThriller|3\n\n"


def write_ml100k(root: Path, *, data: str | None = None, genre: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "u.data").write_text(
        data if data is not None else "7\t2\t5\t881250949\n7\t1\t3\t881250900\n12\t1\t4\t881250000\n"
    )
    # latin-1 bytes: "Café" is 0xE9, not UTF-8
    items = (
        "1|Café Society (1995)|01-Jan-1995||http://x|0|1|0|1\n"
        "2|Comedy Night (1996)|01-Jan-1996||http://y|0|0|1|0\n"
        "3|unknown||||1|0|0|0\n"
    )
    (root / "u.item").write_bytes(items.encode("latin-1"))
    if genre:
        (root / "u.genre").write_text(GENRES)
    return root


def test_movielens_100k(tmp_path: Path) -> None:
    events, items = load_movielens(write_ml100k(tmp_path / "ml"))
    assert_canonical(events, items)
    assert events["user_id"].tolist() == ["12", "7", "7"]  # sorted by time
    assert events["item_id"].tolist() == ["1", "1", "2"]
    assert (events["behavior"] == "rating").all()
    assert events["value"].tolist() == [4.0, 3.0, 5.0]
    assert events["timestamp"].iloc[-1] == pd.Timestamp(881250949, unit="s", tz="UTC")
    first = items.iloc[0]
    assert first["title"] == "Café Society (1995)"
    assert first["category"] == "Action"
    assert first["genres"] == "Action|Thriller"
    assert first["year"] == 1995 and str(items["year"].dtype) == "Int64"
    unknown = items.iloc[2]
    assert unknown["category"] is None and unknown["genres"] == "" and pd.isna(unknown["year"])


def test_movielens_100k_without_genre_file_uses_the_published_order(tmp_path: Path) -> None:
    root = write_ml100k(tmp_path / "ml", genre=False)
    flags = ["0"] * 19
    flags[6] = flags[16] = "1"  # Crime, Thriller
    (root / "u.item").write_bytes(f"1|Heat (1995)|||x|{'|'.join(flags)}\n".encode("latin-1"))
    _, items = load_movielens(root)
    assert items.loc[0, "category"] == "Crime" and items.loc[0, "genres"] == "Crime|Thriller"


def test_movielens_1m(tmp_path: Path) -> None:
    root = tmp_path / "ml-1m"
    root.mkdir()
    (root / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    movies = "1193::One Flew Over (1975)::Drama\n661::Ménage (1986)::Comedy|Drama\n"
    (root / "movies.dat").write_bytes(movies.encode("latin-1"))
    events, items = load_movielens(root)
    assert_canonical(events, items)
    assert events["user_id"].tolist() == ["2", "1", "1"]
    assert events["value"].tolist() == [4.0, 5.0, 3.0]
    assert items["title"].tolist()[1] == "Ménage (1986)"
    assert items["category"].tolist() == ["Drama", "Comedy"]
    assert items["genres"].tolist() == ["Drama", "Comedy|Drama"]
    assert items["year"].tolist() == [1975, 1986]


def write_amazon(root: Path, inter: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Games.item").write_text(
        "item_id:token\ttitle:token_seq\n007\tGolden Eye\n1\tHalo 3\n2\tHalo 3 Guide\n3\tTetris\n"
    )
    (root / "Games-6k.test.inter").write_text(
        inter
        if inter is not None
        else "user_id:token\titem_id_list:token_seq\titem_id:token\n0\t007 1\t2\n5\t3 007 1\t3\n9\t\t1\n"
    )
    (root / "Games-6k.valid.inter").write_text(
        "user_id:token\titem_id_list:token_seq\titem_id:token\n0\t007\t1\n"
    )
    return root


def test_amazon_sequences(tmp_path: Path) -> None:
    data = load_amazon_seq(write_amazon(tmp_path / "games"))
    assert isinstance(data, SequenceDataset)
    assert_canonical(data.events, data.items)
    assert data.targets == {"0": "2", "5": "3", "9": "1"}
    assert (data.events["behavior"] == "purchase").all() and data.events["value"].isna().all()
    user5 = data.events[data.events["user_id"] == "5"]
    assert user5["item_id"].tolist() == ["3", "007", "1"]  # order kept, "007" stays a string
    seconds = (user5["timestamp"] - SYNTHETIC_EPOCH).dt.total_seconds().tolist()
    assert seconds == [0.0, 1.0, 2.0]
    assert "9" not in set(data.events["user_id"])  # empty history: only a target
    assert data.items["title"].tolist()[0] == "Golden Eye"
    assert data.items["category"].map(lambda x: x is None).all()

    valid = load_amazon_seq(tmp_path / "games", split="valid")
    assert valid.targets == {"0": "1"} and valid.events["item_id"].tolist() == ["007"]


def test_missing_files_raise_data_error_naming_the_file(tmp_path: Path) -> None:
    root = write_ml100k(tmp_path / "ml")
    (root / "u.item").unlink()
    with pytest.raises(DataError, match=r"u\.item") as info:
        load_movielens(root)
    assert info.value.file is not None and info.value.file.endswith("u.item")
    with pytest.raises(DataError, match="not a MovieLens directory"):
        load_movielens(tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        load_movielens(tmp_path / "nope")
    games = write_amazon(tmp_path / "games")
    (games / "Games-6k.test.inter").unlink()
    with pytest.raises(DataError, match="test"):
        load_amazon_seq(games)


def test_bad_values_name_column_and_row(tmp_path: Path) -> None:
    root = write_ml100k(tmp_path / "ml", data="7\t2\t5\t881250949\n7\t1\tfive\t881250900\n")
    with pytest.raises(DataError) as info:
        load_movielens(root)
    assert (info.value.column, info.value.row) == ("rating", 2)
    assert "u.data" in str(info.value)

    root = write_ml100k(tmp_path / "ml2", data="7\t2\t5\n")
    with pytest.raises(DataError) as info:
        load_movielens(root)
    assert (info.value.column, info.value.row) == ("timestamp", 1)

    root = write_ml100k(tmp_path / "ml3", data="7\t2\t5\t881250949\n7\t1\t5\t881250949\t99\n")
    with pytest.raises(DataError, match="more than 4 fields") as info:
        load_movielens(root)
    assert info.value.row == 2

    root = write_ml100k(tmp_path / "ml4", data="")
    with pytest.raises(DataError, match="empty"):
        load_movielens(root)

    root = write_ml100k(tmp_path / "ml5")
    (root / "u.item").write_bytes(b"1|A (1995)|||x|0|1|0|1\n1|B (1996)|||x|0|1|0|1\n")
    with pytest.raises(DataError, match="duplicate") as info:
        load_movielens(root)
    assert (info.value.column, info.value.row) == ("item_id", 2)


def test_amazon_missing_column_and_duplicates(tmp_path: Path) -> None:
    games = write_amazon(tmp_path / "games", inter="user_id:token\titem_id_list:token_seq\n0\t1 2\n")
    with pytest.raises(DataError) as info:
        load_amazon_seq(games)
    assert info.value.column == "item_id" and "Games-6k.test.inter" in str(info.value)

    games = write_amazon(
        tmp_path / "dup", inter="user_id:token\titem_id_list:token_seq\titem_id:token\n0\t1\t2\n0\t2\t3\n"
    )
    with pytest.raises(DataError) as info:
        load_amazon_seq(games)
    assert (info.value.column, info.value.row) == ("user_id", 2)

    games = write_amazon(
        tmp_path / "extra", inter="user_id:token\titem_id_list:token_seq\titem_id:token\n0\t1\t2\textra\n"
    )
    with pytest.raises(DataError, match="cannot parse") as info:
        load_amazon_seq(games)
    assert info.value.file is not None and info.value.file.endswith("Games-6k.test.inter")


# --------------------------------------------------------------------------- real data

needs_data = pytest.mark.skipif(not DATASETS.is_dir(), reason="../shared/datasets is absent")


@pytest.mark.dataset
@needs_data
def test_real_movielens_100k() -> None:
    events, items = load_movielens(DATASETS / "ml-100k")
    assert_canonical(events, items)
    assert len(events) == 100_000 and events["user_id"].nunique() == 943 and len(items) == 1682
    assert set(events["value"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    toy = items.set_index("item_id").loc["1"]
    assert toy["title"] == "Toy Story (1995)" and toy["genres"] == "Animation|Children's|Comedy"
    assert toy["category"] == "Animation" and toy["year"] == 1995
    assert set(events["item_id"]) <= set(items["item_id"])


@pytest.mark.dataset
@needs_data
def test_real_amazon_games() -> None:
    test = load_amazon_seq(DATASETS / "amazon-games")
    valid = load_amazon_seq(DATASETS / "amazon-games", split="valid")
    assert_canonical(test.events, test.items)
    assert len(test.targets) == len(valid.targets) == 50_546
    assert len(test.items) == 16_859
    assert set(test.targets.values()) <= set(test.items["item_id"])
    # the valid target is the last item of the test history
    last = test.events.groupby("user_id", sort=False)["item_id"].last()
    sample = list(valid.targets)[:500]
    assert all(last[u] == valid.targets[u] for u in sample)
    assert np.array_equal(
        test.events.groupby("user_id").size().sort_index().to_numpy(),
        (valid.events.groupby("user_id").size() + 1).sort_index().to_numpy(),
    )

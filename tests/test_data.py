"""Loading and cleaning: canonical frames, a counted report, typed errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from agent.data.loading import UserHistories, align_catalog, clean_events, load_events, load_items
from agent.errors import DataError, UnknownUserError
from tests.conftest import SAMPLE


def test_sample_events_load_in_canonical_form() -> None:
    loaded = load_events(SAMPLE / "events.csv")
    frame = loaded.frame
    assert list(frame.columns) == ["user_id", "item_id", "behavior", "timestamp", "value", "text"]
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert frame["timestamp"].is_monotonic_increasing
    assert set(frame["behavior"]) >= {
        "view",
        "click",
        "cart",
        "purchase",
        "rating",
        "search",
        "like",
        "dislike",
    }
    assert loaded.report.rows_dropped == 0
    assert loaded.report.rows_kept == loaded.report.rows_read == len(frame)


def test_dirty_file_report_counts_every_planted_defect() -> None:
    # Counts planted by scripts/make_sample_data.py (see fixtures/sample/README.md).
    report = load_events(SAMPLE / "events_dirty.csv").report
    assert report.rows_read == 246
    assert report.dropped == {
        "duplicate": 12,
        "missing_user_id": 5,
        "missing_item_id": 6,
        "missing_behavior": 4,
        "bad_timestamp": 5,
    }
    assert report.repaired["behavior_lowercased"] == 7
    assert report.repaired["bad_value_set_to_null"] == 1
    assert report.rows_kept == 246 - 32
    assert all(rows for rows in report.examples.values())


def test_epoch_and_iso_timestamps_parse_to_the_same_instant() -> None:
    raw = pd.DataFrame(
        {
            "user_id": ["a", "a", "a"],
            "item_id": ["1", "2", "3"],
            "behavior": ["view"] * 3,
            "timestamp": ["2026-01-01T00:00:00Z", "1767225600", "1767225600000"],
        }
    )
    frame = clean_events(raw).frame
    assert frame["timestamp"].nunique() == 1


def test_ids_stay_strings_with_leading_zeros(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,behavior,timestamp\n007,0042,view,2026-01-01T00:00:00Z\n")
    frame = load_events(path).frame
    assert frame.loc[0, "user_id"] == "007"
    assert frame.loc[0, "item_id"] == "0042"


def test_jsonl_and_parquet_load_like_csv(tmp_path: Path) -> None:
    csv = load_events(SAMPLE / "events.csv").frame.head(50)
    jsonl = tmp_path / "events.jsonl"
    csv.assign(timestamp=csv["timestamp"].astype(str)).to_json(jsonl, orient="records", lines=True)
    parquet = tmp_path / "events.parquet"
    csv.to_parquet(parquet)
    for path in (jsonl, parquet):
        frame = load_events(path).frame
        assert frame["item_id"].tolist() == csv["item_id"].tolist()
        assert (frame["timestamp"] == csv["timestamp"]).all()


def test_column_aliases_are_renamed_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("userId,sku,event_type,ts\nu1,A,view,2026-01-01T00:00:00Z\n")
    loaded = load_events(path)
    assert loaded.frame.loc[0, "item_id"] == "A"
    assert any(reason.startswith("renamed_column:") for reason in loaded.report.repaired)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("events.csv", b"user_id,item_id,timestamp\nu1,A,2026-01-01\n", "missing required column"),
        ("events.csv", b"", "empty"),
        ("events.csv", b"user_id,item_id,behavior,timestamp\n", "no data rows"),
        ("events.xlsx", b"whatever", "unknown file type"),
        (
            "events.csv",
            "user_id,item_id,behavior,timestamp\nü,A,view,2026-01-01\n".encode("latin-1"),
            "not valid utf-8",
        ),
        ("events.jsonl", b'{"user_id": "u1", \n', "cannot parse"),
        ("events.csv", b"user_id,item_id,behavior,timestamp\nu1,A,view,never\n", "no usable events"),
    ],
)
def test_bad_files_raise_data_error_naming_the_file(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_events(path)
    assert message in str(info.value)
    assert info.value.file == str(path)


def test_missing_column_error_names_the_column(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp\nu1,A,2026-01-01\n")
    with pytest.raises(DataError) as info:
        load_events(path)
    assert info.value.column == "behavior"


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        load_items(tmp_path / "nope.csv")


def test_catalog_mismatch_is_an_error_but_a_few_unknown_items_are_a_reported_repair(tmp_path: Path) -> None:
    items = load_items(SAMPLE / "items.csv")
    events_path = tmp_path / "events.csv"
    events_path.write_text(
        "user_id,item_id,behavior,timestamp\n"
        "u1,SKU-10001,view,2026-01-01T00:00:00Z\n"
        "u1,SKU-99999,view,2026-01-02T00:00:00Z\n"
    )
    aligned = align_catalog(load_events(events_path), items)
    assert aligned.frame["item_id"].tolist() == ["SKU-10001"]
    assert aligned.report.dropped["unknown_item"] == 1

    events_path.write_text("user_id,item_id,behavior,timestamp\nu1,10001,view,2026-01-01T00:00:00Z\n")
    with pytest.raises(DataError, match="no event item id matches the catalog"):
        align_catalog(load_events(events_path), items)


def test_items_clean_duplicates_and_bad_prices(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text(
        "item_id,title,price,color\nA,Tent,12.5,red\nA,Tent again,1,blue\nB,,cheap,green\nC,Stove,-3,grey\n"
    )
    loaded = load_items(path)
    frame = loaded.frame
    assert frame["item_id"].tolist() == ["A", "B", "C"]
    assert frame.loc[1, "title"] == "B"  # missing title repaired to the id, and reported
    assert frame["price"].isna().tolist() == [False, True, True]
    assert "color" in frame.columns
    assert loaded.report.dropped["duplicate_item_id"] == 1
    assert loaded.report.repaired == {
        "missing_title_set_to_id": 1,
        "bad_price_set_to_null": 1,
        "negative_price_set_to_null": 1,
    }


def test_user_histories_are_chronological_slices() -> None:
    frame = load_events(SAMPLE / "events.csv").frame
    histories = UserHistories(frame)
    assert len(histories) == frame["user_id"].nunique()
    one = histories.for_user("u001")
    assert (one["user_id"] == "u001").all()
    assert len(one) == int((frame["user_id"] == "u001").sum())
    assert one["timestamp"].is_monotonic_increasing
    with pytest.raises(UnknownUserError):
        histories.for_user("nobody")


def test_user_histories_of_an_empty_log_know_no_user() -> None:
    from agent.data.loading import UserHistories, clean_events

    empty = clean_events(pd.DataFrame({"user_id": [], "item_id": [], "behavior": [], "timestamp": []})).frame
    histories = UserHistories(empty)
    assert len(histories) == 0 and "u1" not in histories

"""Ids stay as written in every format, and every reported row is the row in the file.

Row convention (agent/data/loading.py module docstring, same as ``DataError.row``): 1-based data
row, header excluded; for JSONL that is the line number.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agent.data.loading import CleaningReport, Loaded, align_catalog, clean_events, load_events, load_items
from agent.errors import DataError

HEADER = "user_id,item_id,behavior,timestamp\n"
CATALOG = "item_id,title\nA,Tent\nB,Shoe\n7,Seven\n"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _jsonl(records: Sequence[Mapping[str, object]]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


# -- ids exactly as written -----------------------------------------------------------------------
NULL_NEXT_TO_INTS: list[dict[str, object]] = [
    {"user_id": 1, "item_id": 7, "behavior": "view", "timestamp": "2026-01-01"},
    {"user_id": None, "item_id": 8, "behavior": "view", "timestamp": "2026-01-02"},
    {"user_id": 1, "item_id": None, "behavior": "search", "timestamp": "2026-01-03", "text": "tent"},
    {"user_id": 2, "item_id": 9007199254740993, "behavior": "view", "timestamp": "2026-01-04"},
]


@pytest.mark.parametrize("layout", ["jsonl", "json-records", "json-columns"])
def test_json_integer_ids_next_to_nulls_stay_exact_and_null_ids_are_counted_drops(
    tmp_path: Path, layout: str
) -> None:
    if layout == "jsonl":
        path = _write(tmp_path / "e.jsonl", _jsonl(NULL_NEXT_TO_INTS))
    elif layout == "json-records":
        path = _write(tmp_path / "e.json", json.dumps(NULL_NEXT_TO_INTS))
    else:  # the layout DataFrame.to_json() writes by default: {column: {row: value}}
        keys = ["user_id", "item_id", "behavior", "timestamp", "text"]
        columns = {key: {str(i): r.get(key) for i, r in enumerate(NULL_NEXT_TO_INTS)} for key in keys}
        path = _write(tmp_path / "e.json", json.dumps(columns))
    loaded = load_events(path)
    # 2**53 + 1 is not a float: it survives only if the number is never parsed as one.
    assert loaded.frame["user_id"].tolist() == ["1", "1", "2"]
    assert loaded.frame["item_id"].tolist() == ["7", "", "9007199254740993"]
    assert dict(loaded.report.dropped) == {"missing_user_id": 1}
    assert loaded.report.examples["missing_user_id"] == [2]
    assert not loaded.report.repaired


def test_json_numbers_are_kept_as_written_and_values_and_epochs_still_parse(tmp_path: Path) -> None:
    records: list[dict[str, object]] = [
        {"user_id": "u1", "item_id": 7.0, "behavior": "rating", "timestamp": 1767225600000, "value": 4},
        {"user_id": "u1", "item_id": "007", "behavior": "view", "timestamp": None},
        {"user_id": "u1", "item_id": 1e3, "behavior": "view", "timestamp": 1767225601, "value": None},
    ]
    loaded = load_events(_write(tmp_path / "e.jsonl", _jsonl(records)))
    assert loaded.frame["item_id"].tolist() == ["7.0", "1000.0"]  # what json.dumps wrote
    assert loaded.frame["value"].iloc[0] == 4.0 and np.isnan(loaded.frame["value"].iloc[1])
    assert loaded.frame["timestamp"].tolist() == [
        pd.Timestamp("2026-01-01T00:00:00Z"),
        pd.Timestamp("2026-01-01T00:00:01Z"),
    ]
    assert loaded.report.dropped == {"missing_timestamp": 1}


def test_csv_ids_are_text_as_written(tmp_path: Path) -> None:
    path = _write(tmp_path / "e.csv", HEADER + "7,7.0,view,2026-01-01\n,007,view,2026-01-02\n")
    loaded = load_events(path)
    assert loaded.frame[["user_id", "item_id"]].values.tolist() == [["7", "7.0"]]
    assert loaded.report.dropped == {"missing_user_id": 1}


def test_parquet_integer_ids_with_a_null_stay_integers(tmp_path: Path) -> None:
    # Written by pyarrow (as Spark/polars would): no pandas metadata to restore an Int64 dtype.
    table = pa.table(
        {
            "user_id": pa.array([1, None, 2], pa.int64()),
            "item_id": pa.array([2**62 + 1, 8, 7], pa.int64()),
            "behavior": ["view", "view", "view"],
            "timestamp": pa.array([1767225600, 1767225601, None], pa.int64()),
        }
    )
    pq.write_table(table, tmp_path / "e.parquet")
    loaded = load_events(tmp_path / "e.parquet")
    assert loaded.frame[["user_id", "item_id"]].values.tolist() == [["1", "4611686018427387905"]]
    assert loaded.report.dropped == {"missing_user_id": 1, "missing_timestamp": 1}
    assert loaded.report.examples == {"missing_user_id": [2], "missing_timestamp": [3]}


def test_parquet_float_ids_that_are_whole_numbers_become_integers_and_are_reported(tmp_path: Path) -> None:
    # What pandas writes for an integer id column that held a null: float64.
    raw = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u1"],
            "item_id": [7.0, np.nan, 7.5, 1e20],
            "behavior": ["view", "search", "view", "view"],
            "timestamp": ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"],
            "text": [None, "tent", None, None],
        }
    )
    raw.to_parquet(tmp_path / "e.parquet")
    loaded = load_events(tmp_path / "e.parquet")
    assert loaded.frame["item_id"].tolist() == ["7", "", "7.5", "1e+20"]
    assert loaded.report.repaired == {"float_id_as_integer:item_id": 1}
    assert loaded.report.examples["float_id_as_integer:item_id"] == [1]
    assert clean_events(raw).frame["item_id"].tolist() == loaded.frame["item_id"].tolist()


def test_catalog_float_ids_match_integer_event_ids(tmp_path: Path) -> None:
    pd.DataFrame({"item_id": [7.0, np.nan, 8.0], "title": ["Seven", "Orphan", "Eight"]}).to_parquet(
        tmp_path / "i.parquet"
    )
    items = load_items(tmp_path / "i.parquet")
    assert items.frame["item_id"].tolist() == ["7", "8"]
    assert items.report.dropped == {"missing_item_id": 1}
    assert items.report.examples["missing_item_id"] == [2]
    events = load_events(_write(tmp_path / "e.jsonl", _jsonl(NULL_NEXT_TO_INTS[:1])))
    assert align_catalog(events, items).frame["item_id"].tolist() == ["7"]


# -- JSON files that are not usable -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "content", "message", "row"),
    [
        ("e.jsonl", '{"user_id": "u1"}\n\n{"user_id": }\n', "cannot parse line 3", 2),
        ("e.jsonl", '{"user_id": "u1"}\n{"user_id": "u2"},{"user_id": "u3"}\n', "cannot parse line 2", 2),
        ("e.jsonl", '{"user_id": "u1"}\n[1, 2]\n', "record 2 is not a JSON object", 2),
        ("e.json", "[1, 2]", "record 1 is not a JSON object", 1),
        ("e.jsonl", "\n  \n", "file is empty", None),
    ],
)
def test_malformed_json_names_the_line(
    tmp_path: Path, name: str, content: str, message: str, row: int | None
) -> None:
    path = _write(tmp_path / name, content)
    with pytest.raises(DataError) as info:
        load_events(path)
    assert message in str(info.value)
    assert info.value.file == str(path) and info.value.row == row


def test_gzipped_jsonl_with_a_bom_loads(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\ufeff" + _jsonl(NULL_NEXT_TO_INTS[:1]))
    assert load_events(path).frame["item_id"].tolist() == ["7"]


# -- every reported row is the file row ------------------------------------------------------------
def test_examples_are_file_rows_although_the_frame_is_sorted_by_time(tmp_path: Path) -> None:
    # Newest first, so the time sort reverses the file; rows 2, 4, ..., 14 name unknown items.
    lines = [f"u1,{'A' if i % 2 else 'Z'},view,2026-01-{31 - i:02d}\n" for i in range(1, 15)]
    lines.insert(5, "u1,A,view,2026-01-26\n")  # row 6 duplicates row 5 (pre-sort file order)
    events = load_events(_write(tmp_path / "e.csv", HEADER + "".join(lines)))
    assert events.report.examples["duplicate"] == [6]
    assert events.rows().tolist() == sorted(set(range(1, 16)) - {6}, reverse=True)
    aligned = align_catalog(events, load_items(_write(tmp_path / "i.csv", CATALOG)))
    report = aligned.report
    assert report.dropped["unknown_item"] == 7
    assert report.examples["unknown_item"] == [2, 4, 7, 9, 11]  # the first five in the file, ascending
    assert aligned.rows().tolist() == [14, 12, 10, 8, 5, 3, 1]  # kept rows still point into the file
    assert report.rows_read == report.rows_kept + report.rows_dropped


def test_csv_rows_are_records_and_jsonl_rows_are_lines(tmp_path: Path) -> None:
    # A quoted line break is still one row (as a spreadsheet shows it): Z on row 3, not line 5.
    csv_text = HEADER.replace("\n", ",text\n") + (
        'u1,A,view,2026-01-03,"two\nlines"\nu1,A,view,2026-01-02,\nu1,Z,view,2026-01-01,\n'
    )
    csv_events = load_events(_write(tmp_path / "e.csv", csv_text))
    records = [
        {"user_id": "u1", "item_id": item, "behavior": "view", "timestamp": f"2026-01-0{9 - n}"}
        for n, item in enumerate(["A", "B", "Z", "A"])
    ]
    jsonl_events = load_events(_write(tmp_path / "e.jsonl", _jsonl(records)))
    items = load_items(_write(tmp_path / "i.csv", CATALOG))
    assert align_catalog(csv_events, items).report.examples["unknown_item"] == [3]
    assert align_catalog(jsonl_events, items).report.examples["unknown_item"] == [3]


def test_item_rows_survive_drops(tmp_path: Path) -> None:
    items = load_items(_write(tmp_path / "i.csv", "item_id,title\nA,Tent\n,Orphan\nA,Again\nB,Shoe\n"))
    assert items.rows().tolist() == [1, 4]
    assert items.report.examples == {"missing_item_id": [2], "duplicate_item_id": [3]}


def test_examples_keep_the_lowest_rows_across_repeated_notes() -> None:
    report = CleaningReport(file="f")
    report.drop("unknown_item", np.array([40, 9, 30, 8, 20, 7, 10]))
    report.drop("unknown_item", np.array([3, 50]))
    assert report.dropped["unknown_item"] == 9
    assert report.examples["unknown_item"] == [3, 7, 8, 9, 10]


def test_a_hand_built_loaded_counts_its_rows_in_frame_order() -> None:
    frame = pd.DataFrame(
        {
            "user_id": ["u1", "u1"],
            "item_id": ["Z", "A"],
            "behavior": ["view", "view"],
            "timestamp": pd.to_datetime(["2026-01-01", "2026-01-02"], utc=True),
            "value": [np.nan, np.nan],
            "text": [None, None],
        }
    )
    items = Loaded(pd.DataFrame({"item_id": ["A"], "title": ["Tent"]}), CleaningReport(file="i"))
    aligned = align_catalog(Loaded(frame, CleaningReport(file="e", rows_read=2, rows_kept=2)), items)
    assert aligned.report.examples["unknown_item"] == [1]
    assert aligned.rows().tolist() == [2]
    with pytest.raises(ValueError, match="source rows"):
        Loaded(frame, CleaningReport(file="e"), np.array([1]))

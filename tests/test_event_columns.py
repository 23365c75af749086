"""``UserHistories.columns`` (whole-log arrays, sliced) equals reading the user's frame slice,
and the history functions give the same results from either."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from agent.data.event_columns import EventColumns
from agent.data.loading import UserHistories, align_catalog, load_events, load_items
from agent.data.privacy import Scrubber
from agent.prompting.history import Catalog, consumed_items, history_lines, keep_priority

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "sample"


def same(a: EventColumns, b: EventColumns) -> None:
    """Equal lists, value by value and type by type (NaN equals NaN)."""
    for name in ("items", "behaviors", "dates", "values", "texts"):
        left, right = getattr(a, name), getattr(b, name)
        assert len(left) == len(right), name
        for x, y in zip(left, right, strict=True):
            assert type(x) is type(y), (name, x, y)
            assert x == y or (x != x and y != y), (name, x, y)


def frame(**overrides: Any) -> pd.DataFrame:
    base = pd.DataFrame(
        {
            "user_id": pd.array(["u1", "u1", "u2", "u2", "u2"], dtype="str"),
            "item_id": pd.array(["a", "", "b", "a", "c"], dtype="str"),
            "behavior": pd.array(["view", "search", "purchase", "rating", "view"], dtype="str"),
            "timestamp": pd.to_datetime(
                ["2024-01-01T23:59", "2024-01-02", "2023-12-31", "2024-02-29T12:00", "2024-03-01"],
                utc=True,
                format="ISO8601",
            ),
            "value": [np.nan, np.nan, np.nan, 4.0, -0.0],
            "text": pd.array([None, "red shoes, size 9", None, np.nan, "x"], dtype=object),
        }
    )
    for name, value in overrides.items():
        base[name] = value
    return base


VARIANTS: dict[str, dict[str, Any]] = {
    "canonical": {},
    "missing item id": {"item_id": pd.array(["a", None, "b", "a", "c"], dtype="str")},
    "object ids": {"item_id": pd.array(["a", "", "b", "a", "c"], dtype=object)},
    "int values": {"value": [1, 2, 3, 4, 5]},
    "string texts": {"text": pd.array(["t", None, "u", None, "v"], dtype="str")},
    "naive times": {
        "timestamp": pd.to_datetime(["2024-01-01", "2024-01-02", "1999-12-31", "2024-02-29", "2024-03-01"])
    },
    "other zone": {"timestamp": pd.to_datetime(["2024-01-01T23:30"] * 5).tz_localize("Europe/Berlin")},
    "missing time": {
        "timestamp": pd.to_datetime(
            pd.Series(["2024-01-01", None, "2024-01-02", "2024-01-03", None]), utc=True
        )
    },
    "early year": {
        "timestamp": pd.to_datetime(
            ["0999-12-31", "2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"], format="ISO8601"
        )
        .as_unit("s")
        .tz_localize("UTC")
    },
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_sliced_columns_equal_the_frame_slice(variant: str) -> None:
    histories = UserHistories(frame(**VARIANTS[variant]))
    for user in histories:
        same(histories.columns(user), EventColumns.of(histories.for_user(user)))


def test_sample_users_give_the_same_lines_priorities_and_items() -> None:
    items = load_items(SAMPLE / "items.csv")
    events = align_catalog(load_events(SAMPLE / "events.csv"), items)
    histories, catalog = UserHistories(events.frame), Catalog(items.frame)
    for user in histories:
        user_frame, columns = histories.for_user(user), histories.columns(user)
        same(columns, EventColumns.of(user_frame))
        assert history_lines(columns, catalog, Scrubber()) == history_lines(user_frame, catalog, Scrubber())
        assert keep_priority(columns) == keep_priority(user_frame)
        assert consumed_items(columns) == consumed_items(user_frame)
    assert len(histories.columns(next(iter(histories)))) == len(histories.for_user(next(iter(histories))))


def test_expected_values_of_one_user() -> None:
    columns = UserHistories(frame()).columns("u1")
    assert columns.items == ["a", ""] and columns.behaviors == ["view", "search"]
    assert columns.dates == ["2024-01-01", "2024-01-02"]
    assert columns.texts[1] == "red shoes, size 9" and not isinstance(columns.texts[0], str)

"""A user's events as plain column lists: what history lines, priorities and candidates read.

Reading a column of a small pandas frame costs tens of microseconds of pandas overhead
(several columns per user, several readers per request). ``EventColumns.of(frame)`` reads
each column once; ``ColumnSlicer`` (held by ``UserHistories``) cuts them straight out of
whole-log arrays built once, in a few microseconds, with the same values: repeated ids and
behaviors are stored once as codes (4 bytes per event) and come back as shared strings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class EventColumns:
    """One user's events, oldest first, as lists of equal length.

    ``items`` are str ("" for none), ``behaviors`` str, ``dates`` "YYYY-MM-DD" (UTC),
    ``values`` float (NaN for none), ``texts`` whatever the text column holds (str, None, NaN).
    Do not modify the lists: a caller may share them.
    """

    items: list[str]
    behaviors: list[str]
    dates: list[str]
    values: list[float]
    texts: list[object]

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def of(cls, user_events: pd.DataFrame) -> EventColumns:
        """Read the columns of a canonical events frame (one user's slice)."""
        return cls(
            items=_strings(user_events["item_id"]),
            behaviors=_strings(user_events["behavior"]),
            dates=_dates(user_events["timestamp"]),
            values=_floats(user_events["value"]),
            texts=user_events["text"].tolist(),
        )


class ColumnSlicer:
    """Whole-log column arrays, built once, that give any row range's ``EventColumns``.

    Equal to ``EventColumns.of(frame.iloc[start:end])``; columns it cannot store compactly
    (missing ids, other dtypes, dates pandas must format) are read from that slice instead.
    """

    def __init__(self, events: pd.DataFrame) -> None:
        self._frame = events
        self._items = _Codes.of(events["item_id"])
        self._behaviors = _Codes.of(events["behavior"])
        self._days = _day_numbers(events["timestamp"])
        value = events["value"]
        self._values: np.ndarray | None = value.to_numpy() if value.dtype == np.float64 else None
        text = events["text"]
        self._texts: np.ndarray | None = text.to_numpy() if text.dtype == object else None

    def columns(self, start: int, end: int) -> EventColumns:
        """The events of rows ``start:end`` as ``EventColumns``."""
        rows = None

        def sliced() -> pd.DataFrame:
            nonlocal rows
            if rows is None:
                rows = self._frame.iloc[start:end]
            return rows

        return EventColumns(
            items=self._items.take(start, end) if self._items else _strings(sliced()["item_id"]),
            behaviors=(
                self._behaviors.take(start, end) if self._behaviors else _strings(sliced()["behavior"])
            ),
            dates=(
                _day_texts(self._days[start:end].tolist())
                if self._days is not None
                else _dates(sliced()["timestamp"])
            ),
            values=self._values[start:end].tolist()
            if self._values is not None
            else _floats(sliced()["value"]),
            texts=self._texts[start:end].tolist() if self._texts is not None else sliced()["text"].tolist(),
        )


class _Codes:
    """A string column as int32 codes into its distinct values."""

    def __init__(self, codes: np.ndarray, uniques: list[str]) -> None:
        self.codes, self.uniques = codes, uniques

    @classmethod
    def of(cls, column: pd.Series) -> _Codes | None:
        """None if the column has missing values or is not made of str."""
        if not isinstance(column.dtype, pd.StringDtype) or bool(column.isna().any()):
            return None
        codes, uniques = pd.factorize(column)
        values = uniques.tolist()
        if not all(type(value) is str for value in values):
            return None
        return cls(codes.astype(np.int32, copy=False), values)

    def take(self, start: int, end: int) -> list[str]:
        uniques = self.uniques
        return [uniques[code] for code in self.codes[start:end].tolist()]


def _strings(column: pd.Series) -> list[str]:
    return column.tolist() if isinstance(column.dtype, pd.StringDtype) else column.astype(str).tolist()


def _floats(column: pd.Series) -> list[float]:
    return column.tolist() if column.dtype == np.float64 else column.astype(float).tolist()


_FIRST_FAST_DAY = -354285  # 1000-01-01, days since 1970-01-01
_LAST_FAST_DAY = 2932896  # 9999-12-31


def _day_numbers(timestamps: pd.Series) -> np.ndarray | None:
    """Days since 1970-01-01 (UTC) of every timestamp, or None where ``_dates`` needs pandas:
    a zone other than UTC, a value missing (NaT is the smallest int64) or a year outside
    1000-9999 (where %Y is not four digits)."""
    tz = getattr(timestamps.dtype, "tz", None)
    floor_in_numpy = (
        str(tz) == "UTC" if tz is not None else pd.api.types.is_datetime64_dtype(timestamps.dtype)
    )
    if not floor_in_numpy:
        return None
    # UTC values in the column's own unit (to_numpy without a dtype would box Timestamps)
    unit = str(getattr(timestamps.dtype, "unit", "ns"))
    values = timestamps.to_numpy() if tz is None else timestamps.to_numpy(dtype=f"datetime64[{unit}]")
    numbers = np.asarray(values).astype("datetime64[D]").astype(np.int64)  # NaT: the smallest
    if len(numbers) and (int(numbers.min()) < _FIRST_FAST_DAY or int(numbers.max()) > _LAST_FAST_DAY):
        return None
    return numbers.astype(np.int32)  # the fast range fits


def _dates(timestamps: pd.Series) -> list[str]:
    """``timestamps.dt.strftime("%Y-%m-%d")`` as a list, without formatting each one in pandas.

    UTC (the contract) and naive timestamps are floored to whole days in numpy; other time
    zones, missing values and years outside 1000-9999 keep pandas' strftime.
    """
    numbers = _day_numbers(timestamps)
    if numbers is None:
        return list(timestamps.dt.strftime("%Y-%m-%d").tolist())
    return _day_texts(numbers.tolist())


def _day_texts(days: list[int]) -> list[str]:
    out = []
    for day in days:  # a log spans few days: format each once (and share the text)
        text = _DAY_TEXT.get(day)
        if text is None:
            if len(_DAY_TEXT) > 100_000:
                _DAY_TEXT.clear()
            text = _DAY_TEXT[day] = str(np.datetime64(day, "D"))
        out.append(text)
    return out


_DAY_TEXT: dict[int, str] = {}

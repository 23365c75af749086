"""Load behavior logs and item catalogs into canonical pandas frames, and report every repair.

Promises (see docs/CONTRACT.md for the exact columns and dtypes):

* ``load_events`` / ``load_items`` read CSV/TSV, Parquet, JSONL or JSON. Ids stay strings.
* Nothing disappears silently: every dropped or repaired row is counted by reason in the
  returned ``CleaningReport`` (with the first few row numbers as examples).
* Unusable input raises ``DataError`` naming the file, the column and, where possible, the row.
* A row number is the 1-based data row as the user sees it in the file, header excluded, as in
  ``DataError`` (CSV/TSV record, JSONL line, JSON array element, Parquet row; blank lines not
  counted); events are re-sorted by time, so ``Loaded.source_rows`` carries each row's number.
* ``UserHistories`` slices the log per user after ONE stable sort, so a lookup is O(1).
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from agent.data.behaviors import RATING_SCALE
from agent.data.event_columns import ColumnSlicer, EventColumns
from agent.errors import DataError, UnknownUserError

EVENT_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "behavior", "timestamp", "value", "text")
REQUIRED_EVENT_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "behavior", "timestamp")
ITEM_COLUMNS: tuple[str, ...] = ("item_id", "title", "category", "description", "price")
REQUIRED_ITEM_COLUMNS: tuple[str, ...] = ("item_id", "title")

# Common spellings of the canonical columns in exported logs; a rename is reported as a repair.
COLUMN_ALIASES: Mapping[str, str] = {
    "user": "user_id",
    "userid": "user_id",
    "customer_id": "user_id",
    "item": "item_id",
    "itemid": "item_id",
    "product_id": "item_id",
    "sku": "item_id",
    "event": "behavior",
    "event_type": "behavior",
    "action": "behavior",
    "ts": "timestamp",
    "time": "timestamp",
    "event_time": "timestamp",
    "rating": "value",
    "query": "text",
    "name": "title",
}

_EXAMPLE_ROWS = 5


@dataclass
class CleaningReport:
    """What loading did to a file: rows read and kept, drops and repairs by reason.

    ``dropped`` and ``repaired`` map a reason (e.g. ``"duplicate"``, ``"bad_timestamp"``)
    to a row count; ``examples`` maps the same reasons to the first (lowest) row numbers
    affected, ascending, so a user can find them in the file: 1-based data rows, header
    excluded (see the module docstring), whatever order the cleaned frame is in.
    """

    file: str
    rows_read: int = 0
    rows_kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    repaired: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[int]] = field(default_factory=dict)

    def _note(self, bucket: Counter[str], reason: str, rows: pd.Index | np.ndarray) -> None:
        if len(rows) == 0:
            return
        bucket[reason] += len(rows)
        first = np.asarray(rows)
        if len(first) > _EXAMPLE_ROWS:  # rows may come in time order (align_catalog): take the lowest
            first = np.partition(first, _EXAMPLE_ROWS - 1)[:_EXAMPLE_ROWS]
        merged = set(self.examples.get(reason, ())) | {int(r) for r in first}
        self.examples[reason] = sorted(merged)[:_EXAMPLE_ROWS]

    def drop(self, reason: str, rows: pd.Index | np.ndarray) -> None:
        """Count ``rows`` (1-based file row numbers, any order) as dropped for ``reason``."""
        self._note(self.dropped, reason, rows)

    def repair(self, reason: str, rows: pd.Index | np.ndarray) -> None:
        """Count ``rows`` (1-based file row numbers, any order) as repaired for ``reason``."""
        self._note(self.repaired, reason, rows)

    @property
    def rows_dropped(self) -> int:
        return sum(self.dropped.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "dropped": dict(self.dropped),
            "repaired": dict(self.repaired),
            "examples": self.examples,
        }

    def summary(self) -> str:
        """One human line, e.g. ``events.csv: 4210 read, 4190 kept; dropped duplicate=20``."""
        parts = [f"{Path(self.file).name}: {self.rows_read} read, {self.rows_kept} kept"]
        if self.dropped:
            parts.append("dropped " + ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items())))
        if self.repaired:
            parts.append("repaired " + ", ".join(f"{k}={v}" for k, v in sorted(self.repaired.items())))
        return "; ".join(parts)


@dataclass
class Loaded:
    """A cleaned canonical frame and the report of how it was cleaned.

    ``source_rows[i]`` is the file row (1-based data row, header excluded) that
    ``frame.iloc[i]`` came from; cleaning sorts events by time, so later steps need it to
    report file rows. ``None`` (a hand-built ``Loaded``) means the frame is in file order.
    """

    frame: pd.DataFrame
    report: CleaningReport
    source_rows: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.source_rows is not None and len(self.source_rows) != len(self.frame):
            raise ValueError(f"{len(self.source_rows)} source rows for a frame of {len(self.frame)}")

    def rows(self) -> np.ndarray:
        """The file row number of each frame row (see the class docstring)."""
        if self.source_rows is None:
            return np.arange(1, len(self.frame) + 1)
        return self.source_rows


def read_table(path: str | Path, *, encoding: str = "utf-8") -> pd.DataFrame:
    """Read a file into a raw frame, one row per data record, in file order.

    Ids never become numbers: CSV/TSV cells and JSON numbers are kept as the text written
    (``7`` stays ``"7"``, ``007`` stays ``"007"``, even in a column that holds a null);
    Parquet keeps its column types, with integer columns read as nullable integers (never
    floats, so a null does not turn ``7`` into ``7.0``).

    Raises ``DataError`` for a missing/unreadable file, an unknown extension, bad
    encoding, an empty file or a malformed JSON record (naming its line).
    """
    path = Path(path)
    if path.is_dir():
        raise DataError("is a directory, not a data file", file=str(path))
    if not path.is_file():
        raise DataError("file not found", file=str(path))
    try:
        "".encode(encoding)
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}", file=str(path)) from None
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    try:
        if suffix in (".csv", ".csv.gz", ".tsv", ".tsv.gz"):
            sep = "\t" if suffix.startswith(".tsv") else _sniff_delimiter(path, suffix, encoding)
            frame = pd.read_csv(path, sep=sep, dtype=str, encoding=encoding, keep_default_na=False)
            frame = frame.replace("", np.nan)
        elif suffix in (".jsonl", ".ndjson", ".jsonl.gz", ".json"):
            frame = _read_json(path, suffix, encoding)
        elif suffix in (".parquet", ".pq"):
            frame = pq.read_table(path).to_pandas(types_mapper=_nullable_int)
        else:
            raise DataError(
                f"unknown file type {path.suffix!r}; use .csv, .tsv, .jsonl, .json or .parquet",
                file=str(path),
            )
    except UnicodeDecodeError as exc:
        _raise_bad_encoding(path, suffix, encoding, exc)
    except pd.errors.EmptyDataError as exc:
        raise DataError("file is empty", file=str(path)) from exc
    except (ValueError, pd.errors.ParserError, OSError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot parse file: {first}", file=str(path)) from exc
    if frame.empty:
        raise DataError("file has no data rows", file=str(path))
    return frame


_SNIFF_BYTES = 64 * 1024
_DELIMITERS = (",", ";", "\t", "|")
_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe", " ": "space"}


def _open_binary(path: Path, suffix: str) -> Any:
    return gzip.open(path, "rb") if suffix.endswith(".gz") else open(path, "rb")


def _sniff_delimiter(path: Path, suffix: str, encoding: str) -> str:
    """The delimiter of a ``.csv`` file's header line: ``,`` unless the header has none of
    them but has ``;``, a tab or ``|`` (spreadsheets in many locales write ``;``).

    Only the header decides, so a comma inside a quoted title never changes the choice; a
    header that names a single column keeps ``,`` and fails later on the missing columns.
    """
    with _open_binary(path, suffix) as handle:
        head = handle.read(_SNIFF_BYTES)
    header = head.split(b"\n", 1)[0].decode(encoding, errors="replace")
    counts = {sep: header.count(sep) for sep in _DELIMITERS}
    if counts[","]:
        return ","
    best = max(_DELIMITERS[1:], key=lambda sep: counts[sep])
    return best if counts[best] else ","


def _raise_bad_encoding(path: Path, suffix: str, encoding: str, exc: UnicodeDecodeError) -> NoReturn:
    """Name the true byte offset, line and data row of the first undecodable byte.

    The parsers decode in chunks, so ``exc.start`` is an offset into some chunk ("byte 3"),
    not into the file; this re-reads the file line by line (only on this error path) to
    find the real position. The row is the 1-based data row, header excluded, for CSV/TSV
    (each line one record), and the non-blank line's number for JSON Lines.
    """
    offset, line_number, data_row = 0, 0, 0
    header = suffix.startswith((".csv", ".tsv"))
    with _open_binary(path, suffix) as handle:
        for raw in handle:
            line_number += 1
            if raw.strip():
                data_row += 1
            try:
                raw.decode(encoding)
            except UnicodeDecodeError as bad:
                at = offset + bad.start
                row = data_row - 1 if header else data_row
                raise DataError(
                    f"file is not valid {encoding}: byte 0x{raw[bad.start]:02x} at offset {at} "
                    f"(line {line_number}); re-save it as UTF-8 or pass --encoding "
                    "(e.g. --encoding latin-1)",
                    file=str(path),
                    row=row if row >= 1 else None,
                ) from exc
            offset += len(raw)
    # not found line by line (a multi-byte encoding such as UTF-16): the parser's own position
    raise DataError(
        f"file is not valid {encoding} ({exc.reason}); re-save it as UTF-8 or pass --encoding",
        file=str(path),
    ) from exc


def _nullable_int(arrow_type: pa.DataType) -> Any:
    # pandas would read an integer column holding a null as float64 (7 -> 7.0, digits lost past 2**53).
    if not pa.types.is_integer(arrow_type):
        return None
    return pd.api.types.pandas_dtype(
        f"{'U' if pa.types.is_unsigned_integer(arrow_type) else ''}Int{arrow_type.bit_width}"
    )


def _loads(text: str) -> Any:
    # Numbers stay the text written: pandas' reader turns an integer column holding a null
    # into floats ("7" -> "7.0"); the cleaners parse values and timestamps from text anyway.
    return json.loads(text, parse_int=str, parse_float=str)


def _read_json(path: Path, suffix: str, encoding: str) -> pd.DataFrame:
    """JSON Lines (one object per line; blank lines skipped) or a JSON document: an array of
    objects, or an object of columns as ``DataFrame.to_json()`` writes it."""
    opener = gzip.open if suffix.endswith(".gz") else open
    with opener(path, "rt", encoding=encoding) as handle:
        text = handle.read().removeprefix("\ufeff")  # a BOM from Windows tools is not data
    if not text.strip():
        raise DataError("file is empty", file=str(path))
    if suffix == ".json":
        data = _loads(text)
        if isinstance(data, dict):
            return pd.DataFrame(data)
        records = data if isinstance(data, list) else [data]
    else:
        lines = list(filter(str.strip, text.split("\n")))
        try:  # one parse of the whole file is far faster than a Python loop over lines
            records = _loads("[" + ",".join(lines) + "]")
        except json.JSONDecodeError:
            _raise_bad_line(text, path)
        if len(records) != len(lines):  # two values on one line: "{...},{...}"
            _raise_bad_line(text, path)
    if set(map(type, records)) - {dict}:
        bad = next(i for i, record in enumerate(records) if not isinstance(record, dict))
        raise DataError(f"record {bad + 1} is not a JSON object", file=str(path), row=bad + 1)
    return pd.DataFrame(records)


def _raise_bad_line(text: str, path: Path) -> NoReturn:
    """Name the first JSON Lines line that is not exactly one JSON value (the slow path)."""
    row = 0
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        row += 1
        try:
            json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"cannot parse line {number}: {exc.msg} (column {exc.colno})", file=str(path), row=row
            ) from exc
    raise DataError("cannot parse file as JSON Lines", file=str(path))


def _canonical_columns(frame: pd.DataFrame, report: CleaningReport) -> pd.DataFrame:
    renames: dict[str, str] = {}
    for column in frame.columns:
        key = str(column).strip().lower()
        target = key if key in EVENT_COLUMNS + ITEM_COLUMNS else COLUMN_ALIASES.get(key)
        if target and target not in frame.columns and target not in renames.values():
            renames[column] = target
    real = {src: dst for src, dst in renames.items() if src != dst}
    for src, dst in real.items():
        report.repaired[f"renamed_column:{src}->{dst}"] += 1
    return frame.rename(columns=real)


def _require(frame: pd.DataFrame, columns: tuple[str, ...], file: str) -> None:
    for column in columns:
        if column not in frame.columns:
            found = ", ".join(map(str, frame.columns))
            hint = ""
            if len(frame.columns) == 1:  # the whole header in one column: another delimiter
                seen = [name for sep, name in _DELIMITER_NAMES.items() if sep in str(frame.columns[0])]
                hint = f"; the header looks {', '.join(seen)}-separated" if seen else ""
            raise DataError(f"missing required column (found: {found}{hint})", file=file, column=column)


LINE_SEPARATORS = "\u2028\u2029\u0085"
"""Unicode line breaks that JSON leaves raw (unlike "\\n"): inside a prompt's data lines they would
start a new line in many readers, so free text gets them as "\\n", which JSON escapes."""
_SEPARATOR_PATTERN = f"[{LINE_SEPARATORS}]"
_SEPARATOR_TABLE = str.maketrans(dict.fromkeys(LINE_SEPARATORS, "\n"))


def plain_line_breaks(text: str | None) -> str | None:
    """``text`` with U+2028, U+2029 and U+0085 written as "\\n" (for text that skips the loaders)."""
    return text.translate(_SEPARATOR_TABLE) if text else text


def _as_text(series: pd.Series, report: CleaningReport | None = None, column: str | None = None) -> pd.Series:
    """Strings with surrounding blanks stripped; blanks and NaN become NA (vectorized).

    With a ``report``, line separators become "\\n" (``LINE_SEPARATORS``), counted as the
    repair ``line_separator_as_newline:<column>``.
    """
    text = series.astype("string").str.strip()
    if report is not None:
        odd = text.str.contains(_SEPARATOR_PATTERN, regex=True, na=False)
        if odd.any():
            report.repair(f"line_separator_as_newline:{column}", text.index[odd.to_numpy()])
            text = text.str.replace(_SEPARATOR_PATTERN, "\n", regex=True).str.strip()
    return text.mask(text == "")


_EXACT_FLOAT_INT = 2.0**53


def _id_text(series: pd.Series, column: str, report: CleaningReport) -> pd.Series:
    """Ids as text (see ``_as_text``); a whole-number float id is written as an integer.

    Float ids only come from typed sources (Parquet written from a pandas integer column that
    held a null, or a frame passed in); ``"7.0"`` would match no catalog id, so 7.0 becomes
    ``"7"``, counted as the repair ``float_id_as_integer:<column>``. Non-whole floats, and
    floats past 2**53 (which cannot hold every integer), keep pandas' text (``"7.5"``,
    ``"1e+20"``) rather than a guess. NaN stays a missing id (a counted drop).
    """
    if series.dtype.kind == "f":
        values = series.to_numpy(dtype="float64", na_value=np.nan)
        whole = np.isfinite(values) & (np.abs(values) < _EXACT_FLOAT_INT)
        whole[whole] = np.floor(values[whole]) == values[whole]
        if whole.any():
            report.repair(f"float_id_as_integer:{column}", series.index[whole])
            as_int = pd.Series(np.where(whole, values, 0).astype(np.int64), index=series.index)
            series = series.astype("string").where(~whole, as_int.astype("string"))
    return _as_text(series)


def _parse_timestamps(raw: pd.Series) -> pd.Series:
    """Parse epoch seconds/milliseconds or ISO-8601 strings to UTC; unparseable → NaT."""
    text = raw.astype("string").str.strip()
    is_epoch = text.str.fullmatch(r"\d+(?:\.\d+)?").fillna(False).astype(bool)
    out = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns, UTC]")
    if is_epoch.any():
        values = text[is_epoch].astype("float64")
        # Epoch milliseconds are > 1e11 for any date after 1973; seconds are below that until 5138.
        unit_ms = values > 1e11
        seconds = values.where(~unit_ms, values / 1000.0)
        seconds = seconds.where(seconds.abs() < _NS_LIMIT_S)
        out[is_epoch] = _ns_range(pd.to_datetime(seconds, unit="s", utc=True, errors="coerce"))
    rest = ~is_epoch & text.notna()
    if rest.any():
        out[rest] = _ns_range(pd.to_datetime(text[rest], utc=True, errors="coerce", format="ISO8601"))
        still = rest & out.isna()
        if still.any():  # other unambiguous formats ("2026-09-14 10:32", "Sep 14 2026")
            out[still] = _ns_range(pd.to_datetime(text[still], utc=True, errors="coerce", format="mixed"))
    return out


# Nanosecond timestamps span 1677-09-21 .. 2262-04-11; sentinels such as 9999-12-31 fall outside.
_NS_MIN = pd.Timestamp("1678-01-01", tz="UTC")
_NS_MAX = pd.Timestamp("2262-01-01", tz="UTC")
_NS_LIMIT_S = 9.2e9


def _ns_range(parsed: pd.Series) -> pd.Series:
    """Dates outside the nanosecond range become NaT (then a counted ``bad_timestamp`` drop)."""
    return parsed.where((parsed >= _NS_MIN) & (parsed < _NS_MAX)).astype("datetime64[ns, UTC]")


def clean_events(raw: pd.DataFrame, file: str = "<frame>") -> Loaded:
    """Turn a raw event table into the canonical events frame (see module docstring)."""
    report = CleaningReport(file=file, rows_read=len(raw))
    # Indexed by file row number, so every report below (and, after the sort, source_rows)
    # names the row the user sees in the file.
    frame = _canonical_columns(raw.set_axis(pd.RangeIndex(1, len(raw) + 1), axis=0), report)
    _require(frame, REQUIRED_EVENT_COLUMNS, file)

    user = _id_text(frame["user_id"], "user_id", report)
    item = _id_text(frame["item_id"], "item_id", report)
    behavior_raw = _as_text(frame["behavior"], report, "behavior")
    behavior = behavior_raw.str.lower()
    text = (
        _as_text(frame["text"], report, "text")
        if "text" in frame.columns
        else pd.Series(np.nan, index=frame.index)
    )

    report.repair("behavior_lowercased", frame.index[behavior_raw.notna() & (behavior_raw != behavior)])

    keep = pd.Series(True, index=frame.index)
    for reason, bad in (
        ("missing_user_id", user.isna()),
        ("missing_behavior", behavior.isna()),
    ):
        report.drop(reason, frame.index[bad & keep])
        keep &= ~bad
    is_search = behavior == "search"
    no_item = item.isna() & ~is_search
    report.drop("missing_item_id", frame.index[no_item & keep])
    keep &= ~no_item
    empty_search = is_search & item.isna() & text.isna()
    report.drop("empty_search", frame.index[empty_search & keep])
    keep &= ~empty_search

    timestamp = _parse_timestamps(frame["timestamp"])
    missing_ts = frame["timestamp"].isna()
    report.drop("missing_timestamp", frame.index[missing_ts & keep])
    keep &= ~missing_ts
    bad_ts = timestamp.isna()
    report.drop("bad_timestamp", frame.index[bad_ts & keep])
    keep &= ~bad_ts

    if "value" in frame.columns:
        value = pd.to_numeric(frame["value"], errors="coerce").astype("float64")
        bad_value = frame["value"].notna() & value.isna()
        report.repair("bad_value_set_to_null", frame.index[bad_value & keep])
        # A value is a price paid or a rating: never infinite ("inf", "1e400"), never negative,
        # and a rating stays on RATING_SCALE. Kept, they would reach prompts as bare
        # Infinity (not JSON) or as nonsense the model would take at face value.
        for reason, bad in (
            ("non_finite_value_set_to_null", value.abs() == np.inf),
            ("negative_value_set_to_null", value < 0),
            (
                "rating_off_scale_set_to_null",
                (behavior == "rating") & ((value < RATING_SCALE[0]) | (value > RATING_SCALE[1])),
            ),
        ):
            bad &= value.notna()
            report.repair(reason, frame.index[bad & keep])
            value = value.where(~bad)
    else:
        value = pd.Series(np.nan, index=frame.index, dtype="float64")

    events = pd.DataFrame(
        {
            "user_id": user.astype("str"),
            "item_id": item.fillna("").astype("str"),
            "behavior": behavior.astype("str"),
            "timestamp": timestamp,
            "value": value,
            "text": text.astype("object").where(text.notna(), None),
        }
    )[keep.to_numpy()]
    duplicated = events.duplicated(keep="first")
    report.drop("duplicate", events.index[duplicated.to_numpy()])
    events = events[~duplicated.to_numpy()]
    events = events.sort_values("timestamp", kind="stable")
    source_rows = events.index.to_numpy(dtype=np.int64)
    events = events.reset_index(drop=True)
    report.rows_kept = len(events)
    return Loaded(events, report, source_rows)


def clean_items(raw: pd.DataFrame, file: str = "<frame>") -> Loaded:
    """Turn a raw catalog into the canonical items frame; duplicate ids keep the first row."""
    report = CleaningReport(file=file, rows_read=len(raw))
    frame = _canonical_columns(raw.set_axis(pd.RangeIndex(1, len(raw) + 1), axis=0), report)
    _require(frame, REQUIRED_ITEM_COLUMNS, file)
    frame = frame.copy()
    frame["item_id"] = _id_text(frame["item_id"], "item_id", report)
    missing_id = frame["item_id"].isna()
    report.drop("missing_item_id", frame.index[missing_id])
    frame = frame[~missing_id]
    frame["item_id"] = frame["item_id"].astype("str")
    dup = frame["item_id"].duplicated(keep="first")
    report.drop("duplicate_item_id", frame.index[dup.to_numpy()])
    frame = frame[~dup.to_numpy()]
    title = _as_text(frame["title"], report, "title")
    report.repair("missing_title_set_to_id", frame.index[title.isna().to_numpy()])
    frame["title"] = title.fillna(frame["item_id"]).astype("str")
    for column in ("category", "description"):
        frame[column] = (
            _as_text(frame[column], report, column).astype("object") if column in frame.columns else None
        )
        frame[column] = frame[column].where(frame[column].notna(), None)
    if "price" in frame.columns:
        price = pd.to_numeric(frame["price"], errors="coerce").astype("float64")
        price = price.where(~np.isinf(price))  # "inf" parses as a number but is no price
        bad = frame["price"].notna() & price.isna()
        report.repair("bad_price_set_to_null", frame.index[bad.to_numpy()])
        negative = price < 0
        report.repair("negative_price_set_to_null", frame.index[negative.to_numpy()])
        frame["price"] = price.where(~negative)
    else:
        frame["price"] = np.nan
    extras = [c for c in frame.columns if c not in ITEM_COLUMNS]
    items = frame[list(ITEM_COLUMNS) + extras]
    source_rows = items.index.to_numpy(dtype=np.int64)
    items = items.reset_index(drop=True)
    report.rows_kept = len(items)
    return Loaded(items, report, source_rows)


def load_events(path: str | Path, *, encoding: str = "utf-8") -> Loaded:
    """Load and clean a behavior log file. Raises ``DataError`` if it cannot be used."""
    loaded = clean_events(read_table(path, encoding=encoding), file=str(path))
    if loaded.frame.empty:
        raise DataError("no usable events after cleaning: " + loaded.report.summary(), file=str(path))
    return loaded


def load_items(path: str | Path, *, encoding: str = "utf-8") -> Loaded:
    """Load and clean an item catalog file. Raises ``DataError`` if it cannot be used."""
    return clean_items(read_table(path, encoding=encoding), file=str(path))


def align_catalog(events: Loaded, items: Loaded) -> Loaded:
    """Drop events whose item is not in the catalog, counting them in the events report.

    The ``unknown_item`` examples are file rows (``events.source_rows``), like every other
    example in the report, and the returned ``Loaded`` keeps the kept rows' source rows.

    Raises ``DataError`` when NO event item matches the catalog: that is a format mismatch
    (e.g. numeric vs prefixed ids), not dirt, and dropping everything would hide it.
    """
    frame = events.frame
    has_item = frame["item_id"] != ""
    known = frame["item_id"].isin(items.frame["item_id"])
    unknown = has_item & ~known
    if has_item.any() and not (has_item & known).any():
        sample = ", ".join(map(repr, frame.loc[has_item, "item_id"].head(3)))
        catalog = ", ".join(map(repr, items.frame["item_id"].head(3)))
        raise DataError(
            f"no event item id matches the catalog (events: {sample}; catalog: {catalog})",
            file=events.report.file,
            column="item_id",
        )
    if not unknown.any():
        return events
    mask = unknown.to_numpy()
    rows = events.rows()
    events.report.drop("unknown_item", rows[mask])  # file rows, not positions in the sorted frame
    frame = frame[~mask].reset_index(drop=True)
    events.report.rows_kept = len(frame)
    return Loaded(frame, events.report, rows[~mask])


class UserHistories:
    """Per-user, chronologically ordered slices of an events frame.

    Built with one stable sort by user (the frame is already time-sorted), so building
    is O(n log n) once and ``for_user`` is a constant-time slice, whatever the log size.
    """

    def __init__(self, events: pd.DataFrame) -> None:
        ordered = events.sort_values("user_id", kind="stable").reset_index(drop=True)
        users = ordered["user_id"].to_numpy()
        if len(users):
            starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        else:
            starts = np.array([], dtype=np.int64)
        ends = np.r_[starts[1:], len(users)] if len(users) else starts  # no users: no spans
        self._frame = ordered
        self._columns = ColumnSlicer(ordered)
        self._span: dict[str, tuple[int, int]] = {
            str(users[s]): (int(s), int(e)) for s, e in zip(starts, ends, strict=True)
        }

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._span

    def __len__(self) -> int:
        return len(self._span)

    def __iter__(self) -> Iterator[str]:
        return iter(self._span)

    def empty(self) -> pd.DataFrame:
        """No events, with the log's columns (the history of a user new to the log)."""
        return self._frame.iloc[0:0]

    def for_user(self, user_id: str) -> pd.DataFrame:
        """The user's events, oldest first. Raises ``UnknownUserError`` for an unknown user."""
        start, end = self.require(user_id)
        return self._frame.iloc[start:end]

    def columns(self, user_id: str) -> EventColumns:
        """``EventColumns.of(self.for_user(user_id))``, without slicing the frame (faster).
        Raises ``UnknownUserError`` for an unknown user."""
        start, end = self.require(user_id)
        return self._columns.columns(start, end)

    def require(self, user_id: str) -> tuple[int, int]:
        """The user's rows (start, end) in the log; ``UnknownUserError`` for an unknown user.
        For checking a user without slicing the frame."""
        span = self._span.get(user_id)
        if span is None:
            raise UnknownUserError(f"user {user_id!r} has no events in the log", column="user_id")
        return span

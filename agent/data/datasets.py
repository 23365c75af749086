"""Loaders for published recommendation datasets, returning the canonical frames.

Every loader returns ``events`` and ``items`` exactly as ``docs/CONTRACT.md`` describes
(string ids, UTC ``datetime64[ns]`` timestamps, float ``value``, object ``text``), so the
rest of recagent never needs to know where a log came from. Unreadable or malformed files
raise :class:`agent.errors.DataError` naming the file (and the column/row when known).

* :func:`load_movielens` — MovieLens 100K (``u.data`` + ``u.item``) or 1M
  (``ratings.dat`` + ``movies.dat``), detected from the files present.
* :func:`load_amazon_seq` — LLMRank/UniSRec processed Amazon files (``*.item`` +
  ``*.{split}.inter``): each user's history sequence becomes events, the held-out next
  item becomes ``targets[user_id]``.

The datasets are research-licensed: load them from where they live, never copy them
into the repository.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from agent.errors import DataError

__all__ = [
    "ML100K_GENRES",
    "SYNTHETIC_EPOCH",
    "SequenceDataset",
    "load_amazon_seq",
    "load_movielens",
]

ML100K_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
"""Genre flag order of ``u.item`` (used when ``u.genre`` is absent)."""

SYNTHETIC_EPOCH = pd.Timestamp("2000-01-01", tz="UTC")
"""Origin of the synthesized timestamps of sequence-only datasets (see load_amazon_seq)."""

RATING_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
_YEAR_RE = r"\((\d{4})\)\s*$"


@dataclass(frozen=True, eq=False)
class SequenceDataset:
    """A next-item dataset: the histories as canonical frames plus each user's target.

    ``targets`` maps user_id to the held-out next item id; that item is *not* in
    ``events``.
    """

    events: pd.DataFrame
    items: pd.DataFrame
    targets: dict[str, str]


# --------------------------------------------------------------------------- helpers


def _read_delimited(
    file: Path, sep: str, names: list[str], *, numeric: tuple[str, ...] = (), encoding: str = "latin-1"
) -> pd.DataFrame:
    """Read a header-less delimited file; DataError on any parse problem.

    Columns in ``numeric`` are parsed as float64 by the C parser (the fast path); when
    that fails the file is re-read as strings so :func:`_numeric` can name the bad row.
    Other columns are strings. Multi-character separators (MovieLens 1M's ``::``) are
    swapped for a tab first so the fast C parser does the work.
    """
    if not file.is_file():
        raise DataError("file not found", file=str(file))
    try:
        text = file.read_bytes().decode(encoding)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read: {exc}", file=str(file)) from exc
    if not text.strip():
        raise DataError("file is empty", file=str(file))
    if len(sep) > 1:
        if "\t" in text:
            raise DataError(f"unexpected tab character in a {sep!r}-separated file", file=str(file))
        text, sep = text.replace(sep, "\t"), "\t"
    options: dict = {
        "sep": sep,
        "header": None,
        "names": names,
        "quoting": 3,  # csv.QUOTE_NONE: titles contain quotes
        "keep_default_na": False,
        "index_col": False,
    }
    dtypes = {name: ("float64" if name in numeric else str) for name in names}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)  # extra fields: not silently dropped
            try:
                frame = pd.read_csv(io.StringIO(text), dtype=dtypes, na_filter=bool(numeric), **options)
            except ValueError:
                if not numeric:
                    raise
                frame = pd.read_csv(io.StringIO(text), dtype=str, na_filter=False, **options)
    except (pd.errors.ParserError, pd.errors.ParserWarning, ValueError) as exc:
        row = next(
            (n for n, line in enumerate(text.splitlines(), 1) if line and line.count(sep) >= len(names)),
            None,
        )
        if row is not None:
            raise DataError(f"more than {len(names)} fields", file=str(file), row=row) from exc
        raise DataError(f"cannot parse: {exc}", file=str(file)) from exc
    if frame.empty:
        raise DataError("file is empty", file=str(file))
    return frame


def _numeric(frame: pd.DataFrame, column: str, file: Path, *, first_row: int = 1) -> np.ndarray:
    """Column as float64; DataError naming the first bad (1-based) row."""
    raw = frame[column]
    if pd.api.types.is_float_dtype(raw.dtype):
        values = raw.to_numpy(dtype="float64")
    else:
        values = pd.to_numeric(raw.fillna("").str.strip(), errors="coerce").to_numpy(dtype="float64")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"expected a number, got {raw.iloc[i]!r}", file=str(file), column=column, row=first_row + i
        )
    return values


def _require_nonempty(frame: pd.DataFrame, column: str, file: Path, *, first_row: int = 1) -> None:
    empty = np.flatnonzero((frame[column].fillna("").str.strip() == "").to_numpy())
    if empty.size:
        raise DataError("missing value", file=str(file), column=column, row=first_row + int(empty[0]))


def _check_unique(frame: pd.DataFrame, column: str, file: Path, *, first_row: int = 1) -> None:
    dup = np.flatnonzero(frame[column].duplicated().to_numpy())
    if dup.size:
        i = int(dup[0])
        raise DataError(
            f"duplicate id {frame[column].iloc[i]!r}", file=str(file), column=column, row=first_row + i
        )


def _str_column(values: pd.Series | np.ndarray) -> pd.Series:
    if isinstance(values, pd.Series):
        return values.astype(str).reset_index(drop=True)
    return pd.Series(values, dtype=str)


def _events_frame(
    user_id: pd.Series | np.ndarray,
    item_id: pd.Series | np.ndarray,
    behavior: str,
    timestamp_ns: np.ndarray,
    value: np.ndarray,
) -> pd.DataFrame:
    """Assemble canonical events (exact columns and dtypes), sorted by timestamp (stable)."""
    n = len(user_id)
    timestamp = pd.DatetimeIndex(np.asarray(timestamp_ns, dtype="int64").view("datetime64[ns]"))
    events = pd.DataFrame(
        {
            "user_id": _str_column(user_id),
            "item_id": _str_column(item_id),
            "behavior": pd.Series([behavior], dtype=str).repeat(n).reset_index(drop=True),
            "timestamp": pd.Series(timestamp.tz_localize("UTC"), dtype="datetime64[ns, UTC]"),
            "value": pd.Series(np.asarray(value, dtype="float64")),
            "text": pd.Series(np.full(n, None, dtype=object), dtype=object),
        }
    )
    order = np.argsort(events["timestamp"].to_numpy(dtype="datetime64[ns]").view("int64"), kind="stable")
    return events.take(order).reset_index(drop=True)


def _items_frame(
    item_id: pd.Series,
    title: pd.Series,
    category: pd.Series,
    extras: dict[str, pd.Series] | None = None,
) -> pd.DataFrame:
    n = len(item_id)
    category_values = category.to_numpy(dtype=object, copy=True)
    category_values[pd.isna(category_values)] = None
    items = pd.DataFrame(
        {
            "item_id": pd.Series(item_id.str.strip().to_numpy(), dtype=str),
            "title": pd.Series(title.fillna("").str.strip().to_numpy(), dtype=str),
            "category": pd.Series(category_values, dtype=object),
            "description": pd.Series(np.full(n, None, dtype=object), dtype=object),
            "price": pd.Series(np.full(n, np.nan, dtype="float64")),
        }
    )
    for name, column in (extras or {}).items():
        items[name] = column.reset_index(drop=True)
    return items


def _year(titles: pd.Series) -> pd.Series:
    return pd.to_numeric(titles.str.extract(_YEAR_RE, expand=False), errors="coerce").astype("Int64")


def _epoch_ns(seconds: np.ndarray) -> np.ndarray:
    return seconds.astype("int64") * 1_000_000_000


# --------------------------------------------------------------------------- MovieLens


def load_movielens(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load MovieLens 100K or 1M from its directory as canonical ``(events, items)``.

    The format is detected from the files present: ``u.data`` + ``u.item`` (100K) or
    ``ratings.dat`` + ``movies.dat`` (1M); both are read as latin-1. Every rating is an
    event with ``behavior="rating"`` and ``value`` = the 1-5 stars.

    Items: ``title`` as published (with its year), ``category`` = the first genre name
    (None when the movie only has the ``unknown`` flag or no genre), and two extra
    columns: ``genres`` ("Action|Thriller", "" when none) and ``year`` (nullable Int64,
    parsed from the title's trailing "(1995)").
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError("MovieLens path is not a directory", file=str(root))
    if (root / "u.data").exists() or (root / "u.item").exists():
        return _load_ml100k(root)
    if (root / "ratings.dat").exists() or (root / "movies.dat").exists():
        return _load_ml1m(root)
    raise DataError(
        "not a MovieLens directory: expected u.data + u.item (100K) or ratings.dat + movies.dat (1M)",
        file=str(root),
    )


def _ratings_events(ratings: pd.DataFrame, file: Path) -> pd.DataFrame:
    for column in ("user_id", "item_id"):
        _require_nonempty(ratings, column, file)
    value = _numeric(ratings, "rating", file)
    seconds = _numeric(ratings, "timestamp", file)
    return _events_frame(
        ratings["user_id"].str.strip(),
        ratings["item_id"].str.strip(),
        "rating",
        _epoch_ns(seconds),
        value,
    )


def _load_ml100k(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    data_file, item_file, genre_file = root / "u.data", root / "u.item", root / "u.genre"
    ratings = _read_delimited(data_file, "\t", list(RATING_COLUMNS), numeric=RATING_COLUMNS[2:])
    events = _ratings_events(ratings, data_file)

    genres = list(ML100K_GENRES)
    if genre_file.is_file():
        table = _read_delimited(genre_file, "|", ["name", "index"], numeric=("index",))
        table = table.dropna(subset=["index"])
        table = table[table["name"].str.strip() != ""]
        order = _numeric(table, "index", genre_file).astype(int)
        genres = [str(name) for _, name in sorted(zip(order, table["name"], strict=True))]
    flag_names = [f"genre_{i}" for i in range(len(genres))]
    names = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *flag_names]
    raw = _read_delimited(item_file, "|", names, numeric=tuple(flag_names))
    _require_nonempty(raw, "item_id", item_file)
    _check_unique(raw, "item_id", item_file)

    flags = np.column_stack([_numeric(raw, col, item_file) for col in flag_names]) > 0
    flags[:, [g.lower() == "unknown" for g in genres]] = False  # "unknown" is no genre
    names_arr = np.array(genres, dtype=object)
    has_genre = flags.any(axis=1)
    first = np.where(has_genre, names_arr[flags.argmax(axis=1)], None)
    joined = pd.Series(["|".join(names_arr[row]) for row in flags], dtype=object)
    titles = raw["title"].fillna("").str.strip()
    items = _items_frame(
        raw["item_id"],
        titles,
        pd.Series(first, dtype=object),
        {"genres": joined, "year": _year(titles)},
    )
    return events, items


def _load_ml1m(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    ratings_file, movies_file = root / "ratings.dat", root / "movies.dat"
    ratings = _read_delimited(ratings_file, "::", list(RATING_COLUMNS), numeric=RATING_COLUMNS[2:])
    events = _ratings_events(ratings, ratings_file)

    raw = _read_delimited(movies_file, "::", ["item_id", "title", "genres"])
    _require_nonempty(raw, "item_id", movies_file)
    _check_unique(raw, "item_id", movies_file)
    genres = raw["genres"].str.strip()
    first = genres.str.split("|", regex=False).str[0]
    category = first.where(first.fillna("").str.len() > 0, None).astype(object)
    titles = raw["title"].fillna("").str.strip()
    items = _items_frame(
        raw["item_id"], titles, category, {"genres": genres.astype(object), "year": _year(titles)}
    )
    return events, items


# --------------------------------------------------------------------------- Amazon (LLMRank)


def _find_one(root: Path, pattern: str, what: str) -> Path:
    found = sorted(root.glob(pattern))
    if len(found) != 1:
        detail = "none found" if not found else "several found: " + ", ".join(p.name for p in found)
        raise DataError(f"expected exactly one {what} file matching {pattern!r} ({detail})", file=str(root))
    return found[0]


def _read_atomic(file: Path) -> pd.DataFrame:
    """Read a RecBole atomic file (tab-separated, header ``name:type``) as strings."""
    if not file.is_file():
        raise DataError("file not found", file=str(file))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)  # extra fields: not silently dropped
            frame = pd.read_csv(
                file,
                sep="\t",
                dtype=str,
                encoding="utf-8",
                quoting=3,
                keep_default_na=False,
                na_filter=False,
                index_col=False,
            )
    except (pd.errors.ParserError, pd.errors.ParserWarning, UnicodeDecodeError, ValueError) as exc:
        match = re.search(r"line (\d+)", str(exc))
        row = int(match.group(1)) - 1 if match else None  # the header is line 1
        raise DataError(f"cannot parse: {exc}", file=str(file), row=row) from exc
    except OSError as exc:
        raise DataError(f"cannot read: {exc}", file=str(file)) from exc
    frame.columns = [str(c).split(":", 1)[0].strip() for c in frame.columns]
    return frame


def _require_columns(frame: pd.DataFrame, columns: tuple[str, ...], file: Path) -> None:
    for column in columns:
        if column not in frame.columns:
            raise DataError(f"missing column (has {list(frame.columns)})", file=str(file), column=column)


def load_amazon_seq(path: str | Path, split: str = "test", *, name: str | None = None) -> SequenceDataset:
    """Load LLMRank's processed Amazon files (e.g. ``Games.item`` + ``Games-6k.test.inter``).

    ``path`` is the directory; ``split`` picks ``*.{split}.inter`` ("test" or "valid");
    ``name`` (e.g. "Games-6k") is only needed when the directory holds several datasets.
    The ``.inter`` rows are ``user_id``, ``item_id_list`` (space-separated history, oldest
    first) and ``item_id`` (the held-out next item), which goes to ``targets``.

    Events are the histories with ``behavior="purchase"`` (a review in the source data)
    and ``value`` NaN. The files carry only the order, so **timestamps are synthesized**:
    the i-th history item of every user is at ``SYNTHETIC_EPOCH + i`` seconds. Order
    within a user is exact; comparing times across users is meaningless, and a time-based
    decay in days does nothing on this data (use an event-count decay instead).

    Items: ``title`` from ``*.item``; ``category``/``description`` None, ``price`` NaN.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError("Amazon dataset path is not a directory", file=str(root))
    inter_file = root / f"{name}.{split}.inter" if name else _find_one(root, f"*.{split}.inter", split)
    dataset = inter_file.name[: -len(f".{split}.inter")]
    item_file = root / f"{dataset.split('-')[0]}.item"
    if not item_file.is_file():
        item_file = root / f"{dataset}.item" if (root / f"{dataset}.item").is_file() else item_file
    if not item_file.is_file():
        item_file = _find_one(root, "*.item", "item")

    raw_items = _read_atomic(item_file)
    _require_columns(raw_items, ("item_id", "title"), item_file)
    _require_nonempty(raw_items, "item_id", item_file)
    _check_unique(raw_items, "item_id", item_file)
    items = _items_frame(raw_items["item_id"], raw_items["title"], pd.Series([None] * len(raw_items)))

    inter = _read_atomic(inter_file)
    _require_columns(inter, ("user_id", "item_id_list", "item_id"), inter_file)
    _require_nonempty(inter, "user_id", inter_file)
    _require_nonempty(inter, "item_id", inter_file)
    _check_unique(inter, "user_id", inter_file)

    users = inter["user_id"].str.strip()
    sequences = inter["item_id_list"].str.split()
    lengths = sequences.map(len).to_numpy(dtype="int64")
    flat = sequences.explode().dropna()
    positions = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    events = _events_frame(
        np.repeat(users.to_numpy(dtype=object), lengths),
        flat.to_numpy(dtype=object),
        "purchase",
        SYNTHETIC_EPOCH.value + positions * 1_000_000_000,
        np.full(len(flat), np.nan),
    )
    targets = dict(zip(users.tolist(), inter["item_id"].str.strip().tolist(), strict=True))
    return SequenceDataset(events=events, items=items, targets=targets)

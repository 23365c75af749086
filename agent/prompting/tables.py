"""Compact tabular blocks: a prompt's history and candidates as JSON rows under one header.

Why: one JSON object per event repeated every field name and every item's title, category
and price on each line, so a user's history cost about twice what it says. Here

* each item the history mentions is stated once, in an ``items`` table (id, title, category,
  price), and the events refer to it by ``item_id``;
* the column names are stated once, in the block's ``columns`` attribute;
* a column that is empty in every shown row is left out (MovieLens has no prices, most logs
  no free text), and a whole number stored as a float (a 5.0 rating) is written ``5``.

Nothing the old lines said is lost: every non-empty field of every shown event is still there,
once. Rows are JSON arrays written by the templates' ``tojson``, so text inside them stays
escaped exactly as before and a title with commas, pipes or quotes cannot break a column.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from agent.data.loading import plain_line_breaks

Record = Mapping[str, Any] | BaseModel
"""A history or candidate line: the model, or its JSON dump (what templates are given)."""

ITEM_COLUMNS = ("item_id", "title", "category", "price")
"""What the ``items`` table says of each history item, once."""
EVENT_COLUMNS = ("n", "date", "behavior", "item_id", "value", "text")
"""What each history event row says (``n``: its position in the whole history, 1 = oldest)."""
CANDIDATE_COLUMNS = ("item_id", "title", "category", "price", "description")


@dataclass(frozen=True)
class Table:
    """Rows of equal length under ``columns`` (only the columns some row fills)."""

    columns: list[str]
    rows: list[list[Any]]


def table(records: Iterable[Record], columns: Sequence[str]) -> Table:
    """``records`` as rows of ``columns``, without the columns that are empty in every row."""
    values = [[_plain(_field(record, name)) for name in columns] for record in records]
    kept = [i for i in range(len(columns)) if any(row[i] is not None for row in values)]
    return Table([columns[i] for i in kept], [[row[i] for i in kept] for row in values])


def history_tables(history: Sequence[Record]) -> tuple[Table, Table]:
    """The ``items`` table (each item once, in order of first mention) and the ``events`` table."""
    first_mention: dict[str, Record] = {}
    for line in history:
        item_id = _field(line, "item_id")
        if item_id is not None:
            first_mention.setdefault(item_id, line)
    return table(first_mention.values(), ITEM_COLUMNS), table(history, EVENT_COLUMNS)


def candidate_table(candidates: Sequence[Record]) -> Table:
    return table(candidates, CANDIDATE_COLUMNS)


def _field(record: Record, name: str) -> Any:
    if type(record) is dict:  # what templates get (inputs dumped to JSON): the quick check first
        return record.get(name)
    return record.get(name) if isinstance(record, Mapping) else getattr(record, name)


def _plain(value: Any) -> Any:
    """A cell as a JSON row can carry it, one row per line.

    A whole-number float becomes an int (``5.0`` -> ``5``, ``-0.0`` -> ``0``: same number,
    fewer tokens); inf and NaN, which JSON cannot write, become null (no price, no value);
    U+2028, U+2029 and U+0085 in text become "\n" (escaped in the row), because a reader
    that splits lines on them would break the row in two (the loaders repair them too).
    """
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
    elif isinstance(value, str):
        return plain_line_breaks(value)
    return value

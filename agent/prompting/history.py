"""Turn a user's events into the numbered history lines a prompt shows, within a token budget.

Promises: lines are chronological and numbered from 1; free text is scrubbed of personal
data; no user id appears. When the history does not fit, the least informative events go
first: the most recent ``keep_recent`` events are kept whatever their type, then events are
kept by interest signal (purchases, likes and ratings before views) and, among equals,
newest first. The kept lines are shown in time order with their original positions, so the
model can still see that older events were left out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import TypeAdapter

from agent.data.behaviors import DEFAULT_BEHAVIOR_WEIGHTS, DEFAULT_UNKNOWN_WEIGHT
from agent.data.event_columns import EventColumns
from agent.data.privacy import Scrubber
from agent.prompting.templates import CandidateLine, HistoryLine


@dataclass(frozen=True)
class ItemInfo:
    item_id: str
    title: str
    category: str | None
    price: float | None
    description: str | None


class Catalog:
    """Item lookups by id, built once from the canonical items frame."""

    def __init__(self, items: pd.DataFrame) -> None:
        def clean(value: object) -> object:
            return None if value is None or (isinstance(value, float) and np.isnan(value)) else value

        self._items: dict[str, ItemInfo] = {
            str(row.item_id): ItemInfo(
                item_id=str(row.item_id),
                title=str(row.title),
                category=clean(row.category),  # type: ignore[arg-type]
                price=clean(row.price),  # type: ignore[arg-type]
                description=clean(row.description),  # type: ignore[arg-type]
            )
            for row in items[["item_id", "title", "category", "price", "description"]].itertuples(index=False)
        }
        self.has_prices = any(info.price is not None for info in self._items.values())
        """False for a catalog without any price: profiles then carry no price facts."""
        # Scrubbing a description costs several regex passes; items repeat across users.
        self._lines: dict[tuple[str, int, bool, tuple[str, ...]], tuple[CandidateLine, Counter[str]]] = {}

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, item_id: str) -> ItemInfo | None:
        return self._items.get(item_id)

    def title(self, item_id: str) -> str:
        info = self._items.get(item_id)
        return info.title if info else item_id

    def candidate_line(self, item_id: str, scrubber: Scrubber, description_chars: int = 240) -> CandidateLine:
        """The item as a candidate line: title clipped, description clipped and scrubbed.

        Lines are built once per item and setting and shared (they are frozen); each call
        adds what scrubbing the description replaced to ``scrubber.counts``.
        """
        info = self._items.get(item_id)
        if info is None:
            return CandidateLine(item_id=item_id, title=item_id, category=None, price=None, description=None)
        if type(scrubber) is not Scrubber:  # a subclass may scrub differently each time
            return _candidate_line(info, scrubber, description_chars)
        key = (item_id, description_chars, scrubber.enabled, tuple(scrubber.kinds))
        cached = self._lines.get(key)
        if cached is None:
            fresh = Scrubber(enabled=scrubber.enabled, kinds=scrubber.kinds)
            cached = self._lines[key] = (_candidate_line(info, fresh, description_chars), fresh.counts)
        line, counts = cached
        if counts:
            scrubber.counts.update(counts)
        return line


def _candidate_line(info: ItemInfo, scrubber: Scrubber, description_chars: int) -> CandidateLine:
    description = info.description[:description_chars] if info.description else None
    return CandidateLine(
        item_id=info.item_id,
        title=_clip(info.title, MAX_TITLE_CHARS) or info.item_id,
        category=info.category,
        price=info.price,
        description=scrubber.scrub(description),
    )


def keep_priority(user_events: pd.DataFrame | EventColumns, keep_recent: int = 5) -> list[int]:
    """Row positions from most to least worth keeping (see module docstring)."""
    if isinstance(user_events, EventColumns):
        behaviors, texts = user_events.behaviors, user_events.texts
    else:  # only the columns it needs
        behaviors, texts = user_events["behavior"].tolist(), user_events["text"].tolist()
    weights = DEFAULT_BEHAVIOR_WEIGHTS
    # A rating is explicit feedback whatever its value; searches and reviews say what the
    # user wants in words. (The same float arithmetic as the former numpy version.)
    signal = [
        (0.7 if behavior == "rating" else abs(weights.get(behavior, DEFAULT_UNKNOWN_WEIGHT)))
        + (0.2 if _present(text) else 0.0)
        for behavior, text in zip(behaviors, texts, strict=True)
    ]
    old = len(signal) - keep_recent
    # The recent block first, then by signal, then newest first (positions are unique).
    return sorted(range(len(signal)), key=lambda i: (i < old, -signal[i], -i))


def _present(value: object) -> bool:
    """``pd.notna`` of one cell, quickly for the usual str and None."""
    if value is None:
        return False
    if isinstance(value, str):
        return True
    return not (pd.api.types.is_scalar(value) and bool(pd.isna(value)))  # type: ignore[call-overload]


MAX_TITLE_CHARS = 200
MAX_TEXT_CHARS = 500
"""One huge field must not push a whole history out of the prompt budget."""


def _clip(text: str | None, limit: int) -> str | None:
    return text if text is None or len(text) <= limit else text[: limit - 1] + "…"


def history_lines(
    user_events: pd.DataFrame | EventColumns,
    catalog: Catalog,
    scrubber: Scrubber,
    rows: Sequence[int] | None = None,
) -> list[HistoryLine]:
    """The user's events at positions ``rows`` (default: all) as prompt lines, in that order.

    Each line's ``n`` is its position in the whole history (1 = oldest), whichever rows are
    asked for: a prompt that shows 20 of 700 events builds 20 lines, numbered as in the log.
    """
    columns = _columns(user_events)
    positions = range(len(columns.items)) if rows is None else rows
    fields: list[dict[str, object]] = []
    for row in positions:
        item_id, value, text = columns.items[row], columns.values[row], columns.texts[row]
        info = catalog.get(item_id) if item_id else None
        fields.append(
            {
                "n": row + 1,
                "date": columns.dates[row],
                "behavior": columns.behaviors[row],
                "item_id": item_id or None,
                "title": _clip(info.title, MAX_TITLE_CHARS) if info else None,
                "category": info.category if info else None,
                "price": info.price if info else None,
                "value": None if value != value else value,  # NaN -> None
                "text": _clip(scrubber.scrub(text), MAX_TEXT_CHARS) if isinstance(text, str) else None,
            }
        )
    return _LINES.validate_python(fields)  # one validation call for the list: same lines, faster


_LINES = TypeAdapter(list[HistoryLine])


def _columns(user_events: pd.DataFrame | EventColumns) -> EventColumns:
    return user_events if isinstance(user_events, EventColumns) else EventColumns.of(user_events)


def consumed_items(user_events: pd.DataFrame | EventColumns) -> list[str]:
    """Distinct item ids the user interacted with, oldest first (searches excluded)."""
    items = user_events.items if isinstance(user_events, EventColumns) else user_events["item_id"].tolist()
    return list(dict.fromkeys(item for item in items if item != ""))

"""Turn a user's events into the numbered history lines a prompt shows, within a token budget.

Promises: lines are chronological and numbered from 1; free text is scrubbed of personal
data; no user id appears. When the history does not fit, the least informative events go
first: the most recent ``keep_recent`` events are kept whatever their type, then events are
kept by interest signal (purchases, likes and ratings before views) and, among equals,
newest first. The kept lines are shown in time order with their original positions, so the
model can still see that older events were left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from agent.behaviors import DEFAULT_BEHAVIOR_WEIGHTS, DEFAULT_UNKNOWN_WEIGHT
from agent.privacy import Scrubber
from agent.prompts import CandidateLine, HistoryLine
from agent.tokens import fit_to_budget


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
        info = self._items.get(item_id)
        if info is None:
            return CandidateLine(item_id=item_id, title=item_id, category=None, price=None, description=None)
        description = info.description[:description_chars] if info.description else None
        return CandidateLine(
            item_id=item_id,
            title=_clip(info.title, MAX_TITLE_CHARS) or item_id,
            category=info.category,
            price=info.price,
            description=scrubber.scrub(description),
        )


def keep_priority(user_events: pd.DataFrame, keep_recent: int = 5) -> list[int]:
    """Row positions from most to least worth keeping (see module docstring)."""
    n = len(user_events)
    weights = user_events["behavior"].map(DEFAULT_BEHAVIOR_WEIGHTS).fillna(DEFAULT_UNKNOWN_WEIGHT).abs()
    is_rating = (user_events["behavior"] == "rating").to_numpy()
    signal = weights.to_numpy(dtype=float, copy=True)
    signal[is_rating] = 0.7  # a rating is explicit feedback whatever its value
    has_text = user_events["text"].notna().to_numpy()
    signal = signal + 0.2 * has_text  # searches and reviews say what the user wants in words
    position = np.arange(n)
    recent = position >= n - keep_recent
    # lexsort sorts by the last key first: recent block, then signal, then newest.
    order = np.lexsort((-position, -signal, ~recent))
    return [int(i) for i in order]


MAX_TITLE_CHARS = 200
MAX_TEXT_CHARS = 500
"""One huge field must not push a whole history out of the prompt budget."""


def _clip(text: str | None, limit: int) -> str | None:
    return text if text is None or len(text) <= limit else text[: limit - 1] + "…"


def history_lines(user_events: pd.DataFrame, catalog: Catalog, scrubber: Scrubber) -> list[HistoryLine]:
    """All of a user's events as prompt lines, numbered 1..n in time order."""
    dates: list[str] = user_events["timestamp"].dt.strftime("%Y-%m-%d").tolist()
    items: list[str] = user_events["item_id"].astype(str).tolist()
    behaviors: list[str] = user_events["behavior"].astype(str).tolist()
    values: list[float] = user_events["value"].astype(float).tolist()
    texts: list[object] = user_events["text"].tolist()
    lines: list[HistoryLine] = []
    for n, (date, item_id, behavior, value, text) in enumerate(
        zip(dates, items, behaviors, values, texts, strict=True), start=1
    ):
        info = catalog.get(item_id) if item_id else None
        lines.append(
            HistoryLine(
                n=n,
                date=date,
                behavior=behavior,
                item_id=item_id or None,
                title=_clip(info.title, MAX_TITLE_CHARS) if info else None,
                category=info.category if info else None,
                price=info.price if info else None,
                value=None if value != value else value,  # NaN -> None
                text=_clip(scrubber.scrub(text), MAX_TEXT_CHARS) if isinstance(text, str) else None,
            )
        )
    return lines


def fit_history(
    user_events: pd.DataFrame,
    lines: list[HistoryLine],
    measure: Callable[[list[HistoryLine]], int],
    budget: int,
    max_events: int,
) -> list[HistoryLine]:
    """The subset of ``lines`` whose prompt (as counted by ``measure``) fits ``budget`` tokens."""
    priority = keep_priority(user_events)[:max_events]
    kept = fit_to_budget(len(priority), priority, lambda rows: measure([lines[i] for i in rows]), budget)
    return [lines[i] for i in kept]


def consumed_items(user_events: pd.DataFrame) -> list[str]:
    """Distinct item ids the user interacted with, oldest first (searches excluded)."""
    items = user_events.loc[user_events["item_id"] != "", "item_id"]
    return list(dict.fromkeys(items.tolist()))

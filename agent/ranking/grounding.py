"""Ground a model's ranking in the candidate set it was shown.

``ground(answer, candidates, history)`` accepts a parsed structured reply (any object with
``.items`` whose elements carry ``.item_id``), a sequence of ids, titles or dicts, or raw
model text (numbered/bulleted lists, prose, Markdown, JSON in or out of code fences).
Whatever the input, the returned ``GroundedRanking`` promises:

* ``item_ids`` ⊆ ``candidates``: an id that was not offered is never returned; mentions
  matching no candidate go to ``invented``, never to a similar-looking candidate;
* no duplicates (repeats go to ``duplicates``);
* no history items (ids in ``history`` or ``history_titles`` go to ``history_hits``);
* order = order of first valid mention.

Raw text is read one line per list item. A line pairing a history item with a candidate
("1. Cliffhanger -> Die Hard 2", "Because you watched X: Y") counts as the candidate; text
after the title and a " - ", ":", "—" or "->" is its reason. Which side of a paired line
holds the consumed item is read from the whole answer: when most paired lines put a
history item (or an unknown title) on the left, every paired line's pick is its right-hand
candidate, also where the left-hand title is a candidate too ("4. Heat - Casino" in a list
of "<watched> - <pick>" lines is Casino). Ids are recognised as whole tokens equal to a
known id; plain numbers only in an explicit "[42]" / "id: 42" context.

Titles are compared normalised (accents, case, years, punctuation, moved articles:
"Shadow, The (1994)" == "The Shadow"; see :mod:`agent.ranking.titles`): exactly, then as a
shortened form that a single item has, then with rapidfuzz ``fuzz.ratio >= FUZZY_CUTOFF``
on titles of at least ``MIN_FUZZY_CHARS`` characters, the same numbers (Arabic or Roman:
"Die Hard 7" is not "Die Hard 2") and no substituted word ("Pokemon Moon" is not "Pokemon
Sun").
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any

from pydantic import BaseModel
from rapidfuzz import fuzz, process

from agent.ranking.titles import (
    ARTICLES,
    BARE_YEAR_RE,
    WORD_RE,
    YEAR_RE,
    Words,
    core_words,
    fold,
    same_words,
    title_keys,
    title_numbers,
    title_words,
)

FUZZY_CUTOFF = 90.0
"""Minimum ``fuzz.ratio`` of two normalised titles (about one typo per 10 characters)."""
MIN_FUZZY_CHARS = 8
"""Shorter titles must match exactly ("Shadows" is not "Shadow")."""

_ID_KEYS = ("item_id", "id", "asin", "movie_id", "product_id")
_TITLE_KEYS = ("title", "name", "item", "movie", "product")
_REASON_KEYS = ("reason", "explanation", "why", "rationale", "justification")
_LIST_KEYS = ("items", "recommendations", "ranking", "ranked_items", "results", "item_ids", "ids", "titles")
_CONNECTORS = frozenset({"of", "the", "and", "in", "on", "at", "to", "for", "from", "with", "vs", "or", "a"})
_CONTEXT_RE = re.compile(
    r"(?:\b(?:watched|liked|enjoyed|loved|bought|purchased|viewed|read|played|rated|saw|seen|owned|tried|"
    r"reviewed)|\bsimilar to|\bfans of|\bbased on)(?:\s+(?:the|an?))?\s*$"
)
_CONTEXT_LEAD = (
    r"^\W*(?:because|since|as you|if you|given|based on|for fans of|fans of|similar to|previously|"
    r"you (?:watched|liked|enjoyed|loved|bought|purchased|viewed|read|played|rated))\b"
)
_LABEL = (
    r"^(?:[\W_]*(?:\d+|"
    r"recommendations?|recommended|picks?|top|my|our|title|item|id|name|movie|film|product|suggestion|next|"
    r"rank(?:ed)?|no|number|choice|option|candidate|answer|book|song|game)(?![^\W_]))+[\W_]*$"
)
_CONTEXT_LEAD_RE = re.compile(_CONTEXT_LEAD, re.I)  # "Because you watched X", "similar to X"
_LABEL_RE = re.compile(_LABEL, re.I)  # "Top pick", "#1", "Recommendation 2"
_LEAD_RE = re.compile(f"{_CONTEXT_LEAD}|{_LABEL}", re.I)
_FENCE_LINE_RE = re.compile(r"^\s*(?:```|~~~)")
_FENCED_RE = re.compile(r"```[\w-]*[ \t]*\n?(.*?)(?:```|$)", re.S)
_TABLE_RULE_RE = re.compile(r"^(?=.*---)(?=.*\|)[\s:|-]+$")
_PREFIX_RE = re.compile(r"^\s*(?:>\s*)*(?:#{1,6}\s+)?")
_MARKER_RE = re.compile(r"^(?:[-*•+▪●◦‣]\s+|\(?#?\d{1,3}[.)](?=\s|$)\s*|#\d{1,3}\b[.:)]?\s*)")
_EMPH_RE = re.compile(r"\*\*|__|~~|`|(?<!\w)[*_](?=\S)|(?<=\S)[*_](?!\w)")
_EMPH_CHARS = frozenset("*_~`")
_LINK_RE = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_SEP_RE = re.compile(r"\s+[-–]+\s+|\s*(?:—|->|→|=>|⇒)\s*|:\s+|\s+\|\s+")
_ID_TOKEN_RE = re.compile(r"[^\s,;()\[\]{}<>\"'`*|]+")
_ID_CONTEXT_RE = re.compile(r"(?:(?:\b|_)(?:id|item)[\"']?\s*[:=#]?\s*[\"']?|#)$", re.I)
_QUOTES = " \t\"'“”‘’«»`.,;[]"

Ids = tuple[str, ...]
Hit = tuple[int, Ids, bool]  # offset, ids, introduced as context ("you watched X")
_Mention = tuple[Ids | None, str, str | None]  # ids (None: invented), text, reason


@dataclass(frozen=True)
class _Pair:
    """A line that pairs two items, "<left> <separator> <right>[ <separator> reason]".

    Answers often pair a consumed item with a recommendation on each line ("1. Cliffhanger -
    Die Hard 2", "Because you watched X: Y", "| Cliffhanger | Die Hard 2 |") or the other way
    round ("Die Hard 2 - because you liked Cliffhanger"). Which side is the consumed one is
    read from the whole answer (``_Grounder.pattern``).
    """

    left: Ids | None
    """The left item's ids; None for a title-like text that names no known item."""
    left_context: bool
    """The left item is introduced as consumed: "Because you watched X"."""
    right: Ids | None
    """The right item's ids; None if the right-hand piece names no known item."""
    right_context: bool
    """The right item is introduced as consumed: "Y - because you watched X"."""
    right_text: str
    reason: str | None
    """Text after the right-hand item."""
    arrow: bool
    """The separator between the two is an arrow ("->", "→", "=>", "⇒")."""


@dataclass(frozen=True)
class GroundedRanking:
    """A ranking reduced to valid candidates, and what was dropped on the way.

    ``invented``, ``duplicates`` and ``history_hits`` hold one entry per offending mention;
    ``missing`` the candidate ids (in candidate order) that were never mentioned.
    """

    item_ids: list[str]
    reasons: dict[str, str]
    invented: list[str]
    duplicates: list[str]
    history_hits: list[str]
    missing: list[str]
    n_mentions: int
    n_candidates: int

    @property
    def rates(self) -> dict[str, float]:
        """Error rates per mention (0.0 without mentions); ``missing_rate`` per candidate."""
        n, c = self.n_mentions or 1, self.n_candidates or 1  # nothing to count: 0 / 1
        return {
            "invented_rate": len(self.invented) / n,
            "duplicate_rate": len(self.duplicates) / n,
            "history_rate": len(self.history_hits) / n,
            "missing_rate": len(self.missing) / c,
        }


def ground(
    answer: Any,
    candidates: Mapping[str, str],
    history: Collection[str] = (),
    history_titles: Mapping[str, str] | None = None,
) -> GroundedRanking:
    """Map ``answer`` onto ``candidates`` (id -> title); see the module docstring.

    ``history`` holds ids the user already consumed; ``history_titles`` (id -> title) also
    recognises them by title in raw text. Structured ids match exactly, then ignoring case,
    then as a title (for servers that put titles in ``item_id``).
    """
    g = _Grounder(candidates, history, history_titles or {})
    if isinstance(answer, str):
        mentions = g.text(answer)
    elif isinstance(answer, Mapping):
        mentions = g.elements(_elements_of(answer) or [])
    elif hasattr(answer, "items") and not callable(answer.items):
        mentions = g.elements(list(answer.items or []))
    elif isinstance(answer, Iterable):
        mentions = g.elements(list(answer))
    else:
        raise TypeError(f"cannot ground an answer of type {type(answer).__name__}")
    item_ids: list[str] = []
    reasons: dict[str, str] = {}
    invented: list[str] = []
    duplicates: list[str] = []
    history_hits: list[str] = []
    for ids, text, reason in mentions:
        ok = [i for i in ids or () if i in g.ok]
        fresh = [i for i in ok if i not in item_ids]
        if fresh:
            item_ids.append(fresh[0])
            if reason := _clean_reason(reason):
                reasons[fresh[0]] = reason
        elif ok:
            duplicates.append(ok[0])
        elif ids:
            history_hits.append(ids[0])
        else:
            invented.append(text)
    mentioned = {*item_ids, *history_hits}
    missing = [c for c in candidates if c not in mentioned]
    n = len(mentions)
    return GroundedRanking(item_ids, reasons, invented, duplicates, history_hits, missing, n, len(candidates))


class _Grounder:
    """Indexes for one call: known ids and every normalised spelling of every title.

    The title indexes are built on first use: a structured reply whose ids all match
    exactly never needs them.
    """

    def __init__(self, candidates: Mapping[str, str], history: Collection[str], titles: Mapping[str, str]):
        self.hist = set(history) | set(titles)
        self.ok = {c for c in candidates if c not in self.hist}
        self.known = set(candidates) | self.hist
        self._candidates, self._titles = candidates, titles
        self._spans: dict[tuple[str, int], tuple[Ids, int] | None] = {}  # (line, piece) -> span
        self._splits: dict[str, tuple[list[tuple[int, int]], list[Words]]] = {}

    @cached_property
    def lower(self) -> dict[str, list[str]]:
        lower: dict[str, list[str]] = {}
        for i in self.known:
            lower.setdefault(i.lower(), []).append(i)
        return lower

    @cached_property
    def index(self) -> _TitleIndex:
        """Title spellings -> ids, built on first use."""
        return _TitleIndex(self._candidates, self._titles)

    def resolve_id(self, token: str) -> Ids | None:
        token = token.strip()
        same = [token] if token in self.known else self.lower.get(token.lower(), [])
        return (same[0],) if len(same) == 1 else None

    def _prefer(self, ids: list[str], year: str | None) -> Ids:
        """Items sharing a title: those of the stated year, candidates before history."""
        same_year = [i for i in ids if year is not None and self.index.year.get(i) == year]
        return tuple(sorted(same_year or ids, key=lambda i: i in self.hist))

    def exact_title(self, toks: list[str], year: str | None) -> Ids | None:
        ids = (
            self.index.exact.get(" ".join(toks)) or self.index.joined.get("".join(core_words(toks)))
            if toks
            else None
        )
        return self._prefer(ids, year) if ids else None

    def approx_title(self, toks: list[str], year: str | None) -> Ids | None:
        core = core_words(toks)
        key = " ".join(core)
        if key in self.index.short:
            return (self.index.short[key],)
        if len(key) < MIN_FUZZY_CHARS:
            return None
        for alias, _, _ in process.extract(
            key, self.index.keys, scorer=fuzz.ratio, score_cutoff=FUZZY_CUTOFF, limit=4
        ):
            if title_numbers(alias.split()) == title_numbers(core) and same_words(core, alias.split()):
                return self._prefer(self.index.core[alias], year)
        return None

    def title(self, text: str) -> Ids | None:
        words = title_words(text)
        return self.exact_title(*words) or self.approx_title(*words)

    def split(self, body: str) -> tuple[list[tuple[int, int]], list[Words]]:
        """The line's pieces between separators and their title words (remembered)."""
        if body not in self._splits:
            bounds = _pieces(body)
            self._splits[body] = bounds, [title_words(body[a:b]) for a, b in bounds]
        return self._splits[body]

    def span(
        self, body: str, bounds: list[tuple[int, int]], words: list[Words], i: int
    ) -> tuple[Ids, int] | None:
        """Best match for the pieces from ``i`` on (longest span first): ids and last piece.

        Remembered per line and piece: a paired line is read twice (``pair``, ``line``)."""
        key = (body, i)
        if key not in self._spans:
            self._spans[key] = self._span(body, bounds, words, i)
        return self._spans[key]

    def _span(
        self, body: str, bounds: list[tuple[int, int]], words: list[Words], i: int
    ) -> tuple[Ids, int] | None:
        spans = []
        for j in range(min(len(bounds), i + 4) - 1, i - 1, -1):
            year = next((y for _, y in words[i : j + 1] if y), None)
            spans.append((j, [t for w, _ in words[i : j + 1] for t in w], year))
        for j, toks, year in spans:
            text = body[bounds[i][0] : bounds[j][1]].strip(_QUOTES)
            whole = _distinctive(text) or (i == 0 and j == len(bounds) - 1)  # "| 2 | Heat |": 2 is a rank
            if ids := (self.resolve_id(text) if text and whole else None) or self.exact_title(toks, year):
                return ids, j
        if found := self.id_tokens(body[bounds[i][0] : bounds[i][1]]):
            return found[0][1], i
        return next(((ids, j) for j, toks, year in spans if (ids := self.approx_title(toks, year))), None)

    def id_tokens(self, text: str) -> list[Hit]:
        out = []
        for m in _ID_TOKEN_RE.finditer(text):
            ids = self.resolve_id(token) if (token := m.group().strip(".:!?#")) else None
            bracketed = text[m.start() - 1 : m.start()] == "[" and text[m.end() : m.end() + 1] == "]"
            if ids and (_distinctive(token) or bracketed or _ID_CONTEXT_RE.search(text[: m.start()])):
                out.append((m.start(), ids, bool(_CONTEXT_RE.search(text[: m.start()].lower()))))
        return out

    def scan(self, text: str) -> list[Hit]:
        """Ids and whole titles inside free text, in order."""
        folded = fold(text)
        t = YEAR_RE.sub(lambda m: ";" + " " * (len(m.group()) - 1), folded)  # a year ends a title
        ms = list(WORD_RE.finditer(t))
        low = [m.group().lower() for m in ms]
        hits, k = self.id_tokens(text), 0
        while k < len(ms):
            for toks, ids in self.index.first.get(low[k], ()):
                if tuple(low[k : k + len(toks)]) == toks and self._bounded(t, ms, low, k, len(toks)):
                    end = ms[k + len(toks) - 1].end()
                    year = YEAR_RE.match(folded, end + len(t[end:]) - len(t[end:].lstrip()))
                    ids = self._prefer(list(ids), year.group(1) if year else None)
                    hits.append((ms[k].start(), ids, bool(_CONTEXT_RE.search(" ".join(low[:k])))))
                    k += len(toks) - 1
                    break
            k += 1
        return sorted(hits, key=lambda h: h[0])

    def _bounded(self, t: str, ms: list[re.Match[str]], low: list[str], k: int, n: int) -> bool:
        """Is the hit a whole title, not part of a longer one ("The Shadow Strikes")?"""
        if n == 1 and not (ms[k].group()[0].isupper() or ms[k].group()[0].isdecimal()):
            return False

        def adjacent(a: int) -> bool:  # words a and a+1 separated by spaces only
            return a + 1 < len(ms) and not t[ms[a].end() : ms[a + 1].start()].strip()

        def titled(a: int) -> bool:  # a capitalised word that does not start another title
            return ms[a].group()[0].isupper() and ms[a].group() != "I" and low[a] not in self.index.first

        a = last = k + n - 1
        if adjacent(last):
            nxt = low[last + 1]
            if (title_numbers([nxt]) and not BARE_YEAR_RE.match(nxt)) or titled(last + 1):
                return False
            while adjacent(a) and low[a + 1] in _CONNECTORS:  # "Shadow of the Vampire"
                a += 1
            if a > last and adjacent(a) and titled(a + 1):
                return False
        if k > 0 and adjacent(k - 1) and titled(k - 1) and low[k - 1] not in ARTICLES:
            return k == 1 or any(c in '.!?:;"“(' for c in t[ms[k - 2].end() : ms[k - 1].start()])
        return True

    def line(
        self, marked: bool, body: str, bare: bool, pair: _Pair | None = None, left: bool = False
    ) -> list[_Mention]:
        """Mentions in one line: one for a list item, any number for prose.

        ``pair`` is the line read as two paired items, ``left`` whether the answer puts the
        consumed item on the left (see ``pattern``): then the right-hand candidate is the pick,
        even where the left-hand title is a candidate too.
        """
        if not body:
            return []
        if pair is not None and (picked := self._paired_pick(pair, left)) is not None:
            return [picked]
        bounds, words = self.split(body)

        def rest(j: int) -> str | None:  # the reason after piece j
            return body[bounds[j + 1][0] :] if j + 1 < len(bounds) else None

        hist: _Mention | None = None
        i = start = 0  # pieces before `start` are explained by a history match
        while i < len(bounds):
            if hit := self.span(body, bounds, words, i):
                ids, j = hit
                mention = (ids, body[bounds[i][0] : bounds[j][1]], rest(j))
                if any(x in self.ok for x in ids):
                    return [mention]
                hist, i, start = hist or mention, j + 1, j + 1
            elif _LEAD_RE.match(body[bounds[i][0] : bounds[i][1]]):
                i += 1
            else:
                break
        stuck = min(i, len(bounds) - 1)
        end = bounds[stuck][1] if marked else len(body)
        hits = [h for h in self.scan(body[bounds[start][0] : end]) if not h[2]] if start < len(bounds) else []
        cands = [h for h in hits if any(x in self.ok for x in h[1])]
        head = body[bounds[i][0] : bounds[i][1]].strip(_QUOTES + "*_") if i < len(bounds) else body
        if cands and marked:
            return [(cands[0][1], body, rest(stuck))]
        if (
            hist
            and 0 < i < len(bounds)
            and not cands
            and any(c in body[bounds[i - 1][1] : bounds[i][0]] for c in ">→⇒")
        ):
            return [(None, head, None)]  # "Cliffhanger -> <an invented title>"
        if hist and not cands:
            return [hist]
        if hits:  # prose may name several items
            return list(
                {h[1]: (h[1], body, None) for h in (cands or hits)[: None if not marked else 1]}.values()
            )
        return [(None, head or body, None)] if marked or (bare and _title_like(body)) else []

    def pair(self, body: str) -> _Pair | None:
        """``body`` read as "<item> <separator> <item>[ <separator> reason]", else None.

        Labels before the first item ("Top pick:") are skipped. The left item is a known
        title or id, one named after "because you watched" and the like, or an unknown
        title-like text; the right one is a known item, maybe introduced the same way.
        """
        bounds, words = self.split(body)
        if len(bounds) < 2:
            return None
        i = 0
        while i < len(bounds) - 1 and _LABEL_RE.match(body[bounds[i][0] : bounds[i][1]]):
            i += 1
        left = self._side(body, bounds, words, i)
        if left is None or i + 1 >= len(bounds):
            return None
        left_ids, left_context, j = left
        if left_ids is None and not _title_like(body[bounds[i][0] : bounds[i][1]]):
            return None
        if j + 1 >= len(bounds):
            return None
        right = self._side(body, bounds, words, j + 1)
        right_ids, right_context, end = right if right is not None else (None, False, j + 1)
        a = bounds[j + 1][0]
        return _Pair(
            left=left_ids,
            left_context=left_context,
            right=right_ids,
            right_context=right_context,
            right_text=body[a : bounds[end][1]].strip(_QUOTES + "*_"),
            reason=body[bounds[end + 1][0] :] if end + 1 < len(bounds) else None,
            arrow=any(c in body[bounds[j][1] : a] for c in ">→⇒"),
        )

    def _side(
        self, body: str, bounds: list[tuple[int, int]], words: list[Words], i: int
    ) -> tuple[Ids | None, bool, int] | None:
        """The item starting at piece ``i``: (ids or None, introduced as consumed, last piece).

        None for a piece that introduces no item it names ("Because it is fun").
        """
        piece = body[bounds[i][0] : bounds[i][1]]
        if _CONTEXT_LEAD_RE.match(piece):  # before ``span``: its fuzzy search is the slow part
            hits = [h for h in self.scan(piece) if h[2]]
            return (hits[0][1], True, i) if hits else None
        if hit := self.span(body, bounds, words, i):
            return hit[0], False, hit[1]
        hits = self.scan(piece)  # a title followed by a remark: "Casino (more De Niro crime)"
        if hits and not hits[0][2] and not piece[: hits[0][0]].strip(_QUOTES + "*_"):
            return hits[0][1], False, i
        return None, False, i

    def _consumed(self, ids: Ids | None) -> bool:
        return ids is not None and any(x in self.hist for x in ids)

    def _candidate(self, ids: Ids | None) -> bool:
        return ids is not None and any(x in self.ok for x in ids)

    def pattern(self, pairs: list[_Pair | None]) -> bool:
        """Does the answer put the consumed item on the left of its paired lines?

        A paired line (one whose right-hand piece names a known item) votes "left" when its
        left item is consumed (a history title, or introduced as one), or is an unknown
        title next to a candidate; it votes "right" when its right item is introduced as
        consumed or is a history item that is no candidate. "Left" needs more left than
        right votes and a majority of the paired lines.
        """
        paired = [p for p in pairs if p is not None and p.right is not None]
        votes = {True: 0, False: 0}
        for p in paired:
            left = (
                p.left_context
                or self._consumed(p.left)
                or (p.left is None and self._candidate(p.right) and not p.right_context)
            )
            right = p.right_context or (self._consumed(p.right) and not self._candidate(p.right))
            if left != right:
                votes[left] += 1
        return votes[True] > votes[False] and 2 * votes[True] > len(paired)

    def _paired_pick(self, pair: _Pair, left: bool) -> _Mention | None:
        """The line's mention when its pairing decides it, else None (the usual reading).

        The right-hand candidate is the pick when the left item is consumed, or when the
        answer as a whole puts consumed items on the left; with that pattern an arrow to a
        title that is no candidate is an invented pick ("Heat -> Die Hard 7").
        """
        if pair.right_context:
            return None
        if self._candidate(pair.right):
            if left or pair.left_context or self._consumed(pair.left):
                return pair.right, pair.right_text, pair.reason
            return None
        if left and pair.right is None and pair.arrow and _title_like(pair.right_text):
            return None, pair.right_text, None
        return None

    def text(self, text: str) -> list[_Mention]:
        elements = _json_in(text)
        if elements is not None:
            return self.elements(elements)
        raw = [ln for ln in text.splitlines() if not _FENCE_LINE_RE.match(ln)]
        rule = [bool(_TABLE_RULE_RE.match(ln)) for ln in raw] + [False]  # skip a table's rule and header
        lines = [_clean(ln) for k, ln in enumerate(raw) if not rule[k] and not rule[k + 1]]
        bare = not any(marked for marked, _ in lines)
        pairs = [self.pair(body) if marked or bare else None for marked, body in lines]
        left = self.pattern(pairs)
        return [
            m
            for (marked, body), pair in zip(lines, pairs, strict=True)
            for m in self.line(marked, body, bare, pair, left)
        ]

    def elements(self, elements: list[Any]) -> list[_Mention]:
        out: list[_Mention] = []
        texts = {
            k: _clean(str(el))[1]
            for k, el in enumerate(elements)
            if isinstance(el, str | int) and not isinstance(el, bool)
        }
        pairs = {k: self.pair(body) for k, body in texts.items()}
        left = self.pattern(list(pairs.values()))
        for k, el in enumerate(elements):
            if k in texts:
                out += self.line(True, texts[k], True, pairs[k], left)
            elif el is not None and not isinstance(el, bool):
                get = el.get if isinstance(el, Mapping) else _attribute_getter(el)
                idv, title, reason = (_first(get, keys) for keys in (_ID_KEYS, _TITLE_KEYS, _REASON_KEYS))
                ids = (self.resolve_id(idv) or self.title(idv)) if idv else None
                ids = ids or (self.title(title) if title else None)
                out.append((ids, idv or title or repr(el)[:80], reason))
        return out


class _TitleIndex:
    """Every normalised spelling of every candidate (and history) title -> ids."""

    def __init__(self, candidates: Mapping[str, str], titles: Mapping[str, str]) -> None:
        self.exact: dict[str, list[str]] = {}  # spelling -> ids
        self.core: dict[str, list[str]] = {}  # spelling without English articles -> ids (fuzzy keys)
        self.joined: dict[str, list[str]] = {}  # core without spaces: "Spiderman" == "Spider-Man"
        self.year: dict[str, str | None] = {}
        shortened: dict[str, set[str]] = {}
        for item_id, title in [
            *candidates.items(),
            *((i, t) for i, t in titles.items() if i not in candidates),
        ]:
            if not isinstance(title, str) or not title.strip():
                continue
            self.year[item_id], spellings, short = title_keys(title)
            for keys in spellings:
                for index, key in zip((self.exact, self.core, self.joined), keys, strict=True):
                    if key and item_id not in index.setdefault(key, []):
                        index[key].append(item_id)
            for key in short:
                shortened.setdefault(key, set()).add(item_id)
        self.short = {k: v.pop() for k, v in shortened.items() if len(v) == 1}
        first: dict[str, list[tuple[tuple[str, ...], Ids]]] = {}
        for key, key_ids in self.exact.items():
            first.setdefault(key.split()[0], []).append((tuple(key.split()), tuple(key_ids)))
        self.first = {k: sorted(v, key=lambda e: -len(e[0])) for k, v in first.items()}
        self.keys = [k for k in self.core if len(k) >= MIN_FUZZY_CHARS]


def _distinctive(token: str) -> bool:
    """Can this id be recognised anywhere in prose? Not plain numbers or words."""
    digits = sum(c.isdecimal() for c in token)
    return (0 < digits < len(token)) or digits >= 6 or "_" in token


def _clean(line: str) -> tuple[bool, str]:
    """Strip list markers and Markdown: (was a list item or table row, remaining text)."""
    s = _PREFIX_RE.sub("", line, count=1)
    marked = s.startswith("|")
    s = s.strip("| \t") if marked else s
    s = _LINK_RE.sub(r"\1", s) if "](" in s else s
    for _ in range(2):  # "- 1. Heat", "**1.** Heat"
        if (m := _MARKER_RE.match(s)) and m.end():
            marked, s = True, s[m.end() :]
        s = (_EMPH_RE.sub("", s) if _EMPH_CHARS.intersection(s) else s).strip()
    return marked, s


def _pieces(body: str) -> list[tuple[int, int]]:
    """Bounds of the parts of a line between separators (" - ", ": ", "->", " | ")."""
    bounds, pos = [], 0
    for m in _SEP_RE.finditer(body):
        if m.start() > pos:
            bounds.append((pos, m.start()))
        pos = m.end()
    return [*bounds, (pos, len(body))] if pos < len(body) or not bounds else bounds


def _title_like(body: str) -> bool:
    toks = WORD_RE.findall(body)
    if not toks or len(toks) > 8 or body.rstrip()[-1] in ".:!?":
        return False
    longer = [t for t in toks if len(t) >= 4]
    return sum(t[0].isupper() or t[0].isdecimal() for t in longer) * 2 >= len(longer)


def _clean_reason(reason: str | None) -> str | None:
    if not isinstance(reason, str):
        return None
    return reason.strip().lstrip(" \t\"'“”‘’«»`*_-–—:|>→,;").rstrip(" \t\"'“”‘’«»`*_|,;").strip() or None


def _attribute_getter(element: Any) -> Callable[[str, None], Any]:
    """``getattr(element, key, default)`` as a function; for a pydantic model, names it lacks
    are answered from its fields without pydantic's ``__getattr__`` (slow when it fails)."""
    if not isinstance(element, BaseModel):
        return partial(getattr, element)
    fields, extra = element.__dict__, element.__pydantic_extra__ or {}

    def get(key: str, default: None) -> Any:
        if key in fields:
            return fields[key]
        if key in extra:
            return extra[key]
        return getattr(element, key, default) if _class_has(type(element), key) else default

    return get


_class_attributes: weakref.WeakKeyDictionary[type, dict[str, bool]] = weakref.WeakKeyDictionary()


def _class_has(cls: type, name: str) -> bool:
    """``hasattr(cls, name)``, remembered per class (a failing one on a pydantic model class
    goes through its metaclass' ``__getattr__``, slowly; reply models are made per request,
    hence weak keys)."""
    known = _class_attributes.get(cls)
    if known is None:
        known = _class_attributes[cls] = {}
    has = known.get(name)
    if has is None:
        has = known[name] = hasattr(cls, name)
    return has


def _first(get: Callable[[str, None], Any], keys: tuple[str, ...]) -> str | None:
    values = (get(key, None) for key in keys)
    ok = (str(v).strip() for v in values if isinstance(v, str | int) and not isinstance(v, bool))
    return next((v for v in ok if v), None)


def _elements_of(data: Any) -> list[Any] | None:
    if isinstance(data, list):
        return data
    if isinstance(data, Mapping):
        named = [data[k] for k in _LIST_KEYS if isinstance(data.get(k), list)]
        lists = named or [v for v in data.values() if isinstance(v, list)]
        if named or len(lists) == 1:
            return list(lists[0])
        if any(k in data for k in _ID_KEYS + _TITLE_KEYS):
            return [data]
    return None


def _json_in(text: str) -> list[Any] | None:
    """Elements of a JSON answer (fenced, bare, or embedded in prose), else None."""
    tries = [m.group(1) for m in _FENCED_RE.finditer(text)] if "```" in text else []
    starts = [p for p in (text.find("["), text.find("{")) if p >= 0]
    if starts and '"' in text:  # embedded JSON holds strings: "[1995]" in prose is no answer
        tries += [text, text[min(starts) : max(text.rfind("]"), text.rfind("}")) + 1]]
    for attempt in (a.strip() for a in [*tries, text]):
        if attempt[:1] in ("[", "{"):
            try:
                if (elements := _elements_of(json.loads(attempt))) is not None:
                    return elements
            except ValueError:
                continue
    return None

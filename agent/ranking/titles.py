"""How titles are normalised and compared: the title side of :mod:`agent.ranking.grounding`.

Normalised words are lower case, without accents, punctuation, notes in parentheses or a
year ("(1994)", "[2001-2003]", or a trailing bare year after other words), which is
returned apart. :func:`title_keys` lists every spelling a catalog title is known by
(article moved back or dropped, MovieLens alternate titles) and its shortened forms;
:func:`same_words` and :func:`title_numbers` tell a misspelling from a different item
("Pokemon Moon" is not "Pokemon Sun", "Die Hard 7" is not "Die Hard 2"). Everything here is
a pure function of its arguments.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter
from functools import lru_cache

from rapidfuzz import fuzz
from rapidfuzz.distance import Levenshtein

MIN_PREFIX_WORDS = 3
"""A unique word prefix this long names an item ("Anker PowerCore 10000" for a long title)."""
_ROMAN = {"ii": 2, "iii": 3, "iv": 4, "vi": 6, "vii": 7, "viii": 8, "ix": 9, "xi": 11, "xii": 12, "xiii": 13}
ARTICLES = frozenset({"the", "a", "an"})
"""English articles, dropped at either end of a title's words ("the omen", "omen the": "omen")."""
_SMALL_WORDS = ARTICLES | {"and", "of"}
YEAR_RE = re.compile(r"[(\[]\s*((?:1[89]|20)\d\d)(?:\s*[-–]\s*(?:\d{2,4})?)?\s*[)\]]")
"""A year in brackets ("(1994)", "[2001-2003]"); group 1 is the (first) year."""
BARE_YEAR_RE = re.compile(r"^(?:1[89]|20)\d\d$")
"""A whole word that is a year (1800-2099)."""
WORD_RE = re.compile(r"[^\W_]+")
"""A word: a run of letters or digits."""
_DIGITS_RE = re.compile(r"\d+")
_MOVED_RE = re.compile(r",\s*(the|an?|les|la|le|l'|il|el|das|die|der|los|las|lo|gli|i)\s*$", re.I)
_LEADING_ARTICLE_RE = re.compile(r"^(?:the|an?)\s+", re.I)
_PAREN_RE = re.compile(r"\(([^()]*)\)")
_AKA_RE = re.compile(r"^(?:a\.?k\.?a\.?|aka)\s+", re.I)
_HEAD_SEP_RE = re.compile(r"\s+[-–|]\s+|,\s+")

Words = tuple[list[str], str | None]  # normalised words, year


def fold(text: str) -> str:
    """``text`` without accents ("Amélie" -> "Amelie"); ASCII text is returned as is."""
    if text.isascii():
        return text
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def title_words(text: str) -> Words:
    """Normalised lower-case words (year, notes in parentheses and punctuation dropped), year."""
    text = fold(html.unescape(text) if "&" in text else text).replace("&", " and ")
    m = YEAR_RE.search(text)
    text = YEAR_RE.sub(" ", text) if m else text
    toks = WORD_RE.findall((_PAREN_RE.sub(" ", text) if "(" in text else text).lower())
    year = m.group(1) if m else None
    if len(toks) > 1 and BARE_YEAR_RE.match(toks[-1]):
        year = year or toks.pop()
    return toks, year


@lru_cache(maxsize=1 << 16)
def title_keys(title: str) -> tuple[str | None, tuple[tuple[str, str, str], ...], frozenset[str]]:
    """Year, (exact, core, joined) key of each spelling, and shortened keys of a title.

    Spellings: as given, article moved back or dropped, MovieLens alternate titles ("Seven
    (a.k.a. Se7en) (1995)"). Shortened: word prefixes of ``MIN_PREFIX_WORDS`` or more that
    leave 2+ words out, and the part before " - ", "|" or "," ("Pokemon Sun" for "Pokemon Sun
    - Nintendo 3DS"). Cached: a catalog's titles recur in every request.
    """
    m = YEAR_RE.search(title)
    t = YEAR_RE.sub(" ", title)
    forms = {_PAREN_RE.sub(" ", t)}
    for paren in _PAREN_RE.finditer(t) if m else ():
        if _AKA_RE.match(inner := paren.group(1).strip()) or len(inner.split()) > 1:
            forms.add(_AKA_RE.sub("", inner))
    spellings: list[tuple[str, str, str]] = []
    short: set[str] = set()
    for form in forms:
        form = " ".join(form.split()).strip(" ,")
        moved = _MOVED_RE.search(form)
        base = form[: moved.start()] if moved else _LEADING_ARTICLE_RE.sub("", form)
        for spelling in {form, base, f"{moved.group(1)} {base}" if moved else form}:
            core = core_words(toks := title_words(spelling)[0])
            spellings.append((" ".join(toks), " ".join(core), "".join(core)))
            short.update(" ".join(core[:n]) for n in range(MIN_PREFIX_WORDS, len(core) - 1))
    head = core_words(title_words(_HEAD_SEP_RE.split(t, maxsplit=1)[0])[0])
    if len(head) >= 2:
        short.add(" ".join(head))
    return (m.group(1) if m else None), tuple(spellings), frozenset(short)


def core_words(toks: list[str]) -> list[str]:
    """Words without a leading or trailing English article ("the omen", "omen the" -> "omen")."""
    start = 1 if len(toks) > 1 and toks[0] in ARTICLES else 0
    end = len(toks) - 1 if len(toks) - start > 1 and toks[-1] in ARTICLES else len(toks)
    return toks[start:end]


def title_numbers(toks: list[str]) -> list[int]:
    """Sorted numbers in the words: digit runs ("2k13" -> 2, 13) and Roman numerals."""
    return sorted(
        [int(d) for d in _DIGITS_RE.findall(" ".join(toks))] + [_ROMAN[t] for t in toks if t in _ROMAN]
    )


def same_words(a: list[str], b: list[str]) -> bool:
    """Does every word pair with an equal or misspelt one ("monkies" ~ "monkeys")?

    A misspelling is one edit, or indel similarity >= 85, between words of 4+ letters: not
    "sensitivity" ~ "sensibility", "moon" ~ "sun", "grumpier" ~ "grumpy", "x3" ~ "3".
    """
    diff = Counter(w for w in a if w not in _SMALL_WORDS)
    diff.subtract(w for w in b if w not in _SMALL_WORDS)
    extra_b = sorted((-diff).elements())
    for word in sorted(diff.elements()):
        near = [
            w
            for w in extra_b
            if min(len(w), len(word)) >= 4
            and (w + word).isalpha()
            and (Levenshtein.distance(w, word) <= 1 or fuzz.ratio(w, word) >= 85)
        ]
        if not near:
            return False
        extra_b.remove(near[0])
    return not extra_b

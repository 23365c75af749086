"""Keep personal data on the user's machine: scrub free text, pseudonymize ids that must leave.

Two tools, one concern (what identifies a person never reaches the API):

* ``Scrubber`` / ``scrub_text``: free text that users typed — search queries, reviews,
  comments, chat messages — is scrubbed of e-mail addresses, card and bank account numbers,
  phone numbers and street addresses before it is rendered into a prompt; each is replaced by
  a typed placeholder such as ``[email]``. Scrubbing is on by default
  (``AgentConfig.scrub_personal_data``); ``Scrubber(enabled=False)`` turns it off and
  ``Scrubber(kinds=...)`` picks the kinds. Numbers that matter for recommendations are kept:
  prices, sizes, years, dates, model numbers ("Pegasus 40", "RTX 4090") and ISBNs.
* ``Pseudonymizer``: prompts contain no user id at all. Where an id must leave the machine
  (the Batch API's ``custom_id``, request metadata such as ``safety_identifier``), send
  ``Pseudonymizer().pseudonym(user_id)`` — an HMAC-SHA256 of the id under a secret key —
  and map answers back locally with ``reveal``.

Values are scrubbed whole: an IBAN in any letter case ("fr14 2004 ..."), and an address with
the postcode and city that follow it ("Hauptstraße 5, 10115 Berlin", "350 5th Ave, New York,
NY 10118", "221B Baker Street, London NW1 6XE", "12 rue de Rivoli, 75001 Paris").

Known limits (see docs/SECURITY.md): addresses are recognised in US/UK ("221B Baker Street",
"350 5th Ave"), German ("Hauptstraße 5", "Berliner Straße 12", any case) and French ("12 rue
de Rivoli") forms only; phone numbers
need 9+ digits and either an international prefix, a trunk "0" or the North-American
3-3-4 shape; names and obfuscated forms ("jane at example dot com") are not detected.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agent.errors import ConfigError, DataError

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("email", "iban", "phone", "card", "address")
"""Every kind of personal data the scrubber knows, in the order it is applied."""

# -- e-mail -------------------------------------------------------------------------------
# Starts only where a token starts: otherwise every position of a long word is a new start
# and a text of n word characters without "@" costs n**2 steps.
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")

# -- card numbers: 13-19 digits, optionally grouped by spaces or dashes -------------------
_CARD = re.compile(r"(?<![\w-])(?:\d[ -]?){12,18}\d(?![\w-])")
_ISBN_BEFORE = re.compile(r"ISBN(?:-1[03])?:?\s*$", re.I)

# -- IBAN: country, check digits, 11-30 alphanumerics (validated with mod 97) --------------
# Any letter case: people type "fr14 2004 ..." too; the mod-97 check keeps look-alikes out.
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b", re.I)

# -- phone numbers: a candidate shape, then _is_phone decides ----------------------------
_PHONE = re.compile(
    r"(?<![\w+./-])"
    r"(?:(?:\+|00)\d{1,3}[ .-]?)?"  # country code
    r"(?:\(\d{1,5}\)[ .-]?)?"  # (area code) or the German/UK "(0)" trunk
    r"\d{1,14}(?:[ .-]\d{1,8}){0,6}"
    r"(?![\w/-]|[.,]\d)"
)
_NANP = re.compile(r"(?:\+?1[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}")
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")
MIN_PHONE_DIGITS = 9
MAX_PHONE_DIGITS = 15  # E.164

# -- street addresses -------------------------------------------------------------------
# Street types that rarely name anything else; the ambiguous ones ("Road Running Shoe", "USB
# Drive", "Place Setting") must end the street line: a comma, period, line end or a unit follows.
_STREET_TYPES = "Street|St|Avenue|Ave|Boulevard|Blvd|Lane|Ln|Terrace|Crescent|Parkway|Pkwy|Mews"
_AMBIGUOUS_STREET_TYPES = "Road|Drive|Court|Way|Place|Close|Highway|Loop"
_AMBIGUOUS_ABBREVIATIONS = "Rd|Dr|Ct|Pl|Hwy"  # "Dr." and "Pl." also precede names: no sentence end
_WORD = r"(?:[A-Z][a-z][\w'’.-]*|[A-Z]\.?|\d{1,3}(?:st|nd|rd|th))"
_DIRECTION = r"(?:\s+(?:N|S|E|W|NE|NW|SE|SW)\b)?"
_LINE_END = r"\s*(?:$|[,;:()\n]|\s(?:Apt|Suite|Unit|Flat|#))"
# What may follow a street line and belongs to the same address: a postcode and city.
_CITY = r"[A-ZÄÖÜÉÈa-zäöüéè][\w'’.-]*(?:[ -][A-ZÄÖÜÉÈ][\w'’.-]*){0,2}"
_EU_TAIL = rf"(?:,?\s*(?:[A-Z]{{1,2}}-)?\d{{4,5}}\s+{_CITY})"  # "10115 Berlin", "D-80331 München"
_US_TAIL = r"(?:(?:,\s*[A-Z][\w.'’-]*(?:\s+[A-Z][\w.'’-]*){0,2})?,\s*[A-Z]{2}\s+\d{5}(?:-\d{4})?\b)"
_UK_TAIL = r"(?:(?:,\s*[A-Z][\w'’-]*(?:\s+[A-Z][\w'’-]*){0,2})?,?\s+[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}\b)"
_US_UK_ADDRESS = re.compile(
    rf"\b(?P<number>\d{{1,5}}[A-Za-z]?),?\s+(?P<words>(?:{_WORD}\s+){{1,4}})(?:"
    rf"(?:{_STREET_TYPES})\b\.?{_DIRECTION}"
    rf"|(?:{_AMBIGUOUS_STREET_TYPES})\b{_DIRECTION}(?=\.(?!\w)|{_LINE_END})"
    rf"|(?:{_AMBIGUOUS_ABBREVIATIONS})\b\.?{_DIRECTION}(?={_LINE_END}))"
    rf"(?:{_US_TAIL}|{_UK_TAIL}|{_EU_TAIL})?"
)
# Lower-case street lines as people type them in reviews ("ship to 12 baker street"); only
# with street types that do not also name products ("2 pack usb drive", "4 piece place set").
_LOWER_ADDRESS = re.compile(
    r"\b(?P<number>\d{1,5}[a-z]?),?\s+(?P<words>(?:[a-z][a-z'’.-]+\s+){1,3})(?:street|avenue|boulevard|terrace)\b"
)
_DE_ADDRESS = re.compile(  # any case: "hauptstraße 5, 10115 berlin" is typed too
    r"\b(?:[A-ZÄÖÜ][a-zäöüß]+(?:straße|strasse|str\.|weg|gasse|platz|allee|damm|ufer|chaussee)"
    r"|[A-ZÄÖÜ][a-zäöüß]+\s+(?:Straße|Strasse|Str\.|Weg|Gasse|Platz|Allee|Damm|Ufer|Chaussee))"
    rf"\s*\d{{1,4}}(?:\s?[a-zA-Z])?\b{_EU_TAIL}?",
    re.I,
)
_FR_ADDRESS = re.compile(  # "12 rue de Rivoli, 75001 Paris", "5 bis avenue Foch"
    r"\b\d{1,4}(?:\s?(?:bis|ter))?,?\s+(?:rue|avenue|boulevard|bd|chemin|impasse|quai|allée)\s+"
    r"(?:(?:de|du|des|la|le|l[’']|d[’'])\s*){0,2}[A-ZÉÈ][\w'’-]*(?:[ -][A-ZÉÈ][\w'’-]*){0,3}"
    rf"{_EU_TAIL}?",
    re.I,
)
# Words that, right after a number, make "<n> <words> <street type>" a product, not a street.
_PRODUCT_COUNT_TEXT = """men's women's mens womens kid's kids boys girls unisex pack packs piece pieces pcs pc set sets count ct person people player players seat seats
    seater port ports way speed speeds inch inches in ft foot feet mm cm m tb gb mb lb lbs oz ml
    l kg g gallon gallons quart liter litre liters litres year years month months day days hour
    hours minute minutes star stars tier tiers layer layers ply drawer drawers shelf shelves
    door doors burner burners cup cups slice slices wheel wheels blade blades channel channels
    bit x"""
_PRODUCT_COUNT_WORDS = frozenset(_PRODUCT_COUNT_TEXT.split())


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _looks_like_isbn(match: re.Match[str]) -> bool:
    """True after the word ISBN, or in an ISBN's shape: 10 or 13 digits ending in a lone check digit."""
    before = match.string[max(0, match.start() - 12) : match.start()]
    if _ISBN_BEFORE.search(before):
        return True
    text = match.group()
    digits = _digits(text)
    if len(digits) == 13 and digits[:3] in ("978", "979"):
        return True
    return len(digits) in (10, 13) and bool(re.search(r"[ -]\d$", text))


def _is_card(match: re.Match[str]) -> bool:
    digits = _digits(match.group())
    # Any other 13-19 digit run in card shape is treated as a card: over-scrubbing an order
    # number costs a placeholder, missing a card with a typo leaks it.
    return 13 <= len(digits) <= 19 and not _looks_like_isbn(match)


def _is_iban(match: re.Match[str]) -> bool:
    code = match.group().replace(" ", "")
    if not 15 <= len(code) <= 34:
        return False
    rearranged = code[4:] + code[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _is_phone(text: str) -> bool:
    digits = _digits(text)
    if not MIN_PHONE_DIGITS <= len(digits) <= MAX_PHONE_DIGITS:
        return False
    if _DATE.fullmatch(text):
        return False
    groups = [g for g in re.split(r"[ .()-]+", text.strip("+() ")) if g]
    if len(groups) > 1 and len(groups[-1]) == 1:
        return False  # phones never end in a lone digit; ISBNs ("0-306-40615-2") do
    if text.startswith(("+", "00", "(")):
        return True
    if _NANP.fullmatch(text):
        return True
    # National formats start with a trunk 0 and are grouped ("020 7946 0958", "030 1234567").
    return text.startswith("0") and len(groups) > 1


_PHONE_GROUP = re.compile(r"\+?\(?\d+\)?")


def _card_shaped(text: str) -> bool:
    """Grouped like a payment card (4-4-4-4, 4-4-4-4-3, Amex 4-6-5) or one 13-19 digit run."""
    if not re.fullmatch(r"[\d -]+", text) or text.startswith("00"):
        return False  # "00" is an international call prefix; no card starts with it
    sizes = [len(g) for g in re.split(r"[ -]+", text.strip()) if g]
    if len(sizes) == 1:
        return 13 <= sizes[0] <= 19
    return (sizes[:4] == [4, 4, 4, 4] and len(sizes) <= 5) or sizes in ([4, 6, 5], [4, 6, 4])


def _phone_spans(match: re.Match[str]) -> list[tuple[int, int]]:
    """Phones inside a candidate run of digit groups ("size 10 020 7946 0958" holds one)."""
    text = match.group()
    if len(_digits(text)) < MIN_PHONE_DIGITS or _looks_like_isbn(match) or _card_shaped(text):
        return []  # an ISBN, or a card number the card rule will take whole
    groups = [g.span() for g in _PHONE_GROUP.finditer(text)]
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(groups):
        for j in range(len(groups) - 1, i - 1, -1):
            start, end = groups[i][0], groups[j][1]
            if _is_phone(text[start:end]):
                spans.append((start, end))
                i = j
                break
        i += 1
    return spans


def _is_street(match: re.Match[str]) -> bool:
    first = match.group("words").split()[0].lower().rstrip(".")
    return first not in _PRODUCT_COUNT_WORDS


_Spans = Callable[[re.Match[str]], list[tuple[int, int]]]
"""Which parts of a candidate match (offsets within it) are personal data."""


def _whole_if(check: Callable[[re.Match[str]], bool]) -> _Spans:
    def spans(match: re.Match[str]) -> list[tuple[int, int]]:
        return [(0, len(match.group()))] if check(match) else []

    return spans


_RULES: tuple[tuple[str, re.Pattern[str], _Spans | None], ...] = (
    ("email", _EMAIL, None),
    ("iban", _IBAN, _whole_if(_is_iban)),
    # Phones before cards: "+4915112345678" is 13 digits, a card's length, but has a "+".
    ("phone", _PHONE, _phone_spans),
    ("card", _CARD, _whole_if(_is_card)),
    ("address", _FR_ADDRESS, None),  # first: "5 bis avenue Foch" is no English street line
    ("address", _US_UK_ADDRESS, _whole_if(_is_street)),
    ("address", _LOWER_ADDRESS, _whole_if(_is_street)),
    ("address", _DE_ADDRESS, None),
)
# Every rule needs a digit or an "@": text without either is returned untouched (fast path).
_MAYBE_PERSONAL = re.compile(r"[@\d]")
_MAX_PASSES = 8


@dataclass
class Scrubber:
    """Replaces personal data in text by ``[kind]``; counts what it replaced (kinds only, never values).

    ``kinds`` selects what to scrub (default: all of ``KINDS``); ``enabled=False`` returns
    text unchanged.
    """

    enabled: bool = True
    counts: Counter[str] = field(default_factory=Counter)
    kinds: tuple[str, ...] = KINDS

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ConfigError(f"unknown personal-data kind(s) {sorted(unknown)}; known: {list(KINDS)}")

    def scrub(self, text: str | None) -> str | None:
        """``text`` with every enabled kind replaced; None stays None."""
        if text is None or not self.enabled or not _MAYBE_PERSONAL.search(text):
            return text
        # A replacement can expose a neighbour its match hid ("a@b.de+c@d.de": the second
        # address starts right after the first), so rescan until nothing changes. Every
        # changing pass removes at least one "@" or digit, so this ends; the cap is a backstop.
        for _ in range(_MAX_PASSES):
            before = text
            for kind, pattern, spans in _RULES:
                if kind in self.kinds:
                    text = pattern.sub(self._replacer(kind, spans), text)
            if text == before or not _MAYBE_PERSONAL.search(text):
                break
        return text

    def _replacer(self, kind: str, spans: _Spans | None) -> Callable[[re.Match[str]], str]:
        placeholder = f"[{kind}]"

        def replace(match: re.Match[str]) -> str:
            text = match.group()
            found = [(0, len(text))] if spans is None else spans(match)
            out, last = [], 0
            for start, end in found:
                out += [text[last:start], placeholder]
                last = end
            if found:
                self.counts[kind] += len(found)
            return "".join(out) + text[last:]

        return replace


def scrub_text(text: str | None) -> str | None:
    """Scrub one string with the default settings."""
    return Scrubber().scrub(text)


# -- pseudonyms ---------------------------------------------------------------------------
PSEUDONYM_KEY_ENV = "RECAGENT_PSEUDONYM_KEY"
DEV_PSEUDONYM_KEY = "recagent-development-key-NOT-SECRET"
"""Used when no key is configured, with a one-time warning. It is public, so pseudonyms made
with it can be reversed by anyone who can guess the ids: set a secret key in production."""
MIN_KEY_CHARS = 16
PSEUDONYM_PREFIX = "p_"
PSEUDONYM_HEX_CHARS = 24  # 96 bits: no collision in practice even over billions of users

_dev_key_warned = False
_dev_key_lock = threading.Lock()


def _warn_dev_key_once() -> None:
    global _dev_key_warned
    with _dev_key_lock:
        if _dev_key_warned:
            return
        _dev_key_warned = True
    log.warning(
        "no %s set: user ids are pseudonymized with the public development key; "
        "set a secret key (32+ random characters) before sending real users' data",
        PSEUDONYM_KEY_ENV,
    )


class Pseudonymizer:
    """Stable keyed pseudonyms for user ids, and the local map back. Thread-safe.

    ``pseudonym(user_id)`` is ``"p_" + the first 24 hex digits of HMAC-SHA256(key, user_id)``:
    the same id and key always give the same pseudonym (so batches can be resumed and joined),
    and without the key it cannot be linked back to the id. The reverse map lives only in
    this object (on the user's machine); ``reveal`` uses it.

    The key comes from ``key``, else ``$RECAGENT_PSEUDONYM_KEY``, else ``DEV_PSEUDONYM_KEY``
    with a one-time warning. Raises ``ConfigError`` for a key shorter than 16 characters.
    """

    def __init__(self, key: str | bytes | None = None, *, remember: bool = True) -> None:
        """``remember=False``: keep no reverse map (``reveal`` then knows nothing), so memory
        stays flat however many ids pass through (e.g. hashing request keys for a batch)."""
        self.remember = remember
        if key is None or key == "":
            key = os.environ.get(PSEUDONYM_KEY_ENV) or None
        if key is None:
            _warn_dev_key_once()
            key = DEV_PSEUDONYM_KEY
        raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
        if len(raw) < MIN_KEY_CHARS:
            raise ConfigError(
                f"pseudonym key is too short ({len(raw)} characters); use at least {MIN_KEY_CHARS}, "
                "ideally 32+ random characters"
            )
        self._key = raw
        self.is_dev_key = raw == DEV_PSEUDONYM_KEY.encode("utf-8")
        self.key_id = hashlib.sha256(b"recagent-key-id:" + raw).hexdigest()[:8]
        """A fingerprint of the key (safe to log or store next to pseudonyms; reveals nothing)."""
        self._reverse: dict[str, str] = {}
        self._lock = threading.Lock()

    def pseudonym(self, user_id: str) -> str:
        """The pseudonym of ``user_id`` (remembered for ``reveal`` unless ``remember=False``)."""
        digest = hmac.new(self._key, str(user_id).encode("utf-8"), hashlib.sha256).hexdigest()
        alias = PSEUDONYM_PREFIX + digest[:PSEUDONYM_HEX_CHARS]
        if not self.remember:
            return alias
        with self._lock:
            known = self._reverse.setdefault(alias, str(user_id))
        if known != str(user_id):  # 2**-96 per pair; fail loudly rather than mix two users
            raise ConfigError(f"pseudonym collision between two user ids under key {self.key_id}")
        return alias

    __call__ = pseudonym

    def register(self, user_ids: Iterable[str]) -> None:
        """Pseudonymize ``user_ids`` so their pseudonyms can be revealed (e.g. on batch resume)."""
        for user_id in user_ids:
            self.pseudonym(user_id)

    def lookup(self, pseudonym: str) -> str | None:
        """The user id behind ``pseudonym``, or None if this object never made it."""
        with self._lock:
            return self._reverse.get(pseudonym)

    def reveal(self, pseudonym: str) -> str:
        """The user id behind ``pseudonym``; ``DataError`` if it is unknown here (other key or never made)."""
        user_id = self.lookup(pseudonym)
        if user_id is None:
            raise DataError(
                f"unknown pseudonym {pseudonym!r}: not made by this key ({self.key_id}) in this run; "
                "register() the user ids first",
                column="custom_id",
            )
        return user_id

    def __len__(self) -> int:
        return len(self._reverse)

    def __repr__(self) -> str:  # never show the key
        return f"Pseudonymizer(key_id={self.key_id!r}, dev_key={self.is_dev_key}, known={len(self)})"

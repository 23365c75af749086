"""Keep personal data out of prompts: scrub free text before it is rendered.

Prompts never contain user ids at all (the model does not need them). Free text that users
typed — search queries, reviews, comments, chat messages — is scrubbed of e-mail addresses,
phone numbers, card-like numbers and street addresses, each replaced by a typed placeholder
such as ``[email]``. Scrubbing is on by default; ``Scrubber(enabled=False)`` turns it off.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("email", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
    # 13-19 digits, optionally grouped by spaces or dashes: card numbers and IBAN-like runs.
    ("card", re.compile(r"\b(?:\d[ -]?){12,18}\d\b")),
    # +country code or area code forms; needs 9+ digits in total to avoid years and prices.
    ("phone", re.compile(r"(?<![\w.])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){2,4}(?![\w.])")),
    ("phone", re.compile(r"(?<![\w.])(?:\+\d{1,3}[ .-]?)?0?\d{2,4}[ ./-]\d{6,8}(?![\w.])")),
    (
        "address",
        re.compile(
            r"\b\d{1,5}\s+(?:[A-Z][a-z]+\s){1,3}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|"
            r"Court|Ct|Way|Place|Pl|Terrace|Straße|Strasse)\b\.?",
        ),
    ),
)


@dataclass
class Scrubber:
    """Replaces personal data in text; counts what it replaced (kinds only, never values)."""

    enabled: bool = True
    counts: Counter[str] = field(default_factory=Counter)

    def scrub(self, text: str | None) -> str | None:
        if text is None or not self.enabled:
            return text
        for kind, pattern in _PATTERNS:
            text, n = pattern.subn(f"[{kind}]", text)
            if n:
                self.counts[kind] += n
        return text


def scrub_text(text: str | None) -> str | None:
    """Scrub one string with the default settings."""
    return Scrubber().scrub(text)

"""Session-wide privacy guard: a pytest plugin (registered in tests/conftest.py) and planted data.

Every request that leaves recagent during the test session is captured: each request any
``LoopbackServer`` receives (raw body bytes, multipart batch uploads included, and its
headers) and each request the cassette transports replay or record. After every test the
requests it caused are scanned, and at session end all of them are scanned again; a scan
fails on

* a raw user id: the sample users (``u001``..``u050`` in fixtures/sample) or
  ``PLANTED_USER_IDS``, matched as whole tokens (``u001`` in ``"u001"`` or ``user u001``,
  never inside ``SKU-u0012`` or ``xu001``);
* planted personal data (``PLANTED_PII``: the e-mails, phones, card and addresses that
  ``write_planted_dataset`` hides in reviews, searches and queries);
* an API key: anything shaped like ``sk-...`` or ``Bearer ...`` in a body or in a header that
  is not a credential header, and any credential header the loopback server failed to redact.

A test that deliberately sends personal data (to prove scrubbing can be switched off) is
marked ``@pytest.mark.privacy_exempt("why")``; its requests are counted but not judged.
"""

from __future__ import annotations

import csv
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from agent.data.loading import align_catalog, load_events, load_items
from agent.llm import cassette
from agent.testing import loopback

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_EVENTS = ROOT / "fixtures" / "sample" / "events.csv"

# -- planted data --------------------------------------------------------------------------
PLANTED_USER_IDS: tuple[str, ...] = ("u001", "u002", "cust_000917", "jane.doe+shop@example.com")
"""Users of the planted dataset; the last one is keyed by an e-mail address, as some logs are."""

PLANTED_EMAILS = ("jane.doe+shop@example.com", "joerg.mueller@beispiel.de", "tent.fan@example.org")
PLANTED_PHONES = ("+44 20 7946 0958", "+49 (0)30 1234567", "(415) 555-0132", "+1 415 555 0199")
PLANTED_CARD = "4111 1111 1111 1111"
PLANTED_ADDRESSES = ("221B Baker Street", "Hauptstraße 5", "1600 Pennsylvania Avenue NW")
PLANTED_QUERY = "light tent for two, text me at +1 415 555 0199 or tent.fan@example.org"
"""A request typed by the user (a chat message / ``--query``) with a phone and an e-mail."""

PLANTED_PII: tuple[str, ...] = (
    *PLANTED_EMAILS,
    *PLANTED_PHONES,
    PLANTED_CARD,
    *PLANTED_ADDRESSES,
    # fragments, so a half-scrubbed value is caught too
    "jane.doe+shop",
    "joerg.mueller",
    "7946 0958",
    "(0)30 1234567",
    "555-0132",
    "555 0199",
    "1111 1111 1111",
    "Baker Street",
    "Hauptstraße",
    "Pennsylvania Avenue",
)

# Realistic catalog text that must survive scrubbing (sizes, prices, years, model numbers, ISBN).
PLANTED_ITEMS: tuple[dict[str, Any], ...] = (
    {
        "item_id": "RUN-040",
        "title": "Stridewell Pegasus 40 Road Running Shoe",
        "category": "Running Shoes",
        "description": "Neutral road shoe, 10 mm drop, 265 g in size 9 (EU 42.5). 2024 model.",
        "price": 129.99,
    },
    {
        "item_id": "RUN-041",
        "title": "Stridewell Pegasus Trail 5 GTX",
        "category": "Running Shoes",
        "description": "Waterproof trail shoe with 4 mm lugs; sizes 6-13.",
        "price": 159.0,
    },
    {
        "item_id": "RUN-042",
        "title": "Kinetra Rally 12 Women's Road Running Shoe",
        "category": "Running Shoes",
        "description": "Light daily trainer, 8 mm drop, 220 g.",
        "price": 109.5,
    },
    {
        "item_id": "RUN-043",
        "title": "Ridgeway Ultra Vest 12L",
        "category": "Running Shoes",
        "description": "Running vest with two 500 ml soft flasks.",
        "price": 89.0,
    },
    {
        "item_id": "CMP-200",
        "title": "Northhollow Basecamp 2-Person Ultralight Tent",
        "category": "Camping",
        "description": "2-person tent, 1.2 kg packed, 20D ripstop, 3000 mm hydrostatic head.",
        "price": 199.0,
    },
    {
        "item_id": "CMP-201",
        "title": "Northhollow Basecamp 3-Person Tent",
        "category": "Camping",
        "description": "Roomier 3-person version, 1.9 kg.",
        "price": 279.0,
    },
    {
        "item_id": "CMP-202",
        "title": "Emberline 4 Piece Camp Cookset",
        "category": "Camping",
        "description": "Hard-anodised pots, 1.5 L and 0.9 L, for 2-4 people.",
        "price": 49.95,
    },
    {
        "item_id": "CMP-203",
        "title": "Lumenpeak 400 Lumen Headlamp",
        "category": "Camping",
        "description": "USB-C rechargeable, 40 h on low.",
        "price": 34.99,
    },
    {
        "item_id": "CMP-204",
        "title": "Downdrift -5°C Sleeping Bag",
        "category": "Camping",
        "description": "650 fill down, 190 x 75 cm, 980 g.",
        "price": 239.0,
    },
    {
        "item_id": "BK-9780135957059",
        "title": "The Pragmatic Programmer, 20th Anniversary Edition (ISBN 978-0-13-595705-9)",
        "category": "Books",
        "description": "Hardcover, 352 pages, 2019.",
        "price": 49.99,
    },
    {
        "item_id": "BK-0306406152",
        "title": "Trail Running Anatomy (ISBN 0-306-40615-2)",
        "category": "Books",
        "description": "Paperback, 224 pages.",
        "price": 24.0,
    },
    {
        "item_id": "BK-451",
        "title": "Fahrenheit 451",
        "category": "Books",
        "description": "Paperback, 60th anniversary edition.",
        "price": 11.99,
    },
)

# (user, item, behavior, day of September 2026, value, text)
_EVENTS: tuple[tuple[str, str, str, int, float | None, str | None], ...] = (
    ("u001", "RUN-040", "view", 1, None, None),
    ("u001", "", "search", 1, None, "trail shoes, deliver to 221B Baker Street"),
    ("u001", "RUN-041", "click", 2, None, None),
    ("u001", "RUN-040", "purchase", 3, 129.99, None),
    (
        "u001",
        "RUN-040",
        "rating",
        9,
        5.0,
        "Great shoes. If the sole fails call me on +44 20 7946 0958 or mail jane.doe+shop@example.com",
    ),
    ("u001", "CMP-203", "view", 10, None, None),
    ("u001", "RUN-043", "cart", 11, None, None),
    ("u001", "BK-0306406152", "view", 12, None, None),
    ("u002", "CMP-200", "view", 2, None, None),
    ("u002", "", "search", 2, None, "tent under 200, card 4111 1111 1111 1111 declined?"),
    ("u002", "CMP-201", "click", 3, None, None),
    ("u002", "CMP-202", "purchase", 4, 49.95, None),
    (
        "u002",
        "CMP-202",
        "rating",
        8,
        4.0,
        "Kindly contact Jörg at joerg.mueller@beispiel.de, +49 (0)30 1234567, Hauptstraße 5",
    ),
    ("u002", "CMP-204", "view", 9, None, None),
    ("u002", "BK-451", "like", 12, None, None),
    ("cust_000917", "BK-9780135957059", "purchase", 5, 49.99, None),
    ("cust_000917", "BK-451", "view", 6, None, None),
    (
        "cust_000917",
        "BK-9780135957059",
        "rating",
        14,
        2.0,
        "Arrived damaged. Ring me (415) 555-0132, 1600 Pennsylvania Avenue NW",
    ),
    ("cust_000917", "RUN-042", "view", 15, None, None),
    ("cust_000917", "CMP-203", "click", 16, None, None),
    ("jane.doe+shop@example.com", "RUN-042", "view", 3, None, None),
    ("jane.doe+shop@example.com", "RUN-040", "click", 4, None, None),
    ("jane.doe+shop@example.com", "CMP-200", "view", 5, None, None),
    ("jane.doe+shop@example.com", "CMP-203", "purchase", 6, 34.99, None),
    (
        "jane.doe+shop@example.com",
        "",
        "search",
        7,
        None,
        "headlamp batteries, reply to jane.doe+shop@example.com",
    ),
    ("jane.doe+shop@example.com", "RUN-041", "dislike", 8, None, "Not my style."),
)


@dataclass(frozen=True)
class PlantedData:
    """The planted dataset on disk (CSV) and loaded into canonical frames."""

    events_path: Path
    items_path: Path
    events: pd.DataFrame
    items: pd.DataFrame

    @property
    def cli_args(self) -> list[str]:
        return ["--events", str(self.events_path), "--items", str(self.items_path)]


def write_planted_dataset(directory: Path) -> PlantedData:
    """Write ``events.csv``/``items.csv`` with planted personal data into ``directory`` and load them."""
    directory.mkdir(parents=True, exist_ok=True)
    items_path, events_path = directory / "items.csv", directory / "events.csv"
    with items_path.open("w", newline="", encoding="utf-8") as f:
        items_writer = csv.DictWriter(f, ["item_id", "title", "category", "description", "price"])
        items_writer.writeheader()
        items_writer.writerows(PLANTED_ITEMS)
    with events_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "item_id", "behavior", "timestamp", "value", "text"])
        for user, item, behavior, day, value, text in _EVENTS:
            stamp = f"2026-09-{day:02d}T{8 + len(user) % 9:02d}:{day:02d}:00Z"
            writer.writerow([user, item, behavior, stamp, "" if value is None else value, text or ""])
    items = load_items(items_path)
    events = align_catalog(load_events(events_path), items)
    return PlantedData(events_path, items_path, events.frame, items.frame)


@pytest.fixture
def planted(tmp_path: Path) -> PlantedData:
    """The planted dataset in this test's tmp dir."""
    return write_planted_dataset(tmp_path / "planted")


# -- what a leak looks like ------------------------------------------------------------------
def _sample_user_ids() -> list[str]:
    if not SAMPLE_EVENTS.is_file():
        return []
    with SAMPLE_EVENTS.open(encoding="utf-8") as f:
        return sorted({row["user_id"] for row in csv.DictReader(f) if row.get("user_id")})


WATCHED_USER_IDS: tuple[str, ...] = tuple(sorted(set(_sample_user_ids()) | set(PLANTED_USER_IDS)))
_USER_ID_RE = re.compile(
    r"(?<![\w.+@-])(?:"
    + "|".join(re.escape(u) for u in sorted(WATCHED_USER_IDS, key=len, reverse=True))
    + r")(?![\w@+-]|\.\w)"
)
_API_KEY_RE = re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{6,}|\bBearer\s+[A-Za-z0-9._~+/-]{6,}")
_CREDENTIAL_HEADERS = frozenset(loopback._SECRET_HEADERS)


def scan_text(text: str) -> list[str]:
    """Every leak in ``text``: ``"user id 'u001'"``, ``"personal data '...'"``, ``"API key 'sk-…'"``.

    JSON escapes are undone first (``\\u00df``, ``\\u003c``, ``\\"``), so a value is found
    however many times it was JSON-encoded.
    """
    variants = {text, _unescape(text)}
    leaks: list[str] = []
    for variant in variants:
        leaks += [f"user id {m.group()!r}" for m in _USER_ID_RE.finditer(variant)]
        leaks += [f"personal data {p!r}" for p in PLANTED_PII if p in variant]
        leaks += [f"API key {m.group()[:12]!r}…" for m in _API_KEY_RE.finditer(variant)]
    return sorted(set(leaks))


def _unescape(text: str) -> str:
    """Undo up to three levels of JSON string escaping (data lines inside a JSON body)."""
    for _ in range(3):
        try:
            decoded = json.loads(f'"{text}"')
        except ValueError:
            decoded = re.sub(
                r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text.replace('\\"', '"')
            )
        if decoded == text:
            break
        text = decoded
    return text


# -- capture ------------------------------------------------------------------------------------
@dataclass
class Captured:
    """One outgoing request as the guard saw it."""

    source: str  # "loopback", "replay" or "record"
    test: str  # node id of the test running when it was sent ("" outside tests)
    text: str  # body and non-credential headers, decoded
    redaction_ok: bool = True  # loopback only: credential headers were stored redacted
    exempt: bool = False


_lock = threading.Lock()
_captured: list[Captured] = []
_current_test = ""
_restore: list[Callable[[], None]] = []


def captured() -> list[Captured]:
    """A copy of everything captured so far in this session."""
    with _lock:
        return list(_captured)


def _add(source: str, body: bytes, headers: dict[str, str], redaction_ok: bool = True) -> None:
    shown = {k: v for k, v in headers.items() if k.lower() not in _CREDENTIAL_HEADERS}
    text = body.decode("utf-8", "replace") + "\n" + json.dumps(shown, ensure_ascii=False)
    with _lock:
        _captured.append(Captured(source, _current_test, text, redaction_ok))


def _install() -> None:
    original_record = loopback.LoopbackServer._record

    def record(
        self: loopback.LoopbackServer, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> Any:
        body = original_record(self, method, path, headers, raw)
        with self._lock:
            stored = self.requests[-1].headers if self.requests else {}
        ok = all(v == loopback.REDACTED for k, v in stored.items() if k in _CREDENTIAL_HEADERS)
        _add("loopback", raw, headers, ok)
        return body

    original_replay = cassette.ReplayTransport.handle_request
    original_recording = cassette.RecordingTransport.handle_request

    def replay(self: cassette.ReplayTransport, request: Any) -> Any:
        _add("replay", request.content or b"", dict(request.headers))
        return original_replay(self, request)

    def recording(self: cassette.RecordingTransport, request: Any) -> Any:
        _add("record", request.content or b"", dict(request.headers))
        return original_recording(self, request)

    loopback.LoopbackServer._record = record  # type: ignore[method-assign]
    cassette.ReplayTransport.handle_request = replay  # type: ignore[method-assign]
    cassette.RecordingTransport.handle_request = recording  # type: ignore[method-assign]

    def restore() -> None:
        loopback.LoopbackServer._record = original_record  # type: ignore[method-assign]
        cassette.ReplayTransport.handle_request = original_replay  # type: ignore[method-assign]
        cassette.RecordingTransport.handle_request = original_recording  # type: ignore[method-assign]

    _restore.append(restore)


def leaks_of(entries: list[Captured]) -> list[str]:
    """Leak descriptions for ``entries`` (exempt ones skipped), each naming its test and source."""
    found: list[str] = []
    for entry in entries:
        if entry.exempt:
            continue
        problems = scan_text(entry.text)
        if not entry.redaction_ok:
            problems.append("a credential header stored unredacted")
        found += [f"{entry.test or '<outside a test>'} ({entry.source}): {p}" for p in problems]
    return found


# -- pytest hooks -------------------------------------------------------------------------------
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "privacy_exempt(reason): this test sends personal data on purpose; the guard skips it"
    )
    _install()


def pytest_unconfigure(config: pytest.Config) -> None:
    while _restore:
        _restore.pop()()


@pytest.fixture(autouse=True)
def _privacy_scan(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test (at teardown) if a request it caused leaked an id, planted PII or a key."""
    global _current_test
    with _lock:
        start = len(_captured)
        _current_test = request.node.nodeid
    yield
    exempt = request.node.get_closest_marker("privacy_exempt") is not None
    with _lock:
        _current_test = ""
        mine = _captured[start:]
        for entry in mine:
            entry.exempt = exempt
    problems = leaks_of(mine)
    if problems:
        pytest.fail("privacy guard: " + "; ".join(problems[:10]), pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    problems = leaks_of(captured())
    if problems and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    session.config.stash[_summary_key] = problems


_summary_key = pytest.StashKey[list[str]]()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    entries = captured()
    if not entries:
        return
    problems = config.stash.get(_summary_key, [])
    exempt = sum(e.exempt for e in entries)
    terminalreporter.write_line(
        f"privacy guard: scanned {len(entries)} outgoing requests ({exempt} exempt): "
        f"{len(problems)} leak(s) of raw user ids, planted personal data or API keys"
    )
    for problem in problems[:20]:
        terminalreporter.write_line(f"  LEAK {problem}", red=True)

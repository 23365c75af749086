"""The profile store: every profile version, all feedback and every recommendation served.

``Store`` is the small interface the agent uses (so a server database can be added later);
``SQLiteStore`` is the embedded default (standard-library ``sqlite3``). ``open_store(path)``
opens ``path``, else ``$RECAGENT_DB``, else ``recagent.sqlite`` in the user's data directory
(platformdirs); ``":memory:"`` keeps nothing.

Promises:

* **Nothing is overwritten.** Profile versions are append-only (1, 2, 3... per user, each
  with producer, model, template version, evidence feedback ids and explained changes);
  feedback and served recommendations are append-only too.
* **Writes are transactional.** Each write is one ``BEGIN IMMEDIATE`` transaction, so a
  process killed mid-write leaves the previous state intact (SQLite's journal rolls it back).
* **No lost update.** ``save_profile`` is a compare-and-swap on the user's head version: it
  fails with ``VersionConflictError`` if someone saved a newer version since the caller read
  it. ``update_profile`` wraps the read → build → save loop and retries a losing writer on the
  fresh version (bounded); the build step, which may call a model, runs outside any lock.
* **Named, append-only migrations** are recorded in the ``migrations`` table; a database
  written by a newer recagent (unknown migrations) is refused instead of being damaged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from agent.errors import StoreError, VersionConflictError
from agent.profiles.feedback import (
    LOW_RATING,
    FeedbackEvent,
    ServedItem,
    ServedRecommendation,
    StoredFeedback,
)
from agent.profiles.versions import Change, ProfileDraft, ProfileState, ProfileVersion
from agent.secrets import redact

log = logging.getLogger(__name__)

DB_ENV = "RECAGENT_DB"
MEMORY = ":memory:"

MIGRATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "001_profiles_feedback_recommendations",
        (
            """CREATE TABLE profile_versions (
                user_id TEXT NOT NULL,
                version INTEGER NOT NULL,
                created_at TEXT NOT NULL,
                producer TEXT NOT NULL,
                model TEXT,
                template_version TEXT,
                evidence TEXT NOT NULL,
                feedback_upto INTEGER NOT NULL,
                state TEXT NOT NULL,
                changes TEXT NOT NULL,
                usage TEXT NOT NULL,
                PRIMARY KEY (user_id, version))""",
            "CREATE TABLE profile_heads (user_id TEXT PRIMARY KEY, version INTEGER NOT NULL)",
            """CREATE TABLE feedback (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                feedback_id TEXT NOT NULL UNIQUE,
                user_id TEXT NOT NULL,
                item_id TEXT NOT NULL,
                signal TEXT NOT NULL,
                value REAL,
                comment TEXT,
                recommendation_id TEXT,
                timestamp TEXT NOT NULL,
                recorded_at TEXT NOT NULL)""",
            "CREATE INDEX feedback_by_user ON feedback (user_id, seq)",
            """CREATE TABLE recommendations (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                recommendation_id TEXT NOT NULL UNIQUE,
                user_id TEXT NOT NULL,
                created_at TEXT NOT NULL,
                profile_version INTEGER,
                model TEXT,
                template_version TEXT,
                fallback_reason TEXT,
                prompt_tokens INTEGER NOT NULL,
                completion_tokens INTEGER NOT NULL,
                cost_usd REAL NOT NULL,
                usage TEXT NOT NULL)""",
            "CREATE INDEX recommendations_by_user ON recommendations (user_id, seq)",
            """CREATE TABLE recommendation_items (
                recommendation_id TEXT NOT NULL REFERENCES recommendations (recommendation_id),
                rank INTEGER NOT NULL,
                item_id TEXT NOT NULL,
                score REAL NOT NULL,
                source TEXT NOT NULL,
                PRIMARY KEY (recommendation_id, rank))""",
            "CREATE INDEX recommendation_items_by_item ON recommendation_items (item_id)",
        ),
    ),
)
"""Append-only: never edit or reorder an entry that has shipped; add a new one."""


def default_db_path() -> Path:
    """``$RECAGENT_DB`` if set, else ``recagent.sqlite`` under the user's data directory."""
    if os.environ.get(DB_ENV):
        return Path(os.environ[DB_ENV]).expanduser()
    import platformdirs

    return platformdirs.user_data_path("recagent", appauthor=False) / "recagent.sqlite"


def open_store(path: str | Path | None = None) -> SQLiteStore:
    """Open (creating and migrating if needed) the store at ``path`` (see module docstring)."""
    return SQLiteStore(default_db_path() if path is None else path)


class Store(ABC):
    """What the agent needs from a profile store. Implementations must be safe to use from
    several threads and processes at once, and ``save_profile`` must be a compare-and-swap."""

    def __init__(self) -> None:
        self.conflicts = 0
        """Optimistic writes lost to another writer (and retried) since this store was opened."""
        self._conflict_lock = threading.Lock()

    # profiles
    @abstractmethod
    def latest_profile(self, user_id: str) -> ProfileVersion | None: ...

    @abstractmethod
    def profile_version(self, user_id: str, version: int) -> ProfileVersion | None: ...

    @abstractmethod
    def profile_history(self, user_id: str) -> list[ProfileVersion]:
        """Every version of the user's profile, oldest first."""

    @abstractmethod
    def save_profile(self, draft: ProfileDraft, *, expected_version: int) -> ProfileVersion:
        """Save ``draft`` as version ``expected_version + 1`` (0 = the user has none yet).

        Raises ``VersionConflictError`` if the user's latest version is not ``expected_version``.
        """

    # feedback
    @abstractmethod
    def add_feedback(self, event: FeedbackEvent) -> StoredFeedback: ...

    @abstractmethod
    def feedback(self, user_id: str, *, after_seq: int = 0) -> list[StoredFeedback]:
        """The user's feedback with ``seq > after_seq``, oldest first."""

    @abstractmethod
    def blocked_items(self, user_id: str) -> dict[str, str]:
        """Item id -> blocking signal, for every dislike, not_interested and low rating."""

    # recommendations
    @abstractmethod
    def save_recommendation(self, served: ServedRecommendation) -> None: ...

    @abstractmethod
    def recommendation(self, recommendation_id: str) -> ServedRecommendation | None: ...

    @abstractmethod
    def latest_recommendation_with(self, user_id: str, item_id: str) -> str | None:
        """Id of the most recent recommendation that showed ``item_id`` to ``user_id``."""

    @abstractmethod
    def recent_recommendations(self, user_id: str, limit: int = 5) -> list[ServedRecommendation]:
        """The latest ``limit`` lists served to ``user_id``, newest first."""

    @abstractmethod
    def users(self) -> list[str]: ...

    @abstractmethod
    def close(self) -> None: ...

    def update_profile(
        self,
        user_id: str,
        build: Callable[[ProfileVersion | None], ProfileDraft | None],
        *,
        max_attempts: int = 5,
    ) -> ProfileVersion | None:
        """Read the latest version, ``build`` the next one from it, save it; on a conflict, start
        again from the fresh version. ``build`` returning None means "nothing to do" (returns None).

        Raises ``VersionConflictError`` after ``max_attempts`` lost writes.
        """
        for attempt in range(1, max_attempts + 1):
            latest = self.latest_profile(user_id)
            draft = build(latest)
            if draft is None:
                return None
            try:
                return self.save_profile(draft, expected_version=latest.version if latest else 0)
            except VersionConflictError:
                with self._conflict_lock:
                    self.conflicts += 1
                log.info("profile of %s changed under us (attempt %d); retrying", user_id, attempt)
        raise VersionConflictError(
            f"profile of user {user_id!r} kept changing; gave up after {max_attempts} attempts",
            user_id=user_id,
            attempts=max_attempts,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


# -- rows: what every store writes and reads back (SQLite here, the service's tenant stores) ----
class Row(Protocol):
    """A stored row read by column name (``sqlite3.Row``, psycopg's dict rows)."""

    def __getitem__(self, key: str) -> Any: ...


def version_columns(draft: ProfileDraft) -> tuple[Any, ...]:
    """A draft's stored columns: producer, model, template_version, evidence, feedback_upto,
    state, changes, usage. Model output is redacted: an echoed key is never stored."""
    return (
        draft.producer,
        draft.model,
        draft.template_version,
        redact(_dumps(draft.evidence)),
        draft.feedback_upto,
        redact(draft.state.model_dump_json()),
        redact(_dumps([c.model_dump(mode="json") for c in draft.changes])),
        _dumps(draft.usage),
    )


def version_from_row(row: Row) -> ProfileVersion:
    return ProfileVersion(
        user_id=row["user_id"],
        version=row["version"],
        created_at=datetime.fromisoformat(row["created_at"]),
        producer=row["producer"],
        model=row["model"],
        template_version=row["template_version"],
        evidence=json.loads(row["evidence"]),
        feedback_upto=row["feedback_upto"],
        state=ProfileState.model_validate_json(row["state"]),
        changes=[Change.model_validate(c) for c in json.loads(row["changes"])],
        usage=json.loads(row["usage"]),
    )


def feedback_columns(event: FeedbackEvent) -> tuple[Any, ...]:
    """feedback_id, user_id, item_id, signal, value, comment, recommendation_id, timestamp, recorded_at."""
    return (
        event.feedback_id,
        event.user_id,
        event.item_id,
        event.signal,
        event.value,
        event.comment,
        event.recommendation_id,
        event.timestamp.isoformat(),
        _now(),
    )


def feedback_from_row(row: Row) -> StoredFeedback:
    return StoredFeedback(
        seq=row["seq"],
        feedback_id=row["feedback_id"],
        user_id=row["user_id"],
        item_id=row["item_id"],
        signal=row["signal"],
        value=row["value"],
        comment=row["comment"],
        recommendation_id=row["recommendation_id"],
        timestamp=datetime.fromisoformat(row["timestamp"]),
    )


def served_columns(served: ServedRecommendation) -> tuple[Any, ...]:
    """recommendation_id, user_id, created_at, profile_version, model, template_version,
    fallback_reason (redacted), prompt_tokens, completion_tokens, cost_usd, usage."""
    usage = served.usage
    return (
        served.recommendation_id,
        served.user_id,
        served.created_at.isoformat(),
        served.profile_version,
        served.model,
        served.template_version,
        redact(served.fallback_reason) if served.fallback_reason else None,
        int(usage.get("prompt_tokens", 0)),
        int(usage.get("completion_tokens", 0)),
        float(usage.get("cost_usd", 0.0)),
        _dumps(usage),
    )


def served_from_rows(head: Row, items: Sequence[Row]) -> ServedRecommendation:
    return ServedRecommendation(
        recommendation_id=head["recommendation_id"],
        user_id=head["user_id"],
        created_at=datetime.fromisoformat(head["created_at"]),
        items=[
            ServedItem(item_id=r["item_id"], rank=r["rank"], score=r["score"], source=r["source"])
            for r in items
        ],
        profile_version=head["profile_version"],
        model=head["model"],
        template_version=head["template_version"],
        fallback_reason=head["fallback_reason"],
        usage=json.loads(head["usage"]),
    )


class SQLiteStore(Store):
    """``Store`` on one SQLite file (or ``":memory:"``). One connection per store object,
    guarded by a lock; other processes and other store objects coordinate through SQLite."""

    def __init__(self, path: str | Path, *, timeout_s: float = 30.0) -> None:
        super().__init__()
        self.path = str(path)
        self._lock = threading.RLock()
        if self.path != MEMORY:
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the directory of the profile store {self.path}: {exc}"
                ) from None
        try:
            self.connection = sqlite3.connect(
                self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False
            )
            self.connection.row_factory = sqlite3.Row
            if self.path != MEMORY:
                # WAL: readers never block the writer; a crash mid-write is rolled back on open.
                self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except (sqlite3.Error, StoreError) as exc:
            if hasattr(self, "connection"):
                self.connection.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open the profile store {self.path}: {exc}") from None

    # -- plumbing --------------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: committed if the block finishes, rolled back otherwise.

        Any SQLite failure inside (disk full, I/O error, a corrupt page or index) is one
        ``StoreError``; the transaction is rolled back, so nothing half-written stays.
        """
        with self._lock:
            conn = self.connection
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"profile store {self.path} is not writable: {exc}") from None
            try:
                yield conn
            except sqlite3.IntegrityError:
                self._rollback(conn)
                raise  # the callers turn constraint failures into their own errors
            except sqlite3.Error as exc:
                self._rollback(conn)
                raise StoreError(f"profile store {self.path}: {exc}") from None
            except BaseException:
                self._rollback(conn)
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(conn)
                raise StoreError(f"profile store {self.path}: commit failed: {exc}") from None

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        # SQLite rolls back by itself after some failures (disk full, I/O errors): a ROLLBACK
        # then fails with "no transaction is active", which must not hide the real error.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self.connection.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"profile store {self.path}: {exc}") from None

    def _migrate(self) -> None:
        self.connection.execute(
            "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        known = [name for name, _ in MIGRATIONS]
        with self._write() as conn:
            applied = {row["name"] for row in conn.execute("SELECT name FROM migrations")}
            unknown = sorted(applied - set(known))
            if unknown:
                raise StoreError(
                    f"profile store {self.path} was written by a newer recagent (migrations {unknown}); "
                    "upgrade recagent or use another --db"
                )
            for name, statements in MIGRATIONS:
                if name in applied:
                    continue
                for statement in statements:
                    conn.execute(statement)
                conn.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (name, _now()))
                log.info("profile store %s: applied migration %s", self.path, name)

    def migrations(self) -> list[str]:
        """Names of the applied migrations, in the order they were applied."""
        return [row["name"] for row in self._read("SELECT name FROM migrations ORDER BY rowid")]

    def close(self) -> None:
        with self._lock:
            self.connection.close()

    # -- profiles --------------------------------------------------------------------------
    def latest_profile(self, user_id: str) -> ProfileVersion | None:
        rows = self._read(
            "SELECT v.* FROM profile_versions v JOIN profile_heads h "
            "ON h.user_id = v.user_id AND h.version = v.version WHERE h.user_id = ?",
            (user_id,),
        )
        return version_from_row(rows[0]) if rows else None

    def profile_version(self, user_id: str, version: int) -> ProfileVersion | None:
        rows = self._read(
            "SELECT * FROM profile_versions WHERE user_id = ? AND version = ?", (user_id, version)
        )
        return version_from_row(rows[0]) if rows else None

    def profile_history(self, user_id: str) -> list[ProfileVersion]:
        rows = self._read("SELECT * FROM profile_versions WHERE user_id = ? ORDER BY version", (user_id,))
        return [version_from_row(row) for row in rows]

    def save_profile(self, draft: ProfileDraft, *, expected_version: int) -> ProfileVersion:
        user_id, new = draft.user_id, expected_version + 1
        created = _now()

        def conflict(current: int) -> VersionConflictError:
            return VersionConflictError(
                f"profile of user {user_id!r} is at version {current}, not {expected_version}",
                user_id=user_id,
                attempts=1,
            )

        with self._write() as conn:
            head = conn.execute("SELECT version FROM profile_heads WHERE user_id = ?", (user_id,)).fetchone()
            current = head["version"] if head else 0
            if current != expected_version:
                raise conflict(current)
            try:
                conn.execute(
                    "INSERT INTO profile_versions (user_id, version, created_at, producer, model, "
                    "template_version, evidence, feedback_upto, state, changes, usage) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (user_id, new, created, *version_columns(draft)),
                )
                if head:
                    moved = conn.execute(
                        "UPDATE profile_heads SET version = ? WHERE user_id = ? AND version = ?",
                        (new, user_id, expected_version),
                    ).rowcount
                    if moved != 1:
                        raise conflict(-1)
                else:
                    conn.execute("INSERT INTO profile_heads (user_id, version) VALUES (?, ?)", (user_id, new))
            except sqlite3.IntegrityError:
                raise conflict(-1) from None
        return ProfileVersion(**draft.model_dump(), version=new, created_at=datetime.fromisoformat(created))

    # -- feedback --------------------------------------------------------------------------
    def add_feedback(self, event: FeedbackEvent) -> StoredFeedback:
        try:
            with self._write() as conn:
                seq = conn.execute(
                    "INSERT INTO feedback (feedback_id, user_id, item_id, signal, value, comment, "
                    "recommendation_id, timestamp, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    feedback_columns(event),
                ).lastrowid
        except sqlite3.IntegrityError:
            raise StoreError(f"feedback {event.feedback_id!r} is already recorded") from None
        return StoredFeedback(**event.model_dump(), seq=int(seq or 0))

    def feedback(self, user_id: str, *, after_seq: int = 0) -> list[StoredFeedback]:
        rows = self._read(
            "SELECT * FROM feedback WHERE user_id = ? AND seq > ? ORDER BY seq", (user_id, after_seq)
        )
        return [feedback_from_row(row) for row in rows]

    def blocked_items(self, user_id: str) -> dict[str, str]:
        rows = self._read(
            "SELECT item_id, signal FROM feedback WHERE user_id = ? AND (signal IN ('dislike', "
            "'not_interested') OR (signal = 'rating' AND value <= ?)) ORDER BY seq",
            (user_id, LOW_RATING),
        )
        return {row["item_id"]: row["signal"] for row in rows}

    # -- recommendations -------------------------------------------------------------------
    def save_recommendation(self, served: ServedRecommendation) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO recommendations (recommendation_id, user_id, created_at, profile_version, "
                "model, template_version, fallback_reason, prompt_tokens, completion_tokens, cost_usd, "
                "usage) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                served_columns(served),
            )
            conn.executemany(
                "INSERT INTO recommendation_items (recommendation_id, rank, item_id, score, source) "
                "VALUES (?, ?, ?, ?, ?)",
                [(served.recommendation_id, i.rank, i.item_id, i.score, i.source) for i in served.items],
            )

    def recommendation(self, recommendation_id: str) -> ServedRecommendation | None:
        head = self._read("SELECT * FROM recommendations WHERE recommendation_id = ?", (recommendation_id,))
        if not head:
            return None
        rows = self._read(
            "SELECT * FROM recommendation_items WHERE recommendation_id = ? ORDER BY rank",
            (recommendation_id,),
        )
        return served_from_rows(head[0], rows)

    def latest_recommendation_with(self, user_id: str, item_id: str) -> str | None:
        rows = self._read(
            "SELECT r.recommendation_id FROM recommendations r JOIN recommendation_items i "
            "ON i.recommendation_id = r.recommendation_id WHERE r.user_id = ? AND i.item_id = ? "
            "ORDER BY r.seq DESC LIMIT 1",
            (user_id, item_id),
        )
        return rows[0]["recommendation_id"] if rows else None

    def users(self) -> list[str]:
        rows = self._read(
            "SELECT user_id FROM profile_heads UNION SELECT user_id FROM feedback "
            "UNION SELECT user_id FROM recommendations ORDER BY user_id"
        )
        return [row["user_id"] for row in rows]

    def recent_recommendations(self, user_id: str, limit: int = 5) -> list[ServedRecommendation]:
        """The latest ``limit`` lists served to ``user_id``, newest first."""
        rows = self._read(
            "SELECT recommendation_id FROM recommendations WHERE user_id = ? ORDER BY seq DESC LIMIT ?",
            (user_id, limit),
        )
        return [r for row in rows if (r := self.recommendation(row["recommendation_id"])) is not None]

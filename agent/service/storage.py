"""The service's store: API keys, catalogs, behavior events, idempotent requests, chat sessions,
and the profile store of each tenant, on SQLite or PostgreSQL with the same migrations.

Promises (checked by ``tests/service/test_storage_contract.py`` on both backends):

* **Every row belongs to a tenant** and every query names one; no method reads or writes
  across tenants. ``TenantProfileStore`` is the agent's ``Store`` for one tenant.
* **Idempotency.** ``idempotent(tenant, key, request_hash, write)`` runs ``write`` and records
  its response in the same transaction; a retry with the same key returns the recorded
  response and writes nothing; the same key with a different request is refused
  (``IdempotencyConflict``). A response is acknowledged only after its transaction commits.
* **Live data.** Events get a per-database increasing ``seq``; item upserts get a ``rev``
  from the same kind of counter; ``data_version(tenant)`` is ``(max event seq, max item rev)``,
  so any service instance can tell in one query that its in-memory copy is stale.
* **Named, append-only migrations**, the same list on both backends (with the few type words
  each spells differently); a database with migrations this version doesn't know is refused.
* API keys are stored only as SHA-256 hashes of high-entropy secrets (see ``agent.service.keys``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.errors import StoreError, VersionConflictError
from agent.profiles.feedback import (
    LOW_RATING,
    FeedbackEvent,
    ServedRecommendation,
    StoredFeedback,
)
from agent.profiles.store import (
    Store,
    feedback_columns,
    feedback_from_row,
    served_columns,
    served_from_rows,
    version_columns,
    version_from_row,
)
from agent.profiles.versions import ProfileDraft, ProfileVersion
from agent.service.database import Cursor, Database, DuplicateKey

log = logging.getLogger(__name__)

MIGRATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "001_service",
        (
            """CREATE TABLE api_keys (
                key_hash TEXT PRIMARY KEY,
                key_id TEXT NOT NULL UNIQUE,
                tenant TEXT NOT NULL,
                scopes TEXT NOT NULL,
                name TEXT,
                created_at TEXT NOT NULL,
                revoked_at TEXT)""",
            """CREATE TABLE items (
                tenant TEXT NOT NULL,
                item_id TEXT NOT NULL,
                title TEXT NOT NULL,
                category TEXT,
                price {real},
                description TEXT,
                attributes TEXT NOT NULL,
                rev {bigint} NOT NULL,
                updated_at TEXT NOT NULL,
                PRIMARY KEY (tenant, item_id))""",
            """CREATE TABLE item_revisions (seq {serial}, tenant TEXT NOT NULL)""",
            """CREATE TABLE events (
                seq {serial},
                tenant TEXT NOT NULL,
                user_id TEXT NOT NULL,
                item_id TEXT,
                behavior TEXT NOT NULL,
                timestamp TEXT NOT NULL,
                value {real},
                text TEXT,
                recorded_at TEXT NOT NULL)""",
            "CREATE INDEX events_by_tenant ON events (tenant, seq)",
            """CREATE TABLE idempotency (
                tenant TEXT NOT NULL,
                idem_key TEXT NOT NULL,
                request_hash TEXT NOT NULL,
                status INTEGER NOT NULL,
                response TEXT NOT NULL,
                created_at TEXT NOT NULL,
                PRIMARY KEY (tenant, idem_key))""",
            """CREATE TABLE sessions (
                tenant TEXT NOT NULL,
                session_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                state TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                PRIMARY KEY (tenant, session_id))""",
            """CREATE TABLE profile_versions (
                tenant TEXT NOT NULL,
                user_id TEXT NOT NULL,
                version INTEGER NOT NULL,
                created_at TEXT NOT NULL,
                producer TEXT NOT NULL,
                model TEXT,
                template_version TEXT,
                evidence TEXT NOT NULL,
                feedback_upto {bigint} NOT NULL,
                state TEXT NOT NULL,
                changes TEXT NOT NULL,
                usage TEXT NOT NULL,
                PRIMARY KEY (tenant, user_id, version))""",
            """CREATE TABLE profile_heads (
                tenant TEXT NOT NULL,
                user_id TEXT NOT NULL,
                version INTEGER NOT NULL,
                PRIMARY KEY (tenant, user_id))""",
            """CREATE TABLE feedback (
                seq {serial},
                tenant TEXT NOT NULL,
                feedback_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                item_id TEXT NOT NULL,
                signal TEXT NOT NULL,
                value {real},
                comment TEXT,
                recommendation_id TEXT,
                timestamp TEXT NOT NULL,
                recorded_at TEXT NOT NULL,
                UNIQUE (tenant, feedback_id))""",
            "CREATE INDEX feedback_by_user ON feedback (tenant, user_id, seq)",
            """CREATE TABLE recommendations (
                seq {serial},
                tenant TEXT NOT NULL,
                recommendation_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                created_at TEXT NOT NULL,
                profile_version INTEGER,
                model TEXT,
                template_version TEXT,
                fallback_reason TEXT,
                prompt_tokens {bigint} NOT NULL,
                completion_tokens {bigint} NOT NULL,
                cost_usd {real} NOT NULL,
                usage TEXT NOT NULL,
                UNIQUE (tenant, recommendation_id))""",
            "CREATE INDEX recommendations_by_user ON recommendations (tenant, user_id, seq)",
            """CREATE TABLE recommendation_items (
                tenant TEXT NOT NULL,
                recommendation_id TEXT NOT NULL,
                rank INTEGER NOT NULL,
                item_id TEXT NOT NULL,
                score {real} NOT NULL,
                source TEXT NOT NULL,
                PRIMARY KEY (tenant, recommendation_id, rank))""",
        ),
    ),
)
"""Append-only: never edit or reorder an entry that has shipped; add a new one."""

ITEM_COLUMNS = ("item_id", "title", "category", "price", "description")


class IdempotencyConflict(StoreError):
    """The idempotency key was used before for a different request."""


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    tenant: str
    scopes: tuple[str, ...]
    name: str | None
    created_at: str
    revoked_at: str | None


def now() -> str:
    return datetime.now(UTC).isoformat()


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


class ServiceStore:
    """Tenant-scoped reads and writes over a ``Database`` (migrated on open)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._migrate()

    @classmethod
    def open(cls, url: str) -> ServiceStore:
        return cls(Database.open(url))

    def close(self) -> None:
        self.db.close()

    # -- migrations ---------------------------------------------------------------------
    def _migrate(self) -> None:
        types = self.db.types()
        with self.db.transaction() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
        known = [name for name, _ in MIGRATIONS]
        try:
            with self.db.transaction() as cur:
                if self.db.dialect == "postgresql":  # one migrator at a time across instances
                    cur.execute("LOCK TABLE migrations IN EXCLUSIVE MODE")
                applied = {row["name"] for row in cur.execute("SELECT name FROM migrations")}
                unknown = sorted(applied - set(known))
                if unknown:
                    raise StoreError(
                        f"store {self.db.describe()} was written by a newer recagent (migrations {unknown})"
                    )
                for name, statements in MIGRATIONS:
                    if name in applied:
                        continue
                    for statement in statements:
                        cur.execute(statement.format(**types))
                    cur.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (name, now()))
                    log.info("store %s: applied migration %s", self.db.describe(), name)
        except DuplicateKey:  # another instance migrated between our read and write
            pass

    def migrations(self) -> list[str]:
        return [row["name"] for row in self.db.read("SELECT name FROM migrations ORDER BY name")]

    # -- API keys -----------------------------------------------------------------------
    def add_key(
        self, key_hash: str, key_id: str, tenant: str, scopes: Sequence[str], name: str | None
    ) -> None:
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO api_keys (key_hash, key_id, tenant, scopes, name, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (key_hash, key_id, tenant, ",".join(scopes), name, now()),
            )

    def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        rows = self.db.read("SELECT * FROM api_keys WHERE key_hash = ?", (key_hash,))
        return self._key(rows[0]) if rows else None

    def keys(self, tenant: str | None = None) -> list[KeyRecord]:
        if tenant is None:
            rows = self.db.read("SELECT * FROM api_keys ORDER BY created_at, key_id")
        else:
            rows = self.db.read(
                "SELECT * FROM api_keys WHERE tenant = ? ORDER BY created_at, key_id", (tenant,)
            )
        return [self._key(r) for r in rows]

    def revoke_key(self, key_id: str) -> bool:
        with self.db.transaction() as cur:
            cur.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL", (now(), key_id)
            )
            return cur.rowcount == 1

    @staticmethod
    def _key(row: dict[str, Any]) -> KeyRecord:
        return KeyRecord(
            key_id=row["key_id"],
            tenant=row["tenant"],
            scopes=tuple(s for s in row["scopes"].split(",") if s),
            name=row["name"],
            created_at=row["created_at"],
            revoked_at=row["revoked_at"],
        )

    # -- idempotent writes ------------------------------------------------------------------
    def idempotent(
        self,
        tenant: str,
        key: str | None,
        request_hash: str,
        write: Callable[[Cursor], tuple[int, Any]],
    ) -> tuple[int, Any, bool]:
        """Run ``write`` once per ``key``: ``(status, response, replayed)``.

        ``write`` gets the open transaction and returns ``(status, JSON-able response)``; the
        response is stored with the key in that same transaction.
        """
        if key is None:
            with self.db.transaction() as cur:
                status, response = write(cur)
            return status, response, False
        previous = self._recorded(tenant, key, request_hash)
        if previous is not None:
            return previous[0], previous[1], True
        try:
            with self.db.transaction() as cur:
                status, response = write(cur)
                cur.execute(
                    "INSERT INTO idempotency (tenant, idem_key, request_hash, status, response, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (tenant, key, request_hash, status, _dumps(response), now()),
                )
        except DuplicateKey:  # a concurrent retry won the race: answer with what it recorded
            previous = self._recorded(tenant, key, request_hash)
            if previous is None:
                raise
            return previous[0], previous[1], True
        return status, response, False

    def _recorded(self, tenant: str, key: str, request_hash: str) -> tuple[int, Any] | None:
        rows = self.db.read(
            "SELECT request_hash, status, response FROM idempotency WHERE tenant = ? AND idem_key = ?",
            (tenant, key),
        )
        if not rows:
            return None
        if rows[0]["request_hash"] != request_hash:
            raise IdempotencyConflict(
                "this Idempotency-Key was already used for a different request; use a new key"
            )
        return int(rows[0]["status"]), json.loads(rows[0]["response"])

    # -- catalog and events --------------------------------------------------------------------
    @staticmethod
    def upsert_items(cur: Cursor, tenant: str, items: Sequence[dict[str, Any]]) -> int:
        """Insert or replace ``items`` (dicts with ``ITEM_COLUMNS`` and any other attributes)."""
        rev = cur.execute("INSERT INTO item_revisions (tenant) VALUES (?) RETURNING seq", (tenant,))[0]["seq"]
        stamp = now()
        cur.executemany(
            "INSERT INTO items (tenant, item_id, title, category, price, description, attributes, rev, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, item_id) DO UPDATE SET "
            "title = excluded.title, category = excluded.category, price = excluded.price, "
            "description = excluded.description, attributes = excluded.attributes, rev = excluded.rev, "
            "updated_at = excluded.updated_at",
            [
                (
                    tenant,
                    item["item_id"],
                    item["title"],
                    item.get("category"),
                    item.get("price"),
                    item.get("description"),
                    _dumps({k: v for k, v in item.items() if k not in ITEM_COLUMNS}),
                    rev,
                    stamp,
                )
                for item in items
            ],
        )
        return int(rev)

    @staticmethod
    def add_events(cur: Cursor, tenant: str, events: Sequence[dict[str, Any]]) -> int:
        """Append behavior events (canonical columns); returns how many."""
        stamp = now()
        cur.executemany(
            "INSERT INTO events (tenant, user_id, item_id, behavior, timestamp, value, text, recorded_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    tenant,
                    e["user_id"],
                    e.get("item_id"),
                    e["behavior"],
                    e["timestamp"],
                    e.get("value"),
                    e.get("text"),
                    stamp,
                )
                for e in events
            ],
        )
        return len(events)

    def items(self, tenant: str, *, after_rev: int = 0) -> list[dict[str, Any]]:
        rows = self.db.read(
            "SELECT item_id, title, category, price, description, attributes, rev FROM items "
            "WHERE tenant = ? AND rev > ? ORDER BY item_id",
            (tenant, after_rev),
        )
        out = []
        for row in rows:
            extra = json.loads(row.pop("attributes"))
            out.append({**extra, **row})
        return out

    def events(self, tenant: str, *, after_seq: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        sql = (
            "SELECT seq, user_id, item_id, behavior, timestamp, value, text FROM events "
            "WHERE tenant = ? AND seq > ? ORDER BY seq"
        )
        params: tuple[Any, ...] = (tenant, after_seq)
        if limit is not None:
            sql += " LIMIT ?"
            params += (limit,)
        return self.db.read(sql, params)

    def data_version(self, tenant: str) -> tuple[int, int]:
        """``(max event seq, max item rev)`` of ``tenant``: changes whenever its data does."""
        row = self.db.read(
            "SELECT (SELECT COALESCE(MAX(seq), 0) FROM events WHERE tenant = ?) AS events, "
            "(SELECT COALESCE(MAX(rev), 0) FROM items WHERE tenant = ?) AS items",
            (tenant, tenant),
        )[0]
        return int(row["events"]), int(row["items"])

    def counts(self, tenant: str) -> dict[str, int]:
        row = self.db.read(
            "SELECT (SELECT COUNT(*) FROM items WHERE tenant = ?) AS items, "
            "(SELECT COUNT(*) FROM events WHERE tenant = ?) AS events, "
            "(SELECT COUNT(DISTINCT user_id) FROM events WHERE tenant = ?) AS users, "
            "(SELECT COUNT(*) FROM feedback WHERE tenant = ?) AS feedback",
            (tenant, tenant, tenant, tenant),
        )[0]
        return {k: int(v) for k, v in row.items()}

    # -- chat sessions -----------------------------------------------------------------------
    def session(self, tenant: str, session_id: str) -> tuple[str, dict[str, Any]] | None:
        rows = self.db.read(
            "SELECT user_id, state FROM sessions WHERE tenant = ? AND session_id = ?", (tenant, session_id)
        )
        return (rows[0]["user_id"], json.loads(rows[0]["state"])) if rows else None

    def save_session(self, tenant: str, session_id: str, user_id: str, state: dict[str, Any]) -> None:
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO sessions (tenant, session_id, user_id, state, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (tenant, session_id) DO UPDATE SET state = excluded.state, "
                "updated_at = excluded.updated_at",
                (tenant, session_id, user_id, _dumps(state), now()),
            )

    def profiles(self, tenant: str) -> TenantProfileStore:
        return TenantProfileStore(self, tenant)


class TenantProfileStore(Store):
    """The agent's profile ``Store`` for one tenant, on the service database (either backend)."""

    def __init__(self, service: ServiceStore, tenant: str) -> None:
        super().__init__()
        self.service = service
        self.db = service.db
        self.tenant = tenant

    def close(self) -> None:
        """Nothing to do: the service store owns the connections."""

    # -- profiles -----------------------------------------------------------------------------
    def latest_profile(self, user_id: str) -> ProfileVersion | None:
        rows = self.db.read(
            "SELECT v.* FROM profile_versions v JOIN profile_heads h ON h.tenant = v.tenant "
            "AND h.user_id = v.user_id AND h.version = v.version WHERE h.tenant = ? AND h.user_id = ?",
            (self.tenant, user_id),
        )
        return version_from_row(rows[0]) if rows else None

    def profile_version(self, user_id: str, version: int) -> ProfileVersion | None:
        rows = self.db.read(
            "SELECT * FROM profile_versions WHERE tenant = ? AND user_id = ? AND version = ?",
            (self.tenant, user_id, version),
        )
        return version_from_row(rows[0]) if rows else None

    def profile_history(self, user_id: str) -> list[ProfileVersion]:
        rows = self.db.read(
            "SELECT * FROM profile_versions WHERE tenant = ? AND user_id = ? ORDER BY version",
            (self.tenant, user_id),
        )
        return [version_from_row(row) for row in rows]

    def save_profile(self, draft: ProfileDraft, *, expected_version: int) -> ProfileVersion:
        user_id, new, created = draft.user_id, expected_version + 1, now()

        def conflict(current: int) -> VersionConflictError:
            return VersionConflictError(
                f"profile of user {user_id!r} is at version {current}, not {expected_version}",
                user_id=user_id,
                attempts=1,
            )

        try:
            with self.db.transaction() as cur:
                if expected_version == 0:
                    cur.execute(
                        "INSERT INTO profile_heads (tenant, user_id, version) VALUES (?, ?, ?)",
                        (self.tenant, user_id, new),
                    )
                else:  # compare-and-swap: 0 rows moved means someone saved a newer version
                    cur.execute(
                        "UPDATE profile_heads SET version = ? WHERE tenant = ? AND user_id = ? AND version = ?",
                        (new, self.tenant, user_id, expected_version),
                    )
                    if cur.rowcount != 1:
                        raise conflict(-1)
                cur.execute(
                    "INSERT INTO profile_versions (tenant, user_id, version, created_at, producer, model, "
                    "template_version, evidence, feedback_upto, state, changes, usage) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (self.tenant, user_id, new, created, *version_columns(draft)),
                )
        except DuplicateKey:
            raise conflict(-1) from None
        return ProfileVersion(**draft.model_dump(), version=new, created_at=datetime.fromisoformat(created))

    # -- feedback -----------------------------------------------------------------------------
    def add_feedback(self, event: FeedbackEvent, cur: Cursor | None = None) -> StoredFeedback:
        """Append one reaction; inside ``cur``'s transaction when given (idempotent requests)."""
        sql = (
            "INSERT INTO feedback (tenant, feedback_id, user_id, item_id, signal, value, comment, "
            "recommendation_id, timestamp, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq"
        )
        params = (self.tenant, *feedback_columns(event))
        try:
            if cur is not None:
                seq = cur.execute(sql, params)[0]["seq"]
            else:
                with self.db.transaction() as own:
                    seq = own.execute(sql, params)[0]["seq"]
        except DuplicateKey:
            raise StoreError(f"feedback {event.feedback_id!r} is already recorded") from None
        return StoredFeedback(**event.model_dump(), seq=int(seq))

    def feedback(self, user_id: str, *, after_seq: int = 0) -> list[StoredFeedback]:
        rows = self.db.read(
            "SELECT * FROM feedback WHERE tenant = ? AND user_id = ? AND seq > ? ORDER BY seq",
            (self.tenant, user_id, after_seq),
        )
        return [feedback_from_row(row) for row in rows]

    def blocked_items(self, user_id: str) -> dict[str, str]:
        rows = self.db.read(
            "SELECT item_id, signal FROM feedback WHERE tenant = ? AND user_id = ? AND (signal IN "
            "('dislike', 'not_interested') OR (signal = 'rating' AND value <= ?)) ORDER BY seq",
            (self.tenant, user_id, LOW_RATING),
        )
        return {row["item_id"]: row["signal"] for row in rows}

    # -- recommendations -------------------------------------------------------------------------
    def save_recommendation(self, served: ServedRecommendation) -> None:
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO recommendations (tenant, recommendation_id, user_id, created_at, profile_version, "
                "model, template_version, fallback_reason, prompt_tokens, completion_tokens, cost_usd, usage) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (self.tenant, *served_columns(served)),
            )
            cur.executemany(
                "INSERT INTO recommendation_items (tenant, recommendation_id, rank, item_id, score, source) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (self.tenant, served.recommendation_id, i.rank, i.item_id, i.score, i.source)
                    for i in served.items
                ],
            )

    def recommendation(self, recommendation_id: str) -> ServedRecommendation | None:
        head = self.db.read(
            "SELECT * FROM recommendations WHERE tenant = ? AND recommendation_id = ?",
            (self.tenant, recommendation_id),
        )
        if not head:
            return None
        rows = self.db.read(
            "SELECT * FROM recommendation_items WHERE tenant = ? AND recommendation_id = ? ORDER BY rank",
            (self.tenant, recommendation_id),
        )
        return served_from_rows(head[0], rows)

    def latest_recommendation_with(self, user_id: str, item_id: str) -> str | None:
        rows = self.db.read(
            "SELECT r.recommendation_id FROM recommendations r JOIN recommendation_items i "
            "ON i.tenant = r.tenant AND i.recommendation_id = r.recommendation_id "
            "WHERE r.tenant = ? AND r.user_id = ? AND i.item_id = ? ORDER BY r.seq DESC LIMIT 1",
            (self.tenant, user_id, item_id),
        )
        return rows[0]["recommendation_id"] if rows else None

    def recent_recommendations(self, user_id: str, limit: int = 5) -> list[ServedRecommendation]:
        rows = self.db.read(
            "SELECT recommendation_id FROM recommendations WHERE tenant = ? AND user_id = ? "
            "ORDER BY seq DESC LIMIT ?",
            (self.tenant, user_id, limit),
        )
        return [r for row in rows if (r := self.recommendation(row["recommendation_id"])) is not None]

    def users(self) -> list[str]:
        rows = self.db.read(
            "SELECT DISTINCT user_id FROM profile_heads WHERE tenant = ? ORDER BY user_id", (self.tenant,)
        )
        return [row["user_id"] for row in rows]

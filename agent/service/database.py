"""One SQL connection layer over SQLite (embedded default) and PostgreSQL (several instances).

``Database.open(url)`` takes ``sqlite:///path.sqlite`` (or a bare path, or ``sqlite://:memory:``)
or ``postgresql://user@host:port/db``. Everything above this module writes SQL once, with ``?``
placeholders, and runs it through :meth:`Database.transaction` or :meth:`Database.read`; this
module turns the placeholders into psycopg's ``%s`` and maps the few type words that differ
(``{serial}``, ``{real}``, ``{bigint}``) in migrations.

Promises:

* A ``transaction()`` block commits when it ends and rolls back when it raises, on both
  backends; a process killed mid-block leaves the previous state (SQLite's WAL journal,
  PostgreSQL's own).
* SQLite writes take the write lock at ``BEGIN IMMEDIATE``, so two writers never deadlock on
  a lock upgrade. PostgreSQL runs at READ COMMITTED; callers that need compare-and-swap use
  ``UPDATE ... WHERE version = ?`` and check the row count (see ``agent.service.storage``).
* Driver errors surface as ``StoreError`` with the backend named and the URL's password removed,
  never as a driver traceback; a violated unique key is ``DuplicateKey`` (a ``StoreError``).
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from agent.errors import StoreError

_TYPES = {
    "sqlite": {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "real": "REAL", "bigint": "INTEGER"},
    "postgresql": {
        "serial": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "real": "DOUBLE PRECISION",
        "bigint": "BIGINT",
    },
}


class DuplicateKey(StoreError):
    """A row with the same unique key exists (an idempotent retry, or a real clash)."""


class Cursor(Protocol):
    """What a transaction block gets: ``execute`` returns rows as dicts and the row count."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    @property
    def rowcount(self) -> int: ...


def redact_url(url: str) -> str:
    """``url`` without a password (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


class Database:
    """A connection (SQLite) or a small pool (PostgreSQL), safe to share between threads."""

    dialect: str

    @staticmethod
    def open(url: str) -> Database:
        """Open ``url`` (see module docstring). Raises ``StoreError`` (exit code 7) when it can't."""
        if url.startswith(("postgresql://", "postgres://")):
            return PostgresDatabase(url)
        if url.startswith("sqlite://"):
            path = url.removeprefix("sqlite://")
            path = path[1:] if path.startswith("/") and not path.startswith("//") else path
            return SQLiteDatabase(path or ":memory:")
        if "://" in url:
            scheme = url.split("://", 1)[0]
            raise StoreError(
                f"store URL scheme {scheme!r} is not supported; use sqlite:///PATH or postgresql://..."
            )
        return SQLiteDatabase(url)

    def types(self) -> dict[str, str]:
        return _TYPES[self.dialect]

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:  # pragma: no cover - abstract
        raise NotImplementedError
        yield

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.transaction() as cur:
            return cur.execute(sql, params)

    def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


# -- SQLite --------------------------------------------------------------------------------
class _SQLiteCursor:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self.rowcount = 0

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cursor = self._connection.execute(sql, tuple(params))
        rows = [dict(row) for row in cursor.fetchall()] if cursor.description else []
        self.rowcount = cursor.rowcount
        return rows

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._connection.executemany(sql, [tuple(r) for r in rows])


class SQLiteDatabase(Database):
    """One SQLite file in WAL mode (or ``:memory:``); one connection guarded by a lock.

    Other processes on the same file coordinate through SQLite's own locking.
    """

    dialect = "sqlite"

    def __init__(self, path: str, *, timeout_s: float = 30.0) -> None:
        self.path = path
        self._lock = threading.RLock()
        try:
            if path != ":memory:":
                Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self._connection = sqlite3.connect(
                path, timeout=timeout_s, isolation_level=None, check_same_thread=False
            )
            self._connection.row_factory = sqlite3.Row
            if path != ":memory:":
                # WAL: readers never block the writer; a crash mid-write is rolled back on open.
                # synchronous=NORMAL: a commit survives the process being killed (it is in the
                # OS's hands), not a power cut; it spares one fsync per request.
                self._connection.execute("PRAGMA journal_mode=WAL")
                self._connection.execute("PRAGMA synchronous=NORMAL")
            self._connection.execute("PRAGMA foreign_keys=ON")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the SQLite store {path}: {exc}") from None

    def describe(self) -> str:
        return f"sqlite:///{self.path}"

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        with self._lock:
            connection = self._connection
            try:
                connection.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store {self.path} is not writable: {exc}") from None
            try:
                yield _SQLiteCursor(connection)
            except sqlite3.IntegrityError as exc:
                connection.execute("ROLLBACK")
                raise DuplicateKey(f"SQLite store {self.path}: {exc}") from None
            except sqlite3.Error as exc:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise StoreError(f"SQLite store {self.path}: {exc}") from None
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            try:
                connection.execute("COMMIT")
            except sqlite3.Error as exc:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise StoreError(f"SQLite store {self.path}: commit failed: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._connection.close()


# -- PostgreSQL ------------------------------------------------------------------------------
_PLACEHOLDER = re.compile(r"\?")


class _PostgresCursor:
    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self.rowcount = 0

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cursor = self._connection.execute(_PLACEHOLDER.sub("%s", sql), tuple(params))
        self.rowcount = cursor.rowcount
        return list(cursor.fetchall()) if cursor.description else []

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._connection.cursor() as cursor:
            cursor.executemany(_PLACEHOLDER.sub("%s", sql), [tuple(r) for r in rows])


class PostgresDatabase(Database):
    """A psycopg 3 connection pool (psycopg_pool) on one PostgreSQL database."""

    dialect = "postgresql"

    def __init__(self, url: str, *, max_connections: int = 8, timeout_s: float = 10.0) -> None:
        try:
            import psycopg
            from psycopg.rows import dict_row
            from psycopg_pool import ConnectionPool
        except ImportError:
            raise StoreError(
                "PostgreSQL needs the 'service' extra: pip install 'recagent[service]'"
            ) from None
        self.url = url
        self._errors = psycopg
        try:
            self._pool = ConnectionPool(
                url,
                min_size=1,
                max_size=max_connections,
                timeout=timeout_s,
                kwargs={"row_factory": dict_row, "autocommit": False},
                open=True,
            )
            self._pool.wait(timeout=timeout_s)
        except Exception as exc:  # psycopg / pool errors: report them as one line
            raise StoreError(f"cannot open the PostgreSQL store {redact_url(url)}: {exc}") from None

    def describe(self) -> str:
        return redact_url(self.url)

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        psycopg = self._errors
        try:
            with self._pool.connection() as connection, connection.transaction():
                yield _PostgresCursor(connection)
        except psycopg.errors.UniqueViolation as exc:
            raise DuplicateKey(f"PostgreSQL store: {exc}".splitlines()[0]) from None
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL store {redact_url(self.url)}: {exc}".splitlines()[0]) from None

    def close(self) -> None:
        self._pool.close()

"""The durable ledger of a batch run: one SQLite file per output directory.

Every model request of a run has a row keyed by its ``custom_id`` (a hash of user, task,
template version, model, parameters and the request body, see ``agent.batch.runner.custom_id``)
with its status (``pending``, ``done``, ``failed``), attempts, usage and, once done, the
validated result. Promises:

* A result is committed in the same transaction that marks its key done, so after a crash
  (``kill -9`` included) a key is either done with its result or not done at all; a re-run
  skips done keys and sends nothing for them.
* ``results.jsonl`` and ``failures.jsonl`` are rewritten from the ledger (temp file +
  atomic rename), one line per (user, task), sorted by user id then task, so they never
  hold duplicates or half lines, whatever happened to earlier runs.
* Memory stays flat: lookups are indexed queries, outputs are streamed from cursors, the
  page cache is capped (``CACHE_KIB``) and the WAL is checkpointed by SQLite every 1,000
  pages, so neither grows with the number of requests.

* One writer per directory: a writable ledger holds an exclusive lock (``LOCK_FILE``, an OS
  lock, released when the process dies) until it is closed, so a second ``batch`` or
  ``openai-batch`` on the same ``--out`` stops at once with ``DirectoryInUseError`` instead of
  sending the same requests again and racing on the output files.

WAL mode with ``synchronous=NORMAL`` survives the death of the process at any moment; only
an operating-system crash may lose the last commits (those requests are then re-sent).
"""

from __future__ import annotations

import heapq
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock

from agent.errors import ConfigError, DirectoryInUseError, LedgerError, Usage
from agent.files import atomic_writer
from agent.secrets import redact, redact_json

LEDGER_FILE = "ledger.sqlite"
LOCK_FILE = ".recagent.lock"
RESULTS_FILE = "results.jsonl"
FAILURES_FILE = "failures.jsonl"
CACHE_KIB = 2000
"""SQLite page cache per connection, in KiB."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    custom_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    task TEXT NOT NULL,
    generation INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    context TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_by_pair ON requests (user_id, task, generation);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batch_inputs (
    path TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL,
    batch_id TEXT
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    input_path TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    collected INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
"""

# The newest row of every (user, task) pair: older rows are earlier versions of the same
# request (different data, template or parameters) and are kept for accounting only.
_NEWEST = """
SELECT r.* FROM requests r
WHERE r.generation = (SELECT MAX(generation) FROM requests s WHERE s.user_id = r.user_id AND s.task = r.task)
"""


@dataclass(frozen=True)
class Entry:
    custom_id: str
    status: str
    attempts: int


class Ledger:
    """The SQLite ledger in ``directory`` (created if needed). Use from one thread."""

    def __init__(self, directory: str | Path, *, readonly: bool = False) -> None:
        self.directory = Path(directory)
        path = self.directory / LEDGER_FILE
        self._lock: filelock.BaseFileLock | None = None
        if readonly:
            if not path.is_file():
                raise ConfigError(f"no batch ledger in {self.directory} ({LEDGER_FILE} not found)")
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock = _lock_directory(self.directory)
        try:
            try:
                connection = (
                    sqlite3.connect(f"file:{path}?mode=ro", uri=True) if readonly else sqlite3.connect(path)
                )
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot open the batch ledger {path}: {exc}") from None
            connection.row_factory = sqlite3.Row
            self._db = _Guarded(connection, path)
            if not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
            # Bounded page cache (SQLite's usual default, stated so that no build's other default
            # can make memory follow the ledger's size): a one-off ~2 MB, then flat.
            self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        except BaseException:
            if self._lock is not None:
                self._lock.release()
            raise
        self._uncommitted = 0

    def close(self) -> None:
        try:
            try:
                self._db.commit()
            finally:
                self._db.close()
        finally:
            if self._lock is not None:
                self._lock.release()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- run metadata --------------------------------------------------------------------
    def meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row["value"]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
        self._db.commit()

    def new_generation(self) -> int:
        """A number larger than any planned so far (each planning pass gets one)."""
        current = self.meta("generation") or 0
        self.set_meta("generation", current + 1)
        return int(current + 1)

    # -- requests ------------------------------------------------------------------------
    def plan(
        self, custom_id: str, user_id: str, task: str, generation: int, context: str | None = None
    ) -> Entry:
        """Register a request of this run (or re-register a known one); returns its state.

        Commits lazily (every 256 plans or with the next result): a plan lost to a crash is
        simply planned again.
        """
        self._db.execute(
            "INSERT INTO requests (custom_id, user_id, task, generation, context, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (custom_id) DO UPDATE SET generation = "
            "MAX(generation, excluded.generation), context = COALESCE(excluded.context, context)",
            (custom_id, user_id, task, generation, context, time.time()),
        )
        self._uncommitted += 1
        if self._uncommitted >= 256:
            self.commit()
        entry = self.get(custom_id)
        assert entry is not None  # just inserted
        return entry

    def get(self, custom_id: str) -> Entry | None:
        row = self._db.execute(
            "SELECT custom_id, status, attempts FROM requests WHERE custom_id = ?", (custom_id,)
        ).fetchone()
        return Entry(row["custom_id"], row["status"], row["attempts"]) if row else None

    def context(self, custom_id: str) -> tuple[str, str, str | None] | None:
        """(user_id, task, stored reply context JSON) of a key, or None if unknown."""
        row = self._db.execute(
            "SELECT user_id, task, context FROM requests WHERE custom_id = ?", (custom_id,)
        ).fetchone()
        return (row["user_id"], row["task"], row["context"]) if row else None

    def record_done(self, custom_id: str, result: str, usage: Usage) -> None:
        """Mark done with its result (JSON text) and usage; committed before returning."""
        self._db.execute(
            "UPDATE requests SET status = 'done', attempts = attempts + 1, result = ?, error = NULL, "
            + _USAGE_SET
            + " WHERE custom_id = ?",
            (redact(result), *_usage_values(usage), time.time(), custom_id),  # no echoed key, ever
        )
        self.commit()

    def record_failed(
        self, custom_id: str, error: dict[str, Any], usage: Usage, *, count_attempt: bool = True
    ) -> None:
        """Mark failed with its typed error; ``count_attempt=False`` for failures that are not the
        request's fault (quota, auth, budget), which leaves its retry allowance untouched."""
        self._db.execute(
            "UPDATE requests SET status = 'failed', attempts = attempts + ?, error = ?, "
            + _USAGE_SET
            + " WHERE custom_id = ?",
            (
                int(count_attempt),
                json.dumps(redact_json(error)),
                *_usage_values(usage),
                time.time(),
                custom_id,
            ),
        )
        self.commit()

    def add_usage(self, custom_id: str, usage: Usage) -> None:
        """Account for requests that produced no outcome (e.g. a stopped run)."""
        self._db.execute(
            "UPDATE requests SET " + _USAGE_SET + " WHERE custom_id = ?",
            (*_usage_values(usage), time.time(), custom_id),
        )
        self.commit()

    def commit(self) -> None:
        self._db.commit()
        self._uncommitted = 0

    def totals(self) -> Usage:
        """Usage and cost of every request ever sent for this directory."""
        row = self._db.execute(
            "SELECT COALESCE(SUM(prompt_tokens), 0) p, COALESCE(SUM(cached_tokens), 0) c, "
            "COALESCE(SUM(completion_tokens), 0) o, COALESCE(SUM(cost_usd), 0) usd, "
            "COALESCE(SUM(requests), 0) n FROM requests"
        ).fetchone()
        return Usage(row["p"], row["o"], row["c"], float(row["usd"]), row["n"])

    def status_counts(self) -> dict[str, int]:
        """Newest row of each (user, task) pair, counted by status."""
        rows = self._db.execute(f"SELECT status, COUNT(*) n FROM ({_NEWEST}) GROUP BY status").fetchall()
        return {row["status"]: row["n"] for row in rows}

    def user_counts(self) -> dict[str, int]:
        """Users whose every task is done, and users with at least one failed task (newest rows)."""
        row = self._db.execute(
            f"SELECT SUM(ok) done, SUM(bad) failed FROM (SELECT MIN(status = 'done') ok, "
            f"MAX(status = 'failed') bad FROM ({_NEWEST}) GROUP BY user_id)"
        ).fetchone()
        return {"users_done": int(row["done"] or 0), "users_failed": int(row["failed"] or 0)}

    def mean_completion_tokens(self, task: str) -> tuple[float, int] | None:
        """Average completion tokens per request of finished ``task`` keys, and how many."""
        row = self._db.execute(
            "SELECT SUM(completion_tokens) t, SUM(requests) n FROM requests WHERE task = ? AND status = 'done'",
            (task,),
        ).fetchone()
        return (row["t"] / row["n"], row["n"]) if row and row["n"] else None

    # -- outputs -------------------------------------------------------------------------
    def completion_samples(self, task: str, limit: int = 2000) -> list[int]:
        """Completion tokens per request of the latest finished ``task`` requests (to resume a
        learned completion budget)."""
        rows = self._db.rows(
            self._db.execute(
                "SELECT completion_tokens, requests FROM requests WHERE task = ? AND status = 'done' "
                "AND requests > 0 ORDER BY rowid DESC LIMIT ?",
                (task, limit),
            )
        )
        return [int(row["completion_tokens"] / row["requests"]) for row in rows]

    def iter_newest(self, status: str) -> Iterator[dict[str, Any]]:
        """Output lines (as dicts) of the newest row per (user, task) with ``status``, sorted."""
        cursor = self._db.execute(f"{_NEWEST} AND r.status = ? ORDER BY r.user_id, r.task", (status,))
        for row in self._db.rows(cursor):
            line: dict[str, Any] = {
                "user_id": row["user_id"],
                "task": row["task"],
                "custom_id": row["custom_id"],
            }
            if status == "done":
                line["result"] = json.loads(row["result"])
            else:
                line["attempts"] = row["attempts"]
                line["error"] = json.loads(row["error"]) if row["error"] else None
            yield line

    def write_outputs(self, directory: str | Path | None = None) -> tuple[int, int]:
        """Rewrite ``results.jsonl`` and ``failures.jsonl``; returns (results, failures) counts."""
        self.commit()
        target = Path(directory) if directory is not None else self.directory
        return (
            write_jsonl(target / RESULTS_FILE, self.iter_newest("done")),
            write_jsonl(target / FAILURES_FILE, self.iter_newest("failed")),
        )

    # -- Batch API bookkeeping -------------------------------------------------------------
    def add_batch(self, batch_id: str, input_path: str, input_file_id: str, model: str, status: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, ?, 0, ?)",
            (batch_id, input_path, input_file_id, model, status, time.time()),
        )
        self.commit()

    def set_batch(self, batch_id: str, *, status: str, collected: bool = False) -> None:
        self._db.execute(
            "UPDATE batches SET status = ?, collected = ? WHERE batch_id = ?",
            (status, int(collected), batch_id),
        )
        self.commit()

    def batches(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM batches ORDER BY created_at, batch_id").fetchall()
        return [dict(row) for row in rows]

    def add_input(self, path: str, model: str, requests: int) -> None:
        """Register a prepared request file (not yet submitted); a submitted one is left alone."""
        self._db.execute(
            "INSERT INTO batch_inputs VALUES (?, ?, ?, NULL) ON CONFLICT (path) DO UPDATE SET "
            "requests = excluded.requests WHERE batch_id IS NULL",
            (path, model, requests),
        )
        self.commit()

    def inputs(self, *, submitted: bool) -> list[dict[str, Any]]:
        where = "batch_id IS NOT NULL" if submitted else "batch_id IS NULL"
        rows = self._db.execute(f"SELECT * FROM batch_inputs WHERE {where} ORDER BY path").fetchall()
        return [dict(row) for row in rows]

    def drop_input(self, path: str) -> None:
        self._db.execute("DELETE FROM batch_inputs WHERE path = ? AND batch_id IS NULL", (path,))
        self.commit()

    def mark_submitted(self, path: str, batch_id: str, custom_ids: Iterator[str]) -> None:
        """The file went out as ``batch_id``: its keys are in flight at the provider."""
        self._db.executemany(
            "UPDATE requests SET status = 'submitted', updated_at = ? WHERE custom_id = ? AND status != 'done'",
            ((time.time(), cid) for cid in custom_ids),
        )
        self._db.execute("UPDATE batch_inputs SET batch_id = ? WHERE path = ?", (batch_id, path))
        self.commit()

    def set_status(self, custom_id: str, status: str) -> None:
        self._db.execute(
            "UPDATE requests SET status = ?, updated_at = ? WHERE custom_id = ?",
            (status, time.time(), custom_id),
        )


class _Guarded:
    """The ledger's SQLite connection, with every SQLite failure (disk full, I/O error, corrupt
    file) raised as one typed ``LedgerError`` (exit code 7) instead of a traceback. SQLite keeps
    what was committed, so the run can be resumed once the disk is fixed."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db, self._path = connection, path

    @contextmanager
    def _typed(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise LedgerError(f"batch ledger {self._path}: {exc}") from None

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        with self._typed():
            return self._db.execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        with self._typed():
            return self._db.executemany(sql, rows)

    def executescript(self, script: str) -> None:
        with self._typed():
            self._db.executescript(script)

    def rows(self, cursor: sqlite3.Cursor) -> Iterator[sqlite3.Row]:
        with self._typed():
            yield from cursor

    def commit(self) -> None:
        with self._typed():
            self._db.commit()

    def close(self) -> None:
        with self._typed():
            self._db.close()


def _lock_directory(directory: Path) -> filelock.BaseFileLock:
    """The directory's exclusive lock, taken without waiting; ``DirectoryInUseError`` if held."""
    lock = filelock.FileLock(directory / LOCK_FILE, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise DirectoryInUseError(
            f"{directory} is in use by another recagent run; wait for it to finish or use another --out"
        ) from None
    return lock


_USAGE_SET = (
    "prompt_tokens = prompt_tokens + ?, cached_tokens = cached_tokens + ?, "
    "completion_tokens = completion_tokens + ?, cost_usd = cost_usd + ?, requests = requests + ?, "
    "updated_at = ?"
)


def _usage_values(usage: Usage) -> tuple[int, int, int, float, int]:
    return usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens, usage.cost_usd, usage.requests


def write_jsonl(path: Path, lines: Iterator[dict[str, Any]]) -> int:
    """Write ``lines`` to ``path`` atomically (temp file + rename); returns the line count."""
    count = 0
    # Disk full, permissions, a target that is a directory or a device: one LedgerError, and
    # the ledger still holds every result.
    with atomic_writer(path, LedgerError, "batch output") as handle:
        for line in lines:
            handle.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
            count += 1
    return count


def merge_outputs(directories: list[Path], out_dir: Path) -> dict[str, Any]:
    """Merge the results and failures of shard directories into ``out_dir``, streaming.

    Each (user, task) appears once per file; when two directories hold the same pair (shards
    never overlap, so only a mistake does that) the first wins and ``conflicts`` counts it.
    """
    ledgers = [Ledger(d, readonly=True) for d in directories]
    try:
        shards = [ledger.meta("identity") or {} for ledger in ledgers]
        out_dir.mkdir(parents=True, exist_ok=True)
        conflicts = 0

        def unique(streams: list[Iterator[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
            nonlocal conflicts
            last: tuple[str, str] | None = None
            for line in heapq.merge(*streams, key=lambda row: (row["user_id"], row["task"])):
                pair = (line["user_id"], line["task"])
                if pair == last:
                    conflicts += 1
                    continue
                last = pair
                yield line

        results = write_jsonl(out_dir / RESULTS_FILE, unique([lg.iter_newest("done") for lg in ledgers]))
        failures = write_jsonl(out_dir / FAILURES_FILE, unique([lg.iter_newest("failed") for lg in ledgers]))
    finally:
        for ledger in ledgers:
            ledger.close()
    return {
        "directories": [str(d) for d in directories],
        "shards": [s.get("shard") for s in shards],
        "results": results,
        "failures": failures,
        "conflicts": conflicts,
    }

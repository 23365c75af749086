"""Where a data set's profiles live by default, and a store that is created on first write.

Two promises for the default store (``open_dataset_store``):

* **One store per data set.** Without ``--db``/``RECAGENT_DB`` a catalog gets its own SQLite
  file under the user data directory, named after the catalog file and a hash of its resolved
  path (``stores/items-3f2a9c0d1e4b.sqlite``). User ids are only unique within a data set, so a
  ``u001`` profile built on one catalog is never used with another. An explicit ``--db`` or
  ``RECAGENT_DB`` is used as given: whoever names one file for several data sets shares it.
* **Nothing is created until something is written.** ``LazyStore`` answers reads from a store
  that does not exist yet with "nothing stored" and creates (and migrates) the file on the
  first write, so a command that fails before saving anything leaves no file behind.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from agent.profiles.feedback import FeedbackEvent, ServedRecommendation, StoredFeedback
from agent.profiles.store import DB_ENV, MEMORY, SQLiteStore, Store, default_db_path
from agent.profiles.versions import ProfileDraft, ProfileVersion

__all__ = ["LazyStore", "dataset_db_path", "open_dataset_store"]


def dataset_db_path(items_path: str | Path) -> Path:
    """The default store file of the catalog at ``items_path`` (see the module docstring)."""
    resolved = Path(items_path).expanduser().resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in resolved.name.split(".")[0]) or "items"
    return default_db_path().parent / "stores" / f"{stem}-{digest}.sqlite"


def open_dataset_store(db: str | Path | None, items_path: str | Path | None) -> Store:
    """The store for a command: ``db`` if given (``":memory:"`` keeps nothing), else
    ``RECAGENT_DB``, else the per-data-set file of ``items_path``; lazily created.

    ``items_path`` None with neither ``db`` nor ``RECAGENT_DB`` uses the shared default file
    (commands that know no catalog, e.g. listing a stored profile without ``--items``).
    """
    if db is not None:
        return SQLiteStore(MEMORY) if str(db) == MEMORY else LazyStore(Path(db).expanduser())
    if os.environ.get(DB_ENV) or items_path is None:
        return LazyStore(default_db_path())
    return LazyStore(dataset_db_path(items_path))


class LazyStore(Store):
    """A ``SQLiteStore`` at ``path`` that is opened only once the file exists or on the first write.

    Reads before that answer "nothing stored" (no profile, no feedback, nothing served), which
    is exactly what a store that was never written holds.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = str(path)
        self._inner: SQLiteStore | None = None
        self._open_lock = threading.Lock()

    def _store(self, *, create: bool) -> SQLiteStore | None:
        with self._open_lock:
            if self._inner is None and (create or Path(self.path).exists()):
                self._inner = SQLiteStore(self.path)
            return self._inner

    def _writable(self) -> SQLiteStore:
        store = self._store(create=True)
        if store is None:  # pragma: no cover - create=True always opens (or raises StoreError)
            raise RuntimeError("store not opened")
        return store

    # -- reads: "nothing stored" until the file exists ----------------------------------------
    def latest_profile(self, user_id: str) -> ProfileVersion | None:
        store = self._store(create=False)
        return store.latest_profile(user_id) if store else None

    def profile_version(self, user_id: str, version: int) -> ProfileVersion | None:
        store = self._store(create=False)
        return store.profile_version(user_id, version) if store else None

    def profile_history(self, user_id: str) -> list[ProfileVersion]:
        store = self._store(create=False)
        return store.profile_history(user_id) if store else []

    def feedback(self, user_id: str, *, after_seq: int = 0) -> list[StoredFeedback]:
        store = self._store(create=False)
        return store.feedback(user_id, after_seq=after_seq) if store else []

    def blocked_items(self, user_id: str) -> dict[str, str]:
        store = self._store(create=False)
        return store.blocked_items(user_id) if store else {}

    def recommendation(self, recommendation_id: str) -> ServedRecommendation | None:
        store = self._store(create=False)
        return store.recommendation(recommendation_id) if store else None

    def latest_recommendation_with(self, user_id: str, item_id: str) -> str | None:
        store = self._store(create=False)
        return store.latest_recommendation_with(user_id, item_id) if store else None

    def recent_recommendations(self, user_id: str, limit: int = 5) -> list[ServedRecommendation]:
        store = self._store(create=False)
        return store.recent_recommendations(user_id, limit) if store else []

    def users(self) -> list[str]:
        store = self._store(create=False)
        return store.users() if store else []

    # -- writes: create the file first ----------------------------------------------------------
    def save_profile(self, draft: ProfileDraft, *, expected_version: int) -> ProfileVersion:
        return self._writable().save_profile(draft, expected_version=expected_version)

    def add_feedback(self, event: FeedbackEvent) -> StoredFeedback:
        return self._writable().add_feedback(event)

    def save_recommendation(self, served: ServedRecommendation) -> None:
        self._writable().save_recommendation(served)

    def close(self) -> None:
        with self._open_lock:
            if self._inner is not None:
                self._inner.close()

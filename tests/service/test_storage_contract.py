"""The store's contract, run unchanged on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from agent.errors import StoreError, VersionConflictError
from agent.profiles.feedback import make_event
from agent.profiles.versions import ProfileDraft, ProfileState
from agent.prompting.schemas import BehaviorProfile
from agent.service.keys import authenticate, create_key, hash_key
from agent.service.storage import IdempotencyConflict, ServiceStore

T0 = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
def store(store_url: str) -> ServiceStore:
    s = ServiceStore.open(store_url)
    yield s  # type: ignore[misc]
    s.close()


def _items(store: ServiceStore, tenant: str, *ids: str) -> int:
    with store.db.transaction() as cur:
        return store.upsert_items(
            cur, tenant, [{"item_id": i, "title": f"Item {i}", "colour": "red"} for i in ids]
        )


def _events(store: ServiceStore, tenant: str, user: str, *items: str) -> None:
    rows = [{"user_id": user, "item_id": i, "behavior": "view", "timestamp": T0.isoformat()} for i in items]
    with store.db.transaction() as cur:
        store.add_events(cur, tenant, rows)


def _profile() -> BehaviorProfile:
    return BehaviorProfile.model_validate(
        {
            "summary": "Likes tea.",
            "interests": [{"name": "tea", "strength": 0.8, "evidence": []}],
            "dislikes": [],
            "patterns": {
                "price_sensitivity": "medium",
                "typical_price_min": None,
                "typical_price_max": None,
                "recent_focus": None,
                "exploration": "focused",
            },
        }
    )


def _draft(user: str) -> ProfileDraft:
    return ProfileDraft(user_id=user, state=ProfileState(profile=_profile()), producer="import")


def test_migrations_are_recorded_once_and_reopening_applies_nothing(store_url: str) -> None:
    first = ServiceStore.open(store_url)
    assert first.migrations() == ["001_service"]
    first.close()
    again = ServiceStore.open(store_url)
    assert again.migrations() == ["001_service"]
    again.close()


def test_a_database_from_a_newer_version_is_refused(store: ServiceStore, store_url: str) -> None:
    with store.db.transaction() as cur:
        cur.execute("INSERT INTO migrations (name, applied_at) VALUES ('999_future', 'x')")
    with pytest.raises(StoreError, match="newer recagent"):
        ServiceStore.open(store_url)


def test_items_upsert_replaces_and_bumps_the_data_version(store: ServiceStore) -> None:
    assert store.data_version("t1") == (0, 0)
    rev1 = _items(store, "t1", "a", "b")
    rev2 = _items(store, "t1", "b")
    assert rev2 > rev1 and store.data_version("t1") == (0, rev2)
    items = {i["item_id"]: i for i in store.items("t1")}
    assert set(items) == {"a", "b"} and items["b"]["rev"] == rev2 and items["a"]["colour"] == "red"
    assert [i["item_id"] for i in store.items("t1", after_rev=rev1)] == ["b"]


def test_every_read_is_scoped_to_its_tenant(store: ServiceStore) -> None:
    _items(store, "a", "x")
    _items(store, "b", "y")
    _events(store, "a", "u1", "x")
    assert [i["item_id"] for i in store.items("a")] == ["x"]
    assert store.events("b") == [] and len(store.events("a")) == 1
    assert store.data_version("b")[0] == 0
    a, b = store.profiles("a"), store.profiles("b")
    a.save_profile(_draft("u1"), expected_version=0)
    assert b.latest_profile("u1") is None and a.latest_profile("u1") is not None
    a.add_feedback(make_event(user_id="u1", item_id="x", signal="dislike", timestamp=T0))
    assert b.feedback("u1") == [] and b.blocked_items("u1") == {}
    assert a.blocked_items("u1") == {"x": "dislike"}
    store.save_session("a", "s-12345678", "u1", {"turns": 1})
    assert store.session("b", "s-12345678") is None
    assert store.counts("b") == {"items": 1, "events": 0, "users": 0, "feedback": 0}


def test_idempotent_writes_happen_once_and_a_reused_key_with_another_body_is_refused(
    store: ServiceStore,
) -> None:
    calls = []

    def write(cur: object) -> tuple[int, object]:
        calls.append(1)
        store.add_events(
            cur, "t", [{"user_id": "u", "item_id": "i", "behavior": "view", "timestamp": T0.isoformat()}]
        )  # type: ignore[arg-type]
        return 200, {"accepted": 1}

    first = store.idempotent("t", "key-1", "hash-a", write)
    second = store.idempotent("t", "key-1", "hash-a", write)
    assert first == (200, {"accepted": 1}, False) and second == (200, {"accepted": 1}, True)
    assert len(calls) == 1 and len(store.events("t")) == 1
    with pytest.raises(IdempotencyConflict):
        store.idempotent("t", "key-1", "hash-b", write)
    assert store.idempotent("other", "key-1", "hash-b", write)[2] is False  # keys are per tenant


def test_a_failed_write_records_no_idempotency_key(store: ServiceStore) -> None:
    def failing(cur: object) -> tuple[int, object]:
        store.add_events(cur, "t", [{"user_id": "u", "item_id": "i", "behavior": "view", "timestamp": "x"}])  # type: ignore[arg-type]
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.idempotent("t", "key-2", "h", failing)
    assert store.events("t") == []  # rolled back
    assert store.idempotent("t", "key-2", "h", lambda cur: (200, {"ok": True}))[2] is False


def test_save_profile_is_a_compare_and_swap(store: ServiceStore) -> None:
    profiles = store.profiles("t")
    assert profiles.save_profile(_draft("u"), expected_version=0).version == 1
    with pytest.raises(VersionConflictError):
        profiles.save_profile(_draft("u"), expected_version=0)
    assert profiles.save_profile(_draft("u"), expected_version=1).version == 2
    with pytest.raises(VersionConflictError):
        profiles.save_profile(_draft("u"), expected_version=1)
    assert [v.version for v in profiles.profile_history("u")] == [1, 2]


def test_concurrent_feedback_and_profile_updates_lose_nothing(store: ServiceStore) -> None:
    profiles = store.profiles("t")
    profiles.save_profile(_draft("u"), expected_version=0)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(10):
                profiles.add_feedback(
                    make_event(user_id="u", item_id=f"i{n}-{i}", signal="like", timestamp=T0)
                )
                profiles.update_profile("u", lambda latest: _draft("u"), max_attempts=200)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(profiles.feedback("u")) == 40
    assert [v.version for v in profiles.profile_history("u")] == list(range(1, 42))


def test_keys_are_stored_hashed_and_revocation_sticks(store: ServiceStore) -> None:
    key = create_key(store, "t", ("read",), "ci")
    rows = store.db.read("SELECT * FROM api_keys")
    assert rows and all(key not in str(value) for row in rows for value in row.values())
    assert rows[0]["key_hash"] == hash_key(key)
    principal = authenticate(store, key)
    assert principal is not None and principal.tenant == "t" and principal.scopes == ("read",)
    assert store.revoke_key(principal.key_id) and not store.revoke_key(principal.key_id)
    assert authenticate(store, key) is None
    assert authenticate(store, key[:-1] + ("A" if key[-1] != "A" else "B")) is None

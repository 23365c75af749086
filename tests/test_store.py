"""The SQLite profile store: migrations, versions, optimistic concurrency (threads and processes,
no lost update) and crash safety (a process killed mid-refinement leaves the previous version)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import errors
from agent.profiles.feedback import FeedbackEvent, ServedItem, ServedRecommendation
from agent.profiles.store import MIGRATIONS, SQLiteStore, default_db_path, open_store
from agent.profiles.versions import ProfileDraft, ProfileVersion, initial_state
from agent.prompting.schemas import BehaviorPatterns, BehaviorProfile, Interest
from tests.conftest import ROOT

T0 = datetime(2026, 9, 1, tzinfo=UTC)


def base_profile(*names: str) -> BehaviorProfile:
    return BehaviorProfile(
        summary="s",
        interests=[Interest(name=n, strength=0.5, evidence=[]) for n in names],
        dislikes=[],
        patterns=BehaviorPatterns(
            price_sensitivity="unknown",
            typical_price_min=None,
            typical_price_max=None,
            recent_focus=None,
            exploration="focused",
        ),
    )


def draft(user: str, *names: str, producer: str = "import", upto: int = 0) -> ProfileDraft:
    return ProfileDraft(
        user_id=user,
        state=initial_state(base_profile(*names), T0),
        producer=producer,  # type: ignore[arg-type]
        feedback_upto=upto,
    )


def with_interest(latest: ProfileVersion | None, name: str) -> ProfileDraft:
    """The next version: the latest one plus one interest (a marker that must never be lost)."""
    names = [i.name for i in latest.state.profile.interests] if latest else []
    return draft("u1", *names, name)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "profiles.sqlite"


@pytest.fixture
def store(db: Path) -> Iterator[SQLiteStore]:
    with SQLiteStore(db) as s:
        yield s


# -- basics ------------------------------------------------------------------------------
def test_default_path_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_db_path() == tmp_path / "recagent.sqlite"  # tests/conftest.py sets RECAGENT_DB
    monkeypatch.delenv("RECAGENT_DB")
    assert default_db_path().name == "recagent.sqlite" and "recagent" in str(default_db_path().parent)
    with open_store(tmp_path / "new" / "dir.sqlite") as created:  # parent directories are created
        assert Path(created.path).is_file()


def test_migrations_are_named_applied_once_and_a_newer_database_is_refused(db: Path) -> None:
    with SQLiteStore(db) as first:
        assert first.migrations() == [name for name, _ in MIGRATIONS]
    with SQLiteStore(db) as again:  # reopening applies nothing twice
        assert again.migrations() == [name for name, _ in MIGRATIONS]
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO migrations (name, applied_at) VALUES ('999_from_the_future', 'x')")
    conn.commit()
    conn.close()
    with pytest.raises(errors.StoreError, match="newer recagent"):
        SQLiteStore(db)


def test_an_unusable_path_is_a_store_error(tmp_path: Path) -> None:
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("hello, this is not SQLite" * 100)
    with pytest.raises(errors.StoreError, match="cannot open the profile store"):
        SQLiteStore(not_a_db)


def test_every_version_is_kept_and_saving_is_a_compare_and_swap(store: SQLiteStore) -> None:
    assert store.latest_profile("u1") is None and store.profile_history("u1") == []
    v1 = store.save_profile(draft("u1", "a"), expected_version=0)
    v2 = store.save_profile(draft("u1", "a", "b", producer="refine", upto=3), expected_version=1)
    assert (v1.version, v2.version) == (1, 2)
    with pytest.raises(errors.VersionConflictError) as caught:
        store.save_profile(draft("u1", "lost"), expected_version=1)  # someone read v1: stale
    assert caught.value.user_id == "u1" and caught.value.exit_code == 7
    history = store.profile_history("u1")
    assert [(v.version, v.producer, v.feedback_upto) for v in history] == [(1, "import", 0), (2, "refine", 3)]
    latest = store.latest_profile("u1")
    assert latest is not None and latest.version == 2
    assert [i.name for i in latest.state.profile.interests] == ["a", "b"]
    assert store.profile_version("u1", 1) == history[0]
    assert store.profile_version("u1", 7) is None


def test_feedback_and_served_recommendations_round_trip(store: SQLiteStore) -> None:
    served = ServedRecommendation(
        recommendation_id="r1",
        user_id="u1",
        created_at=T0,
        items=[
            ServedItem(item_id="A", rank=1, score=0.9, source="llm"),
            ServedItem(item_id="B", rank=2, score=0.5, source="retriever"),
        ],
        profile_version=None,
        model="m",
        template_version="recommend@x",
        fallback_reason=None,
        usage={"prompt_tokens": 10, "completion_tokens": 2, "cost_usd": 0.001, "requests": 1},
    )
    store.save_recommendation(served)
    assert store.recommendation("r1") == served and store.recommendation("nope") is None
    assert store.latest_recommendation_with("u1", "B") == "r1"
    assert store.latest_recommendation_with("u1", "Z") is None
    assert store.latest_recommendation_with("u2", "B") is None
    first = store.add_feedback(
        FeedbackEvent(user_id="u1", item_id="A", signal="dislike", recommendation_id="r1")
    )
    second = store.add_feedback(FeedbackEvent(user_id="u1", item_id="B", signal="rating", value=2))
    store.add_feedback(FeedbackEvent(user_id="u1", item_id="C", signal="rating", value=4))
    assert (first.seq, second.seq) == (1, 2)
    assert [f.item_id for f in store.feedback("u1", after_seq=1)] == ["B", "C"]
    assert store.feedback("u1")[0] == first
    assert store.blocked_items("u1") == {"A": "dislike", "B": "rating"}
    assert store.users() == ["u1"]
    with pytest.raises(errors.StoreError, match="already recorded"):
        store.add_feedback(first)


# -- concurrency: no lost update ---------------------------------------------------------
def test_threads_updating_one_user_lose_no_update(db: Path) -> None:
    """Each thread has its own store (as separate app instances would). All read version 1,
    meet at a barrier, then all write: one wins, the others conflict and retry on the fresh
    version. Every thread's every update must be in the final profile."""
    threads_n, updates = 6, 4
    with SQLiteStore(db) as setup:
        setup.save_profile(draft("u1"), expected_version=0)
    barrier = threading.Barrier(threads_n)
    failures: list[BaseException] = []
    conflicts: list[int] = []

    def work(tag: int) -> None:
        try:
            with SQLiteStore(db) as mine:
                for j in range(updates):
                    first = [j == 0]

                    def build(
                        latest: ProfileVersion | None, tag: int = tag, j: int = j, first: list[bool] = first
                    ) -> ProfileDraft:
                        if first[0]:
                            first[0] = False
                            barrier.wait(timeout=60)  # everyone has read the same version
                        return with_interest(latest, f"t{tag}-{j}")

                    mine.update_profile("u1", build, max_attempts=threads_n * updates + 1)
                conflicts.append(mine.conflicts)
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not failures, failures
    with SQLiteStore(db) as check:
        history = check.profile_history("u1")
        latest = check.latest_profile("u1")
    assert [v.version for v in history] == list(range(1, threads_n * updates + 2))
    assert latest is not None
    names = {i.name for i in latest.state.profile.interests}
    assert names == {f"t{t}-{j}" for t in range(threads_n) for j in range(updates)}
    assert sum(conflicts) >= threads_n - 1  # the barrier round alone guarantees this many


WORKER = r"""
import sys
from agent.profiles.versions import ProfileDraft, initial_state
from agent.prompting.schemas import BehaviorPatterns, BehaviorProfile, Interest
from agent.profiles.store import SQLiteStore

def with_interest(latest, name):  # the same as the test module's, without importing pytest
    names = [i.name for i in latest.state.profile.interests] if latest else []
    patterns = BehaviorPatterns(price_sensitivity="unknown", typical_price_min=None,
                                typical_price_max=None, recent_focus=None, exploration="focused")
    interests = [Interest(name=n, strength=0.5, evidence=[]) for n in [*names, name]]
    profile = BehaviorProfile(summary="s", interests=interests, dislikes=[], patterns=patterns)
    return ProfileDraft(user_id="u1", state=initial_state(profile, None), producer="import")

db, tag, updates = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = SQLiteStore(db)
for j in range(updates):
    first = [j == 0]

    def build(latest, j=j, first=first):
        if first[0]:
            first[0] = False
            print("read", flush=True)  # every process has read the same version...
            sys.stdin.readline()  # ...before any of them writes
        return with_interest(latest, f"p{tag}-{j}")

    store.update_profile("u1", build, max_attempts=100)
print(store.conflicts, flush=True)
"""


def test_processes_updating_one_user_lose_no_update(db: Path) -> None:
    """Like the threads test, across processes: each child reads version 1 and says so; when all
    have, the parent lets them write at once (no sleeps), then each does more updates."""
    processes_n, updates = 3, 5
    with SQLiteStore(db) as setup:
        setup.save_profile(draft("u1"), expected_version=0)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(db), str(p), str(updates)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            text=True,
        )
        for p in range(processes_n)
    ]
    assert [p.stdout.readline().strip() for p in procs] == ["read"] * processes_n  # type: ignore[union-attr]
    results = [p.communicate("go\n") for p in procs]
    assert [p.returncode for p in procs] == [0] * processes_n, [err for _, err in results]
    conflicts = [int(out.strip()) for out, _ in results]
    with SQLiteStore(db) as check:
        latest = check.latest_profile("u1")
        versions = [v.version for v in check.profile_history("u1")]
    assert versions == list(range(1, processes_n * updates + 2))
    assert latest is not None
    names = {i.name for i in latest.state.profile.interests}
    assert names == {f"p{p}-{j}" for p in range(processes_n) for j in range(updates)}
    assert sum(conflicts) >= processes_n - 1


# -- crash safety ------------------------------------------------------------------------
CHILD = r"""
import sys
from agent.llm.client import ChatClient, LLMConfig
from agent.testing.loopback import LoopbackServer, Reply
from agent.prompting.templates import default_renderer
from agent.profiles.refine import Refiner
from agent.testing.standin_model import respond
from agent.profiles.store import SQLiteStore

db, kill_point = sys.argv[1], sys.argv[2]

def stop_here(what):
    print(what, flush=True)
    sys.stdin.read()  # blocks until the parent kills this process

def answer(body):
    if kill_point == "model_call":
        stop_here("in the model call")
    return Reply(content=respond(body))

store = SQLiteStore(db)
inserted = []

def trace(statement):
    if statement.startswith("INSERT INTO profile_versions"):
        inserted.append(statement)
    elif statement == "COMMIT" and inserted and kill_point == "commit":
        stop_here("version written, not committed")

store.connection.set_trace_callback(trace)
with LoopbackServer(responder=answer) as server:
    client = ChatClient(LLMConfig(base_url=server.base_url, api_key="test"))
    refiner = Refiner(store, client, default_renderer(), lambda item: ("Some Game", "Board Games", 30.0))
    refiner.refine("u1")
print("finished", flush=True)
"""


@pytest.mark.parametrize("kill_point", ["model_call", "commit"])
def test_killing_the_process_mid_refinement_leaves_the_previous_version(db: Path, kill_point: str) -> None:
    """A child process refines u1 (stand-in model over loopback HTTP) and stops either inside
    the model call or after writing version 2 but before COMMIT (SQLite's trace hook); the
    parent SIGKILLs it there. No sleeps: the child says where it is on stdout."""
    with SQLiteStore(db) as setup:
        setup.save_profile(draft("u1", "board games"), expected_version=0)
        setup.add_feedback(FeedbackEvent(user_id="u1", item_id="A", signal="like", timestamp=T0))
        setup.add_feedback(FeedbackEvent(user_id="u1", item_id="B", signal="dislike", timestamp=T0))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), kill_point],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        text=True,
    )
    assert child.stdout is not None
    said = child.stdout.readline().strip()
    if not said:
        child.kill()
        pytest.fail(f"child ended early: {child.communicate()[1]}")
    child.kill()  # SIGKILL: no cleanup, no rollback by Python
    child.communicate()
    assert said in ("in the model call", "version written, not committed")

    with SQLiteStore(db) as after:
        assert after.connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert [v.version for v in after.profile_history("u1")] == [1]
        latest = after.latest_profile("u1")
        assert latest is not None and latest.version == 1 and latest.feedback_upto == 0
        assert len(after.feedback("u1")) == 2  # the evidence is still pending, nothing lost
        # The store is not left locked: the same refinement now succeeds from version 1.
        saved = after.update_profile(
            "u1", lambda v: draft("u1", "board games", "strategy", producer="refine", upto=2)
        )
        assert saved is not None and saved.version == 2

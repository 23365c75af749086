"""The batch runner keeps no per-user state (issue #6): what it holds during a run is bounded
by the concurrency, not by the number of users.

Structural checks, no timing: the runner's own objects alive at N and at 2N finished users,
the users it tracks as open, and the request keys' pseudonymizer. Many distinct users come
cheaply from ``ClonedUsers``, which answers each synthetic user with a real sample user's
prepared request, so the runner sees 2N users without 2N prompt fittings.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from agent.batch import runner as batch
from agent.batch.ledger import LEDGER_FILE
from agent.batch.runner import BatchSettings, Planned, Snapshot, custom_id, run_batch
from agent.data.loading import align_catalog, load_events, load_items
from agent.data.privacy import PSEUDONYM_KEY_ENV, Pseudonymizer
from agent.llm.client import LLMConfig, StructuredReply
from agent.ranking.replies import ProfileResult, RecommendationResult
from agent.recommender import PreparedRequest, RecommenderAgent
from agent.testing.loopback import LoopbackServer, Reply
from agent.testing.standin_model import respond
from tests.conftest import SAMPLE

CONCURRENCY = 4
TASKS = ("profile", "recommend")
N = 60
"""Users in the first half of the run; a per-user leak shows up as about N objects."""
IN_FLIGHT_BOUND = 2 * CONCURRENCY + CONCURRENCY * len(TASKS) + len(TASKS)
"""Requests the runner may hold: the queue (2 x concurrency requests, as chains of one user's
tasks), one user's chain per worker (its tasks are sent in turn), the user being planned.
Independent of the number of users."""
OPEN_USERS_BOUND = IN_FLIGHT_BOUND + 1
"""Users with an unsettled task: one per request held, plus one whose other task is settled."""
RUNNER_TYPES = (Planned, PreparedRequest, StructuredReply, RecommendationResult, ProfileResult, asyncio.Task)
"""Objects made per request (and the workers' tasks): alive only while a request is held."""


class ClonedUsers:
    """Stands in for ``RecommenderAgent`` over many synthetic users ("clone-0001", ...).

    Each synthetic user gets the prepared request of one of the real sample users, made once
    and re-addressed (``context.user_id``), so the prompts the loopback server sees are real.
    """

    def __init__(self, agent: RecommenderAgent, templates: list[str]) -> None:
        self.agent, self.templates = agent, templates
        self.config = agent.config
        self.histories: dict[str, Any] = {}
        self.token_model: str | None = None
        self._prepared: dict[tuple[str, str], PreparedRequest] = {}

    def _clone(self, user_id: str, task: str) -> PreparedRequest:
        template = self.templates[int(user_id.rsplit("-", 1)[1]) % len(self.templates)]
        key = (template, task)
        if key not in self._prepared:
            self.agent.token_model = self.token_model
            made = (
                self.agent.prepare_profile(template)
                if task == "profile"
                else self.agent.prepare_recommend(template)
            )
            self._prepared[key] = made
        base = self._prepared[key]
        return PreparedRequest(base.prompt, base.context.model_copy(update={"user_id": user_id}))

    def prepare_profile(self, user_id: str) -> PreparedRequest:
        return self._clone(user_id, "profile")

    def prepare_recommend(self, user_id: str, k: int = 10) -> PreparedRequest:
        return self._clone(user_id, "recommend")


@dataclass
class Probe:
    """The progress callback: live runner objects at N and 2N users, and the most open users."""

    marks: tuple[int, ...]
    counts: dict[int, Counter[str]] = field(default_factory=dict)
    max_users_open: int = 0

    def __call__(self, s: Snapshot) -> None:
        self.max_users_open = max(self.max_users_open, s.users_open)
        if s.users_finished in self.marks and s.users_finished not in self.counts:
            gc.collect()
            self.counts[s.users_finished] = Counter(
                # type(), not isinstance(): isinstance reads __class__, which some modules'
                # deprecated objects (torch.distributed.reduce_op) answer with a warning
                type(o).__name__
                for o in gc.get_objects()
                if issubclass(type(o), RUNNER_TYPES)
            )


@pytest.fixture(scope="module")
def cloned() -> ClonedUsers:
    items = load_items(SAMPLE / "items.csv")
    events = align_catalog(load_events(SAMPLE / "events.csv"), items)
    agent = RecommenderAgent(events.frame, items.frame, None)
    return ClonedUsers(agent, sorted(agent.histories)[:3])


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer(responder=lambda body: Reply(content=respond(body))) as srv:
        yield srv


def config_for(server: LoopbackServer) -> LLMConfig:
    return LLMConfig(
        base_url=server.base_url,
        api_key="not-a-key",
        model="gpt-4.1-mini",
        max_completion_tokens=1200,
        timeout_s=10.0,
    )


def users(count: int) -> list[str]:
    return [f"clone-{n:04d}" for n in range(1, count + 1)]


def test_live_runner_objects_do_not_grow_with_users(
    cloned: ClonedUsers, server: LoopbackServer, tmp_path: Path
) -> None:
    probe = Probe(marks=(N, 2 * N))
    settings = BatchSettings(out_dir=tmp_path, users=users(2 * N), tasks=TASKS, concurrency=CONCURRENCY)
    summary = asyncio.run(
        run_batch(cast(RecommenderAgent, cloned), config_for(server), settings, on_progress=probe)
    )

    assert summary.results == 2 * N * len(TASKS) and summary.failures == 0
    assert set(probe.counts) == {N, 2 * N}
    templates = len(cloned._prepared)  # the stand-in's own prepared requests, kept on purpose
    for finished, counts in probe.counts.items():  # a per-user leak would be >= N of a type
        held = {name: n - (templates if name == "PreparedRequest" else 0) for name, n in counts.items()}
        assert max(held.values()) <= IN_FLIGHT_BOUND, (finished, counts)
    assert 0 < probe.max_users_open <= OPEN_USERS_BOUND
    assert summary.progress.users_open == 0 and summary.progress.users_finished == 2 * N


def test_request_keys_remember_no_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """The keys' pseudonymizer used to keep a reverse map entry per user for the process's life."""
    batch._pseudonymizer.cache_clear()
    try:
        keys = {custom_id(u, "recommend", "v1", "m", {}, {"b": 1}) for u in users(500)}
        assert len(keys) == 500
        assert len(batch._pseudonymizer()) == 0
    finally:
        batch._pseudonymizer.cache_clear()


@pytest.mark.parametrize("key", [None, "the-operators-secret-key-0123456789"])
def test_request_keys_use_the_same_pseudonyms_as_before(
    monkeypatch: pytest.MonkeyPatch, key: str | None
) -> None:
    """Equal to ``Pseudonymizer``'s pseudonyms, so the keys in existing ledgers still match."""
    if key is not None:
        monkeypatch.setenv(PSEUDONYM_KEY_ENV, key)
    batch._pseudonymizer.cache_clear()
    try:
        reference = Pseudonymizer()
        for user in ["u001", "jane.doe+shop@example.com", "Ünïcode-用户", "42"]:
            assert batch._pseudonymizer().pseudonym(user) == reference.pseudonym(user)
    finally:
        batch._pseudonymizer.cache_clear()


def test_users_waiting_on_a_batch_api_batch_are_settled(
    cloned: ClonedUsers, server: LoopbackServer, tmp_path: Path
) -> None:
    """Keys in flight in a Batch API batch are not sent; their users must not stay open."""
    config = config_for(server)
    settings = BatchSettings(out_dir=tmp_path, users=users(10), tasks=TASKS, concurrency=CONCURRENCY)
    asyncio.run(run_batch(cast(RecommenderAgent, cloned), config, settings))
    with closing(sqlite3.connect(tmp_path / LEDGER_FILE)) as db, db:
        db.execute("UPDATE requests SET status = 'submitted'")
    sent = server.stats.chat_completions

    probe = Probe(marks=())
    summary = asyncio.run(run_batch(cast(RecommenderAgent, cloned), config, settings, on_progress=probe))

    p = summary.progress
    assert server.stats.chat_completions == sent
    assert p.in_batch_api == 10 * len(TASKS)
    assert p.finished == p.total and p.users_finished == 10 and p.users_open == 0


def test_an_error_in_a_worker_stops_the_run_instead_of_hanging_it(
    cloned: ClonedUsers, server: LoopbackServer, tmp_path: Path
) -> None:
    """A worker that died used to leave the planner waiting forever on a full queue."""

    class Broken(RuntimeError):
        pass

    def on_progress(s: Snapshot) -> None:
        if s.done == 2:
            raise Broken("progress callback failed")

    settings = BatchSettings(out_dir=tmp_path, users=users(40), tasks=("recommend",), concurrency=2)
    run = run_batch(cast(RecommenderAgent, cloned), config_for(server), settings, on_progress=on_progress)
    with pytest.raises(Broken):
        asyncio.run(asyncio.wait_for(run, timeout=120))  # a guard against the old hang, not a timing
    # stopped at once: the two done and at most one more already in flight; the rest stays
    # pending for the next run (the old runner lost the worker and went on sending)
    assert server.stats.chat_completions <= 2 + settings.concurrency
    assert (tmp_path / "results.jsonl").read_text().count("\n") >= 2

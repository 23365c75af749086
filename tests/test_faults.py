"""Fault matrix: every way the chat API can fail, through RecommenderAgent and the CLI.

Each fault is injected by the loopback server (``agent.testing.loopback``) either once (then the
stand-in model answers) or on every request. Whatever happens, a call ends in one of two
ways, never a hang and never a traceback:

* a validated result, after at most ``max_retries`` transport retries or ``max_reasks``
  validation re-asks (a fault that occurs once is absorbed);
* the documented typed error: ``profile`` raises the ``ModelError`` subclass; ``recommend``
  returns the retriever's ranking with ``fallback_reason`` for transport, rate-limit and quota
  failures and raises the typed error for the rest; the CLI prints one
  ``recagent: error: ...`` line and exits 5.

The batch column (``agent.batch.runner.run_batch``) is last: a persistent fault is a recorded failure
of that user's request while the other users carry on; quota and authentication failures
stop the run at once with the typed error (they concern the account, not one request).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent import errors
from agent.batch import runner as batch
from agent.cli import main as cli
from agent.llm import client as llm_client
from agent.llm.client import ChatClient, LLMConfig
from agent.recommender import ProfileResult, RecommendationResult, RecommenderAgent
from agent.retrieval.candidates import Retriever
from agent.testing import loopback
from agent.testing.loopback import Fault, LoopbackServer, Reply
from agent.testing.standin_model import parse_blocks, respond
from tests.conftest import chat_bodies
from tests.privacy_guard import PlantedData, write_planted_dataset

USER = "u001"
K = 3
API_KEY = "sk-fault-matrix-0123456789"
TIMEOUT_S = 0.5  # only the timeout fault waits for it; every other reply is immediate
GENEROUS_TIMEOUT_S = 30.0
"""The timeout of every other case: the timeout bounds the whole request (connect, send, body),
so a tight one would fail healthy requests on a busy CI machine."""


def timeout_for(case: Case) -> float:
    return TIMEOUT_S if case.name == "timeout" else GENEROUS_TIMEOUT_S


DEADLINE_S = 60.0  # a call still running after this has hung: fail instead of blocking the suite
INVENTED = "SKU-INVENTED-999"

Bad = Callable[[dict[str, Any]], "Reply | Fault | str"]


# -- bad replies (built from the stand-in's good answer to the same request) -------------------
def standin(body: dict[str, Any]) -> str:
    """The stand-in's answer to the original prompt (a re-ask appends messages it can't read)."""
    return respond({**body, "messages": body["messages"][:2]})


def _good(body: dict[str, Any]) -> dict[str, Any]:
    return json.loads(standin(body))


def _history_ids(body: dict[str, Any]) -> list[str]:
    user = body["messages"][1]["content"]
    return [e["item_id"] for e in parse_blocks(user).get("history", []) if e.get("item_id")]


def _invented(body: dict[str, Any]) -> str:
    data = _good(body)
    if "items" in data:
        data["items"][0]["item_id"] = INVENTED
    else:
        data["interests"].append({"name": "invented", "strength": 0.5, "evidence": [INVENTED]})
    return json.dumps(data)


def _history_item(body: dict[str, Any]) -> str:
    data = _good(body)
    data["items"][0]["item_id"] = _history_ids(body)[-1]
    return json.dumps(data)


def _duplicates(body: dict[str, Any]) -> str:
    data = _good(body)
    data["items"] = [data["items"][0], copy.deepcopy(data["items"][0]), *data["items"][1:]]
    return json.dumps(data)


@dataclass(frozen=True)
class Case:
    """One fault and what it must end in."""

    name: str
    bad: Bad
    handling: str
    """``transport`` (retried), ``reask`` (re-asked), ``final`` (never repeated) or ``grounded``."""
    error: type[errors.ModelError] | None
    """The typed error when the fault persists (None: the reply is usable)."""
    falls_back: bool = False
    """``recommend`` answers from the retriever instead of raising."""
    ops: tuple[str, ...] = ("profile", "recommend")
    fragment: str = ""
    """Text the one-line CLI error must contain."""
    sleeps: tuple[float, ...] | None = None
    """Waits asked for when the fault occurs once (server hints honoured, capped)."""
    max_retries: int = LLMConfig.max_retries
    """Transport retries of the agent's client (the timeout case uses 1 to stay fast)."""


def _const(value: Reply | Fault | str) -> Bad:
    return lambda body: value


CASES: tuple[Case, ...] = (
    Case(
        "429-retry-after",
        _const(Fault.rate_limit(retry_after=2)),
        "transport",
        errors.RateLimitError,
        True,
        fragment="rate limited",
        sleeps=(2.0,),
    ),
    Case(
        "429-retry-after-ms",
        _const(Fault.rate_limit(retry_after=None, retry_after_ms=250)),
        "transport",
        errors.RateLimitError,
        True,
        fragment="rate limited",
        sleeps=(0.25,),
    ),
    Case(
        "429-retry-after-huge",
        _const(Fault.rate_limit(retry_after=86400)),
        "transport",
        errors.RateLimitError,
        True,
        fragment="rate limited",
        sleeps=(60.0,),
    ),
    Case(
        "429-insufficient-quota",
        _const(Fault.insufficient_quota()),
        "final",
        errors.QuotaExceededError,
        True,
        fragment="out of quota",
    ),
    Case(
        "401", _const(Fault.http(401)), "final", errors.AuthenticationError, fragment="authentication failed"
    ),
    Case(
        "403", _const(Fault.http(403)), "final", errors.AuthenticationError, fragment="authentication failed"
    ),
    Case("400", _const(Fault.http(400)), "final", errors.BadRequestError, fragment="request rejected"),
    Case("404-model", _const(Fault.http(404)), "final", errors.BadRequestError, fragment="model_not_found"),
    Case("500", _const(Fault.http(500)), "transport", errors.TransportError, True, fragment="server error"),
    Case("502", _const(Fault.http(502)), "transport", errors.TransportError, True, fragment="server error"),
    Case("503", _const(Fault.http(503)), "transport", errors.TransportError, True, fragment="server error"),
    Case(
        "timeout",
        _const(Fault.timeout(delay_s=5.0)),  # the server drops it later; the client gave up long before
        "transport",
        errors.TransportError,
        True,
        fragment="timed out",
        max_retries=1,
    ),
    Case("reset", _const(Fault.reset()), "transport", errors.TransportError, True, fragment="cannot reach"),
    Case(
        "malformed-json-body",
        _const(Fault.malformed_json()),
        "transport",
        errors.TransportError,
        True,
        fragment="malformed response",
    ),
    Case(
        "schema-invalid-json",
        _const('{"items": "none", "summary": 3}'),
        "reask",
        errors.InvalidReplyError,
        fragment="still invalid",
    ),
    Case(
        "prose-not-json",
        _const("Sure! My top picks are the tent and the headlamp."),
        "reask",
        errors.InvalidReplyError,
        fragment="still invalid",
    ),
    Case(
        "finish-length",
        _const(Reply(content='{"items": [{"item_id": "CMP-', finish_reason="length")),
        "final",
        errors.TruncatedReplyError,
        fragment="max_completion_tokens",
    ),
    Case(
        "refusal",
        _const(Reply(content=None, refusal="I'm sorry, I can't help with that.")),
        "final",
        errors.RefusalError,
        fragment="model refused",
    ),
    Case(
        "content-filter",
        _const(Fault.content_filter()),
        "final",
        errors.RefusalError,
        fragment="content filter",
    ),
    Case("invented-ids", _invented, "reask", errors.InvalidReplyError, fragment="still invalid"),
    Case(
        "history-ids",
        _history_item,
        "reask",
        errors.InvalidReplyError,
        ops=("recommend",),
        fragment="still invalid",
    ),
    Case("duplicate-ids", _duplicates, "grounded", None, ops=("recommend",)),
)


def _modes(case: Case) -> tuple[str, ...]:
    # A fault that is never repeated ends the same way whether or not it would recur: "once"
    # is the telling run (a retry would have succeeded, yet none is made).
    return ("once",) if case.handling in ("final", "grounded") else ("once", "always")


MATRIX = [
    pytest.param(case, op, mode, id=f"{case.name}-{op}-{mode}")
    for case in CASES
    for op in case.ops
    for mode in _modes(case)
]
# The CLI adds exit codes and one-line errors on top of the same agent code: every fault in its
# final form, plus a fault absorbed by a retry and by a re-ask, for each command.
_CLI_ONCE = ("429-retry-after", "reset", "schema-invalid-json")
CLI_MATRIX = [
    pytest.param(case, op, mode, id=f"{case.name}-{op}-{mode}")
    for case in CASES
    for op in case.ops
    for mode in _modes(case)
    if mode == _modes(case)[-1] or case.name in _CLI_ONCE
]


# -- plumbing ------------------------------------------------------------------------------------
class Sleeps(list[float]):
    """Records the waits the retry layer asks for instead of sleeping (tests stay fast)."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class Flaky:
    """Answers the first ``bad_calls`` chat requests with the fault, then as the stand-in model."""

    def __init__(self, bad: Bad, bad_calls: int) -> None:
        self.bad, self.bad_calls = bad, bad_calls
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> Reply | Fault | str:
        with self._lock:
            index, self.calls = self.calls, self.calls + 1
        return self.bad(body) if index < self.bad_calls else Reply(content=standin(body))


def bounded(call: Callable[[], Any]) -> Any:
    """Run ``call``; fail if it has not returned after ``DEADLINE_S`` (a hang, not slowness)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    if thread.is_alive():
        pytest.fail(f"call still running after {DEADLINE_S:g}s: it hangs past its timeout")
    if "error" in box:
        raise box["error"]
    return box["value"]


def expected_requests(case: Case, mode: str, config: LLMConfig) -> int:
    if case.handling in ("final", "grounded"):
        return 1
    if mode == "once":
        return 2
    return config.max_retries + 1 if case.handling == "transport" else config.max_reasks + 1


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> PlantedData:
    return write_planted_dataset(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def retriever(data: PlantedData) -> Retriever:
    return Retriever.fit(data.events, data.items)


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackServer]:
    """One server for the module; each test installs its own ``Flaky`` responder."""
    # The loopback handler writes headers and body separately, so Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every response on Linux (reported; the fix is this
    # attribute on agent.testing.loopback._Handler). Set here until then: it changes no HTTP behaviour.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loopback._Handler, "disable_nagle_algorithm", True, raising=False)
        with LoopbackServer() as srv:
            yield srv


class Rig:
    """A module-wide client and agent per retry setting (building them is the slow part)."""

    def __init__(self, server: LoopbackServer, data: PlantedData, retriever: Retriever) -> None:
        self.server, self.data, self.retriever = server, data, retriever
        self.sleeps = Sleeps()
        self._agents: dict[tuple[int, float], RecommenderAgent] = {}
        self._clients: list[ChatClient] = []

    def agent(self, max_retries: int, timeout_s: float = GENEROUS_TIMEOUT_S) -> RecommenderAgent:
        if (max_retries, timeout_s) not in self._agents:
            config = LLMConfig(
                base_url=self.server.base_url, api_key=API_KEY, timeout_s=timeout_s, max_retries=max_retries
            )
            client = ChatClient(config, sleep=self.sleeps)
            self._clients.append(client)
            self._agents[(max_retries, timeout_s)] = RecommenderAgent(
                self.data.events, self.data.items, client, retriever=self.retriever
            )
        return self._agents[(max_retries, timeout_s)]

    def install(self, case: Case, mode: str) -> int:
        """Serve ``case`` once or always from now on; returns the chat requests seen so far."""
        return self.serve(Flaky(case.bad, 1 if mode == "once" else 10**6))

    def serve(self, responder: Callable[[dict[str, Any]], Reply | Fault | str]) -> int:
        self.sleeps.clear()
        self.server.responder = responder
        return len(chat_bodies(self.server))

    def sent_since(self, start: int) -> int:
        return len(chat_bodies(self.server)) - start

    def close(self) -> None:
        for client in self._clients:
            client.close()


@pytest.fixture(scope="module")
def rig(server: LoopbackServer, data: PlantedData, retriever: Retriever) -> Iterator[Rig]:
    made = Rig(server, data, retriever)
    yield made
    made.close()


def _check_result(op: str, result: Any, case: Case) -> None:
    if op == "profile":
        assert isinstance(result, ProfileResult)
        assert result.profile.interests and result.profile.summary
        return
    assert isinstance(result, RecommendationResult)
    ids = [item.item_id for item in result.items]
    assert len(ids) == K and len(set(ids)) == K
    assert result.fallback_reason is None and result.items[0].source == "llm"
    if case.handling == "grounded":
        assert result.grounding["duplicate_rate"] > 0


# -- the matrix through RecommenderAgent ----------------------------------------------------------
@pytest.mark.parametrize(("case", "op", "mode"), MATRIX)
def test_agent_fault_matrix(case: Case, op: str, mode: str, rig: Rig) -> None:
    start = rig.install(case, mode)
    agent = rig.agent(case.max_retries, timeout_for(case))
    call = (lambda: agent.profile(USER)) if op == "profile" else (lambda: agent.recommend(USER, k=K))
    recovers = case.error is None or (mode == "once" and case.handling in ("transport", "reask"))
    assert agent.client is not None
    sent = expected_requests(case, mode, agent.client.config)
    if recovers:
        result = bounded(call)
        _check_result(op, result, case)
        assert result.usage["requests"] == sent
    elif op == "recommend" and case.falls_back:
        assert case.error is not None
        result = bounded(call)
        assert isinstance(result, RecommendationResult)
        assert result.fallback_reason and result.fallback_reason.startswith(case.error.__name__)
        assert [item.source for item in result.items] == ["fallback"] * K
        assert result.usage["requests"] == sent  # failed attempts are still accounted
    else:
        assert case.error is not None
        with pytest.raises(case.error) as info:
            bounded(call)
        assert info.value.attempts == sent
        assert info.value.usage.requests == sent
        assert API_KEY not in str(info.value)
    assert rig.sent_since(start) == sent  # bounded: exactly the retries/re-asks promised
    if case.sleeps is not None and mode == "once":
        assert rig.sleeps == list(case.sleeps)  # retry-after honoured, capped at 60 s
    if case.handling in ("final", "grounded", "reask"):
        assert rig.sleeps == []  # re-asks and final errors never wait


# -- the same matrix through the CLI ------------------------------------------------------------
@pytest.mark.parametrize(("case", "op", "mode"), CLI_MATRIX)
def test_cli_fault_matrix(
    case: Case,
    op: str,
    mode: str,
    rig: Rig,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rig.install(case, mode)
    sleeps = Sleeps()

    def make_client(config: LLMConfig, **kwargs: Any) -> ChatClient:
        config.max_retries = case.max_retries
        return ChatClient(config, sleep=sleeps, **kwargs)

    monkeypatch.setattr(llm_client, "ChatClient", make_client)  # what the CLI's make_client builds
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    base = ["--base-url", rig.server.base_url, "--timeout", str(timeout_for(case))]
    args = [op, *rig.data.cli_args, "--user", USER, *base]
    if op == "recommend":
        args += ["-k", str(K)]
    code = bounded(lambda: cli.main(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err and API_KEY not in out + err
    recovers = case.error is None or (mode == "once" and case.handling in ("transport", "reask"))
    if recovers or (op == "recommend" and case.falls_back):
        # a fallback served after every model call failed is printed, but exits 5 (issue 20,
        # item 4: a dead endpoint must not look like success), with one error line naming it
        assert code == (0 if recovers else errors.ModelError.exit_code), err
        if not recovers:
            lines = [line for line in err.splitlines() if line.startswith("recagent: error:")]
            assert len(lines) == 1 and "every model call failed" in lines[0], err
        result = json.loads(out)
        if op == "profile":
            assert result["profile"]["interests"]
        else:
            sources = {item["source"] for item in result["items"]}
            assert len(result["items"]) == K
            assert sources == ({"llm"} if recovers else {"fallback"})
        return
    assert code == errors.ModelError.exit_code
    lines = [line for line in err.splitlines() if line.startswith("recagent: error:")]
    assert len(lines) == 1 and case.fragment in lines[0], err
    assert out == ""


# -- things the matrix does not show ------------------------------------------------------------
def test_one_user_failing_does_not_stop_the_next(rig: Rig) -> None:
    """A run over several users: the first user's calls fail for good, the second's succeed."""
    agent = rig.agent(LLMConfig.max_retries)
    rig.serve(Flaky(_const(Fault.http(503)), LLMConfig.max_retries + 1))
    first = agent.recommend("u001", k=K)
    second = agent.recommend("u002", k=K)
    assert first.fallback_reason and first.fallback_reason.startswith("TransportError")
    assert second.fallback_reason is None and second.items[0].source == "llm"


def test_transport_retries_and_reasks_do_not_multiply(rig: Rig) -> None:
    """A 503, then an invalid reply, then a good one: 3 requests, not retries x re-asks."""
    replies: Iterator[Reply | Fault] = iter([Fault.http(503), Reply(content='{"items": "none"}')])

    def responder(body: dict[str, Any]) -> Reply | Fault:
        return next(replies, None) or Reply(content=standin(body))

    start = rig.serve(responder)
    result = rig.agent(LLMConfig.max_retries).recommend(USER, k=K)
    assert result.usage["requests"] == 3 and rig.sent_since(start) == 3
    assert result.items[0].source == "llm"


# -- the batch column (agent.batch.runner.run_batch) ------------------------------------------------------
# Written last, against the runner as it stands: u001's requests meet the fault (once per request,
# or always), u002's are answered; the run records u001's failure and carries on with u002, or
# stops at once on account failures (quota, authentication), as agent/batch/runner.py documents.
BATCH_USERS = ["u001", "u002"]
_BATCH_ONCE = ("429-retry-after", "reset", "malformed-json-body", "schema-invalid-json", "invented-ids")
BATCH_MATRIX = [
    pytest.param(case, mode, id=f"{case.name}-{mode}")
    for case in CASES
    for mode in _modes(case)
    if mode == _modes(case)[-1] or case.name in _BATCH_ONCE
]


class FakeTime:
    """A clock that jumps forward when slept on, so retry-after waits cost no real time."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return time.monotonic() + self.offset

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.offset += max(seconds, 0.0)
        await asyncio.sleep(0)


class Routed:
    """u001's requests of the case's tasks get the fault (its first attempt only, or always)."""

    def __init__(self, case: Case, mode: str) -> None:
        self.case, self.mode = case, mode
        self.seen: set[str] = set()
        self.hits: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> Reply | Fault | str:
        name = body["response_format"].get("json_schema", {}).get("name")
        op = "recommend" if name == "Recommendations" else "profile"
        first_user = "RUN-043" in _history_ids(body)  # only u001 has it in their history
        key = op + json.dumps(body["messages"][:2])
        with self._lock:
            hit = first_user and op in self.case.ops and (self.mode == "always" or key not in self.seen)
            self.seen.add(key)
            if hit:
                self.hits.append(op)
        return self.case.bad(body) if hit else Reply(content=standin(body))


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.parametrize(("case", "mode"), BATCH_MATRIX)
def test_batch_fault_matrix(
    case: Case, mode: str, rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeTime()
    monkeypatch.setattr(
        batch, "RateLimiter", functools.partial(batch.RateLimiter, clock=fake.clock, sleep=fake.sleep)
    )
    monkeypatch.setattr(batch, "AsyncChatClient", functools.partial(batch.AsyncChatClient, sleep=fake.sleep))
    routed = Routed(case, mode)
    start = rig.serve(routed)
    config = LLMConfig(
        base_url=rig.server.base_url,
        api_key=API_KEY,
        timeout_s=timeout_for(case),
        max_retries=case.max_retries,
    )
    settings = batch.BatchSettings(out_dir=tmp_path, users=BATCH_USERS, concurrency=1)
    agent = RecommenderAgent(rig.data.events, rig.data.items, None, retriever=rig.retriever)
    summary = bounded(lambda: asyncio.run(batch.run_batch(agent, config, settings)))

    results = {(r["user_id"], r["task"]): r for r in _jsonl(tmp_path / "results.jsonl")}
    failures = {(f["user_id"], f["task"]): f for f in _jsonl(tmp_path / "failures.jsonl")}
    everything = {(u, t) for u in BATCH_USERS for t in batch.TASKS}
    recovers = case.error is None or (mode == "once" and case.handling in ("transport", "reask"))
    # the batch runner asks a reply cut by its completion cap once more with a larger cap
    recovers = recovers or (mode == "once" and case.name == "finish-length")
    written = (tmp_path / "results.jsonl").read_text() + (tmp_path / "failures.jsonl").read_text()
    assert API_KEY not in written
    if recovers:
        assert summary.stop_error is None and failures == {} and set(results) == everything
        if case.handling == "grounded":
            grounding = results[("u001", "recommend")]["result"]["grounding"]
            assert grounding["duplicate_rate"] > 0
        return
    assert case.error is not None
    if case.error in (errors.QuotaExceededError, errors.AuthenticationError):  # the account, not one request
        assert isinstance(summary.stop_error, case.error)
        assert set(failures) == {("u001", "profile")}
        assert failures[("u001", "profile")]["error"]["type"] == case.error.__name__
        assert rig.sent_since(start) == 1  # stopped at once: nothing more was sent
        return
    assert summary.stop_error is None  # one user's failure never stops the run
    failed = {("u001", op) for op in case.ops}
    assert set(failures) == failed
    assert {f["error"]["type"] for f in failures.values()} == {case.error.__name__}
    assert set(results) == everything - failed  # u002 (and u001's other task) carried on
    per_request = expected_requests(case, mode, config)
    assert len(routed.hits) == len(failed) * (1 if case.handling == "final" else per_request)

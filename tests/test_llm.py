"""The chat client over real HTTP (openai SDK → loopback server): validation, re-asks, one
bounded retry layer, typed errors with attempts and usage."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from agent import errors
from agent.llm.client import ChatClient, LLMConfig, extract_json
from agent.prompting.schemas import BehaviorProfile, recommendations_model
from agent.prompting.templates import RenderedPrompt
from agent.testing.loopback import Fault, LoopbackServer, Reply, ScriptedResponder
from tests.conftest import chat_bodies, valid_profile_json

PROMPT = RenderedPrompt(
    name="profile",
    version="profile@test",
    messages=[
        {"role": "system", "content": "You write profiles."},
        {"role": "user", "content": "history..."},
    ],
)


class Sleeps(list[float]):
    """Records the waits the retry layer asks for instead of sleeping (tests stay fast)."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


_clients: list[ChatClient] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def make_client(server: LoopbackServer, sleeps: Sleeps, **overrides: object) -> ChatClient:
    settings: dict[str, object] = {"base_url": server.base_url, "api_key": "sk-test-secret", "timeout_s": 2.0}
    config = LLMConfig(**{**settings, **overrides})  # type: ignore[arg-type]
    client = ChatClient(config, sleep=sleeps)
    _clients.append(client)
    return client


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer(responder=ScriptedResponder([])) as srv:
        yield srv


def serve(server: LoopbackServer, *replies: object) -> None:
    server.responder = ScriptedResponder(list(replies))  # type: ignore[arg-type]


def test_valid_reply_is_parsed_with_strict_schema_and_usage(server: LoopbackServer, sleeps: Sleeps) -> None:
    serve(server, Reply(content=valid_profile_json(), prompt_tokens=120, completion_tokens=40))
    reply = make_client(server, sleeps).complete(PROMPT, BehaviorProfile)
    assert reply.value.interests[0].name == "trail running"
    assert reply.mode == "json_schema"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.requests) == (120, 40, 1)
    assert reply.usage.cost_usd > 0
    body = chat_bodies(server)[0]
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["additionalProperties"] is False
    assert body["max_completion_tokens"] > 0
    headers = server.requests[0].headers
    assert "sk-test-secret" not in json.dumps(headers)


def test_candidate_ids_are_an_enum_in_the_sent_schema(server: LoopbackServer, sleeps: Sleeps) -> None:
    serve(server, json.dumps({"items": [{"item_id": "B", "score": 0.5, "reason": "r", "evidence": ["H1"]}]}))
    model = recommendations_model(["A", "B"], ["H1"])
    reply = make_client(server, sleeps).complete(PROMPT, model)
    assert reply.value.items[0].item_id == "B"
    schema = chat_bodies(server)[0]["response_format"]["json_schema"]["schema"]
    assert sorted(schema["$defs"]["RankedItem"]["properties"]["item_id"]["enum"]) == ["A", "B"]


def test_invalid_reply_is_reasked_with_only_the_last_error(server: LoopbackServer, sleeps: Sleeps) -> None:
    serve(server, "not json at all", '{"summary": "x"}', valid_profile_json())
    reply = make_client(server, sleeps).complete(PROMPT, BehaviorProfile)
    assert reply.attempts == 3
    bodies = chat_bodies(server)
    third = bodies[2]["messages"]
    assert len(third) == 4  # system, user, last assistant reply, last error: not the whole chain
    assert third[2]["content"] == '{"summary": "x"}'
    assert "did not match" in third[3]["content"] and "interests" in third[3]["content"]


def test_reasks_are_bounded_and_the_error_carries_attempts_usage_and_reply(
    server: LoopbackServer, sleeps: Sleeps
) -> None:
    serve(server, *(Reply(content='{"summary": 1}', prompt_tokens=10, completion_tokens=5) for _ in range(5)))
    with pytest.raises(errors.InvalidReplyError) as info:
        make_client(server, sleeps, max_reasks=2).complete(PROMPT, BehaviorProfile)
    assert info.value.attempts == 3
    assert info.value.usage.prompt_tokens == 30  # failed attempts are paid for and counted
    assert info.value.last_reply == '{"summary": 1}'
    assert len(chat_bodies(server)) == 3


def test_length_and_refusal_and_content_filter_are_never_reasked(
    server: LoopbackServer, sleeps: Sleeps
) -> None:
    client = make_client(server, sleeps)
    serve(server, Reply(content='{"summary": "cut', finish_reason="length"))
    with pytest.raises(errors.TruncatedReplyError):
        client.complete(PROMPT, BehaviorProfile)
    serve(server, Reply(content=None, refusal="I can't help with that."))
    with pytest.raises(errors.RefusalError, match="refused"):
        client.complete(PROMPT, BehaviorProfile)
    serve(server, Fault.content_filter())
    with pytest.raises(errors.RefusalError, match="content filter"):
        client.complete(PROMPT, BehaviorProfile)
    assert len(chat_bodies(server)) == 3


def test_rate_limit_waits_for_retry_after_then_succeeds(server: LoopbackServer, sleeps: Sleeps) -> None:
    serve(
        server,
        Fault.rate_limit(retry_after=None, retry_after_ms=250),
        Fault.rate_limit(retry_after=2),
        valid_profile_json(),
    )
    reply = make_client(server, sleeps).complete(PROMPT, BehaviorProfile)
    assert reply.usage.requests == 3
    assert sleeps == [0.25, 2.0]


def test_insufficient_quota_fails_at_once(server: LoopbackServer, sleeps: Sleeps) -> None:
    serve(server, Fault.insufficient_quota(), valid_profile_json())
    with pytest.raises(errors.QuotaExceededError) as info:
        make_client(server, sleeps).complete(PROMPT, BehaviorProfile)
    assert info.value.attempts == 1 and sleeps == []


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, errors.AuthenticationError), (400, errors.BadRequestError), (404, errors.BadRequestError)],
)
def test_client_errors_are_not_retried(
    server: LoopbackServer, sleeps: Sleeps, status: int, error: type
) -> None:
    serve(server, Fault.http(status), valid_profile_json())
    with pytest.raises(error) as info:
        make_client(server, sleeps).complete(PROMPT, BehaviorProfile)
    assert info.value.attempts == 1
    assert "sk-test-secret" not in str(info.value)


def test_server_errors_are_retried_a_bounded_number_of_times(server: LoopbackServer, sleeps: Sleeps) -> None:
    serve(server, *(Fault.http(503) for _ in range(10)))
    with pytest.raises(errors.TransportError) as info:
        make_client(server, sleeps, max_retries=3).complete(PROMPT, BehaviorProfile)
    assert info.value.attempts == 4
    assert len(chat_bodies(server)) == 4
    assert sleeps == [0.5, 1.0, 2.0]  # exponential backoff when no retry-after is given


def test_connection_reset_then_success(server: LoopbackServer, sleeps: Sleeps) -> None:
    serve(server, Fault.reset(), valid_profile_json())
    assert make_client(server, sleeps).complete(PROMPT, BehaviorProfile).usage.requests == 2


def test_timeout_is_explicit_and_bounded(server: LoopbackServer, sleeps: Sleeps) -> None:
    serve(server, Fault.timeout(30), Fault.timeout(30))
    with pytest.raises(errors.TransportError, match="timed out"):
        make_client(server, sleeps, timeout_s=0.3, max_retries=1).complete(PROMPT, BehaviorProfile)


def test_server_without_json_schema_gets_json_mode_with_the_schema_in_the_prompt(sleeps: Sleeps) -> None:
    with LoopbackServer(
        responder=ScriptedResponder([valid_profile_json()]), reject_json_schema=True
    ) as server:
        reply = make_client(server, sleeps).complete(PROMPT, BehaviorProfile)
        bodies = chat_bodies(server)
    assert reply.mode == "json_object"
    assert bodies[-1]["response_format"] == {"type": "json_object"}
    assert '"additionalProperties":false' in bodies[-1]["messages"][0]["content"]


def test_extract_json_strips_fences_and_prose() -> None:
    assert extract_json('```json\n{"a": 1}\n```') == '{"a": 1}'
    assert extract_json('Sure! Here it is: {"a": {"b": 2}} Hope that helps.') == '{"a": {"b": 2}}'


def test_malformed_json_body_is_retried_then_a_transport_error(
    server: LoopbackServer, sleeps: Sleeps
) -> None:
    serve(server, Fault.malformed_json(), valid_profile_json())
    assert make_client(server, sleeps).complete(PROMPT, BehaviorProfile).usage.requests == 2
    serve(server, *(Fault.malformed_json() for _ in range(3)))
    with pytest.raises(errors.TransportError, match="malformed response"):
        make_client(server, sleeps, max_retries=2).complete(PROMPT, BehaviorProfile)

"""Client-side rate limiting: token buckets, Retry-After, adaptive concurrency, budget.

Time is a fake clock advanced by a fake sleep, shared with the loopback server's limits,
so nothing here sleeps or depends on timing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from agent import errors
from agent.llm.async_client import AsyncChatClient
from agent.llm.client import LLMConfig
from agent.llm.ratelimit import AdaptiveConcurrency, BudgetGate, RateLimiter, TokenBucket
from agent.prompting.schemas import BehaviorProfile
from agent.prompting.templates import RenderedPrompt
from agent.prompting.tokens import Price, PriceTable
from agent.testing.loopback import Fault, Limits, LoopbackServer, Reply
from tests.conftest import valid_profile_json


class FakeTime:
    """A clock that only moves when something sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


def body(chars: int = 400, max_tokens: int = 100) -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": "x" * chars}],
        "max_completion_tokens": max_tokens,
    }


def by_chars(messages: list[dict[str, Any]], model: str) -> int:
    return sum(len(m["content"]) for m in messages) // 4  # the loopback server's own estimate


def test_bucket_refills_continuously_and_never_above_capacity() -> None:
    bucket = TokenBucket(600, minute_s=60, now=0.0)  # 10 per second
    bucket.take(600)
    assert bucket.wait_for(50, now=0.0) == pytest.approx(5.0)
    assert bucket.wait_for(50, now=5.0) == 0.0
    bucket.refill(now=1e6)
    assert bucket.level == 600
    bucket.observe_remaining(100, now=1e6)
    assert bucket.level == 100


def test_tpm_bucket_spaces_requests_by_their_token_estimate() -> None:
    fake = FakeTime()
    limiter = RateLimiter(tpm=1200, minute_s=60, clock=fake.clock, sleep=fake.sleep, counter=by_chars)

    async def go() -> None:
        for _ in range(5):  # each costs 100 prompt + 100 reserved = 200 of 1200 per minute
            ticket = await limiter.enter(body())
            limiter.exit(ticket, headers=None, completion=None, error=None)

    asyncio.run(go())
    assert fake.sleeps == []  # 1000 tokens fit in the full bucket
    asyncio.run(go())  # 1000 more: 800 must refill at 20 tokens/s
    assert sum(fake.sleeps) == pytest.approx(40.0)


def test_a_request_larger_than_the_whole_tpm_limit_fails_at_once() -> None:
    limiter = RateLimiter(tpm=150, counter=by_chars)
    with pytest.raises(errors.BadRequestError, match="can never be sent"):
        asyncio.run(limiter.enter(body()))


def test_adaptive_concurrency_caps_in_flight_and_grows_back() -> None:
    gate = AdaptiveConcurrency(4)
    over = 0  # how far in-flight requests ever exceeded the limit of the moment

    async def work() -> None:
        nonlocal over
        await gate.acquire()
        over = max(over, gate.in_flight - gate.limit)
        await asyncio.sleep(0)
        gate.release()
        gate.on_success()

    async def run() -> None:
        gate.decrease()
        assert gate.limit == 2
        await asyncio.gather(*(work() for _ in range(20)))

    asyncio.run(run())
    assert over <= 0 and gate.limit == 4  # grew back one slot per `limit` successes


class _Error429:
    """Build a real openai.RateLimitError with headers, as the SDK would raise it."""

    @staticmethod
    def make(headers: dict[str, str], code: str = "rate_limit_exceeded") -> openai.RateLimitError:
        import httpx2

        request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
        response = httpx2.Response(429, headers=headers, request=request)
        return openai.RateLimitError("rate limited", response=response, body={"code": code})


def test_429_pauses_every_sender_and_lowers_concurrency_once_per_pause() -> None:
    fake = FakeTime()
    limiter = RateLimiter(rpm=1000, concurrency=10, clock=fake.clock, sleep=fake.sleep, counter=by_chars)

    async def go() -> None:
        tickets = [await limiter.enter(body()) for _ in range(3)]
        for ticket in tickets:  # three 429s from requests that were in flight together
            error = _Error429.make({"retry-after-ms": "2500"})
            limiter.exit(ticket, headers=error.response.headers, completion=None, error=error)
        await limiter.enter(body())

    asyncio.run(go())
    assert limiter.stats.rate_limited == 3
    assert limiter.concurrency.limit == 7  # one decrease (10 -> 7), not three
    assert fake.sleeps == [pytest.approx(2.5)]  # the next sender waited out the retry-after


def test_insufficient_quota_is_not_a_rate_limit_signal() -> None:
    limiter = RateLimiter(rpm=10, counter=by_chars)

    async def go() -> None:
        ticket = await limiter.enter(body())
        error = _Error429.make({}, code="insufficient_quota")
        limiter.exit(ticket, headers=error.response.headers, completion=None, error=error)

    asyncio.run(go())
    assert limiter.stats.rate_limited == 0 and limiter.concurrency.limit == limiter.concurrency.maximum


def test_server_headers_lower_our_buckets_and_unknown_limits_are_adopted() -> None:
    fake = FakeTime()
    limiter = RateLimiter(clock=fake.clock, sleep=fake.sleep, counter=by_chars)

    async def go() -> None:
        ticket = await limiter.enter(body())
        headers = {
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-limit-tokens": "10000",
            "x-ratelimit-remaining-tokens": "9000",
        }
        limiter.exit(ticket, headers=headers, completion=None, error=None)
        await limiter.enter(body())

    asyncio.run(go())
    assert limiter.requests is not None and limiter.requests.capacity == 60
    assert limiter.tokens is not None and limiter.tokens.capacity == 10000
    assert fake.sleeps == [pytest.approx(1.0)]  # 0 requests left at 1 per second


def test_budget_gate_refuses_the_attempt_that_could_pass_the_budget() -> None:
    prices = PriceTable({"m": Price(input=1_000_000.0, cached_input=0.0, output=1_000_000.0)})  # $1 per token
    limiter = RateLimiter(counter=by_chars)
    gate = BudgetGate(limiter, prices, "m", max_cost=450.0, spent=100.0)

    async def go() -> None:
        ticket = await gate.enter(body())  # worst case 200 tokens = $200 -> 100 + 200 <= 450
        with pytest.raises(errors.BudgetExceededError, match="budget"):
            await gate.enter(body())  # 100 spent + 200 in flight + 200 > 450
        gate.exit(ticket, headers=None, completion=None, error=None)
        await gate.enter(body())  # nothing in flight any more

    asyncio.run(go())
    assert gate.reserved == pytest.approx(200.0)


# -- over HTTP: the async client behind the limiter against a server with the same limits --


PROMPT = RenderedPrompt(
    name="profile",
    version="profile@test",
    messages=[{"role": "system", "content": "You write profiles."}, {"role": "user", "content": "h" * 800}],
)


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


@pytest.fixture
def limited_server(fake: FakeTime) -> Iterator[LoopbackServer]:
    limits = Limits(rpm=30, tpm=4000, minute_s=60, clock=fake.clock)
    with LoopbackServer(responder=lambda b: Reply(valid_profile_json()), limits=limits) as srv:
        yield srv


def _client(server: LoopbackServer, gate: Any, fake: FakeTime) -> AsyncChatClient:
    config = LLMConfig(base_url=server.base_url, api_key="sk-test", model="m", max_completion_tokens=300)
    return AsyncChatClient(config, gate=gate, sleep=fake.sleep, prices=PriceTable({}))


def test_limited_client_never_draws_a_429_from_a_server_with_the_same_limits(
    limited_server: LoopbackServer, fake: FakeTime
) -> None:
    limiter = RateLimiter(rpm=30, tpm=4000, concurrency=4, clock=fake.clock, sleep=fake.sleep)

    async def go() -> None:
        async with _client(limited_server, limiter, fake) as client:
            replies = await asyncio.gather(*(client.complete(PROMPT, BehaviorProfile) for _ in range(12)))
        assert all(r.value.summary for r in replies)

    asyncio.run(go())
    assert limited_server.stats.rate_limited == 0
    assert limited_server.stats.chat_completions == 12
    assert sum(fake.sleeps) > 0  # it did have to wait for the buckets
    assert limiter.calibration != 1.0  # learnt the server's token counting from usage


def test_unlimited_client_gets_429s_and_the_retry_waits_for_retry_after(
    limited_server: LoopbackServer, fake: FakeTime
) -> None:
    limiter = RateLimiter(concurrency=4, clock=fake.clock, sleep=fake.sleep)  # no limits known up front

    async def go() -> None:
        async with _client(limited_server, limiter, fake) as client:
            for _ in range(8):
                await client.complete(PROMPT, BehaviorProfile)

    asyncio.run(go())
    assert limited_server.stats.chat_completions >= 8
    assert limiter.tokens is not None and limiter.tokens.capacity == 4000  # adopted from headers


def test_injected_429_storm_is_retried_with_the_servers_hint() -> None:
    fake = FakeTime()
    faults = [Fault.rate_limit(retry_after=None, retry_after_ms=1500), None]
    with LoopbackServer(responder=lambda b: Reply(valid_profile_json()), faults=faults) as srv:
        limiter = RateLimiter(concurrency=2, clock=fake.clock, sleep=fake.sleep)

        async def go() -> None:
            async with _client(srv, limiter, fake) as client:
                reply = await client.complete(PROMPT, BehaviorProfile)
            assert reply.usage.requests == 2

        asyncio.run(go())
    assert limiter.stats.rate_limited == 1
    assert pytest.approx(1.5) in fake.sleeps


def test_calibration_converges_with_overlapping_requests() -> None:
    """Regression: a reply must be compared with its own uncalibrated count, not one rescaled
    by a calibration that other replies changed meanwhile (that ran away and refused requests)."""
    from types import SimpleNamespace

    limiter = RateLimiter(tpm=10_000_000, counter=by_chars)

    async def go() -> None:
        for _ in range(20):
            tickets = [await limiter.enter(body()) for _ in range(8)]  # 8 in flight at once
            for ticket in tickets:
                reply = SimpleNamespace(usage=SimpleNamespace(prompt_tokens=2 * ticket.prompt_counted))
                limiter.exit(ticket, headers=None, completion=reply, error=None)

    asyncio.run(go())
    assert limiter.calibration == pytest.approx(2.0, rel=1e-3)

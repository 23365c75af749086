"""Gates for batch requests: dual token buckets, adaptive concurrency and a cost budget.

The API's requests-per-minute and tokens-per-minute limits are the ceiling of a batch. A
``RateLimiter`` keeps a run just under them instead of finding them with 429s:

* **Two token buckets** (requests, tokens) refilled continuously at the per-minute limit,
  starting full as the provider's do. Each HTTP attempt is charged one request and its token
  estimate: the tiktoken count of the messages (times a calibration factor learnt from the
  server's ``usage.prompt_tokens``) plus the reserved ``max_completion_tokens``, which
  providers charge against TPM up front. After each reply the bucket is corrected by the
  difference between the reported and estimated prompt tokens, and lowered to the server's
  ``x-ratelimit-remaining-*`` when the server has less left than we think.
* **Retry-After**: a 429 pauses every sender (not just the one that got it) until the
  server's ``retry-after-ms``/``retry-after`` has passed.
* **Adaptive concurrency** (AIMD): a 429 cuts the number of requests in flight by
  ``DECREASE_FACTOR`` (once per pause), and every ``limit`` successes add one back, up to
  the configured maximum.

Limits not given are adopted from the server's ``x-ratelimit-limit-*`` headers. A request
whose estimate exceeds the whole TPM limit can never be sent and fails at once
(``BadRequestError``). ``minute_s`` shortens the minute for tests and benchmarks against a
loopback server with scaled limits; ``clock`` and ``sleep`` can be replaced by fakes.

``BudgetGate`` wraps a ``RateLimiter`` and refuses (``BudgetExceededError``) any attempt
whose worst-case cost (prompt estimate plus ``max_completion_tokens`` at list price) would
take spending past the budget, counting what is already spent and in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import openai

from agent import errors
from agent.llm.client import _error_code
from agent.prompting.tokens import PriceTable, count_messages

DECREASE_FACTOR = 0.7
MIN_WAIT_S = 1e-3
CALIBRATION_WEIGHT = 0.2
"""Weight of each new observation in the moving average of reported/counted prompt tokens."""
CALIBRATION_RANGE = (0.5, 3.0)
"""Bounds of one observation: a server whose counts are further off than this is not believed."""


class TokenBucket:
    """``per_minute`` units per ``minute_s`` seconds, refilled continuously, capacity one minute."""

    def __init__(self, per_minute: float, *, minute_s: float = 60.0, now: float = 0.0) -> None:
        if per_minute <= 0:
            raise ValueError("a rate limit must be positive")
        self.capacity = float(per_minute)
        self.rate = per_minute / minute_s  # units per second
        self.level = float(per_minute)
        self.stamp = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + max(now - self.stamp, 0.0) * self.rate)
        self.stamp = max(self.stamp, now)

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` units are available (0 if they are now)."""
        self.refill(now)
        return 0.0 if amount <= self.level else (amount - self.level) / self.rate

    def take(self, amount: float) -> None:
        """Remove ``amount`` (negative gives back, never above capacity; the level may go negative)."""
        self.level = min(self.capacity, self.level - amount)

    def observe_remaining(self, remaining: float, now: float) -> None:
        """The server says ``remaining`` units are left: never believe we have more."""
        self.refill(now)
        self.level = min(self.level, remaining)


class AdaptiveConcurrency:
    """An async semaphore whose size moves between ``minimum`` and ``maximum`` (AIMD)."""

    def __init__(self, maximum: int, *, minimum: int = 1) -> None:
        if maximum < 1:
            raise ValueError("concurrency must be at least 1")
        self.maximum = maximum
        self.minimum = min(minimum, maximum)
        self.limit = maximum
        self.in_flight = 0
        self._successes = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        while self.in_flight >= self.limit:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(future)
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._wake()  # we were woken but leave: pass the free slot on
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(future)
                raise
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def on_success(self) -> None:
        self._successes += 1
        if self._successes >= self.limit and self.limit < self.maximum:
            self._successes = 0
            self.limit += 1
            self._wake()

    def decrease(self) -> None:
        self._successes = 0
        self.limit = max(self.minimum, math.floor(self.limit * DECREASE_FACTOR))

    def _wake(self) -> None:
        free = self.limit - self.in_flight
        while free > 0 and self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)
                free -= 1


@dataclass
class Ticket:
    """What one attempt was charged, returned to ``RateLimiter.exit``."""

    tokens: float
    prompt_estimate: float
    prompt_counted: float
    """The tiktoken count before calibration."""


@dataclass
class LimiterStats:
    attempts: int = 0
    rate_limited: int = 0
    """429 answers seen (``insufficient_quota`` excluded)."""
    waited_s: float = 0.0
    tokens_charged: float = 0.0
    refunded_tokens: float = 0.0
    """Unused completion reservations given back because the server charged actual usage."""


def _header_number(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    ms = _header_number(headers, "retry-after-ms")
    if ms is not None:
        return ms / 1000.0
    return _header_number(headers, "retry-after")


class RateLimiter:
    """An ``agent.llm.async_client.AttemptGate`` that keeps requests under RPM/TPM (see module docstring)."""

    def __init__(
        self,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        concurrency: int = 32,
        minute_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        counter: Callable[[list[dict[str, Any]], str], int] | None = None,
    ) -> None:
        self.minute_s = minute_s
        self.clock = clock
        self.sleep = sleep or asyncio.sleep
        self.count = counter or count_messages
        self.concurrency = AdaptiveConcurrency(concurrency)
        self.stats = LimiterStats()
        self.calibration = 1.0
        """Moving average of server-reported / locally counted prompt tokens."""
        now = clock()
        self.requests = TokenBucket(rpm, minute_s=minute_s, now=now) if rpm else None
        self.tokens = TokenBucket(tpm, minute_s=minute_s, now=now) if tpm else None
        self._paused_until = 0.0
        self._decreased_for = -1.0
        self._lock = asyncio.Lock()
        self._in_flight_tokens = 0.0
        """Tokens charged to attempts not yet answered (the server may not have seen them yet)."""

    def estimate(self, body: Mapping[str, Any]) -> tuple[float, float]:
        """(tokens to charge, calibrated prompt estimate) for one request body."""
        tokens, prompt, _ = self._estimate(body)
        return tokens, prompt

    def _estimate(self, body: Mapping[str, Any]) -> tuple[float, float, float]:
        counted = float(self.count(list(body.get("messages", [])), str(body.get("model") or "")))
        prompt = counted * self.calibration
        reserved = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        return prompt + float(reserved), prompt, counted

    async def enter(self, body: dict[str, Any]) -> Ticket:
        """Wait for concurrency, the 429 pause and both buckets; then charge them."""
        tokens, prompt, counted = self._estimate(body)
        if self.tokens is not None and tokens > self.tokens.capacity:
            raise errors.BadRequestError(
                f"request needs about {tokens:.0f} tokens (prompt + max_completion_tokens), more than "
                f"the whole limit of {self.tokens.capacity:.0f} tokens per minute; it can never be sent"
            )
        await self.concurrency.acquire()
        try:
            async with self._lock:  # FIFO: a large request is not starved by smaller ones
                await self._admit(tokens)
        except BaseException:
            self.concurrency.release()
            raise
        self.stats.attempts += 1
        self.stats.tokens_charged += tokens
        self._in_flight_tokens += tokens
        return Ticket(tokens, prompt, counted)

    async def _admit(self, tokens: float) -> None:
        """Wait for the 429 pause and both buckets, then charge one request and ``tokens``.

        The one place admission is decided; a limiter whose budget lives elsewhere (the Ray
        engine's shared actor) overrides only this."""
        while True:
            now = self.clock()
            wait = max(
                self._paused_until - now,
                self.requests.wait_for(1, now) if self.requests else 0.0,
                self.tokens.wait_for(tokens, now) if self.tokens else 0.0,
            )
            if wait <= MIN_WAIT_S:  # float rounding must not become an endless wait
                break
            self.stats.waited_s += wait
            await self.sleep(wait)
        if self.requests:
            self.requests.take(1)
        if self.tokens:
            self.tokens.take(tokens)

    def exit(
        self,
        ticket: Ticket,
        *,
        headers: Mapping[str, str] | None,
        completion: Any | None,
        error: BaseException | None,
    ) -> None:
        """Release the slot and learn from the response (see module docstring)."""
        self.concurrency.release()
        self._in_flight_tokens = max(self._in_flight_tokens - ticket.tokens, 0.0)
        now = self.clock()
        if headers is not None:
            self._observe_headers(headers, now)
        if completion is not None and error is None:
            self.concurrency.on_success()
            reported = getattr(getattr(completion, "usage", None), "prompt_tokens", None)
            if reported and ticket.prompt_counted > 0:
                if self.tokens is not None:
                    self.tokens.take(reported - ticket.prompt_estimate)
                ratio = min(max(reported / ticket.prompt_counted, CALIBRATION_RANGE[0]), CALIBRATION_RANGE[1])
                self.calibration += CALIBRATION_WEIGHT * (ratio - self.calibration)
            if headers is not None:  # after the prompt correction: only the completion can explain room
                self._refund_unused(ticket, headers, completion, now)
        # insufficient_quota is read as the retry policy reads it: not a rate-limit signal
        if (
            isinstance(error, openai.APIStatusError)
            and error.status_code == 429
            and _error_code(error) != "insufficient_quota"
        ):
            self._rate_limited(headers or {}, now)

    def _refund_unused(self, ticket: Ticket, headers: Mapping[str, str], completion: Any, now: float) -> None:
        """Give back the unused part of the reserved completion when the server charged less.

        A server that charges the completion actually produced has more tokens left than our
        bucket, which charged the whole reservation; its ``x-ratelimit-remaining-tokens`` shows
        it. We move up towards it by at most this reply's unused reservation, never above what
        the server says is left, and less what we have in flight that it may not count yet. A
        server that charges the reservation shows almost no room: only our prompt estimate's
        error, which the calibration removes after a few replies.
        """
        used = getattr(getattr(completion, "usage", None), "completion_tokens", None)
        remaining = _header_number(headers, "x-ratelimit-remaining-tokens")
        if self.tokens is None or used is None or remaining is None:
            return
        unused = max(ticket.tokens - ticket.prompt_estimate - float(used), 0.0)
        self.tokens.refill(now)
        # what the server shows beyond our level, less what we sent that it may not count yet
        room = remaining - self.tokens.level - self._in_flight_tokens
        if unused > 0 and room > 0:
            give_back = min(unused, room)
            self.tokens.take(-give_back)
            self.stats.refunded_tokens += give_back

    def _observe_headers(self, headers: Mapping[str, str], now: float) -> None:
        for kind in ("requests", "tokens"):
            limit = _header_number(headers, f"x-ratelimit-limit-{kind}")
            remaining = _header_number(headers, f"x-ratelimit-remaining-{kind}")
            bucket = self.requests if kind == "requests" else self.tokens
            if bucket is None and limit:  # adopt the limit the server advertises
                bucket = TokenBucket(limit, minute_s=self.minute_s, now=now)
                if kind == "requests":
                    self.requests = bucket
                else:
                    self.tokens = bucket
            if bucket is not None and remaining is not None:
                bucket.observe_remaining(remaining, now)

    def _rate_limited(self, headers: Mapping[str, str], now: float) -> None:
        self.stats.rate_limited += 1
        hint = _retry_after(headers)
        pause = hint if hint is not None else 1.0
        self._paused_until = max(self._paused_until, now + pause)
        # One decrease per pause: a burst of 429s from requests already in flight is one signal.
        if now >= self._decreased_for:
            self.concurrency.decrease()
            self._decreased_for = self._paused_until


# -- the budget --------------------------------------------------------------------------------
class BudgetGate:
    """Reserves each attempt's worst-case cost before it may wait for the rate limiter."""

    def __init__(
        self, limiter: RateLimiter, prices: PriceTable, model: str, max_cost: float | None, spent: float
    ) -> None:
        self.limiter, self.prices, self.model, self.max_cost = limiter, prices, model, max_cost
        self.spent = spent
        self.reserved = 0.0

    async def enter(self, body: dict[str, Any]) -> tuple[float, Ticket]:
        tokens, prompt = self.limiter.estimate(body)
        worst = self.prices.cost(self.model, round(prompt), round(tokens - prompt))
        if self.max_cost is not None and self.spent + self.reserved + worst > self.max_cost:
            raise errors.BudgetExceededError(
                f"budget of ${self.max_cost:.4f} reached (${self.spent:.4f} spent, ${self.reserved:.4f} "
                f"in flight; the next request may cost up to ${worst:.4f})"
            )
        self.reserved += worst
        try:
            return worst, await self.limiter.enter(body)
        except BaseException:
            self.reserved -= worst
            raise

    def exit(self, ticket: tuple[float, Ticket], **outcome: Any) -> None:
        worst, inner = ticket
        self.reserved -= worst
        usage = getattr(outcome.get("completion"), "usage", None)
        if usage is not None:
            details = getattr(usage, "prompt_tokens_details", None)
            cached = (getattr(details, "cached_tokens", 0) or 0) if details else 0
            self.spent += self.prices.cost(
                self.model, usage.prompt_tokens or 0, usage.completion_tokens or 0, cached
            )
        self.limiter.exit(inner, **outcome)

"""``AsyncChatClient``: the async twin of ``agent.llm.client.ChatClient`` for batch runs.

Same request bodies, the same single retry policy (``agent.llm.client.retry_policy``; the SDK's own
retries are off), the same error mapping and the same validation/re-ask logic
(``agent.llm.client.Exchange``): only the transport differs, so a reply means the same thing on
both paths. For rate-limited batches an optional ``AttemptGate`` wraps every HTTP attempt
(retries and re-asks included): ``enter`` may wait (token buckets, concurrency) or refuse
(budget), and ``exit`` sees the response headers, the completion or the error, so the gate
can correct its estimates from ``usage`` and ``x-ratelimit-remaining-*`` and react to 429s.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

import httpx2
import openai
from pydantic import BaseModel
from tenacity import AsyncRetrying

from agent import errors
from agent.errors import Usage
from agent.llm.client import (
    Exchange,
    LLMConfig,
    RequestDeadlineError,
    StructuredReply,
    _MalformedBody,
    build_request_body,
    checked_completion,
    map_transport_error,
    require_endpoint,
    retry_policy,
)
from agent.prompting.templates import TEMPLATE_HEADER, RenderedPrompt
from agent.prompting.tokens import PriceTable

M = TypeVar("M", bound=BaseModel)


class AttemptGate(Protocol):
    """Wraps each HTTP attempt: ``enter`` before sending, ``exit`` exactly once afterwards."""

    async def enter(self, body: dict[str, Any]) -> Any:
        """Wait until ``body`` may be sent; returns a ticket for ``exit``. May raise a
        ``RecommenderError`` (e.g. ``BudgetExceededError``) to refuse: it is not retried."""
        ...

    def exit(
        self,
        ticket: Any,
        *,
        headers: Mapping[str, str] | None,
        completion: Any | None,
        error: BaseException | None,
    ) -> None:
        """After the attempt: response headers (None without a response) and its outcome."""
        ...


class AsyncChatClient:
    """Async client over ``openai.AsyncOpenAI(max_retries=0)``; safe for many concurrent calls."""

    def __init__(
        self,
        config: LLMConfig | None = None,
        *,
        http_client: httpx2.AsyncClient | None = None,
        prices: PriceTable | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        gate: AttemptGate | None = None,
    ) -> None:
        self.config = config or LLMConfig.from_env()
        require_endpoint(self.config, http_client)
        self.prices = prices or PriceTable.from_env()
        self.gate = gate
        self._sleep = sleep or asyncio.sleep
        self._json_schema_supported = True
        self._sdk = openai.AsyncOpenAI(
            api_key=self.config.api_key or "not-needed",
            base_url=self.config.base_url,
            timeout=self.config.timeout_s,
            max_retries=0,  # the one retry layer is ours (agent.llm.client.retry_policy)
            http_client=http_client,
        )

    async def aclose(self) -> None:
        """Close the HTTP connections (also done by ``async with AsyncChatClient(...)``)."""
        await self._sdk.close()

    async def __aenter__(self) -> AsyncChatClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def build_request(
        self, prompt: RenderedPrompt, output: type[BaseModel], *, json_schema: bool = True
    ) -> dict[str, Any]:
        """The chat.completions request body (identical to ``ChatClient.build_request``)."""
        return build_request_body(self.config, prompt, output, json_schema=json_schema)

    async def _attempt(self, body: dict[str, Any], headers: dict[str, str], usage: Usage) -> Any:
        ticket = await self.gate.enter(body) if self.gate else None
        usage.requests += 1
        response_headers: Mapping[str, str] | None = None
        completion: Any = None
        error: BaseException | None = None
        try:
            try:  # --timeout bounds the whole attempt (connect + send + full body), not each read
                async with asyncio.timeout(self.config.timeout_s):
                    raw = await self._sdk.chat.completions.with_raw_response.create(
                        **body, extra_headers=headers
                    )
            except TimeoutError:
                raise RequestDeadlineError(f"no complete reply within {self.config.timeout_s:g}s") from None
            response_headers = raw.headers
            try:
                completion = raw.parse()
            except json.JSONDecodeError as exc:  # a garbled 2xx body
                raise _MalformedBody(f"response body is not JSON: {exc}") from None
            return checked_completion(completion)
        except openai.APIStatusError as exc:
            response_headers, error = exc.response.headers, exc
            raise
        except BaseException as exc:  # cancellation included: the gate must always be exited
            error = exc
            raise
        finally:
            if self.gate is not None:
                self.gate.exit(ticket, headers=response_headers, completion=completion, error=error)

    async def _send(
        self, body: dict[str, Any], template_version: str, usage: Usage, extra: Mapping[str, str]
    ) -> Any:
        """One logical request with bounded transport retries; maps SDK errors to ours."""
        headers = {TEMPLATE_HEADER: template_version, **extra}
        attempts = 0
        try:
            async for attempt in AsyncRetrying(**retry_policy(self.config), sleep=self._sleep):
                with attempt:
                    attempts += 1
                    return await self._attempt(body, headers, usage)
        except Exception as exc:
            mapped = map_transport_error(
                exc,
                attempts=attempts,
                usage=usage,
                template=template_version,
                timeout_s=self.config.timeout_s,
                base_url=self._sdk.base_url,
            )
            if mapped is None:
                raise
            raise mapped from None
        raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover

    async def complete(
        self,
        prompt: RenderedPrompt,
        output: type[M],
        *,
        headers: Mapping[str, str] | None = None,
        max_completion_tokens: int | None = None,
    ) -> StructuredReply[M]:
        """Send ``prompt`` and return a reply validated as ``output`` (see ``ChatClient.complete``).

        ``headers`` are extra request headers (e.g. the batch runner's custom id);
        ``max_completion_tokens`` overrides the configured cap for this request (the batch
        runner's learned budget). Raises a ``ModelError`` subclass, or what the gate raises to
        refuse a request.
        """
        exchange = Exchange(self, prompt, output)
        if max_completion_tokens is not None:
            exchange.body["max_completion_tokens"] = max_completion_tokens
        while True:
            try:
                completion = await self._send(exchange.body, prompt.version, exchange.usage, headers or {})
            except errors.BadRequestError as exc:
                if exchange.rejected(exc):
                    if max_completion_tokens is not None:  # the rebuilt body keeps this request's cap
                        exchange.body["max_completion_tokens"] = max_completion_tokens
                    continue
                raise
            reply = exchange.received(completion)
            if reply is not None:
                return reply

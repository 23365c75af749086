"""A chat-API client that returns validated pydantic objects or a typed error.

Built on the official ``openai`` SDK, so it works with any OpenAI-compatible server (OpenAI,
Azure, vLLM, Ollama, llama.cpp) through ``base_url``. The failure causes are handled in
exactly one place each:

* **Transport** (timeouts, connection errors, 408/409/429/5xx): retried here with tenacity,
  honouring ``retry-after-ms``/``retry-after``; the SDK's own retries are switched off
  (``max_retries=0``) so the two never stack. ``insufficient_quota``, auth and other 4xx
  fail at once.
* **Schema support**: ``response_format`` json_schema (strict); a server that rejects it with
  a 400 gets JSON mode with the schema in the prompt from then on.
* **Validation**: an invalid reply is re-asked with only the last validation error, at most
  ``max_reasks`` times; never after ``finish_reason == "length"`` (``TruncatedReplyError``)
  or a refusal/content filter (``RefusalError``).

Usage and cost are summed over every request sent, failed ones included, and travel with
both the result and any ``ModelError``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

import httpx2
from pydantic import BaseModel, ValidationError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from agent import errors
from agent.errors import Usage
from agent.prompting.schemas import strict_json_schema
from agent.prompting.templates import TEMPLATE_HEADER, RenderedPrompt
from agent.prompting.tokens import PriceTable
from agent.secrets import redact, register, register_url, safe_url

if TYPE_CHECKING:
    import openai

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

DEFAULT_MODEL = "gpt-4.1-mini"
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 60.0


@dataclass
class LLMConfig:
    """Connection and behaviour settings; ``from_env`` reads the usual environment variables."""

    model: str = DEFAULT_MODEL
    base_url: str | None = None
    api_key: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 3
    """Transport retries after the first attempt (so up to 4 requests per logical call)."""
    max_reasks: int = 2
    """Validation re-asks after the first reply."""
    max_completion_tokens: int = 2000
    temperature: float | None = None
    """None sends no temperature (reasoning models reject anything but the default)."""
    seed: int | None = 7
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0

    def __post_init__(self) -> None:
        # Checked here, before any request: a typo in a setting must be a ConfigError (exit 2),
        # never a silent fallback or an SDK traceback on the first call.
        if not self.model or not self.model.strip():
            raise errors.ConfigError("the model name is empty (--model / RECAGENT_MODEL)")
        self.timeout_s = checked_timeout(self.timeout_s, "the timeout (--timeout)")
        if self.base_url is not None:
            check_base_url(self.base_url)
        # Whatever is persisted or printed from now on is scrubbed of this key and of any
        # credentials in the base URL (agent.secrets).
        register(self.api_key)
        register_url(self.base_url)

    @classmethod
    def from_env(cls, **overrides: Any) -> LLMConfig:
        """Settings from ``RECAGENT_MODEL``, ``OPENAI_BASE_URL``, ``OPENAI_API_KEY`` and
        ``RECAGENT_TIMEOUT``; ``overrides`` that are not None win. Raises ``ConfigError`` for an
        invalid value (see ``__post_init__``)."""
        values: dict[str, Any] = {
            "model": os.environ.get("RECAGENT_MODEL", DEFAULT_MODEL),
            "base_url": os.environ.get("OPENAI_BASE_URL") or None,
            "api_key": os.environ.get("OPENAI_API_KEY") or None,
        }
        if os.environ.get("RECAGENT_TIMEOUT"):
            values["timeout_s"] = checked_timeout(os.environ["RECAGENT_TIMEOUT"], "RECAGENT_TIMEOUT")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def checked_timeout(value: object, name: str) -> float:
    """``value`` as a number of seconds > 0 and finite; ``ConfigError`` naming ``name`` otherwise."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise errors.ConfigError(f"{name} must be a number of seconds > 0, got {value!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise errors.ConfigError(f"{name} must be a number of seconds > 0, got {value!r}")
    return seconds


def check_base_url(url: str) -> None:
    """``ConfigError`` unless ``url`` is an absolute http(s) URL with a host.

    ``localhost:8000/v1`` (no scheme) and ``not a url`` would otherwise reach the SDK and end
    as connection errors after every retry, which the recommend path turns into a fallback.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in url.strip():
        hint = f"; did you mean http://{url.strip()}?" if "://" not in url and " " not in url.strip() else ""
        raise errors.ConfigError(
            f"base URL {url!r} is not an http(s) URL (--base-url / OPENAI_BASE_URL){hint}"
        )


@dataclass
class StructuredReply(Generic[M]):
    """A validated reply and what it cost to get it."""

    value: M
    raw: str
    usage: Usage
    attempts: int
    mode: str
    """``json_schema`` (strict structured output) or ``json_object`` (fallback JSON mode)."""
    model: str
    template_version: str
    request_ids: list[str] = field(default_factory=list)


def require_endpoint(config: LLMConfig, http_client: object | None) -> None:
    """``ConfigError`` when a client would send requests to the public API without a key.

    Without this the SDK targets api.openai.com with a placeholder key and the first call
    ends, after every retry, in an error that does not name the missing setting. A local
    server (``base_url``) needs no key, and a caller-supplied ``http_client`` (replay,
    tests) decides where requests go.
    """
    if config.api_key or config.base_url or http_client is not None:
        return
    raise errors.ConfigError(
        "no API key: set OPENAI_API_KEY and use LLMConfig.from_env() (or give LLMConfig(api_key=...), "
        "or base_url for a local server)"
    )


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S)


def extract_json(text: str) -> str:
    """The JSON part of a reply: strips markdown fences and prose around one object."""
    match = _FENCE.match(text)
    if match:
        return match.group(1)
    start, end = text.find("{"), text.rfind("}")
    return text[start : end + 1] if 0 <= start < end else text


def _retry_after_s(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    if response is None:
        return None
    headers = response.headers
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return min(max(float(value) * scale, 0.0), MAX_RETRY_AFTER_S)
        except ValueError:
            continue  # an HTTP-date retry-after: fall back to exponential backoff
    return None


def _error_code(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    inner = body.get("error", body) if isinstance(body.get("error", body), dict) else body
    return str(inner.get("code") or inner.get("type") or exc.code or "")


class _MalformedBody(Exception):
    """The server answered 2xx with a body that is not a chat completion (garbled JSON, text)."""


class RequestDeadlineError(Exception):
    """An attempt outlived ``timeout_s`` as a whole (connect + send + full body); retryable."""


def _is_retryable(exc: BaseException) -> bool:
    import openai  # the SDK loads on first use: a command without a model never pays for it

    if isinstance(
        exc, (openai.APITimeoutError, openai.APIConnectionError, _MalformedBody, RequestDeadlineError)
    ):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRYABLE_STATUS and _error_code(exc) != "insufficient_quota"
    return False


def _mentions_schema_support(message: str) -> bool:
    text = message.lower()
    return "response_format" in text or "json_schema" in text


def retry_policy(config: LLMConfig) -> dict[str, Any]:
    """The one transport-retry policy, as tenacity ``Retrying``/``AsyncRetrying`` arguments.

    Shared by the sync and async clients: at most ``config.max_retries`` retries of retryable
    failures (see ``_is_retryable``), waiting the server's ``retry-after(-ms)`` when given and
    exponential backoff otherwise. The caller adds ``sleep``.
    """

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = _retry_after_s(exc) if exc else None
        if hinted is not None:
            return hinted
        return min(config.backoff_base_s * 2 ** (state.attempt_number - 1), config.backoff_max_s)

    return {
        "stop": stop_after_attempt(config.max_retries + 1),
        "wait": wait,
        "retry": retry_if_exception(_is_retryable),
        "reraise": True,
    }


def checked_completion(completion: Any) -> Any:
    """``completion`` if it looks like a chat completion; else ``_MalformedBody`` (retryable)."""
    if not getattr(completion, "choices", None):
        raise _MalformedBody(f"response is not a chat completion: {str(completion)[:80]!r}")
    return completion


def map_transport_error(
    exc: BaseException, *, attempts: int, usage: Usage, template: str, timeout_s: float, base_url: object
) -> errors.ModelError | None:
    """Our typed error for an exception left after the retries; None if it is not a transport one."""
    import openai

    from agent.llm.cassette import CassetteMiss

    kwargs: dict[str, Any] = {"attempts": attempts, "usage": usage, "template": template}
    if isinstance(exc, CassetteMiss):
        return errors.CassetteMissError(str(exc), attempts=attempts, usage=usage, template=exc.template)
    if isinstance(exc, openai.APIStatusError):
        return _map_status_error(exc, attempts, usage, template)
    if isinstance(exc, (openai.APITimeoutError, RequestDeadlineError)):
        return errors.TransportError(
            f"request timed out after {timeout_s:g}s ({attempts} attempts)", **kwargs
        )
    if isinstance(exc, openai.APIConnectionError):
        return errors.TransportError(
            f"cannot reach {safe_url(base_url)} ({attempts} attempts): {exc}", **kwargs
        )
    if isinstance(exc, _MalformedBody):
        return errors.TransportError(f"malformed response after {attempts} attempts: {exc}", **kwargs)
    return None


def _map_status_error(
    exc: openai.APIStatusError, attempts: int, usage: Usage, template: str
) -> errors.ModelError:
    status, code = exc.status_code, _error_code(exc)
    # Servers echo bad keys in their messages ("Incorrect API key provided: sk-..."); never pass them on.
    message = redact(exc.message)
    detail = f"HTTP {status}{f' {code}' if code else ''}: {message}"
    kwargs: dict[str, Any] = {"attempts": attempts, "usage": usage, "template": template}
    if status == 429 and code == "insufficient_quota":
        return errors.QuotaExceededError(f"account out of quota, not retried ({detail})", **kwargs)
    if status == 429:
        return errors.RateLimitError(f"rate limited after {attempts} attempts ({detail})", **kwargs)
    if status in (401, 403):
        return errors.AuthenticationError(f"authentication failed, check OPENAI_API_KEY ({detail})", **kwargs)
    if status in RETRYABLE_STATUS:
        return errors.TransportError(f"server error after {attempts} attempts ({detail})", **kwargs)
    return errors.BadRequestError(f"request rejected ({detail})", **kwargs)


def account(completion: Any, usage: Usage, prices: PriceTable, model: str, *, batch: bool = False) -> Usage:
    """Add one completion's tokens and USD to ``usage``; returns this call's own usage."""
    call = Usage()
    if getattr(completion, "usage", None) is None:
        return call
    details = getattr(completion.usage, "prompt_tokens_details", None)
    call.prompt_tokens = completion.usage.prompt_tokens or 0
    call.completion_tokens = completion.usage.completion_tokens or 0
    call.cached_tokens = (getattr(details, "cached_tokens", 0) or 0) if details else 0
    call.cost_usd = prices.cost(
        model, call.prompt_tokens, call.completion_tokens, call.cached_tokens, batch=batch
    )
    usage.prompt_tokens += call.prompt_tokens
    usage.completion_tokens += call.completion_tokens
    usage.cached_tokens += call.cached_tokens
    usage.cost_usd += call.cost_usd
    return call


def read_reply(completion: Any, output: type[M], *, max_completion_tokens: int, common: dict[str, Any]) -> M:
    """The reply of ``completion`` validated as ``output``.

    Raises ``RefusalError`` (refusal, content filter), ``TruncatedReplyError`` (length) and
    pydantic's ``ValidationError`` (the caller decides between a re-ask and a failure).
    ``common`` holds the keyword arguments of the ``ModelError`` raised (attempts, usage...).
    """
    choice = completion.choices[0]
    message = choice.message
    if getattr(message, "refusal", None):
        raise errors.RefusalError(f"model refused: {message.refusal}", **common)
    if choice.finish_reason == "content_filter":
        raise errors.RefusalError("reply stopped by the provider's content filter", **common)
    if choice.finish_reason == "length":
        raise errors.TruncatedReplyError(
            f"reply hit max_completion_tokens={max_completion_tokens}; raise it "
            "or shorten the prompt (not re-asked: it would be cut again)",
            **common,
        )
    return output.model_validate_json(extract_json(message.content or ""))


class ClientState(Protocol):
    """What an ``Exchange`` needs from a client (``ChatClient`` or ``AsyncChatClient``)."""

    config: LLMConfig
    prices: PriceTable
    _json_schema_supported: bool

    def build_request(
        self, prompt: RenderedPrompt, output: type[BaseModel], *, json_schema: bool = True
    ) -> dict[str, Any]: ...


class Exchange(Generic[M]):
    """One logical ``complete`` call apart from its transport (shared by the sync and async clients).

    ``body`` is the request to send next. ``rejected`` says whether a 400 means "send it again
    in JSON mode"; ``received`` accounts for a completion and returns the validated reply, or
    None when ``body`` now holds a re-ask to send.
    """

    def __init__(self, client: ClientState, prompt: RenderedPrompt, output: type[M]) -> None:
        self.client = client
        self.prompt = prompt
        self.output = output
        self.usage = Usage()
        self.request_ids: list[str] = []
        self.reasks = 0
        self.body = client.build_request(prompt, output, json_schema=client._json_schema_supported)
        self._base_messages = list(self.body["messages"])

    def rejected(self, exc: errors.BadRequestError) -> bool:
        client = self.client
        if not (client._json_schema_supported and _mentions_schema_support(str(exc))):
            return False
        log.warning("server rejected json_schema response_format; using JSON mode with schema in prompt")
        client._json_schema_supported = False
        self.body = client.build_request(self.prompt, self.output, json_schema=False)
        self._base_messages = list(self.body["messages"])
        return True

    def received(self, completion: Any) -> StructuredReply[M] | None:
        config, usage = self.client.config, self.usage
        self.request_ids.append(getattr(completion, "_request_id", None) or completion.id)
        account(completion, usage, self.client.prices, config.model)
        last_raw = completion.choices[0].message.content
        common: dict[str, Any] = {
            "attempts": usage.requests,
            "last_reply": last_raw,
            "usage": usage,
            "template": self.prompt.version,
        }
        try:
            value = read_reply(
                completion, self.output, max_completion_tokens=config.max_completion_tokens, common=common
            )
        except ValidationError as exc:
            if self.reasks >= config.max_reasks:
                raise errors.InvalidReplyError(
                    f"reply still invalid after {self.reasks} re-asks: {_short(exc)}", **common
                ) from None
            self.reasks += 1
            # Re-ask with only the last error (not the whole chain) to keep prompts short.
            self.body = {
                **self.body,
                "messages": [
                    *self._base_messages,
                    {"role": "assistant", "content": last_raw or ""},
                    {"role": "user", "content": _reask_message(exc)},
                ],
            }
            return None
        return StructuredReply(
            value=value,
            raw=last_raw or "",
            usage=usage,
            attempts=usage.requests,
            mode="json_schema" if self.client._json_schema_supported else "json_object",
            model=completion.model or config.model,
            template_version=self.prompt.version,
            request_ids=self.request_ids,
        )


class ChatClient:
    """Sync client. Thread-safe for concurrent ``complete`` calls (the SDK client is)."""

    def __init__(
        self,
        config: LLMConfig | None = None,
        *,
        http_client: httpx2.Client | None = None,
        prices: PriceTable | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.config = config or LLMConfig.from_env()
        require_endpoint(self.config, http_client)
        self.prices = prices or PriceTable.from_env()
        self._sleep = sleep
        self._json_schema_supported = True
        # The SDK (and the cassette module, which subclasses its errors) cost ~0.5 s to import:
        # loaded by the first client, not by `import agent` or a command without a model.
        import openai

        from agent.llm.deadline import deadline_client

        if http_client is None:  # --timeout bounds each whole request, not each network read
            http_client = deadline_client(self.config.timeout_s)
        self._sdk = openai.OpenAI(
            api_key=self.config.api_key or "not-needed",
            base_url=self.config.base_url,
            timeout=self.config.timeout_s,
            max_retries=0,  # the one retry layer is ours (see module docstring)
            http_client=http_client,
        )

    def close(self) -> None:
        """Close the HTTP connections (also done by ``with ChatClient(...) as client:``)."""
        self._sdk.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- request building ------------------------------------------------------------
    def build_request(
        self, prompt: RenderedPrompt, output: type[BaseModel], *, json_schema: bool = True
    ) -> dict[str, Any]:
        """The chat.completions request body for ``prompt`` (shared with the batch paths)."""
        return build_request_body(self.config, prompt, output, json_schema=json_schema)

    # -- transport -------------------------------------------------------------------
    def _send(self, body: dict[str, Any], template_version: str, usage: Usage) -> Any:
        """One logical request with bounded transport retries; maps SDK errors to ours."""
        retrying = Retrying(
            **retry_policy(self.config), sleep=self._sleep if self._sleep is not None else time.sleep
        )
        attempts = 0

        def attempt() -> Any:
            nonlocal attempts
            attempts += 1
            usage.requests += 1
            try:
                completion = self._sdk.chat.completions.create(
                    **body, extra_headers={TEMPLATE_HEADER: template_version}
                )
            except json.JSONDecodeError as exc:  # the SDK lets a garbled 2xx body through as-is
                raise _MalformedBody(f"response body is not JSON: {exc}") from None
            return checked_completion(completion)

        try:
            return retrying(attempt)
        except Exception as exc:
            mapped = self.map_error(exc, attempts=attempts, usage=usage, template=template_version)
            if mapped is None:
                raise
            raise mapped from None

    def map_error(
        self, exc: BaseException, *, attempts: int, usage: Usage, template: str
    ) -> errors.ModelError | None:
        """Our typed error for an SDK/transport exception from this client; None if it is not one."""
        return map_transport_error(
            exc,
            attempts=attempts,
            usage=usage,
            template=template,
            timeout_s=self.config.timeout_s,
            base_url=self._sdk.base_url,
        )

    @property
    def json_schema_supported(self) -> bool:
        """False once the server rejected ``response_format: json_schema`` (JSON mode from then on)."""
        return self._json_schema_supported

    def open_stream(self, prompt: RenderedPrompt, output: type[BaseModel]) -> Any:
        """Start one streamed completion for ``prompt`` (usage included in the last chunk).

        No retries: once streamed text has been shown, a retry cannot be hidden from the reader
        (callers decide, see ``agent.chat.content``). Returns the SDK's chunk iterator; failures are
        the SDK's exceptions, turned into ours by ``map_error``.
        """
        body = self.build_request(prompt, output, json_schema=self._json_schema_supported)
        return self._sdk.chat.completions.create(
            **body,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={TEMPLATE_HEADER: prompt.version},
        )

    # -- the public call ---------------------------------------------------------------
    def complete(self, prompt: RenderedPrompt, output: type[M]) -> StructuredReply[M]:
        """Send ``prompt`` and return a reply validated as ``output``.

        Raises a ``ModelError`` subclass (see module docstring); every error carries the
        attempts made, the last raw reply and the usage of all attempts.
        """
        exchange = Exchange(self, prompt, output)
        while True:
            try:
                completion = self._send(exchange.body, prompt.version, exchange.usage)
            except errors.BadRequestError as exc:
                if exchange.rejected(exc):
                    continue
                raise
            reply = exchange.received(completion)
            if reply is not None:
                return reply


def build_request_body(
    config: LLMConfig, prompt: RenderedPrompt, output: type[BaseModel], *, json_schema: bool = True
) -> dict[str, Any]:
    """The chat.completions request body for ``prompt`` under ``config`` (no client needed).

    Static instructions first and user data last (as rendered), ``max_completion_tokens``
    always set; ``json_schema=False`` asks for JSON mode with the schema in the system prompt.
    """
    schema = strict_json_schema(output)
    messages = [dict(m) for m in prompt.messages]
    if json_schema:
        response_format: dict[str, Any] = {
            "type": "json_schema",
            "json_schema": {"name": output.__name__, "schema": schema, "strict": True},
        }
    else:
        response_format = {"type": "json_object"}
        messages[0]["content"] += (
            "\n\nThe reply must be a JSON object that validates against this JSON schema:\n"
            + json.dumps(schema, separators=(",", ":"))
        )
    body: dict[str, Any] = {
        "model": config.model,
        "messages": messages,
        "response_format": response_format,
        "max_completion_tokens": config.max_completion_tokens,
    }
    if config.temperature is not None:
        body["temperature"] = config.temperature
    if config.seed is not None:
        body["seed"] = config.seed
    return body


def _short(exc: ValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{exc.error_count()} error(s), first at {where or 'root'}: {first.get('msg')}"


def short_validation_error(exc: ValidationError) -> str:
    """One line about a validation error: how many problems and the first one."""
    return _short(exc)


def _reask_message(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors()[:10]:
        where = ".".join(str(p) for p in error.get("loc", ())) or "(root)"
        problems.append(f"- {where}: {error.get('msg')}")
    return (
        "Your reply did not match the required JSON schema:\n"
        + "\n".join(problems)
        + "\nReply again with the corrected JSON object only."
    )

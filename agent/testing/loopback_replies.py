"""What the loopback server answers: replies, injected faults, responders, and their JSON.

The vocabulary of :mod:`agent.testing.loopback` (which re-exports the public names), free of
sockets: a responder returns a :class:`Reply`, a plain string, a dict (sent verbatim) or a
:class:`Fault`; a :class:`FaultPlan` decides which chat call fails and how. The builders
promise the shapes the ``openai`` SDK parses: :func:`completion_body` a ``chat.completion``
(token counts estimated as characters / 4 unless the reply gives them), :func:`stream_events`
the matching SSE chunks ending in ``data: [DONE]``, :func:`error_body` OpenAI's
``{"error": {...}}`` object, and :func:`fault_answer` the :class:`Answer` (status, body or
events, headers, or no answer at all) that injects a fault.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

DEFAULT_MODEL = "loopback-model"
"""The model name in completions whose request names none."""


@dataclass
class Reply:
    """One model answer. Token counts default to rough estimates (characters / 4)."""

    content: str | None = None
    finish_reason: str = "stop"
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0


class FaultKind(Enum):
    RATE_LIMIT = "rate_limit"  # 429 rate_limit_exceeded (+ retry-after / retry-after-ms)
    INSUFFICIENT_QUOTA = "insufficient_quota"  # 429 insufficient_quota
    HTTP_ERROR = "http_error"  # any status with an OpenAI-style error body (400/401/404/500/502/503...)
    TIMEOUT = "timeout"  # hold the request for delay_s, then drop it without an answer
    RESET = "reset"  # abort the TCP connection (RST) without a response
    MALFORMED_JSON = "malformed_json"  # 200 application/json "{not json"
    CONTENT_FILTER = "content_filter"  # 200 with finish_reason "content_filter", content null
    RAW = "raw"  # status, body and headers exactly as given


_HTTP_DEFAULTS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request (injected fault)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Permission denied."),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model does not exist or you do not have access to it.",
    ),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


@dataclass(frozen=True)
class Fault:
    """A failure to inject; build with the class methods (``Fault.http(503)`` ...)."""

    kind: FaultKind
    status: int = 200
    message: str | None = None
    retry_after: float | None = None  # -> "retry-after" header (seconds)
    retry_after_ms: int | None = None  # -> "retry-after-ms" header
    delay_s: float = 30.0  # TIMEOUT: how long to hold the request
    body: Any = None  # RAW: dict/list -> JSON, str/bytes -> sent as is
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def rate_limit(cls, retry_after: float | None = 1, retry_after_ms: int | None = None) -> Fault:
        return cls(FaultKind.RATE_LIMIT, 429, retry_after=retry_after, retry_after_ms=retry_after_ms)

    @classmethod
    def insufficient_quota(cls) -> Fault:
        return cls(FaultKind.INSUFFICIENT_QUOTA, 429)

    @classmethod
    def http(cls, status: int, message: str | None = None, headers: dict[str, str] | None = None) -> Fault:
        return cls(FaultKind.HTTP_ERROR, status, message=message, headers=dict(headers or {}))

    @classmethod
    def timeout(cls, delay_s: float = 30.0) -> Fault:
        return cls(FaultKind.TIMEOUT, delay_s=delay_s)

    @classmethod
    def reset(cls) -> Fault:
        return cls(FaultKind.RESET)

    @classmethod
    def malformed_json(cls) -> Fault:
        return cls(FaultKind.MALFORMED_JSON)

    @classmethod
    def content_filter(cls) -> Fault:
        return cls(FaultKind.CONTENT_FILTER)

    @classmethod
    def raw(cls, status: int, body: Any, headers: dict[str, str] | None = None) -> Fault:
        return cls(FaultKind.RAW, status, body=body, headers=dict(headers or {}))


FaultFn = Callable[[int, dict[str, Any]], "Fault | None"]
Responder = Callable[[dict[str, Any]], "Reply | Fault | dict[str, Any] | str"]


class FaultPlan:
    """``faults[i]`` for chat call i (None = pass through), then ``when(i, body)`` if given."""

    def __init__(self, faults: Sequence[Fault | None] = (), *, when: FaultFn | None = None) -> None:
        self.faults = list(faults)
        self.when = when

    def __call__(self, call_index: int, body: dict[str, Any]) -> Fault | None:
        if call_index < len(self.faults):
            return self.faults[call_index]
        return self.when(call_index, body) if self.when else None


class ScriptedResponder:
    """Returns ``replies`` in order (thread-safe); ``calls`` keeps every request body.

    Past the end it raises, which the server turns into a 500 naming the problem."""

    def __init__(self, replies: Sequence[Reply | Fault | dict[str, Any] | str]) -> None:
        self.replies = list(replies)
        self.calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> Reply | Fault | dict[str, Any] | str:
        with self._lock:
            self.calls.append(body)
            if len(self.calls) > len(self.replies):
                raise IndexError(
                    f"ScriptedResponder: call {len(self.calls)} but only {len(self.replies)} replies"
                )
            return self.replies[len(self.calls) - 1]


def default_responder(body: dict[str, Any]) -> Reply:
    """Answers every request with the minimal valid JSON document ``{}``."""
    return Reply("{}")


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def estimate_tokens(text: str) -> int:
    """A rough token count: characters / 4, rounded up, at least 1."""
    return max(1, math.ceil(len(text) / 4))


def _tool_call(i: int, tc: dict[str, Any]) -> dict[str, Any]:
    if "function" in tc:
        return tc
    args = tc.get("arguments", {})
    fn = {"name": tc["name"], "arguments": args if isinstance(args, str) else json.dumps(args)}
    return {"id": tc.get("id", f"call_{i}"), "type": "function", "function": fn}


def completion_body(reply: Reply, request: dict[str, Any]) -> dict[str, Any]:
    """The ``chat.completion`` object for ``reply`` (the shape of openai's ``ChatCompletion``)."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": reply.refusal}
    if reply.tool_calls:
        message["tool_calls"] = [_tool_call(i, tc) for i, tc in enumerate(reply.tool_calls)]
    prompt = reply.prompt_tokens
    if prompt is None:
        prompt = estimate_tokens(json.dumps(request.get("messages", []), ensure_ascii=False))
    done = reply.completion_tokens
    if done is None:
        done = estimate_tokens(
            (reply.content or "") + (reply.refusal or "") + json.dumps(message.get("tool_calls", ""))
        )
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(request.get("model") or DEFAULT_MODEL),
        "system_fingerprint": "fp_loopback",
        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason, "logprobs": None}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": done,
            "total_tokens": prompt + done,
            "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }


def stream_events(completion: dict[str, Any], include_usage: bool) -> list[bytes]:
    """``completion`` as SSE ``chat.completion.chunk`` events (content in 16-character pieces).

    Ends with a usage chunk when ``include_usage``, then ``data: [DONE]``.
    """
    base = {k: completion[k] for k in ("id", "created", "model", "system_fingerprint")}
    choice = completion["choices"][0]
    msg = choice["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        c = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {**base, "object": "chat.completion.chunk", "choices": [c]}

    events = [chunk({"role": "assistant", "content": ""})]
    text = msg.get("content") or ""
    events += [chunk({"content": text[i : i + 16]}) for i in range(0, len(text), 16)]
    if msg.get("refusal"):
        events.append(chunk({"refusal": msg["refusal"]}))
    events += [
        chunk({"tool_calls": [{"index": i, **tc}]}) for i, tc in enumerate(msg.get("tool_calls") or [])
    ]
    events.append(chunk({}, choice["finish_reason"]))
    if include_usage:
        events.append(
            {**base, "object": "chat.completion.chunk", "choices": [], "usage": completion["usage"]}
        )
    return [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]


@dataclass
class Answer:
    """What the server sends for one request: a body, an SSE stream, or nothing (drop / reset)."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    events: list[bytes] | None = None
    action: str = "send"  # "send" | "drop" | "reset"

    @classmethod
    def json(cls, status: int, obj: Any, headers: dict[str, str] | None = None) -> Answer:
        return cls(status, json.dumps(obj).encode(), dict(headers or {}))


def fault_answer(fault: Fault, request: dict[str, Any], stream: bool) -> Answer:
    """The answer injecting ``fault`` into ``request`` (SSE events when ``stream``).

    ``TIMEOUT`` is dropped without an answer (the server holds it ``delay_s`` first), ``RESET``
    cut with a TCP reset; ``RAW`` sends the fault's status, body and headers as given; the
    error kinds send OpenAI's error object for their status (``server_error`` when unknown),
    the fault's own ``message`` and ``headers`` taking precedence.
    """
    kind = fault.kind
    if kind is FaultKind.TIMEOUT:
        return Answer(action="drop")
    if kind is FaultKind.RESET:
        return Answer(action="reset")
    if kind is FaultKind.MALFORMED_JSON:
        if stream:
            return Answer(events=[b"data: {not json\n\n", b"data: [DONE]\n\n"])
        return Answer(200, b"{not json")
    if kind is FaultKind.CONTENT_FILTER:
        completion = completion_body(Reply(None, finish_reason="content_filter"), request)
        return Answer(events=stream_events(completion, False)) if stream else Answer.json(200, completion)
    if kind is FaultKind.RAW:
        payload = fault.body if isinstance(fault.body, bytes) else str(fault.body).encode()
        if isinstance(fault.body, dict | list):
            payload = json.dumps(fault.body).encode()
        return Answer(fault.status, payload, dict(fault.headers))
    headers = dict(fault.headers)
    if kind is FaultKind.RATE_LIMIT:
        if fault.retry_after is not None:
            headers["retry-after"] = f"{fault.retry_after:g}"
        if fault.retry_after_ms is not None:
            headers["retry-after-ms"] = str(fault.retry_after_ms)
        msg = fault.message or "Rate limit reached (injected fault). Please try again later."
        return Answer.json(429, error_body(msg, "requests", "rate_limit_exceeded"), headers)
    if kind is FaultKind.INSUFFICIENT_QUOTA:
        msg = fault.message or "You exceeded your current quota, please check your plan and billing details."
        return Answer.json(429, error_body(msg, "insufficient_quota", "insufficient_quota"), headers)
    type_, code, msg = _HTTP_DEFAULTS.get(fault.status, ("server_error", None, f"HTTP {fault.status}."))
    return Answer.json(fault.status, error_body(fault.message or msg, type_, code), headers)

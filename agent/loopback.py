"""An OpenAI-compatible HTTP server on 127.0.0.1, for offline tests, demos and benchmarks.

Standard library only::

    with LoopbackServer(responder=ScriptedResponder(['{"items": []}'])) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="test", max_retries=0)

Serves ``POST /v1/chat/completions`` (plain and SSE streaming), ``GET /v1/models`` and the
Files + Batch API (see :mod:`agent.loopback_batch`). ``faults`` injects failures (HTTP
errors, 429s with retry-after headers, hangs, connection resets, malformed JSON, content
filter); ``limits`` enforces RPM/TPM token buckets with ``x-ratelimit-*`` headers.
Every request is recorded in ``srv.requests`` with credentials redacted.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import os
import socket
import socketserver
import struct
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast

from agent.loopback_batch import BatchConfig, BatchStore, parse_multipart

__all__ = [
    "DEFAULT_MODEL",
    "BatchConfig",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "Limits",
    "LoopbackServer",
    "RecordedRequest",
    "Reply",
    "ScriptedResponder",
    "ServerStats",
    "completion_body",
    "default_responder",
]

log = logging.getLogger(__name__)
DEFAULT_MODEL = "loopback-model"
REDACTED = "<redacted>"
_SECRET_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "proxy-authorization", "cookie"})


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


@dataclass(frozen=True)
class Limits:
    """RPM/TPM token buckets; ``minute_s`` is how long a "minute" lasts (1.0 for fast tests).

    ``clock`` (seconds, monotonic) can be replaced by a fake to test refills without sleeping."""

    rpm: int | None = None
    tpm: int | None = None
    minute_s: float = 60.0
    clock: Callable[[], float] = time.monotonic


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON; multipart -> {field: text or {"filename", "bytes"}}; else None


@dataclass
class ServerStats:
    requests: int = 0
    chat_completions: int = 0
    batch_lines: int = 0
    rate_limited: int = 0  # every 429 sent (injected or from limits)
    faults_injected: int = 0
    prompt_tokens: int = 0  # tokens of successful completions (chat + batch lines)
    completion_tokens: int = 0
    status_counts: dict[int, int] = field(default_factory=dict)

    @property
    def tokens_served(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _estimate(text: str) -> int:
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
        prompt = _estimate(json.dumps(request.get("messages", []), ensure_ascii=False))
    done = reply.completion_tokens
    if done is None:
        done = _estimate(
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


def _stream_events(completion: dict[str, Any], include_usage: bool) -> list[bytes]:
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


def _duration(seconds: float) -> str:
    """OpenAI's reset format: "20ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    return f"{int(seconds // 60)}m{round(seconds % 60, 3):g}s"


class _Bucket:
    def __init__(self, capacity: int, minute_s: float, now: float) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / minute_s  # refill per second
        self.level = float(capacity)
        self.stamp = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, cost: float) -> float:
        return 0.0 if cost <= self.level else (cost - self.level) / self.rate

    def headers(self, name: str) -> dict[str, str]:
        return {
            f"x-ratelimit-limit-{name}": str(int(self.capacity)),
            f"x-ratelimit-remaining-{name}": str(max(0, int(self.level))),
            f"x-ratelimit-reset-{name}": _duration((self.capacity - self.level) / self.rate),
        }


@dataclass
class _Out:
    """What the handler sends: a body, an SSE stream, or nothing (drop / reset)."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    events: list[bytes] | None = None
    action: str = "send"  # "send" | "drop" | "reset"

    @classmethod
    def json(cls, status: int, obj: Any, headers: dict[str, str] | None = None) -> _Out:
        return cls(status, json.dumps(obj).encode(), dict(headers or {}))


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, addr: tuple[str, int], owner: LoopbackServer) -> None:
        self.owner = owner
        super().__init__(addr, _Handler)

    def server_bind(self) -> None:  # HTTPServer's version does a reverse DNS lookup (getfqdn)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("loopback: connection error from %s", client_address, exc_info=True)


class _IPv6Server(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    disable_nagle_algorithm = True  # without it every response waits ~40 ms for a delayed ACK
    protocol_version = "HTTP/1.1"
    server_version = "recagent-loopback/1.0"

    @property
    def owner(self) -> LoopbackServer:
        return cast(_HTTPServer, self.server).owner

    def setup(self) -> None:
        super().setup()
        self.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.owner._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("loopback: " + format, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            data = bytearray()
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return bytes(data)
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _dispatch(self, method: str) -> None:
        raw = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            out = self.owner._handle(method, self.path, headers, raw)
        except Exception as exc:  # a bug in a responder or here: answer 500, keep serving
            log.exception("loopback: error handling %s %s", method, self.path)
            out = _Out.json(500, _error_body(f"loopback server error: {exc!r}", "server_error"))
        if out.action != "send":
            self.close_connection = True
            if out.action == "reset":  # SO_LINGER 0 + close: the peer gets a TCP RST
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                os.close(self.connection.detach())
            return
        self.owner._count_status(out.status)
        self.send_response(out.status)
        hdrs = {"content-type": out.content_type, "x-request-id": f"req_{uuid.uuid4().hex[:24]}"}
        hdrs.update(self.owner._ratelimit_headers())
        hdrs.update(out.headers)
        if out.events is not None:
            hdrs.update({"content-type": "text/event-stream; charset=utf-8", "transfer-encoding": "chunked"})
        else:
            hdrs["content-length"] = str(len(out.body))
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.end_headers()
        if out.events is None:
            self.wfile.write(out.body)
            return
        for event in out.events:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        self.wfile.write(b"0\r\n\r\n")


class LoopbackServer:
    """OpenAI-compatible server on a loopback address with an OS-assigned port.

    ``responder(body)`` answers chat completions (and batch lines): a ``Reply``, a str
    (content, finish "stop"), a dict (sent verbatim as the JSON body) or a ``Fault``.
    ``faults``: a ``FaultPlan``, a sequence (fault i for chat call i) or a callable
    ``(call_index, body) -> Fault | None``. ``latency_s`` delays each chat completion.
    ``reject_json_schema`` answers 400 to ``response_format: {"type": "json_schema"}``
    as servers without structured outputs do.
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        faults: FaultPlan | Sequence[Fault | None] | FaultFn | None = None,
        limits: Limits | None = None,
        latency_s: float = 0.0,
        reject_json_schema: bool = False,
        models: Sequence[str] = (DEFAULT_MODEL,),
        batch: BatchConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        name = "127.0.0.1" if host == "localhost" else host
        try:
            is_loopback = ipaddress.ip_address(name).is_loopback
        except ValueError:
            is_loopback = False
        if not is_loopback:
            raise ValueError(f"LoopbackServer binds loopback addresses only, not {host!r}")
        self.responder: Responder = responder or default_responder
        self.faults: FaultFn | None = FaultPlan(faults) if isinstance(faults, Sequence) else faults
        self.limits = limits
        self.latency_s = latency_s
        self.reject_json_schema = reject_json_schema
        self.models = list(models)
        self.requests: list[RecordedRequest] = []
        self.stats = ServerStats()
        self.batches = BatchStore(self._complete_batch_line, batch)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._calls = 0
        self._clock = limits.clock if limits else time.monotonic
        self._buckets: dict[str, _Bucket] = {}
        for kind, capacity in (("requests", limits and limits.rpm), ("tokens", limits and limits.tpm)):
            if limits and capacity:
                self._buckets[kind] = _Bucket(capacity, limits.minute_s, self._clock())
        server_cls = _IPv6Server if ":" in name else _HTTPServer
        self._httpd = server_cls((name, port), self)
        self.host, self.port = name, int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="loopback-openai",
            daemon=True,
        )
        self._thread.start()
        self._closed = False

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving: wake held requests, cut open connections, join every thread."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._httpd.shutdown()
        with self._lock:
            conns = list(self._conns.items())
        for sock, _ in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()
        self._thread.join(timeout=5)
        for _, thread in conns:
            thread.join(timeout=5)

    # -- called from handler threads -----------------------------------------------------
    def _track(self, sock: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._conns[sock] = threading.current_thread()
            else:
                self._conns.pop(sock, None)

    def _count_status(self, status: int) -> None:
        with self._lock:
            self.stats.status_counts[status] = self.stats.status_counts.get(status, 0) + 1
            self.stats.rate_limited += status == 429

    def _ratelimit_headers(self) -> dict[str, str]:
        with self._lock:
            now = self._clock()
            out: dict[str, str] = {}
            for name, bucket in self._buckets.items():
                bucket.refill(now)
                out.update(bucket.headers(name))
            return out

    def _record(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Any:
        body: Any = None
        ctype = headers.get("content-type", "")
        if "json" in ctype:
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
        elif ctype.startswith("multipart/form-data"):
            with contextlib.suppress(ValueError):
                form = parse_multipart(ctype, raw)
                body = {
                    k: v.decode("utf-8", "replace") if fn is None else {"filename": fn, "bytes": len(v)}
                    for k, (fn, v) in form.items()
                }
        safe = {k: REDACTED if k in _SECRET_HEADERS else v for k, v in headers.items()}
        with self._lock:
            self.requests.append(RecordedRequest(method, path, safe, body))
            self.stats.requests += 1
        return body

    def _handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> _Out:
        body = self._record(method, target, headers, raw)
        path = target.split("?", 1)[0].rstrip("/")
        if method == "POST" and path == "/v1/chat/completions":
            if not isinstance(body, dict):
                return _Out.json(
                    400, _error_body("The request body must be a JSON object.", "invalid_request_error")
                )
            return self._chat(body)
        if method == "GET" and path == "/v1/models":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "loopback"} for m in self.models]
            return _Out.json(200, {"object": "list", "data": data})
        if method == "GET" and path.startswith("/v1/models/") and path[11:] in self.models:
            return _Out.json(200, {"id": path[11:], "object": "model", "created": 0, "owned_by": "loopback"})
        result = self.batches.handle(method, path, headers.get("content-type", ""), raw)
        if result is None:
            msg = f"Unknown request URL: {method} {path}."
            return _Out.json(404, _error_body(msg, "invalid_request_error", "unknown_url"))
        status, payload = result
        if isinstance(payload, bytes):
            return _Out(status, payload, content_type="application/octet-stream")
        return _Out.json(status, payload)

    def _chat(self, body: dict[str, Any]) -> _Out:
        with self._lock:
            index = self._calls
            self._calls += 1
            self.stats.chat_completions += 1
        if self.latency_s and self._stop.wait(self.latency_s):
            return _Out(action="drop")
        fault = self.faults(index, body) if self.faults else None
        if fault is None:
            early = self._check_request(body)
            if early is not None:
                return early
            result = self.responder(body)
        else:
            result = fault
        stream = bool(body.get("stream"))
        if isinstance(result, Fault):
            with self._lock:
                self.stats.faults_injected += 1
            return self._fault_out(result, body, stream)
        if isinstance(result, dict):
            if stream:
                return _Out(events=[f"data: {json.dumps(result)}\n\n".encode(), b"data: [DONE]\n\n"])
            return _Out.json(200, result)
        completion = completion_body(Reply(result) if isinstance(result, str) else result, body)
        self._count_tokens(completion)
        if stream:
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            return _Out(events=_stream_events(completion, include))
        return _Out.json(200, completion)

    def _check_request(self, body: dict[str, Any]) -> _Out | None:
        """Request validation, rate limits and the json_schema rejection; None = go on."""
        if not isinstance(body.get("messages"), list):
            return _Out.json(400, _error_body("'messages' is a required property", "invalid_request_error"))
        cost = _estimate(json.dumps(body["messages"], ensure_ascii=False))
        cost += int(body.get("max_completion_tokens") or body.get("max_tokens") or 0)
        blocked: tuple[float, str, _Bucket, int] | None = None
        with self._lock:
            now = self._clock()
            for name, bucket in self._buckets.items():
                bucket.refill(now)
                need = 1 if name == "requests" else cost
                wait = bucket.wait_for(need)
                if wait > 0 and (blocked is None or wait > blocked[0]):
                    blocked = (wait, name, bucket, need)
            if blocked is None:
                for name, bucket in self._buckets.items():
                    bucket.level -= 1 if name == "requests" else cost
        if blocked is not None:
            wait, name, bucket, need = blocked
            where = (
                f"for {body.get('model') or DEFAULT_MODEL} in organization org-loopback on {name} per min "
                f"({'RPM' if name == 'requests' else 'TPM'}): Limit {int(bucket.capacity)}"
            )
            if need > bucket.capacity:  # never fits: no retry hint, as OpenAI's "Request too large"
                msg = f"Request too large {where}, Requested {need}. The input or output tokens must be reduced."
                return _Out.json(429, _error_body(msg, "tokens", "rate_limit_exceeded"))
            used = int(bucket.capacity - bucket.level)
            msg = f"Rate limit reached {where}, Used {used}, Requested {need}. Please try again in {_duration(wait)}."
            headers = {"retry-after-ms": str(math.ceil(wait * 1000)), "retry-after": str(math.ceil(wait))}
            return _Out.json(429, _error_body(msg, "requests", "rate_limit_exceeded"), headers)
        fmt = body.get("response_format")
        if self.reject_json_schema and isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            msg = "response_format of type 'json_schema' is not supported by this server; use 'json_object'."
            return _Out.json(400, _error_body(msg, "invalid_request_error", None, "response_format"))
        return None

    def _fault_out(self, fault: Fault, body: dict[str, Any], stream: bool) -> _Out:
        kind = fault.kind
        if kind is FaultKind.TIMEOUT:
            self._stop.wait(fault.delay_s)
            return _Out(action="drop")
        if kind is FaultKind.RESET:
            return _Out(action="reset")
        if kind is FaultKind.MALFORMED_JSON:
            if stream:
                return _Out(events=[b"data: {not json\n\n", b"data: [DONE]\n\n"])
            return _Out(200, b"{not json")
        if kind is FaultKind.CONTENT_FILTER:
            completion = completion_body(Reply(None, finish_reason="content_filter"), body)
            return _Out(events=_stream_events(completion, False)) if stream else _Out.json(200, completion)
        if kind is FaultKind.RAW:
            payload = fault.body if isinstance(fault.body, bytes) else str(fault.body).encode()
            if isinstance(fault.body, dict | list):
                payload = json.dumps(fault.body).encode()
            return _Out(fault.status, payload, dict(fault.headers))
        headers = dict(fault.headers)
        if kind is FaultKind.RATE_LIMIT:
            if fault.retry_after is not None:
                headers["retry-after"] = f"{fault.retry_after:g}"
            if fault.retry_after_ms is not None:
                headers["retry-after-ms"] = str(fault.retry_after_ms)
            msg = fault.message or "Rate limit reached (injected fault). Please try again later."
            return _Out.json(429, _error_body(msg, "requests", "rate_limit_exceeded"), headers)
        if kind is FaultKind.INSUFFICIENT_QUOTA:
            msg = (
                fault.message
                or "You exceeded your current quota, please check your plan and billing details."
            )
            return _Out.json(429, _error_body(msg, "insufficient_quota", "insufficient_quota"), headers)
        type_, code, msg = _HTTP_DEFAULTS.get(fault.status, ("server_error", None, f"HTTP {fault.status}."))
        return _Out.json(fault.status, _error_body(fault.message or msg, type_, code), headers)

    def _count_tokens(self, completion: dict[str, Any]) -> None:
        usage = completion.get("usage") or {}
        with self._lock:
            self.stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.stats.completion_tokens += int(usage.get("completion_tokens") or 0)

    def _complete_batch_line(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One batch line through the responder (no fault plan, limits or latency)."""
        with self._lock:
            self.stats.batch_lines += 1
        try:
            result = self.responder(body)
        except Exception as exc:
            return 500, _error_body(f"loopback responder error: {exc!r}", "server_error")
        if isinstance(result, Fault):  # hangs, resets and non-JSON bodies become a 500 line
            hang = result.kind in (FaultKind.TIMEOUT, FaultKind.RESET, FaultKind.MALFORMED_JSON)
            out = None if hang else self._fault_out(result, body, False)
            try:
                parsed = json.loads(out.body) if out else None
            except ValueError:
                parsed = None
            if out is None or not isinstance(parsed, dict):
                return 500, _error_body("The server had an error processing this request.", "server_error")
            return out.status, parsed
        if isinstance(result, dict):
            return 200, result
        completion = completion_body(Reply(result) if isinstance(result, str) else result, body)
        self._count_tokens(completion)
        return 200, completion

"""An OpenAI-compatible HTTP server on 127.0.0.1, for offline tests, demos and benchmarks.

Standard library only::

    with LoopbackServer(responder=ScriptedResponder(['{"items": []}'])) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="test", max_retries=0)

Serves ``POST /v1/chat/completions`` (plain and SSE streaming), ``GET /v1/models`` and the
Files + Batch API (see :mod:`agent.testing.loopback_batch`). ``faults`` injects failures (HTTP
errors, 429s with retry-after headers, hangs, connection resets, malformed JSON, content
filter); ``limits`` enforces RPM/TPM token buckets with ``x-ratelimit-*`` headers.
Every request is recorded in ``srv.requests`` with credentials redacted. What a responder
may answer (``Reply``, ``Fault``, ``ScriptedResponder``...) and the JSON built from it live
in :mod:`agent.testing.loopback_replies`; the public names are re-exported here.
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
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Protocol, cast

from agent.testing.loopback_batch import BatchConfig, BatchStore, parse_multipart
from agent.testing.loopback_replies import (
    DEFAULT_MODEL,
    Answer,
    Fault,
    FaultFn,
    FaultKind,
    FaultPlan,
    Reply,
    Responder,
    ScriptedResponder,
    completion_body,
    default_responder,
    error_body,
    estimate_tokens,
    fault_answer,
    stream_events,
)

__all__ = [
    "DEFAULT_MODEL",
    "BatchConfig",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "Limits",
    "LoopbackServer",
    "PromptCache",
    "RecordedRequest",
    "Reply",
    "ScriptedResponder",
    "ServerStats",
    "completion_body",
    "default_responder",
]

log = logging.getLogger(__name__)
REDACTED = "<redacted>"
_SECRET_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "proxy-authorization", "cookie"})


@dataclass(frozen=True)
class Limits:
    """RPM/TPM token buckets; ``minute_s`` is how long a "minute" lasts (1.0 for fast tests).

    ``clock`` (seconds, monotonic) can be replaced by a fake to test refills without sleeping."""

    rpm: int | None = None
    tpm: int | None = None
    minute_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    charge: Literal["reserved", "actual"] = "reserved"
    """What a request costs against TPM: ``reserved`` = prompt + ``max_completion_tokens`` at
    admission (as OpenAI documents); ``actual`` = the same at admission, then the unused part of
    the completion reservation given back when the reply is produced."""


class PromptCache(Protocol):
    """Simulated provider prompt caching (``agent.llm.prompt_cache.PrefixCache`` is one; the
    test kit does not import it). ``serve`` returns the (prompt tokens, cached tokens) of a
    request, counted in ``model``'s encoding, and remembers its prefixes from then on."""

    def serve(self, body: dict[str, Any], model: str) -> tuple[int, int]: ...


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
    cached_tokens: int = 0  # of which reported as cached (with ``prompt_cache``)
    completion_tokens: int = 0
    status_counts: dict[int, int] = field(default_factory=dict)

    @property
    def tokens_served(self) -> int:
        return self.prompt_tokens + self.completion_tokens


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
            out = Answer.json(500, error_body(f"loopback server error: {exc!r}", "server_error"))
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
            if self.owner.drip_s > 0:  # a slowloris reply: never idle long enough for a read timeout
                for i in range(len(out.body)):
                    self.wfile.write(out.body[i : i + 1])
                    self.wfile.flush()
                    if self.owner._stop.wait(self.owner.drip_s):
                        return
                return
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
    as servers without structured outputs do. ``drip_s`` > 0 sends every response body (chat,
    files, batches) one byte every ``drip_s`` seconds (headers at once), as a hostile or
    broken server might: per-read timeouts never fire, only a whole-request deadline ends it.
    ``prompt_cache`` simulates the provider's prompt caching for chat completions: each
    reply's ``prompt_tokens`` and ``prompt_tokens_details.cached_tokens`` are what it says
    (exact counts, cached by the longest prefix served before; see ``PromptCache``), unless
    the responder's ``Reply`` gives its own counts. A request's prefixes count as served once
    its reply is produced, before the reply is sent.
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        faults: FaultPlan | Sequence[Fault | None] | FaultFn | None = None,
        limits: Limits | None = None,
        latency_s: float = 0.0,
        drip_s: float = 0.0,
        reject_json_schema: bool = False,
        models: Sequence[str] = (DEFAULT_MODEL,),
        batch: BatchConfig | None = None,
        prompt_cache: PromptCache | None = None,
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
        self.drip_s = drip_s
        self.reject_json_schema = reject_json_schema
        self.models = list(models)
        self.prompt_cache = prompt_cache
        self.requests: list[RecordedRequest] = []
        self.stats = ServerStats()
        self.batches = BatchStore(self._complete_batch_line, batch)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._calls = 0
        self._clock = limits.clock if limits else time.monotonic
        self._charge = limits.charge if limits else "reserved"
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

    def _refund_unused(self, body: dict[str, Any], completion: dict[str, Any]) -> None:
        """``charge="actual"``: give back the completion tokens reserved but not produced."""
        tokens = self._buckets.get("tokens")
        if tokens is None or self._charge != "actual":
            return
        reserved = int(body.get("max_completion_tokens") or body.get("max_tokens") or 0)
        used = int((completion.get("usage") or {}).get("completion_tokens") or 0)
        with self._lock:
            tokens.refill(self._clock())
            tokens.level = min(tokens.capacity, tokens.level + max(reserved - used, 0))

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

    def _handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Answer:
        body = self._record(method, target, headers, raw)
        path = target.split("?", 1)[0].rstrip("/")
        if method == "POST" and path == "/v1/chat/completions":
            if not isinstance(body, dict):
                return Answer.json(
                    400, error_body("The request body must be a JSON object.", "invalid_request_error")
                )
            return self._chat(body)
        if method == "GET" and path == "/v1/models":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "loopback"} for m in self.models]
            return Answer.json(200, {"object": "list", "data": data})
        if method == "GET" and path.startswith("/v1/models/") and path[11:] in self.models:
            return Answer.json(
                200, {"id": path[11:], "object": "model", "created": 0, "owned_by": "loopback"}
            )
        result = self.batches.handle(method, path, headers.get("content-type", ""), raw)
        if result is None:
            msg = f"Unknown request URL: {method} {path}."
            return Answer.json(404, error_body(msg, "invalid_request_error", "unknown_url"))
        status, payload = result
        if isinstance(payload, bytes):
            return Answer(status, payload, content_type="application/octet-stream")
        return Answer.json(status, payload)

    def _chat(self, body: dict[str, Any]) -> Answer:
        with self._lock:
            index = self._calls
            self._calls += 1
            self.stats.chat_completions += 1
        if self.latency_s and self._stop.wait(self.latency_s):
            return Answer(action="drop")
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
                return Answer(events=[f"data: {json.dumps(result)}\n\n".encode(), b"data: [DONE]\n\n"])
            return Answer.json(200, result)
        reply = Reply(result) if isinstance(result, str) else result
        completion = completion_body(self._cached(reply, body), body)
        self._count_tokens(completion)
        self._refund_unused(body, completion)
        if stream:
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            return Answer(events=stream_events(completion, include))
        return Answer.json(200, completion)

    def _check_request(self, body: dict[str, Any]) -> Answer | None:
        """Request validation, rate limits and the json_schema rejection; None = go on."""
        if not isinstance(body.get("messages"), list):
            return Answer.json(400, error_body("'messages' is a required property", "invalid_request_error"))
        cost = estimate_tokens(json.dumps(body["messages"], ensure_ascii=False))
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
                return Answer.json(429, error_body(msg, "tokens", "rate_limit_exceeded"))
            used = int(bucket.capacity - bucket.level)
            msg = f"Rate limit reached {where}, Used {used}, Requested {need}. Please try again in {_duration(wait)}."
            headers = {"retry-after-ms": str(math.ceil(wait * 1000)), "retry-after": str(math.ceil(wait))}
            return Answer.json(429, error_body(msg, "requests", "rate_limit_exceeded"), headers)
        fmt = body.get("response_format")
        if self.reject_json_schema and isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            msg = "response_format of type 'json_schema' is not supported by this server; use 'json_object'."
            return Answer.json(400, error_body(msg, "invalid_request_error", None, "response_format"))
        return None

    def _fault_out(self, fault: Fault, body: dict[str, Any], stream: bool) -> Answer:
        if fault.kind is FaultKind.TIMEOUT:
            self._stop.wait(fault.delay_s)  # close() wakes held requests
        return fault_answer(fault, body, stream)

    def _cached(self, reply: Reply, body: dict[str, Any]) -> Reply:
        """``reply`` with the prompt counts of the simulated prompt cache, if there is one."""
        if self.prompt_cache is None or reply.prompt_tokens is not None:
            return reply
        prompt, cached = self.prompt_cache.serve(body, str(body.get("model") or DEFAULT_MODEL))
        return replace(reply, prompt_tokens=prompt, cached_tokens=cached)

    def _count_tokens(self, completion: dict[str, Any]) -> None:
        usage = completion.get("usage") or {}
        with self._lock:
            self.stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.stats.cached_tokens += int(
                (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            )
            self.stats.completion_tokens += int(usage.get("completion_tokens") or 0)

    def _complete_batch_line(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One batch line through the responder (no fault plan, limits or latency)."""
        with self._lock:
            self.stats.batch_lines += 1
        try:
            result = self.responder(body)
        except Exception as exc:
            return 500, error_body(f"loopback responder error: {exc!r}", "server_error")
        if isinstance(result, Fault):  # hangs, resets and non-JSON bodies become a 500 line
            hang = result.kind in (FaultKind.TIMEOUT, FaultKind.RESET, FaultKind.MALFORMED_JSON)
            out = None if hang else self._fault_out(result, body, False)
            try:
                parsed = json.loads(out.body) if out else None
            except ValueError:
                parsed = None
            if out is None or not isinstance(parsed, dict):
                return 500, error_body("The server had an error processing this request.", "server_error")
            return out.status, parsed
        if isinstance(result, dict):
            return 200, result
        completion = completion_body(Reply(result) if isinstance(result, str) else result, body)
        self._count_tokens(completion)
        self._refund_unused(body, completion)
        return 200, completion

"""A deadline for a whole HTTP request (connect + send + headers + full body), sync clients.

httpx2's timeouts are per network operation: a server that drips its reply one byte per
second never trips a 3 s read timeout, and one request can hang for as long as the server
likes. ``DeadlineTransport`` promises that every request it sends ends, answered or with an
``httpx2`` timeout error (which the ``openai`` SDK reports as ``APITimeoutError``), within
``total_s`` seconds of being sent, whatever the server does: each socket operation is given
only the time left until the request's deadline (``socket.settimeout``), so a blocked read
wakes up at the deadline instead of at the server's pleasure. The deadline also covers a
streamed body read after the request returned (a chat stream, a Batch API file download).

The async client needs none of this: ``agent.llm.async_client`` cancels the whole attempt
with ``asyncio.timeout``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any

import httpcore2
import httpx2

_DEADLINE: ContextVar[float | None] = ContextVar("recagent_request_deadline", default=None)
"""The ``time.monotonic()`` by which the request being sent on this thread must be over."""


def _left(timeout: float | None, expired: type[Exception]) -> float | None:
    """``timeout`` cut to the time left before the current deadline; ``expired`` once it passed."""
    end = _DEADLINE.get()
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise expired("the request's total deadline passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore2.NetworkStream):
    """A connection whose every read and write ends by the current request's deadline."""

    def __init__(self, inner: httpcore2.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore2.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout, httpcore2.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> Any:
        tls = self._inner.start_tls(ssl_context, server_hostname, _left(timeout, httpcore2.ConnectTimeout))
        return _Stream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore2.NetworkBackend):
    """Opens connections through ``inner`` within the deadline, as ``_Stream``s."""

    def __init__(self, inner: httpcore2.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        stream = self._inner.connect_tcp(
            host, port, _left(timeout, httpcore2.ConnectTimeout), local_address, socket_options
        )
        return _Stream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.NetworkStream:
        stream = self._inner.connect_unix_socket(
            path, _left(timeout, httpcore2.ConnectTimeout), socket_options
        )
        return _Stream(stream)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _BoundedBody(httpx2.SyncByteStream):
    """A response body whose chunks are read under the request's deadline, when ever read."""

    def __init__(self, inner: httpx2.SyncByteStream, end: float) -> None:
        self._inner, self._end = inner, end

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self._inner)
        while True:
            token = _DEADLINE.set(self._end)
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            finally:
                _DEADLINE.reset(token)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class DeadlineTransport(httpx2.HTTPTransport):
    """``httpx2.HTTPTransport`` whose every request is over within ``total_s`` seconds."""

    def __init__(self, total_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.total_s = float(total_s)
        # httpx2 has no public hook for the network backend, but its connection pool keeps the
        # one it uses in `_network_backend` (httpcore2's documented NetworkBackend API); the drip
        # tests in tests/test_security.py fail loudly if a new httpx2 moves it.
        pool = self._pool
        pool._network_backend = _Backend(pool._network_backend)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        end = time.monotonic() + self.total_s
        token = _DEADLINE.set(end)
        try:
            response = super().handle_request(request)
        finally:
            _DEADLINE.reset(token)
        assert isinstance(response.stream, httpx2.SyncByteStream)
        response.stream = _BoundedBody(response.stream, end)
        return response


class _OwnedClient(httpx2.Client):
    """Closes its connections when garbage-collected, as the SDK's own default client does (a
    client nobody closed must not leave sockets open)."""

    def __del__(self) -> None:
        if not self.is_closed:
            with contextlib.suppress(Exception):  # interpreter shutdown: nothing to report to
                self.close()


# The openai SDK's own connection limits (openai._constants.DEFAULT_CONNECTION_LIMITS).
_LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100)


def deadline_client(total_s: float) -> httpx2.Client:
    """An ``httpx2.Client`` (for ``openai.OpenAI(http_client=...)``) bounded by ``total_s`` per
    request, with the SDK's defaults otherwise (connection limits, redirects followed)."""
    return _OwnedClient(
        transport=DeadlineTransport(total_s, limits=_LIMITS), timeout=total_s, follow_redirects=True
    )

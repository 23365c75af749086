"""The MCP server over streamable HTTP at ``/mcp``, authenticated with the service's API keys.

A host connects with ``Authorization: Bearer <key>`` and ``X-Recagent-User: <user id>``; both
are set by the host application when it opens the connection, not by its model. Every MCP
request is checked here before the SDK sees it (401 without a valid key, 400 without a user,
both in the service's error shape), and every tool call resolves its tenant from the key and
its user from the header again, so no tool argument can name either. ``record_feedback``
needs the key's ``write`` scope.

The transport runs stateless (``stateless_http``): each request stands alone, which is what
lets several service instances sit behind a load balancer. DNS-rebinding protection is off
because every request must carry an API key (the protection exists for unauthenticated local
servers).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import Receive, Scope, Send

from agent.chat.tools import Toolbox
from agent.mcp.server import UserSession, build_server
from agent.service.errors import error_response
from agent.service.keys import authenticate
from agent.service.observability import REQUEST_ID
from agent.service.ratelimit import RateLimiter
from agent.service.runtime import TenantRuntime
from agent.service.storage import ServiceStore


class ServiceParts(Protocol):
    """What the endpoint uses of ``agent.service.app.Service`` (a protocol: no import cycle)."""

    store: ServiceStore
    limiter: RateLimiter

    def runtime(self, tenant: str) -> TenantRuntime: ...


USER_HEADER = "x-recagent-user"
MAX_USER_ID = 256


def _key(headers: Any) -> str:
    header = headers.get("authorization", "") if headers else ""
    return header[7:].strip() if header.lower().startswith("bearer ") else ""


class McpEndpoint:
    """The ``/mcp`` route: the auth guard in front of the SDK's streamable HTTP transport."""

    def __init__(self, service: ServiceParts) -> None:
        self.service = service
        self.server: MCPServer = build_server(self._session)
        self.server.streamable_http_app(
            stateless_http=True,
            json_response=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )  # creates the session manager that ``lifespan`` runs
        self._transport = StreamableHTTPASGIApp(self.server.session_manager)

    def lifespan(self) -> AbstractAsyncContextManager[None]:
        return self.server.session_manager.run()

    def _session(self, ctx: Context) -> UserSession:
        request = ctx.request_context.request  # the HTTP request this MCP message came in
        headers = {k.lower(): v for k, v in request.headers.items()} if request is not None else {}
        principal = authenticate(self.service.store, _key(headers))
        user = headers.get(USER_HEADER, "")
        if principal is None or not principal.allows("read") or not user:
            raise ToolError("unauthenticated")  # unreachable past the guard; kept as a second lock
        runtime = self.service.runtime(principal.tenant)
        snapshot = runtime.snapshot()
        if snapshot.agent is None:
            raise ToolError("not_available: this tenant's catalog is empty")
        toolbox = Toolbox(snapshot.agent, user, items=snapshot.items)
        return UserSession(toolbox=toolbox, store=runtime.profiles, can_write=principal.allows("write"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        principal = authenticate(self.service.store, _key(headers))
        user = headers.get(USER_HEADER, "")
        if principal is None:
            response = error_response(401, "unauthenticated", "send an API key: Authorization: Bearer <key>")
        elif not principal.allows("read"):
            response = error_response(403, "forbidden", "this key lacks the 'read' scope")
        elif not user or len(user) > MAX_USER_ID:
            response = error_response(
                400, "user_required", f"set the {USER_HEADER} header to the signed-in user's id"
            )
        elif self.service.limiter.acquire(principal.key_id) > 0:
            response = error_response(
                429, "rate_limited", "too many requests for this key", headers={"Retry-After": "1"}
            )
        else:
            await self._transport(scope, receive, send)
            return
        response.headers["X-Request-ID"] = REQUEST_ID.get()
        await response(scope, receive, send)

"""The service's one error shape: ``{"error": {"type", "message", "request_id", "details"?}}``.

Shared by the REST routes (``agent.service.app``) and the MCP endpoint's guard
(``agent.service.mcp_http``), so every refusal looks the same to a client.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from agent.service.observability import REQUEST_ID


def error_response(
    status: int, type_: str, message: str, *, headers: dict[str, str] | None = None, details: Any = None
) -> JSONResponse:
    body: dict[str, Any] = {"type": type_, "message": message, "request_id": REQUEST_ID.get()}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)

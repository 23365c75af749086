"""The web console at ``/``: chat, recommendation cards with feedback, the profile's versions and
a dashboard, for operators and demos. Plain HTML, CSS and JavaScript modules from the package
folder ``agent/service/web`` (shipped as package data): no build step, nothing from another
origin.

Promises:

* ``GET /`` is the page and ``/web/...`` its files, each with its own content type; none of
  them is in the OpenAPI document, and none needs a key (they hold no data).
* Every answer under ``/`` and ``/web/`` carries a Content-Security-Policy that allows only
  the page's own origin (no inline script or style, no other host, no framing by another
  site), ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``.
* The page asks for the API key, keeps it in ``sessionStorage`` only and sends it only in the
  ``Authorization`` header of its API calls: never in a URL, so never in an access log.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

WEB_DIR = Path(__file__).with_name("web")
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'; object-src 'none'"
)
_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    # the files change with the package: a browser revalidates (ETag) instead of guessing
    (b"cache-control", b"no-cache"),
]


class PageHeaders:
    """ASGI middleware: the security headers above on the page's own answers (not on the API,
    whose ``/docs`` page loads its assets from elsewhere)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/" or path.startswith("/web/")):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in _HEADERS}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message["headers"] = kept + _HEADERS
            await send(message)

        await self.app(scope, receive, with_headers)


def mount_web(app: FastAPI) -> None:
    """Serve the console on ``app``: ``/`` and ``/web/*``."""

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    app.add_middleware(PageHeaders)

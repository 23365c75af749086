"""The REST API (FastAPI): ``create_app(config)`` -> an ASGI app; ``recagent serve`` runs it on uvicorn.

Promises:

* **One error shape.** Every non-2xx answer is ``{"error": {"type", "message", "request_id",
  "details"?}}`` (``ErrorResponse``): validation problems are 422 ``invalid_request``, a body
  over the limit 413 ``body_too_large``, an unknown or revoked key 401, a missing scope 403,
  a rate limit 429 with ``Retry-After``, a model failure 502, a store failure 503. An
  unexpected exception is a 500 ``internal`` in the same shape (logged with its request id),
  never a traceback.
* **Tenants.** The tenant of every read and write is the API key's; nothing in a path, query
  or body can name another one.
* **Idempotency.** ``POST /v1/events``, ``PUT /v1/items`` and ``POST /v1/users/{id}/feedback``
  take an ``Idempotency-Key`` header: a retry with the same key and body is answered from the
  record and counted once (see ``agent.service.storage``).
* **Acknowledged means durable.** A 2xx write was committed before the answer was sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent import errors
from agent.chat.constraints import Constraints, recommend_with_constraints
from agent.chat.content import ContentGenerator
from agent.chat.conversation import Conversation, ConversationState
from agent.data.privacy import PSEUDONYM_KEY_ENV, Pseudonymizer
from agent.llm.client import ChatClient
from agent.profiles.feedback import check_references, make_event
from agent.profiles.refine import diff_states
from agent.profiles.versions import ProfileVersion
from agent.recommender import AgentConfig, RecommendationResult
from agent.service import api_models as m
from agent.service.config import ServiceConfig
from agent.service.errors import error_response
from agent.service.keys import Principal, authenticate
from agent.service.mcp_http import McpEndpoint
from agent.service.observability import REQUEST_ID, Metrics, access_log, new_request_id
from agent.service.ratelimit import RateLimiter
from agent.service.runtime import TenantRuntime
from agent.service.storage import IdempotencyConflict, ServiceStore
from agent.service.web import mount_web

log = logging.getLogger(__name__)

API_VERSION = "v1"


class ApiError(Exception):
    """An error answered as ``ErrorResponse`` with ``status``."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.headers, self.details = (
            status,
            type_,
            message,
            headers,
            details,
        )


_RECOMMENDER_ERRORS: tuple[tuple[type[errors.RecommenderError], int, str], ...] = (
    (errors.UnknownUserError, 404, "unknown_user"),
    (errors.UnknownItemError, 404, "unknown_item"),
    (errors.UnknownRecommendationError, 404, "unknown_recommendation"),
    (errors.ProfileNotFoundError, 404, "profile_not_found"),
    (errors.InvalidFeedbackError, 422, "invalid_feedback"),
    (errors.VersionConflictError, 409, "conflict"),
    (errors.ModelError, 502, "model_error"),
    (errors.StoreError, 503, "store_unavailable"),
    (errors.ConfigError, 400, "not_available"),
    (errors.DataError, 422, "invalid_data"),
)


def _map_recommender_error(exc: errors.RecommenderError) -> JSONResponse:
    for kind, status, name in _RECOMMENDER_ERRORS:
        if isinstance(exc, kind):
            message = str(exc).splitlines()[0] if str(exc) else name
            return error_response(status, name, message)
    return error_response(500, "internal", "internal error")


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before it is read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._reject(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, "body_too_large", f"request body is over {self.limit} bytes")
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


class Service:
    """What the routes share: the store, one runtime per tenant, metrics, limits, the model client."""

    def __init__(self, config: ServiceConfig, store: ServiceStore, client: ChatClient | None) -> None:
        self.config = config
        self.store = store
        self.client = client
        self.metrics = Metrics()
        self.limiter = RateLimiter(config.rate_limit, config.burst)
        # Logs name users by a keyed pseudonym: the operator's key when set (stable across
        # restarts and instances), else a random per-process one (never the public dev key).
        self.pseudonyms = Pseudonymizer(
            os.environ.get(PSEUDONYM_KEY_ENV) or secrets.token_hex(16), remember=False
        )
        self._runtimes: dict[str, TenantRuntime] = {}
        self._lock = threading.Lock()

    def runtime(self, tenant: str) -> TenantRuntime:
        with self._lock:
            if tenant not in self._runtimes:
                self._runtimes[tenant] = TenantRuntime(
                    self.store,
                    tenant,
                    client=self.client,
                    config=AgentConfig(),
                    on_rebuild=self.metrics.rebuild.observe,
                )
            return self._runtimes[tenant]

    def principal(self, request: Request, scope: str) -> Principal:
        header = request.headers.get("authorization", "")
        key = (
            header[7:].strip()
            if header.lower().startswith("bearer ")
            else request.headers.get("x-api-key", "")
        )
        if not key:
            raise ApiError(401, "unauthenticated", "send an API key: Authorization: Bearer <key>")
        principal = authenticate(self.store, key)
        if principal is None:
            raise ApiError(401, "unauthenticated", "unknown or revoked API key")
        request.state.principal = principal
        wait = self.limiter.acquire(principal.key_id)
        if wait > 0:
            raise ApiError(
                429,
                "rate_limited",
                "too many requests for this key",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        if not principal.allows(scope):
            raise ApiError(403, "forbidden", f"this key lacks the {scope!r} scope")
        return principal


def _require(scope: str) -> Callable[[Request], Principal]:
    def dependency(request: Request) -> Principal:
        service: Service = request.app.state.service
        return service.principal(request, scope)

    dependency.__name__ = f"require_{scope}"
    return dependency


Reader = Annotated[Principal, Depends(_require("read"))]
Writer = Annotated[Principal, Depends(_require("write"))]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=128, description="a retry with the same key is counted once"),
]
UserId = Annotated[str, m.Id]

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": m.ErrorResponse, "description": text}
    for code, text in (
        (401, "missing, unknown or revoked API key"),
        (403, "the key lacks the scope"),
        (413, "body too large"),
        (422, "invalid request"),
        (429, "rate limited (see Retry-After)"),
        (502, "the model failed"),
        (503, "the store is unavailable"),
    )
}


def _hash_body(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def create_app(config: ServiceConfig, store: ServiceStore, client: ChatClient | None) -> FastAPI:
    """The API over ``store`` (migrated) answering with ``client`` (None: retriever only)."""
    service = Service(config, store, client)
    mcp = McpEndpoint(service)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with mcp.lifespan():  # the MCP transport's task group lives as long as the app
            yield

    app = FastAPI(
        lifespan=lifespan,
        title="recagent",
        version=API_VERSION,
        summary="Behavior profiles and grounded, explained recommendations over a REST API.",
        description=(
            "Authenticate with `Authorization: Bearer <key>` (keys: `recagent keys create`). "
            "Every error has the `ErrorResponse` shape."
        ),
        responses=ERRORS,
    )
    app.state.service = service
    # MCP over streamable HTTP (agent.service.mcp_http): its own auth guard, same keys/tenants.
    app.router.routes.append(Route("/mcp", endpoint=mcp, methods=["GET", "POST", "DELETE"]))
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.cors_origins,
            allow_methods=["GET", "POST", "PUT"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID", "X-API-Key"],
        )

    # Starlette runs the last-added middleware first: the body limit sits inside the request
    # context, so a 413 carries a request id and is logged and counted like any answer.
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)

    @app.middleware("http")
    async def request_context(request: Request, call_next: Callable[[Request], Any]) -> Response:
        request_id = new_request_id(request.headers.get("x-request-id"))
        token = REQUEST_ID.set(request_id)
        start = time.perf_counter()
        status = 500
        try:
            try:
                response = await call_next(request)
            except Exception:  # anything a route didn't turn into an ApiError
                log.exception("unhandled error")
                response = error_response(500, "internal", "internal error")
            status = response.status_code
            response.headers["X-Request-ID"] = request_id
            return response
        finally:
            took = time.perf_counter() - start
            route = getattr(request.scope.get("route"), "path", "unmatched")
            service.metrics.requests.labels(request.method, route, str(status)).inc()
            service.metrics.recent.add()
            service.metrics.latency.labels(route).observe(took)
            principal = getattr(request.state, "principal", None)
            user = request.path_params.get("user_id")
            access_log.info(
                "request",
                extra={
                    "fields": {
                        "method": request.method,
                        "route": route,
                        "status": status,
                        "duration_ms": round(took * 1000, 2),
                        "tenant": principal.tenant if principal else None,
                        "key_id": principal.key_id if principal else None,
                        "user": service.pseudonyms.pseudonym(user) if user else None,
                    }
                },
            )
            REQUEST_ID.reset(token)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.type, exc.message, headers=exc.headers, details=exc.details)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()[:20]
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        return error_response(
            422, "invalid_request", f"{'.'.join(first['loc']) or 'request'}: {first['msg']}", details=details
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        names = {404: "not_found", 405: "method_not_allowed"}
        return error_response(exc.status_code, names.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(errors.RecommenderError)
    async def recommender_error(_: Request, exc: errors.RecommenderError) -> JSONResponse:
        return _map_recommender_error(exc)

    @app.exception_handler(IdempotencyConflict)
    async def idempotency_conflict(_: Request, exc: IdempotencyConflict) -> JSONResponse:
        return error_response(409, "idempotency_conflict", str(exc))

    # -- health and metrics ---------------------------------------------------------------------
    @app.get("/healthz", tags=["ops"], summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], summary="The store answers", responses={503: ERRORS[503]})
    def readyz() -> dict[str, str]:
        try:
            store.db.read("SELECT 1 AS ok")
        except errors.StoreError as exc:
            raise ApiError(503, "store_unavailable", str(exc)) from None
        return {"status": "ready", "store": store.db.dialect}

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics (no tenant data)", response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # -- data in --------------------------------------------------------------------------------
    @app.post("/v1/events", tags=["data"], summary="Ingest a batch of behavior events")
    def post_events(body: m.EventsIn, who: Writer, idempotency_key: IdempotencyKey = None) -> m.EventsOut:
        runtime = service.runtime(who.tenant)
        known = set(runtime.snapshot().items["item_id"]) if len(runtime.snapshot().items) else set()
        missing = sorted({e.item_id for e in body.events if e.item_id is not None and e.item_id not in known})
        if missing:
            raise ApiError(
                422,
                "unknown_item",
                f"{len(missing)} event(s) name items not in the catalog (PUT /v1/items first): {', '.join(missing[:5])}",
                details=[{"item_id": i} for i in missing[:100]],
            )
        now = datetime.now(UTC)
        rows = [
            {**e.model_dump(), "timestamp": (e.timestamp or now).astimezone(UTC).isoformat()}
            for e in body.events
        ]

        def write(cur: Any) -> tuple[int, Any]:
            count = store.add_events(cur, who.tenant, rows)
            return 200, {"accepted": count}

        payload = body.model_dump(mode="json")
        _, response, replayed = store.idempotent(who.tenant, idempotency_key, _hash_body(payload), write)
        if not replayed:
            service.metrics.events.inc(response["accepted"])
        return m.EventsOut(accepted=response["accepted"], replayed=replayed)

    @app.put("/v1/items", tags=["data"], summary="Insert or replace catalog items")
    def put_items(body: m.ItemsIn, who: Writer, idempotency_key: IdempotencyKey = None) -> m.ItemsOut:
        rows = [{**i.model_dump(exclude={"attributes"}), **i.attributes} for i in body.items]
        reserved = sorted({k for i in body.items for k in i.attributes} & {"user_id", "rev", "tenant"})
        if reserved:
            raise ApiError(422, "invalid_request", f"attribute name(s) reserved: {', '.join(reserved)}")

        def write(cur: Any) -> tuple[int, Any]:
            rev = store.upsert_items(cur, who.tenant, rows)
            return 200, {"upserted": len(rows), "revision": rev}

        _, response, replayed = store.idempotent(
            who.tenant, idempotency_key, _hash_body(body.model_dump(mode="json")), write
        )
        return m.ItemsOut(upserted=response["upserted"], revision=response["revision"], replayed=replayed)

    @app.get("/v1/items/{item_id}", tags=["data"], summary="One catalog item")
    def get_item(item_id: Annotated[str, m.Id], who: Reader) -> m.ItemOut:
        snapshot = service.runtime(who.tenant).snapshot()
        agent = snapshot.agent
        info = agent.catalog.get(item_id) if agent is not None else None
        if info is None:
            raise ApiError(404, "unknown_item", "no such item in this tenant's catalog")
        row = snapshot.items[snapshot.items["item_id"] == item_id]
        extras = {}
        if len(row):
            record = row.iloc[0].to_dict()
            extras = {
                k: v
                for k, v in record.items()
                if k not in ("item_id", "title", "category", "price", "description")
                and v is not None
                and v == v
            }
        return m.ItemOut(
            item_id=item_id,
            title=info.title,
            category=info.category,
            price=info.price,
            description=info.description,
            attributes=json.loads(json.dumps(extras, default=str)),
        )

    # -- recommendations -----------------------------------------------------------------------
    @app.get(
        "/v1/users/{user_id}/recommendations",
        tags=["recommendations"],
        summary="Top-k recommendations (cold start for users without history)",
    )
    def get_recommendations(
        user_id: UserId,
        who: Reader,
        k: Annotated[int, Query(ge=1, le=m.MAX_K)] = 10,
        query: Annotated[str | None, Query(max_length=500)] = None,
        categories: Annotated[list[str] | None, Query(max_length=20)] = None,
        exclude_categories: Annotated[list[str] | None, Query(max_length=20)] = None,
        price_min: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
        price_max: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
        required_terms: Annotated[list[str] | None, Query(max_length=20)] = None,
        excluded_terms: Annotated[list[str] | None, Query(max_length=20)] = None,
    ) -> RecommendationResult:
        if price_min is not None and price_max is not None and price_min > price_max:
            raise ApiError(422, "invalid_request", "price_min is above price_max")
        constraints = Constraints(
            request=query,
            categories=categories or [],
            excluded_categories=exclude_categories or [],
            price_min=price_min,
            price_max=price_max,
            required_terms=required_terms or [],
            excluded_terms=excluded_terms or [],
        )
        constrained = constraints.model_dump(exclude={"request"}) != Constraints().model_dump(
            exclude={"request"}
        )
        runtime = service.runtime(who.tenant)

        def run(agent: Any) -> RecommendationResult:
            if not constrained:
                return agent.recommend(user_id, k=k, query=query)
            result, dropped = recommend_with_constraints(agent, user_id, constraints, k)
            if result is None:
                raise ApiError(404, "no_match", f"no item satisfies every constraint ({_drops(dropped)})")
            return result

        result = runtime.recommend(user_id, k, query, run)
        service.metrics.observe_result(result)
        return result

    @app.get(
        "/v1/users/{user_id}/recommendations/recent",
        tags=["recommendations"],
        summary="The latest recommendation lists served to the user",
    )
    def recent_recommendations(
        user_id: UserId, who: Reader, limit: Annotated[int, Query(ge=1, le=50)] = 5
    ) -> list[dict[str, Any]]:
        profiles = service.runtime(who.tenant).profiles
        return [r.model_dump(mode="json") for r in profiles.recent_recommendations(user_id, limit)]

    # -- profiles and feedback --------------------------------------------------------------------
    @app.get("/v1/users/{user_id}/profile", tags=["profiles"], summary="The latest profile version")
    def get_profile(user_id: UserId, who: Reader) -> m.ProfileVersionOut:
        latest = service.runtime(who.tenant).profiles.latest_profile(user_id)
        if latest is None:
            raise ApiError(404, "profile_not_found", "no stored profile for this user (POST to build one)")
        return _version_out(latest)

    @app.post("/v1/users/{user_id}/profile", tags=["profiles"], summary="Build and store the user's profile")
    def build_profile(user_id: UserId, who: Writer) -> m.ProfileVersionOut:
        runtime = service.runtime(who.tenant)
        agent = runtime.snapshot().agent
        if agent is None or user_id not in agent.histories:
            raise ApiError(404, "unknown_user", "a profile needs the user's events (POST /v1/events first)")
        if agent.client is None:
            raise ApiError(400, "not_available", "building a profile needs a model; this server has none")
        result = agent.profile(user_id)
        service.metrics.observe_usage(result.usage)
        latest = runtime.profiles.latest_profile(user_id)
        if latest is None:  # pragma: no cover - profile() saved it
            raise ApiError(503, "store_unavailable", "the profile was not stored")
        return _version_out(latest)

    @app.get("/v1/users/{user_id}/profile/history", tags=["profiles"], summary="Every stored profile version")
    def profile_history(user_id: UserId, who: Reader) -> m.ProfileHistoryOut:
        versions = service.runtime(who.tenant).profiles.profile_history(user_id)
        return m.ProfileHistoryOut(user_id=user_id, versions=[_version_out(v) for v in versions])

    @app.get(
        "/v1/users/{user_id}/profile/diff", tags=["profiles"], summary="What changed between two versions"
    )
    def profile_diff(
        user_id: UserId,
        who: Reader,
        from_version: Annotated[int | None, Query(alias="from", ge=1)] = None,
        to_version: Annotated[int | None, Query(alias="to", ge=1)] = None,
    ) -> m.ProfileDiffOut:
        profiles = service.runtime(who.tenant).profiles
        latest = profiles.latest_profile(user_id)
        if latest is None:
            raise ApiError(404, "profile_not_found", "no stored profile for this user")
        to_v = to_version or latest.version
        from_v = from_version or max(1, to_v - 1)
        old, new = profiles.profile_version(user_id, from_v), profiles.profile_version(user_id, to_v)
        if old is None or new is None:
            raise ApiError(
                404, "profile_not_found", f"no version {from_v if old is None else to_v} for this user"
            )
        changes = [c.model_dump(mode="json") for c in diff_states(old.state, new.state)]
        return m.ProfileDiffOut(user_id=user_id, from_version=from_v, to_version=to_v, changes=changes)

    @app.post(
        "/v1/users/{user_id}/feedback", tags=["profiles"], summary="Record a reaction (optionally refine)"
    )
    def post_feedback(
        user_id: UserId, body: m.FeedbackIn, who: Writer, idempotency_key: IdempotencyKey = None
    ) -> m.FeedbackOut:
        runtime = service.runtime(who.tenant)
        agent = runtime.snapshot().agent
        if agent is None:
            raise ApiError(404, "unknown_item", "the catalog is empty")
        event = make_event(
            user_id=user_id,
            item_id=body.item_id,
            signal=body.signal,
            value=body.value,
            comment=body.comment,
            recommendation_id=body.recommendation_id,
            timestamp=body.timestamp,
        )
        users = _Everyone() if user_id not in agent.histories else agent.histories
        event = check_references(event, users=users, items=agent.catalog, recommendations=runtime.profiles)

        def write(cur: Any) -> tuple[int, Any]:
            stored = runtime.profiles.add_feedback(event, cur)
            return 200, {"feedback": stored.model_dump(mode="json")}

        payload = {"user_id": user_id, **body.model_dump(mode="json", exclude={"refine"})}
        _, response, replayed = store.idempotent(who.tenant, idempotency_key, _hash_body(payload), write)
        if not replayed:
            service.metrics.feedback.labels(body.signal).inc()
        refined = None
        if body.refine:
            if agent.client is None:
                raise ApiError(400, "not_available", "refining needs a model; the feedback was stored")
            if user_id in agent.histories:
                result = agent.refine(user_id)
                service.metrics.observe_usage(result.usage if hasattr(result, "usage") else {})
                refined = result.model_dump(mode="json")
        return m.FeedbackOut(
            feedback=response["feedback"],
            blocked_items=sorted(runtime.profiles.blocked_items(user_id)),
            refine=refined,
            replayed=replayed,
        )

    # -- content --------------------------------------------------------------------------------
    @app.post("/v1/users/{user_id}/content", tags=["content"], summary="Personalized item text")
    def post_content(user_id: UserId, body: m.ContentIn, who: Reader) -> dict[str, Any]:
        runtime = service.runtime(who.tenant)
        snapshot = runtime.snapshot()
        if snapshot.agent is None or user_id not in snapshot.agent.histories:
            raise ApiError(404, "unknown_user", "personalized content needs the user's events")
        generated = ContentGenerator(snapshot.agent, items=snapshot.items).generate(
            user_id, body.item_id, body.kind
        )
        service.metrics.observe_usage(generated.usage if hasattr(generated, "usage") else {})
        return generated.model_dump(mode="json")

    # -- chat -------------------------------------------------------------------------------------
    @app.post(
        "/v1/chat",
        tags=["chat"],
        summary="One chat turn, streamed as Server-Sent Events",
        response_class=EventSourceResponse,
        responses={
            200: {
                "content": {"text/event-stream": {}},
                "description": "events: session, text, recommendations, done, error",
            }
        },
    )
    async def chat(body: m.ChatIn, who: Reader) -> EventSourceResponse:
        runtime = service.runtime(who.tenant)
        session_id = body.session_id or uuid.uuid4().hex
        stored = await asyncio.to_thread(store.session, who.tenant, session_id)
        if stored is not None and stored[0] != body.user_id:
            raise ApiError(409, "session_user_mismatch", "this session belongs to another user")
        state = ConversationState.model_validate(stored[1]) if stored else None
        request_id = REQUEST_ID.get()

        def turn() -> Any:
            token = REQUEST_ID.set(request_id)
            try:
                agent = runtime.snapshot().agent
                if agent is None:
                    raise ApiError(404, "unknown_item", "the catalog is empty")
                reply = Conversation(agent, k=body.k).send(body.user_id, body.message, state)
                store.save_session(who.tenant, session_id, body.user_id, reply.state.model_dump(mode="json"))
                return reply, reply.result
            finally:
                REQUEST_ID.reset(token)

        async def events() -> AsyncIterator[dict[str, str]]:
            yield {
                "event": "session",
                "data": json.dumps({"session_id": session_id, "request_id": request_id}),
            }
            try:
                reply, result = await asyncio.to_thread(turn)
            except ApiError as exc:
                yield _error_event(exc.type, exc.message, request_id)
                return
            except errors.RecommenderError as exc:
                mapped = json.loads(bytes(_map_recommender_error(exc).body))
                yield {"event": "error", "data": json.dumps(mapped)}
                return
            if result is not None:
                service.metrics.observe_result(result)
            text = reply.text if reply is not None else "Here are some popular picks to start with."
            for piece in _pieces(text):
                yield {"event": "text", "data": json.dumps({"delta": piece})}
            items = [r.model_dump(mode="json") for r in (reply.recommendations if reply else result.items)]
            yield {
                "event": "recommendations",
                "data": json.dumps(
                    {"recommendation_id": result.recommendation_id if result else None, "items": items}
                ),
            }
            yield {"event": "done", "data": json.dumps({"session_id": session_id})}

        return EventSourceResponse(events(), ping=15)

    # -- the tenant's counters (dashboard) -------------------------------------------------------------
    @app.get("/v1/stats", tags=["ops"], summary="Counts of the key's tenant (users, items, events)")
    def stats(who: Reader) -> m.StatsOut:
        runtime = service.runtime(who.tenant)
        snapshot = runtime.snapshot()
        counts = store.counts(who.tenant)
        return m.StatsOut(
            tenant=who.tenant,
            users=counts["users"],
            items=counts["items"],
            events=counts["events"],
            feedback=counts["feedback"],
            data_version=list(snapshot.version),
            rebuilds=runtime.rebuilds,
            last_rebuild_s=round(snapshot.built_in_s, 4),
        )

    @app.get(
        "/v1/dashboard",
        tags=["ops"],
        summary="The web page's dashboard: the tenant's counts and this process's metrics",
    )
    def dashboard(who: Reader) -> m.DashboardOut:
        counts = store.counts(who.tenant)
        return m.DashboardOut(
            tenant=who.tenant,
            counts=m.TenantCounts(**{k: counts[k] for k in ("users", "items", "events", "feedback")}),
            process=m.ProcessMetrics(**service.metrics.summary()),
        )

    mount_web(app)
    return app


class _Everyone:
    """Feedback from a user without events is allowed (cold-start users react too)."""

    def __contains__(self, _: object) -> bool:
        return True


def _version_out(version: ProfileVersion) -> m.ProfileVersionOut:
    return m.ProfileVersionOut(
        user_id=version.user_id,
        version=version.version,
        created_at=version.created_at,
        producer=version.producer,
        model=version.model,
        profile=version.state.profile.model_dump(mode="json"),
        blocked_items=version.state.blocked_ids(),
        changes=[c.model_dump(mode="json") for c in version.changes],
    )


def _drops(dropped: dict[str, int]) -> str:
    return ", ".join(f"{n} {why}" for why, n in sorted(dropped.items())) or "nothing retrieved"


def _pieces(text: str, size: int = 48) -> list[str]:
    """The reply in word-aligned pieces, so a client can render it as it arrives."""
    words, out, current = text.split(" "), [], ""
    for word in words:
        current = f"{current} {word}" if current else word
        if len(current) >= size:
            out.append(current + " ")
            current = ""
    if current:
        out.append(current)
    return out


def _error_event(type_: str, message: str, request_id: str) -> dict[str, str]:
    return {
        "event": "error",
        "data": json.dumps({"error": {"type": type_, "message": message, "request_id": request_id}}),
    }

"""Request and response bodies of the REST API (``/v1``); the OpenAPI document is built from them.

Limits live here so they show in the document: at most ``MAX_BATCH`` events or items per
request, ids of at most 256 characters, free text of at most 10,000.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The feedback signals of agent.data.behaviors.SIGNALS, spelled out so the OpenAPI document
# lists them (tests/service/test_api.py checks the two agree).
Signal = Literal[
    "like", "dislike", "rating", "not_interested", "comment", "click", "cart", "purchase", "skip"
]
MAX_BATCH = 1000
MAX_K = 100
Id = Field(min_length=1, max_length=256)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors ------------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    type: str = Field(
        description="stable machine-readable kind, e.g. invalid_request, not_found, rate_limited"
    )
    message: str = Field(description="one line for people")
    request_id: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    """Every non-2xx answer has this shape."""

    error: ErrorBody


# -- events and items -------------------------------------------------------------------------
class EventIn(Strict):
    user_id: str = Id
    item_id: str | None = Field(default=None, max_length=256, description="None for a search")
    behavior: str = Field(
        min_length=1, max_length=64, description="view, click, cart, purchase, rating, search..."
    )
    timestamp: datetime | None = Field(default=None, description="ISO-8601 with a zone; default: now")
    value: float | None = Field(default=None, allow_inf_nan=False, description="rating value or price paid")
    text: str | None = Field(default=None, max_length=10_000, description="a search query or a review")

    @field_validator("timestamp")
    @classmethod
    def _zoned(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("timestamp needs a time zone (e.g. 2026-12-01T10:00:00Z)")
        return value


class EventsIn(Strict):
    events: list[EventIn] = Field(min_length=1, max_length=MAX_BATCH)


class EventsOut(BaseModel):
    accepted: int
    replayed: bool = Field(description="true when this answers a retry of an Idempotency-Key already seen")


class ItemIn(Strict):
    item_id: str = Id
    title: str = Field(min_length=1, max_length=1000)
    category: str | None = Field(default=None, max_length=256)
    price: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    description: str | None = Field(default=None, max_length=10_000)
    attributes: dict[str, str | float | int | bool | None] = Field(default_factory=dict, max_length=50)


class ItemsIn(Strict):
    items: list[ItemIn] = Field(min_length=1, max_length=MAX_BATCH)


class ItemsOut(BaseModel):
    upserted: int
    revision: int
    replayed: bool = False


class ItemOut(BaseModel):
    item_id: str
    title: str
    category: str | None = None
    price: float | None = None
    description: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)


# -- feedback and profiles --------------------------------------------------------------------
class FeedbackIn(Strict):
    item_id: str = Id
    signal: Signal = Field(
        description="the reaction (explicit: like, dislike, rating, not_interested, comment)"
    )
    value: float | None = Field(default=None, allow_inf_nan=False)
    comment: str | None = Field(default=None, max_length=2000)
    recommendation_id: str | None = Field(default=None, max_length=64)
    timestamp: datetime | None = None
    refine: bool = Field(
        default=False, description="then refine the profile if the new feedback is worth a call"
    )


class FeedbackOut(BaseModel):
    feedback: dict[str, Any]
    blocked_items: list[str]
    refine: dict[str, Any] | None = None
    replayed: bool = False


class ProfileVersionOut(BaseModel):
    user_id: str
    version: int
    created_at: datetime
    producer: str
    model: str | None
    profile: dict[str, Any]
    blocked_items: list[str]
    changes: list[dict[str, Any]]


class ProfileHistoryOut(BaseModel):
    user_id: str
    versions: list[ProfileVersionOut]


class ProfileDiffOut(BaseModel):
    user_id: str
    from_version: int
    to_version: int
    changes: list[dict[str, Any]]


# -- content and chat ---------------------------------------------------------------------------
class ContentIn(Strict):
    item_id: str = Id
    kind: Literal["description", "summary", "explanation"] = "description"


class ChatIn(Strict):
    user_id: str = Id
    message: str = Field(min_length=1, max_length=4000)
    session_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_-]{8,64}$", description="omit to start a new conversation"
    )
    k: int = Field(default=5, ge=1, le=20)


class StatsOut(BaseModel):
    tenant: str
    users: int
    items: int
    events: int
    feedback: int
    data_version: list[int]
    rebuilds: int
    last_rebuild_s: float | None


class TenantCounts(BaseModel):
    users: int
    items: int
    events: int
    feedback: int


class GroundingRates(BaseModel):
    invented: float | None = Field(
        description="mean share of a list's model picks that named no catalog item"
    )
    duplicate: float | None = Field(description="mean share that repeated an item already in the list")
    history: float | None = Field(description="mean share that named an item the user already had")


class ProcessMetrics(BaseModel):
    """What this server process has done since it started, for every tenant it serves: the
    numbers of ``/metrics`` (counts only, no ids, no tenant names)."""

    uptime_s: float
    requests: int
    server_errors: int = Field(description="answers with a 5xx status")
    requests_last_minute: int
    requests_per_s: float = Field(description="over the last minute")
    model_calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float = Field(description="estimated from the model's list prices")
    lists_served: int
    lists_by_mode: dict[str, int] = Field(description="model, fallback, cold_start")
    items_by_source: dict[str, int] = Field(description="llm, retriever, fallback, cold_start")
    fallback_rate: float | None = Field(
        description="lists served without the model's ranking / lists for users with history"
    )
    grounding: GroundingRates
    events_ingested: int
    feedback: int


class DashboardOut(BaseModel):
    tenant: str
    counts: TenantCounts = Field(description="the key's tenant, from the store")
    process: ProcessMetrics = Field(description="this server process, all tenants together")

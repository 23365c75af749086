"""Request ids, structured JSON access logs and Prometheus metrics of the service.

* Every request gets an id (the caller's ``X-Request-ID`` when it is a safe token, else a new
  one), returned in the response header and in every error body. It is kept in a context
  variable, and ``RequestIdFilter`` adds it to every log record, so the model-call logs of a
  request carry the same id as its access-log line.
* Access logs are one JSON object per line: time, request id, method, route template (never
  the raw path, which holds user ids), status, duration, tenant, key id and a pseudonym of the
  user (``agent.data.privacy.Pseudonymizer``, keyed by ``RECAGENT_PSEUDONYM_KEY`` or a per-
  process random key). No raw user id, no key, no body.
* Metrics use their own registry per app, so two apps in one process (tests) don't collide.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Summary

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("recagent_request_id", default="-")
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]{8,64}$")

access_log = logging.getLogger("recagent.access")


def new_request_id(offered: str | None) -> str:
    return offered if offered and _SAFE_ID.match(offered) else uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; access records carry their fields in ``record.fields``."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", REQUEST_ID.get()),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update(fields)
        else:
            payload["message"] = record.getMessage()
        if record.exc_info:  # for the operator's log only; clients get the typed error body
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False)


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr for the service's own loggers, the SDK's and uvicorn's errors."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpx2", "openai", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Metrics:
    """The service's Prometheus metrics (``GET /metrics``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "recagent_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "recagent_http_request_seconds",
            "Time to answer, by route",
            ["route"],
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.model_calls = Counter("recagent_model_calls", "Chat API requests sent", registry=r)
        self.tokens = Counter("recagent_model_tokens", "Tokens used", ["kind"], registry=r)
        self.cost = Counter("recagent_model_cost_usd", "Estimated model cost (USD)", registry=r)
        self.recommendations = Counter(
            "recagent_recommendations",
            "Recommendation lists served, by how they were made",
            ["mode"],
            registry=r,
        )
        self.items_served = Counter(
            "recagent_items_served", "Items served, by source", ["source"], registry=r
        )
        self.fallbacks = Counter("recagent_fallbacks", "Lists served without the model's ranking", registry=r)
        self.grounding = Summary(
            "recagent_grounding_rate",
            "Per-list grounding rates (invented, duplicate, history)",
            ["kind"],
            registry=r,
        )
        self.rebuild = Histogram(
            "recagent_data_rebuild_seconds",
            "Time to rebuild a tenant's histories and retriever after new data",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.events = Counter("recagent_events_ingested", "Behavior events accepted", registry=r)
        self.feedback = Counter("recagent_feedback", "Feedback accepted, by signal", ["signal"], registry=r)

    def observe_usage(self, usage: dict[str, Any]) -> None:
        self.model_calls.inc(float(usage.get("requests", 0) or 0))
        self.tokens.labels("prompt").inc(float(usage.get("prompt_tokens", 0) or 0))
        self.tokens.labels("completion").inc(float(usage.get("completion_tokens", 0) or 0))
        self.cost.inc(float(usage.get("cost_usd", 0.0) or 0.0))

    def observe_result(self, result: Any) -> None:
        """Count one ``RecommendationResult``: usage, sources, fallbacks, grounding rates."""
        self.observe_usage(result.usage or {})
        sources = [item.source for item in result.items]
        mode = "cold_start" if "cold_start" in sources else ("model" if "llm" in sources else "fallback")
        self.recommendations.labels(mode).inc()
        for source in sources:
            self.items_served.labels(source).inc()
        if result.fallback_reason and mode != "cold_start":
            self.fallbacks.inc()
        for kind in ("invented_rate", "duplicate_rate", "history_rate"):
            if kind in (result.grounding or {}):
                self.grounding.labels(kind.removesuffix("_rate")).observe(float(result.grounding[kind]))

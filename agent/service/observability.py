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
* ``Metrics.summary()`` reads that registry back for the dashboard (``GET /v1/dashboard``):
  the same process-wide numbers ``/metrics`` exposes, plus the request rate of the last minute.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import threading
import time
import uuid
from collections import deque
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


class RecentRequests:
    """Requests answered in the last ``window_s`` seconds, in one-second buckets.

    Prometheus counters only grow; a rate needs two readings apart in time. The dashboard
    wants one number from one reading, so the process keeps this small window as well
    (at most ``window_s`` buckets, whatever the traffic).
    """

    def __init__(self, window_s: int = 60, clock: Any = time.monotonic) -> None:
        self.window_s, self._clock = window_s, clock
        self._buckets: deque[list[int]] = deque()  # [second, count], oldest first
        self._lock = threading.Lock()

    def add(self) -> None:
        now = int(self._clock())
        with self._lock:
            if self._buckets and self._buckets[-1][0] == now:
                self._buckets[-1][1] += 1
            else:
                self._buckets.append([now, 1])
            self._drop_before(now - self.window_s + 1)

    def count(self) -> int:
        """Requests in the window ending now."""
        now = int(self._clock())
        with self._lock:
            self._drop_before(now - self.window_s + 1)
            return sum(n for _, n in self._buckets)

    def _drop_before(self, oldest: int) -> None:
        while self._buckets and self._buckets[0][0] < oldest:
            self._buckets.popleft()


class Metrics:
    """The service's Prometheus metrics (``GET /metrics``)."""

    def __init__(self) -> None:
        self.started = time.time()
        self.recent = RecentRequests()
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

    def summary(self) -> dict[str, Any]:
        """This process's numbers for the dashboard, read from the registry (no tenant data).

        Rates are ``None`` until there is something to divide by: the fallback rate over the
        lists served with history (cold-start lists are not fallbacks), the grounding rates
        as the mean per-list rate of invented, duplicate and already-seen items.
        """
        totals = _totals(self.registry)
        lists = {mode: int(n) for (name, mode), n in totals.items() if name == "recagent_recommendations"}
        sources = {src: int(n) for (name, src), n in totals.items() if name == "recagent_items_served"}
        fallbacks = totals.get(("recagent_fallbacks", ""), 0.0)
        with_history = sum(n for mode, n in lists.items() if mode != "cold_start")
        grounding: dict[str, float | None] = {}
        for kind in ("invented", "duplicate", "history"):
            count = totals.get(("recagent_grounding_rate_count", kind), 0.0)
            total = totals.get(("recagent_grounding_rate_sum", kind), 0.0)
            grounding[kind] = round(total / count, 4) if count else None
        requests = sum(n for (name, _), n in totals.items() if name == "recagent_http_requests")
        errors = sum(
            n
            for (name, status), n in totals.items()
            if name == "recagent_http_requests" and status[:1] == "5"
        )
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "requests": int(requests),
            "server_errors": int(errors),
            "requests_last_minute": self.recent.count(),
            "requests_per_s": round(self.recent.count() / self.recent.window_s, 3),
            "model_calls": int(totals.get(("recagent_model_calls", ""), 0.0)),
            "prompt_tokens": int(totals.get(("recagent_model_tokens", "prompt"), 0.0)),
            "completion_tokens": int(totals.get(("recagent_model_tokens", "completion"), 0.0)),
            "cost_usd": round(totals.get(("recagent_model_cost_usd", ""), 0.0), 6),
            "lists_served": sum(lists.values()),
            "lists_by_mode": lists,
            "items_by_source": sources,
            "fallback_rate": round(fallbacks / with_history, 4) if with_history else None,
            "grounding": grounding,
            "events_ingested": int(totals.get(("recagent_events_ingested", ""), 0.0)),
            "feedback": int(sum(n for (name, _), n in totals.items() if name == "recagent_feedback")),
        }


def _totals(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """Sample values summed by (sample name without ``_total``, the value of its one label that
    the dashboard splits by, or "")."""
    out: dict[tuple[str, str], float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            name = sample.name.removesuffix("_total")
            label = next((sample.labels[k] for k in _SPLIT_BY if k in sample.labels), "")
            out[(name, label)] = out.get((name, label), 0.0) + sample.value
    return out


# The label each metric is split by on the dashboard (the others are summed over).
_SPLIT_BY = ("status", "mode", "source", "kind", "signal")

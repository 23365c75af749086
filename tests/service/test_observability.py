"""The dashboard's reading of the service's own metrics (``agent.service.observability``)."""

from __future__ import annotations

from types import SimpleNamespace

from agent.service.observability import Metrics, RecentRequests


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_recent_requests_count_only_the_last_window() -> None:
    clock = Clock()
    recent = RecentRequests(window_s=60, clock=clock)
    for _ in range(3):
        recent.add()
    clock.now += 30
    recent.add()
    assert recent.count() == 4
    clock.now += 31  # the first three are now 61 s old
    assert recent.count() == 1
    clock.now += 3600
    assert recent.count() == 0 and len(recent._buckets) == 0  # nothing kept once out of the window


def _result(sources: list[str], fallback: str | None, grounding: dict[str, float]) -> SimpleNamespace:
    usage = {"requests": 1, "prompt_tokens": 100, "completion_tokens": 20, "cost_usd": 0.001}
    items = [SimpleNamespace(source=s) for s in sources]
    return SimpleNamespace(usage=usage, items=items, fallback_reason=fallback, grounding=grounding)


def test_the_summary_reads_back_what_was_counted() -> None:
    metrics = Metrics()
    metrics.observe_result(_result(["llm", "llm", "retriever"], None, {"invented_rate": 0.2}))
    metrics.observe_result(_result(["fallback"], "model failed", {"invented_rate": 0.0}))
    metrics.observe_result(_result(["cold_start"], "cold start: no history", {}))
    metrics.requests.labels("GET", "/x", "200").inc(5)
    metrics.requests.labels("GET", "/x", "503").inc()
    metrics.feedback.labels("like").inc(2)
    summary = metrics.summary()
    assert summary["lists_by_mode"] == {"model": 1, "fallback": 1, "cold_start": 1}
    assert summary["items_by_source"] == {"llm": 2, "retriever": 1, "fallback": 1, "cold_start": 1}
    assert summary["fallback_rate"] == 0.5  # one of the two lists with history; cold start is not one
    assert summary["grounding"] == {"invented": 0.1, "duplicate": None, "history": None}
    assert (summary["model_calls"], summary["prompt_tokens"], summary["completion_tokens"]) == (3, 300, 60)
    assert summary["cost_usd"] == 0.003
    assert (summary["requests"], summary["server_errors"], summary["feedback"]) == (6, 1, 2)

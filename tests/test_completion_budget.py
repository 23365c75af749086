"""The batch runner's completion budget: caps from the schema, then learned; a reply cut by the
cap is asked again with a larger one; unused reservations come back when the server charges
what was actually produced."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

from agent.batch.budget import FLOOR, MIN_SAMPLES, CompletionBudget
from agent.batch.runner import BatchSettings, run_batch
from agent.data.loading import align_catalog, load_events, load_items
from agent.llm.client import LLMConfig
from agent.recommender import RecommenderAgent
from agent.testing.loopback import Limits, LoopbackServer, Reply
from agent.testing.standin_model import respond
from tests.conftest import SAMPLE

USERS = [f"u{n:03d}" for n in range(1, 9)]


def _agent() -> RecommenderAgent:
    items = load_items(SAMPLE / "items.csv")
    events = align_catalog(load_events(SAMPLE / "events.csv"), items)
    return RecommenderAgent(events.frame, items.frame, None)


def _run(server: LoopbackServer, out: Path, **settings: Any) -> Any:
    config = LLMConfig(
        base_url=server.base_url, api_key="not-a-key", model="gpt-4.1-mini", max_completion_tokens=2000
    )
    settings.setdefault("concurrency", 2)
    return asyncio.run(run_batch(_agent(), config, BatchSettings(out_dir=out, users=USERS, **settings)))


def test_first_caps_come_from_the_schema_then_follow_a_high_quantile() -> None:
    budget = CompletionBudget(k=10, maximum=2000)
    assert budget.cap("profile") == 688 and budget.cap("recommend") == 960  # (450, 10*60+40) x 1.5, /16
    for n in range(MIN_SAMPLES - 1):
        budget.observe("recommend", 300 + n)
    assert budget.cap("recommend") == 960  # not enough replies yet
    budget.observe("recommend", 400)
    assert budget.cap("recommend") == 512  # the top reply (400) x 1.25, rounded up to 16
    for _ in range(500):
        budget.observe("recommend", 5)
    assert budget.cap("recommend") >= FLOOR
    big = CompletionBudget(k=100, maximum=2000)
    assert big.cap("recommend") == 2000  # never above the configured maximum
    assert budget.retry_cap(512) == 1024 and budget.retry_cap(2000) is None and budget.reasked == 1


def test_a_reply_cut_by_the_cap_is_asked_again_larger_and_no_user_is_lost(tmp_path: Path) -> None:
    caps: list[int] = []

    def stingy(body: dict[str, Any]) -> Reply:
        cap = int(body["max_completion_tokens"])
        caps.append(cap)
        if cap < 700:  # the learned cap is too small for this server's long replies
            return Reply(content='{"summary": "cut', finish_reason="length", completion_tokens=cap)
        return Reply(content=respond(body))

    with LoopbackServer(responder=stingy) as server:
        summary = _run(server, tmp_path, tasks=("profile",))
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted(r["user_id"] for r in results) == USERS and summary.failures == 0
    # the schema's first cap (688) is cut for every user, and each is asked once more at twice it
    assert Counter(caps) == {688: len(USERS), 1376: len(USERS)}
    assert summary.progress.truncated_reasked == len(USERS)


def test_unused_reservations_come_back_only_from_a_server_that_charges_actual_usage(tmp_path: Path) -> None:
    # No refill on either side (a "minute" of 10^9 s) and one request at a time: what each
    # bucket holds depends only on what was charged and given back, never on timing.
    refunded, unused = {}, {}
    for mode in ("actual", "reserved"):
        limits = Limits(tpm=120_000, minute_s=1e9, charge=mode)  # type: ignore[arg-type]
        with LoopbackServer(responder=lambda body: Reply(content=respond(body)), limits=limits) as server:
            summary = _run(
                server, tmp_path / mode, tasks=("recommend",), tpm=120_000, minute_s=1e9, concurrency=1
            )
            assert server.stats.rate_limited == 0
            reserved = sum(
                int(r.body["max_completion_tokens"])
                for r in server.requests
                if r.path.endswith("/chat/completions")
            )
            unused[mode] = reserved - server.stats.completion_tokens
        refunded[mode] = summary.extra["refunded_tokens"]
    # most of what went unused comes back from an actual-charging server; a reserving one shows
    # no room once each reply's prompt tokens are corrected (in-flight tokens are set aside)
    assert unused["actual"] > 1000 and refunded["actual"] >= 0.5 * unused["actual"]
    assert refunded["reserved"] == 0

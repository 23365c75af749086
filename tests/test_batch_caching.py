"""Prompt caching in batch runs: the provider's rules (agent.llm.prompt_cache), a user's tasks
sent in order, the dry run's cached estimate and expected completions, and cached tokens
reported by the loopback server, read and priced at the cached rate."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.batch.runner import BatchSettings, BatchSummary, Planner, dry_run, run_batch
from agent.batch.typical_reply import typical_completion_tokens, typical_reply
from agent.llm.client import LLMConfig
from agent.llm.prompt_cache import OPENAI, CachePolicy, PrefixCache, common_prefix, prompt_tokens_of
from agent.prompting.tokens import PriceTable, count_messages
from agent.recommender import AgentConfig, PreparedRequest, RecommenderAgent
from agent.testing.loopback import LoopbackServer, Reply
from agent.testing.standin_model import respond
from tests.conftest import ROOT

USERS = [f"u{n:03d}" for n in range(1, 9)]
MODEL = "gpt-4.1-mini"
STATIC = "You rank and profile. " + " ".join(f"Rule {n}: weigh the history with care." for n in range(160))
"""A shared leading system message of ~1,300 tokens (cacheable across users)."""
SCHEMA_FREE = CachePolicy(schema_in_prefix=False)


@pytest.fixture(scope="module")
def agent(sample_frames: tuple[Any, Any]) -> RecommenderAgent:
    return RecommenderAgent(*sample_frames, None)


@pytest.fixture(scope="module")
def shared_agent(sample_frames: tuple[Any, Any]) -> RecommenderAgent:
    """An agent whose two prompts of a user share a long prefix: one static system message,
    then the user's history message, then the task's own message (the stand-in model reads
    the last user message, so replies are unchanged)."""
    agent = RecommenderAgent(*sample_frames, None)
    profile, recommend = agent.prepare_profile, agent.prepare_recommend

    def shaped(prepared: PreparedRequest, user_id: str) -> PreparedRequest:
        history = profile(user_id).prompt.messages[-1]["content"]
        messages = [
            {"role": "system", "content": STATIC},
            {
                "role": "user",
                "content": f"Shopper {hashlib.sha256(user_id.encode()).hexdigest()[:12]}.\n{history}",
            },
            {"role": "user", "content": prepared.prompt.messages[-1]["content"]},
        ]
        return PreparedRequest(replace(prepared.prompt, messages=messages), prepared.context)

    agent.prepare_profile = lambda user_id: shaped(profile(user_id), user_id)  # type: ignore[method-assign]
    agent.prepare_recommend = lambda user_id, k=10, **kw: shaped(  # type: ignore[method-assign]
        recommend(user_id, k=k, **kw), user_id
    )
    return agent


def config_for(server: LoopbackServer | None = None) -> LLMConfig:
    return LLMConfig(
        model=MODEL,
        base_url=server.base_url if server else None,
        api_key="not-a-key",
        max_completion_tokens=1200,
        timeout_s=10.0,
    )


def run(agent: RecommenderAgent, server: LoopbackServer, out: Path, **kw: Any) -> BatchSummary:
    settings = BatchSettings(out_dir=out, users=USERS, concurrency=4, **kw)
    return asyncio.run(run_batch(agent, config_for(server), settings))


# -- the rules ---------------------------------------------------------------------------
def test_cacheable_tokens_follow_the_1024_and_128_rule() -> None:
    assert OPENAI.cacheable(1023, 5000) == 0
    assert OPENAI.cacheable(5000, 1000) == 0  # prompts under 1,024 tokens are never cached
    assert OPENAI.cacheable(1024, 5000) == 1024
    assert OPENAI.cacheable(1151, 5000) == 1024
    assert OPENAI.cacheable(1152, 5000) == 1152
    assert OPENAI.cacheable(1400, 1400) == 1280
    assert OPENAI.cacheable(9000, 1300) == 1280  # never more than the prompt


def test_prompt_tokens_are_exact_and_common_prefixes_are_token_level() -> None:
    messages = [
        {"role": "system", "content": STATIC},
        {"role": "user", "content": "History:\n1 Dune\n2 Alien"},
        {"role": "user", "content": "Write the profile.", "name": "ops"},
    ]
    tokens = prompt_tokens_of(messages, MODEL)
    assert len(tokens) == count_messages(messages, MODEL)
    other = prompt_tokens_of([*messages[:2], {"role": "user", "content": "Rank the candidates."}], MODEL)
    shared = common_prefix(tokens, other)
    assert tokens[:shared] == other[:shared] and tokens[shared] != other[shared]
    # the first two messages (without the reply priming), the third's framing and its role
    assert shared == len(prompt_tokens_of(messages[:2], MODEL)) - 3 + 2 + 1


def test_prefix_cache_reports_the_longest_prefix_served_before_and_keys_on_the_schema() -> None:
    body = {"model": MODEL, "messages": [{"role": "system", "content": STATIC}], "response_format": {"a": 1}}
    longer = {**body, "messages": [*body["messages"], {"role": "user", "content": "more " * 300}]}
    cache = PrefixCache()
    total, cached = cache.serve(body, MODEL)
    assert total > 1024 and cached == 0
    assert cache.serve(body, MODEL) == (total, OPENAI.cacheable(total, total))
    assert cache.serve(longer, MODEL)[1] == OPENAI.cacheable(total - 3, total)
    other_schema = {**longer, "response_format": {"a": 2}}
    assert cache.serve(other_schema, MODEL)[1] == 0  # the schema is a prefix of the prompt
    relaxed = PrefixCache(SCHEMA_FREE)
    relaxed.serve(longer, MODEL)
    assert relaxed.serve(other_schema, MODEL)[1] > 1024
    small = PrefixCache(max_entries=2)
    small.serve(longer, MODEL)
    assert len(small._seen) == 2  # bounded


# -- sequencing ------------------------------------------------------------------------------
class OrderLog:
    """Server-side order of arrivals and replies. A request arrives when the server records it
    (``server.requests``, before the latency); each reply notes how many requests had
    arrived when it was produced, before it was sent."""

    def __init__(self, agent: RecommenderAgent, config: LLMConfig, out: Path) -> None:
        planner = Planner(agent, config, BatchSettings(out_dir=out, users=USERS))
        self.names: dict[str, tuple[str, str]] = {}
        for item in planner.plan(USERS):
            assert item.body is not None
            self.names[json.dumps(item.body["messages"])] = (item.user_id, item.task)
        self.server: LoopbackServer | None = None
        self.replies: list[tuple[tuple[str, str], int]] = []
        self.lock = threading.Lock()

    def responder(self, body: dict[str, Any]) -> Reply:
        assert self.server is not None
        reply = Reply(content=respond(body))
        with self.lock:
            self.replies.append((self.names[json.dumps(body["messages"])], len(self.server.requests)))
        return reply

    def arrivals(self) -> dict[tuple[str, str], int]:
        assert self.server is not None
        return {self.names[json.dumps(r.body["messages"])]: i for i, r in enumerate(self.server.requests)}


def test_a_users_second_task_is_sent_only_after_the_first_ones_reply(
    agent: RecommenderAgent, tmp_path: Path
) -> None:
    log = OrderLog(agent, config_for(), tmp_path / "plan")
    # the latency holds every request a while after it arrived, so a runner that sent both
    # tasks of a user at once would be caught with the first in flight (nothing is timed)
    with LoopbackServer(responder=log.responder, latency_s=0.05) as server:
        log.server = server
        summary = run(agent, server, tmp_path / "out")
    assert summary.results == 2 * len(USERS) and summary.failures == 0
    arrived = log.arrivals()
    arrived_by_reply = dict(log.replies)
    for user in USERS:  # the recommend arrived after the profile's reply was produced
        assert arrived[(user, "recommend")] >= arrived_by_reply[(user, "profile")]
    # other users' requests kept the pipeline full: several requests were in flight at once
    in_flight = [count - done for done, (_, count) in enumerate(log.replies)]
    assert max(in_flight) > 1


# -- the dry run ---------------------------------------------------------------------------------
def test_typical_replies_validate_against_each_requests_schema(agent: RecommenderAgent) -> None:
    for user in USERS[:3]:
        for prepared in (agent.prepare_profile(user), agent.prepare_recommend(user, k=10)):
            context = prepared.context
            context.output_model().model_validate(typical_reply(context))
            tokens = typical_completion_tokens(context, MODEL)
            assert (150 if context.task == "profile" else 250) < tokens < 700


def test_dry_run_with_todays_prompts_expects_no_cache_under_per_request_schemas(
    agent: RecommenderAgent, tmp_path: Path
) -> None:
    estimate = dry_run(agent, config_for(), BatchSettings(out_dir=tmp_path, users=USERS))
    assert estimate["cached_prompt_tokens_expected"] == 0
    assert estimate["uncached_prompt_tokens"] == estimate["prompt_tokens"] > 0
    assert estimate["cost_usd_expected"] == estimate["cost_usd_expected_no_cache"]
    assert estimate["completion_tokens_source"] == {"profile": "typical reply", "recommend": "typical reply"}
    per_user = estimate["cost_usd_expected"] / len(USERS) * 1000
    assert estimate["cost_usd_per_1k_users_expected"] == pytest.approx(per_user, rel=2e-3)


@pytest.fixture
def cached_run(
    shared_agent: RecommenderAgent, tmp_path: Path
) -> Iterator[tuple[BatchSummary, LoopbackServer]]:
    cache = PrefixCache(SCHEMA_FREE)
    with LoopbackServer(responder=lambda body: Reply(content=respond(body)), prompt_cache=cache) as server:
        yield run(shared_agent, server, tmp_path / "out"), server


def test_cached_tokens_are_reported_priced_and_equal_the_dry_runs_estimate(
    shared_agent: RecommenderAgent, cached_run: tuple[BatchSummary, LoopbackServer], tmp_path: Path
) -> None:
    summary, server = cached_run
    progress = summary.progress
    assert summary.results == 2 * len(USERS) and summary.failures == 0
    assert progress.cached_tokens == server.stats.cached_tokens > 0
    assert progress.prompt_tokens == server.stats.prompt_tokens
    # every cached token priced at the cached rate
    expected_cost = PriceTable().cost(
        MODEL, progress.prompt_tokens, progress.completion_tokens, progress.cached_tokens
    )
    assert progress.cost_usd == pytest.approx(expected_cost, rel=1e-9)
    assert progress.cost_usd < PriceTable().cost(MODEL, progress.prompt_tokens, progress.completion_tokens)
    assert summary.as_dict()["cached_tokens"] == progress.cached_tokens

    settings = BatchSettings(out_dir=tmp_path / "dry", users=USERS)
    estimate = dry_run(shared_agent, config_for(), settings, cache_policy=SCHEMA_FREE)
    assert estimate["prompt_tokens"] == progress.prompt_tokens
    assert estimate["cached_prompt_tokens_expected"] == progress.cached_tokens
    assert estimate["cost_usd_expected"] < estimate["cost_usd_expected_no_cache"]
    # the provider's own rule, the schema in the prefix: these per-request schemas share nothing
    strict = dry_run(shared_agent, config_for(), settings)
    assert strict["cached_prompt_tokens_expected"] == 0
    assert strict["cached_prompt_tokens_if_schema_static"] == progress.cached_tokens


def test_the_openai_rule_on_the_loopback_server_reports_no_cache_for_per_request_schemas(
    shared_agent: RecommenderAgent, tmp_path: Path
) -> None:
    with LoopbackServer(
        responder=lambda body: Reply(content=respond(body)), prompt_cache=PrefixCache()
    ) as server:
        summary = run(shared_agent, server, tmp_path / "out")
    assert summary.results == 2 * len(USERS)
    assert summary.progress.cached_tokens == 0 and summary.progress.prompt_tokens > 0


def test_the_dry_run_learns_completion_sizes_from_the_ledger(
    shared_agent: RecommenderAgent, cached_run: tuple[BatchSummary, LoopbackServer], tmp_path: Path
) -> None:
    settings = BatchSettings(out_dir=tmp_path / "out", users=[*USERS, "u020"])
    estimate = dry_run(shared_agent, config_for(), settings)
    assert estimate["requests"] == 2 and estimate["already_done"] == 2 * len(USERS)
    assert estimate["completion_tokens_source"] == {"profile": "ledger mean", "recommend": "ledger mean"}


# -- the scripts ---------------------------------------------------------------------------------
def _script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True, timeout=120
    )


def test_export_refuses_the_repository_and_bench_cost_skips_without_the_dataset(tmp_path: Path) -> None:
    inside = _script("export_dataset.py", "ml-100k", str(ROOT / "tmp-export"), "--datasets", str(tmp_path))
    assert inside.returncode == 3 and "no dataset" in inside.stderr  # absent first
    (tmp_path / "ml-100k").mkdir()
    inside = _script("export_dataset.py", "ml-100k", str(ROOT / "tmp-export"), "--datasets", str(tmp_path))
    assert inside.returncode == 2 and "inside the repository" in inside.stderr
    assert not (ROOT / "tmp-export").exists()
    docs = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    skipped = _script("bench_cost.py", "--datasets", str(tmp_path / "none"), "--write-docs")
    assert skipped.returncode == 0 and "skipped" in skipped.stderr
    assert (ROOT / "docs" / "BENCHMARKS.md").read_text() == docs


def test_the_batch_api_collector_reads_cached_tokens_and_prices_them_at_the_cached_rate(
    agent: RecommenderAgent, tmp_path: Path
) -> None:
    import openai

    from agent.batch import openai_batch
    from agent.testing.loopback import BatchConfig

    users = USERS[:2]
    openai_batch.prepare(agent, config_for(), BatchSettings(out_dir=tmp_path, users=users))

    def answer(body: dict[str, Any]) -> Reply:
        return Reply(content=respond(body), prompt_tokens=2000, completion_tokens=300, cached_tokens=1152)

    with LoopbackServer(responder=answer, batch=BatchConfig(polls_to_complete=1)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="not-a-key", max_retries=0)
        try:
            openai_batch.submit(client, tmp_path)
            collected: dict[str, Any] = {"results": 0}
            for _ in range(5):  # bounded polling; the server completes after one poll
                collected = openai_batch.collect(client, tmp_path)
                if collected["results"] == 2 * len(users):
                    break
        finally:
            client.close()
    requests = 2 * len(users)
    assert collected["results"] == requests
    assert collected["this_collect_cached_tokens"] == 1152 * requests
    one = PriceTable().cost(MODEL, 2000, 300, 1152, batch=True)
    assert one < PriceTable().cost(MODEL, 2000, 300, batch=True)
    assert collected["this_collect_cost_usd"] == pytest.approx(
        one * requests, abs=1e-6
    )  # rounded to 6 places


# -- the shared reply schema: OpenAI's own rule, the real prompts ---------------------------------
@pytest.fixture(scope="module")
def schema_shared_agent(sample_frames: tuple[Any, Any]) -> RecommenderAgent:
    return RecommenderAgent(*sample_frames, None, AgentConfig(reply_schema="shared"))


def test_typical_replies_validate_in_the_shared_envelope(schema_shared_agent: RecommenderAgent) -> None:
    for user in USERS[:3]:
        for prepared in (
            schema_shared_agent.prepare_profile(user),
            schema_shared_agent.prepare_recommend(user, k=10),
        ):
            reply = typical_reply(prepared.context)
            assert set(reply) == {"profile", "ranking"}
            prepared.context.output_model().model_validate(reply)


def test_shared_schema_batch_gets_the_cache_the_dry_run_expects(
    schema_shared_agent: RecommenderAgent, tmp_path: Path
) -> None:
    """The real templates and OpenAI's rule (schema in the prefix): with one schema for both
    tasks, each user's recommend request is billed partly as cached, as the dry run says."""
    with LoopbackServer(
        responder=lambda body: Reply(content=respond(body)), prompt_cache=PrefixCache(OPENAI)
    ) as server:
        summary = run(schema_shared_agent, server, tmp_path / "out")
    progress = summary.progress
    assert summary.results == 2 * len(USERS) and summary.failures == 0
    assert progress.cached_tokens == server.stats.cached_tokens >= 1024 * len(USERS)
    estimate = dry_run(
        schema_shared_agent, config_for(), BatchSettings(out_dir=tmp_path / "dry", users=USERS)
    )
    assert estimate["cached_prompt_tokens_expected"] == progress.cached_tokens
    assert estimate["cost_usd_expected"] < estimate["cost_usd_expected_no_cache"]

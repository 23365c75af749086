"""``AgentConfig(reply_schema="shared")``: one reply schema for both tasks, so a provider that
counts the schema as the start of the prompt (OpenAI) can cache one user's shared prefix; ids
are then checked by grounding alone."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.data.loading import align_catalog, load_events, load_items
from agent.llm.client import ChatClient, LLMConfig, build_request_body
from agent.llm.prompt_cache import OPENAI, PrefixCache, common_prefix, prompt_tokens_of
from agent.recommender import AgentConfig, RecommenderAgent
from agent.testing.loopback import LoopbackServer, Reply
from agent.testing.standin_model import respond
from tests.conftest import SAMPLE

MODEL = "gpt-4.1-mini"
USER = "u001"


@pytest.fixture(scope="module")
def frames() -> tuple[Any, Any]:
    items = load_items(SAMPLE / "items.csv")
    events = align_catalog(load_events(SAMPLE / "events.csv"), items)
    return events.frame, items.frame


def bodies(agent: RecommenderAgent, user: str) -> tuple[dict[str, Any], dict[str, Any]]:
    config = LLMConfig(model=MODEL, api_key="x")
    profile, recommend = agent.prepare_profile(user), agent.prepare_recommend(user, k=5)
    return (
        build_request_body(config, profile.prompt, profile.context.output_model()),
        build_request_body(config, recommend.prompt, recommend.context.output_model()),
    )


def test_shared_schema_makes_one_users_two_requests_share_a_cacheable_prefix(frames: tuple[Any, Any]) -> None:
    per_request = bodies(RecommenderAgent(*frames, None), USER)
    shared = bodies(RecommenderAgent(*frames, None, AgentConfig(reply_schema="shared")), USER)
    # Per-request enums: different schemas, so OpenAI's rule gives the pair nothing in common.
    assert per_request[0]["response_format"] != per_request[1]["response_format"]
    assert OPENAI.key(per_request[0]) != OPENAI.key(per_request[1])
    # Shared: the same schema (name included) and the messages agree through the history.
    assert shared[0]["response_format"] == shared[1]["response_format"]
    assert shared[0]["response_format"]["json_schema"]["name"] == "AgentReply"
    common = common_prefix(
        prompt_tokens_of(shared[0]["messages"], MODEL), prompt_tokens_of(shared[1]["messages"], MODEL)
    )
    assert OPENAI.cacheable(common, len(prompt_tokens_of(shared[1]["messages"], MODEL))) >= 1024
    assert shared[0]["messages"][0] == shared[1]["messages"][0]  # one system message for both tasks
    # Another user shares the schema and the system message too.
    other = bodies(RecommenderAgent(*frames, None, AgentConfig(reply_schema="shared")), "u002")
    assert other[0]["response_format"] == shared[0]["response_format"]
    assert other[0]["messages"][0] == shared[0]["messages"][0]


def test_shared_schema_end_to_end_reports_cached_tokens_and_grounds_ids(frames: tuple[Any, Any]) -> None:
    """Against a loopback server that caches by OpenAI's rules: the profile then the
    recommendation of one user; the second request is billed partly as cached, and an
    invented id or foreign evidence in the shared reply is dropped, not trusted."""
    invent = {"on": False}

    def responder(body: dict[str, Any]) -> Reply:
        reply = json.loads(respond(body))
        if reply.get("profile"):  # evidence the shown history does not hold
            reply["profile"]["interests"][0]["evidence"].append("SKU-NOT-IN-HISTORY")
        if invent["on"] and reply.get("ranking"):
            items = reply["ranking"]["items"]
            items.insert(0, {"item_id": "SKU-INVENTED", "score": 1.0, "reason": "x", "evidence": []})
            items[1]["evidence"] = [*items[1]["evidence"], "SKU-NOT-IN-HISTORY"]
        return Reply(content=json.dumps(reply))

    with LoopbackServer(responder=responder, prompt_cache=PrefixCache(OPENAI)) as server:
        config = LLMConfig(model=MODEL, api_key="x", base_url=server.base_url)
        with ChatClient(config) as client:
            agent = RecommenderAgent(*frames, client, AgentConfig(reply_schema="shared"))
            profile = agent.profile(USER)
            assert profile.profile.interests and profile.usage["cached_tokens"] == 0
            shown = set(agent.prepare_profile(USER).context.history_ids)
            assert profile.profile.interests[0].evidence  # the real evidence stays
            assert all(e in shown for i in profile.profile.interests for e in i.evidence)
            first = agent.recommend(USER, k=5)
            assert first.usage["cached_tokens"] >= 1024  # schema, system message and history
            assert first.usage["cached_tokens"] < first.usage["prompt_tokens"]
            invent["on"] = True
            second = agent.recommend(USER, k=5)
    ids = [item.item_id for item in second.items]
    assert "SKU-INVENTED" not in ids and len(ids) == 5
    assert second.grounding["invented_rate"] > 0
    assert all(e != "SKU-NOT-IN-HISTORY" for item in second.items for e in item.evidence)


def test_a_reply_that_fills_the_other_tasks_field_is_invalid() -> None:
    from pydantic import ValidationError

    from agent.prompting.schemas import shared_reply_model

    ranking = {"items": []}
    with pytest.raises(ValidationError, match="the task is profile"):
        shared_reply_model("profile").model_validate({"profile": None, "ranking": ranking})
    assert (
        shared_reply_model("recommend").model_validate({"profile": None, "ranking": ranking}).answer()
        is not None
    )

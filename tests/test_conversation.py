"""Conversational recommendation: recorded multi-turn chat, merge rules, hard filters, the CLI."""

from __future__ import annotations

import io
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import httpx2
import pandas as pd
import pytest

from agent import errors
from agent.chat.constraints import (
    Constraints,
    ConstraintUpdate,
    apply_constraints,
    merge_update,
    update_model,
)
from agent.chat.conversation import Conversation, ConversationState, ShownItem
from agent.cli.main import main
from agent.data.loading import align_catalog, load_events, load_items
from agent.llm.cassette import Cassette, ReplayTransport
from agent.llm.client import ChatClient, LLMConfig
from agent.profiles.store import open_store
from agent.prompting.schemas import strict_json_schema
from agent.recommender import AgentConfig, RecommenderAgent
from agent.retrieval.candidates import Candidate
from agent.testing import standin_chat
from agent.testing.loopback import Fault, LoopbackServer
from tests.conftest import ROOT, SAMPLE, chat_bodies

CASSETTE = ROOT / "fixtures" / "cassettes" / "chat.json"
USER = standin_chat.RECORDED_USER


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    items = load_items(SAMPLE / "items.csv")
    return align_catalog(load_events(SAMPLE / "events.csv"), items).frame, items.frame


def _client(url: str) -> ChatClient:
    return ChatClient(LLMConfig(model="gpt-4.1-mini", base_url=url, api_key="x"), sleep=lambda s: None)


def _update(**changes: Any) -> ConstraintUpdate:
    return ConstraintUpdate(**changes)


def _info(agent: RecommenderAgent, item_id: str) -> Any:
    info = agent.catalog.get(item_id)
    assert info is not None
    return info


# -- the recorded conversation (done-when criterion) -----------------------------------
def test_recorded_conversation_request_cheaper_no_more_x_then_a_like_becomes_feedback(
    frames: tuple[pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    transport = ReplayTransport(Cassette(CASSETTE))
    config = LLMConfig(model=standin_chat.RECORDED_MODEL, api_key="x")
    with (
        ChatClient(config, http_client=httpx2.Client(transport=transport)) as client,
        open_store(tmp_path / "store.sqlite") as store,
    ):
        agent = RecommenderAgent(*frames, client, store=store)
        chat = Conversation(agent)
        ask, refine, react = standin_chat.RECORDED_CONVERSATION

        first = chat.send(USER, ask)  # "a new board game for game night"
        assert first.extraction == "model" and len(first.recommendations) == 5
        assert {_info(agent, r.item_id).category for r in first.recommendations} == {"Board Games"}
        first_prices = [_info(agent, r.item_id).price for r in first.recommendations]

        second = chat.send(USER, refine, first.state)  # "... cheaper, and no more legacy campaigns"
        limit = round(statistics.median(first_prices) - 0.01, 2)
        assert second.constraints.price_max == limit
        assert "legacy campaigns" in second.constraints.excluded_terms
        assert second.recommendations and second.filtered_out["price"] > 0
        for rec in second.recommendations:
            info = _info(agent, rec.item_id)
            assert info.category == "Board Games" and info.price <= limit
            assert "legacy" not in f"{info.title} {info.description}".lower()
        ranking = [r["body"] for r in transport.requests if r["template"].startswith("recommend")][-1]
        assert "not legacy campaigns" in ranking["messages"][1]["content"]  # the request reaches the ranker

        third = chat.send(USER, react, second.state)  # "I like the second one"
        (event,) = third.feedback
        assert (event.item_id, event.signal, event.recorded) == (
            second.recommendations[1].item_id,
            "like",
            True,
        )
        assert event.recommendation_id == second.result.recommendation_id if second.result else False
        assert third.result is None and third.usage["requests"] == 1  # a like alone: no new ranking
        assert third.text.startswith("Noted: liked")
        stored = store.feedback(USER)
    assert [(f.item_id, f.signal, f.recommendation_id) for f in stored] == [
        (event.item_id, "like", event.recommendation_id)
    ]
    assert third.state.feedback == [event]
    assert USER not in json.dumps([r["body"] for r in transport.requests])


def test_live_conversation_dislike_want_new_and_start_over(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    with LoopbackServer(responder=standin_chat.respond) as srv, _client(srv.base_url) as client:
        agent = RecommenderAgent(*frames, client)
        chat = Conversation(agent, k=3)
        first = chat.send("u002", "I'm looking for a yoga mat")
        rejected = first.recommendations[0].item_id
        second = chat.send("u002", "not that one", first.state)
        assert [(e.item_id, e.signal, e.recorded) for e in second.feedback] == [(rejected, "dislike", False)]
        assert rejected in second.constraints.excluded_items
        assert rejected not in [r.item_id for r in second.recommendations]
        third = chat.send("u002", "show me something else", second.state)
        assert not {r.item_id for r in third.recommendations} & set(second.state.shown_before)
        fourth = chat.send("u002", "start over. I'm looking for a yoga mat", third.state)
        assert fourth.constraints.excluded_items == [rejected]  # rejections outlive "start over"
        assert rejected not in [r.item_id for r in fourth.recommendations]
        assert len(fourth.state.turns) == 8


def test_state_round_trips_as_json_and_is_bound_to_one_user(
    frames: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    with LoopbackServer(responder=standin_chat.respond) as srv, _client(srv.base_url) as client:
        chat = Conversation(RecommenderAgent(*frames, client), k=2)
        first = chat.send("u003", "I'm looking for running shoes under 120")
        stored = ConversationState.model_validate_json(first.state.model_dump_json())
        again = chat.send("u003", "cheaper", stored)
        assert again.constraints.price_max is not None and again.constraints.price_max < 120
        with pytest.raises(errors.ConfigError, match="another user"):
            chat.send("u004", "hello", stored)
        cold = chat.send("nobody", "hello")  # a new user gets cold-start items (issue 20, item 15)
        assert all(r.source == "cold_start" for r in cold.recommendations)
        strict = Conversation(RecommenderAgent(*frames, client, AgentConfig(cold_start=False)), k=2)
        with pytest.raises(errors.UnknownUserError):
            strict.send("nobody", "hello")


def test_messages_are_scrubbed_before_they_reach_the_model(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    with LoopbackServer(responder=standin_chat.respond) as srv, _client(srv.base_url) as client:
        reply = Conversation(RecommenderAgent(*frames, client)).send(
            USER, "I'm looking for a board game, mail me at jo.doe@example.com"
        )
        sent = json.dumps([r.body for r in srv.requests])
    assert "jo.doe@example.com" not in sent and "[email]" in sent
    assert "example.com" not in json.dumps(reply.state.model_dump(mode="json"))


def test_a_conversation_carries_its_state_across_turns(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    conversation = Conversation(RecommenderAgent(*frames, None))
    first = conversation.send(USER, "coffee kettle")
    second = conversation.send(USER, "something else", first.state)
    assert first.recommendations and len(second.state.turns) == 4


# -- degraded paths --------------------------------------------------------------------
def test_without_a_model_the_message_is_a_search_query(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    reply = Conversation(RecommenderAgent(*frames, None), k=3).send(USER, "coffee kettle")
    assert reply.extraction == "fallback" and reply.constraints.request == "coffee kettle"
    assert "No model available" in reply.text
    assert [r.source for r in reply.recommendations] == ["fallback"] * 3


def test_extraction_failure_degrades_instead_of_raising(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    faults = [Fault.http(503)] * 4  # the first request and its 3 retries
    with (
        LoopbackServer(responder=standin_chat.respond, faults=faults) as srv,
        _client(srv.base_url) as client,
    ):
        reply = Conversation(RecommenderAgent(*frames, client), k=3).send(USER, "a board game")
        templates = [r.headers.get("x-recagent-template", "")[:9] for r in srv.requests]
    assert reply.extraction == "fallback" and len(reply.recommendations) == 3
    assert reply.recommendations[0].source == "llm"  # ranking still used the model
    assert templates.count("extract_c") == 4 and templates[-1].startswith("recommend")


def test_nothing_left_after_filters_says_so_without_ranking(
    frames: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    with LoopbackServer(responder=standin_chat.respond) as srv, _client(srv.base_url) as client:
        reply = Conversation(RecommenderAgent(*frames, client)).send(
            USER, "I'm looking for a board game under 1"
        )
        bodies = chat_bodies(srv)
    assert reply.result is None and not reply.recommendations
    assert "No products match all of that" in reply.text and "price" in reply.text
    assert len(bodies) == 1  # extraction only


# -- merge rules and hard filters (pure code) ------------------------------------------
SHOWN = [
    ShownItem(n=i + 1, item_id=f"I{i}", title=f"T{i}", price=p) for i, p in enumerate([10.0, 30.0, 50.0])
]


def test_cheaper_means_below_the_median_of_what_was_shown() -> None:
    merged = merge_update(Constraints(), _update(cheaper=True), SHOWN)
    assert merged.price_max == 29.99
    assert merge_update(merged, _update(cheaper=True), SHOWN[:1]).price_max == 9.99
    assert merge_update(merged, _update(cheaper=True, price_max=25.0), SHOWN).price_max == 25.0
    assert (
        merge_update(Constraints(), _update(cheaper=True, price_max=5.0), SHOWN, has_prices=False).price_max
        is None
    )


def test_merge_keeps_wanted_and_unwanted_apart_and_start_over_keeps_rejections() -> None:
    c = merge_update(Constraints(), _update(request="games", add_categories=["Board Games"]), [])
    c = merge_update(
        c, _update(exclude_categories=["Board Games"], excluded_terms=["  Legacy  Campaign "]), []
    )
    assert c.categories == [] and c.excluded_categories == ["Board Games"]
    assert c.excluded_terms == ["legacy campaign"] and c.request == "games"
    c = merge_update(c, _update(required_terms=["legacy campaign"]), [])
    assert c.required_terms == ["legacy campaign"] and c.excluded_terms == []
    c = merge_update(c, _update(reactions=[{"item_id": "I0", "reaction": "dislike"}]), SHOWN)
    c = merge_update(c, _update(reactions=[{"item_id": "I1", "reaction": "like"}]), SHOWN)
    assert c.excluded_items == ["I0"] and c.more_like == ["I1"]
    fresh = merge_update(c, _update(start_over=True, request="tents"), SHOWN)
    assert fresh == Constraints(request="tents", excluded_items=["I0"])


def test_hard_filters_drop_by_reason(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    agent = RecommenderAgent(*frames, None)
    ids = ["SKU-10004", "SKU-10014", "SKU-10028", "SKU-10001", "SKU-10210"]
    candidates = [Candidate(item_id=i, score=1.0, sources={}) for i in ids]
    constraints = Constraints(
        categories=["board games"],
        excluded_terms=["legacy campaigns"],
        price_max=40.0,
        excluded_items=["SKU-10210"],
    )
    kept, dropped = apply_constraints(candidates, constraints, agent)
    assert [c.item_id for c in kept] == ["SKU-10028"]  # Tinker Towns, 28.99
    assert dropped == {"excluded_term": 1, "price": 1, "category": 1, "rejected": 1}
    required = Constraints(required_terms=["two-player"])
    assert [c.item_id for c in apply_constraints(candidates, required, agent)[0]] == [
        "SKU-10028",
        "SKU-10210",
    ][:1]
    assert len(apply_constraints(candidates, Constraints(), agent, limit=2)[0]) == 2


def test_update_schema_enums_are_what_the_model_was_shown() -> None:
    model = update_model(["Board Games", "Books"], ["I0", "H1"], ["I0"])
    schema = json.dumps(strict_json_schema(model))
    assert '"enum": ["Board Games", "Books"]' in schema and '"enum": ["I0", "H1"]' in schema
    assert '"const": "I0"' in schema  # reactions only to shown items (a one-value enum)
    with pytest.raises(ValueError):
        model.model_validate(
            {**ConstraintUpdate().model_dump(), "reactions": [{"item_id": "H1", "reaction": "like"}]}
        )


# -- the CLI ---------------------------------------------------------------------------
def test_cli_chat_reads_piped_lines(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = "I'm looking for a new board game for game night\n\nsomething cheaper\nI like the first one\nquit\nignored\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    db = tmp_path / "chat.sqlite"
    with LoopbackServer(responder=standin_chat.respond) as srv:
        args = ["chat", "--user", USER, "-k", "3", "--json", "--base-url", srv.base_url, "--db", str(db)]
        assert main(args) == 0
    replies = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(replies) == 3
    assert len(replies[0]["recommendations"]) == 3 and "price_max" in replies[1]["constraints"]
    assert replies[2]["feedback"][0]["recorded"] is True
    with open_store(db) as store:
        assert [f.signal for f in store.feedback(USER)] == ["like"]


def test_cli_chat_text_mode_and_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("coffee kettle\n"))
    assert main(["chat", "--user", USER, "--backend", "fallback", "--db", ":memory:"]) == 0
    assert "Here are 5 products" in capsys.readouterr().out
    # a user with no events is served cold-start items (issue 20, item 15), not an error
    assert main(["chat", "--user", "nobody", "--backend", "fallback", "--db", ":memory:"]) == 0
    assert main(["chat", "--user", USER, "--backend", "fallback", "--assistant", "--db", ":memory:"]) == 2
    assert main(["chat", "--user", USER, "--backend", "fallback", "-k", "0"]) == 2
    assert (
        main(["chat", "--user", USER, "--events", str(SAMPLE / "events.csv"), "--backend", "fallback"]) == 2
    )
    errs = capsys.readouterr().err.strip().splitlines()
    assert len(errs) == 3 and all(line.startswith("recagent: error:") for line in errs)

"""Profile refinement: the deterministic merge (no model at all), thresholds, the delta schema,
and the refine call end to end against recorded and loopback responses."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from pydantic import ValidationError

from agent import errors
from agent.cli.feedback import record_scripted_reactions
from agent.cli.main import make_client
from agent.data.loading import align_catalog, load_events, load_items
from agent.llm.client import ChatClient, LLMConfig
from agent.profiles.feedback import StoredFeedback
from agent.profiles.refine import (
    InterestUpdate,
    ProfileDelta,
    RefineConfig,
    delta_model,
    diff_states,
    merge,
    worth_a_call,
)
from agent.profiles.store import SQLiteStore
from agent.profiles.versions import ProfileDraft, initial_state
from agent.prompting.schemas import BehaviorPatterns, BehaviorProfile, Dislike, Interest
from agent.recommender import RecommenderAgent
from agent.testing.loopback import LoopbackServer, Reply, ScriptedResponder
from tests.conftest import SAMPLE, chat_bodies

T0 = datetime(2026, 9, 1, 12, 0, tzinfo=UTC)


def profile(**strengths: float) -> BehaviorProfile:
    return BehaviorProfile(
        summary="Plays board games.",
        interests=[
            Interest(name=n.replace("_", " "), strength=s, evidence=["H1"]) for n, s in strengths.items()
        ],
        dislikes=[Dislike(name="party games", evidence=["H2"])],
        patterns=BehaviorPatterns(
            price_sensitivity="medium",
            typical_price_min=20.0,
            typical_price_max=90.0,
            recent_focus=None,
            exploration="mixed",
        ),
    )


def reaction(
    seq: int, signal: str, item: str = "I1", value: float | None = None, days: float = 0
) -> StoredFeedback:
    return StoredFeedback(
        seq=seq,
        feedback_id=f"fb{seq}",
        user_id="u1",
        item_id=item,
        signal=signal,  # type: ignore[arg-type]
        value=value,
        comment="nice" if signal == "comment" else None,
        timestamp=T0 + timedelta(days=days),
    )


def update(name: str, action: str, amount: float, *evidence: str) -> InterestUpdate:
    return InterestUpdate(name=name, action=action, amount=amount, evidence=list(evidence), rationale="why")  # type: ignore[arg-type]


def strengths(state: Any) -> dict[str, float]:
    return {i.name: i.strength for i in state.profile.interests}


# -- merge: no model ---------------------------------------------------------------------
def test_merge_adds_strengthens_and_weakens_within_bounds() -> None:
    state = initial_state(profile(board_games=0.9, coffee=0.4, books=0.2), T0)
    reactions = {"e1": reaction(1, "like"), "e2": reaction(2, "dislike", "I2")}
    delta = ProfileDelta(
        interests=[
            update("Board Games", "strengthen", 0.5, "e1"),  # case-insensitive match, clamped at 1
            update("coffee", "weaken", 0.9, "e2"),  # at most max_step per refinement
            update("strategy games", "add", 0.95, "e1"),  # new interests start at most at the cap
            update("books", "weaken", 0.3, "e2"),  # below min_strength: removed
        ],
        dislikes=[],
        summary=None,
    )
    new, changes = merge(state, delta, reactions, RefineConfig(max_step=0.3, new_interest_cap=0.6))
    assert strengths(new) == {"board games": 1.0, "coffee": 0.1, "strategy games": 0.6}
    kinds = [(c.kind, c.name) for c in changes]
    assert ("interest_strengthened", "board games") in kinds
    assert ("interest_weakened", "coffee") in kinds
    assert ("interest_added", "strategy games") in kinds
    assert ("interest_removed", "books") in kinds
    added = next(c for c in changes if c.kind == "interest_added")
    assert added.evidence == ["fb1"] and added.rationale == "why"
    assert new.profile.interests[-1].evidence == ["I1"]  # item ids in the profile, not feedback ids
    assert strengths(state) == {"board games": 0.9, "coffee": 0.4, "books": 0.2}  # input untouched


def test_several_updates_of_one_interest_move_it_by_at_most_max_step() -> None:
    state = initial_state(profile(coffee=0.5), T0)
    reactions = {"e1": reaction(1, "like"), "e2": reaction(2, "like", "I2")}
    delta = ProfileDelta(
        interests=[update("coffee", "strengthen", 0.3, "e1"), update("coffee", "strengthen", 0.3, "e2")],
        dislikes=[],
        summary=None,
    )
    new, _ = merge(state, delta, reactions, RefineConfig(max_step=0.2))
    assert strengths(new) == {"coffee": 0.7}


def test_changes_without_evidence_are_ignored_and_recorded() -> None:
    state = initial_state(profile(coffee=0.5), T0)
    delta = ProfileDelta(
        interests=[update("coffee", "strengthen", 0.3), update("tea", "weaken", 0.1, "e1")],
        dislikes=[],
        summary=None,
    )
    new, changes = merge(state, delta, {"e1": reaction(1, "click")})
    assert strengths(new) == {"coffee": 0.5}
    assert [(c.kind, c.rationale) for c in changes] == [
        ("ignored", "cites no reaction"),
        ("ignored", "weakens an unknown interest"),
    ]


def test_blocking_reactions_block_their_items_whatever_the_model_says() -> None:
    state = initial_state(profile(coffee=0.5), T0)
    reactions = {
        "e1": reaction(1, "dislike", "A"),
        "e2": reaction(2, "not_interested", "B"),
        "e3": reaction(3, "rating", "C", value=2),
        "e4": reaction(4, "rating", "D", value=4),
        "e5": reaction(5, "skip", "E"),
        "e6": reaction(6, "dislike", "A"),  # already blocked: once only
    }
    empty = ProfileDelta(interests=[], dislikes=[], summary=None)
    new, changes = merge(state, empty, reactions)
    assert new.blocked_ids() == ["A", "B", "C"]
    assert [c.name for c in changes if c.kind == "item_blocked"] == ["A", "B", "C"]
    again, changes = merge(new, empty, {"e7": reaction(7, "dislike", "B")})
    assert again.blocked_ids() == ["A", "B", "C"] and changes == []


def test_dislikes_are_added_once_with_item_evidence() -> None:
    state = initial_state(profile(coffee=0.5), T0)
    reactions = {"e1": reaction(1, "dislike", "X")}
    delta = ProfileDelta(
        interests=[],
        dislikes=[
            {"name": "Party Games", "evidence": ["e1"], "rationale": "again"},  # type: ignore[list-item]
            {"name": "two-player card games", "evidence": ["e1"], "rationale": "rejected"},  # type: ignore[list-item]
        ],
        summary="Plays strategy games, not party games.",
    )
    new, changes = merge(state, ProfileDelta.model_validate(delta.model_dump()), reactions)
    assert [(d.name, d.evidence) for d in new.profile.dislikes] == [
        ("party games", ["H2", "X"]),
        ("two-player card games", ["X"]),
    ]
    assert [c.kind for c in changes] == ["dislike_added", "item_blocked", "summary_changed"]
    assert new.profile.summary == "Plays strategy games, not party games."


def test_stale_interests_decay_on_the_reactions_clock_without_double_counting() -> None:
    config = RefineConfig(stale_after_days=30, half_life_days=100, min_strength=0.05)
    state = initial_state(profile(board_games=0.8, coffee=0.8), T0)
    empty = ProfileDelta(interests=[], dislikes=[], summary=None)
    keep_coffee = ProfileDelta(
        interests=[update("coffee", "strengthen", 0.0, "e1")], dislikes=[], summary=None
    )

    # 130 days later: board games is stale since day 30, so it decays for 100 days (one half-life).
    once, changes = merge(state, keep_coffee, {"e1": reaction(1, "like", days=130)}, config)
    assert strengths(once) == {"board games": 0.4, "coffee": 0.8}
    assert [c.kind for c in changes if c.name == "board games"] == ["interest_decayed"]

    # The same 130 days in two steps (day 80, then day 130) decays exactly as much.
    step1, _ = merge(state, empty, {"e1": reaction(1, "click", days=80)}, config)
    step2, _ = merge(step1, empty, {"e2": reaction(2, "click", days=130)}, config)
    assert strengths(step2)["board games"] == pytest.approx(0.4, abs=0.002)

    # Within stale_after_days nothing decays; an interest below min_strength goes.
    fresh, changes = merge(state, empty, {"e1": reaction(1, "click", days=10)}, config)
    assert strengths(fresh) == strengths(state) and changes == []
    years, changes = merge(state, empty, {"e1": reaction(1, "click", days=30 + 500)}, config)
    assert strengths(years) == {}
    assert {c.kind for c in changes} == {"interest_decayed", "interest_removed"}


def test_interest_cap_keeps_the_strongest() -> None:
    state = initial_state(profile(a=0.9, b=0.8, c=0.3), T0)
    delta = ProfileDelta(interests=[update("d", "add", 0.5, "e1")], dislikes=[], summary=None)
    new, changes = merge(state, delta, {"e1": reaction(1, "like")}, RefineConfig(max_interests=3))
    assert strengths(new) == {"a": 0.9, "b": 0.8, "d": 0.5}
    assert ("interest_removed", "c") in [(c.kind, c.name) for c in changes]


def test_diff_states_lists_what_changed() -> None:
    old = initial_state(profile(board_games=0.9, coffee=0.4), T0)
    reactions = {"e1": reaction(1, "like"), "e2": reaction(2, "dislike", "Z")}
    delta = ProfileDelta(
        interests=[update("coffee", "weaken", 0.1, "e2"), update("tea", "add", 0.3, "e1")],
        dislikes=[{"name": "decaf", "evidence": ["e2"], "rationale": "r"}],  # type: ignore[list-item]
        summary="Now also tea.",
    )
    new, _ = merge(old, ProfileDelta.model_validate(delta.model_dump()), reactions)
    diff = [(c.kind, c.name, c.before, c.after) for c in diff_states(old, new)]
    assert diff == [
        ("interest_weakened", "coffee", 0.4, 0.3),
        ("interest_added", "tea", None, 0.3),
        ("dislike_added", "decaf", None, None),
        ("item_blocked", "Z", None, None),
        ("summary_changed", "summary", None, None),
    ]
    assert diff_states(new, new) == []


# -- thresholds and schema ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("signals", "worth"),
    [
        ([], False),
        (["click"], False),
        (["skip"] * 19, False),
        (["click"] * 5, True),
        (["dislike"], True),
        (["cart", "cart"], True),
        (["comment"], True),
    ],
)
def test_a_refinement_call_needs_enough_new_evidence(signals: list[str], worth: bool) -> None:
    events = [reaction(n, s) for n, s in enumerate(signals, start=1)]
    assert worth_a_call(events, RefineConfig()) is worth


def test_delta_model_only_accepts_the_reaction_ids_shown() -> None:
    model = delta_model(["e1", "e2"])
    good = {
        "interests": [],
        "dislikes": [{"name": "x", "evidence": ["e2"], "rationale": "r"}],
        "summary": None,
    }
    assert model.model_validate(good).dislikes[0].evidence == ["e2"]
    bad = {**good, "dislikes": [{"name": "x", "evidence": ["e9"], "rationale": "r"}]}
    with pytest.raises(ValidationError):
        model.model_validate(bad)
    with pytest.raises(ValidationError):  # strengths are bounded in the schema too
        model.model_validate(
            {
                **good,
                "interests": [{"name": "a", "action": "add", "amount": 3, "evidence": [], "rationale": ""}],
            }
        )


# -- the refine call ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    items = load_items(SAMPLE / "items.csv")
    return align_catalog(load_events(SAMPLE / "events.csv"), items).frame, items.frame


@pytest.fixture
def store() -> Iterator[SQLiteStore]:
    with SQLiteStore(":memory:") as s:
        yield s


def test_recorded_refinement_replays_the_demo_loop(
    frames: tuple[pd.DataFrame, pd.DataFrame], store: SQLiteStore
) -> None:
    """The refine exchange recorded in fixtures/cassettes/demo.json (stand-in model) replays."""
    args = argparse.Namespace(
        backend="replay", cassette=None, model=None, base_url=None, timeout=None, record=None
    )
    client, _ = make_client(args, default_backend="replay")
    assert client is not None
    agent = RecommenderAgent(*frames, client, store=store)
    built = agent.profile("u001")
    first = agent.recommend("u001", k=10, profile=built.profile)
    reactions = record_scripted_reactions(agent, first)
    result = agent.refine("u001")
    assert result.status == "refined" and result.previous_version == 1 and result.pending == 0
    version = result.version
    assert version is not None and version.version == 2 and version.producer == "refine"
    assert version.template_version and version.template_version.startswith("refine_profile@")
    assert len(version.evidence) == len(reactions) == 4
    kinds = {c.kind for c in version.changes}
    assert {"interest_added", "dislike_added", "item_blocked", "summary_changed"} <= kinds
    disliked = [item for item, signal, _ in reactions if signal == "dislike"]
    assert version.state.blocked_ids() == disliked
    second = agent.recommend("u001", k=10)  # uses the stored (refined) profile: recorded too
    assert not set(disliked) & {r.item_id for r in second.items}
    assert second.items[0].source == "llm"


@pytest.fixture
def standin_agent(
    frames: tuple[pd.DataFrame, pd.DataFrame], store: SQLiteStore, standin_server: LoopbackServer
) -> Iterator[RecommenderAgent]:
    client = ChatClient(LLMConfig(base_url=standin_server.base_url, api_key="test"))
    yield RecommenderAgent(*frames, client, store=store)
    client.close()


def test_no_new_evidence_costs_nothing(
    standin_agent: RecommenderAgent, standin_server: LoopbackServer
) -> None:
    agent = standin_agent
    assert agent.refine("u003").status == "skipped"  # no profile, no feedback: not even a profile call
    assert chat_bodies(standin_server) == []
    agent.profile("u003")
    item = agent.recommend("u003", k=3).items[0].item_id
    agent.feedback("u003", item, "click", timestamp=T0)
    skipped = agent.refine("u003")
    assert skipped.status == "skipped" and "below min_evidence_weight" in skipped.reason
    assert skipped.pending == 1
    calls = len(chat_bodies(standin_server))
    agent.feedback("u003", item, "like", timestamp=T0)
    assert agent.refine("u003").status == "refined"
    assert len(chat_bodies(standin_server)) == calls + 1
    assert agent.refine("u003").status == "skipped"  # everything consumed
    assert len(chat_bodies(standin_server)) == calls + 1


def test_refine_prompt_has_no_user_id_no_uuid_and_scrubbed_comments(
    standin_agent: RecommenderAgent, standin_server: LoopbackServer
) -> None:
    agent = standin_agent
    agent.profile("u002")
    rec = agent.recommend("u002", k=4)
    item = rec.items[1].item_id
    stored = agent.feedback(
        "u002", item, "comment", comment="Great! mail me at joerg.mueller@beispiel.de", timestamp=T0
    )
    agent.refine("u002")
    body = chat_bodies(standin_server)[-1]
    user_message = body["messages"][-1]["content"]
    assert '"id": "e1"' in user_message and '"recommended_rank": 2' in user_message
    assert "[email]" in user_message
    sent = json.dumps(body)
    assert not re.search(r"(?<![\w\\])u002(?!\w)", sent)  # (\u0026 is an escaped "&", not a user)
    for secret in (stored.feedback_id, rec.recommendation_id, "beispiel.de"):
        assert secret not in sent
    enum = body["response_format"]["json_schema"]["schema"]["$defs"]["DislikeUpdate"]["properties"][
        "evidence"
    ]
    assert enum["items"].get("enum", [enum["items"].get("const")]) == ["e1"]  # one id: pydantic says const


def test_a_failed_refinement_call_leaves_the_previous_version_current(
    frames: tuple[pd.DataFrame, pd.DataFrame], store: SQLiteStore
) -> None:
    with LoopbackServer(responder=ScriptedResponder(["{not json"] * 3)) as server:
        client = ChatClient(LLMConfig(base_url=server.base_url, api_key="test", max_reasks=2))
        agent = RecommenderAgent(*frames, client, store=store)
        store.save_profile(
            ProfileDraft(user_id="u004", state=initial_state(profile(coffee=0.5), T0), producer="import"),
            expected_version=0,
        )
        agent.feedback("u004", "SKU-10001", "like", timestamp=T0)
        with pytest.raises(errors.InvalidReplyError):
            agent.refine("u004")
        client.close()
    assert [v.version for v in store.profile_history("u004")] == [1]
    assert len(store.feedback("u004", after_seq=store.latest_profile("u004").feedback_upto)) == 1  # type: ignore[union-attr]


def test_a_reply_citing_unknown_reactions_is_re_asked(
    frames: tuple[pd.DataFrame, pd.DataFrame], store: SQLiteStore
) -> None:
    tea: dict[str, Any] = {
        "name": "tea",
        "action": "add",
        "amount": 0.4,
        "evidence": ["e7"],
        "rationale": "r",
    }
    bad = {"interests": [tea], "dislikes": [], "summary": None}
    good = {**bad, "interests": [{**tea, "evidence": ["e1"]}]}
    with LoopbackServer(
        responder=ScriptedResponder([Reply(content=json.dumps(bad)), Reply(content=json.dumps(good))])
    ) as server:
        client = ChatClient(LLMConfig(base_url=server.base_url, api_key="test"))
        agent = RecommenderAgent(*frames, client, store=store)
        store.save_profile(
            ProfileDraft(user_id="u005", state=initial_state(profile(coffee=0.5), T0), producer="import"),
            expected_version=0,
        )
        agent.feedback("u005", "SKU-10003", "like", timestamp=T0)
        result = agent.refine("u005")
        client.close()
    assert result.usage["requests"] == 2
    assert result.version is not None and strengths(result.version.state)["tea"] == 0.4

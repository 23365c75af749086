"""Feedback events: validation, references, hard filters (a dislike never comes back), the CLI
commands, and concurrent refinement of one user through the agent."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from agent import errors
from agent.cli.main import main
from agent.data.loading import align_catalog, load_events, load_items
from agent.llm.client import ChatClient, LLMConfig
from agent.profiles.feedback import blocks_item, make_event
from agent.profiles.store import SQLiteStore
from agent.recommender import RecommenderAgent
from agent.retrieval.candidates import Candidate
from agent.testing.loopback import LoopbackServer
from tests.conftest import SAMPLE, chat_bodies

T0 = datetime(2026, 9, 1, tzinfo=UTC)
DATA = ["--events", str(SAMPLE / "events.csv"), "--items", str(SAMPLE / "items.csv")]


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    items = load_items(SAMPLE / "items.csv")
    return align_catalog(load_events(SAMPLE / "events.csv"), items).frame, items.frame


@pytest.fixture
def store() -> Iterator[SQLiteStore]:
    with SQLiteStore(":memory:") as s:
        yield s


@pytest.fixture
def agent(frames: tuple[pd.DataFrame, pd.DataFrame], store: SQLiteStore) -> RecommenderAgent:
    return RecommenderAgent(*frames, None, store=store)  # no model: retriever + hard filters


# -- events ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"signal": "rating"}, "a rating needs a value from 1 to 5"),
        ({"signal": "rating", "value": 7}, "a rating needs a value from 1 to 5"),
        ({"signal": "like", "value": 3}, "takes no value"),
        ({"signal": "purchase", "value": -5}, "price paid"),
        ({"signal": "comment"}, "a comment needs text"),
        ({"signal": "comment", "comment": "   "}, "a comment needs text"),
        ({"signal": "click", "comment": "hm"}, "cannot carry a comment"),
        ({"signal": "love"}, "signal"),
        ({"signal": "like", "timestamp": datetime(2026, 9, 1)}, "needs a time zone"),
        ({"signal": "like", "user_id": ""}, "user_id"),
    ],
)
def test_malformed_events_are_clear_data_errors(fields: dict[str, object], fragment: str) -> None:
    with pytest.raises(errors.InvalidFeedbackError, match=fragment) as caught:
        make_event(**{"user_id": "u001", "item_id": "SKU-10001", **fields})
    assert caught.value.exit_code == 3


def test_valid_events_and_which_ones_block() -> None:
    rating = make_event(user_id="u1", item_id="A", signal="rating", value=4.5, timestamp=T0)
    assert rating.value == 4.5 and rating.explicit and rating.feedback_id.startswith("fb_")
    assert make_event(user_id="u1", item_id="A", signal="purchase", value=19.9).value == 19.9
    assert not make_event(user_id="u1", item_id="A", signal="skip").explicit
    assert [blocks_item(s, v) for s, v in [("dislike", None), ("not_interested", None), ("rating", 2.0)]] == [
        True
    ] * 3
    assert [blocks_item(s, v) for s, v in [("rating", 3.0), ("skip", None), ("like", None)]] == [False] * 3


def test_references_are_checked_and_unlinked_feedback_is_linked(agent: RecommenderAgent) -> None:
    rec = agent.recommend("u001", k=5)
    shown = rec.items[2].item_id
    with pytest.raises(errors.UnknownUserError, match="unknown user 'nobody'"):
        agent.feedback("nobody", shown, "like")
    with pytest.raises(errors.UnknownItemError, match="unknown item 'SKU-99999'"):
        agent.feedback("u001", "SKU-99999", "like")
    with pytest.raises(errors.UnknownRecommendationError, match="unknown recommendation id 'r-nope'"):
        agent.feedback("u001", shown, "like", recommendation_id="r-nope")
    with pytest.raises(errors.UnknownRecommendationError, match="served to another user"):
        agent.feedback("u002", shown, "like", recommendation_id=rec.recommendation_id)
    not_shown = next(
        i for i in ("SKU-10001", "SKU-10002", "SKU-10003") if i not in {r.item_id for r in rec.items}
    )
    with pytest.raises(errors.UnknownRecommendationError, match="did not include item"):
        agent.feedback("u001", not_shown, "like", recommendation_id=rec.recommendation_id)
    linked = agent.feedback("u001", shown, "click")
    assert linked.recommendation_id == rec.recommendation_id and linked.seq == 1
    organic = agent.feedback("u001", not_shown, "like")
    assert organic.recommendation_id is None


def test_feedback_needs_a_store(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    with pytest.raises(errors.ConfigError, match="needs a profile store"):
        RecommenderAgent(*frames, None).feedback("u001", "SKU-10001", "like")


# -- hard filters ------------------------------------------------------------------------
def test_a_disliked_item_is_never_recommended_again(agent: RecommenderAgent, store: SQLiteStore) -> None:
    for user in ("u001", "u007", "u020"):
        first = agent.recommend(user, k=10)
        blocked = {
            agent.feedback(user, first.items[0].item_id, "dislike", timestamp=T0).item_id,
            agent.feedback(user, first.items[3].item_id, "not_interested", timestamp=T0).item_id,
            agent.feedback(user, first.items[5].item_id, "rating", value=1, timestamp=T0).item_id,
        }
        for k in (1, 10, 60):  # however deep the list goes
            assert not blocked & {r.item_id for r in agent.recommend(user, k=k).items}
        for query in ("board game", "coffee", "tent"):
            assert not blocked & {r.item_id for r in agent.recommend(user, k=20, query=query).items}
        # even a hand-made candidate set that contains them (e.g. an evaluation set)
        forced = [Candidate(item_id=i, score=1.0, sources={}) for i in sorted(blocked)]
        forced.append(Candidate(item_id=first.items[1].item_id, score=0.5, sources={}))
        ranked = agent.rank_candidates(user, forced, k=4)
        assert [r.item_id for r in ranked.items] == [first.items[1].item_id]
        assert [r.rank for r in ranked.items] == [1]
    served = store.recommendation(first.recommendation_id)
    assert served is not None and served.items[0].source == "fallback"


def test_the_model_never_sees_blocked_items(
    frames: tuple[pd.DataFrame, pd.DataFrame], store: SQLiteStore, standin_server: LoopbackServer
) -> None:
    client = ChatClient(LLMConfig(base_url=standin_server.base_url, api_key="test"))
    agent = RecommenderAgent(*frames, client, store=store)
    first = agent.recommend("u004", k=10)
    disliked = [first.items[0].item_id, first.items[1].item_id]
    for item in disliked:
        agent.feedback("u004", item, "dislike", timestamp=T0)
    second = agent.recommend("u004", k=10)
    body = json.dumps(chat_bodies(standin_server)[-1])
    assert all(item not in body for item in disliked)  # not a candidate, not in the enum
    assert not set(disliked) & {r.item_id for r in second.items}
    assert len(second.items) == 10
    client.close()


# -- concurrency through the agent -------------------------------------------------------
def test_concurrent_feedback_and_refinement_of_one_user_lose_nothing(
    frames: tuple[pd.DataFrame, pd.DataFrame], tmp_path: Path, standin_server: LoopbackServer
) -> None:
    """Several threads (each its own store on one file, as separate workers would) each record a
    reaction and refine the same user at once. Whatever the interleaving, every reaction ends up
    in exactly one version's evidence and the versions are contiguous."""
    db = tmp_path / "shared.sqlite"
    client = ChatClient(LLMConfig(base_url=standin_server.base_url, api_key="test"))
    with SQLiteStore(db) as setup:
        RecommenderAgent(*frames, client, store=setup).profile("u001")
    items = ["SKU-10001", "SKU-10004", "SKU-10003", "SKU-10002", "SKU-10005"]
    failures: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with SQLiteStore(db) as mine:
                agent = RecommenderAgent(*frames, client, store=mine)
                agent.feedback(
                    "u001", items[n], "like" if n % 2 else "dislike", timestamp=T0 + timedelta(hours=n)
                )
                agent.refine("u001")
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    assert not failures, failures
    with SQLiteStore(db) as check:
        history = check.profile_history("u001")
        all_feedback = check.feedback("u001")
    assert [v.version for v in history] == list(range(1, len(history) + 1))
    evidence = [fid for v in history for fid in v.evidence]
    assert sorted(evidence) == sorted(f.feedback_id for f in all_feedback)  # each exactly once
    assert history[-1].feedback_upto == max(f.seq for f in all_feedback)
    assert sorted(history[-1].state.blocked_ids()) == sorted(items[n] for n in range(0, len(items), 2))


# -- command line ------------------------------------------------------------------------
def test_cli_recommend_feedback_and_profile_history(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", *DATA, "--user", "u001", "--backend", "fallback", "-k", "5"]) == 0
    rec = json.loads(capsys.readouterr().out)  # served and stored in $RECAGENT_DB
    item = rec["items"][0]["item_id"]
    args = ["feedback", *DATA, "--user", "u001", "--item", item, "--signal", "dislike", "--rec-id"]
    assert main([*args, rec["recommendation_id"], "--timestamp", "2026-09-01T10:00:00Z"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["feedback"]["recommendation_id"] == rec["recommendation_id"]
    assert out["feedback"]["timestamp"].startswith("2026-09-01T10:00:00")
    assert out["blocked_items"] == [item]
    assert main(["recommend", *DATA, "--user", "u001", "--backend", "fallback", "-k", "5"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert item not in [i["item_id"] for i in again["items"]]

    assert main(["profile", "history", "--user", "u001"]) == 3  # no profile built yet
    db = os.environ["RECAGENT_DB"]
    assert capsys.readouterr().err.strip() == f"recagent: error: no stored profile for user 'u001' in {db}"


def test_cli_profile_show_history_diff_after_a_refinement(
    standin_server: LoopbackServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", standin_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-loopback-secret")
    assert main(["profile", *DATA, "--user", "u003"]) == 0  # builds and stores version 1
    assert json.loads(capsys.readouterr().out)["version"] == 1
    assert main(["recommend", *DATA, "--user", "u003", "-k", "4"]) == 0
    rec = json.loads(capsys.readouterr().out)
    first, last = rec["items"][0]["item_id"], rec["items"][-1]["item_id"]
    assert main(["feedback", *DATA, "--user", "u003", "--item", first, "--signal", "like"]) == 0
    capsys.readouterr()
    base = ["feedback", *DATA, "--user", "u003", "--item", last, "--signal", "dislike", "--refine"]
    assert main([*base, "--timestamp", "2026-09-02T08:00:00+02:00"]) == 0
    refined = json.loads(capsys.readouterr().out)["refine"]
    assert refined["status"] == "refined" and refined["version"]["version"] == 2
    assert len(refined["version"]["evidence"]) == 2

    assert main(["profile", "show", "--user", "u003", "--version", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["producer"] == "profile"
    assert main(["profiles", "history", "--user", "u003"]) == 0
    history = json.loads(capsys.readouterr().out)
    assert [(h["version"], h["producer"], len(h["evidence"])) for h in history] == [
        (1, "profile", 0),
        (2, "refine", 2),
    ]
    assert main(["profile", "diff", "--user", "u003"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert (diff["from"], diff["to"]) == (1, 2)
    assert {"kind": "item_blocked", "name": last} in [
        {"kind": c["kind"], "name": c["name"]} for c in diff["diff"]
    ]
    assert diff["explained_by"][0]["changes"]  # every change with its rationale
    assert main(["profile", "diff", "--user", "u003", "--pretty"]) == 0
    assert "version 1 → 2" in capsys.readouterr().out
    assert main(["profile", "show", "--user", "u003", "--version", "9"]) == 3
    assert "no profile version 9" in capsys.readouterr().err
    assert main(["refine", *DATA, "--user", "u003"]) == 0  # nothing new: no call
    assert json.loads(capsys.readouterr().out)["status"] == "skipped"


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (
            ["feedback", *DATA, "--user", "u001", "--item", "SKU-10001", "--signal", "rating"],
            3,
            "a rating needs",
        ),
        (["feedback", *DATA, "--user", "u001", "--item", "NOPE", "--signal", "like"], 3, "unknown item"),
        (
            ["feedback", *DATA, "--user", "u001", "--item", "SKU-10001", "--signal", "like", "--rec-id", "x"],
            3,
            "unknown recommendation id",
        ),
        (
            [
                "feedback",
                *DATA,
                "--user",
                "u001",
                "--item",
                "SKU-10001",
                "--signal",
                "like",
                "--timestamp",
                "soon",
            ],
            3,
            "invalid --timestamp",
        ),
        (["profile", "--user", "u001"], 2, "profile needs --events and --items"),
        (["profile", "diff", "--user", "u001", "--db", ":memory:"], 3, "no stored profile"),
        (["refine", *DATA, "--user", "u001", "--backend", "fallback"], 2, "refine needs a model"),
    ],
)
def test_cli_errors_are_one_line(
    args: list[str], code: int, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("recagent: error:") and fragment in err

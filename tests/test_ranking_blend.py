"""The final order of a model ranking: fusion with the retriever, bootstrap over shuffled orders
(Borda), the weights file, fitting on held-out interactions, and the CLI options."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from agent.cli.main import main
from agent.errors import ConfigError, Usage
from agent.evaluation.fusion_fit import fit_fusion
from agent.evaluation.protocol import leave_one_out
from agent.llm.client import ChatClient, LLMConfig, StructuredReply
from agent.ranking.fusion import FusionWeights, RankedList, fuse
from agent.ranking.position_bias import borda
from agent.recommender import AgentConfig, CandidateInfo, RecommenderAgent, ReplyContext, interpret_rankings
from agent.testing.loopback import Fault, LoopbackServer, Reply
from agent.testing.standin_model import parse_blocks, respond
from tests.test_evaluate import client_for, prompt_leaks, synthetic

IDS = [f"c{n}" for n in range(8)]


def _context(shown: list[str] | None = None, fusion: FusionWeights | None = None, k: int = 5) -> ReplyContext:
    candidates = [
        CandidateInfo(item_id=i, title=f"Title {i}", score=float(8 - n), sources={"popularity": 1.0})
        for n, i in enumerate(IDS)
    ]
    return ReplyContext(
        task="recommend",
        user_id="u1",
        history_ids=["h1"],
        events_total=3,
        events_shown=3,
        shown=shown or list(reversed(IDS)),
        candidates=candidates,
        consumed=["h1"],
        k=k,
        fusion=fusion,
    )


def _reply(context: ReplyContext, order: list[str], requests: int = 1) -> StructuredReply[Any]:
    items = [{"item_id": i, "score": 0.9, "reason": f"because {i}", "evidence": ["h1"]} for i in order]
    value = context.output_model().model_validate({"items": items})
    return StructuredReply(
        value, json.dumps({"items": items}), Usage(requests=requests), 1, "json_schema", "m", "t"
    )


# --------------------------------------------------------------------------- fusion of one reply


def test_prior_fusion_orders_by_the_blend_and_labels_sources() -> None:
    context = _context(fusion=FusionWeights.prior())
    result = interpret_rankings([context], [_reply(context, ["c7", "c6"])])
    expected = fuse(RankedList(IDS, [float(8 - n) for n in range(8)], ["c7", "c6"]), FusionWeights.prior())
    assert [r.item_id for r in result.items] == [item for item, _ in expected[:5]]
    assert result.items[0].item_id == "c7"  # the model's pick rises from the retriever's last place
    assert [r.score for r in result.items] == [round(score, 4) for _, score in expected[:5]]
    by_id = {r.item_id: r for r in result.items}
    assert by_id["c7"].source == "llm" and by_id["c7"].reason == "because c7"
    assert by_id["c0"].source == "retriever" and by_id["c0"].evidence == []
    assert result.fusion == "prior" and result.orders == 1
    assert result.grounding["backfilled"] == sum(r.source != "llm" for r in result.items)


def test_retriever_only_weights_ignore_the_model() -> None:
    context = _context(fusion=FusionWeights.retriever_only())
    result = interpret_rankings([context], [_reply(context, ["c7", "c6", "c5"])])
    assert [r.item_id for r in result.items] == IDS[:5]


def test_no_fusion_keeps_the_model_order_then_backfills() -> None:
    context = _context(fusion=None)
    result = interpret_rankings([context], [_reply(context, ["c7", "c6"])])
    assert [r.item_id for r in result.items] == ["c7", "c6", "c0", "c1", "c2"]
    assert [r.source for r in result.items] == ["llm", "llm", "retriever", "retriever", "retriever"]
    assert result.fusion is None


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_merges_replies_by_borda_and_sums_usage() -> None:
    orders = [["c3", "c4", "c5"], ["c4", "c3", "c6"], ["c4", "c5", "c3"]]
    contexts = [_context(shown=IDS[n:] + IDS[:n], fusion=None, k=4) for n in range(3)]
    replies = [_reply(c, o, requests=1) for c, o in zip(contexts, orders, strict=True)]
    result = interpret_rankings(contexts, replies)
    assert [r.item_id for r in result.items][:4] == borda(orders)[:4] == ["c4", "c3", "c5", "c6"]
    assert result.orders == 3 and result.usage["requests"] == 3


def test_bootstrap_replies_must_answer_the_same_candidates() -> None:
    a, b = _context(), _context()
    b.candidates = b.candidates[:-1]
    with pytest.raises(ValueError, match="same user and candidates"):
        interpret_rankings([a, b], [_reply(a, ["c1"]), _reply(b, ["c1"])])
    with pytest.raises(ValueError):
        interpret_rankings([a], [])


def test_reply_context_with_fusion_survives_json() -> None:
    """The Batch API stores contexts as JSON and interprets replies in a later process."""
    context = _context(fusion=FusionWeights(0.1, 2.0, 0.5, "fitted"))
    again = ReplyContext.model_validate(json.loads(context.model_dump_json()))
    assert again == context and again.fusion == FusionWeights(0.1, 2.0, 0.5, "fitted")


@pytest.fixture
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    return synthetic()


def test_agent_bootstrap_sends_b_differently_shuffled_prompts(
    frames: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    events, items = frames
    with LoopbackServer(responder=lambda body: Reply(content=respond(body))) as server:
        agent = RecommenderAgent(events, items, client_for(server), AgentConfig(bootstrap_orders=3))
        result = agent.recommend("user00", k=5)
        bodies = [r.body for r in server.requests]
    assert len(bodies) == 3 and result.orders == 3 and result.usage["requests"] == 3
    users = [b["messages"][-1]["content"] for b in bodies]
    shown = [[row["item_id"] for row in parse_blocks(u)["candidates"]] for u in users]
    assert len({tuple(s) for s in shown}) == 3  # three different candidate orders
    # order 0 is the single-call order: bootstrap B=1 sends exactly the same prompt
    with LoopbackServer(responder=lambda body: Reply(content=respond(body))) as server:
        RecommenderAgent(events, items, client_for(server)).recommend("user00", k=5)
        assert server.requests[0].body["messages"] == bodies[0]["messages"]


def test_agent_bootstrap_falls_back_and_counts_the_calls_it_paid(
    frames: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    """The first order is answered, then the API goes down: the retriever answers, and the
    usage still counts the call that was paid for."""
    events, items = frames
    calls: list[dict[str, Any]] = []

    def first_then_down(body: dict[str, Any]) -> Reply | Fault:
        calls.append(body)
        return Reply(content=respond(body)) if len(calls) == 1 else Fault.http(503)

    with LoopbackServer(responder=first_then_down) as server:
        config = LLMConfig(model="gpt-4.1-mini", base_url=server.base_url, api_key="sk-test")
        client = ChatClient(replace(config, max_retries=1, backoff_base_s=0.0, backoff_max_s=0.0))
        result = RecommenderAgent(events, items, client, AgentConfig(bootstrap_orders=2)).recommend(
            "user00", k=5
        )
    assert result.fallback_reason and result.orders == 0
    assert [r.source for r in result.items] == ["fallback"] * 5
    assert result.usage["requests"] == len(calls) >= 2  # the answered first order is accounted for


def test_bootstrap_orders_must_be_positive(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    with pytest.raises(ConfigError, match="bootstrap_orders"):
        RecommenderAgent(*frames, None, AgentConfig(bootstrap_orders=0))


# --------------------------------------------------------------------------- the weights file


def test_weights_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    FusionWeights(0.25, 1.75, 0.5, "fitted").save(path, lists_used=40)
    assert FusionWeights.load(path) == FusionWeights(0.25, 1.75, 0.5, "fitted")
    assert json.loads(path.read_text())["metadata"] == {"lists_used": 40}


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        json.dumps({"bias": 0, "w_llm": 1, "w_retriever": 1, "source": "prior"}),  # no format tag
        json.dumps(
            {"format": "recagent-fusion/1", "bias": "x", "w_llm": 1, "w_retriever": 1, "source": "prior"}
        ),
        json.dumps(
            {"format": "recagent-fusion/1", "bias": 0, "w_llm": 1e999, "w_retriever": 1, "source": "prior"}
        ),
        json.dumps(
            {"format": "recagent-fusion/1", "bias": 0, "w_llm": 1, "w_retriever": 1, "source": "magic"}
        ),
    ],
)
def test_bad_weights_files_are_config_errors(tmp_path: Path, content: str) -> None:
    path = tmp_path / "w.json"
    path.write_text(content)
    with pytest.raises(ConfigError):
        FusionWeights.load(path)
    with pytest.raises(ConfigError):
        FusionWeights.load(tmp_path / "missing.json")


# --------------------------------------------------------------------------- fitting


def test_fit_never_shows_the_held_out_items_and_only_asks_useful_users(
    frames: tuple[pd.DataFrame, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    events, items = frames
    outer = leave_one_out(events, items)  # as `evaluate --fusion fit` does: fit on training only
    inner = leave_one_out(outer.train, items)
    sent: list[tuple[str, Any]] = []
    original = RecommenderAgent.prepare_ranking

    def spy(self: RecommenderAgent, user_id: str, *args: Any, **kwargs: Any) -> Any:
        prepared = original(self, user_id, *args, **kwargs)
        sent.append((user_id, prepared.prompt))
        return prepared

    monkeypatch.setattr(RecommenderAgent, "prepare_ranking", spy)
    with LoopbackServer(responder=lambda body: Reply(content=respond(body))) as server:
        report = fit_fusion(outer.train, items, client_for(server), max_users=None, min_lists=1)
        requests = len(server.requests)
    titles = items.set_index("item_id")["title"]
    assert sent and requests == len(sent) == report.lists_used + report.model_failed
    for user, prompt in sent:
        for target in (inner.targets[user], outer.targets[user]):
            assert prompt_leaks({"messages": prompt.messages}, target, titles[target]) == [], user
    assert report.users_sampled == len(inner.targets)
    assert report.lists_used + report.target_not_in_candidates + report.model_failed == report.users_sampled
    assert report.weights.source in ("fitted", "retriever-only")
    assert report.mrr["fitted"] >= report.mrr["retriever-only"]  # never worse in-sample


def test_fit_keeps_the_prior_with_too_few_lists(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    events, items = frames
    with LoopbackServer(responder=lambda body: Reply(content=respond(body))) as server:
        report = fit_fusion(events, items, client_for(server), max_users=3, min_lists=50)
    assert report.weights == FusionWeights.prior() and "kept the prior" in report.note


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def sample_files(tmp_path: Path, frames: tuple[pd.DataFrame, pd.DataFrame]) -> tuple[Path, Path]:
    events, items = frames
    events_path, items_path = tmp_path / "events.csv", tmp_path / "items.csv"
    events.assign(timestamp=events["timestamp"].astype(str)).to_csv(events_path, index=False)
    items.to_csv(items_path, index=False)
    return events_path, items_path


def test_cli_fusion_fit_then_recommend_with_the_file(
    sample_files: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events_path, items_path = sample_files
    weights = tmp_path / "fusion.json"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with LoopbackServer(responder=lambda body: Reply(content=respond(body))) as server:
        common = ["--events", str(events_path), "--items", str(items_path), "--base-url", server.base_url]
        assert (
            main(["fusion-fit", *common, "--out", str(weights), "--min-lists", "1", "--backend", "openai"])
            == 0
        )
        report = json.loads(capsys.readouterr().out)
        assert FusionWeights.load(weights).source == report["weights"]["source"]
        assert (
            main(["recommend", *common, "--user", "user01", "--fusion", str(weights), "--backend", "openai"])
            == 0
        )
        result = json.loads(capsys.readouterr().out)
        assert result["fusion"] == report["weights"]["source"]
        assert main(["recommend", *common, "--user", "user01", "--fusion", "off", "--bootstrap", "2"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["fusion"] is None and result["orders"] == 2


@pytest.mark.parametrize(
    ("flag", "message"), [(["--fusion", "nope.json"], "--fusion"), (["--bootstrap", "0"], "--bootstrap")]
)
def test_cli_bad_ranking_options_are_one_line_errors(
    sample_files: tuple[Path, Path], flag: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    events_path, items_path = sample_files
    code = main(
        ["recommend", "--events", str(events_path), "--items", str(items_path), "--user", "user01", *flag]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and err[-1].startswith("recagent: error:") and message in err[-1]


def test_batch_takes_the_fusion_weights_and_rejects_a_bad_file(
    sample_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events_path, items_path = sample_files
    weights = tmp_path / "w.json"
    FusionWeights(0.0, 0.5, 2.0, "fitted").save(weights)
    common = ["batch", "--events", str(events_path), "--items", str(items_path), "--dry-run"]
    assert main([*common, "--out", str(tmp_path / "a"), "--fusion", str(weights)]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--fusion", "off"]) == 0
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "c"), "--fusion", str(tmp_path / "nope.json")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("recagent: error: --fusion")

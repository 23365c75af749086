"""Evaluation harness: splits, candidate sets, baselines, scoring, artifacts, the CLI, and the
leakage guarantee (no held-out item in any prompt the agent sends, checked on the wire)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from agent.cli.main import main
from agent.errors import QuotaExceededError
from agent.evaluation.methods import AgentMethod, PopularityMethod, RandomMethod, RetrieverMethod
from agent.evaluation.protocol import (
    EvalCase,
    Split,
    TrainingData,
    build_cases,
    leave_one_out,
    load_split,
    sample_users,
    score,
    time_split,
)
from agent.evaluation.report import load_candidates, rescore
from agent.llm.client import ChatClient, LLMConfig
from agent.testing.loopback import Fault, LoopbackServer, Reply
from agent.testing.standin_model import parse_blocks, respond
from tests.conftest import DATASETS, chat_bodies

ML100K = DATASETS / "ml-100k"
CATEGORIES = ("Strategy", "Racing", "Puzzle", "Shooter")


# --------------------------------------------------------------------------- synthetic data


def synthetic(n_users: int = 24, n_items: int = 60, seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Canonical frames with distinctive titles ("Zephyr Quest 017") and ids ("i017")."""
    rng = np.random.default_rng(seed)
    items = pd.DataFrame(
        {
            "item_id": pd.Series([f"i{j:03d}" for j in range(n_items)], dtype=str),
            "title": pd.Series([f"Zephyr Quest {j:03d}" for j in range(n_items)], dtype=str),
            "category": pd.Series([CATEGORIES[j % 4] for j in range(n_items)], dtype=object),
            "description": pd.Series([None] * n_items, dtype=object),
            "price": pd.Series(rng.uniform(5, 60, n_items).round(2)),
        }
    )
    rows = []
    start = pd.Timestamp("2026-01-01", tz="UTC")
    for u in range(n_users):
        favourite = u % 4
        pool = [j for j in range(n_items) if j % 4 == favourite] + list(rng.choice(n_items, 6, replace=False))
        picked = rng.choice(sorted(set(pool)), size=int(rng.integers(5, 12)), replace=False)
        for n, j in enumerate(picked):
            moment = start + pd.Timedelta(days=int(u) + n, hours=int(rng.integers(0, 20)))
            rows.append((f"user{u:02d}", f"i{j:03d}", "purchase" if n % 3 else "view", moment))
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "behavior", "timestamp"])
    events["timestamp"] = events["timestamp"].astype("datetime64[ns, UTC]")
    events["value"] = np.nan
    events["text"] = pd.Series([None] * len(events), dtype=object)
    events = events.sort_values("timestamp", kind="stable").reset_index(drop=True)
    return events.astype({"user_id": str, "item_id": str, "behavior": str}), items


def write_generic(root: Path) -> Path:
    events, items = synthetic()
    root.mkdir(parents=True, exist_ok=True)
    out = events.assign(timestamp=events["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    out.to_csv(root / "events.csv", index=False)
    items.to_csv(root / "items.csv", index=False)
    return root


def client_for(server: LoopbackServer) -> ChatClient:
    return ChatClient(LLMConfig(model="gpt-4.1-mini", base_url=server.base_url, api_key="sk-test"))


@pytest.fixture
def data() -> tuple[Split, TrainingData]:
    events, items = synthetic()
    split = leave_one_out(events, items)
    return split, TrainingData(split.train, split.items)


# --------------------------------------------------------------------------- splits


def test_leave_one_out_holds_out_the_last_item_and_everything_after_it() -> None:
    events, items = synthetic()
    later_search = pd.DataFrame(
        {
            "user_id": ["user00"],
            "item_id": [""],
            "behavior": ["search"],
            "timestamp": pd.Series([pd.Timestamp("2027-01-01", tz="UTC")], dtype="datetime64[ns, UTC]"),
            "value": [np.nan],
            "text": pd.Series(["zephyr quest sequel"], dtype=object),
        }
    ).astype({"user_id": str, "item_id": str, "behavior": str})
    events = pd.concat([events, later_search], ignore_index=True)
    split = leave_one_out(events, items)
    for user, group in events.groupby("user_id"):
        item_events = group[group["behavior"] != "search"]
        assert split.targets[user] == item_events["item_id"].iloc[-1]
        train = split.train[split.train["user_id"] == user]
        assert len(train) == len(item_events) - 1  # the target and the later search are gone
        assert train["timestamp"].max() <= item_events["timestamp"].iloc[-1]

    valid = leave_one_out(events, items, part="valid")
    for user, group in events[events["behavior"] != "search"].groupby("user_id"):
        assert valid.targets[user] == group["item_id"].iloc[-2]
        assert set(valid.train.loc[valid.train["user_id"] == user, "item_id"]) == set(
            group["item_id"].iloc[:-2]
        )


def test_repeat_targets_and_short_histories_are_skipped_and_counted() -> None:
    events, items = synthetic()
    first = events[events["user_id"] == "user01"].iloc[0]
    repeat = first.to_frame().T.assign(timestamp=pd.Timestamp("2027-01-01", tz="UTC"))
    events = pd.concat([events, repeat.astype(events.dtypes.to_dict())], ignore_index=True)
    split = leave_one_out(events, items, min_history=6)
    assert "user01" not in split.targets
    assert split.skipped["target already in the training history"] >= 1
    assert split.skipped.get("fewer than 6 training interactions", 0) >= 1
    assert sum(split.skipped.values()) + len(split.targets) == events["user_id"].nunique()


def test_time_split_trains_strictly_before_the_cutoff() -> None:
    events, items = synthetic()
    split = time_split(events, items, cutoff="2026-01-15")
    cutoff = pd.Timestamp("2026-01-15", tz="UTC")
    assert split.train["timestamp"].max() < cutoff
    for user, target in split.targets.items():
        after = events[(events["user_id"] == user) & (events["timestamp"] >= cutoff)]
        assert target == after["item_id"].iloc[0]
    assert split.targets and split.skipped  # early users have no target, late ones no history


# --------------------------------------------------------------------------- candidate sets


def test_sampled_candidates_hold_the_target_and_unseen_negatives_in_random_positions(
    data: tuple[Split, TrainingData],
) -> None:
    split, training = data
    users = sorted(split.targets)
    cases = build_cases(split, training, users, "sampled", negatives=19, seed=5)
    positions = Counter()
    for case in cases:
        assert case.candidates is not None and len(case.candidates) == 20 == len(set(case.candidates))
        assert split.targets[case.user_id] in case.candidates
        seen = set(split.train.loc[split.train["user_id"] == case.user_id, "item_id"])
        assert not seen & set(case.candidates)
        positions[case.candidates.index(split.targets[case.user_id])] += 1
    assert len(positions) >= 8  # the target is not parked at a fixed position
    assert cases == build_cases(split, training, users, "sampled", negatives=19, seed=5)
    assert cases != build_cases(split, training, users, "sampled", negatives=19, seed=6)
    # per-user seeding: a smaller user sample leaves every other user's set unchanged
    assert cases[3:] == build_cases(split, training, users[3:], "sampled", negatives=19, seed=5)


def test_hard_negatives_are_the_retrievers_best_non_target_items(data: tuple[Split, TrainingData]) -> None:
    split, training = data
    case = build_cases(split, training, ["user05"], "hard", negatives=10, seed=1)[0]
    best = [
        c.item_id for c in training.retriever.candidates("user05", n=10, exclude=(split.targets["user05"],))
    ]
    assert case.candidates is not None and set(case.candidates) == {*best, split.targets["user05"]}
    assert build_cases(split, training, ["user05"], "full", negatives=10, seed=1) == [
        EvalCase("user05", None)
    ]


def test_sample_users_is_seeded() -> None:
    targets = {f"u{i}": "x" for i in range(50)}
    assert sample_users(targets, 10, 1) == sample_users(targets, 10, 1) != sample_users(targets, 10, 2)
    assert sample_users(targets, None, 1) == sorted(targets)


# --------------------------------------------------------------------------- methods and scoring


def test_baselines_rank_candidates_and_full_catalog(data: tuple[Split, TrainingData]) -> None:
    split, training = data
    case = build_cases(split, training, ["user02"], "sampled", negatives=9, seed=1)[0]
    assert case.candidates is not None
    popular = PopularityMethod(training, depth=100).rank(case)
    counts = training.popularity[training.positions(popular)]
    assert list(counts) == sorted(counts, reverse=True) and set(popular) == set(case.candidates)
    random_method = RandomMethod(training, seed=3, depth=100)
    assert random_method.rank(case) == random_method.rank(case) and set(random_method.rank(case)) == set(
        case.candidates
    )
    full = EvalCase("user02", None)
    seen = set(split.train.loc[split.train["user_id"] == "user02", "item_id"])
    for method in (random_method, PopularityMethod(training, depth=15), RetrieverMethod(training, depth=15)):
        ranked = method.rank(full)
        assert len(ranked) == len({*ranked}) and not seen & set(ranked)
    assert RetrieverMethod(training, depth=15).rank(full) == [
        c.item_id for c in training.retriever.candidates("user02", n=15)
    ]


def test_score_reads_targets_only_there_and_matches_hand_computed_values() -> None:
    rankings = {"m": {"a": ["x", "t", "y"], "b": ["y", "x", "t"]}}
    per_user = score(rankings, {"a": "t", "b": "q"}, [1, 2])
    assert per_user["m"]["hit@2"] == [1.0, 0.0]
    assert per_user["m"]["mrr"] == [0.5, 0.0]
    assert per_user["m"]["ndcg@2"][0] == pytest.approx(1 / np.log2(3))


# --------------------------------------------------------------------------- leakage


def _without_candidates(content: str) -> str:
    start = content.find('<data name="candidates"')
    return content if start < 0 else content[:start] + content[content.index("</data>", start) + 7 :]


def _request_texts(body: dict[str, Any]) -> list[str]:
    """Every text a request carries, minus the two places a candidate legitimately appears
    (the candidates data block and the schema's enum of candidate ids). Data blocks are also
    given decoded, so JSON escapes (``\\u0027`` for an apostrophe) cannot hide a title."""
    texts = []
    for message in body["messages"]:
        content = _without_candidates(message["content"])
        texts.append(content)
        texts += [json.dumps(rows, ensure_ascii=False) for rows in parse_blocks(content).values()]
    response_format = json.loads(json.dumps(body.get("response_format", {})))
    ranked = response_format.get("json_schema", {}).get("schema", {}).get("$defs", {})
    if "RankedItem" in ranked:
        ranked["RankedItem"]["properties"]["item_id"].pop("enum", None)
    texts.append(json.dumps(response_format, ensure_ascii=False))
    return texts


def prompt_leaks(body: dict[str, Any], target_id: str, target_title: str) -> list[str]:
    """Where the held-out item shows up in a request outside the candidate list (empty = clean)."""
    texts = _request_texts(body)
    found = []
    if any(json.dumps(target_id) in text for text in texts):
        found.append(f"id {target_id!r}")
    if any(target_title in text for text in texts):
        found.append(f"title {target_title!r}")
    user = body["messages"][-1]["content"]
    listed = [row.get("item_id") for row in parse_blocks(user).get("candidates", [])].count(target_id)
    if listed > 1:
        found.append(f"target listed {listed} times among the candidates")
    return found


def _run_agent(
    server: LoopbackServer, training: TrainingData, cases: list[EvalCase], **kwargs: Any
) -> tuple[AgentMethod, list[list[str]]]:
    method = AgentMethod(training, client_for(server), keep_prompts=True, **kwargs)
    return method, method.rank_all(cases)


def _wire_bodies_by_user(server: LoopbackServer, method: AgentMethod) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every chat request on the wire with the user it was for (matched on its messages)."""
    owner = {json.dumps(p.messages): user for user, prompts in method.prompts.items() for p in prompts}
    bodies = chat_bodies(server)
    assert len(bodies) == sum(len(p) for p in method.prompts.values())
    for body in bodies:
        yield owner[json.dumps(body["messages"])], body  # KeyError: a prompt nobody accounted for


@pytest.mark.parametrize("setting", ["sampled", "hard", "full"])
def test_no_prompt_sent_contains_the_target(setting: str, data: tuple[Split, TrainingData]) -> None:
    split, training = data
    cases = build_cases(split, training, sorted(split.targets), setting, negatives=9, seed=2)
    with LoopbackServer(responder=lambda body: Reply(content=respond(body))) as server:
        method, _ = _run_agent(server, training, cases, with_profile=True, concurrency=3, rerank=8)
        checked = Counter()
        for user, body in _wire_bodies_by_user(server, method):
            target = split.targets[user]
            assert prompt_leaks(body, target, training.items.set_index("item_id").at[target, "title"]) == []
            checked[
                "ranking" if '<data name="candidates"' in body["messages"][-1]["content"] else "profile"
            ] += 1
    assert checked == {"ranking": len(cases), "profile": len(cases)}
    assert not any(d.get("fallback_reason") for d in method.details.values())


def test_leak_checker_catches_an_agent_built_on_the_unsplit_log(data: tuple[Split, TrainingData]) -> None:
    """The guard is real: build the agent on every event (targets included) and every user's
    prompts leak their target through the history."""
    split, _ = data
    events, items = synthetic()
    leaky = TrainingData(events, items)  # the mistake: training data that still holds the targets
    cases = build_cases(split, leaky, sorted(split.targets)[:6], "sampled", negatives=9, seed=2)
    with LoopbackServer(responder=lambda body: Reply(content=respond(body))) as server:
        method, _ = _run_agent(server, leaky, cases, with_profile=True)
        for user, body in _wire_bodies_by_user(server, method):
            target = split.targets[user]
            assert prompt_leaks(body, target, items.set_index("item_id").at[target, "title"]), user


def test_leak_checker_catches_the_title_anywhere_outside_the_candidates() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "Rank games."},
            {
                "role": "user",
                "content": '<data name="candidates" order="random">\n{"item_id": "i007"}\n</data>',
            },
        ]
    }
    assert prompt_leaks(body, "i007", "Zephyr Quest 007") == []
    body["messages"][0]["content"] += " Hint: Zephyr Quest 007 is what they bought next."
    assert prompt_leaks(body, "i007", "Zephyr Quest 007") == ["title 'Zephyr Quest 007'"]
    history = '<data name="history">\n{"n": 1, "item_id": "i007", "title": "Zephyr\\u0027s Quest"}\n</data>'
    body = {"messages": [{"role": "system", "content": "Rank games."}, {"role": "user", "content": history}]}
    assert prompt_leaks(body, "i007", "Zephyr's Quest") == ["id 'i007'", 'title "Zephyr\'s Quest"']


def test_agent_failures_fall_back_per_user_but_quota_stops_the_run(data: tuple[Split, TrainingData]) -> None:
    split, training = data
    cases = build_cases(split, training, sorted(split.targets)[:3], "sampled", negatives=9, seed=2)
    retriever = RetrieverMethod(training, depth=100)
    with LoopbackServer(responder=lambda body: Reply(content="not json at all")) as server:
        method, ranked = _run_agent(server, training, cases)
    assert ranked == [retriever.rank(c) for c in cases]
    assert all(d["fallback_reason"].startswith("InvalidReplyError") for d in method.details.values())
    with (
        LoopbackServer(faults=[Fault.insufficient_quota()] * 10) as server,
        pytest.raises(QuotaExceededError),
    ):
        _run_agent(server, training, cases)


# --------------------------------------------------------------------------- the command


def _evaluate(tmp_path: Path, *extra: str) -> list[str]:
    return ["evaluate", "--dataset", "generic", "--path", str(write_generic(tmp_path / "data")), *extra]


def test_cli_writes_every_artifact_and_rescoring_reproduces_the_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(_evaluate(tmp_path, "--backend", "fallback", "--out", str(out), "-k", "1,5,10")) == 0
    printed = capsys.readouterr().out
    assert "ndcg@10" in printed and "±" in printed and "popularity" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"random", "popularity", "retriever"}
    assert {"ndcg@10", "hit@10", "recall@10", "mrr"} <= set(metrics["retriever"])
    rescored = rescore(out)
    assert rescored.keys() == metrics.keys()
    for method, values in metrics.items():
        assert rescored[method] == pytest.approx(values)
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| retriever |" in (out / "report.md").read_text()
    settings, cases, _ = load_candidates(out / "candidates.json")
    assert settings["protocol"] == "loo-sampled" and len(cases) == 24

    again = tmp_path / "again"
    args = _evaluate(tmp_path, "--backend", "fallback", "--out", str(again), "-k", "1,5,10", "--seed", "99")
    assert main([*args, "--candidates", str(out / "candidates.json")]) == 0
    assert json.loads((again / "metrics.json").read_text())["popularity"] == metrics["popularity"]
    assert (again / "candidates.json").read_text() == (out / "candidates.json").read_text()


def test_cli_asks_before_paid_calls_and_replays_without_asking(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    cassette = tmp_path / "eval-cassette.json"
    with LoopbackServer(responder=lambda body: Reply(content=respond(body))) as server:
        live = _evaluate(
            tmp_path, "--base-url", server.base_url, "--users", "6", "--out", str(tmp_path / "a")
        )
        monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
        assert main(live) == 2
        assert "estimated cost" in capsys.readouterr().err and not chat_bodies(server)
        monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
        assert main([*live, "--record", str(cassette), "--concurrency", "2"]) == 0
        assert len(chat_bodies(server)) == 6
    first = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert set(first) == {"random", "popularity", "retriever", "agent"}
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # any question would be answered "no"
    replay = _evaluate(
        tmp_path, "--backend", "replay", "--cassette", str(cassette), "--out", str(tmp_path / "b")
    )
    assert main([*replay, "--candidates", str(tmp_path / "a" / "candidates.json")]) == 0
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["agent"] == first["agent"]
    rows = [json.loads(line) for line in (tmp_path / "b" / "rankings.jsonl").read_text().splitlines()]
    assert {r["sources"][0] for r in rows if r["method"] == "agent"} == {"llm"}


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["evaluate", "--dataset", "amazon-seq", "--path", str(tmp_path), "--protocol", "time-full"]
    assert main([*args, "--backend", "fallback"]) == 2
    assert capsys.readouterr().err.strip().startswith("recagent: error: amazon-seq has no real timestamps")
    out = tmp_path / "run"
    assert main(_evaluate(tmp_path, "--backend", "fallback", "--out", str(out))) == 0
    capsys.readouterr()
    other = _evaluate(tmp_path, "--backend", "fallback", "--split", "valid", "--out", str(tmp_path / "x"))
    assert main([*other, "--candidates", str(out / "candidates.json")]) == 2  # made for split test
    assert main([*other[:-4], "--out", str(tmp_path / "y"), "-k", "0"]) == 2
    assert all(line.startswith("recagent: error:") for line in capsys.readouterr().err.strip().splitlines())


def test_candidate_file_from_other_data_is_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(_evaluate(tmp_path, "--backend", "fallback", "--out", str(out))) == 0
    payload = json.loads((out / "candidates.json").read_text())
    payload["users"][0]["target"] = payload["users"][0]["candidates"][0] = "i999"
    (out / "candidates.json").write_text(json.dumps(payload))
    assert (
        main(_evaluate(tmp_path, "--backend", "fallback", "--candidates", str(out / "candidates.json"))) == 3
    )
    assert "does not match" in capsys.readouterr().err


# --------------------------------------------------------------------------- real data (skipped when absent)


@pytest.mark.dataset
@pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason="../shared/datasets/ml-100k not present")
def test_movielens_split_keeps_each_target_out_of_training_and_prompts() -> None:
    from agent.data.datasets import load_movielens

    events, _ = load_movielens(ML100K)
    split = load_split("movielens", ML100K, "loo-sampled")
    assert len(split.targets) == 943
    assert len(split.train) == len(events) - 943  # exactly one held-out rating per user
    seen = split.train.groupby("user_id")["item_id"].agg(set)
    last = events.groupby("user_id").tail(1).set_index("user_id")["item_id"]
    for user, target in split.targets.items():
        assert target == last[user] and target not in seen[user]
    training = TrainingData(split.train, split.items)
    titles = split.items.set_index("item_id")["title"]
    users = [
        u
        for u in sample_users(split.targets, 6, 0)
        if not any(titles[split.targets[u]] in titles[i] for i in seen[u])  # same-title remakes
    ]
    cases = build_cases(split, training, users, "sampled", negatives=19, seed=42)
    with LoopbackServer(responder=lambda body: Reply(content=respond(body))) as server:
        method, _ = _run_agent(server, training, cases, with_profile=True)
        for user, body in _wire_bodies_by_user(server, method):
            assert prompt_leaks(body, split.targets[user], titles[split.targets[user]]) == []


def test_cli_protocol_choices_match_the_library() -> None:
    from agent.cli.evaluate import PROTOCOL_NAMES
    from agent.evaluation.protocol import PROTOCOLS

    assert set(PROTOCOL_NAMES) == set(PROTOCOLS)


def test_cli_time_split_and_retriever_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "time"
    args = _evaluate(tmp_path, "--backend", "fallback", "--protocol", "time-full", "--cutoff", "2026-01-15")
    assert (
        main([*args, "--out", str(out), "--retriever-config", '{"window": 4, "weights": {"content": 0.3}}'])
        == 0
    )
    run = json.loads((out / "run.json").read_text())
    assert run["description"].startswith("global time split at 2026-01-15")
    assert "window=4" in run["config"]["retriever_config"]
    capsys.readouterr()
    assert main([*args, "--out", str(out), "--retriever-config", '{"bogus": 1}']) == 2
    assert main([*args, "--out", str(out), "--candidates", str(out / "candidates.json"), "--users", "3"]) == 2
    assert capsys.readouterr().err.count("recagent: error:") == 2


def test_cli_tunes_the_retriever_inside_the_training_split_by_default_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _evaluate(tmp_path, "--backend", "fallback", "--protocol", "loo-full", "--methods", "retriever")
    out = tmp_path / "tuned"
    assert main([*args, "--out", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    tuning = run["config"]["retriever_tuning"]
    assert tuning["trials"] >= 1 and tuning["validation_users"] >= 1
    assert run["config"]["retriever_settings"].startswith("tuned on the training split only")
    assert "- Retriever settings: tuned on the training split only" in (out / "report.md").read_text()
    assert "tuning the retriever on the training split" in capsys.readouterr().err
    # The validation targets come from the training events alone: no test target is among them.
    from agent.evaluation.protocol import load_split
    from agent.retrieval.tuning import validation_split

    split = load_split("generic", tmp_path / "data", "loo-full")
    fit, validation = validation_split(split.train)
    train_pairs = set(zip(split.train["user_id"], split.train["item_id"], strict=True))
    assert all((u, i) in train_pairs for u, i in validation.items())
    assert len(fit) < len(split.train)

    plain = tmp_path / "plain"
    assert main([*args, "--out", str(plain), "--no-tune"]) == 0
    run = json.loads((plain / "run.json").read_text())
    assert run["config"]["retriever_tuning"] is None
    assert run["config"]["retriever_settings"] == "RetrieverConfig() defaults (--no-tune)"


def test_amazon_sequences_hold_out_the_shipped_next_item(tmp_path: Path) -> None:
    (tmp_path / "Games.item").write_text(
        "item_id:token\ttitle:token_seq\n" + "".join(f"{j}\tGame {j}\n" for j in range(1, 9))
    )
    (tmp_path / "Games-6k.test.inter").write_text(
        "user_id:token\titem_id_list:token_seq\titem_id:token\n1\t1 2 3\t4\n2\t2 5\t6\n3\t7 8\t1\n"
    )
    split = load_split("amazon-seq", tmp_path, "loo-sampled")
    assert split.targets == {"1": "4", "2": "6", "3": "1"}
    assert not any(split.targets[u] in set(g["item_id"]) for u, g in split.train.groupby("user_id"))
    training = TrainingData(split.train, split.items)
    cases = build_cases(split, training, ["1", "2", "3"], "sampled", negatives=3, seed=0)
    assert all(c.candidates is not None and len(c.candidates) == 4 for c in cases)

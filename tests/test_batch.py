"""The offline batch runner: same results as the sync path, resume without paying twice,
failures and retries, budget, dry run, shards, and a run killed with SIGKILL mid-way."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from agent import errors
from agent.batch.ledger import Ledger, merge_outputs
from agent.batch.runner import (
    CUSTOM_ID_HEADER,
    BatchSettings,
    BatchSummary,
    parse_shard,
    run_batch,
    shard_of,
)
from agent.cli.main import main
from agent.llm.client import ChatClient, LLMConfig
from agent.recommender import RecommenderAgent
from agent.testing.loopback import Fault, LoopbackServer, Reply
from agent.testing.standin_model import respond
from tests.conftest import ROOT, SAMPLE

USERS = [f"u{n:03d}" for n in range(1, 5)]
DATA = ["--events", str(SAMPLE / "events.csv"), "--items", str(SAMPLE / "items.csv")]


@pytest.fixture(scope="module")
def agent(sample_frames: tuple[Any, Any]) -> RecommenderAgent:
    return RecommenderAgent(*sample_frames, None)


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer(responder=lambda body: Reply(content=respond(body))) as srv:
        yield srv


def config_for(server: LoopbackServer, **overrides: Any) -> LLMConfig:
    settings: dict[str, Any] = {
        "base_url": server.base_url,
        "api_key": "not-a-key",
        "model": "gpt-4.1-mini",
        "max_completion_tokens": 1200,
        "timeout_s": 10.0,
    }
    return LLMConfig(**{**settings, **overrides})


def run(agent: RecommenderAgent, server: LoopbackServer, out: Path, **kw: Any) -> BatchSummary:
    config_overrides = kw.pop("config", {})
    settings = BatchSettings(out_dir=out, users=kw.pop("users", USERS), concurrency=4, **kw)
    return asyncio.run(run_batch(agent, config_for(server, **config_overrides), settings))


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def chat_ids(server: LoopbackServer, start: int = 0) -> list[str]:
    return [
        r.headers[CUSTOM_ID_HEADER.lower()]
        for r in server.requests[start:]
        if r.path.endswith("/chat/completions")
    ]


def test_batch_results_match_the_sync_path_and_a_rerun_sends_nothing(
    agent: RecommenderAgent, sample_frames: tuple[Any, Any], server: LoopbackServer, tmp_path: Path
) -> None:
    summary = run(agent, server, tmp_path)
    assert summary.stop_error is None and summary.results == 8 and summary.failures == 0
    results = lines(tmp_path / "results.jsonl")
    pairs = [(r["user_id"], r["task"]) for r in results]
    assert pairs == sorted(pairs) and len(set(pairs)) == 8  # one line each, stable order
    ids = chat_ids(server)
    assert len(ids) == 8 and len(set(ids)) == 8
    assert summary.progress.prompt_tokens > 0 and summary.progress.cost_usd > 0

    # the sync path (ChatClient + RecommenderAgent.recommend) gives the same grounded list
    with ChatClient(config_for(server)) as client:
        sync = RecommenderAgent(*sample_frames, client)
        expected = sync.recommend("u003", k=10).model_dump(mode="json")
        sync_profile = sync.profile("u003").profile.model_dump(mode="json")
    got = next(r["result"] for r in results if r["user_id"] == "u003" and r["task"] == "recommend")
    for key in ("items", "grounding", "candidates_considered", "template_version"):
        assert got[key] == expected[key]
    profile = next(r["result"] for r in results if r["user_id"] == "u003" and r["task"] == "profile")
    assert profile["profile"] == sync_profile
    assert all(item["source"] in ("llm", "retriever") for item in got["items"])

    written = (tmp_path / "results.jsonl").read_text()
    before = len(server.requests)
    again = run(agent, server, tmp_path)
    assert len(server.requests) == before  # zero requests for a finished batch
    assert again.progress.skipped == 8 and again.results == 8
    assert (tmp_path / "results.jsonl").read_text() == written  # rewritten from the ledger, identical


def test_failed_requests_are_typed_retried_on_rerun_and_capped(
    agent: RecommenderAgent, tmp_path: Path
) -> None:
    failing = {"on": True}

    def faults(index: int, body: dict[str, Any]) -> Fault | None:
        is_rec = body["response_format"]["json_schema"]["name"] == "Recommendations"
        return Fault.http(400, "bad candidate list (injected)") if failing["on"] and is_rec else None

    with LoopbackServer(responder=lambda b: Reply(content=respond(b)), faults=faults) as srv:
        first = run(agent, srv, tmp_path, users=USERS[:3], max_attempts=2)
        failures = lines(tmp_path / "failures.jsonl")
        assert first.results == 3 and first.failures == 3
        assert {f["error"]["type"] for f in failures} == {"BadRequestError"}
        assert all(f["task"] == "recommend" and f["attempts"] == 1 for f in failures)

        run(agent, srv, tmp_path, users=USERS[:3], max_attempts=2)  # second and last try
        n = len(srv.requests)
        third = run(agent, srv, tmp_path, users=USERS[:3], max_attempts=2)
        assert len(srv.requests) == n and third.failures == 3  # exhausted: not sent again

        failing["on"] = False
        fixed = run(agent, srv, tmp_path, users=USERS[:3], max_attempts=3)
        assert fixed.results == 6 and fixed.failures == 0
        assert not (tmp_path / "failures.jsonl").read_text()


def test_unknown_users_are_typed_failures_and_cost_no_request(
    agent: RecommenderAgent, server: LoopbackServer, tmp_path: Path
) -> None:
    summary = run(agent, server, tmp_path, users=["u001", "nobody"])
    assert summary.results == 2 and summary.failures == 2 and len(chat_ids(server)) == 2
    failures = lines(tmp_path / "failures.jsonl")
    assert {(f["user_id"], f["error"]["type"]) for f in failures} == {("nobody", "UnknownUserError")}
    assert summary.as_dict()["users_done"] == 1 and summary.as_dict()["users_failed"] == 1


def test_budget_stops_before_it_is_passed_and_a_rerun_continues(
    agent: RecommenderAgent, server: LoopbackServer, tmp_path: Path
) -> None:
    stopped = run(agent, server, tmp_path, max_cost=0.01)
    assert isinstance(stopped.stop_error, errors.BudgetExceededError)
    with Ledger(tmp_path) as ledger:
        spent = ledger.totals().cost_usd
    assert 0 < spent <= 0.01 and 0 < stopped.results < 8 and stopped.pending > 0
    sent = chat_ids(server)

    finished = run(agent, server, tmp_path, max_cost=1.0)
    assert finished.stop_error is None and finished.results == 8
    assert not set(sent) & set(chat_ids(server, len(sent)))  # nothing paid twice


def test_quota_exhaustion_stops_the_run_without_using_up_retries(
    agent: RecommenderAgent, tmp_path: Path
) -> None:
    with LoopbackServer(faults=lambda i, b: Fault.insufficient_quota()) as srv:
        summary = run(agent, srv, tmp_path)
        assert isinstance(summary.stop_error, errors.QuotaExceededError)
        assert srv.stats.chat_completions <= 4  # stopped at once, not one 429 per user
    with closing(sqlite3.connect(tmp_path / "ledger.sqlite")) as db:
        assert db.execute("SELECT MAX(attempts) FROM requests").fetchone()[0] == 0


def test_shards_partition_users_and_merge_to_the_unsharded_result(
    agent: RecommenderAgent, server: LoopbackServer, tmp_path: Path
) -> None:
    assert parse_shard("1/3") == (1, 3)
    with pytest.raises(errors.ConfigError):
        parse_shard("3/3")
    users = [f"u{n:03d}" for n in range(1, 16)]
    owners = [[u for u in users if shard_of(u, 3) == i] for i in range(3)]
    assert sorted(u for shard in owners for u in shard) == users and all(owners)  # a partition
    for i in range(3):
        run(agent, server, tmp_path / f"s{i}", users=users, shard=(i, 3), tasks=("profile",))
    merged = merge_outputs([tmp_path / f"s{i}" for i in range(3)], tmp_path / "merged")
    assert merged["results"] == 15 and merged["conflicts"] == 0
    whole = run(agent, server, tmp_path / "whole", users=users, tasks=("profile",))
    assert whole.progress.done == 15
    key = lambda r: (r["user_id"], r["custom_id"])  # noqa: E731
    assert [key(r) for r in lines(tmp_path / "merged" / "results.jsonl")] == [
        key(r) for r in lines(tmp_path / "whole" / "results.jsonl")
    ]
    with pytest.raises(errors.ConfigError, match="one output directory per shard"):
        run(agent, server, tmp_path / "s0", users=users, shard=(1, 3))


def test_dry_run_estimates_without_calling_or_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = tmp_path / "users.txt"
    users.write_text("# nightly\nu001\nu002\n\nu002\n")
    out = tmp_path / "run"
    args = ["batch", *DATA, "--out", str(out), "--users", str(users), "--dry-run", "--model", "gpt-4.1-mini"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["users"] == 2 and report["requests"] == 4 and report["prompt_tokens"] > 1000
    assert 0 < report["cost_usd_expected"] <= report["cost_usd_max"]
    assert report["cost_usd_expected_batch_api"] == pytest.approx(report["cost_usd_expected"] / 2, abs=1e-4)
    assert not out.exists()


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["batch", *DATA, "--out", str(tmp_path), "--shard", "4/2", "--dry-run"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("recagent: error: --shard 4/2")
    assert main(["batch", *DATA, "--out", str(tmp_path), "--task", "summarise", "--dry-run"]) == 2


def _done_ids(ledger: Path) -> set[str]:
    if not ledger.is_file():
        return set()
    with closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as db:
        try:
            return {row[0] for row in db.execute("SELECT custom_id FROM requests WHERE status = 'done'")}
        except sqlite3.OperationalError:  # the run has not created its tables yet
            return set()


def test_sigkill_mid_run_then_rerun_completes_without_duplicates_or_repaid_requests(
    tmp_path: Path,
) -> None:
    users = [f"u{n:03d}" for n in range(1, 9)]
    users_file = tmp_path / "users.txt"
    users_file.write_text("\n".join(users) + "\n")
    out = tmp_path / "run"
    with LoopbackServer(responder=lambda b: Reply(content=respond(b)), latency_s=0.1) as srv:
        cmd = [
            sys.executable, "-m", "agent.cli.main", "batch", *DATA, "--out", str(out), "--users", str(users_file),
            "--base-url", srv.base_url, "--model", "gpt-4.1-mini", "--concurrency", "2",
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        try:
            while len(_done_ids(out / "ledger.sqlite")) < 4:  # poll the ledger, not the clock
                assert proc.poll() is None, "the run ended before it could be killed"
                assert time.monotonic() < deadline, "the run made no progress"
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        done_at_kill = _done_ids(out / "ledger.sqlite")
        assert 4 <= len(done_at_kill) < 16
        sent_before = len(srv.requests)

        rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        resent = chat_ids(srv, sent_before)

    results = lines(out / "results.jsonl")
    pairs = [(r["user_id"], r["task"]) for r in results]
    assert pairs == sorted((u, t) for u in users for t in ("profile", "recommend"))  # none lost, none twice
    assert not done_at_kill & set(resent)  # no finished request was paid for again
    assert len(resent) == len(set(resent)) == 16 - len(done_at_kill)  # the rest, each once
    assert json.loads(rerun.stdout)["skipped_already_done"] == len(done_at_kill)

"""The OpenAI Batch API flow against the loopback server's files + batches endpoints:
prepare (split files), submit (never twice), collect (join by custom_id, validate, ground
like the sync path, re-queue failed and expired lines), and the CLI around it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from agent.batch import openai_batch
from agent.batch.ledger import Ledger
from agent.batch.runner import BatchSettings, run_batch
from agent.cli.main import main
from agent.data.loading import align_catalog, load_events, load_items
from agent.llm.client import LLMConfig
from agent.recommender import RecommenderAgent
from agent.testing.loopback import BatchConfig, LoopbackServer, Reply
from agent.testing.standin_model import respond
from tests.conftest import SAMPLE

USERS = ["u001", "u002", "u003", "u004", "u005"]
CONFIG = LLMConfig(model="gpt-4.1-mini", max_completion_tokens=1200, api_key="not-a-key")


@pytest.fixture(scope="module")
def agent() -> RecommenderAgent:
    items = load_items(SAMPLE / "items.csv")
    events = align_catalog(load_events(SAMPLE / "events.csv"), items)
    return RecommenderAgent(events.frame, items.frame, None)


def settings(out: Path, **kw: Any) -> BatchSettings:
    return BatchSettings(out_dir=out, users=kw.pop("users", USERS), **kw)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def first_ids(path: Path, n: int) -> list[str]:
    return [line["custom_id"] for line in lines(path)[:n]]


@pytest.fixture
def client_for() -> Iterator[Any]:
    clients: list[openai.OpenAI] = []

    def make(server: LoopbackServer) -> openai.OpenAI:
        clients.append(openai.OpenAI(base_url=server.base_url, api_key="not-a-key", max_retries=0))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def test_prepare_splits_files_at_the_request_limit_and_skips_nothing(
    agent: RecommenderAgent, tmp_path: Path
) -> None:
    report = openai_batch.prepare(agent, CONFIG, settings(tmp_path), max_requests=4)
    assert report["requests"] == 10 and len(report["files"]) == 3  # 4 + 4 + 2
    rows = [row for path in report["files"] for row in lines(Path(path))]
    assert len({r["custom_id"] for r in rows}) == 10
    assert {r["body"]["model"] for r in rows} == {"gpt-4.1-mini"}  # one model per file
    assert all(r["url"] == "/v1/chat/completions" and r["method"] == "POST" for r in rows)
    assert all(r["body"]["max_completion_tokens"] == 1200 for r in rows)

    by_size = openai_batch.prepare(agent, CONFIG, settings(tmp_path), max_bytes=60_000)
    assert len(by_size["files"]) > 1 and all(Path(f).stat().st_size <= 60_000 for f in by_size["files"])
    assert not any(Path(f).exists() for f in report["files"])  # unsubmitted files are replaced


def test_full_flow_requeues_failed_and_expired_and_matches_the_sync_runner(
    agent: RecommenderAgent, tmp_path: Path, client_for: Any
) -> None:
    prepared = openai_batch.prepare(agent, CONFIG, settings(tmp_path / "api"))
    input_file = Path(prepared["files"][0])
    failing, expiring = first_ids(input_file, 2)
    batch = BatchConfig(polls_to_complete=2, fail_custom_ids=[failing], expire_custom_ids=[expiring])
    with LoopbackServer(responder=lambda b: Reply(content=respond(b)), batch=batch) as srv:
        client = client_for(srv)
        created = openai_batch.submit(client, tmp_path / "api")
        assert len(created) == 1 and created[0]["requests"] == 10
        assert openai_batch.submit(client, tmp_path / "api") == []  # nothing left to submit

        waiting = openai_batch.collect(client, tmp_path / "api")
        assert waiting["batches_waiting"] == 1 and waiting["results"] == 0
        assert openai_batch.status(client, tmp_path / "api")[0]["status"] == "expired"

        first = openai_batch.collect(client, tmp_path / "api")
        assert first["done"] == 8 and first["failed"] == 2 and first["requeued"] == 2
        assert first["this_collect_cost_usd"] > 0
        again = openai_batch.collect(client, tmp_path / "api")  # idempotent
        assert again["done"] == again["failed"] == again["requeued"] == 0 and again["results"] == 8

        retry = openai_batch.submit(client, tmp_path / "api")
        assert len(retry) == 1 and retry[0]["requests"] == 2 and "retry-" in retry[0]["file"]
        openai_batch.collect(client, tmp_path / "api")
        final = openai_batch.collect(client, tmp_path / "api")
        assert final["results"] == 10 and final["failures"] == 0
        uploads = [r for r in srv.requests if r.path == "/v1/files" and r.method == "POST"]
        assert len(uploads) == 2  # the batch and its re-queue, nothing else

        # the synchronous runner on the same data gives the same keys and the same answers
        sync_config = LLMConfig(**{**CONFIG.__dict__, "base_url": srv.base_url})
        asyncio.run(run_batch(agent, sync_config, settings(tmp_path / "sync")))
    api = lines(tmp_path / "api" / "results.jsonl")
    sync = lines(tmp_path / "sync" / "results.jsonl")
    assert [r["custom_id"] for r in api] == [r["custom_id"] for r in sync]
    for a, s in zip(api, sync, strict=True):
        if a["task"] == "recommend":
            assert a["result"]["items"] == s["result"]["items"]
        else:
            assert a["result"]["profile"] == s["result"]["profile"]
    with Ledger(tmp_path / "api") as ledger:
        usd = ledger.totals().cost_usd
    with Ledger(tmp_path / "sync") as ledger:
        assert usd == pytest.approx(ledger.totals().cost_usd / 2, rel=0.05)  # half price


def test_a_submit_interrupted_after_creating_the_batch_does_not_create_it_twice(
    agent: RecommenderAgent, tmp_path: Path, client_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    openai_batch.prepare(agent, CONFIG, settings(tmp_path, users=USERS[:2]))
    with LoopbackServer(responder=lambda b: Reply(content=respond(b))) as srv:
        client = client_for(srv)

        def crash(*args: object, **kwargs: object) -> None:
            raise KeyboardInterrupt  # the process dies between "created" and "recorded"

        with monkeypatch.context() as patch:
            patch.setattr(Ledger, "add_batch", crash)
            with pytest.raises(KeyboardInterrupt):
                openai_batch.submit(client, tmp_path)
        openai_batch.submit(client, tmp_path)
        assert len(srv.batches.batches) == 1  # adopted by its input digest
        openai_batch.collect(client, tmp_path)
        report = openai_batch.collect(client, tmp_path)
    assert report["results"] == 4


def test_prepare_never_includes_keys_that_are_done_or_in_flight(
    agent: RecommenderAgent, tmp_path: Path, client_for: Any
) -> None:
    openai_batch.prepare(agent, CONFIG, settings(tmp_path, users=USERS[:2]))
    with LoopbackServer(responder=lambda b: Reply(content=respond(b))) as srv:
        openai_batch.submit(client_for(srv), tmp_path)
        in_flight = openai_batch.prepare(agent, CONFIG, settings(tmp_path, users=USERS[:3]))
        assert in_flight["in_flight"] == 4 and in_flight["requests"] == 2
        # the synchronous runner does not send what a batch is already answering either
        config = LLMConfig(**{**CONFIG.__dict__, "base_url": srv.base_url})
        summary = asyncio.run(run_batch(agent, config, settings(tmp_path, users=USERS[:2])))
        assert summary.progress.in_batch_api == 4 and srv.stats.chat_completions == 0


def test_cli_flow(agent: RecommenderAgent, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--events", str(SAMPLE / "events.csv"), "--items", str(SAMPLE / "items.csv")]
    users = tmp_path / "users.txt"
    users.write_text("u001\nu002\n")
    out = str(tmp_path / "run")
    assert (
        main(["openai-batch", "prepare", *data, "--out", out, "--users", str(users), "--task", "profile"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["requests"] == 2
    with LoopbackServer(responder=lambda b: Reply(content=respond(b))) as srv:
        base = ["--base-url", srv.base_url]
        assert main(["openai-batch", "submit", "--out", out, *base]) == 0
        assert main(["openai-batch", "status", "--out", out, *base]) == 0
        args = ["openai-batch", "collect", "--out", out, "--wait", "--poll-seconds", "0", *base]
        assert main(args) == 0
    outputs = capsys.readouterr().out
    assert '"results": 2' in outputs
    assert main(["openai-batch", "submit", "--out", out]) == 2  # no endpoint configured
    assert "recagent: error:" in capsys.readouterr().err

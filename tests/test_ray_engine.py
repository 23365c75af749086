"""The Ray engine: the same results as the local engine, one rate limit for the whole cluster,
exactly-once after a killed worker or a killed driver, and a real two-node cluster on loopback.

Every Ray here is started by the test (a local ``ray.init`` in a child process, or ``ray
start`` nodes on 127.0.0.1) and stopped by it. Progress is read from the ledgers, never from
the clock.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from agent.batch.ray_engine import SharedBuckets, max_window, partition_dir
from agent.batch.runner import CUSTOM_ID_HEADER
from agent.testing.loopback import LoopbackServer, Reply
from agent.testing.standin_model import respond
from tests.conftest import ROOT, SAMPLE

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

RAY_BIN = Path(sys.executable).with_name("ray")
DATA = ["--events", str(SAMPLE / "events.csv"), "--items", str(SAMPLE / "items.csv")]
ENV = {
    **os.environ,
    "OPENAI_API_KEY": "not-a-key",
    "RECAGENT_PSEUDONYM_KEY": "ray-tests-pseudonym-key-01234",
    "RAY_AUTH_MODE": "disabled",
}
TASKS = ("profile", "recommend")


def _batch(out: Path, server: LoopbackServer, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "agent.cli.main", "batch", *DATA, "--out", str(out), "--base-url", server.base_url,
        "--model", "gpt-4.1-mini", "--max-completion-tokens", "1200", *extra,
    ]  # fmt: skip


def _results(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _content(out: Path) -> list[tuple[str, str, Any]]:
    """(user, task, what was decided) without the per-run random recommendation ids."""
    rows = []
    for r in _results(out):
        result = r["result"]
        decided = [i["item_id"] for i in result["items"]] if r["task"] == "recommend" else result["profile"]
        rows.append((r["user_id"], r["task"], decided))
    return rows


def _done(out: Path) -> int:
    total = 0
    for ledger in (out / "partitions").glob("*/ledger.sqlite"):
        try:
            with closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5)) as db:
                total += db.execute("SELECT COUNT(*) FROM requests WHERE status = 'done'").fetchone()[0]
        except sqlite3.Error:
            pass
    return total


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer(responder=lambda body: Reply(content=respond(body))) as srv:
        yield srv


def test_shared_buckets_keep_every_sliding_minute_under_the_limit() -> None:
    buckets = SharedBuckets(rpm=None, tpm=1000, minute_s=0.5)
    admitted, waits = 0.0, []
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        wait = buckets.take(1, 150)
        if wait:
            waits.append(wait)
            time.sleep(min(wait, 0.05))
        else:
            admitted += 150
    log = buckets.admitted()
    assert waits and admitted >= 2000  # the limit binds, and the window keeps admitting
    assert max_window(log, 0.5) <= 1000
    with pytest.raises(Exception, match="more than the limit"):
        buckets.take(1, 5000)


def test_a_killed_worker_is_retried_and_nothing_is_done_twice(tmp_path: Path) -> None:
    release = threading.Event()
    count = Counter()

    def gated(body: dict[str, Any]) -> Reply:
        count["n"] += 1
        if count["n"] > 15:  # hold every later reply until the test has killed a worker
            release.wait(timeout=120)
        return Reply(content=respond(body))

    out = tmp_path / "run"
    with LoopbackServer(responder=gated) as srv:
        proc = subprocess.Popen(
            _batch(out, srv, "--engine", "ray", "--partitions", "2", "--concurrency", "8", "--tpm", "2000000", "--task", "recommend"),
            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            pid_file = partition_dir(out, 0, 2) / "worker.pid"
            while count["n"] <= 15 or not pid_file.exists():
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "the run made no progress"
                time.sleep(0.02)
            os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the worker holding partition 0
        finally:
            release.set()
        stdout, stderr = proc.communicate(timeout=300)
        sent = [
            r.headers[CUSTOM_ID_HEADER.lower()] for r in srv.requests if r.path.endswith("/chat/completions")
        ]
    assert proc.returncode == 0, stderr[-3000:]
    pairs = [(r["user_id"], r["task"]) for r in _results(out)]
    assert len(pairs) == len(set(pairs)) == 50  # every user exactly once
    repeats = len(sent) - len(set(sent))
    assert repeats <= 8  # at most what was in flight in the killed worker
    assert stdout.lstrip().startswith("{"), (stdout[-500:], stderr[-3000:])
    assert json.loads(stdout)["failures"] == 0


def test_a_killed_driver_resumes_without_repaying_and_ends_with_the_local_engines_results(
    tmp_path: Path, server: LoopbackServer
) -> None:
    out = tmp_path / "run"
    command = _batch(
        out, server, "--engine", "ray", "--partitions", "2", "--concurrency", "4", "--tpm", "2000000",
        "--task", "recommend",
    )  # fmt: skip
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    try:
        while _done(out) < 10:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
    done_at_kill = _done(out)
    sent_before = len(server.requests)
    rerun = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resent = [
        r.headers[CUSTOM_ID_HEADER.lower()]
        for r in server.requests[sent_before:]
        if r.path.endswith("/chat/completions")
    ]
    pairs = [(r["user_id"], r["task"]) for r in _results(out)]
    assert len(pairs) == len(set(pairs)) == 50
    assert len(resent) <= 50 - done_at_kill + 4  # the rest, plus at most what was in flight
    summary = json.loads(rerun.stdout)
    assert summary["engine"] == "ray" and summary["partitions"] == 2 and summary["failures"] == 0
    assert sum(p["skipped_already_done"] for p in summary["per_partition"]) >= done_at_kill
    # killed, resumed and merged, the output has the local engine's content
    local = subprocess.run(
        _batch(tmp_path / "local", server, "--task", "recommend"), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300
    )  # fmt: skip
    assert local.returncode == 0, local.stderr[-2000:]
    assert _content(out) == _content(tmp_path / "local")


def test_two_node_cluster_on_loopback_stays_under_the_shared_limit(
    tmp_path: Path, server: LoopbackServer
) -> None:
    # Ray swaps 127.0.0.1 for the machine's network address; other 127/8 addresses it keeps,
    # so the head is 127.0.0.2 and the second node 127.0.0.3: all traffic stays on loopback.
    port = _free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Unix socket paths must stay short
    env = {**ENV, "RAY_TMPDIR": str(temp)}
    options = ["--num-cpus", "1", "--include-dashboard", "false", "--disable-usage-stats"]
    head = [str(RAY_BIN), "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.2", *options]
    worker = [
        str(RAY_BIN),
        "start",
        "--address",
        f"127.0.0.2:{port}",
        "--node-ip-address",
        "127.0.0.3",
        *options[:2],
        "--disable-usage-stats",
    ]
    try:
        for command in (head, worker):
            started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
            assert started.returncode == 0, started.stderr[-2000:]
        # a scaled minute (1 s) and a TPM that binds: 50 requests of ~6k tokens need ~5 windows
        run = subprocess.run(
            _batch(tmp_path / "out", server, "--engine", "ray", "--address", f"127.0.0.2:{port}", "--partitions", "2",
                   "--tpm", "60000", "--minute-seconds", "1", "--concurrency", "8", "--task", "recommend"),
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        subprocess.run([str(RAY_BIN), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    assert summary["nodes"] == 2 and summary["partitions"] == 2 and summary["failures"] == 0
    assert summary["results"] == 50
    assert 0 < summary["max_tokens_admitted_in_a_minute"] <= 60000


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

#!/usr/bin/env python3
"""Benchmark of ``recagent batch`` against a rate-limited loopback server (not a test).

The server runs in its own process (so its CPU does not compete with the client's), answers
with the deterministic stand-in model after ``--latency`` seconds and enforces RPM/TPM token
buckets with 429 + ``retry-after-ms`` exactly as ``agent.testing.loopback.Limits`` does, on a scaled
minute (``--minute-s``). The client is the real runner (``agent.batch.runner.run_batch``) with the
same limits given to it. The server charges TPM as ``--charge`` says (``Limits.charge``):
``reserved`` takes prompt + ``max_completion_tokens`` at admission and keeps it (as OpenAI
documents), ``actual`` takes the same at admission and gives back the unused part of the
completion reservation when the reply is produced. Each user count runs once per charging mode
given (default both). ``--max-completion-tokens`` (default 2000, the product's default) is only
the upper bound: the runner's learned completion budget (``agent/batch/budget.py``) sets the cap
each request reserves. Reported per run:

* share of TPM turned into tokens *as the server charged them*: for every request the server
  answered, its prompt estimate (``estimate_tokens`` of the messages, 4 characters a token)
  plus, with ``reserved``, the ``max_completion_tokens`` the request reserved, with ``actual``,
  the completion tokens produced; summed and divided by the most the limit allows from the
  first to the last answered request (its refill over that span plus the full bucket it
  starts with);
* the share of requests answered 429 (of all chat requests the server saw);
* lost: users × tasks without a result at the end of the run;
* repeated: requests the server answered minus the distinct custom ids among them (the
  runner's ``X-Recagent-Custom-Id`` header; a truncated reply asked again counts as a repeat);
* the completion cap per task the run ended with, the tokens the client's limiter refunded
  (``RateLimiter._refund_unused``) and the truncated replies asked again;
* time to first request: seconds from the call of ``run_batch`` (data loaded, agent built) to
  the arrival of the first chat request at the server, both read on ``time.monotonic``
  (CLOCK_MONOTONIC, one clock for both processes on Linux);
* client memory: the current RSS (after a garbage collection) just before the run and when
  10%, 25%, 50%, 75% and 100% of the users are finished (sampled from the runner's progress
  callback), the growth from the 10% point to the end per 1,000 users (the slope; the first
  10% hold the one-off warm-up: SDK and pydantic models built on first use, SQLite's page
  cache, allocator arenas), and the process's peak RSS. The memory target is judged on the
  slope after the first ``WARMUP_USERS`` (1,000) users, by when prompt fitting's bounded
  caches are full; a shorter run shows its slope but is not judged;
* local overhead per user without network (history slice, render, count, key, validate,
  ground) as a median: over every user of the run, timed around the runner's own calls while
  it runs (``RunnerStepTimes``; the target is judged on this), and over the first users timed
  before the run with every cache cold.

Transparent huge pages are disabled for the client (``prctl(PR_SET_THP_DISABLE)``, Linux;
``--thp system`` keeps the machine's setting): numpy asks for huge pages on large arrays and
khugepaged then fills them in the background, so the RSS of a process holding the data grows
with wall time, not with users (an idle process with the 10,000-user data loaded grew by about
30 MB in two minutes here). With it on, a slope measured over a 20-minute run is mostly that.

Each run is a fresh process so peak RSS is per run. Examples (the commands behind
docs/BENCHMARKS.md; the 10,000-user runs on a shorter scaled minute so they end in minutes)::

    python scripts/bench_batch.py --users 1000 > rows-1k.jsonl
    python scripts/bench_batch.py --users 10000 --minute-s 1.5 > rows-10k.jsonl
    python scripts/bench_batch.py --rows rows-1k.jsonl rows-10k.jsonl --write-docs
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import math
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchdocs import write_section  # noqa: E402

from agent.batch.runner import CUSTOM_ID_HEADER, BatchSettings, Planner, Snapshot, run_batch  # noqa: E402
from agent.data.loading import align_catalog, load_events, load_items  # noqa: E402
from agent.llm.client import LLMConfig, StructuredReply  # noqa: E402
from agent.recommender import RecommenderAgent, interpret_reply  # noqa: E402
from agent.testing.loopback import Limits, LoopbackServer, Reply  # noqa: E402
from agent.testing.loopback_replies import Answer, estimate_tokens  # noqa: E402
from agent.testing.standin_model import respond  # noqa: E402

START, END = "<!-- batch:start -->", "<!-- batch:end -->"
SAMPLE_POINTS = (0.1, 0.25, 0.5, 0.75, 1.0)
"""Fractions of users finished at which the client's RSS is sampled."""
FLAT_MB_PER_1K_USERS = 0.5
"""The memory target: RSS grows by at most this much per 1,000 users after ``WARMUP_USERS``."""
WARMUP_USERS = 1000
"""Users after which memory is judged: by then prompt fitting's bounded caches (lines, token
counts, frames) are full; a run that ends within the warm-up shows its slope but is not judged."""
PR_SET_THP_DISABLE, PR_GET_THP_DISABLE = 41, 42


def disable_thp() -> bool:
    """Turn transparent huge pages off for this process and its children; True if in effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)
        return thp_disabled()
    except (OSError, AttributeError):
        return False


def thp_disabled() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL(None).prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1)
    except (OSError, AttributeError):
        return False


def rss_mb() -> float:
    """Current resident set size of this process in MB (VmRSS; peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssSampler:
    """The runner's progress callback: current RSS when each fraction of the users is finished.

    The run's user count is ``snapshot.total / tasks``; ``users_finished`` rises by one at a
    time, so each sample is taken at its exact user count.
    """

    def __init__(self, tasks: int, points: tuple[float, ...] = SAMPLE_POINTS) -> None:
        self.tasks, self.points = tasks, points
        self.marks: list[tuple[float, int]] | None = None
        self.samples: list[dict[str, float]] = []

    def __call__(self, snapshot: Snapshot) -> None:
        if self.marks is None:
            users = snapshot.total // self.tasks
            self.marks = [(p, max(1, math.ceil(p * users))) for p in self.points]
        while self.marks and snapshot.users_finished >= self.marks[0][1]:
            fraction, _ = self.marks.pop(0)
            gc.collect()  # garbage waiting for the collector is not what the runner keeps
            self.samples.append({"fraction": fraction, "users": snapshot.users_finished, "rss_mb": rss_mb()})


def growth_per_1k(samples: list[dict[str, float]], from_users: int = 0) -> float | None:
    """RSS growth from the first sample at ``from_users`` or more users (by default the 10%
    point) to the last, in MB per 1,000 users; None without two such samples."""
    after = [s for s in samples if s["users"] >= from_users]
    if len(after) < 2 or after[-1]["users"] <= after[0]["users"]:
        return None
    first, last = after[0], after[-1]
    return (last["rss_mb"] - first["rss_mb"]) / (last["users"] - first["users"]) * 1000


class RunnerStepTimes:
    """Local work per user during the run, timed around the runner's own calls.

    ``Planner.prepare`` (history slice, prompt fitting, body, key), ``Exchange.received``
    (reading, validating the reply; re-asks add up) and ``interpret_reply`` (ground, blend),
    joined per request through its prompt and context objects. Inside the run the module
    caches are as a long batch has them (token clauses warm, each user's lines new), and the
    users are spread over the whole run, so a slow minute of the machine moves the median little.
    """

    def __init__(self) -> None:
        self.totals: list[float] = []  # seconds per finished request
        self._open: dict[int, tuple[list[float], int]] = {}  # context id -> (time, prompt id)
        self._by_prompt: dict[int, list[float]] = {}
        self.steps: dict[str, list[float]] = {"prepare": [], "read_and_validate": [], "interpret": []}

    def __enter__(self) -> RunnerStepTimes:
        import agent.batch.runner as batch_module
        import agent.llm.client as llm_module

        self._saved = (
            batch_module.Planner.prepare,
            llm_module.Exchange.received,
            batch_module.interpret_reply,
        )
        prepare, received, interpret = self._saved

        def timed_prepare(planner: Planner, user_id: str, task: str) -> Any:
            start = time.perf_counter()
            item = prepare(planner, user_id, task)
            self.steps["prepare"].append(time.perf_counter() - start)
            if item.prepared is not None:
                spent = [time.perf_counter() - start]
                self._open[id(item.prepared.context)] = (spent, id(item.prepared.prompt))
                self._by_prompt[id(item.prepared.prompt)] = spent
            return item

        def timed_received(exchange: Any, completion: Any) -> Any:
            start = time.perf_counter()
            try:
                return received(exchange, completion)
            finally:
                self.steps["read_and_validate"].append(time.perf_counter() - start)
                spent = self._by_prompt.get(id(exchange.prompt))
                if spent is not None:
                    spent[0] += time.perf_counter() - start

        def timed_interpret(context: Any, reply: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = interpret(context, reply, *args, **kwargs)
            self.steps["interpret"].append(time.perf_counter() - start)
            opened = self._open.pop(id(context), None)
            if opened is not None:
                spent, prompt_id = opened
                self._by_prompt.pop(prompt_id, None)
                self.totals.append(spent[0] + time.perf_counter() - start)
            return result

        batch_module.Planner.prepare = timed_prepare  # type: ignore[method-assign,assignment]
        llm_module.Exchange.received = timed_received  # type: ignore[method-assign,assignment]
        batch_module.interpret_reply = timed_interpret
        return self

    def __exit__(self, *exc: object) -> None:
        import agent.batch.runner as batch_module
        import agent.llm.client as llm_module

        prepare, received, interpret = self._saved
        batch_module.Planner.prepare = prepare  # type: ignore[method-assign]
        llm_module.Exchange.received = received  # type: ignore[method-assign]
        batch_module.interpret_reply = interpret

    def median_ms(self) -> float | None:
        return statistics.median(self.totals) * 1000 if self.totals else None

    def step_medians_ms(self) -> dict[str, float]:
        return {name: statistics.median(times) * 1000 for name, times in self.steps.items() if times}


class _CountingServer(LoopbackServer):
    """The loopback server, noting per chat request its arrival, custom id, status and the
    tokens the server charged for it (see ``charged_tokens``)."""

    def __init__(self, *args: Any, charge: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.charge = charge
        self.log: list[tuple[float, float, str, int, int]] = []  # arrival, done, id, status, charged

    def _handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Answer:
        arrived = time.monotonic()
        answer = super()._handle(method, target, headers, raw)
        if method == "POST" and target.split("?", 1)[0].rstrip("/") == "/v1/chat/completions":
            charged = 0
            if answer.status == 200 and answer.body:
                charged = charged_tokens(json.loads(raw), json.loads(answer.body), self.charge)
            with self._lock:
                self.requests.clear()  # the recorded bodies are not needed here; keep the server small
                self.log.append(
                    (
                        arrived,
                        time.monotonic(),
                        headers.get(CUSTOM_ID_HEADER.lower(), ""),
                        answer.status,
                        charged,
                    )
                )
        return answer


def charged_tokens(body: dict[str, Any], completion: dict[str, Any], charge: str) -> int:
    """What the server charged against TPM for one answered request, by its own estimate:
    the prompt (``estimate_tokens`` of the messages) plus, with ``charge="reserved"``, the
    ``max_completion_tokens`` reserved at admission, with ``charge="actual"`` the completion
    tokens produced (the unused reservation was given back)."""
    prompt = estimate_tokens(json.dumps(body["messages"], ensure_ascii=False))
    if charge == "reserved":
        return prompt + int(body.get("max_completion_tokens") or body.get("max_tokens") or 0)
    return prompt + int((completion.get("usage") or {}).get("completion_tokens") or 0)


def _serve(conn: Any, rpm: int, tpm: int, minute_s: float, latency: float, charge: str) -> None:
    """Child process: the limited server; reports what it saw when told to stop."""
    limits = Limits(rpm=rpm, tpm=tpm, minute_s=minute_s, charge=charge)  # type: ignore[arg-type]
    responder = lambda body: Reply(content=respond(body))  # noqa: E731
    with _CountingServer(responder=responder, limits=limits, latency_s=latency, charge=charge) as server:
        conn.send(server.base_url)
        conn.recv()  # "stop"
        stats = server.stats
        conn.send(
            {
                "chat_completions": stats.chat_completions,
                "rate_limited": stats.rate_limited,
                "log": server.log,
            }
        )


def make_data(users: int, directory: Path) -> tuple[Path, Path]:
    """Synthetic data for ``users`` users with the committed generator (fixed seed)."""
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "make_sample_data.py"),
            "--out",
            str(directory),
            "--seed",
            "7",
            "--users",
            str(users),
            "--items",
            "300",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return directory / "events.csv", directory / "items.csv"


def overhead_ms(agent: RecommenderAgent, config: LLMConfig, users: list[str], task: str) -> float:
    """Median local time per user (no network): prepare + key, then validate + ground the reply."""
    planner = Planner(agent, config, BatchSettings(out_dir=Path("."), tasks=(task,)))
    times = []
    for user in users:
        start = time.perf_counter()
        item = planner.prepare(user, task)
        assert item.prepared is not None and item.body is not None
        output = item.prepared.context.output_model()
        prepared = time.perf_counter()
        raw = respond(item.body)  # the stand-in's reply text: the server's work, not timed
        replied = time.perf_counter()
        value = output.model_validate_json(raw)
        reply: StructuredReply[Any] = StructuredReply(value, raw, _usage(), 1, "json_schema", "m", "t")
        interpret_reply(item.prepared.context, reply)
        end = time.perf_counter()
        times.append((prepared - start) + (end - replied))
    return statistics.median(times) * 1000


def _usage() -> Any:
    from agent.errors import Usage

    return Usage(requests=1)


def breakdown(task: str, model: str, max_completion_tokens: int) -> dict[str, float]:
    """Median ms per user and task on fixtures/sample (50 users), by step, no network."""
    from agent.batch.runner import custom_id
    from agent.llm.client import build_request_body

    items = load_items(ROOT / "fixtures" / "sample" / "items.csv")
    events = align_catalog(load_events(ROOT / "fixtures" / "sample" / "events.csv"), items)
    agent = RecommenderAgent(events.frame, items.frame, None)
    config = LLMConfig(model=model, max_completion_tokens=max_completion_tokens)
    agent.token_model = model
    steps: dict[str, list[float]] = {"prepare": [], "body_and_key": [], "validate": [], "ground": []}
    for user in agent.histories:
        t0 = time.perf_counter()
        prepared = agent.prepare_profile(user) if task == "profile" else agent.prepare_recommend(user)
        t1 = time.perf_counter()
        body = build_request_body(config, prepared.prompt, prepared.context.output_model())
        custom_id(user, task, prepared.prompt.version, model, {}, body)
        t2 = time.perf_counter()
        raw = respond(body)
        t3 = time.perf_counter()
        value = prepared.context.output_model().model_validate_json(raw)
        t4 = time.perf_counter()
        reply: StructuredReply[Any] = StructuredReply(value, raw, _usage(), 1, "json_schema", model, "t")
        interpret_reply(prepared.context, reply)
        t5 = time.perf_counter()
        for name, seconds in zip(steps, (t1 - t0, t2 - t1, t4 - t3, t5 - t4), strict=True):
            steps[name].append(seconds * 1000)
    out = {name: statistics.median(values) for name, values in steps.items()}
    out["total"] = statistics.median(
        sum(values[i] for values in steps.values()) for i in range(len(steps["prepare"]))
    )
    return out


def single(args: argparse.Namespace, users: int) -> dict[str, Any]:
    """One run in this process: data, server, runner, measurements."""
    with tempfile.TemporaryDirectory() as tmp:
        events_path, items_path = make_data(users, Path(tmp) / "data")
        items = load_items(items_path)
        events = align_catalog(load_events(events_path), items)
        agent = RecommenderAgent(events.frame, items.frame, None)
        config_model = LLMConfig(model=args.model, max_completion_tokens=args.max_completion_tokens)
        sample_users = list(agent.histories)[: args.overhead_users]
        tasks = tuple(args.task.split(","))
        local_ms = overhead_ms(agent, config_model, sample_users, tasks[-1])

        parent, child = mp.Pipe()
        proc = mp.get_context("spawn").Process(
            target=_serve, args=(child, args.rpm, args.tpm, args.minute_s, args.latency, args.charge[0])
        )
        proc.start()
        base_url = parent.recv()
        gc.collect()
        rss_before = rss_mb()
        config = LLMConfig(
            model=args.model,
            base_url=base_url,
            api_key="not-a-key",
            max_completion_tokens=args.max_completion_tokens,
            timeout_s=60,
        )
        settings = BatchSettings(
            out_dir=Path(tmp) / "out",
            tasks=tasks,
            concurrency=args.concurrency,
            rpm=args.rpm,
            tpm=args.tpm,
            minute_s=args.minute_s,
        )
        sampler = RssSampler(len(settings.tasks))
        start = time.monotonic()  # CLOCK_MONOTONIC: the server process's clock too (Linux)
        with RunnerStepTimes() as in_run:
            summary = asyncio.run(run_batch(agent, config, settings, on_progress=sampler))
        wall = time.monotonic() - start
        failure_types: dict[str, int] = {}
        for line in (Path(tmp) / "out" / "failures.jsonl").read_text().splitlines():
            kind = json.loads(line)["error"]["type"]
            failure_types[kind] = failure_types.get(kind, 0) + 1
        rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        parent.send("stop")
        server = parent.recv()
        proc.join()

    log = server["log"]
    chat = list(log)
    admitted = [entry for entry in chat if entry[3] == 200]
    total = sum(entry[4] for entry in admitted)
    t0, t1 = min(e[1] for e in admitted), max(e[1] for e in admitted)
    span_min = max(t1 - t0, 1e-9) / args.minute_s
    # The most the limit allows from the first to the last answered request: its refill over
    # the span plus the bucket it starts with (full, one minute's worth).
    overall = total / (args.tpm * (span_min + 1))
    unique_ids = len({e[2] for e in admitted})
    expected = users * len(settings.tasks)
    return {
        "users": users,
        "charge": args.charge[0],
        "minute_s": args.minute_s,
        "max_completion_tokens": args.max_completion_tokens,
        "requests_ok": summary.results,
        "failures": summary.failures,
        "failure_types": failure_types,
        "expected_results": expected,
        "lost": expected - summary.results,
        "server_chat_requests": server["chat_completions"],
        "server_answered": len(admitted),
        "unique_custom_ids": unique_ids,
        "repeated": len(admitted) - unique_ids,
        "rate_limited": server["rate_limited"],
        "share_429": server["rate_limited"] / max(server["chat_completions"], 1),
        "tpm_fraction": overall,
        "tokens_charged": total,
        "time_to_first_request_s": min(e[0] for e in chat) - start if chat else None,
        "completion_caps": summary.extra.get("completion_caps"),
        "refunded_tokens": summary.extra.get("refunded_tokens"),
        "truncated_reasked": summary.progress.truncated_reasked,
        "wall_s": wall,
        "rss_before_run_mb": rss_before,
        "rss_samples": sampler.samples,
        "rss_growth_mb_per_1k_users": growth_per_1k(sampler.samples),
        "rss_peak_mb": rss_peak,
        "thp_disabled": thp_disabled(),
        "local_overhead_ms_median": local_ms,
        "local_overhead_in_run_ms_median": in_run.median_ms(),
        "local_overhead_in_run_requests": len(in_run.totals),
        "local_overhead_in_run_steps_ms": in_run.step_medians_ms(),
        "final_concurrency": summary.extra.get("final_concurrency"),
        "load_avg": os.getloadavg(),
    }


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def _rss_at(row: dict[str, Any], fraction: float) -> str:
    found = [x["rss_mb"] for x in row.get("rss_samples", []) if x["fraction"] == fraction]
    return f"{found[0]:.0f}" if found else "n/a"


def table(rows: list[dict[str, Any]], args: argparse.Namespace, command: str) -> str:
    thp = (
        "transparent huge pages off for the client"
        if all(r.get("thp_disabled") for r in rows)
        else "transparent huge pages as the system sets them"
    )
    minutes = {r["users"]: r.get("minute_s", args.minute_s) for r in rows}
    caps = sorted({r.get("max_completion_tokens", args.max_completion_tokens) for r in rows})
    head = (
        f"Loopback server in its own process: TPM {args.tpm:,} / RPM {args.rpm:,} per scaled minute of "
        f"{', '.join(f'{m:g} s ({u:,} users)' for u, m in minutes.items())}, {args.latency:g} s latency, stand-in model replies, "
        "charging TPM as the *charge* column says; client: "
        f"`--task {args.task} --concurrency {args.concurrency} --max-completion-tokens "
        f"{' / '.join(str(c) for c in caps)}` (the upper bound of the learned completion budget), "
        f"same limits, {thp}. Machine: 2 cores; load average (1, 5, 15 min) at the end of each run "
        "in the last column.\n\n"
        "| users | charge | TPM share (tokens as charged) | 429 share | lost | repeated "
        "| server requests: seen / answered / unique ids | time to first request | caps at end "
        "| refunded tokens | truncated re-asks | wall s | load |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['users']:,} | {r.get('charge', 'reserved')} | {r['tpm_fraction']:.3f} | {r['share_429']:.2%} "
        f"| {r.get('lost', 'n/a')} | {r.get('repeated', 'n/a')} "
        f"| {r['server_chat_requests']:,} / {r.get('server_answered', 0):,} / {r.get('unique_custom_ids', 0):,} "
        f"| {_s(r.get('time_to_first_request_s'))} "
        f"| {', '.join(f'{t} {c}' for t, c in (r.get('completion_caps') or {}).items()) or 'n/a'} "
        f"| {r.get('refunded_tokens', 0):,} | {r.get('truncated_reasked', 0)} | {r['wall_s']:.0f} "
        f"| {' / '.join(f'{x:.1f}' for x in r.get('load_avg', ()))} |\n"
        for r in rows
    )
    body += (
        "\n| users | charge | client RSS MB: before run / at 10% / 50% / end of users "
        "| RSS growth 10% → end, MB per 1,000 users | client peak RSS MB "
        "| local overhead / user, median: in the run | … first users, before the run, caches cold |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    body += "".join(
        f"| {r['users']:,} | {r.get('charge', 'reserved')} | {r['rss_before_run_mb']:.0f} / {_rss_at(r, 0.1)} "
        f"/ {_rss_at(r, 0.5)} / {_rss_at(r, 1.0)} | {_mb(r.get('rss_growth_mb_per_1k_users'))} "
        f"| {r['rss_peak_mb']:.0f} | {_ms(r.get('local_overhead_in_run_ms_median'))} "
        f"| {r['local_overhead_ms_median']:.1f} ms |\n"
        for r in rows
    )
    body += (
        "\n*TPM share* is the tokens the server charged for the requests it answered, divided by "
        "the most the TPM limit allows from the first to the last answered request (its refill over "
        "that span plus the full bucket it starts with). A request is charged as the server "
        "charges it: with `charge=reserved` the prompt (the server's estimate, 4 characters a "
        "token) plus the `max_completion_tokens` reserved at admission; with `charge=actual` the "
        "prompt plus the completion tokens produced. *Lost*: users × tasks without a result. "
        "*Repeated*: requests the server answered minus the distinct custom ids among them (a "
        "truncated reply asked again counts as one repeat; 429 answers are not repeats, they are in "
        "the 429 share). "
        "*Time to first request*: from the call of `run_batch` (data loaded, agent built) to the "
        "arrival of the first request at the server, both on the machine's monotonic clock. "
        "*Caps at end*: the learned completion cap per task when the run ended; *refunded*: "
        "completion tokens the client's limiter gave back after `x-ratelimit-remaining-tokens` "
        "showed the server charged actual usage.\n"
    )
    cold = breakdown(args.task.split(",")[-1], args.model, args.max_completion_tokens)
    warm = breakdown(args.task.split(",")[-1], args.model, args.max_completion_tokens)

    def steps(parts: dict[str, float]) -> str:
        listed = ", ".join(f"{name} {ms:.1f} ms" for name, ms in parts.items() if name != "total")
        return f"{listed}; total {parts['total']:.1f} ms"

    detail = (
        f"\nLocal overhead by step (median per user, `{args.task}`, fixtures/sample: 50 users, "
        f"~80 events each, 6,000-token prompt budget), in a process where every cache is cold "
        f"(each user, item title and token clause seen for the first time): {steps(cold)}; the "
        f"same users again with a new agent, the module caches (history line parts, token counts, "
        f"frames, reply models) warm: {steps(warm)}. `prepare` is the retriever query plus the "
        "agent's prompt fitting: the user's event columns cut from whole-log arrays "
        "(`agent/data/event_columns.py`), each history line's JSON and exact token count summed from "
        "cached per-field parts (`agent/prompting/lines.py`), the frame around the history "
        "(`agent/prompting/fit.py`); `body_and_key` "
        "includes the per-request reply model (enums of this user's ids). The target is judged "
        "on the table's in-run median: the runner's own calls for every user, timed while it runs "
        "them (`RunnerStepTimes`: prepare, read and validate the reply, interpret), spread over the "
        "whole run; the last column times the run's first users before it, cold, in one burst of "
        "about a second, so a slow minute of the machine shows there in full.\n"
    )
    notes = f"\n\n{args.notes.read_text(encoding='utf-8').strip()}" if args.notes else ""
    targets = (
        "\n"
        + issue18_targets(rows)
        + notes
        + (
            f"\n\nEarlier targets: local overhead ≤ 5 ms per user (median over the run's users, in the run): "
            f"{'met' if all((r.get('local_overhead_in_run_ms_median') or 99) <= 5 for r in rows) else 'NOT met'}. "
            f"{memory_verdict(rows)}\n"
        )
    )
    method = (
        "\nMemory is the client's current RSS after a garbage collection, sampled from the runner's "
        "progress callback; the step from *before run* to the 10% point is the one-off warm-up (SDK "
        "and pydantic models built on first use, SQLite's page cache filling to its 2 MB cap, "
        "allocator arenas), the slope after it is what grows with users; until about "
        f"{WARMUP_USERS:,} users it includes prompt fitting's caches of token counts, rendered lines "
        "and frames (`agent/prompting/tokens.py`, `agent/prompting/lines.py`, `agent/prompting/fit.py`), bounded LRUs "
        "that fill to their caps, so the target is judged after that point. The runner holds only "
        "the requests in flight (a queue of 2 × concurrency); results go to the SQLite ledger and "
        "`results.jsonl` is written from it at the end. The data frames loaded before the run "
        "grow with the data, not with the run.\n"
    )
    in_run_steps = "; ".join(
        f"{r['users']:,} users: "
        + ", ".join(f"{name} {ms:.2f} ms" for name, ms in r["local_overhead_in_run_steps_ms"].items())
        for r in rows
        if r.get("local_overhead_in_run_steps_ms")
    )
    if in_run_steps:
        detail += f"\nIn the run, median per step (`RunnerStepTimes`): {in_run_steps}.\n"
    return (
        f"{START}\n## Batch runner\n\nCommand(s): {command}\n\n{head}{body}{detail}{targets}{method}\n{END}"
    )


def issue18_targets(rows: list[dict[str, Any]]) -> str:
    """Issue 18's "Done when" for the benchmark, computed from the rows."""
    lines = []
    for charge in ("reserved", "actual"):
        at1k = [r for r in rows if r["users"] == 1000 and r.get("charge") == charge]
        if not at1k:
            lines.append(f"- 1,000 users, `charge={charge}`: not run.")
            continue
        r = at1k[0]
        ok = r["tpm_fraction"] >= 0.95 and r["share_429"] <= 0.01 and r.get("lost") == 0
        lines.append(
            f"- 1,000 users, `charge={charge}`: ≥ 0.95 of TPM, ≤ 1% 429s, 0 lost: "
            f"{'met' if ok else 'NOT met'} ({r['tpm_fraction']:.3f}, {r['share_429']:.2%}, {r.get('lost')} lost)."
        )
    for users in (1000, 10000):
        runs = [r for r in rows if r["users"] == users and r.get("time_to_first_request_s") is not None]
        if not runs:
            lines.append(f"- Time to first request ≤ 1 s at {users:,} users: not run.")
            continue
        worst = max(r["time_to_first_request_s"] for r in runs)
        lines.append(
            f"- Time to first request ≤ 1 s at {users:,} users: {'met' if worst <= 1 else 'NOT met'} "
            f"(at most {worst:.2f} s over {len(runs)} run(s))."
        )
    parts = []
    for charge in ("reserved", "actual"):
        small = [r for r in rows if r["users"] == 1000 and r.get("charge") == charge]
        big = [r for r in rows if r["users"] == 10000 and r.get("charge") == charge]
        if not (small and big):
            continue
        grown = [
            (r["rss_samples"][-1]["rss_mb"] - r["rss_before_run_mb"])
            for r in (small[0], big[0])
            if r["rss_samples"]
        ]
        if len(grown) == 2:
            per_1k = (grown[1] - grown[0]) / 9
            parts.append((charge, grown[0], grown[1], per_1k, big[0].get("rss_growth_mb_per_1k_users")))
    if parts:
        ok = all(p[3] <= 5 and (p[4] is None or p[4] <= 5) for p in parts)
        detail = "; ".join(
            f"`{c}`: run's RSS growth (end − before run) {a:+.1f} MB at 1,000 users, {b:+.1f} MB at 10,000, "
            f"{d:+.2f} MB per 1,000 users between them; in the 10,000-user run {_mb(e)} MB per 1,000 users "
            "from 10% to the end"
            for c, a, b, d, e in parts
        )
        lines.append(
            f"- Client RSS flat between 1,000 and 10,000 users (≤ +5 MB per 1,000 users): "
            f"{'met' if ok else 'NOT met'} ({detail}). The data frames loaded before the run "
            "grow with the data and are not counted."
        )
    return 'Issue 18 targets ("Done when"):\n\n' + "\n".join(lines)


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def memory_verdict(rows: list[dict[str, Any]]) -> str:
    """The memory target's statement, computed per user count from the sampled slope."""
    parts = []
    for r in rows:
        slope = growth_per_1k(r["rss_samples"], WARMUP_USERS)
        if slope is None:
            parts.append(
                f"not judged at {r['users']:,} users (the run ends within the {WARMUP_USERS:,}-user "
                "warm-up in which the bounded caches fill; its slope is in the table)"
            )
            continue
        met = slope <= FLAT_MB_PER_1K_USERS
        first = next(s["users"] for s in r["rss_samples"] if s["users"] >= WARMUP_USERS)
        parts.append(
            f"{'met' if met else 'NOT met'} at {r['users']:,} users ({slope:+.2f} MB per 1,000 users "
            f"from {first:,} users to the end)"
        )
    return (
        f"Client memory flat in the number of users (RSS growth after the first {WARMUP_USERS:,} users "
        f"≤ {FLAT_MB_PER_1K_USERS:g} MB per 1,000 users): " + "; ".join(parts) + "."
    )


def write_docs(text: str) -> None:
    write_section(text, START, END)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument(
        "--task",
        default="recommend",
        choices=("profile", "recommend", "profile,recommend"),
        help="the task(s) of each user; profile,recommend sends both (the recommend after the profile's reply)",
    )
    parser.add_argument("--rpm", type=int, default=10_000)
    parser.add_argument("--tpm", type=int, default=300_000)
    parser.add_argument("--minute-s", type=float, default=6.0)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-completion-tokens", type=int, default=2000)
    parser.add_argument(
        "--charge",
        nargs="+",
        choices=("reserved", "actual"),
        default=["reserved", "actual"],
        help="how the server charges TPM (Limits.charge); each given mode is run for each user count",
    )
    parser.add_argument("--model", default="gpt-4.1-mini")
    parser.add_argument("--overhead-users", type=int, default=200)
    parser.add_argument(
        "--thp",
        choices=("off", "system"),
        default="off",
        help="transparent huge pages for the client: off (default; see the module docstring) or as set",
    )
    parser.add_argument("--write-docs", action="store_true", help="update docs/BENCHMARKS.md")
    parser.add_argument("--notes", type=Path, help="a Markdown file with remarks put after the targets")
    parser.add_argument("--single", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--rows", type=Path, nargs="+", help="re-use result rows (JSON lines) of earlier runs; no new runs"
    )
    args = parser.parse_args()
    if args.thp == "off" and not disable_thp():  # inherited by the --single children
        print("bench_batch: cannot disable transparent huge pages here; RSS includes them", file=sys.stderr)
    if args.single:
        print(json.dumps(single(args, args.single)))
        return
    rows = []
    passthrough = [a for a in sys.argv[1:] if a != "--write-docs"]
    command = "python scripts/bench_batch.py " + " ".join(passthrough)
    if args.rows:
        rows = [
            json.loads(line)
            for path in args.rows
            for line in path.read_text().splitlines()
            if line.startswith("{")
        ]
    runs = [] if args.rows else [(users, charge) for users in args.users for charge in args.charge]
    for users, charge in runs:
        out = subprocess.run(  # the last --charge given wins in the child
            [sys.executable, __file__, *passthrough, "--single", str(users), "--charge", charge],
            check=True,
            capture_output=True,
            text=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["command"] = command
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.rows:
        command = " and ".join(dict.fromkeys(f"`{r['command']}`" for r in rows if r.get("command")))
    else:
        command = f"`{command}`"
    text = table(rows, args, command.strip())
    print(text)
    if args.write_docs:
        write_docs(text)


if __name__ == "__main__":
    main()

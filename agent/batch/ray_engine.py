"""The batch runner on a Ray cluster: partitions of users run where Ray places them, under one
shared rate limit, each with its own ledger.

``run_batch_ray(events, items, agent_config, llm_config, settings, address=...)``:

* **Partitions.** Users are split into ``partitions`` by the same stable hash as ``--shard``
  (``shard_of``); partition ``i`` runs ``run_batch`` with ``shard=(i, partitions)`` into
  ``out_dir/partitions/i-of-N``, as a Ray task that builds its own agent from the events and
  items frames put once into the object store (each user's history travels whole with it).
* **One limit for the cluster.** A ``SharedBuckets`` actor holds the account's RPM/TPM limits
  as sliding windows. Every attempt in every partition takes its request and token estimate from the
  actor before it is sent (``SharedRateLimiter``), corrections (reported vs estimated prompt
  tokens) and the server's ``x-ratelimit-remaining-*`` go back to it, so the cluster as a
  whole stays under the limits; the actor keeps a log of what it admitted (the tests check
  every 60-second window of it).
* **Exactly once.** A partition's ledger records every outcome before it counts; a worker
  killed mid-partition is retried by Ray (``max_retries``) and its rerun skips what is done,
  repeating at most what was in flight. Killing the driver and rerunning the same command
  resumes every partition the same way.
* **One output.** The partitions' results are merged into ``out_dir/results.jsonl`` and
  ``failures.jsonl`` (sorted by user, then task), the same content the local engine writes.

Ray is the optional ``recagent[ray]`` extra; ``address`` is ``None`` (a local Ray with
``num_cpus``), ``"auto"`` or ``HOST:PORT`` of a running cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pandas as pd

from agent import errors
from agent.batch.ledger import merge_outputs
from agent.batch.runner import BatchSettings, run_batch
from agent.llm.client import LLMConfig
from agent.llm.ratelimit import MIN_WAIT_S, RateLimiter, Ticket
from agent.recommender import AgentConfig, RecommenderAgent

PARTITIONS_DIR = "partitions"
WORKER_PID_FILE = "worker.pid"
"""Written in each partition directory by the process running it (operators and tests use it
to find or stop the worker that holds a partition)."""


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise errors.ConfigError("--engine ray needs the ray extra: pip install 'recagent[ray]'") from None
    return ray


class SharedBuckets:
    """The cluster's RPM/TPM limits as sliding windows (run as a Ray actor; a plain class too).

    An attempt is admitted only if the requests and tokens admitted in the last ``minute_s``
    seconds, plus its own, stay within the limits, so no 60-second window, wherever it
    starts, ever holds more than the limit (a token bucket that starts full would allow twice
    that across a window). Corrections and phantom charges (the server saying less is left
    than we think) enter the window like admissions.
    """

    def __init__(
        self, rpm: int | None, tpm: int | None, minute_s: float = 60.0, log_size: int = 200_000
    ) -> None:
        self.minute_s = minute_s
        self.limits: dict[str, float | None] = {"requests": rpm, "tokens": tpm}
        self._window: dict[str, deque[tuple[float, float]]] = {"requests": deque(), "tokens": deque()}
        self._used = {"requests": 0.0, "tokens": 0.0}
        self._log: deque[tuple[float, float]] = deque(maxlen=log_size)
        self._corrections: deque[tuple[float, float]] = deque(maxlen=log_size)
        self._start = time.monotonic()

    def _expire(self, now: float) -> None:
        for kind, window in self._window.items():
            while window and window[0][0] <= now - self.minute_s:
                self._used[kind] -= window.popleft()[1]

    def _charge(self, kind: str, amount: float, now: float) -> None:
        self._window[kind].append((now, amount))
        self._used[kind] += amount

    def _wait(self, kind: str, amount: float, now: float) -> float:
        limit = self.limits[kind]
        if limit is None or self._used[kind] + amount <= limit:
            return 0.0
        excess, window = self._used[kind] + amount - limit, self._window[kind]
        for stamp, value in window:  # the oldest entries leave first
            excess -= value
            if excess <= 0:
                return stamp + self.minute_s - now
        return self.minute_s  # pragma: no cover - amount <= limit is checked by the caller

    def take(self, requests: int, tokens: float) -> float:
        """Admit one attempt (0.0) or say how long to wait before asking again."""
        now = time.monotonic()
        self._expire(now)
        for kind, amount in (("requests", requests), ("tokens", tokens)):
            limit = self.limits[kind]
            if limit is not None and amount > limit:
                raise errors.BadRequestError(
                    f"one attempt needs {amount:.0f} {kind}, more than the limit {limit:.0f}"
                )
        wait = max(self._wait("requests", requests, now), self._wait("tokens", tokens, now))
        if wait > 0:  # not even a rounding's worth over: the window is exact
            return max(wait, MIN_WAIT_S)
        self._charge("requests", requests, now)
        self._charge("tokens", tokens, now)
        self._log.append((now - self._start, tokens))
        return 0.0

    def adjust(self, tokens: float) -> None:
        """Charge a correction learnt after a reply (the server counted more than estimated).

        Over-estimates are not given back: admissions then never exceed the limit in any
        window, and the calibration of later estimates (``RateLimiter``) recovers the rest.
        """
        if tokens <= 0:
            return
        now = time.monotonic()
        self._expire(now)
        self._charge("tokens", tokens, now)
        self._corrections.append((now - self._start, tokens))

    def observe(self, kind: str, limit: float | None, remaining: float | None) -> None:
        """The server's rate-limit headers: adopt an advertised limit, never believe we have more."""
        now = time.monotonic()
        self._expire(now)
        if self.limits[kind] is None and limit:
            self.limits[kind] = float(limit)
        current = self.limits[kind]
        if current is not None and remaining is not None:
            ours = current - self._used[kind]
            if remaining < ours:
                self._charge(kind, ours - remaining, now)

    def admitted(self) -> list[tuple[float, float]]:
        """(seconds since start, tokens reserved) of every admitted attempt, oldest first."""
        return list(self._log)

    def charged(self) -> list[tuple[float, float]]:
        """Admissions plus the corrections learnt from replies (what the server counted)."""
        return sorted([*self._log, *self._corrections])


class SharedRateLimiter(RateLimiter):
    """A partition's limiter: local concurrency and 429 pauses, the RPM/TPM budget from the
    cluster's ``SharedBuckets`` actor."""

    def __init__(self, buckets: Any, *, concurrency: int, minute_s: float = 60.0) -> None:
        super().__init__(rpm=None, tpm=None, concurrency=concurrency, minute_s=minute_s)
        self.shared = buckets

    async def _admit(self, tokens: float) -> None:
        """The local 429 pause, then the cluster's budget: the actor takes the request and its
        tokens, or says how long to wait before asking again."""
        while True:
            pause = self._paused_until - self.clock()
            if pause > MIN_WAIT_S:
                self.stats.waited_s += pause
                await self.sleep(pause)
                continue
            wait = float(await self.shared.take.remote(1, tokens))
            if wait == 0.0:  # admitted (the actor took the request and its tokens)
                return
            self.stats.waited_s += wait
            await self.sleep(wait)

    def exit(
        self,
        ticket: Ticket,
        *,
        headers: Mapping[str, str] | None,
        completion: Any | None,
        error: BaseException | None,
    ) -> None:
        super().exit(ticket, headers=headers, completion=completion, error=error)
        reported = (
            getattr(getattr(completion, "usage", None), "prompt_tokens", None) if error is None else None
        )
        if reported and ticket.prompt_counted > 0:
            self.shared.adjust.remote(reported - ticket.prompt_estimate)

    def _observe_headers(self, headers: Mapping[str, str], now: float) -> None:
        from agent.llm.ratelimit import _header_number

        for kind in ("requests", "tokens"):
            limit = _header_number(headers, f"x-ratelimit-limit-{kind}")
            remaining = _header_number(headers, f"x-ratelimit-remaining-{kind}")
            if limit is not None or remaining is not None:
                self.shared.observe.remote(kind, limit, remaining)


def _run_partition(
    index: int,
    total: int,
    events: pd.DataFrame,
    items: pd.DataFrame,
    agent_config: AgentConfig,
    llm_config: LLMConfig,
    settings: BatchSettings,
    buckets: Any,
) -> dict[str, Any]:
    """One partition, in a Ray worker: its own agent, ledger and limiter (shared budget)."""
    out = Path(settings.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / WORKER_PID_FILE).write_text(str(os.getpid()))
    agent = RecommenderAgent(events, items, None, agent_config)
    limiter = SharedRateLimiter(buckets, concurrency=settings.concurrency, minute_s=settings.minute_s)
    summary = asyncio.run(run_batch(agent, llm_config, settings, limiter=limiter))
    result = summary.as_dict()
    result["partition"] = f"{index}/{total}"
    return result


def partition_dir(out_dir: Path, index: int, total: int) -> Path:
    return Path(out_dir) / PARTITIONS_DIR / f"{index}-of-{total}"


def run_batch_ray(
    events: pd.DataFrame,
    items: pd.DataFrame,
    agent_config: AgentConfig,
    llm_config: LLMConfig,
    settings: BatchSettings,
    *,
    address: str | None = None,
    partitions: int | None = None,
    num_cpus: int = 2,
    max_retries: int = 3,
) -> dict[str, Any]:
    """Run (or resume) the batch on Ray; returns the merged summary (see the module docstring)."""
    if settings.shard is not None:
        raise errors.ConfigError("--shard and --engine ray do not combine: Ray partitions the users itself")
    ray = _ray()
    # Ray prints worker deaths and retries on the driver's stdout; stdout is for the summary.
    with contextlib.redirect_stdout(sys.stderr):
        return _run_on_cluster(
            ray, events, items, agent_config, llm_config, settings, address, partitions, num_cpus, max_retries
        )


def _run_on_cluster(
    ray: Any,
    events: pd.DataFrame,
    items: pd.DataFrame,
    agent_config: AgentConfig,
    llm_config: LLMConfig,
    settings: BatchSettings,
    address: str | None,
    partitions: int | None,
    num_cpus: int,
    max_retries: int,
) -> dict[str, Any]:
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "ignore_reinit_error": True,
        }
        if address:
            host = address.rsplit(":", 1)[0]
            if host.startswith("127."):  # a cluster on this machine's loopback: stay on it
                kwargs["_node_ip_address"] = host
            ray.init(address=address, **kwargs)
        else:  # a local Ray: every process on this machine, talking over loopback only
            ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kwargs)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        total = partitions or max(2, int(sum(n.get("Resources", {}).get("CPU", 1) for n in nodes)))
        buckets = ray.remote(num_cpus=0)(SharedBuckets).remote(settings.rpm, settings.tpm, settings.minute_s)
        events_ref, items_ref = ray.put(events), ray.put(items)
        task = ray.remote(num_cpus=1, max_retries=max_retries, retry_exceptions=False)(_run_partition)
        per_partition = max(1, settings.concurrency // total)
        refs = []
        for index in range(total):
            part = replace(
                settings,
                out_dir=partition_dir(settings.out_dir, index, total),
                shard=(index, total),
                concurrency=per_partition,
            )
            refs.append(
                task.remote(index, total, events_ref, items_ref, agent_config, llm_config, part, buckets)
            )
        summaries = ray.get(refs)
        admitted = ray.get(buckets.admitted.remote())
        charged = ray.get(buckets.charged.remote())
        merged = merge_outputs(
            [partition_dir(settings.out_dir, i, total) for i in range(total)], Path(settings.out_dir)
        )
    finally:
        if started_here:
            ray.shutdown()
    stop = next((s for s in summaries if s.get("stopped")), None)
    return {
        "engine": "ray",
        "nodes": len(nodes),
        "partitions": total,
        "users": sum(int(s.get("users", 0)) for s in summaries),
        "results": merged.get("results"),
        "failures": merged.get("failures"),
        "stopped": stop.get("stopped") if stop else None,
        "total_cost_usd": round(sum(float(s.get("total_cost_usd", 0.0)) for s in summaries), 6),
        "max_tokens_admitted_in_a_minute": max_window(admitted, settings.minute_s),
        # after the prompt-count corrections; above the limit only while estimates ran low
        "max_tokens_charged_in_a_minute": round(max_window(charged, settings.minute_s)),
        "limits": {"rpm": settings.rpm, "tpm": settings.tpm},
        "per_partition": summaries,
        "settings": {k: str(v) for k, v in asdict(settings).items() if k in ("out_dir", "k", "concurrency")},
    }


def max_window(admitted: list[tuple[float, float]], window_s: float) -> float:
    """The most tokens admitted within any ``window_s``-long window (two-pointer sweep)."""
    best = total = 0.0
    start = 0
    for end in range(len(admitted)):
        total += admitted[end][1]
        while admitted[end][0] - admitted[start][0] >= window_s:
            total -= admitted[start][1]
            start += 1
        best = max(best, total)
    return best

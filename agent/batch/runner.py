"""Offline batch runs over many users: rate-limit aware, resumable, cost-capped, shardable.

``run_batch`` sends one request per (user, task) through ``AsyncChatClient`` behind a
``RateLimiter`` (RPM/TPM buckets, Retry-After, adaptive concurrency) and a budget gate, and
keeps every outcome in the directory's ``Ledger``. Promises:

* **Same requests, same meaning as the sync path**: prompts come from
  ``RecommenderAgent.prepare_profile``/``prepare_recommend``, bodies from
  ``agent.llm.client.build_request_body`` and replies go through ``interpret_reply`` (validate,
  ground, back-fill), exactly as ``profile()``/``recommend()`` do. A recommendation whose
  model call fails is a failure here (retried on the next run), not a retriever fallback.
* **Resumable, exactly once**: a request's key is ``custom_id(...)``, a hash of user, task,
  template version, model, parameters and the request body. Re-running the same command
  skips done keys (zero requests), retries failed ones up to ``max_attempts`` and rewrites
  ``results.jsonl``/``failures.jsonl`` from the ledger (sorted by user, then task).
* **Budget**: with ``max_cost`` every attempt reserves its worst case (prompt estimate plus
  ``max_completion_tokens`` at list price) before it is sent; when the next one would pass
  the budget, nothing more is sent and the run stops with ``BudgetExceededError``. The
  budget covers everything this directory has spent, earlier runs included.
* **A user's tasks in order**: a user's later task (recommend after profile, in the order
  of ``tasks``) is sent only after the earlier one's reply has arrived (or it finally
  failed), so the provider has processed the prefix the two prompts share and bills it at
  the cached price (``agent.llm.prompt_cache``). Each worker sends one user's requests in
  turn while the other workers keep the pipeline full with other users.
* **Flat memory**: users are prepared one at a time into a bounded queue (about ``2 *
  concurrency`` requests, as one chain per user; each worker holds one user's chain) and every outcome goes straight to the ledger, so what the runner
  holds is bounded by the concurrency, not by the number of users: only the list of user
  ids (one reference each) grows with them. Request keys are pseudonymized without keeping
  a reverse map, and a user leaves the in-flight count once all its tasks are settled
  (``Snapshot.users_open``). ``results.jsonl`` is ordered by the ledger's index at the end,
  so no out-of-order results are buffered in memory.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx2

from agent import errors
from agent.batch.budget import CompletionBudget
from agent.batch.ledger import FAILURES_FILE, RESULTS_FILE, Ledger
from agent.batch.typical_reply import typical_completion_tokens
from agent.data.privacy import Pseudonymizer
from agent.llm.async_client import AsyncChatClient
from agent.llm.client import LLMConfig, build_request_body
from agent.llm.prompt_cache import OPENAI as OPENAI_CACHE
from agent.llm.prompt_cache import CachePolicy, common_prefix, prompt_tokens_of
from agent.llm.ratelimit import BudgetGate, RateLimiter
from agent.prompting.tokens import PriceTable
from agent.recommender import PreparedRequest, RecommenderAgent, interpret_reply

log = logging.getLogger(__name__)

CUSTOM_ID_HEADER = "X-Recagent-Custom-Id"
TASKS = ("profile", "recommend")
FATAL = (errors.QuotaExceededError, errors.AuthenticationError, errors.CassetteMissError)
"""Failures of the account or set-up, not of one request: they stop the run."""


# -- keys, shards, users -----------------------------------------------------------------------
def custom_id(
    user_id: str, task: str, template_version: str, model: str, params: Mapping[str, Any], body: Any
) -> str:
    """The request's key: equal inputs give equal keys, any change gives a new one.

    The key leaves the machine (header, Batch API ``custom_id``), so the user enters it only
    as a keyed pseudonym: an unkeyed hash of a guessable id could be reversed by enumeration.
    """
    fingerprint = hashlib.sha256(_canonical(body).encode()).hexdigest()
    key = _canonical(
        [_pseudonymizer().pseudonym(user_id), task, template_version, model, dict(params), fingerprint]
    )
    return "rq-" + hashlib.sha256(key.encode()).hexdigest()[:40]


@functools.lru_cache(maxsize=1)
def _pseudonymizer() -> Pseudonymizer:
    # A request key is never revealed (it is hashed again), and a reverse map would grow by
    # ~100 bytes per user for the life of the process.
    return Pseudonymizer(remember=False)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def shard_of(user_id: str, shards: int) -> int:
    """The shard (0..shards-1) of a user: a stable hash, the same on every machine and run."""
    digest = hashlib.sha256(b"recagent-shard\0" + user_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (I from 0 to N-1) as (I, N). Raises ``ConfigError``."""
    try:
        index, total = (int(part) for part in text.split("/"))
    except ValueError:
        raise errors.ConfigError(f"--shard must look like I/N (e.g. 0/4), not {text!r}") from None
    if total < 1 or not 0 <= index < total:
        raise errors.ConfigError(f"--shard {text}: need 0 <= I < N")
    return index, total


def read_users(path: Path) -> list[str]:
    """User ids from a file, one per line (blank lines and ``#`` comments ignored), deduplicated."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.DataError(f"cannot read users file: {exc}", file=str(path)) from None
    users = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return list(dict.fromkeys(users))


# -- planning --------------------------------------------------------------------------------
@dataclass
class BatchSettings:
    """What to run and under which limits (see ``recagent batch --help``)."""

    out_dir: Path
    tasks: tuple[str, ...] = TASKS
    users: Sequence[str] | None = None
    """None: every user in the log, in id order."""
    k: int = 10
    concurrency: int = 32
    rpm: int | None = None
    tpm: int | None = None
    max_cost: float | None = None
    shard: tuple[int, int] | None = None
    max_attempts: int = 3
    minute_s: float = 60.0
    """Length of a rate-limit "minute" (shorter only against scaled test servers)."""


@dataclass
class Planned:
    """One (user, task) request of a run, or why it cannot be made (``error``)."""

    custom_id: str
    user_id: str
    task: str
    prepared: PreparedRequest | None = None
    body: dict[str, Any] | None = None
    error: Exception | None = None


class Planner:
    """Streams a run's requests, one user at a time, with no network."""

    def __init__(self, agent: RecommenderAgent, config: LLMConfig, settings: BatchSettings) -> None:
        unknown = set(settings.tasks) - set(TASKS)
        if unknown or not settings.tasks:
            raise errors.ConfigError(f"--task takes {', '.join(TASKS)}; got {', '.join(settings.tasks)}")
        if settings.k < 1:
            raise errors.ConfigError("-k must be at least 1")
        self.agent, self.config, self.settings = agent, config, settings
        agent.token_model = config.model
        self.params = {
            "k": settings.k,
            "max_completion_tokens": config.max_completion_tokens,
            "temperature": config.temperature,
            "seed": config.seed,
            "agent": {**asdict(agent.config), "domain": agent.config.domain.model_dump()},
        }

    def users(self) -> list[str]:
        chosen = list(self.settings.users) if self.settings.users is not None else list(self.agent.histories)
        if self.settings.shard is not None:
            index, total = self.settings.shard
            chosen = [u for u in chosen if shard_of(u, total) == index]
        return list(dict.fromkeys(chosen))

    def plan(self, users: Sequence[str]) -> Iterator[Planned]:
        for user_id in users:
            for task in self.settings.tasks:
                yield self.prepare(user_id, task)

    def prepare(self, user_id: str, task: str) -> Planned:
        try:
            if task == "profile":
                prepared = self.agent.prepare_profile(user_id)
            else:
                prepared = self.agent.prepare_recommend(user_id, k=self.settings.k)
            body = build_request_body(self.config, prepared.prompt, prepared.context.output_model())
        except (errors.RecommenderError, ValueError) as exc:  # unknown user, no candidates...
            key = custom_id(user_id, task, "-", self.config.model, self.params, repr(exc))
            return Planned(key, user_id, task, error=exc)
        key = custom_id(user_id, task, prepared.prompt.version, self.config.model, self.params, body)
        return Planned(key, user_id, task, prepared, body)


def error_record(exc: BaseException) -> dict[str, Any]:
    """The typed error as written to ``failures.jsonl``."""
    record: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, errors.ModelError):
        record.update(attempts=exc.attempts, last_reply=exc.last_reply)
    if isinstance(exc, errors.RecommenderError):
        record["exit_code"] = exc.exit_code
    return record


# -- the run -----------------------------------------------------------------------------------
@dataclass
class Snapshot:
    """Progress of a run; passed to ``on_progress`` after every finished request."""

    total: int
    finished: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    users_finished: int = 0
    users_open: int = 0
    """Users with a task planned but not yet settled: bounded by the queue and concurrency."""
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    rate_limited: int = 0
    in_batch_api: int = 0
    truncated_reasked: int = 0
    """Replies cut by the learned completion cap and asked again with a larger one."""
    elapsed_s: float = 0.0

    @property
    def tokens_per_min(self) -> float:
        return (self.prompt_tokens + self.completion_tokens) / max(self.elapsed_s, 1e-9) * 60


@dataclass
class BatchSummary:
    users: int
    tasks: list[str]
    results: int
    failures: int
    pending: int
    progress: Snapshot
    total_cost_usd: float
    stopped: str | None = None
    out_dir: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    stop_error: errors.RecommenderError | None = None
    """What stopped the run early (budget, quota, authentication), if anything."""

    def as_dict(self) -> dict[str, Any]:
        p = self.progress
        return {
            "users": self.users,
            "tasks": self.tasks,
            "done_this_run": p.done,
            "failed_this_run": p.failed,
            "skipped_already_done": p.skipped,
            "results": self.results,
            "failures": self.failures,
            "pending": self.pending,
            "requests": p.requests,
            "prompt_tokens": p.prompt_tokens,
            "cached_tokens": p.cached_tokens,
            "completion_tokens": p.completion_tokens,
            "cost_usd": round(p.cost_usd, 6),
            "total_cost_usd": round(self.total_cost_usd, 6),
            "wall_s": round(p.elapsed_s, 3),
            "tokens_per_min": round(p.tokens_per_min, 1),
            "rate_limited": p.rate_limited,
            "in_batch_api": p.in_batch_api,
            "truncated_reasked": p.truncated_reasked,
            "stopped": self.stopped,
            "results_file": str(Path(self.out_dir) / RESULTS_FILE),
            "failures_file": str(Path(self.out_dir) / FAILURES_FILE),
            **self.extra,
        }


def check_run_identity(ledger: Ledger, settings: BatchSettings, model: str) -> None:
    """One directory = one shard of one run: refuse to mix shards in a directory."""
    identity = {"shard": list(settings.shard) if settings.shard else None}
    known = ledger.meta("identity")
    if known is None:
        ledger.set_meta("identity", identity)
    elif known != identity:
        raise errors.ConfigError(
            f"{ledger.directory} holds a run with shard {known['shard']}, not {identity['shard']}; "
            "use one output directory per shard"
        )
    ledger.set_meta("model", model)
    ledger.set_meta("tasks", list(settings.tasks))


class _Run:
    def __init__(
        self,
        planner: Planner,
        ledger: Ledger,
        client: AsyncChatClient,
        gate: BudgetGate,
        on_progress: Callable[[Snapshot], None] | None,
    ) -> None:
        self.planner, self.ledger, self.client, self.gate = planner, ledger, client, gate
        self.settings = planner.settings
        self.on_progress = on_progress
        self.stopped: str | None = None
        self.stop_error: errors.RecommenderError | None = None
        self.crash: Exception | None = None
        """An unexpected error in a worker: it stops the run and is raised at its end."""
        self.start = time.monotonic()
        self.snapshot = Snapshot(total=0)
        self.budget = CompletionBudget(self.settings.k, planner.config.max_completion_tokens)
        for task in self.settings.tasks:  # resume the learned caps from the ledger
            for tokens in reversed(ledger.completion_samples(task)):
                self.budget.observe(task, tokens)
        self._open_tasks: dict[str, int] = {}
        """Tasks not yet settled, per user in flight (never more users than the queue holds)."""
        self.users = 0

    async def run(self) -> None:
        users = self.planner.users()
        self.users = len(users)
        self.snapshot.total = len(users) * len(self.settings.tasks)
        generation = self.ledger.new_generation()
        # chains of one user's requests, about 2 x concurrency requests in all
        depth = max(1, 2 * self.settings.concurrency // len(self.settings.tasks))
        queue: asyncio.Queue[list[Planned] | None] = asyncio.Queue(maxsize=depth)
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(self.settings.concurrency)]
        try:
            for chain in self._chains(users, generation):
                if self.stopped:
                    break
                if chain:
                    await queue.put(chain)
                del chain  # the worker's now
                await asyncio.sleep(0)  # let replies be handled between users (done ones too)
        except BaseException:  # interrupted (Ctrl-C, cancellation) or a bug: send nothing more
            self.stopped = self.stopped or "interrupted"
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
        self.ledger.commit()
        if self.crash is not None:
            raise self.crash

    def _chains(self, users: Sequence[str], generation: int) -> Iterator[list[Planned]]:
        """Per user, the requests to send, in task order (one chain per user; maybe empty).

        Requests that need no sending (done, in a Batch API batch, out of attempts,
        unusable) are settled here; the rest go to one worker as a chain.
        """
        chain: list[Planned] = []
        current: str | None = None
        for item in self.planner.plan(users):
            if item.user_id != current:
                if current is not None:
                    yield chain
                chain, current = [], item.user_id
            if self.stopped:
                break
            self._open_tasks.setdefault(item.user_id, len(self.settings.tasks))
            entry = self.ledger.plan(item.custom_id, item.user_id, item.task, generation)
            if entry.status == "done":
                self._finished(item.user_id, "skipped")
            elif entry.status == "submitted":  # in flight in a Batch API batch: never pay twice
                self._finished(item.user_id, "in_batch_api")
            elif entry.status == "failed" and entry.attempts >= self.settings.max_attempts:
                self._finished(item.user_id, "failed")
            elif item.error is not None:
                self.ledger.record_failed(item.custom_id, error_record(item.error), errors.Usage())
                self._finished(item.user_id, "failed")
            else:
                chain.append(item)
        yield chain

    async def _worker(self, queue: asyncio.Queue[list[Planned] | None]) -> None:
        """Sends one user's chain at a time, each request after the previous one's reply has
        arrived (or finally failed): the provider has then processed the earlier prompt, so a
        prefix the two share is in its cache (``agent.llm.prompt_cache``). The other workers
        keep the pipeline full with other users' requests meanwhile."""
        while (chain := await queue.get()) is not None:
            while chain and not self.stopped:  # once stopped, the rest stay pending for the next run
                item = chain.pop(0)  # a settled request is not held on to
                try:
                    await self._send(item)
                except Exception as exc:  # a bug, the ledger's disk, the progress callback: stop
                    # the run and re-raise at its end; this worker keeps draining, so the planner
                    # is never left waiting on a full queue that nobody empties
                    self.crash = self.crash or exc
                    self.stopped = self.stopped or "crashed"
                del item

    async def _ask(self, item: Planned) -> Any:
        """One model call under the learned completion cap; a reply cut by the cap is asked once
        more with a larger one (``CompletionBudget.retry_cap``) and the user is never lost to it."""
        assert item.prepared is not None
        context = item.prepared.context
        cap = self.budget.cap(item.task)
        headers = {CUSTOM_ID_HEADER: item.custom_id}
        try:
            return await self.client.complete(
                item.prepared.prompt, context.output_model(), headers=headers, max_completion_tokens=cap
            )
        except errors.TruncatedReplyError as exc:
            bigger = self.budget.retry_cap(cap)
            if bigger is None:
                raise
            self._account(exc.usage)
            self.ledger.add_usage(item.custom_id, exc.usage)
            self.snapshot.truncated_reasked += 1
            log.info("reply cut at %d tokens for %s; asking again with %d", cap, item.custom_id, bigger)
            return await self.client.complete(
                item.prepared.prompt, context.output_model(), headers=headers, max_completion_tokens=bigger
            )

    async def _send(self, item: Planned) -> None:
        assert item.prepared is not None
        context = item.prepared.context
        try:
            reply = await self._ask(item)
        except errors.BudgetExceededError as exc:
            self._stop("budget", exc)
            return
        except FATAL as exc:
            self.ledger.record_failed(item.custom_id, error_record(exc), exc.usage, count_attempt=False)
            self._account(exc.usage)
            self._stop("fatal", exc)
            return
        except errors.ModelError as exc:
            self.ledger.record_failed(item.custom_id, error_record(exc), exc.usage)
            self._account(exc.usage)
            self._finished(item.user_id, "failed")
            return
        try:
            result = interpret_reply(context, reply)
        except Exception as exc:  # a bug in grounding must not sink the run: record it, typed
            log.exception("cannot interpret the reply for %s", item.custom_id)
            self.ledger.record_failed(item.custom_id, error_record(exc), reply.usage)
            self._account(reply.usage)
            self._finished(item.user_id, "failed")
            return
        self.ledger.record_done(item.custom_id, result.model_dump_json(), reply.usage)
        self.budget.observe(item.task, reply.usage.completion_tokens // max(reply.usage.requests, 1))
        self._account(reply.usage)
        self._finished(item.user_id, "done")

    def _stop(self, why: str, exc: errors.RecommenderError) -> None:
        if self.stopped is None:
            log.warning("stopping the batch (%s): %s", why, exc)
            self.stopped, self.stop_error = why, exc

    def _account(self, usage: errors.Usage) -> None:
        s = self.snapshot
        s.requests += usage.requests
        s.prompt_tokens += usage.prompt_tokens
        s.cached_tokens += usage.cached_tokens
        s.completion_tokens += usage.completion_tokens
        s.cost_usd += usage.cost_usd

    def _finished(self, user_id: str, outcome: str) -> None:
        """Settle one planned request; every planned request must end here exactly once, or
        its user would stay in ``_open_tasks`` (per-user state) until the run ends."""
        s = self.snapshot
        s.finished += 1
        setattr(s, outcome, getattr(s, outcome) + 1)
        left = self._open_tasks.get(user_id, 1) - 1
        if left <= 0:
            self._open_tasks.pop(user_id, None)
            s.users_finished += 1
        else:
            self._open_tasks[user_id] = left
        s.users_open = len(self._open_tasks)
        s.elapsed_s = time.monotonic() - self.start
        s.rate_limited = self.gate.limiter.stats.rate_limited
        if self.on_progress is not None:
            self.on_progress(s)


async def run_batch(
    agent: RecommenderAgent,
    config: LLMConfig,
    settings: BatchSettings,
    *,
    prices: PriceTable | None = None,
    http_client: httpx2.AsyncClient | None = None,
    on_progress: Callable[[Snapshot], None] | None = None,
    limiter: RateLimiter | None = None,
) -> BatchSummary:
    """Run (or resume) a batch into ``settings.out_dir``; see the module docstring.

    ``limiter`` replaces the run's own RPM/TPM limiter (the Ray engine passes one that leases
    from a cluster-wide limit, ``agent.batch.ray_engine``).

    Always writes the outputs and returns the summary; ``summary.stop_error`` holds the
    ``BudgetExceededError`` or fatal ``ModelError`` (quota, authentication) that stopped the
    run early, if any. Failed requests are in ``failures.jsonl``.
    """
    prices = prices or PriceTable.from_env()
    planner = Planner(agent, config, settings)
    with Ledger(settings.out_dir) as ledger:
        check_run_identity(ledger, settings, config.model)
        limiter = limiter or RateLimiter(
            rpm=settings.rpm, tpm=settings.tpm, concurrency=settings.concurrency, minute_s=settings.minute_s
        )
        gate = BudgetGate(limiter, prices, config.model, settings.max_cost, ledger.totals().cost_usd)
        client = AsyncChatClient(config, prices=prices, http_client=http_client, gate=gate)
        run = _Run(planner, ledger, client, gate, on_progress)
        try:
            await run.run()
        finally:
            await client.aclose()
            results, failures = ledger.write_outputs()
            run.snapshot.elapsed_s = time.monotonic() - run.start
            run.snapshot.rate_limited = limiter.stats.rate_limited
            counts = ledger.status_counts()
            summary = BatchSummary(
                users=run.users,
                tasks=list(settings.tasks),
                results=results,
                failures=failures,
                pending=run.snapshot.total - results - failures,
                progress=run.snapshot,
                total_cost_usd=ledger.totals().cost_usd,
                stopped=run.stopped,
                out_dir=str(settings.out_dir),
                extra={
                    **ledger.user_counts(),
                    "completion_caps": {task: run.budget.cap(task) for task in settings.tasks},
                    "refunded_tokens": round(limiter.stats.refunded_tokens),
                    "final_concurrency": limiter.concurrency.limit,
                    "ledger_status": counts,
                },
                stop_error=run.stop_error,
            )
    return summary


# -- dry run -------------------------------------------------------------------------------------
@dataclass
class _CacheRow:
    """What the dry run keeps of one planned request (a few numbers, not its prompt)."""

    task: str
    prompt_tokens: int
    own: dict[bool, int]
    """By ``schema_in_prefix``: tokens shared with the same user's earlier request."""
    first_all: dict[bool, int]
    """By ``schema_in_prefix``: tokens shared with the run's first request."""
    first_task: dict[bool, int]
    """By ``schema_in_prefix``: tokens shared with the first request of its task."""
    order: tuple[bool, bool]
    """(first request of the run, first request of its task)."""


class _CacheEstimate:
    """Expected cached prompt tokens of a run's requests under ``policy`` (see ``dry_run``).

    A request can hit (a) the same user's earlier request, which the runner sends and
    gets a reply to first, and (b) the prefix every request of its task (or of the whole run)
    shares, warmed by the first such request. Each prompt is encoded once; per request only
    a few prefix lengths are kept, and (b) is the shortest prefix shared with the first
    request (of the run, of the task) over all requests, known at the end.
    """

    MODES = (True, False)
    """``schema_in_prefix`` as the provider does it, and as if the schema were static."""

    def __init__(self, policy: CachePolicy, model: str) -> None:
        self.policy, self.model = policy, model
        self.keyers = {mode: replace(policy, schema_in_prefix=mode) for mode in self.MODES}
        self.first: tuple[dict[bool, str], list[int]] | None = None
        self.first_of: dict[str, tuple[dict[bool, str], list[int]]] = {}
        self.user: str | None = None
        self.user_earlier: list[tuple[dict[bool, str], list[int]]] = []
        self.rows: list[_CacheRow] = []

    def add(self, user_id: str, task: str, body: Mapping[str, Any]) -> int:
        """Record one request (in the order they are sent); returns its prompt tokens."""
        tokens = prompt_tokens_of(body["messages"], self.model)
        keys = {mode: keyer.key(body) for mode, keyer in self.keyers.items()}
        if user_id != self.user:
            self.user, self.user_earlier = user_id, []

        def shared(other: tuple[dict[bool, str], list[int]] | None, mode: bool) -> int:
            if other is None or other[0][mode] != keys[mode]:
                return 0
            return common_prefix(tokens, other[1])

        first_all, first_task = self.first is None, task not in self.first_of
        if first_all:
            self.first = (keys, tokens)
        if first_task:
            self.first_of[task] = (keys, tokens)
        self.rows.append(
            _CacheRow(
                task,
                len(tokens),
                own={m: max((shared(e, m) for e in self.user_earlier), default=0) for m in self.MODES},
                first_all={m: shared(self.first, m) for m in self.MODES},
                first_task={m: shared(self.first_of[task], m) for m in self.MODES},
                order=(first_all, first_task),
            )
        )
        self.user_earlier.append((keys, tokens))
        return len(tokens)

    def cached(self, mode: bool) -> int:
        """Expected cached tokens of all requests; ``mode`` is ``schema_in_prefix``."""
        if not self.rows:
            return 0
        static_all = min(row.first_all[mode] for row in self.rows)
        static_task: dict[str, int] = {}
        for row in self.rows:
            static_task[row.task] = min(static_task.get(row.task, row.first_task[mode]), row.first_task[mode])
        total = 0
        for row in self.rows:
            first_all, first_task = row.order
            warm = 0 if first_all else static_all if first_task else max(static_task[row.task], static_all)
            total += self.policy.cacheable(max(row.own[mode], warm), row.prompt_tokens)
        return total


def dry_run(
    agent: RecommenderAgent,
    config: LLMConfig,
    settings: BatchSettings,
    *,
    prices: PriceTable | None = None,
    cache_policy: CachePolicy = OPENAI_CACHE,
) -> dict[str, Any]:
    """What a run would send and cost, without calling anything or writing anything.

    * **Prompt tokens** are exact for the model's encoding (each prompt encoded once).
    * **Cached prompt tokens** follow the provider's rules as ``agent.llm.prompt_cache``
      models them (OpenAI's by default): per request, the longest prefix shared with the
      same user's earlier request (the runner sends it after that one's reply) or with the
      static prefix every request of its task (or of the run) shares, warmed by the first
      one; at least 1,024 tokens, in steps of 128. The schema is part of the prefix, so
      requests whose reply schemas differ share nothing;
      ``cached_prompt_tokens_if_schema_static`` says what a request-independent schema would
      allow. Entries are assumed to live through the run (they do for minutes).
    * **Completion tokens** are the mean of this directory's finished requests of the task
      when there are any, else a typical reply built per request from its schema and ids
      (``agent.batch.typical_reply``).
    * **Costs**: ``cost_usd_expected`` prices cached tokens at the cached price;
      ``cost_usd_expected_no_cache`` is the upper bound without caching and
      ``cost_usd_max`` adds every ``max_completion_tokens``. The Batch API figure assumes no
      caching (a batch's requests are neither ordered nor timed).
    """
    prices = prices or PriceTable.from_env()
    planner = Planner(agent, config, settings)
    users = planner.users()
    ledger_path = Path(settings.out_dir) / "ledger.sqlite"
    ledger = Ledger(settings.out_dir, readonly=True) if ledger_path.is_file() else None
    learnt: dict[str, float] = {}
    for task in settings.tasks:
        mean = ledger.mean_completion_tokens(task) if ledger else None
        if mean:
            learnt[task] = mean[0]
    requests = skipped = unusable = prompt_tokens = 0
    completion_expected = 0.0
    per_task: dict[str, list[float]] = {task: [0, 0.0] for task in settings.tasks}
    cache = _CacheEstimate(cache_policy, config.model)
    try:
        for item in planner.plan(users):
            entry = ledger.get(item.custom_id) if ledger else None
            if entry is not None and entry.status == "done":
                skipped += 1
            elif item.body is None or item.prepared is None:
                unusable += 1
            else:
                requests += 1
                prompt_tokens += cache.add(item.user_id, item.task, item.body)
                expected = learnt.get(item.task)
                if expected is None:
                    expected = typical_completion_tokens(item.prepared.context, config.model)
                expected = min(expected, config.max_completion_tokens)
                completion_expected += expected
                per_task[item.task][0] += 1
                per_task[item.task][1] += expected
    finally:
        if ledger is not None:
            ledger.close()
    cached = cache.cached(cache_policy.schema_in_prefix)
    completion = round(completion_expected)
    completion_max = requests * config.max_completion_tokens
    cost = prices.cost(config.model, prompt_tokens, completion, cached)
    no_cache = prices.cost(config.model, prompt_tokens, completion)
    batch_cost = prices.cost(config.model, prompt_tokens, completion, batch=True)
    per_1k = 1000 / len(users) if users else 0.0
    return {
        "dry_run": True,
        "model": config.model,
        "users": len(users),
        "tasks": list(settings.tasks),
        "requests": requests,
        "already_done": skipped,
        "unusable": unusable,
        "prompt_tokens": prompt_tokens,
        "cached_prompt_tokens_expected": cached,
        "uncached_prompt_tokens": prompt_tokens - cached,
        "cached_prompt_tokens_if_schema_static": cache.cached(False),
        "completion_tokens_expected": completion,
        "completion_tokens_expected_per_request": {
            task: round(total / count, 1) if count else None for task, (count, total) in per_task.items()
        },
        "completion_tokens_source": {
            task: "ledger mean" if task in learnt else "typical reply" for task in settings.tasks
        },
        "completion_tokens_max": completion_max,
        "cost_usd_expected": round(cost, 4),
        "cost_usd_expected_no_cache": round(no_cache, 4),
        "cost_usd_max": round(prices.cost(config.model, prompt_tokens, completion_max), 4),
        "cost_usd_expected_batch_api": round(batch_cost, 4),
        "cost_usd_per_1k_users_expected": round(cost * per_1k, 4),
        "cost_usd_per_1k_users_no_cache": round(no_cache * per_1k, 4),
        "cost_usd_per_1k_users_batch_api": round(batch_cost * per_1k, 4),
        "cache_rules": {
            "min_tokens": cache_policy.min_tokens,
            "increment": cache_policy.increment,
            "schema_in_prefix": cache_policy.schema_in_prefix,
        },
        "price_known": prices.price(config.model) is not None,
    }

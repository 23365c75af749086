"""``recagent batch``, ``batch-merge`` and ``openai-batch``: offline runs over many users.

Registered by ``agent.cli.main`` (``EXTENSION_MODULES``). Summaries are JSON on stdout (a table
with ``--pretty``); progress goes to stderr (a live bar on a terminal, plain lines otherwise);
errors are one ``recagent: error: ...`` line with the error's exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from agent import errors
from agent.cli.options import output_dir

if TYPE_CHECKING:  # the batch machinery is imported only when a batch command runs
    from agent.batch.runner import BatchSettings, BatchSummary, Snapshot
    from agent.llm.client import LLMConfig

Handler = Callable[[argparse.Namespace], int]
PLAIN_INTERVAL_S = 5.0
TASKS = ("profile", "recommend")


def register(
    sub: Any, *, common: Callable[[argparse.ArgumentParser], None], data_args: Callable[..., None]
) -> dict[str, Handler]:
    batch = sub.add_parser(
        "batch", help="profiles/recommendations for many users: rate-limited, resumable, cost-capped"
    )
    data_args(batch)
    _run_args(batch)
    limits = batch.add_argument_group("limits")
    limits.add_argument("--concurrency", type=int, default=32, help="max requests in flight (default 32)")
    limits.add_argument(
        "--rpm", type=int, help="requests per minute (default: the server's advertised limit)"
    )
    limits.add_argument("--tpm", type=int, help="tokens per minute (default: the server's advertised limit)")
    limits.add_argument("--max-cost", type=float, help="USD budget for this output directory, all runs")
    limits.add_argument(
        "--dry-run", action="store_true", help="print requests, tokens and cost; send nothing"
    )
    limits.add_argument("--minute-seconds", type=float, default=60.0, help=argparse.SUPPRESS)  # scaled tests
    engine = batch.add_argument_group("engine")
    engine.add_argument(
        "--engine", choices=("local", "ray"), default="local", help="local (default) or ray (recagent[ray])"
    )
    engine.add_argument(
        "--address", help="ray: a running cluster, 'auto' or HOST:PORT (default: a local Ray)"
    )
    engine.add_argument("--partitions", type=int, help="ray: user partitions (default: the cluster's CPUs)")
    common(batch)

    merge = sub.add_parser("batch-merge", help="merge the output directories of shards")
    merge.add_argument("dirs", nargs="+", type=Path, help="output directories of the shards")
    merge.add_argument("--out", type=output_dir, required=True, help="directory for the merged files")
    merge.add_argument("-v", "--verbose", action="store_true")

    api = sub.add_parser("openai-batch", help="the OpenAI Batch API: prepare | submit | status | collect")
    actions = api.add_subparsers(dest="action", required=True)
    prepare = actions.add_parser("prepare", help="write request files (50,000 requests / 200 MB each)")
    data_args(prepare)
    _run_args(prepare)
    common(prepare)
    for name, text in (
        ("submit", "upload prepared files and create batches"),
        ("status", "show batch states"),
    ):
        parser = actions.add_parser(name, help=text)
        parser.add_argument("--out", type=output_dir, required=True, help="the run's output directory")
        common(parser)
    collect = actions.add_parser("collect", help="download, validate, ground; re-queue failed and expired")
    collect.add_argument("--out", type=output_dir, required=True, help="the run's output directory")
    collect.add_argument("--wait", action="store_true", help="poll until every batch has finished")
    collect.add_argument("--poll-seconds", type=float, default=60.0, help="between polls with --wait")
    collect.add_argument("--max-attempts", type=int, default=3, help="re-queue a request until this many")
    common(collect)
    return {"batch": cmd_batch, "batch-merge": cmd_merge, "openai-batch": cmd_openai_batch}


def _run_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run")
    group.add_argument(
        "--out", type=output_dir, required=True, help="output directory (ledger, results, failures)"
    )
    group.add_argument("--users", type=Path, help="file of user ids, one per line (default: every user)")
    group.add_argument("--task", default=",".join(TASKS), help="profile,recommend (default: both)")
    group.add_argument("--shard", help="I/N: only this machine's share of the users (I from 0 to N-1)")
    group.add_argument("-k", type=int, default=10, help="recommendations per user (default 10)")
    group.add_argument(
        "--max-attempts", type=int, default=3, help="tries per request across runs (default 3)"
    )
    group.add_argument(
        "--max-completion-tokens", type=int, help="reply cap, reserved against TPM (default 2000)"
    )
    from agent.cli.options import FUSION_HELP, add_retriever_arg

    group.add_argument("--fusion", default="prior", metavar="{prior,off,FILE}", help=FUSION_HELP)
    add_retriever_arg(group)


def _settings(args: argparse.Namespace) -> BatchSettings:
    from agent.batch.runner import BatchSettings, parse_shard, read_users
    from agent.cli.options import check_k

    check_k(args.k)
    concurrency = getattr(args, "concurrency", 32)
    if concurrency < 1 or args.max_attempts < 1:
        raise errors.ConfigError("--concurrency and --max-attempts must be at least 1")
    max_cost = getattr(args, "max_cost", None)
    if max_cost is not None and max_cost <= 0:
        raise errors.ConfigError("--max-cost must be positive")
    return BatchSettings(
        out_dir=args.out,
        tasks=tuple(t.strip() for t in args.task.split(",") if t.strip()),
        users=read_users(args.users) if args.users else None,
        k=args.k,
        concurrency=concurrency,
        rpm=getattr(args, "rpm", None),
        tpm=getattr(args, "tpm", None),
        max_cost=max_cost,
        shard=parse_shard(args.shard) if args.shard else None,
        max_attempts=args.max_attempts,
        minute_s=getattr(args, "minute_seconds", 60.0),
    )


def _config(args: argparse.Namespace, *, need_endpoint: bool) -> LLMConfig:
    from agent.llm.client import LLMConfig

    if getattr(args, "backend", None) not in (None, "openai") or any(
        getattr(args, name, None) for name in ("cassette", "record")
    ):
        raise errors.ConfigError(
            "batch commands call the API: --backend, --cassette and --record do not apply"
        )
    overrides: dict[str, Any] = {"model": args.model, "base_url": args.base_url, "timeout_s": args.timeout}
    if getattr(args, "max_completion_tokens", None):
        overrides["max_completion_tokens"] = args.max_completion_tokens
    config = LLMConfig.from_env(**overrides)
    if need_endpoint and not config.api_key and not config.base_url:
        raise errors.ConfigError("batch commands need OPENAI_API_KEY (or OPENAI_BASE_URL / --base-url)")
    return config


def _agent(args: argparse.Namespace) -> Any:
    """The agent a batch runs (no client: the runner sends its requests); one order per user."""
    from agent.cli.options import agent_config, load_inputs
    from agent.recommender import RecommenderAgent

    config = agent_config(args)  # --fusion; a bad weights file fails before loading data
    events, items = load_inputs(args, args.events, args.items)
    return RecommenderAgent(events.frame, items.frame, None, config)


def _emit(payload: Any, pretty: bool = False) -> None:
    if pretty and isinstance(payload, dict):
        from rich.console import Console
        from rich.table import Table

        table = Table(show_header=False)
        for key, value in payload.items():
            table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
        Console().print(table)
    else:
        from agent.secrets import redact

        print(redact(json.dumps(payload, indent=2, ensure_ascii=False, default=str)))


# -- progress ----------------------------------------------------------------------------------
class ProgressView:
    """A live bar on a terminal, a plain line every few seconds otherwise (both on stderr)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._last = 0.0
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> ProgressView:
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("batch"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(file=self.stream),
            )
            self._bar.start()
            self._task = self._bar.add_task("batch", total=None, info="planning")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def update(self, s: Snapshot, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < (0.1 if self.tty else PLAIN_INTERVAL_S):
            return
        self._last = now
        if self._bar is not None:
            self._bar.update(self._task, total=s.total, completed=s.finished, info=self.info(s))
        else:
            print(f"recagent: batch: {s.finished}/{s.total} {self.info(s)}", file=self.stream, flush=True)

    @staticmethod
    def info(s: Snapshot) -> str:
        worked = s.done + s.failed
        rate = worked / s.elapsed_s if s.elapsed_s > 0 else 0.0
        left = s.total - s.finished
        eta = f"{left / rate:,.0f}s" if rate > 0 else "?"
        users_rate = s.users_finished / s.elapsed_s if s.elapsed_s > 0 else 0.0
        return (
            f"| {users_rate:,.1f} users/s | {s.tokens_per_min:,.0f} tokens/min | ${s.cost_usd:,.4f} "
            f"| ETA {eta} | 429s {s.rate_limited} | failed {s.failed}"
        )


# -- handlers --------------------------------------------------------------------------------------
def cmd_batch(args: argparse.Namespace) -> int:
    from agent.batch.runner import dry_run, run_batch

    settings = _settings(args)
    config = _config(args, need_endpoint=not args.dry_run)
    if args.engine == "ray" and not args.dry_run:
        return _run_on_ray(args, config, settings)
    agent = _agent(args)
    if args.dry_run:
        _emit(dry_run(agent, config, settings), args.pretty)
        return 0
    if args.address or args.partitions:
        raise errors.ConfigError("--address and --partitions need --engine ray")
    with ProgressView() as view:
        summary = asyncio.run(run_batch(agent, config, settings, on_progress=view.update))
        view.update(summary.progress, final=True)
    _emit(summary.as_dict(), args.pretty)
    return _outcome(summary)


def _run_on_ray(args: argparse.Namespace, config: LLMConfig, settings: BatchSettings) -> int:
    from agent.batch.ray_engine import run_batch_ray
    from agent.cli.options import agent_config, load_inputs

    if args.partitions is not None and args.partitions < 1:
        raise errors.ConfigError("--partitions must be at least 1")
    agent_settings = agent_config(args)
    events, items = load_inputs(args, args.events, args.items)
    summary = run_batch_ray(
        events.frame,
        items.frame,
        agent_settings,
        config,
        settings,
        address=args.address,
        partitions=args.partitions,
    )
    _emit(summary, args.pretty)
    if summary["stopped"]:
        raise errors.ModelError(
            f"a partition stopped ({summary['stopped']}); re-run the same command to resume"
        )
    if summary["failures"]:
        raise errors.ModelError(
            f"{summary['failures']} requests failed (see {settings.out_dir}/failures.jsonl); re-run to retry them"
        )
    return 0


def _outcome(summary: BatchSummary) -> int:
    if summary.stop_error is not None:
        error = summary.stop_error
        if isinstance(error, errors.BudgetExceededError):
            raise errors.BudgetExceededError(
                f"{error}; {summary.pending} requests not sent. Re-run with a higher --max-cost to continue"
            )
        raise error
    if summary.failures or summary.pending:
        raise errors.ModelError(
            f"{summary.failures} requests failed and {summary.pending} were not finished "
            f"(see {summary.as_dict()['failures_file']}); re-run the same command to retry them"
        )
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from agent.batch.ledger import merge_outputs

    _emit(merge_outputs(list(args.dirs), args.out))
    return 0


def cmd_openai_batch(args: argparse.Namespace) -> int:
    import openai

    from agent.batch import openai_batch

    if args.action == "prepare":
        settings = _settings(args)
        _emit(openai_batch.prepare(_agent(args), _config(args, need_endpoint=False), settings), args.pretty)
        return 0
    from agent.llm.deadline import deadline_client

    config = _config(args, need_endpoint=True)
    client = openai.OpenAI(  # --timeout bounds each whole call (uploads and downloads included)
        api_key=config.api_key or "not-needed",
        base_url=config.base_url,
        timeout=config.timeout_s,
        http_client=deadline_client(config.timeout_s),
    )
    try:
        if args.action == "submit":
            _emit(openai_batch.submit(client, args.out), args.pretty)
        elif args.action == "status":
            _emit(openai_batch.status(client, args.out), args.pretty)
        else:
            report = openai_batch.collect(client, args.out, max_attempts=args.max_attempts)
            while args.wait and report["batches_waiting"]:
                time.sleep(args.poll_seconds)
                report = openai_batch.collect(client, args.out, max_attempts=args.max_attempts)
            _emit(report, args.pretty)
    except openai.APIError as exc:
        raise errors.TransportError(f"Batch API call failed: {exc}") from None
    finally:
        client.close()
    return 0

#!/usr/bin/env python3
"""What a batch run over the MovieLens-100K users costs, from the dry run (no model is called).

    python scripts/bench_cost.py [--work /tmp/recagent-cost] [--model gpt-4o-mini] [--write-docs]

Exports ML-100K from ``--datasets`` (``scripts/export_dataset.py``) into ``--work`` (never
into the repository), runs ``recagent batch --dry-run`` over every user with both tasks and
prints, and with ``--write-docs`` writes into docs/BENCHMARKS.md (between the ``cost``
markers), the "Cost per 1,000 users" section: the exact commands, prompt / cached / uncached
/ completion tokens per user and the cost per 1,000 users, synchronous (cached tokens at
the cached price) and through the Batch API. How the cached tokens are expected is
``agent/llm/prompt_cache.py``; the completion tokens, ``agent/batch/typical_reply.py``.

Skips (exit 0, a message on stderr, docs untouched) when the dataset is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchdocs import write_section  # noqa: E402
from export_dataset import DEFAULT_DATASETS, export  # noqa: E402

START, END = "<!-- cost:start -->", "<!-- cost:end -->"


SCHEMAS = ("per-request", "shared")
"""``--reply-schema`` values compared: per-request enums (the default) and one shared schema."""


def dry_run(
    events: Path, items: Path, out: Path, model: str, reply_schema: str
) -> tuple[dict[str, Any], list[str], float]:
    command = [
        "recagent",
        "batch",
        "--events",
        str(events),
        "--items",
        str(items),
        "--out",
        str(out),
        "--dry-run",
        "--model",
        model,
        "--reply-schema",
        reply_schema,
    ]
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli.main", *command[1:]],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return json.loads(done.stdout), command, time.perf_counter() - start


def section(results: dict[str, dict[str, Any]], commands: list[str], seconds: dict[str, float]) -> str:
    first = results[SCHEMAS[0]]
    users = first["users"]

    def per_user(key: str) -> list[str]:
        return [f"{results[s][key] / users:,.0f}" for s in SCHEMAS]

    def usd(key: str) -> list[str]:
        return [_usd(results[s][key]) for s in SCHEMAS]

    def completion(schema: str) -> str:
        result = results[schema]
        per_task = result["completion_tokens_expected_per_request"]
        return (
            f"{result['completion_tokens_expected'] / users:,.0f} ("
            + ", ".join(f"{task} {n:,.0f}" for task, n in per_task.items())
            + f" per request; {', '.join(sorted(set(result['completion_tokens_source'].values())))})"
        )

    rows: list[tuple[str, list[str]]] = [
        ("prompt tokens per user", per_user("prompt_tokens")),
        ("cached prompt tokens per user (expected)", per_user("cached_prompt_tokens_expected")),
        ("uncached prompt tokens per user", per_user("uncached_prompt_tokens")),
        ("completion tokens per user (expected)", [completion(s) for s in SCHEMAS]),
        (
            "**cost per 1,000 users, synchronous** (cached tokens at the cached price)",
            [f"**{v}**" for v in usd("cost_usd_per_1k_users_expected")],
        ),
        (
            "cost per 1,000 users, synchronous, no caching (upper bound)",
            usd("cost_usd_per_1k_users_no_cache"),
        ),
        ("cost per 1,000 users, Batch API (half price, no caching)", usd("cost_usd_per_1k_users_batch_api")),
        ("dry run wall time", [f"{seconds[s]:.1f} s" for s in SCHEMAS]),
    ]
    table = "\n".join(f"| {name} | {' | '.join(values)} |" for name, values in rows)
    rules = first["cache_rules"]
    return (
        f"{START}\n### Cost per 1,000 users\n\n"
        f"MovieLens-100K, all {users:,} users × {', '.join(first['tasks'])} "
        f"({first['requests']:,} requests), `{first['model']}` at list prices, from the dry run "
        f"({date.today().isoformat()}; no model called). Commands:\n\n"
        + "".join(f"    {command}\n" for command in commands)
        + "\n| per user | `--reply-schema per-request` (default) | `--reply-schema shared` |\n|---|---|---|\n"
        + table
        + "\n\nPrompt tokens are exact (o200k) and leave out the reply schema, which the provider "
        "also reads. Cached tokens follow OpenAI's rules as "
        f"`agent/llm/prompt_cache.py` models them (at least {rules['min_tokens']:,} tokens, steps of "
        f"{rules['increment']}, the reply schema part of the prefix: {rules['schema_in_prefix']}): per "
        "request, the prefix shared with the same user's earlier request (the runner sends it after "
        "that reply) or with the static prefix of every request of its task. Per-request schemas list "
        "each request's ids, so no two requests share a prefix; the shared schema lets a user's "
        "recommend request reuse the system message and history of their profile request. "
        "Completion tokens are a typical reply per request built from its schema and ids "
        "(`agent/batch/typical_reply.py`) until a run's ledger has finished requests. The Batch API "
        "figure assumes no caching.\n"
        f"{END}"
    )


def _usd(value: float) -> str:
    return f"${value:,.4f}"


def write_docs(text: str) -> None:
    write_section(text, START, END)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/recagent-cost"), help="outside the repository"
    )
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--write-docs", action="store_true", help="update docs/BENCHMARKS.md")
    args = parser.parse_args()
    try:
        events, items = export("ml-100k", args.datasets, args.work / "ml-100k")
    except FileNotFoundError as exc:
        print(f"bench_cost: skipped ({exc})", file=sys.stderr)
        return 0
    out = args.work / "dry-run-out"  # never created: a dry run writes nothing
    results: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    commands = [shlex.join(["python", "scripts/export_dataset.py", "ml-100k", str(args.work / "ml-100k")])]
    for schema in SCHEMAS:
        results[schema], command, seconds[schema] = dry_run(events, items, out, args.model, schema)
        commands.append(shlex.join(command))
    text = section(results, commands, seconds)
    print(text)
    if args.write_docs:
        write_docs(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

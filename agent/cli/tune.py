"""``recagent tune``: tune the retriever's settings on a log and save them for the other commands.

The search (``agent.retrieval.tuning``) holds out each user's last new-item interaction in
the given events, so only those events are used; run it on training data when the result is
to be evaluated. ``recommend --retriever FILE``, ``batch --retriever FILE`` and
``evaluate --retriever-config FILE`` read the file it writes. Registered by
``agent.cli.main`` (``EXTENSION_MODULES``). Progress (one line per trial) goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import ConfigError

if TYPE_CHECKING:
    from agent.retrieval.tuning import Trial


def register(
    sub: Any, *, common: Callable[[argparse.ArgumentParser], None], data_args: Callable[..., None]
) -> dict[str, Callable[[argparse.Namespace], int]]:
    parser = sub.add_parser(
        "tune",
        help="tune the retriever's settings on a validation split of the events and save them",
        description=(
            "Hold out each user's last new-item interaction in --events, search the retriever's "
            "settings (recency, sequence windows, pruning, blend weights) for the best "
            "NDCG@10 + hit@50 on those items within --time-budget seconds, and write them to --out "
            "for `recommend --retriever`, `batch --retriever` and `evaluate --retriever-config`."
        ),
    )
    data_args(parser)
    parser.add_argument("--out", type=Path, required=True, help="settings file to write (JSON)")
    parser.add_argument(
        "--time-budget", type=float, default=60.0, help="seconds of search at most (default 60)"
    )
    parser.add_argument(
        "--max-users", type=int, default=2000, help="validation users (seeded sample; default 2000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the user sample (default 0)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-trial progress on stderr")
    parser.add_argument("-v", "--verbose", action="store_true", help="print cleaning reports to stderr")
    return {"tune": cmd_tune}


def cmd_tune(args: argparse.Namespace) -> int:
    from agent.cli.options import load_inputs
    from agent.retrieval.tuning import save_config, tune

    if args.time_budget <= 0 or args.max_users < 1:
        raise ConfigError("--time-budget must be positive and --max-users at least 1")
    events, items = load_inputs(args, args.events, args.items)
    result = tune(
        events.frame,
        items.frame,
        time_budget_s=args.time_budget,
        max_users=args.max_users,
        seed=args.seed,
        on_trial=None if args.quiet else _progress(),
    )
    save_config(args.out, result)
    print(json.dumps(result.report(), indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _progress() -> Callable[[Trial, Trial], None]:
    count = 0

    def show(trial: Trial, best: Trial) -> None:
        nonlocal count
        count += 1
        change = ", ".join(f"{k}={v}" for k, v in trial.change.items()) or "start"
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in trial.metrics.items())
        kept = "  *" if trial is best else ""
        print(f"tune: trial {count} ({trial.seconds:.1f}s) {change}: {metrics}{kept}", file=sys.stderr)

    return show

"""``recagent fusion-fit`` (the ``--fusion`` / ``--bootstrap`` options are in ``agent.cli.options``).

``fusion-fit`` asks the model to rank each sampled user's candidates as of just before their
last interaction and fits the blend of model rank and retriever score on those held-out
items (``agent.evaluation.fusion_fit``); the weights file it writes is what ``recommend --fusion FILE``
and ``evaluate --fusion FILE`` read. Registered by ``agent.cli.main`` (``EXTENSION_MODULES``).
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
    pass


def register(
    sub: Any, *, common: Callable[[argparse.ArgumentParser], None], data_args: Callable[..., None]
) -> dict[str, Callable[[argparse.Namespace], int]]:
    parser = sub.add_parser(
        "fusion-fit",
        help="fit the blend of model rank and retriever score on held-out last interactions",
        description=(
            "For a seeded sample of users, hold out each user's last item interaction, ask the "
            "model to rank their candidates as of just before it (one call per user whose "
            "held-out item is among the candidates), and fit the fusion weights on those items. "
            "Writes a weights file for --fusion FILE and prints the fit report (in-sample MRR "
            "of fitted, prior and retriever-only blends)."
        ),
    )
    data_args(parser)
    parser.add_argument("--out", type=Path, required=True, help="weights file to write (JSON)")
    parser.add_argument("--users", type=int, default=200, help="users to sample (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the user sample (default 0)")
    parser.add_argument(
        "--min-lists", type=int, default=20, help="keep the prior with fewer usable lists (default 20)"
    )
    common(parser)
    return {"fusion-fit": cmd_fusion_fit}


def cmd_fusion_fit(args: argparse.Namespace) -> int:
    from agent.cli.options import load_inputs, make_client, model_settings
    from agent.evaluation.fusion_fit import fit_fusion

    if args.users < 1 or args.min_lists < 1:
        raise ConfigError("--users and --min-lists must be at least 1")
    model_settings(args)  # a bad URL, timeout or model name fails before loading anything
    events, items = load_inputs(args, args.events, args.items)
    client, source = make_client(args, default_backend="openai")
    if client is None:
        raise ConfigError("fusion-fit needs a model; --backend fallback has none")
    print(source, file=sys.stderr)
    report = fit_fusion(
        events.frame, items.frame, client, max_users=args.users, seed=args.seed, min_lists=args.min_lists
    )
    report.weights.save(
        args.out,
        lists_used=report.lists_used,
        users_sampled=report.users_sampled,
        mrr_in_sample=report.mrr,
        model=client.config.model,
        note=report.note,
    )
    print(json.dumps(report.as_dict(), indent=2))
    if report.why_fewer():
        print(f"recagent: {report.why_fewer()}", file=sys.stderr)
    print(f"wrote {args.out}: {report.note}", file=sys.stderr)
    return 0

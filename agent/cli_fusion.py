"""``recagent fusion-fit`` and the ``--fusion`` / ``--bootstrap`` options shared by commands.

``fusion-fit`` asks the model to rank each sampled user's candidates as of just before their
last interaction and fits the blend of model rank and retriever score on those held-out
items (``agent.fusion_fit``); the weights file it writes is what ``recommend --fusion FILE``
and ``evaluate --fusion FILE`` read. Registered by ``agent.cli`` (``EXTENSION_MODULES``).
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
    from agent.fusion import FusionWeights

Handler = Callable[[argparse.Namespace], int]
FUSION_HELP = (
    "final order: 'prior' (default: the documented blend of model rank and retriever score), "
    "'off' (the model's order, back-filled by the retriever) or a weights file from fusion-fit"
)
FIT_HELP = "; 'fit': fit the weights on a validation split of the training events first (more calls)"


def add_ranking_args(parser: argparse.ArgumentParser, *, allow_fit: bool = False) -> None:
    """``--fusion`` and ``--bootstrap`` for a command that ranks with the model."""
    parser.add_argument(
        "--fusion",
        default="prior",
        metavar="{prior,off,fit,FILE}" if allow_fit else "{prior,off,FILE}",
        help=FUSION_HELP + (FIT_HELP if allow_fit else ""),
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1,
        metavar="B",
        help="rank B shuffled candidate orders (B model calls) and merge them by Borda count (default 1)",
    )


def fusion_weights(text: str) -> FusionWeights | None:
    """``--fusion`` as weights: ``prior``, ``off`` (None) or a file written by ``fusion-fit``."""
    from agent.fusion import FusionWeights

    if text == "prior":
        return FusionWeights.prior()
    if text == "off":
        return None
    if not Path(text).is_file():
        raise ConfigError(f"--fusion: expected prior, off or a weights file; {text} is not a file")
    return FusionWeights.load(text)


def bootstrap_orders(value: int) -> int:
    if value < 1:
        raise ConfigError("--bootstrap must be at least 1")
    return value


def register(
    sub: Any, *, common: Callable[[argparse.ArgumentParser], None], data_args: Callable[..., None]
) -> dict[str, Handler]:
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
    from agent.cli import load_inputs, make_client
    from agent.fusion_fit import fit_fusion

    if args.users < 1 or args.min_lists < 1:
        raise ConfigError("--users and --min-lists must be at least 1")
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
    print(f"wrote {args.out}: {report.note}", file=sys.stderr)
    return 0

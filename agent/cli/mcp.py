"""``recagent mcp``: the MCP server over stdio, for desktop assistants (Claude Desktop, IDEs).

The user is fixed here, by ``--user``: every tool acts for that user and nobody else. The
protocol owns stdout, so everything else (logs, warnings) goes to stderr.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from agent.cli.options import SAMPLE_DIR, add_db_arg, build_agent, load_inputs, make_client
from agent.errors import ConfigError

Handler = Callable[[argparse.Namespace], int]


def register(
    sub: Any, *, common: Callable[[argparse.ArgumentParser], None], data_args: Callable[..., None]
) -> dict[str, Handler]:
    parser = sub.add_parser(
        "mcp",
        help="serve the recommender to an assistant over MCP (stdio), acting for one user",
        description="Default data: the bundled sample (fixtures/sample). The user is fixed by --user.",
    )
    data_args(parser, required=False)
    parser.add_argument("--user", required=True, help="the user every tool acts for")
    parser.add_argument("-k", type=int, default=5, help="default list length (default 5)")
    add_db_arg(parser)
    common(parser)
    return {"mcp": cmd_mcp}


def cmd_mcp(args: argparse.Namespace) -> int:
    try:
        from agent.chat.tools import Toolbox
        from agent.mcp.server import UserSession, build_server
    except ImportError as exc:
        raise ConfigError(
            f"recagent mcp needs its extra: pip install 'recagent[mcp]' ({exc.name} missing)"
        ) from None
    if (args.events is None) != (args.items is None):
        raise ConfigError("give both --events and --items, or neither (the bundled sample)")
    events_path = args.events or SAMPLE_DIR / "events.csv"
    items_path = args.items or SAMPLE_DIR / "items.csv"
    events, items = load_inputs(args, events_path, items_path)
    client, _ = make_client(args, default_backend="openai")
    agent = build_agent(args, events, items, client)
    toolbox = Toolbox(agent, args.user, items=items.frame, default_k=args.k)
    session = UserSession(toolbox=toolbox, store=agent.store)
    server = build_server(lambda ctx: session)
    server.run("stdio")
    return 0

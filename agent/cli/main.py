"""The ``recagent`` command line. JSON on stdout (a table with ``--pretty``); errors are one
line on stderr and a non-zero exit code (see ``agent.errors`` for the codes), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from agent.cli.options import (
    DEMO_USERS,
    SAMPLE_DIR,
    add_data_args,
    add_db_arg,
    add_model_args,
    add_profile_store_args,
    add_ranking_args,
    add_retriever_arg,
    agent_config,
    build_agent,
    check_k,
    close_clients,
    emit_json,
    load_inputs,
    make_client,
    model_failed_exit,
    model_settings,
)
from agent.errors import ConfigError, RecommenderError
from agent.secrets import redact

log = logging.getLogger("agent")


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are the one line every other error is.

    argparse prints the whole usage before its message; the README promises one line,
    ``recagent: error: ...`` with exit code 2 (a configuration error), so a typo in an option
    reads like any other mistake. ``--help`` still prints the full usage. Sub-parsers are of
    this class too (``add_subparsers`` uses the parent's class).
    """

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("recagent").strip()  # "recommend", "openai-batch collect"
        where = f"{command}: " if command else ""
        self.exit(ConfigError.exit_code, f"recagent: error: {where}{message}\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recagent")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="recagent",
        description="Behavior profiles and grounded, explained recommendations from any OpenAI-compatible chat API.",
    )
    parser.add_argument("--version", action="version", version=f"recagent {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    from agent.cli.feedback import PROFILE_ACTIONS

    profile = sub.add_parser(
        "profile", help="build one user's profile, or show|history|diff its stored versions"
    )
    profile.add_argument("action", nargs="?", choices=PROFILE_ACTIONS, help="omit to build")
    add_data_args(profile, required=False)
    profile.add_argument("--user", required=True)
    add_profile_store_args(profile)
    add_model_args(profile)

    recommend = sub.add_parser("recommend", help="recommend items for one user")
    add_data_args(recommend)
    recommend.add_argument("--user", required=True)
    recommend.add_argument("-k", type=int, default=10, help="how many items (default 10)")
    recommend.add_argument("--query", help="what the user asked for, in words")
    recommend.add_argument("--with-profile", action="store_true", help="build the profile first and use it")
    add_ranking_args(recommend)
    add_retriever_arg(recommend)
    add_db_arg(recommend)
    add_model_args(recommend)

    demo = sub.add_parser("demo", help="profile + top-10 for sample users on bundled data")
    demo.add_argument("--users", nargs="*", default=list(DEMO_USERS))
    add_db_arg(demo, memory_default=True)
    add_model_args(demo)

    for name in EXTENSION_MODULES:
        COMMANDS.update(
            importlib.import_module(name).register(sub, common=add_model_args, data_args=add_data_args)
        )
    return parser


class _RedactingFormatter(logging.Formatter):
    """Log lines without keys: a library may log a URL with credentials or an echoed key."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("recagent: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    for noisy in ("httpx", "httpx2", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_profile(args: argparse.Namespace) -> int:
    if args.action:
        from agent.cli.feedback import run_profile_action

        return run_profile_action(args)
    if args.events is None or args.items is None:
        raise ConfigError("profile needs --events and --items (or an action: show, history, diff)")
    model_settings(args)  # a bad URL, timeout or model name fails before any work
    events, items = load_inputs(args, args.events, args.items)
    client, _ = make_client(args, default_backend="openai")
    result = build_agent(args, events, items, client).profile(args.user)
    if args.pretty:
        from agent.cli.render import print_profile

        print_profile(result)
    else:
        emit_json(result.model_dump(mode="json"))
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    check_k(args.k)
    config = agent_config(args)  # bad --fusion/--bootstrap fail before any work
    model_settings(args)  # and a bad URL, timeout or model name
    events, items = load_inputs(args, args.events, args.items)
    client, _ = make_client(args, default_backend="openai")
    agent = build_agent(args, events, items, client, config)
    profile = agent.profile(args.user).profile if args.with_profile and client else None
    result = agent.recommend(args.user, k=args.k, query=args.query, profile=profile)
    if args.pretty:
        from agent.cli.render import print_recommendations

        print_recommendations(result)
    else:
        emit_json(result.model_dump(mode="json"))
    return model_failed_exit(result)


def cmd_demo(args: argparse.Namespace) -> int:
    live = bool(os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL") or args.base_url)
    client, source = make_client(args, default_backend="openai" if live else "replay")
    if client is not None and not live and args.backend is None:
        source = source.rstrip(".") + "; set OPENAI_API_KEY to call the live API."
    print(source, flush=True)
    events, items = load_inputs(args, SAMPLE_DIR / "events.csv", SAMPLE_DIR / "items.csv")
    from agent.cli.feedback import demo_feedback_loop, memory_db
    from agent.cli.render import print_profile, print_recommendations

    memory_db(args)
    agent = build_agent(args, events, items, client)
    first = None
    for user in args.users:
        profile = agent.profile(user) if client else None
        if profile:
            print_profile(profile)
        result = agent.recommend(user, k=10, profile=profile.profile if profile else None)
        print_recommendations(result)
        first = first or result
    if first is not None:
        demo_feedback_loop(agent, first)  # recommend → reactions → refined profile → new top-10
    return 0


COMMANDS: dict[str, Any] = {"profile": cmd_profile, "recommend": cmd_recommend, "demo": cmd_demo}

# Modules that add subcommands. Each defines
#   register(sub, *, common, data_args) -> {command name: handler(args) -> exit code}
# where `common(parser)` adds the model/backend/output options and `data_args(parser)` adds
# --events/--items. Handlers raise RecommenderError subclasses; main() prints them as one line.
EXTENSION_MODULES: tuple[str, ...] = (
    "agent.cli.feedback",
    "agent.cli.chat",
    "agent.cli.batch",
    "agent.cli.evaluate",
    "agent.cli.fusion",
    "agent.cli.serve",
    "agent.cli.mcp",
    "agent.cli.tune",
)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(getattr(args, "verbose", False))
    try:
        return COMMANDS[args.command](args)
    except RecommenderError as exc:
        print(f"recagent: error: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("recagent: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    finally:
        close_clients()


if __name__ == "__main__":
    sys.exit(main())

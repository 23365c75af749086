"""The ``recagent`` command line. JSON on stdout (a table with ``--pretty``); errors are one
line on stderr and a non-zero exit code (see ``agent.errors`` for the codes), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx2

from agent.cassette import Cassette, RecordingTransport, ReplayTransport
from agent.data import Loaded, align_catalog, load_events, load_items
from agent.errors import ConfigError, RecommenderError
from agent.llm import ChatClient, LLMConfig

log = logging.getLogger("agent")

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO_ROOT / "fixtures" / "sample"
DEMO_CASSETTE = REPO_ROOT / "fixtures" / "cassettes" / "demo.json"
DEMO_USERS = ("u001", "u002", "u003")


def _common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and backend")
    group.add_argument("--model", help="chat model (default: $RECAGENT_MODEL or gpt-4.1-mini)")
    group.add_argument("--base-url", help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL)")
    group.add_argument(
        "--backend",
        choices=("openai", "replay", "fallback"),
        help="openai: live API; replay: recorded responses; fallback: no model, retriever only",
    )
    group.add_argument("--cassette", type=Path, help="recorded responses for --backend replay")
    group.add_argument("--record", type=Path, help="with --backend openai: also save every exchange here")
    group.add_argument("--timeout", type=float, help="seconds per request (default 60)")
    out = parser.add_argument_group("output")
    out.add_argument("--pretty", action="store_true", help="readable tables instead of JSON")
    out.add_argument(
        "-v", "--verbose", action="store_true", help="print cleaning reports and progress to stderr"
    )


def _data_args(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--events", type=Path, required=required, help="behavior log (.csv/.jsonl/.parquet)")
    parser.add_argument("--items", type=Path, required=required, help="item catalog (.csv/.jsonl/.parquet)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recagent",
        description="Behavior profiles and grounded, explained recommendations from any OpenAI-compatible chat API.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    from agent import cli_feedback, cli_fusion  # shared options (their commands register below)

    profile = sub.add_parser(
        "profile", help="build one user's profile, or show|history|diff its stored versions"
    )
    profile.add_argument("action", nargs="?", choices=cli_feedback.PROFILE_ACTIONS, help="omit to build")
    _data_args(profile, required=False)
    profile.add_argument("--user", required=True)
    cli_feedback.add_profile_store_args(profile)
    _common(profile)

    recommend = sub.add_parser("recommend", help="recommend items for one user")
    _data_args(recommend)
    recommend.add_argument("--user", required=True)
    recommend.add_argument("-k", type=int, default=10, help="how many items (default 10)")
    recommend.add_argument("--query", help="what the user asked for, in words")
    recommend.add_argument("--with-profile", action="store_true", help="build the profile first and use it")
    cli_fusion.add_ranking_args(recommend)
    cli_feedback.add_db_arg(recommend)
    _common(recommend)

    demo = sub.add_parser("demo", help="profile + top-10 for sample users on bundled data")
    demo.add_argument("--users", nargs="*", default=list(DEMO_USERS))
    cli_feedback.add_db_arg(demo, memory_default=True)
    _common(demo)

    for name in EXTENSION_MODULES:
        COMMANDS.update(importlib.import_module(name).register(sub, common=_common, data_args=_data_args))
    return parser


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("recagent: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    for noisy in ("httpx", "httpx2", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def load_inputs(args: argparse.Namespace, events_path: Path, items_path: Path) -> tuple[Loaded, Loaded]:
    items = load_items(items_path)
    events = align_catalog(load_events(events_path), items)
    if args.verbose:
        for report in (events.report, items.report):
            print("cleaning: " + report.summary(), file=sys.stderr)
            if report.examples:
                print("cleaning: example rows " + json.dumps(report.examples), file=sys.stderr)
    return events, items


_OPEN_CLIENTS: list[ChatClient] = []


def make_client(args: argparse.Namespace, *, default_backend: str) -> tuple[ChatClient | None, str]:
    """The chat client for ``args`` and a one-line description of where answers come from.

    Clients made here are closed by ``main`` when the command ends.
    """
    backend = args.backend or default_backend
    config = LLMConfig.from_env(model=args.model, base_url=args.base_url, timeout_s=args.timeout)
    if backend == "fallback":
        return None, "No model: recommendations come from the retriever alone (--backend fallback)."
    if backend == "replay":
        path = args.cassette or DEMO_CASSETTE
        if not path.is_file():
            raise ConfigError(f"cassette not found: {path}")
        transport = ReplayTransport(Cassette(path))
        client = ChatClient(config, http_client=httpx2.Client(transport=transport))
        _OPEN_CLIENTS.append(client)
        return client, f"Replaying recorded responses from {_shown(path)} (no live API calls)."
    if not config.api_key and not config.base_url:
        raise ConfigError("--backend openai needs OPENAI_API_KEY (or OPENAI_BASE_URL for a local server)")
    http_client = httpx2.Client(transport=RecordingTransport(Cassette(args.record))) if args.record else None
    client = ChatClient(config, http_client=http_client)
    _OPEN_CLIENTS.append(client)
    where = config.base_url or "the OpenAI API"
    return client, f"Calling {config.model} live at {where}."


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def emit_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2, ensure_ascii=False, default=str))


def agent_config(args: argparse.Namespace) -> Any:
    """The ``AgentConfig`` of ``args`` (``--fusion``, ``--bootstrap`` where the command has them)."""
    from agent.cli_fusion import bootstrap_orders, fusion_weights
    from agent.recommender import AgentConfig  # heavy imports only when needed

    return AgentConfig(
        fusion=fusion_weights(getattr(args, "fusion", "prior")),
        bootstrap_orders=bootstrap_orders(getattr(args, "bootstrap", 1)),
    )


def build_agent(
    args: argparse.Namespace, events: Loaded, items: Loaded, client: ChatClient | None, config: Any = None
) -> Any:
    from agent.cli_feedback import store_for
    from agent.recommender import RecommenderAgent  # heavy imports only when needed

    config = config or agent_config(args)
    return RecommenderAgent(events.frame, items.frame, client, config, store=store_for(args))


def cmd_profile(args: argparse.Namespace) -> int:
    if args.action:
        from agent.cli_feedback import run_profile_action

        return run_profile_action(args)
    if args.events is None or args.items is None:
        raise ConfigError("profile needs --events and --items (or an action: show, history, diff)")
    events, items = load_inputs(args, args.events, args.items)
    client, _ = make_client(args, default_backend="openai")
    result = build_agent(args, events, items, client).profile(args.user)
    if args.pretty:
        from agent.render import print_profile

        print_profile(result)
    else:
        emit_json(result.model_dump(mode="json"))
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise ConfigError("-k must be at least 1")
    config = agent_config(args)  # bad --fusion/--bootstrap fail before any work
    events, items = load_inputs(args, args.events, args.items)
    client, _ = make_client(args, default_backend="openai")
    agent = build_agent(args, events, items, client, config)
    profile = agent.profile(args.user).profile if args.with_profile and client else None
    result = agent.recommend(args.user, k=args.k, query=args.query, profile=profile)
    if args.pretty:
        from agent.render import print_recommendations

        print_recommendations(result)
    else:
        emit_json(result.model_dump(mode="json"))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    live = bool(os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL") or args.base_url)
    client, source = make_client(args, default_backend="openai" if live else "replay")
    if client is not None and not live and args.backend is None:
        source = source.rstrip(".") + "; set OPENAI_API_KEY to call the live API."
    print(source, flush=True)
    events, items = load_inputs(args, SAMPLE_DIR / "events.csv", SAMPLE_DIR / "items.csv")
    from agent.cli_feedback import demo_feedback_loop, memory_db
    from agent.render import print_profile, print_recommendations

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
    "agent.cli_feedback",
    "agent.cli_chat",
    "agent.cli_batch",
    "agent.cli_evaluate",
    "agent.cli_fusion",
)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return COMMANDS[args.command](args)
    except RecommenderError as exc:
        print(f"recagent: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("recagent: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    finally:
        while _OPEN_CLIENTS:
            _OPEN_CLIENTS.pop().close()


if __name__ == "__main__":
    sys.exit(main())

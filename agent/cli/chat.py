"""``recagent chat`` and ``recagent generate``: the chat-product features on the command line.

``chat`` reads one message per line from stdin and prints each reply (works with a pipe, so
``printf 'a board game\\ncheaper\\n' | recagent chat --user u001`` is scriptable; ``--json``
prints one JSON object per reply). By default it runs the built-in conversation
(``agent.chat.conversation``); ``--assistant`` runs a tool-calling assistant loop over the same
model with recagent's tools (``agent.chat.tools``). ``generate`` writes a personalized
description, summary or explanation (``--stream`` shows the text as it arrives).

Without ``--events``/``--items`` both use the bundled data of the domain: ``fixtures/sample``
for commerce, ``fixtures/social`` for social (other domains need the two options).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from agent.cli import options as cli
from agent.cli.options import add_db_arg, store_for
from agent.errors import ConfigError

SOCIAL_DIR = cli.REPO_ROOT / "fixtures" / "social"
ASSISTANT_SYSTEM = (
    "You are a helpful assistant in a {name} product, talking with a {user}. Use the tools to "
    "recommend {items}, explain a recommendation, describe {items} or record the {user}'s "
    "reactions. Only mention {items} that a tool returned, and never invent facts about them."
)

Handler = Callable[[argparse.Namespace], int]


def register(
    sub: Any,
    *,
    common: Callable[[argparse.ArgumentParser], None],
    data_args: Callable[..., None],
) -> dict[str, Handler]:
    """Add ``chat`` and ``generate`` to the ``recagent`` subcommands."""
    chat = sub.add_parser("chat", help="refine recommendations in plain words (one message per stdin line)")
    data_args(chat, required=False)
    chat.add_argument("--user", required=True)
    chat.add_argument("-k", type=int, default=5, help="recommendations per reply (default 5)")
    _domain_arg(chat)
    chat.add_argument(
        "--assistant", action="store_true", help="a tool-calling assistant loop instead of the built-in flow"
    )
    chat.add_argument("--json", action="store_true", help="one JSON object per reply instead of text")
    add_db_arg(chat)  # reactions are stored as feedback there, like `recagent feedback`
    common(chat)

    generate = sub.add_parser("generate", help="a personalized description, summary or explanation")
    data_args(generate, required=False)
    generate.add_argument("--user", required=True)
    generate.add_argument("--item", required=True)
    generate.add_argument("--kind", choices=("description", "summary", "explanation"), default="description")
    generate.add_argument("--stream", action="store_true", help="show the text as it arrives")
    _domain_arg(generate)
    common(generate)
    return {"chat": cmd_chat, "generate": cmd_generate}


def _domain_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--domain",
        default="commerce",
        help="commerce, content, social, or a .toml/.json domain file (default commerce)",
    )


def _build(args: argparse.Namespace, *, needs_model: bool) -> tuple[Any, Any, Any, Any]:
    """(agent, preset, items frame, client) for ``args``; the client is closed by ``cli.main``."""
    from agent.chat.domains import load_domain, make_agent

    preset = load_domain(args.domain)
    cli.model_settings(args)  # a bad URL, timeout or model name fails before loading anything
    if (args.events is None) != (args.items is None):
        raise ConfigError("give both --events and --items, or neither for the bundled data")
    if args.events is None:
        bundled = {"commerce": cli.SAMPLE_DIR, "social": SOCIAL_DIR}
        if preset.key not in bundled:
            raise ConfigError(f"domain {preset.key!r} has no bundled data: give --events and --items")
        folder = bundled[preset.key]
        args.events, args.items = folder / "events.csv", folder / "items.csv"
    events, items = cli.load_inputs(args, args.events, args.items)
    client, _ = cli.make_client(args, default_backend="openai")
    if needs_model and client is None:
        raise ConfigError(f"{args.command} needs a model; --backend fallback has none")
    store = store_for(args)
    extra: dict[str, Any] = {"store": store} if store is not None else {}
    agent = make_agent(preset, events.frame, items.frame, client, **extra)
    return agent, preset, items.frame, client


def _lines() -> Any:
    """Messages from stdin, one per line, until EOF or quit/exit (prompting only on a terminal)."""
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        message = line.strip()
        if message.lower() in ("quit", "exit", "/quit", "/exit"):
            return
        if message:
            yield message


def cmd_chat(args: argparse.Namespace) -> int:
    cli.check_k(args.k)
    agent, preset, items, client = _build(args, needs_model=args.assistant)
    try:
        return _chat(args, agent, preset, items, client)
    finally:
        if agent.store is not None:
            agent.store.close()


def _chat(args: argparse.Namespace, agent: Any, preset: Any, items: Any, client: Any) -> int:
    if args.user not in agent.histories and not agent.config.cold_start:
        agent.histories.require(args.user)  # UnknownUserError before reading any input
    if sys.stdin.isatty():
        print(f"Chatting as {args.user} about {preset.domain.items_noun}. Type quit to stop.", flush=True)
    if args.assistant:
        return _assistant(args, agent, preset, items, client)
    from agent.chat.conversation import Conversation

    conversation = Conversation(agent, preset=preset, k=args.k)
    state = None
    for message in _lines():
        reply = conversation.send(args.user, message, state)
        state = reply.state
        if args.json:
            payload = {
                "text": reply.text,
                "recommendations": [r.model_dump(mode="json") for r in reply.recommendations],
                "constraints": reply.constraints.model_dump(mode="json", exclude_defaults=True),
                "feedback": [f.model_dump(mode="json") for f in reply.feedback],
                "extraction": reply.extraction,
                "usage": reply.usage,
            }
            print(json.dumps(payload, ensure_ascii=False), flush=True)
        else:
            print(reply.text + "\n", flush=True)
    return 0


def _assistant(args: argparse.Namespace, agent: Any, preset: Any, items: Any, client: Any) -> int:
    import openai  # the SDK loads only for the assistant mode

    from agent.chat.tools import Toolbox, run_tool_loop

    toolbox = Toolbox(agent, args.user, preset=preset, items=items, default_k=args.k)
    d = preset.domain
    system = ASSISTANT_SYSTEM.format(name=d.name, user=d.user_noun, items=d.items_noun)
    messages: list[Any] = [{"role": "system", "content": system}]
    for message in _lines():
        messages.append({"role": "user", "content": message})
        try:
            text = run_tool_loop(client._sdk, client.config.model, messages, toolbox)
        except openai.OpenAIError as exc:  # the host's own call failed (network, auth): say so, go on
            text = f"(the assistant could not answer: {type(exc).__name__}: {exc})"
            messages.pop()
        if args.json:
            print(json.dumps({"text": text}, ensure_ascii=False), flush=True)
        else:
            print(text + "\n", flush=True)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from agent.chat.content import ContentGenerator

    agent, preset, items, _ = _build(args, needs_model=True)
    generator = ContentGenerator(agent, preset=preset, items=items)
    if not args.stream:
        result = generator.generate(args.user, args.item, args.kind)
        if args.pretty:
            print(result.text)
        else:
            cli.emit_json(result.model_dump(mode="json"))
        return 0

    def show(delta: str) -> None:
        sys.stdout.write(delta)
        sys.stdout.flush()

    def retract() -> None:
        sys.stdout.write("\n[withdrawn: that text stated numbers not in the data; rewriting]\n")
        sys.stdout.flush()

    result = generator.generate(
        args.user, args.item, args.kind, stream=True, on_text=show, on_retract=retract
    )
    sys.stdout.write("\n")
    if args.verbose:
        print(
            f"recagent: {result.attempts} request(s), facts checked: {result.fact_check.ok}", file=sys.stderr
        )
    return 0

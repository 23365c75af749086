"""A minimal chat assistant that uses recagent as tools (OpenAI tool calling).

    python scripts/chat_demo.py                                  # stand-in model, sample data
    python scripts/chat_demo.py --message "a gift for a runner under 100" --message "why the first one?"
    OPENAI_API_KEY=sk-... python scripts/chat_demo.py --live     # a real model as host and recommender

The host's loop is plain ``openai`` SDK code: ``chat.completions.create(tools=...)``, run
each tool call through ``Toolbox.handle`` and send the results back, until the model answers
in text (``agent.chat.tools.run_tool_loop``). Without ``--live`` every answer, the host's and
recagent's own, comes from the deterministic stand-in (``agent.testing.standin_chat``) over a
loopback HTTP server: no model is involved, and the first line says so.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import openai

from agent.chat.domains import load_domain, make_agent
from agent.chat.tools import Toolbox, run_tool_loop
from agent.data.loading import align_catalog, load_events, load_items
from agent.llm.client import ChatClient, LLMConfig
from agent.testing.loopback import LoopbackServer
from agent.testing.standin_chat import respond

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MESSAGES = (
    "Can you suggest a board game for two players?",
    "Why the first one?",
    "I love the first one",
)


def converse(base_url: str | None, api_key: str, model: str, args: argparse.Namespace) -> None:
    preset = load_domain(args.domain)
    folder = ROOT / "fixtures" / ("social" if preset.key == "social" else "sample")
    items = load_items(folder / "items.csv")
    events = align_catalog(load_events(folder / "events.csv"), items)
    with ChatClient(LLMConfig(model=model, base_url=base_url, api_key=api_key)) as client:
        agent = make_agent(preset, events.frame, items.frame, client)
        toolbox = Toolbox(agent, args.user, preset=preset, items=items.frame)
        host = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=2)
        d = preset.domain
        messages: list[Any] = [
            {
                "role": "system",
                "content": f"You help a {d.user_noun} find {d.items_noun}. Use the tools; only mention "
                f"{d.items_noun} they return and never invent facts.",
            }
        ]
        for text in args.message or DEFAULT_MESSAGES:
            print(f"\nyou> {text}")
            messages.append({"role": "user", "content": text})
            print("assistant> " + run_tool_loop(host, model, messages, toolbox))
        host.close()
        calls = [m for m in messages if isinstance(m, dict) and m.get("role") == "tool"]
        print(f"\n({len(calls)} tool call(s); feedback kept: {[e.signal for e in toolbox.feedback]})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--user", default="u001")
    parser.add_argument("--domain", default="commerce", help="commerce or social (bundled data)")
    parser.add_argument("--message", action="append", help="a user message (repeatable)")
    parser.add_argument("--live", action="store_true", help="use OPENAI_API_KEY / OPENAI_BASE_URL")
    args = parser.parse_args(argv)
    model = os.environ.get("RECAGENT_MODEL", "gpt-4.1-mini")
    if args.live:
        converse(
            os.environ.get("OPENAI_BASE_URL"), os.environ.get("OPENAI_API_KEY") or "not-needed", model, args
        )
        return 0
    print("Stand-in model over loopback HTTP (no real model; pass --live to use one).")
    with LoopbackServer(responder=respond) as server:
        converse(server.base_url, "stand-in", model, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

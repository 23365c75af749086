"""Re-record the chat cassette (fixtures/cassettes/chat.json).

Records the scenarios named in ``agent.testing.standin_chat`` (a three-turn conversation, a
personalized description and explanation, and a tool-calling assistant loop) on the bundled
sample data. Answers come from the deterministic stand-in (``agent.testing.standin_chat`` over
``agent.testing.standin_model``) served over real HTTP by ``agent.testing.loopback``: this machine has no
model API. ``--live`` sends the same requests to the API named by OPENAI_API_KEY /
OPENAI_BASE_URL instead (a real model's answers will differ, so the replay tests that check
exact stand-in behavior would then need their expectations updated).

The cassette holds request and response bodies only: no headers, no key.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import httpx2
import openai

from agent.chat.content import ContentGenerator
from agent.chat.conversation import Conversation
from agent.chat.tools import Toolbox, run_tool_loop
from agent.data.loading import align_catalog, load_events, load_items
from agent.llm.cassette import Cassette, RecordingTransport
from agent.llm.client import ChatClient, LLMConfig
from agent.recommender import RecommenderAgent
from agent.testing import standin_chat as rec
from agent.testing.loopback import LoopbackServer

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "fixtures" / "sample"
ASSISTANT_SYSTEM = "You are a shopping assistant. Use the tools; only mention products they return."


def record(out: Path, base_url: str | None, api_key: str) -> None:
    if out.exists():
        out.unlink()  # stale entries would never be matched again
    items = load_items(SAMPLE / "items.csv")
    events = align_catalog(load_events(SAMPLE / "events.csv"), items)

    cassette = Cassette(out)  # one instance for both clients: one file, one save
    config = LLMConfig(model=rec.RECORDED_MODEL, base_url=base_url, api_key=api_key)
    http = httpx2.Client(transport=RecordingTransport(cassette))
    with ChatClient(config, http_client=http) as chat_client:
        agent = RecommenderAgent(events.frame, items.frame, chat_client)
        state = None
        for message in rec.RECORDED_CONVERSATION:
            reply = Conversation(agent).send(rec.RECORDED_USER, message, state)
            state = reply.state
            print(f"> {message}\n{reply.text}\n")
        generator = ContentGenerator(agent, items=items.frame)
        for item_id, kind in rec.RECORDED_CONTENT:
            print(f"[{kind} of {item_id}] {generator.generate(rec.RECORDED_USER, item_id, kind).text}\n")
        toolbox = Toolbox(agent, rec.RECORDED_USER, items=items.frame)
        sdk = openai.OpenAI(
            base_url=base_url,
            api_key=api_key,
            max_retries=0,
            http_client=httpx2.Client(transport=RecordingTransport(cassette)),
        )
        messages: list[object] = [{"role": "system", "content": ASSISTANT_SYSTEM}]
        for message in rec.RECORDED_ASSISTANT:
            messages.append({"role": "user", "content": message})
            print(f"> {message}\n{run_tool_loop(sdk, rec.RECORDED_MODEL, messages, toolbox)}\n")
        sdk.close()
    print(f"wrote {out} ({len(cassette.interactions)} exchanges)")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "fixtures" / "cassettes" / "chat.json")
    parser.add_argument("--live", action="store_true", help="record a real API instead of the stand-in")
    args = parser.parse_args()
    if args.live:
        key = os.environ.get("OPENAI_API_KEY") or "not-needed"
        record(args.out, os.environ.get("OPENAI_BASE_URL") or None, key)
        return 0
    with LoopbackServer(responder=rec.respond) as server:
        record(args.out, server.base_url, "stand-in")  # the loopback server ignores the key
    return 0


if __name__ == "__main__":
    sys.exit(main())

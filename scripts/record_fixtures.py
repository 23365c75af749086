"""Re-record the demo cassette (fixtures/cassettes/demo.json).

Default: answers come from the deterministic stand-in model (``agent.testing.standin_model``) served
over real HTTP by ``agent.testing.loopback`` — this machine has no model API. With ``--live`` the
same requests go to the real API named by OPENAI_API_KEY / OPENAI_BASE_URL instead, which
is how to replace the stand-in recordings with a real model's answers:

    OPENAI_API_KEY=sk-... python scripts/record_fixtures.py --live

Either way the cassette holds request bodies and response bodies only: no headers, no key.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from agent.cli import main as cli
from agent.testing.loopback import LoopbackServer, Reply
from agent.testing.standin_model import respond

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "fixtures" / "cassettes" / "demo.json")
    parser.add_argument("--live", action="store_true", help="record a real API instead of the stand-in")
    args = parser.parse_args()
    if args.out.exists():
        args.out.unlink()  # stale entries would never be matched again
    demo = ["demo", "--backend", "openai", "--record", str(args.out)]
    if args.live:
        return cli.main(demo)
    with LoopbackServer(responder=lambda body: Reply(content=respond(body))) as server:
        os.environ["OPENAI_API_KEY"] = "stand-in"  # the loopback server ignores it; never recorded
        return cli.main([*demo, "--base-url", server.base_url])


if __name__ == "__main__":
    sys.exit(main())

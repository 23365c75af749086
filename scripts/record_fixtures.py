"""Re-record the demo cassette (fixtures/cassettes/demo.json): ``recagent demo`` and
``recagent recommend --user U`` (sample data, default options) for each demo user.

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
SAMPLE = ROOT / "fixtures" / "sample"
SAMPLE_ARGS = ["--events", str(SAMPLE / "events.csv"), "--items", str(SAMPLE / "items.csv")]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "fixtures" / "cassettes" / "demo.json")
    parser.add_argument("--live", action="store_true", help="record a real API instead of the stand-in")
    args = parser.parse_args()
    if args.out.exists():
        args.out.unlink()  # stale entries would never be matched again
    live = ["--backend", "openai", "--record", str(args.out)]
    # What replay covers, as fixtures/README.md says: `recagent demo` (any of its users) and
    # `recagent recommend --user U` on the sample data with default options, for U in the demo
    # users; each run adds its exchanges to the same cassette.
    # `demo --users U ...` runs its feedback loop for its first user U: record it for each.
    runs = [["demo", *live]]
    runs += [["demo", "--users", user, *live] for user in cli.DEMO_USERS[1:]]
    runs += [
        ["recommend", *SAMPLE_ARGS, "--user", user, "--db", ":memory:", *live] for user in cli.DEMO_USERS
    ]
    if args.live:
        return max(cli.main(run) for run in runs)
    with LoopbackServer(responder=lambda body: Reply(content=respond(body))) as server:
        os.environ["OPENAI_API_KEY"] = "stand-in"  # the loopback server ignores it; never recorded
        return max(cli.main([*run, "--base-url", server.base_url]) for run in runs)


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: local overhead of preparing one user's prompts (issue #6; not a timed test).

    python scripts/bench_prepare.py [--repeat 3] [--budget 6000]

Loads fixtures/sample (50 users, 42-173 events each), makes one warm-up pass over every user
(``prepare_profile`` then ``prepare_recommend``, no network: the agent has no client and
measures prompts with gpt-4o-mini's tokenizer), then times each call per user and prints the
median milliseconds. The warm-up pass is reported too: it is what a batch sees the first time
it meets a user (token counts of history lines are cached by then only for the second task).

Prompts show at most ``AgentConfig.max_history_events`` (20) events, as the agent sends them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from agent.data.loading import align_catalog, load_events, load_items
from agent.recommender import AgentConfig, RecommenderAgent

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "fixtures" / "sample"


def timings(users: list[str], call: Callable[[str], object]) -> list[float]:
    out = []
    for user in users:
        start = time.perf_counter()
        call(user)
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed passes after the warm-up (median of all)"
    )
    parser.add_argument("--budget", type=int, default=AgentConfig().prompt_budget_tokens)
    args = parser.parse_args()

    items = load_items(SAMPLE / "items.csv")
    events = align_catalog(load_events(SAMPLE / "events.csv"), items)
    agent = RecommenderAgent(events.frame, items.frame, None, AgentConfig(prompt_budget_tokens=args.budget))
    agent.token_model = "gpt-4o-mini"
    users = sorted(events.frame["user_id"].unique().tolist())

    warm_profile: list[float] = []
    warm_recommend: list[float] = []
    for user in users:  # the warm-up pass, in a batch's order
        warm_profile += timings([user], agent.prepare_profile)
        warm_recommend += timings([user], agent.prepare_recommend)
    profile: list[float] = []
    recommend: list[float] = []
    for _ in range(args.repeat):
        profile += timings(users, agent.prepare_profile)
        recommend += timings(users, agent.prepare_recommend)

    print(f"{len(users)} users, budget {args.budget} tokens, {args.repeat} timed pass(es)")
    for name, timed, first in (
        ("prepare_profile", profile, warm_profile),
        ("prepare_recommend", recommend, warm_recommend),
    ):
        p90 = statistics.quantiles(timed, n=10)[-1]
        print(
            f"{name:18s} median {statistics.median(timed):6.2f} ms  p90 {p90:6.2f} ms"
            f"  (warm-up pass median {statistics.median(first):6.2f} ms)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

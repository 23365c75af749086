"""Benchmark: clean a 1M-event log and build per-user histories (not a timed test).

    python scripts/bench_data.py [--events 1000000] [--users 50000] [--write-docs]

Generates a seeded synthetic CSV (string ids, ISO timestamps, every behavior), then times
``load_events`` (read + clean + report), ``UserHistories`` (one sort) and per-user slices and
columns.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from agent.data.loading import UserHistories, load_events

ROOT = Path(__file__).resolve().parent.parent
BEHAVIORS = np.array(["view", "click", "cart", "purchase", "rating", "search", "like", "dislike"])
BEHAVIOR_P = np.array([0.55, 0.2, 0.08, 0.05, 0.04, 0.05, 0.02, 0.01])


def synthetic_log(n_events: int, n_users: int, n_items: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n_events)
    items = np.minimum(rng.zipf(1.3, n_events), n_items) - 1
    behavior = rng.choice(BEHAVIORS, n_events, p=BEHAVIOR_P)
    start = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    ts = start + rng.integers(0, 300 * 86400, n_events)
    frame = pd.DataFrame(
        {
            "user_id": np.char.add("u", users.astype(str)),
            "item_id": np.char.add("i", items.astype(str)),
            "behavior": behavior,
            "timestamp": pd.to_datetime(ts, unit="s", utc=True).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "value": np.where(behavior == "rating", rng.integers(1, 6, n_events), np.nan),
            "text": np.where(behavior == "search", "waterproof trail shoes", None),  # type: ignore[call-overload]  # stubs lack None
        }
    )
    frame.loc[frame["behavior"] == "search", "item_id"] = ""
    return frame


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.csv"
        synthetic_log(args.events, args.users, args.items, args.seed).to_csv(path, index=False)
        t0 = time.perf_counter()
        loaded = load_events(path)
        t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    histories = UserHistories(loaded.frame)
    t_hist = time.perf_counter() - t0
    users = list(histories)[:2000]
    lat, column_lat = [], []
    for user in users:
        t = time.perf_counter()
        histories.for_user(user)
        lat.append((time.perf_counter() - t) * 1e6)
        t = time.perf_counter()
        histories.columns(user)
        column_lat.append((time.perf_counter() - t) * 1e6)

    rows = [
        ("events", f"{args.events:,}"),
        ("users", f"{len(histories):,}"),
        ("load + clean + report (read CSV included)", f"{t_load:.2f} s"),
        ("build per-user histories (one sort; whole-log column arrays)", f"{t_hist:.2f} s"),
        ("one user's history slice (a frame), median", f"{statistics.median(lat):.0f} µs"),
        (
            "one user's event columns (lists, what prompts read), median",
            f"{statistics.median(column_lat):.0f} µs",
        ),
    ]
    command = "python scripts/bench_data.py " + " ".join(sys.argv[1:]).replace("--write-docs", "").strip()
    table = "| measure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    section = (
        f"### Loading and histories\n\nCommand: `{command.strip()}` ({datetime.now(UTC):%Y-%m-%d}, 2 cores)."
        f"\n\n{table}\n"
    )
    print(section)
    if args.write_docs:
        write_section(ROOT / "docs" / "BENCHMARKS.md", "data", section)
    return 0


def write_section(path: Path, name: str, body: str) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` (or append it)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"<!-- {name}:start -->\n{body}<!-- {name}:end -->"
    pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.S)
    text = (
        pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    )
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())

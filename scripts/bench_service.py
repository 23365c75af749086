"""Load benchmark of `recagent serve`: GET recommendations at 1, 8 and 32 concurrent clients.

    .venv/bin/python scripts/bench_service.py [--requests 400] [--users 10000 100000]

For each data size (synthetic users with 8 events each over 2,000 items, imported at start into
a fresh SQLite store) it starts the service (one uvicorn worker) twice:

* (a) ``--backend fallback``: the retriever ranks; every millisecond is the service's own
  (HTTP, auth, rate limit, freshness check, retrieval, storing the served list, JSON);
* (b) the loopback OpenAI-compatible stand-in model with a fixed latency (``--model-latency``):
  the service's overhead is the latency minus that fixed model time.

It reports throughput, p50/p99 latency, the overhead, the rebuild time after start, and the
service's resident memory (RSS) after the load. The load generator is an asyncio httpx
client in this process; all traffic is on 127.0.0.1 and bounded by ``--requests``. On this
2-core machine client and server share the cores, so the numbers are conservative.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.service.keys import create_key
from agent.service.storage import ServiceStore
from agent.testing import standin_chat
from agent.testing.loopback import LoopbackServer

RECAGENT = Path(sys.executable).with_name("recagent")
N_ITEMS = 2000
EVENTS_PER_USER = 8
TARGET_P50_MS, TARGET_P99_MS = 10.0, 50.0


def write_data(folder: Path, users: int, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    items, events = folder / "items.csv", folder / "events.csv"
    categories = [f"Category {c}" for c in range(20)]
    with items.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "category", "price"])
        for i in range(N_ITEMS):
            w.writerow(
                [
                    f"I{i:05d}",
                    f"Item {i} {rng.choice(['lamp', 'kettle', 'shoe', 'game', 'book'])}",
                    categories[i % 20],
                    f"{5 + i % 95}.99",
                ]
            )
    with events.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "behavior", "timestamp"])
        for u in range(users):
            base = rng.randrange(N_ITEMS)
            for e in range(EVENTS_PER_USER):
                item = (base + int(rng.expovariate(0.05))) % N_ITEMS  # users cluster around an item
                w.writerow(
                    [
                        f"U{u:06d}",
                        f"I{item:05d}",
                        rng.choice(["view", "click", "purchase"]),
                        f"2026-01-{1 + e:02d}T10:00:00Z",
                    ]
                )
    return items, events


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(
    store_url: str, items: Path, events: Path, base_url: str | None, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [
        str(RECAGENT),
        "serve",
        "--store",
        store_url,
        "--port",
        str(port),
        "--tenant",
        "bench",
        "--items",
        str(items),
        "--events",
        str(events),
        "--rate-limit",
        "1000000",
        "--log-level",
        "warning",
    ]
    command += ["--base-url", base_url] if base_url else ["--backend", "fallback"]
    env = {
        **os.environ,
        "OPENAI_API_KEY": "bench",
        "RECAGENT_PSEUDONYM_KEY": "bench-pseudonym-key-0123456789",
    }
    with log.open("ab") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=handle, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"service exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("service did not start")


async def load(url: str, key: str, users: int, concurrency: int, requests: int) -> tuple[list[float], float]:
    rng = random.Random(concurrency)
    latencies: list[float] = []
    queue = list(range(requests))
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as client:

        async def worker() -> None:
            while queue:
                queue.pop()
                user = f"U{rng.randrange(users):06d}"
                t0 = time.perf_counter()
                response = await client.get(f"/v1/users/{user}/recommendations", params={"k": 10})
                latencies.append(time.perf_counter() - t0)
                if response.status_code != 200:
                    raise SystemExit(f"HTTP {response.status_code}: {response.text[:300]}")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - start


ROUTE = "/v1/users/{user_id}/recommendations"


def server_buckets(url: str) -> dict[float, float]:
    """Cumulative counts of the service's own latency histogram for the recommendations route
    (time inside the service: from the request reaching the app to the response leaving it)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("recagent_http_request_seconds_bucket") and f'route="{ROUTE}"' in line:
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if bound == "+Inf" else float(bound)] = float(line.rsplit(" ", 1)[1])
    return out


def server_quantile(before: dict[float, float], after: dict[float, float], q: float) -> str:
    """The histogram bucket holding quantile ``q`` of the requests between two scrapes, as "<= X ms"."""
    bounds = sorted(after)
    total = after[bounds[-1]] - before.get(bounds[-1], 0.0)
    for bound in bounds:
        if after[bound] - before.get(bound, 0.0) >= q * total:
            return "> 30000" if bound == float("inf") else f"<= {bound * 1000:g}"
    return "?"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    parser.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--model-latency", type=float, default=0.2, help="seconds per model call in (b)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--modes", nargs="+", default=["fallback", "model"], choices=("fallback", "model"))
    args = parser.parse_args()
    print(
        "| users | ranker | clients | req/s | p50 ms | p99 ms | overhead p50 / p99 ms "
        "| in the service p50 / p99 ms | RSS after (MB) | start-up rebuild (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for users in args.users:
        with tempfile.TemporaryDirectory(prefix="recagent-bench-") as tmp:
            folder = Path(tmp)
            items, events = write_data(folder, users)
            for mode in args.modes:
                store_url = f"sqlite:///{folder / f'{mode}.sqlite'}"
                store = ServiceStore.open(store_url)
                key = create_key(store, "bench", ("read",), "bench")
                store.close()
                model = (
                    LoopbackServer(responder=standin_chat.respond, latency_s=args.model_latency)
                    if mode == "model"
                    else None
                )
                process, url = start(
                    store_url, items, events, model.base_url if model else None, folder / "log"
                )
                try:
                    t0 = time.perf_counter()
                    httpx.get(f"{url}/v1/stats", headers={"Authorization": f"Bearer {key}"}, timeout=600)
                    rebuild = time.perf_counter() - t0
                    for concurrency in args.concurrency:
                        n = (
                            args.requests
                            if mode == "fallback"
                            else max(concurrency * 4, min(args.requests, 64))
                        )
                        before = server_buckets(url)
                        latencies, took = asyncio.run(load(url, key, users, concurrency, n))
                        after = server_buckets(url)
                        inside = (
                            f"{server_quantile(before, after, 0.5)} / {server_quantile(before, after, 0.99)}"
                        )
                        model_ms = args.model_latency * 1000 if mode == "model" else 0.0
                        p50, p99 = pct(latencies, 0.5), pct(latencies, 0.99)
                        overhead = f"{p50 - model_ms:.1f} / {p99 - model_ms:.1f}"
                        print(
                            f"| {users:,} | {mode} | {concurrency} | {len(latencies) / took:.1f} | {p50:.1f} | {p99:.1f} "
                            f"| {overhead} | {inside} | {rss_mb(process.pid):.0f} | {rebuild:.2f} |",
                            flush=True,
                        )
                finally:
                    process.send_signal(signal.SIGTERM)
                    process.wait(timeout=60)
                    if model:
                        model.close()
    print(
        f"\ntarget (fallback ranker, 32 clients): overhead p50 <= {TARGET_P50_MS} ms, p99 <= {TARGET_P99_MS} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark: per-request cost of the reply model, its strict schema and validation (not a test).

    python scripts/bench_schemas.py [--rounds 5] [--model gpt-4o-mini]

For every user of ``fixtures/sample`` and each task (profile, recommend) the request is
prepared first, outside the timings (``prepare_*`` renders and counts tokens; it is not what
this measures). Then, as the batch runner does per user:

* ``model``: ``context.output_model()``, the first call for this request's ids;
* ``model_again``: the second call for the same context (``agent/batch/runner.py`` calls it when
  planning and again when sending; the sync path calls it once);
* ``schema``: ``strict_json_schema(model)``;
* ``body``: ``build_request_body(...)`` (schema + messages + response_format);
* ``validate``: ``model.model_validate_json(reply)`` with the stand-in model's reply;
* ``total``: model + model_again + schema + validate, the issue's budget (<= 0.4 ms).

Medians in ms over users x rounds. Model caches (if any) are cleared between rounds, so
``model`` is always a first call for its ids, as in a batch over distinct users.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.data.loading import align_catalog, load_events, load_items  # noqa: E402
from agent.llm.client import LLMConfig, build_request_body  # noqa: E402
from agent.prompting import schemas  # noqa: E402
from agent.recommender import PreparedRequest, RecommenderAgent  # noqa: E402
from agent.testing.standin_model import respond  # noqa: E402

STEPS = ("model", "model_again", "schema", "body", "validate")


def clear_caches() -> None:
    """Forget cached reply models (no-op on versions without a cache)."""
    clear = getattr(schemas, "clear_reply_model_cache", None)
    if clear is not None:
        clear()


def prepare_all(agent: RecommenderAgent, task: str) -> list[PreparedRequest]:
    users = list(agent.histories)
    if task == "profile":
        return [agent.prepare_profile(user) for user in users]
    return [agent.prepare_recommend(user) for user in users]


def measure(prepared: list[PreparedRequest], config: LLMConfig, rounds: int) -> dict[str, float]:
    """Median ms per step and of the per-request total."""
    replies = [respond(build_request_body(config, p.prompt, p.context.output_model())) for p in prepared]
    samples: dict[str, list[float]] = {step: [] for step in (*STEPS, "total")}
    for _ in range(rounds):
        clear_caches()
        for request, raw in zip(prepared, replies, strict=True):
            t0 = time.perf_counter()
            model = request.context.output_model()
            t1 = time.perf_counter()
            request.context.output_model()
            t2 = time.perf_counter()
            schemas.strict_json_schema(model)
            t3 = time.perf_counter()
            build_request_body(config, request.prompt, model)
            t4 = time.perf_counter()
            model.model_validate_json(raw)
            t5 = time.perf_counter()
            times = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)
            for step, seconds in zip(STEPS, times, strict=True):
                samples[step].append(seconds * 1000)
            samples["total"].append((times[0] + times[1] + times[2] + times[4]) * 1000)
    return {step: statistics.median(values) for step, values in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--data", type=Path, default=ROOT / "fixtures" / "sample")
    args = parser.parse_args()

    items = load_items(args.data / "items.csv")
    events = align_catalog(load_events(args.data / "events.csv"), items)
    agent = RecommenderAgent(events.frame, items.frame, None)
    agent.token_model = args.model
    config = LLMConfig(model=args.model, max_completion_tokens=1000)

    results: dict[str, dict[str, Any]] = {}
    for task in ("profile", "recommend"):
        prepared = prepare_all(agent, task)
        results[task] = {"requests": len(prepared), **measure(prepared, config, args.rounds)}

    print(f"median ms per request over fixtures/sample users x {args.rounds} rounds")
    header = f"{'task':<10} {'n':>4} " + " ".join(f"{step:>11}" for step in (*STEPS, "total"))
    print(header)
    for task, row in results.items():
        cells = " ".join(f"{row[step]:>11.3f}" for step in (*STEPS, "total"))
        print(f"{task:<10} {row['requests']:>4} {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

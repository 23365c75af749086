"""Validation and grounding rates of the replies recorded in cassettes.

For every recorded chat completion with a JSON-schema response format: does the reply
validate against the schema the request sent (``jsonschema``), and of the item ids a
ranking reply returns, how many are candidates of its prompt, how many are history items
(forbidden) or repeats. Used to show that a prompt change does not lower these rates:

    .venv/bin/python scripts/cassette_rates.py fixtures/cassettes/*.json
    git show HEAD~1:fixtures/cassettes/demo.json > /tmp/old.json && \\
        .venv/bin/python scripts/cassette_rates.py /tmp/old.json

The prompts are read with the stand-in model's parser (``agent.testing.standin_model``), which
reads the tabular blocks and the older one-object-per-line blocks alike.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import jsonschema

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.testing.standin_model import parse_data_blocks  # noqa: E402


def rates(path: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for interaction in json.loads(path.read_text(encoding="utf-8"))["interactions"]:
        body = interaction["request"].get("body") or {}
        schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema")
        choices = (interaction["response"].get("body") or {}).get("choices") or []
        if schema is None or not choices:
            continue
        content = choices[0]["message"].get("content") or ""
        counts["replies"] += 1
        try:
            reply = json.loads(content)
            jsonschema.validate(reply, schema)
        except (json.JSONDecodeError, jsonschema.ValidationError):
            continue
        counts["valid"] += 1
        user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        blocks, _ = parse_data_blocks(user)
        if "candidates" not in blocks or "items" not in reply:
            continue
        candidates = {row["item_id"] for row in blocks["candidates"]}
        history = {row.get("item_id") for row in blocks.get("history", [])}
        seen: set[str] = set()
        for item in reply["items"]:
            counts["ranked"] += 1
            item_id = item["item_id"]
            counts["grounded"] += item_id in candidates and item_id not in seen
            counts["from_history"] += item_id in history
            counts["repeated"] += item_id in seen
            seen.add(item_id)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("cassettes", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for path in args.cassettes:
        c = rates(path)
        valid = c["valid"] / c["replies"] if c["replies"] else float("nan")
        grounded = c["grounded"] / c["ranked"] if c["ranked"] else float("nan")
        print(
            f"{path}: {c['replies']} structured replies, valid {valid:.3f}; "
            f"{c['ranked']} ranked ids, grounded {grounded:.3f}, "
            f"from history {c['from_history']}, repeated {c['repeated']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

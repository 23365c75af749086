#!/usr/bin/env python3
"""Write a public dataset as the ``events.csv`` + ``items.csv`` that ``recagent`` reads.

    python scripts/export_dataset.py ml-100k /tmp/ml
    python scripts/export_dataset.py amazon-games /tmp/games [--datasets /work/shared/datasets]

Reads the dataset from ``--datasets`` (default ``$RECAGENT_DATASETS`` or
``/work/shared/datasets``) with the loaders of ``agent.data.datasets`` (``load_movielens``,
``load_amazon_seq``; Amazon Games: the histories of the test split, without the held-out
targets) and writes the two CSV files into ``out``. Refuses to write inside this repository
(dataset files are never committed). Exits 3 with a message when the dataset is absent.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.data.datasets import load_amazon_seq, load_movielens  # noqa: E402

DEFAULT_DATASETS = Path(os.environ.get("RECAGENT_DATASETS", "/work/shared/datasets"))
DATASETS = {"ml-100k": "ml-100k", "amazon-games": "amazon-games"}
"""Name on the command line -> directory under ``--datasets``."""
MISSING = 3


def export(name: str, datasets: Path, out: Path) -> tuple[Path, Path]:
    """Write ``name`` from ``datasets`` to ``out``/events.csv and items.csv; returns the paths."""
    source = datasets / DATASETS[name]
    if not source.is_dir():
        raise FileNotFoundError(f"{name}: no dataset at {source}")
    out = out.resolve()
    if out == ROOT or ROOT in out.parents:
        raise ValueError(f"{out} is inside the repository; dataset files are never written there")
    if name == "ml-100k":
        events, items = load_movielens(source)
    else:
        dataset = load_amazon_seq(source, "test")
        events, items = dataset.events, dataset.items
    out.mkdir(parents=True, exist_ok=True)
    events_path, items_path = out / "events.csv", out / "items.csv"
    events.to_csv(events_path, index=False)
    items.to_csv(items_path, index=False)
    return events_path, items_path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("out", type=Path, help="directory for events.csv and items.csv (outside the repo)")
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    args = parser.parse_args()
    try:
        events, items = export(args.dataset, args.datasets, args.out)
    except FileNotFoundError as exc:
        print(f"export_dataset: {exc}", file=sys.stderr)
        return MISSING
    except ValueError as exc:
        print(f"export_dataset: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {events} and {items}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

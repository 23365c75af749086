#!/usr/bin/env python3
"""Thin caller of ``recagent batch`` for cron jobs and schedulers that run scripts.

    python scripts/batch_recommend.py --events E --items I --out DIR [any `recagent batch` option]

Same options, output and exit codes as ``recagent batch`` (see README "Batch runs").
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["batch", *sys.argv[1:]]))

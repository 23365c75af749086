"""The completion budget of a batch run: a ``max_completion_tokens`` per task that fits the replies.

Why: providers reserve ``max_completion_tokens`` against the tokens-per-minute limit when a
request is admitted (OpenAI documents this), and the runner's own buckets do the same. A cap
of 2,000 for replies that average ~300 tokens wastes most of the limit. So:

* **First cap from the schema.** A profile reply is bounded by its schema (``PROFILE_TOKENS``);
  a ranking reply by ``k`` items of about ``TOKENS_PER_ITEM`` each plus ``RANKING_OVERHEAD``.
  Both are multiplied by ``SCHEMA_MARGIN`` (1.5: room for long titles and reasons).
* **Then it learns.** After ``MIN_SAMPLES`` finished replies of a task (this run's, and the
  ledger's on resume), the cap is the ``QUANTILE`` of the observed completion sizes times
  ``LEARNED_MARGIN``, rounded up to a multiple of 16, never below ``FLOOR`` and never above
  the configured ``max_completion_tokens``.
* **A reply cut by the cap is asked again** (``retry_cap``) with twice the cap (at most the
  configured maximum), once; the runner counts these. The request key does not include the
  cap, so resuming and re-asking never change which request a result belongs to.
"""

from __future__ import annotations

import math
from collections import deque

PROFILE_TOKENS = 450
"""A profile reply: summary, up to a dozen interests with evidence, dislikes, patterns."""
TOKENS_PER_ITEM = 60
"""One ranked item: id, a one-sentence reason, evidence ids."""
RANKING_OVERHEAD = 40
SCHEMA_MARGIN = 1.5
MIN_SAMPLES = 20
QUANTILE = 0.99
LEARNED_MARGIN = 1.25
FLOOR = 128
WINDOW = 2000
"""Completion sizes kept per task (the most recent ones)."""


class CompletionBudget:
    """Per-task completion caps for one run (see the module docstring)."""

    def __init__(self, k: int, maximum: int) -> None:
        self.maximum = maximum
        self.initial = {
            "profile": self._bounded(PROFILE_TOKENS * SCHEMA_MARGIN),
            "recommend": self._bounded((k * TOKENS_PER_ITEM + RANKING_OVERHEAD) * SCHEMA_MARGIN),
        }
        self._seen: dict[str, deque[int]] = {}
        self.reasked = 0
        """Replies cut by their cap and asked again with a larger one."""

    def _bounded(self, value: float) -> int:
        return int(min(self.maximum, max(FLOOR, 16 * math.ceil(value / 16))))

    def observe(self, task: str, completion_tokens: int) -> None:
        if completion_tokens > 0:
            self._seen.setdefault(task, deque(maxlen=WINDOW)).append(completion_tokens)

    def cap(self, task: str) -> int:
        """The ``max_completion_tokens`` to send for ``task`` now."""
        seen = self._seen.get(task)
        if seen is None or len(seen) < MIN_SAMPLES:
            return self.initial.get(task, self.maximum)
        ordered = sorted(seen)
        at = ordered[min(len(ordered) - 1, math.ceil(QUANTILE * len(ordered)) - 1)]
        return self._bounded(at * LEARNED_MARGIN)

    def retry_cap(self, used: int) -> int | None:
        """The larger cap for a reply cut at ``used``; None when no larger one is allowed."""
        if used >= self.maximum:
            return None
        self.reasked += 1
        return int(min(self.maximum, max(2 * used, used + FLOOR)))

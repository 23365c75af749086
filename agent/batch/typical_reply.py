"""Expected completion tokens of a request: a typical reply built from its schema and real ids.

The batch dry run (``agent.batch.runner.dry_run``) needs the reply size before any reply
exists. Instead of one constant per task, it builds, per request, the JSON a typical reply
would be, with the request's own candidate and history ids (ids differ in length and
tokens between catalogs), and counts it with the model's encoding. Once a run has finished
requests, the ledger's mean completion size of the task replaces this guess.

The shape of a typical reply is set here and only here:

* **recommend**: ``min(k, candidates)`` items, best first, each with a candidate id from the
  request (in the order shown), a score with two decimals, a reason of
  ``TYPICAL_REASON_WORDS`` words and, alternately, one and two evidence ids from the
  request's history (most recent first).
* **profile**: a summary of ``TYPICAL_SUMMARY_WORDS`` words; ``TYPICAL_INTERESTS`` interests,
  each named in ``TYPICAL_INTEREST_NAME_WORDS`` words with a strength and
  ``TYPICAL_INTEREST_EVIDENCE`` history ids; ``TYPICAL_DISLIKES`` dislike with
  ``TYPICAL_DISLIKE_EVIDENCE`` ids; the patterns object (a price range when the catalog has
  prices, a recent focus of ``TYPICAL_FOCUS_WORDS`` words).

Words are taken in order from ``FILLER``, ordinary English of the kind these replies hold
(about 1.2 tokens a word with o200k). The JSON is compact, as structured outputs write it.
"""

from __future__ import annotations

import json
from typing import Any

from agent.prompting.tokens import encoding_for
from agent.ranking.replies import ReplyContext

TYPICAL_REASON_WORDS = 15
"""The reason's cap in the prompt ("a reason of at most 15 words"): an upper-end estimate."""
TYPICAL_SUMMARY_WORDS = 50
"""Two or three plain sentences."""
TYPICAL_INTERESTS = 5
TYPICAL_INTEREST_NAME_WORDS = 3
TYPICAL_INTEREST_EVIDENCE = 3
TYPICAL_DISLIKES = 1
TYPICAL_DISLIKE_EVIDENCE = 2
TYPICAL_FOCUS_WORDS = 5
TYPICAL_SCORE = 0.87
TYPICAL_STRENGTH = 0.8
_FILLER_TEXT = (
    "Strong fit with the highly rated classic dramas and recent character driven comedies in "
    "the history, especially the ones watched again and rated five stars by this viewer over "
    "the last months, which suggests a steady taste for thoughtful stories with warm humor "
    "and memorable performances rather than loud action or horror"
)
FILLER = _FILLER_TEXT.split()


def words(n: int, offset: int = 0) -> str:
    """``n`` words of ``FILLER`` starting at ``offset`` (wrapping around)."""
    return " ".join(FILLER[(offset + i) % len(FILLER)] for i in range(n))


def _ids(pool: list[str], n: int, offset: int = 0) -> list[str]:
    if not pool:
        return []
    return [pool[(offset + i) % len(pool)] for i in range(min(n, len(pool)))]


def typical_reply(context: ReplyContext) -> dict[str, Any]:
    """The typical reply to the request ``context`` describes (see the module docstring), in the
    shared ``AgentReply`` envelope when the request uses the shared reply schema."""
    answer = _typical_answer(context)
    if not context.shared_schema:
        return answer
    task_field = "profile" if context.task == "profile" else "ranking"
    return {"profile": None, "ranking": None} | {task_field: answer}


def _typical_answer(context: ReplyContext) -> dict[str, Any]:
    recent = list(reversed(context.history_ids))
    if context.task == "recommend":
        shown = context.shown or [c.item_id for c in context.candidates]
        count = min(context.k or len(shown), len(shown))
        return {
            "items": [
                {
                    "item_id": item_id,
                    "score": TYPICAL_SCORE,
                    "reason": words(TYPICAL_REASON_WORDS, i),
                    "evidence": _ids(recent, 1 + i % 2, i),
                }
                for i, item_id in enumerate(shown[:count])
            ]
        }
    return {
        "summary": words(TYPICAL_SUMMARY_WORDS),
        "interests": [
            {
                "name": words(TYPICAL_INTEREST_NAME_WORDS, 7 * i),
                "strength": TYPICAL_STRENGTH,
                "evidence": _ids(recent, TYPICAL_INTEREST_EVIDENCE, TYPICAL_INTEREST_EVIDENCE * i),
            }
            for i in range(TYPICAL_INTERESTS)
        ],
        "dislikes": [
            {"name": words(2, 40 + i), "evidence": _ids(recent, TYPICAL_DISLIKE_EVIDENCE, len(recent) // 2)}
            for i in range(TYPICAL_DISLIKES)
        ],
        "patterns": {
            "price_sensitivity": "medium" if context.has_prices else "unknown",
            "typical_price_min": 9.99 if context.has_prices else None,
            "typical_price_max": 39.99 if context.has_prices else None,
            "recent_focus": words(TYPICAL_FOCUS_WORDS, 20),
            "exploration": "mixed",
        },
    }


def typical_completion_tokens(context: ReplyContext, model: str) -> int:
    """Tokens of ``typical_reply(context)`` as compact JSON, in ``model``'s encoding (encoded
    directly: each reply is new, so the token-count caches would only fill up with them)."""
    text = json.dumps(typical_reply(context), separators=(",", ":"), ensure_ascii=False)
    return len(encoding_for(model).encode(text, disallowed_special=()))

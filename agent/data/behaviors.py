"""The behavior vocabulary: known event types and how strongly each signals interest.

The vocabulary is open: loaders keep unknown behaviors (lower-cased) and they get
``DEFAULT_UNKNOWN_WEIGHT``. Weights are in [-1, 1]; negative means dislike.
``rating`` events are weighted by their value instead (see ``rating_weight``).
"""

from __future__ import annotations

from collections.abc import Mapping

# Reactions a user can give to an item (``recagent feedback --signal``): explicit ones say what
# the user thinks, implicit ones are observed. Here, not in agent.profiles.feedback, so the CLI
# can offer them as choices without loading the feedback models.
EXPLICIT_SIGNALS: tuple[str, ...] = ("like", "dislike", "rating", "not_interested", "comment")
IMPLICIT_SIGNALS: tuple[str, ...] = ("click", "cart", "purchase", "skip")
SIGNALS: tuple[str, ...] = EXPLICIT_SIGNALS + IMPLICIT_SIGNALS

KNOWN_BEHAVIORS: tuple[str, ...] = (
    "view",
    "click",
    "cart",
    "purchase",
    "rating",
    "search",
    "like",
    "dislike",
)

DEFAULT_BEHAVIOR_WEIGHTS: Mapping[str, float] = {
    "purchase": 1.0,
    "like": 0.8,
    "cart": 0.6,
    "rating": 0.5,  # replaced by rating_weight(value) when the value is known
    "click": 0.3,
    "view": 0.1,
    "search": 0.0,  # a query, not an item signal
    "dislike": -1.0,
}

DEFAULT_UNKNOWN_WEIGHT = 0.1
"""Weight of a behavior outside the known vocabulary (treated like a view)."""

RATING_SCALE: tuple[float, float] = (1.0, 5.0)


def rating_weight(value: float, scale: tuple[float, float] = RATING_SCALE) -> float:
    """Map a rating on ``scale`` linearly to [-1, 1] (the scale's middle maps to 0)."""
    low, high = scale
    mid = (low + high) / 2
    half = (high - low) / 2 or 1.0
    return max(-1.0, min(1.0, (value - mid) / half))


def behavior_weight(
    behavior: str,
    value: float | None = None,
    weights: Mapping[str, float] = DEFAULT_BEHAVIOR_WEIGHTS,
) -> float:
    """Interest signal of one event in [-1, 1]."""
    if behavior == "rating" and value is not None and value == value:  # value == value: not NaN
        return rating_weight(value)
    return weights.get(behavior, DEFAULT_UNKNOWN_WEIGHT)

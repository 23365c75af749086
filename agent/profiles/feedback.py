"""Feedback events: a user's reactions to what was recommended, validated before they are kept.

Explicit signals say what the user thinks (``like``, ``dislike``, ``rating`` with a value on
``RATING_SCALE``, ``not_interested``, ``comment`` with text); implicit ones are what they did
(``click``, ``cart``, ``purchase``, ``skip`` = an impression ignored). Each event names the
user, the item and, when it answers a recommendation, that recommendation's id; events
without one are linked to the latest recommendation that showed the item to the user, if any.

Promises:

* a malformed event (rating without a value or off the scale, a comment without text, a
  value on a signal that takes none, a naive timestamp) is an ``InvalidFeedbackError``;
* an unknown user or item is ``UnknownUserError`` / ``UnknownItemError``; an unknown
  recommendation id, one served to another user, or one that did not show the item is an
  ``UnknownRecommendationError`` (all ``DataError``, exit code 3);
* ``dislike``, ``not_interested`` and ratings at or below ``LOW_RATING`` are *blocking*: the
  item becomes a hard filter the recommender always applies (see ``blocks_item``);
* ``reaction_lines`` shows a batch of events to the model with positional ids ``e1..en`` and
  free text scrubbed, so prompts carry no uuids, user ids or personal data.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Container, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.data.behaviors import EXPLICIT_SIGNALS, IMPLICIT_SIGNALS, RATING_SCALE, SIGNALS
from agent.data.privacy import Scrubber
from agent.errors import InvalidFeedbackError, UnknownItemError, UnknownRecommendationError, UnknownUserError
from agent.prompting.templates import Domain

Signal = Literal[
    "like", "dislike", "rating", "not_interested", "comment", "click", "cart", "purchase", "skip"
]
LOW_RATING = 2.0
"""Ratings at or below this (on ``RATING_SCALE``) block the item, like a dislike."""
HIGH_RATING = 4.0
"""Ratings at or above this count as a positive reaction."""
MAX_COMMENT_CHARS = 2000


class FieldProblem(ValueError):
    """A cross-field check failed because of ``field`` (raised inside a model validator, where
    pydantic would otherwise report no field and the error would blame the whole event)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


class FeedbackEvent(BaseModel):
    """One reaction of one user to one item. ``timestamp`` is timezone-aware (UTC if given naive
    is refused: a reaction's time must not depend on the machine's zone)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: str = Field(min_length=1)
    item_id: str = Field(min_length=1)
    signal: Signal
    value: float | None = None
    """Rating on ``RATING_SCALE`` (required for ``rating``) or price paid (optional, ``purchase``)."""
    comment: str | None = Field(default=None, max_length=MAX_COMMENT_CHARS)
    """Free text (required for ``comment``; optional on any explicit signal)."""
    recommendation_id: str | None = None
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    feedback_id: str = Field(default_factory=lambda: f"fb_{uuid.uuid4().hex}")

    @field_validator("timestamp")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamp needs a time zone (e.g. 2026-08-03T07:07:08Z)")
        return value.astimezone(UTC)

    @field_validator("comment")
    @classmethod
    def _strip(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @model_validator(mode="after")
    def _signal_fields(self) -> FeedbackEvent:
        low, high = RATING_SCALE
        if self.signal == "rating":
            if self.value is None or not low <= self.value <= high:
                given = "none was given" if self.value is None else f"got {self.value:g}"
                raise FieldProblem(
                    "value", f"a rating needs a value from {low:g} to {high:g} (--value); {given}"
                )
        elif self.signal == "purchase":
            if self.value is not None and not self.value >= 0:
                raise FieldProblem("value", f"a purchase value is the price paid (>= 0), got {self.value}")
        elif self.value is not None:
            raise FieldProblem(
                "value", f"signal {self.signal!r} takes no value (only rating and purchase do)"
            )
        if self.signal == "comment" and not self.comment:
            raise FieldProblem("comment", "a comment needs text (--comment)")
        if self.comment and self.signal in IMPLICIT_SIGNALS:
            raise FieldProblem("comment", f"an implicit signal ({self.signal}) cannot carry a comment")
        return self

    @property
    def explicit(self) -> bool:
        return self.signal in EXPLICIT_SIGNALS


class StoredFeedback(FeedbackEvent):
    """A feedback event as kept by a store: ``seq`` orders all feedback (1, 2, ...)."""

    seq: int


class ServedItem(BaseModel):
    item_id: str
    rank: int
    score: float
    source: str


class ServedRecommendation(BaseModel):
    """What was shown to a user, kept so feedback can answer it and costs can be audited."""

    recommendation_id: str
    user_id: str
    created_at: datetime
    items: list[ServedItem]
    profile_version: int | None
    model: str | None
    template_version: str | None
    fallback_reason: str | None
    usage: dict[str, Any]

    def item_ids(self) -> list[str]:
        return [item.item_id for item in self.items]

    @classmethod
    def from_result(cls, result: Any, profile_version: int | None) -> ServedRecommendation:
        """The record of a ``RecommendationResult`` as served."""
        return cls(
            recommendation_id=result.recommendation_id,
            user_id=result.user_id,
            created_at=datetime.now(UTC),
            items=[
                ServedItem(item_id=i.item_id, rank=i.rank, score=i.score, source=i.source)
                for i in result.items
            ],
            profile_version=profile_version,
            model=result.model,
            template_version=result.template_version,
            fallback_reason=result.fallback_reason,
            usage=result.usage,
        )


class RecommendationLookup(Protocol):
    """The part of a store that feedback validation needs."""

    def recommendation(self, recommendation_id: str) -> ServedRecommendation | None: ...

    def latest_recommendation_with(self, user_id: str, item_id: str) -> str | None: ...


def make_event(**fields: Any) -> FeedbackEvent:
    """Build a ``FeedbackEvent``; a validation problem becomes one readable ``InvalidFeedbackError``
    naming the field at fault (``value`` for a rating without one, not the whole event)."""
    try:
        return FeedbackEvent(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        cause = first.get("ctx", {}).get("error")
        where = (
            cause.field
            if isinstance(cause, FieldProblem)
            else ".".join(str(p) for p in first.get("loc", ())) or "event"
        )
        message = str(first.get("msg", exc)).removeprefix("Value error, ")
        raise InvalidFeedbackError(f"invalid feedback ({where}): {message}", column=where) from None


def check_references(
    event: FeedbackEvent,
    *,
    users: Container[str],
    items: Container[str],
    recommendations: RecommendationLookup,
) -> FeedbackEvent:
    """``event`` with its user, item and recommendation checked (and the recommendation linked).

    Raises ``UnknownUserError``, ``UnknownItemError`` or ``UnknownRecommendationError``.
    """
    if event.user_id not in users:
        raise UnknownUserError(f"feedback for unknown user {event.user_id!r}", column="user_id")
    if event.item_id not in items:
        raise UnknownItemError(f"feedback on unknown item {event.item_id!r}", column="item_id")
    rec_id = event.recommendation_id
    if rec_id is None:
        linked = recommendations.latest_recommendation_with(event.user_id, event.item_id)
        return event.model_copy(update={"recommendation_id": linked}) if linked else event
    served = recommendations.recommendation(rec_id)
    if served is None:
        raise UnknownRecommendationError(f"unknown recommendation id {rec_id!r}", column="recommendation_id")
    if served.user_id != event.user_id:
        raise UnknownRecommendationError(
            f"recommendation {rec_id!r} was served to another user", column="recommendation_id"
        )
    if event.item_id not in served.item_ids():
        raise UnknownRecommendationError(
            f"recommendation {rec_id!r} did not include item {event.item_id!r}", column="item_id"
        )
    return event


def blocks_item(signal: str, value: float | None) -> bool:
    """Whether a reaction makes its item a hard filter (never recommended to this user again)."""
    return signal in ("dislike", "not_interested") or (
        signal == "rating" and value is not None and value <= LOW_RATING
    )


def polarity(signal: str, value: float | None) -> int:
    """+1 positive, -1 negative, 0 neutral/unknown (comments are read by the model)."""
    if blocks_item(signal, value):
        return -1
    if signal in ("like", "cart", "purchase", "click") or (
        signal == "rating" and value is not None and value >= HIGH_RATING
    ):
        return 1
    return -1 if signal == "skip" else 0


# -- what the model sees ------------------------------------------------------------------
class ReactionLine(BaseModel):
    """One reaction as the refine prompt shows it (no user id, no uuid, scrubbed text)."""

    id: str
    date: str
    signal: str
    item_id: str
    title: str | None
    category: str | None
    price: float | None
    value: float | None
    comment: str | None
    recommended_rank: int | None
    """Position of the item in the recommendation the reaction answers, if any."""


class RefineInputs(BaseModel):
    domain: Domain = Field(default_factory=Domain)
    profile: dict[str, Any]
    reactions: list[ReactionLine]
    signals: list[str] = Field(default_factory=lambda: list(SIGNALS))


ItemInfoFn = Callable[[str], tuple[str | None, str | None, float | None]]
"""item id -> (title, category, price)."""


def reaction_lines(
    events: Sequence[StoredFeedback],
    item_info: ItemInfoFn,
    ranks: Callable[[StoredFeedback], int | None],
    scrubber: Scrubber,
) -> tuple[list[ReactionLine], dict[str, StoredFeedback]]:
    """Prompt lines ``e1..en`` for ``events`` (in order) and the map from line id to event."""
    lines: list[ReactionLine] = []
    by_id: dict[str, StoredFeedback] = {}
    for n, event in enumerate(events, start=1):
        title, category, price = item_info(event.item_id)
        line_id = f"e{n}"
        by_id[line_id] = event
        lines.append(
            ReactionLine(
                id=line_id,
                date=event.timestamp.strftime("%Y-%m-%d %H:%M"),
                signal=event.signal,
                item_id=event.item_id,
                title=title,
                category=category,
                price=price,
                value=event.value,
                comment=scrubber.scrub(event.comment),
                recommended_rank=ranks(event),
            )
        )
    return lines, by_id


def recommended_rank(lookup: RecommendationLookup) -> Callable[[StoredFeedback], int | None]:
    """event -> rank of its item in the recommendation it answers (None if it answers none)."""
    cache: dict[str, dict[str, int]] = {}

    def rank(event: StoredFeedback) -> int | None:
        rec_id = event.recommendation_id
        if rec_id is None:
            return None
        if rec_id not in cache:
            served = lookup.recommendation(rec_id)
            cache[rec_id] = {i.item_id: i.rank for i in served.items} if served else {}
        return cache[rec_id].get(event.item_id)

    return rank

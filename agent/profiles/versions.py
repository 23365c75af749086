"""What a stored profile version is: the state (profile, blocked items, when each interest was
last reinforced), explained changes between versions, and drafts about to be saved.

Shared by ``agent.profiles.refine`` (which produces versions) and ``agent.profiles.store``
(which keeps them); it imports neither, so the two do not import each other.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from agent.prompting.schemas import BehaviorProfile


def interest_key(name: str) -> str:
    """How interests are matched across versions: case- and space-insensitive."""
    return " ".join(name.casefold().split())


# -- what is stored -------------------------------------------------------------------------
class BlockedItem(BaseModel):
    item_id: str
    signal: str
    feedback_id: str
    since: datetime


# fmt: off
ChangeKind = Literal[
    "interest_added", "interest_strengthened", "interest_weakened", "interest_decayed", "interest_removed",
    "dislike_added", "dislike_removed", "item_blocked", "item_unblocked", "summary_changed", "ignored",
]
# fmt: on


class Change(BaseModel):
    """One explained change between two profile versions (evidence = feedback ids)."""

    kind: ChangeKind
    name: str
    before: float | None = None
    after: float | None = None
    evidence: list[str] = Field(default_factory=list)
    rationale: str = ""


class ProfileState(BaseModel):
    """Everything a profile version holds: the profile the recommender uses, the items it
    blocks, when each interest was last reinforced, and the newest evidence merged."""

    profile: BehaviorProfile
    blocked: list[BlockedItem] = Field(default_factory=list)
    interest_seen: dict[str, datetime] = Field(default_factory=dict)
    as_of: datetime | None = None

    def blocked_ids(self) -> list[str]:
        return [b.item_id for b in self.blocked]


Producer = Literal["profile", "refine", "import"]


class ProfileDraft(BaseModel):
    """A profile version about to be saved, with who/what produced it."""

    user_id: str
    state: ProfileState
    producer: Producer
    model: str | None = None
    template_version: str | None = None
    evidence: list[str] = Field(default_factory=list)
    """Feedback ids this version took into account."""
    feedback_upto: int = 0
    """Watermark: every feedback with ``seq`` at or below it has been considered."""
    changes: list[Change] = Field(default_factory=list)
    usage: dict[str, Any] = Field(default_factory=dict)


class ProfileVersion(ProfileDraft):
    version: int
    created_at: datetime


def initial_state(profile: BehaviorProfile, as_of: datetime | None) -> ProfileState:
    """The state of a freshly built profile: every interest counts as seen at ``as_of``."""
    seen = {interest_key(i.name): as_of for i in profile.interests} if as_of else {}
    return ProfileState(profile=profile, interest_seen=seen, as_of=as_of)


def built_profile_draft(result: Any, as_of: datetime | None) -> ProfileDraft:
    """The version to save for a profile built from the history (a ``ProfileResult``).

    Its feedback watermark is 0: a rebuilt profile has not seen any feedback yet, so the next
    refinement takes all of it into account again (blocked items stay blocked meanwhile: the
    recommender reads them from the feedback itself).
    """
    return ProfileDraft(
        user_id=result.user_id,
        state=initial_state(result.profile, as_of),
        producer="profile",
        model=result.model,
        template_version=result.template_version,
        usage=result.usage,
    )

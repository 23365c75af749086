"""Profile refinement: the model extracts a *delta* from new reactions, deterministic code merges it.

``refine_profile.j2`` shows the current profile and the new reactions (ids ``e1..en``); the
reply is a ``ProfileDelta`` (interests to add/strengthen/weaken, new dislikes, an optional new
summary, each change with reaction ids and a short rationale) whose evidence ids are an enum
of the reactions shown. ``merge`` applies it. Its promises, none of which depend on the model:

* strengths stay in [0, 1]; one refinement moves an existing interest by at most
  ``max_step`` and starts a new one at no more than ``new_interest_cap``;
* changes that cite no reaction are ignored (and recorded as ``ignored``);
* interests not reinforced for ``stale_after_days`` decay with ``half_life_days``, measured
  on the reactions' own clock (never the wall clock), so replaying the same reactions gives
  the same profile; interests under ``min_strength`` are removed;
* every ``dislike``/``not_interested``/low rating in the batch blocks its item, whatever the
  model said; the recommender applies blocked items as hard filters;
* every change is recorded with its evidence (feedback ids) and rationale.

``Refiner`` runs the loop for one user: pending feedback after the last version's watermark
→ threshold (``worth_a_call``; a user who did nothing costs nothing) → one model call →
merge → optimistic save through the store (a losing writer starts again on the fresh version,
and stops if the winner already consumed its evidence).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, create_model

from agent.data.privacy import Scrubber
from agent.errors import ProfileNotFoundError, Usage
from agent.profiles.feedback import (
    RefineInputs,
    StoredFeedback,
    blocks_item,
    reaction_lines,
    recommended_rank,
)
from agent.profiles.versions import (  # re-exported: refinement produces these
    BlockedItem,
    Change,
    ChangeKind,
    ProfileDraft,
    ProfileState,
    ProfileVersion,
    interest_key,
)
from agent.prompting.schemas import Dislike, Interest, StrictModel
from agent.prompting.templates import Domain, PromptRenderer

if TYPE_CHECKING:  # (not imported at run time: the store and CLI need no HTTP stack)
    from agent.llm.client import ChatClient
    from agent.profiles.store import Store

log = logging.getLogger(__name__)

REFINE_TEMPLATE = "refine_profile"


# -- the model's reply ----------------------------------------------------------------------
class InterestUpdate(StrictModel):
    name: str = Field(description="Interest label; reuse the profile's exact name to change an existing one.")
    action: Literal["add", "strengthen", "weaken"]
    amount: float = Field(
        ge=0.0, le=1.0, description="add: starting strength; strengthen/weaken: how much to change it."
    )
    evidence: list[str] = Field(description="Ids of the reactions (e1, e2...) that show this.")
    rationale: str = Field(description="One short sentence: why, citing what the reactions show.")


class DislikeUpdate(StrictModel):
    name: str = Field(description="What the user avoids, as a short label.")
    evidence: list[str] = Field(description="Ids of the reactions that show this.")
    rationale: str


class ProfileDelta(StrictModel):
    """Changes to a profile implied by new reactions; empty lists when nothing changed."""

    interests: list[InterestUpdate]
    dislikes: list[DislikeUpdate]
    summary: str | None = Field(
        description="A rewritten summary if the reactions change it; null to keep it."
    )


def delta_model(evidence_ids: Sequence[str]) -> type[ProfileDelta]:
    """A ``ProfileDelta`` subclass whose evidence ids are an enum of the reactions shown."""
    if not evidence_ids:
        return ProfileDelta
    ids: Any = Literal[tuple(evidence_ids)]
    interest = create_model("InterestUpdate", __base__=InterestUpdate, evidence=(list[ids], ...))
    dislike = create_model("DislikeUpdate", __base__=DislikeUpdate, evidence=(list[ids], ...))
    return create_model(
        "ProfileDelta",
        __base__=ProfileDelta,
        interests=(list[interest], ...),  # type: ignore[valid-type]
        dislikes=(list[dislike], ...),  # type: ignore[valid-type]
    )


# -- thresholds and merge -------------------------------------------------------------------
def _default_signal_weights() -> dict[str, float]:
    explicit = dict.fromkeys(("like", "dislike", "rating", "not_interested", "comment", "purchase"), 1.0)
    return {**explicit, "cart": 0.5, "click": 0.2, "skip": 0.05}


@dataclass(frozen=True)
class RefineConfig:
    """When refinement is worth a model call, and how far one refinement may move a profile."""

    signal_weights: Mapping[str, float] = field(default_factory=_default_signal_weights)
    min_evidence_weight: float = 1.0
    """Sum of signal weights of the pending reactions needed for a call (one explicit reaction;
    five clicks; twenty skipped impressions)."""
    max_reactions_per_call: int = 40
    """Older pending reactions go first; the rest wait for the next refinement."""
    max_step: float = 0.3
    new_interest_cap: float = 0.6
    min_strength: float = 0.05
    max_interests: int = 12
    stale_after_days: float = 60.0
    half_life_days: float = 120.0
    max_evidence_per_interest: int = 6
    max_attempts: int = 5
    """Optimistic write attempts when other writers keep winning (each may cost a model call)."""


def evidence_weight(events: Sequence[StoredFeedback], config: RefineConfig) -> float:
    return sum(config.signal_weights.get(e.signal, 0.0) for e in events)


def worth_a_call(events: Sequence[StoredFeedback], config: RefineConfig) -> bool:
    """Whether ``events`` carry enough evidence to pay for a refinement call."""
    return bool(events) and evidence_weight(events, config) >= config.min_evidence_weight


def _key(name: str) -> str:
    return interest_key(name)


def _clamp(x: float) -> float:
    return round(min(1.0, max(0.0, x)), 3)


def _change(kind: ChangeKind, name: str, **fields: Any) -> Change:
    return Change(kind=kind, name=name, **fields)


def merge(
    state: ProfileState,
    delta: ProfileDelta,
    reactions: Mapping[str, StoredFeedback],
    config: RefineConfig | None = None,
) -> tuple[ProfileState, list[Change]]:
    """Apply ``delta`` (evidence ids are keys of ``reactions``) to ``state``; see module docstring."""
    config = config or RefineConfig()
    times = [r.timestamp for r in reactions.values()]
    as_of = max([t for t in (state.as_of, *times) if t is not None], default=None)
    interests = {_key(i.name): i.model_copy() for i in state.profile.interests}
    seen = dict(state.interest_seen)
    changes: list[Change] = []
    touched = _merge_interests(interests, delta.interests, reactions, config, changes)
    for key in touched:
        if as_of is not None:
            seen[key] = as_of
    changes += _decay(interests, seen, touched, state.as_of, as_of, config)
    ranked = sorted(interests.values(), key=lambda i: -i.strength)
    for n, interest in enumerate(ranked):
        if interest.strength < config.min_strength or n >= config.max_interests:
            del interests[_key(interest.name)]
            why = "fell below the minimum strength" if n < config.max_interests else "over the cap"
            changes.append(
                _change("interest_removed", interest.name, before=interest.strength, rationale=why)
            )

    dislikes = {_key(d.name): d.model_copy() for d in state.profile.dislikes}
    for update in delta.dislikes:
        key, cited = _key(update.name), [reactions[e] for e in update.evidence if e in reactions]
        if not key or not cited:
            changes.append(_change("ignored", update.name, rationale="cites no reaction"))
            continue
        items = [f.item_id for f in cited]
        if key in dislikes:
            dislikes[key].evidence = _tail([*dislikes[key].evidence, *items], config)
            continue
        dislikes[key] = Dislike(name=update.name.strip(), evidence=_tail(items, config))
        ids = [f.feedback_id for f in cited]
        changes.append(
            _change("dislike_added", update.name.strip(), evidence=ids, rationale=update.rationale)
        )

    blocked = list(state.blocked)
    already = {b.item_id for b in blocked}
    for event in sorted(reactions.values(), key=lambda e: e.seq):
        if not blocks_item(event.signal, event.value) or event.item_id in already:
            continue
        already.add(event.item_id)
        blocked.append(BlockedItem(item_id=event.item_id, signal=event.signal, feedback_id=event.feedback_id,
                                   since=event.timestamp))  # fmt: skip
        how = "rated it low" if event.signal == "rating" else event.signal.replace("_", " ")
        why = f"{how}: never recommended again"
        changes.append(_change("item_blocked", event.item_id, evidence=[event.feedback_id], rationale=why))

    summary = state.profile.summary
    if delta.summary and delta.summary.strip() and delta.summary.strip() != summary:
        summary = delta.summary.strip()
        ids = [r.feedback_id for r in reactions.values()]
        changes.append(_change("summary_changed", "summary", evidence=ids, rationale=f"now: {summary}"))

    fields = {"summary": summary, "interests": list(interests.values()), "dislikes": list(dislikes.values())}
    profile = state.profile.model_copy(update=fields)
    kept_seen = {k: v for k, v in seen.items() if k in interests}
    return ProfileState(profile=profile, blocked=blocked, interest_seen=kept_seen, as_of=as_of), changes


def _merge_interests(
    interests: dict[str, Interest],
    updates: Sequence[InterestUpdate],
    reactions: Mapping[str, StoredFeedback],
    config: RefineConfig,
    changes: list[Change],
) -> set[str]:
    """Apply interest updates in place (clamped, bounded per refinement); the keys touched."""
    original = {k: i.strength for k, i in interests.items()}
    touched: set[str] = set()
    for update in updates:
        key, cited = _key(update.name), [reactions[e] for e in update.evidence if e in reactions]
        ids, items, why = [f.feedback_id for f in cited], [f.item_id for f in cited], update.rationale
        current = interests.get(key)
        if not key or not cited or (current is None and update.action == "weaken"):
            reason = "weakens an unknown interest" if cited and key else "cites no reaction"
            changes.append(_change("ignored", update.name, evidence=ids, rationale=reason))
            continue
        if current is None:
            strength = _clamp(min(update.amount, config.new_interest_cap))
            name = update.name.strip()
            interests[key] = Interest(name=name, strength=strength, evidence=_tail(items, config))
            changes.append(_change("interest_added", name, after=strength, evidence=ids, rationale=why))
        else:
            base, before = original.get(key, current.strength), current.strength
            if update.action == "weaken":
                target = before - update.amount
            elif update.action == "strengthen":
                target = before + update.amount
            else:  # "add" of an interest that exists: raise it towards the proposed strength
                target = max(before, update.amount)
            # One refinement moves an interest by at most max_step from where it started.
            after = _clamp(min(base + config.max_step, max(base - config.max_step, target)))
            current.strength = after
            current.evidence = _tail([*current.evidence, *items], config)
            kind: ChangeKind = "interest_weakened" if after < before else "interest_strengthened"
            changes.append(
                _change(kind, current.name, before=before, after=after, evidence=ids, rationale=why)
            )
        touched.add(key)
    return touched


def _tail(items: list[str], config: RefineConfig) -> list[str]:
    """Distinct ids, newest kept when over the cap."""
    distinct = list(dict.fromkeys(reversed(items)))[: config.max_evidence_per_interest]
    return list(reversed(distinct))


def _decay(
    interests: dict[str, Interest],
    seen: Mapping[str, datetime],
    touched: set[str],
    previous: datetime | None,
    now: datetime | None,
    config: RefineConfig,
) -> list[Change]:
    """Halve stale interests every ``half_life_days`` of the time since the previous version
    (only the part of it after they became stale), so repeated merges never double-count."""
    if now is None:
        return []
    changes: list[Change] = []
    for key, interest in interests.items():
        if key in touched:
            continue
        last = seen.get(key) or previous
        if last is None:
            continue
        stale_from = last + timedelta(days=config.stale_after_days)
        start = max(stale_from, previous) if previous else stale_from
        days = (now - start).total_seconds() / 86_400
        if days <= 0:
            continue
        before = interest.strength
        interest.strength = _clamp(before * 0.5 ** (days / config.half_life_days))
        if interest.strength < before:
            changes.append(
                Change(
                    kind="interest_decayed",
                    name=interest.name,
                    before=before,
                    after=interest.strength,
                    rationale=f"not reinforced since {last:%Y-%m-%d}",
                )
            )
    return changes


def diff_states(old: ProfileState, new: ProfileState) -> list[Change]:
    """What differs between two profile states (no rationale: see the versions' own changes)."""
    out: list[Change] = []
    before = {_key(i.name): i for i in old.profile.interests}
    after = {_key(i.name): i for i in new.profile.interests}
    for key, now in after.items():
        was = before.get(key)
        if was is None:
            out.append(_change("interest_added", now.name, after=now.strength))
        elif was.strength != now.strength:
            kind: ChangeKind = "interest_strengthened" if now.strength > was.strength else "interest_weakened"
            out.append(_change(kind, now.name, before=was.strength, after=now.strength))
    out += [
        _change("interest_removed", i.name, before=i.strength) for k, i in before.items() if k not in after
    ]
    old_dislikes = {_key(d.name): d.name for d in old.profile.dislikes}
    new_dislikes = {_key(d.name): d.name for d in new.profile.dislikes}
    out += [_change("dislike_added", n) for k, n in new_dislikes.items() if k not in old_dislikes]
    out += [_change("dislike_removed", n) for k, n in old_dislikes.items() if k not in new_dislikes]
    out += [_change("item_blocked", i) for i in new.blocked_ids() if i not in old.blocked_ids()]
    out += [_change("item_unblocked", i) for i in old.blocked_ids() if i not in new.blocked_ids()]
    if old.profile.summary != new.profile.summary:
        out.append(_change("summary_changed", "summary"))
    return out


# -- the loop for one user ------------------------------------------------------------------
class RefineResult(BaseModel):
    user_id: str
    status: Literal["refined", "skipped"]
    reason: str
    version: ProfileVersion | None
    previous_version: int | None
    pending: int
    """Reactions still waiting after this run (over ``max_reactions_per_call``, or skipped)."""
    usage: dict[str, Any]


@dataclass
class Refiner:
    """Refines stored profiles from stored feedback (see module docstring)."""

    store: Store
    client: ChatClient
    renderer: PromptRenderer
    item_info: Callable[[str], tuple[str | None, str | None, float | None]]
    config: RefineConfig = field(default_factory=RefineConfig)
    domain: Domain = field(default_factory=Domain)
    scrub: bool = True

    def pending(self, user_id: str) -> list[StoredFeedback]:
        latest = self.store.latest_profile(user_id)
        return self.store.feedback(user_id, after_seq=latest.feedback_upto if latest else 0)

    def refine(
        self, user_id: str, *, force: bool = False, first_profile: Callable[[], object] | None = None
    ) -> RefineResult:
        """Refine ``user_id``'s latest stored profile; no call unless the evidence is worth it.

        ``force`` calls the model for any pending reaction, below the threshold too. A user
        without a stored profile but with evidence worth a call gets one from ``first_profile``
        (which must save it) first; without ``first_profile`` that is ``ProfileNotFoundError``.
        A failed call raises its ``ModelError`` and leaves the previous version current;
        ``VersionConflictError`` if other writers keep winning.
        """
        usage = Usage()
        outcome: dict[str, Any] = {"reason": "no new feedback", "previous": None}
        if self.store.latest_profile(user_id) is None:
            pending = self.pending(user_id)
            if not pending or not (force or worth_a_call(pending, self.config)):
                reason = "no stored profile and no feedback worth a call"
                return RefineResult(user_id=user_id, status="skipped", reason=reason, version=None,
                                    previous_version=None, pending=len(pending), usage=usage.as_dict())  # fmt: skip
            if first_profile is None:
                raise ProfileNotFoundError(f"no stored profile for user {user_id!r} to refine")
            first_profile()

        def build(latest: ProfileVersion | None) -> ProfileDraft | None:
            if latest is None:
                raise ProfileNotFoundError(f"no stored profile for user {user_id!r} to refine")
            outcome["previous"] = latest.version
            pending = self.store.feedback(user_id, after_seq=latest.feedback_upto)
            batch = pending[: self.config.max_reactions_per_call]
            if not batch:
                outcome["reason"] = "no new feedback"
                return None
            if not force and not worth_a_call(batch, self.config):
                weight = evidence_weight(batch, self.config)
                outcome["reason"] = (
                    f"new evidence weight {weight:g} is below min_evidence_weight "
                    f"{self.config.min_evidence_weight:g}; no call"
                )
                return None
            lines, by_id = reaction_lines(
                batch, self.item_info, recommended_rank(self.store), Scrubber(enabled=self.scrub)
            )
            inputs = RefineInputs(
                domain=self.domain, profile=latest.state.profile.model_dump(mode="json"), reactions=lines
            )
            reply = self.client.complete(
                self.renderer.render(REFINE_TEMPLATE, inputs), delta_model(list(by_id))
            )
            usage.add(reply.usage)
            state, changes = merge(latest.state, reply.value, by_id, self.config)
            outcome["reason"] = f"{len(batch)} new reaction(s)"
            return ProfileDraft(
                user_id=user_id,
                state=state,
                producer="refine",
                model=reply.model,
                template_version=reply.template_version,
                evidence=[e.feedback_id for e in batch],
                feedback_upto=batch[-1].seq,
                changes=changes,
                usage=reply.usage.as_dict(),
            )

        saved = self.store.update_profile(user_id, build, max_attempts=self.config.max_attempts)
        return RefineResult(
            user_id=user_id,
            status="refined" if saved else "skipped",
            reason=outcome["reason"],
            version=saved,
            previous_version=outcome["previous"],
            pending=len(self.pending(user_id)),
            usage=usage.as_dict(),
        )

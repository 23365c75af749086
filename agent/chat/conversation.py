"""Conversational recommendation: a user refines in words, code applies the constraints.

Each message goes through three steps, following "the model extracts, code merges" (the
constraint rules themselves live in :mod:`agent.chat.constraints`):

1. **Extract.** The model reads the message (scrubbed of personal data), the current
   constraints, the items just shown and a few history items, and returns a validated
   :class:`~agent.chat.constraints.ConstraintUpdate`: categories wanted/excluded (an enum of the
   catalog's categories), a price range or "cheaper", required/excluded words, "more
   like"/"not like" items and reactions to shown items (ids are enums of what the model was
   shown).
2. **Merge** (code, deterministic: :func:`~agent.chat.constraints.merge_update`). "cheaper"
   without an amount means *below the median price of the items just shown*. Rejected items
   stay excluded for the rest of the conversation, even after "start over".
3. **Recommend** (:func:`~agent.chat.constraints.recommend_with_constraints`). Retrieval uses the
   request words (plus the titles of "more like" items); every candidate that breaks a hard
   filter is dropped (an item with no price fails any price filter); the model ranks only the
   survivors, with the constraints as the request, so every recommendation satisfies them
   (back-fill included).

Reactions ("I like the second one", "not that one") become feedback events: stored through
``agent.profiles.feedback`` when the agent has a store, and always kept in ``ConversationState.feedback``.
The state is a pydantic model: a host stores it between turns with ``model_dump_json()``.
Without a model (or when extraction fails for transport/quota/budget/invalid replies) the
message is used as a search query only, and the reply says so.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from agent import errors
from agent.chat.constraints import (
    MAX_CATEGORY_ENUM,
    Constraints,
    ConstraintUpdate,
    Reaction,
    merge_update,
    recommend_with_constraints,
    update_model,
)
from agent.chat.domains import DomainPreset, preset_for
from agent.data.loading import plain_line_breaks
from agent.data.privacy import Scrubber
from agent.prompting.history import consumed_items
from agent.prompting.templates import Domain
from agent.recommender import Recommendation, RecommendationResult, RecommenderAgent

log = logging.getLogger(__name__)

MAX_TURNS_IN_PROMPT = 6
# Failures after which a chat turn goes on without extraction (the ranking has its own fallback).
_DEGRADE: tuple[type[errors.RecommenderError], ...] = (errors.TransportError, errors.QuotaExceededError)
_DEGRADE += (
    errors.BudgetExceededError,
    errors.InvalidReplyError,
    errors.RefusalError,
    errors.TruncatedReplyError,
)


# -- models ----------------------------------------------------------------------------
class ChatFeedback(BaseModel):
    """A reaction in chat: the feedback ``signal`` and the domain's event ``behavior`` for it."""

    user_id: str
    item_id: str
    signal: Literal["like", "dislike"]
    behavior: str
    """The events-frame behavior of this domain (``follow`` for a like on a social network)."""
    timestamp: datetime
    text: str | None = None
    source: Literal["chat", "tool"] = "chat"
    recommendation_id: str | None = None
    recorded: bool = False
    """True when ``agent.profiles.feedback`` stored it; False when it is only kept here."""
    feedback_id: str | None = None
    error: str | None = None


class ShownItem(BaseModel):
    n: int
    item_id: str
    title: str
    category: str | None = None
    price: float | None = None


class Turn(BaseModel):
    role: Literal["user", "assistant"]
    text: str


class ConversationState(BaseModel):
    """Everything carried across turns; JSON-serializable so a host can store it."""

    user_id: str | None = None
    constraints: Constraints = Field(default_factory=Constraints)
    shown: list[ShownItem] = Field(default_factory=list)
    shown_before: list[str] = Field(default_factory=list)
    turns: list[Turn] = Field(default_factory=list)
    feedback: list[ChatFeedback] = Field(default_factory=list)
    last_recommendation_id: str | None = None


class ChatReply(BaseModel):
    """One answer: text for the user, the structured recommendations and the updated state."""

    text: str
    recommendations: list[Recommendation]
    constraints: Constraints
    feedback: list[ChatFeedback]
    filtered_out: dict[str, int]
    extraction: Literal["model", "fallback"]
    result: RecommendationResult | None
    state: ConversationState
    usage: dict[str, Any]


# -- feedback and catalog helpers -----------------------------------------------------
def record_feedback(agent: RecommenderAgent, event: ChatFeedback) -> ChatFeedback:
    """Store ``event`` through ``agent.profiles.feedback`` when the agent has a feedback store.

    Returns the event marked ``recorded`` (with the store's ``feedback_id``), or unchanged
    when the agent keeps no feedback. Errors of ``agent.profiles.feedback`` (unknown item, invalid
    event) propagate.
    """
    hook = getattr(agent, "feedback", None)
    if not callable(hook) or getattr(agent, "store", None) is None:
        return event
    stored = hook(
        event.user_id,
        event.item_id,
        event.signal,
        comment=(event.text or "")[:2000] or None,
        recommendation_id=event.recommendation_id,
        timestamp=event.timestamp,
    )
    return event.model_copy(update={"recorded": True, "feedback_id": getattr(stored, "feedback_id", None)})


def catalog_categories(agent: RecommenderAgent) -> list[str]:
    """The catalog's distinct categories, sorted."""
    infos = (agent.catalog.get(str(i)) for i in agent.retriever.item_ids)
    return sorted({info.category for info in infos if info and info.category})


# -- the chat flow ---------------------------------------------------------------------
class ExtractInputs(BaseModel):
    """Inputs of ``prompts/extract_constraints.j2`` (no user id; free text scrubbed)."""

    domain: Domain
    has_prices: bool
    categories: list[str]
    constraints: dict[str, Any]
    shown: list[ShownItem]
    history: list[ShownItem]
    turns: list[Turn]
    message: str


class Conversation:
    """``Conversation(agent).send(user_id, message, state)`` -> :class:`ChatReply`."""

    def __init__(self, agent: RecommenderAgent, *, preset: DomainPreset | None = None, k: int = 5) -> None:
        if k < 1:
            raise errors.ConfigError("k must be at least 1")
        self.agent = agent
        self.preset = preset or preset_for(agent.config.domain)
        self.k = k
        self._categories = catalog_categories(agent)

    def send(self, user_id: str, message: str, state: ConversationState | None = None) -> ChatReply:
        """Answer one message; model failures degrade (see module doc).

        A user with no events is served cold-start items (``AgentConfig.cold_start``), or gets
        ``UnknownUserError`` when that is off."""
        state = (state or ConversationState()).model_copy(deep=True)
        if state.user_id not in (None, user_id):
            raise errors.ConfigError("this conversation state belongs to another user")
        state.user_id = user_id
        histories = self.agent.histories
        if user_id not in histories and not self.agent.config.cold_start:
            histories.require(user_id)  # UnknownUserError
        # a new user (cold start) has an empty history: the chat still filters and searches
        user_events = histories.for_user(user_id) if user_id in histories else histories.empty()
        scrubber = Scrubber(enabled=self.agent.config.scrub_personal_data)
        text = plain_line_breaks(scrubber.scrub(message.strip())) or ""
        update, how, usage = self._extract(user_events, state, text)
        shown_ids = {s.item_id for s in state.shown}
        events = [self._react(user_id, r, text, state) for r in update.reactions if r.item_id in shown_ids]
        state.feedback.extend(events)
        state.constraints = merge_update(
            state.constraints, update, state.shown, has_prices=self.preset.has_prices
        )
        only_likes = (
            bool(events) and all(r.reaction == "like" for r in update.reactions) and update.only_reactions()
        )
        result: RecommendationResult | None = None
        dropped: dict[str, int] = {}
        if not only_likes:
            also = tuple(state.shown_before) if update.want_new else ()
            prices = self.preset.has_prices
            result, dropped = recommend_with_constraints(
                self.agent, user_id, state.constraints, self.k, has_prices=prices, also_exclude=also
            )
            usage.add(errors.Usage.from_dict(result.usage) if result else errors.Usage())
        reply = self._reply_text(state, events, result, dropped, how)
        if result is not None:
            state.shown = [self._shown(n, r.item_id) for n, r in enumerate(result.items, start=1)]
            state.shown_before = list(
                dict.fromkeys([*state.shown_before, *(r.item_id for r in result.items)])
            )
            state.last_recommendation_id = result.recommendation_id
        turns = [*state.turns, Turn(role="user", text=text), Turn(role="assistant", text=reply)]
        state.turns = turns[-2 * MAX_TURNS_IN_PROMPT :]  # the state stays small however long the chat
        return ChatReply(
            text=reply,
            recommendations=result.items if result else [],
            constraints=state.constraints,
            feedback=events,
            filtered_out=dropped,
            extraction=how,
            result=result,
            state=state,
            usage=usage.as_dict(),
        )

    # -- steps -------------------------------------------------------------------------
    def _react(self, user_id: str, reaction: Reaction, text: str, state: ConversationState) -> ChatFeedback:
        like = reaction.reaction == "like"
        event = ChatFeedback(
            user_id=user_id,
            item_id=reaction.item_id,
            signal=reaction.reaction,
            behavior=self.preset.like_behavior if like else self.preset.dislike_behavior,
            timestamp=datetime.now(UTC),
            text=text or None,
            recommendation_id=state.last_recommendation_id,
        )
        try:
            return record_feedback(self.agent, event)
        except errors.RecommenderError as exc:  # a feedback problem must not lose the turn
            log.warning("chat reaction not stored: %s", exc)
            return event.model_copy(update={"error": str(exc)})

    def _shown(self, n: int, item_id: str) -> ShownItem:
        info = self.agent.catalog.get(item_id)
        if info is None:
            return ShownItem(n=n, item_id=item_id, title=item_id)
        price = info.price if self.preset.has_prices else None
        return ShownItem(n=n, item_id=item_id, title=info.title, category=info.category, price=price)

    def _extract(
        self, user_events: Any, state: ConversationState, text: str
    ) -> tuple[ConstraintUpdate, Literal["model", "fallback"], errors.Usage]:
        client = self.agent.client
        if client is None:
            return ConstraintUpdate(request=text or None), "fallback", errors.Usage()
        recent = [
            i for i in reversed(consumed_items(user_events)) if i not in state.constraints.excluded_items
        ]
        history = [self._shown(n, i) for n, i in enumerate(recent[:8], start=1)]
        inputs = ExtractInputs(
            domain=self.preset.domain,
            has_prices=self.preset.has_prices,
            categories=self._categories[:MAX_CATEGORY_ENUM],
            constraints=state.constraints.model_dump(mode="json", exclude={"excluded_items"}),
            shown=state.shown,
            history=history,
            turns=state.turns[-MAX_TURNS_IN_PROMPT:],
            message=text,
        )
        prompt = self.agent.renderer.render("extract_constraints", inputs)
        ids = list(dict.fromkeys([*(s.item_id for s in state.shown), *(h.item_id for h in history)]))
        output = update_model(self._categories, ids, [s.item_id for s in state.shown])
        try:
            reply = client.complete(prompt, output)
        except _DEGRADE as exc:
            log.warning("constraint extraction failed, using the message as a search query: %s", exc)
            spent = exc.usage if isinstance(exc, errors.ModelError) else errors.Usage()
            return ConstraintUpdate(request=text or None), "fallback", spent
        return reply.value, "model", reply.usage

    def _reply_text(
        self,
        state: ConversationState,
        events: list[ChatFeedback],
        result: RecommendationResult | None,
        dropped: dict[str, int],
        how: str,
    ) -> str:
        nouns = self.preset.domain.items_noun
        lines = []
        for event in events:
            verb = "liked" if event.signal == "like" else "not interested in"
            lines.append(f"Noted: {verb} {self.agent.catalog.title(event.item_id)}.")
        if how == "fallback":
            lines.append("(No model available: I searched with your words and applied no other filters.)")
        if result is None and events and not dropped:
            lines.append("Ask for more whenever you like.")
        if result is None:
            if not (events and not dropped):
                drops = sorted(dropped.items(), key=lambda kv: -kv[1])
                ruled = ", ".join(f"{n} by {reason.replace('_', ' ')}" for reason, n in drops)
                why = f" (ruled out: {ruled})" if ruled else ""
                lines.append(f"No {nouns} match all of that{why}. Try relaxing a constraint.")
            return "\n".join(lines)
        c = state.constraints
        wanted = c.describe({i: self.agent.catalog.title(i) for i in (*c.more_like, *c.less_like)})
        lines.append(f"Here are {len(result.items)} {nouns}" + (f" for: {wanted}." if wanted else ":"))
        for item in result.items:
            info = self.agent.catalog.get(item.item_id)
            shown = info is not None and info.price is not None and self.preset.has_prices
            price = f" ({info.price:.2f})" if shown and info else ""
            lines.append(f"{item.rank}. {item.title}{price} - {item.reason}")
        if result.fallback_reason:
            lines.append("(Ranked without the model: " + result.fallback_reason + ")")
        return "\n".join(lines)

"""Results and the interpretation of model replies (shared by the sync path, batch and Batch API).

A ranking reply becomes a ``RecommendationResult`` in three steps:

1. **grounding** (``agent.ranking.grounding.ground``): ids outside the candidates, duplicates and the
   user's own history are dropped and counted;
2. **bootstrap aggregation** (optional, ``agent.ranking.position_bias.borda``): with several replies
   to the same candidates shown in different orders, their grounded orders are merged by
   Borda count, so no single input order decides;
3. **fusion** (``agent.ranking.fusion``): every candidate gets ``p = sigmoid(bias + w_llm * gain(model
   rank) + w_retriever * retriever score)`` and the top ``k`` by ``p`` are returned. With
   ``context.fusion`` None the model's order is kept and back-filled in the retriever's order.

Every returned item says where it came from: ``source="llm"`` when the model placed it,
``"retriever"`` when only the retriever's signal put it there (``"fallback"`` when no model
was asked at all, see ``RecommenderAgent``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from agent import errors
from agent.llm.client import StructuredReply
from agent.prompting.schemas import (
    AgentReply,
    BehaviorProfile,
    Recommendations,
    profile_model,
    recommendations_model,
    shared_reply_model,
)
from agent.prompting.templates import RenderedPrompt
from agent.ranking.fusion import FusionWeights, RankedList, fuse
from agent.ranking.grounding import GroundedRanking, ground
from agent.ranking.position_bias import borda, input_order_copy_rate

Source = Literal["llm", "retriever", "fallback", "cold_start"]
"""Where a recommended item came from: ``llm`` (the model placed it), ``retriever`` (back-fill
or fused in by the retriever), ``fallback`` (no model, or the model failed) and
``cold_start`` (the user has no history: popular or query-matched items)."""


class Recommendation(BaseModel):
    rank: int
    item_id: str
    title: str
    score: float
    """The fused score in (0, 1) for model rankings; the retriever's score otherwise."""
    reason: str
    evidence: list[str]
    source: Source


class RecommendationResult(BaseModel):
    recommendation_id: str
    user_id: str
    items: list[Recommendation]
    candidates_considered: int
    grounding: dict[str, float]
    fallback_reason: str | None
    model: str | None
    template_version: str | None
    mode: str | None
    usage: dict[str, Any]
    fusion: str | None = None
    """Which blend ordered the items: ``prior``, ``fitted``, ``retriever-only``; None = the
    model's order back-filled by the retriever (or no model at all)."""
    orders: int = 1
    """How many shuffled candidate orders the model ranked (bootstrap); 0 when no model ranked."""
    model_error: str | None = None
    """The error type (e.g. ``TransportError``) when a model was configured but every call
    for this result failed and the retriever's order was served instead; None otherwise.
    The command line exits 5 when it is set, so a dead endpoint never looks like success."""


class ProfileResult(BaseModel):
    user_id: str
    profile: BehaviorProfile
    events_total: int
    events_shown: int
    model: str
    template_version: str
    usage: dict[str, Any]
    version: int | None = None
    """The stored profile version this result was saved as (agents with a store)."""


class CandidateInfo(BaseModel):
    """A retrieved candidate as interpreting a reply needs it (title, retriever scores)."""

    item_id: str
    title: str
    score: float
    sources: dict[str, float]


class ReplyContext(BaseModel):
    """Everything needed to interpret one reply, without the prompt text.

    JSON-serializable, so a Batch API reply can be interpreted in a later process exactly
    as the synchronous path interprets it (``interpret_reply``).
    """

    task: Literal["profile", "recommend"]
    user_id: str
    history_ids: list[str]
    """Item ids of the history lines shown (the evidence enum)."""
    events_total: int
    events_shown: int
    shown: list[str] = []
    """recommend: candidate ids in the (shuffled) order the model saw them."""
    candidates: list[CandidateInfo] = []
    """recommend: the candidates in the retriever's order (back-fill order)."""
    consumed: list[str] = []
    """recommend: every item the user interacted with (never recommended back)."""
    k: int = 0
    fusion: FusionWeights | None = None
    """recommend: the blend of model rank and retriever score; None keeps the model's order."""
    has_prices: bool = True
    """profile: False when the catalog has no prices; the profile then keeps no price facts."""
    shared_schema: bool = False
    """True: the reply schema is ``AgentReply``, the same for every request (prompt caching;
    ``AgentConfig.reply_schema``); False: a per-request schema with enums of this request's ids."""

    def output_model(self) -> type[BaseModel]:
        """The reply model: per-request enums of this request's ids, or the shared ``AgentReply``."""
        if self.shared_schema:
            return shared_reply_model(self.task)
        if self.task == "profile":
            return profile_model(self.history_ids)
        return recommendations_model(self.shown, self.history_ids)


@dataclass(frozen=True)
class PreparedRequest:
    """A rendered prompt and the context to interpret its reply; made without any network."""

    prompt: RenderedPrompt
    context: ReplyContext


def interpret_reply(
    context: ReplyContext, reply: StructuredReply[Any]
) -> ProfileResult | RecommendationResult:
    """The result for a validated reply to the request ``context`` describes."""
    if context.task == "profile":
        return interpret_profile(context, reply)
    return interpret_ranking(context, reply)


def interpret_profile(context: ReplyContext, reply: StructuredReply[Any]) -> ProfileResult:
    """A ``ProfileResult`` from a validated profile reply.

    For a catalog without prices (``context.has_prices`` False) the price facts are dropped
    (sensitivity ``unknown``, no range): whatever the model made of ratings or other values,
    it cannot be a price the user pays."""
    profile = BehaviorProfile.model_validate(_answer(reply).model_dump())
    if context.shared_schema:  # no enum kept evidence to the shown history: keep only what is
        profile = _evidence_from(profile, set(context.history_ids))
    if not context.has_prices:
        profile = profile.model_copy(update={"patterns": profile.patterns.without_prices()})
    return ProfileResult(
        user_id=context.user_id,
        profile=profile,
        events_total=context.events_total,
        events_shown=context.events_shown,
        model=reply.model,
        template_version=reply.template_version,
        usage=reply.usage.as_dict(),
    )


def interpret_ranking(
    context: ReplyContext, reply: StructuredReply[Any], *, recommendation_id: str | None = None
) -> RecommendationResult:
    """Ground a validated ranking in the candidates, fuse with the retriever, return ``context.k`` items."""
    return interpret_rankings([context], [reply], recommendation_id=recommendation_id)


def interpret_rankings(
    contexts: Sequence[ReplyContext],
    replies: Sequence[StructuredReply[Any]],
    *,
    recommendation_id: str | None = None,
) -> RecommendationResult:
    """One result from replies to the same candidates shown in different orders (bootstrap).

    ``contexts[i]`` describes the request ``replies[i]`` answers; they must share user and
    candidates (only ``shown`` differs). Grounding rates and the input-order copy rate are
    averaged over the replies; usage is summed; each item's reason and evidence come from the
    first reply that placed it. Raises ``ValueError`` for mismatched or empty inputs.
    """
    if not contexts or len(contexts) != len(replies):
        raise ValueError("interpret_rankings needs one context per reply, at least one")
    context = contexts[0]
    if any(c.user_id != context.user_id or c.candidates != context.candidates for c in contexts):
        raise ValueError("bootstrap replies must answer the same user and candidates")
    titles = {c.item_id: c.title for c in context.candidates}
    answers = [_answer(reply) for reply in replies]
    grounded = [ground(answer, titles, context.consumed) for answer in answers]
    orders = [g.item_ids for g in grounded]
    llm_order = orders[0] if len(orders) == 1 else borda(orders)
    placed: dict[str, Any] = {}  # item id -> the first reply item that placed it (reason, evidence)
    for answer in answers:
        for item in answer.items if isinstance(answer, Recommendations) else []:
            placed.setdefault(item.item_id, item)

    out = _fused(context, titles, llm_order, placed, grounded)
    usage = errors.Usage()
    for reply in replies:
        usage.add(reply.usage)
    first = replies[0]
    return RecommendationResult(
        recommendation_id=recommendation_id or uuid.uuid4().hex,
        user_id=context.user_id,
        items=out,
        candidates_considered=len(context.candidates),
        grounding=_grounding_report(contexts, grounded, out),
        fallback_reason=None,
        model=first.model,
        template_version=first.template_version,
        mode=first.mode,
        usage=usage.as_dict(),
        fusion=context.fusion.source if context.fusion is not None else None,
        orders=len(replies),
    )


def _answer(reply: StructuredReply[Any]) -> Any:
    """The task's reply: the value itself, or the filled field of a shared ``AgentReply``."""
    return reply.value.answer() if isinstance(reply.value, AgentReply) else reply.value


def _evidence_from(profile: BehaviorProfile, shown: set[str]) -> BehaviorProfile:
    """``profile`` citing only ids of the shown history (what the per-request enum enforces)."""
    return profile.model_copy(
        update={
            "interests": [
                i.model_copy(update={"evidence": [e for e in i.evidence if e in shown]})
                for i in profile.interests
            ],
            "dislikes": [
                d.model_copy(update={"evidence": [e for e in d.evidence if e in shown]})
                for d in profile.dislikes
            ],
        }
    )


def _fused(
    context: ReplyContext,
    titles: dict[str, str],
    llm_order: list[str],
    placed: dict[str, Any],
    grounded: list[GroundedRanking],
) -> list[Recommendation]:
    """The final ``context.k`` items: fused order, or the model's order back-filled."""
    k = context.k
    shared, shown_ids = context.shared_schema, set(context.history_ids)  # evidence: shown history only
    reasons: dict[str, str] = {}
    for g in grounded:  # raw-text replies carry reasons in the grounding, not in items
        for item_id, reason in g.reasons.items():
            reasons.setdefault(item_id, reason)

    def from_model(item_id: str, rank: int, score: float) -> Recommendation:
        item = placed.get(item_id)
        return Recommendation(
            rank=rank,
            item_id=item_id,
            title=titles.get(item_id, item_id),
            score=score,
            reason=item.reason if item else reasons.get(item_id, ""),
            evidence=[str(e) for e in item.evidence if not shared or str(e) in shown_ids] if item else [],
            source="llm",
        )

    if context.fusion is None:
        out = [
            from_model(item_id, n, float(placed[item_id].score) if item_id in placed else 0.0)
            for n, item_id in enumerate(llm_order[:k], start=1)
        ]
        backfill(out, context.candidates, k, "retriever")
        return out

    by_id = {c.item_id: c for c in context.candidates}
    ranked = RankedList(
        candidate_ids=[c.item_id for c in context.candidates],
        retriever_scores=[c.score for c in context.candidates],
        llm_order=llm_order,
    )
    model_placed = set(llm_order)
    out = []
    for item_id, fused_score in fuse(ranked, context.fusion)[:k]:
        rank, score = len(out) + 1, round(fused_score, 4)
        if item_id in model_placed:
            out.append(from_model(item_id, rank, score))
        else:
            candidate = by_id[item_id]
            out.append(
                Recommendation(
                    rank=rank,
                    item_id=item_id,
                    title=candidate.title,
                    score=score,
                    reason=retriever_reason(candidate.sources),
                    evidence=[],
                    source="retriever",
                )
            )
    return out


def _grounding_report(
    contexts: Sequence[ReplyContext], grounded: list[GroundedRanking], out: list[Recommendation]
) -> dict[str, float]:
    n = len(grounded)
    # How much the model's order just copies the (shuffled) order it was shown: a high rate
    # means position bias, not judgement (1.0 = a prefix of the input). 0.5 = no evidence.
    copy_rates = [
        input_order_copy_rate(c.shown, g.item_ids) if c.shown else 0.5
        for c, g in zip(contexts, grounded, strict=True)
    ]
    return {
        "invented_rate": sum(g.rates["invented_rate"] for g in grounded) / n,
        "duplicate_rate": sum(g.rates["duplicate_rate"] for g in grounded) / n,
        "history_rate": sum(g.rates["history_rate"] for g in grounded) / n,
        "backfilled": float(sum(r.source != "llm" for r in out)),
        "input_order_copy_rate": sum(copy_rates) / n,
    }


_REASON_LABELS = {
    "cooccurrence": "often chosen together with items in your history",
    "popularity": "popular right now",
    "content": "similar to items you engaged with",
    "search": "matches what you searched for",
}


def retriever_reason(sources: dict[str, float]) -> str:
    """Why the retriever proposed an item, from its strongest source."""
    if not sources:
        return "ranked by the retriever"
    top = max(sources.items(), key=lambda kv: kv[1])[0]
    return _REASON_LABELS.get(top, f"retriever signal: {top}")


def backfill(out: list[Recommendation], candidates: list[CandidateInfo], k: int, source: Source) -> None:
    """Append candidates not in ``out`` (in the given order) until ``out`` has ``k`` items."""
    taken = {r.item_id for r in out}
    for candidate in candidates:
        if len(out) >= k:
            break
        if candidate.item_id in taken:
            continue
        out.append(
            Recommendation(
                rank=len(out) + 1,
                item_id=candidate.item_id,
                title=candidate.title,
                score=round(float(candidate.score), 4),
                reason=retriever_reason(candidate.sources),
                evidence=[],
                source=source,
            )
        )

"""``RecommenderAgent``: behavior profile and grounded, explained recommendations for one user.

The flow of ``recommend`` (two stages, as the strongest published systems do):

1. the retriever proposes ``n_candidates`` items the user has not consumed;
2. candidates are shuffled (seeded) against position bias, rendered with the user's history
   (trimmed to the prompt budget) and ranked by the model under a schema whose ``item_id``
   is an enum of those candidates; with ``bootstrap_orders`` B > 1, B shuffles are ranked
   and merged by Borda count;
3. the reply is grounded (``agent.ranking.replies``): ids outside the candidates, duplicates and
   history items are dropped and counted;
4. the final order blends the model's rank with the retriever's score (``agent.ranking.fusion``;
   the documented prior until weights are fit on held-out interactions, see
   ``agent.evaluation.fusion_fit``). Every returned item says where it came from (``source``: ``llm``,
   ``retriever`` or ``fallback``).

With no client (``--backend fallback``) or when the model fails for good (transport, quota,
budget), the retriever's ranking is returned with ``source="fallback"`` and the reason (and
``model_error`` naming the failure when there was a client).

**Cold start.** A user with no events (new, or unknown to this log) is not an error for
``recommend``/``rank_candidates`` (``AgentConfig.cold_start``, on by default): the retriever's
popularity ranking, or its match to ``query`` when one is given, is returned without a model
call, every item marked ``source="cold_start"`` and ``fallback_reason`` saying so. There is no
history to personalize on, so the model has nothing to add that the query does not already
say. ``profile`` and ``refine`` still raise ``UnknownUserError`` (there is nothing to profile).

With a ``store`` (``agent.profiles.store``) the feedback loop is on: ``profile`` saves a version,
``recommend``/``rank_candidates`` use the latest stored profile when none is given, never show
blocked items (dislikes, not_interested, low ratings) to the model or the user, and record what
was served; ``feedback`` records reactions and ``refine`` updates the profile from them.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import pandas as pd

from agent import errors
from agent.data.behaviors import KNOWN_BEHAVIORS
from agent.data.event_columns import EventColumns
from agent.data.loading import UserHistories, plain_line_breaks
from agent.data.privacy import Scrubber
from agent.llm.client import DEFAULT_MODEL, ChatClient, StructuredReply
from agent.profiles.feedback import ServedRecommendation, StoredFeedback, check_references, make_event
from agent.profiles.refine import RefineConfig, Refiner, RefineResult
from agent.profiles.store import Store
from agent.profiles.versions import built_profile_draft
from agent.prompting.fit import fit_prompt
from agent.prompting.history import Catalog, consumed_items
from agent.prompting.schemas import BehaviorProfile
from agent.prompting.templates import (
    Domain,
    HistoryLine,
    ProfileInputs,
    PromptRenderer,
    RecommendInputs,
    RenderedPrompt,
    default_renderer,
)
from agent.ranking.fusion import FusionWeights
from agent.ranking.position_bias import shuffle_candidates
from agent.ranking.replies import (  # re-exported: the public result types live with their interpretation
    CandidateInfo,
    PreparedRequest,
    ProfileResult,
    Recommendation,
    RecommendationResult,
    ReplyContext,
    Source,
    backfill,
    interpret_profile,
    interpret_ranking,
    interpret_rankings,
    interpret_reply,
)
from agent.retrieval.candidates import Candidate, Retriever, RetrieverConfig

__all__ = [
    "MAX_K",
    "AgentConfig",
    "CandidateInfo",
    "PreparedRequest",
    "ProfileResult",
    "Recommendation",
    "RecommendationResult",
    "RecommenderAgent",
    "ReplyContext",
    "Source",
    "interpret_profile",
    "interpret_ranking",
    "interpret_rankings",
    "interpret_reply",
]

log = logging.getLogger(__name__)


MAX_K = 100
"""The most items one recommendation may hold. Ranking quality beyond a first screen is not
what this agent is built or measured for, and a larger k silently became "the whole eligible
catalog"; a larger k is an ``InvalidArgumentError``."""


def check_k(k: int) -> int:
    """``k`` if 1 <= k <= ``MAX_K``; ``InvalidArgumentError`` (a ``ConfigError`` and a ``ValueError``) otherwise."""
    if k < 1:
        raise errors.InvalidArgumentError("k must be at least 1")
    if k > MAX_K:
        raise errors.InvalidArgumentError(f"k must be at most {MAX_K}, got {k}")
    return k


@dataclass
class AgentConfig:
    """Knobs of the agent; the defaults suit a GPT-4-class model and ~20-50 candidates."""

    n_candidates: int = 30
    prompt_budget_tokens: int = 6000
    """Upper bound on prompt tokens (system + user, framing included); history is trimmed to fit."""
    max_history_events: int = 20
    """Most history events a prompt shows (the ``keep_priority`` order: the 5 most recent, then
    the strongest signals). Why 20: LLMRank (Hou et al., ECIR 2024, fig. 1b: ChatGPT on ML-1M,
    1 true + 19 random candidates) measured NDCG@10 of about 50 with the 5 most recent
    interactions, 48 with 10, 47 with 20 and 46.5 with 50: ranking does not improve with
    longer histories, while every event costs tokens in both of a user's prompts. 20 keeps
    room for the profile's recurring themes. docs/BENCHMARKS.md (cost per 1,000 users) has the numbers."""
    exclude_consumed: bool = True
    seed: int = 7
    domain: Domain = field(default_factory=Domain)
    scrub_personal_data: bool = True
    template_dir: str | None = None
    fusion: FusionWeights | None = field(default_factory=FusionWeights.prior)
    """Blend of the model's rank and the retriever's score that orders the final list
    (``agent.ranking.fusion``; fit one with ``agent.evaluation.fusion_fit``). None keeps the model's order and
    back-fills in the retriever's order."""
    bootstrap_orders: int = 1
    """Rank the candidates in this many shuffled orders (one model call each) and merge the
    rankings by Borda count, so no single input order decides (costs this many calls)."""
    reply_schema: Literal["per_request", "shared"] = "per_request"
    """``per_request``: each request's reply schema lists its own candidate and history ids as
    enums, so a server that enforces schemas cannot return an invented id. ``shared``: one
    schema for every profile and ranking request (``agent.prompting.schemas.AgentReply``), so
    providers' prompt caching applies (OpenAI counts the schema as the start of the prompt;
    one user's two requests then share schema, system message and history): cheaper input,
    ids checked by grounding only. ``recagent batch --dry-run`` shows both costs."""
    cold_start: bool = True
    """Serve a user with no events popular (or query-matched) items marked ``cold_start``;
    False raises ``UnknownUserError`` for them instead."""
    retriever: RetrieverConfig | None = None
    """Settings of the retriever the agent fits (e.g. tuned ones, ``recagent tune``); None:
    ``RetrieverConfig()`` defaults. Ignored when a fitted ``retriever`` is passed."""


class RecommenderAgent:
    """Profiles and recommendations over one loaded log and catalog (canonical frames).

    Each model call is ``prepare_*`` (pure: render + schema) then ``interpret_reply``
    (validate, ground, back-fill), so the batch runner and the Batch API collector share
    this code path with ``profile`` and ``rank_candidates``.
    """

    token_model: str | None = None
    """Model whose tokenizer measures prompt budgets when the agent has no client (batch runs)."""

    def __init__(
        self,
        events: pd.DataFrame,
        items: pd.DataFrame,
        client: ChatClient | None,
        config: AgentConfig | None = None,
        *,
        retriever: Retriever | None = None,
        store: Store | None = None,
        refine_config: RefineConfig | None = None,
    ) -> None:
        self.store = store
        """With a store: profiles and served recommendations are saved, feedback/refine work,
        and blocked items (dislikes, not_interested, low ratings) are hard filters."""
        self.refine_config = refine_config or RefineConfig()
        self.config = config or AgentConfig()
        if self.config.bootstrap_orders < 1:
            raise errors.ConfigError("bootstrap_orders must be at least 1")
        self.client = client
        self.catalog = Catalog(items)
        self.histories = UserHistories(events)
        self.retriever = retriever or Retriever.fit(events, items, self.config.retriever)
        self.renderer: PromptRenderer = default_renderer(self.config.template_dir)
        self.behaviors = sorted(set(KNOWN_BEHAVIORS) | set(events["behavior"].unique().tolist()))

    # -- prompts -----------------------------------------------------------------------
    def _fit_prompt(
        self, user_events: EventColumns, build: Any, scrubber: Scrubber
    ) -> tuple[RenderedPrompt, list[HistoryLine]]:
        """Render with as much history as the token budget allows (never more)."""
        model = self.client.config.model if self.client else (self.token_model or DEFAULT_MODEL)
        return fit_prompt(
            self.renderer,
            build,
            user_events,
            self.catalog,
            scrubber,
            model,
            self.config.prompt_budget_tokens,
            self.config.max_history_events,
        )

    def _scrubber(self) -> Scrubber:
        return Scrubber(enabled=self.config.scrub_personal_data)

    # -- public API --------------------------------------------------------------------
    def profile(self, user_id: str) -> ProfileResult:
        """Build the user's behavior profile. Raises ``UnknownUserError`` or a ``ModelError``."""
        client = self._require_client("profile")
        prepared = self.prepare_profile(user_id)
        reply = client.complete(prepared.prompt, prepared.context.output_model())
        result = interpret_profile(prepared.context, reply)
        if self.store is not None:
            as_of = self.histories.for_user(user_id)["timestamp"].max().to_pydatetime()
            saved = self.store.update_profile(user_id, lambda _: built_profile_draft(result, as_of))
            result.version = saved.version if saved else None
        return result

    def prepare_profile(self, user_id: str) -> PreparedRequest:
        """The profile prompt for ``user_id`` and its reply context (no network)."""
        user_events = self.histories.columns(user_id)

        def build(kept: list[HistoryLine]) -> tuple[str, ProfileInputs]:
            return "profile", ProfileInputs(
                domain=self.config.domain,
                behaviors=self.behaviors,
                history=kept,
                total_events=len(user_events),
            )

        prompt, kept = self._fit_prompt(user_events, build, self._scrubber())
        evidence_ids = list(dict.fromkeys(line.item_id for line in kept if line.item_id))
        context = ReplyContext(
            task="profile",
            user_id=user_id,
            history_ids=evidence_ids,
            events_total=len(user_events),
            events_shown=len(kept),
            has_prices=self.catalog.has_prices,
            shared_schema=self.config.reply_schema == "shared",
        )
        return PreparedRequest(prompt, context)

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        query: str | None = None,
        profile: BehaviorProfile | None = None,
        exclude: tuple[str, ...] = (),
    ) -> RecommendationResult:
        """Top-``k`` grounded recommendations.

        When the model is unavailable (transport failure after retries, quota, budget) this
        falls back to the retriever's order with ``fallback_reason`` and ``model_error`` set.
        Other model failures (auth, bad request, refusal, truncated or still-invalid reply)
        raise their ``ModelError``. A user with no events gets the cold-start list (popular
        items, or the best matches to ``query``; ``source="cold_start"``, no model call), or
        ``UnknownUserError`` when ``AgentConfig.cold_start`` is off. Raises
        ``InvalidArgumentError`` (a ``ValueError``) unless 1 <= k <= ``MAX_K``.
        """
        candidates = self._candidates(user_id, k, query, exclude)
        return self.rank_candidates(user_id, candidates, k=k, query=query, profile=profile)

    def prepare_recommend(
        self,
        user_id: str,
        k: int = 10,
        query: str | None = None,
        profile: BehaviorProfile | None = None,
        exclude: tuple[str, ...] = (),
    ) -> PreparedRequest:
        """``recommend``'s prompt and reply context (retriever included, no network)."""
        candidates = self._candidates(user_id, k, query, exclude)
        return self.prepare_ranking(user_id, candidates, k=k, query=query, profile=profile)

    def _candidates(
        self, user_id: str, k: int, query: str | None, exclude: tuple[str, ...]
    ) -> list[Candidate]:
        check_k(k)
        self._require_user(user_id)  # UnknownUserError before any work (unless cold start)
        return self.retriever.candidates(
            user_id,
            n=max(self.config.n_candidates, k),
            query=query,
            exclude_consumed=self.config.exclude_consumed,
            exclude=(*exclude, *self._blocked(user_id)),
        )

    def rank_candidates(
        self,
        user_id: str,
        candidates: list[Candidate],
        k: int = 10,
        query: str | None = None,
        profile: BehaviorProfile | None = None,
    ) -> RecommendationResult:
        """Rank a given candidate set (retriever output, or a fixed evaluation set) for a user.

        The model sees only these candidates (shuffled) and the user's history in this agent's
        log; items the model does not place are back-filled in the candidates' given order.
        With a store, blocked items never reach the model nor the result, the latest stored
        profile is used when ``profile`` is None, and the result is recorded as served.
        """
        if self.store is None:
            return self._rank(user_id, candidates, k, query, profile)
        blocked = self._blocked(user_id)
        profile, version = self._stored_profile(user_id, profile)
        result = self._rank(user_id, [c for c in candidates if c.item_id not in blocked], k, query, profile)
        kept = [r for r in result.items if r.item_id not in blocked]  # belt and braces
        result.items = [r.model_copy(update={"rank": n}) for n, r in enumerate(kept, start=1)]
        self.store.save_recommendation(ServedRecommendation.from_result(result, version))
        return result

    def _rank(
        self,
        user_id: str,
        candidates: list[Candidate],
        k: int,
        query: str | None,
        profile: BehaviorProfile | None,
    ) -> RecommendationResult:
        check_k(k)
        self._require_user(user_id)
        rec_id = uuid.uuid4().hex
        if user_id not in self.histories:  # cold start: nothing to personalize on, no model call
            # each item's own reason says which signal placed it (popularity or the query)
            basis = "matches to the query and popularity" if query else "popularity"
            why = f"cold start: no events for this user yet, ranked by {basis}"
            return self._fallback(rec_id, user_id, candidates, k, why, source="cold_start")
        if self.client is None:
            return self._fallback(rec_id, user_id, candidates, k, "no model configured (--backend fallback)")
        if not candidates:  # e.g. the user consumed the whole catalog: nothing to ask the model
            return self._fallback(rec_id, user_id, candidates, k, "no candidates left to rank")
        prepared = self.prepare_rankings(user_id, candidates, k=k, query=query, profile=profile)
        replies: list[StructuredReply[Any]] = []
        try:
            for request in prepared:
                replies.append(self.client.complete(request.prompt, request.context.output_model()))
        except (errors.TransportError, errors.QuotaExceededError, errors.BudgetExceededError) as exc:
            log.warning("model unavailable for a recommendation, using the retriever: %s", exc)
            result = self._fallback(
                rec_id, user_id, candidates, k, f"{type(exc).__name__}: {exc}", model_error=type(exc).__name__
            )
            spent = errors.Usage()
            for reply in replies:  # bootstrap calls that did succeed were paid for
                spent.add(reply.usage)
            spent.add(getattr(exc, "usage", errors.Usage()))  # budget errors carry none
            result.usage = spent.as_dict()
            return result
        contexts = [request.context for request in prepared]
        return interpret_rankings(contexts, replies, recommendation_id=rec_id)

    def prepare_rankings(
        self,
        user_id: str,
        candidates: list[Candidate],
        k: int = 10,
        query: str | None = None,
        profile: BehaviorProfile | None = None,
    ) -> list[PreparedRequest]:
        """One ``prepare_ranking`` per shuffled order the config asks for (``bootstrap_orders``)."""
        return [
            self.prepare_ranking(user_id, candidates, k=k, query=query, profile=profile, order=n)
            for n in range(self.config.bootstrap_orders)
        ]

    def prepare_ranking(
        self,
        user_id: str,
        candidates: list[Candidate],
        k: int = 10,
        query: str | None = None,
        profile: BehaviorProfile | None = None,
        order: int = 0,
    ) -> PreparedRequest:
        """``rank_candidates``'s prompt and reply context (no network).

        ``order`` picks the seeded shuffle of the candidates (0 = the default order; bootstrap
        ranks orders 0..B-1).
        """
        check_k(k)
        user_events = self.histories.columns(user_id)
        scrubber = self._scrubber()
        seed = f"{self.config.seed}:{user_id}" if order == 0 else f"{self.config.seed}:{user_id}:{order}"
        shown = shuffle_candidates([c.item_id for c in candidates], seed=seed)
        candidate_lines = [self.catalog.candidate_line(item_id, scrubber) for item_id in shown]
        profile_json = profile.model_dump(mode="json") if profile else None

        def build(kept: list[HistoryLine]) -> tuple[str, RecommendInputs]:
            return "recommend", RecommendInputs(
                domain=self.config.domain,
                behaviors=self.behaviors,
                profile=profile_json,
                history=kept,
                total_events=len(user_events),
                candidates=candidate_lines,
                k=min(k, len(candidate_lines)),
                query=plain_line_breaks(scrubber.scrub(query)),
            )

        prompt, kept = self._fit_prompt(user_events, build, scrubber)
        context = ReplyContext(
            task="recommend",
            user_id=user_id,
            history_ids=list(dict.fromkeys(line.item_id for line in kept if line.item_id)),
            events_total=len(user_events),
            events_shown=len(kept),
            shown=shown,
            candidates=self._infos(candidates),
            consumed=consumed_items(user_events),
            k=k,
            fusion=self.config.fusion,
            shared_schema=self.config.reply_schema == "shared",
        )
        return PreparedRequest(prompt, context)

    # -- feedback loop (needs a store; see agent.profiles.feedback, agent.profiles.refine, agent.profiles.store) -----
    def feedback(
        self,
        user_id: str,
        item_id: str,
        signal: str,
        *,
        value: float | None = None,
        comment: str | None = None,
        recommendation_id: str | None = None,
        timestamp: datetime | None = None,
    ) -> StoredFeedback:
        """Record one reaction (linked to the recommendation that showed the item if none is given).

        Raises ``InvalidFeedbackError``, ``UnknownUserError``, ``UnknownItemError``,
        ``UnknownRecommendationError``, or ``ConfigError`` without a store.
        """
        store = self._require_store("feedback")
        fields = {"value": value, "comment": comment, "recommendation_id": recommendation_id}
        event = make_event(user_id=user_id, item_id=item_id, signal=signal, timestamp=timestamp, **fields)
        event = check_references(event, users=self.histories, items=self.catalog, recommendations=store)
        return store.add_feedback(event)

    def refine(self, user_id: str, *, force: bool = False) -> RefineResult:
        """Refine the stored profile from new feedback; no model call without enough new evidence.

        Builds (and saves) a first profile if the user has none yet. See ``Refiner.refine``.
        """
        store = self._require_store("refine")
        self.histories.require(user_id)
        refiner = Refiner(
            store,
            self._require_client("refine"),
            self.renderer,
            self._item_info,
            self.refine_config,
            self.config.domain,
            self.config.scrub_personal_data,
        )
        return refiner.refine(user_id, force=force, first_profile=lambda: self.profile(user_id))

    def _require_store(self, what: str) -> Store:
        if self.store is None:
            raise errors.ConfigError(
                f"{what} needs a profile store: RecommenderAgent(..., store=open_store())"
            )
        return self.store

    def _blocked(self, user_id: str) -> set[str]:
        return set(self.store.blocked_items(user_id)) if self.store is not None else set()

    def _stored_profile(
        self, user_id: str, profile: BehaviorProfile | None
    ) -> tuple[BehaviorProfile | None, int | None]:
        latest = self.store.latest_profile(user_id) if self.store is not None else None
        if latest is None:
            return profile, None
        if profile is None:
            return latest.state.profile, latest.version
        return profile, latest.version if profile == latest.state.profile else None

    def _item_info(self, item_id: str) -> tuple[str | None, str | None, float | None]:
        info = self.catalog.get(item_id)
        return (info.title, info.category, info.price) if info else (None, None, None)

    # -- helpers -----------------------------------------------------------------------
    def _require_user(self, user_id: str) -> None:
        """``UnknownUserError`` for a user with no events, unless cold start serves them."""
        if not self.config.cold_start:
            self.histories.require(user_id)

    def _require_client(self, what: str) -> ChatClient:
        if self.client is None:
            raise errors.ConfigError(f"{what} needs a model; the fallback backend has none")
        return self.client

    def _infos(self, candidates: list[Candidate]) -> list[CandidateInfo]:
        return [
            CandidateInfo(
                item_id=c.item_id, title=self.catalog.title(c.item_id), score=c.score, sources=c.sources
            )
            for c in candidates
        ]

    def _fallback(
        self,
        rec_id: str,
        user_id: str,
        candidates: list[Candidate],
        k: int,
        why: str,
        *,
        source: Source = "fallback",
        model_error: str | None = None,
    ) -> RecommendationResult:
        out: list[Recommendation] = []
        backfill(out, self._infos(candidates), k, source)
        return RecommendationResult(
            recommendation_id=rec_id,
            user_id=user_id,
            items=out,
            candidates_considered=len(candidates),
            grounding={},
            fallback_reason=why,
            model=None,
            template_version=None,
            mode=None,
            usage=errors.Usage().as_dict(),
            orders=0,
            model_error=model_error,
        )

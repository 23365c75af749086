"""``RecommenderAgent``: behavior profile and grounded, explained recommendations for one user.

The flow of ``recommend`` (two stages, as the strongest published systems do):

1. the retriever proposes ``n_candidates`` items the user has not consumed;
2. candidates are shuffled (seeded) against position bias, rendered with the user's history
   (trimmed to the prompt budget) and ranked by the model under a schema whose ``item_id``
   is an enum of those candidates;
3. the reply is grounded: ids outside the candidates, duplicates and history items are
   dropped and counted; missing slots are back-filled from the retriever's order. Every
   returned item says where it came from (``source``: ``llm``, ``retriever`` or ``fallback``).

With no client (``--backend fallback``) or when the model fails for good (transport, quota,
budget), the retriever's ranking is returned with ``source="fallback"`` and the reason.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel

from agent import errors
from agent.behaviors import KNOWN_BEHAVIORS
from agent.candidates import Candidate, Retriever
from agent.data import UserHistories
from agent.grounding import ground
from agent.history import Catalog, consumed_items, fit_history, history_lines
from agent.llm import ChatClient
from agent.position_bias import shuffle_candidates
from agent.privacy import Scrubber
from agent.prompts import (
    Domain,
    HistoryLine,
    ProfileInputs,
    PromptRenderer,
    RecommendInputs,
    RenderedPrompt,
    default_renderer,
)
from agent.schemas import BehaviorProfile, profile_model, recommendations_model
from agent.tokens import count_messages

log = logging.getLogger(__name__)

Source = Literal["llm", "retriever", "fallback"]


@dataclass
class AgentConfig:
    """Knobs of the agent; the defaults suit a GPT-4-class model and ~20-50 candidates."""

    n_candidates: int = 30
    prompt_budget_tokens: int = 6000
    """Upper bound on prompt tokens (system + user, framing included); history is trimmed to fit."""
    max_history_events: int = 300
    exclude_consumed: bool = True
    seed: int = 7
    domain: Domain = field(default_factory=Domain)
    scrub_personal_data: bool = True
    template_dir: str | None = None


class Recommendation(BaseModel):
    rank: int
    item_id: str
    title: str
    score: float
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


class ProfileResult(BaseModel):
    user_id: str
    profile: BehaviorProfile
    events_total: int
    events_shown: int
    model: str
    template_version: str
    usage: dict[str, Any]


class RecommenderAgent:
    """Profiles and recommendations over one loaded log and catalog (canonical frames)."""

    def __init__(
        self,
        events: pd.DataFrame,
        items: pd.DataFrame,
        client: ChatClient | None,
        config: AgentConfig | None = None,
        *,
        retriever: Retriever | None = None,
    ) -> None:
        self.config = config or AgentConfig()
        self.client = client
        self.catalog = Catalog(items)
        self.histories = UserHistories(events)
        self.retriever = retriever or Retriever.fit(events, items)
        self.renderer: PromptRenderer = default_renderer(self.config.template_dir)
        self.behaviors = sorted(set(KNOWN_BEHAVIORS) | set(events["behavior"].unique().tolist()))

    # -- prompts -----------------------------------------------------------------------
    def _fit_prompt(
        self, user_events: pd.DataFrame, build: Any, scrubber: Scrubber
    ) -> tuple[RenderedPrompt, list[HistoryLine]]:
        """Render with as much history as the token budget allows (never more)."""
        lines = history_lines(user_events, self.catalog, scrubber)
        model = self.client.config.model if self.client else "gpt-4.1-mini"

        def measure(kept: list[HistoryLine]) -> int:
            return count_messages(self.renderer.render(*build(kept)).messages, model)

        kept = fit_history(
            user_events, lines, measure, self.config.prompt_budget_tokens, self.config.max_history_events
        )
        return self.renderer.render(*build(kept)), kept

    def _scrubber(self) -> Scrubber:
        return Scrubber(enabled=self.config.scrub_personal_data)

    # -- public API --------------------------------------------------------------------
    def profile(self, user_id: str) -> ProfileResult:
        """Build the user's behavior profile. Raises ``UnknownUserError`` or a ``ModelError``."""
        client = self._require_client("profile")
        user_events = self.histories.for_user(user_id)

        def build(kept: list[HistoryLine]) -> tuple[str, ProfileInputs]:
            return "profile", ProfileInputs(
                domain=self.config.domain,
                behaviors=self.behaviors,
                history=kept,
                total_events=len(user_events),
            )

        prompt, kept = self._fit_prompt(user_events, build, self._scrubber())
        evidence_ids = list(dict.fromkeys(line.item_id for line in kept if line.item_id))
        reply = client.complete(prompt, profile_model(evidence_ids))
        return ProfileResult(
            user_id=user_id,
            profile=BehaviorProfile.model_validate(reply.value.model_dump()),
            events_total=len(user_events),
            events_shown=len(kept),
            model=reply.model,
            template_version=reply.template_version,
            usage=reply.usage.as_dict(),
        )

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        query: str | None = None,
        profile: BehaviorProfile | None = None,
        exclude: tuple[str, ...] = (),
    ) -> RecommendationResult:
        """Top-``k`` grounded recommendations; never raises for model failures (falls back).

        Raises ``UnknownUserError`` for a user with no events and ``ValueError`` for k < 1.
        """
        if k < 1:
            raise ValueError("k must be at least 1")
        self.histories.for_user(user_id)  # UnknownUserError before any work
        candidates = self.retriever.candidates(
            user_id,
            n=max(self.config.n_candidates, k),
            query=query,
            exclude_consumed=self.config.exclude_consumed,
            exclude=exclude,
        )
        return self.rank_candidates(user_id, candidates, k=k, query=query, profile=profile)

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
        """
        if k < 1:
            raise ValueError("k must be at least 1")
        user_events = self.histories.for_user(user_id)
        history = consumed_items(user_events)
        rec_id = uuid.uuid4().hex
        if self.client is None:
            return self._fallback(rec_id, user_id, candidates, k, "no model configured (--backend fallback)")
        scrubber = self._scrubber()
        shown = shuffle_candidates([c.item_id for c in candidates], seed=f"{self.config.seed}:{user_id}")
        candidate_lines = [self.catalog.candidate_line(item_id, scrubber) for item_id in shown]
        profile_json = profile.model_dump(mode="json") if profile else None

        def build(kept: list[HistoryLine]) -> tuple[str, RecommendInputs]:
            return "recommend", RecommendInputs(
                domain=self.config.domain,
                profile=profile_json,
                history=kept,
                total_events=len(user_events),
                candidates=candidate_lines,
                k=min(k, len(candidate_lines)),
                query=scrubber.scrub(query),
            )

        prompt, kept = self._fit_prompt(user_events, build, scrubber)
        history_ids = list(dict.fromkeys(line.item_id for line in kept if line.item_id))
        try:
            reply = self.client.complete(prompt, recommendations_model(shown, history_ids))
        except (errors.TransportError, errors.QuotaExceededError, errors.BudgetExceededError) as exc:
            log.warning("model unavailable for a recommendation, using the retriever: %s", exc)
            result = self._fallback(rec_id, user_id, candidates, k, f"{type(exc).__name__}: {exc}")
            result.usage = exc.usage.as_dict()
            return result

        grounded = ground(
            reply.value, {c.item_id: self.catalog.title(c.item_id) for c in candidates}, history
        )
        by_id = {item.item_id: item for item in reply.value.items}
        out: list[Recommendation] = []
        for item_id in grounded.item_ids[:k]:
            item = by_id.get(item_id)
            out.append(
                Recommendation(
                    rank=len(out) + 1,
                    item_id=item_id,
                    title=self.catalog.title(item_id),
                    score=float(item.score) if item else 0.0,
                    reason=item.reason if item else grounded.reasons.get(item_id, ""),
                    evidence=[str(e) for e in item.evidence] if item else [],
                    source="llm",
                )
            )
        from_model = len(out)
        self._backfill(out, candidates, k, "retriever")
        return RecommendationResult(
            recommendation_id=rec_id,
            user_id=user_id,
            items=out,
            candidates_considered=len(candidates),
            grounding={
                "invented_rate": grounded.rates["invented_rate"],
                "duplicate_rate": grounded.rates["duplicate_rate"],
                "history_rate": grounded.rates["history_rate"],
                "backfilled": float(len(out) - from_model),
            },
            fallback_reason=None,
            model=reply.model,
            template_version=reply.template_version,
            mode=reply.mode,
            usage=reply.usage.as_dict(),
        )

    # -- helpers -----------------------------------------------------------------------
    def _require_client(self, what: str) -> ChatClient:
        if self.client is None:
            raise errors.ConfigError(f"{what} needs a model; the fallback backend has none")
        return self.client

    def _retriever_reason(self, candidate: Candidate) -> str:
        labels = {
            "cooccurrence": "often chosen together with items in your history",
            "popularity": "popular right now",
            "content": "similar to items you engaged with",
            "search": "matches what you searched for",
        }
        if not candidate.sources:
            return "ranked by the retriever"
        top = max(candidate.sources.items(), key=lambda kv: kv[1])[0]
        return labels.get(top, f"retriever signal: {top}")

    def _backfill(
        self, out: list[Recommendation], candidates: list[Candidate], k: int, source: Source
    ) -> None:
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
                    title=self.catalog.title(candidate.item_id),
                    score=round(float(candidate.score), 4),
                    reason=self._retriever_reason(candidate),
                    evidence=[],
                    source=source,
                )
            )

    def _fallback(
        self, rec_id: str, user_id: str, candidates: list[Candidate], k: int, why: str
    ) -> RecommendationResult:
        out: list[Recommendation] = []
        self._backfill(out, candidates, k, "fallback")
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
        )

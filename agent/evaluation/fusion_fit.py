"""Fit the fusion weights (``agent.ranking.fusion``) on held-out validation interactions.

For a seeded sample of users, each user's last item interaction is held out (temporal
leave-one-out, ``agent.evaluation.protocol.leave_one_out``); the retriever is fit and the model asked on
the events *before* it, exactly as ``recommend`` would have run at that moment. Each answered
list becomes one ``RankedList`` (the candidates with their retriever scores and the model's
grounded order) whose label is the held-out item, and ``agent.ranking.fusion.fit`` learns the blend.

Promises:

* The held-out item never reaches a prompt: it is removed from the events the agent is built
  on before any request is prepared (the same split code the evaluation uses).
* Users whose held-out item is not among their candidates carry no signal for the blend and
  are skipped *before* any model call (counted as ``target_not_in_candidates``).
* A user whose request fails for that user alone (transport after retries, invalid reply,
  refusal, truncation) is counted and skipped; failures that would hit every user (quota,
  auth, budget, cassette miss) raise.
* With fewer than ``min_lists`` usable lists the prior is returned (``source="prior"``): a
  handful of lists would make the fit noise. The report says so.
* The fitted blend is never worse than the retriever alone on the lists it was fit on
  (``agent.ranking.fusion.fit``); the report gives the mean reciprocal rank of the held-out items
  under the fitted, prior and retriever-only blends on those lists, so the gain is visible.
  These are in-sample numbers; measure out-of-sample with ``recagent evaluate``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from agent import errors
from agent.llm.client import ChatClient
from agent.ranking.fusion import FusionWeights, RankedList, fit, mean_reciprocal_rank

log = logging.getLogger(__name__)

PER_USER_FAILURES = (
    errors.TransportError,
    errors.InvalidReplyError,
    errors.RefusalError,
    errors.TruncatedReplyError,
)
"""Failures that concern one user's request; anything else ends the fit."""


@dataclass
class FusionFitReport:
    """What fitting did: the weights, how many users it asked and used, and in-sample MRR."""

    weights: FusionWeights
    users_sampled: int
    """Users asked about: the requested ``max_users``, or fewer when fewer are eligible."""
    lists_used: int
    target_not_in_candidates: int
    model_failed: int
    mrr: dict[str, float] = field(default_factory=dict)
    """Mean reciprocal rank of the held-out items on the fit lists: fitted / prior / retriever-only."""
    usage: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    users_requested: int | None = None
    """``max_users`` as asked (None: every eligible user)."""
    users_eligible: int = 0
    """Users with a usable held-out interaction, the pool the sample is drawn from."""
    users_not_eligible: dict[str, int] = field(default_factory=dict)
    """Users left out of the pool, by reason (e.g. a held-out item they had already consumed)."""

    def why_fewer(self) -> str:
        """One line on why fewer users were sampled than requested ("" when none were missing)."""
        if self.users_requested is None or self.users_sampled >= self.users_requested:
            return ""
        reasons = ", ".join(
            f"{n} {why}" for why, n in sorted(self.users_not_eligible.items(), key=lambda kv: -kv[1])
        )
        return (
            f"sampled {self.users_sampled} of the {self.users_requested} users requested: only "
            f"{self.users_eligible} users have a usable held-out last interaction"
            + (f" (not eligible: {reasons})" if reasons else "")
        )

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["weights"] = dataclasses.asdict(self.weights)
        return out


def fit_fusion(
    events: pd.DataFrame,
    items: pd.DataFrame,
    client: ChatClient,
    *,
    config: Any = None,
    max_users: int | None = 200,
    seed: int = 0,
    min_lists: int = 20,
    progress: Callable[[int], None] | None = None,
) -> FusionFitReport:
    """Fit fusion weights with ``client`` on each sampled user's held-out last interaction.

    ``events``/``items`` are canonical frames (``agent.data.loading``); ``config`` is the
    ``AgentConfig`` whose retrieval and prompt settings the served agent uses (its ``fusion``
    and ``bootstrap_orders`` are ignored here: the raw model order is what gets fit).
    One model call per usable user. ``progress(1)`` is called after each sampled user.
    """
    from agent.evaluation.protocol import leave_one_out, sample_users  # local: evaluate imports the agent
    from agent.recommender import AgentConfig, RecommenderAgent

    split = leave_one_out(events, items, part="test")
    users = sample_users(split.targets, max_users, seed)
    base = config or AgentConfig()
    agent = RecommenderAgent(
        split.train, items, client, dataclasses.replace(base, fusion=None, bootstrap_orders=1)
    )
    lists: list[RankedList] = []
    chosen: list[str] = []
    missing = failed = 0
    usage = errors.Usage()
    for user in users:
        target = split.targets[user]
        candidates = agent.retriever.candidates(
            user, n=base.n_candidates, exclude_consumed=base.exclude_consumed
        )
        ids = [c.item_id for c in candidates]
        if target not in ids:
            missing += 1
        else:
            try:
                result = agent.rank_candidates(user, candidates, k=len(candidates))
            except PER_USER_FAILURES as exc:
                usage.add(exc.usage)
                log.warning("fusion fit: one user's request failed, skipping it: %s", exc)
                failed += 1
            else:
                usage.add(errors.Usage.from_dict(result.usage))
                if result.fallback_reason:  # the model was unavailable for this user
                    failed += 1
                else:
                    llm_order = [r.item_id for r in result.items if r.source == "llm"]
                    lists.append(RankedList(ids, [c.score for c in candidates], llm_order))
                    chosen.append(target)
        if progress:
            progress(1)
    report = _report(lists, chosen, len(users), missing, failed, usage, min_lists)
    report.users_requested = max_users
    report.users_eligible = len(split.targets)
    report.users_not_eligible = dict(split.skipped)
    return report


def _report(
    lists: Sequence[RankedList],
    chosen: Sequence[str],
    sampled: int,
    missing: int,
    failed: int,
    usage: errors.Usage,
    min_lists: int,
) -> FusionFitReport:
    if len(lists) < min_lists:
        weights = FusionWeights.prior()
        note = f"only {len(lists)} usable lists (< {min_lists}): kept the prior"
    else:
        weights = fit(lists, chosen)
        note = (
            "the blend was not better than the retriever alone on these lists: retriever-only"
            if weights.source == "retriever-only"
            else f"fitted on {len(lists)} lists"
        )
    mrr = (
        {
            "fitted": mean_reciprocal_rank(lists, chosen, weights),
            "prior": mean_reciprocal_rank(lists, chosen, FusionWeights.prior()),
            "retriever-only": mean_reciprocal_rank(lists, chosen, FusionWeights.retriever_only()),
        }
        if lists
        else {}
    )
    return FusionFitReport(
        weights=weights,
        users_sampled=sampled,
        lists_used=len(lists),
        target_not_in_candidates=missing,
        model_failed=failed,
        mrr=mrr,
        usage=usage.as_dict(),
        note=note,
    )

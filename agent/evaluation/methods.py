"""The methods an evaluation compares: random, popularity, the retriever and the LLM agent.

Every method is built from ``TrainingData`` (no targets) and ranks ``EvalCase`` objects (user
id + candidates, no target), so nothing a method does can depend on the label; see
``agent.evaluation.protocol`` for the splits, candidate sets and scoring around them. More methods plug in
through ``EXTRA_METHODS``; they must fit anything they fit on a split *inside*
``TrainingData.events`` (e.g. ``leave_one_out(training.events, ...)``), never on the targets.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from agent import errors
from agent.errors import Usage
from agent.evaluation.protocol import EvalCase, TrainingData, stable_seed
from agent.llm.client import ChatClient
from agent.prompting.templates import Domain, RenderedPrompt
from agent.ranking.fusion import PRIOR_WEIGHTS, FusionWeights
from agent.recommender import AgentConfig, RecommenderAgent, interpret_profile, interpret_rankings
from agent.retrieval.candidates import Candidate

log = logging.getLogger(__name__)


class Method(Protocol):
    name: str

    def rank_all(
        self, cases: Sequence[EvalCase], progress: Callable[[int], None] | None = None
    ) -> list[list[str]]:
        """One ranked list per case, best first (for full ranking: the top ``depth``)."""
        ...


class _PerCase:
    name = ""

    def rank(self, case: EvalCase) -> list[str]:
        raise NotImplementedError

    def rank_all(
        self, cases: Sequence[EvalCase], progress: Callable[[int], None] | None = None
    ) -> list[list[str]]:
        out = []
        for case in cases:
            out.append(self.rank(case))
            if progress:
                progress(1)
        return out


class RandomMethod(_PerCase):
    """A seeded random order of the candidates (of the eligible catalog for full ranking)."""

    name = "random"

    def __init__(self, training: TrainingData, *, seed: int, depth: int) -> None:
        self.training, self.seed, self.depth = training, seed, depth

    def rank(self, case: EvalCase) -> list[str]:
        rng = np.random.default_rng(stable_seed(self.seed, "random", case.user_id))
        if case.candidates is not None:
            return [case.candidates[i] for i in rng.permutation(len(case.candidates))]
        pool = self.training.eligible(case.user_id)
        picked = rng.choice(pool, size=min(self.depth, len(pool)), replace=False)
        return [str(self.training.item_ids[j]) for j in picked]


class PopularityMethod(_PerCase):
    """Most training users first (ties: catalog order); the user's own items never returned."""

    name = "popularity"

    def __init__(self, training: TrainingData, *, depth: int) -> None:
        self.training, self.depth = training, depth

    def rank(self, case: EvalCase) -> list[str]:
        t = self.training
        if case.candidates is not None:
            pos = t.positions(case.candidates)
            return [str(t.item_ids[j]) for j in pos[np.lexsort((pos, -t.popularity[pos]))]]
        seen = set(t.consumed(case.user_id).tolist())
        head = t.popularity_order[: self.depth + len(seen)]
        return [str(t.item_ids[j]) for j in head if j not in seen][: self.depth]


class RetrieverMethod(_PerCase):
    """The candidate retriever's blended score (the agent's fallback); ties by popularity."""

    name = "retriever"

    def __init__(self, training: TrainingData, *, depth: int) -> None:
        self.training, self.depth = training, depth

    def scored(self, case: EvalCase) -> list[Candidate]:
        t = self.training
        blended, _ = t.retriever.scores(case.user_id)
        if case.candidates is not None:
            pos = t.positions(case.candidates)
        else:
            pos = np.flatnonzero(np.isfinite(blended))
            if len(pos) > self.depth:
                kth = np.partition(blended[pos], len(pos) - self.depth)[len(pos) - self.depth]
                pos = pos[blended[pos] >= kth]
        order = pos[np.lexsort((t.popularity_rank[pos], -blended[pos]))]
        if case.candidates is None:
            order = order[: self.depth]
        # a consumed candidate (only possible with a foreign candidate file) scores -inf: last
        values = np.where(np.isfinite(blended[order]), blended[order], -1.0).tolist()
        ids = t.item_ids[order].tolist()
        return [Candidate(str(i), v, {}) for i, v in zip(ids, values, strict=True)]

    def rank(self, case: EvalCase) -> list[str]:
        return [c.item_id for c in self.scored(case)]


# Failures that concern one user's request: that user falls back to the retriever's order and
# is counted. Quota, auth, bad requests, budget and cassette misses end the run instead: every
# later user would fail the same way and the numbers would silently become the retriever's.
_PER_USER_FAILURES = (
    errors.TransportError,
    errors.InvalidReplyError,
    errors.RefusalError,
    errors.TruncatedReplyError,
)


class AgentMethod:
    """The LLM agent reranking each candidate set (full ranking: the retriever's top
    ``rerank``, the rest in retriever order). Built on the training events only, so its prompts
    hold nothing after a user's split point. Items it leaves out follow in retriever order.

    The agent's final order is its serving order: the model's ranking (over ``bootstrap``
    shuffled orders, Borda-merged) blended with the retriever's score by ``fusion`` (the
    documented prior by default; None keeps the model's order).
    """

    name = "agent"

    def __init__(
        self,
        training: TrainingData,
        client: ChatClient,
        *,
        domain: Domain | None = None,
        seed: int = 7,
        depth: int = 100,
        rerank: int = 20,
        with_profile: bool = False,
        concurrency: int = 1,
        keep_prompts: bool = False,
        fusion: FusionWeights | None = PRIOR_WEIGHTS,
        bootstrap: int = 1,
    ) -> None:
        config = AgentConfig(domain=domain or Domain(), seed=seed, fusion=fusion, bootstrap_orders=bootstrap)
        self.agent = RecommenderAgent(
            training.events, training.items, client, config, retriever=training.retriever
        )
        self.client = client
        self.base = RetrieverMethod(training, depth=depth)
        self.rerank, self.with_profile, self.concurrency = rerank, with_profile, max(1, concurrency)
        self.keep_prompts = keep_prompts
        self.details: dict[str, dict[str, Any]] = {}
        self.prompts: dict[str, list[RenderedPrompt]] = {}
        self.usage = Usage()
        self._lock = threading.Lock()

    def _split_case(self, case: EvalCase) -> tuple[list[Candidate], list[str]]:
        ordered = self.base.scored(case)
        head = ordered if case.candidates is not None else ordered[: self.rerank]
        return head, [c.item_id for c in ordered]

    def prepare(self, case: EvalCase) -> list[RenderedPrompt]:
        """The prompts this case sends (the ranking one without a profile); no network."""
        head, _ = self._split_case(case)
        prompts = [self.agent.prepare_profile(case.user_id).prompt] if self.with_profile else []
        return [*prompts, *(p.prompt for p in self.agent.prepare_rankings(case.user_id, head, k=len(head)))]

    def rank(self, case: EvalCase) -> list[str]:
        head, ordered = self._split_case(case)
        usage, sent, detail = Usage(), [], {}
        ranked: list[str] = []
        try:
            profile = None
            if self.with_profile:
                prep = self.agent.prepare_profile(case.user_id)
                sent.append(prep.prompt)
                reply = self.client.complete(prep.prompt, prep.context.output_model())
                usage.add(reply.usage)
                profile = interpret_profile(prep.context, reply).profile
            preps = self.agent.prepare_rankings(case.user_id, head, k=len(head), profile=profile)
            replies = []
            for prep in preps:
                sent.append(prep.prompt)
                reply = self.client.complete(prep.prompt, prep.context.output_model())
                usage.add(reply.usage)
                replies.append(reply)
            result = interpret_rankings([p.context for p in preps], replies)
            ranked = [r.item_id for r in result.items]
            detail = {"sources": [r.source for r in result.items], "grounding": result.grounding}
        except _PER_USER_FAILURES as exc:
            usage.add(exc.usage)
            log.warning("agent failed for one user, using the retriever's order: %s", exc)
            detail = {"fallback_reason": f"{type(exc).__name__}: {exc}"}
        taken = set(ranked)
        ranked += [i for i in ordered if i not in taken]
        with self._lock:
            self.usage.add(usage)
            self.details[case.user_id] = {**detail, "usage": usage.as_dict()}
            if self.keep_prompts:
                self.prompts[case.user_id] = sent
        return ranked

    def rank_all(
        self, cases: Sequence[EvalCase], progress: Callable[[int], None] | None = None
    ) -> list[list[str]]:
        def one(case: EvalCase) -> list[str]:
            ranked = self.rank(case)
            if progress:
                progress(1)
            return ranked

        if self.concurrency == 1:
            return [one(case) for case in cases]
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="recagent-eval") as pool:
            return list(pool.map(one, cases))


MethodFactory = Callable[[TrainingData], Method]
EXTRA_METHODS: dict[str, MethodFactory] = {}
"""Hook for more methods (e.g. fusion, issue 3): name -> factory(training). They are run
after the built-in ones on the same cases; see the module docstring for what they may fit on."""

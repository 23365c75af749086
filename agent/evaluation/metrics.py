"""Offline ranking metrics for top-k recommendation, binary relevance.

Ranking metrics share one signature ``f(ranked, relevant, k)``: ``ranked`` is the
recommended item ids, best first (no duplicates); ``relevant`` is the held-out item ids
(non-empty; duplicates collapse). Ranks are 1-based. Every ranking metric lies in [0, 1].
Bad arguments raise :class:`agent.errors.MetricInputError` (also a ``ValueError``).

Agreement with trec_eval (via ``ir_measures``) is tested: P@k, R@k, nDCG@k, RR, RR@k and
Success@k match exactly. ``average_precision_at_k`` normalises by ``min(|relevant|, k)``
whereas trec_eval's ``map_cut_k`` (``AP@k``) divides by ``|relevant|``; the two agree
whenever ``|relevant| <= k``.

Plain Python on purpose: lists are short and these run per user, so numpy would only
add overhead.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from functools import lru_cache
from statistics import NormalDist, fmean, stdev

from agent.errors import MetricInputError

__all__ = [
    "average_precision_at_k",
    "catalog_coverage",
    "evaluate_ranking",
    "hit_rate_at_k",
    "intra_list_diversity",
    "mean_ci",
    "mrr",
    "ndcg_at_k",
    "novelty",
    "precision_at_k",
    "recall_at_k",
]


def _check_k(k: object, name: str = "k") -> int:
    """``k`` as an int; accepts numpy integers, rejects bools, floats and values < 1."""
    if isinstance(k, bool) or not hasattr(k, "__index__"):
        raise MetricInputError(f"{name} must be an integer >= 1, got {k!r}")
    kk = operator.index(k)
    if kk < 1:
        raise MetricInputError(f"{name} must be an integer >= 1, got {kk}")
    return kk


def _check_ranked(ranked: Sequence[str]) -> None:
    if isinstance(ranked, str):
        raise MetricInputError("ranked must be a sequence of item ids, not a single string")
    if len(set(ranked)) != len(ranked):
        dups = sorted(i for i, n in Counter(ranked).items() if n > 1)
        raise MetricInputError(f"ranked contains duplicate item ids: {dups[:5]}")


def _check(ranked: Sequence[str], relevant: Collection[str]) -> frozenset[str] | set[str]:
    """Validate a (ranked, relevant) pair; return ``relevant`` as a set."""
    _check_ranked(ranked)
    if isinstance(relevant, str):
        raise MetricInputError("relevant must be a collection of item ids, not a single string")
    rel = relevant if isinstance(relevant, (set, frozenset)) else set(relevant)
    if not rel:
        raise MetricInputError("relevant is empty: ranking metrics are undefined without relevant items")
    return rel


def _hit_ranks(ranked: Sequence[str], rel: Collection[str], k: int | None) -> list[int]:
    """1-based ranks of the relevant items within the first ``k`` (all if None)."""
    top = ranked if k is None else ranked[:k]
    return [r for r, item in enumerate(top, 1) if item in rel]


@lru_cache(maxsize=1024)
def _idcg(m: int) -> float:
    """Ideal DCG of ``m`` relevant items at ranks 1..m."""
    return sum(1.0 / math.log2(r + 1) for r in range(1, m + 1))


def _ndcg(hits: list[int], n_rel: int, k: int) -> float:
    return sum(1.0 / math.log2(r + 1) for r in hits) / _idcg(min(n_rel, k))


def _ap(hits: list[int], n_rel: int, k: int) -> float:
    return sum(j / r for j, r in enumerate(hits, 1)) / min(n_rel, k)


def precision_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Hits in the top ``k`` divided by ``k`` (even if fewer than ``k`` items are ranked). Range [0, 1].

    Same as trec_eval ``P_k`` / ir_measures ``P@k``.
    """
    k = _check_k(k)
    return len(_hit_ranks(ranked, _check(ranked, relevant), k)) / k


def recall_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Hits in the top ``k`` divided by ``|relevant|``. Range [0, 1].

    Same as trec_eval ``recall_k`` / ir_measures ``R@k``.
    """
    k = _check_k(k)
    rel = _check(ranked, relevant)
    return len(_hit_ranks(ranked, rel, k)) / len(rel)


def ndcg_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Normalised DCG at ``k``. Range [0, 1].

    DCG = sum over hits at rank r <= k of 1 / log2(r + 1); it is divided by the ideal DCG,
    i.e. all ``min(|relevant|, k)`` relevant items at ranks 1, 2, ... Same as trec_eval
    ``ndcg_cut_k`` / ir_measures ``nDCG@k`` with binary (0/1) judgments.
    """
    k = _check_k(k)
    rel = _check(ranked, relevant)
    return _ndcg(_hit_ranks(ranked, rel, k), len(rel), k)


def hit_rate_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """1.0 if any relevant item is in the top ``k``, else 0.0 (ir_measures ``Success@k``)."""
    k = _check_k(k)
    rel = _check(ranked, relevant)
    return 1.0 if any(item in rel for item in ranked[:k]) else 0.0


def mrr(ranked: Sequence[str], relevant: Collection[str], k: int | None = None) -> float:
    """Reciprocal rank: 1 / rank of the first relevant item, 0.0 if none. Range [0, 1].

    With ``k`` only the top ``k`` count (ir_measures ``RR@k``); without, the whole list
    (trec_eval ``recip_rank`` / ir_measures ``RR``). Averaging over users gives MRR.
    """
    kk = None if k is None else _check_k(k)
    rel = _check(ranked, relevant)
    for r, item in enumerate(ranked if kk is None else ranked[:kk], 1):
        if item in rel:
            return 1.0 / r
    return 0.0


def average_precision_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Average precision at ``k``. Range [0, 1].

    Sum of precision@r at each rank r <= k holding a relevant item, divided by
    ``min(|relevant|, k)`` so that a perfect top-k scores 1.0 even when there are more
    than ``k`` relevant items. Note: trec_eval ``map_cut_k`` (ir_measures ``AP@k``)
    divides by ``|relevant|`` instead; the two agree when ``|relevant| <= k``, otherwise
    this value is ``AP@k * |relevant| / k``.
    """
    k = _check_k(k)
    rel = _check(ranked, relevant)
    return _ap(_hit_ranks(ranked, rel, k), len(rel), k)


def evaluate_ranking(
    ranked: Sequence[str], relevant: Collection[str], ks: Iterable[int] = (1, 5, 10, 20)
) -> dict[str, float]:
    """All ranking metrics in one pass: keys ``ndcg@K``, ``hit@K``, ``recall@K``,
    ``precision@K``, ``map@K`` for each K in ``ks``, plus ``mrr`` (uncut)."""
    kl = [_check_k(k) for k in ks]
    rel = _check(ranked, relevant)
    n_rel = len(rel)
    all_hits = _hit_ranks(ranked, rel, max(kl, default=None))
    out: dict[str, float] = {}
    for k in kl:
        hits = [r for r in all_hits if r <= k]
        out[f"ndcg@{k}"] = _ndcg(hits, n_rel, k)
        out[f"hit@{k}"] = 1.0 if hits else 0.0
        out[f"recall@{k}"] = len(hits) / n_rel
        out[f"precision@{k}"] = len(hits) / k
        out[f"map@{k}"] = _ap(hits, n_rel, k)
    first = all_hits[0] if all_hits else next((r for r, i in enumerate(ranked, 1) if i in rel), 0)
    out["mrr"] = 1.0 / first if first else 0.0
    return out


def catalog_coverage(lists: Iterable[Sequence[str]], catalog_size: int) -> float:
    """Distinct items recommended across all ``lists`` divided by ``catalog_size``. Range [0, 1].

    Raises :class:`MetricInputError` if ``catalog_size < 1`` or if more distinct items
    were recommended than the catalog holds (the ids are not from that catalog).
    """
    catalog_size = _check_k(catalog_size, "catalog_size")
    seen: set[str] = set()
    for ranked in lists:
        if isinstance(ranked, str):
            raise MetricInputError("lists must hold sequences of item ids, not strings")
        seen.update(ranked)
    if len(seen) > catalog_size:
        raise MetricInputError(f"{len(seen)} distinct items recommended but catalog_size is {catalog_size}")
    return len(seen) / catalog_size


def intra_list_diversity(ranked: Sequence[str], category_of: Mapping[str, str | None]) -> float:
    """Share of item pairs in ``ranked`` whose categories differ. Range [0, 1].

    An item whose category is unknown (missing from ``category_of``, None or NaN) is its
    own category, so it differs from every other item. Lists of fewer than 2 items → 0.0.
    """
    _check_ranked(ranked)
    n = len(ranked)
    if n < 2:
        return 0.0
    counts: Counter[str] = Counter()
    for item in ranked:
        cat = category_of.get(item)
        if cat is not None and cat == cat:  # NaN != NaN: treat pandas NaN as unknown
            counts[cat] += 1
    same = sum(c * (c - 1) // 2 for c in counts.values())
    pairs = n * (n - 1) // 2
    return (pairs - same) / pairs


def novelty(ranked: Sequence[str], popularity: Mapping[str, float], n_users: int) -> float:
    """Mean self-information ``-log2 p(i)`` of the items in ``ranked``. Range [0, log2(n_users)].

    ``p(i) = popularity[i] / n_users`` (``popularity`` = number of users who interacted
    with ``i``), clipped to ``[1/n_users, 1]``; unknown items (and counts below 1) get
    ``p = 1/n_users``. An empty list → 0.0.
    """
    _check_ranked(ranked)
    n_users = _check_k(n_users, "n_users")
    if not ranked:
        return 0.0
    total = 0.0
    for item in ranked:
        p = popularity.get(item, 1.0) / n_users
        p = min(max(p, 1.0 / n_users), 1.0)
        total -= math.log2(p)
    return total / len(ranked)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """``(mean, half-width)`` of the normal-approximation confidence interval.

    Half-width = z * s / sqrt(n) with s the sample standard deviation (n - 1) and z the
    two-sided normal quantile for ``confidence``; 0.0 when n < 2.
    """
    if not 0.0 < confidence < 1.0:
        raise MetricInputError(f"confidence must be in (0, 1), got {confidence!r}")
    n = len(values)
    if n == 0:
        raise MetricInputError("mean_ci needs at least one value")
    mean = fmean(values)
    if n < 2:
        return mean, 0.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    return mean, z * stdev(values, mean) / math.sqrt(n)

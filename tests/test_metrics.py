"""Tests for agent.evaluation.metrics: hand-computed cases, input checks, and agreement with
trec_eval through ir_measures (test-only dependency) on seeded random rankings."""

from __future__ import annotations

import math
import random

import pytest

from agent.errors import MetricInputError, RecommenderError
from agent.evaluation.metrics import (
    average_precision_at_k,
    catalog_coverage,
    evaluate_ranking,
    hit_rate_at_k,
    intra_list_diversity,
    mean_ci,
    mrr,
    ndcg_at_k,
    novelty,
    precision_at_k,
    recall_at_k,
)

RANKED = ["a", "b", "c", "d", "e"]
# Relevant: b (rank 2), d (rank 4), z (never ranked) -> |relevant| = 3.
RELEVANT = {"b", "d", "z"}
L2 = 1 / math.log2(3)  # discount at rank 2
L3 = 1 / math.log2(4)  # discount at rank 3 (= 0.5)
L4 = 1 / math.log2(5)  # discount at rank 4

RANK_METRICS = [precision_at_k, recall_at_k, ndcg_at_k, hit_rate_at_k, average_precision_at_k]


# --- perfect / no-hit / hand-computed ------------------------------------------------


@pytest.mark.parametrize("fn", RANK_METRICS)
def test_perfect_ranking_scores_one(fn):
    # relevant = exactly the top 3, k = 3.
    assert fn(["a", "b", "c", "x"], {"a", "b", "c"}, 3) == pytest.approx(1.0)


def test_mrr_perfect_and_no_hit():
    assert mrr(["a", "b"], {"a"}) == 1.0
    assert mrr(["a", "b"], {"q"}) == 0.0
    assert mrr(["a", "b"], {"b"}, k=1) == 0.0  # hit at rank 2 is cut


@pytest.mark.parametrize("fn", RANK_METRICS)
def test_no_hit_scores_zero(fn):
    assert fn(RANKED, {"x", "y"}, 5) == 0.0


def test_empty_ranking_scores_zero():
    for fn in RANK_METRICS:
        assert fn([], {"a"}, 3) == 0.0
    assert mrr([], {"a"}) == 0.0


def test_precision_hand():
    # top 5 holds b, d -> 2 / 5; top 2 holds b -> 1 / 2; k=10 > len: still divide by k -> 2 / 10
    assert precision_at_k(RANKED, RELEVANT, 5) == pytest.approx(0.4)
    assert precision_at_k(RANKED, RELEVANT, 2) == pytest.approx(0.5)
    assert precision_at_k(RANKED, RELEVANT, 10) == pytest.approx(0.2)


def test_recall_hand():
    # top 5: 2 hits / |relevant| 3 = 0.6667; top 3: 1 hit / 3
    assert recall_at_k(RANKED, RELEVANT, 5) == pytest.approx(2 / 3)
    assert recall_at_k(RANKED, RELEVANT, 3) == pytest.approx(1 / 3)


def test_ndcg_hand():
    # k=5: DCG = 1/log2(3) + 1/log2(5) = 0.63093 + 0.43068 = 1.06161
    #      IDCG over min(3, 5) = 3 items = 1 + 1/log2(3) + 1/log2(4) = 1 + 0.63093 + 0.5 = 2.13093
    #      nDCG = 1.06161 / 2.13093 = 0.49819
    assert ndcg_at_k(RANKED, RELEVANT, 5) == pytest.approx((L2 + L4) / (1 + L2 + L3))
    assert ndcg_at_k(RANKED, RELEVANT, 5) == pytest.approx(0.49819, abs=1e-5)
    # k=2: DCG = 1/log2(3) = 0.63093; IDCG over min(3, 2) = 2 items = 1 + 0.63093 -> 0.38685
    assert ndcg_at_k(RANKED, RELEVANT, 2) == pytest.approx(L2 / (1 + L2))


def test_hit_rate_hand():
    # first hit is b at rank 2
    assert hit_rate_at_k(RANKED, RELEVANT, 1) == 0.0
    assert hit_rate_at_k(RANKED, RELEVANT, 2) == 1.0


def test_mrr_hand():
    # first relevant (b) at rank 2 -> 1/2; within k=1 none -> 0
    assert mrr(RANKED, RELEVANT) == pytest.approx(0.5)
    assert mrr(RANKED, RELEVANT, k=2) == pytest.approx(0.5)
    assert mrr(RANKED, RELEVANT, k=1) == 0.0
    # first relevant (e) at rank 5 -> 0.2
    assert mrr(RANKED, ["e"]) == pytest.approx(0.2)


def test_average_precision_hand():
    # k=5: hits at ranks 2 and 4 -> P@2 = 1/2, P@4 = 2/4; sum = 1.0; / min(3, 5) = 3 -> 0.3333
    assert average_precision_at_k(RANKED, RELEVANT, 5) == pytest.approx(1 / 3)
    # k=2: hit at rank 2 -> P@2 = 1/2; / min(3, 2) = 2 -> 0.25
    assert average_precision_at_k(RANKED, RELEVANT, 2) == pytest.approx(0.25)
    # more relevant items than k, top-k all relevant: (1 + 1) / min(4, 2) = 1.0
    assert average_precision_at_k(["a", "b", "c"], {"a", "b", "c", "d"}, 2) == pytest.approx(1.0)


def test_relevant_accepts_any_collection_and_dedups():
    assert recall_at_k(RANKED, ["b", "d", "z", "b"], 5) == pytest.approx(2 / 3)
    assert recall_at_k(RANKED, frozenset(RELEVANT), 5) == pytest.approx(2 / 3)
    assert recall_at_k(tuple(RANKED), {"b": 1, "d": 1, "z": 1}.keys(), 5) == pytest.approx(2 / 3)


def test_evaluate_ranking_keys_and_values():
    out = evaluate_ranking(RANKED, RELEVANT, ks=(2, 5))
    assert list(out) == [
        "ndcg@2",
        "hit@2",
        "recall@2",
        "precision@2",
        "map@2",
        "ndcg@5",
        "hit@5",
        "recall@5",
        "precision@5",
        "map@5",
        "mrr",
    ]
    for k in (2, 5):
        assert out[f"ndcg@{k}"] == pytest.approx(ndcg_at_k(RANKED, RELEVANT, k))
        assert out[f"hit@{k}"] == hit_rate_at_k(RANKED, RELEVANT, k)
        assert out[f"recall@{k}"] == pytest.approx(recall_at_k(RANKED, RELEVANT, k))
        assert out[f"precision@{k}"] == pytest.approx(precision_at_k(RANKED, RELEVANT, k))
        assert out[f"map@{k}"] == pytest.approx(average_precision_at_k(RANKED, RELEVANT, k))
    assert out["mrr"] == pytest.approx(0.5)
    assert set(evaluate_ranking(RANKED, RELEVANT)) >= {"ndcg@1", "ndcg@20", "map@10", "mrr"}
    # mrr is uncut even when the first hit lies beyond max(ks)
    assert evaluate_ranking(RANKED, {"e"}, ks=(1,))["mrr"] == pytest.approx(0.2)


# --- list-level metrics --------------------------------------------------------------


def test_catalog_coverage():
    # distinct {a, b, c, d} = 4 of 10
    assert catalog_coverage([["a", "b"], ["b", "c"], ("d",)], 10) == pytest.approx(0.4)
    assert catalog_coverage([["a", "b"], ["b", "a"]], 2) == 1.0  # perfect
    assert catalog_coverage([[], []], 5) == 0.0  # nothing recommended
    assert catalog_coverage(iter([["a"]]), 4) == pytest.approx(0.25)  # any iterable
    with pytest.raises(MetricInputError, match="catalog_size"):
        catalog_coverage([["a"]], 0)
    with pytest.raises(MetricInputError, match="distinct items"):
        catalog_coverage([["a", "b", "c"]], 2)


def test_intra_list_diversity():
    cats = {"a": "x", "b": "x", "c": "y", "d": None}
    # all same category -> 0; all different -> 1
    assert intra_list_diversity(["a", "b"], cats) == 0.0
    assert intra_list_diversity(["a", "c"], cats) == 1.0
    # [a, b, c]: 3 pairs, only (a, b) share x -> 2 / 3
    assert intra_list_diversity(["a", "b", "c"], cats) == pytest.approx(2 / 3)
    # [a, b, d, u]: 6 pairs; d (None) and u (missing) are their own categories,
    # only (a, b) share -> 5 / 6
    assert intra_list_diversity(["a", "b", "d", "u"], cats) == pytest.approx(5 / 6)
    # two unknowns differ from each other
    assert intra_list_diversity(["d", "u"], cats) == 1.0
    assert intra_list_diversity(["a"], cats) == 0.0
    assert intra_list_diversity([], cats) == 0.0
    # pandas-style NaN category counts as unknown
    assert intra_list_diversity(["m", "n"], {"m": float("nan"), "n": float("nan")}) == 1.0  # type: ignore[dict-item]


def test_novelty():
    pop = {"a": 100.0, "b": 25.0, "c": 0.0}
    # n_users = 100: a -> p = 1 -> 0 bits; b -> p = 0.25 -> 2 bits; mean = 1.0
    assert novelty(["a", "b"], pop, 100) == pytest.approx(1.0)
    # unknown u -> p = 1/100 -> log2(100) = 6.6439 bits; c (0 interactions) -> same floor
    assert novelty(["u"], pop, 100) == pytest.approx(math.log2(100))
    assert novelty(["c"], pop, 100) == pytest.approx(math.log2(100))
    # popularity above n_users is clipped to p = 1 -> 0 bits (most popular = least novel)
    assert novelty(["a"], {"a": 500.0}, 100) == 0.0
    assert novelty([], pop, 100) == 0.0
    with pytest.raises(MetricInputError, match="n_users"):
        novelty(["a"], pop, 0)


def test_mean_ci():
    # values 1..5: mean 3, sample sd = sqrt(2.5) = 1.5811; half = 1.959964 * 1.5811 / sqrt(5) = 1.38590
    mean, half = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == pytest.approx(3.0)
    assert half == pytest.approx(1.959964 * math.sqrt(2.5) / math.sqrt(5), abs=1e-5)
    assert half == pytest.approx(1.38590, abs=1e-5)
    # 90%: z = 1.644854
    assert mean_ci([1.0, 2.0, 3.0, 4.0, 5.0], 0.9)[1] == pytest.approx(1.644854 * math.sqrt(0.5), abs=1e-5)
    assert mean_ci([0.7]) == (0.7, 0.0)
    assert mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.0)
    with pytest.raises(MetricInputError):
        mean_ci([])
    with pytest.raises(MetricInputError, match="confidence"):
        mean_ci([1.0, 2.0], confidence=1.0)


# --- input checks --------------------------------------------------------------------


@pytest.mark.parametrize("fn", RANK_METRICS)
@pytest.mark.parametrize("k", [0, -1, 1.5, "3", True, None])
def test_bad_k_rejected(fn, k):
    with pytest.raises(MetricInputError, match="k must be an integer"):
        fn(RANKED, RELEVANT, k)


def test_bad_k_rejected_elsewhere():
    with pytest.raises(MetricInputError, match="k must be"):
        mrr(RANKED, RELEVANT, k=0)
    with pytest.raises(MetricInputError, match="k must be"):
        evaluate_ranking(RANKED, RELEVANT, ks=(5, 0))


def test_numpy_int_k_accepted():
    np = pytest.importorskip("numpy")
    assert precision_at_k(RANKED, RELEVANT, np.int64(5)) == pytest.approx(0.4)


@pytest.mark.parametrize("fn", [*RANK_METRICS, evaluate_ranking, mrr])
def test_duplicates_rejected(fn):
    args = (["a", "b", "a"], {"a"}) + ((3,) if fn in RANK_METRICS else ())
    with pytest.raises(MetricInputError, match="duplicate") as exc:
        fn(*args)
    assert "'a'" in str(exc.value)


def test_duplicates_rejected_list_level():
    with pytest.raises(MetricInputError, match="duplicate"):
        intra_list_diversity(["a", "a"], {})
    with pytest.raises(MetricInputError, match="duplicate"):
        novelty(["a", "a"], {}, 10)


@pytest.mark.parametrize("fn", [*RANK_METRICS, evaluate_ranking, mrr])
@pytest.mark.parametrize("relevant", [set(), [], frozenset()])
def test_empty_relevant_rejected(fn, relevant):
    args = (RANKED, relevant) + ((3,) if fn in RANK_METRICS else ())
    with pytest.raises(MetricInputError, match="relevant is empty"):
        fn(*args)


def test_bare_string_rejected():
    with pytest.raises(MetricInputError, match="single string"):
        recall_at_k("abc", {"a"}, 3)
    with pytest.raises(MetricInputError, match="single string"):
        recall_at_k(["abc"], "abc", 3)
    with pytest.raises(MetricInputError, match="not strings"):
        catalog_coverage(["ab", "cd"], 10)


def test_error_is_recommender_and_value_error():
    with pytest.raises(RecommenderError):
        precision_at_k(RANKED, RELEVANT, 0)
    with pytest.raises(ValueError):
        precision_at_k(RANKED, RELEVANT, 0)


# --- agreement with trec_eval via ir_measures ----------------------------------------

KS = (1, 2, 3, 5, 10, 20)


def _random_cases(n: int = 200) -> list[tuple[list[str], set[str]]]:
    rng = random.Random(0)
    pool = [f"d{i:02d}" for i in range(40)]
    cases = []
    for _ in range(n):
        ranked = rng.sample(pool, rng.randint(1, 25))
        # bias relevant items towards the ranking so most cases have hits
        source = ranked + rng.sample(pool, 10) if rng.random() < 0.8 else pool
        candidates = sorted(set(source))
        relevant = set(rng.sample(candidates, min(len(candidates), rng.randint(1, 12))))
        cases.append((ranked, relevant))
    return cases


def test_agreement_with_ir_measures():
    ir_measures = pytest.importorskip("ir_measures")
    from ir_measures import AP, RR, P, R, Success, nDCG

    cases = _random_cases()
    qrels, run = [], []
    for q, (ranked, relevant) in enumerate(cases):
        qrels += [ir_measures.Qrel(f"q{q}", doc, 1) for doc in sorted(relevant)]
        # trec_eval ranks by score: strictly descending, no ties
        run += [ir_measures.ScoredDoc(f"q{q}", doc, float(len(ranked) - i)) for i, doc in enumerate(ranked)]
    measures = [RR] + [m @ k for k in KS for m in (nDCG, P, R, AP, RR, Success)]
    ref = {(r.query_id, str(r.measure)): r.value for r in ir_measures.iter_calc(measures, qrels, run)}
    assert len(ref) == len(cases) * len(measures)

    n_ap_differs = 0
    for q, (ranked, relevant) in enumerate(cases):
        qid = f"q{q}"
        assert mrr(ranked, relevant) == pytest.approx(ref[qid, "RR"], abs=1e-6)
        for k in KS:
            ctx = (q, k, ranked, relevant)
            assert ndcg_at_k(ranked, relevant, k) == pytest.approx(ref[qid, f"nDCG@{k}"], abs=1e-6), ctx
            assert precision_at_k(ranked, relevant, k) == pytest.approx(ref[qid, f"P@{k}"], abs=1e-6), ctx
            assert recall_at_k(ranked, relevant, k) == pytest.approx(ref[qid, f"R@{k}"], abs=1e-6), ctx
            assert mrr(ranked, relevant, k=k) == pytest.approx(ref[qid, f"RR@{k}"], abs=1e-6), ctx
            assert hit_rate_at_k(ranked, relevant, k) == pytest.approx(ref[qid, f"Success@{k}"], abs=1e-6), (
                ctx
            )
            # trec_eval's AP@k divides by |relevant|; ours by min(|relevant|, k).
            ap = average_precision_at_k(ranked, relevant, k)
            n_rel = len(relevant)
            assert ap == pytest.approx(ref[qid, f"AP@{k}"] * n_rel / min(n_rel, k), abs=1e-6), ctx
            if n_rel <= k:
                assert ap == pytest.approx(ref[qid, f"AP@{k}"], abs=1e-6), ctx
            elif ref[qid, f"AP@{k}"] > 0:
                n_ap_differs += 1
            # the one-pass helper agrees with the single metrics
            out = evaluate_ranking(ranked, relevant, ks=(k,))
            assert out[f"ndcg@{k}"] == pytest.approx(ref[qid, f"nDCG@{k}"], abs=1e-6), ctx
            assert out[f"map@{k}"] == pytest.approx(ap, abs=1e-12), ctx
            assert out["mrr"] == pytest.approx(ref[qid, "RR"], abs=1e-6), ctx
    # the randomized cases do exercise the |relevant| > k branch of AP
    assert n_ap_differs > 20

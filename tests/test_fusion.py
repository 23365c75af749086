"""Fusion: documented prior, fitting by gradient descent, never worse than the retriever."""

from __future__ import annotations

import random

import numpy as np

from agent.ranking.fusion import FusionWeights, RankedList, features, fit, fuse


def _list(n: int, llm_order: list[str]) -> RankedList:
    ids = [f"i{j}" for j in range(n)]
    return RankedList(ids, [float(n - j) for j in range(n)], llm_order)


def test_features_give_llm_gain_and_scaled_retriever_score() -> None:
    x = features(_list(3, ["i2", "i0"]))
    assert np.allclose(x[:, 0], [1 / np.log2(3), 0.0, 1.0])  # i0 ranked 2nd, i1 unplaced, i2 first
    assert np.allclose(x[:, 1], [1.0, 0.5, 0.0])


def test_prior_blends_both_signals() -> None:
    order = [item for item, _ in fuse(_list(5, ["i4", "i3"]), FusionWeights.prior())]
    assert order[0] == "i4"  # the model's top pick rises from last place
    assert order[1:].index("i0") < order[1:].index("i1")  # the rest keep the retriever order


def test_fit_learns_to_trust_a_model_that_is_right() -> None:
    rng = random.Random(0)
    lists, chosen = [], []
    for _ in range(200):
        target = f"i{rng.randrange(10)}"
        others = [f"i{j}" for j in rng.sample(range(10), 3) if f"i{j}" != target]
        lists.append(_list(10, [target, *others]))
        chosen.append(target)
    weights = fit(lists, chosen)
    assert weights.source == "fitted"
    assert weights.w_llm > weights.w_retriever


def test_fit_falls_back_to_the_retriever_when_the_model_is_noise() -> None:
    rng = random.Random(1)
    lists, chosen = [], []
    for _ in range(200):
        target = f"i{min(int(rng.expovariate(0.7)), 9)}"  # users pick what the retriever ranks high
        noise = [f"i{j}" for j in rng.sample(range(10), 5)]
        lists.append(_list(10, noise))
        chosen.append(target)
    weights = fit(lists, chosen)
    retriever_mrr = np.mean([1 / (int(t[1:]) + 1) for t in chosen])
    fused_mrr = np.mean(
        [1 / ([i for i, _ in fuse(lst, weights)].index(t) + 1) for lst, t in zip(lists, chosen, strict=True)]
    )
    assert fused_mrr >= retriever_mrr - 1e-12


def test_no_usable_data_returns_the_prior() -> None:
    assert fit([_list(3, ["i0"])], ["not-a-candidate"]).source == "prior"

"""Seeded shuffles, Borda aggregation and the input-order copy rate."""

from __future__ import annotations

import random
import subprocess
import sys
from itertools import permutations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.ranking.position_bias import borda, input_order_copy_rate, shuffle_candidates

IDS = [f"item_{n}" for n in range(20)]


# -- shuffle_candidates ---------------------------------------------------------------------------
def test_shuffle_is_a_deterministic_permutation() -> None:
    a = shuffle_candidates(IDS, seed=7)
    assert a == shuffle_candidates(IDS, seed=7)
    assert sorted(a) == sorted(IDS)
    assert a != IDS
    assert [f"item_{n}" for n in range(20)] == IDS  # input not mutated


def test_shuffle_seed_forms() -> None:
    assert shuffle_candidates(IDS, 42) == shuffle_candidates(IDS, "42")  # seeded by sha256(str(seed))
    orders = {tuple(shuffle_candidates(IDS, f"run:{user}")) for user in range(50)}
    assert len(orders) == 50


def test_shuffle_is_stable_across_processes() -> None:
    """No dependence on hash randomisation: a fresh interpreter gives the same order."""
    code = "from agent.ranking.position_bias import shuffle_candidates as s; print(s([str(i) for i in range(30)], 'u1'))"
    env_runs = [
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        ).stdout
        for env in ({"PYTHONHASHSEED": "1"}, {"PYTHONHASHSEED": "2"})
    ]
    assert env_runs[0] == env_runs[1] == f"{shuffle_candidates([str(i) for i in range(30)], 'u1')}\n"


def test_shuffle_small_inputs() -> None:
    assert shuffle_candidates([], 1) == []
    assert shuffle_candidates(("a",), 1) == ["a"]


def test_shuffle_positions_are_roughly_uniform() -> None:
    first = [shuffle_candidates(["a", "b", "c", "d"], seed)[0] for seed in range(4000)]
    for item in "abcd":
        assert 850 < first.count(item) < 1150


# -- borda ------------------------------------------------------------------------------------------
def test_borda_aggregates_rankings() -> None:
    rankings = [["a", "b", "c"], ["b", "a", "c"], ["b", "c", "a"]]
    # n = 3: a = 3+2+1 = 6, b = 2+3+3 = 8, c = 1+1+2 = 4
    assert borda(rankings) == ["b", "a", "c"]


def test_borda_absent_items_get_zero_and_ties_follow_first_appearance() -> None:
    # universe from first appearance: x, y, z, w (n = 4)
    # x: 4 (r1) ; y: 3 (r1) ; z: 4 (r2) ; w: 3 (r2) -> ties x=z, y=w broken by first appearance
    assert borda([["x", "y"], ["z", "w"]]) == ["x", "z", "y", "w"]


def test_borda_with_universe() -> None:
    universe = ["p", "q", "r", "s"]
    # items outside the universe are ignored; unranked universe items come last in universe order
    assert borda([["r", "zzz", "q"], ["r"]], universe=universe) == ["r", "q", "p", "s"]
    assert borda([], universe=universe) == universe
    assert borda([]) == []


def test_borda_counts_repeats_once() -> None:
    assert borda([["a", "a", "a", "b"], ["b", "a"]]) == ["a", "b"]  # a: 2+1, b: 1+2 -> tie, a first
    assert borda([["b", "b", "b", "a"]], universe=["a", "b"]) == ["b", "a"]


def test_borda_of_one_ranking_is_that_ranking() -> None:
    ranking = shuffle_candidates(IDS, 3)
    assert borda([ranking]) == ranking
    assert borda([ranking[:5]], universe=IDS) == ranking[:5] + [i for i in IDS if i not in ranking[:5]]


def test_borda_undoes_position_bias_of_shuffles() -> None:
    """A 'model' that prefers the truly best item but also the first shown one: Borda over
    several shuffles recovers the preference."""
    truth = IDS[:10]

    def biased_model(shown: list[str]) -> list[str]:
        return sorted(shown, key=lambda i: truth.index(i) - (6 if i == shown[0] else 0))

    rankings = [biased_model(shuffle_candidates(truth, f"s{k}")) for k in range(15)]
    assert borda(rankings)[:3] == truth[:3]


@given(st.lists(st.permutations(["a", "b", "c", "d", "e"]), min_size=1, max_size=6))
def test_borda_property_is_a_permutation(rankings: list[list[str]]) -> None:
    out = borda(rankings)
    assert sorted(out) == ["a", "b", "c", "d", "e"]
    assert out == borda(rankings)


# -- input_order_copy_rate -----------------------------------------------------------------------
def test_copy_rate_identical_and_prefix_is_one() -> None:
    assert input_order_copy_rate(IDS, IDS) == 1.0
    assert input_order_copy_rate(IDS, IDS[:5]) == 1.0
    assert input_order_copy_rate(IDS, IDS[:1]) == 1.0


def test_copy_rate_reversed_is_zero() -> None:
    assert input_order_copy_rate(IDS, IDS[::-1]) == 0.0
    assert input_order_copy_rate(IDS, IDS[-1:]) == 0.0  # the last shown item alone


def test_copy_rate_random_is_about_half() -> None:
    rng = random.Random(0)
    full = [input_order_copy_rate(IDS, rng.sample(IDS, len(IDS))) for _ in range(400)]
    top5 = [input_order_copy_rate(IDS, rng.sample(IDS, 5)) for _ in range(400)]
    assert sum(full) / len(full) == pytest.approx(0.5, abs=0.02)
    assert sum(top5) / len(top5) == pytest.approx(0.5, abs=0.03)


def test_copy_rate_in_order_subsequence_is_high_but_not_one() -> None:
    shown = ["a", "b", "c", "d"]
    # pairs ordered by "a, c on top": (a,c) ok, (a,b) ok, (a,d) ok, (c,b) wrong, (c,d) ok -> 4/5
    assert input_order_copy_rate(shown, ["a", "c"]) == pytest.approx(4 / 5)
    assert input_order_copy_rate(shown, ["b", "a"]) == pytest.approx(4 / 5)


def test_copy_rate_worked_example_over_all_orders() -> None:
    shown = ["a", "b", "c"]
    rates = {p: input_order_copy_rate(shown, list(p)) for p in permutations(shown)}
    assert rates[("a", "b", "c")] == 1.0
    assert rates[("c", "b", "a")] == 0.0
    assert rates[("b", "a", "c")] == pytest.approx(2 / 3)
    assert sum(rates.values()) / len(rates) == pytest.approx(0.5)


def test_copy_rate_ignores_unknown_and_repeated_ids() -> None:
    assert input_order_copy_rate(["a", "b", "c"], ["x", "a", "a", "y", "b", "c", "b"]) == 1.0


def test_copy_rate_without_evidence_is_neutral() -> None:
    assert input_order_copy_rate(["a", "b"], []) == 0.5
    assert input_order_copy_rate(["a", "b"], ["zzz"]) == 0.5
    assert input_order_copy_rate(["a"], ["a"]) == 0.5
    assert input_order_copy_rate([], ["a"]) == 0.5


@given(st.permutations(list("abcdefgh")), st.integers(0, 8))
def test_copy_rate_property_in_unit_interval_and_symmetric(order: list[str], k: int) -> None:
    shown = list("abcdefgh")
    rate = input_order_copy_rate(shown, order[:k])
    assert 0.0 <= rate <= 1.0
    if k:
        # reversing the shown list turns agreement into disagreement
        assert input_order_copy_rate(shown[::-1], order[:k]) == pytest.approx(1.0 - rate)

"""The SASRec baseline of scripts/bench_retrieval.py learns an order that popularity cannot see."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")

from scripts.bench_retrieval import evaluate, movielens_split, popularity_ranker
from scripts.sasrec import SASRecConfig, sasrec_ranker, windows

N_ITEMS, N_USERS, LENGTH = 30, 200, 12
T0 = pd.Timestamp("2024-01-01", tz="UTC")


def cycle_data(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every user walks ``LENGTH`` steps of one fixed cycle over the catalog from a random start.

    The next item is always the cycle successor of the last one; item counts are about
    uniform, so popularity is close to chance.
    """
    rng = np.random.default_rng(seed)
    cycle = rng.permutation(N_ITEMS)
    starts = rng.integers(0, N_ITEMS, size=N_USERS)
    rows = [
        (f"u{u}", f"i{cycle[(start + step) % N_ITEMS]}", T0 + pd.Timedelta(minutes=step))
        for u, start in enumerate(starts)
        for step in range(LENGTH)
    ]
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    events = events.sort_values("timestamp", kind="stable", ignore_index=True)
    items = pd.DataFrame({"item_id": [f"i{j}" for j in range(N_ITEMS)]})
    return events, items


def test_windows_make_each_next_item_a_target_once() -> None:
    out = windows([[1, 2, 3, 4, 5, 6, 7]], max_len=4)
    assert out == [([3, 4, 5, 6], [4, 5, 6, 7]), ([1, 2], [2, 3])]


def test_sasrec_beats_popularity_on_a_sequential_pattern() -> None:
    events, items = cycle_data()
    valid_events, valid_targets = movielens_split(events, 2)  # early stopping: second-to-last step
    train, targets = movielens_split(events, 1)  # test: the last step, never seen in training
    config = SASRecConfig(
        max_len=10, hidden=32, blocks=1, heads=1, inner=64, dropout=0.1, lr=5e-3,
        batch_targets=256, max_epochs=15, patience=3, top=20, threads=1,
    )  # fmt: skip
    sasrec = evaluate(sasrec_ranker(train, items, valid_events, valid_targets, config), targets)
    popularity = evaluate(popularity_ranker(train, items), targets)
    print(f"SASRec {sasrec}\npopularity {popularity}")
    assert popularity["ndcg@10"] < 0.35
    assert sasrec["ndcg@10"] > popularity["ndcg@10"] + 0.4
    assert sasrec["hit@20"] == 1.0


def test_rankings_exclude_history_and_are_seeded() -> None:
    events, items = cycle_data(seed=1)
    valid_events, valid_targets = movielens_split(events, 2)
    train, _ = movielens_split(events, 1)
    config = SASRecConfig(max_len=10, hidden=16, blocks=1, heads=1, inner=32, max_epochs=1, top=10, threads=1)
    users = sorted(valid_targets)[:20]
    first = sasrec_ranker(train, items, valid_events, valid_targets, config)(users)
    second = sasrec_ranker(train, items, valid_events, valid_targets, config)(users)
    assert first == second
    seen = train.groupby("user_id")["item_id"].agg(set)
    for user, top in zip(users, first, strict=True):
        assert len(top) == 10 and len(set(top)) == 10
        assert not set(top) & seen[user]


def test_fewer_unseen_items_than_the_list_length_leaves_only_unseen_items() -> None:
    events, items = cycle_data(seed=2)
    valid_events, valid_targets = movielens_split(events, 2)
    train, _ = movielens_split(events, 1)
    config = SASRecConfig(max_len=10, hidden=16, blocks=1, heads=1, inner=32, max_epochs=1, top=25, threads=1)
    (top,) = sasrec_ranker(train, items, valid_events, valid_targets, config)(["u0"])
    seen = set(train.loc[train["user_id"] == "u0", "item_id"])
    assert set(top) == set(items["item_id"]) - seen  # 19 unseen items, not 25 with seen ones

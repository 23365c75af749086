"""Retriever behaviour on small synthetic frames built per docs/CONTRACT.md."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from agent.errors import ConfigError, DataError
from agent.retrieval.candidates import SOURCES, Candidate, Retriever, RetrieverConfig

T0 = pd.Timestamp("2024-01-01", tz="UTC")


def make_events(rows: list[tuple]) -> pd.DataFrame:
    """Rows of (user, item, behavior, minutes after T0[, value[, text]]) -> canonical events."""
    full = [(*r, *(None,) * (6 - len(r))) for r in rows]
    frame = pd.DataFrame(
        {
            "user_id": pd.Series([r[0] for r in full], dtype=str),
            "item_id": pd.Series([r[1] for r in full], dtype=str),
            "behavior": pd.Series([r[2] for r in full], dtype=str),
            "timestamp": pd.Series([T0 + pd.Timedelta(minutes=r[3]) for r in full]).astype(
                "datetime64[ns, UTC]"
            ),
            "value": pd.Series([np.nan if r[4] is None else r[4] for r in full], dtype="float64"),
            "text": pd.Series([r[5] for r in full], dtype=object),
        }
    )
    return frame.sort_values("timestamp", kind="stable", ignore_index=True)


def make_items() -> pd.DataFrame:
    rows = [
        ("mouse", "Wireless Mouse", "electronics"),
        ("keyboard", "Mechanical Keyboard", "electronics"),
        ("monitor", "4K Monitor", "electronics"),
        ("mug", "Ceramic Coffee Mug", "kitchen"),
        ("kettle", "Electric Tea Kettle", "kitchen"),
        ("pan", "Cast Iron Pan", "kitchen"),
        ("novel", "Mystery Novel", "books"),
        ("atlas", "World Atlas", "books"),
    ]
    return pd.DataFrame(
        {
            "item_id": pd.Series([r[0] for r in rows], dtype=str),
            "title": pd.Series([r[1] for r in rows], dtype=str),
            "category": pd.Series([r[2] for r in rows], dtype=object),
            "description": pd.Series([None] * len(rows), dtype=object),
            "price": np.full(len(rows), np.nan),
        }
    )


def base_events() -> list[tuple]:
    rows: list[tuple] = []
    # five shoppers buy mouse + keyboard together; mug is the most popular item overall
    for k in range(5):
        rows += [(f"s{k}", "mouse", "purchase", k), (f"s{k}", "keyboard", "purchase", k + 1)]
    for k in range(7):
        rows.append((f"m{k}", "mug", "view", 20 + k))
    rows += [("r0", "pan", "purchase", 40), ("r0", "kettle", "cart", 41)]
    rows += [("alice", "mouse", "purchase", 100)]
    return rows


@pytest.fixture(scope="module")
def retriever() -> Retriever:
    return Retriever.fit(make_events(base_events()), make_items())


def ids(cands: list[Candidate]) -> list[str]:
    return [c.item_id for c in cands]


def test_cooccurrence_finds_the_obvious_neighbour(retriever: Retriever) -> None:
    cands = retriever.candidates("alice", n=3)
    assert cands[0].item_id == "keyboard"
    assert cands[0].sources["cooccurrence"] == pytest.approx(1.0)
    assert cands[0].score >= cands[1].score >= cands[2].score


def test_consumed_items_are_excluded_by_default(retriever: Retriever) -> None:
    assert "mouse" not in ids(retriever.candidates("alice", n=None))
    assert "mouse" in ids(retriever.candidates("alice", n=None, exclude_consumed=False))


def test_exclude_is_a_hard_filter(retriever: Retriever) -> None:
    assert "keyboard" not in ids(retriever.candidates("alice", n=None, exclude=["keyboard", "nope"]))
    assert "keyboard" not in ids(retriever.candidates("alice", n=5, exclude="keyboard"))
    assert "kettle" not in ids(retriever.candidates("alice", n=5, query="kettle", exclude={"kettle"}))


def test_unknown_user_gets_popularity(retriever: Retriever) -> None:
    cands = retriever.candidates("nobody", n=3)
    assert ids(cands)[0] == "mouse"  # 6 purchases beat 7 views and 5 keyboard purchases
    assert ids(cands)[:2] == ["mouse", "keyboard"]
    assert all(set(c.sources) == {"popularity"} for c in cands)


def test_unknown_user_with_query_gets_the_matching_item(retriever: Retriever) -> None:
    cands = retriever.candidates("nobody", n=3, query="tea kettle")
    assert cands[0].item_id == "kettle"
    assert set(cands[0].sources) == {"popularity", "search"}


def test_query_match_ranks_the_matching_title_first(retriever: Retriever) -> None:
    cands = retriever.candidates("alice", n=3, query="coffee mug")
    assert cands[0].item_id == "mug"
    assert cands[0].sources["search"] == pytest.approx(1.0)


def test_past_search_events_feed_the_search_source() -> None:
    rows = [*base_events(), ("bob", "", "search", 200, None, "atlas of the world")]
    model = Retriever.fit(make_events(rows), make_items())
    cands = model.candidates("bob", n=2)
    assert cands[0].item_id == "atlas"
    assert "search" in cands[0].sources


def test_per_source_scores_present_and_blended(retriever: Retriever) -> None:
    config = retriever.config
    cands = retriever.candidates("alice", n=None, query="keyboard")
    assert set(cands[0].sources) == set(SOURCES)
    for cand in cands:
        assert all(0.0 <= v <= 1.0 for v in cand.sources.values())
        expected = sum(config.weights[name] * value for name, value in cand.sources.items())
        assert cand.score == pytest.approx(expected)


def test_n_none_ranks_the_full_eligible_catalog(retriever: Retriever) -> None:
    cands = retriever.candidates("alice", n=None)
    assert sorted(ids(cands)) == sorted(set(make_items()["item_id"]) - {"mouse"})
    scores = [c.score for c in cands]
    assert scores == sorted(scores, reverse=True)
    assert ids(retriever.candidates("alice", n=4)) == ids(cands)[:4]
    assert retriever.candidates("alice", n=0) == []


def test_candidate_is_frozen(retriever: Retriever) -> None:
    cand = retriever.candidates("alice", n=1)[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cand.score = 0.0  # type: ignore[misc]


def test_recency_prefers_neighbours_of_the_latest_item() -> None:
    rows = [
        *base_events(),
        *[(f"k{k}", "pan", "purchase", 50 + k) for k in range(4)],
        *[(f"k{k}", "kettle", "purchase", 60 + k) for k in range(4)],
        ("carol", "mouse", "purchase", 300),
        ("carol", "pan", "purchase", 400),
    ]
    config = RetrieverConfig(half_life_events=1.0)
    top = Retriever.fit(make_events(rows), make_items(), config).candidates("carol", n=1)[0]
    assert top.item_id == "kettle"


def test_ratings_by_value_drop_low_ratings_from_the_profile() -> None:
    rows = [
        *[(f"a{k}", "novel", "rating", k, 5.0) for k in range(3)],
        *[(f"a{k}", "atlas", "rating", 10 + k, 5.0) for k in range(3)],
        *[(f"b{k}", "pan", "rating", 20 + k, 5.0) for k in range(3)],
        *[(f"b{k}", "mug", "rating", 30 + k, 5.0) for k in range(3)],
        ("dave", "novel", "rating", 100, 1.0),
        ("dave", "pan", "rating", 101, 5.0),
    ]
    events = make_events(rows)
    by_value = Retriever.fit(events, make_items(), RetrieverConfig(rating_mode="value"))
    cands = by_value.candidates("dave", n=None)
    assert cands[0].item_id == "mug"
    assert "novel" not in ids(cands)  # rated (badly) = consumed
    implicit = Retriever.fit(events, make_items(), RetrieverConfig(rating_mode="implicit"))
    top_two = ids(implicit.candidates("dave", n=2))
    assert set(top_two) == {"mug", "atlas"}


def test_neighbours_are_pruned_to_top_k() -> None:
    model = Retriever.fit(make_events(base_events()), make_items(), RetrieverConfig(neighbors=1))
    assert np.diff(model._similarity.indptr).max() <= 1
    assert (model._similarity.diagonal() == 0).all()


def test_window_option_and_days_half_life_run() -> None:
    config = RetrieverConfig(window=2, half_life_days=1.0, popularity_half_life_days=None)
    cands = Retriever.fit(make_events(base_events()), make_items(), config).candidates("alice", n=2)
    assert cands[0].item_id == "keyboard"


def test_source_weight_zero_switches_it_off() -> None:
    config = RetrieverConfig(weights={"cooccurrence": 0.0, "popularity": 1.0, "content": 0.0, "search": 0.0})
    cands = Retriever.fit(make_events(base_events()), make_items(), config).candidates("alice", n=3)
    assert all(set(c.sources) == {"popularity"} for c in cands)


def test_events_on_unknown_items_are_ignored() -> None:
    rows = [*base_events(), ("alice", "ghost", "purchase", 101)]
    cands = Retriever.fit(make_events(rows), make_items()).candidates("alice", n=None)
    assert "ghost" not in ids(cands)
    assert all(math.isfinite(c.score) for c in cands)


def test_empty_log_still_answers() -> None:
    model = Retriever.fit(make_events([]), make_items())
    cands = model.candidates("anyone", n=3, query="mug")
    assert cands[0].item_id == "mug"
    assert len(model.candidates("anyone", n=None)) == len(make_items())


def test_bad_inputs_raise_project_errors() -> None:
    with pytest.raises(DataError, match="timestamp"):
        Retriever.fit(make_events(base_events()).drop(columns=["timestamp"]), make_items())
    with pytest.raises(DataError, match="duplicate"):
        Retriever.fit(make_events(base_events()), pd.concat([make_items(), make_items()]))
    with pytest.raises(ConfigError):
        RetrieverConfig(weights={"magic": 1.0})
    with pytest.raises(ConfigError):
        RetrieverConfig(neighbors=0)
    with pytest.raises(ConfigError):
        RetrieverConfig(half_life_events=0)
    with pytest.raises(ConfigError):
        RetrieverConfig(rating_mode="stars")  # type: ignore[arg-type]


def test_scores_vector_matches_candidates(retriever: Retriever) -> None:
    blended, sources = retriever.scores("alice", exclude=["keyboard"])
    assert blended.shape == (len(retriever.item_ids),)
    excluded = {str(retriever.item_ids[j]) for j in np.flatnonzero(np.isneginf(blended))}
    assert excluded == {"mouse", "keyboard"}
    assert set(sources) <= set(SOURCES)
    assert all(((v >= 0) & (v <= 1)).all() for v in sources.values())
    ranked = retriever.candidates("alice", n=None, exclude=["keyboard"])
    by_id = dict(zip(retriever.item_ids, blended, strict=True))
    assert [c.score for c in ranked] == [by_id[c.item_id] for c in ranked]
    assert ranked[0].score == blended.max()


@pytest.mark.parametrize(
    "config",
    [
        RetrieverConfig(),
        RetrieverConfig(window=4, half_life_days=1.0, category_share=0.0, weights={"content": 0.5}),
        RetrieverConfig(rating_mode="value", neighbors=2, weights={"popularity": 0.0, "search": 0.0}),
    ],
)
def test_batch_scores_and_target_ranks_equal_the_per_user_path(config: RetrieverConfig) -> None:
    from agent.data.loading import align_catalog, load_events, load_items

    from .conftest import SAMPLE

    catalog = load_items(SAMPLE / "items.csv")  # searches, ratings, dislikes, categories
    events = align_catalog(load_events(SAMPLE / "events.csv"), catalog).frame
    model = Retriever.fit(events, catalog.frame, config)
    users = [*sorted(events["user_id"].unique()), "nobody"]  # an unknown user too
    per_user = np.stack([model.scores(u)[0] for u in users])
    assert np.array_equal(model.batch_scores(users), per_user)  # bit for bit, -inf included
    rng = np.random.default_rng(0)
    targets = [str(x) for x in rng.choice(model.item_ids, len(users))]
    targets[0] = "not-in-the-catalog"
    expected = []
    for user, target in zip(users, targets, strict=True):
        ranked = [c.item_id for c in model.candidates(user, n=None)]
        expected.append(ranked.index(target) + 1 if target in ranked else 0)
    assert model.target_ranks(users, targets, block=3).tolist() == expected
    assert 0 in expected and any(r > 0 for r in expected)


def test_target_ranks_follow_the_popularity_tie_break() -> None:
    model = Retriever.fit(make_events([("a", "mug", "view", 0)]), make_items(), RetrieverConfig())
    ranked = [c.item_id for c in model.candidates("nobody", n=None)]  # popularity only: many ties
    assert model.target_ranks(["nobody"] * len(ranked), ranked).tolist() == list(range(1, len(ranked) + 1))

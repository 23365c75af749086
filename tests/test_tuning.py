"""Retriever tuning: a validation split from the given events only, a bounded search, saved settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agent.cli.main import main
from agent.cli.options import agent_config
from agent.errors import ConfigError
from agent.recommender import AgentConfig, RecommenderAgent
from agent.retrieval.candidates import RetrieverConfig
from agent.retrieval.tuning import (
    TUNING_KEY,
    config_from_dict,
    config_to_dict,
    evaluate_config,
    load_config,
    save_config,
    tune,
    validation_split,
)

from .conftest import SAMPLE

DATA = ["--events", str(SAMPLE / "events.csv"), "--items", str(SAMPLE / "items.csv")]


def _events(rows: list[tuple[str, str, str, int]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "behavior", "day"])
    frame["timestamp"] = pd.Timestamp("2026-01-01") + pd.to_timedelta(frame.pop("day"), unit="D")
    frame["value"] = np.nan
    return frame


def _sequential_world(
    n_users: int = 60, n_items: int = 40, length: int = 8
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Users walk through the catalog in order from a random start: the next item follows the last."""
    rng = np.random.default_rng(3)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(0, n_items - length))
        rows += [(f"u{u}", f"i{start + k}", "purchase", k) for k in range(length)]
    items = pd.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(n_items)],
            "title": [f"Item {k}" for k in range(n_items)],
            "category": "Things",
            "price": 10.0,
            "description": "",
        }
    )
    return _events(rows), items


def test_validation_split_holds_out_each_users_last_new_item_only() -> None:
    events = _events(
        [
            ("a", "x", "view", 0),
            ("a", "y", "purchase", 1),
            ("a", "", "search", 2),  # after the target: dropped with it
            ("b", "x", "view", 0),
            ("b", "y", "view", 1),
            ("b", "x", "purchase", 2),  # a repeat: no target for b
            ("c", "z", "view", 0),  # a single item event: no target for c
            ("d", "z", "view", 3),
            ("d", "y", "view", 3),  # same time as z: row order decides, y is last
        ]
    )
    fit, targets = validation_split(events)
    assert targets == {"a": "y", "d": "y"}
    kept = list(zip(fit["user_id"], fit["item_id"], strict=True))
    assert kept == [("a", "x"), ("b", "x"), ("b", "y"), ("b", "x"), ("c", "z"), ("d", "z")]


def test_tuning_searches_within_the_budget_and_reports_every_trial() -> None:
    events, items = _sequential_world()
    seen: list[tuple[dict, dict]] = []
    result = tune(events, items, on_trial=lambda trial, best: seen.append((trial.change, best.metrics)))
    assert result.stopped == "converged"
    assert len(seen) == len(result.trials) > 10
    assert seen[0][0] == {}  # the start, then one change at a time
    assert all(len(change) == 1 for change, _ in seen[1:])
    assert result.metrics["ndcg@10"] + result.metrics["hit@50"] >= (
        result.start_metrics["ndcg@10"] + result.start_metrics["hit@50"]
    )
    fit, targets = validation_split(events)
    assert evaluate_config(fit, items, targets, result.config) == result.metrics  # deterministic
    report = result.report()
    assert report["validation_users"] == len(targets) == 60
    assert set(report["changed"]) <= set(config_to_dict(result.config))


@pytest.mark.parametrize(
    "config",
    [RetrieverConfig(), RetrieverConfig(window=5, half_life_events=2.0, weights={"content": 0.5})],
)
def test_batched_validation_scoring_equals_the_per_user_path(config: RetrieverConfig) -> None:
    from agent.data.loading import align_catalog, load_events, load_items
    from agent.retrieval.candidates import FitCache

    catalog = load_items(SAMPLE / "items.csv")
    events = align_catalog(load_events(SAMPLE / "events.csv"), catalog).frame
    fit, targets = validation_split(events)
    per_user = evaluate_config(fit, catalog.frame, targets, config, batched=False)
    assert per_user["hit@50"] > 0
    assert evaluate_config(fit, catalog.frame, targets, config) == per_user
    cache = FitCache(fit, catalog.frame)
    for other in (RetrieverConfig(shrink=0.0), config):  # a cached fit equals a fresh one
        assert evaluate_config(fit, catalog.frame, targets, other, cache=cache) == evaluate_config(
            fit, catalog.frame, targets, other, batched=False
        )
    with pytest.raises(ValueError, match="other events"):
        evaluate_config(events, catalog.frame, targets, config, cache=cache)


def test_an_exhausted_budget_stops_after_the_starting_point() -> None:
    events, items = _sequential_world()
    result = tune(events, items, time_budget_s=0.0)
    assert (result.stopped, len(result.trials), result.config) == ("time budget", 1, RetrieverConfig())


def test_tuning_needs_users_with_a_history() -> None:
    with pytest.raises(ConfigError, match="no user"):
        tune(_events([("a", "x", "view", 0)]), pd.DataFrame({"item_id": ["x"], "title": ["X"]}))


def test_saved_settings_round_trip_and_are_used_by_the_agent(tmp_path: Path) -> None:
    events, items = _sequential_world()
    result = tune(events, items, time_budget_s=0.0)
    result.config = RetrieverConfig(window=10, half_life_events=2.0, weights={"content": 0.0})
    path = tmp_path / "retriever.json"
    save_config(path, result)
    raw = json.loads(path.read_text())
    assert raw[TUNING_KEY]["trials"] == 1
    loaded = load_config(path)
    assert loaded == config_from_dict(config_to_dict(result.config))
    assert (loaded.window, loaded.half_life_events, loaded.weights["content"]) == (10, 2.0, 0.0)
    assert loaded.weights["cooccurrence"] == RetrieverConfig().weights["cooccurrence"]
    from agent.data.loading import align_catalog, load_events, load_items

    catalog = load_items(SAMPLE / "items.csv")
    log = align_catalog(load_events(SAMPLE / "events.csv"), catalog)
    agent = RecommenderAgent(log.frame, catalog.frame, None, AgentConfig(retriever=loaded))
    assert agent.retriever.config == loaded
    with pytest.raises(ConfigError, match="not retriever settings"):
        config_from_dict({"windw": 10})


def test_tune_command_writes_settings_that_recommend_and_evaluate_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "retriever.json"
    assert main(["tune", *DATA, "--out", str(out), "--time-budget", "30"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["objective"] == "ndcg@10 + hit@50" and report["trials"] >= 1
    assert "tune: trial 1 " in captured.err
    tuned = load_config(out)

    assert main(["recommend", *DATA, "--user", "u001", "--backend", "fallback", "--retriever", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["items"]
    from agent.cli.main import build_parser

    args = build_parser().parse_args(["recommend", *DATA, "--user", "u001", "--retriever", str(out)])
    assert agent_config(args).retriever == tuned
    args = build_parser().parse_args(["batch", *DATA, "--out", str(tmp_path / "b"), "--retriever", str(out)])
    assert agent_config(args).retriever == tuned

    from agent.cli.evaluate import _retriever_config

    assert _retriever_config(str(out)) == tuned
    assert (
        main(["recommend", *DATA, "--user", "u001", "--backend", "fallback", "--retriever", "nope.json"]) != 0
    )
    assert "--retriever" in capsys.readouterr().err

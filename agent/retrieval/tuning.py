"""Tune the retriever's settings on the data it will serve, without touching test targets.

``tune(events, items)`` cuts a validation split from the given (training) events only:
each user's last interaction with an item they had not interacted with before is the
target, and the retriever is fitted on everything before it. It then searches the
settings that matter most (recency half-life, sequence windows, similarity pruning and
shrinkage, blend weights) one coordinate at a time from a starting point (by default ``RetrieverConfig()``, itself a
validation-chosen compromise between ML-100K and Amazon Games), keeping a
change only if it raises the objective ``ndcg@10 + hit@50`` on the validation targets
(the retriever orders the fallback's list, NDCG@10, and fills the model's shortlist,
hit@50). The search stops when a full pass changes nothing or the time budget is spent;
every trial is reported through ``on_trial``. Trials are cheap: the validation users are
ranked in blocks (``Retriever.target_ranks``, equal to the per-user ``candidates`` path) and
the fits share what does not depend on the trial's settings (``FitCache``).

The tuned settings are a plain JSON object of ``RetrieverConfig`` fields (``save_config``),
read back by ``load_config`` (also accepted by ``recagent evaluate --retriever-config``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agent.errors import ConfigError
from agent.retrieval.candidates import FitCache, Retriever, RetrieverConfig

OBJECTIVE = "ndcg@10 + hit@50"
TIME_BUDGET_S = 60.0
"""The default search budget of ``tune``, ``recagent tune`` and ``recagent evaluate``."""
TUNING_KEY = "tuning"
"""Key of the tuning report inside a saved settings file (not a ``RetrieverConfig`` field)."""

# The coordinates searched and the values tried for each, in the order they are visited: the
# ones whose validation-best values differ most between ML-100K and Amazon Games first (window
# weight and length, recency: the defaults sit between the two), then the blend weights, the
# similarity's shrinkage and pruning, the popularity decay. "weights.<source>" is one blend
# weight. ``window_weight`` is skipped while ``window`` is None.
SEARCH_SPACE: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("window_weight", (0.5, 1.0, 2.0, 3.0, 5.0)),
    ("window", (None, 5, 10, 20, 50)),
    ("half_life_events", (None, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0)),
    ("weights.content", (0.0, 0.05, 0.1, 0.2, 0.5)),
    ("weights.popularity", (0.0, 0.05, 0.1, 0.2, 0.5)),
    ("shrink", (0.0, 10.0, 20.0, 50.0, 100.0)),
    ("neighbors", (50, 100, 200, 400)),
    ("popularity_half_life_days", (None, 7.0, 30.0, 60.0, 180.0)),
)


@dataclass(frozen=True)
class Trial:
    """One evaluated setting: what changed from the best so far, and its validation metrics."""

    change: dict[str, Any]
    metrics: dict[str, float]
    seconds: float


@dataclass
class TuneResult:
    """The best settings found, their validation metrics, and every trial."""

    config: RetrieverConfig
    metrics: dict[str, float]
    start_metrics: dict[str, float]
    trials: list[Trial] = field(default_factory=list)
    validation_users: int = 0
    seconds: float = 0.0
    stopped: str = "converged"
    """``converged`` (a full pass changed nothing) or ``time budget``."""

    def report(self) -> dict[str, Any]:
        """A JSON-able summary (what ``save_config`` stores next to the settings)."""
        return {
            "objective": OBJECTIVE,
            "validation": "each user's last new-item interaction in the given events",
            "validation_users": self.validation_users,
            "metrics": _rounded(self.metrics),
            "start_metrics": _rounded(self.start_metrics),
            "trials": len(self.trials),
            "seconds": round(self.seconds, 1),
            "stopped": self.stopped,
            "changed": _changed(RetrieverConfig(), self.config),
        }


def validation_split(events: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """(events before each user's target, user -> target item) from ``events`` alone.

    A user's target is the item of their last non-search event (by time, then row order)
    if they interacted with at least one other item event before and never with that item
    (a repeat would be excluded as consumed: an impossible target). Their events from the
    target on are dropped; other users keep all their events.
    """
    frame = events.reset_index(drop=True)
    if frame.empty:
        return frame, {}
    user = frame["user_id"].astype(str).to_numpy(dtype=object)
    item = frame["item_id"].astype(str).to_numpy(dtype=object)
    ts = frame["timestamp"].to_numpy(dtype="datetime64[ns]").view("int64")
    is_item = (frame["behavior"].astype(str).str.lower() != "search").to_numpy() & (item != "")
    order = np.lexsort((np.arange(len(frame)), ts, user))  # by user, then time, then row
    rows = order[is_item[order]]  # item events, each user's in time order
    if len(rows) == 0:
        return frame, {}
    u = user[rows]
    new_user = np.r_[True, u[1:] != u[:-1]]
    last = np.r_[u[1:] != u[:-1], True]
    repeated = pd.DataFrame({"u": u, "i": item[rows]}).duplicated(keep=False).to_numpy()
    target_rows = rows[last & ~new_user & ~repeated]
    targets = dict(zip(user[target_rows], item[target_rows], strict=True))
    position = np.empty(len(frame), dtype=np.int64)
    position[order] = np.arange(len(frame))
    cut = pd.Series(position[target_rows], index=user[target_rows])
    limit = pd.Series(user).map(cut).fillna(np.inf).to_numpy()
    return frame[position < limit].reset_index(drop=True), targets


def evaluate_config(
    events: pd.DataFrame,
    items: pd.DataFrame,
    targets: Mapping[str, str],
    config: RetrieverConfig,
    *,
    cache: FitCache | None = None,
    batched: bool = True,
) -> dict[str, float]:
    """NDCG@10 and hit@50 of ``config`` fitted on ``events`` for the ``targets``' users.

    ``batched`` ranks the targets with ``Retriever.target_ranks`` (blocks of users at once);
    ``False`` asks ``candidates(user, n=50)`` user by user. Both give the same numbers
    (``tests/test_tuning.py``); the batched path is the cheap one. ``cache``: shared fit work
    (``FitCache`` of these ``events``/``items``).
    """
    model = Retriever.fit(events, items, config, cache=cache)
    users = list(targets)
    if batched:
        ranks = model.target_ranks(users, [targets[u] for u in users]).tolist()
    else:
        ranks = []
        for user in users:
            top = [c.item_id for c in model.candidates(user, n=50)]
            ranks.append(top.index(targets[user]) + 1 if targets[user] in top else 0)
    ndcg = hits = 0.0
    for rank in ranks:
        if 0 < rank <= 50:
            hits += 1.0
            ndcg += 1.0 / math.log2(rank + 1) if rank <= 10 else 0.0
    n = max(len(targets), 1)
    return {"ndcg@10": ndcg / n, "hit@50": hits / n}


def tune(
    events: pd.DataFrame,
    items: pd.DataFrame,
    start: RetrieverConfig | None = None,
    *,
    time_budget_s: float = TIME_BUDGET_S,
    max_users: int | None = 2000,
    seed: int = 0,
    space: Sequence[tuple[str, Sequence[Any]]] = SEARCH_SPACE,
    on_trial: Callable[[Trial, Trial], None] | None = None,
) -> TuneResult:
    """Coordinate search from ``start`` (default: ``RetrieverConfig()``, the validation-chosen
    compromise whose provenance its docstring gives) on a validation split.

    ``max_users`` caps the validation users (a seeded sample) so a trial stays cheap on
    large logs; ``on_trial(trial, best)`` is called after every evaluation. The budget counts
    from the call (the split included): the starting point is always evaluated, then no trial
    starts that would end past ``time_budget_s`` if it took 1.5 times as long as the slowest of
    the last three, so the search ends within the budget unless a trial is far slower than
    those before it.
    """
    started = time.perf_counter()
    fit_events, targets = validation_split(events)
    if not targets:
        raise ConfigError("cannot tune the retriever: no user has two or more item interactions")
    if max_users and len(targets) > max_users:
        users = sorted(targets)
        np.random.default_rng(seed).shuffle(users)
        targets = {u: targets[u] for u in users[:max_users]}
    best_config = start or RetrieverConfig()
    trials: list[Trial] = []
    cache = FitCache(fit_events, items)  # what every trial's fit shares

    def run(config: RetrieverConfig, change: dict[str, Any]) -> Trial:
        t0 = time.perf_counter()
        metrics = evaluate_config(fit_events, items, targets, config, cache=cache)
        trial = Trial(change, metrics, time.perf_counter() - t0)
        trials.append(trial)
        return trial

    best = run(best_config, {})
    start_metrics = best.metrics
    if on_trial:
        on_trial(best, best)
    stopped = "converged"
    improved = True
    while improved and stopped == "converged":
        improved = False
        for name, values in space:
            if name == "window_weight" and best_config.window is None:
                continue  # no windows: the weight changes nothing
            current = _get(best_config, name)
            for value in values:
                if value == current:
                    continue
                # stop before a trial that would end past the budget, estimated at 1.5 times the
                # slowest of the last three (fits that rebuild the similarity cost more)
                expected = 1.5 * max(t.seconds for t in trials[-3:])
                if time.perf_counter() - started + expected > time_budget_s:
                    stopped = "time budget"
                    break
                candidate = _set(best_config, name, value)
                trial = run(candidate, {name: value})
                if _score(trial.metrics) > _score(best.metrics) + 1e-9:
                    best, best_config, improved = trial, candidate, True
                if on_trial:
                    on_trial(trial, best)
            if stopped != "converged":
                break
    return TuneResult(
        config=best_config,
        metrics=best.metrics,
        start_metrics=start_metrics,
        trials=trials,
        validation_users=len(targets),
        seconds=time.perf_counter() - started,
        stopped=stopped,
    )


def _score(metrics: Mapping[str, float]) -> float:
    return metrics["ndcg@10"] + metrics["hit@50"]


def _get(config: RetrieverConfig, name: str) -> Any:
    if name.startswith("weights."):
        return config.weights.get(name.split(".", 1)[1], 0.0)
    return getattr(config, name)


def _set(config: RetrieverConfig, name: str, value: Any) -> RetrieverConfig:
    if name.startswith("weights."):
        return replace(config, weights={**config.weights, name.split(".", 1)[1]: value})
    return replace(config, **{name: value})


def _rounded(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in metrics.items()}


def _changed(base: RetrieverConfig, config: RetrieverConfig) -> dict[str, Any]:
    a, b = config_to_dict(base), config_to_dict(config)
    return {k: v for k, v in b.items() if a.get(k) != v}


# -- saved settings ----------------------------------------------------------------------------
def config_to_dict(config: RetrieverConfig) -> dict[str, Any]:
    """``config`` as JSON-able ``RetrieverConfig`` fields."""
    raw = asdict(config)
    raw["weights"] = dict(config.weights)
    raw["behavior_weights"] = dict(config.behavior_weights)
    raw["content_fields"] = list(config.content_fields)
    return raw


def config_from_dict(raw: Mapping[str, Any]) -> RetrieverConfig:
    """A ``RetrieverConfig`` from JSON fields; ``weights`` merge into the default weights and a
    ``tuning`` report (what ``save_config`` writes) is ignored."""
    fields = {k: v for k, v in raw.items() if k != TUNING_KEY}
    if "weights" in fields:
        fields["weights"] = {**RetrieverConfig().weights, **fields["weights"]}
    if "content_fields" in fields:
        fields["content_fields"] = tuple(fields["content_fields"])
    try:
        return RetrieverConfig(**fields)
    except TypeError as exc:
        raise ConfigError(f"not retriever settings: {exc}") from None


def save_config(path: str | Path, result: TuneResult) -> None:
    """Write the tuned settings (and the tuning report under ``tuning``) as JSON."""
    payload = config_to_dict(result.config) | {TUNING_KEY: result.report()}
    Path(path).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def load_config(source: str | Path) -> RetrieverConfig:
    """Settings from a JSON file written by ``save_config`` (or any JSON object of fields), or
    from JSON text."""
    text = str(source)
    try:
        path = Path(text)
        raw = json.loads(path.read_text(encoding="utf-8") if path.is_file() else text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read retriever settings {text!r}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"retriever settings {text!r}: expected a JSON object")
    return config_from_dict(raw)

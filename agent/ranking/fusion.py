"""Blend the model's ranking with the retriever's score through a small logistic model.

Published zero-shot LLM rankers lose to trained classic recommenders, so the final order
should keep the classic signal where the model adds nothing. For each candidate,

    p(chosen) = sigmoid(bias + w_llm * llm_gain + w_retriever * retriever_score)

where ``llm_gain = 1 / log2(llm_rank + 1)`` (0 when the model did not place the item) and
``retriever_score`` is the retriever's blended score scaled to [0, 1] within the list.
Weights are fit by gradient descent on the cross-entropy of held-out interactions (which
candidate the user actually chose next), with L2 regularisation.

Promises:

* With no data, ``FusionWeights.prior()`` is used (documented there, not tuned).
* A fitted blend is never worse than the retriever alone on the data it was fit on: if its
  mean reciprocal rank of the chosen items is lower, ``fit`` returns retriever-only weights
  (``source="retriever-only"``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agent.errors import ConfigError

WEIGHTS_FORMAT = "recagent-fusion/1"


@dataclass(frozen=True)
class FusionWeights:
    bias: float
    w_llm: float
    w_retriever: float
    source: Literal["prior", "fitted", "retriever-only"]

    @classmethod
    def prior(cls) -> FusionWeights:
        """The default until there is data to fit on (a stated choice, not tuned on any data).

        The model's top pick outweighs the retriever's top score (1.5 vs 1.0) because the
        model saw the whole history, profile and request; lower model ranks fade as
        1/log2(rank+1), so the retriever's order decides among items the model did not place.
        """
        return cls(bias=0.0, w_llm=1.5, w_retriever=1.0, source="prior")

    @classmethod
    def retriever_only(cls) -> FusionWeights:
        return cls(bias=0.0, w_llm=0.0, w_retriever=1.0, source="retriever-only")

    def save(self, path: str | Path, **metadata: Any) -> None:
        """Write the weights (and any JSON-able ``metadata``, e.g. how they were fit) as JSON."""
        payload = {"format": WEIGHTS_FORMAT, **asdict(self), "metadata": metadata}
        Path(path).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> FusionWeights:
        """Weights written by ``save``. Raises ``ConfigError`` for a missing or invalid file."""
        try:
            payload = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read fusion weights {path}: {exc}") from None
        if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
            raise ConfigError(f"{path} is not a recagent fusion weights file ({WEIGHTS_FORMAT})")
        try:
            values = {name: float(payload[name]) for name in ("bias", "w_llm", "w_retriever")}
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: weights must be numbers ({exc})") from None
        if not all(math.isfinite(v) for v in values.values()):
            raise ConfigError(f"{path}: weights must be finite numbers")
        source = payload.get("source")
        if source not in ("prior", "fitted", "retriever-only"):
            raise ConfigError(f"{path}: unknown weights source {source!r}")
        return cls(source=source, **values)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Probability-like fused scores for rows of ``[llm_gain, retriever_score]``."""
        return _sigmoid(self.bias + features @ np.array([self.w_llm, self.w_retriever]))


PRIOR_WEIGHTS = FusionWeights.prior()
"""The prior as a (frozen) module constant, usable as a default argument."""


@dataclass(frozen=True)
class RankedList:
    """One served list: candidate ids in retriever order, their retriever scores, the model's order."""

    candidate_ids: Sequence[str]
    retriever_scores: Sequence[float]
    llm_order: Sequence[str]


def features(ranked: RankedList) -> np.ndarray:
    """``[llm_gain, retriever_score]`` per candidate (rows follow ``candidate_ids``)."""
    llm_rank = {item: i + 1 for i, item in enumerate(ranked.llm_order)}
    gain = np.array(
        [1.0 / math.log2(llm_rank[c] + 1) if c in llm_rank else 0.0 for c in ranked.candidate_ids]
    )
    scores = np.asarray(ranked.retriever_scores, dtype=float)
    span = scores.max() - scores.min() if len(scores) else 0.0
    scaled = (scores - scores.min()) / span if span > 0 else np.ones_like(scores)
    return np.column_stack([gain, scaled])


def fuse(ranked: RankedList, weights: FusionWeights) -> list[tuple[str, float]]:
    """Candidates re-ordered by fused score (ties keep the retriever's order)."""
    fused = weights.score(features(ranked))
    order = sorted(range(len(fused)), key=lambda i: (-fused[i], i))
    return [(ranked.candidate_ids[i], float(fused[i])) for i in order]


def fit(
    lists: Sequence[RankedList],
    chosen: Sequence[str],
    *,
    l2: float = 0.01,
    learning_rate: float = 0.5,
    epochs: int = 500,
) -> FusionWeights:
    """Fit weights so the item each user chose next scores high in its list.

    ``lists[i]`` is a served list and ``chosen[i]`` the item the user actually picked
    (held-out feedback or validation interaction). Lists whose chosen item is not among the
    candidates carry no signal and are skipped. Returns the prior when nothing is usable.
    """
    rows, labels = [], []
    usable: list[tuple[RankedList, str]] = []
    for ranked, target in zip(lists, chosen, strict=True):
        if target not in ranked.candidate_ids:
            continue
        usable.append((ranked, target))
        rows.append(features(ranked))
        labels.append(np.array([1.0 if c == target else 0.0 for c in ranked.candidate_ids]))
    if not usable:
        return FusionWeights.prior()
    x = np.vstack(rows)
    y = np.concatenate(labels)
    # Chosen items are rare (1 in n); weight them up so the loss is not just "predict 0".
    pos_weight = (len(y) - y.sum()) / max(y.sum(), 1.0)
    sample_weight = np.where(y > 0, pos_weight, 1.0)
    theta = np.zeros(3)  # bias, w_llm, w_retriever
    design = np.column_stack([np.ones(len(x)), x])
    for _ in range(epochs):
        p = _sigmoid(design @ theta)
        gradient = design.T @ ((p - y) * sample_weight) / sample_weight.sum()
        gradient[1:] += l2 * theta[1:]
        theta -= learning_rate * gradient
    fitted = FusionWeights(
        bias=float(theta[0]), w_llm=float(theta[1]), w_retriever=float(theta[2]), source="fitted"
    )
    retriever = FusionWeights.retriever_only()
    if _mean_reciprocal_rank(usable, fitted) < _mean_reciprocal_rank(usable, retriever):
        return retriever
    return fitted


def mean_reciprocal_rank(lists: Sequence[RankedList], chosen: Sequence[str], weights: FusionWeights) -> float:
    """Mean reciprocal rank of ``chosen[i]`` in ``lists[i]`` fused by ``weights`` (0 when absent)."""
    if not lists:
        return 0.0
    usable = [(r, t) for r, t in zip(lists, chosen, strict=True) if t in r.candidate_ids]
    return sum(_reciprocal_ranks(usable, weights)) / len(lists)


def _mean_reciprocal_rank(usable: Sequence[tuple[RankedList, str]], weights: FusionWeights) -> float:
    return sum(_reciprocal_ranks(usable, weights)) / len(usable)


def _reciprocal_ranks(usable: Sequence[tuple[RankedList, str]], weights: FusionWeights) -> list[float]:
    """1 / rank of each target in its fused list (every target is among its candidates)."""
    out = []
    for ranked, target in usable:
        order = [item for item, _ in fuse(ranked, weights)]
        out.append(1.0 / (order.index(target) + 1))
    return out


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))

"""Pydantic models of the model's replies, written for strict structured outputs.

Strict mode (OpenAI ``response_format: json_schema, strict: true``; vLLM/Ollama/llama.cpp
grammar-constrained decoding) needs every field required, optional ones nullable, no free-form
dicts, and ``additionalProperties: false``. ``strict_json_schema`` turns a pydantic model into
such a schema. Reply models whose ids must come from one request's candidates or history are
built per request (``recommendations_model``, ``profile_model``) with enums, so an invented
item id cannot be produced by a server that enforces the schema; ``agent.grounding`` still
checks every reply, because not every server does.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

PriceSensitivity = Literal["low", "medium", "high", "unknown"]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Interest(StrictModel):
    """One thing the user likes, with how strongly and the history items that show it."""

    name: str = Field(description="Short label, e.g. 'trail running' or 'space opera'.")
    strength: float = Field(ge=0.0, le=1.0, description="0 = faint, 1 = defining interest.")
    evidence: list[str] = Field(description="Item ids from the history that support this interest.")


class Dislike(StrictModel):
    """Something the user avoids (explicit dislikes, low ratings, abandoned carts)."""

    name: str
    evidence: list[str]


class BehaviorPatterns(StrictModel):
    price_sensitivity: PriceSensitivity
    typical_price_min: float | None = Field(description="Low end of what they pay; null if unknown.")
    typical_price_max: float | None = Field(description="High end of what they pay; null if unknown.")
    recent_focus: str | None = Field(description="What the most recent events concentrate on, if anything.")
    exploration: Literal["focused", "mixed", "exploratory"]


class BehaviorProfile(StrictModel):
    """A grounded summary of one user's tastes, built only from their history."""

    summary: str = Field(description="Two or three sentences; no personal data.")
    interests: list[Interest]
    dislikes: list[Dislike]
    patterns: BehaviorPatterns


class RankedItem(StrictModel):
    item_id: str
    score: float = Field(ge=0.0, le=1.0, description="Confidence the user will want this item.")
    reason: str = Field(description="One sentence citing what in the history makes this a fit.")
    evidence: list[str] = Field(description="History item ids the reason relies on.")


class Recommendations(StrictModel):
    """The model's ranking: best first, only candidate ids."""

    items: list[RankedItem]


def recommendations_model(candidate_ids: Sequence[str], history_ids: Sequence[str]) -> type[Recommendations]:
    """A ``Recommendations`` subclass whose ids are enums of this request's candidates/history."""
    if not candidate_ids:
        raise ValueError("a recommendation request needs at least one candidate")
    candidate_type: Any = Literal[tuple(candidate_ids)]
    evidence_type: Any = Literal[tuple(history_ids)] if history_ids else str
    item = create_model(
        "RankedItem",
        __base__=RankedItem,
        item_id=(candidate_type, Field(description="One of the candidate ids.")),
        evidence=(list[evidence_type], Field(description="History item ids the reason relies on.")),
    )
    return create_model("Recommendations", __base__=Recommendations, items=(list[item], ...))  # type: ignore[valid-type]


def profile_model(history_ids: Sequence[str]) -> type[BehaviorProfile]:
    """A ``BehaviorProfile`` subclass whose evidence ids are an enum of the shown history."""
    if not history_ids:
        return BehaviorProfile
    evidence_type: Any = Literal[tuple(history_ids)]
    interest = create_model("Interest", __base__=Interest, evidence=(list[evidence_type], ...))
    dislike = create_model("Dislike", __base__=Dislike, evidence=(list[evidence_type], ...))
    return create_model(
        "BehaviorProfile",
        __base__=BehaviorProfile,
        interests=(list[interest], ...),  # type: ignore[valid-type]
        dislikes=(list[dislike], ...),  # type: ignore[valid-type]
    )


_UNSUPPORTED_KEYS = ("default", "title", "examples")


def strict_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema made strict-mode compatible.

    Every object gets ``additionalProperties: false`` and all its properties required;
    defaults and titles are dropped. The root stays an object, as strict mode requires.
    """
    schema = copy.deepcopy(model.model_json_schema())

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for key in _UNSUPPORTED_KEYS:
                if key in node and not isinstance(node[key], dict):
                    node.pop(key)
            if node.get("type") == "object" or "properties" in node:
                node["additionalProperties"] = False
                node["required"] = list(node.get("properties", {}))
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema
